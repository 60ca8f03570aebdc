/* client.c - the worker side of the queue contract on a libuv loop.
 *
 * Three connections (spec/queue.md §4.5): `fetch` only ever carries LRANGE/LMOVE/BLMOVE, so a
 * blocked BLMOVE delays nothing else; `cmd` carries every script, heartbeat and lock; `sub`
 * holds the cancel subscription. Everything that changes a job's state is a qop: a script call
 * that is replayed until Redis gives a definitive answer (after a lost connection, a NOSCRIPT
 * or a transient error such as LOADING). The scripts are idempotent (scripts.c), so a replay
 * after a lost reply cannot ack twice, and the processing list is rescanned after every
 * reconnect of `fetch` because a BLMOVE may have moved a job whose reply never arrived. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/internal.h"

#define TICK_MS 100
#define OP_ERROR_RETRIES 20
#define ENVELOPE_RAW_MAX 4096

typedef void (*qop_done)(queue *q, redisReply *r, void *priv);

/* One command or script call, kept until it has a definitive reply. */
typedef struct qop {
    queue *q;
    int script;                 /* QS_* or -1 for a plain command */
    int argc, cap;
    char **argv;
    size_t *lens;
    int retry;                  /* replay on a lost connection or a transient error */
    int errors;
    int use_eval;               /* after NOSCRIPT: send the source with EVAL */
    qop_done done;              /* r may be NULL only for ops without retry */
    void *priv;
    struct qop *next;
} qop;

struct queue {
    uv_loop_t *loop;
    queue_config cfg;
    queue_callbacks cb;
    void *data;
    char wid[128];
    char prefix[64];
    qaddr addr;
    qconn fetch, cmd, sub;
    char sha[QS_COUNT][41];
    int scripts_loaded;         /* SCRIPT LOAD replies received since cmd came up */
    int ready;                  /* cmd up, version checked, scripts loaded */
    int fatal;
    uv_timer_t tick;
    int64_t next_heartbeat, next_reap, not_before;
    qop *waiting, *waiting_tail;
    queue_delivery *held;       /* claimed, running or finishing */
    queue_delivery *claiming;   /* fetched, claim in flight */
    int n_held, n_claiming;
    int fetch_on, fetch_inflight, need_rescan;
    long long fetch_client_id;  /* CLIENT ID of the fetch connection, for CLIENT UNBLOCK */
    int64_t fetch_retry_at;
    int closing, closed_handles;
    int warned_unhealthy;
    queue_stats stats;
};

/* ---- ops ---------------------------------------------------------------------------------- */

static qop *op_new(queue *q, int script, qop_done done, void *priv, int retry) {
    qop *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->q = q;
    op->script = script;
    op->done = done;
    op->priv = priv;
    op->retry = retry;
    return op;
}

static void op_free(qop *op) {
    if (!op) return;
    for (int i = 0; i < op->argc; i++) free(op->argv[i]);
    free(op->argv);
    free(op->lens);
    free(op);
}

/* Appends one argument (copied); failures are remembered as argc = -1 and reported on submit. */
static void op_argn(qop *op, const char *s, size_t n) {
    if (op->argc < 0) return;
    if (op->argc == op->cap) {
        int cap = op->cap ? op->cap * 2 : 16;
        char **a = realloc(op->argv, sizeof *a * (size_t)cap);
        if (a) op->argv = a;
        size_t *l = realloc(op->lens, sizeof *l * (size_t)cap);
        if (l) op->lens = l;
        if (!a || !l) {
            op->argc = -1;
            return;
        }
        op->cap = cap;
    }
    char *c = malloc(n + 1);
    if (!c) {
        op->argc = -1;
        return;
    }
    memcpy(c, s, n);
    c[n] = '\0';
    op->argv[op->argc] = c;
    op->lens[op->argc] = n;
    op->argc++;
}

static void op_arg(qop *op, const char *s) { op_argn(op, s, strlen(s)); }

