/* conv.c - conv1d and conv_transpose1d on [channels, time] signals, direct (no im2col), split
 * across the pool in tiles of output channels x time.
 *
 * Every output sample is bias + sum over input channels (ascending) of the sum over taps
 * (ascending), accumulated in f32 in that order by every path, so tiling and threading never
 * change a result. The AVX2 kernels hold a 4-channel x 16-sample block of outputs in registers.
 * conv1d broadcasts one weight against 16 shifted input samples; conv1d walks input channels in
 * blocks (partial sums kept in y) so the input window stays in L1, and computes the edges
 * (taps outside the signal) on a zero-padded copy of the window. conv_transpose1d uses the
 * polyphase form (stride s dividing 8, kernel a multiple of s): output lane l of an 8-aligned
 * vector at u takes taps l % s + m*s of input sample u/s + l/s - m, so one tap step is one
 * vector of s weights repeated and one vector of 8/s input samples spread; its two ends and
 * other strides use the scalar formula. */
#include "engine/cpu/cpu_internal.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define CONV_X86 1
#include <immintrin.h>
#define KERNEL static __attribute__((target("avx2,fma"), noinline))
#define INLINE static inline __attribute__((always_inline, target("avx2,fma")))
#endif

/* Output channels and samples per task. */
#define CONV_O_TILE 16
#define CONV_T_TILE 256
#define CONVT_T_TILE 512
/* Input channels per pass of the conv1d kernel. */
#define CONV_CI 64

typedef struct conv_ctx {
    cpu_backend *cb;
    float *y;          /* [cout, tout] */
    const float *x;    /* [cin, tin] */
    const float *w;    /* conv1d [cout, cin, k]; transposed [cin, cout, k] */
    const float *bias; /* [cout] or NULL */
    int64_t cin, cout, k, tin, tout;
    int64_t dil, pad, stride;
    int64_t n_ttiles;
    int avx2;
} conv_ctx;

/* ---- conv1d ---- */

/* y[o][t] = b[o] + sum_i sum_j w[o][i][j] x[i][t + dil*j - pad], taps outside x skipped. */
static float conv1d_at(const conv_ctx *c, int64_t o, int64_t t) {
    float acc = c->bias ? c->bias[o] : 0.0f;
    for (int64_t i = 0; i < c->cin; i++) {
        const float *wr = c->w + (o * c->cin + i) * c->k, *xr = c->x + i * c->tin;
        for (int64_t j = 0; j < c->k; j++) {
            int64_t s = t + c->dil * j - c->pad;
            if (s >= 0 && s < c->tin) acc += wr[j] * xr[s];
        }
    }
    return acc;
}

#ifdef CONV_X86
/* Outputs o..o+O-1 (O <= 4) at 8V consecutive samples (V <= 2: 8 accumulators, 2 x vectors
 * and the broadcast weight stay in registers), input channels [i0, i1). Tap j of output sample
 * tt (0 <= tt < 8V) of input channel i is xs[i * xstride + dil * j + tt]; results go to
 * ys[a * ystride + tt], which holds the partial sums of channels [0, i0) when i0 > 0 (the bias
 * starts the sum otherwise). */
INLINE void conv1d_block(const conv_ctx *c, int O, int V, int64_t o, int64_t i0, int64_t i1,
                         const float *xs, int64_t xstride, float *ys, int64_t ystride) {
    __m256 acc[4][2];
    for (int a = 0; a < O; a++)
        for (int v = 0; v < V; v++)
            acc[a][v] = i0 ? _mm256_loadu_ps(ys + a * ystride + 8 * v)
                           : _mm256_set1_ps(c->bias ? c->bias[o + a] : 0.0f);
    const int64_t ck = c->cin * c->k, dil = c->dil, k = c->k;
    const float *wr = c->w + o * ck + i0 * k;
    xs += i0 * xstride;
    for (int64_t i = i0; i < i1; i++, xs += xstride, wr += k) {
        for (int64_t j = 0; j < k; j++) {
            __m256 xv[2];
            for (int v = 0; v < V; v++)
                xv[v] = _mm256_loadu_ps(xs + dil * j + 8 * v);
            for (int a = 0; a < O; a++) {
                __m256 wv = _mm256_broadcast_ss(wr + a * ck + j);
                for (int v = 0; v < V; v++)
                    acc[a][v] = _mm256_fmadd_ps(wv, xv[v], acc[a][v]);
            }
        }
    }
    for (int a = 0; a < O; a++)
        for (int v = 0; v < V; v++)
            _mm256_storeu_ps(ys + a * ystride + 8 * v, acc[a][v]);
}

