/* voxq_bench.c - voxq-bench: engine-only checks and benchmarks for bare GPU machines (no Redis,
 * no libsndfile). Prints JSON on stdout; progress and errors on stderr.
 *
 *   voxq-bench check --model DIR --ref REF.safetensors [--device cpu|cuda] [--threads N]
 *                    [--tol X]
 *       Loads a Dia checkpoint, runs the encoder and the teacher-forced decoder steps recorded
 *       by tests/reference/fullsize_check.py and prints max abs/rel errors; exit 1 when an
 *       error is over tolerance.
 *   voxq-bench steps [--model DIR | --random-full [--fmt f32|bf16|int8|int4] [--seed S]]
 *                    [--seqs 1,4] [--steps N] [--start N] [--text-len N] [--device ...]
 *                    [--threads N]
 *       Decoder steps/s and ms/step for each number of concurrent sequences (each with its CFG
 *       pair), the memory plan, load_s (model load) and ready_s (process start to model loaded).
 *       --start N runs N untimed steps first, so the timed ones attend over N more positions.
 *       Timings are measurements, never pass/fail.
 *
 * Exit codes: 0 success, 1 failure of the work (or over tolerance), 2 bad usage or input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/models/dac.h"
#include "engine/quant.h"
#include "engine/models/dia.h"
#include "engine/safetensors.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds since this process started (the kernel's start time in /proc/self/stat, 10 ms
 * resolution), or -1 where that is not available. */
static double process_age_s(void) {
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return -1;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long start = 0;
    /* after ") " come fields 3 (state) .. 22 (starttime, clock ticks since boot) */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d "
                            "%*d %*d %llu",
                     &start) != 1)
        return -1;
    struct timespec ts;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0 || clock_gettime(CLOCK_BOOTTIME, &ts)) return -1;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 - (double)start / (double)hz;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: voxq-bench check --model DIR --ref REF.safetensors [--device cpu|cuda|auto]\n"
            "                        [--threads N] [--tol X]\n"
            "       voxq-bench steps [--model DIR | --random-full [--fmt f32|bf16|int8|int4]\n"
            "                        [--seed S]] [--seqs 1,4] [--steps N] [--start N]\n"
            "                        [--text-len N]\n"
            "                        [--kv f32|bf16] [--max-frames N (memory plan)]\n"
            "                        [--device cpu|cuda|auto] [--threads N]\n"
            "       voxq-bench quantize --model DIR --out DIR --fmt int8|int4 [--threads N]\n"
            "                        (the engine's quantizer, Dia policy; copies config.json)\n"
            "       voxq-bench dac --model DAC_DIR --ref REF.safetensors [--device ...] [--threads N]\n"
            "                        (REF: codes I64 [1, 9, N] and wave F32 from transformers,\n"
            "                        tools/device/dac_ref.py)\n");
}

typedef struct opts {
    const char *model, *ref, *device, *fmt, *seqs, *kv, *out;
    int threads, steps, text_len, random_full, max_frames, start;
    unsigned long long seed;
    double tol;
} opts;

/* Parses flags of the form --name VALUE; returns 0 or 2 (bad usage). */
static int parse(int argc, char **argv, opts *o) {
    *o = (opts){.device = "auto",
                .fmt = "bf16",
                .seqs = "1,4",
                .steps = 32,
                .text_len = 64,
                .tol = 0,
                .seed = 1};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--random-full")) {
            o->random_full = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "voxq-bench: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--model"))
            o->model = v;
        else if (!strcmp(a, "--out"))
            o->out = v;
        else if (!strcmp(a, "--ref"))
            o->ref = v;
        else if (!strcmp(a, "--device"))
            o->device = v;
        else if (!strcmp(a, "--fmt"))
            o->fmt = v;
        else if (!strcmp(a, "--seqs"))
            o->seqs = v;
        else if (!strcmp(a, "--kv"))
            o->kv = v;
        else if (!strcmp(a, "--max-frames"))
            o->max_frames = atoi(v);
        else if (!strcmp(a, "--threads"))
            o->threads = atoi(v);
        else if (!strcmp(a, "--steps"))
            o->steps = atoi(v);
        else if (!strcmp(a, "--start"))
            o->start = atoi(v);
        else if (!strcmp(a, "--text-len"))
            o->text_len = atoi(v);
        else if (!strcmp(a, "--seed"))
            o->seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--tol"))
            o->tol = atof(v);
        else {
            fprintf(stderr, "voxq-bench: unknown flag %s\n", a);
            return 2;
        }
    }
    if (o->kv && strcmp(o->kv, "f32") && strcmp(o->kv, "bf16")) {
        fprintf(stderr, "voxq-bench: --kv must be f32 or bf16\n");
        return 2;
    }
    if (o->steps < 1 || o->text_len < 1 || o->text_len > DIA_MAX_TEXT || o->threads < 0 ||
        o->start < 0 || o->start > 100000) {
        fprintf(stderr,
                "voxq-bench: --steps >= 1, --start in [0, 100000], --text-len in [1, %d], "
                "--threads >= 0\n",
                DIA_MAX_TEXT);
        return 2;
    }
    return 0;
}

