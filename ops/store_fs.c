/* store_fs.c - file-system primitives for the artifact store: durable writes, hashing copies,
 * tree removal that never follows links, random names and timestamps. */
#include "ops/store_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int store_fs_pathf(char *buf, size_t n, eng_error *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= n)
        return eng_errorf(err, ENG_EINVAL, "path too long (limit %zu bytes): %.80s...", n, buf);
    return 0;
}

int store_fs_mkdir(const char *path, eng_error *err) {
    if (mkdir(path, 0755) == 0) return 0;
    if (errno != EEXIST) return eng_errorf(err, ENG_EIO, "%s: mkdir: %s", path, strerror(errno));
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return eng_errorf(err, ENG_EIO, "%s: exists and is not a directory", path);
    return 0;
}

int store_fs_fsync_path(const char *path, eng_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return eng_errorf(err, ENG_EIO, "%s: open for fsync: %s", path, strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = eng_errorf(err, ENG_EIO, "%s: fsync: %s", path, strerror(errno));
    close(fd);
    return rc;
}

int store_fs_fsync_parent(const char *path, eng_error *err) {
    char parent[STORE_PATH_MAX];
    int rc = store_fs_pathf(parent, sizeof parent, err, "%s", path);
    if (rc) return rc;
    size_t len = strlen(parent);
    while (len > 1 && parent[len - 1] == '/')
        parent[--len] = '\0';
    char *slash = strrchr(parent, '/');
    if (!slash) return store_fs_fsync_path(".", err);
    if (slash == parent)
        slash[1] = '\0';
    else
        *slash = '\0';
    return store_fs_fsync_path(parent, err);
}

/* Empties the directory open as dirfd (closing it). Recursion depth is the tree depth, which
 * for the store is at most two levels; entries are opened with O_NOFOLLOW so a link planted in
 * a staging directory is removed, never followed. */
static int remove_contents(int dirfd) {
    DIR *d = fdopendir(dirfd);
    if (!d) {
        int e = errno;
        close(dirfd);
        return -e;
    }
    int first_error = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (unlinkat(dirfd, de->d_name, 0) == 0) continue;
        if (errno != EISDIR && errno != EPERM) {
            if (errno != ENOENT && !first_error) first_error = -errno;
            continue;
        }
        int sub = openat(dirfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) {
            if (!first_error) first_error = -errno;
            continue;
        }
        int rc = remove_contents(sub);
        if (rc && !first_error) first_error = rc;
        if (unlinkat(dirfd, de->d_name, AT_REMOVEDIR) != 0 && !first_error) first_error = -errno;
    }
    closedir(d);
    return first_error;
}

int store_fs_remove_tree(const char *path) {
    if (unlink(path) == 0) return 0;
    if (errno == ENOENT) return 0;
    if (errno != EISDIR && errno != EPERM) return -errno;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : -errno;
    int rc = remove_contents(fd);
    if (rmdir(path) != 0 && errno != ENOENT && !rc) rc = -errno;
    return rc;
}

/* Writes all n bytes, retrying short writes and EINTR. */
static int write_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t put = write(fd, p, n);
        if (put < 0 && errno == EINTR) continue;
        if (put < 0) return -errno;
        p += put;
        n -= (size_t)put;
    }
    return 0;
}

int store_fs_copy_hash(const char *src, const char *dst, char hex[SHA256_HEX_BYTES], uint64_t *size,
                       store_progress_fn progress, void *ud, const char *label, eng_error *err) {
    enum { CHUNK = 1 << 20, REPORT_EVERY = 32 << 20 };
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return eng_errorf(err, ENG_EIO, "%s: open: %s", src, strerror(errno));
    struct stat sb;
    if (fstat(in, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(in);
        return eng_errorf(err, ENG_EIO, "%s: not a regular file", src);
    }
    posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        int e = errno;
        close(in);
        return eng_errorf(err, ENG_EIO, "%s: create: %s", dst, strerror(e));
    }
    uint8_t *buf = malloc(CHUNK);
    int rc = 0;
    if (!buf) {
        rc = eng_errorf(err, ENG_ENOMEM, "%s: no memory for the copy buffer", src);
        goto done;
    }
    uint64_t total = (uint64_t)sb.st_size, done = 0, next_report = REPORT_EVERY;
    sha256_ctx c;
    sha256_init(&c);
    for (;;) {
        ssize_t got = read(in, buf, CHUNK);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            rc = eng_errorf(err, ENG_EIO, "%s: read: %s", src, strerror(errno));
            goto done;
        }
        if (got == 0) break;
        sha256_update(&c, buf, (size_t)got);
        int wr = write_all(out, buf, (size_t)got);
        if (wr) {
            rc = eng_errorf(err, ENG_EIO, "%s: write: %s", dst, strerror(-wr));
            goto done;
        }
        done += (uint64_t)got;
        if (progress && done >= next_report) {
            progress(ud, label, done, total > done ? total : done);
            next_report = done + REPORT_EVERY;
        }
    }
    if (fsync(out) != 0) {
        rc = eng_errorf(err, ENG_EIO, "%s: fsync: %s", dst, strerror(errno));
        goto done;
    }
    uint8_t digest[SHA256_DIGEST_BYTES];
    sha256_final(&c, digest);
    sha256_hex(digest, hex);
    *size = done;
    if (progress) progress(ud, label, done, done);
done:
    free(buf);
    close(in);
    if (close(out) != 0 && !rc)
        rc = eng_errorf(err, ENG_EIO, "%s: close: %s", dst, strerror(errno));
    if (rc) unlink(dst);
    return rc;
}

int store_fs_write_file(const char *path, const void *data, size_t n, eng_error *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return eng_errorf(err, ENG_EIO, "%s: create: %s", path, strerror(errno));
    int rc = write_all(fd, data, n);
    if (rc)
        rc = eng_errorf(err, ENG_EIO, "%s: write: %s", path, strerror(-rc));
    else if (fsync(fd) != 0)
        rc = eng_errorf(err, ENG_EIO, "%s: fsync: %s", path, strerror(errno));
    if (close(fd) != 0 && !rc)
        rc = eng_errorf(err, ENG_EIO, "%s: close: %s", path, strerror(errno));
    if (rc) unlink(path);
    return rc;
}

uint64_t store_fs_tree_bytes(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    uint64_t total = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat sb;
        if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode))
            total += (uint64_t)sb.st_size;
    }
    closedir(d);
    return total;
}

void store_fs_random_hex(char out[17]) {
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec << 20 ^
            (uint64_t)getpid() * 0xbf58476d1ce4e5b9ull ^ (uint64_t)(uintptr_t)out;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)r);
}

void store_fs_now_iso8601(char out[32]) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
