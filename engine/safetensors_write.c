/* safetensors_write.c - the streaming safetensors writer.
 *
 * Tensors are declared first so the header (with every data_offsets) can be written before any
 * data; then the bytes arrive in declaration order, in pieces of any size, through a small copy
 * buffer. The header is padded with spaces so the data section starts 8-byte aligned in the file;
 * tensors follow each other with no gaps, as the reference implementation requires (so a tensor
 * is 8-byte aligned whenever the tensors before it have sizes that are multiples of 8, which is
 * the case for every checkpoint voxq writes). finish() insists every declared byte arrived, then
 * fsyncs. Only the header and the 1 MiB buffer live in memory. */
#include "engine/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ST_WRITE_BUFFER (1u << 20)

typedef struct decl {
    char *name;
    eng_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;
} decl;

enum { W_DECLARING, W_DATA, W_FAILED };

struct st_writer {
    char *path;
    int fd;
    int state;
    int err; /* first error code; sticky */
    char errstr[512];
    decl *decls; /* (ndecl) */
    size_t ndecl, cap;
    char **meta_keys, **meta_values;
    size_t nmeta;
    uint64_t total;     /* declared data bytes */
    uint64_t written;   /* data bytes accepted so far */
    unsigned char *buf; /* (ST_WRITE_BUFFER) pending bytes */
    size_t nbuf;
};

/* Records the first error and puts the writer in the failed state; returns code. */
static int wfail(st_writer *w, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int wfail(st_writer *w, int code, const char *fmt, ...) {
    if (w->state == W_FAILED) return w->err;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(w->errstr, sizeof w->errstr, "%s: %s", w->path, msg);
    w->err = code;
    w->state = W_FAILED;
    return code;
}

int st_writer_open(st_writer **out, const char *path, eng_error *err) {
    *out = NULL;
    st_writer *w = calloc(1, sizeof *w);
    if (!w) return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
    w->fd = -1;
    w->path = strdup(path);
    w->buf = malloc(ST_WRITE_BUFFER);
    if (!w->path || !w->buf) {
        free(w->path);
        free(w->buf);
        free(w);
        return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
    }
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int rc = eng_errorf(err, ENG_EIO, "%s: cannot create: %s", path, strerror(errno));
        free(w->path);
        free(w->buf);
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}

/* Adds a __metadata__ entry; keys are unique and only allowed before the data starts. */
int st_writer_metadata(st_writer *w, const char *key, const char *value) {
    if (w->state != W_DECLARING)
        return w->state == W_FAILED ? w->err
                                    : wfail(w, ENG_EINVAL, "metadata '%s' after data began", key);
    for (size_t i = 0; i < w->nmeta; i++)
        if (strcmp(w->meta_keys[i], key) == 0)
            return wfail(w, ENG_EINVAL, "metadata key '%s' given twice", key);
    char **k = realloc(w->meta_keys, (w->nmeta + 1) * sizeof *k);
    if (k) w->meta_keys = k;
    char **v = realloc(w->meta_values, (w->nmeta + 1) * sizeof *v);
    if (v) w->meta_values = v;
    if (!k || !v) return wfail(w, ENG_ENOMEM, "out of memory for metadata");
    w->meta_keys[w->nmeta] = strdup(key);
    w->meta_values[w->nmeta] = strdup(value);
    w->nmeta++;
    if (!w->meta_keys[w->nmeta - 1] || !w->meta_values[w->nmeta - 1])
        return wfail(w, ENG_ENOMEM, "out of memory for metadata");
    return 0;
}

/* Declares the next tensor; its data will follow the previous one's. Names must be non-empty,
 * unique and not "__metadata__"; dims non-negative; the byte count must not overflow. */
int st_writer_declare(st_writer *w, const char *name, eng_dtype dtype, int ndim,
                      const int64_t *shape) {
    if (w->state != W_DECLARING)
        return w->state == W_FAILED ? w->err
                                    : wfail(w, ENG_EINVAL,
                                            "tensor '%s' declared after data "
                                            "began",
                                            name);
    if (name[0] == '\0' || strcmp(name, "__metadata__") == 0)
        return wfail(w, ENG_EINVAL, "invalid tensor name '%s'", name);
    if (eng_dtype_size(dtype) == 0) return wfail(w, ENG_EINVAL, "tensor '%s': invalid dtype", name);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return wfail(w, ENG_EINVAL, "tensor '%s': %d dimensions (at most %d)", name, ndim,
                     ST_MAX_DIMS);
    uint64_t nbytes = eng_dtype_size(dtype), end;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return wfail(w, ENG_EINVAL, "tensor '%s': negative dimension %" PRId64, name, shape[i]);
        if (__builtin_mul_overflow(nbytes, (uint64_t)shape[i], &nbytes))
            return wfail(w, ENG_EINVAL, "tensor '%s': byte count overflows", name);
    }
    if (__builtin_add_overflow(w->total, nbytes, &end))
        return wfail(w, ENG_EINVAL, "tensor '%s': file size overflows", name);
    for (size_t i = 0; i < w->ndecl; i++)
        if (strcmp(w->decls[i].name, name) == 0)
            return wfail(w, ENG_EINVAL, "tensor '%s' declared twice", name);
    if (w->ndecl == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        decl *d = realloc(w->decls, cap * sizeof *d);
        if (!d) return wfail(w, ENG_ENOMEM, "out of memory for tensor '%s'", name);
        w->decls = d;
        w->cap = cap;
    }
    decl *d = &w->decls[w->ndecl];
    memset(d, 0, sizeof *d);
    d->name = strdup(name);
    if (!d->name) return wfail(w, ENG_ENOMEM, "out of memory for tensor '%s'", name);
    d->dtype = dtype;
    d->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        d->shape[i] = shape[i];
    d->begin = w->total;
    d->end = end;
    w->total = end;
    w->ndecl++;
    return 0;
}

