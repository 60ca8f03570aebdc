/* test_cpu_linear - linear() of the CPU backend in all four weight formats against a double
 * reference, for several row counts and odd sizes, with both kernel sets (AVX2 when the
 * machine has it, portable), and bit-identical results across thread counts and batch sizes.
 *
 * Tolerance: the reference uses the dequantized weight (q * scale in double), so the only
 * error is f32 rounding: the kernels sum 8 lanes of in/8 terms and then the lanes, each term a
 * rounded product (and, quantized, a rounded q * scale), so
 *   |y - ref| <= 2 * U32 * (in/8 + 16) * sum_i |w_i x_i|
 * (twice the first-order bound of that summation). A wrong nibble order, scale index or row
 * mapping gives errors of the order of |y| itself, far outside it. */
#include "test.h"
#include "ops/ops_util.h"

#include <string.h>

typedef struct qweight {
    eng_weight w;
    void *data;
    float *scales;
    double *deq; /* [out, in] the dequantized values the reference uses */
} qweight;

/* Builds a weight of format fmt from f32 values src[out, in] with this test's own quantizers:
 * int8 symmetric per row (scale = max|w| / 127), int4 symmetric per group (scale = max|w| / 7,
 * nibble = q + 8, low nibble = even column). */
static int make_weight(qweight *qw, eng_wfmt fmt, const float *src, int64_t out, int64_t in,
                       int group) {
    memset(qw, 0, sizeof *qw);
    qw->deq = malloc(sizeof(double) * (size_t)(out * in));
    if (!qw->deq) return -1;
    qw->w = (eng_weight){fmt, out, in, fmt == ENG_W_I4 ? group : 0, NULL, NULL};
    if (fmt == ENG_W_F32) {
        float *d = malloc(sizeof(float) * (size_t)(out * in));
        memcpy(d, src, sizeof(float) * (size_t)(out * in));
        for (int64_t k = 0; k < out * in; k++)
            qw->deq[k] = d[k];
        qw->data = d;
    } else if (fmt == ENG_W_BF16) {
        uint16_t *d = malloc(2 * (size_t)(out * in));
        for (int64_t k = 0; k < out * in; k++) {
            d[k] = eng_f32_to_bf16(src[k]);
            qw->deq[k] = eng_bf16_to_f32(d[k]);
        }
        qw->data = d;
    } else if (fmt == ENG_W_I8) {
        int8_t *d = malloc((size_t)(out * in));
        qw->scales = malloc(sizeof(float) * (size_t)out);
        for (int64_t o = 0; o < out; o++) {
            float amax = 0;
            for (int64_t i = 0; i < in; i++)
                amax = fmaxf(amax, fabsf(src[o * in + i]));
            float s = amax > 0 ? amax / 127.0f : 1.0f;
            qw->scales[o] = s;
            for (int64_t i = 0; i < in; i++) {
                long q = lrintf(src[o * in + i] / s);
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                d[o * in + i] = (int8_t)q;
                qw->deq[o * in + i] = (double)q * s;
            }
        }
        qw->data = d;
    } else {
        int64_t bpr = (in + 1) / 2, ng = (in + group - 1) / group;
        uint8_t *d = calloc((size_t)(out * bpr), 1);
        qw->scales = malloc(sizeof(float) * (size_t)(out * ng));
        for (int64_t o = 0; o < out; o++)
            for (int64_t g = 0; g < ng; g++) {
                int64_t i0 = g * group, i1 = i0 + group < in ? i0 + group : in;
                float amax = 0;
                for (int64_t i = i0; i < i1; i++)
                    amax = fmaxf(amax, fabsf(src[o * in + i]));
                float s = amax > 0 ? amax / 7.0f : 1.0f;
                qw->scales[o * ng + g] = s;
                for (int64_t i = i0; i < i1; i++) {
                    long q = lrintf(src[o * in + i] / s);
                    q = q > 7 ? 7 : q < -7 ? -7 : q;
                    uint8_t nib = (uint8_t)(q + 8);
                    d[o * bpr + i / 2] |= (i & 1) ? (uint8_t)(nib << 4) : nib;
                    qw->deq[o * in + i] = (double)q * s;
                }
            }
        qw->data = d;
    }
    qw->w.data = qw->data;
    qw->w.scales = qw->scales;
    return 0;
}

static void free_weight(qweight *qw) {
    free(qw->data);
    free(qw->scales);
    free(qw->deq);
}

