/* bench.h - `voxq bench --compare`: speed, memory and quality of a model's variants, side by
 * side, with results.json, a self-contained report.html and the generated audio.
 *
 * The driver (bench_compare) measures each variant in its own child process, so memory one
 * variant touched never counts for another: the child is `SELF bench --child VARIANT ...`
 * (the same options), which calls bench_measure_variant and writes its JSON to a file the
 * parent reads back. A child that fails leaves {"name", "error"} in the results and the others
 * still run. See docs/bench.md for every figure and how it is measured. */
#ifndef VOXQ_OPS_BENCH_H
#define VOXQ_OPS_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "engine/error.h"
#include "engine/quality.h"
#include "ops/store.h"

#define BENCH_MAX_VARIANTS 8
#define BENCH_MAX_CONCURRENCY 8

/* Everything a comparison needs; the driver passes the same settings to every child. */
typedef struct bench_opts {
    const char *model;                        /* store model name (for the report) */
    const char *codec;                        /* codec model name (for the report) */
    const char *variants[BENCH_MAX_VARIANTS]; /* in report order; "original" is the reference */
    int nvariants;
    const char *variant_dirs[BENCH_MAX_VARIANTS]; /* checkpoint directory of each variant */
    const char *original_dir;                     /* the reference for the quality figures; NULL:
                                                     no quality figures */
    const char *codec_dir;                        /* DAC checkpoint directory */
    const char *out_dir;                          /* results.json, report.html, audio/ */
    const char *prompts_file;                     /* NULL: the built-in set (quality.h) */
    const char *device;                           /* auto | cuda | cpu */
    int threads;                                  /* CPU threads, 0 = all */
    int runs;                                     /* timed runs per prompt (>= 1) */
    int steps;                                    /* decoder steps at most per run */
    uint64_t seed;                                /* prompt i uses seed + i, in every variant */
    int concurrency[BENCH_MAX_CONCURRENCY];       /* sequences per step for the scaling curve;
                                                     empty (nconcurrency 0): not measured */
    int nconcurrency;
    int quality;          /* 1: measure quality figures */
    const char *self_exe; /* the voxq binary to start children with */
} bench_opts;

/* Loads the prompts opts names (the built-in set, or prompts_file parsed into *buf, which the
 * caller frees). */
int bench_load_prompts(const bench_opts *o, quality_prompt *out, int cap, int *n, char **buf,
                       eng_error *err);

/* Child side: measures variant `index` of o (load, memory, speed, time to first audio,
 * concurrency curve, quality against original_dir) and writes its audio to
 * OUT/audio/VARIANT-PROMPT.wav. *out is the variant's JSON object. */
int bench_measure_variant(const bench_opts *o, int index, cJSON **out, eng_error *err);

/* Parent side: one child per variant, then OUT/results.json and OUT/report.html. Returns 0
 * when every variant was measured, ENG_EIO/ENG_EINVAL for output or usage problems, and 1
 * when the files were written but some variant failed (its entry says why). */
int bench_compare(const bench_opts *o, eng_error *err);

/* Writes pcm[n] (float, clamped to [-1, 1]) as a 16-bit PCM mono WAV file. */
int bench_write_wav(const char *path, const float *pcm, int64_t n, int sample_rate, eng_error *err);

/* Writes the HTML report for a results.json document: summary, one inline-SVG bar chart per
 * metric, the concurrency curve when measured, a table with ratios against the original, the
 * quality figures per prompt and an <audio> player per generated file. No script, no network:
 * it renders from the file alone. */
int bench_report_html(const cJSON *results, const char *path, eng_error *err);

/* Quality figures of variant_dir against orig_dir (both Dia checkpoints of `model` in store s)
 * on the built-in prompt set, `steps` decoder steps at most per prompt, on backend `device`
 * ("auto" when NULL). The codec is the one the original's manifest names (else dac-44khz);
 * without it in the store the log-mel distance is null. *out is quality_figures_json() plus
 * "prompt_set" and "backend". ENG_EUNSUPPORTED when orig_dir is not a Dia checkpoint or does
 * not load as one (nothing to measure against); a variant that does not load is an error. */
int bench_quality_store(const store *s, const char *model, const char *orig_dir,
                        const char *variant_dir, const char *device, int threads, int steps,
                        cJSON **out, eng_error *err);

/* One line ("top-1 97.1%, KL 0.0011 nats, ...") from a MANIFEST.json's "quality" object when
 * it holds the figures; returns 1 then, else 0. */
int bench_quality_summary(const cJSON *manifest, char *buf, size_t n);

#endif
