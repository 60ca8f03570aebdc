/* elementwise.c - the CPU ops that touch each element once or a row at a time: rmsnorm, add,
 * rope, silu_mul, embed_sum, snake, tanh. Snake and tanh (long DAC signals, transcendental per
 * sample) are split across the pool; the rest are cheap next to linear() and run on the
 * calling thread. */
#include "engine/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

/* Largest head_dim rope() accepts (its cos/sin table lives on the stack). */
#define ROPE_MAX_HEAD_DIM 1024
/* Elements per task for the pooled element-wise ops. */
#define EW_CHUNK 16384

static int64_t last_dim(const eng_tensor *t) {
    return t->shape[t->ndim - 1];
}

/* y = x / sqrt(mean(x^2) + eps) * weight, rows of the last dimension. The mean of squares is
 * summed in double (cheap at these sizes and independent of the row length); the scaling
 * follows PyTorch's order: x * rsqrt(...) first, then * weight. */
int cpu_rmsnorm(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *weight,
                float eps) {
    int rc;
    char a[96], b[96], c[96];
    if ((rc = cpu_check_tensor(be, "rmsnorm", "x", x, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "rmsnorm", "y", y, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "rmsnorm", "weight", weight, ENG_DT_F32)))
        return rc;
    int64_t d = last_dim(x);
    if (d <= 0 || eng_numel(weight) != d || eng_numel(y) != eng_numel(x) || last_dim(y) != d)
        return eng_backend_fail(be, ENG_EINVAL, "rmsnorm: shapes x %s, weight %s, y %s disagree",
                                cpu_tensor_str(a, sizeof a, x), cpu_tensor_str(b, sizeof b, weight),
                                cpu_tensor_str(c, sizeof c, y));
    if (!(eps >= 0.0f)) return eng_backend_fail(be, ENG_EINVAL, "rmsnorm: eps %g < 0", eps);
    int64_t n = eng_numel(x) / d;
    const float *xs = x->data, *w = weight->data;
    float *ys = y->data;
    for (int64_t r = 0; r < n; r++) {
        const float *xr = xs + r * d;
        float *yr = ys + r * d;
        double ss = 0;
        for (int64_t i = 0; i < d; i++)
            ss += (double)xr[i] * xr[i];
        float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
        for (int64_t i = 0; i < d; i++)
            yr[i] = (xr[i] * inv) * w[i];
    }
    return 0;
}

int cpu_add(eng_backend *be, eng_tensor *y, const eng_tensor *a) {
    int rc;
    char s1[96], s2[96];
    if ((rc = cpu_check_tensor(be, "add", "y", y, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "add", "a", a, ENG_DT_F32)))
        return rc;
    if (eng_numel(y) != eng_numel(a))
        return eng_backend_fail(be, ENG_EINVAL, "add: y %s and a %s differ in size",
                                cpu_tensor_str(s1, sizeof s1, y), cpu_tensor_str(s2, sizeof s2, a));
    float *ys = y->data;
    const float *as = a->data;
    int64_t n = eng_numel(y);
    for (int64_t i = 0; i < n; i++)
        ys[i] += as[i];
    return 0;
}

/* Half-split RoPE: pairs (i, i + hd/2). inv_freq, angle, cos and sin are computed in f32 the way
 * transformers does (1 / theta^(2i/hd), pos * inv_freq), so fp32 results match it closely. */
int cpu_rope(eng_backend *be, eng_tensor *x, const eng_tensor *pos, float theta) {
    int rc;
    char s1[96], s2[96];
    if ((rc = cpu_check_tensor(be, "rope", "x", x, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "rope", "pos", pos, ENG_DT_I32)))
        return rc;
    if (x->ndim < 3)
        return eng_backend_fail(be, ENG_EINVAL, "rope: x must be [n, heads, head_dim], got %s",
                                cpu_tensor_str(s1, sizeof s1, x));
    int64_t hd = x->shape[x->ndim - 1], heads = x->shape[x->ndim - 2];
    if (hd <= 0 || hd % 2 || hd > ROPE_MAX_HEAD_DIM || heads <= 0)
        return eng_backend_fail(be, ENG_EINVAL, "rope: head_dim must be even and <= %d, x is %s",
                                ROPE_MAX_HEAD_DIM, cpu_tensor_str(s1, sizeof s1, x));
    int64_t n = eng_numel(x) / (heads * hd);
    if (eng_numel(pos) != n)
        return eng_backend_fail(be, ENG_EINVAL, "rope: pos %s must have one entry per row of x %s",
                                cpu_tensor_str(s1, sizeof s1, pos),
                                cpu_tensor_str(s2, sizeof s2, x));
    if (!(theta > 0.0f)) return eng_backend_fail(be, ENG_EINVAL, "rope: theta %g <= 0", theta);
    int64_t half = hd / 2;
    float inv_freq[ROPE_MAX_HEAD_DIM / 2], cs[ROPE_MAX_HEAD_DIM / 2], sn[ROPE_MAX_HEAD_DIM / 2];
    for (int64_t i = 0; i < half; i++)
        inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
    const int32_t *ps = pos->data;
    float *xs = x->data;
    for (int64_t r = 0; r < n; r++) {
        if (ps[r] < 0)
            return eng_backend_fail(be, ENG_EINVAL, "rope: pos[%lld] = %d is negative",
                                    (long long)r, ps[r]);
        float p = (float)ps[r];
        for (int64_t i = 0; i < half; i++) {
            float angle = p * inv_freq[i];
            cs[i] = cosf(angle);
            sn[i] = sinf(angle);
        }
        for (int64_t h = 0; h < heads; h++) {
            float *v = xs + (r * heads + h) * hd;
            for (int64_t i = 0; i < half; i++) {
                float lo = v[i], hi = v[i + half];
                v[i] = lo * cs[i] - hi * sn[i];
                v[i + half] = hi * cs[i] + lo * sn[i];
            }
        }
    }
    return 0;
}

