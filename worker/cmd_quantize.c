/* cmd_quantize.c - `voxq quantize MODEL --method int8|int4`: make a quantized variant of a
 * stored model once, with a progress display and a printed summary (worker/quantize.h does the
 * work). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ops/bench.h"
#include "worker/cli.h"
#include "worker/quantize.h"

#define MAX_KEEP 64

void cmd_quantize_help(void) {
    printf("usage: voxq quantize MODEL --method int8|int4 [--keep PATTERN]... [options]\n"
           "\n"
           "Makes models/MODEL/int8 (or int4) from models/MODEL/original in the store, once:\n"
           "when the variant exists and verifies, says so and does nothing (exit 0).\n"
           "  int8  symmetric, one scale per output channel (max|row| / 127)\n"
           "  int4  symmetric, groups of 128 inputs, one scale per group, two values a byte\n"
           "Linear-layer weights are quantized; embeddings, norms, 1-D tensors and Dia's output\n"
           "head keep their dtype. The layout is in docs/FORMAT.md. The source is only read;\n"
           "Ctrl-C (or SIGTERM) stops cleanly and publishes nothing (a second one kills).\n"
           "\n"
           "options:\n"
           "  --method M       int8 or int4 (env VOXQ_QUANT_METHOD)\n"
           "  --keep PATTERN   also keep tensors whose name matches the glob, e.g.\n"
           "                   'model.decoder.layers.*.cross_attention.*' (repeatable;\n"
           "                   env VOXQ_QUANT_KEEP, comma-separated)\n"
           "  --policy P       auto (default), dia or generic: which tensors are linear weights\n"
           "                   (env VOXQ_QUANT_POLICY; auto picks dia for a Dia checkpoint)\n"
           "  --threads N      worker threads, 0 = one per CPU (env VOXQ_THREADS, default 0)\n"
           "  --force          remake the variant even when it exists\n"
           "  --store DIR      store root (env VOXQ_STORE, default ./store)\n"
           "  --quality-steps N  decoder steps a prompt for the quality figures measured\n"
           "                   before publishing (docs/quality.md); 0 skips them (env\n"
           "                   VOXQ_QUANT_QUALITY_STEPS, default 128; device: VOXQ_DEVICE)\n"
           "\n"
           "The summary (sizes, ratio, relative error per tensor and overall, time) is printed\n"
           "and written to the variant's MANIFEST.json under \"quantization\".\n"
           "Exit codes: 0 success (or already there), 1 failure or cancelled, 2 bad usage.\n");
}

static volatile sig_atomic_t cancel_requested;

/* SIGINT/SIGTERM: ask the run to stop at its next chunk (the handler is then reset, so a
 * second signal kills; a killed run leaves only tmp/ debris for the next writer to remove). */
static void on_signal(int sig) {
    (void)sig;
    cancel_requested = 1;
}

/* Monotonic seconds, for throttling the display. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A byte count with three significant figures in decimal units ("1.73 GB", "5.56 MB"). */
static const char *size_str(uint64_t bytes, char buf[32]) {
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    snprintf(buf, 32, u == 0 ? "%.0f %s" : v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s",
             v, units[u]);
    return buf;
}

/* Progress display: a bar redrawn at most 10 times a second on a terminal, otherwise a plain
 * line every 10% (or 10 s) for logs. */
typedef struct display {
    int tty;
    const char *what;  /* "dia-1.6b/int8" */
    double last_draw;
    int last_decile;
    int drawn_done;    /* the finished bar is on screen (the last callback repeats 100%) */
    char hashing[256]; /* file being hashed, plain mode */
} display;

/* The engine's progress callback: draws, and answers whether a signal asked to stop. */
static int show_quant(const eng_quant_progress *p, void *ctx) {
    display *d = ctx;
    double t = now_s();
    int done = p->bytes_done >= p->bytes_total;
    int percent = p->bytes_total ? (int)(p->bytes_done * 100 / p->bytes_total) : 100;
    if (d->tty) {
        if ((done && !d->drawn_done) || (!done && t - d->last_draw >= 0.1)) {
            enum { WIDTH = 30 };
            char bar[WIDTH + 1];
            for (int i = 0; i < WIDTH; i++) bar[i] = i < percent * WIDTH / 100 ? '#' : '.';
            bar[WIDTH] = '\0';
            double eta = p->bytes_done ? p->elapsed_s * (double)(p->bytes_total - p->bytes_done) /
                                             (double)p->bytes_done
                                       : 0;
            char a[32], b[32];
            fprintf(stderr, "\r  quantizing [%s] %3d%%  %s / %s  tensor %zu/%zu  %.0f s"
                            "  eta %.0f s\033[K", bar, percent, size_str(p->bytes_done, a),
                    size_str(p->bytes_total, b), p->tensor + 1, p->ntensors, p->elapsed_s, eta);
            if (done) fputc('\n', stderr);
            d->drawn_done = done;
            d->last_draw = t;
        }
    } else if (percent / 10 > d->last_decile || t - d->last_draw >= 10 || done) {
        if (percent / 10 > d->last_decile || !done) {
            char a[32], b[32];
            fprintf(stderr, "quantize %s: %d%% (%s of %s, tensor %zu/%zu, %.1f s)\n", d->what,
                    percent, size_str(p->bytes_done, a), size_str(p->bytes_total, b),
                    p->tensor + 1, p->ntensors, p->elapsed_s);
        }
        d->last_decile = percent / 10;
        d->last_draw = t;
    }
    return cancel_requested != 0;
}