/* A growable string for the header. */
typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) {
    sb_putn(b, s, strlen(s));
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_putn(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Writes s as a JSON string literal (quotes, backslashes and control bytes escaped). */
static void sb_json_string(sbuf *b, const char *s) {
    sb_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            sb_putn(b, esc, 2);
        } else if (*p < 0x20) {
            sb_printf(b, "\\u%04x", *p);
        } else {
            sb_putn(b, (const char *)p, 1);
        }
    }
    sb_puts(b, "\"");
}

/* Writes all n bytes (retrying short writes and EINTR). */
static int write_all(st_writer *w, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t r = write(w->fd, c, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return wfail(w, ENG_EIO, "write failed: %s", strerror(errno));
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Emits the length prefix and the header JSON: __metadata__ first, then the tensors in
 * declaration order, padded with spaces to make 8 + length a multiple of 8. */
int st_writer_begin_data(st_writer *w) {
    if (w->state != W_DECLARING)
        return w->state == W_FAILED ? w->err : wfail(w, ENG_EINVAL, "begin_data called twice");
    sbuf b = {0};
    sb_puts(&b, "{");
    if (w->nmeta > 0) {
        sb_puts(&b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->nmeta; i++) {
            if (i) sb_puts(&b, ",");
            sb_json_string(&b, w->meta_keys[i]);
            sb_puts(&b, ":");
            sb_json_string(&b, w->meta_values[i]);
        }
        sb_puts(&b, "}");
    }
    for (size_t i = 0; i < w->ndecl; i++) {
        const decl *d = &w->decls[i];
        if (i || w->nmeta) sb_puts(&b, ",");
        sb_json_string(&b, d->name);
        sb_printf(&b, ":{\"dtype\":\"%s\",\"shape\":[", eng_dtype_name(d->dtype));
        for (int k = 0; k < d->ndim; k++)
            sb_printf(&b, "%s%" PRId64, k ? "," : "", d->shape[k]);
        sb_printf(&b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", d->begin, d->end);
    }
    sb_puts(&b, "}");
    while ((8 + b.len) % 8 != 0)
        sb_puts(&b, " ");
    if (b.oom) {
        free(b.s);
        return wfail(w, ENG_ENOMEM, "out of memory for the header");
    }
    if (b.len > ST_MAX_HEADER_BYTES) {
        free(b.s);
        return wfail(w, ENG_EINVAL, "header of %zu bytes exceeds the %u-byte limit", b.len,
                     ST_MAX_HEADER_BYTES);
    }
    unsigned char prefix[8];
    uint64_t n = b.len;
    for (int i = 0; i < 8; i++)
        prefix[i] = (unsigned char)(n >> (8 * i));
    int rc = write_all(w, prefix, 8);
    if (rc == 0) rc = write_all(w, b.s, b.len);
    free(b.s);
    if (rc != 0) return rc;
    w->state = W_DATA;
    return 0;
}

static int flush_buffer(st_writer *w) {
    int rc = write_all(w, w->buf, w->nbuf);
    w->nbuf = 0;
    return rc;
}

/* Accepts the next n data bytes; more than the declared total is an error naming the tensor
 * that was complete. */
int st_writer_write(st_writer *w, const void *bytes, size_t n) {
    if (w->state != W_DATA)
        return w->state == W_FAILED ? w->err : wfail(w, ENG_EINVAL, "write before begin_data");
    if (n > w->total - w->written)
        return wfail(w, ENG_EINVAL, "%zu bytes written past the end of the last tensor '%s'", n,
                     w->ndecl ? w->decls[w->ndecl - 1].name : "(none)");
    const unsigned char *p = bytes;
    w->written += n;
    if (n >= ST_WRITE_BUFFER) {
        int rc = flush_buffer(w);
        return rc ? rc : write_all(w, p, n);
    }
    if (w->nbuf + n > ST_WRITE_BUFFER) {
        int rc = flush_buffer(w);
        if (rc) return rc;
    }
    memcpy(w->buf + w->nbuf, p, n);
    w->nbuf += n;
    return 0;
}

/* Completes the file: every declared byte must have arrived; the data reach the disk (fsync)
 * before success is reported. On success the writer is freed. On failure the file is closed and
 * deleted but the writer stays, so its errstr can be read; st_writer_abort() frees it. */
int st_writer_finish(st_writer *w) {
    int rc = 0;
    if (w->state == W_DECLARING) rc = st_writer_begin_data(w);
    if (rc == 0 && w->state == W_FAILED) rc = w->err;
    if (rc == 0 && w->written != w->total) {
        size_t i = 0;
        while (w->decls[i].end <= w->written)
            i++;
        rc = wfail(w, ENG_EINVAL,
                   "finished with %" PRIu64 " of %" PRIu64 " data bytes: tensor "
                   "'%s' is incomplete",
                   w->written, w->total, w->decls[i].name);
    }
    if (rc == 0) rc = flush_buffer(w);
    if (rc == 0 && fsync(w->fd) != 0) rc = wfail(w, ENG_EIO, "fsync failed: %s", strerror(errno));
    if (w->fd >= 0 && close(w->fd) != 0 && rc == 0)
        rc = wfail(w, ENG_EIO, "close failed: %s", strerror(errno));
    w->fd = -1;
    if (rc != 0) {
        /* An incomplete file must not look like a checkpoint. */
        unlink(w->path);
        return rc;
    }
    st_writer_abort(w);
    return 0;
}

void st_writer_abort(st_writer *w) {
    if (!w) return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->path);
    }
    for (size_t i = 0; i < w->ndecl; i++)
        free(w->decls[i].name);
    for (size_t i = 0; i < w->nmeta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->decls);
    free(w->meta_keys);
    free(w->meta_values);
    free(w->buf);
    free(w->path);
    free(w);
}

const char *st_writer_errstr(const st_writer *w) {
    return w->errstr;
}
