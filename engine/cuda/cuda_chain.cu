/* cuda_chain.cu - a chain of residual products at 1-4 rows of x in one launch (eng_chain; one
 * sequence with CFG is two rows): the decoder layer's "o_proj into x, then cross q of
 * rmsnorm(x)" and "cross o_proj into x, the MLP block, the next layer's q/k/v", with bf16, int8
 * or int4 weights.
 *
 * As separate products every stage pays a kernel boundary (~7 us a kernel at one sequence:
 * launch, one DRAM round trip before the first multiply, the tail), and a stage's weights
 * start streaming only when it starts. Here one block per SM runs every stage, with a grid-wide
 * barrier between stages, and every warp streams its weights through a private ring of
 * shared-memory slots filled by 2D tensor-map copies (TMA): weights do not depend on the
 * activations, so the ring runs through the whole chain without a break, and a stage's first
 * slices arrive while the stage before finishes and waits at the barrier.
 *   - A stage is one product y = W . in over its parts (q, k and v are three parts of one
 *     stage), cut in m-tiles of 16 weight rows (an MLP's gate_up: 8 gate rows and their 8 up
 *     rows). A tile's k range is split over wpt warps of a block (8, 4, 2 or 1; the host picks
 *     the widest split that puts every tile in one round of the grid and gives each warp whole
 *     slots); their fragments are added in a fixed order (deterministic).
 *   - The input is staged in shared memory as bf16 in the pair order of the format: rmsnorm(x)
 *     (x * norm; the sums of squares give 1/rms, applied to the sums), an F32 tensor, or the
 *     bf16 act an MLP stage wrote (copied as is, one bulk copy a row).
 *   - Epilogues: x += (residual), out = (q/k/v, cross q), act = silu(gate) * up as bf16 rows in
 *     the pair order the down stage stages as is.
 *   - A slot is 16 rows x 256 weight bytes (4 k-steps of 64 bytes in every format) as two
 *     128-byte halves, each one copy with the 128-byte swizzle (16-byte chunk c of row r at c ^
 *     (r % 8), so the eight rows of one fragment load hit eight chunk columns); int4 adds the
 *     slot's 16 x 4 group scales (groups of 128: one a k-step). 3 slots a warp.
 *   - The barrier is one atomic add on a 64-bit counter and acquire polling; it needs every
 *     block of the grid resident at once (one an SM): a device shared with other work through
 *     MPS limits or green contexts would need a smaller grid (not handled).
 * The numerics are k_mma's: x * norm in bf16, 1/rms and the int8 row scales applied to the sums,
 * int4 group scales per k-step, silu(gate) * up rounded to bf16 for down.
 *
 * History (docs/perf-notes.md): sessions 6-7 ran the MLP block alone this way (k_mlp): int8 Dia
 * block ~16.5 us against ~30 us for its two products; rows copied one bulk copy each (16 a
 * slot) were ~2 us slower than the tensor maps. */
#include <cuda.h> /* CUtensorMap and its enums (types only; the encoder comes from the runtime) */
#include <stdio.h>

#include "engine/cuda/cuda_mma.cuh"

#define CH_WARPS 8
#define CH_THREADS (CH_WARPS * 32)
#define CH_MAX_ROWS 4
#define CH_MAX_STAGES 6
#define CH_MAX_PARTS 8
#define CH_MAX_RING 4            /* slots a warp: RING (3 by default, VOXQ_CUDA_CHAIN_RING) */
#define CH_SLICE 256             /* weight bytes a row a slot */
#define CH_SLOT (16 * CH_SLICE)  /* two swizzled halves of [16 rows][128 bytes] */
#define CH_SCALES (16 * 4 * 4)   /* int4: a slot's [16 rows][4 groups] f32 scales */
#define CH_GROUP 128             /* int4 group the slots carry (one a k-step) */
#define CH_STATIC_SMEM (8 * 1024) /* room left for k_chain's static shared memory (~4.4 KB) */

enum { CH_IN_NORM, CH_IN_F32, CH_IN_BF16 };    /* a stage's input */
enum { CH_OUT_ADD, CH_OUT_STORE, CH_OUT_SILU }; /* a stage's epilogue */

