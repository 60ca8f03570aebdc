/* job.c - the job schema (v1): parse and validate one payload with cJSON.
 *
 * cJSON 1.7.15 pitfalls handled here (spec/queue.md §4.10): lookups are case-sensitive
 * (cJSON_GetObjectItemCaseSensitive), the length is explicit (cJSON_ParseWithLengthOpts), the
 * nesting limit is cJSON's 1000, invalid UTF-8 passes cJSON unchecked so text is validated here,
 * "\u0000" would silently truncate a cJSON string so payloads holding it are refused,
 * numbers are doubles so ids must be strings. With duplicate keys cJSON returns the first, and
 * the first wins (spec §6 case 6); the scripts' Lua cjson would take the last, so a payload that
 * repeats a key is kept in Redis in its canonical form (queue_job_canonical). cJSON also skips
 * a leading byte-order mark and takes any byte <= 32 as whitespace, where Lua cjson refuses
 * both: such payloads are refused here (refuse_before_cjson), or the reaper could not count
 * the crashes of the job (docs/queue.md, Reaper). */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "queue/queue.h"

void queue_job_limits_default(queue_job_limits *lim) {
    lim->max_payload_bytes = 1 << 20;
    lim->max_text_bytes = 1024;
    lim->max_attempts_cap = 10;
    lim->max_seconds_cap = 60;
    lim->timeout_s_cap = 3600;
    lim->result_ttl_cap_s = 30L * 86400;
    lim->key_prefix = "voxq:";
}

/* 1 when key is one of the service's own keys under prefix. With a prefix the whole namespace
 * is the service's (keys added later included); without one only the names it uses. */
static int key_reserved(const char *key, const char *prefix) {
    size_t n = strlen(prefix);
    if (strncmp(key, prefix, n) != 0) return 0;
    if (n > 0) return 1;
    static const char *const exact[] = {"jobs", "jobs:hi", "workers", "delayed", "dead", NULL};
    static const char *const families[] = {"proc:", "hb:", "job:", "cancel:", "lock:", "ev:",
                                           "reaper:", NULL};
    for (const char *const *e = exact; *e; e++)
        if (!strcmp(key, *e)) return 1;
    for (const char *const *f = families; *f; f++)
        if (!strncmp(key, *f, strlen(*f))) return 1;
    return 0;
}

void queue_random_hex(char out[33]) {
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        /* Fallback only when getrandom is unavailable: not secret, just unlikely to collide. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
                     ((uint64_t)getpid() << 40);
        for (int i = 0; i < 16; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b[i] = (unsigned char)x;
        }
    }
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

int queue_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c == 0) return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        int extra;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) {
            extra = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return 0; /* continuation byte, overlong lead C0/C1, or > U+10FFFF */
        }
        if ((size_t)extra >= n - i) return 0; /* truncated sequence */
        for (int k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
        i += (size_t)extra + 1;
    }
    return 1;
}

int queue_id_valid(const char *id, size_t n) {
    if (n < 1 || n > QUEUE_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!(isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-')) return 0;
    }
    return 1;
}

int queue_path_safe(const char *rel) {
    size_t n = strlen(rel);
    if (n == 0 || n > QUEUE_PATH_MAX) return 0;
    const char *comp = rel;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || rel[i] == '/') {
            size_t len = (size_t)(rel + i - comp);
            if (len == 0 || comp[0] == '.') return 0; /* "", ".", "..", hidden names */
            comp = rel + i + 1;
            continue;
        }
        unsigned char c = (unsigned char)rel[i];
        if (!(isalnum(c) || c == '.' || c == '_' || c == '-')) return 0;
    }
    return 1;
}

