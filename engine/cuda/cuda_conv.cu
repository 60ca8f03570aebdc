/* cuda_conv.cu - the DAC convolutions on [channels, time] f32 signals.
 *
 * Direct kernels: one thread per output sample, consecutive threads on consecutive time steps
 * (coalesced reads of x, one broadcast weight per step). The codec runs once per utterance and
 * is a small share of a request's time next to the decoder. */
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
    int blocks = (int)((total + 255) / 256);
    if (blocks > 1 << 20) blocks = 1 << 20;
    k_conv_t1d<<<blocks, 256, 0, cuda_of(be)->stream>>>(
        (float *)y->data, (const float *)x->data, (const float *)w->data,
        bias ? (const float *)bias->data : NULL, cin, cout, tin, (int)tout, k, stride, padding);
    CU_LAUNCHED(be);
    return 0;
}