/* ref[n, out] and tol[n, out] for x[n, in] . deq^T */
static void reference(const qweight *qw, const float *x, int64_t n, double *ref, double *tol) {
    int64_t in = qw->w.in, out = qw->w.out;
    for (int64_t r = 0; r < n; r++)
        for (int64_t o = 0; o < out; o++) {
            double s = 0, a = 0;
            for (int64_t i = 0; i < in; i++) {
                double t = qw->deq[o * in + i] * x[r * in + i];
                s += t;
                a += fabs(t);
            }
            ref[r * out + o] = s;
            tol[r * out + o] = 2 * U32 * (double)(in / 8 + 16) * a;
        }
}

/* Runs linear on be and returns y (malloc'd) or NULL. */
static float *run_linear(eng_backend *be, const qweight *qw, const float *x, int64_t n) {
    float *y = malloc(sizeof(float) * (size_t)(n * qw->w.out) + 1);
    eng_tensor xt = eng_view2((void *)x, ENG_DT_F32, n, qw->w.in);
    eng_tensor yt = eng_view2(y, ENG_DT_F32, n, qw->w.out);
    eng_weight w;
    if (be->ops->weight_load(be, &qw->w, &w) != 0 || eng_linear(be, &yt, &xt, &w) != 0) {
        fprintf(stderr, "  linear failed: %s\n", be->errstr);
        free(y);
        return NULL;
    }
    be->ops->weight_release(be, &w);
    return y;
}

static const struct {
    eng_wfmt fmt;
    int group;
} formats[] = {{ENG_W_F32, 0}, {ENG_W_BF16, 0}, {ENG_W_I8, 0},
               {ENG_W_I4, 32}, {ENG_W_I4, 8},   {ENG_W_I4, 12} /* not a multiple of 8 */};
#define NFORMATS (sizeof formats / sizeof formats[0])

static const int64_t sizes[][2] = {{37, 72}, {64, 256}, {19, 130}, {8, 75}, {33, 1000}, {5, 3}};
static const int64_t rows[] = {1, 2, 3, 17, 64};

/* Every format x size x row count against the reference, with the given kernels/threads. */
static void check_all(int simd, int threads) {
    eng_backend *be = make_cpu(threads, simd);
    ASSERT_TRUE(be != NULL);
    rng r = rng_new(42 + (uint64_t)simd * 7 + (uint64_t)threads);
    int failed = 0;
    for (size_t f = 0; f < NFORMATS && !failed; f++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0] && !failed; s++) {
            int64_t out = sizes[s][0], in = sizes[s][1];
            float *src = malloc(sizeof(float) * (size_t)(out * in));
            fill_normal(&r, src, (size_t)(out * in), 1.0f / sqrtf((float)in));
            qweight qw;
            make_weight(&qw, formats[f].fmt, src, out, in, formats[f].group);
            for (size_t k = 0; k < sizeof rows / sizeof rows[0] && !failed; k++) {
                int64_t n = rows[k];
                float *x = malloc(sizeof(float) * (size_t)(n * in));
                fill_normal(&r, x, (size_t)(n * in), 1.0f);
                double *ref = malloc(sizeof(double) * (size_t)(n * out));
                double *tol = malloc(sizeof(double) * (size_t)(n * out));
                reference(&qw, x, n, ref, tol);
                float *y = run_linear(be, &qw, x, n);
                char what[128];
                snprintf(what, sizeof what, "%s g%d [%lld,%lld] n=%lld simd=%s threads=%d",
                         eng_wfmt_name(formats[f].fmt), formats[f].group, (long long)out,
                         (long long)in, (long long)n, simd ? "generic" : "auto", threads);
                failed = !y || compare_tol(what, y, ref, tol, 0, (size_t)(n * out));
                free(y);
                free(x);
                free(ref);
                free(tol);
            }
            free_weight(&qw);
            free(src);
        }
    eng_backend_free(be);
    if (failed) TEST_FAIL_("linear differs from the reference");
}

TEST(linear_auto_1_thread) {
    check_all(SIMD_AUTO, 1);
}
TEST(linear_auto_4_threads) {
    check_all(SIMD_AUTO, 4);
}
TEST(linear_generic_1_thread) {
    check_all(SIMD_GENERIC, 1);
}
TEST(linear_generic_3_threads) {
    check_all(SIMD_GENERIC, 3);
}