/* The main case, 4 channels x 16 samples, written out so the 8 accumulators certainly stay in
 * registers (GCC spills the array form); same sums in the same order as conv1d_block. */
INLINE void conv1d_block_4x2(const conv_ctx *c, int64_t o, int64_t i0, int64_t i1, const float *xs,
                             int64_t xstride, float *ys, int64_t ystride) {
    const int64_t ck = c->cin * c->k, dil = c->dil, k = c->k;
    __m256 a00, a01, a10, a11, a20, a21, a30, a31;
    if (i0) {
        a00 = _mm256_loadu_ps(ys), a01 = _mm256_loadu_ps(ys + 8);
        a10 = _mm256_loadu_ps(ys + ystride), a11 = _mm256_loadu_ps(ys + ystride + 8);
        a20 = _mm256_loadu_ps(ys + 2 * ystride), a21 = _mm256_loadu_ps(ys + 2 * ystride + 8);
        a30 = _mm256_loadu_ps(ys + 3 * ystride), a31 = _mm256_loadu_ps(ys + 3 * ystride + 8);
    } else {
        a00 = a01 = _mm256_set1_ps(c->bias ? c->bias[o] : 0.0f);
        a10 = a11 = _mm256_set1_ps(c->bias ? c->bias[o + 1] : 0.0f);
        a20 = a21 = _mm256_set1_ps(c->bias ? c->bias[o + 2] : 0.0f);
        a30 = a31 = _mm256_set1_ps(c->bias ? c->bias[o + 3] : 0.0f);
    }
    const float *w0 = c->w + o * ck + i0 * k, *w1 = w0 + ck, *w2 = w1 + ck, *w3 = w2 + ck;
    xs += i0 * xstride;
    for (int64_t i = i0; i < i1; i++, xs += xstride, w0 += k, w1 += k, w2 += k, w3 += k) {
        const float *xj = xs;
        for (int64_t j = 0; j < k; j++, xj += dil) {
            __m256 x0 = _mm256_loadu_ps(xj), x1 = _mm256_loadu_ps(xj + 8), wv;
            wv = _mm256_broadcast_ss(w0 + j);
            a00 = _mm256_fmadd_ps(wv, x0, a00);
            a01 = _mm256_fmadd_ps(wv, x1, a01);
            wv = _mm256_broadcast_ss(w1 + j);
            a10 = _mm256_fmadd_ps(wv, x0, a10);
            a11 = _mm256_fmadd_ps(wv, x1, a11);
            wv = _mm256_broadcast_ss(w2 + j);
            a20 = _mm256_fmadd_ps(wv, x0, a20);
            a21 = _mm256_fmadd_ps(wv, x1, a21);
            wv = _mm256_broadcast_ss(w3 + j);
            a30 = _mm256_fmadd_ps(wv, x0, a30);
            a31 = _mm256_fmadd_ps(wv, x1, a31);
        }
    }
    _mm256_storeu_ps(ys, a00);
    _mm256_storeu_ps(ys + 8, a01);
    _mm256_storeu_ps(ys + ystride, a10);
    _mm256_storeu_ps(ys + ystride + 8, a11);
    _mm256_storeu_ps(ys + 2 * ystride, a20);
    _mm256_storeu_ps(ys + 2 * ystride + 8, a21);
    _mm256_storeu_ps(ys + 3 * ystride, a30);
    _mm256_storeu_ps(ys + 3 * ystride + 8, a31);
}

