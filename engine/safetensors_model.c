/* safetensors_model.c - a checkpoint as one set of tensors: a single model.safetensors, or the
 * shards that model.safetensors.index.json names (the transformers convention).
 *
 * The index is as untrusted as the shards: its weight_map must be an object of unique tensor
 * names to plain shard file names (no '/', no ".."), every shard must open and validate, and
 * every tensor the index names must be in the shard it names. */
#include "engine/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* An index lists names and file names only; anything bigger is not an index. */
#define ST_MAX_INDEX_BYTES (64u * 1024u * 1024u)

struct st_model {
    st_file **files; /* (nfiles) */
    size_t nfiles;
    const st_tensor **tensors; /* (count), by file then data offset */
    const st_tensor **by_name; /* (count), sorted by name */
    size_t count;
};

static int cmp_tensor_name(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Builds the name index; two files holding the same tensor name is an error. */
static int model_index_names(st_model *m, eng_error *err) {
    m->by_name = malloc((m->count ? m->count : 1) * sizeof *m->by_name);
    if (!m->by_name) return eng_errorf(err, ENG_ENOMEM, "out of memory for %zu tensors", m->count);
    memcpy(m->by_name, m->tensors, m->count * sizeof *m->by_name);
    qsort(m->by_name, m->count, sizeof *m->by_name, cmp_tensor_name);
    for (size_t i = 1; i < m->count; i++) {
        if (m->by_name[i - 1] == m->by_name[i])
            return eng_errorf(err, ENG_EFORMAT, "tensor '%s' appears twice", m->by_name[i]->name);
        if (strcmp(m->by_name[i - 1]->name, m->by_name[i]->name) == 0)
            return eng_errorf(err, ENG_EFORMAT, "tensor '%s' is in both %s and %s",
                              m->by_name[i]->name, m->by_name[i - 1]->file, m->by_name[i]->file);
    }
    return 0;
}

/* Reads a whole small file (the index) into a NUL-terminated buffer. */
static int read_small_file(const char *path, char **out, size_t *len, eng_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return eng_errorf(err, errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO, "%s: cannot open: %s",
                          path, strerror(errno));
    struct stat st;
    int rc = 0;
    char *buf = NULL;
    if (fstat(fd, &st) != 0) {
        rc = eng_errorf(err, ENG_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > ST_MAX_INDEX_BYTES) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: not a regular file of at most %u bytes", path,
                        ST_MAX_INDEX_BYTES);
        goto out;
    }
    size_t size = (size_t)st.st_size, got = 0;
    buf = malloc(size + 1);
    if (!buf) {
        rc = eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = eng_errorf(err, ENG_EIO, "%s: read failed: %s", path,
                            r < 0 ? strerror(errno) : "file shrank");
            goto out;
        }
        got += (size_t)r;
    }
    buf[size] = '\0';
    *out = buf;
    *len = size;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

/* A shard name from the index must name a file in the index's own directory. */
static int shard_name_ok(const char *name) {
    return name[0] != '\0' && !strchr(name, '/') && !strstr(name, "..");
}

/* Opens the shards named by the index at index_path (in dir) and checks the weight_map. */
static int model_open_index(st_model *m, const char *dir, const char *index_path, eng_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = read_small_file(index_path, &text, &len, err);
    if (rc != 0) return rc;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    size_t nmap = 0;
    char path[4096];
    if (!root) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: not valid JSON", index_path);
        goto out;
    }
    for (const char *p = end; p < text + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = eng_errorf(err, ENG_EFORMAT, "%s: trailing bytes after the JSON", index_path);
            goto out;
        }
    }
    if (!cJSON_IsObject(map)) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: no \"weight_map\" object", index_path);
        goto out;
    }
    for (const cJSON *it = map->child; it; it = it->next)
        nmap++;
    /* Each distinct shard is opened once, in order of first mention. */
    m->files = calloc(nmap ? nmap : 1, sizeof *m->files);
    m->tensors = calloc(nmap ? nmap : 1, sizeof *m->tensors);
    const char **shard_of = calloc(nmap ? nmap : 1, sizeof *shard_of);
    if (!m->files || !m->tensors || !shard_of) {
        free(shard_of);
        rc = eng_errorf(err, ENG_ENOMEM, "%s: out of memory", index_path);
        goto out;
    }
    for (const cJSON *it = map->child; it; it = it->next) {
        if (!cJSON_IsString(it) || !it->valuestring || !shard_name_ok(it->valuestring)) {
            rc = eng_errorf(err, ENG_EFORMAT,
                            "%s: weight_map entry for tensor '%s' is not a plain shard file name",
                            index_path, it->string);
            break;
        }
        size_t fi = 0;
        while (fi < m->nfiles && strcmp(shard_of[fi], it->valuestring) != 0)
            fi++;
        if (fi == m->nfiles) {
            if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, it->valuestring) >= sizeof path) {
                rc = eng_errorf(err, ENG_EINVAL, "%s: shard path too long", index_path);
                break;
            }
            if ((rc = st_open(&m->files[fi], path, err)) != 0) {
                eng_error_prefix(err, "%s: shard '%s' of tensor '%s'", index_path, it->valuestring,
                                 it->string);
                break;
            }
            shard_of[fi] = it->valuestring;
            m->nfiles++;
        }
        const st_tensor *t = st_find(m->files[fi], it->string);
        if (!t) {
            rc = eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s' is not in its shard %s", index_path,
                            it->string, st_path(m->files[fi]));
            break;
        }
        m->tensors[m->count++] = t;
    }
    free(shard_of);
    if (rc == 0 && m->count == 0)
        rc = eng_errorf(err, ENG_EFORMAT, "%s: empty weight_map", index_path);
    if (rc == 0) {
        /* Duplicate weight_map keys show up as the same tensor twice. */
        rc = model_index_names(m, err);
        if (rc != 0) eng_error_prefix(err, "%s", index_path);
    }
    if (rc == 0) {
        /* File order, then data offset: the order a loader streams the bytes in. */
        size_t k = 0;
        for (size_t fi = 0; fi < m->nfiles; fi++)
            for (size_t i = 0; i < st_count(m->files[fi]); i++) {
                const st_tensor *t = st_at(m->files[fi], i);
                if (st_model_find(m, t->name) == t) m->tensors[k++] = t;
            }
    }
