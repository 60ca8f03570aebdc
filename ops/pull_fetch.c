/* pull_fetch.c - the HTTP side of `voxq store pull`: asks the hub what a file is (HEAD of its
 * resolve URL) and downloads it with libcurl, resuming with Range requests and verifying size
 * and sha256 while the bytes pass. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "ops/pull_internal.h"
#include "ops/sha256.h"

#define MAX_RELATIVE_REDIRECTS 5
#define MAX_BACKOFF_MS 30000
#define CONNECT_TIMEOUT_S 30L
#define USER_AGENT "voxq/" VOXQ_VERSION

/* ---- small helpers ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int pull_should_stop(pull_ctx *c) {
    if (c->opt->cancel && *c->opt->cancel) atomic_store(&c->stop, 1);
    return atomic_load(&c->stop);
}

void pull_logf(pull_ctx *c, const char *fmt, ...) {
    if (!c->opt->log) return;
    char line[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&c->lock);
    c->opt->log(c->opt->log_ud, line);
    pthread_mutex_unlock(&c->lock);
}

void pull_progress_set(pull_ctx *c, pull_file *f, uint64_t done, uint64_t received) {
    pthread_mutex_lock(&c->lock);
    c->all_done = c->all_done - f->done + done;
    f->done = done;
    f->fetched += received;
    double t = now_s();
    int complete = f->remote.have_size && done == f->remote.size;
    if (c->opt->progress && (complete || t - c->last_report >= 0.2)) {
        c->last_report = t;
        c->opt->progress(c->opt->progress_ud, f->name, done, f->remote.size, c->all_done,
                         c->all_total);
    }
    pthread_mutex_unlock(&c->lock);
}

void pull_set_revision(pull_ctx *c, const char *revision) {
    snprintf(c->revision, sizeof c->revision, "%s", revision);
    char *out = c->revision_url;
    for (const unsigned char *p = (const unsigned char *)c->revision; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~')
            *out++ = (char)*p;
        else
            out += sprintf(out, "%%%02X", *p);
    }
    *out = '\0';
}

static int resolve_url(const pull_ctx *c, const char *name, char *buf, size_t n) {
    int len = snprintf(buf, n, "%s/%s/resolve/%s/%s", c->endpoint, c->repo, c->revision_url, name);
    return len > 0 && (size_t)len < n ? 0 : -1;
}

/* Sleeps ms milliseconds in short slices, returning early (1) when the pull is stopping. */
static int backoff_sleep(pull_ctx *c, int ms) {
    while (ms > 0) {
        if (pull_should_stop(c)) return 1;
        int slice = ms < 100 ? ms : 100;
        struct timespec ts = {slice / 1000, (long)(slice % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        ms -= slice;
    }
    return pull_should_stop(c);
}

static int next_delay(int delay_ms) {
    return delay_ms >= MAX_BACKOFF_MS / 2 ? MAX_BACKOFF_MS : delay_ms * 2;
}

/* Copies a header value (after "name:") without surrounding blanks, quotes and a weak "W/". */
static void header_value(const char *v, size_t n, char *out, size_t outn, int strip_quotes) {
    while (n && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
        n--;
    if (strip_quotes) {
        if (n >= 2 && v[0] == 'W' && v[1] == '/') v += 2, n -= 2;
        if (n >= 2 && v[0] == '"' && v[n - 1] == '"') v++, n -= 2;
    }
    if (n >= outn) n = outn - 1;
    memcpy(out, v, n);
    out[n] = '\0';
}

/* Matches "Name:" at the start of a header line (case-insensitive); returns the value or NULL. */
static const char *header_is(const char *line, size_t n, const char *name, size_t *vlen) {
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':') return NULL;
    *vlen = n - k - 1;
    return line + k + 1;
}

static int is_sha256_hex(const char *s) {
    if (strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!isxdigit((unsigned char)s[i])) return 0;
    return 1;
}

/* A curl handle with what every request shares: auth, agent, timeouts, no signals (threads). */
static CURL *new_handle(pull_ctx *c, struct curl_slist **headers, char *errbuf) {
    CURL *h = curl_easy_init();
    if (!h) return NULL;
    /* Identity encoding: sizes and hashes are of the file's bytes, never of a compressed form. */
    *headers = curl_slist_append(NULL, "Accept-Encoding: identity");
    if (c->auth_header[0] && *headers) {
        struct curl_slist *more = curl_slist_append(*headers, c->auth_header);
        if (!more) curl_slist_free_all(*headers);
        *headers = more;
    }
    if (!*headers) {
        curl_easy_cleanup(h);
        return NULL;
    }
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, USER_AGENT);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, *headers);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)c->stall_s);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    /* The hub's CDN URLs are signed; a token is never sent to another host (curl drops the
     * Authorization header on a redirect that changes host). */
    curl_easy_setopt(h, CURLOPT_UNRESTRICTED_AUTH, 0L);
    errbuf[0] = '\0';
    return h;
}

