/* tiny_ckpt.h - random Dia-shaped checkpoints for tests and benchmarks.
 *
 * Writes config.json (transformers DiaConfig layout) and model.safetensors holding every tensor
 * of DiaForConditionalGeneration (spec dia.md §2.1: 47 tensors at the tiny size of §9.1, 335 at
 * full size), streamed tensor by tensor through the engine's safetensors writer. Values are a
 * pure function of (seed, tensor index, element index), so a test can recompute any element it
 * reads back with tiny_dia_value() without keeping the checkpoint in memory:
 *   linear weights  0.2 * n / sqrt(fan_in)   (n approximately standard normal)
 *   norm weights    uniform in [0.8, 1.2]
 *   embeddings      n
 * These follow spec §9.1 so that bugs in norms or scaling are visible. */
#ifndef VOXQ_TESTS_TINY_CKPT_H
#define VOXQ_TESTS_TINY_CKPT_H

#include <stdint.h>

#include "engine/dtype.h"
#include "engine/error.h"

typedef struct tiny_dia_config {
    int enc_hidden, enc_layers, enc_heads, enc_kv_heads, enc_head_dim, enc_ffn, enc_vocab;
    int enc_max_pos;
    int dec_hidden, dec_layers, dec_heads, dec_kv_heads, dec_head_dim, dec_ffn;
    int cross_heads, cross_kv_heads, cross_head_dim;
    int dec_vocab, channels, dec_max_pos;
} tiny_dia_config;

/* Spec §9.1 tiny config and the DiaConfig() defaults (Dia-1.6B). */
extern const tiny_dia_config tiny_dia_tiny;
extern const tiny_dia_config tiny_dia_full;

typedef enum tiny_kind { TINY_LINEAR, TINY_NORM, TINY_EMBED } tiny_kind;

/* One tensor of the checkpoint, in file order. */
typedef struct tiny_tensor_spec {
    char name[128];
    int ndim;
    int64_t shape[2];
    tiny_kind kind;
    int index; /* position in the checkpoint, part of the value function */
} tiny_tensor_spec;

/* Number of tensors for config c (47 tiny, 335 full). */
int tiny_dia_tensor_count(const tiny_dia_config *c);
/* The i-th tensor (0 <= i < count) of config c. */
void tiny_dia_tensor_spec(const tiny_dia_config *c, int i, tiny_tensor_spec *out);
/* Element `elem` (row-major) of tensor s in the checkpoint made with `seed`, as f32 before any
 * conversion to the file's dtype. */
float tiny_dia_value(const tiny_tensor_spec *s, uint64_t seed, int64_t elem);

/* Writes dir/config.json and dir/model.safetensors (creating dir) for config c, with tensors in
 * dtype F32, BF16 or F16. Returns 0 or a negative ENG_E* code with err filled. */
int tiny_dia_write_config(const char *dir, const tiny_dia_config *c, uint64_t seed, eng_dtype dtype,
                          eng_error *err);

/* The tiny (§9.1) checkpoint; errors are printed to stderr. Returns 0 or a negative ENG_E*. */
int tiny_dia_write(const char *dir, uint64_t seed, eng_dtype dtype);

#endif