/* --kv: the KV store dtype; unset lets the engine choose (F32 on the CPU, BF16 elsewhere). */
static eng_dtype kv_dtype(const opts *o) {
    if (!o->kv) return ENG_DT_INVALID;
    return strcmp(o->kv, "bf16") ? ENG_DT_F32 : ENG_DT_BF16;
}

static void print_mem(dia_model *m) {
    dia_mem mem;
    dia_model_mem(m, &mem);
    printf("\"mem\": {\"weights\": %zu, \"kv_self\": %zu, \"kv_cross\": %zu, \"workspace\": %zu, "
           "\"host\": %zu, \"backend_allocated\": %zu, \"backend_peak\": %zu, "
           "\"device_total\": %zu, \"device_free\": %zu}",
           mem.weights, mem.kv_self, mem.kv_cross, mem.workspace, mem.host, mem.backend.allocated,
           mem.backend.peak, mem.backend.device_total, mem.backend.device_free);
}

/* ---- steps ---- */

static int parse_seqs(const char *s, int *out, int cap) {
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 4096) return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

static int cmd_steps(const opts *o) {
    int seqs[16];
    int nseqs = parse_seqs(o->seqs, seqs, 16);
    if (nseqs <= 0 || (!o->model && !o->random_full)) {
        usage(stderr);
        return 2;
    }
    int max_batch = 0;
    for (int i = 0; i < nseqs; i++)
        if (seqs[i] > max_batch) max_batch = seqs[i];
    eng_error err = {0};
    eng_backend *be = NULL;
    if (eng_backend_new(&be, o->device, o->threads, &err)) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        return 1;
    }
    /* --start: untimed steps before the warm-up ones, so the timed steps attend over that many
     * more positions of their own KV (long-context decoding). */
    const int warmup = 3 + o->start, frames = o->steps + warmup + 2;
    dia_load_opts lo = {.max_batch = max_batch,
                        .max_frames = o->max_frames > frames ? o->max_frames : frames,
                        .max_text = o->text_len,
                        .kv_dtype = kv_dtype(o)};
    dia_model *m = NULL;
    double t0 = now_s();
    int rc;
    const char *fmt = o->fmt;
    if (o->random_full) {
        dia_config cfg;
        dia_config_default(&cfg);
        eng_wfmt wf = !strcmp(fmt, "f32")    ? ENG_W_F32
                      : !strcmp(fmt, "bf16") ? ENG_W_BF16
                      : !strcmp(fmt, "int8") ? ENG_W_I8
                      : !strcmp(fmt, "int4") ? ENG_W_I4
                                             : 0;
        if (!wf) {
            fprintf(stderr, "voxq-bench: --fmt must be f32, bf16, int8 or int4\n");
            eng_backend_free(be);
            return 2;
        }
        fprintf(stderr, "voxq-bench: building a random full-size Dia (%s) ...\n", fmt);
        rc = dia_model_random(&m, be, &cfg, wf, o->seed, &lo, &err);
    } else {
        fmt = "checkpoint";
        rc = dia_model_load(&m, be, o->model, &lo, &err);
    }
    if (rc) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        eng_backend_free(be);
        return rc == ENG_EINVAL ? 2 : 1;
    }
    double load_s = now_s() - t0, ready_s = process_age_s();
    const dia_config *c = dia_model_config(m);

    printf("{\"command\": \"steps\", \"device\": \"%s\", \"weights\": \"%s\", \"threads\": %d, "
           "\"text_len\": %d, \"steps\": %d, \"start\": %d, \"load_s\": %.3f, \"ready_s\": %.2f, "
           "\"decoder_layers\": %d, \"kv\": \"%s\", ",
           be->ops->name, fmt, be->nthreads, o->text_len, o->steps, o->start, load_s, ready_s,
           c->dec_layers,
           eng_dtype_name(dia_model_opts(m)->kv_dtype));
    print_mem(m);
    printf(", \"results\": [");
    int32_t text[DIA_MAX_TEXT];
    for (int i = 0; i < o->text_len; i++)
        text[i] = i == 0 ? 1 : 32 + (i * 7) % 90;
    dia_gen_params p;
    dia_gen_params_default(&p);
    p.max_new_tokens = o->steps + warmup + 1;
    int status = 0;
    for (int k = 0; k < nseqs && !status; k++) {
        int n = seqs[k];
        dia_seq *run[4096];
        for (int i = 0; i < n; i++) {
            p.seed = (uint64_t)i;
            if (dia_seq_start(m, text, o->text_len, &p, &run[i], &err)) {
                fprintf(stderr, "voxq-bench: %s\n", err.msg);
                status = 1;
                n = i;
                break;
            }
        }
        /* Teacher-force ordinary code frames so no sequence ends early on EOS; the logits
         * processing and sampling still run every step. */
        int32_t frame[DIA_MAX_CHANNELS];
        double t_start = 0;
        for (int s = 0; s < warmup + o->steps && !status; s++) {
            if (s == warmup) {
                t_start = now_s();
                if (be->ops->profile_json) { /* start the per-op breakdown at the timed steps */
                    char drop[64];
                    be->ops->profile_json(be, drop, sizeof drop);
                }
            }
            for (int i = 0; i < n; i++) {
                for (int ch = 0; ch < c->channels; ch++)
                    frame[ch] = (s * 31 + ch * 7 + i) % 1024;
                dia_seq_force(run[i], frame);
            }
            if (dia_step(m, run, n, &err)) {
                fprintf(stderr, "voxq-bench: %s\n", err.msg);
                status = 1;
            }
        }
        double el = now_s() - t_start;
        /* the same step graph replayed back to back: the device's share of a step */
        double graph_ms = -1; /* stays -1 where there is no graph (CPU, profiling) */
        if (!status && !be->ops->profile_json)
            (void)dia_time_step_graph(m, run, n, 50, &graph_ms, &err);
        for (int i = 0; i < n; i++)
            dia_seq_release(m, run[i]);
        if (status) break;
        double ms = el * 1e3 / o->steps, sps = o->steps / el;
        printf("%s{\"seqs\": %d, \"ms_per_step\": %.3f, \"steps_per_s\": %.2f, "
               "\"frames_per_s_total\": %.2f, \"realtime_x_total\": %.3f, "
               "\"graph_replay_ms\": %.3f",
               k ? ", " : "", n, ms, sps, sps * n, sps * n / 86.13, graph_ms);
        /* With VOXQ_CUDA_PROFILE=1: device time per op kind over the timed steps (the steps
         * then run uncaptured and synchronized per op, so ms_per_step is not a speed). */
        static char prof[8192];
        if (be->ops->profile_json && be->ops->profile_json(be, prof, sizeof prof) == 0)
            printf(", \"profile_steps\": %d, \"profile\": %s", o->steps, prof);
        printf("}");
        fflush(stdout);
    }
    printf("]}\n");
    dia_model_free(m);
    eng_backend_free(be);
    return status;
}

