/* cuda_conv.cu - the DAC convolutions on [channels, time] f32 signals.
 *
 * Both convolutions are f32 matrix products on cuBLAS (f32 arithmetic, no TF32) plus a small
 * kernel: conv1d is one product per tap over a zero-padded copy of x (the taps accumulate into
 * y, which starts as the bias); conv_transpose1d is one product Z = W^T x for every (out channel,
 * tap) pair followed by a gather of the taps that land on each output sample. The direct
 * kernels (one thread per output sample) remain for shapes cuBLAS cannot take and as the
 * reference the tests compare against. */
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/cuda_internal.h"

__global__ void k_conv1d(float *y, const float *x, const float *w, const float *b, int cin,
                         int cout, int tin, int tout, int k, int dil, int pad) {
    size_t total = (size_t)cout * tout;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int o = (int)(idx / tout), t = (int)(idx % tout);
        float acc = b ? b[o] : 0.f;
        const float *wo = w + (size_t)o * cin * k;
        for (int i = 0; i < cin; i++) {
            const float *xi = x + (size_t)i * tin;
            const float *wi = wo + (size_t)i * k;
            for (int j = 0; j < k; j++) {
                int src = t + dil * j - pad;
                if (src >= 0 && src < tin) acc = fmaf(__ldg(wi + j), __ldg(xi + src), acc);
            }
        }
        y[idx] = acc;
    }
}

__global__ void k_bias_rows(float *y, const float *b, int rows, size_t t) {
    size_t total = (size_t)rows * t;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = b ? b[i / t] : 0.f;
}

/* xpad[i][pad + t] = x[i][t], zeros around. */
__global__ void k_pad_rows(float *xp, const float *x, int rows, int t, int pad) {
    size_t tp = (size_t)t + 2 * pad, total = (size_t)rows * tp;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / tp;
        long long c = (long long)(i % tp) - pad;
        xp[i] = (c >= 0 && c < t) ? x[r * t + c] : 0.f;
    }
}

/* wt[j][o][i] = w[o][i][j]: each tap's weights as one row-major [cout, cin] matrix. */
__global__ void k_taps_first(float *wt, const float *w, int cout, int cin, int k) {
    size_t total = (size_t)cout * cin * k;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t j = idx % k, oi = idx / k;
        wt[j * (size_t)cout * cin + oi] = w[idx];
    }
}

static unsigned blocks_for(size_t n) {
    size_t b = (n + 255) / 256;
    return (unsigned)(b > 65535 ? 65535 : (b ? b : 1));
}

/* conv1d as sum over taps j of W_j [cout, cin] . xpad[:, j*dil : j*dil + tout]. */
static int conv1d_gemm(eng_backend *be, float *y, const float *x, const float *w, const float *b,
                       int cin, int cout, int tin, int tout, int k, int dil, int pad) {
    cuda_impl *c = cuda_of(be);
    size_t tp = (size_t)tin + 2 * pad;
    size_t xp_bytes = ((size_t)cin * tp * 4 + 255) / 256 * 256, wt_bytes = (size_t)cout * cin * k * 4;
    void *scratch = NULL;
    int rc = cuda_scratch(be, xp_bytes + wt_bytes, &scratch);
    if (rc) return rc;
    float *xp = (float *)scratch, *wt = (float *)((char *)scratch + xp_bytes);
    k_pad_rows<<<blocks_for((size_t)cin * tp), 256, 0, c->stream>>>(xp, x, cin, tin, pad);
    k_taps_first<<<blocks_for((size_t)cout * cin * k), 256, 0, c->stream>>>(wt, w, cout, cin, k);
    k_bias_rows<<<blocks_for((size_t)cout * tout), 256, 0, c->stream>>>(y, b, cout, (size_t)tout);
    CU_LAUNCHED(be);
    const float one = 1.f;
    for (int j = 0; j < k; j++)
        CUBLAS_CHECK(be, cublasSgemm(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, tout, cout, cin, &one,
                                     xp + (size_t)j * dil, (int)tp, wt + (size_t)j * cout * cin,
                                     cin, &one, y, tout));
    return 0;
}

/* y[o][u] = b[o] + sum over taps j with (u + pad - j) = t * stride, 0 <= t < tin, of z[o*k + j][t]. */
__global__ void k_gather_taps(float *y, const float *z, const float *b, int cout, int k, int tin,
                              int tout, int stride, int pad) {
    size_t total = (size_t)cout * tout;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int o = (int)(idx / tout), u = (int)(idx % tout) + pad;
        float acc = b ? b[o] : 0.f;
        for (int j = u % stride; j < k; j += stride) {
            int t = (u - j) / stride;
            if (t >= 0 && t < tin) acc += z[((size_t)o * k + j) * tin + t];
        }
        y[idx] = acc;
    }
}