char *queue_job_with_id(const char *raw, size_t len, const char *id, size_t *out_len) {
    size_t at = 0;
    while (at < len && raw[at] != '{') at++;
    if (at == len) return NULL;
    size_t idn = strlen(id);
    /* Is the object empty ("{ }")? Then no comma after the inserted member. */
    size_t k = at + 1;
    while (k < len && isspace((unsigned char)raw[k])) k++;
    int empty = k < len && raw[k] == '}';
    size_t n = len + idn + 9;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, raw, at + 1);
    size_t w = at + 1;
    w += (size_t)sprintf(s + w, "\"id\":\"%s\"%s", id, empty ? "" : ",");
    memcpy(s + w, raw + at + 1, len - at - 1);
    w += len - at - 1;
    s[w] = '\0';
    *out_len = w;
    return s;
}

static int fail(queue_job_error *err, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records a validation failure; always returns -1 so callers can `return fail(...)`. */
static int fail(queue_job_error *err, const char *code, const char *field, const char *fmt, ...) {
    snprintf(err->code, sizeof err->code, "%s", code);
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* Copies an optional string field into dst (cap bytes incl. NUL). Returns 0 when absent or
 * copied, -1 (with err) when it is not a string, is empty, too long, or holds a NUL escape. */
static int get_string(const cJSON *obj, const char *field, char *dst, size_t cap,
                      queue_job_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, field);
    if (!it) return 0;
    if (!cJSON_IsString(it) || !it->valuestring)
        return fail(err, "invalid_field", field, "field '%s' must be a string", field);
    size_t n = strlen(it->valuestring);
    if (n == 0) return fail(err, "invalid_field", field, "field '%s' must not be empty", field);
    if (n >= cap)
        return fail(err, "invalid_field", field, "field '%s' is longer than %zu bytes", field,
                    cap - 1);
    memcpy(dst, it->valuestring, n + 1);
    return 0;
}

/* Reads an optional number field in [lo, hi] into *dst. integer: must be a whole number. */
static int get_number(const cJSON *obj, const char *field, double lo, double hi, int integer,
                      double *dst, queue_job_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, field);
    if (!it) return 0;
    if (!cJSON_IsNumber(it))
        return fail(err, "invalid_field", field, "field '%s' must be a number", field);
    double v = it->valuedouble;
    if (!isfinite(v) || v < lo || v > hi)
        return fail(err, "invalid_field", field, "field '%s' = %g is outside [%g, %g]", field, v,
                    lo, hi);
    if (integer && v != floor(v))
        return fail(err, "invalid_field", field, "field '%s' must be an integer", field);
    *dst = v;
    return 0;
}

static int get_bool(const cJSON *obj, const char *field, int *dst, queue_job_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, field);
    if (!it) return 0;
    if (!cJSON_IsBool(it))
        return fail(err, "invalid_field", field, "field '%s' must be true or false", field);
    *dst = cJSON_IsTrue(it) ? 1 : 0;
    return 0;
}

/* The fields each job type knows; anything else is ignored and listed for the log. */
static const char *const common_fields[] = {"v", "id", "type", "max_attempts", "timeout_s",
                                            "priority", "reply_to", "result_ttl_s", NULL};
static const char *const synth_fields[] = {"text", "model", "variant", "format", "seed", "speed",
                                           "cfg_scale", "temperature", "top_p",
                                           "cfg_filter_top_k", "max_seconds", "output", NULL};
static const char *const quant_fields[] = {"model", "source", "method", "force", NULL};

static int in_list(const char *const *list, const char *s) {
    for (; *list; list++)
        if (strcmp(*list, s) == 0) return 1;
    return 0;
}

/* One top-level member of a payload, for finding repeated keys. */
typedef struct member_key {
    const char *key; /* as decoded: "i\u0064" is "id", to cJSON and to Lua cjson alike */
    size_t at;       /* position in the object */
} member_key;

static int member_key_cmp(const void *a, const void *b) {
    const member_key *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c != 0) return c;
    return x->at < y->at ? -1 : x->at > y->at;
}

/* Counts the top-level members of obj whose key an earlier member already has, and when later
 * is not NULL sets later[i] to 1 for each of them (i = position in the object), 0 for the rest:
 * what is left is the first of each key, the one cJSON_GetObjectItemCaseSensitive returns, so
 * what queue_job_parse read. Sorted, so O(n log n) in the members, of which a 1 MiB payload can
 * hold 10^5. Returns the count, or -1 when out of memory. */