struct ch_part {
    const float *rs; /* int8: row scales [rows] */
    void *out;       /* ADD: F32 [n][rows] (+=); STORE: F32 [n][rows]; SILU: bf16 [n][rows / 2] */
    int rows;        /* weight rows */
    int tile0;       /* the part's first tile in its stage */
};
struct ch_stage {
    const void *in;    /* NORM / F32: F32 [n][K]; BF16: bf16 [n][K] in pair order */
    const float *norm; /* NORM: [K] */
    float eps;         /* NORM */
    int K, rb;         /* inputs; weight bytes a row */
    int in_kind, out_kind;
    int part0, nparts, tiles;
    int wpt; /* warps a tile */
};
struct ch_args {
    ch_stage st[CH_MAX_STAGES];
    ch_part pt[CH_MAX_PARTS];
    unsigned long long *bar; /* grid barrier: arrivals so far */
    int nst, n;
    int trace; /* VOXQ_CUDA_CHAIN_TRACE: print the stage times (debug; see trace_pt) */
};
/* The parts' weights as [rows][rb] bytes in boxes of 128 bytes x 16 rows (SILU: 8), and int4's
 * scales as [rows][K / 128] floats in boxes of 4 x 16 (8); NM of each (2 where the chain has
 * no more parts: the kernel's parameters stay small). */
template <int NM> struct ch_maps {
    CUtensorMap w[NM], s[NM];
};

/* TRACE (debug): [0] the first block's start; [1 + 2s] the last block done staging stage s's
 * input, [2 + 2s] the last block done with stage s; [last] the last block's start (ns,
 * globaltimer). */
#define CH_TRACE_PTS (2 + 2 * CH_MAX_STAGES)
__device__ unsigned long long g_ch_trace[CH_TRACE_PTS];
__device__ unsigned g_ch_trace_done;
__device__ __forceinline__ unsigned long long gtimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ void trace_pt(const ch_args &a, int i) {
    if (!a.trace || threadIdx.x) return;
    if (i == 0) {
        atomicMin(&g_ch_trace[0], gtimer());
        atomicMax(&g_ch_trace[CH_TRACE_PTS - 1], gtimer());
    } else
        atomicMax(&g_ch_trace[i], gtimer());
}

__device__ __forceinline__ unsigned smem_u32(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void mbar_init(uint64_t *b, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count));
}
__device__ __forceinline__ void mbar_expect(uint64_t *b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, unsigned parity) {
    unsigned done;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(done)
                     : "r"(smem_u32(b)), "r"(parity)
                     : "memory");
    } while (!done);
}
/* bytes (a multiple of 16, both addresses 16-byte aligned) from global to shared memory,
 * completing on mbarrier b. */
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, unsigned bytes, uint64_t *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
                 "[%3];" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(b))
                 : "memory");
}
/* A 2D box of the tensor map at element (x, y) into shared memory (aligned as the map's
 * swizzle needs), completing on mbarrier b. */
__device__ __forceinline__ void tma_2d(void *dst, const CUtensorMap *map, int x, int y,
                                       uint64_t *b) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];" ::"r"(smem_u32(dst)),
                 "l"((unsigned long long)map), "r"(x), "r"(y), "r"(smem_u32(b))
                 : "memory");
}

/* Every block of the grid waits here until all have arrived; writes before it are visible to
 * every block after it. The counter only grows (64 bits never wrap): an arrival that reads
 * `old` waits for the next multiple of the grid size, so every launch sharing the counter must
 * use the same grid size (one block an SM, always). One atomic round trip and the polling, no
 * reset. */
__device__ __forceinline__ void grid_barrier(unsigned long long *bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long nb = gridDim.x, old, now;
        asm volatile("atom.add.release.gpu.global.u64 %0, [%1], 1;"
                     : "=l"(old)
                     : "l"(bar)
                     : "memory");
        unsigned long long target = (old / nb + 1) * nb;
        do {
            asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(now) : "l"(bar) : "memory");
        } while (now < target);
    }
    __syncthreads();
}

/* Stages rows [0, n) of src [n, len] (F32; times nw when given) as bf16 in the pair order of
 * FMT into xs[row][stride]; with nw also adds each row's sum of squares of raw src into
 * s_ss[row] (a warp's 32 units lie in one row: len % 256 == 0). L2 loads (src may have been
 * written by this kernel's other blocks), all of a thread's issued together (up to 8 units). */
template <int FMT>
__device__ __forceinline__ void ch_stage_f32(__nv_bfloat16 *xs, int stride, const float *src,
                                             const float *nw, float *s_ss, int n, int len) {
    int units = n * (len / 8);
#pragma unroll 8
    for (int u = (int)threadIdx.x; u < units; u += CH_THREADS) {
        int row = u / (len / 8), k = (u - row * (len / 8)) * 8;
        const float4 *p = (const float4 *)(src + (size_t)row * len + k);
        float4 a = __ldcg(p), c = __ldcg(p + 1);
        float v[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
        if (nw) {
            float m[8], ss = 0.f;
            load8(nw + k, m);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                ss = fmaf(v[j], v[j], ss);
                v[j] *= m[j];
            }
            ss = warp_sum(ss);
            if (threadIdx.x % 32 == 0) atomicAdd(&s_ss[row], ss);
        }
        *(uint4 *)(xs + row * stride + k) = pack8_bf16<FMT>(v);
    }
}

