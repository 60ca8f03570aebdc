/* quant_job.c - the quantize job: store check, fleet lock with renewal, worker_quantize() on
 * the libuv threadpool, release, result (quant_job.h). Runs on the loop thread except for the
 * two uv_work_t bodies. */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/quant_job.h"
#include "worker/quantize.h"

#define LOCK_TTL_MS_DEFAULT 60000

enum { ABORT_NONE, ABORT_CANCEL, ABORT_REQUEUE, ABORT_LOCK_LOST, ABORT_TIMEOUT };

struct quant_job {
    uv_loop_t *loop;
    queue *q;
    queue_delivery *d;
    const store *st;
    int threads;
    void (*done)(quant_job *qj, void *data);
    void *data;
    char model[STORE_NAME_MAX];
    char method[QUEUE_NAME_MAX + 1];
    char lock_name[160];
    char token[200];
    int lock_ttl_ms;
    int locked;
    int64_t last_renewed;
    uv_work_t work;
    uv_timer_t renew;
    int timer_open;
    atomic_int abort;
    int exists;                 /* check step: a valid variant is already there */
    int rc;
    eng_error err;
    worker_quant_result result;
};

static void qlog_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void qlog_(const char *fmt, ...) {
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "voxq worker: %s\n", line);
}

static void on_timer_closed(uv_handle_t *h) {
    quant_job *qj = h->data;
    qj->done(qj, qj->data);
    worker_quant_result_free(&qj->result);
    free(qj);
}

/* The delivery has been handed back: tell the daemon and free ourselves. */
static void finish(quant_job *qj) {
    qj->d = NULL;
    if (qj->timer_open) {
        uv_timer_stop(&qj->renew);
        uv_close((uv_handle_t *)&qj->renew, on_timer_closed);
    } else {
        qj->done(qj, qj->data);
        worker_quant_result_free(&qj->result);
        free(qj);
    }
}

static void ack(quant_job *qj, int already) {
    char extra[STORE_PATH_MAX + 64];
    snprintf(extra, sizeof extra, "%s/%s%s", qj->model, qj->method,
             already ? " (already present)" : "");
    queue_result r = {0};
    r.output_path = qj->result.dir[0] ? qj->result.dir : NULL;
    r.run_ms = qj->result.total_seconds * 1000.0;
    r.artifact = extra;
    qlog_("job %s: %s/%s %s", qj->d->job.id, qj->model, qj->method,
          already ? "already present: reused" : "published");
    queue_ack(qj->q, qj->d, &r);
    finish(qj);
}

static void check_work(uv_work_t *w) {
    quant_job *qj = w->data;
    qj->exists = store_variant_exists_valid(qj->st, qj->model, qj->method);
}

static int on_progress(const eng_quant_progress *p, void *ctx) {
    (void)p;
    quant_job *qj = ctx;
    return atomic_load(&qj->abort) != ABORT_NONE;
}

static void quant_work(uv_work_t *w) {
    quant_job *qj = w->data;
    worker_quant_request req = {0};
    req.model = qj->model;
    eng_quant_method_parse(qj->method, &req.method);
    req.policy = "auto";
    req.threads = qj->threads;
    req.force = qj->d->job.force;
    req.progress = on_progress;
    req.ctx = qj;
    qj->rc = worker_quantize(qj->st, &req, &qj->result, &qj->err);
}

static void release_lock(quant_job *qj) {
    if (!qj->locked) return;
    qj->locked = 0;
    queue_lock_release(qj->q, qj->lock_name, qj->token, NULL, NULL);
}

/* The storage condition a failed quantization ran into, named the way the audio path names it
 * ("ENOSPC: ..."), so an operator can grep for it; "" when none. The engine and the store keep
 * only ENG_EIO and strerror()'s text of the errno, so the text is what is matched. */
