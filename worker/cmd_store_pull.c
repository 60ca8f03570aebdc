/* cmd_store_pull.c - `voxq store pull`: downloads a Hugging Face-format checkpoint into the
 * store (ops/pull.h does the work) with a progress display and a printed summary. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ops/pull.h"
#include "ops/store.h"
#include "worker/cli.h"

void cmd_store_pull_help(void) {
    printf("\n"
           "usage: voxq store pull [REPO] --model NAME [--revision R] [--force] [options]\n"
           "\n"
           "  pull    downloads REPO (owner/name on the Hugging Face hub) at revision R\n"
           "          (default main, pinned to the commit the hub reports) into\n"
           "          models/NAME/original/: config.json, generation_config.json when present,\n"
           "          model.safetensors or model.safetensors.index.json + its shards. Files\n"
           "          download in parallel; a dropped connection resumes with a Range request,\n"
           "          an interrupted pull resumes on the next run; sizes and the hub's sha256\n"
           "          are checked, then the files are published atomically like `import`.\n"
           "          Known defaults: --model dia-1.6b pulls nari-labs/Dia-1.6B-0626,\n"
           "          --model dac-44khz pulls descript/dac_44khz (REPO may be left out).\n"
           "\n"
           "pull options:\n"
           "  --revision R     branch, tag or commit (env VOXQ_PULL_REVISION, default main)\n"
           "  --endpoint URL   hub or mirror (env HF_ENDPOINT, default https://huggingface.co)\n"
           "  --jobs N         files downloaded at once (env VOXQ_PULL_JOBS, default 4)\n"
           "  --retries N      retries per file after a dropped transfer (env VOXQ_PULL_RETRIES,\n"
           "                   default 5; each retry resumes where the bytes stopped)\n"
           "  --force          replace an existing original\n"
           "  HF_TOKEN         (environment only) token for gated or private repositories\n");
}

static volatile sig_atomic_t cancel_requested;

static void on_signal(int sig) {
    cancel_requested = 1;
    signal(sig, SIG_DFL); /* a second Ctrl-C kills at once */
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Decimal units, three significant figures ("1.27 GB"). */
static const char *size_str(double bytes, char buf[32]) {
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB"};
    int u = 0;
    while (bytes >= 1000 && u < 4)
        bytes /= 1000, u++;
    if (u == 0)
        snprintf(buf, 32, "%.0f B", bytes);
    else
        snprintf(buf, 32,
                 bytes < 10    ? "%.2f %s"
                 : bytes < 100 ? "%.1f %s"
                               : "%.0f %s",
                 bytes, units[u]);
    return buf;
}

/* Progress: a redrawn line on a terminal, a line per 10% otherwise (logs, CI). */
typedef struct display {
    int tty;
    int line_open; /* a progress line is on screen without its newline */
    int last_decile;
    double start;
    uint64_t start_done; /* bytes already on disk at the first call (resumed) */
    int started;
} display;

static void on_log(void *ud, const char *line) {
    display *d = ud;
    if (d->line_open) fputs("\r\033[K", stderr);
    fprintf(stderr, "pull: %s\n", line);
    d->line_open = 0;
    fflush(stderr);
}

static void on_progress(void *ud, const char *file, uint64_t file_done, uint64_t file_total,
                        uint64_t all_done, uint64_t all_total) {
    display *d = ud;
    (void)file_total;
    (void)file_done;
    if (!d->started) {
        d->started = 1;
        d->start = now_s();
        d->start_done = all_done;
    }
    double elapsed = now_s() - d->start;
    double rate = elapsed > 0.5 ? (double)(all_done - d->start_done) / elapsed : 0;
    int percent = all_total ? (int)(all_done * 100 / all_total) : 100;
    char a[32], b[32], r[32];
    if (d->tty) {
        enum { WIDTH = 24 };
        char bar[WIDTH + 1];
        for (int i = 0; i < WIDTH; i++)
            bar[i] = i < percent * WIDTH / 100 ? '#' : '.';
        bar[WIDTH] = '\0';
        fprintf(stderr, "\r  %-28.28s [%s] %3d%%  %s / %s  %s/s\033[K", file, bar, percent,
                size_str((double)all_done, a), size_str((double)all_total, b),
                rate > 0 ? size_str(rate, r) : "-- B");
        d->line_open = 1;
        if (all_done >= all_total) {
            fputc('\n', stderr);
            d->line_open = 0;
        }
    } else if (percent / 10 > d->last_decile || all_done >= all_total) {
        d->last_decile = percent / 10;
        fprintf(stderr, "pull: %d%% (%s of %s%s%s%s)\n", percent, size_str((double)all_done, a),
                size_str((double)all_total, b), rate > 0 ? ", " : "",
                rate > 0 ? size_str(rate, r) : "", rate > 0 ? "/s" : "");
    }
    fflush(stderr);
}

