/* quantize.c - one quantized variant of a stored model: lock, quantize into staging, copy the
 * non-weight files, publish with the summary in MANIFEST.json. See quantize.h. */
#include "worker/quantize.h"

#include "ops/bench.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Monotonic seconds, for the total time. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Passes one formatted line to the request's note callback, if any. */
static void note(const worker_quant_request *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void note(const worker_quant_request *req, const char *fmt, ...) {
    if (!req->note) return;
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    req->note(req->ctx, line);
}

/* 1 when s ends with suffix. */
static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* The weights are replaced by ours; everything else of the source (config.json,
 * generation_config.json, tokenizer files, ...) belongs in the variant unchanged. */
static int is_weight_file(const char *name) {
    return ends_with(name, ".safetensors") || !strcmp(name, "model.safetensors.index.json");
}

/* 1 when the existing, valid variant was made from the current source (or does not say). */
static int made_from(const store *s, const char *model, const char *variant,
                     const char *source_digest, char *theirs, size_t n) {
    store_manifest m = {0};
    if (store_manifest_read(s, model, variant, &m, NULL) != 0) return 0;
    snprintf(theirs, n, "%s", m.source_digest);
    int same = m.source_digest[0] == '\0' || !strcmp(m.source_digest, source_digest);
    store_manifest_free(&m);
    return same;
}

/* Takes the variant's lock and opens a staging directory, saying so when it has to wait.
 * STORE_EEXIST means a valid variant is there (without force). A damaged one is replaced. */
static int begin(const store *s, const worker_quant_request *req, const char *variant, int force,
                 store_stage *stage, eng_error *err) {
    int flags = force ? STORE_FORCE : 0;
    int rc = store_stage_begin(s, req->model, variant, flags | STORE_NOWAIT, stage, err);
    if (rc == STORE_EBUSY) {
        note(req, "%s; waiting for it", err ? err->msg : "another writer holds the lock");
        rc = store_stage_begin(s, req->model, variant, flags, stage, err);
    }
    if (rc == STORE_ECORRUPT) {
        note(req, "%s/%s exists but is damaged (%s); remaking it", req->model, variant,
             err ? err->msg : "?");
        rc = store_stage_begin(s, req->model, variant, flags | STORE_FORCE, stage, err);
    }
    return rc;
}

/* The members MANIFEST.json gets besides the store's own. */
static cJSON *manifest_extra(const worker_quant_request *req, const store_manifest *src,
                             const eng_quant_report *rep) {
    cJSON *extra = cJSON_CreateObject(), *params = cJSON_CreateObject();
    cJSON *source = cJSON_CreateObject(), *quality = cJSON_CreateObject();
    cJSON *keep = cJSON_CreateArray(), *summary = eng_quant_report_json(rep);
    if (!extra || !params || !source || !quality || !keep || !summary) {
        cJSON_Delete(extra);
        cJSON_Delete(params);
        cJSON_Delete(source);
        cJSON_Delete(quality);
        cJSON_Delete(keep);
        cJSON_Delete(summary);
        return NULL;
    }
    cJSON_AddStringToObject(extra, "method", eng_quant_method_name(rep->method));
    cJSON_AddStringToObject(params, "scheme", "symmetric, round to nearest even");
    if (rep->method == ENG_QUANT_INT8) {
        cJSON_AddStringToObject(params, "granularity", "per output channel");
    } else {
        cJSON_AddStringToObject(params, "granularity", "groups along the input dimension");
        cJSON_AddNumberToObject(params, "group_size", rep->group);
    }
    cJSON_AddStringToObject(params, "policy", eng_quant_policy_name(rep->policy));
    for (size_t i = 0; i < req->nkeep; i++)
        cJSON_AddItemToArray(keep, cJSON_CreateString(req->keep[i]));
    cJSON_AddItemToObject(params, "keep", keep);
    cJSON_AddStringToObject(params, "format", "voxq quantized safetensors " ENG_QUANT_FORMAT
                                              " (docs/FORMAT.md)");
    cJSON_AddItemToObject(extra, "params", params);
    cJSON_AddStringToObject(source, "model", src->model);
    cJSON_AddStringToObject(source, "variant", src->variant);
    cJSON_AddStringToObject(source, "digest", src->digest);
    cJSON_AddItemToObject(extra, "source", source);
    cJSON_AddNumberToObject(quality, "rel_error", rep->rel_err);
    cJSON_AddNumberToObject(quality, "max_rel_error", rep->max_rel_err);
    if (rep->max_rel_err_tensor)
        cJSON_AddStringToObject(quality, "max_rel_error_tensor", rep->max_rel_err_tensor);
    cJSON_AddItemToObject(extra, "quality", quality);
    cJSON_AddItemToObject(extra, "quantization", summary);
    return extra;
}

/* "auto" (or NULL) picks the policy from the checkpoint's tensor names; else parses it. */
static int resolve_policy(const char *name, const st_model *m, eng_quant_policy_kind *kind,
                          eng_error *err) {
    if (!name || !strcmp(name, "auto")) {
        *kind = eng_quant_policy_detect(m);
        return 0;
    }
    if (eng_quant_policy_parse(name, kind) != 0)
        return eng_errorf(err, ENG_EINVAL, "unknown policy '%s' (auto, dia or generic)", name);
    return 0;
}

int worker_quantize(const store *s, const worker_quant_request *req, worker_quant_result *res,
                    eng_error *err) {
    memset(res, 0, sizeof *res);
    double t0 = now_s();
    const char *variant = eng_quant_method_name(req->method);
    if (!strcmp(variant, "?"))
        return eng_errorf(err, ENG_EINVAL, "unknown quantization method %d", (int)req->method);
    snprintf(res->variant, sizeof res->variant, "%s", variant);
    int rc = store_variant_dir(s, req->model, variant, res->dir, sizeof res->dir, err);
    if (rc) return rc;

    /* The source must be a whole, valid artifact. */
    store_manifest src = {0};
    cJSON *figures = NULL; /* quality figures measured on the staged variant */
    char src_dir[STORE_PATH_MAX];
    eng_error why = {0};
    rc = store_variant_state(s, req->model, WORKER_QUANT_SOURCE, &why);
    if (rc == STORE_ABSENT)
        return eng_errorf(err, ENG_ENOTFOUND, "%s/%s not found in %s (voxq store import DIR "
                          "--model %s)", req->model, WORKER_QUANT_SOURCE, s->root, req->model);
    if (rc == STORE_INVALID)
        return eng_errorf(err, STORE_ECORRUPT, "%s/%s is damaged: %s", req->model,
                          WORKER_QUANT_SOURCE, why.msg);
    if (rc < 0) return eng_errorf(err, rc, "%s", why.msg);
    if ((rc = store_manifest_read(s, req->model, WORKER_QUANT_SOURCE, &src, err))) return rc;
    if ((rc = store_variant_dir(s, req->model, WORKER_QUANT_SOURCE, src_dir, sizeof src_dir,
                                err)))
        goto out;

    /* Once only: a valid variant made from this source is the answer. */
    int force = req->force;
    if (!force && store_variant_state(s, req->model, variant, NULL) == STORE_VALID) {
        char theirs[65] = "";
        if (made_from(s, req->model, variant, src.digest, theirs, sizeof theirs)) {
            res->already = 1;
            goto out;
        }
        note(req, "%s/%s was made from another %s (source digest %.12s, now %.12s); remaking it",
             req->model, variant, WORKER_QUANT_SOURCE, theirs, src.digest);
        force = 1;
    }
    store_stage stage;
    rc = begin(s, req, variant, force, &stage, err);
    if (rc == STORE_EEXIST) { /* another writer published it while we waited */
        res->already = 1;
        rc = 0;
        goto out;
    }
    if (rc) goto out;

    st_model *model = NULL;
    char out_path[STORE_PATH_MAX];
    eng_quant_options opt = {req->method, 0, {0, req->keep, req->nkeep}, req->threads,
                             req->progress, req->ctx};
    if ((rc = st_model_open(&model, src_dir, err)) ||
        (rc = resolve_policy(req->policy, model, &opt.policy.kind, err)) ||
        (rc = store_stage_path(&stage, "model.safetensors", out_path, sizeof out_path, err)) ||
        (rc = eng_quant_checkpoint(model, out_path, &opt, &res->report, err))) {
        st_model_close(model);
        store_stage_abort(&stage);
        goto out;
    }
    st_model_close(model);
    for (size_t i = 0; i < src.nfiles; i++) {
        const char *name = src.files[i].name;
        char path[STORE_PATH_MAX];
        if (is_weight_file(name)) continue;
        if (snprintf(path, sizeof path, "%s/%s", src_dir, name) >= (int)sizeof path) {
            rc = eng_errorf(err, ENG_EINVAL, "%s/%s: path too long", src_dir, name);
        } else {
            rc = store_stage_copy_in(&stage, path, name, req->publish_progress, req->ctx, err);
        }
        if (rc) {
            store_stage_abort(&stage);
            goto out;
        }
    }
    if (req->quality_steps > 0) {
        note(req, "measuring quality figures against %s/%s (%d steps a prompt)", req->model,
             WORKER_QUANT_SOURCE, req->quality_steps);
        rc = bench_quality_store(s, req->model, src_dir, stage.dir, req->quality_device,
                                 req->threads, req->quality_steps, &figures, &why);
        if (rc == ENG_EUNSUPPORTED) note(req, "%s", why.msg);
        if (rc && rc != ENG_EUNSUPPORTED) {
            store_stage_abort(&stage);
            rc = eng_errorf(err, rc, "quality check before publishing: %s", why.msg);
            goto out;
        }
        rc = 0;
    }
    /* Last chance to cancel before the artifact becomes visible. */
    if (req->progress && res->report.ntensors > 0) {
        size_t n = res->report.ntensors;
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++) total += res->report.tensors[i].src_bytes;
        eng_quant_progress last = {n - 1, n, res->report.tensors[n - 1].name, total, total,
                                   now_s() - t0};
        if (req->progress(&last, req->ctx)) {
            store_stage_abort(&stage);
            rc = eng_errorf(err, ENG_ECANCELLED, "%s/%s: cancelled before publishing",
                            req->model, variant);
            goto out;
        }
    }
    cJSON *extra = manifest_extra(req, &src, &res->report);
    if (!extra) {
        store_stage_abort(&stage);
        rc = eng_errorf(err, ENG_ENOMEM, "%s/%s: out of memory for the manifest", req->model,
                        variant);
        goto out;
    }
    cJSON *quality = cJSON_GetObjectItem(extra, "quality"), *item;
    while (figures && quality && (item = figures->child)) /* the figures join "quality" */
        cJSON_AddItemToObject(quality, item->string, cJSON_DetachItemViaPointer(figures, item));
    rc = store_stage_commit(&stage, extra, req->publish_progress, req->ctx, err);
    cJSON_Delete(extra);
    if (rc == STORE_EEXIST) { /* someone else's equal artifact won the race; ours is gone */
        res->already = 1;
        rc = 0;
    }
out:
    cJSON_Delete(figures);
    store_manifest_free(&src);
    res->total_seconds = now_s() - t0;
    if (rc) eng_quant_report_free(&res->report);
    return rc;
}

void worker_quant_result_free(worker_quant_result *res) {
    if (res) eng_quant_report_free(&res->report);
}
