/* cuda_linear.cu - y[n, out] = x[n, in] . W^T for bf16, int8 and int4 weights.
 *
 * Decoding multiplies a handful of rows (2 per sequence with CFG) by every weight of the model,
 * so the small-n path is a weight-streaming GEMV (k_gemv): a block owns a few output rows, its
 * threads stream 16-byte chunks of those rows (8 bf16, 16 int8 or 32 int4 values),
 * dequantize in registers and accumulate in f32 against up to GEMV_MAX_ROWS rows of x, which stay
 * in L1/L2. Each weight byte is read once per call. Larger n (the encoder, cross K/V) goes to
 * cuBLAS in bf16 with f32 accumulation; quantized weights are expanded to bf16 in scratch first. */
#include <cooperative_groups.h>

#include "engine/cuda/cuda_mma.cuh"

#define GEMV_MAX_ROWS 8
#define GEMV_MAX_THREADS 512 /* most threads per block (bf16: K = 8192 gets 2 chunks a thread) */
/* The integer formats keep 256: their dequantization needs the registers 512 would take. */
#define GEMV_THREADS_FOR(FMT) ((FMT) == ENG_W_BF16 ? 512 : 256)
#define GEMV_WARPS 4 /* warps per block of the any-shape fallback */

__device__ __forceinline__ float bf16lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

/* Weight values of one 16-byte load, as floats. The integer formats avoid int->float
 * conversions (a quarter-rate instruction) with the 2^23 trick: the bits 0x4B0000xx read as a
 * float are 8388608 + xx exactly, so one byte-permute or mask and one subtraction give the value. */
template <int FMT> struct wload;
template <> struct wload<ENG_W_BF16> {
    static constexpr int vals = 8;
    static __device__ __forceinline__ void unpack(uint4 q, float *f) {
        uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = bf16lo(w[i]);
            f[2 * i + 1] = bf16hi(w[i]);
        }
    }
};
template <> struct wload<ENG_W_I8> {
    static constexpr int vals = 16;
    static __device__ __forceinline__ void unpack(uint4 q, float *f) {
        uint32_t w[4] = {q.x ^ 0x80808080u, q.y ^ 0x80808080u, q.z ^ 0x80808080u,
                         q.w ^ 0x80808080u};
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int b = 0; b < 4; b++)
                f[4 * i + b] = __uint_as_float(__byte_perm(w[i], 0x4B000000u, 0x7540 + b)) -
                               8388736.f; /* 2^23 + 128 */
    }
};
template <> struct wload<ENG_W_I4> {
    static constexpr int vals = 32;
    static __device__ __forceinline__ void unpack(uint4 q, float *f) {
        uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int b = 0; b < 8; b++)
                f[8 * i + b] = __uint_as_float(((w[i] >> (4 * b)) & 15u) | 0x4B000000u) -
                               8388616.f; /* 2^23 + 8: nibble - 8 */
    }
};


/* Whether the r-th row of a block exists: plain rows below out; with the silu epilogue the
 * first R/2 are gate rows (below out/2) and the rest up rows (below out). */
template <int EPI>
__device__ __forceinline__ bool row_ok(int row, int r, int R, int out, int half) {
    return EPI ? (r < R / 2 ? row < half : row < out) : row < out;
}

/* y[NR, out] = x[NR, in] . W^T for one format (per segment of segs). A block owns R output rows
 * in RG groups of R / RG rows; the threads of a group (blockDim.x / RG of them) split the input
 * dimension in 16-byte chunks of W, so each thread loads R / RG independent weight vectors per
 * step (memory-level parallelism) and reuses every x value it loads for all of them. More groups
 * put more threads on the same rows: less serial work a thread once the kernel in front is done
 * (launch_rg). Partial sums meet in shared memory. int8 rows carry one scale, int4 one per group
 * of `group` inputs (group % 32 == 0, so a chunk never straddles groups).
 * PRE_RMSNORM: the loop multiplies x by the norm weight and also sums x^2 (each x value is seen by
 * exactly one thread of each row group; group 0's sums are used), and the row's 1/rms scales the
 * dot products at the end: no separate pass. PRE_SILU_MUL: x is [gate | up] and the loop uses silu(gate) * up.
 * EPI (silu epilogue): the block's first R/2 rows are gate rows g0.., the others the matching up
 * rows out/2 + g0..; it writes y[n, out/2] = silu(gate) * up. ACC adds into y. */
template <int FMT, int NR, int R, int PRE, int ACC, int EPI, int RG>
__global__ void __launch_bounds__(RG > 1 ? GEMV_MAX_THREADS : GEMV_THREADS_FOR(FMT))
k_gemv(const lin_segs segs, const float *__restrict__ x, int in, int group,
       const float *__restrict__ norm, float eps) {
    constexpr int V = wload<FMT>::vals, RR = R / RG; /* rows a thread */
    __shared__ float s_part[GEMV_MAX_THREADS / 32][R * NR];
    __shared__ float s_ss[GEMV_MAX_THREADS / 32][NR];
    int blk = (int)blockIdx.x;
    const lin_seg sg = seg_of(segs, blk);
    const uint4 *__restrict__ w = sg.w;
    const float *__restrict__ scales = sg.scales;
    float *__restrict__ y = sg.y;
    int out = sg.out, half = out / 2;
    /* this thread: group g (rows g RR ..), chunk tl of them, then tl + tpg, ... (no division:
     * at RG = 1 this folds to the plain block) */
    const int tpg = (int)blockDim.x / RG;
    int g = 0;
#pragma unroll
    for (int i = 1; i < RG; i++) g += (int)threadIdx.x >= i * tpg;
    const int tl = (int)threadIdx.x - g * tpg;
    int rows[RR];
#pragma unroll
    for (int i = 0; i < RR; i++) {
        int r = g * RR + i;
        rows[i] = EPI ? (r < R / 2 ? blk * (R / 2) + r : half + blk * (R / 2) + r - R / 2)
                      : blk * R + r;
    }
    int chunks = in / V, ngroups = FMT == ENG_W_I4 ? (in + group - 1) / group : 1;
    __shared__ unsigned long long s_tr[2]; /* VOXQ_CUDA_BLOCK_TRACE: not held in registers */
    if (segs.trace && threadIdx.x == 0) s_tr[0] = trace_now();
    /* The weights do not depend on the previous kernel: start streaming them before waiting. */
    pdl_trigger();
    uint4 q[RR];
    if (tl < chunks) {
#pragma unroll
        for (int r = 0; r < RR; r++)
            q[r] = row_ok<EPI>(rows[r], g * RR + r, R, out, half)
                       ? __ldg(w + (size_t)rows[r] * chunks + tl)
                       : make_uint4(0, 0, 0, 0);
    }
    /* Also independent of it: int4's group scales and the norm weights of the first chunk, and
     * int8's row scales of this thread's first output (the epilogue below, thread i takes
     * outputs i, i + blockDim.x, ...). */
    constexpr int NOUT = EPI ? R / 2 : R;
    float sc0[RR], rs0 = 1.f, rs0_up = 1.f;
    if (FMT == ENG_W_I4 && tl < chunks) {
#pragma unroll
        for (int r = 0; r < RR; r++)
            sc0[r] = row_ok<EPI>(rows[r], g * RR + r, R, out, half)
                         ? __ldg(scales + (size_t)rows[r] * ngroups + (tl * V) / group)
                         : 0.f;
    }
    constexpr int NW0 = PRE == ENG_PRE_RMSNORM ? V : 1;
    float nw0[NW0];
    if (PRE == ENG_PRE_RMSNORM && tl < chunks)
#pragma unroll
        for (int sub = 0; sub < V / 8; sub++)
            load8(norm + tl * V + sub * 8, nw0 + sub * 8);
    const int orow0 = (EPI ? blk * (R / 2) : blk * R) + (int)threadIdx.x / NR;
    if (FMT == ENG_W_I8 && (int)threadIdx.x < NOUT * NR) {
        if (orow0 < (EPI ? half : out)) rs0 = __ldg(scales + orow0);
        if (EPI && orow0 < half) rs0_up = __ldg(scales + half + orow0);
    }
    pdl_wait();
    if (segs.trace && threadIdx.x == 0) s_tr[1] = trace_now();
    /* The residual this thread's first output adds to, in flight during the dot products. */
    float y0 = 0.f;
    if (ACC && !EPI && (int)threadIdx.x < NOUT * NR && orow0 < out)
        y0 = y[(size_t)((int)threadIdx.x % NR) * out + orow0];
    float acc[RR][NR], ss[NR];
#pragma unroll
    for (int r = 0; r < RR; r++)
#pragma unroll
        for (int n = 0; n < NR; n++) acc[r][n] = 0.f;
#pragma unroll
    for (int n = 0; n < NR; n++) ss[n] = 0.f;
    for (int c = tl; c < chunks; c += tpg) {
        if (c != tl) {
#pragma unroll
            for (int r = 0; r < RR; r++)
                q[r] = row_ok<EPI>(rows[r], g * RR + r, R, out, half)
                           ? __ldg(w + (size_t)rows[r] * chunks + c)
                           : make_uint4(0, 0, 0, 0);
        }
        float sc[RR];
        if (FMT == ENG_W_I4) {
#pragma unroll
            for (int r = 0; r < RR; r++)
                sc[r] = c == tl ? sc0[r]
                        : row_ok<EPI>(rows[r], g * RR + r, R, out, half)
                            ? __ldg(scales + (size_t)rows[r] * ngroups + (c * V) / group)
                            : 0.f;
        }
#pragma unroll
        for (int sub = 0; sub < V / 8; sub++) {
            float xf[NR][8];
            int k = c * V + sub * 8;
            if (PRE == ENG_PRE_SILU_MUL) {
#pragma unroll
                for (int n = 0; n < NR; n++) {
                    float g[8];
                    load8(x + (size_t)n * 2 * in + k, g);
                    load8(x + (size_t)n * 2 * in + in + k, xf[n]);
#pragma unroll
                    for (int j = 0; j < 8; j++) xf[n][j] = silu_mul(g[j], xf[n][j]);
                }
            } else {
#pragma unroll
                for (int n = 0; n < NR; n++) load8(x + (size_t)n * in + k, xf[n]);
            }
            if (PRE == ENG_PRE_RMSNORM) {
                float nw[8];
                if (c == tl) {
#pragma unroll
                    for (int j = 0; j < 8; j++) nw[j] = nw0[(sub * 8 + j) % NW0];
                } else {
                    load8(norm + k, nw);
                }
#pragma unroll
                for (int n = 0; n < NR; n++)
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        ss[n] = fmaf(xf[n][j], xf[n][j], ss[n]);
                        xf[n][j] *= nw[j];
                    }
            }
#pragma unroll
            for (int r = 0; r < RR; r++) {
                float wf[V];
                wload<FMT>::unpack(q[r], wf);
                float part[NR];
#pragma unroll
                for (int n = 0; n < NR; n++) {
                    part[n] = 0.f;
#pragma unroll
                    for (int j = 0; j < 8; j++) part[n] = fmaf(wf[sub * 8 + j], xf[n][j], part[n]);
                }
#pragma unroll
                for (int n = 0; n < NR; n++)
                    acc[r][n] = FMT == ENG_W_I4 ? fmaf(part[n], sc[r], acc[r][n]) : acc[r][n] + part[n];
            }
        }
    }
    /* warps of group g hold the partial sums of its rows (tpg is a multiple of 32) */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = tpg / 32;
