/* test.h - a tiny test harness: named cases, each runnable alone.
 *
 *   TEST(parse_header) { ASSERT_EQ(1, 1); }
 *   int main(int argc, char **argv) { return test_main(argc, argv); }
 *
 * `./test_x` runs every case; `./test_x NAME...` runs the named ones; `--list` lists them.
 * A failed ASSERT prints file:line and both values, and ends the current case. */
#ifndef VOXQ_TEST_H
#define VOXQ_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
struct test_case {
    const char *name;
    test_fn fn;
};

#define TEST_MAX_CASES 512
static struct test_case test_cases_[TEST_MAX_CASES];
static int test_ncases_;
static int test_failed_;

static inline void test_register_(const char *name, test_fn fn) {
    if (test_ncases_ < TEST_MAX_CASES) test_cases_[test_ncases_++] = (struct test_case){name, fn};
}

#define TEST(name)                                                                                 \
    static void test_##name(void);                                                                 \
    __attribute__((constructor)) static void test_reg_##name(void) {                               \
        test_register_(#name, test_##name);                                                        \
    }                                                                                              \
    static void test_##name(void)

#define TEST_FAIL_(...)                                                                            \
    do {                                                                                           \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                                          \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        test_failed_ = 1;                                                                          \
        return;                                                                                    \
    } while (0)

#define ASSERT_TRUE(c)                                                                             \
    do {                                                                                           \
        if (!(c)) TEST_FAIL_("expected true: %s", #c);                                             \
    } while (0)
#define ASSERT_EQ(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) TEST_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_);                        \
    } while (0)
#define ASSERT_NE(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ == b_) TEST_FAIL_("%s != %s: both %lld", #a, #b, a_);                               \
    } while (0)
#define ASSERT_NEAR(a, b, tol)                                                                     \
    do {                                                                                           \
        double a_ = (double)(a), b_ = (double)(b);                                                 \
        if (!(fabs(a_ - b_) <= (tol)))                                                             \
            TEST_FAIL_("%s ~ %s: %.9g vs %.9g (tol %g)", #a, #b, a_, b_, (double)(tol));           \
    } while (0)
#define ASSERT_STREQ(a, b)                                                                         \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                     \
            TEST_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)",                   \
                       b_ ? b_ : "(null)");                                                        \
    } while (0)
/* The substring check used for error messages: "names the tensor". */
#define ASSERT_CONTAINS(hay, needle)                                                               \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (!h_ || !strstr(h_, n_))                                                                \
            TEST_FAIL_("\"%s\" should contain \"%s\"", h_ ? h_ : "(null)", n_);                    \
    } while (0)
/* 0 is success for every voxq function that returns int. */
#define ASSERT_OK(expr)                                                                            \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != 0) TEST_FAIL_("%s returned %d", #expr, rc_);                                    \
    } while (0)

/* Compares two float arrays with atol + rtol*|ref|; prints the first mismatch and the max
 * abs/rel error. Returns 0 when every element passes. */
static inline int test_compare_f32(const char *what, const float *got, const float *ref, size_t n,
                                   double atol, double rtol) {
    double max_abs = 0, max_rel = 0;
    long first_bad = -1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        double r = d / (fabs((double)ref[i]) + 1e-30);
        if (d > max_abs || isnan(d)) max_abs = isnan(d) ? INFINITY : d;
        if (r > max_rel && fabs((double)ref[i]) > 1e-6) max_rel = r;
        if ((isnan(d) || d > atol + rtol * fabs((double)ref[i])) && first_bad < 0) first_bad = (long)i;
    }
    fprintf(stderr, "  %s: n=%zu max_abs=%.3g max_rel=%.3g\n", what, n, max_abs, max_rel);
    if (first_bad >= 0) {
        fprintf(stderr, "  %s: first mismatch at %ld: got %.9g ref %.9g\n", what, first_bad,
                (double)got[first_bad], (double)ref[first_bad]);
        return 1;
    }
    return 0;
}
#define ASSERT_CLOSE_F32(what, got, ref, n, atol, rtol)                                            \
    do {                                                                                           \
        if (test_compare_f32((what), (got), (ref), (n), (atol), (rtol)) != 0)                      \
            TEST_FAIL_("%s: arrays differ", (what));                                               \
    } while (0)

static inline int test_main(int argc, char **argv) {
    int ran = 0, failed = 0;
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < test_ncases_; i++) printf("%s\n", test_cases_[i].name);
        return 0;
    }
    for (int i = 0; i < test_ncases_; i++) {
        int wanted = argc <= 1;
        for (int a = 1; a < argc && !wanted; a++) wanted = strcmp(argv[a], test_cases_[i].name) == 0;
        if (!wanted) continue;
        test_failed_ = 0;
        fprintf(stderr, "[ RUN  ] %s\n", test_cases_[i].name);
        test_cases_[i].fn();
        fprintf(stderr, "[ %s ] %s\n", test_failed_ ? "FAIL" : " OK ", test_cases_[i].name);
        ran++;
        failed += test_failed_;
    }
    fprintf(stderr, "%d of %d cases passed\n", ran - failed, ran);
    if (ran == 0) {
        fprintf(stderr, "no test case matched\n");
        return 1;
    }
    return failed ? 1 : 0;
}

#endif
