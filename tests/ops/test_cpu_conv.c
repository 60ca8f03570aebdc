/* test_cpu_conv - conv1d and conv_transpose1d of the CPU backend against double references,
 * with both kernel sets, 1 and 4 threads (bit-identical), odd channel counts and signals
 * short enough that every output touches the zero padding.
 *
 * Tolerance: each output is a sequential f32 sum of cin * k products plus the bias, so
 * |y - ref| <= 2 * U32 * (cin * k + 2) * (|b| + sum |w x|). */
#include "test.h"
#include "ops/ops_util.h"

#include <string.h>

typedef struct conv_case {
    int cin, cout, k, dil_or_stride, pad, tin;
} conv_case;

static void conv1d_ref(const conv_case *c, const float *x, const float *w, const float *b,
                       int64_t tout, double *ref, double *tol) {
    for (int o = 0; o < c->cout; o++)
        for (int64_t t = 0; t < tout; t++) {
            double s = b[o], a = fabs(b[o]);
            for (int i = 0; i < c->cin; i++)
                for (int j = 0; j < c->k; j++) {
                    int64_t src = t + (int64_t)c->dil_or_stride * j - c->pad;
                    if (src < 0 || src >= c->tin) continue;
                    double p = (double)w[((size_t)o * c->cin + i) * c->k + j] *
                               x[(size_t)i * c->tin + src];
                    s += p;
                    a += fabs(p);
                }
            ref[o * tout + t] = s;
            tol[o * tout + t] = 2 * U32 * (c->cin * c->k + 2) * a;
        }
}

/* The definition: full[o][t*s + j] += x[i][t] w[i][o][j], then pad dropped at each end. */
static void convt_ref(const conv_case *c, const float *x, const float *w, const float *b,
                      int64_t tout, double *ref, double *tol) {
    int s = c->dil_or_stride;
    int64_t full = (int64_t)(c->tin - 1) * s + c->k;
    double *acc = calloc((size_t)(c->cout * full), sizeof(double));
    double *abs_acc = calloc((size_t)(c->cout * full), sizeof(double));
    for (int i = 0; i < c->cin; i++)
        for (int o = 0; o < c->cout; o++)
            for (int t = 0; t < c->tin; t++)
                for (int j = 0; j < c->k; j++) {
                    double p =
                        (double)x[(size_t)i * c->tin + t] * w[((size_t)i * c->cout + o) * c->k + j];
                    acc[o * full + (int64_t)t * s + j] += p;
                    abs_acc[o * full + (int64_t)t * s + j] += fabs(p);
                }
    for (int o = 0; o < c->cout; o++)
        for (int64_t t = 0; t < tout; t++) {
            ref[o * tout + t] = b[o] + acc[o * full + t + c->pad];
            tol[o * tout + t] =
                2 * U32 * (c->cin * c->k + 2) * (fabs(b[o]) + abs_acc[o * full + t + c->pad]);
        }
    free(acc);
    free(abs_acc);
}

/* Runs one case with every kernel set and thread count; transposed selects the op. */
static int run_case(const conv_case *c, int transposed, uint64_t seed) {
    rng r = rng_new(seed);
    int64_t tout = transposed ? (int64_t)(c->tin - 1) * c->dil_or_stride - 2 * c->pad + c->k
                              : c->tin + 2 * c->pad - (int64_t)c->dil_or_stride * (c->k - 1);
    size_t xn = (size_t)c->cin * c->tin, wn = (size_t)c->cin * c->cout * c->k;
    size_t yn = (size_t)(c->cout * tout);
    float *x = malloc(4 * xn), *w = malloc(4 * wn), *b = malloc(4 * (size_t)c->cout);
    float *y = malloc(4 * yn), *first = malloc(4 * yn);
    double *ref = malloc(8 * yn), *tol = malloc(8 * yn);
    fill_normal(&r, x, xn, 1.0f);
    fill_normal(&r, w, wn, 1.0f / sqrtf((float)(c->cin * c->k)));
    fill_normal(&r, b, (size_t)c->cout, 0.5f);
    if (transposed)
        convt_ref(c, x, w, b, tout, ref, tol);
    else
        conv1d_ref(c, x, w, b, tout, ref, tol);
    int failed = 0;
    for (int simd = 0; simd < 2 && !failed; simd++)
        for (int threads = 1; threads <= 4 && !failed; threads += 3) {
            eng_backend *be = make_cpu(threads, simd);
            eng_tensor xt = eng_view2(x, ENG_DT_F32, c->cin, c->tin);
            eng_tensor yt = eng_view2(y, ENG_DT_F32, c->cout, tout);
            eng_tensor wt = transposed ? eng_view3(w, ENG_DT_F32, c->cin, c->cout, c->k)
                                       : eng_view3(w, ENG_DT_F32, c->cout, c->cin, c->k);
            eng_tensor bt = eng_view1(b, ENG_DT_F32, c->cout);
            memset(y, 0xff, 4 * yn); /* NaN: an output never written fails */
            int rc = transposed
                         ? eng_conv_transpose1d(be, &yt, &xt, &wt, &bt, c->dil_or_stride, c->pad)
                         : eng_conv1d(be, &yt, &xt, &wt, &bt, c->dil_or_stride, c->pad);
            char what[160];
            snprintf(what, sizeof what,
                     "%s cin=%d cout=%d k=%d %s=%d pad=%d tin=%d simd=%s "
                     "threads=%d",
                     transposed ? "conv_transpose1d" : "conv1d", c->cin, c->cout, c->k,
                     transposed ? "stride" : "dil", c->dil_or_stride, c->pad, c->tin,
                     simd ? "generic" : "auto", threads);
            if (rc != 0) {
                fprintf(stderr, "  %s: %s\n", what, be->errstr);
                failed = 1;
            } else {
                failed = compare_tol(what, y, ref, tol, 0, yn);
                if (threads == 1)
                    memcpy(first, y, 4 * yn);
                else if (memcmp(first, y, 4 * yn) != 0) {
                    fprintf(stderr, "  %s: differs from 1 thread\n", what);
                    failed = 1;
                }
            }
            eng_backend_free(be);
        }
    free(x), free(w), free(b), free(y), free(first), free(ref), free(tol);
    return failed;
}

