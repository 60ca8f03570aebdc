/* cuda_attention.cu - KV-store writes and attention over the store.
 *
 * Scores, softmax and the weighted sum are f32 whatever the store's dtype (F32 or BF16). */
#include <float.h>

#include "engine/cuda/cuda_internal.h"

#define ATT_WARPS 8
#define ATT_MIN_CHUNK 32  /* fewest key positions a split takes */
#define ATT_MAX_SPLITS 32

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

/* One block per (query row, query head, split of the key positions). Its warps take PB positions
 * at a time (independent loads in flight), each lane holding D = ceil(head_dim / 32) of the
 * dimensions; every warp keeps an online softmax, the block merges its warps. With several
 * splits, each block leaves its partial (max, sum, weighted values) in the workspace and the
 * last block of the (row, head) to finish merges them (the counter it resets makes the kernel
 * replayable in a graph). Rows shorter than a split's start just report an empty partial. */
#define ATT_PB 4
template <int D>
__global__ void __launch_bounds__(ATT_WARPS * 32)
k_attention(float *out, const float *q, const void *kc, const void *vc, int bf16,
            const int32_t *slot, const int32_t *len, const uint8_t *mask, int qh, int kvh, int hd,
            int max_len, float scale, int splits, float *ws_part, int *ws_count) {
    __shared__ float s_acc[ATT_WARPS][D * 32];
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ int s_last;
    pdl_trigger();
    int rh = blockIdx.x, split = blockIdx.y;
    int row = rh / qh, h = rh % qh;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int kh = h / (qh / kvh);
    int s = slot[row], L = len[row];
    if (L > max_len) L = max_len;
    /* this row's positions, cut into `splits` parts of at least ATT_MIN_CHUNK (the host only
     * knows the store's capacity; the real length is on the device) */
    int chunk = max((L + splits - 1) / splits, ATT_MIN_CHUNK);
    int p0 = split * chunk, p1 = min(L, p0 + chunk);
    const float *qr = q + ((size_t)row * qh + h) * hd;
    float qv[D];
#pragma unroll
    for (int i = 0; i < D; i++) {
        int d = lane + 32 * i;
        qv[i] = d < hd ? qr[d] * scale : 0.f;
    }
    float m = -FLT_MAX, l = 0.f, acc[D];
#pragma unroll
    for (int i = 0; i < D; i++) acc[i] = 0.f;
    const uint8_t *mrow = mask ? mask + (size_t)s * max_len : NULL;
    for (int p = p0 + warp * ATT_PB; p < p1; p += ATT_WARPS * ATT_PB) {
        float kx[ATT_PB][D], vx[ATT_PB][D];
        bool ok[ATT_PB];
#pragma unroll
        for (int j = 0; j < ATT_PB; j++) {
            int pj = p + j;
            ok[j] = pj < p1 && (!mrow || mrow[pj]);
            size_t base = (((size_t)s * max_len + (ok[j] ? pj : p0)) * kvh + kh) * hd;
#pragma unroll
            for (int i = 0; i < D; i++) {
                int d = lane + 32 * i;
                bool in = ok[j] && d < hd;
                kx[j][i] = in ? kv_load(kc, bf16, base + d) : 0.f;
                vx[j][i] = in ? kv_load(vc, bf16, base + d) : 0.f;
            }
        }
        float sc[ATT_PB];
#pragma unroll
        for (int j = 0; j < ATT_PB; j++) {
            float dot = 0.f;
#pragma unroll
            for (int i = 0; i < D; i++) dot = fmaf(qv[i], kx[j][i], dot);
            sc[j] = dot;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
#pragma unroll
            for (int j = 0; j < ATT_PB; j++) sc[j] += __shfl_xor_sync(0xffffffffu, sc[j], o);
#pragma unroll
        for (int j = 0; j < ATT_PB; j++) {
            if (!ok[j]) continue;
            float nm = fmaxf(m, sc[j]);
            float corr = __expf(m - nm), pw = __expf(sc[j] - nm);
            l = l * corr + pw;
#pragma unroll
            for (int i = 0; i < D; i++) acc[i] = acc[i] * corr + pw * vx[j][i];
            m = nm;
        }
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < D; i++) s_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    /* merge the warps: block max, block sum, weighted values */
    float gm = -FLT_MAX, gl = 0.f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (s_l[w] > 0.f) gm = fmaxf(gm, s_m[w]);
    for (int w = 0; w < ATT_WARPS; w++)
        if (s_l[w] > 0.f) gl += s_l[w] * __expf(s_m[w] - gm);
    float *orow = out + ((size_t)row * qh + h) * hd;
    if (splits == 1) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float v = 0.f;
            for (int w = 0; w < ATT_WARPS; w++)
                if (s_l[w] > 0.f) v += s_acc[w][d] * __expf(s_m[w] - gm);
            orow[d] = gl > 0.f ? v / gl : 0.f; /* every key masked: zeros, like the CPU op */
        }
        return;
    }
    float *part = ws_part + ((size_t)rh * splits + split) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (s_l[w] > 0.f) v += s_acc[w][d] * __expf(s_m[w] - gm);
        part[2 + d] = v;
    }
    if (threadIdx.x == 0) {
        part[0] = gm;
        part[1] = gl;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&ws_count[rh], 1) == splits - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const float *parts = ws_part + (size_t)rh * splits * (hd + 2);
    float fm = -FLT_MAX, fl = 0.f;
    for (int k = 0; k < splits; k++) {
        float pl = __ldcg(parts + (size_t)k * (hd + 2) + 1);
        if (pl > 0.f) fm = fmaxf(fm, __ldcg(parts + (size_t)k * (hd + 2)));
    }
    for (int k = 0; k < splits; k++) {
        float pl = __ldcg(parts + (size_t)k * (hd + 2) + 1);
        if (pl > 0.f) fl += pl * __expf(__ldcg(parts + (size_t)k * (hd + 2)) - fm);
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int k = 0; k < splits; k++) {
            const float *pk = parts + (size_t)k * (hd + 2);
            float pl = __ldcg(pk + 1);
            if (pl > 0.f) v += __ldcg(pk + 2 + d) * __expf(__ldcg(pk) - fm);
        }
        orow[d] = fl > 0.f ? v / fl : 0.f;
    }
    if (threadIdx.x == 0) ws_count[rh] = 0;
}

