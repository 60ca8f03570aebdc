/* cmd_worker.c - `voxq worker`: the job service daemon.
 *
 * One libuv loop on the main thread drives the queue client (queue/), the engine thread
 * (scheduler.c), audio writing and quantize jobs on the libuv threadpool, signals, the
 * /healthz + /metrics endpoint and a 250 ms housekeeping tick (job timeouts, engine stall,
 * shutdown drain). Nothing on the loop thread blocks on Redis, the disk or the GPU.
 *
 * Life of a synthesize job: queue on_job -> worker_task to the engine thread -> on_task_done
 * (loop) -> audio_write on the threadpool (temp file, fsync, rename inside the output
 * directory) -> queue_ack. Failures go to queue_fail (retry or dead letter), cancellations to
 * queue_cancelled. Shutdown (SIGTERM/SIGINT): stop fetching, let running jobs finish until
 * drain_s, then requeue what is left with attempts unchanged, deregister and exit 0; a second
 * signal skips the wait. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ops/metrics.h"
#include "ops/sha256.h"
#include "worker/audio.h"
#include "worker/cli.h"
#include "worker/daemon.h"
#include "worker/pull_first_run.h"
#include "worker/quant_job.h"

#define TICK_MS 250

typedef struct wdaemon wdaemon;

/* The worker's state for one delivery. */
typedef struct wjob {
    wdaemon *dm;
    queue_delivery *d;
    worker_task *t;             /* synthesize: owned by the engine thread while submitted */
    quant_job *qj;              /* quantize */
    int in_engine;
    int abandoned;              /* handed back to the queue (drain); completion is ignored */
    int timed_out;
    int published_permille;     /* last progress sent to Redis */
    int64_t started_mono;
    /* audio write on the threadpool */
    uv_work_t work;
    char path[PATH_MAX];
    int write_rc;
    char write_err[320];
    char sha256[65];
    uint64_t bytes;
    struct wjob *next;
} wjob;

struct wdaemon {
    worker_config cfg;
    uv_loop_t *loop;
    queue *q;
    worker_engine *engine;
    worker_sched sched;
    metrics_server *metrics;
    uv_signal_t sigterm, sigint;
    uv_timer_t tick;
    store st;
    int have_store;
    char outdir[PATH_MAX];
    wjob *jobs;
    int draining;
    int64_t drain_deadline;
    int requeued_all;
    int closing;
    int exit_code;
    int want_quantize;
    int64_t last_progress;
    /* metrics */
    long long by_state[8];
    metrics_hist run_seconds, rtf;
    double audio_seconds_total;
};

static const char *const state_names[8] = {"running", "succeeded", "retrying", "failed",
                                           "cancelled", "rejected", "queued", "waiting_artifact"};

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    queue_log("%s", line);
}

static void job_unlink(wdaemon *dm, wjob *wj) {
    for (wjob **p = &dm->jobs; *p; p = &(*p)->next)
        if (*p == wj) {
            *p = wj->next;
            return;
        }
}

static void job_free(wdaemon *dm, wjob *wj) {
    job_unlink(dm, wj);
    if (wj->d) wj->d->user = NULL;
    free(wj);
}

/* ---- audio output ------------------------------------------------------------------------- */

/* Creates the directories of rel (all but its last component) below dirfd without following
 * symlinks, so a job's output cannot be redirected out of the output directory. */
static int make_parents(int dirfd, const char *rel, char *err, size_t errlen) {
    char comp[QUEUE_PATH_MAX + 1];
    int fd = dup(dirfd);
    const char *p = rel;
    for (;;) {
        const char *slash = strchr(p, '/');
        if (!slash) break;
        snprintf(comp, sizeof comp, "%.*s", (int)(slash - p), p);
        if (mkdirat(fd, comp, 0755) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "output: mkdir '%s': %s", comp, strerror(errno));
            close(fd);
            return -errno;
        }
        int next = openat(fd, comp, O_DIRECTORY | O_NOFOLLOW | O_RDONLY);
        if (next < 0) {
            snprintf(err, errlen, "output: '%s' is not a directory inside the output directory: "
                     "%s", comp, strerror(errno));
            close(fd);
            return -EINVAL;
        }
        close(fd);
        fd = next;
        p = slash + 1;
    }
    close(fd);
    return 0;
}