KERNEL void conv1d_blocks(const conv_ctx *c, int O, int V, int64_t o, int64_t i0, int64_t i1,
                          const float *xs, int64_t xstride, float *ys, int64_t ystride) {
    if (O == 4) {
        if (V == 2)
            conv1d_block_4x2(c, o, i0, i1, xs, xstride, ys, ystride);
        else
            conv1d_block(c, 4, 1, o, i0, i1, xs, xstride, ys, ystride);
    } else {
        if (V == 2)
            conv1d_block(c, 1, 2, o, i0, i1, xs, xstride, ys, ystride);
        else
            conv1d_block(c, 1, 1, o, i0, i1, xs, xstride, ys, ystride);
    }
}

/* Outputs [ta, tb) of channels [o0, o1) whose taps leave x: the needed input window, zero
 * outside x, is copied into `win` once per step and the vector kernel runs on it into `tmp`;
 * adding zeros leaves every sum as the scalar formula has it. */
static void conv1d_edge(const conv_ctx *c, int64_t o0, int64_t o1, int64_t ta, int64_t tb,
                        float *win) {
    while (ta < tb) {
        int V = tb - ta > 8 ? 2 : 1;
        int64_t span = 8 * V + c->dil * (c->k - 1), s0 = ta - c->pad;
        int64_t m0 = s0 < 0 ? -s0 : 0, m1 = c->tin - s0 < span ? c->tin - s0 : span;
        for (int64_t i = 0; i < c->cin; i++) {
            float *row = win + i * span;
            if (m1 <= m0) {
                memset(row, 0, 4 * (size_t)span);
                continue;
            }
            memset(row, 0, 4 * (size_t)m0);
            memcpy(row + m0, c->x + i * c->tin + s0 + m0, 4 * (size_t)(m1 - m0));
            memset(row + m1, 0, 4 * (size_t)(span - m1));
        }
        int64_t n = tb - ta < 8 * V ? tb - ta : 8 * V;
        for (int64_t o = o0; o < o1;) {
            int O = o1 - o >= 4 ? 4 : 1;
            float tmp[4 * 16];
            conv1d_blocks(c, O, V, o, 0, c->cin, win, span, tmp, 16);
            for (int a = 0; a < O; a++)
                memcpy(c->y + (o + a) * c->tout + ta, tmp + a * 16, 4 * (size_t)n);
            o += O;
        }
        ta += n;
    }
}

/* Scratch floats a thread needs for conv1d_edge's window. */
static size_t conv1d_window(const conv_ctx *c) {
    return (size_t)c->cin * (size_t)(16 + c->dil * (c->k - 1));
}
#endif

static void conv1d_task(void *p, int64_t task, int thread) {
    const conv_ctx *c = p;
    int64_t o0 = (task / c->n_ttiles) * CONV_O_TILE, t0 = (task % c->n_ttiles) * CONV_T_TILE;
    int64_t o1 = o0 + CONV_O_TILE < c->cout ? o0 + CONV_O_TILE : c->cout;
    int64_t t1 = t0 + CONV_T_TILE < c->tout ? t0 + CONV_T_TILE : c->tout;
    if (!c->avx2) {
        (void)thread;
        for (int64_t o = o0; o < o1; o++)
            for (int64_t t = t0; t < t1; t++)
                c->y[o * c->tout + t] = conv1d_at(c, o, t);
        return;
    }
#ifdef CONV_X86
    /* interior [lo, hi): every tap inside x, whole vectors of 8 */
    int64_t lo = c->pad, hi = c->tin + c->pad - c->dil * (c->k - 1);
    if (lo < t0) lo = t0;
    if (hi > t1) hi = t1;
    if (hi < lo) hi = lo;
    hi = lo + ((hi - lo) & ~(int64_t)7);
    float *win = c->cb->scratch[thread];
    conv1d_edge(c, o0, o1, t0, lo < t1 ? lo : t1, win);
    conv1d_edge(c, o0, o1, hi > t0 ? hi : t0, t1, win);
    /* Input channels in blocks of CONV_CI (partial sums kept in y), then time, then the
     * channel groups of the tile: the x window of one 16-sample step of a channel block stays
     * in L1 while every group uses it. */
    for (int64_t i0 = 0; i0 < c->cin; i0 += CONV_CI) {
        int64_t i1 = i0 + CONV_CI < c->cin ? i0 + CONV_CI : c->cin;
        for (int64_t t = lo; t < hi;) {
            int V = hi - t >= 16 ? 2 : 1;
            for (int64_t o = o0; o < o1; o += o1 - o >= 4 ? 4 : 1)
                conv1d_blocks(c, o1 - o >= 4 ? 4 : 1, V, o, i0, i1, c->x + t - c->pad, c->tin,
                              c->y + o * c->tout + t, c->tout);
            t += 8 * V;
        }
    }
#endif
}