/* Transport failures worth another attempt: the network, not our disk or our own abort. */
static int curl_retryable(CURLcode cc) {
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

static int status_retryable(long status) {
    return status == 408 || status == 429 || status >= 500;
}

/* ---- metadata (HEAD) ---- */

typedef struct meta_headers {
    pull_remote *r;
    char linked_etag[160], etag[160], location[1024];
    int have_linked_size, have_length;
    uint64_t linked_size, length;
} meta_headers;

static size_t meta_header_cb(char *line, size_t size, size_t nitems, void *ud) {
    meta_headers *m = ud;
    size_t n = size * nitems, vlen;
    const char *v;
    char num[32];
    if (n >= 5 && !strncmp(line, "HTTP/", 5)) {
        pull_remote *r = m->r;
        memset(m, 0, sizeof *m);
        m->r = r;
        r->commit[0] = r->error_code[0] = r->error_msg[0] = '\0';
    } else if ((v = header_is(line, n, "x-repo-commit", &vlen))) {
        header_value(v, vlen, m->r->commit, sizeof m->r->commit, 0);
    } else if ((v = header_is(line, n, "x-linked-etag", &vlen))) {
        header_value(v, vlen, m->linked_etag, sizeof m->linked_etag, 1);
    } else if ((v = header_is(line, n, "etag", &vlen))) {
        header_value(v, vlen, m->etag, sizeof m->etag, 1);
    } else if ((v = header_is(line, n, "x-linked-size", &vlen))) {
        header_value(v, vlen, num, sizeof num, 0);
        m->have_linked_size = sscanf(num, "%" SCNu64, &m->linked_size) == 1;
    } else if ((v = header_is(line, n, "content-length", &vlen))) {
        header_value(v, vlen, num, sizeof num, 0);
        m->have_length = sscanf(num, "%" SCNu64, &m->length) == 1;
    } else if ((v = header_is(line, n, "location", &vlen))) {
        header_value(v, vlen, m->location, sizeof m->location, 0);
    } else if ((v = header_is(line, n, "x-error-code", &vlen))) {
        header_value(v, vlen, m->r->error_code, sizeof m->r->error_code, 0);
    } else if ((v = header_is(line, n, "x-error-message", &vlen))) {
        header_value(v, vlen, m->r->error_msg, sizeof m->r->error_msg, 0);
    }
    return n;
}

/* The scheme://host[:port] part of the endpoint, for relative redirects. */
static void endpoint_origin(const char *endpoint, char *out, size_t n) {
    const char *p = strstr(endpoint, "://");
    p = p ? strchr(p + 3, '/') : NULL;
    size_t len = p ? (size_t)(p - endpoint) : strlen(endpoint);
    if (len >= n) len = n - 1;
    memcpy(out, endpoint, len);
    out[len] = '\0';
}

int pull_fetch_meta(pull_ctx *c, const char *name, pull_remote *r, eng_error *err) {
    char url[2048], errbuf[CURL_ERROR_SIZE];
    if (resolve_url(c, name, url, sizeof url))
        return eng_errorf(err, ENG_EINVAL, "%s: URL too long", name);
    int redirects = 0, attempt = 0, delay = c->retry_delay_ms;
    for (;;) {
        if (pull_should_stop(c)) return eng_errorf(err, ENG_ECANCELLED, "%s: stopped", name);
        memset(r, 0, sizeof *r);
        meta_headers m = {.r = r};
        struct curl_slist *headers;
        CURL *h = new_handle(c, &headers, errbuf);
        if (!h) return eng_errorf(err, ENG_ENOMEM, "%s: curl_easy_init failed", name);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, meta_header_cb);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &m);
        CURLcode cc = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
        curl_easy_cleanup(h);
        curl_slist_free_all(headers);
        if (cc != CURLE_OK || status_retryable(r->status)) {
            if ((cc != CURLE_OK && !curl_retryable(cc)) || attempt >= c->retries) {
                if (cc == CURLE_OK) return 0; /* the caller reports the status */
                return eng_errorf(err, ENG_EIO, "%s: %s", url,
                                  errbuf[0] ? errbuf : curl_easy_strerror(cc));
            }
            attempt++;
            pull_logf(c, "%s: %s; retrying in %.1f s (attempt %d of %d)", name,
                      cc != CURLE_OK ? (errbuf[0] ? errbuf : curl_easy_strerror(cc))
                                     : "server error",
                      delay / 1000.0, attempt, c->retries);
            if (backoff_sleep(c, delay)) continue;
            delay = next_delay(delay);
            continue;
        }
        if (r->status >= 300 && r->status < 400 && m.location[0] == '/' &&
            redirects < MAX_RELATIVE_REDIRECTS) {
            char origin[512];
            endpoint_origin(c->endpoint, origin, sizeof origin);
            if (snprintf(url, sizeof url, "%s%s", origin, m.location) >= (int)sizeof url)
                return eng_errorf(err, ENG_EFORMAT, "%s: redirect URL too long", name);
            redirects++;
            continue;
        }
        const char *etag = m.linked_etag[0] ? m.linked_etag : m.etag;
        snprintf(r->etag, sizeof r->etag, "%s", etag);
        if (is_sha256_hex(etag)) {
            for (int i = 0; i < 64; i++)
                r->sha256[i] = (char)tolower((unsigned char)etag[i]);
            r->sha256[64] = '\0';
        }
        if (m.have_linked_size)
            r->have_size = 1, r->size = m.linked_size;
        else if (r->status == 200 && m.have_length)
            r->have_size = 1, r->size = m.length;
        return 0;
    }
}