/* Removes the temp files an earlier, killed writer of the same output left beside it
 * (audio_write names them ".<name>.tmp.XXXXXX"); only ones older than a minute, so a writer
 * that is still alive elsewhere is never disturbed. */
static void remove_stale_temps(const char *path) {
    char dir[PATH_MAX], prefix[NAME_MAX + 8];
    const char *slash = strrchr(path, '/');
    if (!slash || (size_t)(slash - path) >= sizeof dir) return;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
    snprintf(prefix, sizeof prefix, ".%.*s.tmp.", NAME_MAX - 8, slash + 1);
    DIR *d = opendir(dir);
    if (!d) return;
    time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat st;
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
            now - st.st_mtime > 60)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

static void write_work(uv_work_t *w) {
    wjob *wj = w->data;
    wdaemon *dm = wj->dm;
    worker_task *t = wj->t;
    const queue_job *job = &wj->d->job;
    if (strlen(dm->outdir) + strlen(job->output) + 2 > sizeof wj->path) {
        wj->write_rc = -ENAMETOOLONG;
        snprintf(wj->write_err, sizeof wj->write_err, "output path too long");
        return;
    }
    snprintf(wj->path, sizeof wj->path, "%.3800s/%.255s", dm->outdir, job->output);
    int dirfd = open(dm->outdir, O_DIRECTORY | O_RDONLY);
    if (dirfd < 0) {
        wj->write_rc = -errno;
        snprintf(wj->write_err, sizeof wj->write_err, "output directory %.200s: %s", dm->outdir,
                 strerror(errno));
        return;
    }
    wj->write_rc = make_parents(dirfd, job->output, wj->write_err, sizeof wj->write_err);
    close(dirfd);
    if (wj->write_rc) return;
    remove_stale_temps(wj->path);
    char msg[256] = "";
    wj->write_rc = audio_write(wj->path, t->pcm, t->n_samples, t->sample_rate,
                               audio_format_parse(job->format), msg, sizeof msg);
    if (wj->write_rc) {
        snprintf(wj->write_err, sizeof wj->write_err, "%s", msg);
        return;
    }
    eng_error err = {0};
    if (sha256_file(wj->path, wj->sha256, &wj->bytes, NULL, NULL, &err) != 0) {
        wj->write_rc = -EIO;
        snprintf(wj->write_err, sizeof wj->write_err, "hashing %.200s: %.100s", wj->path, err.msg);
    }
}

static const char *errno_code(int rc) {
    switch (-rc) {
    case ENOSPC: return "ENOSPC";
    case EROFS: return "EROFS";
    case EACCES: return "EACCES";
    case EDQUOT: return "EDQUOT";
    default: return "EIO";
    }
}

static void after_write(uv_work_t *w, int status) {
    (void)status;
    wjob *wj = w->data;
    wdaemon *dm = wj->dm;
    worker_task *t = wj->t;
    wj->t = NULL;
    if (wj->abandoned) {
        worker_task_free(t);
        job_free(dm, wj);
        return;
    }
    queue_delivery *d = wj->d;
    if (wj->write_rc) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s: %s", errno_code(wj->write_rc), wj->write_err);
        logf_("job %s: writing audio failed: %s", d->job.id, msg);
        queue_fail(dm->q, d, "io_error", msg, wj->write_rc == -EINVAL);
    } else {
        double audio_s = (double)t->n_samples / (double)t->sample_rate;
        double gen_s = t->gen_ms / 1000.0;
        queue_result r = {0};
        r.output_path = wj->path;
        r.duration_ms = audio_s * 1000.0;
        r.sample_rate = t->sample_rate;
        r.bytes = (int64_t)wj->bytes;
        r.sha256 = wj->sha256;
        r.steps_per_s = gen_s > 0 ? t->steps / gen_s : 0;
        r.run_ms = (double)(worker_mono_ms() - wj->started_mono);
        metrics_hist_observe(&dm->run_seconds, r.run_ms / 1000.0);
        if (gen_s > 0) metrics_hist_observe(&dm->rtf, audio_s / gen_s);
        dm->audio_seconds_total += audio_s;
        logf_("job %s: %.2f s of audio in %.2f s (%.1f steps/s, variant %s) -> %s", d->job.id,
              audio_s, gen_s, r.steps_per_s, t->variant_used, wj->path);
        queue_ack(dm->q, d, &r);
    }
    worker_task_free(t);
    job_free(dm, wj);
}

