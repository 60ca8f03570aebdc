/* cuda_sample.cu - the sample op on the GPU: logits processing and the seeded pick of spec 6.2,
 * so a decoder step sends back a few ids per sequence instead of its logits.
 *
 * One block per (entry, channel) holds the channel's scores in shared memory and runs the stages
 * of the CPU reference (engine/cpu/sample.c) in the same order with the same arithmetic: f32
 * guidance and temperature without contraction, exact k-th largest by a radix select over
 * order-preserving keys (ties at the boundary resolved in index order by a block scan), and the
 * softmax sums of top-p and of the draw in double, summed by one thread in the reference's order
 * over the few candidates that survive the filters. On the same logits it picks the same ids as
 * the CPU op (the only difference possible is the last bit of a double exp). */
#include <float.h>
#include <limits.h>

#include "engine/cuda/cuda_internal.h"
#include "engine/sample_rng.h"

#define SAMPLE_THREADS 256
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define SAMPLE_MAX_VOCAB 2048

/* Order-preserving unsigned key of a float: a < b as floats <=> key(a) < key(b) (-0 is +0). */
__device__ __forceinline__ unsigned fkey(float f) {
    unsigned u = __float_as_uint(f == 0.f ? 0.f : f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Softmax terms computed in parallel before one thread sums them in order; more candidates
 * than this (only with top-k off) are summed with their exps computed in the loop. */
#define SAMPLE_EXP_CAP (SAMPLE_MAX_VOCAB / 2)

struct sample_smem {
    float sc[SAMPLE_MAX_VOCAB]; /* the channel's scores, processed in place */
    union {
        float lc[SAMPLE_MAX_VOCAB]; /* conditional logits (until the guidance filter is done) */
        double ex[SAMPLE_EXP_CAP];  /* then: exp terms of top-p and of the draw */
    };
    float cval[SAMPLE_MAX_VOCAB]; /* finite candidates in index order: value */
    int cidx[SAMPLE_MAX_VOCAB];   /* ... and id */
    int order[SAMPLE_MAX_VOCAB];  /* candidate numbers sorted by (value, id) ascending */
    int hist[256];
    int warp_part[SAMPLE_WARPS];
    int res[2];
    double dsum;
    float best_v[SAMPLE_WARPS];
    int best_i[SAMPLE_WARPS];
};

/* Exclusive prefix sum of v over the block's threads in thread order; *total gets the sum. */
__device__ int block_excl_scan(int v, sample_smem &s, int *total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) s.warp_part[warp] = x;
    __syncthreads();
    int base = 0, tot = 0;
    for (int w = 0; w < SAMPLE_WARPS; w++) {
        int t = s.warp_part[w];
        if (w < warp) base += t;
        tot += t;
    }
    __syncthreads();
    *total = tot;
    return base + x - v;
}

/* First index of the maximum of s.sc[0..V) (0 when all are -inf), as torch.argmax. */
__device__ int block_argmax(sample_smem &s, int V) {
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int v = threadIdx.x; v < V; v += SAMPLE_THREADS) {
        float x = s.sc[v];
        if (x > bv || (x == bv && v < bi)) {
            bv = x;
            bi = v;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        s.best_v[warp] = bv;
        s.best_i[warp] = bi;
    }
    __syncthreads();
    bv = s.best_v[0];
    bi = s.best_i[0];
    for (int w = 1; w < SAMPLE_WARPS; w++)
        if (s.best_v[w] > bv || (s.best_v[w] == bv && s.best_i[w] < bi)) {
            bv = s.best_v[w];
            bi = s.best_i[w];
        }
    __syncthreads();
    return bi == INT_MAX ? 0 : bi;
}

/* Key of the k-th largest of s.sc[0..V) (1 <= k <= V) by four 8-bit radix passes; *ties gets
 * how many of the values equal to it are among the k largest. */
__device__ unsigned block_kth_key(sample_smem &s, int V, int k, int *ties) {
    unsigned prefix = 0, mask = 0;
    int kk = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += SAMPLE_THREADS) s.hist[i] = 0;
        __syncthreads();
        for (int v = threadIdx.x; v < V; v += SAMPLE_THREADS) {
            unsigned key = fkey(s.sc[v]);
            if ((key & mask) == prefix) atomicAdd(&s.hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            /* lane l owns bins 255 - 8l down to 248 - 8l: a scan from the top finds the bin
             * holding the kk-th largest */
            int lane = threadIdx.x, sum = 0;
            for (int j = 0; j < 8; j++) sum += s.hist[255 - 8 * lane - j];
            int incl = sum;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                int y = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += y;
            }
            int cum = incl - sum;
            if (cum < kk && kk <= incl) {
                for (int j = 0; j < 8; j++) {
                    int b = 255 - 8 * lane - j, h = s.hist[b];
                    if (cum + h >= kk) {
                        s.res[0] = b;
                        s.res[1] = kk - cum;
                        break;
                    }
                    cum += h;
                }
            }
        }
        __syncthreads();
        prefix |= (unsigned)s.res[0] << shift;
        mask |= 255u << shift;
        kk = s.res[1];
        __syncthreads();
    }
    *ties = kk;
    return prefix;
}

