/* store.c - the artifact store's read side: opening, names and paths, manifests, the cheap
 * validity check, verification and listing. Publishing is in store_stage.c, import in
 * store_import.c. */
#include "ops/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops/sha256.h"
#include "ops/store_internal.h"

/* A manifest larger than this is not one of ours (a 1,000-shard checkpoint needs ~200 KB). */
#define MANIFEST_MAX_BYTES (16u << 20)

const char *store_default_root(void) {
    const char *v = getenv("VOXQ_STORE");
    return (v && *v) ? v : "./store";
}

/* Creates the root and its three folders, then resolves the root to an absolute path so that a
 * later chdir() of the process cannot move the store under us. */
int store_open(store *s, const char *root, eng_error *err) {
    memset(s, 0, sizeof *s);
    if (!root || !*root) return eng_errorf(err, ENG_EINVAL, "store root is empty");
    char path[STORE_PATH_MAX];
    int rc = store_fs_pathf(path, sizeof path, err, "%s", root);
    if (rc) return rc;
    if ((rc = store_fs_mkdir(path, err))) return rc;
    char resolved[PATH_MAX];
    if (!realpath(path, resolved))
        return eng_errorf(err, ENG_EIO, "%s: realpath: %s", path, strerror(errno));
    if ((rc = store_fs_pathf(s->root, sizeof s->root, err, "%s", resolved))) return rc;
    static const char *const subdirs[] = {"models", "locks", "tmp"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        if ((rc = store_fs_pathf(path, sizeof path, err, "%s/%s", s->root, subdirs[i]))) return rc;
        if ((rc = store_fs_mkdir(path, err))) return rc;
    }
    return 0;
}

void store_close(store *s) {
    if (s) s->root[0] = '\0';
}

const char *store_strerror(int code) {
    switch (code) {
    case STORE_EEXIST:
        return "already published";
    case STORE_EBUSY:
        return "locked by another writer";
    case STORE_ECORRUPT:
        return "damaged artifact";
    default:
        return eng_strerror(code);
    }
}

/* Shared rule of model, variant and file names: a charset, no leading '.' or '-' (hidden files,
 * "." and "..", and names that read as flags), no "..", bounded length. */
static int name_ok(const char *name, size_t max, int allow_upper) {
    if (!name || !*name) return 0;
    size_t n = strlen(name);
    if (n >= max || name[0] == '.' || name[0] == '-' || strstr(name, "..")) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                 c == '-' || (allow_upper && c >= 'A' && c <= 'Z');
        if (!ok) return 0;
    }
    return 1;
}

int store_name_valid(const char *name) {
    return name_ok(name, STORE_NAME_MAX, 0);
}

int store_file_name_valid(const char *name) {
    return name_ok(name, STORE_FILE_NAME_MAX, 1);
}

static int check_name(const char *what, const char *name, eng_error *err) {
    if (store_name_valid(name)) return 0;
    return eng_errorf(err, ENG_EINVAL,
                      "invalid %s name '%.80s': use 1-%d of [a-z0-9._-], not starting with '.' "
                      "or '-', without '..'",
                      what, name ? name : "(null)", STORE_NAME_MAX - 1);
}

int store_split_ref(const char *ref, char model[STORE_NAME_MAX], char variant[STORE_NAME_MAX],
                    eng_error *err) {
    const char *slash = ref ? strchr(ref, '/') : NULL;
    if (!slash || strchr(slash + 1, '/'))
        return eng_errorf(err, ENG_EINVAL, "'%.80s' is not MODEL/VARIANT", ref ? ref : "(null)");
    size_t n = (size_t)(slash - ref);
    if (n >= STORE_NAME_MAX) return check_name("model", ref, err);
    memcpy(model, ref, n);
    model[n] = '\0';
    int rc = check_name("model", model, err);
    if (rc) return rc;
    if (strlen(slash + 1) >= STORE_NAME_MAX) return check_name("variant", slash + 1, err);
    strcpy(variant, slash + 1);
    return check_name("variant", variant, err);
}