/* ---- check ---- */

typedef struct errstat {
    double max_abs, max_rel, ref_max;
} errstat;

static void compare(const float *got, const float *ref, size_t n, errstat *e) {
    *e = (errstat){0, 0, 0};
    for (size_t i = 0; i < n; i++) {
        double d = got[i] > ref[i] ? (double)got[i] - ref[i] : (double)ref[i] - got[i];
        double a = ref[i] < 0 ? -(double)ref[i] : ref[i];
        if (d > e->max_abs || d != d) e->max_abs = d != d ? 1e30 : d;
        if (a > e->ref_max) e->ref_max = a;
    }
    e->max_rel = e->ref_max > 0 ? e->max_abs / e->ref_max : e->max_abs;
}

/* Reference tensor `name` as F32 data or I64 converted to int32 (into i32, cap elements). */
static const st_tensor *ref_tensor(st_file *f, const char *name, eng_dtype want) {
    const st_tensor *t = st_find(f, name);
    if (!t)
        fprintf(stderr, "voxq-bench: reference has no tensor '%s'\n", name);
    else if (t->dtype != want) {
        fprintf(stderr, "voxq-bench: reference tensor '%s' is %s, expected %s\n", name,
                eng_dtype_name(t->dtype), eng_dtype_name(want));
        t = NULL;
    }
    return t;
}

