/* stream-bench.cu - how fast one block an SM of warps with private TMA rings can stream a
 * weight matrix, by the order it reads it in (a question for k_mlp, cuda_mlp.cu; a device tool,
 * not part of the engine).
 *
 * A "layer" is a [rows][2048] byte matrix (default 50 MB, the int8 MLP of Dia); the bench reads
 * LAYERS distinct ones in turn (more than L2 holds), each by one launch, and prints GB/s. Every
 * warp owns 16-row tiles (tile = global warp + i * all warps) and streams each through a ring of
 * RING slots of 4 KB on mbarriers; the consumer reads its slot from shared memory (one 16-byte
 * word a lane, summed so nothing is optimised away) and refills it. The orders:
 *   0 k_mlp's: a slot = 16 rows x 256 bytes, two 2D tensor-map boxes of 16 x 128 (128B swizzle)
 *   1 the same slot as one box of 16 rows x 256 bytes (no swizzle)
 *   2 a slot = 4 KB contiguous (two whole rows), one 1D bulk copy
 *   3 a slot = 16 rows x 256 bytes as 16 bulk copies of 256 bytes (the pre-tensor-map k_mlp)
 * Usage: stream-bench [order] [warps] [ring] [MB] [layers] [reps] [work]
 *   work: FFMA-chain iterations a slot per lane, to stand for the consumer's compute.
 * Build (here; not part of the CMake build, on purpose standalone: its mbarrier helpers repeat
 * cuda_mlp.cu's few lines rather than reach into the engine):
 *   nvcc -O3 -arch=sm_90a -std=c++17 -o .devbuild/gpu/stream-bench tools/device/stream-bench.cu
 * Session 9's figures are in docs/perf-notes.md. */
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define ROWB 2048
#define SLOT 4096

#define CK(x)                                                                              \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));     \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

__device__ __forceinline__ unsigned su32(const void *p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, unsigned parity) {
    unsigned done;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(done)
                     : "r"(su32(b)), "r"(parity)
                     : "memory");
    } while (!done);
}

struct args {
    const unsigned char *w;
    int tiles, order, ring, work;
    float *sink;
};

__global__ void k_stream(const args a, const __grid_constant__ CUtensorMap m128,
                         const __grid_constant__ CUtensorMap m256) {
    extern __shared__ __align__(1024) unsigned char smem[];
    __shared__ __align__(8) uint64_t full[32][8];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    unsigned char *base = smem + ((1024 - (su32(smem) & 1023)) & 1023);
    unsigned char *ring = base + (size_t)warp * a.ring * SLOT;
    const int gw = blockIdx.x * nw + warp, allw = gridDim.x * nw;
    const int mine = gw < a.tiles ? (a.tiles - 1 - gw) / allw + 1 : 0;
    const int S = mine * (ROWB * 16 / SLOT); /* 8 slots a tile */
    if (lane == 0) {
        for (int i = 0; i < a.ring; i++)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(su32(&full[warp][i])));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncwarp();
    auto issue = [&](int j) {
        int tile = gw + (j / 8) * allw, s = j % 8;
        uint64_t *bar = &full[warp][j % a.ring];
        unsigned char *sl = ring + (size_t)(j % a.ring) * SLOT;
        if (a.order == 3) {
            if (lane == 0)
                asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                                 su32(bar)),
                             "r"(SLOT)
                             : "memory");
            __syncwarp();
            if (lane < 16) {
                const unsigned char *src = a.w + ((size_t)tile * 16 + lane) * ROWB + s * 256;
                asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes "
                             "[%0], [%1], 256, [%2];" ::"r"(su32(sl + lane * 256)),
                             "l"(src), "r"(su32(bar))
                             : "memory");
            }
            return;
        }
        if (lane) return;
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(su32(bar)),
                     "r"(SLOT)
                     : "memory");
        if (a.order == 2) {
            const unsigned char *src = a.w + (size_t)tile * 16 * ROWB + (size_t)s * SLOT;
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], "
                         "[%1], %2, [%3];" ::"r"(su32(sl)),
                         "l"(src), "r"(SLOT), "r"(su32(bar))
                         : "memory");
            return;
        }
        int nbox = a.order == 0 ? 2 : 1;
        const CUtensorMap *m = a.order == 0 ? &m128 : &m256;
        for (int h = 0; h < nbox; h++)
            asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_"
                         "tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(su32(sl + h * 2048)),
                         "l"((unsigned long long)m), "r"(s * 256 + h * 128), "r"(tile * 16),
                         "r"(su32(bar))
                         : "memory");
    };
    for (int j = 0; j < a.ring && j < S; j++) issue(j);
    float acc = 0.f;
    for (int j = 0; j < S; j++) {
        mbar_wait(&full[warp][j % a.ring], (unsigned)(j / a.ring) & 1u);
        const uint4 *sl = (const uint4 *)(ring + (size_t)(j % a.ring) * SLOT);
        for (int u = 0; u < 8; u++) {
            uint4 v = sl[u * 32 + lane];
            acc += __int_as_float(v.x & 0x3f7fffff) + __int_as_float(v.w & 0x3f7fffff);
        }
        for (int i = 0; i < a.work; i++) acc = fmaf(acc, 0.999f, 1e-3f);
        __syncwarp();
        if (j + a.ring < S) issue(j + a.ring);
    }
    if (acc == 12345.f) a.sink[0] = acc;
}