#pragma unroll
    for (int r = 0; r < RR; r++)
#pragma unroll
        for (int n = 0; n < NR; n++) {
            float v = warp_sum(acc[r][n]);
            if (lane == 0) s_part[warp][r * NR + n] = v;
        }
    if (PRE == ENG_PRE_RMSNORM && g == 0) { /* every group saw all of x once: group 0's */
#pragma unroll
        for (int n = 0; n < NR; n++) {
            float v = warp_sum(ss[n]);
            if (lane == 0) s_ss[warp][n] = v;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < NOUT * NR; i += blockDim.x) {
        const bool first = i == (int)threadIdx.x;
        int r = i / NR, n = i % NR;
        float scale_n = 1.f;
        if (PRE == ENG_PRE_RMSNORM) {
            float t = 0.f;
            for (int k = 0; k < nwarps; k++) t += s_ss[k][n];
            scale_n = rsqrtf(t / (float)in + eps);
        }
        /* row r's partial sums: local row r % RR of group r / RR's warps */
        float v = 0.f;
        for (int k = 0; k < nwarps; k++)
            v += RG == 1 ? s_part[k][i] : s_part[r / RR * nwarps + k][r % RR * NR + n];
        int orow = EPI ? blk * (R / 2) + r : blk * R + r;
        if (FMT == ENG_W_I8 && orow < (EPI ? half : out)) v *= first ? rs0 : scales[orow];
        v *= scale_n;
        if (EPI) {
            if (orow >= half) continue;
            float u = 0.f;
            const int ru = r + R / 2;
            for (int k = 0; k < nwarps; k++)
                u += RG == 1 ? s_part[k][ru * NR + n]
                             : s_part[ru / RR * nwarps + k][ru % RR * NR + n];
            if (FMT == ENG_W_I8) u *= first ? rs0_up : scales[half + orow];
            u *= scale_n;
            y[(size_t)n * half + orow] = silu_mul(v, u);
        } else if (orow < out) {
            if (ACC)
                y[(size_t)n * out + orow] = (first ? y0 : y[(size_t)n * out + orow]) + v;
            else
                y[(size_t)n * out + orow] = v;
        }
    }
    if (segs.trace) {
        __syncthreads();
        if (threadIdx.x == 0)
            trace_block(segs.trace, segs.trace_cap, (unsigned long long)segs.s[0].w, s_tr[0],
                        s_tr[1]);
    }
}

/* Any shape, any format: one warp per output row, one element per lane step. Used when rows are
 * not 16-byte multiples (tiny test models) - correctness, not speed. */
__global__ void k_gemv_any(float *__restrict__ y, const float *__restrict__ x, const void *w,
                           const float *__restrict__ scales, int fmt, int n, int out, int in,
                           int group) {
    int row = blockIdx.x * GEMV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= out) return;
    int ngroups = group ? (in + group - 1) / group : 1;
    for (int r = 0; r < n; r++) {
        float acc = 0.f;
        for (int k = lane; k < in; k += 32) {
            float wv;
            if (fmt == ENG_W_BF16) {
                wv = __bfloat162float(((const __nv_bfloat16 *)w)[(size_t)row * in + k]);
            } else if (fmt == ENG_W_I8) {
                wv = (float)((const int8_t *)w)[(size_t)row * in + k] * scales[row];
            } else {
                uint8_t byte = ((const uint8_t *)w)[(size_t)row * ((in + 1) / 2) + k / 2];
                int q = (int)((k & 1) ? (byte >> 4) : (byte & 15)) - 8;
                wv = (float)q * scales[(size_t)row * ngroups + k / group];
            }
            acc = fmaf(wv, x[(size_t)r * in + k], acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) y[(size_t)r * out + row] = acc;
    }
}

/* ---- Tensor-core path: int8/int4 (and bf16) weights, 1 to 128 rows of x ----
 *
 * mma.sync.m16n8k16 (bf16 in, f32 accumulate) with the weights as the A operand (16 output rows
 * a fragment) and x as the B operand (8 rows of x a fragment; padding columns are zeros). The
 * fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16", g = lane / 4, t = lane % 4):
 *   A: a0 = (row g,   k 2t, 2t+1)   a1 = (row g+8, k 2t, 2t+1)
 *      a2 = (row g,   k 2t+8, 2t+9) a3 = (row g+8, k 2t+8, 2t+9)
 *   B: b0 = (k 2t, 2t+1; column g)  b1 = (k 2t+8, 2t+9; column g)
 *   C: c0, c1 = (row g, columns 2t, 2t+1)  c2, c3 = (row g+8, columns 2t, 2t+1)
 * A dot product may visit k in any order as long as A and B use the same order. Lane t of a group
 * owns the logical k {2t, 2t+1, 2t+8, 2t+9} of every mma, in A (both its rows) and in B (its
 * column) alike, so each lane may back its logical k with any physical k of its own: lane t loads
 * 16 contiguous bytes of weight row g and of row g+8 at chunk 4s + t of k-step s (a k-step is
 * KW = 4 lanes x V values), turns each 16 bytes into PAIRS bf16x2 registers P[0..PAIRS) and feeds
 * mma i with a0 = P_g[2i], a1 = P_g8[2i], a2 = P_g[2i+1], a3 = P_g8[2i+1], b0 = X[2i],
 * b1 = X[2i+1], where X are the same physical k of x column g, read as 16-byte words from shared
 * memory where x was staged in the pair order of the format:
 *   bf16: P[m] = word m = (k 2m, 2m+1)                        x staged in natural order
 *   int8: P[2m], P[2m+1] = (k 4m, 4m+1), (k 4m+2, 4m+3)       natural order
 *   int4: P[4m+j] = (k 8m+j, 8m+4+j): the nibbles at bits 4j and 16+4j of word m, which one
 *         (w >> 4j) & 0x000F000F | 0x43004300 turns into the bf16 pair 128+q exactly;
 *         x staged as x0 x4 x1 x5 x2 x6 x3 x7 in every group of 8.
 * Dequantization (cuda_mma.cuh): int8 via the bf16 128/256 magic (the low 7 bits under 128's
 * exponent, minus 128 or 256 by the sign bit), int4 via the bf16 128-magic above and one bf16x2
 * subtraction of 136 (both exact). int4 group scales apply per k-step (a k-step is 128 inputs,
 * so a group of a multiple of 128 never splits one); int8 row scales and the rmsnorm 1/rms apply
 * at the end.
 *
 * Work split: a block is WARPS warps (4; 8 above 16 rows of x, so that more weight rows share one
 * staging of x), warp w owns m-tile WARPS * blockIdx.x + w (16 weight rows; with the
 * silu epilogue 8 gate rows as fragment rows 0-7 and the matching up rows as rows 8-15, so one
 * lane holds both halves of an output). The k-steps are split over gridDim.y blocks that form one
 * thread-block cluster and add their partial fragments through distributed shared memory (every
 * rank finishes a share of the outputs). Each block stages x (prologue applied, bf16) for up to
 * XU k-steps in shared memory and streams its weight rows through registers U k-steps (2U
 * 16-byte loads a lane) at a time, the next chunk in flight while the mmas run (mma_cfg). */
