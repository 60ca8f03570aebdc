/* internal.h - private to queue/: the libuv adapter for hiredis async (adapter.c), one watched
 * connection (conn.c), the Lua scripts (scripts.c), and the client's state and command queue
 * shared by client.c, op.c and result.c. Not included outside queue/. */
#ifndef VOXQ_QUEUE_INTERNAL_H
#define VOXQ_QUEUE_INTERNAL_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "queue/queue.h"

/* Attaches ac to loop with our adapter (spec/queue.md §4.4: unlike 0.14.1's adapters/libuv.h it
 * hands socket errors to hiredis, so refused connects and resets reach the callbacks). */
int qadapter_attach(redisAsyncContext *ac, uv_loop_t *loop);

/* Where Redis is: TCP (numeric address, resolved once at start) or a Unix socket. */
typedef struct qaddr {
    char host[64];
    int port;
    char unix_path[108];
    char password[128];
    int db;
} qaddr;

/* Parses redis://[[user]:password@]host[:port][/db] or unix:///path; resolves host to a
 * numeric address (getaddrinfo, once) because hiredis resolves synchronously on every connect. */
int qaddr_parse(const char *url, qaddr *a, char errbuf[256]);

enum { QCONN_DOWN, QCONN_CONNECTING, QCONN_UP, QCONN_CLOSED };

typedef struct qconn qconn;
/* Reply callback: r is NULL when the connection died with the command outstanding (outcome
 * unknown). r is valid only during the call. */
typedef void (*qconn_reply_fn)(qconn *c, redisReply *r, void *priv);

struct qconn {
    uv_loop_t *loop;
    const char *name;           /* "fetch", "cmd", "sub": for logs */
    const qaddr *addr;
    redisAsyncContext *ac;
    int state;
    int64_t state_since;        /* monotonic ms */
    int failures;               /* consecutive failed connects (backoff, quiet logs) */
    int64_t next_connect_at;
    int pending;                /* commands sent, replies outstanding */
    int64_t busy_since;         /* last progress while pending > 0 */
    int connect_timeout_ms;
    int watchdog_ms;            /* a reply must come within this while pending > 0 */
    long long reconnects;
    uv_timer_t timer;
    int timer_closed;
    void (*on_up)(qconn *c);    /* connected (AUTH/SELECT already queued) */
    void (*on_down)(qconn *c);  /* lost; a reconnect is scheduled */
    void (*on_closed)(qconn *c);
    void *owner;
    qconn_reply_fn sub_fn;      /* subscription messages (qconn_subscribe) */
    void *sub_priv;
};

int qconn_init(qconn *c, uv_loop_t *loop, const char *name, const qaddr *addr, void *owner);
void qconn_start(qconn *c);
/* Sends a command; returns 0, or -1 when the connection is not up (nothing was sent). */
int qconn_send(qconn *c, qconn_reply_fn fn, void *priv, int argc, const char **argv,
               const size_t *lens);
/* SUBSCRIBE channel; fn gets the confirmation and then every message (r NULL when lost). */
int qconn_subscribe(qconn *c, qconn_reply_fn fn, void *priv, const char *channel);
/* Drops the connection now (pending callbacks get NULL) and schedules a reconnect. */
void qconn_reset(qconn *c, const char *why);
/* Closes for good; on_closed runs once the timer handle is closed. */
void qconn_close(qconn *c);
int64_t qconn_mono_ms(void);
/* The adapter saw the socket readable: a long reply (a 50 MB element) is progress, not a hang. */
void qconn_activity(redisAsyncContext *ac);

/* Lua scripts, one per state transition (scripts.c). */
enum {
    QS_CLAIM,
    QS_FINISH,
    QS_FAIL,
    QS_REJECT,
    QS_REQUEUE,
    QS_REDELAY,
    QS_HEARTBEAT,
    QS_REAP,
    QS_DEREGISTER,
    QS_LOCK_RENEW,
    QS_LOCK_RELEASE,
    QS_COUNT
};
const char *qscript_source(int which);
const char *qscript_name(int which);

#define qlog queue_log

/* ---- the client's state and its command queue (client.c, op.c, result.c) ---- */

#define QUEUE_TICK_MS 100

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

qop *qop_new(queue *q, int script, qop_done done, void *priv, int retry);
/* A script op with ARGV[1] = the prefix already added. */
qop *qop_script(queue *q, int script, qop_done done, void *priv, int retry);
void qop_free(qop *op);
/* Appends one argument (copied); a failure marks the op (argc = -1), reported on submit. */
void qop_argn(qop *op, const char *s, size_t n);
void qop_arg(qop *op, const char *s);
void qop_argf(qop *op, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sends op on cmd now, or queues it until cmd is ready (ops without retry are answered NULL
 * when cmd is down). Ownership passes to the queue. */
void qop_submit(queue *q, qop *op);
/* Sends what waited for the connection, in order. */
void qop_flush(queue *q);

/* Shared by client.c and result.c. */
void qdel_remove(queue_delivery **head, queue_delivery *d);
void qdel_free(queue_delivery *d);
const char *qkey_jobs(queue *q, int hi, char *buf, size_t cap);
void qstate_changed(queue *q, const char *id, const char *state);
/* Adds the raw payload cut to 4 KiB and made printable UTF-8 (for a dead-letter envelope). */
void qenvelope_raw(qop *op, const char *raw, size_t len);
void qfetch_pump(queue *q);

#endif
