/* store_stage.c - the store's write side: variant locks, debris removal, staging, the atomic
 * publish of store_stage_commit, and removal of a variant.
 *
 * Why it is safe: a variant has one writer at a time (flock on locks/<model>@<variant>.lock,
 * released by the kernel when the writer dies); its files are written under tmp/ and only a
 * rename() makes them visible, after every byte and the manifest were fsynced; anything under
 * tmp/ whose lock is free belongs to a dead writer and is removed by the next one. */
#include "ops/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops/sha256.h"
#include "ops/store_internal.h"

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

/* ---- locks ---- */

int store_lock_path(const store *s, const char *model, const char *variant, char *buf, size_t n,
                    eng_error *err) {
    char dir[STORE_PATH_MAX];
    int rc = store_variant_dir(s, model, variant, dir, sizeof dir, err); /* validates names */
    if (rc) return rc;
    return store_fs_pathf(buf, n, err, "%s/locks/%s@%s.lock", s->root, model, variant);
}

/* The pid a lock holder wrote into its lock file, or 0 when unreadable. */
static long lock_holder_pid(int fd) {
    char buf[32] = {0};
    ssize_t got = pread(fd, buf, sizeof buf - 1, 0);
    return got > 0 ? strtol(buf, NULL, 10) : 0;
}

int store_lock_variant(const store *s, const char *model, const char *variant, int nowait,
                       int *fd_out, eng_error *err) {
    char path[STORE_PATH_MAX];
    int rc = store_lock_path(s, model, variant, path, sizeof path, err);
    if (rc) return rc;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return eng_errorf(err, ENG_EIO, "%s: open: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | (nowait ? LOCK_NB : 0)) != 0) {
        int e = errno;
        long holder = e == EWOULDBLOCK ? lock_holder_pid(fd) : 0;
        close(fd);
        if (e == EWOULDBLOCK)
            return eng_errorf(err, STORE_EBUSY, "%s/%s is being written by pid %ld (lock %s)",
                              model, variant, holder, path);
        if (e == EINTR)
            return eng_errorf(err, ENG_ECANCELLED, "%s/%s: interrupted while waiting for %s", model,
                              variant, path);
        return eng_errorf(err, ENG_EIO, "%s: flock: %s", path, strerror(e));
    }
    /* Informational only (for the STORE_EBUSY message); the lock itself is the flock. */
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)len, 0) < 0) {
        /* A read-only or full volume still allows the lock; the pid is only a hint. */
    }
    *fd_out = fd;
    return 0;
}

void store_unlock_variant(int fd) {
    if (fd < 0) return;
    if (ftruncate(fd, 0) != 0) {
        /* Stale pid hint only; closing releases the lock regardless. */
    }
    close(fd); /* releases the flock */
}

/* ---- debris ---- */

/* Parses a tmp/ entry "<model>@<variant>.<pid>.<16 hex>[.old]" into its model and variant.
 * Returns 0 for names the store did not make (left alone). */
static int parse_tmp_name(const char *entry, char model[STORE_NAME_MAX],
                          char variant[STORE_NAME_MAX]) {
    char buf[STORE_FILE_NAME_MAX];
    if (strlen(entry) >= sizeof buf) return 0;
    strcpy(buf, entry);
    size_t len = strlen(buf);
    if (len > 4 && !strcmp(buf + len - 4, ".old")) buf[len - 4] = '\0';
    char *dot = strrchr(buf, '.');
    if (!dot || strlen(dot + 1) != 16) return 0;
    *dot = '\0';
    char *pid = strrchr(buf, '.');
    if (!pid || !pid[1] || strspn(pid + 1, "0123456789") != strlen(pid + 1)) return 0;
    *pid = '\0';
    char *at = strchr(buf, '@');
    if (!at) return 0;
    *at = '\0';
    if (!store_name_valid(buf) || !store_name_valid(at + 1)) return 0;
    strcpy(model, buf);
    strcpy(variant, at + 1);
    return 1;
}

