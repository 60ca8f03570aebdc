/* ops.h - the op interface every backend implements; model code is written once against it.
 *
 * Conventions (all backends):
 * - Activations are F32 tensors, contiguous, rows first ([n, features]). Index tensors
 *   (tokens, positions, slots, lengths) are I32. Every tensor argument lives in the backend's
 *   memory; upload/download move bytes across.
 * - Nothing that changes from one decoder step to the next is passed by value: positions,
 *   lengths and slots are tensors, so a step can be captured whole (CUDA graphs) and replayed
 *   after the host rewrites those small tensors with eng_upload().
 * - Ops are asynchronous on backends that can be (CUDA: one stream, in order); eng_sync() waits.
 *   On the CPU they are synchronous and multithreaded where it matters (linear, conv).
 * - Each op returns 0 or a negative ENG_E* code; the backend's errstr says what failed.
 * - The CPU implementation is the reference: plain, readable, f32 accumulation.
 */
#ifndef VOXQ_ENGINE_OPS_H
#define VOXQ_ENGINE_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"
#include "engine/tensor.h"

typedef struct eng_backend eng_backend;

typedef enum eng_backend_kind { ENG_BACKEND_CPU = 1, ENG_BACKEND_CUDA = 2 } eng_backend_kind;

/* A key/value store for attention: K and V of `slots` sequences, each up to `max_len`
 * positions of `heads` x `head_dim` values, element (slot, pos, head, d) at
 * ((slot * max_len + pos) * heads + head) * head_dim + d. dtype is F32 on the CPU; a backend may
 * use BF16. A pair of contiguous [B, S, H, hd] tensors is a store with slots = B, max_len = S. */
typedef struct eng_kv {
    void *k;
    void *v;
    eng_dtype dtype;
    int slots;
    int max_len;
    int heads;
    int head_dim;
} eng_kv;

/* Backend memory statistics, in bytes. */
typedef struct eng_mem_stats {
    size_t allocated;      /* live bytes allocated through this backend */
    size_t peak;           /* high-water mark of `allocated` */
    size_t device_total;   /* 0 on the CPU */
    size_t device_free;    /* 0 on the CPU */
} eng_mem_stats;

/* What eng_linear_ex does around the product (all optional):
 *   pre:  ENG_PRE_NONE     in = x[n, w->in]
 *         ENG_PRE_RMSNORM  in = rmsnorm(x[n, w->in]; norm, eps)
 *         ENG_PRE_SILU_MUL in = silu(x[:, :w->in]) * x[:, w->in:]   (x is [n, 2 * w->in])
 *   accumulate: y += in . W^T instead of y = in . W^T (residual connections).
 *   post: ENG_POST_SILU_MUL  r = in . W^T, y[n, w->out / 2] = silu(r[:, :out/2]) * r[:, out/2:]
 *         (gate_up with the activation in the epilogue; not with accumulate).
 * tmp_in [n, w->in] and tmp_out [n, w->out] are scratch for backends without a fused kernel;
 * a backend with one never touches them. */
enum { ENG_PRE_NONE = 0, ENG_PRE_RMSNORM = 1, ENG_PRE_SILU_MUL = 2 };
enum { ENG_POST_NONE = 0, ENG_POST_SILU_MUL = 1 };
typedef struct eng_linear_args {
    int pre;
    const eng_tensor *norm; /* F32 [w->in] for ENG_PRE_RMSNORM */
    float eps;
    int accumulate;
    eng_tensor *tmp_in;
    eng_tensor *tmp_out;
    int post;
} eng_linear_args;

/* One sequence's sampling parameters for the sample op (spec 6.2 of shared/spec/dia.md, in
 * transformers' order). A plain struct, uploaded as bytes: an array of them is a U8 tensor. */
