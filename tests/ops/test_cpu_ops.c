/* test_cpu_ops - the CPU backend's non-linear ops against double-precision references on
 * seeded random inputs, their shape checks, and the backend object itself (selection by name,
 * memory accounting). Tolerances are stated per op. */
#include "test.h"
#include "ops/ops_util.h"

#include <string.h>

static float *fvec(size_t n) {
    return calloc(n ? n : 1, sizeof(float));
}
static double *dvec(size_t n) {
    return calloc(n ? n : 1, sizeof(double));
}

/* ---- backend ---- */

TEST(backend_by_name) {
    eng_backend *be = NULL;
    eng_error err = {0};
    ASSERT_OK(eng_backend_new(&be, "cpu", 2, &err));
    ASSERT_EQ(be->kind, ENG_BACKEND_CPU);
    ASSERT_EQ(be->nthreads, 2);
    ASSERT_STREQ(be->ops->name, "cpu");
    ASSERT_TRUE(be->ops->graph_begin == NULL);
    eng_backend_free(be);
    be = NULL;
    ASSERT_EQ(eng_backend_new(&be, "tpu", 1, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "tpu");
    ASSERT_TRUE(be == NULL);
#ifndef VOXQ_HAVE_CUDA
    ASSERT_EQ(eng_backend_new(&be, "cuda", 1, &err), ENG_EUNSUPPORTED);
    ASSERT_CONTAINS(err.msg, "CUDA");
    ASSERT_OK(eng_backend_new(&be, "auto", 1, &err));
    ASSERT_EQ(be->kind, ENG_BACKEND_CPU);
    eng_backend_free(be);
#endif
    eng_backend_free(NULL);
}

TEST(backend_memory_accounting) {
    eng_backend *be = make_cpu(1, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    void *a = NULL, *b = NULL;
    ASSERT_OK(eng_alloc(be, 1000, &a));
    ASSERT_OK(eng_alloc(be, 24, &b));
    ASSERT_EQ((uintptr_t)a % 64, 0);
    ASSERT_EQ((uintptr_t)b % 64, 0);
    eng_mem_stats st;
    be->ops->mem_stats(be, &st);
    ASSERT_EQ(st.allocated, 1024);
    ASSERT_EQ(st.peak, 1024);
    memset(a, 0xab, 1000);
    char host[1000];
    ASSERT_OK(eng_download(be, host, a, 1000));
    ASSERT_EQ((unsigned char)host[999], 0xab);
    ASSERT_OK(be->ops->memset0(be, a, 1000));
    ASSERT_EQ(((unsigned char *)a)[500], 0);
    eng_free(be, a);
    be->ops->mem_stats(be, &st);
    ASSERT_EQ(st.allocated, 24);
    ASSERT_EQ(st.peak, 1024);
    eng_free(be, b);
    eng_free(be, NULL);
    be->ops->mem_stats(be, &st);
    ASSERT_EQ(st.allocated, 0);
    ASSERT_EQ(eng_alloc(be, SIZE_MAX - 8, &a), ENG_ENOMEM);
    ASSERT_TRUE(a == NULL);
    eng_backend_free(be);
}

TEST(weight_load_aliases) {
    eng_backend *be = make_cpu(1, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    uint16_t data[12] = {0};
    eng_weight host = {ENG_W_BF16, 3, 4, 0, data, NULL}, w;
    ASSERT_OK(be->ops->weight_load(be, &host, &w));
    ASSERT_TRUE(w.data == data);
    be->ops->weight_release(be, &w);
    eng_backend_free(be);
}

/* ---- rmsnorm, add, silu_mul, tanh ---- */

/* rmsnorm: f32 result of a 1-ulp-accurate formula, tolerance 4 ulp relative + 1e-7. */
TEST(rmsnorm_matches_reference) {
    eng_backend *be = make_cpu(2, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    rng r = rng_new(1);
    int64_t n = 5, d = 300;
    float *x = fvec((size_t)(n * d)), *w = fvec((size_t)d), *y = fvec((size_t)(n * d));
    double *ref = dvec((size_t)(n * d)), *tol = dvec((size_t)(n * d));
    fill_normal(&r, x, (size_t)(n * d), 3.0f);
    for (int64_t i = 0; i < d; i++)
        w[i] = 1.0f + 0.2f * rng_unif(&r);
    for (int64_t k = 0; k < d; k++)
        x[k] *= 1e-3f; /* a row of tiny values: eps matters */
    for (int64_t row = 0; row < n; row++) {
        double ss = 0;
        for (int64_t i = 0; i < d; i++)
            ss += (double)x[row * d + i] * x[row * d + i];
        double inv = 1.0 / sqrt(ss / (double)d + 1e-5);
        for (int64_t i = 0; i < d; i++) {
            ref[row * d + i] = x[row * d + i] * inv * w[i];
            tol[row * d + i] = 4 * 2 * U32 * fabs(ref[row * d + i]);
        }
    }
    eng_tensor xt = eng_view2(x, ENG_DT_F32, n, d), yt = eng_view2(y, ENG_DT_F32, n, d);
    eng_tensor wt = eng_view1(w, ENG_DT_F32, d);
    ASSERT_OK(eng_rmsnorm(be, &yt, &xt, &wt, 1e-5f));
    ASSERT_TOL("rmsnorm", y, ref, tol, 1e-7, (size_t)(n * d));
    ASSERT_OK(eng_rmsnorm(be, &xt, &xt, &wt, 1e-5f)); /* in place */
    ASSERT_TOL("rmsnorm in place", x, ref, tol, 1e-7, (size_t)(n * d));
    eng_tensor wbad = eng_view1(w, ENG_DT_F32, d - 1);
    ASSERT_EQ(eng_rmsnorm(be, &yt, &xt, &wbad, 1e-5f), ENG_EINVAL);
    ASSERT_CONTAINS(be->errstr, "rmsnorm");
    free(x), free(w), free(y), free(ref), free(tol);
    eng_backend_free(be);
}

TEST(add_and_silu_mul_and_tanh) {
    eng_backend *be = make_cpu(2, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    rng r = rng_new(2);
    int64_t n = 300, f = 77; /* several pool tasks */
    float *gu = fvec((size_t)(n * 2 * f)), *y = fvec((size_t)(n * f)), *a = fvec((size_t)(n * f));
    double *ref = dvec((size_t)(n * 2 * f)), *tol = dvec((size_t)(n * 2 * f));
    fill_normal(&r, gu, (size_t)(n * 2 * f), 4.0f);
    fill_normal(&r, a, (size_t)(n * f), 1.0f);
    for (int64_t row = 0; row < n; row++)
        for (int64_t i = 0; i < f; i++) {
            double g = gu[row * 2 * f + i], u = gu[row * 2 * f + f + i];
            ref[row * f + i] = g / (1 + exp(-g)) * u;
            tol[row * f + i] = 8 * U32 * fabs(ref[row * f + i]); /* expf + 3 roundings */
        }
    eng_tensor gt = eng_view2(gu, ENG_DT_F32, n, 2 * f), yt = eng_view2(y, ENG_DT_F32, n, f);
    ASSERT_OK(eng_silu_mul(be, &yt, &gt));
    ASSERT_TOL("silu_mul", y, ref, tol, 1e-30, (size_t)(n * f));
    /* add: exact (one f32 addition, compared with its own f32 result) */
    float *before = fvec((size_t)(n * f));
    memcpy(before, y, sizeof(float) * (size_t)(n * f));
    eng_tensor at = eng_view2(a, ENG_DT_F32, n, f);
    ASSERT_OK(eng_add(be, &yt, &at));
    for (int64_t i = 0; i < n * f; i++)
        ASSERT_TRUE(y[i] == before[i] + a[i]);
    eng_tensor ashort = eng_view2(a, ENG_DT_F32, n, f - 1);
    ASSERT_EQ(eng_add(be, &yt, &ashort), ENG_EINVAL);
    eng_tensor ybad = eng_view2(y, ENG_DT_F32, n, f + 1);
    ASSERT_EQ(eng_silu_mul(be, &ybad, &gt), ENG_EINVAL);
    /* tanh: libm tanhf, 2 ulp */
    int64_t m = 40000; /* several pool tasks */
    float *x = fvec((size_t)m), *t = fvec((size_t)m);
    double *tr = dvec((size_t)m), *tt = dvec((size_t)m);
    fill_normal(&r, x, (size_t)m, 3.0f);
    for (int64_t i = 0; i < m; i++) {
        tr[i] = tanh((double)x[i]);
        tt[i] = 4 * U32 * fabs(tr[i]);
    }
    eng_tensor xt = eng_view1(x, ENG_DT_F32, m), tv = eng_view1(t, ENG_DT_F32, m);
    ASSERT_OK(eng_tanh(be, &tv, &xt));
    ASSERT_TOL("tanh", t, tr, tt, 1e-30, (size_t)m);
    ASSERT_OK(eng_tanh(be, &xt, &xt));
    ASSERT_TOL("tanh in place", x, tr, tt, 1e-30, (size_t)m);
    free(gu), free(y), free(a), free(ref), free(tol), free(before), free(x), free(t), free(tr),
        free(tt);
    eng_backend_free(be);
}

/* ---- snake ---- */

/* y = x + 1/(a + 1e-9) sin(a x)^2 with a x formed in f32 as the op does; tolerance 8 ulp of
 * |x| + |y| (sin and 3 roundings). Inputs span small values, a sweep of arguments up to
 * 1.5 * 9000 (past the vector sin's 8192 limit) and a few huge values, in both kernel sets. */
static void snake_case(int simd) {
    eng_backend *be = make_cpu(3, simd);
    ASSERT_TRUE(be != NULL);
    rng r = rng_new(3);
    int64_t c = 5, t = 7001;
    float *x = fvec((size_t)(c * t)), *al = fvec((size_t)c), *y = fvec((size_t)(c * t));
    double *ref = dvec((size_t)(c * t)), *tol = dvec((size_t)(c * t));
    fill_normal(&r, x, (size_t)(c * t), 2.0f);
    for (int64_t k = 0; k < c; k++)
        al[k] = 0.5f + (float)k * 0.25f;
    for (int64_t i = 0; i < t; i++)
        x[4 * t + i] = -9000.0f + 18000.0f * (float)i / (float)t;
    for (int l = 0; l < 5; l++)
        x[2 * t + 16 + l] = 3e5f * (float)(l - 2);
    for (int64_t k = 0; k < c; k++)
        for (int64_t i = 0; i < t; i++) {
            double xv = x[k * t + i], a = al[k], s = sin((double)(float)(al[k] * x[k * t + i]));
            ref[k * t + i] = xv + 1.0 / (a + 1e-9) * s * s;
            tol[k * t + i] = 8 * U32 * (fabs(xv) + fabs(ref[k * t + i]));
        }
    eng_tensor xt = eng_view2(x, ENG_DT_F32, c, t), yt = eng_view2(y, ENG_DT_F32, c, t);
    int64_t ash[3] = {1, c, 1};
    eng_tensor at = eng_view(al, ENG_DT_F32, 3, ash);
    ASSERT_OK(eng_snake(be, &yt, &xt, &at));
    ASSERT_TOL(simd ? "snake generic" : "snake", y, ref, tol, 1e-30, (size_t)(c * t));
    eng_tensor x3 = eng_view3(x, ENG_DT_F32, 1, c, t);
    ASSERT_OK(eng_snake(be, &x3, &x3, &at)); /* in place, [1, C, T] */
    ASSERT_TOL("snake in place", x, ref, tol, 1e-30, (size_t)(c * t));
    eng_tensor abad = eng_view1(al, ENG_DT_F32, c - 1);
    ASSERT_EQ(eng_snake(be, &yt, &xt, &abad), ENG_EINVAL);
    ASSERT_CONTAINS(be->errstr, "snake");
    free(x), free(al), free(y), free(ref), free(tol);
    eng_backend_free(be);
}

TEST(snake_matches_reference) {
    snake_case(SIMD_AUTO);
}
TEST(snake_generic_matches_reference) {
    snake_case(SIMD_GENERIC);
}

/* ---- rope ---- */

/* Half-split RoPE. The reference forms inv_freq and the angle in f32 exactly as transformers
 * does (an f32 angle at position 3000 is off by up to ~2e-4 rad from the exact one, and that is
 * the behaviour to match), then rotates in double; tolerance 1e-6 * (|lo| + |hi|) covers
 * cosf/sinf and the f32 rotation. */
TEST(rope_matches_reference) {
    eng_backend *be = make_cpu(1, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    rng r = rng_new(4);
    int64_t n = 4, heads = 3, hd = 16, half = hd / 2;
    int32_t pos[4] = {0, 1, 17, 3000};
    float *x = fvec((size_t)(n * heads * hd));
    double *ref = dvec((size_t)(n * heads * hd)), *tol = dvec((size_t)(n * heads * hd));
    fill_normal(&r, x, (size_t)(n * heads * hd), 1.0f);
    for (int64_t row = 0; row < n; row++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < half; i++) {
                float inv = 1.0f / powf(10000.0f, (float)(2 * i) / (float)hd);
                float ang = (float)pos[row] * inv;
                int64_t b = (row * heads + h) * hd;
                double lo = x[b + i], hi = x[b + i + half];
                ref[b + i] = lo * cos(ang) - hi * sin(ang);
                ref[b + i + half] = hi * cos(ang) + lo * sin(ang);
                tol[b + i] = tol[b + i + half] = 1e-6 * (fabs(lo) + fabs(hi));
            }
    /* position 0 leaves the vector unchanged */
    float row0[48];
    memcpy(row0, x, sizeof row0);
    eng_tensor xt = eng_view3(x, ENG_DT_F32, n, heads, hd), pt = eng_view1(pos, ENG_DT_I32, n);
    ASSERT_OK(eng_rope(be, &xt, &pt, 10000.0f));
    ASSERT_TOL("rope", x, ref, tol, 1e-30, (size_t)(n * heads * hd));
    ASSERT_EQ(memcmp(row0, x, sizeof row0), 0);
    eng_tensor pbad = eng_view1(pos, ENG_DT_I32, n - 1);
    ASSERT_EQ(eng_rope(be, &xt, &pbad, 10000.0f), ENG_EINVAL);
    int32_t neg[4] = {0, -1, 0, 0};
    eng_tensor pneg = eng_view1(neg, ENG_DT_I32, n);
    ASSERT_EQ(eng_rope(be, &xt, &pneg, 10000.0f), ENG_EINVAL);
    ASSERT_CONTAINS(be->errstr, "pos[1]");
    free(x), free(ref), free(tol);
    eng_backend_free(be);
}

/* ---- embed_sum ---- */

TEST(embed_sum_f32_bf16_and_bounds) {
    eng_backend *be = make_cpu(1, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    rng r = rng_new(5);
    int64_t ch = 9, stride = 20, rows = ch * stride, d = 24, n = 3;
    float *tf = fvec((size_t)(rows * d)), *y = fvec((size_t)(n * d));
    uint16_t *tb = malloc(2 * (size_t)(rows * d));
    double *ref = dvec((size_t)(n * d)), *tol = dvec((size_t)(n * d));
    fill_normal(&r, tf, (size_t)(rows * d), 1.0f);
    for (int64_t k = 0; k < rows * d; k++)
        tb[k] = eng_f32_to_bf16(tf[k]);
    int32_t ids[27];
    for (int k = 0; k < 27; k++)
        ids[k] = (int32_t)(rng_u64(&r) % (uint64_t)stride);
    ids[0] = 0, ids[26] = (int32_t)stride - 1;
    eng_tensor it = eng_view2(ids, ENG_DT_I32, n, ch), yt = eng_view2(y, ENG_DT_F32, n, d);
    for (int bf = 0; bf < 2; bf++) {
        for (int64_t row = 0; row < n; row++)
            for (int64_t i = 0; i < d; i++) {
                double s = 0, a = 0;
                for (int64_t c = 0; c < ch; c++) {
                    int64_t k = (c * stride + ids[row * ch + c]) * d + i;
                    double v = bf ? eng_bf16_to_f32(tb[k]) : tf[k];
                    s += v;
                    a += fabs(v);
                }
                ref[row * d + i] = s;
                tol[row * d + i] = (double)ch * U32 * a;
            }
        eng_tensor tt =
            bf ? eng_view2(tb, ENG_DT_BF16, rows, d) : eng_view2(tf, ENG_DT_F32, rows, d);
        ASSERT_OK(eng_embed_sum(be, &yt, &tt, &it, (int)stride));
        ASSERT_TOL(bf ? "embed_sum bf16" : "embed_sum f32", y, ref, tol, 1e-30, (size_t)(n * d));
    }
    /* C = 1: a plain lookup, exact */
    eng_tensor tt = eng_view2(tf, ENG_DT_F32, rows, d);
    int32_t one[3] = {0, 179, 57};
    eng_tensor ot = eng_view1(one, ENG_DT_I32, 3);
    ASSERT_OK(eng_embed_sum(be, &yt, &tt, &ot, 0));
    for (int k = 0; k < 3; k++)
        ASSERT_EQ(memcmp(y + k * d, tf + one[k] * d, 4 * (size_t)d), 0);
    one[1] = (int32_t)rows;
    ASSERT_EQ(eng_embed_sum(be, &yt, &tt, &ot, 0), ENG_EINVAL);
    ASSERT_CONTAINS(be->errstr, "out of range");
    ids[13] = (int32_t)stride; /* valid row of the table, but past its channel */
    ASSERT_EQ(eng_embed_sum(be, &yt, &tt, &it, (int)stride), ENG_EINVAL);
    ids[13] = -1;
    ASSERT_EQ(eng_embed_sum(be, &yt, &tt, &it, (int)stride), ENG_EINVAL);
    ids[13] = 0;
    ASSERT_EQ(eng_embed_sum(be, &yt, &tt, &it, (int)stride + 1), ENG_EINVAL); /* 9*21 > rows */
    free(tf), free(y), free(tb), free(ref), free(tol);
    eng_backend_free(be);
}

/* ---- attention ---- */

typedef struct attn_case {
    int slots, max_len, kvh, qh, hd, n;
    float scale;
} attn_case;

/* Double reference of eng_attention over a contiguous store k/v [slots, max_len, kvh, hd].
 * Tolerance per output: a score's f32 dot product is off by up to (hd/8 + 4) u sum|q k| scale,
 * which exp() turns into that relative error of the key's weight; the weighted sum of values
 * adds (keys/8 + 8) u max|v|. tol = 4 * max|v| * ((hd/8 + 4) u max_t sum|q k| scale
 * + (keys/8 + 8) u), with u = U32 and a factor 4 for expf and the final division. */
static void attn_reference(const attn_case *c, const float *q, const float *k, const float *v,
                           const int32_t *slot, const int32_t *len, const uint8_t *mask,
                           double *ref, double *tol) {
    int group = c->qh / c->kvh;
    for (int i = 0; i < c->n; i++)
        for (int h = 0; h < c->qh; h++) {
            int kh = h / group, s = slot[i];
            const float *qv = q + ((size_t)i * c->qh + h) * c->hd;
            double *out = ref + ((size_t)i * c->qh + h) * c->hd;
            double *ot = tol + ((size_t)i * c->qh + h) * c->hd;
            double sc[256], mx = -INFINITY, sum = 0, vmax = 0, qkmax = 0;
            int keys = 0;
            for (int t = 0; t < len[i]; t++) {
                if (mask && !mask[s * c->max_len + t]) continue;
                const float *kv = k + (((size_t)s * c->max_len + t) * c->kvh + kh) * c->hd;
                double d = 0, a = 0;
                for (int e = 0; e < c->hd; e++) {
                    d += (double)qv[e] * kv[e];
                    a += fabs((double)qv[e] * kv[e]);
                }
                sc[t] = d * c->scale;
                if (sc[t] > mx) mx = sc[t];
                if (a * fabs(c->scale) > qkmax) qkmax = a * fabs(c->scale);
                keys++;
            }
            for (int e = 0; e < c->hd; e++)
                out[e] = 0;
            for (int t = 0; t < len[i]; t++) {
                if (mask && !mask[s * c->max_len + t]) continue;
                const float *vv = v + (((size_t)s * c->max_len + t) * c->kvh + kh) * c->hd;
                double p = exp(sc[t] - mx);
                sum += p;
                for (int e = 0; e < c->hd; e++) {
                    out[e] += p * vv[e];
                    if (fabs(vv[e]) > vmax) vmax = fabs(vv[e]);
                }
            }
            for (int e = 0; e < c->hd; e++) {
                if (keys) out[e] /= sum;
                ot[e] = 4 * vmax * ((c->hd / 8 + 4) * U32 * qkmax + (keys / 8.0 + 8) * U32);
            }
        }
}

static void run_attention_case(const attn_case *c, int threads, int use_mask, uint64_t seed,
                               int simd) {
    eng_backend *be = make_cpu(threads, simd);
    ASSERT_TRUE(be != NULL);
    rng r = rng_new(seed);
    size_t kvn = (size_t)c->slots * c->max_len * c->kvh * c->hd, qn = (size_t)c->n * c->qh * c->hd;
    float *k = fvec(kvn), *v = fvec(kvn), *q = fvec(qn), *out = fvec(qn);
    double *ref = dvec(qn), *tol = dvec(qn);
    uint8_t *mask = calloc((size_t)c->slots * c->max_len, 1);
    int32_t slot[16], len[16];
    fill_normal(&r, k, kvn, 1.0f);
    fill_normal(&r, v, kvn, 1.0f);
    fill_normal(&r, q, qn, 0.5f);
    for (int s = 0; s < c->slots; s++)
        for (int t = 0; t < c->max_len; t++)
            mask[s * c->max_len + t] = (rng_u64(&r) % 4) != 0;
    for (int t = 0; t < c->max_len; t++)
        mask[(c->slots - 1) * c->max_len + t] = 0; /* all masked */
    for (int i = 0; i < c->n; i++) {
        slot[i] = i % c->slots;
        len[i] = (int32_t)(rng_u64(&r) % (uint64_t)(c->max_len + 1));
    }
    len[0] = c->max_len;
    if (c->n > 1) len[1] = 0;
    attn_reference(c, q, k, v, slot, len, use_mask ? mask : NULL, ref, tol);
    eng_kv kv = {k, v, ENG_DT_F32, c->slots, c->max_len, c->kvh, c->hd};
    eng_tensor qt = eng_view3(q, ENG_DT_F32, c->n, c->qh, c->hd);
    eng_tensor ot = eng_view3(out, ENG_DT_F32, c->n, c->qh, c->hd);
    eng_tensor st = eng_view1(slot, ENG_DT_I32, c->n), lt = eng_view1(len, ENG_DT_I32, c->n);
    eng_tensor mt = eng_view1(mask, ENG_DT_U8, (int64_t)c->slots * c->max_len);
    ASSERT_OK(eng_attention(be, &ot, &qt, &kv, &st, &lt, use_mask ? &mt : NULL, c->scale));
    char what[96];
    snprintf(what, sizeof what, "attention qh=%d kvh=%d hd=%d mask=%d threads=%d simd=%s", c->qh,
             c->kvh, c->hd, use_mask, threads, simd ? "generic" : "auto");
    ASSERT_TOL(what, out, ref, tol, 0, qn);
    /* rows whose keys are all masked (or len 0) are exactly zero */
    for (int i = 0; i < c->n; i++)
        if (len[i] == 0 || (use_mask && slot[i] == c->slots - 1))
            for (int e = 0; e < c->qh * c->hd; e++)
                ASSERT_TRUE(out[(size_t)i * c->qh * c->hd + e] == 0.0f);
    free(k), free(v), free(q), free(out), free(ref), free(tol), free(mask);
    eng_backend_free(be);
}

TEST(attention_gqa_masks_lengths) {
    static const attn_case cases[] = {
        {3, 20, 2, 8, 16, 7, 1.0f},    /* GQA, 4 query heads per KV head */
        {4, 33, 3, 9, 12, 11, 0.25f},  /* 3 per KV head, head_dim not a multiple of 8 */
        {2, 9, 4, 4, 8, 5, 1.0f},      /* plain multi-head */
        {2, 50, 1, 2, 128, 3, 1.0f},   /* Dia's head_dim */
        {2, 40, 2, 4, 72, 3, 0.5f},    /* head_dim 72: a partial 64-wide pass */
    };
    for (int simd = 0; simd < 2; simd++)
        for (int m = 0; m < 2; m++)
            for (int th = 1; th <= 4; th += 3)
                for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
                    run_attention_case(&cases[k], th, m, 11 + k, simd);
}

/* Writing K/V one position at a time into a store with kv_write and attending over it gives
 * exactly what attention over the same K/V laid out contiguously gives. */
TEST(kv_write_then_attention) {
    eng_backend *be = make_cpu(2, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    rng r = rng_new(21);
    int B = 2, S = 10, kvh = 2, qh = 4, hd = 8, max_len = 16, slots = 3;
    size_t tok = (size_t)kvh * hd;
    float *k = fvec((size_t)B * S * tok), *v = fvec((size_t)B * S * tok);
    float *ks = fvec((size_t)slots * max_len * tok), *vs = fvec((size_t)slots * max_len * tok);
    float *q = fvec((size_t)B * qh * hd), *o1 = fvec((size_t)B * qh * hd),
          *o2 = fvec((size_t)B * qh * hd);
    fill_normal(&r, k, (size_t)B * S * tok, 1.0f);
    fill_normal(&r, v, (size_t)B * S * tok, 1.0f);
    fill_normal(&r, q, (size_t)B * qh * hd, 1.0f);
    eng_kv store = {ks, vs, ENG_DT_F32, slots, max_len, kvh, hd};
    int32_t slot_of[2] = {2, 0}; /* batch row b lives in store slot slot_of[b] */
    for (int t = 0; t < S; t++) {
        float kr[2 * 16], vr[2 * 16];
        int32_t sl[2], ps[2];
        for (int b = 0; b < B; b++) {
            memcpy(kr + b * tok, k + ((size_t)b * S + t) * tok, tok * 4);
            memcpy(vr + b * tok, v + ((size_t)b * S + t) * tok, tok * 4);
            sl[b] = slot_of[b];
            ps[b] = t;
        }
        eng_tensor kt = eng_view3(kr, ENG_DT_F32, B, kvh, hd),
                   vt = eng_view3(vr, ENG_DT_F32, B, kvh, hd);
        eng_tensor st = eng_view1(sl, ENG_DT_I32, B), pt = eng_view1(ps, ENG_DT_I32, B);
        ASSERT_OK(eng_kv_write(be, &store, &st, &pt, &kt, &vt));
    }
    eng_kv contiguous = {k, v, ENG_DT_F32, B, S, kvh, hd};
    int32_t len[2] = {S, 7}, idx[2] = {0, 1};
    eng_tensor qt = eng_view3(q, ENG_DT_F32, B, qh, hd), lt = eng_view1(len, ENG_DT_I32, B);
    eng_tensor a = eng_view3(o1, ENG_DT_F32, B, qh, hd), b2 = eng_view3(o2, ENG_DT_F32, B, qh, hd);
    eng_tensor st_store = eng_view1(slot_of, ENG_DT_I32, B),
               st_contig = eng_view1(idx, ENG_DT_I32, B);
    ASSERT_OK(eng_attention(be, &a, &qt, &store, &st_store, &lt, NULL, 1.0f));
    ASSERT_OK(eng_attention(be, &b2, &qt, &contiguous, &st_contig, &lt, NULL, 1.0f));
    ASSERT_EQ(memcmp(o1, o2, sizeof(float) * (size_t)B * qh * hd), 0);
    /* out-of-range slot / position / length are refused */
    int32_t bad[2] = {0, 3}, ps0[2] = {0, 0};
    eng_tensor kt = eng_view3(k, ENG_DT_F32, B, kvh, hd), vt = eng_view3(v, ENG_DT_F32, B, kvh, hd);
    eng_tensor bt = eng_view1(bad, ENG_DT_I32, B), p0 = eng_view1(ps0, ENG_DT_I32, B);
    ASSERT_EQ(eng_kv_write(be, &store, &bt, &p0, &kt, &vt), ENG_EINVAL);
    ASSERT_CONTAINS(be->errstr, "slot 3");
    int32_t far[2] = {0, 16};
    eng_tensor ft = eng_view1(far, ENG_DT_I32, B);
    ASSERT_EQ(eng_kv_write(be, &store, &p0, &ft, &kt, &vt), ENG_EINVAL);
    ASSERT_EQ(eng_attention(be, &a, &qt, &store, &bt, &lt, NULL, 1.0f), ENG_EINVAL);
    int32_t long_len[2] = {17, 1};
    eng_tensor ll = eng_view1(long_len, ENG_DT_I32, B);
    ASSERT_EQ(eng_attention(be, &a, &qt, &store, &st_store, &ll, NULL, 1.0f), ENG_EINVAL);
    eng_tensor q3 = eng_view3(q, ENG_DT_F32, B, 3, hd); /* 3 query heads over 2 KV heads */
    ASSERT_EQ(eng_attention(be, &a, &q3, &store, &st_store, &lt, NULL, 1.0f), ENG_EINVAL);
    eng_kv bf = store;
    bf.dtype = ENG_DT_BF16;
    ASSERT_EQ(eng_attention(be, &a, &qt, &bf, &st_store, &lt, NULL, 1.0f), ENG_EUNSUPPORTED);
    free(k), free(v), free(ks), free(vs), free(q), free(o1), free(o2);
    eng_backend_free(be);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