void store_clean_debris(const store *s, const char *model, const char *variant) {
    char tmp[STORE_PATH_MAX];
    if (store_fs_pathf(tmp, sizeof tmp, NULL, "%s/tmp", s->root)) return;
    DIR *d = opendir(tmp);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char m[STORE_NAME_MAX], v[STORE_NAME_MAX], path[STORE_PATH_MAX];
        if (!parse_tmp_name(de->d_name, m, v)) continue;
        if (store_fs_pathf(path, sizeof path, NULL, "%s/%s", tmp, de->d_name)) continue;
        if (!strcmp(m, model) && !strcmp(v, variant)) {
            store_fs_remove_tree(path); /* ours: we hold the lock, so no live writer owns it */
            continue;
        }
        int fd;
        if (store_lock_variant(s, m, v, 1, &fd, NULL) != 0) continue; /* a live writer */
        store_fs_remove_tree(path);
        store_unlock_variant(fd);
    }
    closedir(d);
}

/* Moves dir (a variant directory) into tmp/ under a debris name and deletes it there. The
 * rename is the atomic step: after it no reader finds the variant, before it readers see it
 * whole. If deletion is interrupted, what is left is ordinary debris. */
static int retire_dir(const store *s, const char *model, const char *variant, const char *dir,
                      eng_error *err) {
    char aside[STORE_PATH_MAX], rnd[17];
    store_fs_random_hex(rnd);
    int rc = store_fs_pathf(aside, sizeof aside, err, "%s/tmp/%s@%s.%ld.%s.old", s->root, model,
                            variant, (long)getpid(), rnd);
    if (rc) return rc;
    if (rename(dir, aside) != 0) {
        if (errno == ENOENT) return 0;
        return eng_errorf(err, ENG_EIO, "rename %s -> %s: %s", dir, aside, strerror(errno));
    }
    store_fs_fsync_parent(dir, NULL);
    int rm = store_fs_remove_tree(aside);
    if (rm) return eng_errorf(err, ENG_EIO, "%s: remove: %s", aside, strerror(-rm));
    return 0;
}

int store_retire_variant_dir(const store *s, const char *model, const char *variant,
                             eng_error *err) {
    char dir[STORE_PATH_MAX];
    int rc = store_variant_dir(s, model, variant, dir, sizeof dir, err);
    return rc ? rc : retire_dir(s, model, variant, dir, err);
}

/* ---- staging ---- */

static void stage_reset(store_stage *stage) {
    free(stage->copied);
    stage->copied = NULL;
    stage->ncopied = 0;
    stage->dir[0] = '\0';
    stage->lock_fd = -1;
}

/* The error for an existing artifact when not forcing, or 0 when the target may be written. */
static int existing_target_error(const store *s, const char *model, const char *variant, int flags,
                                 eng_error *err) {
    eng_error why = {0};
    int state = store_variant_state(s, model, variant, &why);
    if (state < 0) return eng_errorf(err, state, "%s", why.msg);
    if (state == STORE_ABSENT || (flags & STORE_FORCE)) return 0;
    if (state == STORE_VALID) {
        store_manifest m;
        char created[32] = "";
        if (store_manifest_read(s, model, variant, &m, NULL) == 0) {
            snprintf(created, sizeof created, "%s", m.created);
            store_manifest_free(&m);
        }
        return eng_errorf(err, STORE_EEXIST, "%s/%s: already published (created %s)", model,
                          variant, created);
    }
    return eng_errorf(err, STORE_ECORRUPT, "%s; a forced publish replaces it", why.msg);
}

int store_stage_begin(const store *s, const char *model, const char *variant, int flags,
                      store_stage *stage, eng_error *err) {
    memset(stage, 0, sizeof *stage);
    stage->lock_fd = -1;
    char target[STORE_PATH_MAX];
    int rc = store_variant_dir(s, model, variant, target, sizeof target, err);
    if (rc) return rc;
    int fd;
    if ((rc = store_lock_variant(s, model, variant, flags & STORE_NOWAIT, &fd, err))) return rc;
    store_clean_debris(s, model, variant);
    if ((rc = existing_target_error(s, model, variant, flags, err))) {
        store_unlock_variant(fd);
        return rc;
    }
    char rnd[17];
    store_fs_random_hex(rnd);
    rc = store_fs_pathf(stage->dir, sizeof stage->dir, err, "%s/tmp/%s@%s.%ld.%s", s->root, model,
                        variant, (long)getpid(), rnd);
    if (!rc && mkdir(stage->dir, 0755) != 0)
        rc = eng_errorf(err, ENG_EIO, "%s: mkdir: %s", stage->dir, strerror(errno));
    if (rc) {
        store_unlock_variant(fd);
        stage_reset(stage);
        return rc;
    }
    stage->st = s;
    strcpy(stage->model, model);
    strcpy(stage->variant, variant);
    stage->flags = flags;
    stage->lock_fd = fd;
    return 0;
}

