#include "engine/tensor.h"

size_t eng_weight_data_bytes(const eng_weight *w) {
    switch (w->fmt) {
    case ENG_W_F32: return (size_t)(w->out * w->in) * 4;
    case ENG_W_BF16: return (size_t)(w->out * w->in) * 2;
    case ENG_W_I8: return (size_t)(w->out * w->in);
    case ENG_W_I4: return (size_t)(w->out * ((w->in + 1) / 2));
    }
    return 0;
}

size_t eng_weight_scale_bytes(const eng_weight *w) {
    switch (w->fmt) {
    case ENG_W_I8: return (size_t)w->out * 4;
    case ENG_W_I4: return (size_t)(w->out * ((w->in + w->group - 1) / w->group)) * 4;
    default: return 0;
    }
}

const char *eng_wfmt_name(eng_wfmt fmt) {
    switch (fmt) {
    case ENG_W_F32: return "f32";
    case ENG_W_BF16: return "bf16";
    case ENG_W_I8: return "int8";
    case ENG_W_I4: return "int4";
    }
    return "?";
}
