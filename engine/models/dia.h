/* dia.h - Dia-1.6B (text to dialogue codes) on the op interface.
 *
 * Reference behaviour: Hugging Face transformers 5.17 `DiaForConditionalGeneration` and its
 * processor, restated in /work/shared/spec/dia.md (section numbers below refer to it). The model
 * is written once against engine/ops.h, so the same code runs on the CPU and CUDA backends.
 *
 * Life of a request:
 *   dia_model_load()        config.json + safetensors (f32/bf16 original or int8/int4 variant),
 *                           every tensor shape-checked against config.json, all memory planned:
 *                           weights, self-attention KV caches and cross-attention K/V for
 *                           `max_batch` sequences, activation workspace, host staging.
 *   dia_tokenize()          text -> byte ids (spec 3); at most DIA_MAX_TEXT ids.
 *   dia_seq_start()         encoder pass over the prompt and its unconditional twin, cross K/V
 *                           written into the sequence's slot; returns a sequence handle.
 *   dia_step(seqs, n)       one decoder step for n sequences (2 CFG rows each) in ONE batched
 *                           pass, logits processing and the pick per spec 6.2 in the same pass
 *                           (the backend's sample op), then the EOS bookkeeping on the host.
 *   dia_seq_done() / dia_seq_codes() / dia_seq_release()
 * dia_generate() wraps all of it for one text.
 *
 * Threads: a dia_model and its sequences belong to one thread at a time (the engine thread).
 * Nothing is allocated after dia_model_load(): dia_seq_start() and dia_step() use planned memory.
 *
 * Sampling RNG (engine/sample_rng.h; the CPU and CUDA samplers draw the same numbers): the
 * uniform number for sequence seed `seed`, decoder step `step` (0 for the step that reads the
 * BOS frame) and channel `c` is
 *     u = (dia_rng_u64(seed, step, c) >> 11) * 2^-53        (a double in [0, 1))
 *     dia_rng_u64(seed, step, c) = splitmix64(splitmix64(seed ^ 0x9e3779b97f4a7c15)
 *                                             + ((uint64_t)step << 8 | c))
 * where splitmix64(z) is the finaliser z += 0x9e3779b97f4a7c15; z = (z ^ z>>30) *
 * 0xbf58476d1ce4e5b9; z = (z ^ z>>27) * 0x94d049bb133111eb; return z ^ z>>31. The token is the
 * first id (ascending) whose running sum of probabilities (softmax of the processed scores,
 * computed in double) exceeds u times their total. Same seed, same text, same parameters: same
 * codes, whatever else shares the steps (on the CPU backend bit for bit; a GPU backend whose
 * GEMMs change with the row count may move logits by rounding and, rarely, a draw). */
#ifndef VOXQ_ENGINE_MODELS_DIA_H
#define VOXQ_ENGINE_MODELS_DIA_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"
#include "engine/ops.h"

/* Most text ids per prompt: bytes after each [S1]/[S2]/<pad> tag became one id. The encoder
 * was trained for <= 1024 positions. */
#define DIA_MAX_TEXT 1024
/* Most codebooks a config may declare (Dia has 9). */
#define DIA_MAX_CHANNELS 16

/* Dia's configuration as read from config.json (transformers DiaConfig layout: top-level token
 * ids and delay_pattern, `encoder_config` and `decoder_config` sub-objects). */
