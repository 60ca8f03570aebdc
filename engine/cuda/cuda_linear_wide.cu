/* cuda_linear_wide.cu - y[n, out] (+)= pre(x)[n, in] . W^T for 65..128 rows of x (33-64
 * sequences with CFG) on tensor cores, int8 and int4 weights read as stored.
 *
 * At 128 rows every weight meets 128 columns of x: k_mma (one m-tile a warp, x re-read from
 * shared memory by every warp, weights through registers) runs out of registers and shared
 * memory bandwidth there, and the cuBLAS path expands each int8/int4 weight to bf16 in memory on
 * every call (int8 decoder step, weights only: 2.96 ms against 1.66 ms with bf16 weights).
 * k_wide is a tile GEMM instead:
 *   - k_wide_prep writes x once as bf16 (prologue applied: rmsnorm, or silu(gate) * up), in the
 *     pair order of the weight format (cuda_mma.cuh); columns past n are zero-filled by the
 *     copies below, not stored;
 *   - a block owns WIDE_BM = 128 weight rows (8 m-tiles; with the silu epilogue 8 gate rows and
 *     their 8 up rows an m-tile) and all 128 columns of x; stages of WIDE_KS = 128 inputs of its
 *     k range go through two cp.async rings in shared memory (weights: 128 rows x 64-256 bytes;
 *     x: 128 columns x 128 bf16), the weights prefetched into L2 PF stages ahead;
 *   - 8 warps (WN = 2), 4 along the weight rows (2 m-tiles each) x 2 along x (8 n-tiles each):
 *     a warp dequantizes its 2 x 2 weight rows of a k-step into registers once and reuses them
 *     for 8 n-tiles, each n-tile's x fragment feeding 2 m-tiles (64 f32 accumulators a lane);
 *   - small matrices split k over a cluster of up to 5 blocks; every block leaves its 128 x 128
 *     tile in shared memory and the cluster's ranks each finish a share of the outputs, summing
 *     the ranks in order (deterministic), then apply the int8 row scales, the residual add or the
 *     silu * up epilogue, with coalesced stores.
 * The k permutation is k_mma's: lane t owns 16 contiguous bytes of each k-step's weight row,
 * and the staged x uses the same physical k, so no repacking anywhere.
 *
 * k_wide_wg (below) is the same tile with Hopper's wgmma: A (dequantized weights) from
 * registers, x from shared memory through a matrix descriptor, so no x fragments are loaded per
 * mma. It takes int8 (and, with VOXQ_CUDA_WIDE_BF16=1, bf16) weights; int4 stays on k_wide.
 *
 * Where it stands (H200, docs/perf-notes.md, session 5): the int8 decoder step at 64 sequences
 * is 2.82-2.85 ms against 3.04 ms with bf16 weights on cuBLAS; gate_up at 128 rows took 33 us
 * with int8 weights through k_wide_wg before the vectorized finish (45 us through k_wide;
 * cuBLAS with bf16 weights 28 us). Clusters of at most 5 blocks: with one block an SM, clusters
 * of 8 were slower. */
#include <cooperative_groups.h>
#include <type_traits>

#include "engine/cuda/cuda_mma.cuh"

#define WIDE_COLS 128    /* columns of x a block covers (n <= 128; the rest zero-filled) */
#define WIDE_BM 128      /* weight rows a block covers: 8 m-tiles of 16 */
#define WIDE_MAX_CLUSTER 8

/* A stage of the rings is WIDE_KS = 128 inputs of every format (1-4 k-steps): one barrier per
 * 128-256 mmas of a warp. */
#define WIDE_KS 128
template <int FMT> struct wide_cfg {
    static constexpr int V = mma_fmt<FMT>::V;    /* weight values in 16 bytes */
    static constexpr int PAIRS = V / 2;          /* bf16x2 registers of 16 weight bytes */
    static constexpr int KW = 4 * V;             /* inputs a k-step (64 weight bytes a row) */
    static constexpr int KS = WIDE_KS / KW;      /* k-steps a stage */
    /* Bytes a weight row of a stage takes in shared memory: = 64 mod 128, so the two rows a
     * quarter warp reads (4 lanes x 16 bytes each) cover all banks once. */
    static constexpr int WSTR = KS == 1 ? 64 : 64 * KS + 64;
    static constexpr int WCH = 4 * KS;           /* 16-byte copies of a weight row a stage */
    static constexpr int XSTR = WIDE_KS + mma_fmt<FMT>::PAD; /* bf16 a staged column of x */
    static constexpr int XCH = WIDE_KS * 2 / 16; /* 16-byte copies of a column a stage */
    static constexpr int W_BYTES = WIDE_BM * WSTR;
    static constexpr int X_BYTES = WIDE_COLS * XSTR * 2;
    /* Ring depths (stages): cp.async groups complete in order, so a stage's weights can only
     * be waited for together with everything copied before them; the weights' DRAM latency is
     * covered instead by prefetching them into L2 PF stages ahead (80-96 KB an SM in flight,
     * what 4 TB/s needs over 132 SMs), and both rings copy from L2. */
    static constexpr int DW = FMT == ENG_W_BF16 ? 2 : 3, DX = DW;
    static constexpr int PF = FMT == ENG_W_BF16 ? 3 : FMT == ENG_W_I8 ? 6 : 10;
    static constexpr int LINES = WSTR > 64 ? 64 * KS / 128 : 1; /* 128-byte lines a row a stage */
    static constexpr int TSTR = WIDE_BM + 4;     /* f32 a column of the output tile */
    static constexpr int TILE_BYTES = WIDE_COLS * TSTR * 4;
    static constexpr int RING = DW * W_BYTES + DX * X_BYTES;
    static constexpr int SMEM = RING > TILE_BYTES ? RING : TILE_BYTES;
    static_assert(WIDE_COLS * XCH % 512 == 0, "x copies split evenly");
    static_assert(WIDE_BM * WCH % 512 == 0, "weight copies split evenly");
    static_assert(XSTR * 2 % 16 == 0, "16-byte aligned columns");
    static_assert(SMEM <= 227 * 1024, "one block an SM");
    static_assert(DW >= DX, "the ring protocol below");
};

