/* cuda_linear.cu - y[n, out] = x[n, in] . W^T for bf16, int8 and int4 weights.
 *
 * Decoding multiplies a handful of rows (2 per sequence with CFG) by every weight of the model,
 * so the small-n path is a weight-streaming GEMV: one warp per output row, each lane loading 16
 * bytes of W at a time (8 bf16, 16 int8 or 32 int4 values), dequantizing in registers and
 * accumulating in f32 against up to GEMV_MAX_ROWS rows of x, which stay in L1/L2. Each weight
 * byte is read once per call. Larger n (the encoder, cross K/V) goes to cuBLAS in bf16 with f32
 * accumulation; quantized weights are expanded to bf16 in scratch first. */
#include "engine/cuda/cuda_internal.h"

#define GEMV_MAX_ROWS 8
#define GEMV_WARPS 4

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void load8(const float *x, float *f) {
    float4 a = __ldg((const float4 *)x), b = __ldg((const float4 *)(x + 4));
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

__device__ __forceinline__ float bf16lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

/* BF16: lane handles 8 consecutive inputs per 16-byte load. in % 8 == 0. */
template <int NR>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
k_gemv_bf16(float *__restrict__ y, const float *__restrict__ x, const uint4 *__restrict__ w,
            int out, int in) {
    int row = blockIdx.x * GEMV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= out) return;
    const uint4 *wr = w + (size_t)row * (in / 8);
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.f;
    int chunks = in / 8;
#pragma unroll 4
    for (int c = lane; c < chunks; c += 32) {
        uint4 q = __ldg(wr + c);
        float wf[8] = {bf16lo(q.x), bf16hi(q.x), bf16lo(q.y), bf16hi(q.y),
                       bf16lo(q.z), bf16hi(q.z), bf16lo(q.w), bf16hi(q.w)};
#pragma unroll
        for (int r = 0; r < NR; r++) {
            float xf[8];
            load8(x + (size_t)r * in + c * 8, xf);
#pragma unroll
            for (int j = 0; j < 8; j++) acc[r] = fmaf(wf[j], xf[j], acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) y[(size_t)r * out + row] = s;
    }
}

/* INT8: 16 inputs per load, one scale per output row. in % 16 == 0. */
template <int NR>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
k_gemv_i8(float *__restrict__ y, const float *__restrict__ x, const uint4 *__restrict__ w,
          const float *__restrict__ scales, int out, int in) {
    int row = blockIdx.x * GEMV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= out) return;
    const uint4 *wr = w + (size_t)row * (in / 16);
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.f;
    int chunks = in / 16;
#pragma unroll 2
    for (int c = lane; c < chunks; c += 32) {
        uint4 q = __ldg(wr + c);
        uint32_t words[4] = {q.x, q.y, q.z, q.w};
        float wf[16];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int b = 0; b < 4; b++) wf[i * 4 + b] = (float)(int8_t)(words[i] >> (8 * b));
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const float *xr = x + (size_t)r * in + c * 16;
            float xf[8];
            load8(xr, xf);
#pragma unroll
            for (int j = 0; j < 8; j++) acc[r] = fmaf(wf[j], xf[j], acc[r]);
            load8(xr + 8, xf);
#pragma unroll
            for (int j = 0; j < 8; j++) acc[r] = fmaf(wf[8 + j], xf[j], acc[r]);
        }
    }
    float sc = scales[row];
#pragma unroll
    for (int r = 0; r < NR; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) y[(size_t)r * out + row] = s * sc;
    }
}

/* INT4: 32 inputs per load (nibble = q + 8, low nibble first), scale per group of `group`
 * inputs; group % 32 == 0 so a load never straddles two groups. in % 32 == 0. */
template <int NR>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
k_gemv_i4(float *__restrict__ y, const float *__restrict__ x, const uint4 *__restrict__ w,
          const float *__restrict__ scales, int out, int in, int group) {
    int row = blockIdx.x * GEMV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= out) return;
    const uint4 *wr = w + (size_t)row * (in / 32);
    int ngroups = (in + group - 1) / group;
    const float *sr = scales + (size_t)row * ngroups;
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.f;
    int chunks = in / 32;
#pragma unroll 2
    for (int c = lane; c < chunks; c += 32) {
        uint4 q = __ldg(wr + c);
        float sc = __ldg(sr + (c * 32) / group);
        uint32_t words[4] = {q.x, q.y, q.z, q.w};
        float part[NR];
#pragma unroll
        for (int r = 0; r < NR; r++) part[r] = 0.f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float wf[8];
#pragma unroll
            for (int b = 0; b < 8; b++) wf[b] = (float)((int)((words[i] >> (4 * b)) & 15u) - 8);
#pragma unroll
            for (int r = 0; r < NR; r++) {
                float xf[8];
                load8(x + (size_t)r * in + c * 32 + i * 8, xf);
#pragma unroll
                for (int j = 0; j < 8; j++) part[r] = fmaf(wf[j], xf[j], part[r]);
            }
        }