int pull_status_error(const pull_ctx *c, const char *name, const pull_remote *r, eng_error *err) {
    const char *detail = r->error_msg[0] ? r->error_msg : "";
    const char *sep = detail[0] ? " - " : "";
    if (r->status == 404) {
        if (!strcmp(r->error_code, "RepoNotFound"))
            return eng_errorf(err, ENG_ENOTFOUND, "repository %s not found at %s (HTTP 404)%s%s",
                              c->repo, c->endpoint, sep, detail);
        if (!strcmp(r->error_code, "RevisionNotFound"))
            return eng_errorf(err, ENG_ENOTFOUND, "%s: revision '%s' not found (HTTP 404)%s%s",
                              c->repo, c->revision, sep, detail);
        return eng_errorf(err, ENG_ENOTFOUND, "%s@%s: file %s not found (HTTP 404 at %s)%s%s",
                          c->repo, c->revision, name, c->endpoint, sep, detail);
    }
    if (r->status == 401 || r->status == 403)
        return eng_errorf(err, PULL_EAUTH,
                          "%s: HTTP %ld for %s: the repository is gated, private or missing; "
                          "%s%s%s",
                          c->repo, r->status, name,
                          c->auth_header[0] ? "check that HF_TOKEN has access to it"
                                            : "set HF_TOKEN to a token with access to it",
                          sep, detail);
    return eng_errorf(err, ENG_EIO, "%s@%s: HTTP %ld for %s%s%s", c->repo, c->revision, r->status,
                      name, sep, detail);
}

/* ---- download ---- */

typedef struct transfer {
    pull_ctx *c;
    pull_file *f;
    CURL *h;
    int fd;
    uint64_t offset; /* bytes in the .part file */
    sha256_ctx hash; /* over bytes [0, offset) */
    int started;     /* the final response's first body byte was seen */
    long status;
    int range_ok; /* a 206 whose Content-Range starts at offset */
    uint64_t range_start;
    int have_range;
    int failed; /* an error of ours (disk, size, range) aborted the transfer */
    eng_error err;
    char body[200]; /* start of an error response body */
    size_t body_len;
} transfer;