/* The model name a known repository goes by (the reverse of pull_default_repo). */
static const char *model_for_repo(const char *repo) {
    static const char *const models[] = {"dia-1.6b", "dac-44khz"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        if (!strcmp(pull_default_repo(models[i]), repo)) return models[i];
    return NULL;
}

static int parse_count(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < lo || n > hi) {
        fprintf(stderr, "voxq store pull: %s must be an integer in [%d, %d], not '%s'\n", flag, lo,
                hi, v);
        return -1;
    }
    *out = (int)n;
    return 0;
}

int cmd_store_pull(int argc, char **argv) {
    const char *root = cli_env("VOXQ_STORE", "./store"), *model = NULL, *repo = NULL;
    pull_options opt = {.retries = -1};
    opt.revision = cli_env("VOXQ_PULL_REVISION", NULL);
    const char *jobs = cli_env("VOXQ_PULL_JOBS", NULL),
               *retries = cli_env("VOXQ_PULL_RETRIES", NULL);
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_flag_value(argc, argv, &i, "--store", &missing)))
            root = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--model", &missing)))
            model = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--revision", &missing)))
            opt.revision = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--endpoint", &missing)))
            opt.endpoint = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--jobs", &missing)))
            jobs = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--retries", &missing)))
            retries = v;
        else if (missing) {
            fprintf(stderr, "voxq store pull: %s needs a value\n", argv[i]);
            return 2;
        } else if (!strcmp(argv[i], "--force"))
            opt.flags |= STORE_FORCE;
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "voxq store pull: unknown option '%s'\n", argv[i]);
            return 2;
        } else if (!repo)
            repo = argv[i];
        else {
            fprintf(stderr, "voxq store pull: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if ((jobs && parse_count("--jobs", jobs, 1, 64, &opt.jobs)) ||
        (retries && parse_count("--retries", retries, 0, 1000, &opt.retries)))
        return 2;
    if (!repo && model) repo = pull_default_repo(model);
    if (!model && repo) model = model_for_repo(repo);
    if (!repo || !model) {
        fprintf(stderr, "voxq store pull: %s\n",
                !repo && !model ? "give REPO and --model NAME (see voxq help store)"
                : !repo         ? "no repository is known for that model: give REPO"
                                : "give --model NAME: the name of the model in the store");
        return 2;
    }
    if (!pull_repo_valid(repo) || !store_name_valid(model)) {
        fprintf(stderr, "voxq store pull: invalid %s '%s'\n",
                !pull_repo_valid(repo) ? "repository" : "model name",
                !pull_repo_valid(repo) ? repo : model);
        return 2;
    }
    store s;
    eng_error err = {0};
    if (store_open(&s, root, &err) != 0) {
        fprintf(stderr, "voxq store pull: %s\n", err.msg);
        return 1;
    }
    display d = {.tty = isatty(2), .last_decile = -1};
    opt.progress = on_progress;
    opt.progress_ud = &d;
    opt.log = on_log;
    opt.log_ud = &d;
    opt.cancel = &cancel_requested;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    fprintf(stderr, "pulling %s%s%s as %s/original into %s\n", repo, opt.revision ? "@" : "",
            opt.revision ? opt.revision : "", model, s.root);
    double t0 = now_s();
    pull_result res;
    int rc = pull_model(&s, repo, model, &opt, &res, &err);
    double secs = now_s() - t0;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (d.line_open) fputc('\n', stderr);
    int code = 0;
    if (rc == STORE_EEXIST) {
        printf("%s/original is already in the store (use --force to replace it)\n", model);
    } else if (rc) {
        fprintf(stderr, "voxq store pull: %s\n", err.msg);
        code = rc == ENG_EINVAL || rc == ENG_ENOTFOUND || rc == PULL_EAUTH ? 2 : 1;
    } else {
        store_manifest m;
        char total[32], fetched[32];
        printf("%s/original: pulled %s%s%s - %d files, %s (%s fetched, %d resumed) in %.1f s",
               model, repo, res.commit[0] ? " commit " : "", res.commit, res.nfiles,
               size_str((double)res.total_bytes, total),
               size_str((double)res.fetched_bytes, fetched), res.resumed, secs);
        if (store_manifest_read(&s, model, "original", &m, &err) == 0) {
            printf(", digest %s", m.digest);
            store_manifest_free(&m);
        }
        printf("\n");
    }
    store_close(&s);
    return code;
}
