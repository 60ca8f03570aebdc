/* cuda_attention.cu - KV-store writes and attention over the store.
 *
 * Scores, softmax and the weighted sum are f32 whatever the store's dtype (F32 or BF16). Decode
 * (BF16 store, no mask, head_dim 128, a few query heads per KV head) has its own kernel that reads
 * each K/V byte once per row; everything else (the encoder's masked F32 prefill, other head
 * dims) takes the general kernel. */
#include <float.h>
#include <math.h>

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

/* Decode path: one block of DEC_WARPS warps per (row, KV head, split) computes all G = qh / kvh
 * query heads of that KV head, so each K/V byte is read once per row; at small batches the host
 * gives a block fewer of them (G halved, attention_decode) and the KV head's blocks share its K/V
 * through L2. A position's 128 dims are 16 lanes x 8 bf16 (one 16-byte load each), so one warp
 * load covers two positions: lanes 0-15 the even one, lanes 16-31 the odd one. A warp takes
 * DEC_U(G) such pairs per iteration, every load issued before the first use; its warps
 * interleave over the split's positions.
 *
 * Scores are in log2 units (q pre-scaled by scale * log2(e), exp2f). A lane's U*G partial dot
 * products are summed over its 16 lanes by a reduce-scatter that leaves lane j with the full
 * score of index j % (U*G) = u * G + g, so the online softmax costs one exp per lane and
 * iteration; the probabilities are then shuffled back to the lanes holding that position's V.
 * Each lane keeps its head g's running max (uniform over the warp's lanes of that g) and a
 * partial sum; acc[g][8] is the lane's weighted V over its half's positions.
 *
 * Splits: the host fixes their number from shapes alone (graph replays see new lengths); the
 * device cuts the row's real length into chunks of a multiple of DEC_CHUNK positions, so only
 * the first `active` splits have work. With one active split the block writes the output;
 * otherwise each leaves (max, sum, values) per head in the workspace and the last to arrive
 * merges them in split order (deterministic) and resets its counter for the next replay. */
#define DEC_HD 128
#define DEC_WARPS 4
#define DEC_CHUNK 64        /* split granularity in positions: a multiple of a block iteration */
#define DEC_MAX_SPLITS 32   /* bounds the serial merge in the last block */
#define DEC_BLOCKS_PER_SM 8 /* split until about this many blocks per SM */
/* Position pairs a warp loads per iteration: with one head a block (cross attention, or self
 * attention at one sequence) 8, so 128 positions take two block iterations, not four. H200,
 * session 8, int8 one sequence, against 4: at 1,500 positions 1,045 vs 992 steps/s; at the
 * start of a generation (~70 positions, the second iteration mostly empty) 1,123-1,138 vs
 * 1,154-1,163. */
#define DEC_U(G) ((G) >= 8 ? 2 : (G) == 1 ? 8 : 4)
#define DEC_MERGE(G) ((G) >= 2 ? 32 / (G) : 8) /* splits the last block merges at once */

static_assert(DEC_WARPS * 32 == DEC_HD, "the merges give one thread per output dim");
static_assert(DEC_CHUNK % (DEC_WARPS * 2 * DEC_U(1)) == 0, "chunks of whole block iterations");

/* 8 bf16 (one 16-byte load) to f32: a bf16 is the high half of an f32. */
__device__ __forceinline__ void bf16x8_to_f32(uint4 r, float f[8]) {
    f[0] = __uint_as_float(r.x << 16);
    f[1] = __uint_as_float(r.x & 0xffff0000u);
    f[2] = __uint_as_float(r.y << 16);
    f[3] = __uint_as_float(r.y & 0xffff0000u);
    f[4] = __uint_as_float(r.z << 16);
    f[5] = __uint_as_float(r.z & 0xffff0000u);
    f[6] = __uint_as_float(r.w << 16);
    f[7] = __uint_as_float(r.w & 0xffff0000u);
}

/* log2 of a power of two, for compile-time shuffle masks. */
__host__ __device__ constexpr int ilog2(int x) { return x > 1 ? 1 + ilog2(x / 2) : 0; }

/* One halving step of half_warp_sum_scatter on the first C values, then the next. */
template <int C, int V>
__device__ __forceinline__ void sum_scatter_step(float (&v)[V], int lane) {
    if constexpr (C > 1) {
        const bool up = lane & (C / 2);
#pragma unroll
        for (int i = 0; i < C / 2; i++) {
            float send = up ? v[i] : v[i + C / 2];
            float keep = up ? v[i + C / 2] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, C / 2);
        }
        sum_scatter_step<C / 2>(v, lane);
    }
}

