/* internal.h - private to queue/: the libuv adapter for hiredis async, one watched connection,
 * and the Lua scripts. Not installed, not included outside queue/. */
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

#endif