typedef struct eng_sample_seq {
    uint64_t seed;       /* RNG seed (engine/sample_rng.h) */
    int32_t step;        /* RNG counter: the decoder step being picked */
    int32_t row;         /* logits row of the sequence (its conditional row); < 0: unused entry */
    int32_t row_uncond;  /* logits row of the unconditional twin; < 0: no guidance */
    float cfg_scale;     /* G = Lc + (Lc - Lu) * cfg_scale (with row_uncond) */
    int32_t cfg_top_k;   /* keep Lc at the cfg_top_k largest G (ties in index order), -inf
                            elsewhere; 0 or >= vocab: the scores are G */
    float temperature;   /* scores / temperature when > 0 and != 1 */
    int32_t top_k;       /* sampling top-k, ties at the k-th value kept; 0 = off */
    float top_p;         /* nucleus; >= 1 = off */
    int32_t greedy;      /* 1: argmax, top-k/top-p skipped */
    int32_t reserved;    /* 0 */
} eng_sample_seq;

typedef struct eng_backend_ops {
    const char *name;
    void (*destroy)(eng_backend *be);

    /* Memory. */
    int (*alloc)(eng_backend *be, size_t bytes, void **out);
    void (*free)(eng_backend *be, void *ptr);
    int (*upload)(eng_backend *be, void *dst, const void *src, size_t bytes);
    int (*download)(eng_backend *be, void *dst, const void *src, size_t bytes);
    int (*copy)(eng_backend *be, void *dst, const void *src, size_t bytes);
    int (*memset0)(eng_backend *be, void *dst, size_t bytes);
    int (*sync)(eng_backend *be);
    void (*mem_stats)(eng_backend *be, eng_mem_stats *out);

    /* Makes a weight usable by this backend from a host weight (pointers into an mmap). The CPU
     * backend may alias the host bytes; CUDA copies to the device (and may convert f32 to bf16).
     * Release with weight_release. */
    int (*weight_load)(eng_backend *be, const eng_weight *host, eng_weight *out);
    void (*weight_release)(eng_backend *be, eng_weight *w);

    /* y[n, out] = x[n, in] . W^T */
    int (*linear)(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w);
    /* y[n, d] = x / sqrt(mean(x^2) + eps) * weight[d] (weight F32) ; y may alias x */
    int (*rmsnorm)(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *weight,
                   float eps);
    /* y += a (same shape) */
    int (*add)(eng_backend *be, eng_tensor *y, const eng_tensor *a);
    /* Half-split RoPE in place on x[n, heads, head_dim] at positions pos[n] (I32). */
    int (*rope)(eng_backend *be, eng_tensor *x, const eng_tensor *pos, float theta);
    /* y[n, f] = silu(gu[n, 0:f]) * gu[n, f:2f] (gate first, then up) */
    int (*silu_mul)(eng_backend *be, eng_tensor *y, const eng_tensor *gu);
    /* y[n, d] = sum_c table[c * channel_stride + ids[n, c]] over the C columns of ids (I32);
     * table is F32 or BF16 [rows, d]. C = 1, channel_stride = 0 is a plain embedding lookup.
     * An id out of [0, channel_stride) (or [0, rows) when C = 1) is an error. */
    int (*embed_sum)(eng_backend *be, eng_tensor *y, const eng_tensor *table,
                     const eng_tensor *ids, int channel_stride);

    /* Writes k[n, heads, hd] and v[n, heads, hd] into the store at (slot[i], pos[i]). */
    int (*kv_write)(eng_backend *be, eng_kv *kv, const eng_tensor *slot, const eng_tensor *pos,
                    const eng_tensor *k, const eng_tensor *v);
    /* Attention of q[n, qh, hd] over the store: row i attends to positions 0..len[i]-1 of slot
     * slot[i] (skipping positions where key_mask[slot * max_len + pos] == 0 when key_mask, U8,
     * is given), with query head h using KV head h / (qh / kv->heads). out[n, qh, hd].
     * Softmax in f32. Causal decoding is len = pos + 1; the encoder is len = S with a mask. */
    int (*attention)(eng_backend *be, eng_tensor *out, const eng_tensor *q, const eng_kv *kv,
                     const eng_tensor *slot, const eng_tensor *len, const eng_tensor *key_mask,
                     float scale);

    /* Audio codec ops on [channels, time] F32 tensors (batch 1). Weights F32.
     * conv1d: w [cout, cin, k], bias [cout]; y[o][t] = b[o] + sum w[o][i][j] x[i][t*1 + dil*j - pad]
     * with zero padding; y is [cout, tin + 2*pad - dil*(k-1)]. */
    int (*conv1d)(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                  const eng_tensor *bias, int dilation, int padding);
    /* conv_transpose1d: w [cin, cout, k], bias [cout]; full[o][t*stride + j] += x[i][t] w[i][o][j],
     * then `padding` samples dropped at each end; y is [cout, (tin-1)*stride - 2*pad + k]. */
    int (*conv_transpose1d)(eng_backend *be, eng_tensor *y, const eng_tensor *x,
                            const eng_tensor *w, const eng_tensor *bias, int stride, int padding);
    /* y = x + 1/(alpha[c] + 1e-9) * sin(alpha[c] * x)^2 per channel row; y may alias x. */
    int (*snake)(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *alpha);
    /* y = tanh(x); y may alias x. */
    int (*tanh_)(eng_backend *be, eng_tensor *y, const eng_tensor *x);

    /* Logits processing and the pick for n sequences of a codebook model (spec 6.2):
     * logits F32 [rows, channels * vocab]; params U8 [n * sizeof(eng_sample_seq)]; for entry i
     * and channel c: guidance and its top-k filter, temperature, the EOS rule (channel 0 may
     * pick eos_id and masks the ids above it, other channels mask eos_id and above; when the
     * argmax is eos_id every id below it is masked, else eos_id is), then unless greedy top-k
     * and top-p, then the pick: argmax (first index) or the draw of eng_rng_uniform(seed, step,
     * c) by the inverse CDF in index order with the softmax in double. Writes the processed
     * scores to scores F32 [n, channels, vocab] and picks I32 [n, channels + 1]: the ids, then
     * 1 when channel 0's argmax was eos_id. Unused entries (row < 0) write nothing. */
    int (*sample)(eng_backend *be, eng_tensor *picks, eng_tensor *scores,
                  const eng_tensor *logits, const eng_tensor *params, int eos_id);

    /* Optional step capture (NULL where the backend has none, e.g. the CPU). The ops issued
     * between graph_begin() and graph_end(key) are recorded, not run, and kept under `key` (for
     * instance the batch-size bucket); graph_launch(key) replays them with the tensors' current
     * contents, returning ENG_ENOTFOUND when nothing was recorded under key. Everything a step
     * varies must therefore live in tensors (see the conventions above). graph_reset() drops
     * every recorded graph (after buffers are reallocated). */
    int (*graph_begin)(eng_backend *be);
    int (*graph_end)(eng_backend *be, int key);
    int (*graph_launch)(eng_backend *be, int key);
    void (*graph_reset)(eng_backend *be);

    /* Optional fused linear (NULL: eng_linear_ex composes the plain ops). See eng_linear_ex. */
    int (*linear_ex)(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w,
                     const struct eng_linear_args *a);

    /* Optional: y[i] = pre(x) . W[i]^T for count weights with the same input (q, k and v of one
     * attention): one pass of the prologue and, where the backend can, one launch. Only pre
     * (and its norm/eps) of `a` applies. NULL: eng_linear_group runs eng_linear_ex per weight. */
    int (*linear_group)(eng_backend *be, int count, eng_tensor *const *y, const eng_tensor *x,
                        const eng_weight *const *w, const struct eng_linear_args *a);

    /* Optional pre-norm MLP block in one pass (see eng_mlp): x += down . silu_mul(gate_up .
     * rmsnorm(x)), act [n, down->in] F32 scratch. ENG_EUNSUPPORTED (nothing run, no error
     * recorded) where the backend has no kernel for the shapes: eng_mlp composes. */
    int (*mlp)(eng_backend *be, eng_tensor *x, eng_tensor *act, const eng_weight *gate_up,
               const eng_weight *down, const eng_tensor *norm, float eps);

    /* Optional fused rope + kv_write (NULL: eng_rope_kv_write composes them). */
    int (*rope_kv_write)(eng_backend *be, eng_tensor *q, eng_tensor *k, const eng_tensor *v,
                         const eng_tensor *pos, float theta, eng_kv *kv, const eng_tensor *slot);

    /* Optional fused decoder self-attention: rope_kv_write(q, k, v, pos, theta, kv, slot) then
     * attention(out, q, kv, slot, len, NULL, scale), one launch where the backend can; q's
     * contents afterwards are unspecified (NULL: eng_rope_attention composes the two). */
    int (*rope_attention)(eng_backend *be, eng_tensor *out, eng_tensor *q, eng_tensor *k,
                          const eng_tensor *v, const eng_tensor *pos, float theta, eng_kv *kv,
                          const eng_tensor *slot, const eng_tensor *len, float scale);

    /* Optional: per-op device time since the last call, as JSON {"total_ms", "ops": [{"op",
     * "calls", "ms", "share"}]} (CUDA with VOXQ_CUDA_PROFILE=1; steps then run uncaptured). */
    int (*profile_json)(eng_backend *be, char *buf, size_t cap);
} eng_backend_ops;

