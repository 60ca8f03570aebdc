/* safetensors.c - the validating reader of one .safetensors file.
 *
 * The file is mapped read-only; the JSON header is parsed with cJSON (explicit length, case-
 * sensitive keys) and every claim it makes is checked against the file before a tensor is handed
 * out: the header length, the JSON itself, each entry's dtype, shape and data_offsets, the byte
 * count implied by dtype and shape, the offsets against the data section, overlaps between
 * tensors, and unique names. Nothing of the header is trusted until all of it passed. */
#include "engine/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Integers in the header arrive as JSON numbers (doubles); above 2^53 they are not exact. */
#define ST_MAX_JSON_INT 9007199254740992.0

struct st_file {
    char *path;
    const unsigned char *base; /* whole file: mapping, or the caller's buffer */
    uint64_t size;
    int mapped;                /* base came from mmap() and is unmapped at close */
    st_tensor *tensors;        /* (count), sorted by data offset */
    const st_tensor **by_name; /* (count), sorted by name, for lookup */
    size_t count;
    char *names;        /* every tensor name, NUL-separated */
    char **meta_keys;   /* (nmeta) */
    char **meta_values; /* (nmeta) */
    size_t nmeta;
};

/* A tensor entry as read from the header, before the offsets are made absolute. */
typedef struct entry {
    const char *name; /* points into the cJSON tree until names are copied */
    eng_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;
} entry;

static uint64_t read_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a JSON number that must be a non-negative integer exactly representable in a double.
 * Returns 0 and stores it in *out, or -1. */
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double d = item->valuedouble;
    if (!(d >= 0.0) || d > ST_MAX_JSON_INT || floor(d) != d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static int cmp_string(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Copies the __metadata__ object: every value must be a string and keys unique. */
static int parse_metadata(st_file *f, const cJSON *meta, eng_error *err) {
    if (!cJSON_IsObject(meta))
        return eng_errorf(err, ENG_EFORMAT, "%s: __metadata__ is not a JSON object", f->path);
    size_t n = 0;
    for (const cJSON *it = meta->child; it; it = it->next)
        n++;
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_values = calloc(n ? n : 1, sizeof *f->meta_values);
    if (!f->meta_keys || !f->meta_values)
        return eng_errorf(err, ENG_ENOMEM, "%s: out of memory for metadata", f->path);
    for (const cJSON *it = meta->child; it; it = it->next) {
        if (!cJSON_IsString(it) || !it->valuestring)
            return eng_errorf(err, ENG_EFORMAT, "%s: __metadata__ value of '%s' is not a string",
                              f->path, it->string ? it->string : "");
        f->meta_keys[f->nmeta] = strdup(it->string);
        f->meta_values[f->nmeta] = strdup(it->valuestring);
        f->nmeta++;
        if (!f->meta_keys[f->nmeta - 1] || !f->meta_values[f->nmeta - 1])
            return eng_errorf(err, ENG_ENOMEM, "%s: out of memory for metadata", f->path);
    }
    /* Duplicate keys (cJSON keeps both) found by sorting a copy: a hostile header may hold
     * millions of keys, so no quadratic scan. */
    char **sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) return eng_errorf(err, ENG_ENOMEM, "%s: out of memory for metadata", f->path);
    memcpy(sorted, f->meta_keys, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_string);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            rc = eng_errorf(err, ENG_EFORMAT, "%s: __metadata__ key '%s' appears twice", f->path,
                            sorted[i]);
    free(sorted);
    return rc;
}

/* Validates one tensor entry of the header against itself (dtype, shape, offsets, byte count);
 * the data section bound is checked here too, overlaps later once all entries are known. The
 * entry object must hold exactly "dtype", "shape" and "data_offsets", each once. */
static int parse_entry(const st_file *f, const cJSON *obj, uint64_t data_size, entry *e,
                       eng_error *err) {
    const char *name = obj->string;
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL;
    if (!cJSON_IsObject(obj))
        return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': entry is not a JSON object", f->path,
                          name);
    for (const cJSON *it = obj->child; it; it = it->next) {
        const cJSON **slot = NULL;
        if (strcmp(it->string, "dtype") == 0)
            slot = &dtype;
        else if (strcmp(it->string, "shape") == 0)
            slot = &shape;
        else if (strcmp(it->string, "data_offsets") == 0)
            slot = &offsets;
        else
            return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': unknown field '%s'", f->path,
                              name, it->string);
        if (*slot)
            return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': field '%s' appears twice",
                              f->path, name, it->string);
        *slot = it;
    }
    if (!dtype || !shape || !offsets)
        return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': missing field '%s'", f->path, name,
                          !dtype   ? "dtype"
                          : !shape ? "shape"
                                   : "data_offsets");

    e->name = name;
    if (!cJSON_IsString(dtype) || !dtype->valuestring)
        return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': dtype is not a string", f->path,
                          name);
    e->dtype = eng_dtype_parse(dtype->valuestring);
    if (e->dtype == ENG_DT_INVALID)
        return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': unknown dtype '%.32s'", f->path, name,
                          dtype->valuestring);

    if (!cJSON_IsArray(shape))
        return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': shape is not an array", f->path,
                          name);
    uint64_t numel = 1;
    int overflow = 0;
    e->ndim = 0;
    for (const cJSON *it = shape->child; it; it = it->next) {
        uint64_t dim;
        if (e->ndim == ST_MAX_DIMS)
            return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': more than %d dimensions", f->path,
                              name, ST_MAX_DIMS);
        if (json_uint(it, &dim) != 0)
            return eng_errorf(err, ENG_EFORMAT,
                              "%s: tensor '%s': shape[%d] is not a non-negative integer", f->path,
                              name, e->ndim);
        e->shape[e->ndim++] = (int64_t)dim;
        overflow |= __builtin_mul_overflow(numel, dim, &numel);
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)eng_dtype_size(e->dtype), &nbytes);
    if (overflow)
        return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s': shape's byte count overflows",
                          f->path, name);

    int n = cJSON_GetArraySize(offsets);
    if (!cJSON_IsArray(offsets) || n != 2 || json_uint(offsets->child, &e->begin) != 0 ||
        json_uint(offsets->child->next, &e->end) != 0)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: tensor '%s': data_offsets is not an array of two non-negative "
                          "integers",
                          f->path, name);
    if (e->begin > e->end)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: tensor '%s': data_offsets [%llu,%llu] end before begin", f->path,
                          name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end - e->begin != nbytes)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: tensor '%s': %s shape needs %llu bytes, data_offsets [%llu,%llu] "
                          "hold %llu",
                          f->path, name, eng_dtype_name(e->dtype), (unsigned long long)nbytes,
                          (unsigned long long)e->begin, (unsigned long long)e->end,
                          (unsigned long long)(e->end - e->begin));
    if (e->end > data_size)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: tensor '%s': data_offsets [%llu,%llu] beyond the %llu-byte data "
                          "section (truncated file?)",
                          f->path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                          (unsigned long long)data_size);
    return 0;
}