/* xb[row] = pre(x[row]) as bf16 in the pair order of FMT (one block a row of x). */
template <int FMT, int PRE>
__global__ void __launch_bounds__(256)
k_wide_prep(__nv_bfloat16 *__restrict__ xb, const float *__restrict__ x,
            const float *__restrict__ norm, float eps, int in) {
    __shared__ float s_ss[8];
    int row = (int)blockIdx.x;
    pdl_trigger();
    pdl_wait();
    const float *xr = x + (size_t)row * (PRE == ENG_PRE_SILU_MUL ? 2 * in : in);
    float r = 1.f;
    if (PRE == ENG_PRE_RMSNORM) {
        float ss = 0.f;
        for (int k = (int)threadIdx.x * 8; k < in; k += 256 * 8) {
            float v[8];
            load8(xr + k, v);
#pragma unroll
            for (int j = 0; j < 8; j++) ss = fmaf(v[j], v[j], ss);
        }
        ss = warp_sum(ss);
        if (threadIdx.x % 32 == 0) s_ss[threadIdx.x / 32] = ss;
        __syncthreads();
        ss = 0.f;
#pragma unroll
        for (int w = 0; w < 8; w++) ss += s_ss[w];
        r = rsqrtf(ss / (float)in + eps);
    }
    for (int k = (int)threadIdx.x * 8; k < in; k += 256 * 8) {
        float v[8];
        load8(xr + k, v);
        if (PRE == ENG_PRE_SILU_MUL) {
            float u[8];
            load8(xr + in + k, u);
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] = silu_mul(v[j], u[j]);
        } else if (PRE == ENG_PRE_RMSNORM) {
            float nw[8];
            load8(norm + k, nw);
#pragma unroll
            for (int j = 0; j < 8; j++) v[j] *= r * nw[j];
        }
        *(uint4 *)(xb + (size_t)row * in + k) = pack8_bf16<FMT>(v);
    }
}

/* Four consecutive floats at p of which the first `left` exist (left may be <= 0 or > 4), as
 * one 16-byte access when vec (p 16-byte aligned and all four exist) and element by element
 * otherwise. The caller computes vec from a plain comparison. An earlier form tested a clamped
 * count (max(0, min(4, left)) == 4): its PTX was right, but ptxas (CUDA 13.0) folded the clamp
 * and the test into one VIMNMX.RELU and its predicate, and compute-sanitizer caught the kernel
 * making a 16-byte store for a quad past the end of y. */
__device__ __forceinline__ float4 ld4_part(const float *p, int left, bool vec) {
    if (vec) return *(const float4 *)p;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (left > 0) v.x = p[0];
    if (left > 1) v.y = p[1];
    if (left > 2) v.z = p[2];
    if (left > 3) v.w = p[3];
    return v;
}
__device__ __forceinline__ void st4_part(float *p, float4 v, int left, bool vec) {
    if (vec) {
        *(float4 *)p = v;
        return;
    }
    if (left > 0) p[0] = v.x;
    if (left > 1) p[1] = v.y;
    if (left > 2) p[2] = v.z;
    if (left > 3) p[3] = v.w;
}
__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float4 mul4(float4 a, float4 b) {
    return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w);
}

/* The end of a wide kernel: every block of the cluster (gridDim.y ranks) has left its partial
 * 128 x 128 tile in shared memory ([column][local row], tstr floats a column, tstr % 4 == 0); the
 * ranks each finish a share of the columns, summing the ranks in order (deterministic), then
 * apply the int8 row scales and the residual add or the silu * up epilogue. A thread owns four
 * consecutive outputs of its columns (16-byte loads from every rank's tile, 16-byte stores), so
 * its row scales are loaded once, before the cluster barrier, and so are the residual values of
 * its first FIN_U columns: the tail is one barrier and one round of loads, not a chain of them. */
