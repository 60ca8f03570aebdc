#include "engine/dtype.h"

#include <math.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[ENG_DT_COUNT] = {
    [ENG_DT_INVALID] = {"INVALID", 0}, [ENG_DT_F64] = {"F64", 8},  [ENG_DT_F32] = {"F32", 4},
    [ENG_DT_F16] = {"F16", 2},         [ENG_DT_BF16] = {"BF16", 2}, [ENG_DT_I64] = {"I64", 8},
    [ENG_DT_I32] = {"I32", 4},         [ENG_DT_I16] = {"I16", 2},   [ENG_DT_I8] = {"I8", 1},
    [ENG_DT_U64] = {"U64", 8},         [ENG_DT_U32] = {"U32", 4},   [ENG_DT_U16] = {"U16", 2},
    [ENG_DT_U8] = {"U8", 1},           [ENG_DT_BOOL] = {"BOOL", 1},
};

size_t eng_dtype_size(eng_dtype dt) {
    return (dt > ENG_DT_INVALID && dt < ENG_DT_COUNT) ? dtype_table[dt].size : 0;
}

const char *eng_dtype_name(eng_dtype dt) {
    return (dt >= ENG_DT_INVALID && dt < ENG_DT_COUNT) ? dtype_table[dt].name : "INVALID";
}

eng_dtype eng_dtype_parse(const char *name) {
    for (int i = 1; i < ENG_DT_COUNT; i++)
        if (strcmp(name, dtype_table[i].name) == 0) return (eng_dtype)i;
    return ENG_DT_INVALID;
}

float eng_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: value = mant * 2^-24 */
            float f = ldexpf((float)mant, -24);
            return sign ? -f : f;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t eng_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    float a = fabsf(f);
    if (isnan(f)) return sign | 0x7e00;
    if (a >= 65520.0f) return sign | 0x7c00;
    if (a < 6.103515625e-05f) { /* subnormal or zero: round to nearest multiple of 2^-24 */
        return sign | (uint16_t)lrintf(a * 16777216.0f);
    }
    uint32_t exp = ((u >> 23) & 0xff) - 112, mant = u & 0x7fffff;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return sign | (uint16_t)h;
}