typedef struct dia_config {
    /* encoder */
    int enc_hidden;       /* 1024 */
    int enc_layers;       /* 12 */
    int enc_heads;        /* 16 */
    int enc_kv_heads;     /* 16 */
    int enc_head_dim;     /* 128 */
    int enc_ffn;          /* 4096 */
    int enc_vocab;        /* 256 */
    int enc_max_pos;      /* 1024 */
    float enc_norm_eps;   /* 1e-5 */
    float enc_rope_theta; /* 10000 */
    /* decoder */
    int dec_hidden;       /* 2048 */
    int dec_layers;       /* 18 */
    int dec_heads;        /* 16 */
    int dec_kv_heads;     /* 4 */
    int dec_head_dim;     /* 128 */
    int dec_ffn;          /* 8192 */
    int cross_heads;      /* 16 */
    int cross_kv_heads;   /* 16 */
    int cross_head_dim;   /* 128 */
    int cross_hidden;     /* 1024: must equal enc_hidden */
    int dec_vocab;        /* 1028 audio ids per channel */
    int dec_max_pos;      /* 3072 */
    float dec_norm_eps;   /* 1e-5 */
    float dec_rope_theta; /* 10000 */
    /* generation ids and delays */
    int channels;                /* 9 */
    int delay[DIA_MAX_CHANNELS]; /* 0, 8, 9, ..., 15 */
    int max_delay;               /* 15 */
    int eos_id;                  /* 1024 */
    int pad_id;                  /* 1025 */
    int bos_id;                  /* 1026 */
} dia_config;

/* Fills c with DiaConfig() defaults (the 1.6B sizes). */
void dia_config_default(dia_config *c);
/* Parses config.json text (case-sensitive keys; missing keys keep DiaConfig defaults; a present
 * key of the wrong type or an impossible value is ENG_EFORMAT naming the key). `what` names the
 * source in messages. */
int dia_config_parse(dia_config *c, const char *json, size_t len, const char *what, eng_error *err);
/* Reads and parses DIR/config.json. */
int dia_config_load(dia_config *c, const char *dir, eng_error *err);

/* Tokenizer (spec 3): "[S1]" -> 1, "[S2]" -> 2, "<pad>" -> 0 (case-sensitive), every other
 * byte -> its value. The text must be valid UTF-8 (ENG_EINVAL naming the byte offset
 * otherwise), non-empty, and give at most `cap` ids and at most DIA_MAX_TEXT (ENG_EINVAL saying
 * the limit otherwise). */
int dia_tokenize(const char *text, size_t len, int32_t *ids, int cap, int *n, eng_error *err);

/* Load options; zero fields take the defaults in brackets. */
typedef struct dia_load_opts {
    int max_batch;      /* sequences in flight at once (each has two CFG rows) [1] */
    int max_frames;     /* most decoder frames of one sequence, BOS frame included, i.e.
                           max_new_tokens + 1 [decoder max_position_embeddings + 1 = 3073] */
    int max_text;       /* most text ids of a prompt [DIA_MAX_TEXT]; <= DIA_MAX_TEXT */
    int no_graphs;      /* 1: never capture the step as a backend graph [0]. Where the backend
                           can capture (CUDA), each step runs as a graph recorded once per
                           power-of-two row bucket (keys 1, 2, 4, ...); rows are padded with
                           dummy rows on one spare KV slot. A backend holds the step graphs of
                           one dia_model at a time. */
    eng_dtype kv_dtype; /* self/cross KV store dtype, ENG_DT_F32 or ENG_DT_BF16 (halves the
                           KV memory; the backend must support it) [F32 on the CPU backend,
                           BF16 on others] */
} dia_load_opts;

/* Bytes planned at load, per category (backend memory unless said otherwise). */
typedef struct dia_mem {
    size_t weights;        /* linear weights (+ scales), norms, embedding tables */
    size_t kv_self;        /* decoder self-attention caches: layers x 2*max_batch x max_frames */
    size_t kv_cross;       /* cross-attention K/V: layers x 2*max_batch x max_text */
    size_t workspace;      /* activations of the encoder and of one step, index tensors */
    size_t host;           /* host staging: logits, per-sequence frames and scores */
    eng_mem_stats backend; /* the backend's own counters after load */
} dia_mem;

typedef struct dia_model dia_model;

/* Loads the checkpoint in `dir` (config.json + model.safetensors or a sharded index) onto the
 * backend. Linear weights may be F32, BF16, F16 (converted), int8 or int4 (engine/weights.h);
 * every tensor is checked against config.json (ENG_EMISMATCH naming the tensor and both
 * shapes; ENG_ENOTFOUND naming a missing tensor). The backend must outlive the model. */
