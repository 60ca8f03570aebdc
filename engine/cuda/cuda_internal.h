/* cuda_internal.h - shared by the CUDA backend's files (not a public header).
 *
 * Every CUDA runtime and cuBLAS call goes through CU_CHECK / CUBLAS_CHECK, which record
 * file:line and the CUDA message in the backend's errstr and return ENG_EDEVICE. */
#ifndef VOXQ_ENGINE_CUDA_INTERNAL_H
#define VOXQ_ENGINE_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "engine/ops.h"
}

#define CUDA_MAX_GRAPHS 16
#define CUDA_CUBLAS_WORKSPACE ((size_t)32 << 20)
#define CUDA_ATT_PART_BYTES ((size_t)32 << 20)
#define CUDA_ATT_COUNTERS 8192

typedef struct cuda_graph_slot {
    int key;
    cudaGraphExec_t exec;
} cuda_graph_slot;

typedef struct cuda_impl {
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    int sm_count;
    size_t smem_optin; /* shared memory a block may opt in to (cudaDeviceProp) */
    size_t allocated;
    size_t peak;
    /* Scratch for the large-n linear path: x converted to bf16, int8/int4 weights expanded to
     * bf16. Grown on demand outside graph capture; sized at load by the model's first passes. */
    void *scratch;
    size_t scratch_bytes;
    void *cublas_ws;
    /* Attention split partials (max, sum, head_dim values per split) and per-(row, head)
     * arrival counters, allocated at creation so captured steps never allocate. */
    float *att_part;
    size_t att_part_bytes;
    int *att_count;
    int64_t att_count_len;
    /* Grid-wide barrier of the fused MLP kernel (arrivals so far), zeroed at creation. */
    unsigned long long *grid_bar;
    int capturing;
    cuda_graph_slot graphs[CUDA_MAX_GRAPHS];
    int ngraphs;
    long graph_launches; /* step graphs launched so far (VOXQ_CUDA_PROFILE_FROM_STEP) */
} cuda_impl;

static inline cuda_impl *cuda_of(eng_backend *be) { return (cuda_impl *)be->impl; }

#define CU_CHECK(be, call)                                                                         \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return eng_backend_fail((be), ENG_EDEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call, \
                                    cudaGetErrorString(e_));                                       \
    } while (0)

#define CUBLAS_CHECK(be, call)                                                                     \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return eng_backend_fail((be), ENG_EDEVICE, "%s:%d: %s: cuBLAS status %d", __FILE__,    \
                                    __LINE__, #call, (int)s_);                                     \
    } while (0)

/* After a kernel launch: the launch error, if any. */
#define CU_LAUNCHED(be) CU_CHECK(be, cudaGetLastError())

#define CUDA_EXTERN extern "C"

/* Argument checks shared by the ops: return ENG_EINVAL naming the op. */
#define CUDA_REQUIRE(be, cond, op, ...)                                                            \
    do {                                                                                           \
        if (!(cond)) return eng_backend_fail((be), ENG_EINVAL, op ": " __VA_ARGS__);               \
    } while (0)

/* Programmatic dependent launch (sm_90): pdl_trigger() lets the next kernel in the stream start
 * launching now (every kernel calls it first: the decode GEMVs launched after it then stream
 * their weights while it finishes); pdl_wait() blocks until every kernel this one depends on
 * has finished and its writes are visible (only kernels launched with the programmatic
 * serialization attribute need it). */
#ifdef __CUDACC__
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
#endif

/* Block trace (debug, VOXQ_CUDA_BLOCK_TRACE=records): the kernels handed cuda_block_trace
 * (k_gemv, k_mma) append one record a block, [tag, block | sm << 32, blocks, %globaltimer at
 * entry, after pdl_wait, at exit], at slot buf[0]++ % cap (the last cap records survive, while
 * fewer than 2^32 are written); the backend writes them to VOXQ_CUDA_BLOCK_TRACE_OUT (CSV) when
 * destroyed. NULL: off. The kernels keep the first two times in shared memory, not registers:
 * the trace must not change a kernel's register count (and so its residency) when off. */