/* Sums v[0..V) over the 16 lanes of each half-warp (V a power of two <= 16) and returns, in lane
 * j, the total of index j % V. Each halving step trades the half of the values a lane does not
 * keep with its partner (V - 1 shuffles instead of 4V); the steps past V sum the copies. Float
 * addition commutes, so lanes j and j + V end with bit-identical totals. */
template <int V>
__device__ __forceinline__ float half_warp_sum_scatter(float (&v)[V], int lane) {
    sum_scatter_step<V>(v, lane);
    float r = v[0];
#pragma unroll
    for (int b = ilog2(V); b < 4; b++) r += __shfl_xor_sync(0xffffffffu, r, 1 << b);
    return r;
}

/* The fused variant's inputs (ROPE): the step's k and v [n, kvh, 128] before RoPE, the rows'
 * positions and the RoPE base. */
struct dec_rope_args {
    const float *k, *v;
    const int32_t *pos;
    float theta;
};

/* cos and sin of RoPE's angle for dim d (half-split rotation over 128 dims) at position p, in
 * the same expressions as k_rope_kv. */
__device__ __forceinline__ void rope_cs(int d, int p, float theta, float *c, float *s) {
    int i = d % (DEC_HD / 2);
    float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)DEC_HD);
    sincosf((float)p * inv_freq, s, c);
}

template <int G, bool ROPE>
__global__ void __launch_bounds__(DEC_WARPS * 32, G >= 8 ? 2 : 4)
k_attention_decode(float *out, const float *q, const uint4 *kc, const uint4 *vc,
                   const int32_t *slot, const int32_t *len, int qh, int kvh, int slots,
                   int max_len, float qscale, int splits, int min_chunk, int prefetch,
                   float *ws_part, int *ws_count, dec_rope_args ra) {
    constexpr int U = DEC_U(G), V = U * G, PART = DEC_HD + 2;
    const unsigned full = 0xffffffffu;
    __shared__ __align__(16) float s_acc[DEC_WARPS][G][DEC_HD]; /* each warp's weighted V */
    __shared__ float s_m[DEC_WARPS][G], s_l[DEC_WARPS][G];      /* its max and sum per head */
    __shared__ int s_last;
    pdl_trigger();
    /* block x = (row, G consecutive query heads); they share KV head kh (G divides qh / kvh) */
    const int group = blockIdx.x, split = blockIdx.y;
    const int row = group / (qh / G), h0 = group % (qh / G) * G, kh = h0 / (qh / kvh);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int half = lane / 16, j = lane % 16;
    const int s = slot[row];
    int L = len[row];
    /* RoPE's angles for this lane's 8 dims (the position is a step input, not a result of the
     * kernel before: computed before waiting on it) */
    float cs[8], sn[8], kcs = 0.f, ksn = 0.f; /* k's angle for dim threadIdx.x (the write) */
    if (ROPE) {
        const int p = ra.pos[row];
#pragma unroll
        for (int i = 0; i < 8; i++) rope_cs(8 * j + i, p, ra.theta, &cs[i], &sn[i]);
        rope_cs((int)threadIdx.x, p, ra.theta, &kcs, &ksn);
    }
    /* This block's positions (the row's real length cut into the host's split count). */
    L = (s < 0 || s >= slots) ? 0 : min(max(L, 0), max_len);
    int chunk = (L + splits - 1) / splits;
    chunk = max((chunk + min_chunk - 1) / min_chunk, 1) * min_chunk;
    const int active = (L + chunk - 1) / chunk;
    const int p0 = split * chunk, p1 = min(L, p0 + chunk);
    /* uint4 index of (slot s, position 0, head kh, dims 8j..8j+7), and between positions */
    const size_t pstride = (size_t)kvh * (DEC_HD / 8);
    const size_t head0 = ((size_t)s * max_len * kvh + kh) * (DEC_HD / 8) + j;
    /* The store's K/V at these positions were written by earlier steps (or the prefill), not by
     * the kernel before: pull the first `prefetch` of them into L2 while it finishes (this
     * step's own position, written below by this kernel, is harmless to prefetch: L2 is where
     * the write lands). A position's 128 dims of one head are two 128-byte lines. */
    for (int i = (int)threadIdx.x, e = 2 * min(p1 - p0, prefetch); i < e; i += blockDim.x) {
        size_t off = head0 - j + (size_t)(p0 + i / 2) * pstride + (i % 2) * 8;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(kc + off));
        asm volatile("prefetch.global.L2 [%0];" ::"l"(vc + off));
    }
    /* launched with programmatic dependent launch: everything above overlapped the kernel
     * before this one; q, this step's k/v and the store are read after it has finished */
    pdl_wait();
    /* this lane's 8 dims of each head's query (the block's G heads are adjacent in q and out);
     * scaled to log2 units below */
    float qv[G][8];
    const float *qrow = q + ((size_t)row * qh + h0) * DEC_HD + 8 * j;