/* ---- engine results ----------------------------------------------------------------------- */

static void on_task_done(worker_task *t, void *data) {
    wdaemon *dm = data;
    wjob *wj = t->owner;
    wj->in_engine = 0;
    if (wj->abandoned) {
        worker_task_free(t);
        job_free(dm, wj);
        return;
    }
    queue_delivery *d = wj->d;
    if (t->rc == 0 && !t->cancelled) {
        wj->work.data = wj;
        if (uv_queue_work(dm->loop, &wj->work, write_work, after_write) == 0) return;
        worker_task_fail(t, "io_error", 0, "cannot start the audio writer");
    }
    if (wj->timed_out) {
        char msg[128];
        snprintf(msg, sizeof msg, "job exceeded timeout_s = %g", d->job.timeout_s);
        queue_fail(dm->q, d, "timeout", msg, 0);
    } else if (t->cancelled) {
        logf_("job %s: cancelled", d->job.id);
        queue_cancelled(dm->q, d);
    } else {
        logf_("job %s: %s: %s", d->job.id, t->error_code, t->error);
        queue_fail(dm->q, d, t->error_code, t->error, t->permanent);
    }
    worker_task_free(t);
    job_free(dm, wj);
}

/* ---- queue callbacks ---------------------------------------------------------------------- */

static void start_synthesize(wdaemon *dm, wjob *wj) {
    queue_delivery *d = wj->d;
    const queue_job *job = &d->job;
    if (job->model[0] && strcmp(job->model, dm->cfg.model) && !dm->cfg.fake_engine) {
        char msg[200];
        snprintf(msg, sizeof msg, "field 'model': this worker serves '%s', not '%s'",
                 dm->cfg.model, job->model);
        queue_fail(dm->q, d, "unknown_model", msg, 1);
        job_free(dm, wj);
        return;
    }
    worker_task *t = calloc(1, sizeof *t);
    if (t) t->text = malloc(job->text_len + 1);
    if (!t || !t->text) {
        free(t);
        queue_fail(dm->q, d, "out_of_memory", "worker out of memory", 0);
        job_free(dm, wj);
        return;
    }
    memcpy(t->text, job->text, job->text_len + 1);
    t->text_len = job->text_len;
    snprintf(t->id, sizeof t->id, "%s", job->id);
    t->attempt = d->attempts + 1;
    t->cfg_scale = job->cfg_scale;
    t->temperature = job->temperature;
    t->top_p = job->top_p;
    t->cfg_filter_top_k = job->cfg_filter_top_k;
    t->max_seconds = job->max_seconds;
    t->seed = job->seed;
    t->has_seed = job->has_seed;
    snprintf(t->variant, sizeof t->variant, "%s", job->variant);
    t->owner = wj;
    wj->t = t;
    wj->in_engine = 1;
    worker_sched_submit(&dm->sched, t);
}

static void on_quant_done(quant_job *qj, void *data) {
    wjob *wj = data;
    (void)qj;
    job_free(wj->dm, wj);
}

