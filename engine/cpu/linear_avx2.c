/* linear_avx2.c - the AVX2 + FMA kernels of linear() (selected at run time, see linear.c).
 *
 * A block is O rows of W (up to 4) against R rows of x (up to 4): O x R accumulators of 8 lanes.
 * Weights are dequantized in registers, 8 at a time (bf16: widen and shift; int8: widen and
 * convert, the row scale multiplying the finished sum; int4: broadcast 4 bytes, shift each lane
 * by 4 * lane, mask, minus 8, convert, times the group scale), then multiply-added into the R
 * rows. For many rows
 * of x the kernel first dequantizes 4 rows of W into f32 scratch and reuses them for every row
 * tile; the values and the order of the sums are the same either way. */
#include "engine/cpu/cpu_internal.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define KERNEL static __attribute__((target("avx2,fma"), noinline))
#define INLINE static inline __attribute__((always_inline, target("avx2,fma")))

int cpu_linear_avx2_ok(const eng_weight *w) {
    return w->fmt != ENG_W_I4 || w->group % 8 == 0;
}

INLINE float hsum8(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

/* Elements i..i+7 of one W row (i a multiple of 8, inside the row's 8-aligned part). */
INLINE __m256 deq8(eng_wfmt fmt, const void *row, int64_t i, __m256 scale) {
    switch (fmt) {
    case ENG_W_F32:
        return _mm256_loadu_ps((const float *)row + i);
    case ENG_W_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case ENG_W_I8: {
        __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)row + i));
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); /* row scale applied at the end */
    }
    case ENG_W_I4: {
        uint32_t u;
        memcpy(&u, (const uint8_t *)row + i / 2, 4);
        __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u),
                                      _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        v = _mm256_sub_epi32(_mm256_and_si256(v, _mm256_set1_epi32(15)), _mm256_set1_epi32(8));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale);
    }
    }
    return _mm256_setzero_ps();
}

static const void *row_ptr(const eng_weight *w, int64_t o) {
    switch (w->fmt) {
    case ENG_W_F32:
        return (const float *)w->data + o * w->in;
    case ENG_W_BF16:
        return (const uint16_t *)w->data + o * w->in;
    case ENG_W_I8:
        return (const int8_t *)w->data + o * w->in;
    case ENG_W_I4:
        return (const uint8_t *)w->data + o * ((w->in + 1) / 2);
    }
    return NULL;
}

/* Rows o..o+O of W (format fmt; `rows` their starts, `scales` their I4 scale rows) times rows
 * r..r+R of x into y. The scalar tail (i >= in8) reads the packed f32 rows when packed_tail is
 * given, else the weight itself. int8 sums q * x and multiplies by the row scale at the end:
 * `post` (the scales of rows o..) is given for int8 weights, direct or packed, NULL otherwise. */
INLINE void block(const cpu_linear_job *j, eng_wfmt fmt, int O, int R, const void *const *rows,
                  const float *const *scales, const float *packed_tail, const float *post,
                  int64_t o, int64_t r) {
    int64_t in = j->in, in8 = in & ~(int64_t)7;
    int64_t span = fmt == ENG_W_I4 ? j->w->group : in8;
    __m256 acc[4][4];
    const float *xr[4];
    for (int b = 0; b < R; b++)
        xr[b] = j->x + (r + b) * in;
    for (int a = 0; a < O; a++)
        for (int b = 0; b < R; b++)
            acc[a][b] = _mm256_setzero_ps();
    int64_t g = 0;
    for (int64_t g0 = 0; g0 < in8; g0 += span, g++) {
        __m256 sc[4];
        for (int a = 0; a < O; a++)
            sc[a] = fmt == ENG_W_I4 ? _mm256_set1_ps(scales[a][g]) : _mm256_setzero_ps();
        int64_t g1 = g0 + span < in8 ? g0 + span : in8;
        for (int64_t i = g0; i < g1; i += 8) {
            __m256 xv[4];
            for (int b = 0; b < R; b++)
                xv[b] = _mm256_loadu_ps(xr[b] + i);
            for (int a = 0; a < O; a++) {
                __m256 wv = deq8(fmt, rows[a], i, sc[a]);
                for (int b = 0; b < R; b++)
                    acc[a][b] = _mm256_fmadd_ps(wv, xv[b], acc[a][b]);
            }
        }
    }
    for (int a = 0; a < O; a++)
        for (int b = 0; b < R; b++) {
            float s = hsum8(acc[a][b]);
            for (int64_t i = in8; i < in; i++) {
                float wi = packed_tail       ? packed_tail[a * in + i]
                           : fmt == ENG_W_I8 ? (float)((const int8_t *)rows[a])[i]
                                             : cpu_weight_at(j->w, j->ngroups, o + a, i);
                s += wi * xr[b][i];
            }
            j->y[(r + b) * j->out + o + a] = post ? s * post[a] : s;
        }
}

