/* pull.h - `voxq store pull`: downloads a Hugging Face-format checkpoint into the store.
 *
 * A pull resolves the files of a repository revision on the hub (or a mirror), downloads them
 * over HTTPS with libcurl and publishes them as models/<model>/original/ through the store's
 * staged, atomic path (ops/store.h), so a reader sees the whole checkpoint or nothing.
 *
 * Files: config.json, generation_config.json when the repo has one, and model.safetensors or
 * model.safetensors.index.json plus the shards its weight_map names. Each URL is
 *   <endpoint>/<repo>/resolve/<revision>/<file>
 * The first answer pins the revision to the commit the hub reports (X-Repo-Commit), so every
 * file comes from one commit even when a branch moves during the download.
 *
 * Verification: every file's size against X-Linked-Size (Content-Length for small files), and
 * its sha256 against X-Linked-Etag / ETag when that is a sha256 (the hub's LFS files); a
 * mismatch is ENG_EFORMAT and the bad bytes are deleted. Safetensors headers are validated
 * (engine/safetensors.h) before anything is published.
 *
 * Resumption: bytes land in <store>/tmp/pull.<model>/<file>.part with a sidecar naming what was
 * asked for (size, etag, commit). A dropped connection is retried with a Range request from
 * where the file stopped; an interrupted process resumes on the next pull. Permanent failures
 * (not found, refused, corrupted) remove the partial files: nothing half-written stays behind.
 * The download directory is only touched while holding the variant's store lock.
 *
 * Threads: files download in parallel, one thread per file up to `jobs`. The callbacks are
 * called from those threads, one at a time (under a lock). */
#ifndef VOXQ_OPS_PULL_H
#define VOXQ_OPS_PULL_H

#include <signal.h>
#include <stdint.h>

#include "engine/error.h"
#include "ops/store.h"

/* Pull-specific results beside ENG_E* and STORE_E*. */
enum {
    PULL_EAUTH = -30 /* the server refused the request (401/403): gated or private repo */
};

#define PULL_DEFAULT_ENDPOINT "https://huggingface.co"
#define PULL_DEFAULT_REVISION "main"
#define PULL_REPO_MAX 256
#define PULL_REVISION_MAX 256

/* Progress over the whole pull: `file` is the file that just moved (its bytes so far and size);
 * all_done/all_total count every file of the checkpoint (bytes already on disk included). */
typedef void (*pull_progress_fn)(void *ud, const char *file, uint64_t file_done,
                                 uint64_t file_total, uint64_t all_done, uint64_t all_total);

/* One line of what the pull is doing ("resuming model.safetensors at 1.2 GB", "retrying ..."). */
typedef void (*pull_log_fn)(void *ud, const char *line);

typedef struct pull_options {
    const char *revision; /* branch, tag or commit; NULL: "main" */
    const char *endpoint; /* NULL: $HF_ENDPOINT, else PULL_DEFAULT_ENDPOINT */
    const char *token;    /* NULL: $HF_TOKEN, else $HUGGING_FACE_HUB_TOKEN; "" sends none */
    int flags;            /* STORE_FORCE (replace an existing original), STORE_NOWAIT */
    int jobs;             /* files downloaded at once; 0: 4 */
    int retries;          /* attempts after a transfer failure, per file; < 0: 5 */
    int retry_delay_ms;   /* first backoff, doubled each time up to 30 s; 0: 1000 */
    int stall_s;          /* a transfer that receives nothing this long fails; 0: 60 */
    const volatile sig_atomic_t *cancel; /* when non-NULL and set, stop (ENG_ECANCELLED) */
    pull_progress_fn progress;
    void *progress_ud;
    pull_log_fn log;
    void *log_ud;
} pull_options;

/* What a successful pull did. */
typedef struct pull_result {
    char commit[64];        /* the commit the hub resolved the revision to ("" if it said none) */
    int nfiles;             /* files published (MANIFEST.json excluded) */
    uint64_t total_bytes;   /* their size */
    uint64_t fetched_bytes; /* bytes received by this call (less when it resumed) */
    int resumed;            /* files continued from a partial download */
} pull_result;

/* A short name for a code, PULL_E* included (else store_strerror). */
const char *pull_strerror(int code);

/* The repository the defaults pull for a store model name: "dia-1.6b" gives
 * "nari-labs/Dia-1.6B-0626", "dac-44khz" gives "descript/dac_44khz"; NULL for other names. */
const char *pull_default_repo(const char *model);

/* 1 when repo is "name" or "owner/name" with [A-Za-z0-9._-] parts (no "..", no leading '.' or
 * '-'), else 0. */
int pull_repo_valid(const char *repo);

/* Downloads repo (at opt->revision) and publishes it as models/<model>/original/ with a manifest
 * whose "method" is "pull" and whose "source" names the repo, revision, commit and endpoint.
 * res may be NULL. Returns 0; STORE_EEXIST when a valid original exists (without STORE_FORCE;
 * nothing is downloaded); ENG_ENOTFOUND when the repo, revision or a needed file does not exist;
 * PULL_EAUTH when the server refuses (gated repo without HF_TOKEN); ENG_EFORMAT when a file
 * fails its size, sha256 or header check; ENG_EIO for network or disk failures that outlasted
 * the retries (partial files are kept for the next pull); ENG_ECANCELLED when cancelled. */
int pull_model(const store *s, const char *repo, const char *model, const pull_options *opt,
               pull_result *res, eng_error *err);

/* The first-run path of a worker: when the store holds no valid variant of `model`, pulls repo
 * (NULL: pull_default_repo(model)) at revision (NULL: "main") as models/<model>/original.
 * Sets *pulled (may be NULL) to 1 when it downloaded, 0 when the model was there already
 * (including when another process published it while this one waited for the lock).
 * ENG_EINVAL when no repo is given or known for the model; otherwise pull_model's codes. */
int pull_model_if_missing(const store *s, const char *model, const char *repo, const char *revision,
                          const pull_options *opt, int *pulled, eng_error *err);

#endif