#define FIN_U 4
template <int FMT, int ACC, int EPI, int WIDE_THREADS>
__device__ __forceinline__ void wide_finish(const lin_seg &sg, float *tile, int tstr, int n,
                                            int mt0) {
    const int tid = (int)threadIdx.x, out = sg.out, half = out / 2;
    namespace cg = cooperative_groups;
    const int ranks = (int)gridDim.y, rank = (int)blockIdx.y;
    constexpr int R = EPI ? WIDE_BM / 2 : WIDE_BM; /* outputs a column of the tile */
    constexpr int RQ = R / 4, CG = WIDE_THREADS / RQ; /* row quads; column groups */
    static_assert(WIDE_THREADS % RQ == 0, "whole row quads");
    const int rq = tid % RQ, c0 = tid / RQ;
    /* This thread's outputs: rows 16 mt0 + 4 rq.. (silu: gate/up outputs 8 mt0 + 4 rq..), at
     * tile offset toff (silu: gate rows toff.., up rows toff + 8..). */
    const int o0 = EPI ? 8 * mt0 + 4 * rq : 16 * mt0 + 4 * rq;
    const int toff = EPI ? (4 * rq / 8) * 16 + 4 * rq % 8 : 4 * rq;
    const int ylen = EPI ? half : out; /* floats a column of y */
    const int left = ylen - o0;                      /* outputs from o0 to the end of y */
    const bool vec = ylen % 4 == 0 && o0 + 4 <= ylen; /* all four, 16-byte aligned */
    const float *__restrict__ scales = sg.scales;
    float4 sc = make_float4(1.f, 1.f, 1.f, 1.f), sc_up = sc;
    if (FMT == ENG_W_I8) {
        sc = ld4_part(scales + o0, left, vec);
        if (EPI) sc_up = ld4_part(scales + half + o0, left, vec);
    }
    float *__restrict__ y = sg.y;
    const int cols = min(n, WIDE_COLS), cstep = CG * ranks, cfirst = c0 + CG * rank;
    float4 yv[FIN_U];
    auto load_y = [&](int col0) {
#pragma unroll
        for (int u = 0; u < FIN_U; u++) {
            int col = col0 + u * cstep;
            yv[u] = ACC && col < cols ? ld4_part(y + (size_t)col * ylen + o0, left, vec)
                                      : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    };
    load_y(cfirst);
    if (ranks > 1)
        cg::this_cluster().sync();
    else
        __syncthreads();
    const float *part[WIDE_MAX_CLUSTER];
#pragma unroll
    for (int q = 0; q < WIDE_MAX_CLUSTER; q++)
        part[q] = q == 0 && ranks == 1 ? tile
                  : q < ranks          ? cg::this_cluster().map_shared_rank(tile, q)
                                       : tile;
    for (int col0 = cfirst; col0 < cols; col0 += FIN_U * cstep) {
        if (col0 != cfirst) load_y(col0);
        float4 v[FIN_U], up[FIN_U];
#pragma unroll
        for (int u = 0; u < FIN_U; u++) {
            v[u] = up[u] = make_float4(0.f, 0.f, 0.f, 0.f);
            int off = (col0 + u * cstep) * tstr + toff;
            if (col0 + u * cstep < cols)
#pragma unroll
                for (int q = 0; q < WIDE_MAX_CLUSTER; q++)
                    if (q < ranks) {
                        v[u] = add4(v[u], *(const float4 *)(part[q] + off));
                        if (EPI) up[u] = add4(up[u], *(const float4 *)(part[q] + off + 8));
                    }
        }
#pragma unroll
        for (int u = 0; u < FIN_U; u++) {
            int col = col0 + u * cstep;
            if (col >= cols) break;
            float4 r = mul4(v[u], sc);
            if (EPI) {
                float4 w = mul4(up[u], sc_up);
                r = make_float4(silu_mul(r.x, w.x), silu_mul(r.y, w.y), silu_mul(r.z, w.z),
                                silu_mul(r.w, w.w));
            } else if (ACC) {
                r = add4(r, yv[u]);
            }
            st4_part(y + (size_t)col * ylen + o0, r, left, vec);
        }
    }
    if (ranks > 1) cg::this_cluster().sync(); /* keep this tile alive until every rank read it */
}

/* ---- wgmma variant (k_wide_wg): one warpgroup a 64-row half of the tile ----
 *
 * wgmma.mma_async m64n128k16 takes A (64 weight rows x 16 k) from registers, in mma.sync's A
 * layout per warp (warp w of the group: rows 16w..16w+15), and B (16 k x 128 columns of x) from
 * shared memory through a matrix descriptor, so no B fragments are loaded per mma. The
 * accumulator is the m16n8 C layout repeated over 16 n-tiles: d[4j + e] is k_wide's acc[j][e].
 * A is dequantized exactly as in k_mma (lane t owns 16 contiguous weight bytes of a k-step), so
 * the hardware's logical k must meet the same physical k: x is staged permuted (wg_phys), in the
 * no-swizzle K-major layout: 8 x 8 core matrices of 128 bytes, core (column group cg, k group
 * kc) of a 128-input stage at (cg * 16 + kc) * 128 bytes (LBO, along k: 128 bytes; SBO, along
 * the columns: 2048). */

/* Physical k (within a k-step of KW inputs) behind logical k l of the wgmmas: slice i = l / 16,
 * k-in-slice kk = 2t + e (+ 8 for the second register pair, hi) of lane t. */
template <int FMT> __device__ __forceinline__ int wg_phys(int l) {
    constexpr int V = mma_fmt<FMT>::V;
    int i = l / 16, kk = l % 16, hi = kk >= 8, t = (kk % 8) / 2, e = kk % 2;
    if (FMT == ENG_W_I4) {
        int p = 2 * i + hi;
        return V * t + 8 * (p / 4) + 4 * e + p % 4;
    }
    return V * t + 4 * i + 2 * hi + e;
}

/* xb[stage][core (cg, kc)][column % 8][k % 8] = pre(x)[column][physical k of logical k] as bf16,
 * 128 columns (WIDE_COLS) a stage; columns past n are left as they are (their outputs are never
 * stored). A block covers 8 columns (one core-matrix row group, so a warp's stores fill whole
 * 128-byte lines) and WG_PREP_K inputs: blockIdx = (column group, k chunk). */
#define WG_PREP_K 256
template <int FMT, int PRE>
__global__ void __launch_bounds__(256)
k_wide_prep_wg(__nv_bfloat16 *__restrict__ xb, const float *__restrict__ x,
               const float *__restrict__ norm, float eps, int n, int in) {
    constexpr int KW = 4 * mma_fmt<FMT>::V;
    __shared__ float s_r[8];
    const int cg = (int)blockIdx.x, col0 = 8 * cg, tid = (int)threadIdx.x;
    const size_t xrow = PRE == ENG_PRE_SILU_MUL ? 2 * (size_t)in : (size_t)in;
    pdl_trigger();
    pdl_wait();
    if (PRE == ENG_PRE_RMSNORM) { /* warp w: 1/rms of column col0 + w, over the whole row */
        int w = tid / 32, col = col0 + w;
        float ss = 0.f;
        if (col < n)
#pragma unroll 8 /* the row's loads issued together (in = 2048: one round trip, not 8) */
            for (int k = (tid % 32) * 8; k < in; k += 32 * 8) {
                float v[8];
                load8(x + col * xrow + k, v);
#pragma unroll
                for (int j = 0; j < 8; j++) ss = fmaf(v[j], v[j], ss);
            }
        ss = warp_sum(ss);
        if (tid % 32 == 0) s_r[w] = rsqrtf(ss / (float)in + eps);
        __syncthreads();
    }
    /* Unit u: 8 logical inputs (one 16-byte core-matrix row) of column col0 + u % 8. */
    for (int u = tid; u < 8 * (WG_PREP_K / 8); u += 256) {
        int cc = u % 8, col = col0 + cc, l0 = (int)blockIdx.y * WG_PREP_K + (u / 8) * 8;
        if (col >= n || l0 >= in) continue;
        const float *xr = x + col * xrow;
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            int k = l0 - l0 % KW + wg_phys<FMT>((l0 + j) % KW);
            float a = __ldg(xr + k);
            if (PRE == ENG_PRE_SILU_MUL)
                a = silu_mul(a, __ldg(xr + in + k));
            else if (PRE == ENG_PRE_RMSNORM)
                a *= s_r[cc] * __ldg(norm + k);
            v[j] = a;
        }
        size_t core = ((size_t)(l0 / WIDE_KS) * (WIDE_COLS / 8) + cg) * (WIDE_KS / 8) +
                      (l0 % WIDE_KS) / 8;
        *(uint4 *)(xb + core * 64 + cc * 8) = make_uint4(
            pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]),
            pack_bf16(v[6], v[7]));
    }
}