static int conv_shapes(eng_backend *be, const char *op, const eng_tensor *y, const eng_tensor *x,
                       const eng_tensor *w, const eng_tensor *bias, int64_t *cin, int64_t *tin,
                       int64_t *yc, int64_t *yt) {
    int rc;
    char s1[96];
    if ((rc = cpu_check_tensor(be, op, "x", x, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, op, "y", y, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, op, "w", w, ENG_DT_F32)) ||
        (bias && (rc = cpu_check_tensor(be, op, "bias", bias, ENG_DT_F32))))
        return rc;
    const eng_tensor *sig[2] = {x, y};
    int64_t *dims[2][2] = {{cin, tin}, {yc, yt}};
    for (int k = 0; k < 2; k++) {
        const eng_tensor *t = sig[k];
        if (!(t->ndim == 2 || (t->ndim == 3 && t->shape[0] == 1)))
            return eng_backend_fail(be, ENG_EINVAL, "%s: %s must be [channels, time], got %s", op,
                                    k ? "y" : "x", cpu_tensor_str(s1, sizeof s1, t));
        *dims[k][0] = t->shape[t->ndim - 2];
        *dims[k][1] = t->shape[t->ndim - 1];
    }
    if (w->ndim != 3)
        return eng_backend_fail(be, ENG_EINVAL, "%s: w must be 3-dimensional, got %s", op,
                                cpu_tensor_str(s1, sizeof s1, w));
    return 0;
}

int cpu_conv1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
               const eng_tensor *bias, int dilation, int padding) {
    int64_t cin = 0, tin = 0, cout = 0, tout = 0;
    char s1[96], s2[96], s3[96];
    int rc = conv_shapes(be, "conv1d", y, x, w, bias, &cin, &tin, &cout, &tout);
    if (rc) return rc;
    int64_t k = w->shape[2];
    if (dilation < 1 || padding < 0 || k < 1)
        return eng_backend_fail(be, ENG_EINVAL, "conv1d: dilation %d, padding %d, kernel %lld",
                                dilation, padding, (long long)k);
    int64_t want = tin + 2 * (int64_t)padding - (int64_t)dilation * (k - 1);
    if (w->shape[0] != cout || w->shape[1] != cin || want < 1 || tout != want ||
        (bias && eng_numel(bias) != cout))
        return eng_backend_fail(be, ENG_EINVAL,
                                "conv1d: x %s, w %s (dilation %d, padding %d) "
                                "give [%lld, %lld], y is %s",
                                cpu_tensor_str(s1, sizeof s1, x), cpu_tensor_str(s2, sizeof s2, w),
                                dilation, padding, (long long)w->shape[0], (long long)want,
                                cpu_tensor_str(s3, sizeof s3, y));
    if (y->data == x->data) return eng_backend_fail(be, ENG_EINVAL, "conv1d: y may not alias x");
    cpu_backend *cb = cpu_of(be);
    conv_ctx c = {cb,
                  y->data,
                  x->data,
                  w->data,
                  bias ? bias->data : NULL,
                  cin,
                  cout,
                  k,
                  tin,
                  tout,
                  dilation,
                  padding,
                  1,
                  (tout + CONV_T_TILE - 1) / CONV_T_TILE,
                  cb->use_avx2};
#ifdef CONV_X86
    if (c.avx2 && (rc = cpu_scratch_reserve(cb, conv1d_window(&c)))) return rc;
#endif
    cpu_pool_run(cb->pool, conv1d_task, &c, (cout + CONV_O_TILE - 1) / CONV_O_TILE * c.n_ttiles);
    return 0;
}

