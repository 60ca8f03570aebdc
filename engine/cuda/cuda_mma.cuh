/* cuda_mma.cuh - pieces shared by the tensor-core products (cuda_linear.cu: k_mma for up to 128
 * rows streaming weights through registers; cuda_linear_wide.cu: k_wide, a pipelined tile GEMM
 * for 65-128 rows): the segment table of one launch, the per-format dequantization into bf16
 * pairs (the k permutation is described above k_mma), the mma.sync wrapper. */
#ifndef VOXQ_CUDA_MMA_CUH
#define VOXQ_CUDA_MMA_CUH

#include <limits.h>
#include <string.h>

#include "engine/cuda/cuda_internal.h"

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void load8(const float *x, float *f) {
    float4 a = __ldg((const float4 *)x), b = __ldg((const float4 *)(x + 4));
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

/* The weights of one launch: up to LIN_MAX_SEGS weights of one format, `in` and group that share
 * x (q, k and v of one attention), their row blocks back to back along blockIdx.x. A segment
 * starts at block block0; unused segments have block0 = INT_MAX. Passed by value (kernel
 * parameter space), so finding a block's segment is a few uniform selects, no memory access. */
#define LIN_MAX_SEGS 4
struct lin_seg {
    const uint4 *w;       /* [out, in] rows of the format */
    const float *scales;  /* int8: [out]; int4: [out, in / group]; bf16: unused */
    float *y;             /* [n, out] (silu epilogue: [n, out / 2]) */
    int out;              /* rows of w */
    int block0;           /* first blockIdx.x of this weight */
};
struct lin_segs {
    lin_seg s[LIN_MAX_SEGS];
    unsigned long long *trace; /* cuda_block_trace (debug; NULL: off) */
    unsigned trace_cap;
};

/* The segment of block blk; blk becomes the block's index inside it. */
__device__ __forceinline__ lin_seg seg_of(const lin_segs &segs, int &blk) {
    lin_seg sg = segs.s[0];
#pragma unroll
    for (int i = 1; i < LIN_MAX_SEGS; i++)
        if (blk >= segs.s[i].block0) sg = segs.s[i];
    blk -= sg.block0;
    return sg;
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    int bytes = valid ? 16 : 0; /* 0: the 16 bytes are zero-filled, nothing is read */
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/* Lets kernel k use `bytes` of dynamic shared memory. The opt-in is per device: once for each of
 * the first 32 devices the process uses (bit d of *done), every launch past them (not a stream
 * operation, so allowed in capture). */
template <typename K>
static inline cudaError_t smem_optin(K *k, int bytes, unsigned *done) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    if (dev < 32 && ((__atomic_load_n(done, __ATOMIC_RELAXED) >> dev) & 1u)) return cudaSuccess;
    e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess && dev < 32) __atomic_fetch_or(done, 1u << dev, __ATOMIC_RELAXED);
    return e;
}

/* One 16-byte weight load as PAIRS = V / 2 bf16x2 registers, in the pair order the k
 * permutation above k_mma (cuda_linear.cu) describes; PAD: bf16 added to a staged column of x so
 * a quarter warp's B reads fall in different banks. */
template <int FMT> struct mma_fmt;
template <> struct mma_fmt<ENG_W_BF16> {
    static constexpr int V = 8, PAD = 32; /* pad: row stride = 64 bytes mod 128, no conflicts */
    static __device__ __forceinline__ void dequant(uint4 q, uint32_t *p) {
        p[0] = q.x; p[1] = q.y; p[2] = q.z; p[3] = q.w;
    }
};
/* int8 q in one bf16 pair per two bytes, exactly, with no float conversion: the low 7 bits m
 * under the exponent of 128 read as 128 + m; q = m for q >= 0 and m - 128 below, so one bf16x2
 * subtraction of 128 (sign bit clear) or 256 (set, 0x4380 = 0x4300 | 0x80) gives q. 8
 * instructions a 4 bytes (2 masks, 4 byte permutes, 2 subtractions). */
