/* dia_engine.c - the real worker engine: Dia generates codes, DAC turns them into PCM, both
 * loaded from the artifact store onto one backend (VOXQ_DEVICE).
 *
 * Variant choice at startup (logged with its reason): an explicit VOXQ_VARIANT must be present;
 * `auto` takes int8 when a valid one is in the store, else original. With VOXQ_AUTO_QUANTIZE=1
 * and no int8 yet, the daemon enqueues the quantize job once, this engine serves the original
 * meanwhile and, between jobs (idle), looks for the int8 variant every few seconds and switches
 * to it when it appears - no restart. Jobs run one at a time through dia_generate. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/models/dac.h"
#include "engine/models/dia.h"
#include "ops/store.h"
#include "worker/daemon.h"

#define SWITCH_POLL_MS 5000
#define DEFAULT_CODEC "dac-44khz"

typedef struct dia_engine {
    worker_engine base;         /* first: the daemon sees a worker_engine */
    store st;
    char model_name[STORE_NAME_MAX];
    char preferred[STORE_NAME_MAX]; /* variant to switch to when it appears ("" = none) */
    eng_backend *be;
    dia_model *dia;
    dac_model *dac;
    int64_t last_poll;
} dia_engine;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct progress_ctx {
    worker_task *t;
} progress_ctx;

static int on_step(void *user, int steps, int max_steps) {
    progress_ctx *pc = user;
    if (max_steps > 0) atomic_store(&pc->t->permille, (int)(1000LL * steps / max_steps));
    worker_task_touch(pc->t);
    return atomic_load(&pc->t->cancel) != 0;
}

static int dia_run(worker_engine *base, worker_task *t) {
    dia_engine *e = (dia_engine *)base;
    if (!e->dia)
        return worker_task_fail(t, "engine_error", 0, "no model is loaded (a variant switch "
                                "failed; see the worker log)");
    if (t->variant[0] && strcmp(t->variant, "auto") && strcmp(t->variant, base->variant))
        return worker_task_fail(t, "variant_unavailable", 1,
                                "field 'variant': this worker serves %s/%s, not '%s'",
                                e->model_name, base->variant, t->variant);
    const dac_config *ccfg = dac_model_config(e->dac);
    double frames_per_s = (double)ccfg->sampling_rate / ccfg->hop_length;
    dia_gen_params p;
    dia_gen_params_default(&p);
    p.cfg_scale = (float)t->cfg_scale;
    p.temperature = (float)t->temperature;
    p.top_p = (float)t->top_p;
    p.cfg_top_k = t->cfg_filter_top_k;
    p.top_k = t->cfg_filter_top_k;
    if (t->max_seconds > 0) {
        int n = (int)ceil(t->max_seconds * frames_per_s);
        if (n < p.max_new_tokens) p.max_new_tokens = n;
    }
    if (t->has_seed) {
        p.seed = t->seed;
    } else {
        char hex[33];
        queue_random_hex(hex);
        p.seed = strtoull(hex + 16, NULL, 16);
    }
    progress_ctx pc = {t};
    dia_result res = {0};
    eng_error err = {0};
    int rc = dia_generate(e->dia, t->text, t->text_len, &p, &res, on_step, &pc, NULL, &err);
    if (rc == ENG_ECANCELLED || (rc != 0 && atomic_load(&t->cancel))) {
        t->cancelled = 1;
        return worker_task_fail(t, "cancelled", 1, "cancelled");
    }
    if (rc != 0)
        return worker_task_fail(t, rc == ENG_EINVAL ? "invalid_input" : "engine_error",
                                rc == ENG_EINVAL, "%s", err.msg);
    worker_task_touch(t);
    int64_t n = dac_samples(e->dac, res.n_frames);
    t->pcm = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!t->pcm) {
        dia_result_free(&res);
        return worker_task_fail(t, "out_of_memory", 0, "no memory for %lld samples",
                                (long long)n);
    }
    rc = dac_decode(e->dac, res.codes, res.n_frames, t->pcm, &err);
    t->steps = res.steps;
    dia_result_free(&res);
    if (rc != 0) return worker_task_fail(t, "engine_error", 0, "codec: %s", err.msg);
    t->n_samples = n;
    t->sample_rate = ccfg->sampling_rate;
    pthread_mutex_lock(&base->lock);
    snprintf(t->variant_used, sizeof t->variant_used, "%s", base->variant);
    pthread_mutex_unlock(&base->lock);
    return 0;
}

