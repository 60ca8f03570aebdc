/* store.h - the artifact store: model checkpoints on a persistent volume.
 *
 * Layout under the root (VOXQ_STORE, default ./store):
 *
 *   models/<model>/<variant>/   config.json  *.safetensors  MANIFEST.json
 *   locks/<model>@<variant>.lock   flock()ed by the one writer of that variant
 *   tmp/<model>@<variant>.<pid>.<random>[.old]/   staging; never read by loaders
 *
 * MANIFEST.json (written only by store_stage_commit) lists every other file of the variant with
 * its size and sha256, the artifact's own digest, the tool version and creation time, plus what
 * the writer adds (source, method, params, quality figures). docs/store.md has every field.
 *
 * Publishing: a writer takes the variant's lock (store_stage_begin), which also removes the tmp/
 * debris of crashed writers, fills a fresh staging directory under tmp/, and commits: every file
 * is hashed and fsynced, MANIFEST.json written and fsynced, and the directory renamed into
 * models/<model>/<variant>/. A reader therefore sees a whole artifact or none. Concurrent
 * publishers of one variant leave exactly one artifact; the others get STORE_EEXIST.
 *
 * Names (model, variant) are [a-z0-9._-], 1..STORE_NAME_MAX-1 bytes, not starting with '.' or
 * '-', never containing "..": no name can leave the store root. File names inside a variant are
 * [A-Za-z0-9._-] with the same restrictions.
 *
 * Errors: every function that can fail returns 0 or a negative code (ENG_E* of engine/error.h or
 * STORE_E* below) and fills the eng_error it is given with a message naming the path or field.
 * A `store` is immutable after store_open and may be shared between threads; a store_stage
 * belongs to one thread at a time. */
#ifndef VOXQ_OPS_STORE_H
#define VOXQ_OPS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "engine/error.h"

/* Store-specific results, beside the ENG_E* codes (which use -1..-9). */
enum {
    STORE_EEXIST = -20,  /* a valid artifact of that variant is already published */
    STORE_EBUSY = -21,   /* another process holds the variant's lock (STORE_NOWAIT) */
    STORE_ECORRUPT = -22 /* an artifact exists but is damaged: no or bad manifest, size or hash */
};

#define STORE_NAME_MAX 64 /* model and variant names, including the NUL */
#define STORE_FILE_NAME_MAX 256
#define STORE_PATH_MAX 4096
#define STORE_MANIFEST "MANIFEST.json"
#define STORE_MANIFEST_FORMAT 1

/* Flags of store_stage_begin, store_remove and store_import. */
enum {
    STORE_NOWAIT = 1 << 0, /* fail with STORE_EBUSY instead of waiting for the variant's lock */
    STORE_FORCE = 1 << 1   /* replace an existing artifact (valid or damaged) */
};

/* Flags of store_verify. */
enum {
    STORE_VERIFY_HASHES = 1 << 0 /* also recompute every sha256 (reads every byte) */
};

/* Called while bytes are hashed or copied: `file` is the file name, done/total its bytes.
 * Called at least once per file with done == total. */
typedef void (*store_progress_fn)(void *ud, const char *file, uint64_t done, uint64_t total);

typedef struct store {
    char root[STORE_PATH_MAX]; /* absolute path of the store root */
} store;

/* The store root to use when none is given: $VOXQ_STORE, or "./store" when unset or empty. */
const char *store_default_root(void);

/* Opens the store at root, creating root, models/, locks/ and tmp/ when missing.
 * s->root becomes the absolute path. store_close releases nothing today but pairs with open. */
int store_open(store *s, const char *root, eng_error *err);
void store_close(store *s);

/* A short name for an ENG_E* or STORE_E* code. */
const char *store_strerror(int code);

/* 1 when name is a valid model or variant name, else 0. */
int store_name_valid(const char *name);
/* 1 when name is a valid file name inside a variant directory, else 0. */
int store_file_name_valid(const char *name);
/* Splits "MODEL/VARIANT" into its validated parts (ENG_EINVAL naming the bad part otherwise). */
int store_split_ref(const char *ref, char model[STORE_NAME_MAX], char variant[STORE_NAME_MAX],
                    eng_error *err);

