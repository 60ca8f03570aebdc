/* bench_measure.c - the child side of `voxq bench --compare`: one variant's load time, memory,
 * decoder speed, time to first audio, concurrency curve, audio files and quality figures
 * (see bench.h and docs/bench.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "engine/models/dac.h"
#include "engine/models/dia.h"
#include "ops/bench.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Resident set size of this process now (bytes; 0 when /proc is unavailable). */
static size_t rss_now(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0, resident = 0;
    if (!f) return 0;
    if (fscanf(f, "%lu %lu", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Peak resident set size of this process (bytes). */
static size_t rss_peak(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (size_t)ru.ru_maxrss * 1024u;
}

/* Device memory in use by everything on the device (CUDA), or this backend's live bytes. */
static size_t device_used(eng_backend *be) {
    eng_mem_stats ms = {0};
    be->ops->mem_stats(be, &ms);
    return ms.device_total ? ms.device_total - ms.device_free : ms.allocated;
}

int bench_load_prompts(const bench_opts *o, quality_prompt *out, int cap, int *n, char **buf,
                       eng_error *err) {
    *buf = NULL;
    if (!o->prompts_file) {
        const quality_prompt *def = NULL;
        int nd = quality_default_prompts(&def);
        if (nd > cap) nd = cap;
        memcpy(out, def, (size_t)nd * sizeof *out);
        *n = nd;
        return 0;
    }
    FILE *f = fopen(o->prompts_file, "rb");
    if (!f) return eng_errorf(err, ENG_EIO, "%s: cannot open", o->prompts_file);
    size_t cap_b = 1 << 16, len = 0;
    char *b = malloc(cap_b);
    size_t got;
    while (b && (got = fread(b + len, 1, cap_b - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap_b) {
            char *nb = realloc(b, cap_b * 2);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap_b *= 2;
        }
    }
    fclose(f);
    if (!b) return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", o->prompts_file);
    b[len] = '\0';
    int rc = quality_prompts_parse(b, out, cap, n, o->prompts_file, err);
    if (rc) {
        free(b);
        return rc;
    }
    *buf = b;
    return 0;
}

/* Timings of one run of one prompt. */
typedef struct run_times {
    int steps;
    double step_s;  /* wall time of the decoder steps alone */
    double ttfa_s;  /* start of the request to the first audio frame decoded */
    double total_s; /* start to every sample decoded */
    int n_frames;
    int chose_eos;
} run_times;

/* Packs the first `frames` undelayed codes of s into codes[channels][frames]; `tmp` holds
 * channels x dia_seq_len(s) values. Returns 1 (nothing packed) when s has fewer frames. */
static int take_codes(const dia_seq *s, int channels, int32_t *tmp, int32_t *codes, int frames,
                      eng_error *err) {
    int cap = dia_seq_len(s), n = 0;
    int rc = dia_seq_codes(s, tmp, cap, &n, err);
    if (rc) return rc;
    if (n < frames) return 1;
    for (int c = 0; c < channels; c++)
        memcpy(codes + (size_t)c * frames, tmp + (size_t)c * cap, (size_t)frames * sizeof *codes);
    return 0;
}

/* One timed request: encoder, steps until done, the first frame decoded as soon as every
 * channel has it (time to first audio), then the whole audio. pcm gets the samples when not
 * NULL (*n_samples set). */
static int timed_run(dia_model *dia, dac_model *dac, const int32_t *ids, int n_ids,
                     const dia_gen_params *p, int32_t *tmp, int32_t *codes, float *pcm,
                     int64_t *n_samples, run_times *t, eng_error *err) {
    const dia_config *c = dia_model_config(dia);
    memset(t, 0, sizeof *t);
    dia_seq *s = NULL;
    float first[4096];
    double t0 = now_s();
    int rc = dia_seq_start(dia, ids, n_ids, p, &s, err);
    if (rc) return rc;
    int first_steps = c->max_delay + 1; /* frame 0 of the last channel exists after these */
    while (!dia_seq_done(s)) {
        double a = now_s();
        if ((rc = dia_step(dia, &s, 1, err))) goto out;
        t->step_s += now_s() - a;
        t->steps++;
        if (t->steps == first_steps && !dia_seq_done(s) &&
            dac_samples(dac, 1) <= (int64_t)(sizeof first / sizeof first[0])) {
            if ((rc = take_codes(s, c->channels, tmp, codes, 1, err)) < 0) goto out;
            if (rc == 0) {
                if ((rc = dac_decode(dac, codes, 1, first, err))) goto out;
                t->ttfa_s = now_s() - t0;
            }
            rc = 0;
        }
    }
    int cap = dia_seq_len(s);
    if ((rc = dia_seq_codes(s, tmp, cap, &t->n_frames, err))) goto out;
    for (int ch = 0; ch < c->channels; ch++)
        memcpy(codes + (size_t)ch * t->n_frames, tmp + (size_t)ch * cap,
               (size_t)t->n_frames * sizeof *codes);
    if (pcm && (rc = dac_decode(dac, codes, t->n_frames, pcm, err))) goto out;
    if (n_samples) *n_samples = dac_samples(dac, t->n_frames);
    t->total_s = now_s() - t0;
    if (t->ttfa_s == 0) t->ttfa_s = t->total_s; /* too short to stream: all of it is first */
    t->chose_eos = dia_seq_chose_eos(s);
out:
    dia_seq_release(dia, s);
    return rc;
}

/* Aggregate decoder steps/s with n sequences stepping together (each its CFG pair), over at
 * most `steps` steps or until one of them finishes. */
static int concurrent_rate(dia_model *dia, const int32_t *ids, int n_ids, const dia_gen_params *p,
                           int n, int steps, double *rate, eng_error *err) {
    dia_seq *seqs[BENCH_MAX_CONCURRENCY * 8] = {0};
    int rc = 0, started = 0;
    *rate = 0;
    for (; started < n; started++) {
        dia_gen_params q = *p;
        q.seed = p->seed + (uint64_t)started;
        if ((rc = dia_seq_start(dia, ids, n_ids, &q, &seqs[started], err))) goto out;
    }
    /* one untimed step: first-touch of the KV rows and any graph capture */
    if ((rc = dia_step(dia, seqs, n, err))) goto out;
    int done = 0;
    double t0 = now_s();
    for (; done < steps; done++) {
        int any = 0;
        for (int i = 0; i < n; i++)
            any |= dia_seq_done(seqs[i]);
        if (any) break;
        if ((rc = dia_step(dia, seqs, n, err))) goto out;
    }
    double dt = now_s() - t0;
    *rate = dt > 0 ? (double)done * n / dt : 0;
out:
    for (int i = 0; i < started; i++)
        dia_seq_release(dia, seqs[i]);
    return rc;
}

/* Median of x[n] (sorted in place). */
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *x, int n) {
    if (n <= 0) return 0;
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* The quality figures of variant dir against o->original_dir, on a fresh original model. */
static int measure_quality(const bench_opts *o, eng_backend *be, dia_model *variant, dac_model *dac,
                           const quality_prompt *prompts, int np, const dia_load_opts *lo,
                           cJSON **out, eng_error *err) {
    dia_model *orig = NULL;
    quality_figures *q = calloc(1, sizeof *q);
    if (!q) return eng_errorf(err, ENG_ENOMEM, "bench: out of memory");
    dia_load_opts one = *lo;
    one.max_batch = 1;
    quality_opts qo;
    quality_opts_default(&qo);
    qo.gen.seed = o->seed;
    qo.gen.max_new_tokens = o->steps;
    int rc = dia_model_load(&orig, be, o->original_dir, &one, err);
    if (rc) {
        eng_error_prefix(err, "loading the original for the quality figures");
    } else if ((rc = quality_compare(orig, variant, dac, prompts, np, &qo, q, err)) == 0) {
        *out = quality_figures_json(q);
        if (!*out) rc = eng_errorf(err, ENG_ENOMEM, "bench: out of memory");
    }
    dia_model_free(orig);
    free(q);
    return rc;
}

int bench_measure_variant(const bench_opts *o, int index, cJSON **out, eng_error *err) {
    *out = NULL;
    const char *name = o->variants[index], *dir = o->variant_dirs[index];
    quality_prompt prompts[QUALITY_MAX_PROMPTS];
    char *prompt_buf = NULL;
    int np = 0, rc;
    if ((rc = bench_load_prompts(o, prompts, QUALITY_MAX_PROMPTS, &np, &prompt_buf, err)))
        return rc;
    int32_t *ids = malloc((size_t)np * DIA_MAX_TEXT * sizeof *ids);
    int n_ids[QUALITY_MAX_PROMPTS] = {0}, max_ids = 1;
    eng_backend *be = NULL;
    dia_model *dia = NULL;
    dac_model *dac = NULL;
    int32_t *tmp = NULL, *codes = NULL;
    float *pcm = NULL;
    cJSON *v = cJSON_CreateObject();
    if (!ids || !v) {
        rc = eng_errorf(err, ENG_ENOMEM, "bench: out of memory");
        goto out;
    }
    for (int i = 0; i < np; i++) {
        int32_t *row = ids + (size_t)i * DIA_MAX_TEXT;
        if ((rc = dia_tokenize(prompts[i].text, strlen(prompts[i].text), row, DIA_MAX_TEXT,
                               &n_ids[i], err))) {
            eng_error_prefix(err, "prompt '%s'", prompts[i].name);
            goto out;
        }
        if (n_ids[i] > max_ids) max_ids = n_ids[i];
    }
    int max_batch = 1;
    for (int i = 0; i < o->nconcurrency; i++)
        if (o->concurrency[i] > max_batch) max_batch = o->concurrency[i];

    size_t rss_start = rss_now();
    if ((rc = eng_backend_new(&be, o->device, o->threads, err))) goto out;
    size_t dev_start = device_used(be);
    dia_load_opts lo = {0};
    lo.max_batch = max_batch;
    lo.max_frames = o->steps + 1;
    lo.max_text = max_ids;
    double t0 = now_s();
    if ((rc = dia_model_load(&dia, be, dir, &lo, err)) ||
        (rc = dac_model_load(&dac, be, o->codec_dir, NULL, err)) || (rc = eng_sync(be)))
        goto out;
    double load_s = now_s() - t0;
    const dia_config *c = dia_model_config(dia);
    const dac_config *cc = dac_model_config(dac);
    if (cc->n_codebooks != c->channels) {
        rc = eng_errorf(err, ENG_EMISMATCH, "codec has %d codebooks, %s emits %d channels",
                        cc->n_codebooks, name, c->channels);
        goto out;
    }
    dia_mem dm;
    dac_mem cm;
    dia_model_mem(dia, &dm);
    dac_model_mem(dac, &cm);
    size_t rss_base = rss_now(), dev_base = device_used(be);

    tmp = malloc((size_t)(o->steps + 1) * c->channels * sizeof *tmp);
    codes = malloc((size_t)(o->steps + 1) * c->channels * sizeof *codes);
    pcm = malloc((size_t)dac_samples(dac, o->steps + 1) * sizeof *pcm);
    if (!tmp || !codes || !pcm) {
        rc = eng_errorf(err, ENG_ENOMEM, "bench: out of memory for %d steps", o->steps);
        goto out;
    }
    double frame_rate = (double)cc->sampling_rate / cc->hop_length;
    int total_steps = 0;
    double total_step_s = 0, audio_s = 0;
    double *ttfa = malloc((size_t)np * o->runs * sizeof *ttfa);
    if (!ttfa) {
        rc = eng_errorf(err, ENG_ENOMEM, "bench: out of memory");
        goto out;
    }
    cJSON *runs = cJSON_AddArrayToObject(v, "prompts");
    cJSON *audio = cJSON_AddArrayToObject(v, "audio");
    int nttfa = 0;
    for (int i = 0; i < np && rc == 0; i++) {
        dia_gen_params p;
        dia_gen_params_default(&p);
        p.max_new_tokens = o->steps;
        p.seed = o->seed + (uint64_t)i;
        const int32_t *row = ids + (size_t)i * DIA_MAX_TEXT;
        double p_steps = 0, p_time = 0;
        run_times t = {0};
        for (int r = 0; r < o->runs && rc == 0; r++) {
            int64_t ns = 0;
            rc = timed_run(dia, dac, row, n_ids[i], &p, tmp, codes, r == 0 ? pcm : NULL, &ns, &t,
                           err);
            if (rc) {
                eng_error_prefix(err, "prompt '%s'", prompts[i].name);
                break;
            }
            p_steps += t.steps;
            p_time += t.step_s;
            ttfa[nttfa++] = t.ttfa_s;
            if (r == 0) {
                /* the audio for listening: same seed in every variant */
                char path[4096], rel[256];
                snprintf(rel, sizeof rel, "audio/%s-%s.wav", name, prompts[i].name);
                snprintf(path, sizeof path, "%s/%s", o->out_dir, rel);
                if ((rc = bench_write_wav(path, pcm, ns, cc->sampling_rate, err))) break;
                cJSON *a = cJSON_CreateObject();
                cJSON_AddStringToObject(a, "prompt", prompts[i].name);
                cJSON_AddStringToObject(a, "file", rel);
                cJSON_AddNumberToObject(a, "seconds", (double)ns / cc->sampling_rate);
                cJSON_AddItemToArray(audio, a);
                audio_s += (double)ns / cc->sampling_rate;
            }
        }
        if (rc) break;
        total_steps += (int)p_steps;
        total_step_s += p_time;
        cJSON *pr = cJSON_CreateObject();
        cJSON_AddStringToObject(pr, "name", prompts[i].name);
        cJSON_AddNumberToObject(pr, "text_ids", n_ids[i]);
        cJSON_AddNumberToObject(pr, "steps", t.steps);
        cJSON_AddNumberToObject(pr, "frames", t.n_frames);
        cJSON_AddBoolToObject(pr, "chose_eos", t.chose_eos);
        cJSON_AddNumberToObject(pr, "steps_per_s", p_time > 0 ? p_steps / p_time : 0);
        cJSON_AddNumberToObject(pr, "ttfa_s", t.ttfa_s);
        cJSON_AddItemToArray(runs, pr);
    }
    if (rc) {
        free(ttfa);
        goto out;
    }
    double steps_per_s = total_step_s > 0 ? total_steps / total_step_s : 0;
    double ttfa_med = median(ttfa, nttfa);
    free(ttfa);

    cJSON *conc = cJSON_AddArrayToObject(v, "concurrency");
    for (int k = 0; k < o->nconcurrency; k++) {
        dia_gen_params p;
        dia_gen_params_default(&p);
        p.max_new_tokens = o->steps;
        p.seed = o->seed;
        double rate = 0;
        int steps = o->steps < 64 ? o->steps - 1 : 64;
        if ((rc = concurrent_rate(dia, ids, n_ids[0], &p, o->concurrency[k], steps, &rate, err)))
            goto out;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "sequences", o->concurrency[k]);
        cJSON_AddNumberToObject(e, "steps_per_s", rate);
        cJSON_AddItemToArray(conc, e);
    }
    eng_mem_stats ms = {0};
    be->ops->mem_stats(be, &ms);

    cJSON_AddStringToObject(v, "name", name);
    cJSON_AddStringToObject(v, "backend", be->ops->name);
    cJSON_AddNumberToObject(v, "load_s", load_s);
    cJSON *mem = cJSON_AddObjectToObject(v, "memory");
    cJSON_AddNumberToObject(mem, "weights_bytes", (double)(dm.weights + cm.weights));
    cJSON_AddNumberToObject(mem, "dia_weights_bytes", (double)dm.weights);
    cJSON_AddNumberToObject(mem, "codec_weights_bytes", (double)cm.weights);
    cJSON_AddNumberToObject(mem, "kv_bytes", (double)(dm.kv_self + dm.kv_cross));
    cJSON_AddNumberToObject(mem, "workspace_bytes", (double)(dm.workspace + cm.workspace));
    cJSON_AddNumberToObject(mem, "host_bytes", (double)(dm.host + cm.host));
    int cuda = ms.device_total != 0;
    /* device figures on a GPU: in use after load plus the backend's allocations above what
     * it holds now, or what is in use now (library workspaces, graphs) if that is more; on the
     * CPU the process RSS stands in (docs/bench.md) */
    size_t peak_dev = rss_peak();
    if (cuda) {
        size_t dev_now = device_used(be);
        peak_dev = dev_base + (ms.peak > ms.allocated ? ms.peak - ms.allocated : 0);
        if (dev_now > peak_dev) peak_dev = dev_now;
    }
    cJSON_AddStringToObject(mem, "kind", cuda ? "device" : "process RSS");
    cJSON_AddNumberToObject(mem, "baseline_bytes", (double)(cuda ? dev_base : rss_base));
    cJSON_AddNumberToObject(mem, "peak_bytes", (double)peak_dev);
    cJSON_AddNumberToObject(mem, "before_load_bytes", (double)(cuda ? dev_start : rss_start));
    cJSON_AddNumberToObject(mem, "backend_peak_bytes", (double)ms.peak);
    cJSON_AddNumberToObject(v, "runs", o->runs);
    cJSON_AddNumberToObject(v, "steps", total_steps);
    cJSON_AddNumberToObject(v, "steps_per_s", steps_per_s);
    cJSON_AddNumberToObject(v, "frame_rate", frame_rate);
    cJSON_AddNumberToObject(v, "rtf", steps_per_s / frame_rate);
    cJSON_AddNumberToObject(v, "ttfa_s", ttfa_med);
    cJSON_AddNumberToObject(v, "audio_s", audio_s);

    /* quality last: the original loaded for it never counts in the memory figures above */
    if (o->quality && o->original_dir && strcmp(name, "original") != 0) {
        cJSON *q = NULL;
        if ((rc = measure_quality(o, be, dia, dac, prompts, np, &lo, &q, err))) goto out;
        cJSON_AddItemToObject(v, "quality", q);
    }
out:
    if (rc) {
        cJSON_Delete(v);
        v = NULL;
    }
    *out = v;
    free(pcm);
    free(codes);
    free(tmp);
    dac_model_free(dac);
    dia_model_free(dia);
    eng_backend_free(be);
    free(ids);
    free(prompt_buf);
    return rc;
}