int store_model_dir(const store *s, const char *model, char *buf, size_t n, eng_error *err) {
    int rc = check_name("model", model, err);
    if (rc) return rc;
    return store_fs_pathf(buf, n, err, "%s/models/%s", s->root, model);
}

int store_variant_dir(const store *s, const char *model, const char *variant, char *buf, size_t n,
                      eng_error *err) {
    int rc = check_name("model", model, err);
    if (!rc) rc = check_name("variant", variant, err);
    if (rc) return rc;
    return store_fs_pathf(buf, n, err, "%s/models/%s/%s", s->root, model, variant);
}

/* ---- manifests ---- */

static int is_hex64(const char *s) {
    if (!s || strlen(s) != 64) return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

/* Copies a required string member into dst (size n); ENG_EFORMAT naming the field otherwise. */
static int get_string(const cJSON *obj, const char *key, char *dst, size_t n, int required,
                      const char *path, eng_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) {
        dst[0] = '\0';
        if (!required) return 0;
        return eng_errorf(err, ENG_EFORMAT, "%s: field '%s' is missing", path, key);
    }
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= n)
        return eng_errorf(err, ENG_EFORMAT, "%s: field '%s' is not a string of < %zu bytes", path,
                          key, n);
    strcpy(dst, v->valuestring);
    return 0;
}

/* A JSON number that is a byte count: integral, >= 0, exactly representable. */
static int get_size(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const store_file_entry *)a)->name, ((const store_file_entry *)b)->name);
}

void store_digest(const store_file_entry *files, size_t nfiles, char hex[65]) {
    /* Sorted copy of the index order, so the digest does not depend on how files was built. */
    const store_file_entry **order = malloc((nfiles ? nfiles : 1) * sizeof *order);
    sha256_ctx c;
    sha256_init(&c);
    if (order) {
        for (size_t i = 0; i < nfiles; i++)
            order[i] = &files[i];
        for (size_t i = 1; i < nfiles; i++)
            for (size_t j = i; j > 0 && strcmp(order[j - 1]->name, order[j]->name) > 0; j--) {
                const store_file_entry *t = order[j];
                order[j] = order[j - 1];
                order[j - 1] = t;
            }
    }
    for (size_t i = 0; i < nfiles; i++) {
        const store_file_entry *f = order ? order[i] : &files[i];
        sha256_update(&c, f->sha256, 64);
        sha256_update(&c, "  ", 2);
        sha256_update(&c, f->name, strlen(f->name));
        sha256_update(&c, "\n", 1);
    }
    free(order);
    uint8_t digest[SHA256_DIGEST_BYTES];
    sha256_final(&c, digest);
    sha256_hex(digest, hex);
}

/* Reads a whole small file (name, relative to dirfd) into a NUL-terminated malloc()ed buffer;
 * path is the name messages use. */