/* Prints one comparison as a JSON member and says whether it is within tol (relative to the
 * largest reference magnitude). */
static int report(const char *name, const float *got, const float *ref, size_t n, double tol,
                  int comma) {
    errstat e;
    compare(got, ref, n, &e);
    printf("%s\"%s\": {\"max_abs\": %.4g, \"max_rel\": %.4g, \"ref_max\": %.4g}", comma ? ", " : "",
           name, e.max_abs, e.max_rel, e.ref_max);
    return e.max_rel <= tol;
}

/* Layout written by tests/reference/fullsize_check.py (row 0 conditional, 1 unconditional):
 * input_ids I64 [1,S]; decoder_frames I64 [N,9] (fed as they are, already delayed);
 * encoder_out F32 [2,S,H]; logits F32 [N,2,9,V]; with --bf16 also bf16_encoder_out and
 * bf16_logits (transformers run in bf16), reported but not judged. */
static int cmd_check(const opts *o) {
    if (!o->model || !o->ref) {
        usage(stderr);
        return 2;
    }
    eng_error err = {0};
    st_file *ref = NULL;
    if (st_open(&ref, o->ref, &err)) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        return 2;
    }
    const st_tensor *t_ids = ref_tensor(ref, "input_ids", ENG_DT_I64);
    const st_tensor *t_enc = ref_tensor(ref, "encoder_out", ENG_DT_F32);
    const st_tensor *t_frames = ref_tensor(ref, "decoder_frames", ENG_DT_I64);
    const st_tensor *t_log = ref_tensor(ref, "logits", ENG_DT_F32);
    const st_tensor *b_enc = st_find(ref, "bf16_encoder_out");
    const st_tensor *b_log = st_find(ref, "bf16_logits");
    if (!t_ids || !t_enc || !t_frames || !t_log) {
        st_close(ref);
        return 2;
    }
    int S = (int)(t_ids->nbytes / 8), N = (int)t_frames->shape[0];
    int C = t_frames->ndim == 2 ? (int)t_frames->shape[1] : 0;
    if (S < 1 || S > DIA_MAX_TEXT || N < 1) {
        fprintf(stderr, "voxq-bench: reference text length %d or steps %d out of range\n", S, N);
        st_close(ref);
        return 2;
    }
    eng_backend *be = NULL;
    if (eng_backend_new(&be, o->device, o->threads, &err)) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        st_close(ref);
        return 1;
    }
    dia_load_opts lo = {
        .max_batch = 1, .max_frames = N + 2, .max_text = S, .kv_dtype = kv_dtype(o)};
    dia_model *m = NULL;
    double t0 = now_s();
    if (dia_model_load(&m, be, o->model, &lo, &err)) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        st_close(ref);
        eng_backend_free(be);
        return 1;
    }
    double load_s = now_s() - t0;
    const dia_config *c = dia_model_config(m);
    int V = c->dec_vocab, status = 0;
    size_t enc_n = 2 * (size_t)S * (size_t)c->enc_hidden;
    size_t step_n = 2 * (size_t)C * (size_t)V, log_n = (size_t)N * step_n;
    float *enc = NULL, *logits = NULL;
    if (C != c->channels || t_enc->nbytes != enc_n * 4 || t_log->nbytes != log_n * 4 ||
        (b_enc && b_enc->nbytes != enc_n * 4) || (b_log && b_log->nbytes != log_n * 4)) {
        fprintf(stderr, "voxq-bench: reference shapes do not match the model's config\n");
        status = 2;
        goto out;
    }
    int32_t ids[2 * DIA_MAX_TEXT];
    for (int i = 0; i < S; i++) {
        ids[i] = (int32_t)((const int64_t *)t_ids->data)[i];
        ids[S + i] = 0; /* the unconditional row */
    }
    enc = malloc(enc_n * 4);
    logits = malloc(log_n * 4);
    if (!enc || !logits) {
        fprintf(stderr, "voxq-bench: out of memory\n");
        status = 1;
        goto out;
    }
    t0 = now_s();
    if (dia_encode(m, ids, NULL, 2, S, enc, &err)) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        status = 1;
        goto out;
    }
    double enc_s = now_s() - t0;
    dia_gen_params p;
    dia_gen_params_default(&p);
    p.greedy = 1;
    p.no_delay_mask = 1; /* the reference frames are fed as they are */
    p.max_new_tokens = N + 1;
    dia_seq *s = NULL;
    if (dia_seq_start(m, ids, S, &p, &s, &err)) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        status = 1;
        goto out;
    }
    const int64_t *fr = t_frames->data;
    for (int ch = 0; ch < C; ch++)
        if (fr[ch] != c->bos_id) {
            fprintf(stderr, "voxq-bench: reference frame 0 must be all BOS\n");
            status = 2;
        }
    t0 = now_s();
    for (int t = 0; t < N && !status; t++) {
        /* step t reads frame t; teacher forcing appends frame t+1 for the next step */
        int32_t f[DIA_MAX_CHANNELS];
        for (int ch = 0; ch < C; ch++)
            f[ch] = t + 1 < N ? (int32_t)fr[(size_t)(t + 1) * C + ch] : 0;
        dia_seq_force(s, f);
        if (dia_step(m, &s, 1, &err)) {
            fprintf(stderr, "voxq-bench: %s\n", err.msg);
            status = 1;
            break;
        }
        memcpy(logits + (size_t)t * step_n, dia_seq_logits(s, 0), step_n / 2 * 4);
        memcpy(logits + (size_t)t * step_n + step_n / 2, dia_seq_logits(s, 1), step_n / 2 * 4);
    }
    double step_s = (now_s() - t0) / N;
    dia_seq_release(m, s);
    if (!status) {
        /* default tolerance, relative to the largest reference value: loose enough for bf16
         * weights on the GPU, far tighter than any layout or math bug */
        double tol = o->tol > 0 ? o->tol : 2e-2;
        printf("{\"command\": \"check\", \"device\": \"%s\", \"model\": \"%s\", \"text_len\": %d, "
               "\"steps\": %d, \"load_s\": %.3f, \"encoder_s\": %.4f, \"step_s\": %.4f, "
               "\"tolerance_rel\": %g, ",
               be->ops->name, o->model, S, N, load_s, enc_s, step_s, tol);
        int ok = report("encoder", enc, t_enc->data, enc_n, tol, 0);
        ok &= report("logits", logits, t_log->data, log_n, tol, 1);
        if (b_enc && b_enc->dtype == ENG_DT_F32)
            report("encoder_vs_transformers_bf16", enc, b_enc->data, enc_n, tol, 1);
        if (b_log && b_log->dtype == ENG_DT_F32)
            report("logits_vs_transformers_bf16", logits, b_log->data, log_n, tol, 1);
        printf(", \"pass\": %s, ", ok ? "true" : "false");
        print_mem(m);
        printf("}\n");
        status = ok ? 0 : 1;
    }
