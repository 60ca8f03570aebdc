/* quant.h - one-time weight-only quantization of a safetensors checkpoint (int8, int4).
 *
 * int8: symmetric, one scale per output row, scale = max|row| / 127,
 *       q = round(w * (127 / max|row|)) in [-127, 127].
 * int4: symmetric, groups of `group` (128) inputs along a row, scale = max|group| / 7,
 *       q = round(w * (7 / max|group|)) in [-7, 7], stored as the nibble q + 8, two per byte,
 *       low nibble first (even column in the low nibble).
 * Rounding is to nearest, ties to even; a weight comes back as w = q * scale, within half a step
 * (scale / 2) of the original. The file layout
 * (tensor names, dtypes, shapes, __metadata__) is specified in docs/FORMAT.md and read back by
 * engine/weights.h.
 *
 * The driver reads a checkpoint tensor by tensor from its read-only mapping and streams the
 * quantized checkpoint to one .safetensors file; it keeps only a chunk of rows of one tensor in
 * memory, so the peak is a few tens of MB plus what the kernel maps, whatever the model size. */
#ifndef VOXQ_ENGINE_QUANT_H
#define VOXQ_ENGINE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/safetensors.h"

/* Value of __metadata__ "voxq.format" written by this version. */
#define ENG_QUANT_FORMAT "1"
/* Default (and the documented variant's) int4 group size along the input dimension. */
#define ENG_QUANT_GROUP 128

typedef enum eng_quant_method {
    ENG_QUANT_INT8 = 1,
    ENG_QUANT_INT4 = 2,
} eng_quant_method;

/* "int8" / "int4"; "?" for anything else. */
const char *eng_quant_method_name(eng_quant_method method);
/* Parses "int8" / "int4"; returns 0, or ENG_EINVAL for anything else. */
int eng_quant_method_parse(const char *name, eng_quant_method *out);

/* ---- Row quantizers: the math, used by the driver, the tests and anyone building weights. ---- */

/* Quantizes w[0..n) to q[0..n) and returns the row's scale (0 for an all-zero row). The caller
 * has checked that w is finite. */
float eng_quant_row_i8(const float *w, int64_t n, int8_t *q);
/* w[j] = q[j] * scale. */
void eng_dequant_row_i8(const int8_t *q, int64_t n, float scale, float *w);

/* Quantizes w[0..n) into packed[0 .. (n+1)/2) and scales[0 .. ceil(n/group)). group must be
 * even and > 0, so a group never splits a byte. When n is odd the unused high nibble of the last
 * byte is 8 (q = 0). */
void eng_quant_row_i4(const float *w, int64_t n, int group, uint8_t *packed, float *scales);
/* w[j] = (nibble(j) - 8) * scales[j / group]. */
void eng_dequant_row_i4(const uint8_t *packed, int64_t n, int group, const float *scales,
                        float *w);

/* ---- Policy: which tensors are quantized. ---- */

typedef enum eng_quant_policy_kind {
    /* Any checkpoint: 2-D float tensors named "*.weight" except embeddings ("*embed*", "*wte*",
     * "*wpe*") and norms ("*norm*"). */
    ENG_QUANT_POLICY_GENERIC = 1,
    /* Dia (spec dia.md 2.1): exactly the attention q/k/v/o and MLP projections of the encoder
     * and decoder layers; embeddings, norms and the output head logits_dense.weight stay. */
    ENG_QUANT_POLICY_DIA = 2,
} eng_quant_policy_kind;

typedef struct eng_quant_policy {
    eng_quant_policy_kind kind;
    const char *const *keep; /* fnmatch(3) patterns (no flags: '*' also matches '.'); names
                                that match one are kept in their source dtype */
    size_t nkeep;
} eng_quant_policy;

/* "generic" / "dia". */
const char *eng_quant_policy_name(eng_quant_policy_kind kind);
/* Parses "generic" / "dia"; returns 0 or ENG_EINVAL. */
int eng_quant_policy_parse(const char *name, eng_quant_policy_kind *out);
/* The policy a checkpoint calls for: dia when it holds Dia's output head and decoder embedding
 * (logits_dense.weight, model.decoder.embeddings.embed.weight), generic otherwise. */