struct eng_backend {
    const eng_backend_ops *ops;
    eng_backend_kind kind;
    int nthreads;          /* CPU worker threads (CPU backend) */
    int err;
    char errstr[256];
    void *impl;
};

/* The CPU backend with `nthreads` worker threads (0 = number of online CPUs). */
int eng_backend_cpu_new(eng_backend **out, int nthreads, eng_error *err);
/* The CUDA backend on device `device`; ENG_EUNSUPPORTED when built without CUDA or no GPU. */
int eng_backend_cuda_new(eng_backend **out, int device, eng_error *err);
/* Implemented in engine/cuda/ (only when built with VOXQ_CUDA); eng_backend_cuda_new calls it. */
int eng_cuda_backend_create(eng_backend **out, int device, eng_error *err);
/* "auto" (CUDA when a GPU is present, else CPU), "cuda" or "cpu". */
int eng_backend_new(eng_backend **out, const char *which, int nthreads, eng_error *err);
void eng_backend_free(eng_backend *be);

/* Thin wrappers so model code reads as math. */
static inline int eng_alloc(eng_backend *be, size_t n, void **out) { return be->ops->alloc(be, n, out); }
static inline void eng_free(eng_backend *be, void *p) { if (p) be->ops->free(be, p); }
static inline int eng_upload(eng_backend *be, void *d, const void *s, size_t n) { return be->ops->upload(be, d, s, n); }
static inline int eng_download(eng_backend *be, void *d, const void *s, size_t n) { return be->ops->download(be, d, s, n); }
static inline int eng_sync(eng_backend *be) { return be->ops->sync(be); }
static inline int eng_linear(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w) { return be->ops->linear(be, y, x, w); }
static inline int eng_rmsnorm(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w, float eps) { return be->ops->rmsnorm(be, y, x, w, eps); }
static inline int eng_add(eng_backend *be, eng_tensor *y, const eng_tensor *a) { return be->ops->add(be, y, a); }
static inline int eng_rope(eng_backend *be, eng_tensor *x, const eng_tensor *pos, float theta) { return be->ops->rope(be, x, pos, theta); }
static inline int eng_silu_mul(eng_backend *be, eng_tensor *y, const eng_tensor *gu) { return be->ops->silu_mul(be, y, gu); }
static inline int eng_embed_sum(eng_backend *be, eng_tensor *y, const eng_tensor *t, const eng_tensor *ids, int stride) { return be->ops->embed_sum(be, y, t, ids, stride); }
static inline int eng_kv_write(eng_backend *be, eng_kv *kv, const eng_tensor *slot, const eng_tensor *pos, const eng_tensor *k, const eng_tensor *v) { return be->ops->kv_write(be, kv, slot, pos, k, v); }
static inline int eng_attention(eng_backend *be, eng_tensor *o, const eng_tensor *q, const eng_kv *kv, const eng_tensor *slot, const eng_tensor *len, const eng_tensor *mask, float scale) { return be->ops->attention(be, o, q, kv, slot, len, mask, scale); }
static inline int eng_conv1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w, const eng_tensor *b, int dil, int pad) { return be->ops->conv1d(be, y, x, w, b, dil, pad); }
static inline int eng_conv_transpose1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w, const eng_tensor *b, int stride, int pad) { return be->ops->conv_transpose1d(be, y, x, w, b, stride, pad); }
static inline int eng_snake(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *a) { return be->ops->snake(be, y, x, a); }
static inline int eng_sample(eng_backend *be, eng_tensor *picks, eng_tensor *scores, const eng_tensor *logits, const eng_tensor *params, int eos_id) { return be->ops->sample(be, picks, scores, logits, params, eos_id); }
static inline int eng_tanh(eng_backend *be, eng_tensor *y, const eng_tensor *x) { return be->ops->tanh_(be, y, x); }