/* Writes root/models/<model> or root/models/<model>/<variant> into buf after validating the
 * names; ENG_EINVAL for a bad name or a path longer than n. The directory may not exist. */
int store_model_dir(const store *s, const char *model, char *buf, size_t n, eng_error *err);
int store_variant_dir(const store *s, const char *model, const char *variant, char *buf, size_t n,
                      eng_error *err);

/* What a variant directory holds, from the cheap checks (manifest parses, every listed file
 * present with its size, no unlisted file). */
typedef enum store_state {
    STORE_ABSENT = 0, /* no directory models/<model>/<variant> */
    STORE_VALID = 1,  /* manifest valid and every size matches */
    STORE_INVALID = 2 /* the directory exists but is not a valid artifact: why says what */
} store_state;

/* The state of a variant. why (may be NULL) receives the reason for STORE_INVALID, or the error
 * when the result is negative (bad name: ENG_EINVAL). Hashes are not read. */
int store_variant_state(const store *s, const char *model, const char *variant, eng_error *why);
/* 1 when the variant exists and passes the cheap checks, else 0. */
int store_variant_exists_valid(const store *s, const char *model, const char *variant);

/* ---- reading a manifest ---- */

typedef struct store_file_entry {
    char name[STORE_FILE_NAME_MAX];
    uint64_t size;
    char sha256[65]; /* lowercase hex */
} store_file_entry;

typedef struct store_manifest {
    int format; /* STORE_MANIFEST_FORMAT */
    char model[STORE_NAME_MAX];
    char variant[STORE_NAME_MAX];
    char created[32];       /* ISO-8601 UTC, "2026-11-22T07:30:00Z" */
    char tool[64];          /* "voxq 0.1.0" */
    char digest[65];        /* sha256 of the artifact (see store_digest) */
    char method[64];        /* "method" string of the writer ("import", "int8"), or "" */
    char source_digest[65]; /* "source"."digest" when present, else "" */
    uint64_t total_bytes;   /* sum of the file sizes (MANIFEST.json excluded) */
    size_t nfiles;
    store_file_entry *files; /* sorted by name; owned */
    cJSON *json;             /* the whole document, for other fields; owned */
} store_manifest;

/* Reads and validates dir/MANIFEST.json (dir: a variant directory or a staging directory):
 * format, names, sizes, hex digests. Does not look at the other files. ENG_ENOTFOUND when the
 * manifest is missing, ENG_EFORMAT naming the field when it is malformed. */
int store_manifest_load(const char *dir, store_manifest *m, eng_error *err);
/* store_manifest_load of models/<model>/<variant>/. */
int store_manifest_read(const store *s, const char *model, const char *variant, store_manifest *m,
                        eng_error *err);
/* Frees what a manifest owns and zeroes it; safe on a zeroed or already freed manifest. */
void store_manifest_free(store_manifest *m);
/* Looks a file up in a loaded manifest; NULL when absent. */
const store_file_entry *store_manifest_file(const store_manifest *m, const char *name);

/* The artifact digest: sha256 over the lines "<sha256>  <name>\n" of its files sorted by name
 * (the output format of sha256sum), as lowercase hex. Stable across machines and copies. */
void store_digest(const store_file_entry *files, size_t nfiles, char hex[65]);

/* ---- verifying and listing ---- */

/* What store_verify found: one line per problem, each naming the file. */
typedef struct store_report {
    size_t nproblems;
    char **problems; /* owned */
} store_report;
void store_report_free(store_report *r);

/* Checks a variant: manifest present and valid, every listed file present with its size (and
 * sha256 with STORE_VERIFY_HASHES), no unlisted file. Each problem is added to report (may be
 * NULL). Returns 0 when valid, STORE_ECORRUPT when any problem was found (err: the first one),
 * ENG_ENOTFOUND when the variant does not exist, other negative codes for bad names. */
int store_verify(const store *s, const char *model, const char *variant, int flags,
                 store_progress_fn progress, void *ud, store_report *report, eng_error *err);

typedef struct store_entry {
    char model[STORE_NAME_MAX];
    char variant[STORE_NAME_MAX];
    store_state state; /* STORE_VALID or STORE_INVALID (cheap checks) */
    uint64_t bytes;    /* manifest total, or bytes on disk when the manifest is unusable */
    char created[32];  /* from the manifest, "" when unusable */
    char method[64];   /* from the manifest, "" when unusable */
    char problem[160]; /* why it is invalid, "" when valid */
} store_entry;

