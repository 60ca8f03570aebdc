/* quality.h - how far a variant (int8, int4, ...) of a Dia checkpoint is from the original.
 *
 * Two families of figures, measured on a fixed prompt set (docs/quality.md) with the same
 * sampling parameters and seeds for both models:
 *
 * (a) Teacher-forced agreement. The original generates freely; then both models are fed the
 *     original's frames step by step (dia_seq_force), so they always see the same prefix. At
 *     every step and channel whose target frame is a real prediction (not a BOS of the delay
 *     pattern, not a PAD after the channel ended) we compare
 *       - the top-1 pick: argmax of each model's processed scores (what greedy decoding emits);
 *       - KL(P_orig || P_variant) of the sampling distributions before truncation:
 *         P = softmax(G / tau) over the ids the channel may emit (channel 0: codes and EOS,
 *         other channels: codes), G = Lc + g (Lc - Lu) the CFG-guided logits (G = Lc without
 *         CFG). Top-k/top-p truncation is left out on purpose: it makes the supports differ as
 *         soon as one candidate crosses the cut, which turns KL infinite without saying how
 *         different the distributions are.
 * (b) Free running. Both models generate freely with the same seed: the difference of the
 *     frame where channel 0 says EOS (variant minus original), and, when a codec is given, the
 *     log-mel spectrogram distance between the two decoded waveforms (quality_mel_distance).
 *
 * Everything here is engine-only (no files besides the checkpoints the caller loaded). A model
 * compared against itself gives agreement 1, KL 0, EOS difference 0 and distance 0 exactly on
 * the CPU backend, whose output is bit-reproducible. */
#ifndef VOXQ_ENGINE_QUALITY_H
#define VOXQ_ENGINE_QUALITY_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "engine/error.h"
#include "engine/models/dac.h"
#include "engine/models/dia.h"

/* Most prompts one comparison takes. */
#define QUALITY_MAX_PROMPTS 32
/* Longest prompt name (bytes, NUL included). */
#define QUALITY_NAME_MAX 32

typedef struct quality_prompt {
    const char *name; /* short identifier: [a-z0-9_-], used in file names */
    const char *text; /* Dia dialogue markup, UTF-8 */
} quality_prompt;

/* The fixed, documented prompt set (docs/quality.md, docs/quality-prompts.txt): short, long,
 * two speakers, non-ASCII. Returns the number of prompts; *out points at static storage. */
int quality_default_prompts(const quality_prompt **out);

/* Parses a prompt file: one prompt a line, "NAME<TAB>TEXT"; empty lines and lines starting
 * with '#' are skipped. Names must be [a-z0-9_-]{1,31} and unique. On success *out holds *n
 * prompts whose strings point into `buf`, which is modified in place and must outlive them.
 * ENG_EFORMAT naming `what` and the line otherwise. */
int quality_prompts_parse(char *buf, quality_prompt *out, int cap, int *n, const char *what,
                          eng_error *err);

/* Log-mel spectrogram settings; zero fields take the defaults in brackets. */
typedef struct quality_mel_opts {
    int n_fft;   /* FFT size, a power of two; also the (periodic Hann) window length [2048] */
    int hop;     /* samples between frames [512] */
    int n_mels;  /* triangular mel filters (HTK mel scale) between 0 Hz and sr/2 [80] */
    float floor; /* magnitudes are clamped to it before the natural log [1e-5] */
} quality_mel_opts;

/* Real FFT building block: in-place complex radix-2 FFT of re[n], im[n] (n a power of two,
 * n >= 1): X[k] = sum_t x[t] e^{-2 pi i k t / n}. ENG_EINVAL when n is not a power of two. */
int quality_fft(double *re, double *im, int n, eng_error *err);

/* Log-mel spectrogram of pcm[n] at `sample_rate`: frames centred on t * hop (the signal is
 * zero-padded by n_fft / 2 on both sides), magnitude |STFT| / (sum of the window) so a
 * full-scale sine peaks near 0.5, mel filters, then ln(max(x, floor)).
 * *out is malloc'd [frames][n_mels]; frames = n / hop + 1. */
int quality_logmel(const float *pcm, int64_t n, int sample_rate, const quality_mel_opts *o,
                   float **out, int *frames, int *n_mels, eng_error *err);

