/* cuda_linear.cu - y[n, out] = x[n, in] . W^T for bf16, int8 and int4 weights.
 *
 * Decoding multiplies a handful of rows (2 per sequence with CFG) by every weight of the model,
 * so the small-n path is a weight-streaming GEMV (k_gemv): a block owns a few output rows, its
 * threads stream 16-byte chunks of those rows (8 bf16, 16 int8 or 32 int4 values),
 * dequantize in registers and accumulate in f32 against up to GEMV_MAX_ROWS rows of x, which stay
 * in L1/L2. Each weight byte is read once per call. Larger n (the encoder, cross K/V) goes to
 * cuBLAS in bf16 with f32 accumulation; quantized weights are expanded to bf16 in scratch first. */
#include "engine/cuda/cuda_internal.h"

#define GEMV_MAX_ROWS 8
#define GEMV_MAX_THREADS 512 /* most threads per block (bf16: K = 8192 gets 2 chunks a thread) */
/* The integer formats keep 256: their dequantization needs the registers 512 would take. */
#define GEMV_THREADS_FOR(FMT) ((FMT) == ENG_W_BF16 ? 512 : 256)
#define GEMV_WARPS 4 /* warps per block of the any-shape fallback */

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

/* y[NR, out] = x[NR, in] . W^T for one format. A block owns R output rows; its threads split the
 * input dimension in 16-byte chunks of W, so each thread loads R independent weight vectors per
 * step (memory-level parallelism) and reuses every x value it loads for all R rows. Partial sums
 * meet in shared memory. int8 rows carry one scale, int4 one per group of `group` inputs
 * (group % 32 == 0, so a chunk never straddles groups).
 * PRE_RMSNORM: the loop multiplies x by the norm weight and also sums x^2 (each x value is seen by
 * exactly one thread of the block), and the row's 1/rms scales the dot products at the end: no
 * separate pass. PRE_SILU_MUL: x is [gate | up] and the loop uses silu(gate) * up.
 * EPI (silu epilogue): the block's first R/2 rows are gate rows g0.., the others the matching up
 * rows out/2 + g0..; it writes y[n, out/2] = silu(gate) * up. ACC adds into y. */