/* Progress of hashing the finished files for MANIFEST.json. */
static void show_publish(void *ctx, const char *file, uint64_t done, uint64_t total) {
    display *d = ctx;
    if (d->tty) {
        fprintf(stderr, "\r  hashing %-40.40s %3d%%\033[K", file,
                total ? (int)(done * 100 / total) : 100);
        if (done >= total) fputc('\n', stderr);
    } else if (strcmp(d->hashing, file) != 0) {
        snprintf(d->hashing, sizeof d->hashing, "%s", file);
        char a[32];
        fprintf(stderr, "quantize %s: hashing %s (%s)\n", d->what, file, size_str(total, a));
    }
}

/* A decision worth a line (waiting for a lock, remaking a damaged variant). */
static void show_note(void *ctx, const char *line) {
    display *d = ctx;
    fprintf(stderr, "%squantize %s: %s\n", d->tty ? "\r\033[K" : "", d->what, line);
}

/* The summary on stdout: sizes, ratio, errors overall and per tensor, time. */
static void print_summary(const worker_quant_result *res, const char *ref) {
    const eng_quant_report *r = &res->report;
    printf("%s published in %s\n", ref, res->dir);
    if (r->method == ENG_QUANT_INT8)
        printf("  method      int8, one scale per output channel; policy %s; %d threads\n",
               eng_quant_policy_name(r->policy), r->threads);
    else
        printf("  method      int4, groups of %d; policy %s; %d threads\n", r->group,
               eng_quant_policy_name(r->policy), r->threads);
    printf("  tensors     %zu: %zu quantized, %zu kept\n", r->ntensors, r->nquantized,
           r->ntensors - r->nquantized);
    char a[32], b[32];
    printf("  size        %s -> %s (ratio %.3fx; %llu -> %llu bytes)\n",
           size_str(r->src_file_bytes, a), size_str(r->out_file_bytes, b), r->ratio,
           (unsigned long long)r->src_file_bytes, (unsigned long long)r->out_file_bytes);
    printf("  rel. error  %.6f overall, worst %.6f (%s)\n", r->rel_err, r->max_rel_err,
           r->max_rel_err_tensor ? r->max_rel_err_tensor : "-");
    printf("  time        %.1f s (quantization %.1f s)\n", res->total_seconds, r->seconds);
    printf("  per tensor (relative error ||W - deq(Q)|| / ||W||, or why kept):\n");
    for (size_t i = 0; i < r->ntensors; i++) {
        const eng_quant_tensor_report *t = &r->tensors[i];
        if (t->quantized)
            printf("    %-9.6f %s\n", t->rel_err, t->name);
        else
            printf("    kept      %s (%s, %s)\n", t->name, eng_dtype_name(t->src_dtype), t->why);
    }
}

/* Splits a comma-separated list into patterns (in place). */
static size_t split_keep(char *list, const char **out, size_t max) {
    size_t n = 0;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok && n < max;
         tok = strtok_r(NULL, ",", &save))
        if (*tok) out[n++] = tok;
    return n;
}

/* Parses flags (env fallbacks), runs worker_quantize with signal-driven cancellation and
 * prints the outcome. */
