/* result.c - handing a delivery back: the transitions out of `running` (succeeded, failed or
 * retrying, cancelled, requeued, re-delayed), progress, enqueueing and the fleet locks. Each is
 * one script, queued through op.c until Redis answers it. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/internal.h"

#define ENVELOPE_RAW_MAX 4096

/* The raw payload, truncated and made printable UTF-8 for a dead-letter envelope. */
void qenvelope_raw(qop *op, const char *raw, size_t len) {
    size_t n = len < ENVELOPE_RAW_MAX ? len : ENVELOPE_RAW_MAX;
    char *s = malloc(n + 1);
    if (!s) {
        qop_arg(op, "");
        return;
    }
    int utf8 = queue_utf8_valid(raw, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)raw[i];
        s[i] = (c == 0 || (!utf8 && c >= 0x80)) ? '?' : (char)c;
    }
    /* Do not cut a valid multi-byte sequence in half. */
    while (utf8 && n > 0 && !queue_utf8_valid(s, n)) n--;
    qop_argn(op, s, n);
    free(s);
}

/* ---- transitions of a held delivery ------------------------------------------------------- */

static void on_finished(queue *q, redisReply *r, void *priv) {
    queue_delivery *d = priv;
    qdel_remove(&q->held, d);
    q->n_held--;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        qlog("job %s: lease lost (another worker owns it now); result not written", d->job.id);
    qdel_free(d);
    qfetch_pump(q);
}

static void on_failed(queue *q, redisReply *r, void *priv) {
    queue_delivery *d = priv;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        int retrying = !strcmp(r->element[0]->str, "retrying");
        if (retrying) {
            q->stats.retried++;
            qlog("job %s: attempt %lld failed; retry in %lld ms", d->job.id,
                 r->element[1]->integer, r->element[2]->integer);
        } else {
            q->stats.failed++;
            qlog("job %s: failed after %lld attempt(s); dead-lettered", d->job.id,
                 r->element[1]->integer);
        }
        qstate_changed(q, d->job.id, retrying ? "retrying" : "failed");
    }
    on_finished(q, r && r->type == REDIS_REPLY_ARRAY ? NULL : r, priv);
}

/* Starts a transition of d; returns the op with ARGV wid, raw, id, lease added. */
static qop *transition(queue *q, queue_delivery *d, int script, qop_done done) {
    assert(!d->finishing && "a delivery is handed back once");
    d->finishing = 1;
    qop *op = qop_script(q, script, done, d, 1);
    qop_arg(op, q->wid);
    qop_argn(op, d->raw, d->raw_len);
    qop_arg(op, d->job.id);
    qop_arg(op, d->lease);
    return op;
}

void queue_ack(queue *q, queue_delivery *d, const queue_result *r) {
    qop *op = transition(q, d, QS_FINISH, on_finished);
    qop_argf(op, "%lld", (long long)queue_now_ms());
    qop_arg(op, "succeeded");
    qop_argf(op, "%ld", d->job.result_ttl_s);
    qop_arg(op, d->job.reply_to);
    qop_arg(op, "1");
    qop_arg(op, "progress"); /* whatever the last throttled report said, a success is whole */
    qop_arg(op, "1");
    if (r->output_path) {
        qop_arg(op, "output_path");
        qop_arg(op, r->output_path);
    }
    qop_arg(op, "duration_ms");
    qop_argf(op, "%.1f", r->duration_ms);
    qop_arg(op, "sample_rate");
    qop_argf(op, "%d", r->sample_rate);
    qop_arg(op, "bytes");
    qop_argf(op, "%lld", (long long)r->bytes);
    if (r->sha256) {
        qop_arg(op, "sha256");
        qop_arg(op, r->sha256);
    }
    qop_arg(op, "steps_per_s");
    qop_argf(op, "%.2f", r->steps_per_s);
    qop_arg(op, "run_ms");
    qop_argf(op, "%.1f", r->run_ms);
    if (r->artifact) {
        qop_arg(op, "artifact");
        qop_arg(op, r->artifact);
    }
    q->stats.acked++;
    qstate_changed(q, d->job.id, "succeeded");
    qop_submit(q, op);
}

void queue_cancelled(queue *q, queue_delivery *d) {
    qop *op = transition(q, d, QS_FINISH, on_finished);
    qop_argf(op, "%lld", (long long)queue_now_ms());
    qop_arg(op, "cancelled");
    qop_argf(op, "%ld", d->job.result_ttl_s);
    qop_arg(op, d->job.reply_to);
    qop_arg(op, "0");
    q->stats.cancelled++;
    qstate_changed(q, d->job.id, "cancelled");
    qop_submit(q, op);
}