template <int FMT, int NR, int R, int PRE, int ACC, int EPI>
__global__ void __launch_bounds__(GEMV_THREADS_FOR(FMT))
k_gemv(float *__restrict__ y, const float *__restrict__ x, const uint4 *__restrict__ w,
       const float *__restrict__ scales, int out, int in, int group,
       const float *__restrict__ norm, float eps) {
    constexpr int V = wload<FMT>::vals;
    __shared__ float s_part[GEMV_MAX_THREADS / 32][R * NR];
    __shared__ float s_ss[GEMV_MAX_THREADS / 32][NR];
    int half = out / 2;
    int rows[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        rows[r] = EPI ? (r < R / 2 ? blockIdx.x * (R / 2) + r : half + blockIdx.x * (R / 2) + r - R / 2)
                      : blockIdx.x * R + r;
    int chunks = in / V, ngroups = FMT == ENG_W_I4 ? (in + group - 1) / group : 1;
    /* The weights do not depend on the previous kernel: start streaming them before waiting. */
    pdl_trigger();
    uint4 q[R];
    if ((int)threadIdx.x < chunks) {
#pragma unroll
        for (int r = 0; r < R; r++)
            q[r] = row_ok<EPI>(rows[r], r, R, out, half)
                       ? __ldg(w + (size_t)rows[r] * chunks + threadIdx.x)
                       : make_uint4(0, 0, 0, 0);
    }
    pdl_wait();
    float acc[R][NR], ss[NR];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < NR; n++) acc[r][n] = 0.f;
#pragma unroll
    for (int n = 0; n < NR; n++) ss[n] = 0.f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        if (c != (int)threadIdx.x) {
#pragma unroll
            for (int r = 0; r < R; r++)
                q[r] = row_ok<EPI>(rows[r], r, R, out, half)
                           ? __ldg(w + (size_t)rows[r] * chunks + c)
                           : make_uint4(0, 0, 0, 0);
        }
        float sc[R];
        if (FMT == ENG_W_I4) {
#pragma unroll
            for (int r = 0; r < R; r++)
                sc[r] = row_ok<EPI>(rows[r], r, R, out, half)
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
                    for (int j = 0; j < 8; j++) xf[n][j] *= g[j] / (1.f + __expf(-g[j]));
                }
            } else {
#pragma unroll
                for (int n = 0; n < NR; n++) load8(x + (size_t)n * in + k, xf[n]);
            }
            if (PRE == ENG_PRE_RMSNORM) {
                float nw[8];
                load8(norm + k, nw);
#pragma unroll
                for (int n = 0; n < NR; n++)
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        ss[n] = fmaf(xf[n][j], xf[n][j], ss[n]);
                        xf[n][j] *= nw[j];
                    }
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
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
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int n = 0; n < NR; n++) {
            float v = warp_sum(acc[r][n]);
            if (lane == 0) s_part[warp][r * NR + n] = v;
        }
    if (PRE == ENG_PRE_RMSNORM) {
#pragma unroll
        for (int n = 0; n < NR; n++) {
            float v = warp_sum(ss[n]);
            if (lane == 0) s_ss[warp][n] = v;
        }
    }
    __syncthreads();
    constexpr int NOUT = EPI ? R / 2 : R;
    for (int i = threadIdx.x; i < NOUT * NR; i += blockDim.x) {
        int r = i / NR, n = i % NR;
        float scale_n = 1.f;
        if (PRE == ENG_PRE_RMSNORM) {
            float t = 0.f;
            for (int k = 0; k < nwarps; k++) t += s_ss[k][n];
            scale_n = rsqrtf(t / (float)in + eps);
        }
        float v = 0.f;
        for (int k = 0; k < nwarps; k++) v += s_part[k][i];
        int orow = EPI ? (int)blockIdx.x * (R / 2) + r : (int)blockIdx.x * R + r;
        if (FMT == ENG_W_I8) v *= scales[orow];
        v *= scale_n;
        if (EPI) {
            if (orow >= half) continue;
            float u = 0.f;
            for (int k = 0; k < nwarps; k++) u += s_part[k][(r + R / 2) * NR + n];
            if (FMT == ENG_W_I8) u *= scales[half + orow];
            u *= scale_n;
            y[(size_t)n * half + orow] = v / (1.f + __expf(-v)) * u;
        } else if (orow < out) {
            if (ACC)
                y[(size_t)n * out + orow] += v;
            else
                y[(size_t)n * out + orow] = v;
        }
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

/* Threads per block: enough 16-byte chunks for each (at most `most`, at least a warp). */
static int gemv_threads(int chunks, int most) {
    int t = chunks < most ? chunks : most;
    t = (t + 31) / 32 * 32;
    return t < 32 ? 32 : t;
}

/* Rows of W per block: more rows reuse each x load more often, fewer give small matrices
 * enough blocks to keep every SM streaming. */
template <int FMT> struct rows_per_block { static constexpr int big = FMT == ENG_W_BF16 ? 4 : 8; };

template <int FMT, int NR, int R, int PRE, int ACC, int EPI>
static cudaError_t launch_k(const eng_weight *w, float *y, const float *x, const float *norm,
                            float eps, cudaStream_t st) {
    cudaLaunchConfig_t cfg = {};
    int64_t rows = EPI ? w->out / 2 : w->out, per = EPI ? R / 2 : R;
    cfg.gridDim = dim3((unsigned)((rows + per - 1) / per));
    int threads = gemv_threads((int)w->in / wload<FMT>::vals, GEMV_THREADS_FOR(FMT));
    cfg.blockDim = dim3((unsigned)threads);
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, k_gemv<FMT, NR, R, PRE, ACC, EPI>, y, x,
                              (const uint4 *)w->data, w->scales, (int)w->out, (int)w->in,
                              w->group, norm, eps);
}

template <int FMT, int NR, int PRE, int ACC, int EPI>
static cudaError_t launch_fmt(const eng_weight *w, float *y, const float *x, const float *norm,
                              float eps, cudaStream_t st) {
    constexpr int RB = rows_per_block<FMT>::big;
    if (w->out / RB >= 264) return launch_k<FMT, NR, RB, PRE, ACC, EPI>(w, y, x, norm, eps, st);
    return launch_k<FMT, NR, 2, PRE, ACC, EPI>(w, y, x, norm, eps, st);
}

