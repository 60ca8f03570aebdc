/* cuda_mlp.cu - the decoder's MLP block in one launch at 1-4 rows of x (one sequence with CFG
 * is two): x += down . silu(gate) * up, [gate | up] = gate_up . rmsnorm(x); bf16, int8 or int4
 * weights (VOXQ_CUDA_MLP, below).
 *
 * As two products (k_mma / k_gemv, cuda_linear.cu) the block pays a kernel boundary between
 * gate_up and down, and down's weights start streaming only after it. Here one block per SM does
 * both, with a grid-wide barrier in between, and every warp streams its weights through a
 * private ring of shared-memory slots filled by 2D tensor-map copies (TMA): slots of 16 weight
 * rows x 256 bytes (four k-steps of 64 bytes in every format), 3 a warp at 8 warps a block (96
 * KB an SM in flight), 2 a warp at 16 (128 KB; mlp_cfg).
 *   - Warp w of block b (W warps) owns part w / 8 of the k range of gate_up m-tile 8b + w % 8
 *     in phase A (8 gate rows and their 8 up rows: the k_mma fragment layout, gate rows as
 *     fragment rows 0-7; all of H at 8 warps, half at 16) and, in phase B, a W-th of F of
 *     down's m-tile b (16 rows). Its ring runs through both without a break: the first down
 *     slices are copied while the last gate_up ones are multiplied, and across the grid
 *     barrier.
 *   - Phase A writes silu(gate) * up to the act scratch as bf16 rows in the staging's pair order;
 *     the grid barrier (a counter in device memory) makes them visible; phase B copies act into
 *     its staging with one bulk copy a row, each warp multiplies its W-th, the W partial
 *     fragments are added in a fixed order (deterministic) and the block adds the sums into x.
 * The grid is one block an SM (~130-165 KB of shared memory each at 2 rows) and the barrier needs all
 * of them resident at once: a device shared with other work through MPS limits or green contexts
 * would need a smaller grid (not handled).
 * The numerics are k_mma's: x * norm in bf16, 1/rms and the int8 row scales applied to the sums,
 * int4 group scales per k-step (copied into shared memory at start; a group is a multiple of the
 * 128-input k-step), silu(gate) * up rounded to bf16 for down.
 *
 * Measured (H200, docs/perf-notes.md, sessions 6-7): the int8 Dia block takes 23 us under ncu
 * (cold L2) against ~30 us for its two products; one sequence, steps/s against the two
 * products: bf16 902 / 838, int8 947 / 929, int4 1013 / 951. Growing it into a chain of a
 * layer's products with a barrier between each (session 7, git 3b2a7b8) was slower than the
 * separate kernels with programmatic dependent launch: see docs/perf-notes.md. 16 warps (session
 * 10): int8 one sequence +2.8%, int4 +0.4%, bf16 -1.2% (it keeps 8). */
#include <cuda.h> /* CUtensorMap and its enums (types only; the encoder comes from the runtime) */
#include <stdio.h>

#include "engine/cuda/cuda_mma.cuh"

#define MLP_MAX_ROWS 4
/* The ring of one warp: RING slots of 16 rows x MLP_SLICE weight bytes (4 k-steps of 64 bytes
 * in every format), each slot two halves of [16 rows][128 bytes] copied by a 2D tensor map with
 * the 128-byte swizzle: 16-byte chunk c of row r lies at chunk c ^ (r % 8) of its row, so the
 * eight rows of one fragment load hit eight different chunk columns; slots are 1024-byte
 * aligned. */
#define MLP_SLICE 256
#define MLP_SLOT (16 * MLP_SLICE)
/* A block of W warps (8 or 16, VOXQ_CUDA_MLP_WARPS): eight gate_up m-tiles a block, each
 * shared by KSPLIT = W / 8 warps that split its k range (their sums meet in shared memory before
 * silu * up), and W slices of down's m-tile. 16 warps give each SM twice the threads for the
 * same bytes, with 2 ring slots a warp instead of 3 (shared memory). */