/* The B fragment words of staged column g (zeros for columns past n) at k offset k. */
template <int FMT>
__device__ __forceinline__ void ch_bfrag(uint32_t *b, const __nv_bfloat16 *xs, int stride, int g,
                                         int n, int k) {
    constexpr int V = mma_fmt<FMT>::V;
#pragma unroll
    for (int i = 0; i < V / 8; i++) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (g < n) v = ((const uint4 *)(xs + g * stride + k))[i];
        b[4 * i] = v.x; b[4 * i + 1] = v.y; b[4 * i + 2] = v.z; b[4 * i + 3] = v.w;
    }
}

/* The part of stage st that holds tile `tile`; tile becomes its index inside the part. */
__device__ __forceinline__ int ch_part_of(const ch_args &a, const ch_stage &st, int &tile) {
    int p = st.part0;
    for (int i = 1; i < st.nparts; i++)
        if (tile >= a.pt[st.part0 + i].tile0) p = st.part0 + i;
    tile -= a.pt[p].tile0;
    return p;
}

/* A tile's epilogue from its summed fragment f (rows g and g + 8, columns 2t and 2t + 1): rr[e]
 * 1/rms of column 2t + e (1 without a norm), s / s8 the rows' int8 scales (else 1). */
template <int FMT>
__device__ __forceinline__ void ch_epilogue(const ch_part &pt, int kind, int lt, const float *f,
                                            const float *rr, float s, float s8, int g, int t,
                                            int n) {
#pragma unroll
    for (int e = 0; e < 2; e++) {
        int col = 2 * t + e;
        if (col >= n) continue;
        float v0 = f[e] * rr[e] * s, v1 = f[2 + e] * rr[e] * s8;
        if (kind == CH_OUT_SILU) {
            /* output 8 lt + g of act, placed in the staging's pair order (int4: x0 x4 x1 x5 ...) */
            int F = pt.rows / 2;
            int q = 8 * lt + (FMT == ENG_W_I4 ? (g < 4 ? 2 * g : 2 * (g - 4) + 1) : g);
            ((__nv_bfloat16 *)pt.out)[(size_t)col * F + q] = __float2bfloat16_rn(silu_mul(v0, v1));
        } else {
            float *o = (float *)pt.out + (size_t)col * pt.rows + 16 * lt + g;
            if (kind == CH_OUT_ADD) {
                o[0] += v0;
                o[8] += v1;
            } else {
                o[0] = v0;
                o[8] = v1;
            }
        }
    }
}

