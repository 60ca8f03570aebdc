/* dtype.h - element types as safetensors names them, and bf16/f16 conversion. */
#ifndef VOXQ_ENGINE_DTYPE_H
#define VOXQ_ENGINE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum eng_dtype {
    ENG_DT_INVALID = 0,
    ENG_DT_F64, ENG_DT_F32, ENG_DT_F16, ENG_DT_BF16,
    ENG_DT_I64, ENG_DT_I32, ENG_DT_I16, ENG_DT_I8,
    ENG_DT_U64, ENG_DT_U32, ENG_DT_U16, ENG_DT_U8,
    ENG_DT_BOOL,
    ENG_DT_COUNT
} eng_dtype;

/* Bytes per element; 0 for ENG_DT_INVALID. */
size_t eng_dtype_size(eng_dtype dt);
/* "F32", "BF16", ... as in safetensors headers. */
const char *eng_dtype_name(eng_dtype dt);
/* Parses a safetensors dtype name (case-sensitive); ENG_DT_INVALID when unknown. */
eng_dtype eng_dtype_parse(const char *name);

static inline float eng_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Round to nearest even, NaN kept quiet (PyTorch's rule). */
static inline uint16_t eng_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float eng_f16_to_f32(uint16_t h);
uint16_t eng_f32_to_f16(float f);

#endif