int store_stage_path(const store_stage *stage, const char *name, char *buf, size_t n,
                     eng_error *err) {
    if (!stage->dir[0]) return eng_errorf(err, ENG_EINVAL, "staging area is not open");
    if (!store_file_name_valid(name) || !strcmp(name, STORE_MANIFEST))
        return eng_errorf(err, ENG_EINVAL, "invalid file name '%.80s' for %s/%s",
                          name ? name : "(null)", stage->model, stage->variant);
    return store_fs_pathf(buf, n, err, "%s/%s", stage->dir, name);
}

int store_stage_copy_in(store_stage *stage, const char *src, const char *name,
                        store_progress_fn progress, void *ud, eng_error *err) {
    char dst[STORE_PATH_MAX];
    int rc = store_stage_path(stage, name, dst, sizeof dst, err);
    if (rc) return rc;
    store_file_entry *grown = realloc(stage->copied, (stage->ncopied + 1) * sizeof *grown);
    if (!grown) return eng_errorf(err, ENG_ENOMEM, "%s: no memory", name);
    stage->copied = grown;
    store_file_entry *e = &grown[stage->ncopied];
    memset(e, 0, sizeof *e);
    strcpy(e->name, name);
    if ((rc = store_fs_copy_hash(src, dst, e->sha256, &e->size, progress, ud, name, err)))
        return rc;
    stage->ncopied++;
    return 0;
}

/* Adapts sha256_file's progress to the store's (which names the file). */
typedef struct hash_progress_ctx {
    store_progress_fn fn;
    void *ud;
    const char *file;
} hash_progress_ctx;

static void hash_progress(void *ud, uint64_t done, uint64_t total) {
    hash_progress_ctx *h = ud;
    h->fn(h->ud, h->file, done, total);
}

static int entry_name_cmp(const void *a, const void *b) {
    return strcmp(((const store_file_entry *)a)->name, ((const store_file_entry *)b)->name);
}

/* Collects, hashes and fsyncs the staged files into *files (sorted by name). */
static int stage_collect(store_stage *stage, store_progress_fn progress, void *ud,
                         store_file_entry **files_out, size_t *n_out, eng_error *err) {
    DIR *d = opendir(stage->dir);
    if (!d) return eng_errorf(err, ENG_EIO, "%s: %s", stage->dir, strerror(errno));
    store_file_entry *files = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while (!rc && (de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
        char path[STORE_PATH_MAX];
        struct stat sb;
        if ((rc = store_stage_path(stage, name, path, sizeof path, err))) break;
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            rc = eng_errorf(err, ENG_EINVAL, "%s: staged entry '%s' is not a regular file",
                            stage->dir, name);
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            store_file_entry *grown = realloc(files, cap * sizeof *grown);
            if (!grown) {
                rc = eng_errorf(err, ENG_ENOMEM, "%s: no memory", stage->dir);
                break;
            }
            files = grown;
        }
        store_file_entry *e = &files[n];
        memset(e, 0, sizeof *e);
        strcpy(e->name, name);
        const store_file_entry *copied = NULL;
        for (size_t i = 0; i < stage->ncopied; i++)
            if (!strcmp(stage->copied[i].name, name)) copied = &stage->copied[i];
        if (copied && copied->size == (uint64_t)sb.st_size) {
            *e = *copied; /* hashed and fsynced while copying */
        } else {
            hash_progress_ctx h = {progress, ud, name};
            rc = sha256_file(path, e->sha256, &e->size, progress ? hash_progress : NULL, &h, err);
            if (!rc) rc = store_fs_fsync_path(path, err);
        }
        if (!rc) n++;
    }
    closedir(d);
    if (rc) {
        free(files);
        return rc;
    }
    qsort(files, n, sizeof *files, entry_name_cmp);
    *files_out = files;
    *n_out = n;
    return 0;
}