/* ---- conv_transpose1d ---- */

/* y[o][t] with u = t + pad: b[o] + sum_i sum_m x[i][u/s - m] w[i][o][u%s + m*s] over the taps
 * that exist (tap < k, input index inside x). */
static float convt_at(const conv_ctx *c, int64_t o, int64_t t) {
    int64_t u = t + c->pad, s = c->stride, q = u / s, r = u % s;
    float acc = c->bias ? c->bias[o] : 0.0f;
    for (int64_t i = 0; i < c->cin; i++) {
        const float *wr = c->w + (i * c->cout + o) * c->k, *xr = c->x + i * c->tin;
        for (int64_t m = 0; r + m * s < c->k; m++) {
            int64_t src = q - m;
            if (src >= 0 && src < c->tin) acc += xr[src] * wr[r + m * s];
        }
    }
    return acc;
}

#ifdef CONV_X86
/* The input samples x[base + lane / S] of an 8-aligned output vector (S divides 8). */
INLINE __m256 convt_x(const float *xr, int64_t base, int S) {
    switch (S) {
    case 8:
        return _mm256_broadcast_ss(xr + base);
    case 4: {
        __m128 two = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(xr + base)));
        return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two),
                                        _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    }
    case 2: {
        __m128 four = _mm_loadu_ps(xr + base);
        return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(four),
                                        _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    }
    default:
        return _mm256_loadu_ps(xr + base);
    }
}

/* Taps m*S .. m*S + S-1 of one weight row, repeated across the 8 lanes (lane l takes tap
 * l % S + m*S); reads exactly S floats. */
INLINE __m256 convt_w(const float *wr, int S) {
    switch (S) {
    case 8:
        return _mm256_loadu_ps(wr);
    case 4:
        return _mm256_broadcast_ps((const __m128 *)wr);
    case 2:
        return _mm256_castpd_ps(_mm256_broadcast_sd((const double *)wr));
    default:
        return _mm256_broadcast_ss(wr);
    }
}

/* Outputs o..o+O-1 (O <= 4) at full-signal positions u..u+8V-1 (V <= 2, u a multiple of 8,
 * every tap inside x), stride S with k = taps * S. */
INLINE void convt_block(const conv_ctx *c, int S, int O, int V, int64_t o, int64_t i0, int64_t i1,
                        int64_t u) {
    const int64_t taps = c->k / S, rowk = c->k, ok = c->cout * c->k;
    float *y = c->y + o * c->tout + u - c->pad;
    __m256 acc[4][2];
    for (int a = 0; a < O; a++)
        for (int v = 0; v < V; v++)
            acc[a][v] = i0 ? _mm256_loadu_ps(y + a * c->tout + 8 * v)
                           : _mm256_set1_ps(c->bias ? c->bias[o + a] : 0.0f);
    const float *xr = c->x + i0 * c->tin, *wr = c->w + i0 * ok + o * rowk;
    for (int64_t i = i0; i < i1; i++, xr += c->tin, wr += ok) {
        for (int64_t m = 0; m < taps; m++) {
            __m256 xv[2];
            for (int v = 0; v < V; v++)
                xv[v] = convt_x(xr, (u + 8 * v) / S - m, S);
            for (int a = 0; a < O; a++) {
                __m256 wv = convt_w(wr + a * rowk + m * S, S);
                for (int v = 0; v < V; v++)
                    acc[a][v] = _mm256_fmadd_ps(xv[v], wv, acc[a][v]);
            }
        }
    }
    for (int a = 0; a < O; a++)
        for (int v = 0; v < V; v++)
            _mm256_storeu_ps(y + a * c->tout + 8 * v, acc[a][v]);
}

