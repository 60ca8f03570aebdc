/* store_testutil.h - temp directories and small file helpers for the store tests. */
#ifndef VOXQ_TESTS_STORE_TESTUTIL_H
#define VOXQ_TESTS_STORE_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* A fresh directory /tmp/voxq-store-<tag>-XXXXXX (path in buf); 0 on success. */
int tu_mkdtemp(const char *tag, char *buf, size_t n);
/* rm -rf without following links. */
void tu_rmtree(const char *path);
/* Writes n bytes (creating or truncating); 0 on success. */
int tu_write(const char *path, const void *data, size_t n);
/* Writes n bytes of a deterministic pattern seeded by seed. */
int tu_write_pattern(const char *path, size_t n, uint32_t seed);
/* XORs the byte at offset with mask in place; 0 on success. */
int tu_flip_byte(const char *path, uint64_t offset, uint8_t mask);
/* The whole file, NUL-terminated, malloc()ed; NULL on failure. *n may be NULL. */
char *tu_read(const char *path, size_t *n);
/* Number of entries in a directory other than . and .. (-1 when it cannot be opened). */
int tu_count_entries(const char *dir);
/* 1 when path exists. */
int tu_exists(const char *path);
/* Size of a file, or -1. */
long long tu_file_size(const char *path);

#endif