typedef struct silu_ctx {
    float *y;        /* [n, f] */
    const float *gu; /* [n, 2f] */
    int64_t n, f, rows_per_task;
} silu_ctx;

static void silu_task(void *p, int64_t task, int thread) {
    (void)thread;
    const silu_ctx *c = p;
    int64_t r0 = task * c->rows_per_task,
            r1 = r0 + c->rows_per_task < c->n ? r0 + c->rows_per_task : c->n;
    for (int64_t r = r0; r < r1; r++) {
        const float *gate = c->gu + r * 2 * c->f, *up = gate + c->f;
        float *yr = c->y + r * c->f;
        for (int64_t i = 0; i < c->f; i++)
            yr[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    }
}

/* expf per element: the encoder's MLP (S rows x 4096) is worth splitting across the pool. */
int cpu_silu_mul(eng_backend *be, eng_tensor *y, const eng_tensor *gu) {
    int rc;
    char s1[96], s2[96];
    if ((rc = cpu_check_tensor(be, "silu_mul", "y", y, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "silu_mul", "gu", gu, ENG_DT_F32)))
        return rc;
    int64_t f2 = last_dim(gu), f = last_dim(y);
    if (f <= 0 || f2 != 2 * f || eng_numel(gu) / f2 != eng_numel(y) / f)
        return eng_backend_fail(be, ENG_EINVAL, "silu_mul: gu %s must be [n, 2f] for y %s [n, f]",
                                cpu_tensor_str(s1, sizeof s1, gu),
                                cpu_tensor_str(s2, sizeof s2, y));
    silu_ctx c = {y->data, gu->data, eng_numel(y) / f, f, 0};
    if (c.n == 0) return 0;
    c.rows_per_task = (EW_CHUNK + f - 1) / f;
    cpu_pool_run(cpu_of(be)->pool, silu_task, &c, (c.n + c.rows_per_task - 1) / c.rows_per_task);
    return 0;
}

/* Sums C table rows per output row, channel 0 first, in f32. Every id is checked before any
 * row is read. */
int cpu_embed_sum(eng_backend *be, eng_tensor *y, const eng_tensor *table, const eng_tensor *ids,
                  int channel_stride) {
    int rc;
    char s1[96], s2[96], s3[96];
    if ((rc = cpu_check_tensor(be, "embed_sum", "y", y, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "embed_sum", "ids", ids, ENG_DT_I32)))
        return rc;
    if (!table || (table->dtype != ENG_DT_F32 && table->dtype != ENG_DT_BF16) || table->ndim != 2 ||
        !table->data)
        return eng_backend_fail(be, ENG_EINVAL,
                                "embed_sum: table must be F32 or BF16 [rows, d], "
                                "got %s",
                                cpu_tensor_str(s1, sizeof s1, table));
    int64_t rows = table->shape[0], d = table->shape[1];
    int64_t c = ids->ndim == 1 ? 1 : last_dim(ids);
    int64_t n = c > 0 ? eng_numel(ids) / c : 0;
    if (c <= 0 || d <= 0 || eng_numel(y) != n * d || last_dim(y) != d)
        return eng_backend_fail(be, ENG_EINVAL, "embed_sum: y %s, table %s, ids %s disagree",
                                cpu_tensor_str(s1, sizeof s1, y),
                                cpu_tensor_str(s2, sizeof s2, table),
                                cpu_tensor_str(s3, sizeof s3, ids));
    if (channel_stride < 0 || (c > 1 && channel_stride == 0) ||
        (int64_t)channel_stride * (c - 1) >= rows)
        return eng_backend_fail(be, ENG_EINVAL,
                                "embed_sum: channel_stride %d with %lld channels "
                                "does not fit a table of %lld rows",
                                channel_stride, (long long)c, (long long)rows);
    int64_t limit = channel_stride ? channel_stride : rows;
    const int32_t *id = ids->data;
    for (int64_t k = 0; k < n * c; k++) {
        int64_t ch = k % c;
        if (id[k] < 0 || id[k] >= limit || ch * channel_stride + id[k] >= rows)
            return eng_backend_fail(be, ENG_EINVAL,
                                    "embed_sum: id %d at row %lld channel %lld is "
                                    "out of range [0, %lld)",
                                    id[k], (long long)(k / c), (long long)ch, (long long)limit);
    }
    float *ys = y->data;
    for (int64_t r = 0; r < n; r++) {
        float *yr = ys + r * d;
        memset(yr, 0, (size_t)d * sizeof(float));
        for (int64_t ch = 0; ch < c; ch++) {
            int64_t row = ch * channel_stride + id[r * c + ch];
            if (table->dtype == ENG_DT_F32) {
                const float *t = (const float *)table->data + row * d;
                for (int64_t i = 0; i < d; i++)
                    yr[i] += t[i];
            } else {
                const uint16_t *t = (const uint16_t *)table->data + row * d;
                for (int64_t i = 0; i < d; i++)
                    yr[i] += eng_bf16_to_f32(t[i]);
            }
        }
    }
    return 0;
}

/* ---- pooled element-wise ops over [channels, time] ---- */

typedef struct ew_ctx {
    float *y;
    const float *x;
    const float *alpha; /* snake only: per channel */
    int64_t time;       /* samples per channel row */
    int64_t numel;
    int avx2;
} ew_ctx;

#if defined(__x86_64__) && defined(__GNUC__)
#define EW_X86 1
#include <immintrin.h>
#define EW_AVX2 __attribute__((target("avx2,fma")))

/* sin of 8 floats for |v| <= 8192: v = j * pi/2 + r with pi/2 split in three parts, each
 * subtracted with one FMA rounding, |r| <= pi/4; the quadrant picks +-sin(r) or +-cos(r), each
 * a short minimax polynomial (Cephes' single-precision coefficients). Within 1.5 ulp of sin()
 * of the f32 argument (max abs error 9e-8, checked densely over [-8192, 8192]); the caller
 * sends larger, infinite or NaN arguments to sinf(). */
static inline __attribute__((always_inline, target("avx2,fma"))) __m256 sin8(__m256 v) {
    const __m256 two_over_pi = _mm256_set1_ps(0.636619772367581343f);
    __m256 jf = _mm256_round_ps(_mm256_mul_ps(v, two_over_pi),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(jf, _mm256_set1_ps(1.5703125f), v);
    r = _mm256_fnmadd_ps(jf, _mm256_set1_ps(4.837512969970703125e-4f), r);
    r = _mm256_fnmadd_ps(jf, _mm256_set1_ps(7.54978995489188216e-8f), r);
    __m256i q = _mm256_cvtps_epi32(jf);
    __m256 r2 = _mm256_mul_ps(r, r);
    /* sin(r) = r + r^3 (s1 + r^2 (s2 + r^2 s3)) */
    __m256 ps =
        _mm256_fmadd_ps(r2, _mm256_set1_ps(-1.9515295891e-4f), _mm256_set1_ps(8.3321608736e-3f));
    ps = _mm256_fmadd_ps(ps, r2, _mm256_set1_ps(-1.6666654611e-1f));
    ps = _mm256_fmadd_ps(_mm256_mul_ps(ps, r2), r, r);
    /* cos(r) = 1 - r^2/2 + r^4 (c1 + r^2 (c2 + r^2 c3)) */
    __m256 pc = _mm256_fmadd_ps(r2, _mm256_set1_ps(2.443315711809948e-5f),
                                _mm256_set1_ps(-1.388731625493765e-3f));
    pc = _mm256_fmadd_ps(pc, r2, _mm256_set1_ps(4.166664568298827e-2f));
    pc = _mm256_mul_ps(_mm256_mul_ps(pc, r2), r2);
    pc = _mm256_add_ps(_mm256_fnmadd_ps(r2, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)), pc);
    /* quadrant: odd -> cos, q & 2 -> negate */
    __m256 odd = _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(_mm256_and_si256(q, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
    __m256 res = _mm256_blendv_ps(ps, pc, odd);
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(q, _mm256_set1_epi32(2)), 30);
    return _mm256_xor_ps(res, _mm256_castsi256_ps(sign));
}

/* y[i] = x[i] + inv * sin(a x[i])^2 for n samples of one channel. */
static EW_AVX2 void snake_row_avx2(float *y, const float *x, int64_t n, float a, float inv) {
    const __m256 va = _mm256_set1_ps(a), vinv = _mm256_set1_ps(inv);
    const __m256 limit = _mm256_set1_ps(8192.0f),
                 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i), arg = _mm256_mul_ps(va, xv);
        /* not (|arg| <= limit) also catches NaN */
        __m256 big = _mm256_cmp_ps(_mm256_and_ps(arg, abs_mask), limit, _CMP_NLE_UQ);
        if (_mm256_movemask_ps(big)) {
            for (int l = 0; l < 8; l++) {
                float s = sinf(a * x[i + l]);
                y[i + l] = x[i + l] + inv * (s * s);
            }
            continue;
        }
        __m256 s = sin8(arg);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vinv, _mm256_mul_ps(s, s), xv));
    }
    for (; i < n; i++) {
        float s = sinf(a * x[i]);
        y[i] = x[i] + inv * (s * s);
    }
}
#endif

