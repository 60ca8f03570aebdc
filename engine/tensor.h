/* tensor.h - tensor views and linear-layer weights.
 *
 * A tensor is a view: a data pointer in some backend's memory (host for the CPU backend, device
 * for CUDA), a dtype and a contiguous row-major shape. Views never own memory; buffers come from
 * eng_alloc() on a backend and are freed with eng_free(). Model code never dereferences `data`:
 * it may be a device pointer. */
#ifndef VOXQ_ENGINE_TENSOR_H
#define VOXQ_ENGINE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "engine/dtype.h"

#define ENG_MAX_DIMS 4

typedef struct eng_tensor {
    void *data;
    eng_dtype dtype;
    int ndim;
    int64_t shape[ENG_MAX_DIMS];
} eng_tensor;

static inline int64_t eng_numel(const eng_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}
static inline size_t eng_nbytes(const eng_tensor *t) {
    return (size_t)eng_numel(t) * eng_dtype_size(t->dtype);
}
/* A view of `data` with the given shape (ndim <= 4). */
static inline eng_tensor eng_view(void *data, eng_dtype dt, int ndim, const int64_t *shape) {
    eng_tensor t = {data, dt, ndim, {1, 1, 1, 1}};
    for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
    return t;
}
static inline eng_tensor eng_view1(void *data, eng_dtype dt, int64_t d0) {
    return (eng_tensor){data, dt, 1, {d0, 1, 1, 1}};
}
static inline eng_tensor eng_view2(void *data, eng_dtype dt, int64_t d0, int64_t d1) {
    return (eng_tensor){data, dt, 2, {d0, d1, 1, 1}};
}
static inline eng_tensor eng_view3(void *data, eng_dtype dt, int64_t d0, int64_t d1, int64_t d2) {
    return (eng_tensor){data, dt, 3, {d0, d1, d2, 1}};
}
/* Rows [r0, r0+n) of a tensor, first dimension. */
static inline eng_tensor eng_rows(const eng_tensor *t, int64_t r0, int64_t n) {
    eng_tensor v = *t;
    size_t row = eng_nbytes(t) / (size_t)(t->shape[0] ? t->shape[0] : 1);
    v.data = (char *)t->data + (size_t)r0 * row;
    v.shape[0] = n;
    return v;
}

/* How a linear layer's weight is stored. Quantization is invisible to model code: linear()
 * dispatches on the format. Layouts are in docs/FORMAT.md. */
typedef enum eng_wfmt {
    ENG_W_F32 = 1,
    ENG_W_BF16,
    ENG_W_I8, /* int8 [out, in], f32 scale per output row: w = q * scale[o] */
    ENG_W_I4, /* 4-bit [out, ceil(in/2)] bytes, low nibble first, nibble = q + 8 with q in
                 [-7, 7]; f32 scale per group of `group` inputs: w = q * scale[o][i / group] */
} eng_wfmt;

typedef struct eng_weight {
    eng_wfmt fmt;
    int64_t out;          /* rows (output features) */
    int64_t in;           /* columns (input features) */
    int group;            /* ENG_W_I4 group size along `in`; 0 otherwise */
    const void *data;     /* backend memory */
    const float *scales;  /* backend memory; NULL for f32/bf16 */
} eng_weight;

/* Bytes of the weight's data (not scales). */
size_t eng_weight_data_bytes(const eng_weight *w);
/* Bytes of the weight's scales. */
size_t eng_weight_scale_bytes(const eng_weight *w);
const char *eng_wfmt_name(eng_wfmt fmt);

#endif
