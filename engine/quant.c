/* quant.c - the quantization math (int8 rows, int4 groups) and the policy that picks tensors.
 * The driver that streams a checkpoint is in quant_run.c. */
#include "engine/quant.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *eng_quant_method_name(eng_quant_method method) {
    switch (method) {
    case ENG_QUANT_INT8: return "int8";
    case ENG_QUANT_INT4: return "int4";
    }
    return "?";
}

int eng_quant_method_parse(const char *name, eng_quant_method *out) {
    if (name && !strcmp(name, "int8")) {
        *out = ENG_QUANT_INT8;
        return 0;
    }
    if (name && !strcmp(name, "int4")) {
        *out = ENG_QUANT_INT4;
        return 0;
    }
    return ENG_EINVAL;
}

/* Round to nearest, ties to even (as torch.round), clamped to [-limit, limit]. Adding and
 * subtracting 1.5 * 2^23 rounds exactly in the default rounding mode for |x| < 2^22 and keeps
 * the loops vectorizable (no libm call); |x| is at most limit * (1 + 2^-23) here. */
static inline int round_clamp(float x, int limit) {
    int v = (int)((x + 12582912.0f) - 12582912.0f);
    return v > limit ? limit : (v < -limit ? -limit : v);
}

/* Largest |w[j]| (0 for n == 0); the caller has ruled out NaN. */
static float abs_max(const float *w, int64_t n) {
    float m = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float a = fabsf(w[j]);
        m = a > m ? a : m;
    }
    return m;
}

/* The scale for a block whose largest magnitude is amax, and the factor that maps the block onto
 * [-limit, limit]. Blocks so small that limit / amax overflows (|w| < ~1e-37, i.e. zero for any
 * real weight) get q = 0 with their exact scale: they dequantize to 0, an error below 1e-37. */
static inline float block_scale(float amax, int limit, float *inv) {
    float scale = amax / (float)limit;
    float f = (float)limit / amax;
    *inv = (amax > 0.0f && isfinite(f)) ? f : 0.0f;
    return scale;
}

float eng_quant_row_i8(const float *w, int64_t n, int8_t *q) {
    float inv, scale = block_scale(abs_max(w, n), 127, &inv);
    for (int64_t j = 0; j < n; j++) q[j] = (int8_t)round_clamp(w[j] * inv, 127);
    return scale;
}

void eng_dequant_row_i8(const int8_t *q, int64_t n, float scale, float *w) {
    for (int64_t j = 0; j < n; j++) w[j] = (float)q[j] * scale;
}

void eng_quant_row_i4(const float *w, int64_t n, int group, uint8_t *packed, float *scales) {
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        int64_t len = n - g0 < group ? n - g0 : group;
        float inv;
        scales[g0 / group] = block_scale(abs_max(w + g0, len), 7, &inv);
        /* g0 is even (group is), so the group starts on a byte boundary. */
        uint8_t *out = packed + g0 / 2;
        int64_t pairs = len / 2;
        for (int64_t k = 0; k < pairs; k++) {
            int lo = round_clamp(w[g0 + 2 * k] * inv, 7) + 8;
            int hi = round_clamp(w[g0 + 2 * k + 1] * inv, 7) + 8;
            out[k] = (uint8_t)(lo | (hi << 4));
        }
        if (len & 1) /* only the last group of an odd row: the spare high nibble holds q = 0 */
            out[pairs] = (uint8_t)((round_clamp(w[g0 + len - 1] * inv, 7) + 8) | (8 << 4));
    }
}

void eng_dequant_row_i4(const uint8_t *packed, int64_t n, int group, const float *scales,
                        float *w) {
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        int64_t len = n - g0 < group ? n - g0 : group;
        float scale = scales[g0 / group];
        const uint8_t *in = packed + g0 / 2; /* g0 is even: the group starts a byte */
        for (int64_t k = 0; k < len / 2; k++) {
            w[g0 + 2 * k] = (float)((in[k] & 0x0f) - 8) * scale;
            w[g0 + 2 * k + 1] = (float)((in[k] >> 4) - 8) * scale;
        }
        if (len & 1) w[g0 + len - 1] = (float)((in[len / 2] & 0x0f) - 8) * scale;
    }
}