static int read_small_file_at(int dirfd, const char *name, const char *path, size_t max, char **out,
                              eng_error *err) {
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        int code = errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO;
        return eng_errorf(err, code, "%s: %s", path, errno == ENOENT ? "missing" : strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size > max) {
        close(fd);
        return eng_errorf(err, ENG_EFORMAT, "%s: not a regular file of at most %zu bytes", path,
                          max);
    }
    size_t n = (size_t)sb.st_size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return eng_errorf(err, ENG_ENOMEM, "%s: no memory", path);
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return eng_errorf(err, ENG_EIO, "%s: read: %s", path, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    return 0;
}

/* Validates the parsed document field by field into m (m->json already set). */
static int manifest_fill(store_manifest *m, const char *path, eng_error *err) {
    const cJSON *doc = m->json;
    if (!cJSON_IsObject(doc)) return eng_errorf(err, ENG_EFORMAT, "%s: not a JSON object", path);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(doc, "format");
    if (!cJSON_IsNumber(format) || format->valuedouble != STORE_MANIFEST_FORMAT)
        return eng_errorf(err, ENG_EFORMAT, "%s: field 'format' must be %d", path,
                          STORE_MANIFEST_FORMAT);
    m->format = STORE_MANIFEST_FORMAT;
    int rc = get_string(doc, "model", m->model, sizeof m->model, 1, path, err);
    if (!rc) rc = get_string(doc, "variant", m->variant, sizeof m->variant, 1, path, err);
    if (!rc) rc = get_string(doc, "created", m->created, sizeof m->created, 1, path, err);
    if (!rc) rc = get_string(doc, "tool", m->tool, sizeof m->tool, 1, path, err);
    if (!rc) rc = get_string(doc, "digest", m->digest, sizeof m->digest, 1, path, err);
    if (!rc) rc = get_string(doc, "method", m->method, sizeof m->method, 0, path, err);
    if (rc) return rc;
    if (!store_name_valid(m->model) || !store_name_valid(m->variant))
        return eng_errorf(err, ENG_EFORMAT, "%s: invalid model or variant name", path);
    if (!is_hex64(m->digest))
        return eng_errorf(err, ENG_EFORMAT, "%s: field 'digest' is not 64 hex digits", path);
    const cJSON *source = cJSON_GetObjectItemCaseSensitive(doc, "source");
    const cJSON *sdig = cJSON_GetObjectItemCaseSensitive(source, "digest");
    if (cJSON_IsString(sdig) && is_hex64(sdig->valuestring))
        strcpy(m->source_digest, sdig->valuestring);

    const cJSON *files = cJSON_GetObjectItemCaseSensitive(doc, "files");
    if (!cJSON_IsObject(files))
        return eng_errorf(err, ENG_EFORMAT, "%s: field 'files' is not an object", path);
    size_t n = (size_t)cJSON_GetArraySize(files);
    m->files = calloc(n ? n : 1, sizeof *m->files);
    if (!m->files) return eng_errorf(err, ENG_ENOMEM, "%s: no memory", path);
    const cJSON *f;
    cJSON_ArrayForEach(f, files) {
        store_file_entry *e = &m->files[m->nfiles];
        const char *name = f->string;
        if (!store_file_name_valid(name) || !strcmp(name, STORE_MANIFEST))
            return eng_errorf(err, ENG_EFORMAT, "%s: files: invalid file name '%.80s'", path,
                              name ? name : "");
        strcpy(e->name, name);
        const cJSON *sha = cJSON_GetObjectItemCaseSensitive(f, "sha256");
        if (!get_size(cJSON_GetObjectItemCaseSensitive(f, "size"), &e->size))
            return eng_errorf(err, ENG_EFORMAT, "%s: files.%s.size is not a byte count", path,
                              name);
        if (!cJSON_IsString(sha) || !is_hex64(sha->valuestring))
            return eng_errorf(err, ENG_EFORMAT, "%s: files.%s.sha256 is not 64 hex digits", path,
                              name);
        strcpy(e->sha256, sha->valuestring);
        m->total_bytes += e->size;
        m->nfiles++;
    }
    qsort(m->files, m->nfiles, sizeof *m->files, entry_cmp);
    for (size_t i = 1; i < m->nfiles; i++)
        if (!strcmp(m->files[i - 1].name, m->files[i].name))
            return eng_errorf(err, ENG_EFORMAT, "%s: file '%s' listed twice", path,
                              m->files[i].name);
    uint64_t total;
    if (!get_size(cJSON_GetObjectItemCaseSensitive(doc, "total_bytes"), &total) ||
        total != m->total_bytes)
        return eng_errorf(err, ENG_EFORMAT, "%s: field 'total_bytes' is not the sum of the sizes",
                          path);
    char digest[65];
    store_digest(m->files, m->nfiles, digest);
    if (strcmp(digest, m->digest) != 0)
        return eng_errorf(err, ENG_EFORMAT, "%s: field 'digest' does not match the files listed",
                          path);
    return 0;
}

/* Loads the manifest of the directory open as dirfd (dir: its path, for messages). Reading
 * through the descriptor keeps every read in one directory even if the path is re-pointed by a
 * concurrent forced publish. */
static int manifest_load_at(int dirfd, const char *dir, store_manifest *m, eng_error *err) {
    memset(m, 0, sizeof *m);
    char path[STORE_PATH_MAX];
    int rc = store_fs_pathf(path, sizeof path, err, "%s/%s", dir, STORE_MANIFEST);
    if (rc) return rc;
    char *text = NULL;
    if ((rc = read_small_file_at(dirfd, STORE_MANIFEST, path, MANIFEST_MAX_BYTES, &text, err)))
        return rc;
    m->json = cJSON_Parse(text);
    free(text);
    if (!m->json) return eng_errorf(err, ENG_EFORMAT, "%s: not valid JSON", path);
    rc = manifest_fill(m, path, err);
    if (rc) store_manifest_free(m);
    return rc;
}

int store_manifest_load(const char *dir, store_manifest *m, eng_error *err) {
    memset(m, 0, sizeof *m);
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return eng_errorf(err, errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO, "%s: %s", dir,
                          strerror(errno));
    int rc = manifest_load_at(dirfd, dir, m, err);
    close(dirfd);
    return rc;
}

int store_manifest_read(const store *s, const char *model, const char *variant, store_manifest *m,
                        eng_error *err) {
    memset(m, 0, sizeof *m);
    char dir[STORE_PATH_MAX];
    int rc = store_variant_dir(s, model, variant, dir, sizeof dir, err);
    return rc ? rc : store_manifest_load(dir, m, err);
}

void store_manifest_free(store_manifest *m) {
    if (!m) return;
    free(m->files);
    cJSON_Delete(m->json);
    memset(m, 0, sizeof *m);
}

const store_file_entry *store_manifest_file(const store_manifest *m, const char *name) {
    store_file_entry key;
    if (!name || strlen(name) >= sizeof key.name) return NULL;
    strcpy(key.name, name);
    return bsearch(&key, m->files, m->nfiles, sizeof *m->files, entry_cmp);
}

/* ---- checking a variant ---- */

void store_report_free(store_report *r) {
    if (!r) return;
    for (size_t i = 0; i < r->nproblems; i++)
        free(r->problems[i]);
    free(r->problems);
    r->problems = NULL;
    r->nproblems = 0;
}

/* What one check run accumulates: the first problem goes to err, all go to the report. */
typedef struct check {
    store_report *report;
    eng_error *err;
    size_t nproblems;
    const char *label; /* "model/variant" for messages */
    store_progress_fn progress;
    void *ud;
    const char *file; /* the file being hashed, for the progress adapter */
} check;

static void problem(check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(check *c, const char *fmt, ...) {
    char msg[480];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->nproblems == 0) eng_errorf(c->err, STORE_ECORRUPT, "%s: %s", c->label, msg);
    c->nproblems++;
    if (!c->report) return;
    char **grown = realloc(c->report->problems, (c->report->nproblems + 1) * sizeof *grown);
    char *copy = strdup(msg);
    if (!grown || !copy) {
        free(copy);
        if (grown) c->report->problems = grown;
        return;
    }
    c->report->problems = grown;
    c->report->problems[c->report->nproblems++] = copy;
}

static void hash_progress(void *ud, uint64_t done, uint64_t total) {
    check *c = ud;
    c->progress(c->ud, c->file, done, total);
}

/* Checks the variant directory open as dirfd (dir: its path, for messages); every problem goes
 * to c. All reads go through dirfd, so the check sees one directory throughout. */
static void check_dir(int dirfd, const char *dir, const char *model, const char *variant, int flags,
                      check *c) {
    store_manifest m;
    eng_error merr = {0};
    if (manifest_load_at(dirfd, dir, &m, &merr) != 0) {
        const char *msg = merr.msg; /* "<dir>/MANIFEST.json: why" -> "MANIFEST.json: why" */
        size_t dlen = strlen(dir);
        if (!strncmp(msg, dir, dlen) && msg[dlen] == '/') msg += dlen + 1;
        problem(c, "%s", msg);
        return;
    }
    if (strcmp(m.model, model) != 0 || strcmp(m.variant, variant) != 0)
        problem(c, "MANIFEST.json names %s/%s", m.model, m.variant);
    for (size_t i = 0; i < m.nfiles; i++) {
        const store_file_entry *e = &m.files[i];
        struct stat sb;
        if (fstatat(dirfd, e->name, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
            problem(c, "%s: missing", e->name);
            continue;
        }
        if (!S_ISREG(sb.st_mode)) {
            problem(c, "%s: not a regular file", e->name);
            continue;
        }
        if ((uint64_t)sb.st_size != e->size) {
            problem(c, "%s: size %llu, manifest says %llu", e->name, (unsigned long long)sb.st_size,
                    (unsigned long long)e->size);
            continue;
        }
        if (!(flags & STORE_VERIFY_HASHES)) continue;
        char hex[65];
        eng_error herr = {0};
        int fd = openat(dirfd, e->name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        c->file = e->name;
        if (fd < 0)
            problem(c, "%s: open: %s", e->name, strerror(errno));
        else if (sha256_fd(fd, e->name, hex, NULL, c->progress ? hash_progress : NULL, c, &herr) !=
                 0)
            problem(c, "%s", herr.msg);
        else if (strcmp(hex, e->sha256) != 0)
            problem(c, "%s: sha256 %s, manifest says %s", e->name, hex, e->sha256);
        if (fd >= 0) close(fd);
    }
    int listfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = listfd >= 0 ? fdopendir(listfd) : NULL;
    if (!d && listfd >= 0) close(listfd);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            if (!strcmp(de->d_name, STORE_MANIFEST)) continue;
            if (!store_manifest_file(&m, de->d_name))
                problem(c, "%.200s: not listed in MANIFEST.json", de->d_name);
        }
        closedir(d);
    }
    store_manifest_free(&m);
}

/* The shared body of store_variant_state and store_verify: returns 0 when the directory is
 * absent (*present = 0) or fully checked (problems counted in c), < 0 on a bad name.
 * A forced publish may swap the directory (and delete the old one) while we read it; a check
 * that found problems in a directory that is no longer the one at the path is run again on the
 * new one, so readers never report a healthy variant as damaged. */
static int check_variant(const store *s, const char *model, const char *variant, int flags,
                         check *c, int *present) {
    char dir[STORE_PATH_MAX];
    *present = 0;
    int rc = store_variant_dir(s, model, variant, dir, sizeof dir, c->err);
    if (rc) return rc;
    for (int attempt = 0;; attempt++) {
        struct stat sb, now;
        if (lstat(dir, &sb) != 0) return 0;
        *present = 1;
        if (!S_ISDIR(sb.st_mode)) {
            problem(c, "not a directory");
            return 0;
        }
        int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dirfd < 0) {
            if (errno == ENOENT && attempt < 8) continue;
            problem(c, "open: %s", strerror(errno));
            return 0;
        }
        struct stat opened;
        fstat(dirfd, &opened);
        check_dir(dirfd, dir, model, variant, flags, c);
        close(dirfd);
        int replaced =
            lstat(dir, &now) != 0 || now.st_ino != opened.st_ino || now.st_dev != opened.st_dev;
        if (!c->nproblems || !replaced || attempt >= 8) return 0;
        c->nproblems = 0; /* the directory changed under us: look again */
        store_report_free(c->report);
        *present = 0;
    }
}