typedef CUresult (*enc_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                           const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                           const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                           CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static void tmap(enc_fn fn, CUtensorMap *m, void *p, size_t rows, int box_bytes, int swz) {
    cuuint64_t dims[2] = {ROWB, rows}, strides[1] = {ROWB};
    cuuint32_t box[2] = {(cuuint32_t)box_bytes, 16}, el[2] = {1, 1};
    CUresult r = fn(m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, p, dims, strides, box, el,
                    CU_TENSOR_MAP_INTERLEAVE_NONE,
                    swz ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "tensor map: %d\n", (int)r);
        exit(1);
    }
}

int main(int argc, char **argv) {
    int order = argc > 1 ? atoi(argv[1]) : 0, warps = argc > 2 ? atoi(argv[2]) : 8;
    int ring = argc > 3 ? atoi(argv[3]) : 3, mb = argc > 4 ? atoi(argv[4]) : 50;
    int layers = argc > 5 ? atoi(argv[5]) : 16, reps = argc > 6 ? atoi(argv[6]) : 5;
    int work = argc > 7 ? atoi(argv[7]) : 0;
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    size_t tiles = ((size_t)mb << 20) / (16 * ROWB), rows = tiles * 16, bytes = rows * ROWB;
    unsigned char *w;
    float *sink;
    CK(cudaMalloc(&w, bytes * layers));
    CK(cudaMemset(w, 1, bytes * layers));
    CK(cudaMalloc(&sink, 4));
    void *p = NULL;
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                        &q));
    CUtensorMap *m = (CUtensorMap *)malloc(sizeof(CUtensorMap) * 2 * layers);
    for (int l = 0; l < layers; l++) {
        tmap((enc_fn)p, &m[2 * l], w + bytes * l, rows, 128, 1);
        tmap((enc_fn)p, &m[2 * l + 1], w + bytes * l, rows, 256, 0);
    }
    size_t smem = (size_t)warps * ring * SLOT + 1024;
    CK(cudaFuncSetAttribute(k_stream, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float best = 1e30f, sum = 0.f;
    for (int r = 0; r <= reps; r++) {
        CK(cudaEventRecord(e0));
        for (int l = 0; l < layers; l++) {
            args a = {w + bytes * l, (int)tiles, order, ring, work, sink};
            k_stream<<<sms, warps * 32, smem>>>(a, m[2 * l], m[2 * l + 1]);
        }
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaGetLastError());
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r == 0) continue; /* warm-up */
        if (ms < best) best = ms;
        sum += ms;
    }
    double us = best * 1e3 / layers;
    printf("order %d warps %d ring %d work %d: %.1f MB a layer, best %.2f us a layer, %.0f GB/s "
           "(mean %.0f)\n",
           order, warps, ring, work, bytes / 1048576.0, us, bytes / (us * 1e3),
           bytes / (sum / reps * 1e3 / layers * 1e3));
    return 0;
}