/* One instantiation per (format, O, R) so the accumulators live in registers: O x R <= 8
 * accumulators plus R rows of x and one W vector fit AVX2's 16 registers without spills
 * (4 x 2, 2 x 3, 2 x 4, and O = 1 for the last rows of a tile). */
#define BLOCKS_FOR(NAME, FMT)                                                                      \
    KERNEL void NAME(const cpu_linear_job *j, int O, int R, const void *const *rows,               \
                     const float *const *sc, const float *pt, const float *ps, int64_t o,          \
                     int64_t r) {                                                                  \
        if (O == 4) {                                                                              \
            if (R == 1)                                                                            \
                block(j, FMT, 4, 1, rows, sc, pt, ps, o, r);                                       \
            else                                                                                   \
                block(j, FMT, 4, 2, rows, sc, pt, ps, o, r);                                       \
            return;                                                                                \
        }                                                                                          \
        if (O == 2) {                                                                              \
            if (R == 3)                                                                            \
                block(j, FMT, 2, 3, rows, sc, pt, ps, o, r);                                       \
            else                                                                                   \
                block(j, FMT, 2, 4, rows, sc, pt, ps, o, r);                                       \
            return;                                                                                \
        }                                                                                          \
        switch (R) {                                                                               \
        case 1:                                                                                    \
            block(j, FMT, 1, 1, rows, sc, pt, ps, o, r);                                           \
            return;                                                                                \
        case 2:                                                                                    \
            block(j, FMT, 1, 2, rows, sc, pt, ps, o, r);                                           \
            return;                                                                                \
        case 3:                                                                                    \
            block(j, FMT, 1, 3, rows, sc, pt, ps, o, r);                                           \
            return;                                                                                \
        default:                                                                                   \
            block(j, FMT, 1, 4, rows, sc, pt, ps, o, r);                                           \
            return;                                                                                \
        }                                                                                          \
    }
BLOCKS_FOR(blocks_f32, ENG_W_F32)
BLOCKS_FOR(blocks_bf16, ENG_W_BF16)
BLOCKS_FOR(blocks_i8, ENG_W_I8)
BLOCKS_FOR(blocks_i4, ENG_W_I4)

typedef void (*blocks_fn)(const cpu_linear_job *, int, int, const void *const *,
                          const float *const *, const float *, const float *, int64_t, int64_t);

static blocks_fn blocks_for(eng_wfmt fmt) {
    switch (fmt) {
    case ENG_W_F32:
        return blocks_f32;
    case ENG_W_BF16:
        return blocks_bf16;
    case ENG_W_I8:
        return blocks_i8;
    case ENG_W_I4:
        return blocks_i4;
    }
    return blocks_f32;
}

/* Dequantizes `count` rows of W from row o into pack[count][in] with exactly the values the
 * direct kernel computes in registers (int8: q itself, the row scale comes last). */