/* The main case, 4 channels x 16 outputs, written out (GCC spills the array form); the same
 * sums in the same order as convt_block. */
INLINE void convt_block_4x2(const conv_ctx *c, int S, int64_t o, int64_t i0, int64_t i1,
                            int64_t u) {
    const int64_t taps = c->k / S, rowk = c->k, ok = c->cout * c->k, ts = c->tout;
    float *y = c->y + o * ts + u - c->pad;
    __m256 a00, a01, a10, a11, a20, a21, a30, a31;
    if (i0) {
        a00 = _mm256_loadu_ps(y), a01 = _mm256_loadu_ps(y + 8);
        a10 = _mm256_loadu_ps(y + ts), a11 = _mm256_loadu_ps(y + ts + 8);
        a20 = _mm256_loadu_ps(y + 2 * ts), a21 = _mm256_loadu_ps(y + 2 * ts + 8);
        a30 = _mm256_loadu_ps(y + 3 * ts), a31 = _mm256_loadu_ps(y + 3 * ts + 8);
    } else {
        a00 = a01 = _mm256_set1_ps(c->bias ? c->bias[o] : 0.0f);
        a10 = a11 = _mm256_set1_ps(c->bias ? c->bias[o + 1] : 0.0f);
        a20 = a21 = _mm256_set1_ps(c->bias ? c->bias[o + 2] : 0.0f);
        a30 = a31 = _mm256_set1_ps(c->bias ? c->bias[o + 3] : 0.0f);
    }
    const float *xr = c->x + i0 * c->tin, *wr = c->w + i0 * ok + o * rowk;
    for (int64_t i = i0; i < i1; i++, xr += c->tin, wr += ok) {
        for (int64_t m = 0; m < taps; m++) {
            __m256 x0 = convt_x(xr, u / S - m, S), x1 = convt_x(xr, (u + 8) / S - m, S), wv;
            wv = convt_w(wr + m * S, S);
            a00 = _mm256_fmadd_ps(x0, wv, a00);
            a01 = _mm256_fmadd_ps(x1, wv, a01);
            wv = convt_w(wr + rowk + m * S, S);
            a10 = _mm256_fmadd_ps(x0, wv, a10);
            a11 = _mm256_fmadd_ps(x1, wv, a11);
            wv = convt_w(wr + 2 * rowk + m * S, S);
            a20 = _mm256_fmadd_ps(x0, wv, a20);
            a21 = _mm256_fmadd_ps(x1, wv, a21);
            wv = convt_w(wr + 3 * rowk + m * S, S);
            a30 = _mm256_fmadd_ps(x0, wv, a30);
            a31 = _mm256_fmadd_ps(x1, wv, a31);
        }
    }
    _mm256_storeu_ps(y, a00);
    _mm256_storeu_ps(y + 8, a01);
    _mm256_storeu_ps(y + ts, a10);
    _mm256_storeu_ps(y + ts + 8, a11);
    _mm256_storeu_ps(y + 2 * ts, a20);
    _mm256_storeu_ps(y + 2 * ts + 8, a21);
    _mm256_storeu_ps(y + 3 * ts, a30);
    _mm256_storeu_ps(y + 3 * ts + 8, a31);
}

#define CONVT_BLOCKS_FOR(NAME, S)                                                                  \
    KERNEL void NAME(const conv_ctx *c, int O, int V, int64_t o, int64_t i0, int64_t i1,           \
                     int64_t u) {                                                                  \
        if (O == 4 && V == 2)                                                                      \
            convt_block_4x2(c, S, o, i0, i1, u);                                                   \
        else if (O == 4)                                                                           \
            convt_block(c, S, 4, 1, o, i0, i1, u);                                                 \
        else if (V == 2)                                                                           \
            convt_block(c, S, 1, 2, o, i0, i1, u);                                                 \
        else                                                                                       \
            convt_block(c, S, 1, 1, o, i0, i1, u);                                                 \
    }