static void op_argf(qop *op, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void op_argf(qop *op, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    op_arg(op, buf);
}

static void op_wait(queue *q, qop *op) {
    op->next = NULL;
    if (q->waiting_tail)
        q->waiting_tail->next = op;
    else
        q->waiting = op;
    q->waiting_tail = op;
}

static int op_send(queue *q, qop *op);

static void op_reply(qconn *c, redisReply *r, void *priv) {
    qop *op = priv;
    queue *q = c->owner;
    if (!r) {
        if (op->retry && !q->closing) {
            op_wait(q, op);
            return;
        }
        if (op->done) op->done(q, NULL, op->priv);
        op_free(op);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (!strncmp(r->str, "NOSCRIPT", 8) && op->script >= 0 && !op->use_eval) {
            op->use_eval = 1; /* a restarted Redis forgot the script: send the source */
            if (op_send(q, op) != 0) op_wait(q, op);
            return;
        }
        if (op->retry && !q->closing && ++op->errors < OP_ERROR_RETRIES) {
            if (op->errors == 1)
                qlog("redis %s: %s (will retry)",
                     op->script >= 0 ? qscript_name(op->script) : op->argv[0], r->str);
            q->not_before = qconn_mono_ms() + 500;
            op_wait(q, op);
            return;
        }
        qlog("redis %s failed: %s", op->script >= 0 ? qscript_name(op->script) : op->argv[0],
             r->str);
    }
    if (op->done) op->done(q, r, op->priv);
    op_free(op);
}

/* Sends op on cmd: EVALSHA sha 0 args (EVAL source 0 args after NOSCRIPT) or the command. */
static int op_send(queue *q, qop *op) {
    if (!q->ready || op->argc < 0) return -1;
    const char *argv[64 + 3];
    size_t lens[64 + 3];
    int n = 0;
    if (op->script >= 0) {
        argv[n] = op->use_eval ? "EVAL" : "EVALSHA";
        lens[n++] = strlen(argv[0]);
        argv[n] = op->use_eval ? qscript_source(op->script) : q->sha[op->script];
        lens[n] = strlen(argv[n]);
        n++;
        argv[n] = "0";
        lens[n++] = 1;
    }
    if (op->argc > 64) return -1;
    for (int i = 0; i < op->argc; i++) {
        argv[n] = op->argv[i];
        lens[n++] = op->lens[i];
    }
    return qconn_send(&q->cmd, op_reply, op, n, argv, lens);
}

static void op_submit(queue *q, qop *op) {
    if (!op) return;
    if (op->argc < 0) {
        qlog("out of memory building a redis command");
        if (op->done) op->done(q, NULL, op->priv);
        op_free(op);
        return;
    }
    if (q->waiting || qconn_mono_ms() < q->not_before || op_send(q, op) != 0) {
        if (!op->retry && (!q->ready || q->closing)) {
            if (op->done) op->done(q, NULL, op->priv);
            op_free(op);
            return;
        }
        op_wait(q, op);
    }
}

/* Sends what waited for the connection, in order. */
static void flush_waiting(queue *q) {
    while (q->waiting && q->ready && qconn_mono_ms() >= q->not_before) {
        qop *op = q->waiting;
        q->waiting = op->next;
        if (!q->waiting) q->waiting_tail = NULL;
        if (op_send(q, op) != 0) {
            op->next = q->waiting; /* put it back at the head */
            q->waiting = op;
            if (!q->waiting_tail) q->waiting_tail = op;
            break;
        }
    }
}

/* A script op with ARGV[1] = prefix already added. */
static qop *script_op(queue *q, int script, qop_done done, void *priv, int retry) {
    qop *op = op_new(q, script, done, priv, retry);
    if (op) op_arg(op, q->prefix);
    return op;
}

/* ---- deliveries --------------------------------------------------------------------------- */

static void list_remove(queue_delivery **head, queue_delivery *d) {
    for (queue_delivery **p = head; *p; p = &(*p)->next)
        if (*p == d) {
            *p = d->next;
            d->next = NULL;
            return;
        }
}

static void delivery_free(queue_delivery *d) {
    if (!d) return;
    queue_job_free(&d->job);
    free(d->raw);
    free(d->orig_raw);
    free(d);
}

static queue_delivery *find_held(queue *q, const char *id) {
    for (queue_delivery *d = q->held; d; d = d->next)
        if (!strcmp(d->job.id, id)) return d;
    return NULL;
}

static const char *queue_key(queue *q, int hi, char *buf, size_t cap) {
    snprintf(buf, cap, "%sjobs%s", q->prefix, hi ? ":hi" : "");
    return buf;
}

static void fetch_pump(queue *q);

static void state_changed(queue *q, const char *id, const char *state) {
    if (q->cb.on_state) q->cb.on_state(q, id, state, q->data);
}

/* The raw payload, truncated and made printable UTF-8 for a dead-letter envelope. */
static void envelope_raw(qop *op, const char *raw, size_t len) {
    size_t n = len < ENVELOPE_RAW_MAX ? len : ENVELOPE_RAW_MAX;
    char *s = malloc(n + 1);
    if (!s) {
        op_arg(op, "");
        return;
    }
    int utf8 = queue_utf8_valid(raw, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)raw[i];
        s[i] = (c == 0 || (!utf8 && c >= 0x80)) ? '?' : (char)c;
    }
    /* Do not cut a valid multi-byte sequence in half. */
    while (utf8 && n > 0 && !queue_utf8_valid(s, n)) n--;
    op_argn(op, s, n);
    free(s);
}

static void on_rejected(queue *q, redisReply *r, void *priv) {
    queue_delivery *d = priv;
    list_remove(&q->claiming, d);
    q->n_claiming--;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        q->stats.rejected++;
        if (!d->job.id_assigned) state_changed(q, d->job.id, "rejected");
    }
    delivery_free(d);
    fetch_pump(q);
}