#pragma unroll
    for (int g = 0; g < G; g++) {
        float4 a = *(const float4 *)(qrow + g * DEC_HD);
        float4 b = *(const float4 *)(qrow + g * DEC_HD + 4);
        qv[g][0] = a.x, qv[g][1] = a.y, qv[g][2] = a.z, qv[g][3] = a.w;
        qv[g][4] = b.x, qv[g][5] = b.y, qv[g][6] = b.z, qv[g][7] = b.w;
    }
    float *orow = out + ((size_t)row * qh + h0) * DEC_HD;
    if (ROPE) {
        /* RoPE on q: lane j holds dims 8j..8j+7, its rotation partner (d +- 64) is lane j ^ 8 */
        const int p = ra.pos[row];
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float a = qv[g][i], o = __shfl_xor_sync(0xffffffffu, a, 8);
                qv[g][i] = j < 8 ? a * cs[i] - o * sn[i] : a * cs[i] + o * sn[i];
            }
        /* the block whose split holds position p (split 0 when no split reads it) rotates this
         * step's k, writes k and v into the store, and reads them back after the barrier. With
         * fewer heads a block than query heads a KV head, each of that KV head's blocks writes
         * the same k and v (same arithmetic, same bits), so whichever write a block reads back
         * holds the bits of its own. */
        const int wsplit = p >= 0 && p < L ? p / chunk : 0;
        if (split == wsplit) {
            if (s >= 0 && s < slots && p >= 0 && p < max_len) {
                const int d = threadIdx.x; /* one thread per dim */
                const float *kr = ra.k + ((size_t)row * kvh + kh) * DEC_HD;
                float a = kr[d], o = kr[d ^ (DEC_HD / 2)];
                float rot = d < DEC_HD / 2 ? a * kcs - o * ksn : a * kcs + o * ksn;
                size_t dst = (((size_t)s * max_len + p) * kvh + kh) * DEC_HD + d;
                ((__nv_bfloat16 *)kc)[dst] = __float2bfloat16_rn(rot);
                ((__nv_bfloat16 *)vc)[dst] =
                    __float2bfloat16_rn(ra.v[((size_t)row * kvh + kh) * DEC_HD + d]);
            }
            __syncthreads();
        }
    }
    if (split >= active) {
        if (split == 0) /* no keys (len 0): zeros, like the CPU op */
            for (int i = threadIdx.x; i < G * DEC_HD; i += blockDim.x) orow[i] = 0.f;
        return;
    }
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int i = 0; i < 8; i++) qv[g][i] *= qscale;
    /* the softmax slot this lane owns after the reduce-scatter: pair u, head g, its half */
    const int mine = lane % V, my_u = mine / G;
    float m = -INFINITY, l = 0.f, acc[G][8];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int i = 0; i < 8; i++) acc[g][i] = 0.f;
    for (int base = p0 + warp * 2 * U; base < p1; base += DEC_WARPS * 2 * U) {
        uint4 kr[U], vr[U];
#pragma unroll
        for (int u = 0; u < U; u++) { /* past p1: reload the last position, scored -inf below */
            size_t off = head0 + (size_t)min(base + 2 * u + half, p1 - 1) * pstride;
            kr[u] = ROPE ? kc[off] : __ldg(kc + off); /* fused: sees its own store write */
            vr[u] = ROPE ? vc[off] : __ldg(vc + off);
        }
        float sc[V]; /* partial dot products over this lane's dims, index u * G + g */
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[8];
            bf16x8_to_f32(kr[u], kf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float dot = 0.f;
#pragma unroll
                for (int i = 0; i < 8; i++) dot = fmaf(qv[g][i], kf[i], dot);
                sc[u * G + g] = dot;
            }
        }
        float score = half_warp_sum_scatter<V>(sc, lane);
        if (base + 2 * my_u + half >= p1) score = -INFINITY;
        /* max over the iteration's positions of this head: the u bits and the half bit (lanes
         * differing in the bits from V up hold copies) */
        float cmax = score;
