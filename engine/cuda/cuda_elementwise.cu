/* cuda_elementwise.cu - the row-wise and element-wise ops: rmsnorm, add, rope, silu_mul,
 * embed_sum, snake, tanh. All f32 in and out with f32 arithmetic; each is one pass over its
 * tensors. */
#include <math.h>

#include "engine/cuda/cuda_internal.h"

static inline int grid_for(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    return (int)(b > 65535 ? 65535 : (b ? b : 1));
}

__device__ __forceinline__ float block_sum(float v, float *shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int nw = blockDim.x / 32;
    v = lane < nw ? shared[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    return v;
}

/* One block per row. */
__global__ void k_rmsnorm(float *y, const float *x, const float *w, int d, float eps) {
    pdl_trigger();
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * d;
    float *yr = y + (size_t)blockIdx.x * d;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float inv = rsqrtf(ss / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

int cuda_rmsnorm(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *weight,
                 float eps) {
    int64_t d = x->shape[x->ndim - 1], rows = eng_numel(x) / (d ? d : 1);
    CUDA_REQUIRE(be, eng_numel(y) == eng_numel(x) && eng_numel(weight) == d, "rmsnorm",
                 "x has %lld values, y %lld, weight %lld for rows of %lld", (long long)eng_numel(x),
                 (long long)eng_numel(y), (long long)eng_numel(weight), (long long)d);
    if (rows == 0) return 0;
    k_rmsnorm<<<(unsigned)rows, 256, 0, cuda_of(be)->stream>>>(
        (float *)y->data, (const float *)x->data, (const float *)weight->data, (int)d, eps);
    CU_LAUNCHED(be);
    return 0;
}

__global__ void k_add(float *y, const float *a, size_t n) {
    pdl_trigger();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += a[i];
}

int cuda_add(eng_backend *be, eng_tensor *y, const eng_tensor *a) {
    size_t n = (size_t)eng_numel(y);
    CUDA_REQUIRE(be, (size_t)eng_numel(a) == n, "add", "y has %zu values, a %lld", n,
                 (long long)eng_numel(a));
    if (!n) return 0;
    k_add<<<grid_for(n, 256), 256, 0, cuda_of(be)->stream>>>((float *)y->data,
                                                             (const float *)a->data, n);
    CU_LAUNCHED(be);
    return 0;
}

/* Half-split rotation: pairs (i, i + hd/2). Angles in f32 like the reference. */
__global__ void k_rope(float *x, const int32_t *pos, int n, int heads, int hd, float theta) {
    pdl_trigger();
    int half = hd / 2;
    size_t total = (size_t)n * heads * half;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(t % half);
        size_t rh = t / half; /* row * heads + head */
        int row = (int)(rh / heads);
        float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
        float ang = (float)pos[row] * inv_freq;
        float s, c;
        sincosf(ang, &s, &c);
        float *v = x + rh * hd;
        float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

int cuda_rope(eng_backend *be, eng_tensor *x, const eng_tensor *pos, float theta) {
    CUDA_REQUIRE(be, x->ndim == 3 && x->shape[2] % 2 == 0 && pos->dtype == ENG_DT_I32 &&
                         eng_numel(pos) == x->shape[0],
                 "rope", "x must be [n, heads, even head_dim] and pos I32 [n]");
    size_t total = (size_t)x->shape[0] * x->shape[1] * (x->shape[2] / 2);
    if (!total) return 0;
    k_rope<<<grid_for(total, 256), 256, 0, cuda_of(be)->stream>>>(
        (float *)x->data, (const int32_t *)pos->data, (int)x->shape[0], (int)x->shape[1],
        (int)x->shape[2], theta);
    CU_LAUNCHED(be);
    return 0;
}

/* rope on q and k and the K/V store write in one pass: items [0, n*(qh+kvh)*half) rotate a pair
 * (k pairs also go to the store), the n*kvh*hd items after them copy v into the store. */
__global__ void k_rope_kv(float *q, float *k, const float *v, const int32_t *pos,
                          const int32_t *slot, void *kc, void *vc, int bf16, int n, int qh, int kvh,
                          int hd, int max_len, int slots, float theta) {
    pdl_trigger();
    int half = hd / 2;
    size_t nrot = (size_t)n * (qh + kvh) * half, nv = (size_t)n * kvh * hd;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < nrot + nv;
         t += (size_t)gridDim.x * blockDim.x) {
        if (t < nrot) {
            int i = (int)(t % half);
            size_t rh = t / half;
            int row = (int)(rh / (qh + kvh)), head = (int)(rh % (qh + kvh));
            float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
            float s, c;
            sincosf((float)pos[row] * inv_freq, &s, &c);
            float *vec = head < qh ? q + ((size_t)row * qh + head) * hd
                                   : k + ((size_t)row * kvh + head - qh) * hd;
            float a = vec[i], b = vec[i + half];
            float ra = a * c - b * s, rb = b * c + a * s;
            vec[i] = ra;
            vec[i + half] = rb;
            if (head >= qh) {
                int sl = slot[row], p = pos[row];
                if (sl < 0 || sl >= slots || p < 0 || p >= max_len) continue;
                size_t dst = (((size_t)sl * max_len + p) * kvh + head - qh) * hd;
                if (bf16) {
                    ((__nv_bfloat16 *)kc)[dst + i] = __float2bfloat16_rn(ra);
                    ((__nv_bfloat16 *)kc)[dst + i + half] = __float2bfloat16_rn(rb);
                } else {
                    ((float *)kc)[dst + i] = ra;
                    ((float *)kc)[dst + i + half] = rb;
                }
            }
        } else {
            size_t e = t - nrot;
            int row = (int)(e / ((size_t)kvh * hd));
            int sl = slot[row], p = pos[row];
            if (sl < 0 || sl >= slots || p < 0 || p >= max_len) continue;
            size_t dst = ((size_t)sl * max_len + p) * kvh * hd + e % ((size_t)kvh * hd);
            if (bf16)
                ((__nv_bfloat16 *)vc)[dst] = __float2bfloat16_rn(v[e]);
            else
                ((float *)vc)[dst] = v[e];
        }
    }
}

int cuda_rope_kv_write(eng_backend *be, eng_tensor *q, eng_tensor *k, const eng_tensor *v,
                       const eng_tensor *pos, float theta, eng_kv *kv, const eng_tensor *slot) {
    int64_t n = q->shape[0];
    int hd = kv->head_dim, kvh = kv->heads;
    CUDA_REQUIRE(be, q->ndim == 3 && k->ndim == 3 && q->shape[2] == hd && k->shape[2] == hd &&
                         k->shape[1] == kvh && k->shape[0] == n && eng_numel(v) == eng_numel(k) &&
                         hd % 2 == 0 && pos->dtype == ENG_DT_I32 && slot->dtype == ENG_DT_I32 &&
                         eng_numel(pos) == n && eng_numel(slot) == n &&
                         (kv->dtype == ENG_DT_F32 || kv->dtype == ENG_DT_BF16),
                 "rope_kv_write", "q [n, qh, %d], k/v [n, %d, %d], pos/slot I32 [n]", hd, kvh, hd);
    size_t total = (size_t)n * ((size_t)(q->shape[1] + kvh) * (hd / 2) + (size_t)kvh * hd);
    if (!total) return 0;
    k_rope_kv<<<grid_for(total, 256), 256, 0, cuda_of(be)->stream>>>(
        (float *)q->data, (float *)k->data, (const float *)v->data, (const int32_t *)pos->data,
        (const int32_t *)slot->data, kv->k, kv->v, kv->dtype == ENG_DT_BF16, (int)n,
        (int)q->shape[1], kvh, hd, kv->max_len, kv->slots, theta);
    CU_LAUNCHED(be);
    return 0;
}

__global__ void k_silu_mul(float *y, const float *gu, int n, int f) {
    pdl_trigger();
    size_t total = (size_t)n * f;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
         t += (size_t)gridDim.x * blockDim.x) {
        size_t r = t / f, i = t % f;
        float g = gu[r * 2 * f + i], u = gu[r * 2 * f + f + i];
        y[t] = g / (1.f + expf(-g)) * u;
    }
}

int cuda_silu_mul(eng_backend *be, eng_tensor *y, const eng_tensor *gu) {
    int64_t f = y->shape[y->ndim - 1], n = eng_numel(y) / (f ? f : 1);
    CUDA_REQUIRE(be, eng_numel(gu) == 2 * n * f, "silu_mul", "gu has %lld values, want %lld",
                 (long long)eng_numel(gu), (long long)(2 * n * f));
    if (!n) return 0;
    k_silu_mul<<<grid_for((size_t)n * f, 256), 256, 0, cuda_of(be)->stream>>>(
        (float *)y->data, (const float *)gu->data, (int)n, (int)f);
    CU_LAUNCHED(be);
    return 0;
}

/* Block (row, slice of 256 features): the row's ids go to shared memory once, then each thread
 * sums its feature over the channels with independent loads. An out-of-range id makes the row
 * NaN instead of reading out of bounds, so the error surfaces in the logits. */
#define EMBED_MAX_C 32
__global__ void k_embed_sum(float *y, const void *table, int bf16, const int32_t *ids, int C,
                            int stride, int rows, int d) {
    __shared__ long long s_row[EMBED_MAX_C];
    __shared__ int s_bad;
    pdl_trigger();
    int r = blockIdx.x, i = blockIdx.y * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) s_bad = 0;
    __syncthreads();
    if ((int)threadIdx.x < C) {
        int id = ids[(size_t)r * C + threadIdx.x];
        long long row = (long long)threadIdx.x * stride + id;
        int limit = stride ? stride : rows;
        if (id < 0 || id >= limit || row >= rows) {
            s_bad = 1;
            row = 0;
        }
        s_row[threadIdx.x] = row;
    }
    __syncthreads();
    if (i >= d) return;
    float acc = 0.f;
    if (bf16) {
        const __nv_bfloat16 *t = (const __nv_bfloat16 *)table;
        for (int c = 0; c < C; c++) acc += __bfloat162float(t[s_row[c] * d + i]);
    } else {
        const float *t = (const float *)table;
        for (int c = 0; c < C; c++) acc += t[s_row[c] * d + i];
    }
    y[(size_t)r * d + i] = s_bad ? __int_as_float(0x7fc00000) : acc;
}

/* The ids are checked on the device: they may have been written there by sampling. */
int cuda_embed_sum(eng_backend *be, eng_tensor *y, const eng_tensor *table, const eng_tensor *ids,
                   int channel_stride) {
    int64_t n = ids->shape[0], C = ids->ndim > 1 ? ids->shape[1] : 1;
    int64_t d = table->shape[1], rows = table->shape[0];
    CUDA_REQUIRE(be, ids->dtype == ENG_DT_I32 && table->ndim == 2 &&
                         (table->dtype == ENG_DT_F32 || table->dtype == ENG_DT_BF16) &&
                         eng_numel(y) == n * d && C <= EMBED_MAX_C,
                 "embed_sum", "ids I32 [n, C <= %d], table F32/BF16 [rows, d], y [n, d]",
                 EMBED_MAX_C);
    if (!n) return 0;
    dim3 grid((unsigned)n, (unsigned)((d + 255) / 256));
    k_embed_sum<<<grid, 256, 0, cuda_of(be)->stream>>>(
        (float *)y->data, table->data, table->dtype == ENG_DT_BF16, (const int32_t *)ids->data,
        (int)C, channel_stride, (int)rows, (int)d);
    CU_LAUNCHED(be);
    return 0;
}

__global__ void k_snake(float *y, const float *x, const float *alpha, int ch, size_t t) {
    size_t total = (size_t)ch * t;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float a = alpha[i / t], v = x[i], s = sinf(a * v);
        y[i] = v + 1.f / (a + 1e-9f) * s * s;
    }
}

int cuda_snake(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *alpha) {
    int64_t ch = x->shape[0], t = eng_numel(x) / (ch ? ch : 1);
    CUDA_REQUIRE(be, eng_numel(alpha) == ch && eng_numel(y) == eng_numel(x), "snake",
                 "x [ch, t], alpha [ch], y like x");
    if (!ch || !t) return 0;
    k_snake<<<grid_for((size_t)ch * t, 256), 256, 0, cuda_of(be)->stream>>>(
        (float *)y->data, (const float *)x->data, (const float *)alpha->data, (int)ch, (size_t)t);
    CU_LAUNCHED(be);
    return 0;
}

__global__ void k_tanh(float *y, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = tanhf(x[i]);
}

int cuda_tanh(eng_backend *be, eng_tensor *y, const eng_tensor *x) {
    size_t n = (size_t)eng_numel(x);
    CUDA_REQUIRE(be, (size_t)eng_numel(y) == n, "tanh", "y and x differ in size");
    if (!n) return 0;
    k_tanh<<<grid_for(n, 256), 256, 0, cuda_of(be)->stream>>>((float *)y->data,
                                                              (const float *)x->data, n);
    CU_LAUNCHED(be);
    return 0;
}