static void on_claimed(queue *q, redisReply *r, void *priv) {
    queue_delivery *d = priv;
    list_remove(&q->claiming, d);
    q->n_claiming--;
    const char *outcome = "";
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        outcome = r->element[0]->str;
        if (r->element[1]->type == REDIS_REPLY_INTEGER) d->attempts = (int)r->element[1]->integer;
    }
    if (!strcmp(outcome, "run")) {
        d->next = q->held;
        q->held = d;
        q->n_held++;
        q->stats.claimed++;
        state_changed(q, d->job.id, "running");
        if (d->job.ignored[0])
            qlog("job %s: ignoring unknown fields: %s", d->job.id, d->job.ignored);
        q->cb.on_job(q, d, q->data);
    } else {
        if (!strcmp(outcome, "done"))
            qlog("job %s: already succeeded; result re-emitted (duplicate delivery)", d->job.id);
        else if (!strcmp(outcome, "cancelled")) {
            q->stats.cancelled++;
            state_changed(q, d->job.id, "cancelled");
            qlog("job %s: cancelled before start", d->job.id);
        } else if (!strcmp(outcome, "delayed"))
            qlog("job %s: running elsewhere; duplicate re-delayed", d->job.id);
        else if (!strcmp(outcome, "gone"))
            qlog("job %s: no longer in this worker's processing list", d->job.id);
        else
            qlog("job %s: claim failed", d->job.id);
        delivery_free(d);
    }
    fetch_pump(q);
}

/* A payload arrived in our processing list: validate it, then claim or reject it. */
static void handle_raw(queue *q, const char *raw, size_t len) {
    queue_delivery *d = calloc(1, sizeof *d);
    if (!d) return; /* stays in the processing list; the next rescan retries it */
    d->q = q;
    d->raw = malloc(len + 1);
    if (!d->raw) {
        free(d);
        return;
    }
    memcpy(d->raw, raw, len);
    d->raw[len] = '\0';
    d->raw_len = len;
    d->next = q->claiming;
    q->claiming = d;
    q->n_claiming++;
    queue_job_error err;
    if (queue_job_parse(raw, len, &q->cfg.limits, &d->job, &err) != 0) {
        qlog("rejected job%s%s: %s: %s", d->job.id[0] && !d->job.id_assigned ? " " : "",
             d->job.id_assigned ? "" : d->job.id, err.code, err.message);
        qop *op = script_op(q, QS_REJECT, on_rejected, d, 1);
        op_arg(op, q->wid);
        op_argn(op, raw, len);
        envelope_raw(op, raw, len);
        op_arg(op, d->job.id_assigned ? "" : d->job.id);
        op_arg(op, err.code);
        op_arg(op, err.message);
        op_argf(op, "%lld", (long long)queue_now_ms());
        op_argf(op, "%ld", 86400L);
        op_arg(op, "");
        op_submit(q, op);
        return;
    }
    queue_random_hex(d->lease);
    d->started_ms = queue_now_ms();
    /* Another copy of this id held or being claimed here: never run both; delay this one. */
    int same_id_held = find_held(q, d->job.id) != NULL;
    for (queue_delivery *o = q->claiming; o && !same_id_held; o = o->next)
        same_id_held = o != d && o->job.id[0] && !strcmp(o->job.id, d->job.id);
    qop *op = script_op(q, QS_CLAIM, on_claimed, d, 1);
    op_arg(op, q->wid);
    op_argn(op, raw, len);
    if (d->job.id_assigned) {
        size_t n;
        char *withid = queue_job_with_id(raw, len, d->job.id, &n);
        if (withid) {
            op_argn(op, withid, n);
            d->orig_raw = d->raw; /* still what the list holds until the claim runs */
            d->orig_len = d->raw_len;
            d->raw = withid;
            d->raw_len = n;
        } else {
            op->argc = -1;
        }
    } else {
        op_arg(op, "");
    }
    op_arg(op, d->job.id);
    op_arg(op, d->lease);
    op_argf(op, "%lld", (long long)d->started_ms);
    op_arg(op, d->job.priority_hi ? "hi" : "normal");
    op_argf(op, "%d", d->job.max_attempts);
    op_argf(op, "%d", q->cfg.redelay_ms);
    op_arg(op, d->job.reply_to);
    op_argf(op, "%ld", d->job.result_ttl_s);
    op_arg(op, d->job.type == QUEUE_JOB_SYNTHESIZE ? "synthesize" : "quantize");
    op_arg(op, same_id_held ? "1" : "0");
    op_submit(q, op);
}

/* ---- fetch -------------------------------------------------------------------------------- */

static int raw_known(queue *q, const char *s, size_t n, unsigned char *used, int nused) {
    int i = 0;
    for (int pass = 0; pass < 2; pass++)
        for (queue_delivery *d = pass ? q->claiming : q->held; d; d = d->next, i++)
            if (i < nused && !used[i] &&
                ((d->raw_len == n && !memcmp(d->raw, s, n)) ||
                 (d->orig_raw && d->orig_len == n && !memcmp(d->orig_raw, s, n)))) {
                used[i] = 1;
                return 1;
            }
    return 0;
}

