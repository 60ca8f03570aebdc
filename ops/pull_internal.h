/* pull_internal.h - what ops/pull.c (planning, threads, publishing) and ops/pull_fetch.c (HTTP
 * with libcurl) share; not part of the public API (ops/pull.h is). */
#ifndef VOXQ_OPS_PULL_INTERNAL_H
#define VOXQ_OPS_PULL_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "engine/error.h"
#include "ops/pull.h"
#include "ops/store.h"

/* What the server says about one file of the repository (a HEAD of its resolve URL). */
typedef struct pull_remote {
    long status; /* HTTP status after relative redirects (200, 302 to a CDN, 404...) */
    int have_size;
    uint64_t size;       /* X-Linked-Size, else Content-Length of a 200 */
    char etag[160];      /* X-Linked-Etag, else ETag, without W/ and quotes */
    char sha256[65];     /* etag when it is 64 hex digits (LFS files), else "" */
    char commit[64];     /* X-Repo-Commit, "" when absent */
    char error_code[64]; /* X-Error-Code (RepoNotFound, EntryNotFound, GatedRepo...) */
    char error_msg[160]; /* X-Error-Message */
} pull_remote;

/* One file of the checkpoint. */
typedef struct pull_file {
    char name[STORE_FILE_NAME_MAX];
    pull_remote remote;
    uint64_t done;    /* bytes of it on disk (counted in the pull's progress) */
    int resumed;      /* continued from a partial download */
    uint64_t fetched; /* bytes received for it by this pull */
} pull_file;

/* One pull in progress. The strings are fixed at start; the rest is guarded by `lock`. */
typedef struct pull_ctx {
    const pull_options *opt;
    char endpoint[512]; /* no trailing '/' */
    char repo[PULL_REPO_MAX];
    char revision[PULL_REVISION_MAX];         /* as given, or the pinned commit */
    char revision_url[3 * PULL_REVISION_MAX]; /* percent-encoded for the URL */
    char auth_header[600];                    /* "Authorization: Bearer ..." or "" */
    char dir[STORE_PATH_MAX];                 /* <store>/tmp/pull.<model> */
    int retries, retry_delay_ms, stall_s;
    pthread_mutex_t lock;
    atomic_int stop; /* set at the first failure, or on cancel */
    uint64_t all_done, all_total;
    double last_report; /* monotonic seconds of the last progress call */
} pull_ctx;

/* Sets the revision used in URLs (percent-encoding '/' and other reserved bytes). */
void pull_set_revision(pull_ctx *c, const char *revision);

/* HEADs the resolve URL of `name`, following relative redirects only (the hub's renames), and
 * fills r. A transport failure is retried like a download; an HTTP error status is returned in
 * r->status with 0. */
int pull_fetch_meta(pull_ctx *c, const char *name, pull_remote *r, eng_error *err);

/* The error for an HTTP failure status of `name` (404: ENG_ENOTFOUND naming the repo, revision
 * or file; 401/403: PULL_EAUTH mentioning HF_TOKEN; else ENG_EIO). */
int pull_status_error(const pull_ctx *c, const char *name, const pull_remote *r, eng_error *err);

/* Downloads f into c->dir/<name>, resuming a matching .part, retrying transfer failures with
 * Range requests, verifying size and sha256. On success the file is complete and fsynced under
 * its own name. A corrupted or refused file leaves nothing behind; a transfer failure that
 * outlasted the retries (or a stop) keeps the .part and its sidecar for the next pull. */
int pull_fetch_file(pull_ctx *c, pull_file *f, eng_error *err);

/* Records that f now has `done` bytes on disk (up or down: a restart from zero goes down),
 * counts `received` new bytes, and calls the progress callback (throttled to a few calls a
 * second; always when the file completes). Takes c->lock. */
void pull_progress_set(pull_ctx *c, pull_file *f, uint64_t done, uint64_t received);

/* Formats a line and hands it to the log callback (under c->lock). */
void pull_logf(pull_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 1 when the caller's cancel flag is set or another file failed. */
int pull_should_stop(pull_ctx *c);

#endif
