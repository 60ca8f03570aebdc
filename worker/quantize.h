/* quantize.h - making the int8/int4 variant of a stored model, once. Used by `voxq quantize`
 * and by the worker's quantize jobs.
 *
 * models/<model>/original/ is read (never written); the variant is written by engine/quant into
 * a staging directory of the store, with every non-weight file of the source (config.json,
 * generation_config.json, tokenizer files, ...) copied beside it, and published atomically with
 * a MANIFEST.json that carries the quantization summary. A variant that already exists and
 * passes the store's checks is left alone (result->already); a damaged one is remade. */
#ifndef VOXQ_WORKER_QUANTIZE_H
#define VOXQ_WORKER_QUANTIZE_H

#include "engine/error.h"
#include "engine/quant.h"
#include "ops/store.h"

/* Name of the source variant. */
#define WORKER_QUANT_SOURCE "original"

typedef struct worker_quant_request {
    const char *model;              /* store model name */
    eng_quant_method method;        /* the variant is named after it: "int8" / "int4" */
    const char *policy;             /* "auto" (or NULL), "dia", "generic" */
    const char *const *keep;        /* extra fnmatch patterns of tensors to keep */
    size_t nkeep;
    int threads;                    /* 0: one per CPU */
    int force;                      /* remake the variant even when it exists and is valid */
    /* Called after each chunk of quantization work; a nonzero return cancels (the staging
     * directory is removed and ENG_ECANCELLED returned). May be NULL. */
    eng_quant_progress_fn progress;
    /* Called while the finished files are hashed for the manifest. May be NULL. */
    store_progress_fn publish_progress;
    /* One line about a decision worth telling a person ("waiting for the lock held by ...",
     * "int8 is damaged: ... ; remaking it"). May be NULL. */
    void (*note)(void *ctx, const char *line);
    void *ctx;                      /* passed to the three callbacks */
    /* > 0: before publishing, measure the quality figures (ops/bench.h, docs/quality.md) with
     * this many decoder steps per prompt on `quality_device` (NULL: auto) and add them to the
     * manifest's "quality"; 0: skip. A variant that then fails to load is not published. */
    int quality_steps;
    const char *quality_device;
} worker_quant_request;

typedef struct worker_quant_result {
    int already;                    /* 1: a valid variant existed (or another writer published
                                       it meanwhile); nothing was done */
    char variant[STORE_NAME_MAX];
    char dir[STORE_PATH_MAX];       /* the variant directory */
    eng_quant_report report;        /* when work was done */
    double total_seconds;           /* quantization + copying + hashing + publishing */
} worker_quant_result;

/* Makes models/<model>/<method>/ from models/<model>/original/. Returns 0 (see result->already),
 * or a negative ENG_E* / STORE_E* code with err naming what failed: ENG_ENOTFOUND when the model
 * has no valid original variant, ENG_EINVAL for bad names or options, ENG_ECANCELLED, I/O
 * errors. Whatever happens, no partial variant is left behind; a crash leaves only tmp/ debris
 * that the next writer removes. Free the result with worker_quant_result_free. */
int worker_quantize(const store *s, const worker_quant_request *req, worker_quant_result *result,
                    eng_error *err);
void worker_quant_result_free(worker_quant_result *result);

#endif