static void on_job(queue *q, queue_delivery *d, void *data) {
    wdaemon *dm = data;
    if (dm->draining) {
        queue_requeue(q, d); /* arrived with the last fetch after the signal */
        return;
    }
    wjob *wj = calloc(1, sizeof *wj);
    if (!wj) {
        queue_fail(q, d, "out_of_memory", "worker out of memory", 0);
        return;
    }
    wj->dm = dm;
    wj->d = d;
    wj->started_mono = worker_mono_ms();
    d->user = wj;
    wj->next = dm->jobs;
    dm->jobs = wj;
    logf_("job %s: %s (attempt %d)", d->job.id,
          d->job.type == QUEUE_JOB_SYNTHESIZE ? "synthesize" : "quantize", d->attempts + 1);
    if (d->job.type == QUEUE_JOB_SYNTHESIZE) {
        start_synthesize(dm, wj);
        return;
    }
    wj->qj = quant_job_start(dm->loop, q, d, &dm->st, dm->cfg.model, dm->cfg.threads,
                             on_quant_done, wj);
    if (!wj->qj) job_free(dm, wj);
}

static void on_cancel(queue *q, queue_delivery *d, void *data) {
    (void)q;
    (void)data;
    wjob *wj = d->user;
    if (!wj) return;
    if (wj->t && wj->in_engine) atomic_store(&wj->t->cancel, 1);
    if (wj->qj) quant_job_cancel(wj->qj);
}

static void on_fatal(queue *q, const char *message, void *data) {
    wdaemon *dm = data;
    (void)q;
    logf_("%s", message);
    dm->exit_code = 1;
    dm->draining = 1;
    dm->drain_deadline = worker_mono_ms();
}

static int healthy(void *data) {
    wdaemon *dm = data;
    return worker_sched_healthy(&dm->sched, (int64_t)dm->cfg.stall_s * 1000);
}

static void on_state(queue *q, const char *id, const char *state, void *data) {
    (void)q;
    (void)id;
    wdaemon *dm = data;
    for (int i = 0; i < 8; i++)
        if (!strcmp(state, state_names[i])) dm->by_state[i]++;
}

static void on_closed(queue *q, void *data);

/* ---- metrics ------------------------------------------------------------------------------ */