static void on_rescan(qconn *c, redisReply *r, void *priv) {
    (void)priv;
    queue *q = c->owner;
    q->fetch_inflight = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        q->need_rescan = 1;
        q->fetch_retry_at = qconn_mono_ms() + 500;
        return;
    }
    q->need_rescan = 0;
    int nused = q->n_held + q->n_claiming;
    unsigned char *used = calloc((size_t)nused + 1, 1);
    size_t found = 0;
    for (size_t i = r->elements; i-- > 0;) { /* oldest (right end) first */
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING) continue;
        if (used && raw_known(q, e->str, (size_t)e->len, used, nused)) continue;
        found++;
        handle_raw(q, e->str, (size_t)e->len);
    }
    free(used);
    if (found) qlog("recovered %zu job(s) from this worker's processing list", found);
    fetch_pump(q);
}

static void on_fetched(qconn *c, redisReply *r, void *priv) {
    queue *q = c->owner;
    int was_hi = priv != NULL;
    q->fetch_inflight = 0;
    if (!r) {
        q->need_rescan = 1; /* the move may have happened: look at our list after reconnect */
        return;
    }
    q->stats.last_fetch_ms = queue_now_ms();
    if (r->type == REDIS_REPLY_ERROR) {
        qlog("fetch: %s (retrying)", r->str); /* e.g. -UNBLOCKED on failover */
        q->fetch_retry_at = qconn_mono_ms() + 500;
        return;
    }
    if (r->type == REDIS_REPLY_STRING) {
        handle_raw(q, r->str, (size_t)r->len);
        fetch_pump(q);
        return;
    }
    /* nil: the hi queue was empty (go on with BLMOVE) or BLMOVE timed out (start over). */
    if (was_hi && q->fetch_on && !q->closing) {
        char src[128], dst[256], block[16];
        const char *argv[6] = {"BLMOVE", queue_key(q, 0, src, sizeof src), dst, "RIGHT", "LEFT",
                               block};
        snprintf(dst, sizeof dst, "%sproc:%s", q->prefix, q->wid);
        snprintf(block, sizeof block, "%d", q->cfg.block_timeout_s);
        if (qconn_send(&q->fetch, on_fetched, NULL, 6, argv, NULL) == 0) q->fetch_inflight = 1;
        return;
    }
    fetch_pump(q);
}

/* Starts the next fetch step when there is room: rescan after reconnect, else LMOVE from the
 * hi queue and, when it is empty, BLMOVE from the normal queue. */
static void fetch_pump(queue *q) {
    if (q->closing || q->fatal || q->fetch_inflight || !q->ready || q->fetch.state != QCONN_UP) return;
    if (qconn_mono_ms() < q->fetch_retry_at) return;
    char proc[256];
    snprintf(proc, sizeof proc, "%sproc:%s", q->prefix, q->wid);
    if (q->need_rescan) {
        const char *argv[4] = {"LRANGE", proc, "0", "-1"};
        if (qconn_send(&q->fetch, on_rescan, NULL, 4, argv, NULL) == 0) q->fetch_inflight = 1;
        return;
    }
    if (!q->fetch_on || q->n_held + q->n_claiming >= q->cfg.capacity) return;
    char src[128];
    const char *argv[5] = {"LMOVE", queue_key(q, 1, src, sizeof src), proc, "RIGHT", "LEFT"};
    if (qconn_send(&q->fetch, on_fetched, q, 5, argv, NULL) == 0) q->fetch_inflight = 1;
}

static void on_client_id(qconn *c, redisReply *r, void *priv) {
    (void)priv;
    queue *q = c->owner;
    q->fetch_client_id = r && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
}

static void fetch_up(qconn *c) {
    queue *q = c->owner;
    const char *argv[2] = {"CLIENT", "ID"};
    q->fetch_client_id = 0;
    qconn_send(c, on_client_id, NULL, 2, argv, NULL);
    q->fetch_inflight = 0;
    q->need_rescan = 1;
    fetch_pump(q);
}

static void fetch_down(qconn *c) {
    queue *q = c->owner;
    q->fetch_inflight = 0;
    q->need_rescan = 1;
    q->stats.reconnects++;
}

/* ---- cmd: version check, scripts ---------------------------------------------------------- */

static void heartbeat(queue *q);