template <int NR, int PRE, int ACC, int EPI>
static cudaError_t launch_pre(const eng_weight *w, float *y, const float *x, const float *norm,
                              float eps, cudaStream_t st) {
    switch (w->fmt) {
    case ENG_W_BF16: return launch_fmt<ENG_W_BF16, NR, PRE, ACC, EPI>(w, y, x, norm, eps, st);
    case ENG_W_I8: return launch_fmt<ENG_W_I8, NR, PRE, ACC, EPI>(w, y, x, norm, eps, st);
    default: return launch_fmt<ENG_W_I4, NR, PRE, ACC, EPI>(w, y, x, norm, eps, st);
    }
}

/* Picks the template for the fused variant. The combinations the decoder uses are instantiated:
 * plain, norm, norm + silu epilogue (gate_up), residual, silu prologue + residual, norm +
 * residual; anything else is composed by cuda_linear_ex. */
template <int NR>
static cudaError_t launch_gemv(const eng_weight *w, float *y, const float *x, int pre, int acc,
                               int post, const float *norm, float eps, cudaStream_t st) {
    if (post == ENG_POST_SILU_MUL)
        return launch_pre<NR, ENG_PRE_RMSNORM, 0, 1>(w, y, x, norm, eps, st);
    if (pre == ENG_PRE_RMSNORM)
        return acc ? launch_pre<NR, ENG_PRE_RMSNORM, 1, 0>(w, y, x, norm, eps, st)
                   : launch_pre<NR, ENG_PRE_RMSNORM, 0, 0>(w, y, x, norm, eps, st);
    if (pre == ENG_PRE_SILU_MUL)
        return launch_pre<NR, ENG_PRE_SILU_MUL, 1, 0>(w, y, x, norm, eps, st);
    return acc ? launch_pre<NR, ENG_PRE_NONE, 1, 0>(w, y, x, norm, eps, st)
               : launch_pre<NR, ENG_PRE_NONE, 0, 0>(w, y, x, norm, eps, st);
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

/* Runs the small-n kernels over x in slices of 8, 4, 2 and 1 rows (decoding uses even row
 * counts; the model pads to power-of-two buckets). */
static int gemv_rows(eng_backend *be, float *yp, const float *xp, const eng_weight *w, int64_t n,
                     int pre, int acc, int post, const float *norm, float eps) {
    cudaStream_t st = cuda_of(be)->stream;
    int64_t xin = pre == ENG_PRE_SILU_MUL ? 2 * w->in : w->in;
    for (int64_t r0 = 0; r0 < n;) {
        int64_t left = n - r0;
        int m = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        const float *xr = xp + r0 * xin;
        float *yr = yp + r0 * (post == ENG_POST_SILU_MUL ? w->out / 2 : w->out);
        cudaError_t e;
        switch (m) {
        case 8: e = launch_gemv<8>(w, yr, xr, pre, acc, post, norm, eps, st); break;
        case 4: e = launch_gemv<4>(w, yr, xr, pre, acc, post, norm, eps, st); break;
        case 2: e = launch_gemv<2>(w, yr, xr, pre, acc, post, norm, eps, st); break;
        default: e = launch_gemv<1>(w, yr, xr, pre, acc, post, norm, eps, st); break;
        }
        if (e != cudaSuccess)
            return eng_backend_fail(be, ENG_EDEVICE, "linear: launch: %s", cudaGetErrorString(e));
        r0 += m;
    }
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
    if (n > 2 * GEMV_MAX_ROWS) return gemm_cublas(be, yp, xp, w, (int)n);
    if (!vector_path_ok(w)) {
        int blocks = (int)((w->out + GEMV_WARPS - 1) / GEMV_WARPS);
        k_gemv_any<<<blocks, GEMV_WARPS * 32, 0, cuda_of(be)->stream>>>(
            yp, xp, w->data, w->scales, w->fmt, (int)n, (int)w->out, (int)w->in, w->group);
        CU_LAUNCHED(be);
        return 0;
    }
    return gemv_rows(be, yp, xp, w, n, ENG_PRE_NONE, 0, ENG_POST_NONE, NULL, 0.f);
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
    int fused = combo_ok && n <= 2 * GEMV_MAX_ROWS && vector_path_ok(w) &&
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
    return gemv_rows(be, (float *)y->data, (const float *)x->data, w, n, a->pre, a->accumulate,
                     post, a->pre == ENG_PRE_RMSNORM ? (const float *)a->norm->data : NULL, a->eps);
}
