/* cpu_internal.h - internals shared by the files of the CPU backend (engine/cpu/). Not public:
 * model code sees only engine/ops.h.
 *
 * The backend owns a small thread pool (the calling thread plus nthreads - 1 workers) and one
 * scratch buffer per thread. Work is split into numbered tasks whose results never depend on
 * which thread ran them or how many threads there are, so output is bit-identical for any
 * thread count. */
#ifndef VOXQ_ENGINE_CPU_INTERNAL_H
#define VOXQ_ENGINE_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/ops.h"

/* ---- thread pool (pool.c) ---- */

typedef struct cpu_pool cpu_pool;
/* Runs task number `task`; `thread` is in [0, nthreads) and names the scratch it may use. */
typedef void (*cpu_task_fn)(void *ctx, int64_t task, int thread);

/* A pool of nthreads - 1 worker threads (the caller is the last one); NULL on failure. */
cpu_pool *cpu_pool_new(int nthreads);
void cpu_pool_free(cpu_pool *pool);
int cpu_pool_threads(const cpu_pool *pool);
/* Runs fn(ctx, t, thread) for t in [0, ntasks) across the pool and returns when all are done.
 * Not reentrant: one run at a time per pool (ops are issued by one engine thread). */
void cpu_pool_run(cpu_pool *pool, cpu_task_fn fn, void *ctx, int64_t ntasks);

/* ---- the backend object (cpu_backend.c) ---- */

typedef struct cpu_backend {
    eng_backend base; /* first member: an eng_backend * is a cpu_backend * */
    cpu_pool *pool;
    int nthreads;
    int use_avx2;           /* AVX2 + FMA kernels (runtime-detected; VOXQ_CPU_SIMD=generic off) */
    size_t allocated, peak; /* bytes through alloc(), under mem_lock */
    void *mem_lock;         /* pthread_mutex_t *, kept opaque here */
    float **scratch;        /* [nthreads] per-thread scratch, 64-byte aligned */
    size_t scratch_floats;  /* capacity of each scratch buffer, in floats */
} cpu_backend;

static inline cpu_backend *cpu_of(eng_backend *be) {
    return (cpu_backend *)be;
}

/* Makes each thread's scratch hold at least `floats` floats (grows, never shrinks); called by
 * an op before cpu_pool_run so tasks never allocate. ENG_ENOMEM on failure. */
int cpu_scratch_reserve(cpu_backend *cb, size_t floats);

/* ---- argument checks shared by the ops (cpu_check.c) ---- */

/* Formats a tensor's shape and dtype as "F32[2,3]" into buf (for error messages). */
const char *cpu_tensor_str(char *buf, size_t n, const eng_tensor *t);
/* Fails with ENG_EINVAL "op: name must be dtype, got ..." unless t is non-NULL, has data and
 * has dtype dt. */
int cpu_check_tensor(eng_backend *be, const char *op, const char *name, const eng_tensor *t,
                     eng_dtype dt);

/* ---- ops (one file each group) ---- */

int cpu_linear(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w);

/* One linear() call as the kernels see it (linear.c builds it, linear_*.c compute tiles). */
typedef struct cpu_linear_job {
    const eng_weight *w;
    const float *x; /* [n, in] */
    float *y;       /* [n, out] */
    int64_t n, in, out;
    int64_t ngroups; /* scale groups per row: in/group rounded up (I4), 1 (I8), 0 otherwise */
} cpu_linear_job;

/* y[r0:r1, o0:o1] of the job. `pack` is scratch for CPU_LINEAR_PACK_ROWS dequantized rows of W
 * (CPU_LINEAR_PACK_ROWS * in floats) or NULL to read W in its own format throughout. Every
 * output element is summed in the same order whatever the tile, the pack choice or the number
 * of rows, so a row's result does not depend on the batch it is computed in. */
#define CPU_LINEAR_PACK_ROWS 4
void cpu_linear_tile_avx2(const cpu_linear_job *j, int64_t r0, int64_t r1, int64_t o0, int64_t o1,
                          float *pack);
void cpu_linear_tile_generic(const cpu_linear_job *j, int64_t r0, int64_t r1, int64_t o0,
                             int64_t o1);
/* Weight element (o, i) as f32: w = q * scale, I8 one scale per row, I4 q = nibble - 8 and one
 * scale per group of `group` inputs. The portable kernel uses it throughout; the AVX2 kernel
 * computes the same single rounding for I4 and, for I8, sums q * x and scales the sum. */
static inline float cpu_weight_at(const eng_weight *w, int64_t ngroups, int64_t o, int64_t i) {
    switch (w->fmt) {
    case ENG_W_F32:
        return ((const float *)w->data)[o * w->in + i];
    case ENG_W_BF16:
        return eng_bf16_to_f32(((const uint16_t *)w->data)[o * w->in + i]);
    case ENG_W_I8:
        return (float)((const int8_t *)w->data)[o * w->in + i] * w->scales[o];
    case ENG_W_I4: {
        uint8_t b = ((const uint8_t *)w->data)[o * ((w->in + 1) / 2) + i / 2];
        int q = (int)((i & 1) ? b >> 4 : b & 15) - 8;
        return (float)q * w->scales[o * ngroups + i / w->group];
    }
    }
    return 0.0f;
}
/* 1 when the AVX2 kernels can take this weight (I4 needs group % 8 == 0). */
int cpu_linear_avx2_ok(const eng_weight *w);

int cpu_rmsnorm(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *weight,
                float eps);
int cpu_add(eng_backend *be, eng_tensor *y, const eng_tensor *a);
int cpu_rope(eng_backend *be, eng_tensor *x, const eng_tensor *pos, float theta);
int cpu_silu_mul(eng_backend *be, eng_tensor *y, const eng_tensor *gu);
int cpu_embed_sum(eng_backend *be, eng_tensor *y, const eng_tensor *table, const eng_tensor *ids,
                  int channel_stride);
int cpu_snake(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *alpha);
int cpu_tanh(eng_backend *be, eng_tensor *y, const eng_tensor *x);
int cpu_sample(eng_backend *be, eng_tensor *picks, eng_tensor *scores, const eng_tensor *logits,
               const eng_tensor *params, int eos_id);

int cpu_kv_write(eng_backend *be, eng_kv *kv, const eng_tensor *slot, const eng_tensor *pos,
                 const eng_tensor *k, const eng_tensor *v);
int cpu_attention(eng_backend *be, eng_tensor *out, const eng_tensor *q, const eng_kv *kv,
                  const eng_tensor *slot, const eng_tensor *len, const eng_tensor *key_mask,
                  float scale);

int cpu_conv1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
               const eng_tensor *bias, int dilation, int padding);
int cpu_conv_transpose1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                         const eng_tensor *bias, int stride, int padding);

/* ---- SIMD helpers (simd.c): AVX2 versions when cb->use_avx2, portable C otherwise ---- */

/* sum a[i] * b[i] for i < n, f32 with 8 partial sums */
float cpu_dot(const cpu_backend *cb, const float *a, const float *b, int64_t n);
/* 1 when this CPU runs AVX2 + FMA */
int cpu_have_avx2(void);

#endif