static const char *storage_condition(const char *msg) {
    static const int codes[] = {ENOSPC, EROFS, EDQUOT, EFBIG};
    static const char *const names[] = {"ENOSPC: ", "EROFS: ", "EDQUOT: ", "EFBIG: "};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strstr(msg, strerror(codes[i]))) return names[i];
    return "";
}

/* Past timeout_s: a failed attempt like a synthesize job's (retried until max_attempts). */
static void fail_timeout(quant_job *qj) {
    char msg[128];
    snprintf(msg, sizeof msg, "job exceeded timeout_s = %g", qj->d->job.timeout_s);
    qlog_("job %s: %s; quantization stopped", qj->d->job.id, msg);
    queue_fail(qj->q, qj->d, "timeout", msg, 0);
}

static void after_quant(uv_work_t *w, int status) {
    (void)status;
    quant_job *qj = w->data;
    uv_timer_stop(&qj->renew);
    release_lock(qj);
    int why = atomic_load(&qj->abort);
    if (qj->rc == 0) {
        ack(qj, qj->result.already);
        return;
    }
    if (qj->rc == ENG_ECANCELLED && why == ABORT_CANCEL) {
        queue_cancelled(qj->q, qj->d);
    } else if (qj->rc == ENG_ECANCELLED && why == ABORT_REQUEUE) {
        queue_requeue(qj->q, qj->d);
    } else if (qj->rc == ENG_ECANCELLED && why == ABORT_TIMEOUT) {
        fail_timeout(qj);
    } else if (qj->rc == ENG_ECANCELLED && why == ABORT_LOCK_LOST) {
        queue_fail(qj->q, qj->d, "lock_lost",
                   "the fleet quantize lock could not be renewed; staging discarded", 0);
    } else {
        int permanent = qj->rc == ENG_ENOTFOUND || qj->rc == ENG_EINVAL;
        char msg[600];
        snprintf(msg, sizeof msg, "%s%s/%s: %.400s", storage_condition(qj->err.msg), qj->model,
                 qj->method, qj->err.msg);
        qlog_("job %s: quantize failed: %s", qj->d->job.id, msg);
        queue_fail(qj->q, qj->d, permanent ? "quantize_invalid" : "quantize_error", msg,
                   permanent);
    }
    finish(qj);
}

static void on_renewed(queue *q, int result, void *data) {
    (void)q;
    quant_job *qj = data;
    if (!qj->locked) return;
    if (result == 1) {
        qj->last_renewed = (int64_t)uv_now(qj->loop);
        return;
    }
    /* 0: someone else holds it now; -1: Redis unreachable. Abort when we cannot be sure. */
    if (result == 0 ||
        (int64_t)uv_now(qj->loop) - qj->last_renewed > qj->lock_ttl_ms * 2 / 3) {
        qlog_("job %s: quantize lock %s lost; aborting", qj->d->job.id, qj->lock_name);
        qj->locked = 0;
        int expected = ABORT_NONE;
        atomic_compare_exchange_strong(&qj->abort, &expected, ABORT_LOCK_LOST);
    }
}

static void on_renew_tick(uv_timer_t *t) {
    quant_job *qj = t->data;
    if (qj->locked)
        queue_lock_renew(qj->q, qj->lock_name, qj->token, qj->lock_ttl_ms, on_renewed, qj);
}

static void on_locked(queue *q, int result, void *data) {
    quant_job *qj = data;
    if (result != 1) {
        if (result < 0)
            qlog_("job %s: cannot reach Redis for the quantize lock; re-delayed", qj->d->job.id);
        else
            qlog_("job %s: %s is being made by another worker; waiting for it", qj->d->job.id,
                  qj->lock_name);
        queue_redelay(q, qj->d, "waiting_artifact");
        finish(qj);
        return;
    }
    qj->locked = 1;
    qj->last_renewed = (int64_t)uv_now(qj->loop);
    uv_timer_start(&qj->renew, on_renew_tick, (uint64_t)qj->lock_ttl_ms / 3,
                   (uint64_t)qj->lock_ttl_ms / 3);
    qj->work.data = qj;
    if (uv_queue_work(qj->loop, &qj->work, quant_work, after_quant) != 0) {
        release_lock(qj);
        queue_fail(q, qj->d, "quantize_error", "cannot start the quantizer thread", 0);
        finish(qj);
    }
}