#pragma unroll
        for (int b = ilog2(G); b < ilog2(V); b++)
            cmax = fmaxf(cmax, __shfl_xor_sync(full, cmax, 1 << b));
        cmax = fmaxf(cmax, __shfl_xor_sync(full, cmax, 16));
        /* base < p1, so every head has a finite score here and mnew is finite */
        float mnew = fmaxf(m, cmax);
        float prob = exp2f(score - mnew), corr = exp2f(m - mnew);
        l = fmaf(l, corr, prob);
        if (__any_sync(full, mnew > m)) { /* else corr is exactly 1 for every head */
#pragma unroll
            for (int g = 0; g < G; g++) {
                float cg = __shfl_sync(full, corr, g); /* lane g owns (u 0, head g) */
#pragma unroll
                for (int i = 0; i < 8; i++) acc[g][i] *= cg;
            }
        }
        m = mnew;
#pragma unroll
        for (int u = 0; u < U; u++) {
            float vf[8];
            bf16x8_to_f32(vr[u], vf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float pg = __shfl_sync(full, prob, (lane & 16) + u * G + g);
#pragma unroll
                for (int i = 0; i < 8; i++) acc[g][i] = fmaf(pg, vf[i], acc[g][i]);
            }
        }
    }
    /* the warp's sum per head over its distinct slots; both halves' V into lanes 0-15 */
#pragma unroll
    for (int b = ilog2(G); b < ilog2(V); b++) l += __shfl_xor_sync(full, l, 1 << b);
    l += __shfl_xor_sync(full, l, 16);
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int i = 0; i < 8; i++) acc[g][i] += __shfl_xor_sync(full, acc[g][i], 16);
    if (half == 0)
#pragma unroll
        for (int g = 0; g < G; g++) {
            float4 *dst = (float4 *)&s_acc[warp][g][8 * j];
            dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
        }
    if (lane < G) { /* lane g owns head g */
        s_m[warp][lane] = m;
        s_l[warp][lane] = l;
    }
    __syncthreads();

    /* merge the warps (a warp without positions has l == 0); thread d owns dim d of each head.
     * The split is not empty, so warp 0 has positions and bm is finite. */
    const int d = threadIdx.x;
    float bm[G], bl[G], bv[G];
#pragma unroll
    for (int g = 0; g < G; g++) {
        bm[g] = -INFINITY;
        for (int w = 0; w < DEC_WARPS; w++)
            if (s_l[w][g] > 0.f) bm[g] = fmaxf(bm[g], s_m[w][g]);
        bl[g] = 0.f;
        bv[g] = 0.f;
        for (int w = 0; w < DEC_WARPS; w++)
            if (s_l[w][g] > 0.f) {
                float e = exp2f(s_m[w][g] - bm[g]);
                bl[g] = fmaf(s_l[w][g], e, bl[g]);
                bv[g] = fmaf(s_acc[w][g][d], e, bv[g]);
            }
    }
    if (active == 1) {
#pragma unroll
        for (int g = 0; g < G; g++) orow[g * DEC_HD + d] = bv[g] / bl[g];
        return;
    }
    /* workspace of this group: [splits][G][max, sum, DEC_HD values] */
    float *parts = ws_part + (size_t)group * splits * G * PART;
    float *mine_part = parts + (size_t)split * G * PART;
#pragma unroll
    for (int g = 0; g < G; g++) {
        mine_part[g * PART + 2 + d] = bv[g];
        if (d == 0) {
            mine_part[g * PART] = bm[g];
            mine_part[g * PART + 1] = bl[g];
        }
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&ws_count[group], 1) == active - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    /* The last split to finish merges all the active ones (each non-empty: finite max, sum >= 1)
     * in split order, DEC_MERGE(G) at a time so each batch's loads are in flight together. */
    constexpr int B = DEC_MERGE(G);
    float fm[G], fl[G], fv[G];