#define MMA_MAX_ROWS 128 /* rows of x (16 n-tiles of 8) */
#define MMA_MAX_CLUSTER 8
/* Blocks a k_mma launch aims at (split-k makes up the rest): 264, two an SM on the H200's 132,
 * or VOXQ_CUDA_MMA_TARGET_BLOCKS read once (A/B timing: 132, 528 and 1056 were slower, int8 one
 * sequence 1.48, 1.25 and 1.29 ms a step against 1.19). */
static int mma_target_blocks(void) {
    static int t;
    if (!t) t = (int)cuda_env_knob("VOXQ_CUDA_MMA_TARGET_BLOCKS", 264, 1, 1 << 20);
    return t;
}

/* Tile constants of one format and n-tile count. x is staged XU k-steps at a time (at most 32 KB
 * of bf16, up to 2048 inputs at 1-8 rows: one staging, two barriers, for most blocks); the
 * weights stream through registers in chunks of U k-steps, NBUF chunks in flight: with 1-16 rows
 * (NBUF = 2) the next chunk's loads are issued before the current chunk's mmas, so a warp never
 * waits for a load it could have issued earlier. The row stride of the staged x is padded so the
 * B reads of a quarter warp spread over the banks. */
template <int FMT, int NT> struct mma_cfg {
    static constexpr int V = mma_fmt<FMT>::V;   /* weight values in 16 bytes */
    static constexpr int PAIRS = V / 2;         /* bf16x2 registers of 16 weight bytes */
    static constexpr int KW = 4 * V;            /* inputs a k-step */
    static constexpr int XU0 = 32768 / (NT * 8 * KW * 2);
    static constexpr int XU = XU0 < 1 ? 1 : XU0 > 32 ? 32 : XU0; /* k-steps staged at once */
    static constexpr int U = XU < 4 ? XU : 4;   /* k-steps a weight chunk */
    static constexpr int NBUF = NT <= 2 ? 2 : 1;
    static constexpr int KC = XU * KW;          /* inputs staged at once */
    static constexpr int STRIDE = KC + mma_fmt<FMT>::PAD; /* bf16 a staged column */
    static constexpr int XS = NT * 8 * STRIDE;  /* staged x, bf16 */
    /* Warps a block (one m-tile each): more rows share one staging of x as n grows; from 4
     * n-tiles two blocks an SM (launch bounds: at most 128 registers), but for int8 at 16
     * n-tiles, whose dequantization then spills (~150 registers; 128 int8 rows go to cuBLAS). */
    static constexpr int WARPS = NT >= 4 ? 8 : 4;
    static constexpr int THREADS = WARPS * 32;
    static constexpr int MIN_BLOCKS = NT >= 4 && !(FMT == ENG_W_I8 && NT == 16) ? 2 : 1;
    static_assert(XU % U == 0, "chunks never straddle a staging");
    static_assert(KC * 2 % 128 == 0, "the pad alone sets the bank offset of a column");
};


/* Stages x[0..n)[k0, k0 + klen) (prologue applied) into xs[column][k - k0] as bf16 in the pair
 * order of FMT (columns n..8NT were zeroed once by the kernel). With the norm prologue also adds
 * each column's sum of squares of raw x into s_ss. One unit = 8 inputs of one column, ucol =
 * klen / 8 units a column; consecutive threads take consecutive units (coalesced 32-byte reads)
 * and the trip count is the same for every thread (the sums of squares meet through a segmented
 * warp reduction: a warp's units cover consecutive columns in order). */
template <int FMT, int NT, int PRE>
__device__ __forceinline__ void mma_stage(__nv_bfloat16 *xs, float *s_ss, const float *x,
                                          const float *norm, int n, int in, int k0, int klen) {
    using C = mma_cfg<FMT, NT>;
    int ucol = klen / 8, units = n * ucol, lane = threadIdx.x % 32;
#pragma unroll 4
    for (int base = 0; base < units; base += C::THREADS) {
        int unit = base + (int)threadIdx.x;
        bool live = unit < units;
        int col = live ? unit / ucol : -1, kk = live ? (unit - col * ucol) * 8 : 0;
        float v[8], ss = 0.f;
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = 0.f;
        if (live) {
            int k = k0 + kk;
            if (PRE == ENG_PRE_SILU_MUL) {
                float g[8];
                load8(x + (size_t)col * 2 * in + k, g);
                load8(x + (size_t)col * 2 * in + in + k, v);
#pragma unroll
                for (int j = 0; j < 8; j++) v[j] = silu_mul(g[j], v[j]);
            } else {
                load8(x + (size_t)col * in + k, v);
            }
            if (PRE == ENG_PRE_RMSNORM) {
                float nw[8];
                load8(norm + k, nw);
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    ss = fmaf(v[j], v[j], ss);
                    v[j] *= nw[j];
                }
            }
            *(uint4 *)(xs + col * C::STRIDE + kk) = pack8_bf16<FMT>(v);
        }
        if (PRE == ENG_PRE_RMSNORM) {
            /* Lane l ends with the sum over lanes [l, 32) of its column; the first lane of each
             * column's run adds it. Whole warp: the trip count is uniform. */
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                float s2 = __shfl_down_sync(0xffffffffu, ss, o);
                int c2 = __shfl_down_sync(0xffffffffu, col, o);
                if (lane + o < 32 && c2 == col) ss += s2;
            }
            int prev = __shfl_up_sync(0xffffffffu, col, 1);
            if (live && (lane == 0 || prev != col)) atomicAdd(&s_ss[col], ss);
        }
    }
}

/* What the store of one lane's output pair needs from memory besides the sums: the int8 row
 * scales of its two rows (lo = row g, or the gate row with the silu epilogue; hi = row g + 8, or
 * the up row) and, with the residual add, the two old values of y at one column. Fetched ahead
 * of the sums (scales: before the kernel waits for its predecessor; y: before the cluster
 * barrier), so that they are not one more memory round trip at the kernel's tail. */
struct mma_out {
    float s_lo, s_hi, y_lo, y_hi;
};
template <int FMT, int EPI>
__device__ __forceinline__ void mma_fetch_scales(mma_out &o, const float *__restrict__ scales,
                                                 int mt, int g, int out) {
    o.s_lo = o.s_hi = 1.f;
    if (FMT != ENG_W_I8) return;
    if (EPI) {
        int half = out / 2, r = min(8 * mt + g, half - 1);
        o.s_lo = scales[r];
        o.s_hi = scales[half + r];
    } else {
        o.s_lo = scales[min(16 * mt + g, out - 1)];
        o.s_hi = scales[min(16 * mt + g + 8, out - 1)];
    }
}
template <int ACC, int EPI>
__device__ __forceinline__ void mma_fetch_y(mma_out &o, const float *__restrict__ y, int mt,
                                            int g, int col, int n, int out) {
    o.y_lo = o.y_hi = 0.f;
    if (!ACC || EPI || col >= n) return;
    int r0 = 16 * mt + g, r1 = r0 + 8;
    if (r0 < out) o.y_lo = y[(size_t)col * out + r0];
    if (r1 < out) o.y_hi = y[(size_t)col * out + r1];
}

/* Stores one column of one lane's finished fragment: lo = row g (the gate row with the silu
 * epilogue), hi = row g + 8 (the up row) of m-tile mt, column col of y; r = 1/rms of the column
 * (1 without the norm); o from mma_fetch_scales and (residual add) mma_fetch_y of this column. */
template <int ACC, int EPI>
__device__ __forceinline__ void mma_store2(float *__restrict__ y, const mma_out &o, float lo,
                                           float hi, int mt, int g, int col, int n, int out,
                                           float r) {
    if (col >= n) return;
    if (EPI) {
        int half = out / 2, q = 8 * mt + g;
        if (q >= half) return;
        float gate = lo * r * o.s_lo, up = hi * r * o.s_hi;
        y[(size_t)col * half + q] = silu_mul(gate, up);
        return;
    }
    int rows[2] = {16 * mt + g, 16 * mt + g + 8};
    float c[2] = {lo * r * o.s_lo, hi * r * o.s_hi}, old[2] = {o.y_lo, o.y_hi};
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (rows[h] >= out) continue;
        y[(size_t)col * out + rows[h]] = ACC ? old[h] + c[h] : c[h];
    }
}

/* One lane's weights of U k-steps: rows g and g + 8, and with int4 their group scales. */
template <int U> struct mma_chunk {
    uint4 g[U], g8[U];
    float sg[U], sg8[U];
};

/* y[n, out] (+)= pre(x)[n, in] . W^T with tensor cores, n <= 8 NT, for each segment of segs; the
 * layout and split are described above. Needs in % KW == 0 (and for int4 group % 128 == 0).
 * steps_per_block: k-steps of one block of the cluster (blockIdx.y). */