/* Mean absolute difference of the log-mel spectrograms of a[na] and b[nb] (natural-log
 * units, averaged over frames and mel bands). The shorter signal is padded with silence to the
 * longer one's length, so extra or missing audio counts. Two empty signals are distance 0. */
int quality_mel_distance(const float *a, int64_t na, const float *b, int64_t nb, int sample_rate,
                         const quality_mel_opts *o, double *dist, eng_error *err);

/* Comparison settings. */
typedef struct quality_opts {
    dia_gen_params gen; /* sampling parameters for both models; prompt i uses seed
                           gen.seed + i. max_new_tokens is capped by both models' max_frames. */
    quality_mel_opts mel;
} quality_opts;

/* Fills o with Nari's sampling defaults (dia_gen_params_default), seed 1, 512 decoder steps
 * (about six seconds of audio: enough to hear drift, short enough for CPU runs), mel
 * defaults. */
void quality_opts_default(quality_opts *o);

/* Figures for one prompt. */
typedef struct quality_prompt_figures {
    char name[QUALITY_NAME_MAX];
    /* (a) teacher forcing along the original's frames */
    int tf_steps;                    /* decoder steps compared */
    long tf_pairs;                   /* (step, channel) pairs compared */
    long tf_agree;                   /* pairs whose top-1 picks agree */
    long ch_pairs[DIA_MAX_CHANNELS]; /* the same per channel */
    long ch_agree[DIA_MAX_CHANNELS];
    double kl_mean; /* mean KL (nats) over the pairs */
    double kl_max;  /* largest KL of one pair */
    /* (b) free running with the prompt's seed */
    int eos_orig, eos_variant; /* delayed-frame index of channel 0's EOS (chosen or forced) */
    int chose_eos_orig, chose_eos_variant; /* 1 when the model chose it, 0 forced by length */
    int frames_orig, frames_variant;       /* audio frames of each free run */
    double mel_distance;                   /* quality_mel_distance; -1 without a codec */
} quality_prompt_figures;

/* Figures for a prompt set, and their summary over the prompts. */
typedef struct quality_figures {
    int n;
    quality_prompt_figures prompt[QUALITY_MAX_PROMPTS];
    int channels;
    double top1_agreement; /* all agreeing pairs / all pairs */
    double ch_agreement[DIA_MAX_CHANNELS];
    double kl_mean; /* pair-weighted mean KL */
    double kl_max;
    double eos_diff_mean_abs; /* mean |eos_variant - eos_orig| over prompts (frames) */
    int eos_diff_max_abs;
    double mel_distance_mean; /* mean over prompts; -1 without a codec */
    double mel_distance_max;
    int steps;     /* max_new_tokens in force */
    uint64_t seed; /* gen.seed */
} quality_figures;

/* Top-1 agreement and KL along frames[n_frames][channels] (the original's delayed frames, BOS
 * frame first, as dia_seq_frames returns them), for text ids[n_ids]. `orig` and `variant` may
 * be the same model (then it needs two free sequence slots). Fills the (a) fields of *f. */
int quality_teacher_forced(dia_model *orig, dia_model *variant, const int32_t *ids, int n_ids,
                           const dia_gen_params *gen, const int32_t *frames, int n_frames,
                           quality_prompt_figures *f, eng_error *err);

/* Runs the whole comparison on prompts[n] (n <= QUALITY_MAX_PROMPTS): per prompt a free run of
 * each model, teacher forcing along the original's frames and, when `codec` is not NULL, the
 * log-mel distance of the decoded audio. The codec must have as many codebooks as Dia has
 * channels. */
int quality_compare(dia_model *orig, dia_model *variant, dac_model *codec,
                    const quality_prompt *prompts, int n, const quality_opts *o,
                    quality_figures *out, eng_error *err);

/* The figures as JSON: {"top1_agreement", "channel_agreement": [...], "kl_mean", "kl_max",
 * "eos_diff_mean_abs", "eos_diff_max_abs", "mel_distance_mean", "mel_distance_max" (null
 * without a codec), "steps", "seed", "prompts": [{"name", "tf_steps", "tf_pairs",
 * "top1_agreement", "kl_mean", "kl_max", "eos_orig", "eos_variant", "eos_diff",
 * "chose_eos_orig", "chose_eos_variant", "frames_orig", "frames_variant", "mel_distance"}]}.
 * NULL when out of memory. */
cJSON *quality_figures_json(const quality_figures *f);

#endif
