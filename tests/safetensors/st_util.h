/* st_util.h - scratch directories and raw safetensors images for the safetensors tests. */
#ifndef VOXQ_TESTS_ST_UTIL_H
#define VOXQ_TESTS_ST_UTIL_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fresh directory under $TMPDIR (or /tmp); the returned path is static per call site. */
static inline const char *st_test_tmpdir(char *buf, size_t n) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, n, "%s/voxq-st-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(buf);
}

static inline int st_test_rm_one(const char *path, const struct stat *sb, int flag,
                                 struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes a directory tree made by st_test_tmpdir(). */
static inline void st_test_rmtree(const char *dir) {
    if (dir) nftw(dir, st_test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Writes n bytes to path; returns 0 on success. */
static inline int st_test_write_file(const char *path, const void *bytes, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t w = n ? fwrite(bytes, 1, n, fp) : 0;
    return (fclose(fp) == 0 && w == n) ? 0 : -1;
}

/* Writes a safetensors file with the given raw header text (length prefix = its length, or
 * `claimed_len` when non-zero) followed by `data_len` bytes of 0x5a. */
static inline int st_test_write_raw(const char *path, const char *header, uint64_t claimed_len,
                                    size_t data_len) {
    size_t hl = strlen(header);
    uint64_t len = claimed_len ? claimed_len : hl;
    size_t total = 8 + hl + data_len;
    unsigned char *buf = malloc(total);
    if (!buf) return -1;
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(len >> (8 * i));
    memcpy(buf + 8, header, hl);
    memset(buf + 8 + hl, 0x5a, data_len);
    int rc = st_test_write_file(path, buf, total);
    free(buf);
    return rc;
}

#endif