void queue_fail(queue *q, queue_delivery *d, const char *code, const char *message,
                int permanent) {
    qop *op = transition(q, d, QS_FAIL, on_failed);
    qop_argf(op, "%lld", (long long)queue_now_ms());
    qop_arg(op, code);
    qop_arg(op, message);
    qop_arg(op, permanent ? "1" : "0");
    qop_argf(op, "%d", d->job.max_attempts);
    qop_argf(op, "%d", q->cfg.retry_base_ms);
    qop_argf(op, "%d", q->cfg.retry_cap_ms);
    char hex[33];
    queue_random_hex(hex);
    qop_argf(op, "%.4f", (double)strtoul(hex + 24, NULL, 16) / 4294967296.0);
    qop_argf(op, "%ld", d->job.result_ttl_s);
    qop_arg(op, d->job.reply_to);
    qenvelope_raw(op, d->raw, d->raw_len);
    qop_submit(q, op);
}

void queue_requeue(queue *q, queue_delivery *d) {
    qop *op = transition(q, d, QS_REQUEUE, on_finished);
    char key[128];
    qop_arg(op, qkey_jobs(q, d->job.priority_hi, key, sizeof key));
    q->stats.requeued++;
    qstate_changed(q, d->job.id, "queued");
    qop_submit(q, op);
}

void queue_redelay(queue *q, queue_delivery *d, const char *state) {
    qop *op = transition(q, d, QS_REDELAY, on_finished);
    qop_argf(op, "%lld", (long long)queue_now_ms());
    qop_argf(op, "%d", q->cfg.redelay_ms);
    qop_arg(op, state);
    qstate_changed(q, d->job.id, state);
    qop_submit(q, op);
}

void queue_progress(queue *q, queue_delivery *d, double progress) {
    qop *op = qop_new(q, -1, NULL, NULL, 0);
    if (!op) return;
    char key[256];
    snprintf(key, sizeof key, "%sjob:%s", q->prefix, d->job.id);
    qop_arg(op, "HSET");
    qop_arg(op, key);
    qop_arg(op, "progress");
    qop_argf(op, "%.3f", progress);
    qop_submit(q, op);
    op = qop_new(q, -1, NULL, NULL, 0);
    if (!op) return;
    qop_arg(op, "PUBLISH");
    qop_argf(op, "%sev:%s", q->prefix, d->job.id);
    qop_argf(op, "{\"id\":\"%s\",\"state\":\"running\",\"progress\":%.3f}", d->job.id, progress);
    qop_submit(q, op);
}

void queue_enqueue(queue *q, const char *json, int hi) {
    qop *op = qop_new(q, -1, NULL, NULL, 1);
    if (!op) return;
    char key[128];
    qop_arg(op, "LPUSH");
    qop_arg(op, qkey_jobs(q, hi, key, sizeof key));
    qop_arg(op, json);
    qop_submit(q, op);
}

typedef struct lock_call {
    queue_lock_cb cb;
    void *data;
} lock_call;

static void on_lock_reply(queue *q, redisReply *r, void *priv) {
    lock_call *lc = priv;
    int result = -1;
    if (r && r->type == REDIS_REPLY_STATUS) result = 1;             /* SET ... NX: OK */
    else if (r && r->type == REDIS_REPLY_NIL) result = 0;           /* SET ... NX: held */
    else if (r && r->type == REDIS_REPLY_INTEGER) result = r->integer > 0;
    if (lc->cb) lc->cb(q, result, lc->data);
    free(lc);
}

static qop *lock_op(queue *q, int script, queue_lock_cb cb, void *data) {
    lock_call *lc = malloc(sizeof *lc);
    if (!lc) {
        if (cb) cb(q, -1, data);
        return NULL;
    }
    *lc = (lock_call){cb, data};
    qop *op = script >= 0 ? qop_script(q, script, on_lock_reply, lc, 0)
                          : qop_new(q, -1, on_lock_reply, lc, 0);
    if (!op) {
        free(lc);
        if (cb) cb(q, -1, data);
    }
    return op;
}

void queue_lock_acquire(queue *q, const char *name, const char *token, int ttl_ms,
                        queue_lock_cb cb, void *data) {
    qop *op = lock_op(q, -1, cb, data);
    if (!op) return;
    qop_arg(op, "SET");
    qop_argf(op, "%slock:%s", q->prefix, name);
    qop_arg(op, token);
    qop_arg(op, "NX");
    qop_arg(op, "PX");
    qop_argf(op, "%d", ttl_ms);
    qop_submit(q, op);
}

void queue_lock_renew(queue *q, const char *name, const char *token, int ttl_ms,
                      queue_lock_cb cb, void *data) {
    qop *op = lock_op(q, QS_LOCK_RENEW, cb, data);
    if (!op) return;
    qop_arg(op, name);
    qop_arg(op, token);
    qop_argf(op, "%d", ttl_ms);
    qop_submit(q, op);
}

void queue_lock_release(queue *q, const char *name, const char *token, queue_lock_cb cb,
                        void *data) {
    qop *op = lock_op(q, QS_LOCK_RELEASE, cb, data);
    if (!op) return;
    qop_arg(op, name);
    qop_arg(op, token);
    qop_submit(q, op);
}