template <int FMT, int NT, int PRE, int ACC, int EPI>
__global__ void __launch_bounds__(mma_cfg<FMT, NT>::THREADS, mma_cfg<FMT, NT>::MIN_BLOCKS)
k_mma(const lin_segs segs, const float *__restrict__ x, int n, int in, int group,
      const float *__restrict__ norm, float eps, int steps_per_block) {
    using C = mma_cfg<FMT, NT>;
    constexpr int U = C::U, XU = C::XU, PAIRS = C::PAIRS, V = C::V;
    __shared__ __align__(16) __nv_bfloat16 xs[C::XS];
    __shared__ float s_ss[NT * 8];
    int blk = (int)blockIdx.x;
    const lin_seg sg = seg_of(segs, blk);
    const uint4 *__restrict__ w = sg.w;
    const float *__restrict__ scales = sg.scales;
    float *__restrict__ y = sg.y;
    int out = sg.out;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int mt = blk * C::WARPS + warp;
    /* This lane's two weight rows (clamped into the matrix; the store skips rows past it). */
    int row_g, row_g8;
    if (EPI) {
        int half = out / 2, o = min(8 * mt + g, half - 1);
        row_g = o;
        row_g8 = half + o;
    } else {
        row_g = min(16 * mt + g, out - 1);
        row_g8 = min(16 * mt + g + 8, out - 1);
    }
    int steps = in / C::KW, s_begin = blockIdx.y * steps_per_block;
    int s_end = min(steps, s_begin + steps_per_block);
    size_t row_chunks = (size_t)(in / V);
    const uint4 *wg = w + (size_t)row_g * row_chunks + t, *wg8 = w + (size_t)row_g8 * row_chunks + t;
    int ngroups = FMT == ENG_W_I4 ? (in + group - 1) / group : 1;
    const float *sc_g = FMT == ENG_W_I4 ? scales + (size_t)row_g * ngroups : scales;
    const float *sc_g8 = FMT == ENG_W_I4 ? scales + (size_t)row_g8 * ngroups : scales;

    auto load_chunk = [&](mma_chunk<U> &c, int s0) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int s = s0 + u;
            if (s < s_end) {
                c.g[u] = __ldg(wg + (size_t)s * 4);
                c.g8[u] = __ldg(wg8 + (size_t)s * 4);
                if (FMT == ENG_W_I4) {
                    c.sg[u] = __ldg(sc_g + s * C::KW / group);
                    c.sg8[u] = __ldg(sc_g8 + s * C::KW / group);
                }
            }
        }
    };
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[j][e] = 0.f;
    /* The mmas of the chunk at k-step s0, whose x sits at k-step xoff of the staged range. */
    auto compute_chunk = [&](const mma_chunk<U> &c, int s0, int xoff) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (s0 + u >= s_end) break;
            uint32_t p_g[PAIRS], p_g8[PAIRS];
            mma_fmt<FMT>::dequant(c.g[u], p_g);
            mma_fmt<FMT>::dequant(c.g8[u], p_g8);
#pragma unroll
            for (int j = 0; j < NT; j++) {
                /* B: column 8j + g, the V inputs of lane t in k-step xoff + u of the staging. */
                const uint4 *xp =
                    (const uint4 *)(xs + (8 * j + g) * C::STRIDE + (xoff + u) * C::KW + t * V);
                uint32_t b[PAIRS];
#pragma unroll
                for (int i = 0; i < V / 8; i++) {
                    uint4 v = xp[i];
                    b[4 * i] = v.x; b[4 * i + 1] = v.y; b[4 * i + 2] = v.z; b[4 * i + 3] = v.w;
                }
                mma_kstep<FMT>(acc[j], p_g, p_g8, FMT == ENG_W_I4 ? c.sg[u] : 1.f,
                               FMT == ENG_W_I4 ? c.sg8[u] : 1.f, b);
            }
        }
    };
    /* One chunk: stage x when the chunk opens a staged range, the mmas, then (two buffers) the
     * loads of the chunk NBUF * U k-steps on into the registers just used. */
    auto run_chunk = [&](mma_chunk<U> &c, int s0) {
        int rel = s0 - s_begin, xoff = rel % XU;
        if (C::NBUF == 1 && rel != 0) load_chunk(c, s0);
        if (xoff == 0) {
            __syncthreads(); /* the previous staging's mmas are done with xs */
            mma_stage<FMT, NT, PRE>(xs, s_ss, x, norm, n, in, s0 * C::KW,
                                    min(XU, s_end - s0) * C::KW);
            __syncthreads();
        }
        compute_chunk(c, s0, xoff);
        if (C::NBUF == 2) load_chunk(c, s0 + 2 * U);
    };

    __shared__ unsigned long long s_tr[2]; /* VOXQ_CUDA_BLOCK_TRACE: not held in registers */
    if (segs.trace && threadIdx.x == 0) s_tr[0] = trace_now();
    /* The weights do not depend on the previous kernel: start streaming them before waiting. */
    pdl_trigger();
    mma_chunk<U> c0, c1;
    load_chunk(c0, s_begin);
    if (C::NBUF == 2) load_chunk(c1, s_begin + U);
    /* Columns n.. of the staged x stay zero (the stagings write only live columns). */
    for (int i = (int)threadIdx.x; i < (8 * NT - n) * C::STRIDE / 8; i += C::THREADS)
        *(uint4 *)(xs + n * C::STRIDE + 8 * i) = make_uint4(0, 0, 0, 0);
    if ((int)threadIdx.x < NT * 8) s_ss[threadIdx.x] = 0.f;
    /* Unsplit, a lane stores its own fragment: its row scales are weights (fetched before the
     * wait), and with up to 2 n-tiles the residual values too (right after it). */
    constexpr int YPRE = NT <= 2;
    const int col0 = 2 * t; /* + 8j: this lane's first column in n-tile j */
    mma_out so, yo[YPRE ? NT : 1][2];
    if (gridDim.y == 1) mma_fetch_scales<FMT, EPI>(so, scales, mt, g, out);
    pdl_wait();
    if (segs.trace && threadIdx.x == 0) s_tr[1] = trace_now();
    auto trace_end = [&]() { /* VOXQ_CUDA_BLOCK_TRACE (debug) */
        if (!segs.trace) return;
        __syncthreads();
        if (threadIdx.x == 0)
            trace_block(segs.trace, segs.trace_cap, (unsigned long long)segs.s[0].w, s_tr[0],
                        s_tr[1]);
    };
    if (YPRE && gridDim.y == 1)
#pragma unroll
        for (int j = 0; j < (YPRE ? NT : 1); j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                yo[j][e] = so;
                mma_fetch_y<ACC, EPI>(yo[j][e], y, mt, g, 8 * j + col0 + e, n, out);
            }

    for (int s0 = s_begin; s0 < s_end; s0 += C::NBUF * U) {
        run_chunk(c0, s0);
        if (C::NBUF == 2 && s0 + U < s_end) run_chunk(c1, s0 + U);
    }

    if (gridDim.y == 1) {
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int col = 8 * j + col0 + e;
                float r = 1.f;
                if (PRE == ENG_PRE_RMSNORM && col < n) r = rsqrtf(s_ss[col] / (float)in + eps);
                mma_out o = so;
                if (YPRE)
                    o = yo[YPRE ? j : 0][e];
                else
                    mma_fetch_y<ACC, EPI>(o, y, mt, g, col, n, out);
                mma_store2<ACC, EPI>(y, o, acc[j][e], acc[j][2 + e], mt, g, col, n, out, r);
            }
        trace_end();
        return;
    }
    /* Split k: the cluster's blocks (blockIdx.y = rank) add their fragments through distributed
     * shared memory, JG n-tiles a pass (as many as the staged-x buffer holds). Each pass is
     * finished by every rank at once: a work item is one column pair (lo, hi) of one slot's
     * fragment, items are dealt round the cluster's threads, and each item's loads from all
     * ranks are independent (issued together, no serial chain). */
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    constexpr int JG0 = C::XS * 2 / (C::THREADS * 16), JG = JG0 < NT ? JG0 : NT;
    static_assert(JG >= 1, "the reduction reuses the staged x");
    float4 *red = (float4 *)xs; /* [JG][THREADS] fragments */
    int ranks = (int)gridDim.y, rank = (int)blockIdx.y;
