/* pull_first_run.c - VOXQ_PULL=1: a worker whose store lacks its model downloads it before it
 * loads anything, so a fresh container or VM needs nothing but the store volume. */
#include "worker/pull_first_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/pull.h"
#include "queue/queue.h"
#include "worker/cli.h"

#define DEFAULT_CODEC "dac-44khz"

/* Worker logs get a line per 10% of the whole pull, never a redrawn bar. */
typedef struct pull_log_state {
    const char *model;
    int last_decile;
} pull_log_state;

static void log_line(void *ud, const char *line) {
    const pull_log_state *s = ud;
    queue_log("pull %s: %s", s->model, line);
}

static void log_progress(void *ud, const char *file, uint64_t file_done, uint64_t file_total,
                         uint64_t all_done, uint64_t all_total) {
    pull_log_state *s = ud;
    (void)file;
    (void)file_done;
    (void)file_total;
    int percent = all_total ? (int)(all_done * 100 / all_total) : 100;
    if (percent / 10 <= s->last_decile) return;
    s->last_decile = percent / 10;
    queue_log("pull %s: %d%% (%.2f of %.2f GB)", s->model, percent, all_done / 1e9,
              all_total / 1e9);
}

/* Pulls one model when missing; 0 when it is there afterwards. */
static int ensure(const store *st, const char *model, const char *repo, const char *revision) {
    if (!repo) repo = pull_default_repo(model);
    pull_log_state ls = {.model = model, .last_decile = -1};
    pull_options opt = {.retries = -1,
                        .progress = log_progress,
                        .progress_ud = &ls,
                        .log = log_line,
                        .log_ud = &ls};
    const char *jobs = cli_env("VOXQ_PULL_JOBS", NULL);
    if (jobs) opt.jobs = atoi(jobs);
    if (!store_variant_exists_valid(st, model, "original")) {
        store_entry *list = NULL;
        size_t n = 0;
        int have = 0;
        if (store_list(st, model, &list, &n, NULL) == 0)
            for (size_t i = 0; i < n; i++)
                have |= list[i].state == STORE_VALID;
        free(list);
        if (!have)
            queue_log("VOXQ_PULL: %s is not in the store %s: pulling %s@%s", model, st->root,
                      repo ? repo : "(no repository known)", revision ? revision : "main");
    }
    eng_error err = {0};
    int pulled = 0;
    int rc = pull_model_if_missing(st, model, repo, revision, &opt, &pulled, &err);
    if (rc) {
        queue_log("VOXQ_PULL: cannot pull %s: %s%s", model, err.msg,
                  rc == ENG_EINVAL ? " (set VOXQ_PULL_REPO)" : "");
        return -1;
    }
    if (pulled) queue_log("VOXQ_PULL: %s/original is in the store", model);
    return 0;
}

int worker_pull_first_run(const store *st, const char *model, const char *codec) {
    const char *on = cli_env("VOXQ_PULL", "0");
    if (!strcmp(on, "0") || !strcmp(on, "false") || !strcmp(on, "no")) return 0;
    if (ensure(st, model, cli_env("VOXQ_PULL_REPO", NULL), cli_env("VOXQ_PULL_REVISION", NULL)))
        return -1;
    const char *codec_name = codec && codec[0] ? codec : DEFAULT_CODEC;
    return ensure(st, codec_name, cli_env("VOXQ_PULL_CODEC_REPO", NULL), NULL);
}