static void on_script_loaded(qconn *c, redisReply *r, void *priv) {
    queue *q = c->owner;
    int which = (int)(intptr_t)priv;
    if (!r) return; /* connection lost; cmd_up runs again on reconnect */
    if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        qlog("SCRIPT LOAD %s failed: %s", qscript_name(which),
             r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        qconn_reset(&q->cmd, "script load failed");
        return;
    }
    memcpy(q->sha[which], r->str, 40);
    q->sha[which][40] = '\0';
    if (++q->scripts_loaded == QS_COUNT && !q->fatal) {
        q->ready = 1;
        /* Register (SADD workers + hb) before anything is fetched: the reaper only looks at
         * registered workers, so a job claimed by an unregistered one could be orphaned. */
        q->next_heartbeat = qconn_mono_ms() + q->cfg.heartbeat_ms;
        heartbeat(q);
        flush_waiting(q);
        fetch_pump(q);
    }
}

/* INFO: refuse Redis < 6.2 (BLMOVE, LMOVE); warn once about eviction and persistence. */
static void on_info(qconn *c, redisReply *r, void *priv) {
    (void)priv;
    queue *q = c->owner;
    static int warned;
    if (!r || r->type != REDIS_REPLY_STRING) return;
    const char *v = strstr(r->str, "redis_version:");
    int major = 0, minor = 0;
    if (v) sscanf(v + 14, "%d.%d", &major, &minor);
    if (major < 6 || (major == 6 && minor < 2)) {
        char msg[160];
        snprintf(msg, sizeof msg, "voxq needs Redis >= 6.2 (BLMOVE); the server is %d.%d", major,
                 minor);
        q->fatal = 1;
        if (q->cb.on_fatal) q->cb.on_fatal(q, msg, q->data);
        return;
    }
    if (!warned) {
        warned = 1;
        const char *pol = strstr(r->str, "maxmemory_policy:");
        if (pol && strncmp(pol + 17, "noeviction", 10) != 0)
            qlog("warning: Redis maxmemory-policy is not noeviction: queue keys may be evicted");
        const char *aof = strstr(r->str, "aof_enabled:");
        if (aof && aof[12] == '0')
            qlog("warning: Redis AOF is off: a Redis crash can lose queued jobs");
    }
}

static void cmd_up(qconn *c) {
    queue *q = c->owner;
    q->ready = 0;
    q->scripts_loaded = 0;
    const char *info[] = {"INFO"};
    qconn_send(c, on_info, NULL, 1, info, NULL);
    for (int i = 0; i < QS_COUNT; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", qscript_source(i)};
        qconn_send(c, on_script_loaded, (void *)(intptr_t)i, 3, argv, NULL);
    }
}

static void cmd_down(qconn *c) {
    queue *q = c->owner;
    q->ready = 0;
    q->stats.reconnects++;
}

/* ---- sub: cancel events ------------------------------------------------------------------- */

static void cancel_id(queue *q, const char *id) {
    queue_delivery *d = find_held(q, id);
    if (!d || d->cancel_requested) return;
    d->cancel_requested = 1;
    qlog("job %s: cancel requested", id);
    if (q->cb.on_cancel) q->cb.on_cancel(q, d, q->data);
}

static void on_sub_message(qconn *c, redisReply *r, void *priv) {
    (void)priv;
    queue *q = c->owner;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3) return;
    if (r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "message"))
        return;
    if (r->element[2]->type == REDIS_REPLY_STRING) cancel_id(q, r->element[2]->str);
}

static void sub_up(qconn *c) {
    queue *q = c->owner;
    char chan[128];
    snprintf(chan, sizeof chan, "%sev:cancel", q->prefix);
    qconn_subscribe(c, on_sub_message, NULL, chan);
}

/* ---- heartbeat and reaper ----------------------------------------------------------------- */

static void on_heartbeat(queue *q, redisReply *r, void *priv) {
    (void)priv;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5) return;
    redisReply *ids = r->element[0];
    for (size_t i = 0; ids->type == REDIS_REPLY_ARRAY && i < ids->elements; i++)
        if (ids->element[i]->type == REDIS_REPLY_STRING) cancel_id(q, ids->element[i]->str);
    q->stats.depth_normal = r->element[1]->integer;
    q->stats.depth_hi = r->element[2]->integer;
    q->stats.depth_delayed = r->element[3]->integer;
    q->stats.depth_dead = r->element[4]->integer;
}

static void heartbeat(queue *q) {
    if (q->cb.healthy && !q->cb.healthy(q->data)) {
        if (!q->warned_unhealthy)
            qlog("engine stalled: heartbeat withheld so the lease lapses");
        q->warned_unhealthy = 1;
        return;
    }
    q->warned_unhealthy = 0;
    qop *op = script_op(q, QS_HEARTBEAT, on_heartbeat, NULL, 0);
    op_arg(op, q->wid);
    op_argf(op, "%d", q->cfg.lease_ms);
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    op_argf(op, "{\"host\":\"%s\",\"pid\":%d,\"jobs\":%d,\"version\":\"%s\"}", host,
            (int)getpid(), q->n_held, VOXQ_VERSION);
    for (queue_delivery *d = q->held; d; d = d->next) op_arg(op, d->job.id);
    op_submit(q, op);
}

