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

/* ---- deliveries --------------------------------------------------------------------------- */

void qdel_remove(queue_delivery **head, queue_delivery *d) {
    for (queue_delivery **p = head; *p; p = &(*p)->next)
        if (*p == d) {
            *p = d->next;
            d->next = NULL;
            return;
        }
}

void qdel_free(queue_delivery *d) {
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

const char *qkey_jobs(queue *q, int hi, char *buf, size_t cap) {
    snprintf(buf, cap, "%sjobs%s", q->prefix, hi ? ":hi" : "");
    return buf;
}

void qstate_changed(queue *q, const char *id, const char *state) {
    if (q->cb.on_state) q->cb.on_state(q, id, state, q->data);
}

static void on_rejected(queue *q, redisReply *r, void *priv) {
    queue_delivery *d = priv;
    qdel_remove(&q->claiming, d);
    q->n_claiming--;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        q->stats.rejected++;
        if (!d->job.id_assigned) qstate_changed(q, d->job.id, "rejected");
    }
    qdel_free(d);
    qfetch_pump(q);
}

static void on_claimed(queue *q, redisReply *r, void *priv) {
    queue_delivery *d = priv;
    qdel_remove(&q->claiming, d);
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
        qstate_changed(q, d->job.id, "running");
        if (d->job.ignored[0])
            qlog("job %s: ignoring unknown fields: %s", d->job.id, d->job.ignored);
        q->cb.on_job(q, d, q->data);
    } else {
        if (!strcmp(outcome, "done"))
            qlog("job %s: already succeeded; result re-emitted (duplicate delivery)", d->job.id);
        else if (!strcmp(outcome, "cancelled")) {
            q->stats.cancelled++;
            qstate_changed(q, d->job.id, "cancelled");
            qlog("job %s: cancelled before start", d->job.id);
        } else if (!strcmp(outcome, "dropped"))
            qlog("job %s: a copy of a job being cancelled on another worker; dropped", d->job.id);
        else if (!strcmp(outcome, "delayed"))
            qlog("job %s: running elsewhere; duplicate re-delayed", d->job.id);
        else if (!strcmp(outcome, "gone"))
            qlog("job %s: no longer in this worker's processing list", d->job.id);
        else
            qlog("job %s: claim failed", d->job.id);
        qdel_free(d);
    }
    qfetch_pump(q);
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
        qop *op = qop_script(q, QS_REJECT, on_rejected, d, 1);
        qop_arg(op, q->wid);
        qop_argn(op, raw, len);
        qenvelope_raw(op, raw, len);
        qop_arg(op, d->job.id_assigned ? "" : d->job.id);
        qop_arg(op, err.code);
        qop_arg(op, err.message);
        qop_argf(op, "%lld", (long long)queue_now_ms());
        qop_argf(op, "%ld", d->job.result_ttl_s); /* the job's when it gave a valid one */
        qop_arg(op, d->job.reply_to); /* parsed first, so known unless it was the bad field */
        qop_submit(q, op);
        return;
    }
    queue_random_hex(d->lease);
    d->started_ms = queue_now_ms();
    /* Another copy of this id held or being claimed here: never run both; delay this one. */
    int same_id_held = find_held(q, d->job.id) != NULL;
    for (queue_delivery *o = q->claiming; o && !same_id_held; o = o->next)
        same_id_held = o != d && o->job.id[0] && !strcmp(o->job.id, d->job.id);
    qop *op = qop_script(q, QS_CLAIM, on_claimed, d, 1);
    qop_arg(op, q->wid);
    qop_argn(op, raw, len);
    /* The claim stores the canonical payload in place of raw (an assigned id written in,
     * repeated keys dropped), so every script and every retry or recovery reads this job. */
    char *canon;
    size_t canon_len;
    if (queue_job_canonical(raw, len, &d->job, &canon, &canon_len) != 0) {
        op->argc = -1;
    } else if (canon) {
        if (d->job.duplicate_keys)
            qlog("job %s: %d repeated key(s) ignored (the first of each wins); kept without them",
                 d->job.id, d->job.duplicate_keys);
        qop_argn(op, canon, canon_len);
        d->orig_raw = d->raw; /* still what the list holds until the claim runs */
        d->orig_len = d->raw_len;
        d->raw = canon;
        d->raw_len = canon_len;
    } else {
        qop_arg(op, "");
    }
    qop_arg(op, d->job.id);
    qop_arg(op, d->lease);
    qop_argf(op, "%lld", (long long)d->started_ms);
    qop_arg(op, d->job.priority_hi ? "hi" : "normal");
    qop_argf(op, "%d", d->job.max_attempts);
    qop_argf(op, "%d", q->cfg.redelay_ms);
    qop_arg(op, d->job.reply_to);
    qop_argf(op, "%ld", d->job.result_ttl_s);
    qop_arg(op, d->job.type == QUEUE_JOB_SYNTHESIZE ? "synthesize" : "quantize");
    qop_arg(op, same_id_held ? "1" : "0");
    qop_submit(q, op);
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
    qfetch_pump(q);
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
        qfetch_pump(q);
        return;
    }
    /* nil: the hi queue was empty (go on with BLMOVE) or BLMOVE timed out (start over). */
    if (was_hi && q->fetch_on && !q->closing) {
        char src[128], dst[256], block[16];
        const char *argv[6] = {"BLMOVE", qkey_jobs(q, 0, src, sizeof src), dst, "RIGHT", "LEFT",
                               block};
        snprintf(dst, sizeof dst, "%sproc:%s", q->prefix, q->wid);
        snprintf(block, sizeof block, "%d", q->cfg.block_timeout_s);
        if (qconn_send(&q->fetch, on_fetched, NULL, 6, argv, NULL) == 0) q->fetch_inflight = 1;
        return;
    }
    qfetch_pump(q);
}