static long mark_repeats(const cJSON *obj, unsigned char *later) {
    size_t n = 0;
    for (const cJSON *it = obj->child; it; it = it->next) n++;
    if (later) memset(later, 0, n);
    if (n < 2) return 0;
    member_key *m = malloc(n * sizeof *m);
    if (!m) return -1;
    size_t k = 0;
    for (const cJSON *it = obj->child; it; it = it->next, k++)
        m[k] = (member_key){it->string ? it->string : "", k};
    qsort(m, n, sizeof *m, member_key_cmp);
    long repeats = 0;
    for (size_t i = 1; i < n; i++) {
        if (strcmp(m[i].key, m[i - 1].key) != 0) continue;
        repeats++;
        if (later) later[m[i].at] = 1;
    }
    free(m);
    return repeats;
}

/* raw[at..] past what cJSON skips as whitespace (every byte <= 32). */
static size_t skip_space(const char *raw, size_t len, size_t at) {
    while (at < len && (unsigned char)raw[at] <= 32) at++;
    return at;
}

/* Past the JSON value (or key) starting at raw[at]: a string, an object or array with what it
 * holds, or a scalar. raw is JSON that cJSON accepted, so no error is checked for. */
static size_t skip_value(const char *raw, size_t len, size_t at) {
    int depth = 0, in_string = 0;
    for (; at < len; at++) {
        char c = raw[at];
        if (in_string) {
            if (c == '\\') {
                at++;
            } else if (c == '"') {
                in_string = 0;
                if (depth == 0) return at + 1;
            }
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) return at; /* the end of a scalar that closes its container */
            if (--depth == 0) return at + 1;
        } else if (depth == 0 && (c == ',' || (unsigned char)c <= 32)) {
            return at;
        }
    }
    return at;
}

/* raw (an object cJSON parsed as obj) without the members marked in later[], and with
 * "id":"<id>" first when id is not NULL. The members kept are copied byte for byte: a reprint
 * would not do, cJSON prints numbers with 15 significant digits when that reads back within
 * an epsilon, so a seed of 9007199254740991 would come back as 9007199254740990. NULL on OOM
 * or if raw does not have obj's shape (it always has). */
static char *splice_members(const char *raw, size_t len, const cJSON *obj,
                            const unsigned char *later, const char *id, size_t *out_len) {
    size_t open = skip_space(raw, len, 0); /* no byte-order mark: refuse_before_cjson */
    if (open >= len || raw[open] != '{') return NULL;
    size_t idn = id ? strlen(id) + 8 : 0; /* "id":"<id>", */
    char *out = malloc(len + idn + 1);
    if (!out) return NULL;
    memcpy(out, raw, open + 1);
    size_t w = open + 1;
    if (id) w += (size_t)sprintf(out + w, "\"id\":\"%s\"", id);
    size_t at = open + 1, close = skip_space(raw, len, open + 1); /* "{}" has no members */
    size_t i = 0;
    for (const cJSON *it = obj->child; it; it = it->next, i++) {
        size_t start = skip_space(raw, len, at);
        at = skip_space(raw, len, skip_value(raw, len, start)); /* past the key */
        if (at >= len || raw[at] != ':') break;
        at = skip_value(raw, len, skip_space(raw, len, at + 1)); /* past the value */
        if (!later[i]) {
            if (w > open + 1) out[w++] = ',';
            memcpy(out + w, raw + start, at - start);
            w += at - start;
        }
        close = at = skip_space(raw, len, at);
        if (at < len && raw[at] == ',') at++;
    }
    if (i != (size_t)cJSON_GetArraySize(obj) || close >= len || raw[close] != '}') {
        free(out);
        return NULL;
    }
    memcpy(out + w, raw + close, len - close);
    w += len - close;
    out[w] = '\0';
    *out_len = w;
    return out;
}