int dia_model_load(dia_model **out, eng_backend *be, const char *dir, const dia_load_opts *opts,
                   eng_error *err);
/* A model with random weights of the given config (benchmarks without a checkpoint): linear
 * weights N(0, 1/in) as `fmt` (F32, BF16, I8 or I4 with group 128), norms 1 +- 0.1,
 * embeddings N(0, 1), from `seed`. */
int dia_model_random(dia_model **out, eng_backend *be, const dia_config *cfg, eng_wfmt fmt,
                     uint64_t seed, const dia_load_opts *opts, eng_error *err);
void dia_model_free(dia_model *m);
const dia_config *dia_model_config(const dia_model *m);
/* The load options in force (defaults filled in). */
const dia_load_opts *dia_model_opts(const dia_model *m);
void dia_model_mem(dia_model *m, dia_mem *out);
/* Sequences that can still be started (max_batch minus those in flight). */
int dia_model_free_slots(const dia_model *m);

/* Generation parameters (spec 6.2, 6.5). Zero/negative values switch a stage off as noted. */
typedef struct dia_gen_params {
    float cfg_scale;    /* classifier-free guidance g: G = Lc + g (Lc - Lu); <= 1 or 1 = off
                           (no unconditional row is computed) [3.0] */
    int cfg_top_k;      /* CFG filter: keep Lc at the top-k of G, -inf elsewhere; 0 = none,
                           the scores are G [45] (transformers passes top_k for both) */
    float temperature;  /* divide scores by it when > 0 and != 1; values below 1 are raised
                           to 1 as transformers does [1.2] */
    int top_k;          /* sampling top-k (ties at the k-th value kept); 0 = off [45] */
    float top_p;        /* sampling nucleus; >= 1 = off [0.95] */
    int max_new_tokens; /* decoder steps at most; frames returned <= max_new_tokens + 1
                           [3072, capped by the model's max_frames - 1] */
    int greedy;         /* 1: argmax instead of sampling (top-k/top-p skipped) [0] */
    int no_delay_mask;  /* 1: transformers' non-delayed path (no BOS forcing on the delayed
                           channels; spec 6.1) - for reference checks only [0] */
    uint64_t seed;      /* sampling seed [0] */
} dia_gen_params;

/* Nari defaults: cfg 3.0, cfg_top_k 45, temperature 1.2, top_k 45, top_p 0.95, 3072 tokens,
 * sampling, delay mask on, seed 0. */
void dia_gen_params_default(dia_gen_params *p);

/* A sequence in flight. Owned by the model (preallocated at load); valid until released. */
typedef struct dia_seq dia_seq;

/* Starts a sequence for text ids[n] (from dia_tokenize): runs the encoder on the prompt and on
 * its unconditional twin (all ids 0), fills the cross-attention K/V of a free slot and resets
 * the sampler state. ENG_EINVAL when no slot is free, n is out of [1, max_text] or an id is out
 * of range, or the parameters are invalid (message says which). */
int dia_seq_start(dia_model *m, const int32_t *ids, int n, const dia_gen_params *p, dia_seq **out,
                  eng_error *err);
/* Advances each of the n sequences (all started, none done) by one decoder step in one batched
 * decoder pass: input frame (after the delay overwrite) -> logits -> spec 6.2 processing ->
 * pick -> EOS/PAD bookkeeping. On failure the sequences keep their state before the call. */
int dia_step(dia_model *m, dia_seq *const *seqs, int n, eng_error *err);
/* Measurement (benchmarks): replays the step graph of the last dia_step over these n sequences
 * `reps` times back to back with the same inputs and no host work between replays, and sets
 * *ms to the device time of one replay. The sequences do not advance (their K/V at the current
 * position is rewritten with the same values). ENG_EUNSUPPORTED where the backend has no step
 * graphs. Call right after a dia_step of the same n sequences. */