#pragma unroll
    for (int g = 0; g < G; g++) fm[g] = -INFINITY, fl[g] = fv[g] = 0.f;
    for (int k0 = 0; k0 < active; k0 += B) {
        float pm[B][G], pl[B][G], pv[B][G];
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float *pk = parts + (size_t)min(k0 + b, active - 1) * G * PART;
#pragma unroll
            for (int g = 0; g < G; g++) {
                pm[b][g] = __ldcg(pk + g * PART);
                pl[b][g] = __ldcg(pk + g * PART + 1);
                pv[b][g] = __ldcg(pk + g * PART + 2 + d);
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            float nm = fm[g];
#pragma unroll
            for (int b = 0; b < B; b++)
                if (k0 + b < active) nm = fmaxf(nm, pm[b][g]);
            float corr = exp2f(fm[g] - nm); /* 0 on the first batch (fm -inf, nm finite) */
            fl[g] *= corr;
            fv[g] *= corr;
#pragma unroll
            for (int b = 0; b < B; b++)
                if (k0 + b < active) {
                    float w = exp2f(pm[b][g] - nm);
                    fl[g] = fmaf(pl[b][g], w, fl[g]);
                    fv[g] = fmaf(pv[b][g], w, fv[g]);
                }
            fm[g] = nm;
        }
    }
#pragma unroll
    for (int g = 0; g < G; g++) orow[g * DEC_HD + d] = fv[g] / fl[g];
    if (threadIdx.x == 0) ws_count[group] = 0;
}

/* The decode kernel's G (query heads per KV head) for this call, or 0 when it does not apply. */
static int decode_group_size(const eng_tensor *out, const eng_tensor *q, const eng_kv *kv,
                             const eng_tensor *key_mask) {
    int g = (int)(q->shape[1] / kv->heads);
    uintptr_t addr = (uintptr_t)q->data | (uintptr_t)kv->k | (uintptr_t)kv->v;
    if (key_mask || kv->dtype != ENG_DT_BF16 || kv->head_dim != DEC_HD || (addr & 15) ||
        out->dtype != ENG_DT_F32 || q->dtype != ENG_DT_F32)
        return 0;
    return g == 1 || g == 2 || g == 4 || g == 8 ? g : 0;
}

/* Fewest positions a split takes (a multiple of DEC_CHUNK): DEC_MIN_CHUNK, or
 * VOXQ_ATT_MIN_CHUNK read once (A/B timing: fewer, longer splits trade parallelism for the
 * merge's round trips). 128 measured best on the H200 at 2-128 rows and 128-position texts
 * (int8 steps: 16 seqs 2.38 / 2.34 / 2.27 ms and 64 seqs 6.46 / 6.37 / 6.31 ms for 32 / 64 /
 * 128; one sequence unchanged). */
#define DEC_MIN_CHUNK 128
static int decode_min_chunk(void) {
    static int chunk;
    if (!chunk) {
        long v = cuda_env_knob("VOXQ_ATT_MIN_CHUNK", DEC_MIN_CHUNK, DEC_CHUNK, 4096);
        chunk = (int)((v + DEC_CHUNK - 1) / DEC_CHUNK * DEC_CHUNK);
    }
    return chunk;
}

/* Most positions of a split the decode kernel prefetches into L2 before it waits on the kernel
 * before: 256 where the launch has at most one block an SM, else none; or VOXQ_CUDA_ATT_PREFETCH
 * read once (0: never; A/B timing). H200, session 8, one call: int8 one sequence 1,119-1,121
 * steps/s with against 1,093-1,096 without, int4 1,036-1,039 against 1,018-1,020; at 64
 * sequences (2,048 blocks of cross attention) 2.935 ms a step with against 2.881 without. */
static int decode_prefetch(int64_t blocks, int sm_count) {
    static int pf = -1;
    if (pf < 0) pf = (int)cuda_env_knob("VOXQ_CUDA_ATT_PREFETCH", 256, 0, 1 << 20);
    return blocks <= sm_count ? pf : 0;
}

