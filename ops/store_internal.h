/* store_internal.h - helpers shared by the store's .c files; not part of the public API
 * (ops/store.h is). File-system primitives that know nothing about the layout. */
#ifndef VOXQ_OPS_STORE_INTERNAL_H
#define VOXQ_OPS_STORE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"
#include "ops/sha256.h"
#include "ops/store.h"

/* snprintf into buf; ENG_EINVAL naming `what` when the result does not fit. */
int store_fs_pathf(char *buf, size_t n, eng_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* mkdir that accepts an existing directory (and refuses an existing non-directory). */
int store_fs_mkdir(const char *path, eng_error *err);

/* fsync of a file or directory by path (directories: makes a rename or create durable). */
int store_fs_fsync_path(const char *path, eng_error *err);

/* The directory part of path fsynced (the parent of a renamed or created entry). */
int store_fs_fsync_parent(const char *path, eng_error *err);

/* Removes path and everything below it without following symbolic links; an absent path is
 * success. Returns 0 or -errno of the first failure (it goes on removing what it can). */
int store_fs_remove_tree(const char *path);

/* Copies src to dst (created exclusively, mode 0644), hashing the bytes as they pass and
 * fsyncing dst. hex/size receive the digest and length. A failed copy removes dst. */
int store_fs_copy_hash(const char *src, const char *dst, char hex[SHA256_HEX_BYTES], uint64_t *size,
                       store_progress_fn progress, void *ud, const char *label, eng_error *err);

/* Writes n bytes to a new file path (exclusive), fsyncs it. */
int store_fs_write_file(const char *path, const void *data, size_t n, eng_error *err);

/* Sum of the sizes of the regular files below path (for `ls` of a damaged variant). */
uint64_t store_fs_tree_bytes(const char *path);

/* 16 random lowercase hex digits (getrandom, falling back to time and pid). */
void store_fs_random_hex(char out[17]);

/* The current time as ISO-8601 UTC with seconds: "2026-11-22T07:30:00Z". */
void store_fs_now_iso8601(char out[32]);

/* The lock file and staging prefix of a variant: "<model>@<variant>". */
int store_lock_path(const store *s, const char *model, const char *variant, char *buf, size_t n,
                    eng_error *err);

/* Opens (creating) and flock()s the variant's lock file; returns the fd in *fd. With nowait a
 * held lock is STORE_EBUSY naming the pid recorded by the holder. */
int store_lock_variant(const store *s, const char *model, const char *variant, int nowait, int *fd,
                       eng_error *err);
void store_unlock_variant(int fd);

/* Removes stale tmp/ entries: every entry of this variant (the caller holds its lock), and every
 * other variant's entry whose lock is free. Failures are ignored: debris is best effort. */
void store_clean_debris(const store *s, const char *model, const char *variant);

/* Renames the variant directory into tmp/ (as "<model>@<variant>.<pid>.<random>.old") and
 * deletes it there. 0 when it was absent. */
int store_retire_variant_dir(const store *s, const char *model, const char *variant,
                             eng_error *err);

#endif