/* The default output "<name>.<format>" of a job, where name is its id made a file name. Ids may
 * hold ':' and start with '.', file names here may not (a leading '.' would also look like a
 * writer's temp file), so '_' escapes: '_' -> "__", ':' -> "_-", a leading '.' -> "_.". No
 * escape is a prefix of another, so distinct ids never share a file ("a:b" is "a_-b", "a_b" is
 * "a__b"). Returns -1 when the name does not fit in cap bytes (an id of 128 mostly ':' or '_'). */
static int default_output(const char *id, const char *format, char *out, size_t cap) {
    size_t w = 0;
    for (const char *c = id; *c; c++) {
        char esc = *c == '_' ? '_' : *c == ':' ? '-' : (*c == '.' && c == id) ? '.' : 0;
        if (w + 2 >= cap) return -1;
        if (esc) {
            out[w++] = '_';
            out[w++] = esc;
        } else {
            out[w++] = *c;
        }
    }
    int n = snprintf(out + w, cap - w, ".%s", format);
    return n < 0 || (size_t)n >= cap - w ? -1 : 0;
}

/* Fields every synthesize job may carry. Knobs outside the ranges Dia accepts are rejected so a
 * bad request fails fast instead of sampling garbage. */
static int parse_synthesize(const cJSON *obj, const queue_job_limits *lim, queue_job *job,
                            queue_job_error *err) {
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, "text");
    if (!text) return fail(err, "missing_field", "text", "field 'text' is required");
    if (!cJSON_IsString(text) || !text->valuestring)
        return fail(err, "invalid_field", "text", "field 'text' must be a string");
    size_t n = strlen(text->valuestring);
    if (n == 0) return fail(err, "missing_field", "text", "field 'text' must not be empty");
    if (n > lim->max_text_bytes)
        return fail(err, "text_too_long", "text", "field 'text' has %zu bytes; the maximum is %zu",
                    n, lim->max_text_bytes);
    if (!queue_utf8_valid(text->valuestring, n))
        return fail(err, "invalid_utf8", "text", "field 'text' is not valid UTF-8");
    if (get_string(obj, "model", job->model, sizeof job->model, err) ||
        get_string(obj, "variant", job->variant, sizeof job->variant, err) ||
        get_string(obj, "format", job->format, sizeof job->format, err) ||
        get_string(obj, "output", job->output, sizeof job->output, err))
        return -1;
    if (job->variant[0] && strcmp(job->variant, "original") && strcmp(job->variant, "int8") &&
        strcmp(job->variant, "int4") && strcmp(job->variant, "auto"))
        return fail(err, "invalid_field", "variant",
                    "field 'variant' must be auto, original, int8 or int4, not '%s'", job->variant);
    if (!job->format[0]) strcpy(job->format, "wav");
    if (strcmp(job->format, "wav") && strcmp(job->format, "flac") && strcmp(job->format, "ogg"))
        return fail(err, "invalid_field", "format", "field 'format' must be wav, flac or ogg");
    double seed = -1, top_k = 45;
    job->cfg_scale = 3.0;
    job->temperature = 1.2;
    job->top_p = 0.95;
    if (get_number(obj, "seed", 0, 9007199254740991.0, 1, &seed, err) ||
        get_number(obj, "cfg_scale", 1.0, 20.0, 0, &job->cfg_scale, err) ||
        get_number(obj, "temperature", 0.0, 5.0, 0, &job->temperature, err) ||
        get_number(obj, "top_p", 0.0, 1.0, 0, &job->top_p, err) ||
        get_number(obj, "cfg_filter_top_k", 1, 1028, 1, &top_k, err) ||
        get_number(obj, "max_seconds", 0.1, lim->max_seconds_cap, 0, &job->max_seconds, err))
        return -1;
    if (seed >= 0) {
        job->seed = (uint64_t)seed;
        job->has_seed = 1;
    }
    job->cfg_filter_top_k = (int)top_k;
    /* Dia has no speed control; the field is reserved so a request for one fails loudly. */
    double speed = 1.0;
    if (get_number(obj, "speed", 1.0, 1.0, 0, &speed, err)) return -1;
    if (job->output[0]) {
        if (!queue_path_safe(job->output))
            return fail(err, "path_escape", "output",
                        "field 'output' must be a relative path inside the output directory "
                        "(components of [A-Za-z0-9._-], no '..' or leading '.')");
    } else if (default_output(job->id, job->format, job->output, sizeof job->output) != 0) {
        return fail(err, "invalid_field", "output",
                    "the default file name made from this id is longer than %d bytes; give "
                    "field 'output'", QUEUE_PATH_MAX);
    }
    job->text = malloc(n + 1);
    if (!job->text) return fail(err, "invalid_field", "text", "out of memory copying 'text'");
    memcpy(job->text, text->valuestring, n + 1);
    job->text_len = n;
    return 0;
}