static void on_reaped(queue *q, redisReply *r, void *priv) {
    (void)priv;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3) return;
    long long moved = r->element[0]->integer, promoted = r->element[1]->integer;
    long long dead = r->element[2]->integer;
    if (moved > 0) {
        q->stats.recovered += moved;
        qlog("reaper: returned %lld job(s) of dead workers (%lld poison)", moved, dead);
    }
    (void)promoted;
}

static void reap(queue *q) {
    qop *op = script_op(q, QS_REAP, on_reaped, NULL, 0);
    op_arg(op, q->wid);
    op_argf(op, "%lld", (long long)queue_now_ms());
    op_argf(op, "%d", q->cfg.max_recoveries);
    op_arg(op, "100");
    op_argf(op, "%d", q->cfg.reaper_ms > 150 ? q->cfg.reaper_ms - 50 : 100);
    op_arg(op, "86400");
    op_submit(q, op);
}

static void on_tick(uv_timer_t *t) {
    queue *q = t->data;
    int64_t now = qconn_mono_ms();
    if (q->closing || q->fatal) return;
    flush_waiting(q);
    if (!q->ready) return;
    if (now >= q->next_heartbeat) {
        q->next_heartbeat = now + q->cfg.heartbeat_ms;
        heartbeat(q);
    }
    if (now >= q->next_reap) {
        q->next_reap = now + q->cfg.reaper_ms;
        reap(q);
    }
    fetch_pump(q);
}

/* ---- public ------------------------------------------------------------------------------- */

void queue_config_default(queue_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->redis_url = "redis://127.0.0.1:6379";
    cfg->prefix = "voxq:";
    cfg->capacity = 1;
    cfg->block_timeout_s = 2;
    cfg->connect_timeout_ms = 3000;
    cfg->command_timeout_ms = 10000;
    cfg->lease_ms = 20000;
    cfg->reaper_ms = 5000;
    cfg->retry_base_ms = 5000;
    cfg->retry_cap_ms = 600000;
    cfg->redelay_ms = 30000;
    cfg->max_recoveries = 2;
    cfg->fetch_enabled = 1;
    queue_job_limits_default(&cfg->limits);
}

int queue_new(uv_loop_t *loop, const queue_config *cfg, const queue_callbacks *cb, void *data,
              queue **out, char errbuf[256]) {
    *out = NULL;
    if (!cb || !cb->on_job) {
        snprintf(errbuf, 256, "queue_new: on_job callback is required");
        return -1;
    }
    if (strlen(cfg->prefix) >= 48) {
        snprintf(errbuf, 256, "queue prefix '%s' is longer than 47 bytes", cfg->prefix);
        return -1;
    }
    queue *q = calloc(1, sizeof *q);
    if (!q) {
        snprintf(errbuf, 256, "out of memory");
        return -1;
    }
    q->loop = loop;
    q->cfg = *cfg;
    q->cb = *cb;
    q->data = data;
    if (q->cfg.heartbeat_ms <= 0) q->cfg.heartbeat_ms = q->cfg.lease_ms / 4;
    if (q->cfg.capacity < 1) q->cfg.capacity = 1;
    if (q->cfg.block_timeout_s < 1) q->cfg.block_timeout_s = 1;
    snprintf(q->prefix, sizeof q->prefix, "%s", cfg->prefix);
    if (cfg->worker_id && cfg->worker_id[0]) {
        snprintf(q->wid, sizeof q->wid, "%s", cfg->worker_id);
    } else {
        char host[64] = "", hex[33];
        gethostname(host, sizeof host - 1);
        queue_random_hex(hex);
        snprintf(q->wid, sizeof q->wid, "%s:%d:%.8s", host, (int)getpid(), hex);
    }
    if (qaddr_parse(cfg->redis_url, &q->addr, errbuf) != 0) {
        free(q);
        return -1;
    }
    qconn *conns[3] = {&q->fetch, &q->cmd, &q->sub};
    const char *names[3] = {"fetch", "cmd", "sub"};
    for (int i = 0; i < 3; i++) {
        qconn_init(conns[i], loop, names[i], &q->addr, q);
        conns[i]->connect_timeout_ms = cfg->connect_timeout_ms;
        conns[i]->watchdog_ms = cfg->command_timeout_ms;
    }
    q->fetch.watchdog_ms = cfg->block_timeout_s * 1000 + 3000;
    q->fetch.on_up = fetch_up;
    q->fetch.on_down = fetch_down;
    q->cmd.on_up = cmd_up;
    q->cmd.on_down = cmd_down;
    q->sub.on_up = sub_up;
    q->sub.watchdog_ms = 1 << 30; /* a subscription waits for messages by design */
    uv_timer_init(loop, &q->tick);
    q->tick.data = q;
    q->fetch_on = cfg->fetch_enabled;
    *out = q;
    return 0;
}