static void after_check(uv_work_t *w, int status) {
    (void)status;
    quant_job *qj = w->data;
    int why = atomic_load(&qj->abort);
    if (why == ABORT_REQUEUE || why == ABORT_CANCEL || why == ABORT_TIMEOUT) {
        if (why == ABORT_REQUEUE)
            queue_requeue(qj->q, qj->d);
        else if (why == ABORT_CANCEL)
            queue_cancelled(qj->q, qj->d);
        else
            fail_timeout(qj);
        finish(qj);
        return;
    }
    if (qj->exists && !qj->d->job.force) {
        ack(qj, 1);
        return;
    }
    queue_lock_acquire(qj->q, qj->lock_name, qj->token, qj->lock_ttl_ms, on_locked, qj);
}

static void noop_done(quant_job *qj, void *data) {
    (void)qj;
    (void)data;
}

quant_job *quant_job_start(uv_loop_t *loop, queue *q, queue_delivery *d, const store *st,
                           const char *default_model, int threads,
                           void (*done)(quant_job *qj, void *data), void *data) {
    const queue_job *job = &d->job;
    const char *model = job->model[0] ? job->model : default_model;
    if (!store_name_valid(model) || strcmp(job->source, WORKER_QUANT_SOURCE) != 0) {
        queue_fail(q, d, "invalid_field", strcmp(job->source, WORKER_QUANT_SOURCE)
                   ? "field 'source': only 'original' can be quantized"
                   : "field 'model': not a valid store model name", 1);
        return NULL;
    }
    quant_job *qj = calloc(1, sizeof *qj);
    if (!qj) {
        queue_fail(q, d, "out_of_memory", "worker out of memory", 0);
        return NULL;
    }
    qj->loop = loop;
    qj->q = q;
    qj->d = d;
    qj->st = st;
    qj->threads = threads;
    qj->done = done;
    qj->data = data;
    snprintf(qj->model, sizeof qj->model, "%.63s", model);
    snprintf(qj->method, sizeof qj->method, "%s", job->method);
    snprintf(qj->lock_name, sizeof qj->lock_name, "quant:%s/%s", qj->model, qj->method);
    char hex[33];
    queue_random_hex(hex);
    snprintf(qj->token, sizeof qj->token, "%s:%s", queue_worker_id(q), hex);
    const char *ttl = getenv("VOXQ_QUANT_LOCK_MS");
    qj->lock_ttl_ms = ttl && atoi(ttl) >= 300 ? atoi(ttl) : LOCK_TTL_MS_DEFAULT;
    uv_timer_init(loop, &qj->renew);
    qj->renew.data = qj;
    qj->timer_open = 1;
    qj->work.data = qj;
    if (uv_queue_work(loop, &qj->work, check_work, after_check) != 0) {
        queue_fail(q, d, "quantize_error", "cannot start the store check", 0);
        qj->done = noop_done; /* the daemon gets NULL back and frees its own state */
        uv_close((uv_handle_t *)&qj->renew, on_timer_closed);
        return NULL;
    }
    return qj;
}

void quant_job_cancel(quant_job *qj) {
    int expected = ABORT_NONE;
    atomic_compare_exchange_strong(&qj->abort, &expected, ABORT_CANCEL);
}

void quant_job_requeue(quant_job *qj) {
    int expected = ABORT_NONE;
    atomic_compare_exchange_strong(&qj->abort, &expected, ABORT_REQUEUE);
}

void quant_job_timeout(quant_job *qj) {
    int expected = ABORT_NONE;
    atomic_compare_exchange_strong(&qj->abort, &expected, ABORT_TIMEOUT);
}
