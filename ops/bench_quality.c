/* bench_quality.c - quality figures of a stored variant for its MANIFEST.json (used by
 * `voxq quantize` before it publishes) and their one-line summary for `voxq store ls`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/bench.h"

#define DEFAULT_CODEC "dac-44khz"

/* 1 when dir/config.json says model_type "dia" (the figures are Dia's). */
static int is_dia(const char *dir) {
    char path[4200];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *j = cJSON_Parse(buf);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "model_type");
    int yes = cJSON_IsString(t) && !strcmp(t->valuestring, "dia");
    cJSON_Delete(j);
    return yes;
}

/* The codec directory for `model`: its original manifest's "codec", else dac-44khz, when that
 * model's original is valid in the store; else NULL (no log-mel distance). */
static const char *codec_dir(const store *s, const char *model, char *buf, size_t n) {
    store_manifest man;
    memset(&man, 0, sizeof man);
    char name[STORE_NAME_MAX] = DEFAULT_CODEC;
    if (store_manifest_read(s, model, "original", &man, NULL) == 0) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(man.json, "codec");
        if (cJSON_IsString(c) && store_name_valid(c->valuestring))
            snprintf(name, sizeof name, "%s", c->valuestring);
        store_manifest_free(&man);
    }
    if (store_variant_state(s, name, "original", NULL) != STORE_VALID) return NULL;
    if (store_variant_dir(s, name, "original", buf, n, NULL)) return NULL;
    return buf;
}

int bench_quality_store(const store *s, const char *model, const char *orig_dir,
                        const char *variant_dir, const char *device, int threads, int steps,
                        cJSON **out, eng_error *err) {
    *out = NULL;
    if (!is_dia(orig_dir))
        return eng_errorf(err, ENG_EUNSUPPORTED, "%s: not a Dia checkpoint: no quality figures",
                          orig_dir);
    char cbuf[STORE_PATH_MAX];
    const char *cdir = codec_dir(s, model, cbuf, sizeof cbuf);
    const quality_prompt *prompts = NULL;
    int np = quality_default_prompts(&prompts), max_ids = 1, rc;
    for (int i = 0; i < np; i++) {
        int32_t ids[DIA_MAX_TEXT];
        int n = 0;
        if (dia_tokenize(prompts[i].text, strlen(prompts[i].text), ids, DIA_MAX_TEXT, &n, NULL) ==
                0 &&
            n > max_ids)
            max_ids = n;
    }
    eng_backend *be = NULL;
    dia_model *orig = NULL, *var = NULL;
    dac_model *dac = NULL;
    quality_figures *q = calloc(1, sizeof *q);
    if (!q) return eng_errorf(err, ENG_ENOMEM, "quality: out of memory");
    dia_load_opts lo = {0};
    lo.max_batch = 1;
    lo.max_frames = steps + 1;
    lo.max_text = max_ids;
    quality_opts qo;
    quality_opts_default(&qo);
    qo.gen.max_new_tokens = steps;
    if ((rc = eng_backend_new(&be, device ? device : "auto", threads, err))) goto out;
    if ((rc = dia_model_load(&orig, be, orig_dir, &lo, err))) {
        /* nothing to compare against; not the variant's fault */
        eng_error_prefix(err, "the original does not load as Dia, no quality figures");
        rc = ENG_EUNSUPPORTED;
        goto out;
    }
    if ((rc = dia_model_load(&var, be, variant_dir, &lo, err))) {
        eng_error_prefix(err, "the variant");
        goto out;
    }
    if (cdir && (rc = dac_model_load(&dac, be, cdir, NULL, err))) {
        eng_error_prefix(err, "the codec");
        goto out;
    }
    if ((rc = quality_compare(orig, var, dac, prompts, np, &qo, q, err))) goto out;
    *out = quality_figures_json(q);
    if (!*out) {
        rc = eng_errorf(err, ENG_ENOMEM, "quality: out of memory");
        goto out;
    }
    cJSON_AddStringToObject(*out, "prompt_set", "built-in (docs/quality-prompts.txt)");
    cJSON_AddStringToObject(*out, "backend", be->ops->name);
out:
    free(q);
    dac_model_free(dac);
    dia_model_free(var);
    dia_model_free(orig);
    eng_backend_free(be);
    return rc;
}

int bench_quality_summary(const cJSON *manifest, char *buf, size_t n) {
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(manifest, "quality");
    const cJSON *agree = cJSON_GetObjectItemCaseSensitive(q, "top1_agreement");
    if (!cJSON_IsNumber(agree)) return 0;
    const cJSON *kl = cJSON_GetObjectItemCaseSensitive(q, "kl_mean");
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(q, "eos_diff_mean_abs");
    const cJSON *mel = cJSON_GetObjectItemCaseSensitive(q, "mel_distance_mean");
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(q, "steps");
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(q, "prompts");
    char melbuf[32] = "n/a";
    if (cJSON_IsNumber(mel)) snprintf(melbuf, sizeof melbuf, "%.3f", mel->valuedouble);
    snprintf(buf, n,
             "top-1 %.1f%%, KL %.3g nats, EOS +-%.1f frames, log-mel %s (%d prompts, "
             "%d steps)",
             100 * agree->valuedouble, cJSON_GetNumberValue(kl), cJSON_GetNumberValue(eos), melbuf,
             cJSON_GetArraySize(prompts), (int)cJSON_GetNumberValue(steps));
    return 1;
}