int cmd_quantize(int argc, char **argv) {
    const char *model = NULL, *store_root = NULL;
    const char *method_s = NULL, *policy = NULL, *threads_s = NULL, *qsteps_s = NULL;
    const char *keep[MAX_KEEP];
    size_t nkeep = 0;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_flag_value(argc, argv, &i, "--method", &missing))) {
            method_s = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--keep", &missing))) {
            if (nkeep == MAX_KEEP) {
                fprintf(stderr, "voxq quantize: at most %d --keep patterns\n", MAX_KEEP);
                return 2;
            }
            keep[nkeep++] = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--policy", &missing))) {
            policy = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--threads", &missing))) {
            threads_s = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--quality-steps", &missing))) {
            qsteps_s = v;
        } else if ((v = cli_flag_value(argc, argv, &i, "--store", &missing))) {
            store_root = v;
        } else if (!missing && !strcmp(argv[i], "--force")) {
            force = 1;
        } else if (missing) {
            fprintf(stderr, "voxq quantize: %s needs a value\n", argv[i]);
            return 2;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "voxq quantize: unknown option '%s' (see voxq help quantize)\n",
                    argv[i]);
            return 2;
        } else if (!model) {
            model = argv[i];
        } else {
            fprintf(stderr, "voxq quantize: one MODEL only ('%s' is extra)\n", argv[i]);
            return 2;
        }
    }
    char *env_keep = NULL;
    if (nkeep == 0 && cli_env("VOXQ_QUANT_KEEP", NULL)) {
        env_keep = strdup(cli_env("VOXQ_QUANT_KEEP", ""));
        if (env_keep) nkeep = split_keep(env_keep, keep, MAX_KEEP);
    }
    if (!method_s) method_s = cli_env("VOXQ_QUANT_METHOD", NULL);
    if (!policy) policy = cli_env("VOXQ_QUANT_POLICY", "auto");
    if (!threads_s) threads_s = cli_env("VOXQ_THREADS", "0");
    if (!store_root) store_root = store_default_root();
    if (!qsteps_s) qsteps_s = cli_env("VOXQ_QUANT_QUALITY_STEPS", "128");
    char *qend = NULL;
    long qsteps = strtol(qsteps_s, &qend, 10);

    int rc = 2;
    eng_quant_method method;
    char *end = NULL;
    long threads = strtol(threads_s, &end, 10);
    if (!model) {
        fprintf(stderr, "voxq quantize: MODEL missing (see voxq help quantize)\n");
        goto done;
    }
    if (!method_s || eng_quant_method_parse(method_s, &method) != 0) {
        fprintf(stderr, "voxq quantize: --method must be int8 or int4%s%s%s\n",
                method_s ? " (got '" : "", method_s ? method_s : "", method_s ? "')" : "");
        goto done;
    }
    if (strcmp(policy, "auto") && strcmp(policy, "dia") && strcmp(policy, "generic")) {
        fprintf(stderr, "voxq quantize: --policy must be auto, dia or generic (got '%s')\n",
                policy);
        goto done;
    }
    if (!*threads_s || *end || threads < 0 || threads > 64) {
        fprintf(stderr, "voxq quantize: --threads must be 0..64 (got '%s')\n", threads_s);
        goto done;
    }
    if (!*qsteps_s || *qend || qsteps < 0 || qsteps > 3072) {
        fprintf(stderr, "voxq quantize: --quality-steps must be 0..3072 (got '%s')\n", qsteps_s);
        goto done;
    }
    if (!store_name_valid(model)) {
        fprintf(stderr, "voxq quantize: invalid model name '%s' ([a-z0-9._-])\n", model);
        goto done;
    }

    store st;
    eng_error err = {0};
    if (store_open(&st, store_root, &err) != 0) {
        fprintf(stderr, "voxq quantize: %s\n", err.msg);
        rc = 1;
        goto done;
    }
    char ref[2 * STORE_NAME_MAX];
    snprintf(ref, sizeof ref, "%s/%s", model, eng_quant_method_name(method));
    display d = {isatty(2), ref, 0, -1, 0, ""};
    worker_quant_request req = {model, method, policy, keep, nkeep, (int)threads, force,
                                show_quant, show_publish, show_note, &d, (int)qsteps,
                                cli_env("VOXQ_DEVICE", "auto")};
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second signal takes the default action: it kills */
    sigemptyset(&sa.sa_mask);
    cancel_requested = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    worker_quant_result res;
    int qrc = worker_quantize(&st, &req, &res, &err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (qrc == 0 && res.already) {
        printf("%s already exists and verifies (%s); nothing to do (--force remakes it)\n", ref,
               res.dir);
        rc = 0;
    } else if (qrc == 0) {
        print_summary(&res, ref);
        store_manifest man = {0};
        char line[256];
        if (store_manifest_read(&st, model, res.variant, &man, NULL) == 0 &&
            bench_quality_summary(man.json, line, sizeof line))
            printf("  quality     %s\n", line);
        store_manifest_free(&man);
        rc = 0;
    } else if (qrc == ENG_ECANCELLED || cancel_requested) {
        fprintf(stderr, "%svoxq quantize: %s cancelled; nothing was published\n",
                d.tty ? "\n" : "", ref);
        rc = 1;
    } else {
        fprintf(stderr, "%svoxq quantize: %s: %s\n", d.tty ? "\n" : "", ref, err.msg);
        rc = qrc == ENG_EINVAL ? 2 : 1;
    }
    worker_quant_result_free(&res);
    store_close(&st);
done:
    free(env_keep);
    return rc;
}