static int load_dia(dia_engine *e, const char *variant, char *errbuf, size_t n) {
    char dir[STORE_PATH_MAX];
    eng_error err = {0};
    if (store_variant_dir(&e->st, e->model_name, variant, dir, sizeof dir, &err) != 0) {
        snprintf(errbuf, n, "%s", err.msg);
        return -1;
    }
    dia_model *m = NULL;
    dia_load_opts lo = {0};
    lo.max_batch = 1;
    if (dia_model_load(&m, e->be, dir, &lo, &err) != 0) {
        snprintf(errbuf, n, "loading %s/%s: %s", e->model_name, variant, err.msg);
        return -1;
    }
    dia_model_free(e->dia);
    e->dia = m;
    pthread_mutex_lock(&e->base.lock);
    snprintf(e->base.variant, sizeof e->base.variant, "%s", variant);
    pthread_mutex_unlock(&e->base.lock);
    return 0;
}

/* Between jobs: switch to the preferred variant once it is in the store. */
static void dia_idle(worker_engine *base) {
    dia_engine *e = (dia_engine *)base;
    if (!e->preferred[0] || now_ms() - e->last_poll < SWITCH_POLL_MS) return;
    e->last_poll = now_ms();
    if (!store_variant_exists_valid(&e->st, e->model_name, e->preferred)) return;
    char errbuf[600];
    fprintf(stderr, "voxq worker: %s/%s appeared in the store; switching to it\n",
            e->model_name, e->preferred);
    dia_model_free(e->dia); /* free first: two models may not fit the device */
    e->dia = NULL;
    if (load_dia(e, e->preferred, errbuf, sizeof errbuf) != 0) {
        fprintf(stderr, "voxq worker: %s; staying on %s\n", errbuf, e->base.variant);
        if (load_dia(e, e->base.variant, errbuf, sizeof errbuf) != 0) {
            /* No model at all: every job now fails as retryable, so other workers take them. */
            fprintf(stderr, "voxq worker: reloading %s failed too: %s\n", e->base.variant,
                    errbuf);
        }
    } else {
        fprintf(stderr, "voxq worker: now serving %s/%s\n", e->model_name, e->preferred);
    }
    e->preferred[0] = '\0';
}

static void dia_mem_(worker_engine *base, size_t *weights, size_t *peak, size_t *total,
                     size_t *freeb) {
    dia_engine *e = (dia_engine *)base;
    eng_mem_stats s = {0};
    if (e->be && e->be->ops->mem_stats) e->be->ops->mem_stats(e->be, &s);
    *weights = s.allocated;
    *peak = s.peak;
    *total = s.device_total;
    *freeb = s.device_free;
}

static void dia_destroy(worker_engine *base) {
    dia_engine *e = (dia_engine *)base;
    dia_model_free(e->dia);
    dac_model_free(e->dac);
    eng_backend_free(e->be);
    store_close(&e->st);
    pthread_mutex_destroy(&base->lock);
    free(e);
}

/* The codec the model's manifest names, else DEFAULT_CODEC. */
static void pick_codec(dia_engine *e, const char *variant, const char *configured, char *out,
                       size_t n) {
    if (configured && configured[0]) {
        snprintf(out, n, "%s", configured);
        return;
    }
    snprintf(out, n, "%s", DEFAULT_CODEC);
    store_manifest man;
    memset(&man, 0, sizeof man);
    eng_error err = {0};
    if (store_manifest_read(&e->st, e->model_name, variant, &man, &err) != 0) return;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(man.json, "codec");
    if (cJSON_IsString(c) && store_name_valid(c->valuestring))
        snprintf(out, n, "%s", c->valuestring);
    store_manifest_free(&man);
}