static int cmp_entry_offset(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_tensor_name(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Checks the whole header and fills f's tensors, names and metadata. The header is
 * base[8, 8 + header_len), the data section follows it up to the end of the file. */
static int parse_header(st_file *f, uint64_t header_len, eng_error *err) {
    const char *json = (const char *)f->base + 8;
    const char *end = NULL;
    entry *entries = NULL;
    int rc = 0;
    uint64_t data_start = 8 + header_len, data_size = f->size - data_start;

    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)header_len, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - json) : 0;
        return eng_errorf(err, ENG_EFORMAT, "%s: header is not valid JSON (near byte %zu of %llu)",
                          f->path, at, (unsigned long long)header_len);
    }
    /* The format pads the header with spaces; JSON whitespace is all we accept after it. */
    for (const char *p = end; p < json + header_len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = eng_errorf(err, ENG_EFORMAT,
                            "%s: header has trailing bytes after the JSON "
                            "(at byte %zu of %llu)",
                            f->path, (size_t)(p - json), (unsigned long long)header_len);
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: header is not a JSON object", f->path);
        goto out;
    }

    size_t n = 0;
    int seen_meta = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        n++;
    entries = calloc(n ? n : 1, sizeof *entries);
    if (!entries) {
        rc = eng_errorf(err, ENG_ENOMEM, "%s: out of memory for %zu header entries", f->path, n);
        goto out;
    }
    size_t names_bytes = 0;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (seen_meta) {
                rc = eng_errorf(err, ENG_EFORMAT, "%s: __metadata__ appears twice", f->path);
                goto out;
            }
            seen_meta = 1;
            if ((rc = parse_metadata(f, it, err)) != 0) goto out;
            continue;
        }
        if (it->string[0] == '\0') {
            rc = eng_errorf(err, ENG_EFORMAT, "%s: a tensor has an empty name", f->path);
            goto out;
        }
        if ((rc = parse_entry(f, it, data_size, &entries[f->count], err)) != 0) goto out;
        names_bytes += strlen(it->string) + 1;
        f->count++;
    }

    /* Overlaps: sorted by begin, each tensor must end before the next begins. Zero-byte
     * tensors occupy nothing and overlap nothing. */
    qsort(entries, f->count, sizeof *entries, cmp_entry_offset);
    const entry *prev = NULL;
    for (size_t i = 0; i < f->count; i++) {
        if (entries[i].begin == entries[i].end) continue;
        if (prev && prev->end > entries[i].begin) {
            rc = eng_errorf(err, ENG_EFORMAT,
                            "%s: tensor '%s' [%llu,%llu] overlaps tensor '%s' [%llu,%llu]", f->path,
                            entries[i].name, (unsigned long long)entries[i].begin,
                            (unsigned long long)entries[i].end, prev->name,
                            (unsigned long long)prev->begin, (unsigned long long)prev->end);
            goto out;
        }
        prev = &entries[i];
    }

    f->tensors = calloc(f->count ? f->count : 1, sizeof *f->tensors);
    f->by_name = calloc(f->count ? f->count : 1, sizeof *f->by_name);
    f->names = malloc(names_bytes ? names_bytes : 1);
    if (!f->tensors || !f->by_name || !f->names) {
        rc = eng_errorf(err, ENG_ENOMEM, "%s: out of memory for %zu tensors", f->path, f->count);
        goto out;
    }
    char *name_at = f->names;
    for (size_t i = 0; i < f->count; i++) {
        const entry *e = &entries[i];
        st_tensor *t = &f->tensors[i];
        size_t len = strlen(e->name) + 1;
        memcpy(name_at, e->name, len);
        t->name = name_at;
        name_at += len;
        t->dtype = e->dtype;
        t->ndim = e->ndim;
        memcpy(t->shape, e->shape, sizeof t->shape);
        t->nbytes = e->end - e->begin;
        t->offset = data_start + e->begin;
        t->data = f->base + t->offset;
        t->file = f->path;
        f->by_name[i] = t;
    }
    /* cJSON keeps duplicate keys; sorting by name puts them side by side. */
    qsort(f->by_name, f->count, sizeof *f->by_name, cmp_tensor_name);
    for (size_t i = 1; i < f->count; i++) {
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            rc = eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s' appears twice in the header",
                            f->path, f->by_name[i]->name);
            goto out;
        }
    }