static size_t get_header_cb(char *line, size_t size, size_t nitems, void *ud) {
    transfer *t = ud;
    size_t n = size * nitems, vlen;
    const char *v;
    if (n >= 5 && !strncmp(line, "HTTP/", 5)) {
        t->have_range = 0;
    } else if ((v = header_is(line, n, "content-range", &vlen))) {
        char val[96];
        uint64_t start;
        header_value(v, vlen, val, sizeof val, 0);
        if (sscanf(val, "bytes %" SCNu64 "-", &start) == 1) {
            t->have_range = 1;
            t->range_start = start;
        }
    }
    return n;
}

static int restart_file(transfer *t) {
    if (ftruncate(t->fd, 0) != 0 || lseek(t->fd, 0, SEEK_SET) != 0) return -1;
    t->offset = 0;
    sha256_init(&t->hash);
    pull_progress_set(t->c, t->f, 0, 0);
    return 0;
}

static size_t get_write_cb(char *data, size_t size, size_t nitems, void *ud) {
    transfer *t = ud;
    size_t n = size * nitems;
    const pull_file *f = t->f;
    if (!t->started) {
        t->started = 1;
        curl_easy_getinfo(t->h, CURLINFO_RESPONSE_CODE, &t->status);
        if (t->status == 200 && t->offset > 0 && restart_file(t) != 0) {
            t->failed =
                eng_errorf(&t->err, ENG_EIO, "%s.part: truncate: %s", f->name, strerror(errno));
            return 0;
        }
        if (t->status == 206 && (!t->have_range || t->range_start != t->offset)) {
            t->failed = eng_errorf(&t->err, ENG_EFORMAT,
                                   "%s: asked for bytes from %llu, the server sent a range "
                                   "starting at %llu",
                                   f->name, (unsigned long long)t->offset,
                                   (unsigned long long)t->range_start);
            return 0;
        }
    }
    if (t->status != 200 && t->status != 206) {
        size_t room = sizeof t->body - 1 - t->body_len, k = n < room ? n : room;
        memcpy(t->body + t->body_len, data, k);
        t->body_len += k;
        t->body[t->body_len] = '\0';
        return n;
    }
    if (pull_should_stop(t->c)) return 0;
    if (t->offset + n > f->remote.size) {
        t->failed = eng_errorf(&t->err, ENG_EFORMAT,
                               "%s: the server sent more than the %llu bytes it announced", f->name,
                               (unsigned long long)f->remote.size);
        return 0;
    }
    for (size_t w = 0; w < n;) {
        ssize_t k = write(t->fd, data + w, n - w);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            t->failed = eng_errorf(&t->err, ENG_EIO, "%s/%s.part: write: %s", t->c->dir, f->name,
                                   strerror(errno));
            return 0;
        }
        w += (size_t)k;
    }
    sha256_update(&t->hash, data, n);
    t->offset += n;
    pull_progress_set(t->c, t->f, t->offset, n);
    return n;
}

/* Hashes the first `len` bytes of fd into t->hash (a resumed .part file). */
static int hash_prefix(transfer *t, uint64_t len) {
    enum { CHUNK = 1 << 20 };
    char *buf = malloc(CHUNK);
    if (!buf) return -1;
    uint64_t pos = 0;
    while (pos < len) {
        size_t want = len - pos < CHUNK ? (size_t)(len - pos) : CHUNK;
        ssize_t k = pread(t->fd, buf, want, (off_t)pos);
        if (k <= 0) {
            free(buf);
            return -1;
        }
        sha256_update(&t->hash, buf, (size_t)k);
        pos += (uint64_t)k;
    }
    free(buf);
    return 0;
}

/* The sidecar text: what the .part (or finished file) was downloaded against. */
static void sidecar_text(const pull_ctx *c, const pull_file *f, char *buf, size_t n) {
    snprintf(buf, n, "repo %s\nrevision %s\nsize %llu\netag %s\n", c->repo, c->revision,
             (unsigned long long)f->remote.size, f->remote.etag);
}