/* ---- Policy ---- */

const char *eng_quant_policy_name(eng_quant_policy_kind kind) {
    switch (kind) {
    case ENG_QUANT_POLICY_GENERIC: return "generic";
    case ENG_QUANT_POLICY_DIA: return "dia";
    }
    return "?";
}

int eng_quant_policy_parse(const char *name, eng_quant_policy_kind *out) {
    if (name && !strcmp(name, "generic")) {
        *out = ENG_QUANT_POLICY_GENERIC;
        return 0;
    }
    if (name && !strcmp(name, "dia")) {
        *out = ENG_QUANT_POLICY_DIA;
        return 0;
    }
    return ENG_EINVAL;
}

eng_quant_policy_kind eng_quant_policy_detect(const st_model *m) {
    if (st_model_find(m, "logits_dense.weight") &&
        st_model_find(m, "model.decoder.embeddings.embed.weight"))
        return ENG_QUANT_POLICY_DIA;
    return ENG_QUANT_POLICY_GENERIC;
}

/* Dia's linear layers (spec dia.md 2.1): every projection of every attention and MLP block. */
static const char *const dia_linear[] = {
    "model.encoder.layers.*.self_attention.[qkvo]_proj.weight",
    "model.encoder.layers.*.mlp.gate_up_proj.weight",
    "model.encoder.layers.*.mlp.down_proj.weight",
    "model.decoder.layers.*.self_attention.[qkvo]_proj.weight",
    "model.decoder.layers.*.cross_attention.[qkvo]_proj.weight",
    "model.decoder.layers.*.mlp.gate_up_proj.weight",
    "model.decoder.layers.*.mlp.down_proj.weight",
};

/* Names that mean "embedding table" in common checkpoints (Llama/Qwen embed_tokens, BERT
 * word_embeddings, GPT-2 wte/wpe, Dia embedding/embeddings.embed). */
static int is_embedding_name(const char *name) {
    return !fnmatch("*embed*", name, 0) || !fnmatch("*wte.*", name, 0) ||
           !fnmatch("*wpe.*", name, 0);
}

/* 1 + the index of the first pattern that matches name, or 0. */
static int matches_any(const char *name, const char *const *patterns, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!fnmatch(patterns[i], name, 0)) return (int)i + 1;
    return 0;
}

int eng_quant_policy_decide(const eng_quant_policy *p, const st_tensor *t, char *why, size_t n) {
    const char *name = t->name;
    int64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) numel *= t->shape[i];
    if (t->dtype != ENG_DT_F32 && t->dtype != ENG_DT_BF16 && t->dtype != ENG_DT_F16) {
        snprintf(why, n, "dtype %s is not a float type", eng_dtype_name(t->dtype));
        return 0;
    }
    if (t->ndim != 2) {
        snprintf(why, n, "%d-D tensor", t->ndim);
        return 0;
    }
    if (numel == 0) {
        snprintf(why, n, "empty tensor");
        return 0;
    }
    int k = matches_any(name, p->keep, p->nkeep);
    if (k) {
        snprintf(why, n, "--keep '%s'", p->keep[k - 1]);
        return 0;
    }
    if (p->kind == ENG_QUANT_POLICY_DIA && !strcmp(name, "logits_dense.weight")) {
        snprintf(why, n, "output head");
        return 0;
    }
    if (is_embedding_name(name)) {
        snprintf(why, n, "embedding");
        return 0;
    }
    if (!fnmatch("*norm*", name, 0)) {
        snprintf(why, n, "norm");
        return 0;
    }
    if (p->kind == ENG_QUANT_POLICY_DIA) {
        if (matches_any(name, dia_linear, sizeof dia_linear / sizeof dia_linear[0])) return 1;
        snprintf(why, n, "not a Dia linear layer");
        return 0;
    }
    size_t len = strlen(name);
    if (!(len >= 7 && !strcmp(name + len - 7, ".weight")) && strcmp(name, "weight") != 0) {
        snprintf(why, n, "not a *.weight tensor");
        return 0;
    }
    return 1;
}