TEST(conv1d_matches_reference) {
    static const conv_case cases[] = {
        {3, 5, 7, 1, 3, 40},    /* DAC res-unit shape, odd channels */
        {16, 8, 7, 3, 9, 100},  /* dilation 3 */
        {8, 4, 7, 9, 27, 300},  /* dilation 9 */
        {5, 3, 1, 1, 0, 33},    /* 1x1 */
        {4, 6, 3, 2, 0, 50},    /* no padding */
        {6, 5, 7, 1, 3, 5},     /* signal shorter than the kernel: all edge */
        {12, 9, 7, 1, 3, 1000}, /* long enough for several time tiles */
        {150, 6, 7, 3, 9, 200}, /* more input channels than one kernel pass takes */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (run_case(&cases[i], 0, 100 + i)) TEST_FAIL_("conv1d case %zu", i);
}

TEST(conv_transpose1d_matches_reference) {
    static const conv_case cases[] = {
        {6, 5, 4, 2, 1, 50}, /* DAC: k = 2s, pad = ceil(s/2) */
        {6, 9, 8, 4, 2, 37},   {10, 4, 16, 8, 4, 29}, {3, 2, 16, 8, 4, 1}, /* one input sample */
        {4, 3, 6, 3, 2, 20},   /* stride 3: portable path */
        {5, 6, 5, 2, 0, 30},   /* k not a multiple of s, no padding */
        {7, 5, 2, 1, 0, 900},  /* stride 1 */
        {70, 6, 8, 4, 2, 300}, /* more input channels than one kernel pass takes */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (run_case(&cases[i], 1, 200 + i)) TEST_FAIL_("conv_transpose1d case %zu", i);
}

/* DAC's upsampling blocks: kernel 2s, padding ceil(s/2) gives exactly s * L samples. */
TEST(conv_transpose_lengths) {
    eng_backend *be = make_cpu(2, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    int strides[3] = {2, 4, 8};
    for (int k = 0; k < 3; k++) {
        int s = strides[k], len = 13, pad = (s + 1) / 2;
        float *x = calloc((size_t)(2 * len), 4), *w = calloc((size_t)(2 * 3 * 2 * s), 4);
        float *y = calloc((size_t)(3 * s * len), 4);
        eng_tensor xt = eng_view2(x, ENG_DT_F32, 2, len),
                   wt = eng_view3(w, ENG_DT_F32, 2, 3, 2 * s);
        eng_tensor yt = eng_view2(y, ENG_DT_F32, 3, (int64_t)s * len);
        ASSERT_OK(eng_conv_transpose1d(be, &yt, &xt, &wt, NULL, s, pad));
        eng_tensor ylong = eng_view2(y, ENG_DT_F32, 3, (int64_t)s * len - 1);
        ASSERT_EQ(eng_conv_transpose1d(be, &ylong, &xt, &wt, NULL, s, pad), ENG_EINVAL);
        ASSERT_CONTAINS(be->errstr, "conv_transpose1d");
        free(x), free(w), free(y);
    }
    eng_backend_free(be);
}

TEST(conv_rejects_bad_shapes) {
    eng_backend *be = make_cpu(1, SIMD_AUTO);
    ASSERT_TRUE(be != NULL);
    float x[4 * 10] = {0}, w[3 * 4 * 3] = {0}, y[3 * 10] = {0}, b[3] = {0};
    eng_tensor xt = eng_view2(x, ENG_DT_F32, 4, 10), wt = eng_view3(w, ENG_DT_F32, 3, 4, 3);
    eng_tensor yt = eng_view2(y, ENG_DT_F32, 3, 10), bt = eng_view1(b, ENG_DT_F32, 3);
    ASSERT_OK(eng_conv1d(be, &yt, &xt, &wt, &bt, 1, 1));
    ASSERT_EQ(eng_conv1d(be, &yt, &xt, &wt, &bt, 1, 0), ENG_EINVAL); /* y would be 8 long */
    ASSERT_CONTAINS(be->errstr, "conv1d");
    ASSERT_CONTAINS(be->errstr, "F32[3,10]");
    eng_tensor b2 = eng_view1(b, ENG_DT_F32, 2);
    ASSERT_EQ(eng_conv1d(be, &yt, &xt, &wt, &b2, 1, 1), ENG_EINVAL);
    eng_tensor w2 = eng_view3(w, ENG_DT_F32, 3, 3, 4);
    ASSERT_EQ(eng_conv1d(be, &yt, &xt, &w2, &bt, 1, 1), ENG_EINVAL);
    ASSERT_EQ(eng_conv1d(be, &yt, &xt, &wt, &bt, 0, 1), ENG_EINVAL);
    eng_tensor x4 = eng_view3(x, ENG_DT_F32, 2, 2, 10);
    ASSERT_EQ(eng_conv1d(be, &yt, &x4, &wt, &bt, 1, 1), ENG_EINVAL);
    eng_backend_free(be);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