/* Shared-memory matrix descriptor, no swizzle: start, LBO and SBO in bytes (16-byte units). */
__device__ __forceinline__ uint64_t wg_desc(const void *smem_ptr, uint32_t lbo, uint32_t sbo) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem_ptr);
    return (uint64_t)((a & 0x3FFFFu) >> 4) | ((uint64_t)(lbo >> 4) << 16) |
           ((uint64_t)(sbo >> 4) << 32);
}
__device__ __forceinline__ void wg_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
/* Pins the accumulators in their registers around a batch of wgmmas (no instruction of its own),
 * so that no copy of them lands inside the wgmma pipeline, which ptxas would serialize. */
__device__ __forceinline__ void wg_pin(float *d) {
#pragma unroll
    for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
/* d (64 x 128 f32 of the warpgroup, 64 a lane) += A (registers a0..a3) . B (descriptor). */
__device__ __forceinline__ void wg_mma(float *d, uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint64_t desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
          "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
          "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
          "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
          "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
          "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(accumulate));
}

/* The weight side of a wide block, shared by k_wide and k_wide_wg: the matrix row behind each
 * local row of the tile (-1 past the matrix), this thread's cp.async copies of a stage's weights
 * (addresses fixed up front, the loop only adds the stage: copy c = tid + THREADS * i is chunk
 * c % WCH of local row c / WCH, rows past the matrix zero-filled; offsets in shared memory from
 * the slot), and the L2 prefetch of a stage (thread tid < WIDE_BM takes local row tid). */
template <int FMT, int EPI, int THREADS> struct wide_wside {
    using C = wide_cfg<FMT>;
    static constexpr int WPT = WIDE_BM * C::WCH / THREADS;
    int out, mt0;
    const uint4 *src[WPT];
    uint32_t dst[WPT], ok; /* ok bit i: copy i reads memory */
    const unsigned char *prow;
    __device__ __forceinline__ wide_wside(const lin_seg &sg, int mt0_, size_t row_chunks, int tid)
        : out(sg.out), mt0(mt0_), ok(0), prow(NULL) {
#pragma unroll
        for (int i = 0; i < WPT; i++) {
            int c = tid + THREADS * i, r = row(c / C::WCH);
            ok |= (uint32_t)(r >= 0) << i;
            src[i] = sg.w + (size_t)(r >= 0 ? r : 0) * row_chunks + c % C::WCH;
            dst[i] = (uint32_t)((c / C::WCH) * C::WSTR + (c % C::WCH) * 16);
        }
        if (tid < WIDE_BM) {
            int r = row(tid);
            if (r >= 0) prow = (const unsigned char *)(sg.w + (size_t)r * row_chunks);
        }
    }
    __device__ __forceinline__ int row(int lr) const {
        int mt = mt0 + lr / 16, rr = lr % 16, half = out / 2;
        if (EPI) {
            int o = 8 * mt + (rr & 7);
            return o < half ? (rr < 8 ? o : half + o) : -1;
        }
        int r = 16 * mt + rr;
        return r < out ? r : -1;
    }
    /* Matrix stage `stage` (in units of WIDE_KS inputs) into a weight slot. */
    __device__ __forceinline__ void copy(unsigned char *slot, int stage) const {
        size_t off = (size_t)stage * C::WCH;
#pragma unroll
        for (int i = 0; i < WPT; i++) cp_async16(slot + dst[i], src[i] + off, (ok >> i) & 1);
    }
    __device__ __forceinline__ void prefetch(int stage) const {
        if (!prow) return;
        const unsigned char *a = prow + (size_t)stage * C::WCH * 16;
#pragma unroll
        for (int l = 0; l < C::LINES; l++)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(a + 128 * l));
    }
};

/* The ring protocol of both wide kernels over nst local stages (DW >= DX): prologue commit
 * group p holds the x of stage p (p < DX - 1), group 0 also every prologue weight stage (p <
 * DW - 1); iteration i commits the weights of stage i + DW - 1 and the x of stage i + DX - 1.
 * The x of stage i is then the later of its two groups, and DX - 2 groups may still be pending
 * when it has landed, so one wait_group(DX - 2) at the top of iteration i covers both. Slots
 * refilled in iteration i were consumed in i - 1, which the barrier after the wait orders
 * (before_barrier: what else must be finished with them, e.g. asynchronous mmas). The weights do
 * not depend on the kernel before: the prologue's weight copies and prefetches start before
 * waiting for it. load(s_w, s_x): copies of stage s_w's weights and stage s_x's x (-1: none);
 * prefetch(p): stage p into L2; compute(i): the mmas of stage i. */