out:
    free(enc);
    free(logits);
    dia_model_free(m);
    eng_backend_free(be);
    st_close(ref);
    return status;
}

/* Quantizes a checkpoint directory into --out (model.safetensors + config.json), so a GPU machine
 * without the full voxq binary can time loading and stepping real int8/int4 checkpoints. */
static int cmd_quantize(const opts *o) {
    if (!o->model || !o->out) {
        fprintf(stderr, "voxq-bench: quantize needs --model and --out\n");
        return 2;
    }
    eng_quant_options q = {0};
    if (eng_quant_method_parse(o->fmt, &q.method)) {
        fprintf(stderr, "voxq-bench: --fmt must be int8 or int4 for quantize\n");
        return 2;
    }
    q.policy.kind = ENG_QUANT_POLICY_DIA;
    q.threads = o->threads;
    eng_error err = {0};
    st_model *src = NULL;
    eng_quant_report rep = {0};
    char path[4096], cfg_in[4096], cfg_out[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", o->out);
    snprintf(cfg_in, sizeof cfg_in, "%s/config.json", o->model);
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", o->out);
    double t0 = now_s();
    int rc = st_model_open(&src, o->model, &err);
    if (!rc) rc = eng_quant_checkpoint(src, path, &q, &rep, &err);
    st_model_close(src);
    if (rc) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        return 1;
    }
    FILE *in = fopen(cfg_in, "rb"), *out = fopen(cfg_out, "wb");
    int ok = in && out;
    char buf[65536];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out) == n;
    if (in) fclose(in);
    if (out && fclose(out) != 0) ok = 0;
    printf("{\"command\": \"quantize\", \"method\": \"%s\", \"seconds\": %.2f, \"ratio\": %.3f, "
           "\"rel_err\": %.4g, \"config_copied\": %s}\n",
           o->fmt, now_s() - t0, rep.ratio, rep.rel_err, ok ? "true" : "false");
    eng_quant_report_free(&rep);
    return ok ? 0 : 1;
}

