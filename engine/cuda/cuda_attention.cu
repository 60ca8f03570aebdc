/* cuda_attention.cu - KV-store writes and attention over the store.
 *
 * Attention: one block per (query row, query head). The block's warps split the key positions
 * (warp w takes positions w, w + nwarps, ...), each keeping an online softmax (running max and
 * sum) and a partial output of head_dim values, then the partials are merged in shared memory.
 * Scores, softmax and the weighted sum are f32 whatever the store's dtype (F32 or BF16). */
#include <float.h>

#include "engine/cuda/cuda_internal.h"

#define ATT_WARPS 4
#define ATT_MAX_HD 256

__device__ __forceinline__ float kv_load(const void *base, int bf16, size_t i) {
    return bf16 ? __bfloat162float(((const __nv_bfloat16 *)base)[i]) : ((const float *)base)[i];
}

__global__ void k_kv_write(void *kc, void *vc, int bf16, const int32_t *slot, const int32_t *pos,
                           const float *k, const float *v, int n, int max_len, int slots,
                           int row_elems) {
    pdl_trigger();
    size_t total = (size_t)n * row_elems;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(t / row_elems), e = (int)(t % row_elems);
        int s = slot[r], p = pos[r];
        if (s < 0 || s >= slots || p < 0 || p >= max_len) continue; /* checked on the host too */
        size_t dst = ((size_t)s * max_len + p) * row_elems + e;
        if (bf16) {
            ((__nv_bfloat16 *)kc)[dst] = __float2bfloat16_rn(k[t]);
            ((__nv_bfloat16 *)vc)[dst] = __float2bfloat16_rn(v[t]);
        } else {
            ((float *)kc)[dst] = k[t];
            ((float *)vc)[dst] = v[t];
        }
    }
}

int cuda_kv_write(eng_backend *be, eng_kv *kv, const eng_tensor *slot, const eng_tensor *pos,
                  const eng_tensor *k, const eng_tensor *v) {
    int64_t n = slot->shape[0];
    int row_elems = kv->heads * kv->head_dim;
    CUDA_REQUIRE(be, (kv->dtype == ENG_DT_F32 || kv->dtype == ENG_DT_BF16) &&
                         slot->dtype == ENG_DT_I32 && pos->dtype == ENG_DT_I32 &&
                         eng_numel(pos) == n && eng_numel(k) == n * row_elems &&
                         eng_numel(v) == n * row_elems,
                 "kv_write", "slot/pos I32 [n], k/v [n, %d, %d], store F32 or BF16", kv->heads,
                 kv->head_dim);
    if (!n) return 0;
    size_t total = (size_t)n * row_elems;
    int blocks = (int)((total + 255) / 256);
    if (blocks > 65535) blocks = 65535;
    k_kv_write<<<blocks, 256, 0, cuda_of(be)->stream>>>(
        kv->k, kv->v, kv->dtype == ENG_DT_BF16, (const int32_t *)slot->data,
        (const int32_t *)pos->data, (const float *)k->data, (const float *)v->data, (int)n,
        kv->max_len, kv->slots, row_elems);
    CU_LAUNCHED(be);
    return 0;
}

__global__ void __launch_bounds__(ATT_WARPS * 32)
k_attention(float *out, const float *q, const void *kc, const void *vc, int bf16,
            const int32_t *slot, const int32_t *len, const uint8_t *mask, int qh, int kvh, int hd,
            int max_len, float scale) {
    pdl_trigger();
    __shared__ float s_q[ATT_MAX_HD];
    __shared__ float s_acc[ATT_WARPS][ATT_MAX_HD];
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    int row = blockIdx.x / qh, h = blockIdx.x % qh;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int kh = h / (qh / kvh);
    int s = slot[row], L = len[row];
    if (L > max_len) L = max_len;
    const float *qr = q + ((size_t)row * qh + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) s_q[d] = qr[d] * scale;
    __syncthreads();

    float m = -FLT_MAX, l = 0.f;
    float acc[ATT_MAX_HD / 32];
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) acc[i] = 0.f;
    const uint8_t *mrow = mask ? mask + (size_t)s * max_len : NULL;
    for (int p = warp; p < L; p += ATT_WARPS) {
        if (mrow && !mrow[p]) continue;
        size_t base = (((size_t)s * max_len + p) * kvh + kh) * hd;
        float dot = 0.f;
        for (int d = lane; d < hd; d += 32) dot += s_q[d] * kv_load(kc, bf16, base + d);
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        float nm = fmaxf(m, dot);
        float corr = __expf(m - nm), pw = __expf(dot - nm);
        l = l * corr + pw;
#pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++) {
            int d = lane + 32 * i;
            if (d < hd) acc[i] = acc[i] * corr + pw * kv_load(vc, bf16, base + d);
        }
        m = nm;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) {
        int d = lane + 32 * i;
        if (d < hd) s_acc[warp][d] = acc[i];
    }
    __syncthreads();
    float gm = -FLT_MAX;
    for (int w = 0; w < ATT_WARPS; w++)
        if (s_l[w] > 0.f) gm = fmaxf(gm, s_m[w]);
    float gl = 0.f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (s_l[w] > 0.f) gl += s_l[w] * __expf(s_m[w] - gm);
    float *orow = out + ((size_t)row * qh + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (s_l[w] > 0.f) v += s_acc[w][d] * __expf(s_m[w] - gm);
        orow[d] = gl > 0.f ? v / gl : 0.f; /* every key masked: zeros, like the CPU op */
    }
}

int cuda_attention(eng_backend *be, eng_tensor *out, const eng_tensor *q, const eng_kv *kv,
                   const eng_tensor *slot, const eng_tensor *len, const eng_tensor *key_mask,
                   float scale) {
    CUDA_REQUIRE(be, q->ndim == 3 && q->shape[2] == kv->head_dim && kv->head_dim <= ATT_MAX_HD &&
                         q->shape[1] % kv->heads == 0 && eng_numel(out) == eng_numel(q) &&
                         slot->dtype == ENG_DT_I32 && len->dtype == ENG_DT_I32 &&
                         eng_numel(slot) == q->shape[0] && eng_numel(len) == q->shape[0],
                 "attention", "q [n, qh, %d] with qh a multiple of %d, slot/len I32 [n]",
                 kv->head_dim, kv->heads);
    CUDA_REQUIRE(be, !key_mask || key_mask->dtype == ENG_DT_U8, "attention", "mask must be U8");
    int64_t n = q->shape[0];
    if (!n) return 0;
    unsigned blocks = (unsigned)(n * q->shape[1]);
    k_attention<<<blocks, ATT_WARPS * 32, 0, cuda_of(be)->stream>>>(
        (float *)out->data, (const float *)q->data, kv->k, kv->v, kv->dtype == ENG_DT_BF16,
        (const int32_t *)slot->data, (const int32_t *)len->data,
        key_mask ? (const uint8_t *)key_mask->data : NULL, (int)q->shape[1], kv->heads,
        kv->head_dim, kv->max_len, scale);
    CU_LAUNCHED(be);
    return 0;
}