#define CUDA_TRACE_REC 6
extern unsigned long long *cuda_block_trace;
extern unsigned cuda_block_trace_cap;
#ifdef __CUDACC__
__device__ __forceinline__ unsigned long long trace_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
/* Called by thread 0 of a block at its end (after a __syncthreads). */
__device__ __forceinline__ void trace_block(unsigned long long *buf, unsigned cap,
                                           unsigned long long tag, unsigned long long t0,
                                           unsigned long long t1) {
    unsigned long long t2 = trace_now();
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    unsigned long long *r = buf + CUDA_TRACE_REC * (1 + (unsigned)atomicAdd(buf, 1ull) % cap);
    r[0] = tag;
    r[1] = blockIdx.x | (unsigned long long)sm << 32;
    r[2] = (unsigned long long)gridDim.x * gridDim.y; /* blocks of the launch */
    r[3] = t0;
    r[4] = t1;
    r[5] = t2;
}
#endif

/* An integer tuning knob from the environment (A/B timing): `def` when unset, not a whole
 * number, or outside [lo, hi]. Callers read it once and keep it. */
long cuda_env_knob(const char *name, long def, long lo, long hi);

/* Whether attention and the sampler launch with programmatic dependent launch (their index
 * loads and setup overlap the kernel before them): on, unless VOXQ_CUDA_PDL_ALL=0 (A/B timing). */
int cuda_pdl_enabled(void);

/* Grows the scratch buffer to at least `bytes` (not allowed during graph capture). */
int cuda_scratch(eng_backend *be, size_t bytes, void **out);

/* Per-op timing (cuda_profile.cu), on when VOXQ_CUDA_PROFILE=1 at backend creation. */
int cuda_profile_enabled(void);
void cuda_profile_install(eng_backend_ops *o);
int cuda_profile_json(eng_backend *be, char *buf, size_t cap);

/* Op entry points, one family per file. */
int cuda_linear(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w);
/* Grows the scratch so the linear of w never allocates inside a captured step. */
int cuda_linear_reserve(eng_backend *be, const eng_weight *w);
int cuda_linear_ex(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w,
                   const eng_linear_args *a);
int cuda_linear_group(eng_backend *be, int count, eng_tensor *const *y, const eng_tensor *x,
                      const eng_weight *const *w, const eng_linear_args *a);
int cuda_rmsnorm(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *weight,
                 float eps);
int cuda_add(eng_backend *be, eng_tensor *y, const eng_tensor *a);
int cuda_rope(eng_backend *be, eng_tensor *x, const eng_tensor *pos, float theta);
int cuda_rope_kv_write(eng_backend *be, eng_tensor *q, eng_tensor *k, const eng_tensor *v,
                       const eng_tensor *pos, float theta, eng_kv *kv, const eng_tensor *slot);
int cuda_rope_attention(eng_backend *be, eng_tensor *out, eng_tensor *q, eng_tensor *k,
                        const eng_tensor *v, const eng_tensor *pos, float theta, eng_kv *kv,
                        const eng_tensor *slot, const eng_tensor *len, float scale);
/* The decoder's MLP block in one launch where it applies (cuda_mlp.cu); ENG_EUNSUPPORTED,
 * with nothing launched, where it does not. */
int cuda_mlp(eng_backend *be, eng_tensor *x, eng_tensor *act, const eng_weight *gate_up,
             const eng_weight *down, const eng_tensor *norm, float eps);
int cuda_silu_mul(eng_backend *be, eng_tensor *y, const eng_tensor *gu);
int cuda_embed_sum(eng_backend *be, eng_tensor *y, const eng_tensor *table, const eng_tensor *ids,
                   int channel_stride);
int cuda_kv_write(eng_backend *be, eng_kv *kv, const eng_tensor *slot, const eng_tensor *pos,
                  const eng_tensor *k, const eng_tensor *v);
int cuda_attention(eng_backend *be, eng_tensor *out, const eng_tensor *q, const eng_kv *kv,
                   const eng_tensor *slot, const eng_tensor *len, const eng_tensor *key_mask,
                   float scale);
int cuda_conv1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                const eng_tensor *bias, int dilation, int padding);
int cuda_conv_transpose1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                          const eng_tensor *bias, int stride, int padding);
int cuda_snake(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *alpha);
int cuda_tanh(eng_backend *be, eng_tensor *y, const eng_tensor *x);
int cuda_sample(eng_backend *be, eng_tensor *picks, eng_tensor *scores, const eng_tensor *logits,
                const eng_tensor *params, int eos_id);

#endif