static int parse_quantize(const cJSON *obj, queue_job *job, queue_job_error *err) {
    if (get_string(obj, "model", job->model, sizeof job->model, err) ||
        get_string(obj, "source", job->source, sizeof job->source, err) ||
        get_string(obj, "method", job->method, sizeof job->method, err) ||
        get_bool(obj, "force", &job->force, err))
        return -1;
    if (!job->method[0]) return fail(err, "missing_field", "method", "field 'method' is required");
    if (strcmp(job->method, "int8") && strcmp(job->method, "int4"))
        return fail(err, "invalid_field", "method", "field 'method' must be int8 or int4, not '%s'",
                    job->method);
    if (job->model[0] && !queue_path_safe(job->model))
        return fail(err, "invalid_field", "model", "field 'model' must be a plain name");
    /* Only the original weights can be quantized (worker/quantize.h): any other source is bad
     * input, so it is rejected here rather than failed by the worker. */
    if (!job->source[0]) strcpy(job->source, "original");
    if (strcmp(job->source, "original") != 0)
        return fail(err, "invalid_field", "source",
                    "field 'source' must be \"original\" (the only variant that is quantized)");
    return 0;
}

/* One pass over the payload before cJSON reads it, refusing what cJSON would read wrongly or
 * the scripts' Lua cjson not at all:
 *   - "\u0000": cJSON turns it into a NUL that silently truncates the string;
 *   - a UTF-8 byte-order mark at the start, and a control byte other than tab, newline and
 *     carriage return between tokens: cJSON skips them (every byte <= 32 is whitespace to it),
 *     Lua cjson refuses them, and a payload the scripts cannot decode would escape the reaper's
 *     recovery count, so it must not run. Inside strings both take raw control bytes.
 * buf holds len bytes and no NUL (checked before). Returns 0 or -1 with err. */
static int refuse_before_cjson(const char *buf, size_t len, queue_job_error *err) {
    if (len >= 3 && !memcmp(buf, "\xEF\xBB\xBF", 3))
        return fail(err, "invalid_json", "", "payload is not JSON: it starts with a UTF-8 "
                    "byte-order mark (EF BB BF), which voxq does not accept");
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\\') {
            if (i + 6 <= len && buf[i + 1] == 'u' && !memcmp(buf + i + 2, "0000", 4))
                return fail(err, "invalid_json", "", "payload holds \\u0000 at offset %zu, "
                            "which voxq does not accept", i);
            i++; /* the escaped byte neither ends a string nor starts an escape */
        } else if (in_string) {
            if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            return fail(err, "invalid_json", "", "payload is not JSON: control byte 0x%02X at "
                        "offset %zu outside a string (only space, tab, newline and carriage "
                        "return may separate tokens)", c, i);
        }
    }
    return 0;
}

