/* sha256.h - SHA-256 (FIPS 180-4), streaming, for artifact manifests and output checksums.
 *
 *   sha256_ctx c; sha256_init(&c); sha256_update(&c, buf, n); ... sha256_final(&c, digest);
 *
 * sha256_file hashes a file of any size with a fixed buffer (never the whole file in memory). */
#ifndef VOXQ_OPS_SHA256_H
#define VOXQ_OPS_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"

#define SHA256_DIGEST_BYTES 32
#define SHA256_HEX_BYTES 65 /* 64 hex digits and the NUL */

typedef struct sha256_ctx {
    uint32_t state[8];
    uint64_t nbytes;   /* message length so far */
    uint8_t block[64]; /* the partial block not yet compressed */
    size_t nblock;     /* bytes used in block */
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
/* Writes the digest; c must be re-initialised before reuse. */
void sha256_final(sha256_ctx *c, uint8_t digest[SHA256_DIGEST_BYTES]);
/* Lowercase hex of a digest. */
void sha256_hex(const uint8_t digest[SHA256_DIGEST_BYTES], char hex[SHA256_HEX_BYTES]);
/* One-shot digest of a buffer, as lowercase hex. */
void sha256_buf_hex(const void *data, size_t n, char hex[SHA256_HEX_BYTES]);

/* Chooses the block compression: enable = 1 uses the CPU's SHA instructions when it has them
 * (the default), 0 forces the portable C code (tests compare the two). Returns 1 when the
 * instructions are in use. Process-wide; call before hashing starts. */
int sha256_use_accel(int enable);

/* Called by sha256_file every few MB and at the end (done == total) when not NULL. */
typedef void (*sha256_progress_fn)(void *ud, uint64_t done, uint64_t total);

/* Hashes what remains of an open file descriptor (from its current offset to EOF) with
 * streaming reads; label names it in error messages. The descriptor stays open. */
int sha256_fd(int fd, const char *label, char hex[SHA256_HEX_BYTES], uint64_t *size,
              sha256_progress_fn progress, void *ud, eng_error *err);

/* Hashes the file at path with streaming reads. *size (may be NULL) receives its length.
 * ENG_EIO naming the path on failure. */
int sha256_file(const char *path, char hex[SHA256_HEX_BYTES], uint64_t *size,
                sha256_progress_fn progress, void *ud, eng_error *err);

#endif