out:
    cJSON_Delete(root);
    free(text);
    return rc;
}

static int model_open_single(st_model *m, const char *path, eng_error *err) {
    m->files = calloc(1, sizeof *m->files);
    if (!m->files) return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
    int rc = st_open(&m->files[0], path, err);
    if (rc != 0) return rc;
    m->nfiles = 1;
    m->count = st_count(m->files[0]);
    m->tensors = malloc((m->count ? m->count : 1) * sizeof *m->tensors);
    if (!m->tensors) return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < m->count; i++)
        m->tensors[i] = st_at(m->files[0], i);
    return model_index_names(m, err);
}

/* Picks the layout from what is at `path`: an index file, a single file, or a directory holding
 * the index (preferred) or model.safetensors. */
int st_model_open(st_model **out, const char *path, eng_error *err) {
    *out = NULL;
    st_model *m = calloc(1, sizeof *m);
    if (!m) return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
    struct stat st;
    int rc;
    char buf[4096];
    if (stat(path, &st) != 0) {
        rc = eng_errorf(err, errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO, "%s: %s", path,
                        strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        if ((size_t)snprintf(buf, sizeof buf, "%s/model.safetensors.index.json", path) >=
            sizeof buf) {
            rc = eng_errorf(err, ENG_EINVAL, "%s: path too long", path);
        } else if (access(buf, F_OK) == 0) {
            rc = model_open_index(m, path, buf, err);
        } else {
            snprintf(buf, sizeof buf, "%s/model.safetensors", path);
            if (access(buf, F_OK) == 0)
                rc = model_open_single(m, buf, err);
            else
                rc = eng_errorf(err, ENG_ENOTFOUND,
                                "%s: neither model.safetensors.index.json nor model.safetensors",
                                path);
        }
    } else if (ends_with(path, ".json")) {
        /* Shards live beside the index. */
        const char *slash = strrchr(path, '/');
        if (!slash)
            strcpy(buf, ".");
        else if (slash == path)
            strcpy(buf, "/");
        else
            snprintf(buf, sizeof buf, "%.*s", (int)(slash - path), path);
        rc = model_open_index(m, buf, path, err);
    } else {
        rc = model_open_single(m, path, err);
    }
    if (rc != 0) {
        st_model_close(m);
        return rc;
    }
    *out = m;
    return 0;
}

void st_model_close(st_model *m) {
    if (!m) return;
    for (size_t i = 0; i < m->nfiles; i++)
        st_close(m->files[i]);
    free(m->files);
    free(m->tensors);
    free(m->by_name);
    free(m);
}

size_t st_model_count(const st_model *m) {
    return m->count;
}

const st_tensor *st_model_at(const st_model *m, size_t i) {
    return i < m->count ? m->tensors[i] : NULL;
}

const st_tensor *st_model_find(const st_model *m, const char *name) {
    size_t lo = 0, hi = m->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->by_name[mid]->name);
        if (c == 0) return m->by_name[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *st_model_metadata(const st_model *m, const char *key) {
    for (size_t i = 0; i < m->nfiles; i++) {
        const char *v = st_metadata(m->files[i], key);
        if (v) return v;
    }
    return NULL;
}

size_t st_model_nfiles(const st_model *m) {
    return m->nfiles;
}

const st_file *st_model_file(const st_model *m, size_t i) {
    return i < m->nfiles ? m->files[i] : NULL;
}