int queue_job_parse(const char *raw, size_t len, const queue_job_limits *lim, queue_job *job,
                    queue_job_error *err) {
    queue_job_limits dl;
    if (!lim) {
        queue_job_limits_default(&dl);
        lim = &dl;
    }
    memset(job, 0, sizeof *job);
    memset(err, 0, sizeof *err);
    job->result_ttl_s = QUEUE_RESULT_TTL_S; /* what a rejection uses when none was parsed */
    if (len > lim->max_payload_bytes)
        return fail(err, "too_large", "", "payload has %zu bytes; the maximum is %zu", len,
                    lim->max_payload_bytes);
    /* cJSON needs a terminated buffer for the require-termination check; raw may not be. */
    char *buf = malloc(len + 1);
    if (!buf) return fail(err, "too_large", "", "out of memory for %zu bytes", len);
    memcpy(buf, raw, len);
    buf[len] = '\0';
    int rc = -1;
    const char *nul = memchr(buf, '\0', len);
    if (nul) {
        /* cJSON would stop at the NUL and accept a prefix of the payload. */
        fail(err, "invalid_json", "", "payload is not JSON: NUL byte at offset %zu",
             (size_t)(nul - buf));
        free(buf);
        return -1;
    }
    if (refuse_before_cjson(buf, len, err) != 0) {
        free(buf);
        return -1;
    }
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 1);
    if (!obj) {
        size_t at = end && end >= buf ? (size_t)(end - buf) : 0;
        fail(err, "invalid_json", "", "payload is not JSON (error near byte %zu of %zu)", at, len);
        goto out;
    }
    if (!cJSON_IsObject(obj)) {
        fail(err, "not_object", "", "payload must be a JSON object");
        goto out;
    }
    /* Repeated keys: the first wins (cJSON's lookups return it); the caller stores the job
     * without the repeats, so the scripts read the same job (queue_job_canonical). */
    long dups = mark_repeats(obj, NULL);
    if (dups < 0) {
        fail(err, "too_large", "", "out of memory checking the payload for repeated keys");
        goto out;
    }
    job->duplicate_keys = (int)(dups < INT_MAX ? dups : INT_MAX);
    /* reply_to before the other fields: a job rejected for any of them still gets its one
     * terminal message there (queue.md 32). A bad reply_to itself is left empty (nothing is
     * pushed there) and reported once the id is read, so the job's record says why. */
    queue_job_error reply_err;
    memset(&reply_err, 0, sizeof reply_err);
    int reply_bad =
        get_string(obj, "reply_to", job->reply_to, sizeof job->reply_to, &reply_err);
    const char *prefix = lim->key_prefix ? lim->key_prefix : "voxq:";
    if (!reply_bad && job->reply_to[0] &&
        !queue_utf8_valid(job->reply_to, strlen(job->reply_to))) {
        job->reply_to[0] = '\0';
        reply_bad = fail(&reply_err, "invalid_field", "reply_to",
                         "field 'reply_to' is not valid UTF-8");
    } else if (!reply_bad && job->reply_to[0] && key_reserved(job->reply_to, prefix)) {
        job->reply_to[0] = '\0';
        reply_bad = fail(&reply_err, "invalid_field", "reply_to",
                         "field 'reply_to' names a key of the queue service itself (prefix "
                         "'%.60s'); use a list key outside it", prefix);
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    if (id) {
        if (!cJSON_IsString(id) || !id->valuestring) {
            fail(err, "invalid_id", "id", "field 'id' must be a string of [A-Za-z0-9._:-]{1,128}");
            goto out;
        }
        size_t n = strlen(id->valuestring);
        if (!queue_id_valid(id->valuestring, n)) {
            fail(err, "invalid_id", "id",
                 "field 'id' must match [A-Za-z0-9._:-]{1,128} (got %zu bytes)", n);
            goto out;
        }
        memcpy(job->id, id->valuestring, n + 1);
    } else {
        char hex[33];
        queue_random_hex(hex);
        snprintf(job->id, sizeof job->id, "w-%s", hex);
        job->id_assigned = 1;
    }
    if (reply_bad) {
        *err = reply_err;
        goto out;
    }
    /* result_ttl_s next, so a job rejected for a later field keeps its record as long as it
     * asked (when it asked validly); otherwise the default stays. */
    double ttl = QUEUE_RESULT_TTL_S;
    if (get_number(obj, "result_ttl_s", 1, (double)lim->result_ttl_cap_s, 1, &ttl, err))
        goto out;
    job->result_ttl_s = (long)ttl;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "v");
    if (v && !(cJSON_IsNumber(v) && v->valuedouble == 1)) {
        fail(err, "invalid_field", "v", "field 'v' must be 1 (this worker speaks schema v1)");
        goto out;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "type");
    if (!type) {
        fail(err, "missing_field", "type", "field 'type' is required (synthesize or quantize)");
        goto out;
    }
    if (cJSON_IsString(type) && type->valuestring && !strcmp(type->valuestring, "synthesize"))
        job->type = QUEUE_JOB_SYNTHESIZE;
    else if (cJSON_IsString(type) && type->valuestring && !strcmp(type->valuestring, "quantize"))
        job->type = QUEUE_JOB_QUANTIZE;
    else {
        fail(err, "unknown_type", "type", "field 'type' must be \"synthesize\" or \"quantize\"");
        goto out;
    }
    double max_attempts = 3;
    char priority[16] = "";
    if (get_number(obj, "max_attempts", 1, lim->max_attempts_cap, 1, &max_attempts, err) ||
        get_number(obj, "timeout_s", 0, lim->timeout_s_cap, 0, &job->timeout_s, err) ||
        get_string(obj, "priority", priority, sizeof priority, err))
        goto out;
    job->max_attempts = (int)max_attempts;
    if (priority[0] && strcmp(priority, "hi") && strcmp(priority, "normal")) {
        fail(err, "invalid_field", "priority", "field 'priority' must be \"hi\" or \"normal\"");
        goto out;
    }
    job->priority_hi = !strcmp(priority, "hi");
    rc = job->type == QUEUE_JOB_SYNTHESIZE ? parse_synthesize(obj, lim, job, err)
                                           : parse_quantize(obj, job, err);
    if (rc != 0) goto out;
    /* List unknown fields for the log; they are ignored, never an error. */
    const char *const *typed = job->type == QUEUE_JOB_SYNTHESIZE ? synth_fields : quant_fields;
    size_t w = 0;
    for (const cJSON *it = obj->child; it; it = it->next) {
        if (!it->string || in_list(common_fields, it->string) || in_list(typed, it->string))
            continue;
        int m = snprintf(job->ignored + w, sizeof job->ignored - w, "%s%.40s", w ? "," : "",
                         it->string);
        if (m < 0 || (size_t)m >= sizeof job->ignored - w) break;
        w += (size_t)m;
    }