#pragma unroll
    for (int pass = 0; pass < (NT + JG - 1) / JG; pass++) {
        if (pass == 0)
            __syncthreads(); /* every warp is done with xs */
        else
            cluster.sync(); /* every rank is done reading the previous pass */
#pragma unroll
        for (int jj = 0; jj < JG; jj++)
            if (pass * JG + jj < NT) {
                const float *a = acc[pass * JG + jj];
                red[jj * C::THREADS + threadIdx.x] = make_float4(a[0], a[1], a[2], a[3]);
            }
        /* An item: (e, slot, jj) of it; this thread's first one's scales and residual values
         * are fetched while the cluster barrier completes. */
        int tiles = min(JG, NT - pass * JG), items = tiles * C::THREADS * 2;
        auto item = [&](int it, int &e, int &slot, int &jj, int &col) {
            e = it & 1;
            slot = (it >> 1) % C::THREADS;
            jj = (it >> 1) / C::THREADS;
            col = 8 * (pass * JG + jj) + 2 * (slot % 32 % 4) + e;
        };
        const int it0 = rank * C::THREADS + (int)threadIdx.x;
        mma_out o0;
        if (it0 < items) {
            int e, slot, jj, col;
            item(it0, e, slot, jj, col);
            mma_fetch_scales<FMT, EPI>(o0, scales, blk * C::WARPS + slot / 32, slot % 32 / 4, out);
            mma_fetch_y<ACC, EPI>(o0, y, blk * C::WARPS + slot / 32, slot % 32 / 4, col, n, out);
        }
        cluster.sync();
        for (int it = it0; it < items; it += ranks * C::THREADS) {
            int e, slot, jj, col;
            item(it, e, slot, jj, col);
            int sl = slot % 32, mt_i = blk * C::WARPS + slot / 32;
            int off = (jj * C::THREADS + slot) * 4 + e; /* float index of lo in red */
            mma_out o = o0;
            if (it != it0) {
                mma_fetch_scales<FMT, EPI>(o, scales, mt_i, sl / 4, out);
                mma_fetch_y<ACC, EPI>(o, y, mt_i, sl / 4, col, n, out);
            }
            float lo = 0.f, hi = 0.f, ss = 0.f;
#pragma unroll
            for (int r = 0; r < MMA_MAX_CLUSTER; r++)
                if (r < ranks) {
                    const float *rr = cluster.map_shared_rank((const float *)red, r);
                    lo += rr[off];
                    hi += rr[off + 2];
                    if (PRE == ENG_PRE_RMSNORM && col < n)
                        ss += cluster.map_shared_rank((const float *)s_ss, r)[col];
                }
            float rms = 1.f;
            if (PRE == ENG_PRE_RMSNORM && col < n) rms = rsqrtf(ss / (float)in + eps);
            mma_store2<ACC, EPI>(y, o, lo, hi, mt_i, sl / 4, col, n, out, rms);
        }
    }
    cluster.sync(); /* keep this block's shared memory alive until every rank has read it */
    trace_end();
}

/* Expands an int8/int4 weight to bf16 [out, in] for the cuBLAS path. */
__global__ void k_dequant_bf16(__nv_bfloat16 *dst, const void *w, const float *scales, int fmt,
                               int out, int in, int group) {
    size_t n = (size_t)out * in;
    int ngroups = group ? (in + group - 1) / group : 1;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int row = (int)(i / in), k = (int)(i % in);
        float v;
        if (fmt == ENG_W_I8) {
            v = (float)((const int8_t *)w)[i] * scales[row];
        } else {
            uint8_t byte = ((const uint8_t *)w)[(size_t)row * ((in + 1) / 2) + k / 2];
            int q = (int)((k & 1) ? (byte >> 4) : (byte & 15)) - 8;
            v = (float)q * scales[(size_t)row * ngroups + k / group];
        }
        dst[i] = __float2bfloat16_rn(v);
    }
}

/* Two floats as a bf16 pair (lo in the low half), rounded to nearest. */
__device__ __forceinline__ uint32_t bf16_pair(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}

/* The same expansion as k_dequant_bf16 (same products, same rounding), one 16-byte chunk of
 * weights per thread: 16 int8 values (one row scale) or 32 int4 values (one group scale, as
 * group % 32 == 0), written as 32 or 64 bytes of bf16. No division per element: the cuBLAS path
 * expands every int8/int4 weight each call, so this runs at copy speed instead of ~3x slower. */
template <int FMT>
__global__ void k_dequant_bf16_vec(uint4 *dst, const uint4 *w, const float *scales,
                                   unsigned chunks_per_row, unsigned nchunks, int ngroups,
                                   int group) {
    unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= nchunks) return;
    unsigned row = c / chunks_per_row;
    uint4 q = __ldg(w + c);
    uint32_t words[4] = {q.x, q.y, q.z, q.w};
    if (FMT == ENG_W_I8) {
        float sc = __ldg(scales + row);
        uint32_t o[8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float v[4];
#pragma unroll
            for (int b = 0; b < 4; b++) v[b] = (float)(int8_t)(words[i] >> (8 * b)) * sc;
            o[2 * i] = bf16_pair(v[0], v[1]);
            o[2 * i + 1] = bf16_pair(v[2], v[3]);
        }
        dst[2 * (size_t)c] = make_uint4(o[0], o[1], o[2], o[3]);
        dst[2 * (size_t)c + 1] = make_uint4(o[4], o[5], o[6], o[7]);
    } else {
        unsigned k0 = (c - row * chunks_per_row) * 32u;
        float sc = __ldg(scales + (size_t)row * ngroups + k0 / (unsigned)group);
        uint32_t o[16];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int b = 0; b < 4; b++) { /* byte b of word i: values 2j (low), 2j+1 (high) */
                uint32_t byte = (words[i] >> (8 * b)) & 0xffu;
                o[4 * i + b] = bf16_pair((float)((int)(byte & 15u) - 8) * sc,
                                         (float)((int)(byte >> 4) - 8) * sc);
            }
#pragma unroll
        for (int u = 0; u < 4; u++)
            dst[4 * (size_t)c + u] = make_uint4(o[4 * u], o[4 * u + 1], o[4 * u + 2], o[4 * u + 3]);
    }
}

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

/* Threads per block: enough 16-byte chunks for each (at most `most`, at least a warp). */
static int gemv_threads(int chunks, int most) {
    int t = chunks < most ? chunks : most;
    t = (t + 31) / 32 * 32;
    return t < 32 ? 32 : t;
}


/* Rows of W per block: more rows reuse each x load more often, fewer give small matrices
 * enough blocks to keep every SM streaming. */
template <int FMT> struct rows_per_block { static constexpr int big = FMT == ENG_W_BF16 ? 4 : 8; };

template <int FMT, int NR, int R, int PRE, int ACC, int EPI, int RG = 1>
static cudaError_t launch_k(const lin_set *set, const float *x, const float *norm, float eps,
                            cudaStream_t st) {
    const eng_weight *w = set->w[0];
    int64_t blocks;
    lin_segs segs = make_segs(set, EPI, 1, EPI ? R / 2 : R, &blocks);
    int threads = RG * gemv_threads((int)w->in / wload<FMT>::vals, GEMV_THREADS_FOR(FMT));
    cudaLaunchAttribute attr[2];
    cudaLaunchConfig_t cfg =
        pdl_cluster_config(dim3((unsigned)blocks), dim3((unsigned)threads), 0, st, attr, 1);
    return cudaLaunchKernelEx(&cfg, k_gemv<FMT, NR, R, PRE, ACC, EPI, RG>, segs, x, (int)w->in,
                              w->group, norm, eps);
}

/* Row groups of a block (k_gemv's RG) at one or two rows of x: as many as make the block the
 * format's thread budget (256 for int8 / int4: 2 groups at int8, 4 at int4 for in = 2048) when
 * the grid fits the SMs at two blocks each (the decoder's 2048 x 2048 products at 8 rows a
 * block: o_proj, cross q and cross o), else 1. Once the kernel in front is done, such a block
 * has work for 256 threads instead of 128 (int8). More blocks than that (q/k/v, the logits) keep 1: their 128-thread blocks
 * fit three an SM while the kernel in front still runs, so their weights are loaded before it
 * ends (docs/perf-notes.md, session 10). VOXQ_CUDA_GEMV_RG = 1, 2 or 4 (read once, A/B timing)
 * forces one count for every launch; never more than 512 threads a block. */
template <int FMT, int NR, int R, int PRE, int ACC, int EPI>
static cudaError_t launch_rg(const lin_set *set, const float *x, const float *norm, float eps,
                             cudaStream_t st) {
    static int forced = -1, sms;
    if (forced < 0) {
        forced = (int)cuda_env_knob("VOXQ_CUDA_GEMV_RG", 0, 0, 4);
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            sms = 0;
    }
    int64_t blocks = 0;
    for (int i = 0; i < set->count; i++) /* as make_segs counts them */
        blocks += ((EPI ? set->w[i]->out / 2 : set->w[i]->out) + (EPI ? R / 2 : R) - 1) /
                  (EPI ? R / 2 : R);
    int tpg = gemv_threads((int)set->w[0]->in / wload<FMT>::vals, GEMV_THREADS_FOR(FMT));
    int rg = forced ? forced : blocks <= 2 * (int64_t)sms ? GEMV_THREADS_FOR(FMT) / tpg : 1;
    if (rg > 4) rg = 4;
    while (rg > 1 && (tpg * rg > GEMV_MAX_THREADS || R % rg)) rg /= 2;
    if (NR <= 2 && rg == 4) return launch_k<FMT, NR, R, PRE, ACC, EPI, (R % 4 ? 1 : 4)>(set, x, norm, eps, st);
    if (NR <= 2 && rg == 2) return launch_k<FMT, NR, R, PRE, ACC, EPI, (R % 2 ? 1 : 2)>(set, x, norm, eps, st);
    return launch_k<FMT, NR, R, PRE, ACC, EPI>(set, x, norm, eps, st);
}