int cuda_attention(eng_backend *be, eng_tensor *out, const eng_tensor *q, const eng_kv *kv,
                   const eng_tensor *slot, const eng_tensor *len, const eng_tensor *key_mask,
                   float scale) {
    CUDA_REQUIRE(be, q->ndim == 3 && q->shape[2] == kv->head_dim && kv->head_dim <= 256 &&
                         q->shape[1] % kv->heads == 0 && eng_numel(out) == eng_numel(q) &&
                         slot->dtype == ENG_DT_I32 && len->dtype == ENG_DT_I32 &&
                         eng_numel(slot) == q->shape[0] && eng_numel(len) == q->shape[0],
                 "attention", "q [n, qh, %d <= 256] with qh a multiple of %d, slot/len I32 [n]",
                 kv->head_dim, kv->heads);
    CUDA_REQUIRE(be, !key_mask || key_mask->dtype == ENG_DT_U8, "attention", "mask must be U8");
    int64_t n = q->shape[0];
    if (!n) return 0;
    cuda_impl *c = cuda_of(be);
    int qh = (int)q->shape[1], hd = kv->head_dim;
    int64_t rows = n * qh;
    /* Split long stores over blocks when the workspace holds the partials; the split count
     * depends only on shapes, so a captured step replays with any lengths. */
    int64_t want = (2 * c->sm_count + rows - 1) / rows; /* about two blocks per SM */
    int64_t most = (kv->max_len + ATT_MIN_CHUNK - 1) / ATT_MIN_CHUNK;
    int splits = (int)(want < most ? want : most);
    if (splits > ATT_MAX_SPLITS) splits = ATT_MAX_SPLITS;
    if (splits < 2 || (size_t)rows * splits * (hd + 2) * 4 > c->att_part_bytes ||
        rows > c->att_count_len)
        splits = 1;
    dim3 grid((unsigned)rows, (unsigned)splits);
    int D = (hd + 31) / 32;
#define ATT_LAUNCH(DD)                                                                             \
    k_attention<DD><<<grid, ATT_WARPS * 32, 0, c->stream>>>(                                       \
        (float *)out->data, (const float *)q->data, kv->k, kv->v, kv->dtype == ENG_DT_BF16,        \
        (const int32_t *)slot->data, (const int32_t *)len->data,                                   \
        key_mask ? (const uint8_t *)key_mask->data : NULL, qh, kv->heads, hd, kv->max_len, scale,  \
        splits, c->att_part, c->att_count)
    if (D <= 1) ATT_LAUNCH(1);
    else if (D <= 2) ATT_LAUNCH(2);
    else if (D <= 4) ATT_LAUNCH(4);
    else ATT_LAUNCH(8);
#undef ATT_LAUNCH
    CU_LAUNCHED(be);
    return 0;
}