/* Every variant directory under models/ (only those of `model` when model is not NULL), sorted
 * by model then variant. Directories with invalid names are skipped. *out is malloc()ed (free()
 * it); *n may be 0. */
int store_list(const store *s, const char *model, store_entry **out, size_t *n, eng_error *err);

/* ---- publishing ---- */

/* A writer's staging area. Caller-allocated; filled by store_stage_begin, emptied by commit or
 * abort (both always release the lock and remove the staging directory). */
typedef struct store_stage {
    const store *st;
    char model[STORE_NAME_MAX];
    char variant[STORE_NAME_MAX];
    char dir[STORE_PATH_MAX]; /* tmp/<model>@<variant>.<pid>.<random>: write the files here */
    int flags;                /* flags given to begin */
    int lock_fd;              /* -1 when not held */
    size_t ncopied;           /* files already hashed by store_stage_copy_in */
    store_file_entry *copied;
} store_stage;

/* Takes the exclusive lock locks/<model>@<variant>.lock (waiting for it, or STORE_EBUSY naming
 * the holder's pid with STORE_NOWAIT), removes stale tmp/ debris (this variant's, and any other
 * variant's whose lock nobody holds), and creates the staging directory stage->dir.
 * Without STORE_FORCE, an existing valid variant gives STORE_EEXIST ("already published") and an
 * existing damaged one STORE_ECORRUPT; in both cases nothing is held afterwards. */
int store_stage_begin(const store *s, const char *model, const char *variant, int flags,
                      store_stage *stage, eng_error *err);

/* Writes the path of file `name` inside the staging directory into buf (name validated). */
int store_stage_path(const store_stage *stage, const char *name, char *buf, size_t n,
                     eng_error *err);

/* Copies src into the staging directory as `name`, hashing while copying (commit will not read
 * it again) and fsyncing it. Streams; any size. */
int store_stage_copy_in(store_stage *stage, const char *src, const char *name,
                        store_progress_fn progress, void *ud, eng_error *err);

/* Publishes the staging directory as models/<model>/<variant>/. Every regular file in it is
 * hashed (unless copied in) and fsynced; subdirectories, links and a writer's own MANIFEST.json
 * are refused (ENG_EINVAL). MANIFEST.json gets format, model, variant, created, tool, digest,
 * total_bytes and files, plus a deep copy of every member of `extra` (may be NULL; a member
 * named like one of the store's own is ENG_EINVAL), e.g. "source": {"model", "variant",
 * "digest"}, "method", "params", "quality". Then the directory is fsynced and renamed into place
 * (with STORE_FORCE an existing artifact is swapped out atomically and deleted).
 * Returns 0, or STORE_EEXIST when a valid artifact appeared meanwhile (ours is deleted), or an
 * error. The lock is released and the staging directory gone in every case. */
int store_stage_commit(store_stage *stage, const cJSON *extra, store_progress_fn progress, void *ud,
                       eng_error *err);

/* Removes the staging directory and releases the lock; safe to call twice or after commit. */
void store_stage_abort(store_stage *stage);

/* ---- import and removal ---- */

/* Copies a Hugging Face-format download in dir (config.json, model.safetensors or
 * model.safetensors.index.json and the shards it names, generation_config.json when present)
 * into models/<model>/original/ with a manifest ("method": "import", "source": {"path"}).
 * Each safetensors header is checked to be well formed before anything is published.
 * flags: STORE_FORCE, STORE_NOWAIT. STORE_EEXIST when it already exists (without force). */
int store_import(const store *s, const char *dir, const char *model, int flags,
                 store_progress_fn progress, void *ud, eng_error *err);

/* Removes a variant (under its lock; STORE_NOWAIT fails with STORE_EBUSY while a writer holds
 * it): renamed into tmp/ at once, so readers stop seeing it, then deleted. The model directory
 * goes too when it becomes empty. ENG_ENOTFOUND when absent. */
int store_remove(const store *s, const char *model, const char *variant, int flags, eng_error *err);

#endif