/* Same inputs, 1 and 4 threads: identical bits (tasks never change a sum's order). Also a row
 * computed alone equals the same row computed inside a batch of 64 (the direct and the packed
 * kernels sum in the same order), which keeps batched decoding reproducible. */
static void check_invariance(int simd) {
    eng_backend *one = make_cpu(1, simd), *four = make_cpu(4, simd);
    ASSERT_TRUE(one && four);
    rng r = rng_new(7);
    int64_t out = 300, in = 264, n = 64;
    float *src = malloc(sizeof(float) * (size_t)(out * in));
    float *x = malloc(sizeof(float) * (size_t)(n * in));
    fill_normal(&r, src, (size_t)(out * in), 0.1f);
    fill_normal(&r, x, (size_t)(n * in), 1.0f);
    int failed = 0;
    for (size_t f = 0; f < NFORMATS && !failed; f++) {
        qweight qw;
        make_weight(&qw, formats[f].fmt, src, out, in, formats[f].group);
        float *a = run_linear(one, &qw, x, n), *b = run_linear(four, &qw, x, n);
        if (!a || !b || memcmp(a, b, sizeof(float) * (size_t)(n * out)) != 0) {
            fprintf(stderr, "  %s: 1 and 4 threads differ\n", eng_wfmt_name(formats[f].fmt));
            failed = 1;
        }
        for (int64_t k = 0; k < n && !failed; k += 9) {
            float *row = run_linear(four, &qw, x + k * in, 1);
            float *pair = run_linear(four, &qw, x + k * in, k + 2 <= n ? 2 : 1);
            if (!row || !pair || memcmp(row, a + k * out, sizeof(float) * (size_t)out) != 0 ||
                memcmp(pair, a + k * out, sizeof(float) * (size_t)out) != 0) {
                fprintf(stderr, "  %s: row %lld alone differs from the batch of %lld\n",
                        eng_wfmt_name(formats[f].fmt), (long long)k, (long long)n);
                failed = 1;
            }
            free(row);
            free(pair);
        }
        free(a);
        free(b);
        free_weight(&qw);
    }
    free(src);
    free(x);
    eng_backend_free(one);
    eng_backend_free(four);
    if (failed) TEST_FAIL_("results depend on threads or batch");
}

TEST(linear_deterministic_auto) {
    check_invariance(SIMD_AUTO);
}
TEST(linear_deterministic_generic) {
    check_invariance(SIMD_GENERIC);
}

TEST(linear_rejects_bad_shapes) {
    eng_backend *be = make_cpu(2, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    float x[6 * 4] = {0}, y[6 * 5] = {0}, wd[5 * 4] = {0}, sc[5] = {1, 1, 1, 1, 1};
    eng_weight w = {ENG_W_F32, 5, 4, 0, wd, NULL};
    eng_tensor xt = eng_view2(x, ENG_DT_F32, 6, 4), yt = eng_view2(y, ENG_DT_F32, 6, 4);
    ASSERT_EQ(eng_linear(be, &yt, &xt, &w), ENG_EINVAL);
    ASSERT_CONTAINS(be->errstr, "linear");
    ASSERT_CONTAINS(be->errstr, "F32[6,4]");
    xt = eng_view2(x, ENG_DT_F32, 4, 6);
    yt = eng_view2(y, ENG_DT_F32, 4, 5);
    ASSERT_EQ(eng_linear(be, &yt, &xt, &w), ENG_EINVAL);
    xt = eng_view2(x, ENG_DT_F32, 6, 4);
    yt = eng_view2(y, ENG_DT_F32, 6, 5);
    ASSERT_OK(eng_linear(be, &yt, &xt, &w));
    eng_tensor xi = eng_view2(x, ENG_DT_I32, 6, 4);
    ASSERT_EQ(eng_linear(be, &yt, &xi, &w), ENG_EINVAL);
    eng_weight q4 = {ENG_W_I4, 5, 4, 0, wd, sc};
    ASSERT_EQ(eng_linear(be, &yt, &xt, &q4), ENG_EINVAL);
    ASSERT_CONTAINS(be->errstr, "group");
    eng_weight q8 = {ENG_W_I8, 5, 4, 0, wd, NULL};
    ASSERT_EQ(eng_linear(be, &yt, &xt, &q8), ENG_EINVAL);
    eng_weight loaded;
    ASSERT_EQ(be->ops->weight_load(be, &q8, &loaded), ENG_EINVAL);
    eng_backend_free(be);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
