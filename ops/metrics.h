/* metrics.h - /healthz and /metrics over HTTP/1.0 on a libuv loop, plus the small pieces needed
 * to write the Prometheus text format (exposition format 0.0.4).
 *
 * The server answers GET requests only, one request per connection (Connection: close), with a
 * body the caller renders on the loop thread. It exists for a scraper and a load balancer's
 * health probe, not for browsers: requests over 8 KiB or slower than 5 s are dropped. */
#ifndef VOXQ_OPS_METRICS_H
#define VOXQ_OPS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* A growable text buffer; on allocation failure `oom` is set and later writes are dropped. */
typedef struct metrics_buf {
    char *p;
    size_t len, cap;
    int oom;
} metrics_buf;

void metrics_printf(metrics_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void metrics_buf_free(metrics_buf *b);

/* Fills out for a GET of path (query string removed); returns the HTTP status (200, 404, 503).
 * *content_type may be set (default text/plain; version=0.0.4). */
typedef int (*metrics_render_fn)(const char *path, metrics_buf *out, const char **content_type,
                                 void *data);

typedef struct metrics_server metrics_server;

/* Listens on addr ("IP:PORT"; port 0 picks a free one, see metrics_server_port). Returns 0, or
 * -1 with errbuf naming the address and the reason. */
int metrics_server_start(uv_loop_t *loop, const char *addr, metrics_render_fn render, void *data,
                         metrics_server **out, char errbuf[256]);
int metrics_server_port(const metrics_server *s);
/* Stops listening, drops open connections and frees the server once libuv has closed them. */
void metrics_server_close(metrics_server *s);

/* A histogram with fixed upper bounds (ascending, at most 16). */
typedef struct metrics_hist {
    int n;
    double bounds[16];
    uint64_t counts[17];    /* per bucket; counts[n] is +Inf */
    double sum;
    uint64_t count;
} metrics_hist;

void metrics_hist_init(metrics_hist *h, const double *bounds, int n);
void metrics_hist_observe(metrics_hist *h, double v);
/* Writes HELP/TYPE and the cumulative _bucket, _sum and _count lines of `name`. */
void metrics_hist_write(metrics_buf *b, const char *name, const char *help,
                        const metrics_hist *h);

#endif