template <> struct mma_fmt<ENG_W_I8> {
    static constexpr int V = 16, PAD = 8;
    static __device__ __forceinline__ void dequant(uint4 q, uint32_t *p) {
        uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int m = 0; m < 4; m++) {
            uint32_t lo = w[m] & 0x7f7f7f7fu, hi = w[m] & 0x80808080u;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                uint32_t sel = h ? 0x4342u : 0x4140u; /* bytes 2h, 2h + 1 under 0x43 each */
                uint32_t a = __byte_perm(lo, 0x43434343u, sel);
                uint32_t c = __byte_perm(hi, 0x43434343u, sel);
                __nv_bfloat162 d = __hsub2(*(__nv_bfloat162 *)&a, *(__nv_bfloat162 *)&c);
                p[2 * m + h] = *(uint32_t *)&d;
            }
        }
    }
};
template <> struct mma_fmt<ENG_W_I4> {
    static constexpr int V = 32, PAD = 8;
    static __device__ __forceinline__ void dequant(uint4 q, uint32_t *p) {
        uint32_t w[4] = {q.x, q.y, q.z, q.w};
        const __nv_bfloat162 off = __halves2bfloat162(__ushort_as_bfloat16((unsigned short)0x4308),
                                                      __ushort_as_bfloat16((unsigned short)0x4308));
#pragma unroll
        for (int m = 0; m < 4; m++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t v = ((w[m] >> (4 * j)) & 0x000F000Fu) | 0x43004300u; /* 128 + nibble */
                __nv_bfloat162 h = __hsub2(*(__nv_bfloat162 *)&v, off);    /* nibble - 8 */
                p[4 * m + j] = *(uint32_t *)&h;
            }
    }
};

/* c += A (16 x 16, rows of W) . B (16 x 8, columns of x), bf16 in, f32 accumulate. */
__device__ __forceinline__ void mma_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&h;
}
/* Eight consecutive inputs as one 16-byte word of bf16 pairs in the staging order of FMT (the
 * pair order above k_mma): natural, or x0 x4 x1 x5 x2 x6 x3 x7 for int4. */
template <int FMT> __device__ __forceinline__ uint4 pack8_bf16(const float *v) {
    if (FMT == ENG_W_I4)
        return make_uint4(pack_bf16(v[0], v[4]), pack_bf16(v[1], v[5]), pack_bf16(v[2], v[6]),
                          pack_bf16(v[3], v[7]));
    return make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]),
                      pack_bf16(v[6], v[7]));
}

/* acc += one k-step of rows g (p_g) and g + 8 (p_g8), dequantized by mma_fmt, against the B
 * words b of one n-tile. int4: the k-step is one group, so its mmas go to a fresh fragment that
 * is scaled per row (sg, sg8) into acc. */
template <int FMT>
__device__ __forceinline__ void mma_kstep(float *acc, const uint32_t *p_g, const uint32_t *p_g8,
                                          float sg, float sg8, const uint32_t *b) {
    constexpr int PAIRS = mma_fmt<FMT>::V / 2;
    if (FMT == ENG_W_I4) {
        float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int i = 0; i < PAIRS / 2; i++)
            mma_bf16(part, p_g[2 * i], p_g8[2 * i], p_g[2 * i + 1], p_g8[2 * i + 1], b[2 * i],
                     b[2 * i + 1]);
        acc[0] = fmaf(part[0], sg, acc[0]);
        acc[1] = fmaf(part[1], sg, acc[1]);
        acc[2] = fmaf(part[2], sg8, acc[2]);
        acc[3] = fmaf(part[3], sg8, acc[3]);
    } else {
#pragma unroll
        for (int i = 0; i < PAIRS / 2; i++)
            mma_bf16(acc, p_g[2 * i], p_g8[2 * i], p_g[2 * i + 1], p_g8[2 * i + 1], b[2 * i],
                     b[2 * i + 1]);
    }
}