KERNEL void pack_rows(const cpu_linear_job *j, int64_t o, int count, float *pack) {
    const eng_weight *w = j->w;
    int64_t in = j->in, in8 = in & ~(int64_t)7;
    int64_t span = w->fmt == ENG_W_I4 ? w->group : in8;
    for (int a = 0; a < count; a++) {
        const void *row = row_ptr(w, o + a);
        float *dst = pack + a * in;
        int64_t g = 0;
        for (int64_t g0 = 0; g0 < in8; g0 += span, g++) {
            float s = w->fmt == ENG_W_I4 ? w->scales[(o + a) * j->ngroups + g] : 0.0f;
            __m256 sc = _mm256_set1_ps(s);
            int64_t g1 = g0 + span < in8 ? g0 + span : in8;
            for (int64_t i = g0; i < g1; i += 8) {
                __m256 v;
                switch (w->fmt) {
                case ENG_W_BF16:
                    v = deq8(ENG_W_BF16, row, i, sc);
                    break;
                case ENG_W_I8:
                    v = deq8(ENG_W_I8, row, i, sc);
                    break;
                case ENG_W_I4:
                    v = deq8(ENG_W_I4, row, i, sc);
                    break;
                default:
                    v = deq8(ENG_W_F32, row, i, sc);
                    break;
                }
                _mm256_storeu_ps(dst + i, v);
            }
        }
        for (int64_t i = in8; i < in; i++)
            dst[i] = w->fmt == ENG_W_I8 ? (float)((const int8_t *)row)[i]
                                        : cpu_weight_at(w, j->ngroups, o + a, i);
    }
}

/* Rows of W per block for R rows of x (the pairs BLOCKS_FOR instantiates). */
static int rows_of_w(int R) {
    return R <= 2 ? 4 : 2;
}

void cpu_linear_tile_avx2(const cpu_linear_job *j, int64_t r0, int64_t r1, int64_t o0, int64_t o1,
                          float *pack) {
    const eng_weight *w = j->w;
    const void *rows[4];
    const float *scales[4] = {NULL, NULL, NULL, NULL};
    if (!pack) {
        /* few rows (<= 4): all of them in one block, so W is read once */
        blocks_fn fn = blocks_for(w->fmt);
        int R = (int)(r1 - r0), wide = rows_of_w(R);
        for (int64_t o = o0; o < o1;) {
            int O = o1 - o >= wide ? wide : 1;
            for (int a = 0; a < O; a++) {
                rows[a] = row_ptr(w, o + a);
                if (w->fmt == ENG_W_I4) scales[a] = w->scales + (o + a) * j->ngroups;
            }
            fn(j, O, R, rows, scales, NULL, w->fmt == ENG_W_I8 ? w->scales + o : NULL, o, r0);
            o += O;
        }
        return;
    }
    for (int64_t o = o0; o < o1;) {
        int count = o1 - o >= CPU_LINEAR_PACK_ROWS ? CPU_LINEAR_PACK_ROWS : (int)(o1 - o);
        pack_rows(j, o, count, pack);
        for (int a = 0; a < count;) {
            int O = count - a >= 4 ? 4 : 1;
            for (int k = 0; k < O; k++)
                rows[k] = pack + (a + k) * j->in;
            for (int64_t r = r0; r < r1; r += 2)
                blocks_f32(j, O, r1 - r < 2 ? 1 : 2, rows, scales, pack + a * j->in,
                           w->fmt == ENG_W_I8 ? w->scales + o + a : NULL, o + a, r);
            a += O;
        }
        o += count;
    }
}

#else /* not x86-64: linear.c never selects these */

int cpu_linear_avx2_ok(const eng_weight *w) {
    (void)w;
    return 0;
}
void cpu_linear_tile_avx2(const cpu_linear_job *j, int64_t r0, int64_t r1, int64_t o0, int64_t o1,
                          float *pack) {
    (void)pack;
    cpu_linear_tile_generic(j, r0, r1, o0, o1);
}

#endif