void queue_start(queue *q) {
    qlog("worker %s: redis %s, prefix '%s'", q->wid, q->cfg.redis_url, q->prefix);
    qconn_start(&q->cmd);
    qconn_start(&q->fetch);
    qconn_start(&q->sub);
    uv_timer_start(&q->tick, on_tick, TICK_MS, TICK_MS);
}

void queue_stop_fetching(queue *q) {
    q->fetch_on = 0;
    /* Wake a BLMOVE in flight (it answers nil); where ACLs forbid CLIENT UNBLOCK it returns
     * within block_timeout_s anyway. A job it brings is still claimed and handed over. */
    if (q->fetch_inflight && q->fetch_client_id > 0) {
        qop *op = op_new(q, -1, NULL, NULL, 0);
        if (!op) return;
        op_arg(op, "CLIENT");
        op_arg(op, "UNBLOCK");
        op_argf(op, "%lld", q->fetch_client_id);
        op_submit(q, op);
    }
}

void queue_resume_fetching(queue *q) {
    q->fetch_on = 1;
    fetch_pump(q);
}

static void on_handle_closed(uv_handle_t *h) {
    queue *q = h->data;
    if (++q->closed_handles == 4 && q->cb.on_closed) q->cb.on_closed(q, q->data);
}

static void conn_closed(qconn *c) { on_handle_closed((uv_handle_t *)&((queue *)c->owner)->tick); }

static void close_all(queue *q) {
    if (q->closing == 2) return;
    q->closing = 2;
    q->fetch.on_closed = q->cmd.on_closed = q->sub.on_closed = conn_closed;
    qconn_close(&q->fetch);
    qconn_close(&q->cmd);
    qconn_close(&q->sub);
    uv_timer_stop(&q->tick);
    uv_close((uv_handle_t *)&q->tick, on_handle_closed);
}

static void on_deregistered(queue *q, redisReply *r, void *priv) {
    (void)priv;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        qlog("exiting with %d job(s) still in the processing list: the reaper will return them",
             q->n_held);
    close_all(q);
}

void queue_close(queue *q) {
    if (q->closing) return;
    q->fetch_on = 0;
    if (!q->ready) {
        q->closing = 1;
        close_all(q);
        return;
    }
    qop *op = script_op(q, QS_DEREGISTER, on_deregistered, NULL, 0);
    op_arg(op, q->wid);
    op_submit(q, op);
    q->closing = 1;
}

void queue_free(queue *q) {
    if (!q) return;
    while (q->waiting) {
        qop *op = q->waiting;
        q->waiting = op->next;
        op_free(op);
    }
    for (int pass = 0; pass < 2; pass++) {
        queue_delivery *d = pass ? q->claiming : q->held;
        while (d) {
            queue_delivery *next = d->next;
            delivery_free(d);
            d = next;
        }
    }
    free(q);
}

/* ---- transitions of a held delivery ------------------------------------------------------- */

static void on_finished(queue *q, redisReply *r, void *priv) {
    queue_delivery *d = priv;
    list_remove(&q->held, d);
    q->n_held--;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        qlog("job %s: lease lost (another worker owns it now); result not written", d->job.id);
    delivery_free(d);
    fetch_pump(q);
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
        state_changed(q, d->job.id, retrying ? "retrying" : "failed");
    }
    on_finished(q, r && r->type == REDIS_REPLY_ARRAY ? NULL : r, priv);
}

/* Starts a transition of d; returns the op with ARGV wid, raw, id, lease added. */
static qop *transition(queue *q, queue_delivery *d, int script, qop_done done) {
    d->finishing = 1;
    qop *op = script_op(q, script, done, d, 1);
    op_arg(op, q->wid);
    op_argn(op, d->raw, d->raw_len);
    op_arg(op, d->job.id);
    op_arg(op, d->lease);
    return op;
}

void queue_ack(queue *q, queue_delivery *d, const queue_result *r) {
    qop *op = transition(q, d, QS_FINISH, on_finished);
    op_argf(op, "%lld", (long long)queue_now_ms());
    op_arg(op, "succeeded");
    op_argf(op, "%ld", d->job.result_ttl_s);
    op_arg(op, d->job.reply_to);
    op_arg(op, "1");
    if (r->output_path) {
        op_arg(op, "output_path");
        op_arg(op, r->output_path);
    }
    op_arg(op, "duration_ms");
    op_argf(op, "%.1f", r->duration_ms);
    op_arg(op, "sample_rate");
    op_argf(op, "%d", r->sample_rate);
    op_arg(op, "bytes");
    op_argf(op, "%lld", (long long)r->bytes);
    if (r->sha256) {
        op_arg(op, "sha256");
        op_arg(op, r->sha256);
    }
    op_arg(op, "steps_per_s");
    op_argf(op, "%.2f", r->steps_per_s);
    op_arg(op, "run_ms");
    op_argf(op, "%.1f", r->run_ms);
    if (r->extra_json) {
        op_arg(op, "artifact");
        op_arg(op, r->extra_json);
    }
    q->stats.acked++;
    state_changed(q, d->job.id, "succeeded");
    op_submit(q, op);
}