static void snake_task(void *p, int64_t task, int thread) {
    (void)thread;
    const ew_ctx *c = p;
    int64_t i0 = task * EW_CHUNK, i1 = i0 + EW_CHUNK < c->numel ? i0 + EW_CHUNK : c->numel;
    while (i0 < i1) {
        int64_t ch = i0 / c->time, end = (ch + 1) * c->time < i1 ? (ch + 1) * c->time : i1;
        float a = c->alpha[ch], inv = 1.0f / (a + 1e-9f);
#ifdef EW_X86
        if (c->avx2) {
            snake_row_avx2(c->y + i0, c->x + i0, end - i0, a, inv);
            i0 = end;
            continue;
        }
#endif
        for (int64_t i = i0; i < end; i++) {
            float s = sinf(a * c->x[i]);
            c->y[i] = c->x[i] + inv * (s * s);
        }
        i0 = end;
    }
}

static void tanh_task(void *p, int64_t task, int thread) {
    (void)thread;
    const ew_ctx *c = p;
    int64_t i0 = task * EW_CHUNK, i1 = i0 + EW_CHUNK < c->numel ? i0 + EW_CHUNK : c->numel;
    for (int64_t i = i0; i < i1; i++)
        c->y[i] = tanhf(c->x[i]);
}

/* x is [C, T] or [1, C, T]; alpha has C values (DAC stores [1, C, 1]). The AVX2 path evaluates
 * sin with sin8() (within ~1 ulp of sinf), the portable one with sinf. */