/* y (+)= pre(x) . W^T per eng_linear_args, fused where the backend can (one pass over W, no
 * intermediate in memory), else as rmsnorm/silu_mul -> linear -> add through the scratch. The
 * result equals the composition of the plain ops up to float rounding. */
int eng_linear_ex(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w,
                  const eng_linear_args *a);

/* y[i] = pre(x) . W[i]^T for i < count (same x; only a->pre, norm and eps apply), one launch
 * where the backend has linear_group, else eng_linear_ex per weight through a->tmp_in. */
int eng_linear_group(eng_backend *be, int count, eng_tensor *const *y, const eng_tensor *x,
                     const eng_weight *const *w, const eng_linear_args *a);

/* The pre-norm MLP block: x += down . silu_mul(gate_up . rmsnorm(x, norm, eps)) for x [n, H],
 * gate_up [2F, H] (gate rows, then up rows), down [H, F]. One kernel where the backend has it
 * for the shapes, else two fused products through the scratch act [n, F] (silu_mul's output;
 * with one kernel its contents afterwards are unspecified), h [n, H], gu [n, 2F], tmp [n, H]. */
int eng_mlp(eng_backend *be, eng_tensor *x, eng_tensor *act, const eng_weight *gate_up,
            const eng_weight *down, const eng_tensor *norm, float eps, eng_tensor *h,
            eng_tensor *gu, eng_tensor *tmp);

/* A decoder's attention input step: RoPE on q[n, qh, hd] and k[n, kvh, hd] at pos[n] (in place),
 * then the rotated k and v[n, kvh, hd] written into kv at (slot[i], pos[i]). One kernel where the
 * backend has it, else rope, rope, kv_write. */
int eng_rope_kv_write(eng_backend *be, eng_tensor *q, eng_tensor *k, const eng_tensor *v,
                      const eng_tensor *pos, float theta, eng_kv *kv, const eng_tensor *slot);

/* A decoder's self-attention after its q/k/v products: RoPE at pos, this step's K/V into the
 * store at (slot, pos), attention over len positions; out [n, qh, hd]. One kernel where the
 * backend has it, else eng_rope_kv_write then attention. q is scratch afterwards. */
int eng_rope_attention(eng_backend *be, eng_tensor *out, eng_tensor *q, eng_tensor *k,
                       const eng_tensor *v, const eng_tensor *pos, float theta, eng_kv *kv,
                       const eng_tensor *slot, const eng_tensor *len, float scale);

/* Sets be->err/errstr and returns code (for backend implementations). */
int eng_backend_fail(eng_backend *be, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