/* The contiguous run of ids [*lo, *hi) this thread owns in the block scans (index order). */
__device__ __forceinline__ void own_ids(int V, int *lo, int *hi) {
    int per = (V + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    *lo = threadIdx.x * per;
    *hi = min(V, *lo + per);
}

/* Gathers the finite scores in index order into s.cval/s.cidx; returns how many. Each thread
 * owns a contiguous run of ids so a block scan gives every candidate its place. */
__device__ int gather_finite(sample_smem &s, int V) {
    int lo, hi, cnt = 0;
    own_ids(V, &lo, &hi);
    for (int v = lo; v < hi; v++) cnt += s.sc[v] > -INFINITY;
    int total;
    int at = block_excl_scan(cnt, s, &total);
    for (int v = lo; v < hi; v++)
        if (s.sc[v] > -INFINITY) {
            s.cval[at] = s.sc[v];
            s.cidx[at] = v;
            at++;
        }
    __syncthreads();
    return total;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
k_sample(int32_t *picks, float *scores, const float *logits, const eng_sample_seq *params, int C,
         int V, int rows, int eos) {
    __shared__ sample_smem s;
    int ch = blockIdx.x, e = blockIdx.y, tid = threadIdx.x;
    eng_sample_seq p = params[e]; /* a step input: read before waiting on the logits */
    pdl_wait();
    /* unused entries, and rows outside the logits (the CPU op reports those; here the params
     * live on the device, so the entry is skipped rather than read out of bounds) */
    if (p.row < 0 || p.row >= rows || p.row_uncond >= rows) return;
    const float *lc = logits + ((size_t)p.row * C + ch) * V;
    const float *lu = p.row_uncond >= 0 ? logits + ((size_t)p.row_uncond * C + ch) * V : NULL;
    /* guidance: G = Lc + (Lc - Lu) * g, rounded after every operation as on the CPU */
    for (int v = tid; v < V; v += SAMPLE_THREADS) {
        float c = lc[v];
        s.lc[v] = c;
        s.sc[v] = lu ? __fadd_rn(c, __fmul_rn(__fsub_rn(c, lu[v]), p.cfg_scale)) : c;
    }
    __syncthreads();
    if (lu && p.cfg_top_k > 0 && p.cfg_top_k < V) {
        int ties;
        unsigned theta = block_kth_key(s, V, p.cfg_top_k, &ties);
        int lo, hi, eq = 0;
        own_ids(V, &lo, &hi);
        for (int v = lo; v < hi; v++) eq += fkey(s.sc[v]) == theta;
        int total;
        int rank = block_excl_scan(eq, s, &total);
        for (int v = lo; v < hi; v++) {
            unsigned key = fkey(s.sc[v]);
            bool keep = key > theta || (key == theta && rank < ties);
            rank += key == theta;
            s.sc[v] = keep ? s.lc[v] : -INFINITY;
        }
        __syncthreads();
    }
    float tau = p.temperature;
    bool scale = tau > 0.f && tau != 1.f;
    /* temperature, then the EOS rule's mask of ids above (channel 0) or from (others) eos */
    int limit = eos >= 0 && eos < V ? (ch == 0 ? eos + 1 : eos) : V;
    for (int v = tid; v < V; v += SAMPLE_THREADS) {
        float x = scale ? __fdiv_rn(s.sc[v], tau) : s.sc[v];
        s.sc[v] = v >= limit ? -INFINITY : x;
    }
    __syncthreads();
    int eos_argmax = 0;
    if (eos >= 0 && eos < V) {
        int am = block_argmax(s, V);
        eos_argmax = am == eos;
        for (int v = tid; v < V; v += SAMPLE_THREADS)
            if (eos_argmax ? v < eos : v == eos) s.sc[v] = -INFINITY;
        __syncthreads();
    }
    int pick;
    if (p.greedy) {
        pick = block_argmax(s, V);
    } else {
        if (p.top_k > 0 && p.top_k < V) {
            int finite;
            int lo, hi, cnt = 0;
            own_ids(V, &lo, &hi);
            for (int v = lo; v < hi; v++) cnt += s.sc[v] > -INFINITY;
            block_excl_scan(cnt, s, &finite);
            if (finite > p.top_k) {
                int ties;
                unsigned theta = block_kth_key(s, V, p.top_k, &ties);
                for (int v = tid; v < V; v += SAMPLE_THREADS)
                    if (fkey(s.sc[v]) < theta) s.sc[v] = -INFINITY;
                __syncthreads();
            }
        }
        int m = gather_finite(s, V);
        bool par = m <= SAMPLE_EXP_CAP; /* exps in parallel, sums in the reference's order */
        if (p.top_p < 1.f && m > 1) {
            /* rank sort of the candidates by (value, id): ids are unique, ranks a permutation */
            for (int j = tid; j < m; j += SAMPLE_THREADS) {
                float vj = s.cval[j];
                int r = 0;
                for (int i = 0; i < m; i++) {
                    float vi = s.cval[i];
                    r += vi < vj || (vi == vj && i < j);
                }
                s.order[r] = j;
            }
            __syncthreads();
            double mx = s.cval[s.order[m - 1]];
            if (par) {
                for (int i = tid; i < m; i += SAMPLE_THREADS)
                    s.ex[i] = exp((double)s.cval[s.order[i]] - mx);
                __syncthreads();
            }
            if (tid == 0) {
                double sum = 0;
                for (int i = 0; i < m; i++)
                    sum += par ? s.ex[i] : exp((double)s.cval[s.order[i]] - mx);
                s.dsum = sum;
            }
            __syncthreads();
            double sum = s.dsum;
            if (par) {
                for (int i = tid; i < m; i += SAMPLE_THREADS) s.ex[i] = s.ex[i] / sum;
                __syncthreads();
            }
            if (tid == 0) {
                float cut = (float)(1.0 - (double)p.top_p);
                double cum = 0;
                for (int i = 0; i < m - 1; i++) {
                    int j = s.order[i];
                    cum += par ? s.ex[i] : exp((double)s.cval[j] - mx) / sum;
                    if ((float)cum <= cut) s.sc[s.cidx[j]] = -INFINITY;
                }
            }
            __syncthreads();
        }
        /* the draw: inverse CDF over the surviving candidates in id order */
        if (tid == 0) {
            int best = -1;
            float mxf = -INFINITY;
            for (int j = 0; j < m; j++) {
                float x = s.sc[s.cidx[j]];
                if (x > -INFINITY && (best < 0 || x > mxf)) {
                    best = s.cidx[j];
                    mxf = x;
                }
            }
            s.res[0] = best;
            s.best_v[0] = mxf;
        }
        __syncthreads();
        int best = s.res[0];
        double mx = s.best_v[0];
        if (best >= 0 && par) {
            for (int j = tid; j < m; j += SAMPLE_THREADS) {
                float x = s.sc[s.cidx[j]];
                s.ex[j] = x > -INFINITY ? exp((double)x - mx) : 0.0;
            }
        }
        __syncthreads();
        if (tid == 0) {
            if (best < 0) {
                s.res[0] = 0;
            } else {
                double total = 0;
                for (int j = 0; j < m; j++) {
                    float x = s.sc[s.cidx[j]];
                    if (x > -INFINITY) total += par ? s.ex[j] : exp((double)x - mx);
                }
                double target = eng_rng_uniform(p.seed, p.step, ch) * total, cum = 0;
                int last = best, got = -1;
                for (int j = 0; j < m && got < 0; j++) {
                    float x = s.sc[s.cidx[j]];
                    if (!(x > -INFINITY)) continue;
                    cum += par ? s.ex[j] : exp((double)x - mx);
                    last = s.cidx[j];
                    if (cum > target) got = last;
                }
                s.res[0] = got >= 0 ? got : last;
            }
        }
        __syncthreads();
        pick = s.res[0];
    }
    float *out = scores + ((size_t)e * C + ch) * V;
    for (int v = tid; v < V; v += SAMPLE_THREADS) out[v] = s.sc[v];
    if (tid == 0) {
        picks[(size_t)e * (C + 1) + ch] = pick;
        if (ch == 0) picks[(size_t)e * (C + 1) + C] = eos_argmax;
    }
}

int cuda_sample(eng_backend *be, eng_tensor *picks, eng_tensor *scores, const eng_tensor *logits,
                const eng_tensor *params, int eos_id) {
    CUDA_REQUIRE(be, picks->dtype == ENG_DT_I32 && scores->dtype == ENG_DT_F32 &&
                         logits->dtype == ENG_DT_F32 && params->dtype == ENG_DT_U8 &&
                         scores->ndim == 3 && logits->ndim == 2,
                 "sample", "picks I32, scores F32 [n, channels, vocab], logits F32 [rows, "
                 "channels * vocab], params U8");
    int64_t n = scores->shape[0], C = scores->shape[1], V = scores->shape[2];
    CUDA_REQUIRE(be, logits->shape[1] == C * V && eng_numel(picks) == n * (C + 1) &&
                         eng_numel(params) == n * (int64_t)sizeof(eng_sample_seq) && V >= 1 &&
                         V <= SAMPLE_MAX_VOCAB && n <= 65535 && C <= 65535,
                 "sample", "logits [%lld, %lld], picks %lld values, params %lld bytes for %lld "
                 "entries of %lld channels x %lld ids (at most %d ids)",
                 (long long)logits->shape[0], (long long)logits->shape[1],
                 (long long)eng_numel(picks), (long long)eng_numel(params), (long long)n,
                 (long long)C, (long long)V, SAMPLE_MAX_VOCAB);
    if (!n || !C) return 0;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)C, (unsigned)n);
    cfg.blockDim = dim3(SAMPLE_THREADS);
    cfg.stream = cuda_of(be)->stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = cuda_pdl_enabled() ? 1 : 0;
    CU_CHECK(be, cudaLaunchKernelEx(&cfg, k_sample, (int32_t *)picks->data, (float *)scores->data,
                                    (const float *)logits->data,
                                    (const eng_sample_seq *)params->data, (int)C, (int)V,
                                    (int)logits->shape[0], eos_id));
    return 0;
}