CONVT_BLOCKS_FOR(convt_blocks_s1, 1)
CONVT_BLOCKS_FOR(convt_blocks_s2, 2)
CONVT_BLOCKS_FOR(convt_blocks_s4, 4)
CONVT_BLOCKS_FOR(convt_blocks_s8, 8)

typedef void (*convt_fn)(const conv_ctx *, int, int, int64_t, int64_t, int64_t, int64_t);

/* Outputs at full-signal positions [ua, ub) of channels [o0, o1) whose taps leave x (the two
 * ends): for each 8-aligned step the needed input samples, zero outside x, are copied into
 * `win` and the vector kernel runs on that copy into a small buffer (adding zeros leaves every
 * sum as the scalar formula has it). */
static void convt_edge(const conv_ctx *c, convt_fn fn, int64_t o0, int64_t o1, int64_t ua,
                       int64_t ub, float *win) {
    int64_t s = c->stride, taps = c->k / s, per = 8 / s;
    for (int64_t u0 = ua & ~(int64_t)7; u0 < ub; u0 += 8) {
        int64_t qlo = u0 / s - (taps - 1), qhi = (u0 + 7) / s;
        int64_t s0 = (qlo >= 0 ? qlo / per : -((-qlo + per - 1) / per)) * per;
        int64_t width = qhi - s0 + 1;
        for (int64_t i = 0; i < c->cin; i++)
            for (int64_t m = 0; m < width; m++) {
                int64_t src = s0 + m;
                win[i * width + m] = src >= 0 && src < c->tin ? c->x[i * c->tin + src] : 0.0f;
            }
        float tmp[4 * 8];
        conv_ctx e = *c;
        e.x = win;
        e.tin = width;
        e.y = tmp;
        e.tout = 8;
        e.pad = u0 - s0 * s; /* the kernel's output index u - pad is then 0 */
        for (int64_t o = o0; o < o1;) {
            int O = o1 - o >= 4 ? 4 : 1;
            /* channels o.. become the kernel's channels 0.., so it writes tmp[a * 8 + l] */
            e.w = c->w + o * c->k;
            e.bias = c->bias ? c->bias + o : NULL;
            fn(&e, O, 1, 0, 0, c->cin, u0 - s0 * s);
            for (int a = 0; a < O; a++)
                for (int l = 0; l < 8; l++)
                    if (u0 + l >= ua && u0 + l < ub)
                        c->y[(o + a) * c->tout + u0 + l - c->pad] = tmp[a * 8 + l];
            o += O;
        }
    }
}

/* Scratch floats a thread needs for convt_edge's window. */
static size_t convt_window(const conv_ctx *c) {
    return (size_t)c->cin * (size_t)(c->k / c->stride + 16);
}
#endif

/* 1 when the polyphase vector kernel handles this transposed convolution. */
static int convt_vector_ok(const conv_ctx *c) {
    return c->avx2 && 8 % c->stride == 0 && c->k % c->stride == 0;
}

/* Tiles are CONVT_T_TILE samples of the full (unpadded) signal u = t + pad, so vectors stay
 * 8-aligned in u inside every tile and only the signal's two ends take the scalar formula. */
