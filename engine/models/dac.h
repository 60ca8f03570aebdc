/* dac.h - the DAC audio codec's decoder: codes [n_codebooks][N] -> mono float PCM.
 *
 * Checkpoints are in the transformers DacModel format (config.json + model.safetensors, spec
 * dia.md §2.2). Only the decoding half is loaded: the quantizers' codebooks and out_proj 1x1
 * convs, and decoder.*. A file that still carries weight norm (legacy `X.weight_g`/`X.weight_v`
 * or `X.parametrizations.weight.original0`/`original1`) is folded at load into plain weights,
 * W = g * v / |v|, the norm taken over every axis of the stored tensor but axis 0.
 *
 * Decoding (spec §7) runs on any backend through engine/ops.h: the latent (codebook rows through
 * out_proj, summed over codebooks) is computed on the host and uploaded, then conv1, the
 * upsampling blocks (snake, conv-transpose, three dilated residual units), snake, conv2, tanh.
 * Long inputs are decoded in chunks of `chunk_frames` frames, each widened on both sides by the
 * decoder's receptive field (dac_model_margin_frames) and cropped back, so the result equals a
 * single pass while the workspace stays fixed: it is allocated once at load for one chunk.
 *
 * A dac_model is not thread-safe: one dac_decode at a time (it owns its workspace). */
#ifndef VOXQ_ENGINE_MODELS_DAC_H
#define VOXQ_ENGINE_MODELS_DAC_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"
#include "engine/ops.h"

#define DAC_MAX_BLOCKS 8

typedef struct dac_config {
    int encoder_hidden_size;
    int hidden_size;         /* latent channels: encoder_hidden_size * 2^n_blocks */
    int decoder_hidden_size; /* channels after decoder.conv1; halved by every block */
    int n_blocks;
    int upsampling_ratios[DAC_MAX_BLOCKS]; /* decoder strides: downsampling_ratios reversed */
    int n_codebooks;
    int codebook_size;
    int codebook_dim;
    int sampling_rate;
    int hop_length; /* samples per frame: product of the ratios */
} dac_config;

/* Reads a transformers DacConfig config.json. A file of another model_type, a missing or
 * non-integer field, or values the decoder cannot run (odd or non-positive ratios, channel
 * counts that do not halve evenly) are errors naming the file and field. hidden_size and
 * hop_length are derived; when the file states them too they must agree. */
int dac_config_read(dac_config *cfg, const char *path, eng_error *err);

typedef struct dac_options {
    int chunk_frames; /* frames decoded per pass (workspace size); 0 = default (256) */
} dac_options;

/* Bytes held by a loaded model on its backend. */
typedef struct dac_mem {
    size_t weights;   /* decoder weights on the backend */
    size_t workspace; /* activation buffers for one chunk */
    size_t host;      /* host: projected codebook table, latent and output staging */
} dac_mem;

typedef struct dac_model dac_model;

/* Loads `dir` (config.json + model.safetensors or shards) onto backend `be`. A checkpoint of the
 * wrong kind (a Dia file, a file without quantizer tensors) or with a tensor whose shape
 * disagrees with config.json is an error naming the file and tensor. The backend must outlive
 * the model. */
int dac_model_load(dac_model **out, eng_backend *be, const char *dir, const dac_options *opts,
                   eng_error *err);
/* Releases everything the model holds; NULL is a no-op. */
void dac_model_free(dac_model *m);
const dac_config *dac_model_config(const dac_model *m);
void dac_model_mem(const dac_model *m, dac_mem *out);
/* Frames of context each chunk borrows from its neighbours on each side (>= the decoder's
 * receptive half-width, in frames). */
int dac_model_margin_frames(const dac_model *m);

/* Number of samples dac_decode writes for n_frames frames: hop_length * n_frames. */
int64_t dac_samples(const dac_model *m, int64_t n_frames);

/* The latent of frames [0, n_frames): latent[hidden_size][n_frames] (channels x time), host
 * memory. codes is [n_codebooks][n_frames], codebook-major, each in [0, codebook_size); an
 * out-of-range code is ENG_EINVAL naming the codebook and frame. */
int dac_latent(const dac_model *m, const int32_t *codes, int64_t n_frames, float *latent,
               eng_error *err);

/* Decodes codes [n_codebooks][n_frames] (host, codebook-major) into pcm[dac_samples(n_frames)]
 * (host), float in (-1, 1) at config.sampling_rate. n_frames = 0 writes nothing. */
int dac_decode(dac_model *m, const int32_t *codes, int64_t n_frames, float *pcm, eng_error *err);

#endif