template <class C, class Prefetch, class Load, class Compute, class Before>
__device__ __forceinline__ void wide_ring(int nst, Prefetch prefetch, Load load, Compute compute,
                                          Before before_barrier) {
    pdl_trigger();
    for (int p = 0; p < C::PF; p++)
        if (p < nst) prefetch(p);
    for (int p = 0; p < C::DW - 1; p++)
        if (p < nst) load(p, -1);
    pdl_wait();
    for (int p = 0; p < C::DW - 1; p++) {
        if (p < C::DX - 1 && p < nst) load(-1, p);
        cp_async_commit();
    }
    for (int i = 0; i < nst; i++) {
        cp_async_wait<C::DX - 2>();
        before_barrier();
        __syncthreads();
        if (i + C::PF < nst) prefetch(i + C::PF);
        int nw = i + C::DW - 1, nx = i + C::DX - 1;
        load(nw < nst ? nw : -1, nx < nst ? nx : -1);
        cp_async_commit();
        compute(i);
    }
    cp_async_wait<0>();
    before_barrier();
    __syncthreads();
}

/* The tile GEMM described above, for each segment of segs: xb [n, in] bf16 from k_wide_prep;
 * steps_per_block k-steps for each rank (blockIdx.y) of a cluster of gridDim.y blocks. */
/* WN: warps along x (2: 8 warps, 8 n-tiles a warp, 64 accumulators a lane; 4: 16 warps, 4
 * n-tiles, 32 accumulators and at most 128 registers, twice the warps to hide latency with,
 * each weight row dequantized by 4 warps instead of 2). */
template <int FMT, int ACC, int EPI, int WN>
__global__ void __launch_bounds__(4 * WN * 32, 1)
k_wide(const lin_segs segs, const __nv_bfloat16 *__restrict__ xb, int n, int in, int group,
       int steps_per_block) {
    using C = wide_cfg<FMT>;
    constexpr int PAIRS = C::PAIRS, V = C::V;
    extern __shared__ __align__(16) unsigned char smem[];
    int blk = (int)blockIdx.x;
    const lin_seg sg = seg_of(segs, blk);
    const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    constexpr int WIDE_THREADS = 4 * WN * 32, NTW = 16 / WN; /* n-tiles a warp */
    const int wm = warp % 4, wn = warp / 4;
    const int mt0 = blk * (WIDE_BM / 16);
    const int stages = in / WIDE_KS, s_begin = (int)blockIdx.y * steps_per_block;
    const int nst = min(stages, s_begin + steps_per_block) - s_begin;
    const size_t row_chunks = (size_t)(in / V); /* 16-byte chunks a weight row */

    const wide_wside<FMT, EPI, WIDE_THREADS> ws(sg, mt0, row_chunks, tid);
    /* This thread's XPT copies of x a stage (addresses fixed up front): chunk c % XCH of column
     * c / XCH for c = tid + WIDE_THREADS * i (columns past n zero-filled). */
    constexpr int XPT = WIDE_COLS * C::XCH / WIDE_THREADS;
    uint32_t xsrc[XPT], xdst[XPT];
    uint32_t xok = 0; /* bit i: copy i reads memory */
#pragma unroll
    for (int i = 0; i < XPT; i++) {
        int c = tid + WIDE_THREADS * i, col = c / C::XCH, part = c % C::XCH;
        xok |= (uint32_t)(col < n) << i;
        xsrc[i] = col < n ? (uint32_t)(col * in + part * 8) : 0u;
        xdst[i] = (uint32_t)((col * C::XSTR + part * 8) * 2);
    }
    unsigned char *const xring = smem + C::DW * C::W_BYTES;
    /* Copies of stage s_w's weights and stage s_x's x (local indices; -1: none) into their slots
     * of the two rings. */
    auto load_stage = [&](int s_w, int s_x) {
        if (s_w >= 0) ws.copy(smem + (s_w % C::DW) * C::W_BYTES, s_begin + s_w);
        if (s_x >= 0) {
            unsigned char *st = xring + (s_x % C::DX) * C::X_BYTES;
            const __nv_bfloat16 *src = xb + (size_t)(s_begin + s_x) * WIDE_KS;
#pragma unroll
            for (int i = 0; i < XPT; i++) cp_async16(st + xdst[i], src + xsrc[i], (xok >> i) & 1);
        }
    };
    /* int4 group scales of this lane's four rows (2 m-tiles x rows g, g + 8). */
    const float *srow[2][2];
    int ngroups = FMT == ENG_W_I4 ? (in + group - 1) / group : 1;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int r = ws.row((2 * wm + mt) * 16 + g + 8 * h);
            srow[mt][h] = FMT == ENG_W_I4 && r >= 0 ? sg.scales + (size_t)r * ngroups : NULL;
        }

    float acc[2][NTW][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int j = 0; j < NTW; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mt][j][e] = 0.f;

    /* The mmas of local stage i (weights and x in their ring slots), k-step ks of it. */
    auto compute = [&](int i, int ks) {
        const int s = (s_begin + i) * C::KS + ks; /* k-step of the matrix */
        const unsigned char *st = smem + (i % C::DW) * C::W_BYTES + ks * 64;
        const __nv_bfloat16 *xs =
            (const __nv_bfloat16 *)(xring + (i % C::DX) * C::X_BYTES) + ks * C::KW;
        uint32_t a[2][2][PAIRS];
        float sc[2][2];
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int lr = (2 * wm + mt) * 16 + g + 8 * h;
                mma_fmt<FMT>::dequant(*(const uint4 *)(st + lr * C::WSTR + t * 16), a[mt][h]);
                if (FMT == ENG_W_I4)
                    sc[mt][h] = srow[mt][h] ? __ldg(srow[mt][h] + s * C::KW / group) : 0.f;
            }