/* Fields of MANIFEST.json that only the store writes. */
static const char *const own_fields[] = {"format", "model",  "variant",     "created",
                                         "tool",   "digest", "total_bytes", "files"};

/* Checks the writer's extras before any file is hashed: an object, no store-owned field. */
static int check_extra(const store_stage *stage, const cJSON *extra, eng_error *err) {
    if (!extra) return 0;
    if (!cJSON_IsObject(extra))
        return eng_errorf(err, ENG_EINVAL, "manifest extras for %s/%s are not a JSON object",
                          stage->model, stage->variant);
    const cJSON *item;
    cJSON_ArrayForEach(item, extra) {
        for (size_t i = 0; i < sizeof own_fields / sizeof own_fields[0]; i++)
            if (item->string && !strcmp(item->string, own_fields[i]))
                return eng_errorf(err, ENG_EINVAL,
                                  "manifest extra '%s' is a field the store writes", own_fields[i]);
    }
    return 0;
}

/* Builds the manifest document into *out: the store's own fields, the writer's extras (already
 * checked), then the files. */
static int manifest_build(const store_stage *stage, const store_file_entry *files, size_t n,
                          const cJSON *extra, cJSON **out, eng_error *err) {
    char created[32], digest[65];
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += files[i].size;
    store_fs_now_iso8601(created);
    store_digest(files, n, digest);
    cJSON *doc = cJSON_CreateObject();
    if (!doc) goto oom;
    if (!cJSON_AddNumberToObject(doc, "format", STORE_MANIFEST_FORMAT) ||
        !cJSON_AddStringToObject(doc, "model", stage->model) ||
        !cJSON_AddStringToObject(doc, "variant", stage->variant) ||
        !cJSON_AddStringToObject(doc, "created", created) ||
        !cJSON_AddStringToObject(doc, "tool", "voxq " VOXQ_VERSION) ||
        !cJSON_AddStringToObject(doc, "digest", digest) ||
        !cJSON_AddNumberToObject(doc, "total_bytes", (double)total))
        goto oom;
    const cJSON *item;
    cJSON_ArrayForEach(item, extra) {
        cJSON *copy = cJSON_Duplicate(item, 1);
        if (!copy || !cJSON_AddItemToObject(doc, item->string, copy)) {
            cJSON_Delete(copy);
            goto oom;
        }
    }
    cJSON *list = cJSON_AddObjectToObject(doc, "files");
    if (!list) goto oom;
    for (size_t i = 0; i < n; i++) {
        cJSON *f = cJSON_AddObjectToObject(list, files[i].name);
        if (!f || !cJSON_AddNumberToObject(f, "size", (double)files[i].size) ||
            !cJSON_AddStringToObject(f, "sha256", files[i].sha256))
            goto oom;
    }
    *out = doc;
    return 0;
oom:
    cJSON_Delete(doc);
    return eng_errorf(err, ENG_ENOMEM, "building the manifest of %s/%s: no memory", stage->model,
                      stage->variant);
}

/* Renames the finished staging directory onto target. An existing target is only replaced with
 * STORE_FORCE (the lock normally prevents it from appearing; a writer that bypasses the lock,
 * e.g. on a file system without flock, is detected here). Replacement swaps the two directories
 * with RENAME_EXCHANGE so readers see the old or the new artifact, never a gap or a mix. */