template <int W> struct mlp_cfg {
    static constexpr int WARPS = W, THREADS = 32 * W, KSPLIT = W / 8;
    static constexpr int RING = W >= 16 ? 2 : 3;
    static constexpr int RING_BYTES = RING * MLP_SLOT;
};
/* Static shared memory a block may use beside the dynamic (s_red and the barriers: ~9 KB at 16
 * warps). */
#define MLP_STATIC_SMEM (12 * 1024)

struct mlp_args {
    const float *sgu;         /* int8: [2F]; int4: [2F, H / group] (the weights: tensor maps) */
    const float *sd;          /* int8: [H]; int4: [H, F / group] */
    const float *norm;        /* [H] */
    float *x;                 /* [n, H]: read by phase A, += by phase B */
    float *act;               /* scratch (n F floats): silu(gate) * up as bf16 [n][F] */
    unsigned long long *bar;  /* grid barrier: arrivals so far */
    float eps;
    int n, H, F, group;
    int trace; /* VOXQ_CUDA_MLP_TRACE: print the phase times (debug; see trace_pt) */
};

/* TRACE (debug): per point, the earliest (point 0) or latest arrival of any block, ns. */
__device__ unsigned long long g_mlp_trace[8];
__device__ unsigned g_mlp_trace_done;
__device__ __forceinline__ unsigned long long gtimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ void trace_pt(const mlp_args &a, int i) {
    if (!a.trace || threadIdx.x) return;
    if (i == 0) {
        atomicMin(&g_mlp_trace[0], gtimer());
        atomicMax(&g_mlp_trace[7], gtimer());
    } else {
        atomicMax(&g_mlp_trace[i], gtimer());
    }
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
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, unsigned bytes,
                                          uint64_t *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
                 "[%3];" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(b))
                 : "memory");
}

/* A 2D tile of the tensor map (box as encoded) at element (x, y) into shared memory (aligned as
 * the map's swizzle needs), completing on mbarrier b. */
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
 * use the same grid size (k_mlp: one block an SM, always). One atomic round trip and the
 * polling, no reset. */
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

/* The B fragment words of staged column g (zeros for columns past n) at k offset k. */
template <int FMT>
__device__ __forceinline__ void mlp_bfrag(uint32_t *b, const __nv_bfloat16 *xs, int stride, int g,
                                          int n, int k) {
    constexpr int V = mma_fmt<FMT>::V;
#pragma unroll
    for (int i = 0; i < V / 8; i++) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (g < n) v = ((const uint4 *)(xs + g * stride + k))[i];
        b[4 * i] = v.x; b[4 * i + 1] = v.y; b[4 * i + 2] = v.z; b[4 * i + 3] = v.w;
    }
}

/* acc += the mmas of one k-step: weight words wg (row g) and wg8 (row g + 8), int4 group
 * scales sg / sg8 of that k-step. */
template <int FMT>
__device__ __forceinline__ void mlp_kstep(float *acc, uint4 wg, uint4 wg8, float sg, float sg8,
                                          const uint32_t *b) {
    constexpr int PAIRS = mma_fmt<FMT>::V / 2;
    uint32_t p_g[PAIRS], p_g8[PAIRS];
    mma_fmt<FMT>::dequant(wg, p_g);
    mma_fmt<FMT>::dequant(wg8, p_g8);
    mma_kstep<FMT>(acc, p_g, p_g8, sg, sg8, b);
}

/* Stages rows [0, n) of src [n, len] (f32; times nw) as bf16 in the pair order of FMT into
 * xs[row][stride] and adds each row's sum of squares of raw src into s_ss[row] (a warp's 32
 * units lie in one row: len % 256 == 0). L2 loads (src was written by the kernel in front), all
 * of a thread's issued together (up to 8 units). nw0: nw at the thread's first unit, loaded
 * before the wait for that kernel (every unit at the same k uses it). */