void queue_cancelled(queue *q, queue_delivery *d) {
    qop *op = transition(q, d, QS_FINISH, on_finished);
    op_argf(op, "%lld", (long long)queue_now_ms());
    op_arg(op, "cancelled");
    op_argf(op, "%ld", d->job.result_ttl_s);
    op_arg(op, d->job.reply_to);
    op_arg(op, "0");
    q->stats.cancelled++;
    state_changed(q, d->job.id, "cancelled");
    op_submit(q, op);
}

void queue_fail(queue *q, queue_delivery *d, const char *code, const char *message,
                int permanent) {
    qop *op = transition(q, d, QS_FAIL, on_failed);
    op_argf(op, "%lld", (long long)queue_now_ms());
    op_arg(op, code);
    op_arg(op, message);
    op_arg(op, permanent ? "1" : "0");
    op_argf(op, "%d", d->job.max_attempts);
    op_argf(op, "%d", q->cfg.retry_base_ms);
    op_argf(op, "%d", q->cfg.retry_cap_ms);
    char hex[33];
    queue_random_hex(hex);
    op_argf(op, "%.4f", (double)strtoul(hex + 24, NULL, 16) / 4294967296.0);
    op_argf(op, "%ld", d->job.result_ttl_s);
    op_arg(op, d->job.reply_to);
    envelope_raw(op, d->raw, d->raw_len);
    op_submit(q, op);
}

void queue_requeue(queue *q, queue_delivery *d) {
    qop *op = transition(q, d, QS_REQUEUE, on_finished);
    char key[128];
    op_arg(op, queue_key(q, d->job.priority_hi, key, sizeof key));
    q->stats.requeued++;
    state_changed(q, d->job.id, "queued");
    op_submit(q, op);
}

void queue_redelay(queue *q, queue_delivery *d, const char *state) {
    qop *op = transition(q, d, QS_REDELAY, on_finished);
    op_argf(op, "%lld", (long long)queue_now_ms());
    op_argf(op, "%d", q->cfg.redelay_ms);
    op_arg(op, state);
    state_changed(q, d->job.id, state);
    op_submit(q, op);
}

void queue_progress(queue *q, queue_delivery *d, double progress) {
    qop *op = op_new(q, -1, NULL, NULL, 0);
    if (!op) return;
    char key[256];
    snprintf(key, sizeof key, "%sjob:%s", q->prefix, d->job.id);
    op_arg(op, "HSET");
    op_arg(op, key);
    op_arg(op, "progress");
    op_argf(op, "%.3f", progress);
    op_submit(q, op);
    op = op_new(q, -1, NULL, NULL, 0);
    if (!op) return;
    op_arg(op, "PUBLISH");
    op_argf(op, "%sev:%s", q->prefix, d->job.id);
    op_argf(op, "{\"id\":\"%s\",\"state\":\"running\",\"progress\":%.3f}", d->job.id, progress);
    op_submit(q, op);
}

void queue_enqueue(queue *q, const char *json, int hi) {
    qop *op = op_new(q, -1, NULL, NULL, 1);
    if (!op) return;
    char key[128];
    op_arg(op, "LPUSH");
    op_arg(op, queue_key(q, hi, key, sizeof key));
    op_arg(op, json);
    op_submit(q, op);
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
    qop *op = script >= 0 ? script_op(q, script, on_lock_reply, lc, 0)
                          : op_new(q, -1, on_lock_reply, lc, 0);
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
    op_arg(op, "SET");
    op_argf(op, "%slock:%s", q->prefix, name);
    op_arg(op, token);
    op_arg(op, "NX");
    op_arg(op, "PX");
    op_argf(op, "%d", ttl_ms);
    op_submit(q, op);
}

void queue_lock_renew(queue *q, const char *name, const char *token, int ttl_ms,
                      queue_lock_cb cb, void *data) {
    qop *op = lock_op(q, QS_LOCK_RENEW, cb, data);
    if (!op) return;
    op_arg(op, name);
    op_arg(op, token);
    op_argf(op, "%d", ttl_ms);
    op_submit(q, op);
}

void queue_lock_release(queue *q, const char *name, const char *token, queue_lock_cb cb,
                        void *data) {
    qop *op = lock_op(q, QS_LOCK_RELEASE, cb, data);
    if (!op) return;
    op_arg(op, name);
    op_arg(op, token);
    op_submit(q, op);
}

void queue_get_stats(const queue *q, queue_stats *s) {
    *s = q->stats;
    s->connected = q->fetch.state == QCONN_UP && q->cmd.state == QCONN_UP &&
                   q->sub.state == QCONN_UP && q->ready;
    s->held = q->n_held;
}

const char *queue_worker_id(const queue *q) { return q->wid; }

int queue_busy(const queue *q) { return q->n_held + q->n_claiming + (q->fetch_inflight ? 1 : 0); }
