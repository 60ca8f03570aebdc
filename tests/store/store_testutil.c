/* store_testutil.c - see store_testutil.h. */
#include "store_testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops/store_internal.h"

int tu_mkdtemp(const char *tag, char *buf, size_t n) {
    if ((size_t)snprintf(buf, n, "/tmp/voxq-store-%s-XXXXXX", tag) >= n) return -1;
    return mkdtemp(buf) ? 0 : -1;
}

void tu_rmtree(const char *path) {
    store_fs_remove_tree(path);
}

int tu_write(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t put = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && put == n) ? 0 : -1;
}

int tu_write_pattern(const char *path, size_t n, uint32_t seed) {
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf) return -1;
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
    int rc = tu_write(path, buf, n);
    free(buf);
    return rc;
}

int tu_flip_byte(const char *path, uint64_t offset, uint8_t mask) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    unsigned char b;
    int rc = -1;
    if (pread(fd, &b, 1, (off_t)offset) == 1) {
        b ^= mask;
        if (pwrite(fd, &b, 1, (off_t)offset) == 1) rc = 0;
    }
    close(fd);
    return rc;
}

char *tu_read(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
        if (len + 1 == cap) {
            char *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return NULL;
    buf[len] = '\0';
    if (n) *n = len;
    return buf;
}

int tu_count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

int tu_exists(const char *path) {
    struct stat sb;
    return lstat(path, &sb) == 0;
}

long long tu_file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}