int worker_dia_engine_new(worker_engine **out, const worker_config *cfg, int *want_quantize,
                          char errbuf[512]) {
    *out = NULL;
    *want_quantize = 0;
    dia_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(errbuf, 512, "out of memory");
        return -1;
    }
    pthread_mutex_init(&e->base.lock, NULL);
    e->base.name = "dia";
    e->base.run = dia_run;
    e->base.idle = dia_idle;
    e->base.mem = dia_mem_;
    e->base.destroy = dia_destroy;
    eng_error err = {0};
    if (store_open(&e->st, cfg->store, &err) != 0 || !store_name_valid(cfg->model)) {
        snprintf(errbuf, 512, "store %.200s: %.280s", cfg->store,
                 err.msg[0] ? err.msg : "invalid model name");
        goto fail;
    }
    snprintf(e->model_name, sizeof e->model_name, "%s", cfg->model);
    const char *variant = cfg->variant;
    const char *why;
    if (!strcmp(variant, "auto")) {
        if (store_variant_exists_valid(&e->st, cfg->model, "int8")) {
            variant = "int8";
            why = "VOXQ_VARIANT=auto and a valid int8 variant is in the store";
        } else {
            variant = "original";
            why = "VOXQ_VARIANT=auto but the store has no valid int8 variant";
            if (cfg->auto_quantize) {
                *want_quantize = 1;
                snprintf(e->preferred, sizeof e->preferred, "int8");
            }
        }
    } else {
        why = "VOXQ_VARIANT names it";
    }
    if (!store_variant_exists_valid(&e->st, cfg->model, variant)) {
        store_entry *list = NULL;
        size_t n = 0;
        char have[256] = "";
        if (store_list(&e->st, cfg->model, &list, &n, &err) == 0)
            for (size_t i = 0; i < n; i++) {
                size_t w = strlen(have);
                snprintf(have + w, sizeof have - w, "%s%s", w ? ", " : "", list[i].variant);
            }
        free(list);
        snprintf(errbuf, 512, "model %s/%s is not in the store at %.200s (it has: %s)", cfg->model,
                 variant, e->st.root, have[0] ? have : "nothing for this model");
        goto fail;
    }
    if (eng_backend_new(&e->be, cfg->device, cfg->threads, &err) != 0) {
        snprintf(errbuf, 512, "device '%.32s': %.400s", cfg->device, err.msg);
        goto fail;
    }
    char codec[STORE_NAME_MAX], codec_dir[STORE_PATH_MAX];
    pick_codec(e, variant, cfg->codec, codec, sizeof codec);
    if (store_variant_dir(&e->st, codec, "original", codec_dir, sizeof codec_dir, &err) != 0 ||
        !store_variant_exists_valid(&e->st, codec, "original")) {
        snprintf(errbuf, 512, "codec %s/original is not in the store at %.300s", codec, e->st.root);
        goto fail;
    }
    if (dac_model_load(&e->dac, e->be, codec_dir, NULL, &err) != 0) {
        snprintf(errbuf, 512, "loading codec %s: %.400s", codec, err.msg);
        goto fail;
    }
    if (load_dia(e, variant, errbuf, 512) != 0) goto fail;
    if (dia_model_config(e->dia)->channels != dac_model_config(e->dac)->n_codebooks) {
        snprintf(errbuf, 512, "codec %s has %d codebooks but %s emits %d channels", codec,
                 dac_model_config(e->dac)->n_codebooks, cfg->model,
                 dia_model_config(e->dia)->channels);
        goto fail;
    }
    fprintf(stderr, "voxq worker: loaded %s/%s with codec %s on %s: %s\n", cfg->model, variant,
            codec, e->be->ops->name, why);
    *out = &e->base;
    return 0;
fail:
    dia_destroy(&e->base);
    return -1;
}