#pragma unroll
        for (int j = 0; j < NTW; j++) {
            const uint4 *xp = (const uint4 *)(xs + ((wn * NTW + j) * 8 + g) * C::XSTR + t * V);
            uint32_t b[PAIRS];
#pragma unroll
            for (int i = 0; i < V / 8; i++) {
                uint4 v = xp[i];
                b[4 * i] = v.x; b[4 * i + 1] = v.y; b[4 * i + 2] = v.z; b[4 * i + 3] = v.w;
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                if (FMT == ENG_W_I4) { /* one group a k-step: fresh fragment, then row scales */
                    float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                    for (int i = 0; i < PAIRS / 2; i++)
                        mma_bf16(part, a[mt][0][2 * i], a[mt][1][2 * i], a[mt][0][2 * i + 1],
                                 a[mt][1][2 * i + 1], b[2 * i], b[2 * i + 1]);
                    acc[mt][j][0] = fmaf(part[0], sc[mt][0], acc[mt][j][0]);
                    acc[mt][j][1] = fmaf(part[1], sc[mt][0], acc[mt][j][1]);
                    acc[mt][j][2] = fmaf(part[2], sc[mt][1], acc[mt][j][2]);
                    acc[mt][j][3] = fmaf(part[3], sc[mt][1], acc[mt][j][3]);
                } else {
#pragma unroll
                    for (int i = 0; i < PAIRS / 2; i++)
                        mma_bf16(acc[mt][j], a[mt][0][2 * i], a[mt][1][2 * i],
                                 a[mt][0][2 * i + 1], a[mt][1][2 * i + 1], b[2 * i],
                                 b[2 * i + 1]);
                }
            }
        }
    };

    wide_ring<C>(
        nst, [&](int p) { ws.prefetch(s_begin + p); }, load_stage,
        [&](int i) {
#pragma unroll
            for (int ks = 0; ks < C::KS; ks++) compute(i, ks);
        },
        [] {});

    /* The block's partial tile, [column][local row], in the ring's memory. */
    float *tile = (float *)smem;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int j = 0; j < NTW; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int lr = (2 * wm + mt) * 16 + g + (e >= 2 ? 8 : 0);
                int col = (wn * NTW + j) * 8 + 2 * t + (e & 1);
                tile[col * C::TSTR + lr] = acc[mt][j][e];
            }
    wide_finish<FMT, ACC, EPI, WIDE_THREADS>(sg, tile, C::TSTR, n, mt0);
}

/* k_wide with wgmma: the same block tile (128 weight rows x 128 columns), rings, L2 prefetch,
 * cluster split and finish; 8 warps as two warpgroups, warpgroup q owning tile rows 64q.. (warp
 * w: m-tile w), every warp all 128 columns. x comes from k_wide_prep_wg (xb [stages][32 KB]).
 * A stage's wgmmas run while the next stage's copies land and are waited for before the next
 * barrier, which is what lets the ring slots be refilled as in k_wide. int8 and bf16 weights
 * (int4 group scales would need a partial accumulator a group). */
template <int FMT, int ACC, int EPI>
__global__ void __launch_bounds__(256, 1)
k_wide_wg(const lin_segs segs, const __nv_bfloat16 *__restrict__ xb, int n, int in,
          int steps_per_block) {
    using C = wide_cfg<FMT>;
    constexpr int PAIRS = C::PAIRS, WIDE_THREADS = 256;
    constexpr int XSTAGE = WIDE_COLS * WIDE_KS * 2; /* bytes of x a stage */
    static_assert(XSTAGE <= C::X_BYTES, "the x slot holds a stage");
    static_assert(FMT != ENG_W_I4, "no group scales");
    extern __shared__ __align__(128) unsigned char smem[];
    int blk = (int)blockIdx.x;
    const lin_seg sg = seg_of(segs, blk);
    const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int mt0 = blk * (WIDE_BM / 16);
    const int stages = in / WIDE_KS, s_begin = (int)blockIdx.y * steps_per_block;
    const int nst = min(stages, s_begin + steps_per_block) - s_begin;
    const size_t row_chunks = (size_t)(in / C::V);

    const wide_wside<FMT, EPI, WIDE_THREADS> ws(sg, mt0, row_chunks, tid);
    constexpr int XPT = XSTAGE / 16 / WIDE_THREADS;
    unsigned char *const xring = smem + C::DW * C::W_BYTES;
    auto load_stage = [&](int s_w, int s_x) {
        if (s_w >= 0) ws.copy(smem + (s_w % C::DW) * C::W_BYTES, s_begin + s_w);
        if (s_x >= 0) {
            unsigned char *st = xring + (s_x % C::DX) * C::X_BYTES;
            const uint4 *src = (const uint4 *)(xb + (size_t)(s_begin + s_x) * (XSTAGE / 2));
#pragma unroll
            for (int i = 0; i < XPT; i++)
                cp_async16(st + 16 * (tid + WIDE_THREADS * i), src + tid + WIDE_THREADS * i, true);
        }
    };

    float d[64]; /* set by the first wgmma (accumulate = 0): nst >= 1 for every rank */

    /* Stage i: this warp's m-tile (rows g and g + 8) dequantized a k-step at a time, each k-step's
     * KW / 16 slices issued as wgmmas against the stage's x. */
    auto compute = [&](int i) {
        const unsigned char *st = smem + (i % C::DW) * C::W_BYTES;
        const unsigned char *xs = xring + (i % C::DX) * C::X_BYTES;
        uint32_t a[C::KS][2][PAIRS];
#pragma unroll
        for (int ks = 0; ks < C::KS; ks++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                mma_fmt<FMT>::dequant(
                    *(const uint4 *)(st + (16 * warp + g + 8 * h) * C::WSTR + ks * 64 + t * 16),
                    a[ks][h]);
        wg_pin(d);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < C::KS; ks++)
#pragma unroll
            for (int sl = 0; sl < C::KW / 16; sl++) {
                int kc = (ks * C::KW + 16 * sl) / 8; /* first core matrix along k */
                wg_mma(d, a[ks][0][2 * sl], a[ks][1][2 * sl], a[ks][0][2 * sl + 1],
                       a[ks][1][2 * sl + 1], wg_desc(xs + kc * 128, 128, (WIDE_KS / 8) * 128),
                       i > 0 || ks > 0 || sl > 0);
            }
        wg_commit();
        wg_pin(d);
    };

    /* A stage's wgmmas run while the next stage's copies land; they are done with its slots
     * before the barrier that lets them be refilled. */
    wide_ring<C>(
        nst, [&](int p) { ws.prefetch(s_begin + p); }, load_stage, compute,
        [] { wg_wait<0>(); });

    float *tile = (float *)smem;
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int lr = 16 * warp + g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t + (e & 1);
            tile[col * C::TSTR + lr] = d[4 * j + e];
        }
    wide_finish<FMT, ACC, EPI, WIDE_THREADS>(sg, tile, C::TSTR, n, mt0);
}

