/* metrics.c - a minimal HTTP/1.0 GET server on libuv for /healthz and /metrics, and the
 * Prometheus text helpers. Everything runs on the loop thread; nothing blocks. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/metrics.h"

#define REQ_MAX 8192
#define REQ_TIMEOUT_MS 5000

void metrics_printf(metrics_buf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        size_t room = b->cap - b->len;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if (b->p && (size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

void metrics_buf_free(metrics_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

typedef struct client client;

struct metrics_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    metrics_render_fn render;
    void *data;
    int port;
    int closing;
    int open_handles;           /* listener + clients not yet closed */
    client *clients;
};

struct client {
    metrics_server *srv;
    uv_tcp_t tcp;
    uv_timer_t timer;
    char req[REQ_MAX];
    size_t len;
    int responded;
    int closing;
    uv_write_t wr;
    metrics_buf out;
    client *next;
};

static void server_handle_closed(metrics_server *s) {
    if (--s->open_handles == 0 && s->closing) free(s);
}

static void on_client_timer_closed(uv_handle_t *h) {
    client *c = h->data;
    metrics_server *s = c->srv;
    metrics_buf_free(&c->out);
    free(c);
    server_handle_closed(s);
}

static void on_client_tcp_closed(uv_handle_t *h) {
    client *c = h->data;
    uv_close((uv_handle_t *)&c->timer, on_client_timer_closed);
}

static void client_close(client *c) {
    if (c->closing) return;
    c->closing = 1;
    for (client **p = &c->srv->clients; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->tcp, on_client_tcp_closed);
}

static void on_written(uv_write_t *w, int status) {
    (void)status;
    client_close(w->data);
}

static void respond(client *c, int status, const char *ctype, const char *body, size_t n) {
    const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found"
                       : status == 405 ? "Method Not Allowed" : status == 503
                                       ? "Service Unavailable" : "Bad Request";
    metrics_printf(&c->out, "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                            "Connection: close\r\n\r\n", status, reason, ctype, n);
    if (n) {
        size_t head = c->out.len;
        metrics_printf(&c->out, "%*s", (int)n, "");
        if (!c->out.oom) memcpy(c->out.p + head, body, n);
    }
    if (c->out.oom) {
        client_close(c);
        return;
    }
    c->responded = 1;
    uv_buf_t buf = uv_buf_init(c->out.p, (unsigned)c->out.len);
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) client_close(c);
}

static void handle_request(client *c) {
    char method[8], target[512];
    if (sscanf(c->req, "%7s %511s", method, target) != 2) {
        respond(c, 400, "text/plain", "bad request\n", 12);
        return;
    }
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        respond(c, 405, "text/plain", "GET only\n", 9);
        return;
    }
    target[strcspn(target, "?#")] = '\0';
    metrics_buf body = {0};
    const char *ctype = "text/plain; version=0.0.4; charset=utf-8";
    int status = c->srv->render(target, &body, &ctype, c->srv->data);
    if (body.oom) status = 503;
    respond(c, status, ctype, body.p ? body.p : "", strcmp(method, "HEAD") ? body.len : 0);
    metrics_buf_free(&body);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    client *c = h->data;
    size_t room = REQ_MAX - 1 - c->len;
    *buf = uv_buf_init(c->req + c->len, (unsigned)room);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
    (void)buf;
    client *c = st->data;
    if (c->responded || c->closing) return;
    if (n < 0) {
        client_close(c);
        return;
    }
    c->len += (size_t)n;
    c->req[c->len] = '\0';
    if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n")) {
        uv_read_stop(st);
        handle_request(c);
    } else if (c->len >= REQ_MAX - 1) {
        uv_read_stop(st);
        respond(c, 400, "text/plain", "request too large\n", 18);
    }
}

static void on_client_timeout(uv_timer_t *t) { client_close(t->data); }

static void on_connection(uv_stream_t *listener, int status) {
    metrics_server *s = listener->data;
    if (status < 0 || s->closing) return;
    client *c = calloc(1, sizeof *c);
    if (!c) return;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    s->open_handles++;
    c->next = s->clients;
    s->clients = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        client_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_client_timeout, REQ_TIMEOUT_MS, 0);
}

static void on_listener_closed(uv_handle_t *h) { server_handle_closed(h->data); }

int metrics_server_start(uv_loop_t *loop, const char *addr, metrics_render_fn render, void *data,
                         metrics_server **out, char errbuf[256]) {
    *out = NULL;
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof host) {
        snprintf(errbuf, 256, "metrics address '%s': expected IP:PORT", addr);
        return -1;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        snprintf(errbuf, 256, "metrics address '%s': bad port", addr);
        return -1;
    }
    struct sockaddr_storage sa;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&sa) != 0 &&
        uv_ip6_addr(host[0] == '[' ? host + 1 : host, (int)port, (struct sockaddr_in6 *)&sa) != 0) {
        snprintf(errbuf, 256, "metrics address '%s': '%s' is not a numeric IP", addr, host);
        return -1;
    }
    metrics_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(errbuf, 256, "out of memory");
        return -1;
    }
    s->loop = loop;
    s->render = render;
    s->data = data;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->open_handles = 1;
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&s->listener, 64, on_connection);
    if (rc != 0) {
        snprintf(errbuf, 256, "metrics address '%s': %s", addr, uv_strerror(rc));
        s->closing = 1; /* freed once libuv has closed the listener */
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return -1;
    }
    struct sockaddr_storage bound;
    int len = sizeof bound;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
    s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    *out = s;
    return 0;
}

int metrics_server_port(const metrics_server *s) { return s->port; }

void metrics_server_close(metrics_server *s) {
    if (!s || s->closing) return;
    s->closing = 1;
    while (s->clients) client_close(s->clients);
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}

void metrics_hist_init(metrics_hist *h, const double *bounds, int n) {
    memset(h, 0, sizeof *h);
    h->n = n > 16 ? 16 : n;
    memcpy(h->bounds, bounds, sizeof(double) * (size_t)h->n);
}

void metrics_hist_observe(metrics_hist *h, double v) {
    int i = 0;
    while (i < h->n && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

void metrics_hist_write(metrics_buf *b, const char *name, const char *help,
                        const metrics_hist *h) {
    metrics_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        metrics_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i],
                       (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    metrics_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                   (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->count);
}