/* The codec alone: decode the reference codes (three times; the first includes warm-up), report
 * the fastest decode, the realtime factor and the largest difference from transformers' wave. */
static int cmd_dac(const opts *o) {
    if (!o->model || !o->ref) {
        fprintf(stderr, "voxq-bench: dac needs --model and --ref\n");
        return 2;
    }
    eng_error err = {0};
    eng_backend *be = NULL;
    dac_model *m = NULL;
    st_file *ref = NULL;
    int32_t *codes = NULL;
    float *pcm = NULL;
    int status = 1;
    if (eng_backend_new(&be, o->device, o->threads, &err) ||
        dac_model_load(&m, be, o->model, NULL, &err) || st_open(&ref, o->ref, &err)) {
        fprintf(stderr, "voxq-bench: %s\n", err.msg);
        goto done;
    }
    const st_tensor *c = st_find(ref, "codes"), *w = st_find(ref, "wave");
    if (!c || !w || c->dtype != ENG_DT_I64 || c->ndim != 3 || w->dtype != ENG_DT_F32) {
        fprintf(stderr, "voxq-bench: %s needs codes I64 [1, C, N] and wave F32\n", o->ref);
        goto done;
    }
    int64_t N = c->shape[2], cn = c->shape[1] * N, n = dac_samples(m, N);
    if ((int64_t)(w->nbytes / 4) < n) {
        fprintf(stderr, "voxq-bench: reference wave has %llu samples, decode gives %lld\n",
                (unsigned long long)(w->nbytes / 4), (long long)n);
        goto done;
    }
    codes = malloc((size_t)cn * 4);
    pcm = malloc((size_t)n * 4);
    if (!codes || !pcm) goto done;
    for (int64_t i = 0; i < cn; i++) {
        int64_t v;
        memcpy(&v, (const char *)c->data + i * 8, 8);
        codes[i] = (int32_t)v;
    }
    double best = 1e30, first = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        if (dac_decode(m, codes, N, pcm, &err)) {
            fprintf(stderr, "voxq-bench: %s\n", err.msg);
            goto done;
        }
        double dt = now_s() - t0;
        if (rep == 0) first = dt;
        else if (dt < best) best = dt;
    }
    double max_abs = 0;
    for (int64_t i = 0; i < n; i++) {
        float r;
        memcpy(&r, (const char *)w->data + i * 4, 4);
        double d = fabs((double)pcm[i] - r);
        if (d > max_abs) max_abs = d;
    }
    eng_mem_stats st;
    be->ops->mem_stats(be, &st);
    double audio_s = (double)n / 44100.0;
    printf("{\"command\": \"dac\", \"device\": \"%s\", \"frames\": %lld, \"audio_s\": %.2f, "
           "\"first_decode_s\": %.4f, \"decode_s\": %.4f, \"x_realtime\": %.1f, "
           "\"max_abs_vs_ref\": %.3g, \"backend_peak_MiB\": %.1f}\n",
           be->ops->name, (long long)N, audio_s, first, best, audio_s / best, max_abs,
           st.peak / 1048576.0);
    status = 0;
done:
    free(codes);
    free(pcm);
    st_close(ref);
    dac_model_free(m);
    eng_backend_free(be);
    return status;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    opts o;
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (parse(argc, argv, &o)) return 2;
    if (!strcmp(argv[1], "steps")) return cmd_steps(&o);
    if (!strcmp(argv[1], "check")) return cmd_check(&o);
    if (!strcmp(argv[1], "dac")) return cmd_dac(&o);
    if (!strcmp(argv[1], "quantize")) return cmd_quantize(&o);
    fprintf(stderr, "voxq-bench: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
