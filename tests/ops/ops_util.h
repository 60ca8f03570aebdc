/* ops_util.h - helpers for the CPU op tests: a seeded RNG, backend creation with a chosen
 * kernel set and thread count, and comparison with a per-element tolerance. */
#ifndef VOXQ_TESTS_OPS_UTIL_H
#define VOXQ_TESTS_OPS_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/ops.h"

/* xorshift64*: fixed seeds give the same inputs on every machine. */
typedef struct rng {
    uint64_t s;
} rng;
static inline rng rng_new(uint64_t seed) {
    return (rng){seed * 0x9E3779B97F4A7C15ull + 1};
}
static inline uint64_t rng_u64(rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}
/* uniform in [-1, 1) */
static inline float rng_unif(rng *r) {
    return (float)((double)(rng_u64(r) >> 11) / 4503599627370496.0 - 1.0);
}
/* approximately N(0, 1) (sum of 4 uniforms, rescaled) */
static inline float rng_normal(rng *r) {
    return (rng_unif(r) + rng_unif(r) + rng_unif(r) + rng_unif(r)) * 0.8660254f;
}
static inline void fill_normal(rng *r, float *v, size_t n, float scale) {
    for (size_t i = 0; i < n; i++)
        v[i] = rng_normal(r) * scale;
}

/* Kernel sets a CPU backend can run. */
enum { SIMD_AUTO = 0, SIMD_GENERIC = 1 };

/* A CPU backend with `threads` threads using the best kernels (SIMD_AUTO) or the portable ones
 * (SIMD_GENERIC); NULL on failure (printed). */
static inline eng_backend *make_cpu(int threads, int simd) {
    if (simd == SIMD_GENERIC)
        setenv("VOXQ_CPU_SIMD", "generic", 1);
    else
        unsetenv("VOXQ_CPU_SIMD");
    eng_backend *be = NULL;
    eng_error err = {0};
    if (eng_backend_cpu_new(&be, threads, &err) != 0) {
        fprintf(stderr, "  eng_backend_cpu_new: %s\n", err.msg);
        be = NULL;
    }
    unsetenv("VOXQ_CPU_SIMD");
    return be;
}

/* |got - ref| <= tol[i] for every i (tol NULL: atol only). Prints the first mismatch and the
 * largest error relative to its tolerance; returns 0 when all pass. */
static inline int compare_tol(const char *what, const float *got, const double *ref,
                              const double *tol, double atol, size_t n) {
    long bad = -1;
    double worst = 0, max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        double t = (tol ? tol[i] : 0) + atol, d = fabs((double)got[i] - ref[i]);
        if (isnan(d)) d = INFINITY;
        if (d > max_abs) max_abs = d;
        if (t > 0 && d / t > worst) worst = d / t;
        if (!(d <= t) && bad < 0) bad = (long)i;
    }
    fprintf(stderr, "  %s: n=%zu max_abs=%.3g max_err/tol=%.3g\n", what, n, max_abs, worst);
    if (bad >= 0) {
        fprintf(stderr, "  %s: first mismatch at %ld: got %.9g ref %.9g tol %.3g\n", what, bad,
                (double)got[bad], ref[bad], (tol ? tol[bad] : 0) + atol);
        return 1;
    }
    return 0;
}

#define ASSERT_TOL(what, got, ref, tol, atol, n)                                                   \
    do {                                                                                           \
        if (compare_tol((what), (got), (ref), (tol), (atol), (n)) != 0)                            \
            TEST_FAIL_("%s: outside tolerance", (what));                                           \
    } while (0)

/* Unit roundoff of f32: the error bound of n sequential f32 additions is about n * U32 * sum|t|. */
#define U32 5.9604645e-08

#endif