template <int FMT, int THREADS>
__device__ __forceinline__ void mlp_stage(__nv_bfloat16 *xs, int stride, const float *src,
                                          const float *nw, const float *nw0, float *s_ss, int n,
                                          int len) {
    int units = n * (len / 8), k0 = (int)threadIdx.x % (len / 8) * 8;
#pragma unroll 8
    for (int u = (int)threadIdx.x; u < units; u += THREADS) {
        int row = u / (len / 8), k = (u - row * (len / 8)) * 8;
        const float4 *p = (const float4 *)(src + (size_t)row * len + k);
        float4 a = __ldcg(p), c = __ldcg(p + 1);
        float v[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
        float m[8], ss = 0.f;
        if (k == k0) {
#pragma unroll
            for (int j = 0; j < 8; j++) m[j] = nw0[j];
        } else {
            load8(nw + k, m);
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            ss = fmaf(v[j], v[j], ss);
            v[j] *= m[j];
        }
        ss = warp_sum(ss);
        if (threadIdx.x % 32 == 0) atomicAdd(&s_ss[row], ss);
        *(uint4 *)(xs + row * stride + k) = pack8_bf16<FMT>(v);
    }
}

template <int FMT, int W>
__global__ void __launch_bounds__(32 * W, 1)
k_mlp(const mlp_args a, const __grid_constant__ CUtensorMap tgu,
      const __grid_constant__ CUtensorMap td) {
    using C = mlp_cfg<W>;
    constexpr int V = mma_fmt<FMT>::V, KW = 4 * V, PAD = mma_fmt<FMT>::PAD;
    constexpr int KSTEPS = MLP_SLICE / 64; /* k-steps a slot (64 weight bytes a row each) */
    constexpr int RING = C::RING, SLICE = MLP_SLICE, KSPLIT = C::KSPLIT;
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ float s_ss[MLP_MAX_ROWS];
    __shared__ float4 s_red[W][32];
    __shared__ __align__(8) uint64_t s_full[W][4 + 1]; /* + the scales' */
    __shared__ __align__(8) uint64_t s_act;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int H = a.H, F = a.F, n = a.n;
    /* int4 group scales a row: all of H (phase A), this warp's W-th of F (phase B) */
    const int gpa = FMT == ENG_W_I4 ? H / a.group : 0, gpb = FMT == ENG_W_I4 ? F / W / a.group : 0;
    /* shared memory: the rings [warp][slot], the int4 scales [warp][16 rows of A, of B], staged
     * x / act */
    unsigned char *base = smem + ((1024 - (smem_u32(smem) & 1023)) & 1023);
    unsigned char *ring = base + (size_t)warp * C::RING_BYTES;
    float *scA = (float *)(base + (size_t)W * C::RING_BYTES) + (size_t)warp * 16 * (gpa + gpb);
    float *scB = scA + 16 * gpa;
    __nv_bfloat16 *xs = (__nv_bfloat16 *)(base + (size_t)W * C::RING_BYTES +
                                          (size_t)W * 16 * (gpa + gpb) * 4);
    uint64_t *full = s_full[warp];

    /* This warp's work: part kp of the k range of gate_up m-tile mt (phase A: SA slots), down
     * m-tile blockIdx.x (phase B: SB slots of its W-th of F). Weight bytes a row (64 a k-step in
     * every format): rba (gate_up), rbb (down). */
    const int rba = H * 64 / KW, rbb = F * 64 / KW;
    const int mt = (int)blockIdx.x * 8 + warp % 8, kp = warp / 8, mtb = (int)blockIdx.x;
    const int SA = mt < F / 8 ? rba / SLICE / KSPLIT : 0;
    const int SB = mtb < H / 16 ? rbb / W / SLICE : 0, S = SA + SB;
    const int ka0 = kp * SA * KSTEPS;      /* this warp's first k-step of gate_up */
    const int kb0 = warp * (rbb / W / 64); /* and of down */
    /* Slice j of this warp's range into slot j % RING: lane 0 copies the two 128-byte halves
     * (gate_up: its gate and its up rows as two boxes of 8, down: one box of 16). */
    auto issue = [&](int j) {
        if (lane) return;
        uint64_t *bar = &full[j % RING];
        unsigned char *sl = ring + (size_t)(j % RING) * MLP_SLOT;
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        mbar_expect(bar, 16 * SLICE);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            if (j < SA) {
                int xb = (kp * SA + j) * SLICE + h * 128;
                tma_2d(sl + h * 2048, &tgu, xb, 8 * mt, bar);
                tma_2d(sl + h * 2048 + 1024, &tgu, xb, F + 8 * mt, bar);
            } else {
                int xb = warp * (rbb / W) + (j - SA) * SLICE + h * 128;
                tma_2d(sl + h * 2048, &td, xb, 16 * mtb, bar);
            }
        }
    };

    trace_pt(a, 0);
    pdl_trigger();
    if (threadIdx.x < MLP_MAX_ROWS) s_ss[threadIdx.x] = 0.f;
    if (threadIdx.x == 0) mbar_init(&s_act, 1);
    if (lane == 0) {
        for (int i = 0; i <= RING; i++) mbar_init(&full[i], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncwarp();
    /* int4: this warp's group scales (16 rows of each phase) into shared memory, then the first
     * slots; all before waiting for the kernel in front (weights do not depend on it). */
    if (FMT == ENG_W_I4) {
        if (lane == 0) mbar_expect(&full[RING], 16 * 4 * ((SA ? gpa : 0) + (SB ? gpb : 0)));
        __syncwarp();
        if (lane < 16 && SA)
            bulk_copy(scA + lane * gpa,
                      a.sgu + (size_t)(lane < 8 ? 8 * mt + lane : F + 8 * mt + lane - 8) * gpa,
                      4 * gpa, &full[RING]);
        if (lane >= 16 && SB)
            bulk_copy(scB + (lane - 16) * gpb,
                      a.sd + (size_t)(16 * mtb + lane - 16) * (F / a.group) + (size_t)warp * gpb,
                      4 * gpb, &full[RING]);
    }
    for (int j = 0; j < RING && j < S; j++) issue(j);
    float s_gate = 1.f, s_up = 1.f, s_down = 1.f;
    if (FMT == ENG_W_I8) {
        if (SA) {
            s_gate = __ldg(a.sgu + 8 * mt + g);
            s_up = __ldg(a.sgu + F + 8 * mt + g);
        }
        if (SB && (int)threadIdx.x < 16 * n) s_down = __ldg(a.sd + 16 * mtb + threadIdx.x % 16);
    }
    float nw0[8]; /* the norm weights of this thread's first staging unit */
    load8(a.norm + (int)threadIdx.x % (H / 8) * 8, nw0);
    __syncthreads(); /* s_ss zeroed */
    pdl_wait();
    /* x * norm staged as bf16, and the sums of squares of raw x (1/rms at the end) */
    const int stride_a = H + PAD, stride_b = F + PAD;
    mlp_stage<FMT, C::THREADS>(xs, stride_a, a.x, a.norm, nw0, s_ss, n, H);
    __syncthreads();
    trace_pt(a, 1);
    if (FMT == ENG_W_I4) mbar_wait(&full[RING], 0);

    /* One slot: KSTEPS k-steps of rows g and g + 8 against staged column g, into two
     * accumulators by k-step parity (two mma chains in flight), then the slot is refilled
     * RING slices on. ks0: the slot's first k-step in the staged x. */
    auto run_slot = [&](float (*acc)[4], int j, int stride, int ks0, const float *scl, int scw,
                        int ksc0) {
        mbar_wait(&full[j % RING], (unsigned)(j / RING) & 1u);
        const unsigned char *sl = ring + (size_t)(j % RING) * MLP_SLOT;
#pragma unroll
        for (int u = 0; u < KSTEPS; u++) {
            /* half u / 2, chunk (u % 2) 4 + t, swizzled by the row (g % 8 = g) */
            const unsigned char *hp = sl + (u / 2) * 2048 + ((((u % 2) * 4 + t) ^ g) << 4);
            uint4 wg = *(const uint4 *)(hp + g * 128);
            uint4 wg8 = *(const uint4 *)(hp + (g + 8) * 128);
            float sg = 1.f, sg8 = 1.f;
            if (FMT == ENG_W_I4) {
                int gi = (ksc0 + u) * KW / a.group;
                sg = scl[g * scw + gi];
                sg8 = scl[(g + 8) * scw + gi];
            }
            uint32_t b[V / 2];
            mlp_bfrag<FMT>(b, xs, stride, g, n, (ks0 + u) * KW + t * V);
            mlp_kstep<FMT>(acc[u % 2], wg, wg8, sg, sg8, b);
        }
        __syncwarp();
        if (j + RING < S) issue(j + RING);
    };

    /* Phase A: silu(gate) * up of m-tile mt into act. */
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    for (int j = 0; j < SA; j++)
        run_slot(acc, j, stride_a, ka0 + j * KSTEPS, scA, gpa, ka0 + j * KSTEPS);
    if (KSPLIT > 1) { /* the m-tile's k parts meet in warp w % 8, added in a fixed order */
        if (kp && SA)
            s_red[warp][lane] = make_float4(acc[0][0] + acc[1][0], acc[0][1] + acc[1][1],
                                            acc[0][2] + acc[1][2], acc[0][3] + acc[1][3]);
        __syncthreads();
        if (!kp && SA)
#pragma unroll
            for (int p = 1; p < KSPLIT; p++) {
                float4 o = s_red[warp + 8 * p][lane];
                acc[0][0] += o.x, acc[0][1] += o.y, acc[0][2] += o.z, acc[0][3] += o.w;
            }
    }
    /* act as bf16 rows [n][F] in the pair order of FMT (the staging phase B copies as is): output
     * q = 8 mt + g is element g of the group of 8 at 8 mt (int4: x0 x4 x1 x5 x2 x6 x3 x7). */
    __nv_bfloat16 *actb = (__nv_bfloat16 *)a.act;
    if (SA && !kp) {
        int q = 8 * mt + (FMT == ENG_W_I4 ? (g < 4 ? 2 * g : 2 * (g - 4) + 1) : g);
#pragma unroll
        for (int e = 0; e < 2; e++) {
            int col = 2 * t + e;
            if (col < n) {
                float r = rsqrtf(s_ss[col] / (float)H + a.eps);
                float gate = (acc[0][e] + acc[1][e]) * r * s_gate;
                float up = (acc[0][2 + e] + acc[1][2 + e]) * r * s_up;
                actb[(size_t)col * F + q] = __float2bfloat16_rn(silu_mul(gate, up));
            }
        }
        asm volatile("fence.proxy.async.global;" ::: "memory"); /* read back by bulk copies */
    }

    __syncthreads();
    trace_pt(a, 2);
    grid_barrier(a.bar);
    trace_pt(a, 3);

    /* Phase B: this warp's W-th of down m-tile blockIdx.x against act, copied into the
     * staging as it is (bf16 rows of F + PAD). */
    if (mtb >= H / 16) return;
    if (threadIdx.x == 0) {
        asm volatile("fence.proxy.async.global;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        mbar_expect(&s_act, (unsigned)(n * F * 2));
        for (int r = 0; r < n; r++)
            bulk_copy(xs + r * stride_b, actb + (size_t)r * F, (unsigned)(F * 2), &s_act);
    }
    mbar_wait(&s_act, 0);
    trace_pt(a, 4);
#pragma unroll
    for (int e = 0; e < 4; e++) acc[0][e] = acc[1][e] = 0.f;
    for (int j = SA; j < S; j++)
        run_slot(acc, j, stride_b, kb0 + (j - SA) * KSTEPS, scB, gpb, (j - SA) * KSTEPS);
    s_red[warp][lane] = make_float4(acc[0][0] + acc[1][0], acc[0][1] + acc[1][1],
                                    acc[0][2] + acc[1][2], acc[0][3] + acc[1][3]);
    __syncthreads();
    trace_pt(a, 5);
    /* Output (row r of the m-tile, column c): fragment element e of lane 4 (r % 8) + c / 2. */
    if ((int)threadIdx.x < 16 * n) {
        int r = (int)threadIdx.x % 16, c = (int)threadIdx.x / 16;
        int ln = 4 * (r % 8) + c / 2, e = (r >= 8 ? 2 : 0) + c % 2;
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < W; w++) sum += ((const float *)&s_red[w][ln])[e];
        a.x[(size_t)c * H + 16 * mtb + r] += sum * s_down;
    }
    if (a.trace && threadIdx.x == 0) {
        trace_pt(a, 6);
        __threadfence();
        if (atomicAdd(&g_mlp_trace_done, 1u) == (unsigned)(H / 16) - 1) {
            unsigned long long *tr = g_mlp_trace;
            printf("mlp trace n=%d (us from first start): last start %.2f, x staged %.2f, phase A "
                   "%.2f, barrier %.2f, act staged %.2f, phase B %.2f, end %.2f\n",
                   n, (tr[7] - tr[0]) * 1e-3, (tr[1] - tr[0]) * 1e-3, (tr[2] - tr[0]) * 1e-3,
                   (tr[3] - tr[0]) * 1e-3, (tr[4] - tr[0]) * 1e-3, (tr[5] - tr[0]) * 1e-3,
                   (tr[6] - tr[0]) * 1e-3);
            tr[0] = ~0ull;
            for (int i = 1; i < 8; i++) tr[i] = 0;
            g_mlp_trace_done = 0;
        }
    }
}

/* The ring: 3 slots a warp. With 3 slots at 2 rows a block (~130 KB) fits beside the two k_mma
 * blocks an SM of the product in front, so it starts as soon as that kernel lets it; with 4 it
 * waits for the SM to empty (H200, bf16 one sequence: 898.0 / 900.1 against 878.7 / 880.6
 * steps/s, session 6). Tensor maps cut the copies a slot from 16 (one bulk copy a row) to 4:
 * one sequence int8 947 against 914 steps/s, int4 1009 against 974, bf16 894 against 897
 * (session 7, one call; the row copies are in git history, 6d4e50c).
 * Shared memory of a launch: the rings (1024-byte aligned: 1 KB of slack), the int4 scales, the
 * larger of the two stagings (rows padded as mma_fmt pads them). */
static size_t mlp_smem(int fmt, int64_t n, int64_t H, int64_t F, int group, int w) {
    int64_t ring = (int64_t)w * (w >= 16 ? mlp_cfg<16>::RING_BYTES : mlp_cfg<8>::RING_BYTES) + 1024;
    int64_t scales = fmt == ENG_W_I4 ? w * 16 * (H / group + F / w / group) * 4 : 0;
    int64_t pad = fmt == ENG_W_BF16 ? mma_fmt<ENG_W_BF16>::PAD : mma_fmt<ENG_W_I8>::PAD;
    int64_t stage = n * ((H > F ? H : F) + pad) * 2;
    return (size_t)(ring + scales + stage);
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

/* A weight's bytes as a 2D tensor [rows][row_bytes] of bytes, read in boxes of box_rows rows x
 * 128 bytes with the 128-byte swizzle. 0 on success. */
static int tmap_rows(CUtensorMap *m, const void *data, int64_t row_bytes, int64_t rows,
                     int box_rows) {
    tmap_encode_fn fn = tmap_encoder();
    if (!fn) return -1;
    cuuint64_t dims[2] = {(cuuint64_t)row_bytes, (cuuint64_t)rows};
    cuuint64_t strides[1] = {(cuuint64_t)row_bytes};
    cuuint32_t box[2] = {128, (cuuint32_t)box_rows}, elem[2] = {1, 1};
    CUresult r = fn(m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, (void *)data, dims, strides, box, elem,
                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? 0 : -1;
}

/* The formats the one-launch block takes: VOXQ_CUDA_MLP (read once; A/B timing) 0 = none,
 * 1 = bf16 and int4, 2 = every format (default). */
static int mlp_fmt_on(int fmt) {
    static int mode = -1;
    if (mode < 0) mode = (int)cuda_env_knob("VOXQ_CUDA_MLP", 2, 0, 2);
    if (fmt != ENG_W_BF16 && fmt != ENG_W_I8 && fmt != ENG_W_I4) return 0;
    return mode == 2 || (mode == 1 && fmt != ENG_W_I8);
}

/* Weight bytes a row of `in` inputs: 64 a k-step in every format (128 int4 inputs, 64 int8, 32
 * bf16). */
static int64_t mlp_row_bytes(int fmt, int64_t in) {
    return in * 64 / (fmt == ENG_W_I4 ? 128 : fmt == ENG_W_I8 ? 64 : 32);
}

/* The shapes k_mlp of w warps takes: bf16, int8 or int4 (both weights), 1-4 rows, whole slices
 * of every row (gate_up's w / 8 parts, and down's w-ths), eight gate_up m-tiles and one down
 * m-tile a block of a grid of one block an SM, int4 groups of whole k-steps that split no range,
 * the shared memory, and the driver's tensor-map encoder. */
static int mlp_shape_ok(const cuda_impl *c, const eng_tensor *x, const eng_tensor *act,
                        const eng_weight *gu, const eng_weight *down, const eng_tensor *norm,
                        int w) {
    if (x->dtype != ENG_DT_F32 || act->dtype != ENG_DT_F32 ||
        norm->dtype != ENG_DT_F32 || x->ndim < 2)
        return 0;
    int fmt = gu->fmt;
    if (!mlp_fmt_on(fmt) || down->fmt != fmt || !tmap_encoder()) return 0;
    int64_t n = x->shape[0], H = gu->in, F = down->in;
    int64_t rba = mlp_row_bytes(fmt, H), rbb = mlp_row_bytes(fmt, F);
    if (n < 1 || n > MLP_MAX_ROWS || gu->out != 2 * F || down->out != H) return 0;
    if (eng_numel(x) != n * H || eng_numel(act) != n * F || eng_numel(norm) != H) return 0;
    if (H % 256 || F % 256 || rba % (MLP_SLICE * (w / 8)) || (rbb / w) % MLP_SLICE ||
        H / 16 > c->sm_count || F / 8 > (int64_t)c->sm_count * 8)
        return 0;
    if (fmt == ENG_W_I4) {
        int gr = gu->group;
        if (gr <= 0 || gr % 128 || down->group != gr || H % gr || (F / w) % gr ||
            (H / gr) % 4 || (F / w / gr) % 4)
            return 0;
    }
    return mlp_smem(fmt, n, H, F, gu->group, w) + MLP_STATIC_SMEM <= c->smem_optin;
}

/* Warps a k_mlp block: 16 for int8 and int4, 8 for bf16 (one sequence, steps/s, one call:
 * int8 1,189.7 / 1,187.9 against 1,151.6 / 1,162.4, int4 1,059.6 / 1,057.9 against 1,057.0 /
 * 1,049.5, bf16 886.0 / 887.3 against 898.5 / 897.1; session 10). VOXQ_CUDA_MLP_WARPS = 8 or
 * 16 (read once; A/B timing) forces one for every format. */
static int mlp_warps(int fmt) {
    static int forced = -1;
    if (forced < 0) {
        long v = cuda_env_knob("VOXQ_CUDA_MLP_WARPS", 0, 0, 16);
        forced = v == 8 || v == 16 ? (int)v : 0;
    }
    return forced ? forced : fmt == ENG_W_BF16 ? 8 : 16;
}

template <int FMT, int W>
static cudaError_t launch_mlp(cuda_impl *c, const mlp_args &a, const CUtensorMap *tm,
                              size_t smem) {
    static unsigned done;
    cudaError_t e = smem_optin(k_mlp<FMT, W>, 227 * 1024 - MLP_STATIC_SMEM, &done);
    if (e != cudaSuccess) return e;
    cudaLaunchAttribute attr[2];
    cudaLaunchConfig_t cfg = pdl_cluster_config(dim3((unsigned)c->sm_count), dim3(32 * W), smem,
                                                c->stream, attr, 1);
    return cudaLaunchKernelEx(&cfg, k_mlp<FMT, W>, a, tm[0], tm[1]);
}

template <int W>
static cudaError_t launch_mlp_fmt(cuda_impl *c, int fmt, const mlp_args &a, const CUtensorMap *tm,
                                  size_t smem) {
    return fmt == ENG_W_I8   ? launch_mlp<ENG_W_I8, W>(c, a, tm, smem)
           : fmt == ENG_W_I4 ? launch_mlp<ENG_W_I4, W>(c, a, tm, smem)
                             : launch_mlp<ENG_W_BF16, W>(c, a, tm, smem);
}

int cuda_mlp(eng_backend *be, eng_tensor *x, eng_tensor *act, const eng_weight *gate_up,
             const eng_weight *down, const eng_tensor *norm, float eps) {
    cuda_impl *c = cuda_of(be);
    int w = mlp_warps(gate_up->fmt);
    if (w == 16 && !mlp_shape_ok(c, x, act, gate_up, down, norm, w)) w = 8;
    if (!mlp_shape_ok(c, x, act, gate_up, down, norm, w)) return ENG_EUNSUPPORTED;
    mlp_args a;
    a.sgu = gate_up->scales;
    a.sd = down->scales;
    a.norm = (const float *)norm->data;
    a.x = (float *)x->data;
    a.act = (float *)act->data;
    a.bar = c->grid_bar;
    a.eps = eps;
    a.n = (int)x->shape[0];
    a.H = (int)gate_up->in;
    a.F = (int)down->in;
    a.group = gate_up->fmt == ENG_W_I4 ? gate_up->group : 0;
    static int trace = -1;
    if (trace < 0) {
        trace = (int)cuda_env_knob("VOXQ_CUDA_MLP_TRACE", 0, 0, 1);
        unsigned long long init[8] = {~0ull, 0, 0, 0, 0, 0, 0, 0};
        if (trace) cudaMemcpyToSymbol(g_mlp_trace, init, sizeof init);
    }
    a.trace = trace;
    /* gate_up in boxes of 8 rows (its gate and its up half of an m-tile), down of 16 */
    CUtensorMap tm[2];
    memset(tm, 0, sizeof tm);
    if (tmap_rows(&tm[0], gate_up->data, mlp_row_bytes(gate_up->fmt, a.H), 2 * (int64_t)a.F, 8) ||
        tmap_rows(&tm[1], down->data, mlp_row_bytes(down->fmt, a.F), a.H, 16))
        return eng_backend_fail(be, ENG_EDEVICE, "mlp: the driver refused a tensor map of the "
                                "weights (%lld x %lld)", (long long)a.H, (long long)a.F);
    size_t smem = mlp_smem(gate_up->fmt, a.n, a.H, a.F, a.group, w);
    cudaError_t e = w == 16 ? launch_mlp_fmt<16>(c, gate_up->fmt, a, tm, smem)
                            : launch_mlp_fmt<8>(c, gate_up->fmt, a, tm, smem);
    if (e != cudaSuccess)
        return eng_backend_fail(be, ENG_EDEVICE, "mlp: launch: %s", cudaGetErrorString(e));
    return 0;
}