eng_quant_policy_kind eng_quant_policy_detect(const st_model *m);

/* Returns 1 when tensor t is to be quantized, 0 when it is kept; when kept, why[0..n) says why
 * ("1-D tensor", "embedding", "output head", "--keep 'x.*'", ...). */
int eng_quant_policy_decide(const eng_quant_policy *p, const st_tensor *t, char *why, size_t n);

/* ---- The driver. ---- */

/* Progress, reported from the calling thread after each chunk of work. */
typedef struct eng_quant_progress {
    size_t tensor;          /* index of the tensor being processed (0-based) */
    size_t ntensors;
    const char *name;       /* its name */
    uint64_t bytes_done;    /* source bytes processed so far, over all tensors */
    uint64_t bytes_total;
    double elapsed_s;
} eng_quant_progress;

/* Returns nonzero to cancel the run (the driver then stops, deletes its partial output and
 * returns ENG_ECANCELLED). */
typedef int (*eng_quant_progress_fn)(const eng_quant_progress *p, void *ctx);

typedef struct eng_quant_options {
    eng_quant_method method;
    int group;                      /* int4 group size; 0 means ENG_QUANT_GROUP */
    eng_quant_policy policy;
    int threads;                    /* 0: one per online CPU */
    eng_quant_progress_fn progress; /* may be NULL */
    void *progress_ctx;
} eng_quant_options;

/* What happened to one source tensor. */
typedef struct eng_quant_tensor_report {
    char *name;
    eng_dtype src_dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int quantized;
    char why[96];           /* why it was kept ("" when quantized) */
    uint64_t src_bytes;
    uint64_t out_bytes;     /* data + scales */
    double rel_err;         /* ||W - deq(Q)||_2 / ||W||_2 (0 when kept or W = 0) */
    double err_sq, ref_sq;  /* sum (W - deq(Q))^2 and sum W^2, in double */
} eng_quant_tensor_report;

typedef struct eng_quant_report {
    eng_quant_method method;
    int group;                      /* 0 for int8 */
    eng_quant_policy_kind policy;
    int threads;
    size_t ntensors;
    size_t nquantized;
    eng_quant_tensor_report *tensors; /* in source order */
    uint64_t src_file_bytes;        /* sum of the source .safetensors file sizes */
    uint64_t out_file_bytes;        /* size of the written file */
    uint64_t quantized_src_bytes;   /* source bytes of the tensors that were quantized */
    double ratio;                   /* src_file_bytes / out_file_bytes */
    double rel_err;                 /* overall over the quantized tensors:
                                       sqrt(sum err_sq / sum ref_sq) */
    double max_rel_err;             /* worst tensor */
    const char *max_rel_err_tensor; /* points into tensors[]; NULL when none quantized */
    double seconds;
} eng_quant_report;

void eng_quant_report_free(eng_quant_report *r);

/* The report as a cJSON object (for MANIFEST.json and the CLI): method, group, policy, sizes,
 * ratio, errors, time and one entry per tensor. NULL when out of memory. The caller owns it. */
struct cJSON *eng_quant_report_json(const eng_quant_report *r);

/* Quantizes the checkpoint `src` into the new file out_path (which must not exist; it is created
 * and, on success, fsynced). On any failure or cancellation the partial file is deleted. The
 * source is only read. report (may be NULL) is filled on success; free it with
 * eng_quant_report_free. Errors: ENG_EINVAL (bad options, source already quantized, a
 * non-finite weight - named with its row), ENG_EFORMAT (a name clash with a "_scale" tensor),
 * ENG_EIO, ENG_ENOMEM, ENG_ECANCELLED. */
int eng_quant_checkpoint(const st_model *src, const char *out_path, const eng_quant_options *opt,
                         eng_quant_report *report, eng_error *err);

#endif
