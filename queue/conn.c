/* conn.c - one hiredis async connection that heals itself.
 *
 * hiredis 0.14.1 has no reconnect, no connect timeout and no command timeout (spec/queue.md
 * §4.1-4.2), so each qconn owns a 250 ms libuv timer that is its watchdog and its reconnect
 * clock: a connect that takes longer than connect_timeout_ms, or a connection with replies
 * outstanding and no progress for watchdog_ms (a wedged BLMOVE, a blackholed peer), is freed;
 * every pending callback then runs with a NULL reply ("outcome unknown") and a reconnect follows
 * after a capped exponential backoff. Failures are logged on the first try and then every 10th,
 * so a worker waiting for Redis stays quiet. */
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <time.h>

#include "queue/internal.h"

#define TICK_MS 250
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

void queue_log(const char *fmt, ...) {
    char ts[32];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%H:%M:%S", &tm);
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s.%03ld voxq: %s\n", ts, now.tv_nsec / 1000000, line);
}

int64_t qconn_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t queue_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int qaddr_parse(const char *url, qaddr *a, char errbuf[256]) {
    memset(a, 0, sizeof *a);
    a->port = 6379;
    if (!strncmp(url, "unix://", 7)) {
        if (strlen(url + 7) >= sizeof a->unix_path || !url[7]) {
            snprintf(errbuf, 256, "VOXQ_REDIS_URL '%s': bad unix socket path", url);
            return -1;
        }
        strcpy(a->unix_path, url + 7);
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(errbuf, 256, "VOXQ_REDIS_URL '%s': expected redis://host:port[/db] or "
                 "unix:///path", url);
        return -1;
    }
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= sizeof a->password) {
            snprintf(errbuf, 256, "VOXQ_REDIS_URL: password too long");
            return -1;
        }
        memcpy(a->password, pw, n);
        p = at + 1;
    }
    char host[256];
    size_t hn = strcspn(p, ":/");
    if (hn == 0 || hn >= sizeof host) {
        snprintf(errbuf, 256, "VOXQ_REDIS_URL '%s': missing host", url);
        return -1;
    }
    memcpy(host, p, hn);
    host[hn] = '\0';
    p += hn;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port < 1 || port > 65535 || (*end && *end != '/')) {
            snprintf(errbuf, 256, "VOXQ_REDIS_URL '%s': bad port", url);
            return -1;
        }
        a->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1]) {
        char *end;
        long db = strtol(p + 1, &end, 10);
        if (*end || db < 0 || db > 1000) {
            snprintf(errbuf, 256, "VOXQ_REDIS_URL '%s': bad database number", url);
            return -1;
        }
        a->db = (int)db;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(errbuf, 256, "VOXQ_REDIS_URL: cannot resolve '%.100s': %s", host,
                 gai_strerror(rc));
        return -1;
    }
    void *sa = res->ai_family == AF_INET6
                   ? (void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                   : (void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    inet_ntop(res->ai_family, sa, a->host, sizeof a->host);
    freeaddrinfo(res);
    return 0;
}

static void set_state(qconn *c, int state) {
    c->state = state;
    c->state_since = qconn_mono_ms();
}

/* The connection is gone (failed connect, disconnect, or our reset): schedule the next try. */
static void lost(qconn *c, const char *why) {
    int was_up = c->state == QCONN_UP;
    c->ac = NULL;
    c->pending = 0;
    if (c->state == QCONN_CLOSED) return;
    set_state(c, QCONN_DOWN);
    c->failures++;
    int shift = c->failures < 7 ? c->failures - 1 : 6;
    int64_t delay = (int64_t)BACKOFF_MIN_MS << shift;
    if (delay > BACKOFF_MAX_MS) delay = BACKOFF_MAX_MS;
    c->next_connect_at = qconn_mono_ms() + delay;
    if (was_up || c->failures == 1 || c->failures % 10 == 0)
        qlog("redis %s connection: %s (retry %d in %lld ms)", c->name, why, c->failures,
             (long long)delay);
    if (was_up && c->on_down) c->on_down(c);
}

static void on_connect(const redisAsyncContext *ac, int status) {
    qconn *c = ac->data;
    if (!c) return;
    if (status != REDIS_OK) {
        lost(c, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    if (c->failures > 1 || c->reconnects) qlog("redis %s connection: up", c->name);
    c->failures = 0;
    c->reconnects++;
    set_state(c, QCONN_UP);
    redisEnableKeepAlive(&((redisAsyncContext *)ac)->c);
    if (c->addr->password[0]) {
        const char *argv[] = {"AUTH", c->addr->password};
        qconn_send(c, NULL, NULL, 2, argv, NULL);
    }
    if (c->addr->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->addr->db);
        const char *argv[] = {"SELECT", db};
        qconn_send(c, NULL, NULL, 2, argv, NULL);
    }
    if (c->on_up) c->on_up(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    qconn *c = ac->data;
    if (!c) return;
    lost(c, status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
}

static void connect_now(qconn *c) {
    redisAsyncContext *ac = c->addr->unix_path[0] ? redisAsyncConnectUnix(c->addr->unix_path)
                                                  : redisAsyncConnect(c->addr->host, c->addr->port);
    set_state(c, QCONN_CONNECTING);
    if (!ac) {
        lost(c, "out of memory");
        return;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        lost(c, why);
        return;
    }
    ac->data = c;
    if (qadapter_attach(ac, c->loop) != 0) {
        redisAsyncFree(ac);
        lost(c, "cannot watch the socket");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->pending = 0;
}

void qconn_reset(qconn *c, const char *why) {
    redisAsyncContext *ac = c->ac;
    if (!ac) return;
    /* Detach first: redisAsyncFree runs the pending callbacks (NULL replies) and, for a
     * connected context, the disconnect callback, which must not see this qconn again. */
    ac->data = NULL;
    lost(c, why);
    redisAsyncFree(ac);
}

static void on_tick(uv_timer_t *t) {
    qconn *c = t->data;
    int64_t now = qconn_mono_ms();
    switch (c->state) {
    case QCONN_DOWN:
        if (now >= c->next_connect_at) connect_now(c);
        break;
    case QCONN_CONNECTING:
        if (now - c->state_since > c->connect_timeout_ms) qconn_reset(c, "connect timed out");
        break;
    case QCONN_UP:
        if (c->pending > 0 && now - c->busy_since > c->watchdog_ms) {
            char why[96];
            snprintf(why, sizeof why, "no reply for %lld ms (watchdog)",
                     (long long)(now - c->busy_since));
            qconn_reset(c, why);
        }
        break;
    default:
        break;
    }
}

int qconn_init(qconn *c, uv_loop_t *loop, const char *name, const qaddr *addr, void *owner) {
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->name = name;
    c->addr = addr;
    c->owner = owner;
    c->connect_timeout_ms = 3000;
    c->watchdog_ms = 10000;
    c->state = QCONN_DOWN;
    if (uv_timer_init(loop, &c->timer) != 0) return -1;
    c->timer.data = c;
    return 0;
}

void qconn_start(qconn *c) {
    c->next_connect_at = 0;
    uv_timer_start(&c->timer, on_tick, 0, TICK_MS);
}

typedef struct sent {
    qconn *c;
    qconn_reply_fn fn;
    void *priv;
} sent;

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)ac;
    sent *s = privdata;
    qconn *c = s->c;
    /* A NULL reply comes from redisAsyncFree/disconnect: the qconn already counted it lost. */
    if (reply && c->pending > 0) {
        c->pending--;
        c->busy_since = qconn_mono_ms();
    }
    if (s->fn) s->fn(c, reply, s->priv);
    free(s);
}

int qconn_send(qconn *c, qconn_reply_fn fn, void *priv, int argc, const char **argv,
               const size_t *lens) {
    if (c->state != QCONN_UP || !c->ac) return -1;
    sent *s = malloc(sizeof *s);
    if (!s) return -1;
    *s = (sent){c, fn, priv};
    if (redisAsyncCommandArgv(c->ac, on_reply, s, argc, argv, lens) != REDIS_OK) {
        free(s);
        return -1;
    }
    if (c->pending++ == 0) c->busy_since = qconn_mono_ms();
    return 0;
}

/* Subscription replies keep arriving on the same callback, so its privdata lives in the qconn
 * (c->sub) instead of a per-command allocation; it is not counted by the watchdog. */
static void on_message(redisAsyncContext *ac, void *reply, void *privdata) {
    (void)ac;
    qconn *c = privdata;
    if (c->sub_fn) c->sub_fn(c, reply, c->sub_priv);
}

int qconn_subscribe(qconn *c, qconn_reply_fn fn, void *priv, const char *channel) {
    if (c->state != QCONN_UP || !c->ac) return -1;
    c->sub_fn = fn;
    c->sub_priv = priv;
    const char *argv[] = {"SUBSCRIBE", channel};
    return redisAsyncCommandArgv(c->ac, on_message, c, 2, argv, NULL) == REDIS_OK ? 0 : -1;
}

void qconn_activity(redisAsyncContext *ac) {
    qconn *c = ac->data;
    if (c && c->pending > 0) c->busy_since = qconn_mono_ms();
}

static void on_timer_closed(uv_handle_t *h) {
    qconn *c = h->data;
    c->timer_closed = 1;
    if (c->on_closed) c->on_closed(c);
}

void qconn_close(qconn *c) {
    if (c->state == QCONN_CLOSED) return;
    redisAsyncContext *ac = c->ac;
    set_state(c, QCONN_CLOSED);
    c->ac = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

struct redisContext *queue_connect_sync(const char *url, int timeout_ms, char errbuf[256]) {
    qaddr a;
    if (qaddr_parse(url, &a, errbuf) != 0) return NULL;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = a.unix_path[0] ? redisConnectUnixWithTimeout(a.unix_path, tv)
                                     : redisConnectWithTimeout(a.host, a.port, tv);
    if (!c || c->err) {
        snprintf(errbuf, 256, "redis %s: %s", url, c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    const char *fail = NULL;
    redisReply *r = NULL;
    if (a.password[0]) {
        r = redisCommand(c, "AUTH %s", a.password);
        if (!r || r->type == REDIS_REPLY_ERROR) fail = "AUTH failed";
        if (r) freeReplyObject(r);
    }
    if (!fail && a.db) {
        r = redisCommand(c, "SELECT %d", a.db);
        if (!r || r->type == REDIS_REPLY_ERROR) fail = "SELECT failed";
        if (r) freeReplyObject(r);
    }
    if (fail) {
        snprintf(errbuf, 256, "redis %s: %s", url, fail);
        redisFree(c);
        return NULL;
    }
    return c;
}