/* Fewest rows of x the wide kernel takes: 65 (64 and fewer stay with k_mma, whose int8/int4
 * policy was measured against cuBLAS; k_wide was not compared there), or
 * VOXQ_CUDA_WIDE_MIN_ROWS read once (A/B timing; 129 turns it off). */
static int wide_min_rows(void) {
    static int rows;
    if (!rows) rows = (int)cuda_env_knob("VOXQ_CUDA_WIDE_MIN_ROWS", 65, 1, WIDE_COLS + 1);
    return rows;
}

/* Warps along x of k_wide: 2, or VOXQ_CUDA_WIDE_WN=4 read once (A/B timing: 16 warps of 32
 * accumulators were not faster, int8 64 sequences 4.19 vs 4.09 ms a step). */
static int wide_warps_n(void) {
    static int wn;
    if (!wn) wn = cuda_env_knob("VOXQ_CUDA_WIDE_WN", 2, 2, 4) == 4 ? 4 : 2;
    return wn;
}

/* Whether bf16 weights take the wide kernels too: no (cuBLAS streams them faster: weights-only
 * step at 128 rows 1.66 ms against 3.3 with k_wide and 3.18 with k_wide_wg; decoder step at 64
 * sequences 3.04 against 4.13 ms), unless VOXQ_CUDA_WIDE_BF16=1 read once (A/B timing, tests). */
static int wide_bf16(void) {
    static int on = -1;
    if (on < 0) on = cuda_env_knob("VOXQ_CUDA_WIDE_BF16", 0, 0, 1) != 0;
    return on;
}

/* Most blocks a wide product splits k over (one cluster): 5, or VOXQ_CUDA_WIDE_MAX_SPLIT read
 * once (A/B timing). One block an SM leaves clusters of 8 badly placed: int8 at 64 sequences,
 * H200, same call, 3.70 / 3.30 / 3.19 / 3.16 / 3.42 / 3.58 ms a step at 3 / 4 / 5 / 6 / 7 / 8
 * with the first finish; with the vectorized finish 2.95 / 2.82 / 2.89-2.92 / 3.35 at 4 / 5 / 6
 * / 8. */
#define WIDE_SPLIT_DEFAULT 5
static int wide_max_split(void) {
    static int m;
    if (!m)
        m = (int)cuda_env_knob("VOXQ_CUDA_WIDE_MAX_SPLIT", WIDE_SPLIT_DEFAULT, 1, WIDE_MAX_CLUSTER);
    return m;
}

/* Whether int8 and bf16 weights take the wgmma kernel (k_wide_wg): yes, or
 * VOXQ_CUDA_WIDE_WG=0 read once (A/B timing, tests; int8 at 64 sequences, H200, same call,
 * clusters of 8: 3.61 vs 4.13 ms a step). int4 stays on k_wide. */
static int wide_wg(void) {
    static int on = -1;
    if (on < 0) on = cuda_env_knob("VOXQ_CUDA_WIDE_WG", 1, 0, 1) != 0;
    return on;
}

int cuda_wide_ok(const eng_weight *w, int64_t n) {
    /* in >= WIDE_KS: every rank of a cluster gets at least one stage (k_wide_wg relies on it) */
    if (n < wide_min_rows() || n > WIDE_COLS || w->out < 1 || w->in < WIDE_KS ||
        w->in > INT_MAX / WIDE_COLS)
        return 0;
    switch (w->fmt) {
    case ENG_W_BF16: return wide_bf16() && w->in % WIDE_KS == 0;
    case ENG_W_I8: return w->in % WIDE_KS == 0;
    case ENG_W_I4: return w->in % WIDE_KS == 0 && w->group > 0 && w->group % 128 == 0;
    default: return 0;
    }
}

/* f(std::integral_constant<int, PRE>) for the prologue pre: one instantiation each. */
template <class F> static cudaError_t with_pre(int pre, F f) {
    if (pre == ENG_PRE_RMSNORM) return f(std::integral_constant<int, ENG_PRE_RMSNORM>());
    if (pre == ENG_PRE_SILU_MUL) return f(std::integral_constant<int, ENG_PRE_SILU_MUL>());
    return f(std::integral_constant<int, ENG_PRE_NONE>());
}

template <int FMT>
static cudaError_t launch_prep(__nv_bfloat16 *xb, const float *x, int n, int in, int pre,
                               const float *norm, float eps, cudaStream_t st) {
    cudaLaunchAttribute attr[2];
    cudaLaunchConfig_t cfg = pdl_cluster_config(dim3((unsigned)n), dim3(256), 0, st, attr, 1);
    return with_pre(pre, [&](auto P) {
        return cudaLaunchKernelEx(&cfg, k_wide_prep<FMT, decltype(P)::value>, xb, x, norm, eps, in);
    });
}

/* What the launches of both tile kernels share: the segments, one block an SM with small
 * matrices splitting their k stages over a cluster, and the PDL/cluster configuration;
 * launch(cfg, segs, per) passes the kernel and its arguments. */
template <int FMT, int EPI, class Launch>
static cudaError_t launch_tile(const lin_set *set, int sms, int threads, cudaStream_t st,
                               Launch launch) {
    int64_t mblocks;
    lin_segs segs = make_segs(set, EPI, EPI ? 8 : 16, WIDE_BM / 16, &mblocks);
    int per, split = split_k(sms, mblocks, wide_max_split(), (int)(set->w[0]->in / WIDE_KS), &per);
    cudaLaunchAttribute attr[2];
    cudaLaunchConfig_t cfg = pdl_cluster_config(dim3((unsigned)mblocks, (unsigned)split),
                                                dim3(threads), wide_cfg<FMT>::SMEM, st, attr,
                                                split);
    return launch(cfg, segs, per);
}