out:
    cJSON_Delete(obj);
    free(buf);
    if (rc != 0) {
        free(job->text);
        job->text = NULL;
    }
    return rc;
}

void queue_job_free(queue_job *job) {
    if (!job) return;
    free(job->text);
    job->text = NULL;
}

int queue_job_canonical(const char *raw, size_t len, const queue_job *job, char **out,
                        size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (!job->duplicate_keys) {
        if (!job->id_assigned) return 0; /* raw is what the scripts should read */
        *out = queue_job_with_id(raw, len, job->id, out_len);
        return *out ? 0 : -1;
    }
    /* Repeated keys: which to drop is cJSON's reading of the keys (decoded, in order), as
     * queue_job_parse saw them; raw passed it, so it parses again and only memory can fail. */
    char *buf = malloc(len + 1);
    if (!buf) return -1;
    memcpy(buf, raw, len);
    buf[len] = '\0';
    cJSON *obj = cJSON_ParseWithLengthOpts(buf, len + 1, NULL, 1);
    free(buf);
    unsigned char *later = obj ? malloc((size_t)cJSON_GetArraySize(obj) + 1) : NULL;
    if (later && cJSON_IsObject(obj) && mark_repeats(obj, later) >= 0)
        *out = splice_members(raw, len, obj, later, job->id_assigned ? job->id : NULL, out_len);
    free(later);
    cJSON_Delete(obj);
    return *out ? 0 : -1;
}