#pragma unroll
        for (int r = 0; r < NR; r++) acc[r] = fmaf(part[r], sc, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        float s = warp_sum(acc[r]);
        if (lane == 0) y[(size_t)r * out + row] = s;
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

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

template <int NR>
static void launch_gemv(const eng_weight *w, float *y, const float *x, cudaStream_t st) {
    int blocks = (int)((w->out + GEMV_WARPS - 1) / GEMV_WARPS);
    int out = (int)w->out, in = (int)w->in;
    switch (w->fmt) {
    case ENG_W_BF16:
        k_gemv_bf16<NR><<<blocks, GEMV_WARPS * 32, 0, st>>>(y, x, (const uint4 *)w->data, out, in);
        break;
    case ENG_W_I8:
        k_gemv_i8<NR><<<blocks, GEMV_WARPS * 32, 0, st>>>(y, x, (const uint4 *)w->data, w->scales,
                                                          out, in);
        break;
    default:
        k_gemv_i4<NR><<<blocks, GEMV_WARPS * 32, 0, st>>>(y, x, (const uint4 *)w->data, w->scales,
                                                          out, in, w->group);
        break;
    }
}

static int vector_path_ok(const eng_weight *w) {
    switch (w->fmt) {
    case ENG_W_BF16: return w->in % 8 == 0;
    case ENG_W_I8: return w->in % 16 == 0;
    case ENG_W_I4: return w->in % 32 == 0 && w->group % 32 == 0;
    default: return 0;
    }
}

static int gemm_cublas(eng_backend *be, float *y, const float *x, const eng_weight *w, int n) {
    cuda_impl *c = cuda_of(be);
    size_t xel = (size_t)n * w->in, wel = (size_t)w->out * w->in;
    int needs_w = w->fmt != ENG_W_BF16;
    void *scratch = NULL;
    int rc = cuda_scratch(be, xel * 2 + (needs_w ? wel * 2 : 0) + 256, &scratch);
    if (rc) return rc;
    __nv_bfloat16 *xb = (__nv_bfloat16 *)scratch;
    __nv_bfloat16 *wb = (__nv_bfloat16 *)w->data;
    k_to_bf16<<<512, 256, 0, c->stream>>>(xb, x, xel);
    CU_LAUNCHED(be);
    if (needs_w) {
        wb = (__nv_bfloat16 *)((char *)scratch + ((xel * 2 + 255) / 256) * 256);
        k_dequant_bf16<<<1024, 256, 0, c->stream>>>(wb, w->data, w->scales, w->fmt, (int)w->out,
                                                    (int)w->in, w->group);
        CU_LAUNCHED(be);
    }
    const float one = 1.f, zero = 0.f;
    CUBLAS_CHECK(be, cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->out, n, (int)w->in,
                                  &one, wb, CUDA_R_16BF, (int)w->in, xb, CUDA_R_16BF, (int)w->in,
                                  &zero, y, CUDA_R_32F, (int)w->out, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    return 0;
}

int cuda_linear(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w) {
    int64_t n = x->shape[0];
    CUDA_REQUIRE(be, x->ndim >= 2 && x->dtype == ENG_DT_F32 && y->dtype == ENG_DT_F32, "linear",
                 "x and y must be F32 [n, features]");
    CUDA_REQUIRE(be, eng_numel(x) == n * w->in && eng_numel(y) == n * w->out, "linear",
                 "x has %lld values, y %lld, for n=%lld and weight [%lld, %lld]",
                 (long long)eng_numel(x), (long long)eng_numel(y), (long long)n,
                 (long long)w->out, (long long)w->in);
    CUDA_REQUIRE(be, w->fmt == ENG_W_BF16 || w->fmt == ENG_W_I8 || w->fmt == ENG_W_I4, "linear",
                 "weight format %s is not loaded for CUDA", eng_wfmt_name(w->fmt));
    if (n == 0) return 0;
    cudaStream_t st = cuda_of(be)->stream;
    const float *xp = (const float *)x->data;
    float *yp = (float *)y->data;
    if (n > 2 * GEMV_MAX_ROWS) return gemm_cublas(be, yp, xp, w, (int)n);
    if (!vector_path_ok(w)) {
        int blocks = (int)((w->out + GEMV_WARPS - 1) / GEMV_WARPS);
        k_gemv_any<<<blocks, GEMV_WARPS * 32, 0, st>>>(yp, xp, w->data, w->scales, w->fmt, (int)n,
                                                       (int)w->out, (int)w->in, w->group);
        CU_LAUNCHED(be);
        return 0;
    }
    for (int64_t r0 = 0; r0 < n; r0 += GEMV_MAX_ROWS) {
        int m = (int)(n - r0 < GEMV_MAX_ROWS ? n - r0 : GEMV_MAX_ROWS);
        const float *xr = xp + r0 * w->in;
        float *yr = yp + r0 * w->out;
        switch (m) {
        case 1: launch_gemv<1>(w, yr, xr, st); break;
        case 2: launch_gemv<2>(w, yr, xr, st); break;
        case 3: launch_gemv<3>(w, yr, xr, st); break;
        case 4: launch_gemv<4>(w, yr, xr, st); break;
        case 5: launch_gemv<5>(w, yr, xr, st); break;
        case 6: launch_gemv<6>(w, yr, xr, st); break;
        case 7: launch_gemv<7>(w, yr, xr, st); break;
        default: launch_gemv<8>(w, yr, xr, st); break;
        }
        CU_LAUNCHED(be);
    }
    return 0;
}