template <int FMT, int CH_RING, int NM>
__global__ void __launch_bounds__(CH_THREADS, 1)
k_chain(const __grid_constant__ ch_args a, const __grid_constant__ ch_maps<NM> m) {
    constexpr int V = mma_fmt<FMT>::V, KW = 4 * V, PAD = mma_fmt<FMT>::PAD;
    constexpr int KSTEPS = CH_SLICE / 64; /* k-steps a slot (64 weight bytes a row each) */
    constexpr bool I4 = FMT == ENG_W_I4;
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ float s_ss[CH_MAX_ROWS];
    __shared__ float4 s_red[CH_WARPS][32];
    __shared__ __align__(8) uint64_t s_full[CH_WARPS][CH_RING];
    __shared__ __align__(8) uint64_t s_act;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int n = a.n, G = (int)gridDim.x, b = (int)blockIdx.x;
    /* shared memory (1024-byte aligned for the swizzle): the rings [warp][slot], int4's slot
     * scales [warp][slot], the staged input */
    unsigned char *base = smem + ((1024 - (smem_u32(smem) & 1023)) & 1023);
    unsigned char *ring = base + (size_t)warp * CH_RING * CH_SLOT;
    float *scl = (float *)(base + (size_t)CH_WARPS * CH_RING * CH_SLOT) +
                 (size_t)warp * CH_RING * (CH_SCALES / 4);
    __nv_bfloat16 *xs = (__nv_bfloat16 *)(base + (size_t)CH_WARPS * CH_RING * CH_SLOT +
                                          (I4 ? (size_t)CH_WARPS * CH_RING * CH_SCALES : 0));
    uint64_t *full = s_full[warp];

    /* This warp's slices in stage s: its tiles (round r: tile (r G + b) tpb + warp / wpt, one
     * round more while below the stage's tiles) times the slots of its k range. */
    auto slices = [&](int s) {
        const ch_stage &st = a.st[s];
        int tpb = CH_WARPS / st.wpt, tile = b * tpb + warp / st.wpt;
        int tiles = tile < st.tiles ? (st.tiles - 1 - tile) / (G * tpb) + 1 : 0;
        return tiles * (st.rb / st.wpt / CH_SLICE);
    };
    /* The issue cursor, moved a slice at a time (the next slice to copy): stage cs, slices
     * left in it, slice ci of the current tile, whose boxes are read through maps cw / csc at
     * rows cy (and cup: an MLP tile's up rows, else -1) from byte column cxb; the warp's next
     * tile of the stage is cstep on. Slice j lands in slot j % CH_RING. */
    int total = 0;
    for (int s = 0; s < a.nst; s++) total += slices(s);
    int cs = -1, cleft = 0, ci = 0, cspt = 0, ctile = 0, cstep = 0, cxb = 0, cy = 0, cup = -1;
    const CUtensorMap *cw = NULL, *csc = NULL;
    auto cursor_tile = [&]() {
        const ch_stage &st = a.st[cs];
        int lt = ctile, p = ch_part_of(a, st, lt);
        cw = &m.w[p];
        csc = &m.s[p];
        bool silu = st.out_kind == CH_OUT_SILU;
        cy = silu ? 8 * lt : 16 * lt;
        cup = silu ? a.pt[p].rows / 2 + 8 * lt : -1;
    };
    auto issue_next = [&](int j) {
        if (!cleft) { /* the next stage with slices for this warp */
            do cleft = slices(++cs);
            while (!cleft);
            const ch_stage &st = a.st[cs];
            int tpb = CH_WARPS / st.wpt;
            cspt = st.rb / st.wpt / CH_SLICE;
            ctile = b * tpb + warp / st.wpt;
            cstep = G * tpb;
            cxb = (warp % st.wpt) * (st.rb / st.wpt);
            ci = 0;
            cursor_tile();
        }
        const int xb = cxb + ci * CH_SLICE, y = cy, up = cup; /* byte column, rows */
        const CUtensorMap *w = cw, *sw = csc;
        if (--cleft && ++ci == cspt) { /* this warp's next tile of the stage */
            ci = 0;
            ctile += cstep;
            cursor_tile();
        }
        if (lane) return;
        uint64_t *bar = &full[j % CH_RING];
        unsigned char *sl = ring + (size_t)(j % CH_RING) * CH_SLOT;
        float *sc = scl + (size_t)(j % CH_RING) * (CH_SCALES / 4);
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        mbar_expect(bar, CH_SLOT + (I4 ? CH_SCALES : 0));
        if (up >= 0) { /* gate rows, then up rows: boxes of 8 */
#pragma unroll
            for (int h = 0; h < 2; h++) {
                tma_2d(sl + h * 2048, w, xb + h * 128, y, bar);
                tma_2d(sl + h * 2048 + 1024, w, xb + h * 128, up, bar);
            }
            if (I4) {
                tma_2d(sc, sw, xb / 64, y, bar);
                tma_2d(sc + 32, sw, xb / 64, up, bar);
            }
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++) tma_2d(sl + h * 2048, w, xb + h * 128, y, bar);
            if (I4) tma_2d(sc, sw, xb / 64, y, bar);
        }
    };

    trace_pt(a, 0);
    pdl_trigger();
    if (threadIdx.x == 0) mbar_init(&s_act, 1);
    if (lane == 0) {
        for (int i = 0; i < CH_RING; i++) mbar_init(&full[i], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncwarp();
    /* the first slots before waiting for the kernel in front (weights do not depend on it) */
    for (int j = 0; j < CH_RING && j < total; j++) issue_next(j);
    __syncthreads(); /* s_act initialized */
    pdl_wait();

    int jc = 0;             /* slices consumed */
    unsigned act_phase = 0; /* s_act's parity */
    for (int s = 0; s < a.nst; s++) {
        const ch_stage &st = a.st[s];
        if (s) grid_barrier(a.bar);
        /* the input, staged as bf16 rows of K + PAD */
        const int stride = st.K + PAD;
        if (st.in_kind == CH_IN_BF16) {
            if (threadIdx.x == 0) {
                asm volatile("fence.proxy.async.global;" ::: "memory");
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                mbar_expect(&s_act, (unsigned)(n * st.K * 2));
                for (int r = 0; r < n; r++)
                    bulk_copy(xs + r * stride, (const __nv_bfloat16 *)st.in + (size_t)r * st.K,
                              (unsigned)(st.K * 2), &s_act);
            }
            mbar_wait(&s_act, act_phase);
            act_phase ^= 1u;
        } else {
            if (threadIdx.x < CH_MAX_ROWS) s_ss[threadIdx.x] = 0.f;
            __syncthreads();
            ch_stage_f32<FMT>(xs, stride, (const float *)st.in,
                              st.in_kind == CH_IN_NORM ? st.norm : NULL, s_ss, n, st.K);
            __syncthreads();
        }
        trace_pt(a, 1 + 2 * s);
        float rr[2] = {1.f, 1.f};
        if (st.in_kind == CH_IN_NORM)
            for (int e = 0; e < 2; e++)
                if (2 * t + e < n) rr[e] = rsqrtf(s_ss[2 * t + e] / (float)st.K + st.eps);

        const int tpb = CH_WARPS / st.wpt, spt = st.rb / st.wpt / CH_SLICE;
        const int rounds = (st.tiles - b * tpb + G * tpb - 1) / (G * tpb);
        for (int r = 0; r < rounds; r++) {
            int lt = (r * G + b) * tpb + warp / st.wpt;
            const bool valid = lt < st.tiles;
            int p = valid ? ch_part_of(a, st, lt) : 0;
            float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            float s0 = 1.f, s8 = 1.f;
            if (valid) {
                if (FMT == ENG_W_I8) { /* issued now (volatile: not sunk), used after the slots */
                    const ch_part &pt = a.pt[p];
                    int r0 = st.out_kind == CH_OUT_SILU ? 8 * lt + g : 16 * lt + g;
                    int r8 = st.out_kind == CH_OUT_SILU ? pt.rows / 2 + 8 * lt + g : r0 + 8;
                    asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(s0) : "l"(pt.rs + r0));
                    asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(s8) : "l"(pt.rs + r8));
                }
                const int kb = (warp % st.wpt) * (st.rb / st.wpt) / 64; /* first k-step */
                for (int i = 0; i < spt; i++, jc++) {
                    mbar_wait(&full[jc % CH_RING], (unsigned)(jc / CH_RING) & 1u);
                    const unsigned char *sl = ring + (size_t)(jc % CH_RING) * CH_SLOT;
                    const float *sc = scl + (size_t)(jc % CH_RING) * (CH_SCALES / 4);
#pragma unroll
                    for (int u = 0; u < KSTEPS; u++) {
                        /* half u / 2, chunk (u % 2) 4 + t, swizzled by the row (g % 8 = g) */
                        const unsigned char *hp =
                            sl + (u / 2) * 2048 + ((((u % 2) * 4 + t) ^ g) << 4);
                        uint4 wg = *(const uint4 *)(hp + g * 128);
                        uint4 wg8 = *(const uint4 *)(hp + (g + 8) * 128);
                        float sg = 1.f, sg8 = 1.f;
                        if (I4) {
                            sg = sc[g * 4 + u];
                            sg8 = sc[(g + 8) * 4 + u];
                        }
                        uint32_t bf[V / 2];
                        ch_bfrag<FMT>(bf, xs, stride, g, n,
                                      (kb + i * KSTEPS + u) * KW + t * V);
                        constexpr int PAIRS = V / 2;
                        uint32_t p_g[PAIRS], p_g8[PAIRS];
                        mma_fmt<FMT>::dequant(wg, p_g);
                        mma_fmt<FMT>::dequant(wg8, p_g8);
                        mma_kstep<FMT>(acc[u % 2], p_g, p_g8, sg, sg8, bf);
                    }
                    __syncwarp();
                    if (jc + CH_RING < total) issue_next(jc + CH_RING);
                }
            }
            float f[4];
#pragma unroll
            for (int e = 0; e < 4; e++) f[e] = acc[0][e] + acc[1][e];
            if (st.wpt == 1) {
                if (valid) ch_epilogue<FMT>(a.pt[p], st.out_kind, lt, f, rr, s0, s8, g, t, n);
                continue;
            }
            /* the tile's wpt warps: partial fragments added in warp order by the first */
            s_red[warp][lane] = make_float4(f[0], f[1], f[2], f[3]);
            __syncthreads();
            if (valid && warp % st.wpt == 0) {
                for (int w = 1; w < st.wpt; w++) {
                    float4 o = s_red[warp + w][lane];
                    f[0] += o.x; f[1] += o.y; f[2] += o.z; f[3] += o.w;
                }
                ch_epilogue<FMT>(a.pt[p], st.out_kind, lt, f, rr, s0, s8, g, t, n);
            }
            if (r + 1 < rounds) __syncthreads(); /* s_red again (else the barrier's sync) */
        }
        /* act is read back by bulk copies (the async proxy) after the barrier */
        if (st.out_kind == CH_OUT_SILU) asm volatile("fence.proxy.async.global;" ::: "memory");
        if (a.trace) {
            __syncthreads();
            trace_pt(a, 2 + 2 * s);
        }
    }
    if (a.trace && threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(&g_ch_trace_done, 1u) == (unsigned)G - 1) {
            unsigned long long *tr = g_ch_trace;
            for (int s = 0; s < a.nst; s++)
                printf("chain trace n=%d stage %d/%d (us from first start): last start %.2f, staged "
                       "%.2f, done %.2f\n",
                       n, s, a.nst, (tr[CH_TRACE_PTS - 1] - tr[0]) * 1e-3,
                       (tr[1 + 2 * s] - tr[0]) * 1e-3, (tr[2 + 2 * s] - tr[0]) * 1e-3);
            tr[0] = ~0ull;
            for (int i = 1; i < CH_TRACE_PTS; i++) tr[i] = 0;
            g_ch_trace_done = 0;
        }
    }
}