/* conv_transpose1d: z[(o, j)][t] = sum_i w[i][o][j] x[i][t] in one product, then the gather. */
static int convt_gemm(eng_backend *be, float *y, const float *x, const float *w, const float *b,
                      int cin, int cout, int tin, int tout, int k, int stride, int pad) {
    cuda_impl *c = cuda_of(be);
    void *scratch = NULL;
    int rc = cuda_scratch(be, (size_t)cout * k * tin * 4, &scratch);
    if (rc) return rc;
    float *z = (float *)scratch;
    const float one = 1.f, zero = 0.f;
    CUBLAS_CHECK(be, cublasSgemm(c->cublas, CUBLAS_OP_N, CUBLAS_OP_T, tin, cout * k, cin, &one, x,
                                 tin, w, cout * k, &zero, z, tin));
    k_gather_taps<<<blocks_for((size_t)cout * tout), 256, 0, c->stream>>>(y, z, b, cout, k, tin,
                                                                         tout, stride, pad);
    CU_LAUNCHED(be);
    return 0;
}

/* The direct kernels, for the tests' comparison and shapes cuBLAS would not take. */
static int g_conv_direct = -1;
static int conv_direct(void) {
    if (g_conv_direct < 0) {
        const char *v = getenv("VOXQ_CUDA_CONV_DIRECT");
        g_conv_direct = v && *v && strcmp(v, "0") != 0;
    }
    return g_conv_direct;
}

int cuda_conv1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                const eng_tensor *bias, int dilation, int padding) {
    CUDA_REQUIRE(be, x->ndim == 2 && w->ndim == 3 && y->ndim == 2 && w->shape[1] == x->shape[0] &&
                         y->shape[0] == w->shape[0] && dilation >= 1 && padding >= 0,
                 "conv1d", "x [cin, t], w [cout, cin, k], y [cout, t']");
    int cin = (int)x->shape[0], tin = (int)x->shape[1], cout = (int)w->shape[0];
    int k = (int)w->shape[2];
    int64_t tout = (int64_t)tin + 2 * padding - (int64_t)dilation * (k - 1);
    CUDA_REQUIRE(be, tout == y->shape[1], "conv1d", "y has %lld samples, expected %lld",
                 (long long)y->shape[1], (long long)tout);
    CUDA_REQUIRE(be, !bias || eng_numel(bias) == cout, "conv1d", "bias must have %d values", cout);
    size_t total = (size_t)cout * tout;
    if (!total) return 0;
    if (!conv_direct() && !cuda_of(be)->capturing)
        return conv1d_gemm(be, (float *)y->data, (const float *)x->data, (const float *)w->data,
                           bias ? (const float *)bias->data : NULL, cin, cout, tin, (int)tout, k,
                           dilation, padding);
    int blocks = (int)((total + 255) / 256);
    if (blocks > 1 << 20) blocks = 1 << 20;
    k_conv1d<<<blocks, 256, 0, cuda_of(be)->stream>>>(
        (float *)y->data, (const float *)x->data, (const float *)w->data,
        bias ? (const float *)bias->data : NULL, cin, cout, tin, (int)tout, k, dilation, padding);
    CU_LAUNCHED(be);
    return 0;
}

__global__ void k_conv_t1d(float *y, const float *x, const float *w, const float *b, int cin,
                           int cout, int tin, int tout, int k, int stride, int pad) {
    size_t total = (size_t)cout * tout;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int o = (int)(idx / tout), tp = (int)(idx % tout);
        int u = tp + pad; /* index into the un-cropped output */
        float acc = b ? b[o] : 0.f;
        for (int j = u % stride; j < k; j += stride) {
            int t = (u - j) / stride;
            if (t < 0 || t >= tin) continue;
            for (int i = 0; i < cin; i++)
                acc = fmaf(__ldg(x + (size_t)i * tin + t), __ldg(w + ((size_t)i * cout + o) * k + j),
                           acc);
        }
        y[idx] = acc;
    }
}

int cuda_conv_transpose1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                          const eng_tensor *bias, int stride, int padding) {
    CUDA_REQUIRE(be, x->ndim == 2 && w->ndim == 3 && y->ndim == 2 && w->shape[0] == x->shape[0] &&
                         y->shape[0] == w->shape[1] && stride >= 1 && padding >= 0,
                 "conv_transpose1d", "x [cin, t], w [cin, cout, k], y [cout, t']");
    int cin = (int)x->shape[0], tin = (int)x->shape[1], cout = (int)w->shape[1];
    int k = (int)w->shape[2];
    int64_t tout = (int64_t)(tin - 1) * stride - 2 * padding + k;
    CUDA_REQUIRE(be, tout == y->shape[1], "conv_transpose1d", "y has %lld samples, expected %lld",
                 (long long)y->shape[1], (long long)tout);
    CUDA_REQUIRE(be, !bias || eng_numel(bias) == cout, "conv_transpose1d",
                 "bias must have %d values", cout);
    size_t total = (size_t)cout * tout;
    if (!total) return 0;
    if (!conv_direct() && !cuda_of(be)->capturing)
        return convt_gemm(be, (float *)y->data, (const float *)x->data, (const float *)w->data,
                          bias ? (const float *)bias->data : NULL, cin, cout, tin, (int)tout, k,
                          stride, padding);
    int blocks = (int)((total + 255) / 256);
    if (blocks > 1 << 20) blocks = 1 << 20;
    k_conv_t1d<<<blocks, 256, 0, cuda_of(be)->stream>>>(
        (float *)y->data, (const float *)x->data, (const float *)w->data,
        bias ? (const float *)bias->data : NULL, cin, cout, tin, (int)tout, k, stride, padding);
    CU_LAUNCHED(be);
    return 0;
}
