/* dia_engine.c - the real worker engine: Dia generates codes, DAC turns them into PCM, both
 * loaded from the artifact store onto one backend (VOXQ_DEVICE).
 *
 * Variant choice at startup (logged with its reason): an explicit VOXQ_VARIANT must be present;
 * `auto` takes int8 when a valid one is in the store, else original. With VOXQ_AUTO_QUANTIZE=1
 * and no int8 yet, the daemon enqueues the quantize job once, this engine serves the original
 * meanwhile and, between jobs (idle), looks for the int8 variant every few seconds and switches
 * to it when it appears - no restart (only while no job is in flight).
 *
 * Continuous batching: up to VOXQ_CONCURRENCY jobs are in flight; each decoder step advances
 * all of them in one batched pass (dia_step), a new job joins at the next step after its
 * encoder pass, a finished one leaves through the codec. On the CPU backend a job's codes do
 * not depend on what shares its steps. */
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

/* A task in flight and its sequence. */
typedef struct dia_job {
    worker_task *t;
    dia_seq *seq;
} dia_job;

typedef struct dia_engine {
    worker_engine base;         /* first: the daemon sees a worker_engine */
    store st;
    char model_name[STORE_NAME_MAX];
    char preferred[STORE_NAME_MAX]; /* variant to switch to when it appears ("" = none) */
    eng_backend *be;
    dia_model *dia;
    dac_model *dac;
    int64_t last_poll;
    dia_job *jobs;   /* [base.max_active] in flight, the first n_jobs used */
    int n_jobs;
    dia_seq **step_seqs; /* [base.max_active] scratch for dia_step */
} dia_engine;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Checks t against the loaded model, tokenizes it and starts its sequence (the encoder pass):
 * the task joins the next decoder step. */
static int dia_admit(worker_engine *base, worker_task *t) {
    dia_engine *e = (dia_engine *)base;
    if (!e->dia)
        return worker_task_fail(t, "engine_error", 0, "no model is loaded (a variant switch "
                                "failed; see the worker log)");
    if (t->variant[0] && strcmp(t->variant, "auto") && strcmp(t->variant, base->variant))
        return worker_task_fail(t, "variant_unavailable", 1,
                                "field 'variant': this worker serves %s/%s, not '%s'",
                                e->model_name, base->variant, t->variant);
    if (e->n_jobs >= base->max_active)
        return worker_task_fail(t, "engine_error", 0, "%d tasks already in flight", e->n_jobs);
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
    int32_t ids[DIA_MAX_TEXT];
    int n = 0;
    eng_error err = {0};
    dia_seq *seq = NULL;
    int rc = dia_tokenize(t->text, t->text_len, ids, dia_model_opts(e->dia)->max_text, &n, &err);
    if (!rc) rc = dia_seq_start(e->dia, ids, n, &p, &seq, &err);
    if (rc)
        return worker_task_fail(t, rc == ENG_EINVAL ? "invalid_input" : "engine_error",
                                rc == ENG_EINVAL, "%s", err.msg);
    e->jobs[e->n_jobs++] = (dia_job){t, seq};
    worker_task_touch(t);
    if (base->max_active > 1)
        fprintf(stderr, "voxq worker: job %s: decoding, %d of %d in flight\n", t->id, e->n_jobs,
                base->max_active);
    return 0;
}

static int dia_active(worker_engine *base) {
    return ((dia_engine *)base)->n_jobs;
}

/* Codes of a finished sequence through the codec into t->pcm. */
static int finish_audio(dia_engine *e, dia_job *j) {
    worker_task *t = j->t;
    eng_error err = {0};
    dia_result res;
    if (dia_seq_result(j->seq, &res, &err))
        return worker_task_fail(t, err.code == ENG_ENOMEM ? "out_of_memory" : "engine_error", 0,
                                "%s", err.msg);
    const dac_config *ccfg = dac_model_config(e->dac);
    int64_t n = dac_samples(e->dac, res.n_frames);
    t->steps = res.steps;
    t->pcm = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    int rc = t->pcm ? dac_decode(e->dac, res.codes, res.n_frames, t->pcm, &err) : -1;
    dia_result_free(&res);
    if (!t->pcm)
        return worker_task_fail(t, "out_of_memory", 0, "no memory for %lld samples",
                                (long long)n);
    if (rc != 0) return worker_task_fail(t, "engine_error", 0, "codec: %s", err.msg);
    t->n_samples = n;
    t->sample_rate = ccfg->sampling_rate;
    pthread_mutex_lock(&e->base.lock);
    snprintf(t->variant_used, sizeof t->variant_used, "%s", e->base.variant);
    pthread_mutex_unlock(&e->base.lock);
    return 0;
}

/* One decoder step for every task in flight; cancelled tasks leave first, finished ones go
 * through the codec and leave after the step. A failed step fails every task in it (their
 * sequences may be half-advanced; retrying elsewhere is the safe answer). */
static int dia_step_all(worker_engine *base, worker_task **finished, int cap) {
    dia_engine *e = (dia_engine *)base;
    int nfin = 0;
    for (int i = 0; i < e->n_jobs && nfin < cap;) {
        dia_job *j = &e->jobs[i];
        if (atomic_load(&j->t->cancel)) {
            j->t->cancelled = 1;
            worker_task_fail(j->t, "cancelled", 1, "cancelled after %d steps",
                             dia_seq_len(j->seq) - 1);
            dia_seq_release(e->dia, j->seq);
            finished[nfin++] = j->t;
            e->jobs[i] = e->jobs[--e->n_jobs];
            continue;
        }
        e->step_seqs[i] = j->seq;
        i++;
    }
    if (!e->n_jobs) return nfin;
    eng_error err = {0};
    int rc = dia_step(e->dia, e->step_seqs, e->n_jobs, &err);
    for (int i = 0; i < e->n_jobs && nfin < cap;) {
        dia_job *j = &e->jobs[i];
        worker_task_touch(j->t);
        if (rc) {
            worker_task_fail(j->t, "engine_error", 0, "%s", err.msg);
        } else {
            int steps = dia_seq_len(j->seq) - 1, most = dia_seq_max_steps(j->seq);
            if (most > 0) atomic_store(&j->t->permille, (int)(1000LL * steps / most));
            if (!dia_seq_done(j->seq)) {
                i++;
                continue;
            }
            finish_audio(e, j);
        }
        dia_seq_release(e->dia, j->seq);
        finished[nfin++] = j->t;
        e->jobs[i] = e->jobs[--e->n_jobs];
    }
    return nfin;
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
    lo.max_batch = e->base.max_active;
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
    for (int i = 0; i < e->n_jobs; i++)
        dia_seq_release(e->dia, e->jobs[i].seq);
    free(e->jobs);
    free(e->step_seqs);
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
    e->base.max_active = cfg->concurrency > 0 ? cfg->concurrency : 1;
    e->base.admit = dia_admit;
    e->base.step = dia_step_all;
    e->base.active = dia_active;
    e->jobs = calloc((size_t)e->base.max_active, sizeof *e->jobs);
    e->step_seqs = calloc((size_t)e->base.max_active, sizeof *e->step_seqs);
    if (!e->jobs || !e->step_seqs) {
        snprintf(errbuf, 512, "out of memory");
        goto fail;
    }
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
    fprintf(stderr, "voxq worker: loaded %s/%s with codec %s on %s (up to %d jobs per step): %s\n",
            cfg->model, variant, codec, e->be->ops->name, e->base.max_active, why);
    *out = &e->base;
    return 0;
fail:
    dia_destroy(&e->base);
    return -1;
}