static int sidecar_matches(const char *path, const char *want) {
    char have[1024];
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    size_t got = fread(have, 1, sizeof have - 1, fp);
    fclose(fp);
    have[got] = '\0';
    return strcmp(have, want) == 0;
}

static int write_sidecar(const char *path, const char *text, eng_error *err) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fputs(text, fp) < 0 || fclose(fp) != 0) {
        if (fp) fclose(fp);
        return eng_errorf(err, ENG_EIO, "%s: write: %s", path, strerror(errno));
    }
    return 0;
}

/* One GET of the rest of the file; fills t. Returns the curl code. */
static CURLcode get_once(pull_ctx *c, transfer *t, const char *url, char *errbuf) {
    struct curl_slist *headers;
    CURL *h = new_handle(c, &headers, errbuf);
    if (!h) return CURLE_OUT_OF_MEMORY;
    t->h = h;
    t->started = 0;
    t->status = 0;
    t->have_range = 0;
    t->body_len = 0;
    t->body[0] = '\0';
    char range[48];
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, get_header_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, get_write_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, t);
    if (t->offset > 0) {
        snprintf(range, sizeof range, "%llu-", (unsigned long long)t->offset);
        curl_easy_setopt(h, CURLOPT_RANGE, range);
    }
    CURLcode cc = curl_easy_perform(h);
    if (!t->started) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &t->status);
    curl_easy_cleanup(h);
    curl_slist_free_all(headers);
    t->h = NULL;
    return cc;
}

/* Removes the partial file and its sidecar: the error is permanent, nothing may be reused. */
static void discard(const char *part, const char *sidecar) {
    unlink(part);
    unlink(sidecar);
}

/* Checks the finished .part against the announced size and sha256 and moves it into place. */
static int finish_file(pull_ctx *c, transfer *t, const char *part, const char *final,
                       const char *sidecar, eng_error *err) {
    pull_file *f = t->f;
    if (fsync(t->fd) != 0) return eng_errorf(err, ENG_EIO, "%s: fsync: %s", part, strerror(errno));
    if (t->offset != f->remote.size) {
        discard(part, sidecar);
        return eng_errorf(err, ENG_EFORMAT, "%s: got %llu bytes, the server announced %llu",
                          f->name, (unsigned long long)t->offset,
                          (unsigned long long)f->remote.size);
    }
    if (f->remote.sha256[0]) {
        uint8_t digest[SHA256_DIGEST_BYTES];
        char hex[SHA256_HEX_BYTES];
        sha256_final(&t->hash, digest);
        sha256_hex(digest, hex);
        if (strcmp(hex, f->remote.sha256) != 0) {
            discard(part, sidecar);
            return eng_errorf(err, ENG_EFORMAT,
                              "%s: corrupted download: sha256 %s, the server says %s "
                              "(the partial file was removed)",
                              f->name, hex, f->remote.sha256);
        }
    }
    if (rename(part, final) != 0)
        return eng_errorf(err, ENG_EIO, "rename %s -> %s: %s", part, final, strerror(errno));
    (void)c;
    return 0;
}