/* Rows of W a k_gemv block owns for an integer format: 8 (RB), or VOXQ_CUDA_GEMV_ROWS = 2 or 4
 * read once (A/B timing). 8 whatever the matrix: in a decoder step the whole of a 2048 x 2048
 * weight is then in registers before its kernel waits on the one before (256 blocks, all
 * resident; 256 threads each since session 10's row groups); at 2 rows (1,024 blocks, the bf16 rule) int8 one sequence ran 983-989
 * steps/s, at 4 rows 1,055-1,065, at 8 rows 1,076-1,081 (H200, one call, session 8). */
static int gemv_int_rows(void) {
    static int r = -1;
    if (r < 0) {
        r = (int)cuda_env_knob("VOXQ_CUDA_GEMV_ROWS", 8, 2, 8);
        if (r != 2 && r != 4) r = 8;
    }
    return r;
}

/* R from the rows of the whole set (a q/k/v group launches as one matrix of their rows). */
template <int FMT, int NR, int PRE, int ACC, int EPI>
static cudaError_t launch_fmt(const lin_set *set, const float *x, const float *norm, float eps,
                              cudaStream_t st) {
    constexpr int RB = rows_per_block<FMT>::big;
    if (FMT != ENG_W_BF16) {
        int r = gemv_int_rows();
        if (r == 4) return launch_k<FMT, NR, 4, PRE, ACC, EPI>(set, x, norm, eps, st);
        if (r == 2) return launch_k<FMT, NR, 2, PRE, ACC, EPI>(set, x, norm, eps, st);
        return launch_rg<FMT, NR, RB, PRE, ACC, EPI>(set, x, norm, eps, st);
    }
    int64_t out = 0;
    for (int i = 0; i < set->count; i++) out += set->w[i]->out;
    if (out / RB >= 264) return launch_rg<FMT, NR, RB, PRE, ACC, EPI>(set, x, norm, eps, st);
    return launch_k<FMT, NR, 2, PRE, ACC, EPI>(set, x, norm, eps, st);
}

template <int NR, int PRE, int ACC, int EPI>
static cudaError_t launch_pre(const lin_set *set, const float *x, const float *norm, float eps,
                              cudaStream_t st) {
    switch (set->w[0]->fmt) {
    case ENG_W_BF16: return launch_fmt<ENG_W_BF16, NR, PRE, ACC, EPI>(set, x, norm, eps, st);
    case ENG_W_I8: return launch_fmt<ENG_W_I8, NR, PRE, ACC, EPI>(set, x, norm, eps, st);
    default: return launch_fmt<ENG_W_I4, NR, PRE, ACC, EPI>(set, x, norm, eps, st);
    }
}

/* Picks the template for the fused variant. The combinations the decoder uses are instantiated:
 * plain, norm, norm + silu epilogue (gate_up), residual, silu prologue + residual, norm +
 * residual; anything else is composed by cuda_linear_ex. */
template <int NR>
static cudaError_t launch_gemv(const lin_set *set, const float *x, int pre, int acc, int post,
                               const float *norm, float eps, cudaStream_t st) {
    if (post == ENG_POST_SILU_MUL)
        return launch_pre<NR, ENG_PRE_RMSNORM, 0, 1>(set, x, norm, eps, st);
    if (pre == ENG_PRE_RMSNORM)
        return acc ? launch_pre<NR, ENG_PRE_RMSNORM, 1, 0>(set, x, norm, eps, st)
                   : launch_pre<NR, ENG_PRE_RMSNORM, 0, 0>(set, x, norm, eps, st);
    if (pre == ENG_PRE_SILU_MUL)
        return launch_pre<NR, ENG_PRE_SILU_MUL, 1, 0>(set, x, norm, eps, st);
    return acc ? launch_pre<NR, ENG_PRE_NONE, 1, 0>(set, x, norm, eps, st)
               : launch_pre<NR, ENG_PRE_NONE, 0, 0>(set, x, norm, eps, st);
}

static int vector_path_ok(const eng_weight *w) {
    switch (w->fmt) {
    case ENG_W_BF16: return w->in % 8 == 0;
    case ENG_W_I8: return w->in % 16 == 0;
    case ENG_W_I4: return w->in % 32 == 0 && w->group % 32 == 0;
    default: return 0;
    }
}

/* Scratch the cuBLAS path needs for a weight and up to GEMM_RESERVE_ROWS rows of x: reserved when
 * the weight is loaded, so a product recorded into a step graph never has to allocate. */
#define GEMM_RESERVE_ROWS 256
static size_t gemm_scratch_bytes(const eng_weight *w, int64_t n) {
    size_t xb = ((size_t)n * (size_t)w->in * 2 + 255) / 256 * 256;
    return xb + (w->fmt != ENG_W_BF16 ? (size_t)w->out * (size_t)w->in * 2 : 0);
}

int cuda_linear_reserve(eng_backend *be, const eng_weight *w) {
    void *p = NULL;
    return cuda_scratch(be, gemm_scratch_bytes(w, GEMM_RESERVE_ROWS), &p);
}