/* Starts the next fetch step when there is room: rescan after reconnect, else LMOVE from the
 * hi queue and, when it is empty, BLMOVE from the normal queue. */
void qfetch_pump(queue *q) {
    if (q->closing || q->fatal || q->fetch_inflight || !q->ready || q->fetch.state != QCONN_UP)
        return;
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
    const char *argv[5] = {"LMOVE", qkey_jobs(q, 1, src, sizeof src), proc, "RIGHT", "LEFT"};
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
    qfetch_pump(q);
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
        qop_flush(q);
        qfetch_pump(q);
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
    qop *op = qop_script(q, QS_HEARTBEAT, on_heartbeat, NULL, 0);
    qop_arg(op, q->wid);
    qop_argf(op, "%d", q->cfg.lease_ms);
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    qop_argf(op, "{\"host\":\"%s\",\"pid\":%d,\"jobs\":%d,\"version\":\"%s\"}", host,
            (int)getpid(), q->n_held, VOXQ_VERSION);
    for (queue_delivery *d = q->held; d; d = d->next) qop_arg(op, d->job.id);
    qop_submit(q, op);
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
    qop *op = qop_script(q, QS_REAP, on_reaped, NULL, 0);
    qop_arg(op, q->wid);
    qop_argf(op, "%lld", (long long)queue_now_ms());
    qop_argf(op, "%d", q->cfg.max_recoveries);
    qop_arg(op, "100");
    qop_argf(op, "%d", q->cfg.reaper_ms > 150 ? q->cfg.reaper_ms - 50 : 100);
    qop_argf(op, "%d", QUEUE_RESULT_TTL_S);
    qop_argf(op, "%ld", q->cfg.limits.result_ttl_cap_s);
    qop_submit(q, op);
}

static void on_tick(uv_timer_t *t) {
    queue *q = t->data;
    int64_t now = qconn_mono_ms();
    if (q->closing || q->fatal) return;
    qop_flush(q);
    if (!q->ready) return;
    if (now >= q->next_heartbeat) {
        q->next_heartbeat = now + q->cfg.heartbeat_ms;
        heartbeat(q);
    }
    if (now >= q->next_reap) {
        q->next_reap = now + q->cfg.reaper_ms;
        reap(q);
    }
    qfetch_pump(q);
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
    q->cfg.limits.key_prefix = q->prefix; /* reply_to may not name our own keys */
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
    uv_timer_start(&q->tick, on_tick, QUEUE_TICK_MS, QUEUE_TICK_MS);
}

void queue_stop_fetching(queue *q) {
    q->fetch_on = 0;
    /* Wake a BLMOVE in flight (it answers nil); where ACLs forbid CLIENT UNBLOCK it returns
     * within block_timeout_s anyway. A job it brings is still claimed and handed over. */
    if (q->fetch_inflight && q->fetch_client_id > 0) {
        qop *op = qop_new(q, -1, NULL, NULL, 0);
        if (!op) return;
        qop_arg(op, "CLIENT");
        qop_arg(op, "UNBLOCK");
        qop_argf(op, "%lld", q->fetch_client_id);
        qop_submit(q, op);
    }
}

void queue_resume_fetching(queue *q) {
    q->fetch_on = 1;
    qfetch_pump(q);
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
    qop *op = qop_script(q, QS_DEREGISTER, on_deregistered, NULL, 0);
    qop_arg(op, q->wid);
    qop_submit(q, op);
    q->closing = 1;
}

void queue_free(queue *q) {
    if (!q) return;
    while (q->waiting) {
        qop *op = q->waiting;
        q->waiting = op->next;
        qop_free(op);
    }
    for (int pass = 0; pass < 2; pass++) {
        queue_delivery *d = pass ? q->claiming : q->held;
        while (d) {
            queue_delivery *next = d->next;
            qdel_free(d);
            d = next;
        }
    }
    free(q);
}

void queue_get_stats(const queue *q, queue_stats *s) {
    *s = q->stats;
    s->connected = q->fetch.state == QCONN_UP && q->cmd.state == QCONN_UP &&
                   q->sub.state == QCONN_UP && q->ready;
    s->held = q->n_held;
}

const char *queue_worker_id(const queue *q) { return q->wid; }

int queue_busy(const queue *q) {
    return q->n_held + q->n_claiming + (q->fetch_inflight ? 1 : 0);
}