int cpu_snake(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *alpha) {
    int rc;
    char s1[96], s2[96], s3[96];
    if ((rc = cpu_check_tensor(be, "snake", "x", x, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "snake", "y", y, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "snake", "alpha", alpha, ENG_DT_F32)))
        return rc;
    int ok = x->ndim == 2 || (x->ndim == 3 && x->shape[0] == 1);
    int64_t ch = ok ? x->shape[x->ndim - 2] : 0, time = ok ? last_dim(x) : 0;
    if (!ok || eng_numel(alpha) != ch || eng_numel(y) != eng_numel(x))
        return eng_backend_fail(be, ENG_EINVAL,
                                "snake: x %s must be [C, T] with alpha %s of C "
                                "values and y %s of the same size",
                                cpu_tensor_str(s1, sizeof s1, x),
                                cpu_tensor_str(s2, sizeof s2, alpha),
                                cpu_tensor_str(s3, sizeof s3, y));
    ew_ctx c = {y->data, x->data, alpha->data, time, eng_numel(x), cpu_of(be)->use_avx2};
    if (c.numel == 0) return 0;
    cpu_pool_run(cpu_of(be)->pool, snake_task, &c, (c.numel + EW_CHUNK - 1) / EW_CHUNK);
    return 0;
}

int cpu_tanh(eng_backend *be, eng_tensor *y, const eng_tensor *x) {
    int rc;
    char s1[96], s2[96];
    if ((rc = cpu_check_tensor(be, "tanh", "x", x, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "tanh", "y", y, ENG_DT_F32)))
        return rc;
    if (eng_numel(y) != eng_numel(x))
        return eng_backend_fail(be, ENG_EINVAL, "tanh: y %s and x %s differ in size",
                                cpu_tensor_str(s1, sizeof s1, y), cpu_tensor_str(s2, sizeof s2, x));
    ew_ctx c = {y->data, x->data, NULL, 1, eng_numel(x), 0};
    if (c.numel == 0) return 0;
    cpu_pool_run(cpu_of(be)->pool, tanh_task, &c, (c.numel + EW_CHUNK - 1) / EW_CHUNK);
    return 0;
}