out:
    free(entries);
    cJSON_Delete(root);
    return rc;
}

/* Validates the container (length prefix, header bound) and the header of the bytes at
 * f->base; shared by the file and the in-memory entry points. */
static int st_validate(st_file *f, eng_error *err) {
    if (f->size < 8)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: file is %llu bytes, too small for the 8-byte header length", f->path,
                          (unsigned long long)f->size);
    uint64_t header_len = read_le64(f->base);
    if (header_len > ST_MAX_HEADER_BYTES)
        return eng_errorf(err, ENG_EFORMAT, "%s: header length %llu exceeds the %u-byte limit",
                          f->path, (unsigned long long)header_len, ST_MAX_HEADER_BYTES);
    if (header_len > f->size - 8)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: header length %llu exceeds the file (%llu bytes after the length)",
                          f->path, (unsigned long long)header_len,
                          (unsigned long long)(f->size - 8));
    if (header_len < 2)
        return eng_errorf(err, ENG_EFORMAT, "%s: header length %llu is too small for JSON", f->path,
                          (unsigned long long)header_len);
    return parse_header(f, header_len, err);
}

static st_file *st_file_alloc(const char *path, eng_error *err) {
    st_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(path);
    if (!f || !f->path) {
        free(f);
        eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    return f;
}

/* Maps the file read-only and validates it; on failure nothing stays open or allocated. */
int st_open(st_file **out, const char *path, eng_error *err) {
    *out = NULL;
    st_file *f = st_file_alloc(path, err);
    if (!f) return ENG_ENOMEM;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = eng_errorf(err, errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO, "%s: cannot open: %s", path,
                        strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = eng_errorf(err, ENG_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: not a regular file", path);
        goto fail;
    }
    f->size = (uint64_t)st.st_size;
    if (f->size > 0) {
        void *map = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            rc = eng_errorf(err, ENG_EIO, "%s: cannot map %llu bytes: %s", path,
                            (unsigned long long)f->size, strerror(errno));
            goto fail;
        }
        f->base = map;
        f->mapped = 1;
    }
    close(fd);
    fd = -1;
    if ((rc = st_validate(f, err)) != 0) goto fail;
    *out = f;
    return 0;
fail:
    if (fd >= 0) close(fd);
    st_close(f);
    return rc;
}

/* Validates a safetensors image already in memory; `name` stands for the path in messages.
 * The tensors point into `data`, which must outlive the st_file. */
int st_open_memory(st_file **out, const void *data, size_t size, const char *name, eng_error *err) {
    *out = NULL;
    st_file *f = st_file_alloc(name, err);
    if (!f) return ENG_ENOMEM;
    f->base = data;
    f->size = size;
    int rc = st_validate(f, err);
    if (rc != 0) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void st_close(st_file *f) {
    if (!f) return;
    if (f->mapped) munmap((void *)f->base, (size_t)f->size);
    for (size_t i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->tensors);
    free(f->by_name);
    free(f->names);
    free(f->path);
    free(f);
}

size_t st_count(const st_file *f) {
    return f->count;
}

const st_tensor *st_at(const st_file *f, size_t i) {
    return i < f->count ? &f->tensors[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    size_t lo = 0, hi = f->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->by_name[mid]->name);
        if (c == 0) return f->by_name[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *st_metadata(const st_file *f, const char *key) {
    for (size_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

size_t st_metadata_count(const st_file *f) {
    return f->nmeta;
}

const char *st_metadata_key(const st_file *f, size_t i) {
    return i < f->nmeta ? f->meta_keys[i] : NULL;
}

const char *st_path(const st_file *f) {
    return f->path;
}

uint64_t st_file_size(const st_file *f) {
    return f->size;
}