static int publish(store_stage *stage, const char *target, eng_error *err) {
    const store *s = stage->st;
    for (int attempt = 0; attempt < 8; attempt++) {
        char model_dir[STORE_PATH_MAX];
        int rc = store_model_dir(s, stage->model, model_dir, sizeof model_dir, err);
        if (!rc) rc = store_fs_mkdir(model_dir, err);
        if (rc) return rc;
        if (rename(stage->dir, target) == 0) return 0;
        if (errno == ENOENT) continue; /* a concurrent `rm` removed the empty model directory */
        if (errno != EEXIST && errno != ENOTEMPTY)
            return eng_errorf(err, ENG_EIO, "rename %s -> %s: %s", stage->dir, target,
                              strerror(errno));
        if (!(stage->flags & STORE_FORCE)) {
            rc = existing_target_error(s, stage->model, stage->variant, 0, err);
            return rc ? rc
                      : eng_errorf(err, STORE_EEXIST, "%s/%s: already published", stage->model,
                                   stage->variant);
        }
        if (renameat2(AT_FDCWD, stage->dir, AT_FDCWD, target, RENAME_EXCHANGE) == 0) {
            store_fs_remove_tree(stage->dir); /* now holds the replaced artifact */
            return 0;
        }
        if (errno == ENOENT) continue; /* the target vanished meanwhile: plain rename again */
        if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
            return eng_errorf(err, ENG_EIO, "exchange %s <-> %s: %s", stage->dir, target,
                              strerror(errno));
        /* No RENAME_EXCHANGE on this file system: move the old one aside, then rename. */
        if ((rc = retire_dir(s, stage->model, stage->variant, target, err))) return rc;
    }
    return eng_errorf(err, ENG_EIO, "rename %s -> %s: target keeps changing", stage->dir, target);
}

int store_stage_commit(store_stage *stage, const cJSON *extra, store_progress_fn progress, void *ud,
                       eng_error *err) {
    if (!stage->dir[0]) return eng_errorf(err, ENG_EINVAL, "staging area is not open");
    store_file_entry *files = NULL;
    size_t n = 0;
    cJSON *doc = NULL;
    char *text = NULL;
    char path[STORE_PATH_MAX], target[STORE_PATH_MAX];
    int rc = store_variant_dir(stage->st, stage->model, stage->variant, target, sizeof target, err);
    if (rc) goto done;
    if ((rc = check_extra(stage, extra, err))) goto done;
    if ((rc = stage_collect(stage, progress, ud, &files, &n, err))) goto done;
    if ((rc = manifest_build(stage, files, n, extra, &doc, err))) goto done;
    if (!(text = cJSON_Print(doc))) {
        rc = eng_errorf(err, ENG_ENOMEM, "printing the manifest: no memory");
        goto done;
    }
    if ((rc = store_fs_pathf(path, sizeof path, err, "%s/%s", stage->dir, STORE_MANIFEST)))
        goto done;
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: the file ends with a newline */
    rc = store_fs_write_file(path, text, len + 1, err);
    if (rc) goto done;
    if ((rc = store_fs_fsync_path(stage->dir, err))) goto done;
    if ((rc = publish(stage, target, err))) goto done;
    store_fs_fsync_parent(target, NULL);
done:
    free(text);
    cJSON_Delete(doc);
    free(files);
    store_stage_abort(stage); /* after a publish the directory is gone; this unlocks */
    return rc;
}

void store_stage_abort(store_stage *stage) {
    if (!stage) return;
    if (stage->dir[0]) store_fs_remove_tree(stage->dir);
    store_unlock_variant(stage->lock_fd);
    stage_reset(stage);
}

/* ---- removal ---- */

int store_remove(const store *s, const char *model, const char *variant, int flags,
                 eng_error *err) {
    char dir[STORE_PATH_MAX], model_dir[STORE_PATH_MAX];
    int rc = store_variant_dir(s, model, variant, dir, sizeof dir, err);
    if (!rc) rc = store_model_dir(s, model, model_dir, sizeof model_dir, err);
    if (rc) return rc;
    int fd;
    if ((rc = store_lock_variant(s, model, variant, flags & STORE_NOWAIT, &fd, err))) return rc;
    struct stat sb;
    if (lstat(dir, &sb) != 0)
        rc =
            eng_errorf(err, ENG_ENOTFOUND, "%s/%s: no such variant in %s", model, variant, s->root);
    else
        rc = retire_dir(s, model, variant, dir, err);
    if (!rc && rmdir(model_dir) == 0) store_fs_fsync_parent(model_dir, NULL);
    store_unlock_variant(fd);
    return rc;
}