static int render(const char *path, metrics_buf *b, const char **ctype, void *data) {
    wdaemon *dm = data;
    queue_stats s;
    queue_get_stats(dm->q, &s);
    if (!strcmp(path, "/healthz")) {
        *ctype = "application/json";
        int64_t since = s.last_fetch_ms ? queue_now_ms() - s.last_fetch_ms : -1;
        int fetch_ok = dm->draining || (since >= 0 &&
                                        since < dm->cfg.queue.block_timeout_s * 1000 + 5000) ||
                       s.held >= dm->cfg.concurrency;
        int engine_ok = healthy(dm);
        int ok = s.connected && fetch_ok && engine_ok;
        metrics_printf(b, "{\"ok\":%s,\"worker\":\"%s\",\"redis\":%s,\"fetch_ms_ago\":%lld,"
                       "\"engine\":%s,\"variant\":\"%s\",\"draining\":%s,\"jobs\":%d}\n",
                       ok ? "true" : "false", queue_worker_id(dm->q),
                       s.connected ? "true" : "false", (long long)since,
                       engine_ok ? "true" : "false", dm->engine->variant,
                       dm->draining ? "true" : "false", s.held);
        return ok ? 200 : 503;
    }
    if (strcmp(path, "/metrics")) {
        metrics_printf(b, "not found; try /healthz or /metrics\n");
        return 404;
    }
    metrics_printf(b, "# HELP voxq_jobs_total Job state transitions seen by this worker.\n"
                      "# TYPE voxq_jobs_total counter\n");
    for (int i = 0; i < 8; i++)
        metrics_printf(b, "voxq_jobs_total{state=\"%s\"} %lld\n", state_names[i], dm->by_state[i]);
    metrics_printf(b, "# HELP voxq_jobs_held Jobs this worker holds now.\n"
                      "# TYPE voxq_jobs_held gauge\nvoxq_jobs_held %d\n", s.held);
    metrics_printf(b, "# HELP voxq_queue_depth Jobs waiting, by list (refreshed by heartbeat).\n"
                      "# TYPE voxq_queue_depth gauge\n"
                      "voxq_queue_depth{queue=\"normal\"} %lld\n"
                      "voxq_queue_depth{queue=\"hi\"} %lld\n"
                      "voxq_queue_depth{queue=\"delayed\"} %lld\n"
                      "voxq_queue_depth{queue=\"dead\"} %lld\n",
                   s.depth_normal, s.depth_hi, s.depth_delayed, s.depth_dead);
    metrics_printf(b, "# HELP voxq_redis_connected 1 when all three Redis connections are up.\n"
                      "# TYPE voxq_redis_connected gauge\nvoxq_redis_connected %d\n"
                      "# HELP voxq_redis_reconnects_total Redis connections lost.\n"
                      "# TYPE voxq_redis_reconnects_total counter\n"
                      "voxq_redis_reconnects_total %lld\n"
                      "# HELP voxq_jobs_recovered_total Jobs of dead workers this worker "
                      "returned to the queue.\n# TYPE voxq_jobs_recovered_total counter\n"
                      "voxq_jobs_recovered_total %lld\n",
                   s.connected, s.reconnects, s.recovered);
    metrics_hist_write(b, "voxq_job_duration_seconds", "Wall time from claim to result.",
                       &dm->run_seconds);
    metrics_hist_write(b, "voxq_realtime_factor", "Seconds of audio per second of generation.",
                       &dm->rtf);
    metrics_printf(b, "# HELP voxq_audio_seconds_total Audio produced.\n"
                      "# TYPE voxq_audio_seconds_total counter\nvoxq_audio_seconds_total %.3f\n",
                   dm->audio_seconds_total);
    size_t weights = 0, peak = 0, total = 0, freeb = 0;
    if (dm->engine->mem) dm->engine->mem(dm->engine, &weights, &peak, &total, &freeb);
    metrics_printf(b, "# HELP voxq_engine_memory_bytes Engine memory by kind.\n"
                      "# TYPE voxq_engine_memory_bytes gauge\n"
                      "voxq_engine_memory_bytes{kind=\"allocated\"} %zu\n"
                      "voxq_engine_memory_bytes{kind=\"peak\"} %zu\n"
                      "voxq_engine_memory_bytes{kind=\"device_total\"} %zu\n"
                      "voxq_engine_memory_bytes{kind=\"device_free\"} %zu\n",
                   weights, peak, total, freeb);
    pthread_mutex_lock(&dm->engine->lock);
    metrics_printf(b, "# HELP voxq_engine_info The loaded model variant.\n"
                      "# TYPE voxq_engine_info gauge\n"
                      "voxq_engine_info{model=\"%s\",variant=\"%s\"} 1\n",
                   dm->cfg.model, dm->engine->variant);
    pthread_mutex_unlock(&dm->engine->lock);
    return 200;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void begin_close(wdaemon *dm) {
    if (dm->closing) return;
    dm->closing = 1;
    queue_close(dm->q);
}

/* At the drain deadline: stop what still runs and hand it back, attempts unchanged. */
static void requeue_all(wdaemon *dm) {
    dm->requeued_all = 1;
    for (wjob *wj = dm->jobs, *next; wj; wj = next) {
        next = wj->next;
        if (wj->abandoned) continue;
        if (wj->qj) {
            quant_job_requeue(wj->qj); /* it requeues itself once its worker thread stops */
            continue;
        }
        if (!wj->in_engine) continue; /* writing its audio: let it finish and ack */
        atomic_store(&wj->t->cancel, 1);
        wj->abandoned = 1;
        logf_("job %s: drain deadline reached; requeued", wj->d->job.id);
        queue_requeue(dm->q, wj->d);
        wj->d = NULL;
    }
}

static void on_tick(uv_timer_t *timer) {
    wdaemon *dm = timer->data;
    int64_t now = worker_mono_ms();
    if (now - dm->last_progress >= 1000) { /* HSET progress + PUBLISH, at most once a second */
        dm->last_progress = now;
        for (wjob *wj = dm->jobs; wj; wj = wj->next) {
            if (!wj->d || !wj->in_engine) continue;
            int p = atomic_load(&wj->t->permille);
            if (p == wj->published_permille) continue;
            wj->published_permille = p;
            queue_progress(dm->q, wj->d, p / 1000.0);
        }
    }
    /* timeout_s: synthesis stops at its next decoder step, quantization at its next chunk. */
    for (wjob *wj = dm->jobs; wj; wj = wj->next) {
        if (!wj->d || !(wj->in_engine || wj->qj) || wj->timed_out || wj->d->job.timeout_s <= 0)
            continue;
        if (now - wj->started_mono > (int64_t)(wj->d->job.timeout_s * 1000)) {
            wj->timed_out = 1;
            logf_("job %s: timeout_s %g exceeded; cancelling", wj->d->job.id,
                  wj->d->job.timeout_s);
            if (wj->qj)
                quant_job_timeout(wj->qj);
            else
                atomic_store(&wj->t->cancel, 2);
        }
    }
    int64_t silent = worker_sched_silent_ms(&dm->sched);
    if (silent > (int64_t)dm->cfg.stall_s * 1000 + dm->cfg.queue.lease_ms) {
        logf_("engine silent for %lld ms while busy: hung; exiting so a supervisor restarts "
              "this worker (its jobs are recovered by the reaper)", (long long)silent);
        fflush(stderr);
        _exit(1);
    }
    if (!dm->draining || dm->closing) return;
    if (now >= dm->drain_deadline && !dm->requeued_all) requeue_all(dm);
    if (!dm->jobs && queue_busy(dm->q) == 0) begin_close(dm);
    else if (now >= dm->drain_deadline + 15000) {
        logf_("giving up on %d job(s) after the drain deadline; the reaper will return them",
              queue_busy(dm->q));
        begin_close(dm);
    }
}

static void on_signal(uv_signal_t *h, int signum) {
    wdaemon *dm = h->data;
    if (!dm->draining) {
        dm->draining = 1;
        dm->drain_deadline = worker_mono_ms() + (int64_t)dm->cfg.drain_s * 1000;
        logf_("%s: draining (%d s); a second signal requeues running jobs now",
              signum == SIGTERM ? "SIGTERM" : "SIGINT", dm->cfg.drain_s);
        queue_stop_fetching(dm->q);
    } else {
        logf_("second signal: requeueing running jobs now");
        dm->drain_deadline = worker_mono_ms();
    }
}

static void on_closed(queue *q, void *data) {
    (void)q;
    wdaemon *dm = data;
    uv_timer_stop(&dm->tick);
    uv_close((uv_handle_t *)&dm->tick, NULL);
    uv_signal_stop(&dm->sigterm);
    uv_signal_stop(&dm->sigint);
    uv_close((uv_handle_t *)&dm->sigterm, NULL);
    uv_close((uv_handle_t *)&dm->sigint, NULL);
    if (dm->metrics) metrics_server_close(dm->metrics);
    dm->metrics = NULL;
    if (!atomic_load(&dm->sched.busy))
        worker_sched_stop(&dm->sched);
    else
        uv_close((uv_handle_t *)&dm->sched.async, NULL); /* a hung engine: exit without it */
}

/* Resolves and creates the output directory; its real path is the prefix every output has. */
static int prepare_output_dir(wdaemon *dm) {
    if (mkdir(dm->cfg.output_dir, 0755) != 0 && errno != EEXIST) {
        logf_("cannot create output directory %s: %s", dm->cfg.output_dir, strerror(errno));
        return -1;
    }
    if (!realpath(dm->cfg.output_dir, dm->outdir)) {
        logf_("output directory %s: %s", dm->cfg.output_dir, strerror(errno));
        return -1;
    }
    if (access(dm->outdir, W_OK) != 0) {
        logf_("output directory %s is not writable: %s", dm->outdir, strerror(errno));
        return -1;
    }
    return 0;
}

void cmd_worker_help(void) { worker_config_help(); }

int cmd_worker(int argc, char **argv) {
    wdaemon *dm = calloc(1, sizeof *dm);
    if (!dm) return 1;
    int rc = worker_config_load(&dm->cfg, argc, argv);
    if (rc) {
        free(dm);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    static const double dur_bounds[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
    static const double rtf_bounds[] = {0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32};
    metrics_hist_init(&dm->run_seconds, dur_bounds, 11);
    metrics_hist_init(&dm->rtf, rtf_bounds, 9);
    rc = 1;
    if (prepare_output_dir(dm) != 0) goto out;
    char errbuf[512];
    eng_error err = {0};
    if (store_open(&dm->st, dm->cfg.store, &err) != 0) {
        logf_("store %s: %s", dm->cfg.store, err.msg);
        goto out;
    }
    dm->have_store = 1;
    /* VOXQ_PULL=1 (the container default): fetch the model into an empty store first. */
    if (!dm->cfg.fake_engine && worker_pull_first_run(&dm->st, dm->cfg.model, dm->cfg.codec))
        goto out;
    if (dm->cfg.fake_engine) {
        logf_("VOXQ_TEST_FAKE_ENGINE=1: using the scripted test engine, not a model");
        if (worker_fake_engine_new(&dm->engine, errbuf) != 0) {
            logf_("%s", errbuf);
            goto out;
        }
    } else {
        if (worker_dia_engine_new(&dm->engine, &dm->cfg, &dm->want_quantize, errbuf) != 0) {
            logf_("%s", errbuf);
            goto out;
        }
    }
    dm->loop = uv_default_loop();
    queue_callbacks cb = {on_job, on_cancel, on_fatal, healthy, on_state, on_closed};
    char qerr[256];
    if (queue_new(dm->loop, &dm->cfg.queue, &cb, dm, &dm->q, qerr) != 0) {
        logf_("%s", qerr);
        rc = 2;
        goto out;
    }
    uv_timer_init(dm->loop, &dm->tick);
    dm->tick.data = dm;
    uv_signal_init(dm->loop, &dm->sigterm);
    uv_signal_init(dm->loop, &dm->sigint);
    dm->sigterm.data = dm->sigint.data = dm;
    if (worker_sched_start(&dm->sched, dm->loop, dm->engine, on_task_done, dm) != 0) {
        logf_("cannot start the engine thread");
        dm->closing = 1;
        queue_close(dm->q);
        uv_run(dm->loop, UV_RUN_DEFAULT);
        rc = 1;
        goto out;
    }
    if (strcmp(dm->cfg.metrics_addr, "off") && dm->cfg.metrics_addr[0]) {
        char merr[256];
        if (metrics_server_start(dm->loop, dm->cfg.metrics_addr, render, dm, &dm->metrics,
                                 merr) != 0) {
            logf_("%s", merr);
            rc = 2;
            dm->closing = 1;
            queue_close(dm->q);
            uv_run(dm->loop, UV_RUN_DEFAULT);
            goto out;
        }
        logf_("metrics on http://%s/metrics and /healthz", dm->cfg.metrics_addr);
    }
    uv_timer_start(&dm->tick, on_tick, TICK_MS, TICK_MS);
    uv_signal_start(&dm->sigterm, on_signal, SIGTERM);
    uv_signal_start(&dm->sigint, on_signal, SIGINT);
    queue_start(dm->q);
    if (dm->want_quantize) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"id\":\"quant:%s:int8\",\"type\":\"quantize\",\"model\":\"%s\","
                 "\"method\":\"int8\"}", dm->cfg.model, dm->cfg.model);
        logf_("VOXQ_AUTO_QUANTIZE: enqueued quantize job quant:%s:int8; serving %s meanwhile",
              dm->cfg.model, dm->engine->variant);
        queue_enqueue(dm->q, json, 0);
    }
    uv_run(dm->loop, UV_RUN_DEFAULT);
    rc = dm->exit_code;
    logf_("stopped (exit %d)", rc);
out:
    if (dm->loop) uv_loop_close(dm->loop);
    while (dm->jobs) job_free(dm, dm->jobs); /* before queue_free: they point at deliveries */
    queue_free(dm->q);
    if (dm->engine && !atomic_load(&dm->sched.busy)) dm->engine->destroy(dm->engine);
    if (dm->have_store) store_close(&dm->st);
    free(dm);
    return rc;
}