static int attention_decode(eng_backend *be, eng_tensor *out, const eng_tensor *q,
                            const eng_kv *kv, const eng_tensor *slot, const eng_tensor *len,
                            float scale, int g, const dec_rope_args *rope) {
    cuda_impl *c = cuda_of(be);
    int64_t n = q->shape[0];
    int qh = (int)q->shape[1];
    /* Query heads a block: all g of a KV head (each K/V byte read once a row), halved while
     * there would be under a quarter of a block an SM (one sequence: 8 blocks of 4 heads become
     * 32 of one, a quarter of the serial work each, reading their KV head's K/V from L2), unless
     * VOXQ_CUDA_ATT_SPLIT_HEADS=0 (read once; A/B timing). */
    static int split_heads = -1;
    if (split_heads < 0) split_heads = (int)cuda_env_knob("VOXQ_CUDA_ATT_SPLIT_HEADS", 1, 0, 1);
    while (split_heads && g > 1 && n * qh / g < c->sm_count / 4) g /= 2;
    int64_t groups = n * qh / g;
    /* Enough blocks to fill the GPU a few times over, no split under DEC_CHUNK positions of
     * the store's capacity (the device cuts the real length), and a merge of at most
     * DEC_MAX_SPLITS partials. Depends on shapes only, so captured steps replay. */
    int64_t want = ((int64_t)DEC_BLOCKS_PER_SM * c->sm_count + groups - 1) / groups;
    int min_chunk = decode_min_chunk();
    int64_t most = (kv->max_len + min_chunk - 1) / min_chunk;
    int64_t splits = want < most ? want : most;
    if (splits > DEC_MAX_SPLITS) splits = DEC_MAX_SPLITS;
    if (splits < 2 || (size_t)(n * qh) * splits * (DEC_HD + 2) * 4 > c->att_part_bytes ||
        groups > c->att_count_len)
        splits = 1;
    CUDA_REQUIRE(be, groups <= INT32_MAX, "attention", "%lld rows x %d KV heads is too many",
                 (long long)n, kv->heads);
    dim3 grid((unsigned)groups, (unsigned)splits);
    float qscale = scale * 1.4426950408889634f; /* log2(e): the kernel uses exp2 */
    dec_rope_args ra = rope ? *rope : dec_rope_args{NULL, NULL, NULL, 0.f};
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(DEC_WARPS * 32);
    cfg.stream = c->stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = cuda_pdl_enabled() ? 1 : 0;
    int prefetch = decode_prefetch(groups * splits, c->sm_count);
    cudaError_t e = cudaSuccess;
#define DEC_LAUNCH(GG, R)                                                                          \
    e = cudaLaunchKernelEx(&cfg, k_attention_decode<GG, R>, (float *)out->data,                    \
                           (const float *)q->data, (const uint4 *)kv->k, (const uint4 *)kv->v,     \
                           (const int32_t *)slot->data, (const int32_t *)len->data, qh, kv->heads, \
                           kv->slots, kv->max_len, qscale, (int)splits, min_chunk, prefetch,       \
                           c->att_part, c->att_count, ra)
    if (rope) {
        switch (g) {
        case 1: DEC_LAUNCH(1, true); break;
        case 2: DEC_LAUNCH(2, true); break;
        case 4: DEC_LAUNCH(4, true); break;
        default: DEC_LAUNCH(8, true); break;
        }
    } else {
        switch (g) {
        case 1: DEC_LAUNCH(1, false); break;
        case 2: DEC_LAUNCH(2, false); break;
        case 4: DEC_LAUNCH(4, false); break;
        default: DEC_LAUNCH(8, false); break;
        }
    }
#undef DEC_LAUNCH
    CU_CHECK(be, e);
    return 0;
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
    int g = decode_group_size(out, q, kv, key_mask);
    if (g) return attention_decode(be, out, q, kv, slot, len, scale, g, NULL);
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

/* RoPE + K/V write + attention in the decode kernel when it applies (no mask, BF16 store, head
 * dim 128): the block that covers a row's position writes its K/V before reading it, the others
 * rotate their copy of q in registers (q in memory is left as it was). Otherwise the two ops. */
int cuda_rope_attention(eng_backend *be, eng_tensor *out, eng_tensor *q, eng_tensor *k,
                        const eng_tensor *v, const eng_tensor *pos, float theta, eng_kv *kv,
                        const eng_tensor *slot, const eng_tensor *len, float scale) {
    int64_t n = q->shape[0];
    int g = decode_group_size(out, q, kv, NULL);
    int fused = g && k->dtype == ENG_DT_F32 && v->dtype == ENG_DT_F32 &&
                eng_numel(k) == n * kv->heads * DEC_HD && eng_numel(v) == eng_numel(k) &&
                pos->dtype == ENG_DT_I32 && eng_numel(pos) == n && slot->dtype == ENG_DT_I32 &&
                eng_numel(slot) == n && len->dtype == ENG_DT_I32 && eng_numel(len) == n &&
                q->ndim == 3 && q->shape[2] == DEC_HD && eng_numel(out) == eng_numel(q);
    if (!fused) {
        int rc = cuda_rope_kv_write(be, q, k, v, pos, theta, kv, slot);
        return rc ? rc : cuda_attention(be, out, q, kv, slot, len, NULL, scale);
    }
    if (!n) return 0;
    dec_rope_args ra = {(const float *)k->data, (const float *)v->data,
                        (const int32_t *)pos->data, theta};
    return attention_decode(be, out, q, kv, slot, len, scale, g, &ra);
}