int dia_time_step_graph(dia_model *m, dia_seq *const *seqs, int n, int reps, double *ms,
                        eng_error *err);

/* 1 when every channel has emitted EOS or the length limit is reached. */
int dia_seq_done(const dia_seq *s);
/* 1 when the sequence ended with a channel-0 EOS the model chose, 0 when forced by length. */
int dia_seq_chose_eos(const dia_seq *s);
/* Frames so far, BOS frame included (the delayed sequence of spec 6): decoder steps run + 1. */
int dia_seq_len(const dia_seq *s);
/* Decoder steps the sequence may run at most (max_new_tokens, capped by the model's frames). */
int dia_seq_max_steps(const dia_seq *s);
/* The delayed frames [len][channels] with the final delay overwrite applied; valid until the
 * next dia_step on this sequence or its release. */
const int32_t *dia_seq_frames(const dia_seq *s);
/* Undelayed codes for the codec (spec 6.4), channel-major: codes[c * cap_frames + t] for
 * t < *n_frames. Values outside 0..1023 (never expected) are replaced by 0 as the original does.
 * ENG_EINVAL when cap_frames is too small (*n_frames still says how many are needed). */
int dia_seq_codes(const dia_seq *s, int32_t *codes, int cap_frames, int *n_frames, eng_error *err);
/* Frees the slot. NULL is a no-op. */
void dia_seq_release(dia_model *m, dia_seq *s);

/* Inspection and teacher forcing (reference tests, debugging). The pointers are valid until the
 * next dia_step that includes the sequence; logits and scores stay on the backend and are
 * fetched by the first call after a step (NULL before the first step, after a failed step, or
 * when the fetch fails).
 * dia_seq_logits: raw fp32 logits of the last step, [channels][vocab], cond (uncond = 0) or
 * unconditional row (uncond = 1; NULL when CFG is off). dia_seq_scores: processed scores of the
 * last step (after every stage of spec 6.2 up to the pick). dia_seq_force: the next step appends
 * `frame` (channels ids) instead of what it picks; scores and EOS bookkeeping are computed as
 * usual. */
const float *dia_seq_logits(const dia_seq *s, int uncond);
const float *dia_seq_scores(const dia_seq *s);
void dia_seq_force(dia_seq *s, const int32_t *frame);

/* Runs the encoder on B prompts padded to S (ids[B*S], mask[B*S] 1 = real token, may be NULL)
 * and downloads the final encoder states to out[B*S*enc_hidden]. For reference checks;
 * B*S <= 2 * max_text. */
int dia_encode(dia_model *m, const int32_t *ids, const uint8_t *mask, int B, int S, float *out,
               eng_error *err);

/* Result of dia_generate and dia_seq_result. */
typedef struct dia_result {
    int32_t *codes; /* [channels][n_frames] undelayed codes (malloc'd) */
    int n_frames;   /* audio frames (512 samples each at 44.1 kHz) */
    int channels;
    int steps;     /* decoder steps run */
    int chose_eos; /* 1 when the model ended the dialogue itself */
} dia_result;
/* The sequence's codes so far (dia_seq_codes into a buffer of the right size) with its step
 * count and EOS flag; free with dia_result_free. On failure *out is empty. */
int dia_seq_result(const dia_seq *s, dia_result *out, eng_error *err);
void dia_result_free(dia_result *r);

/* Progress callback: called after every step with steps done and the step limit; return
 * nonzero to cancel. */
typedef int (*dia_progress_fn)(void *user, int steps, int max_steps);

/* Tokenizes, starts a sequence, steps it until done and extracts its codes. `cancel` (may be
 * NULL) is polled between steps; cancellation returns ENG_ECANCELLED. */
int dia_generate(dia_model *m, const char *text, size_t len, const dia_gen_params *p,
                 dia_result *out, dia_progress_fn progress, void *user, const volatile int *cancel,
                 eng_error *err);

#endif