int pull_fetch_file(pull_ctx *c, pull_file *f, eng_error *err) {
    char part[STORE_PATH_MAX], final[STORE_PATH_MAX], sidecar[STORE_PATH_MAX], url[2048];
    char want[1024], errbuf[CURL_ERROR_SIZE];
    if (snprintf(final, sizeof final, "%s/%s", c->dir, f->name) >= (int)sizeof final ||
        snprintf(part, sizeof part, "%s.part", final) >= (int)sizeof part ||
        snprintf(sidecar, sizeof sidecar, "%s.want", final) >= (int)sizeof sidecar ||
        resolve_url(c, f->name, url, sizeof url))
        return eng_errorf(err, ENG_EINVAL, "%s: path or URL too long", f->name);
    sidecar_text(c, f, want, sizeof want);
    struct stat sb;
    if (stat(final, &sb) == 0) {
        if (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == f->remote.size &&
            sidecar_matches(sidecar, want)) {
            pull_progress_set(c, f, f->remote.size, 0);
            return 0; /* verified by an earlier, interrupted pull */
        }
        unlink(final);
    }
    transfer t = {.c = c, .f = f, .fd = -1};
    sha256_init(&t.hash);
    int resume = stat(part, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0 &&
                 (uint64_t)sb.st_size <= f->remote.size && sidecar_matches(sidecar, want);
    int rc = 0;
    if (!resume) {
        unlink(part);
        if ((rc = write_sidecar(sidecar, want, err))) return rc;
    }
    t.fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC | (resume ? 0 : O_TRUNC), 0644);
    if (t.fd < 0) return eng_errorf(err, ENG_EIO, "%s: open: %s", part, strerror(errno));
    if (resume) {
        t.offset = (uint64_t)sb.st_size;
        if (hash_prefix(&t, t.offset) != 0 || lseek(t.fd, 0, SEEK_END) < 0) {
            rc = eng_errorf(err, ENG_EIO, "%s: read: %s", part, strerror(errno));
            goto out;
        }
        f->resumed = 1;
        pull_logf(c, "%s: resuming at byte %llu of %llu", f->name, (unsigned long long)t.offset,
                  (unsigned long long)f->remote.size);
        pull_progress_set(c, f, t.offset, 0);
    }
    int attempt = 0, delay = c->retry_delay_ms;
    while (t.offset < f->remote.size) {
        if (pull_should_stop(c)) {
            rc = eng_errorf(err, ENG_ECANCELLED, "%s: stopped at byte %llu", f->name,
                            (unsigned long long)t.offset);
            goto out;
        }
        uint64_t before = t.offset;
        CURLcode cc = get_once(c, &t, url, errbuf);
        if (t.failed) {
            rc = eng_errorf(err, t.err.code, "%s", t.err.msg);
            if (rc == ENG_EFORMAT) discard(part, sidecar);
            goto out;
        }
        if (cc == CURLE_OK && (t.status == 200 || t.status == 206)) {
            if (t.offset >= f->remote.size) break;
            cc = CURLE_PARTIAL_FILE; /* a short body without a length: treat as dropped */
        }
        if (cc == CURLE_WRITE_ERROR && pull_should_stop(c)) continue; /* reported above */
        if (t.status == 416 && t.offset > 0) {
            pull_logf(c, "%s: the server refused to resume at byte %llu; starting over", f->name,
                      (unsigned long long)t.offset);
            if (restart_file(&t) != 0) {
                rc = eng_errorf(err, ENG_EIO, "%s: truncate: %s", part, strerror(errno));
                goto out;
            }
            continue;
        }
        int http_error = cc == CURLE_OK && t.status >= 300;
        if (http_error && !status_retryable(t.status)) {
            pull_remote r = f->remote;
            r.status = t.status;
            rc = pull_status_error(c, f->name, &r, err);
            discard(part, sidecar);
            goto out;
        }
        if (!http_error && !curl_retryable(cc)) {
            rc = eng_errorf(err, ENG_EIO, "%s: %s", url,
                            errbuf[0] ? errbuf : curl_easy_strerror(cc));
            goto out;
        }
        if (t.offset > before) attempt = 0, delay = c->retry_delay_ms; /* it was moving */
        char why[CURL_ERROR_SIZE + 32];
        if (http_error)
            snprintf(why, sizeof why, "HTTP %ld", t.status);
        else
            snprintf(why, sizeof why, "%s", errbuf[0] ? errbuf : curl_easy_strerror(cc));
        if (attempt >= c->retries) {
            rc = eng_errorf(err, ENG_EIO,
                            "%s: %s at byte %llu of %llu after %d retries; the partial file is "
                            "kept and the next pull resumes it",
                            f->name, why, (unsigned long long)t.offset,
                            (unsigned long long)f->remote.size, c->retries);
            goto out;
        }
        attempt++;
        pull_logf(c, "%s: %s at byte %llu of %llu; resuming in %.1f s (attempt %d of %d)", f->name,
                  why, (unsigned long long)t.offset, (unsigned long long)f->remote.size,
                  delay / 1000.0, attempt, c->retries);
        if (t.offset > 0) f->resumed = 1;
        backoff_sleep(c, delay);
        delay = next_delay(delay);
    }
    rc = finish_file(c, &t, part, final, sidecar, err);
out:
    if (t.fd >= 0) close(t.fd);
    return rc;
}