int store_variant_state(const store *s, const char *model, const char *variant, eng_error *why) {
    char label[2 * STORE_NAME_MAX + 2];
    snprintf(label, sizeof label, "%.63s/%.63s", model ? model : "", variant ? variant : "");
    check c = {.err = why, .label = label};
    int present;
    int rc = check_variant(s, model, variant, 0, &c, &present);
    if (rc) return rc;
    if (!present) return STORE_ABSENT;
    return c.nproblems ? STORE_INVALID : STORE_VALID;
}

int store_variant_exists_valid(const store *s, const char *model, const char *variant) {
    return store_variant_state(s, model, variant, NULL) == STORE_VALID;
}

int store_verify(const store *s, const char *model, const char *variant, int flags,
                 store_progress_fn progress, void *ud, store_report *report, eng_error *err) {
    char label[2 * STORE_NAME_MAX + 2];
    snprintf(label, sizeof label, "%.63s/%.63s", model ? model : "", variant ? variant : "");
    if (report) memset(report, 0, sizeof *report);
    check c = {.report = report, .err = err, .label = label, .progress = progress, .ud = ud};
    int present;
    int rc = check_variant(s, model, variant, flags, &c, &present);
    if (rc) return rc;
    if (!present)
        return eng_errorf(err, ENG_ENOTFOUND, "%s: no such variant in %s", label, s->root);
    return c.nproblems ? STORE_ECORRUPT : 0;
}