static int gemm_cublas(eng_backend *be, float *y, const float *x, const eng_weight *w, int n) {
    cuda_impl *c = cuda_of(be);
    size_t xel = (size_t)n * w->in;
    int needs_w = w->fmt != ENG_W_BF16;
    void *scratch = NULL;
    int rc = cuda_scratch(be, gemm_scratch_bytes(w, n), &scratch);
    if (rc) return rc;
    __nv_bfloat16 *xb = (__nv_bfloat16 *)scratch;
    __nv_bfloat16 *wb = (__nv_bfloat16 *)w->data;
    k_to_bf16<<<512, 256, 0, c->stream>>>(xb, x, xel);
    CU_LAUNCHED(be);
    if (needs_w) {
        wb = (__nv_bfloat16 *)((char *)scratch + ((xel * 2 + 255) / 256) * 256);
        size_t vals = w->fmt == ENG_W_I8 ? 16 : 32, total = (size_t)w->out * (size_t)w->in;
        int vec = w->in % (int64_t)vals == 0 && total / vals < (1u << 31) &&
                  (w->fmt == ENG_W_I8 || (w->group > 0 && w->group % 32 == 0));
        if (vec) {
            unsigned cpr = (unsigned)(w->in / (int64_t)vals), nch = (unsigned)(total / vals);
            int ngroups = w->fmt == ENG_W_I4 ? (int)((w->in + w->group - 1) / w->group) : 1;
            unsigned blocks = (nch + 255) / 256;
            if (w->fmt == ENG_W_I8)
                k_dequant_bf16_vec<ENG_W_I8><<<blocks, 256, 0, c->stream>>>(
                    (uint4 *)wb, (const uint4 *)w->data, w->scales, cpr, nch, ngroups, w->group);
            else
                k_dequant_bf16_vec<ENG_W_I4><<<blocks, 256, 0, c->stream>>>(
                    (uint4 *)wb, (const uint4 *)w->data, w->scales, cpr, nch, ngroups, w->group);
        } else {
            k_dequant_bf16<<<1024, 256, 0, c->stream>>>(wb, w->data, w->scales, w->fmt,
                                                        (int)w->out, (int)w->in, w->group);
        }
        CU_LAUNCHED(be);
    }
    const float one = 1.f, zero = 0.f;
    CUBLAS_CHECK(be, cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->out, n, (int)w->in,
                                  &one, wb, CUDA_R_16BF, (int)w->in, xb, CUDA_R_16BF, (int)w->in,
                                  &zero, y, CUDA_R_32F, (int)w->out, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* Runs the small-n kernels over x in slices of 8, 4, 2 and 1 rows (decoding uses even row
 * counts; the model pads to power-of-two buckets). */
static int gemv_rows(eng_backend *be, const lin_set *set, const float *xp, int64_t n, int pre,
                     int acc, int post, const float *norm, float eps) {
    cudaStream_t st = cuda_of(be)->stream;
    int64_t xin = pre == ENG_PRE_SILU_MUL ? 2 * set->w[0]->in : set->w[0]->in;
    for (int64_t r0 = 0; r0 < n;) {
        int64_t left = n - r0;
        int m = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        const float *xr = xp + r0 * xin;
        lin_set rows = *set; /* the same weights, y from row r0 */
        for (int i = 0; i < set->count; i++)
            rows.y[i] = set->y[i] +
                        r0 * (post == ENG_POST_SILU_MUL ? set->w[i]->out / 2 : set->w[i]->out);
        cudaError_t e;
        switch (m) {
        case 8: e = launch_gemv<8>(&rows, xr, pre, acc, post, norm, eps, st); break;
        case 4: e = launch_gemv<4>(&rows, xr, pre, acc, post, norm, eps, st); break;
        case 2: e = launch_gemv<2>(&rows, xr, pre, acc, post, norm, eps, st); break;
        default: e = launch_gemv<1>(&rows, xr, pre, acc, post, norm, eps, st); break;
        }
        if (e != cudaSuccess)
            return eng_backend_fail(be, ENG_EDEVICE, "linear: launch: %s", cudaGetErrorString(e));
        r0 += m;
    }
    return 0;
}

/* VOXQ_CUDA_GEMV_OLD=1 (read once) turns the tensor-core path off: n <= 16 then takes k_gemv and
 * larger n cuBLAS, as before it existed (A/B timing). */
static int gemv_old(void) {
    static int old = -1;
    if (old < 0) old = cuda_env_knob("VOXQ_CUDA_GEMV_OLD", 0, 0, 1) != 0;
    return old;
}

/* Fewest rows an int8 / int4 product takes the tensor-core kernel at: int8 3, int4 1, or
 * VOXQ_CUDA_MMA_INT8_MIN_ROWS / VOXQ_CUDA_MMA_INT4_MIN_ROWS read once (A/B timing; tests/cuda
 * reads them too, for its tolerances). int8 at 1-2 rows (one sequence with CFG) takes the FFMA
 * GEMV: its whole weight is in registers before it waits (8 rows a block, above), one sequence
 * 1,076-1,081 steps/s against 957-960 through k_mma (H200, session 8; in session 2, before
 * programmatic dependent launch covered every kernel, k_mma had been the faster, 1.167 vs
 * 1.237 ms a step). int4 stays on k_mma: through the GEMV one sequence ran 711-835 steps/s
 * against 1,007-1,016. */
static int mma_min_rows(eng_wfmt fmt) {
    static int i8, i4;
    if (!i8) {
        i8 = (int)cuda_env_knob("VOXQ_CUDA_MMA_INT8_MIN_ROWS", 3, 1, 65);
        i4 = (int)cuda_env_knob("VOXQ_CUDA_MMA_INT4_MIN_ROWS", 1, 1, 65);
    }
    return fmt == ENG_W_I8 ? i8 : i4;
}

/* Most rows an int8 / int4 product takes the tensor-core kernel at (more go to cuBLAS after
 * expanding the weight to bf16): 64 / 64, or VOXQ_CUDA_MMA_INT8_MAX_ROWS /
 * VOXQ_CUDA_MMA_INT4_MAX_ROWS read once (A/B timing). With the vectorized expansion, 128 rows
 * run faster through cuBLAS for both (H200 weights-only step: int8 2.96 vs ~5.7 ms, int4 3.52
 * vs 5.71 ms), 32 rows through k_mma (int8 1.60 vs 2.63 ms). */
static int mma_max_rows(eng_wfmt fmt) {
    static int i8 = -1, i4 = -1;
    if (i8 < 0) {
        i8 = (int)cuda_env_knob("VOXQ_CUDA_MMA_INT8_MAX_ROWS", 64, 0, 128);
        i4 = (int)cuda_env_knob("VOXQ_CUDA_MMA_INT4_MAX_ROWS", 64, 0, 128);
    }
    return fmt == ENG_W_I8 ? i8 : i4;
}

/* Where the tensor-core kernel is the faster one, measured on an H200 (bench_cuda_gemv, the
 * decoder's weights in one graph, and voxq-bench steps; docs/perf-notes.md, session 2): bf16
 * from 3 to 16 rows (at 2 rows the FFMA GEMV streams at 3.1 TB/s, at 32 cuBLAS wins), int8 and
 * int4 up to 64 rows (1 sequence int4: 0.79 vs 1.71 ms; at 128 rows cuBLAS, see above). */
static int mma_path_ok(const eng_weight *w, int64_t n) {
    if (gemv_old() || n < 1 || n > MMA_MAX_ROWS || w->out < 1) return 0;
    switch (w->fmt) {
    case ENG_W_BF16: return n > 2 && n <= 16 && w->in % 32 == 0;
    case ENG_W_I8: return n >= mma_min_rows(ENG_W_I8) && n <= mma_max_rows(ENG_W_I8) &&
                          w->in % 64 == 0;
    case ENG_W_I4: return n >= mma_min_rows(ENG_W_I4) && n <= mma_max_rows(ENG_W_I4) &&
                          w->in % 128 == 0 && w->group > 0 &&
                          w->group % 128 == 0;
    default: return 0;
    }
}

/* Grid of k_mma: one block per WARPS m-tiles along x; along y the k-steps split into up to
 * MMA_MAX_CLUSTER blocks of one cluster, enough that small matrices still fill the GPU. */
template <int FMT, int NT, int PRE, int ACC, int EPI>
static cudaError_t launch_mma_k(const lin_set *set, const float *x, int n, const float *norm,
                                float eps, cudaStream_t st) {
    const eng_weight *w = set->w[0];
    constexpr int WARPS = mma_cfg<FMT, NT>::WARPS;
    int64_t mblocks; /* m-tiles of 16 rows (epilogue: 8 gate + 8 up rows), WARPS a block */
    lin_segs segs = make_segs(set, EPI, EPI ? 8 : 16, WARPS, &mblocks);
    int steps = (int)(w->in / mma_cfg<FMT, NT>::KW);
    int per, split = split_k(mma_target_blocks(), mblocks, MMA_MAX_CLUSTER, steps, &per);
    cudaLaunchAttribute attr[2];
    cudaLaunchConfig_t cfg = pdl_cluster_config(dim3((unsigned)mblocks, (unsigned)split),
                                                dim3(WARPS * 32), 0, st, attr, split);
    return cudaLaunchKernelEx(&cfg, k_mma<FMT, NT, PRE, ACC, EPI>, segs, x, n, (int)w->in,
                              w->group, norm, eps, per);
}

template <int FMT, int PRE, int ACC, int EPI>
static cudaError_t launch_mma_nt(const lin_set *set, const float *x, int n, const float *norm,
                                 float eps, cudaStream_t st) {
    if (n <= 8) return launch_mma_k<FMT, 1, PRE, ACC, EPI>(set, x, n, norm, eps, st);
    if (n <= 16) return launch_mma_k<FMT, 2, PRE, ACC, EPI>(set, x, n, norm, eps, st);
    if (n <= 32) return launch_mma_k<FMT, 4, PRE, ACC, EPI>(set, x, n, norm, eps, st);
    if (n <= 64) return launch_mma_k<FMT, 8, PRE, ACC, EPI>(set, x, n, norm, eps, st);
    return launch_mma_k<FMT, 16, PRE, ACC, EPI>(set, x, n, norm, eps, st);
}

template <int PRE, int ACC, int EPI>
static cudaError_t launch_mma_fmt(const lin_set *set, const float *x, int n, const float *norm,
                                  float eps, cudaStream_t st) {
    switch (set->w[0]->fmt) {
    case ENG_W_BF16: return launch_mma_nt<ENG_W_BF16, PRE, ACC, EPI>(set, x, n, norm, eps, st);
    case ENG_W_I8: return launch_mma_nt<ENG_W_I8, PRE, ACC, EPI>(set, x, n, norm, eps, st);
    default: return launch_mma_nt<ENG_W_I4, PRE, ACC, EPI>(set, x, n, norm, eps, st);
    }
}

/* The tensor-core product for the same fused combinations as launch_gemv. */
static int linear_mma(eng_backend *be, const lin_set *set, const float *x, int64_t n, int pre,
                      int acc, int post, const float *norm, float eps) {
    cudaStream_t st = cuda_of(be)->stream;
    int rows = (int)n;
    cudaError_t e;
    if (post == ENG_POST_SILU_MUL)
        e = launch_mma_fmt<ENG_PRE_RMSNORM, 0, 1>(set, x, rows, norm, eps, st);
    else if (pre == ENG_PRE_RMSNORM)
        e = acc ? launch_mma_fmt<ENG_PRE_RMSNORM, 1, 0>(set, x, rows, norm, eps, st)
                : launch_mma_fmt<ENG_PRE_RMSNORM, 0, 0>(set, x, rows, norm, eps, st);
    else if (pre == ENG_PRE_SILU_MUL)
        e = launch_mma_fmt<ENG_PRE_SILU_MUL, 1, 0>(set, x, rows, norm, eps, st);
    else
        e = acc ? launch_mma_fmt<ENG_PRE_NONE, 1, 0>(set, x, rows, norm, eps, st)
                : launch_mma_fmt<ENG_PRE_NONE, 0, 0>(set, x, rows, norm, eps, st);
    if (e != cudaSuccess)
        return eng_backend_fail(be, ENG_EDEVICE, "linear: launch: %s", cudaGetErrorString(e));
    return 0;
}

static int check_linear_args(eng_backend *be, const eng_tensor *y, const eng_tensor *x,
                             const eng_weight *w, int64_t xin) {
    int64_t n = x->shape[0];
    CUDA_REQUIRE(be, x->ndim >= 2 && x->dtype == ENG_DT_F32 && y->dtype == ENG_DT_F32, "linear",
                 "x and y must be F32 [n, features]");
    CUDA_REQUIRE(be, eng_numel(x) == n * xin && eng_numel(y) == n * w->out, "linear",
                 "x has %lld values, y %lld, for n=%lld and weight [%lld, %lld]",
                 (long long)eng_numel(x), (long long)eng_numel(y), (long long)n,
                 (long long)w->out, (long long)w->in);
    CUDA_REQUIRE(be, w->fmt == ENG_W_BF16 || w->fmt == ENG_W_I8 || w->fmt == ENG_W_I4, "linear",
                 "weight format %s is not loaded for CUDA", eng_wfmt_name(w->fmt));
    return 0;
}

int cuda_linear(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w) {
    int rc = check_linear_args(be, y, x, w, w->in);
    if (rc) return rc;
    int64_t n = x->shape[0];
    if (n == 0) return 0;
    const float *xp = (const float *)x->data;
    float *yp = (float *)y->data;
    lin_set set = lin_one(w, yp);
    if (mma_path_ok(w, n))
        return linear_mma(be, &set, xp, n, ENG_PRE_NONE, 0, ENG_POST_NONE, NULL, 0.f);
    if (cuda_wide_ok(w, n))
        return cuda_linear_wide(be, &set, xp, n, ENG_PRE_NONE, 0, ENG_POST_NONE, NULL, 0.f);
    if (n > 2 * GEMV_MAX_ROWS) return gemm_cublas(be, yp, xp, w, (int)n);
    if (!vector_path_ok(w)) {
        int blocks = (int)((w->out + GEMV_WARPS - 1) / GEMV_WARPS);
        k_gemv_any<<<blocks, GEMV_WARPS * 32, 0, cuda_of(be)->stream>>>(
            yp, xp, w->data, w->scales, w->fmt, (int)n, (int)w->out, (int)w->in, w->group);
        CU_LAUNCHED(be);
        return 0;
    }
    return gemv_rows(be, &set, xp, n, ENG_PRE_NONE, 0, ENG_POST_NONE, NULL, 0.f);
}

/* Fused where the small-n kernels apply (the instantiated combinations); otherwise composed of
 * the plain ops through the caller's scratch. */
int cuda_linear_ex(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w,
                   const eng_linear_args *a) {
    int64_t n = x->shape[0];
    int post = a->post;
    int combo_ok = post == ENG_POST_SILU_MUL
                       ? a->pre == ENG_PRE_RMSNORM && !a->accumulate && w->out % 2 == 0
                       : !(a->pre == ENG_PRE_SILU_MUL && !a->accumulate);
    int mma = mma_path_ok(w, n), wide = !mma && cuda_wide_ok(w, n);
    int fused = combo_ok && (mma || wide || (n <= 2 * GEMV_MAX_ROWS && vector_path_ok(w))) &&
                (a->pre != ENG_PRE_RMSNORM || (a->norm && eng_numel(a->norm) == w->in));
    if (!fused) {
        const eng_tensor *in = x;
        int rc;
        if (a->pre != ENG_PRE_NONE) {
            CUDA_REQUIRE(be, a->tmp_in != NULL, "linear_ex", "pre-op needs tmp_in scratch");
            rc = a->pre == ENG_PRE_RMSNORM ? cuda_rmsnorm(be, a->tmp_in, x, a->norm, a->eps)
                                           : cuda_silu_mul(be, a->tmp_in, x);
            if (rc) return rc;
            in = a->tmp_in;
        }
        if (post == ENG_POST_SILU_MUL) {
            CUDA_REQUIRE(be, a->tmp_out != NULL && !a->accumulate, "linear_ex",
                         "the silu epilogue needs tmp_out scratch and no accumulate");
            rc = cuda_linear(be, a->tmp_out, in, w);
            return rc ? rc : cuda_silu_mul(be, y, a->tmp_out);
        }
        if (!a->accumulate) return cuda_linear(be, y, in, w);
        CUDA_REQUIRE(be, a->tmp_out != NULL, "linear_ex", "accumulate needs tmp_out scratch");
        rc = cuda_linear(be, a->tmp_out, in, w);
        return rc ? rc : cuda_add(be, y, a->tmp_out);
    }
    int64_t xin = a->pre == ENG_PRE_SILU_MUL ? 2 * w->in : w->in;
    int64_t yout = post == ENG_POST_SILU_MUL ? w->out / 2 : w->out;
    CUDA_REQUIRE(be, x->dtype == ENG_DT_F32 && y->dtype == ENG_DT_F32 &&
                         eng_numel(x) == n * xin && eng_numel(y) == n * yout,
                 "linear_ex", "x has %lld values, y %lld, for n=%lld and weight [%lld, %lld]",
                 (long long)eng_numel(x), (long long)eng_numel(y), (long long)n,
                 (long long)w->out, (long long)w->in);
    if (n == 0) return 0;
    const float *norm = a->pre == ENG_PRE_RMSNORM ? (const float *)a->norm->data : NULL;
    lin_set set = lin_one(w, (float *)y->data);
    if (mma)
        return linear_mma(be, &set, (const float *)x->data, n, a->pre, a->accumulate, post, norm,
                          a->eps);
    if (wide)
        return cuda_linear_wide(be, &set, (const float *)x->data, n, a->pre, a->accumulate, post,
                                norm, a->eps);
    return gemv_rows(be, &set, (const float *)x->data, n, a->pre, a->accumulate, post, norm,
                     a->eps);
}

/* y[i] = pre(x) . W[i]^T (pre: none or the norm) in one launch per LIN_MAX_SEGS weights when
 * they share format, in and group and the rows take k_mma or k_gemv: the kernel's grid covers
 * every weight's row blocks back to back. Otherwise the prologue runs once into a->tmp_in and
 * the plain products follow (cuBLAS row counts), or, when the weights differ, each goes through
 * cuda_linear_ex. */
int cuda_linear_group(eng_backend *be, int count, eng_tensor *const *y, const eng_tensor *x,
                      const eng_weight *const *w, const eng_linear_args *a) {
    CUDA_REQUIRE(be, count >= 0 && (count == 0 || (y && w && a)), "linear_group",
                 "count %d with missing outputs, weights or args", count);
    if (count == 0) return 0;
    int64_t n = x->shape[0];
    const eng_weight *w0 = w[0];
    int same = a->pre != ENG_PRE_SILU_MUL;
    for (int i = 0; i < count && same; i++)
        same = w[i]->fmt == w0->fmt && w[i]->in == w0->in && w[i]->group == w0->group &&
               w[i]->out >= 1;
    if (!same) {
        eng_linear_args one = *a;
        one.accumulate = 0;
        one.post = ENG_POST_NONE;
        for (int i = 0; i < count; i++) {
            int rc = cuda_linear_ex(be, y[i], x, w[i], &one);
            if (rc) return rc;
        }
        return 0;
    }
    int mma = mma_path_ok(w0, n), wide = !mma && cuda_wide_ok(w0, n);
    int fused = (mma || wide || (n <= 2 * GEMV_MAX_ROWS && vector_path_ok(w0))) &&
                (a->pre != ENG_PRE_RMSNORM || (a->norm && eng_numel(a->norm) == w0->in));
    if (!fused) {
        const eng_tensor *in = x;
        if (a->pre == ENG_PRE_RMSNORM) {
            CUDA_REQUIRE(be, a->tmp_in != NULL, "linear_group", "pre-op needs tmp_in scratch");
            int rc = cuda_rmsnorm(be, a->tmp_in, x, a->norm, a->eps);
            if (rc) return rc;
            in = a->tmp_in;
        }
        for (int i = 0; i < count; i++) {
            int rc = cuda_linear(be, y[i], in, w[i]);
            if (rc) return rc;
        }
        return 0;
    }
    CUDA_REQUIRE(be, x->dtype == ENG_DT_F32 && eng_numel(x) == n * w0->in, "linear_group",
                 "x must be F32 [n, %lld]", (long long)w0->in);
    for (int i = 0; i < count; i++)
        CUDA_REQUIRE(be, y[i]->dtype == ENG_DT_F32 && eng_numel(y[i]) == n * w[i]->out,
                     "linear_group", "y[%d] has %lld values for n=%lld and weight [%lld, %lld]",
                     i, (long long)eng_numel(y[i]), (long long)n, (long long)w[i]->out,
                     (long long)w[i]->in);
    if (n == 0) return 0;
    const float *norm = a->pre == ENG_PRE_RMSNORM ? (const float *)a->norm->data : NULL;
    const float *xp = (const float *)x->data;
    for (int i0 = 0; i0 < count; i0 += LIN_MAX_SEGS) {
        lin_set set;
        memset(&set, 0, sizeof set);
        set.count = count - i0 < LIN_MAX_SEGS ? count - i0 : LIN_MAX_SEGS;
        for (int i = 0; i < set.count; i++) {
            set.w[i] = w[i0 + i];
            set.y[i] = (float *)y[i0 + i]->data;
        }
        int rc = mma    ? linear_mma(be, &set, xp, n, a->pre, 0, ENG_POST_NONE, norm, a->eps)
                 : wide ? cuda_linear_wide(be, &set, xp, n, a->pre, 0, ENG_POST_NONE, norm, a->eps)
                        : gemv_rows(be, &set, xp, n, a->pre, 0, ENG_POST_NONE, norm, a->eps);
        if (rc) return rc;
    }
    return 0;
}