template <int FMT, int ACC, int EPI, int WN>
static cudaError_t launch_wide_k(const lin_set *set, const __nv_bfloat16 *xb, int n, int sms,
                                 cudaStream_t st) {
    static unsigned smem_set;
    cudaError_t e = smem_optin(k_wide<FMT, ACC, EPI, WN>, wide_cfg<FMT>::SMEM, &smem_set);
    if (e != cudaSuccess) return e;
    const eng_weight *w = set->w[0];
    return launch_tile<FMT, EPI>(set, sms, 4 * WN * 32, st, [&](cudaLaunchConfig_t cfg,
                                                               lin_segs segs, int per) {
        return cudaLaunchKernelEx(&cfg, k_wide<FMT, ACC, EPI, WN>, segs, xb, n, (int)w->in,
                                  w->group, per);
    });
}

template <int FMT, int PRE>
static cudaError_t launch_prep_wg(__nv_bfloat16 *xb, const float *x, int n, const float *norm,
                                  float eps, int in, cudaStream_t st) {
    cudaLaunchAttribute attr[2];
    dim3 grid((unsigned)((n + 7) / 8), (unsigned)((in + WG_PREP_K - 1) / WG_PREP_K));
    cudaLaunchConfig_t cfg = pdl_cluster_config(grid, dim3(256), 0, st, attr, 1);
    return cudaLaunchKernelEx(&cfg, k_wide_prep_wg<FMT, PRE>, xb, x, norm, eps, n, in);
}

template <int FMT, int ACC, int EPI>
static cudaError_t launch_wide_wg(const lin_set *set, __nv_bfloat16 *xb, const float *x, int n,
                                  int pre, const float *norm, float eps, int sms,
                                  cudaStream_t st) {
    int in = (int)set->w[0]->in;
    cudaError_t e = with_pre(pre, [&](auto P) {
        return launch_prep_wg<FMT, decltype(P)::value>(xb, x, n, norm, eps, in, st);
    });
    if (e != cudaSuccess) return e;
    static unsigned smem_set;
    e = smem_optin(k_wide_wg<FMT, ACC, EPI>, wide_cfg<FMT>::SMEM, &smem_set);
    if (e != cudaSuccess) return e;
    return launch_tile<FMT, EPI>(set, sms, 256, st, [&](cudaLaunchConfig_t cfg, lin_segs segs,
                                                        int per) {
        return cudaLaunchKernelEx(&cfg, k_wide_wg<FMT, ACC, EPI>, segs, xb, n, in, per);
    });
}

template <int FMT>
static cudaError_t launch_wide_fmt(const lin_set *set, __nv_bfloat16 *xb, const float *x, int n,
                                   int pre, int acc, int post, const float *norm, float eps,
                                   int sms, cudaStream_t st) {
    if (FMT != ENG_W_I4 && wide_wg()) {
        constexpr int F = FMT == ENG_W_I4 ? ENG_W_I8 : FMT; /* no int4 instantiation */
        if (post == ENG_POST_SILU_MUL)
            return launch_wide_wg<F, 0, 1>(set, xb, x, n, pre, norm, eps, sms, st);
        return acc ? launch_wide_wg<F, 1, 0>(set, xb, x, n, pre, norm, eps, sms, st)
                   : launch_wide_wg<F, 0, 0>(set, xb, x, n, pre, norm, eps, sms, st);
    }
    cudaError_t e = launch_prep<FMT>(xb, x, n, (int)set->w[0]->in, pre, norm, eps, st);
    if (e != cudaSuccess) return e;
    if (wide_warps_n() == 2) {
        if (post == ENG_POST_SILU_MUL) return launch_wide_k<FMT, 0, 1, 2>(set, xb, n, sms, st);
        return acc ? launch_wide_k<FMT, 1, 0, 2>(set, xb, n, sms, st)
                   : launch_wide_k<FMT, 0, 0, 2>(set, xb, n, sms, st);
    }
    if (post == ENG_POST_SILU_MUL) return launch_wide_k<FMT, 0, 1, 4>(set, xb, n, sms, st);
    return acc ? launch_wide_k<FMT, 1, 0, 4>(set, xb, n, sms, st)
               : launch_wide_k<FMT, 0, 0, 4>(set, xb, n, sms, st);
}

int cuda_linear_wide(eng_backend *be, const lin_set *set, const float *x, int64_t n, int pre,
                     int acc, int post, const float *norm, float eps) {
    cuda_impl *c = cuda_of(be);
    const eng_weight *w = set->w[0];
    void *scratch = NULL;
    /* x as bf16: n rows (k_wide), or all WIDE_COLS columns of every stage (k_wide_wg) */
    int rc = cuda_scratch(be, (size_t)WIDE_COLS * (size_t)w->in * 2, &scratch);
    if (rc) return rc;
    __nv_bfloat16 *xb = (__nv_bfloat16 *)scratch;
    cudaError_t e;
    switch (w->fmt) {
    case ENG_W_BF16:
        e = launch_wide_fmt<ENG_W_BF16>(set, xb, x, (int)n, pre, acc, post, norm, eps,
                                        c->sm_count, c->stream);
        break;
    case ENG_W_I8:
        e = launch_wide_fmt<ENG_W_I8>(set, xb, x, (int)n, pre, acc, post, norm, eps,
                                      c->sm_count, c->stream);
        break;
    default:
        e = launch_wide_fmt<ENG_W_I4>(set, xb, x, (int)n, pre, acc, post, norm, eps,
                                      c->sm_count, c->stream);
        break;
    }
    if (e != cudaSuccess)
        return eng_backend_fail(be, ENG_EDEVICE, "linear (wide): launch: %s",
                                cudaGetErrorString(e));
    return 0;
}