static void convt_task(void *p, int64_t task, int thread) {
    const conv_ctx *c = p;
    int64_t o0 = (task / c->n_ttiles) * CONV_O_TILE, b = task % c->n_ttiles;
    int64_t o1 = o0 + CONV_O_TILE < c->cout ? o0 + CONV_O_TILE : c->cout;
    int64_t ua = b * CONVT_T_TILE, ub = ua + CONVT_T_TILE;
    if (ua < c->pad) ua = c->pad;
    if (ub > c->pad + c->tout) ub = c->pad + c->tout;
    if (ub <= ua) return;
    if (!convt_vector_ok(c)) {
        for (int64_t o = o0; o < o1; o++)
            for (int64_t u = ua; u < ub; u++)
                c->y[o * c->tout + u - c->pad] = convt_at(c, o, u - c->pad);
        return;
    }
#ifdef CONV_X86
    /* vector range: 8-aligned, u / s - (taps - 1) >= 0 and (u + 7) / s < tin */
    int64_t s = c->stride, taps = c->k / s;
    int64_t ulo = ua > (taps - 1) * s ? ua : (taps - 1) * s;
    ulo = (ulo + 7) & ~(int64_t)7;
    int64_t uhi = ub < c->tin * s ? ub : c->tin * s;
    uhi = uhi > ulo ? ulo + ((uhi - ulo) & ~(int64_t)7) : ulo;
    if (uhi > ub) uhi = ulo = ub; /* nothing whole fits */
    convt_fn fn = s == 8   ? convt_blocks_s8
                  : s == 4 ? convt_blocks_s4
                  : s == 2 ? convt_blocks_s2
                           : convt_blocks_s1;
    float *win = c->cb->scratch[thread];
    convt_edge(c, fn, o0, o1, ua, ulo < ub ? ulo : ub, win);
    convt_edge(c, fn, o0, o1, uhi > ua ? uhi : ua, ub, win);
    /* input channels in blocks (partial sums in y) so the tile's weights stay in cache */
    for (int64_t i0 = 0; i0 < c->cin; i0 += CONV_CI) {
        int64_t i1 = i0 + CONV_CI < c->cin ? i0 + CONV_CI : c->cin;
        for (int64_t u = ulo; u < uhi;) {
            int V = uhi - u >= 16 ? 2 : 1;
            for (int64_t o = o0; o < o1; o += o1 - o >= 4 ? 4 : 1)
                fn(c, o1 - o >= 4 ? 4 : 1, V, o, i0, i1, u);
            u += 8 * V;
        }
    }
#endif
}

int cpu_conv_transpose1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                         const eng_tensor *bias, int stride, int padding) {
    int64_t cin = 0, tin = 0, cout = 0, tout = 0;
    char s1[96], s2[96], s3[96];
    int rc = conv_shapes(be, "conv_transpose1d", y, x, w, bias, &cin, &tin, &cout, &tout);
    if (rc) return rc;
    int64_t k = w->shape[2];
    if (stride < 1 || padding < 0 || k < 1)
        return eng_backend_fail(be, ENG_EINVAL,
                                "conv_transpose1d: stride %d, padding %d, "
                                "kernel %lld",
                                stride, padding, (long long)k);
    int64_t want = (tin - 1) * stride - 2 * (int64_t)padding + k;
    if (w->shape[0] != cin || w->shape[1] != cout || tin < 1 || want < 1 || tout != want ||
        (bias && eng_numel(bias) != cout))
        return eng_backend_fail(be, ENG_EINVAL,
                                "conv_transpose1d: x %s, w %s (stride %d, "
                                "padding %d) give [%lld, %lld], y is %s",
                                cpu_tensor_str(s1, sizeof s1, x), cpu_tensor_str(s2, sizeof s2, w),
                                stride, padding, (long long)w->shape[1], (long long)want,
                                cpu_tensor_str(s3, sizeof s3, y));
    if (y->data == x->data)
        return eng_backend_fail(be, ENG_EINVAL, "conv_transpose1d: y may not alias x");
    cpu_backend *cb = cpu_of(be);
    conv_ctx c = {cb,
                  y->data,
                  x->data,
                  w->data,
                  bias ? bias->data : NULL,
                  cin,
                  cout,
                  k,
                  tin,
                  tout,
                  1,
                  padding,
                  stride,
                  (padding + tout + CONVT_T_TILE - 1) / CONVT_T_TILE,
                  cb->use_avx2};
#ifdef CONV_X86
    if (convt_vector_ok(&c) && (rc = cpu_scratch_reserve(cb, convt_window(&c)))) return rc;
#endif
    cpu_pool_run(cb->pool, convt_task, &c, (cout + CONV_O_TILE - 1) / CONV_O_TILE * c.n_ttiles);
    return 0;
}