/* cuTensorMapEncodeTiled from the driver, through the runtime (no link to libcuda); NULL where
 * the driver has none. */
typedef CUresult (*tmap_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                   const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                   const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static tmap_encode_fn tmap_encoder(void) {
    static tmap_encode_fn fn;
    static int tried;
    if (!tried) {
        tried = 1;
        void *p = NULL;
        cudaDriverEntryPointQueryResult q;
#if CUDART_VERSION >= 12050 /* the versioned lookup; the plain one is deprecated from 13 */
        cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                                         cudaEnableDefault, &q);
#else
        cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault,
                                                &q);
#endif
        if (e == cudaSuccess && q == cudaDriverEntryPointSuccess) fn = (tmap_encode_fn)p;
    }
    return fn;
}

/* A 2D map of [rows][cols] elements of esize bytes (type dt), read in boxes of box_cols x
 * box_rows, swizzled or not. 0 on success. */
static int tmap_2d(CUtensorMap *m, CUtensorMapDataType dt, int esize, const void *data,
                   int64_t cols, int64_t rows, int box_cols, int box_rows, CUtensorMapSwizzle sw) {
    tmap_encode_fn fn = tmap_encoder();
    if (!fn) return -1;
    cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
    cuuint64_t strides[1] = {(cuuint64_t)(cols * esize)};
    cuuint32_t box[2] = {(cuuint32_t)box_cols, (cuuint32_t)box_rows}, elem[2] = {1, 1};
    CUresult r = fn(m, dt, 2, (void *)data, dims, strides, box, elem,
                    CU_TENSOR_MAP_INTERLEAVE_NONE, sw, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? 0 : -1;
}

/* Inputs a k-step in each format (64 weight bytes a row). */
static int64_t ch_kw(int fmt) { return fmt == ENG_W_I4 ? 128 : fmt == ENG_W_I8 ? 64 : 32; }

/* A chain being built from eng_stages: the kernel's arguments, the parts' weights, the
 * staging's largest K. */
struct ch_build {
    ch_args a;
    const eng_weight *w[CH_MAX_PARTS];
    int fmt, nparts;
    int64_t n, H, kmax;
};

/* Adds kernel stage (input, epilogue) over weights w[0..count) into outs; 0 where the chain
 * kernel cannot take it. */
static int ch_add_stage(ch_build *cb, const cuda_impl *c, int in_kind, const void *in,
                        const float *norm, float eps, int out_kind, int count, const eng_weight *const *w,
                        void *const *outs) {
    ch_args *a = &cb->a;
    if (a->nst == CH_MAX_STAGES || cb->nparts + count > CH_MAX_PARTS) return 0;
    ch_stage *st = &a->st[a->nst++];
    int64_t K = w[0]->in, rb = K * 64 / ch_kw(cb->fmt);
    if (K % 256 || rb % CH_SLICE || K > 16384) return 0;
    st->in = in;
    st->norm = norm;
    st->eps = eps;
    st->K = (int)K;
    st->rb = (int)rb;
    st->in_kind = in_kind;
    st->out_kind = out_kind;
    st->part0 = cb->nparts;
    st->nparts = count;
    int64_t tiles = 0;
    for (int i = 0; i < count; i++) {
        const eng_weight *wi = w[i];
        if (wi->fmt != cb->fmt || wi->in != K || wi->out % 16 || wi->out > (1 << 20)) return 0;
        if (cb->fmt == ENG_W_I4 && (wi->group != CH_GROUP || K % 512)) return 0;
        ch_part *pt = &a->pt[cb->nparts];
        cb->w[cb->nparts++] = wi;
        pt->rs = cb->fmt == ENG_W_I8 ? wi->scales : NULL;
        pt->out = outs[i];
        pt->rows = (int)wi->out;
        pt->tile0 = (int)tiles;
        tiles += wi->out / 16;
    }
    st->tiles = (int)tiles;
    /* the widest k split with whole slots for every warp that takes every tile in one round;
     * else the narrowest one with whole slots (the fewest rounds) */
    st->wpt = 0;
    for (int wpt = CH_WARPS; wpt >= 1; wpt /= 2) {
        if (rb % ((int64_t)wpt * CH_SLICE)) continue;
        st->wpt = wpt;
        if (tiles <= (int64_t)c->sm_count * (CH_WARPS / wpt)) break;
    }
    if (!st->wpt) return 0;
    if (K > cb->kmax) cb->kmax = K;
    return 1;
}

/* Which chains run as one kernel: VOXQ_CUDA_CHAIN (read once; A/B timing) 0 = none (every
 * stage as the separate products), 1 = every chain the kernel takes (default), 2 = chains of
 * one stage only (eng_chain then runs a longer chain a stage at a time, each its own k_chain),
 * 3 = a lone MLP stage only (the rest as the separate products). */
static int chain_mode(void) {
    static int mode = -1;
    if (mode < 0) mode = (int)cuda_env_knob("VOXQ_CUDA_CHAIN", 1, 0, 3);
    return mode;
}

static int f32_rows(const eng_tensor *t, int64_t n, int64_t cols) {
    return t && t->dtype == ENG_DT_F32 && eng_numel(t) == n * cols;
}

/* The kernel's chain for st[0..count), or 0 where it cannot run it. */
static int ch_make(ch_build *cb, const cuda_impl *c, eng_tensor *x, int count,
                   const eng_stage *st, eng_tensor *act) {
    memset(cb, 0, sizeof *cb);
    int mode = chain_mode();
    if (!mode || count < 1 || (mode >= 2 && count > 1) ||
        (mode == 3 && st[0].kind != ENG_STAGE_MLP) || x->dtype != ENG_DT_F32 || x->ndim < 2)
        return 0;
    cb->n = x->shape[0];
    cb->H = eng_numel(x) / (cb->n ? cb->n : 1);
    cb->fmt = st[0].w[0]->fmt;
    if (cb->n < 1 || cb->n > CH_MAX_ROWS || cb->H * cb->n != eng_numel(x)) return 0;
    if (cb->fmt != ENG_W_BF16 && cb->fmt != ENG_W_I8 && cb->fmt != ENG_W_I4) return 0;
    int64_t n = cb->n, H = cb->H;
    for (int i = 0; i < count; i++) {
        const eng_stage *s = &st[i];
        void *xo = x->data;
        switch (s->kind) {
        case ENG_STAGE_ADD:
            if (s->w[0]->out != H || !f32_rows(s->in, n, s->w[0]->in) ||
                !ch_add_stage(cb, c, CH_IN_F32, s->in->data, NULL, 0.f, CH_OUT_ADD, 1, s->w, &xo))
                return 0;
            break;
        case ENG_STAGE_NORM: {
            void *outs[ENG_STAGE_MAX_W];
            if (s->nw < 1 || s->nw > ENG_STAGE_MAX_W || !f32_rows(s->norm, 1, H)) return 0;
            for (int k = 0; k < s->nw; k++) {
                if (s->w[k]->in != H || !f32_rows(s->out[k], n, s->w[k]->out)) return 0;
                outs[k] = s->out[k]->data;
            }
            if (!ch_add_stage(cb, c, CH_IN_NORM, x->data, (const float *)s->norm->data,
                              s->eps, CH_OUT_STORE, s->nw, s->w, outs))
                return 0;
            break;
        }
        case ENG_STAGE_MLP: {
            const eng_weight *gu = s->w[0], *down = s->w[1];
            int64_t F = down->in;
            void *ao = act ? act->data : NULL;
            if (gu->in != H || gu->out != 2 * F || down->out != H || F % 8 ||
                !f32_rows(s->norm, 1, H) || !act || act->dtype != ENG_DT_F32 ||
                eng_numel(act) < n * F)
                return 0;
            if (!ch_add_stage(cb, c, CH_IN_NORM, x->data, (const float *)s->norm->data,
                              s->eps, CH_OUT_SILU, 1, &gu, &ao) ||
                !ch_add_stage(cb, c, CH_IN_BF16, ao, NULL, 0.f, CH_OUT_ADD, 1, &down, &xo))
                return 0;
            break;
        }
        default: return 0;
        }
    }
    return 1;
}

/* Shared memory of a launch: the rings (1024-byte aligned: 1 KB of slack), int4's slot scales,
 * the staging of the largest input (rows padded as mma_fmt pads them). */
static size_t ch_smem(const ch_build *cb, int ring) {
    int64_t pad = cb->fmt == ENG_W_BF16 ? mma_fmt<ENG_W_BF16>::PAD : mma_fmt<ENG_W_I8>::PAD;
    int64_t bytes = 1024 + (int64_t)CH_WARPS * ring * CH_SLOT;
    if (cb->fmt == ENG_W_I4) bytes += (int64_t)CH_WARPS * ring * CH_SCALES;
    return (size_t)(bytes + cb->n * (cb->kmax + pad) * 2);
}

template <int FMT, int RING, int NM>
static cudaError_t launch_chain(cuda_impl *c, const ch_args &a, const ch_maps<NM> &m,
                                size_t smem) {
    static unsigned done;
    cudaError_t e =
        smem_optin(k_chain<FMT, RING, NM>, (int)(c->smem_optin - CH_STATIC_SMEM), &done);
    if (e != cudaSuccess) return e;
    cudaLaunchAttribute attr[2];
    cudaLaunchConfig_t cfg = pdl_cluster_config(dim3((unsigned)c->sm_count), dim3(CH_THREADS),
                                                smem, c->stream, attr, 1);
    return cudaLaunchKernelEx(&cfg, k_chain<FMT, RING, NM>, a, m);
}
template <int FMT>
static cudaError_t launch_chain_fmt(cuda_impl *c, int ring, int nparts, const ch_args &a,
                                    const ch_maps<CH_MAX_PARTS> &m, size_t smem) {
    if (nparts <= 2) {
        ch_maps<2> m2;
        memcpy(m2.w, m.w, sizeof m2.w);
        memcpy(m2.s, m.s, sizeof m2.s);
        return ring == 4 ? launch_chain<FMT, 4, 2>(c, a, m2, smem)
                         : launch_chain<FMT, 3, 2>(c, a, m2, smem);
    }
    return ring == 4 ? launch_chain<FMT, 4, CH_MAX_PARTS>(c, a, m, smem)
                     : launch_chain<FMT, 3, CH_MAX_PARTS>(c, a, m, smem);
}

int cuda_chain(eng_backend *be, eng_tensor *x, int count, const eng_stage *st, eng_tensor *act) {
    cuda_impl *c = cuda_of(be);
    ch_build cb;
    if (!ch_make(&cb, c, x, count, st, act)) return ENG_EUNSUPPORTED;
    static int ring = 0;
    if (!ring) ring = (int)cuda_env_knob("VOXQ_CUDA_CHAIN_RING", 3, 3, CH_MAX_RING);
    size_t smem = ch_smem(&cb, ring);
    if (smem + CH_STATIC_SMEM > c->smem_optin) return ENG_EUNSUPPORTED;
    ch_args &a = cb.a;
    a.bar = c->grid_bar;
    a.n = (int)cb.n;
    static int trace = -1;
    if (trace < 0) {
        trace = (int)cuda_env_knob("VOXQ_CUDA_CHAIN_TRACE", 0, 0, 1);
        unsigned long long init[CH_TRACE_PTS] = {~0ull};
        if (trace) cudaMemcpyToSymbol(g_ch_trace, init, sizeof init);
    }
    a.trace = trace;
    /* the weights in boxes of 128 bytes x 16 rows (gate_up: 8, its gate and its up half of a
     * tile), int4's scales in boxes of 4 groups */
    ch_maps<CH_MAX_PARTS> m;
    memset(&m, 0, sizeof m);
    for (int p = 0; p < cb.nparts; p++) {
        const eng_weight *w = cb.w[p];
        int64_t rb = w->in * 64 / ch_kw(cb.fmt);
        int box = 16;
        for (int s = 0; s < a.nst; s++)
            if (p >= a.st[s].part0 && p < a.st[s].part0 + a.st[s].nparts &&
                a.st[s].out_kind == CH_OUT_SILU)
                box = 8;
        if (tmap_2d(&m.w[p], CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, w->data, rb, w->out, 128, box,
                    CU_TENSOR_MAP_SWIZZLE_128B) ||
            (cb.fmt == ENG_W_I4 &&
             tmap_2d(&m.s[p], CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, w->scales, w->in / CH_GROUP,
                     w->out, 4, box, CU_TENSOR_MAP_SWIZZLE_NONE)))
            return eng_backend_fail(be, ENG_EDEVICE, "chain: no tensor map for a %lld x %lld "
                                    "weight (cuTensorMapEncodeTiled missing or refused)",
                                    (long long)w->out, (long long)w->in);
    }
    int np = cb.nparts;
    cudaError_t e = cb.fmt == ENG_W_I8   ? launch_chain_fmt<ENG_W_I8>(c, ring, np, a, m, smem)
                    : cb.fmt == ENG_W_I4 ? launch_chain_fmt<ENG_W_I4>(c, ring, np, a, m, smem)
                                         : launch_chain_fmt<ENG_W_BF16>(c, ring, np, a, m, smem);
    if (e != cudaSuccess)
        return eng_backend_fail(be, ENG_EDEVICE, "chain: launch: %s", cudaGetErrorString(e));
    return 0;
}