/* ---- listing ---- */

static int store_entry_cmp(const void *a, const void *b) {
    const store_entry *x = a, *y = b;
    int c = strcmp(x->model, y->model);
    return c ? c : strcmp(x->variant, y->variant);
}

/* Appends the variants of one model directory to the growing list. */
static int list_model(const store *s, const char *model, store_entry **list, size_t *n, size_t *cap,
                      eng_error *err) {
    char dir[STORE_PATH_MAX];
    int rc = store_model_dir(s, model, dir, sizeof dir, err);
    if (rc) return rc;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT || errno == ENOTDIR
                   ? 0
                   : eng_errorf(err, ENG_EIO, "%s: %s", dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!store_name_valid(de->d_name)) continue;
        if (*n == *cap) {
            size_t grown_cap = *cap ? 2 * *cap : 16;
            store_entry *grown = realloc(*list, grown_cap * sizeof *grown);
            if (!grown) {
                closedir(d);
                return eng_errorf(err, ENG_ENOMEM, "listing %s: no memory", dir);
            }
            *list = grown;
            *cap = grown_cap;
        }
        store_entry *e = &(*list)[*n];
        memset(e, 0, sizeof *e);
        strcpy(e->model, model);
        strcpy(e->variant, de->d_name);
        eng_error why = {0};
        int state = store_variant_state(s, model, de->d_name, &why);
        if (state == STORE_ABSENT || state < 0) continue;
        e->state = (store_state)state;
        store_manifest m;
        if (state == STORE_VALID && store_manifest_read(s, model, de->d_name, &m, NULL) == 0) {
            e->bytes = m.total_bytes;
            snprintf(e->created, sizeof e->created, "%s", m.created);
            snprintf(e->method, sizeof e->method, "%s", m.method);
            store_manifest_free(&m);
        } else {
            char vdir[STORE_PATH_MAX];
            if (store_variant_dir(s, model, de->d_name, vdir, sizeof vdir, NULL) == 0)
                e->bytes = store_fs_tree_bytes(vdir);
            const char *msg = why.msg;
            size_t skip = strlen(model) + 1 + strlen(de->d_name) + 2; /* "model/variant: " */
            if (strlen(msg) > skip) msg += skip;
            size_t len = strlen(msg) < sizeof e->problem ? strlen(msg) : sizeof e->problem - 1;
            memcpy(e->problem, msg, len);
            e->problem[len] = '\0';
        }
        (*n)++;
    }
    closedir(d);
    return 0;
}

int store_list(const store *s, const char *model, store_entry **out, size_t *n, eng_error *err) {
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    int rc = 0;
    if (model) {
        rc = list_model(s, model, out, n, &cap, err);
    } else {
        char dir[STORE_PATH_MAX];
        if ((rc = store_fs_pathf(dir, sizeof dir, err, "%s/models", s->root))) return rc;
        DIR *d = opendir(dir);
        if (!d) return eng_errorf(err, ENG_EIO, "%s: %s", dir, strerror(errno));
        struct dirent *de;
        while (!rc && (de = readdir(d)) != NULL)
            if (store_name_valid(de->d_name)) rc = list_model(s, de->d_name, out, n, &cap, err);
        closedir(d);
    }
    if (rc) {
        free(*out);
        *out = NULL;
        *n = 0;
        return rc;
    }
    if (*n) qsort(*out, *n, sizeof **out, store_entry_cmp);
    return 0;
}