/* The host side of a launch: count (1..LIN_MAX_SEGS) weights of one format, in and group that
 * share x, and the output of each. */
typedef struct lin_set {
    int count;
    const eng_weight *w[LIN_MAX_SEGS];
    float *y[LIN_MAX_SEGS];
} lin_set;

static inline lin_set lin_one(const eng_weight *w, float *y) {
    lin_set set;
    memset(&set, 0, sizeof set);
    set.count = 1;
    set.w[0] = w;
    set.y[0] = y;
    return set;
}

/* The kernel's segment table for set: each weight gets ceil(units / per) blocks, where a unit is
 * `unit` output rows (the silu epilogue counts out / 2 rows: a gate row and its up row are one).
 * *blocks is the grid's x extent. */
static inline lin_segs make_segs(const lin_set *set, int epi, int unit, int per, int64_t *blocks) {
    lin_segs segs;
    memset(&segs, 0, sizeof segs);
    segs.trace = cuda_block_trace;
    segs.trace_cap = cuda_block_trace_cap;
    int64_t b = 0;
    for (int i = 0; i < LIN_MAX_SEGS; i++) {
        lin_seg *sg = &segs.s[i];
        if (i >= set->count) {
            sg->block0 = INT_MAX;
            continue;
        }
        const eng_weight *w = set->w[i];
        int64_t rows = epi ? w->out / 2 : w->out, units = (rows + unit - 1) / unit;
        sg->w = (const uint4 *)w->data;
        sg->scales = w->scales;
        sg->y = set->y[i];
        sg->out = (int)w->out;
        sg->block0 = (int)b;
        b += (units + per - 1) / per;
    }
    *blocks = b;
    return segs;
}

/* silu(gate) * up, the one expression every prologue and epilogue of the linear kernels uses. */
__device__ __forceinline__ float silu_mul(float gate, float up) {
    return gate / (1.f + __expf(-gate)) * up;
}

/* The k split of a launch of mblocks row blocks over `steps` k-steps: about `target` blocks in
 * all (rounded, not ceiled: a grid near the target keeps one block a column that streams all
 * of k rather than twice the blocks and a cluster reduction), at most max_cluster ranks of one
 * cluster, no rank without k-steps. *per: k-steps of a rank. */
static inline int split_k(int64_t target, int64_t mblocks, int max_cluster, int steps, int *per) {
    int64_t split = (target + mblocks / 2) / mblocks;
    if (split > max_cluster) split = max_cluster;
    if (split > steps) split = steps;
    if (split < 1) split = 1;
    *per = (int)((steps + split - 1) / split);
    return (steps + *per - 1) / *per;
}

/* A launch with programmatic dependent launch and, for split > 1, the split ranks of a row
 * block as one cluster along y. attr: room for two attributes, alive until the launch. */
static inline cudaLaunchConfig_t pdl_cluster_config(dim3 grid, dim3 block, size_t smem,
                                                    cudaStream_t st, cudaLaunchAttribute *attr,
                                                    int split) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    attr[1].id = cudaLaunchAttributeClusterDimension;
    attr[1].val.clusterDim.x = 1;
    attr[1].val.clusterDim.y = (unsigned)split;
    attr[1].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = split > 1 ? 2 : 1;
    return cfg;
}

/* cuda_linear_wide.cu: whether the wide tile GEMM takes n rows of x through w (65..128 rows by
 * default), and the product itself (the fused combinations of cuda_linear_ex, count weights of
 * one format, in and group sharing x). */
int cuda_wide_ok(const eng_weight *w, int64_t n);
int cuda_linear_wide(eng_backend *be, const lin_set *set, const float *x, int64_t n, int pre,
                     int acc, int post, const float *norm, float eps);

#endif /* VOXQ_CUDA_MMA_CUH */
