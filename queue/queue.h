/* queue.h - the Redis contract of voxq: job schema, reliable fetch, leases, heartbeats, the
 * reaper, retries, dead letters, results, cancellation and fleet locks (docs/queue.md).
 *
 * Two halves:
 *  - queue_job_*: parse and validate one job payload (cJSON, case-sensitive, explicit length).
 *    Pure functions, usable from any thread; the tests drive them directly.
 *  - queue_*: the client a worker runs on its libuv loop. Three hiredis async connections
 *    (fetch: LMOVE/BLMOVE only; cmd: scripts, heartbeats, locks; sub: cancel events) through
 *    our own libuv adapter, with connect and command watchdogs and reconnect with capped backoff.
 *    Every state transition is one Lua script, guarded by the job's lease token and by the LREM
 *    of the exact payload bytes from this worker's processing list, so replaying a script whose
 *    reply was lost changes nothing.
 *
 * Threading: every queue_* call and callback runs on the loop thread. */
#ifndef VOXQ_QUEUE_H
#define VOXQ_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* ---- job schema --------------------------------------------------------------------------- */

#define QUEUE_ID_MAX 128        /* id: [A-Za-z0-9._:-]{1,128} */
#define QUEUE_NAME_MAX 64       /* model, variant, method, source names */
#define QUEUE_PATH_MAX 255      /* output path relative to the output directory */
#define QUEUE_KEY_MAX 200       /* reply_to list key */
#define QUEUE_RESULT_TTL_S 86400 /* result_ttl_s when a job gives none (or none valid) */

typedef enum queue_job_type { QUEUE_JOB_SYNTHESIZE = 1, QUEUE_JOB_QUANTIZE = 2 } queue_job_type;

/* Limits enforced by queue_job_parse; queue_job_limits_default fills the documented values. */
typedef struct queue_job_limits {
    size_t max_payload_bytes;   /* whole JSON payload (default 1 MiB) */
    size_t max_text_bytes;      /* synthesize text in UTF-8 bytes (default 1024, Dia's encoder) */
    int max_attempts_cap;       /* default 10 */
    double max_seconds_cap;     /* longest audio a job may ask for (default 60) */
    double timeout_s_cap;       /* default 3600 */
    long result_ttl_cap_s;      /* default 30 days */
    /* The service's key prefix: a reply_to inside it is refused (a terminal message pushed onto
     * a queue or processing list would be fetched as a job). NULL = "voxq:". */
    const char *key_prefix;
} queue_job_limits;

void queue_job_limits_default(queue_job_limits *lim);

/* A validated job. Strings are NUL-terminated copies; `text` is heap-owned (queue_job_free). */
typedef struct queue_job {
    queue_job_type type;
    char id[QUEUE_ID_MAX + 1];
    int id_assigned;            /* 1 when the payload had no id and queue_job_parse made one */
    int duplicate_keys;         /* top-level members repeating an earlier key (ignored: the
                                 * first of each wins); > 0 means raw is not canonical */
    int max_attempts;           /* default 3 */
    double timeout_s;           /* 0 = none */
    int priority_hi;            /* "priority": "hi" */
    char reply_to[QUEUE_KEY_MAX + 1];
    long result_ttl_s;          /* default QUEUE_RESULT_TTL_S, also after a failed parse */
    /* synthesize */
    char *text;
    size_t text_len;
    char model[QUEUE_NAME_MAX + 1];    /* "" = the worker's configured model */
    char variant[QUEUE_NAME_MAX + 1];  /* "" = the worker's loaded variant */
    char format[8];             /* wav (default), flac, ogg */
    uint64_t seed;
    int has_seed;
    double cfg_scale, temperature, top_p;  /* Dia defaults 3.0, 1.2, 0.95 */
    int cfg_filter_top_k;       /* default 45 */
    double max_seconds;         /* default 0 = the model's own cap */
    char output[QUEUE_PATH_MAX + 1]; /* relative path; default "<id escaped>.<format>" */
    /* quantize */
    char source[QUEUE_NAME_MAX + 1];   /* default "original" */
    char method[QUEUE_NAME_MAX + 1];   /* int8 | int4 */
    int force;
    /* Unknown top-level fields, comma separated (truncated), for the worker's log. */
    char ignored[160];
} queue_job;

/* A validation failure: a machine-readable code, the field it concerns, and a message. Codes:
 * too_large, invalid_json, not_object, invalid_id, unknown_type, missing_field, invalid_field,
 * invalid_utf8, text_too_long, path_escape. */
typedef struct queue_job_error {
    char code[32];
    char field[48];
    char message[256];
} queue_job_error;

/* Parses and validates the payload raw[0..len) (need not be NUL-terminated). On success fills
 * *job (call queue_job_free) and returns 0. On failure returns -1 with *err filled and *job
 * holding nothing to free. Lookups are case-sensitive; with duplicate keys the first wins
 * (counted in duplicate_keys); a payload without "id" gets a fresh random one (id_assigned = 1).
 * Either way the payload should be stored as queue_job_canonical makes it. */
int queue_job_parse(const char *raw, size_t len, const queue_job_limits *lim, queue_job *job,
                    queue_job_error *err);
void queue_job_free(queue_job *job);

/* 1 when s[0..n) is well-formed UTF-8 without NUL bytes, overlongs or surrogates. */
int queue_utf8_valid(const char *s, size_t n);

/* 1 when rel is a safe relative path below an output directory: components of
 * [A-Za-z0-9._-], none empty, ".", "..", or starting with '.', at most QUEUE_PATH_MAX bytes. */
int queue_path_safe(const char *rel);

/* 1 when id matches [A-Za-z0-9._:-]{1,128}. */
int queue_id_valid(const char *id, size_t n);

/* Writes 32 random hex characters + NUL into out (getrandom; a time/pid mix as fallback). */
void queue_random_hex(char out[33]);

/* Returns raw with "id":"<id>", inserted after its opening '{' (heap string, *out_len set), so a
 * job that came without an id keeps it through retries and recoveries. NULL on OOM. */
char *queue_job_with_id(const char *raw, size_t len, const char *id, size_t *out_len);

/* The payload to keep in Redis in place of raw, a job that queue_job_parse accepted as *job,
 * so that every later reader (the scripts' Lua cjson, retries, recoveries, dead letters) sees
 * the job the worker parsed. Lua cjson keeps the last of duplicate keys where cJSON keeps the
 * first: with job->duplicate_keys the payload is raw without the later repeats of each key (the
 * members kept are copied byte for byte: cJSON would reprint a seed of 2^53 - 1 inexactly); an
 * assigned id is written in (queue_job_with_id when there is
 * nothing else to change, so raw's bytes are kept). Returns 0 with *out a heap string (free it)
 * and *out_len set, or *out NULL when raw is canonical as it is; -1 when out of memory. */
int queue_job_canonical(const char *raw, size_t len, const queue_job *job, char **out,
                        size_t *out_len);

/* ---- worker client ------------------------------------------------------------------------ */

typedef struct queue queue;

typedef struct queue_config {
    const char *redis_url;      /* redis://[:password@]host[:port][/db] or unix:///path */
    const char *prefix;         /* key prefix, default "voxq:" */
    const char *worker_id;      /* unique per process; NULL = host:pid:random */
    int capacity;               /* jobs held at once (fetching stops when full) */
    int block_timeout_s;        /* BLMOVE timeout, default 2 */
    int connect_timeout_ms;     /* default 3000 */
    int command_timeout_ms;     /* cmd connection watchdog, default 10000 */
    int lease_ms;               /* heartbeat key lifetime, default 20000 */
    int heartbeat_ms;           /* default lease_ms / 4 */
    int reaper_ms;              /* how often this worker tries to reap, default 5000 */
    int retry_base_ms;          /* first retry delay, default 5000 */
    int retry_cap_ms;           /* default 600000 */
    int redelay_ms;             /* duplicate-while-running / waiting_artifact, default 30000 */
    int max_recoveries;         /* crash recoveries before poison, default 2 */
    int fetch_enabled;          /* 0: connect, heartbeat and reap but do not fetch */
    queue_job_limits limits;
} queue_config;

void queue_config_default(queue_config *cfg);

/* A job this worker claimed: it holds the lease until one of queue_ack, queue_fail,
 * queue_cancelled, queue_requeue or queue_redelay hands it back (the queue then frees it). */
typedef struct queue_delivery {
    queue_job job;
    char *raw;                  /* payload bytes exactly as in the processing list */
    size_t raw_len;
    char lease[33];
    int attempts;               /* finished attempts before this one */
    int64_t started_ms;         /* wall clock at claim */
    int cancel_requested;       /* set by the queue when a cancel arrives; handlers poll it */
    void *user;                 /* the worker's per-job state; the worker frees it */
    /* queue-private */
    struct queue *q;
    char *orig_raw;             /* the payload as fetched, when the claim replaces it with its
                                 * canonical form (queue_job_canonical); else NULL */
    size_t orig_len;
    int finishing;
    struct queue_delivery *next;
} queue_delivery;

/* Fields of a success result, stored in the job hash and sent in events and reply_to. */
typedef struct queue_result {
    const char *output_path;
    double duration_ms;         /* audio duration */
    int sample_rate;
    int64_t bytes;
    const char *sha256;
    double steps_per_s;         /* decoder steps per second */
    double run_ms;              /* wall time of the run */
    const char *artifact;       /* quantize: "<model>/<method>[ (already present)]", or NULL */
} queue_result;

typedef struct queue_callbacks {
    /* A job was claimed; start it. The queue never runs two deliveries with the same id. */
    void (*on_job)(queue *q, queue_delivery *d, void *data);
    /* A cancel arrived for d (d->cancel_requested is already 1). */
    void (*on_cancel)(queue *q, queue_delivery *d, void *data);
    /* Redis is unusable for this worker (e.g. version < 6.2): message says why. */
    void (*on_fatal)(queue *q, const char *message, void *data);
    /* Heartbeat gate: return 0 while the engine is stalled, so the lease lapses. NULL = always. */
    int (*healthy)(void *data);
    /* A terminal or transitional state was written for id (for metrics). May be NULL. */
    void (*on_state)(queue *q, const char *id, const char *state, void *data);
    /* queue_close finished: every connection is closed; the queue may be freed. */
    void (*on_closed)(queue *q, void *data);
} queue_callbacks;

/* Creates the client; nothing connects before queue_start. Returns 0 or -1 with errbuf set. */
int queue_new(uv_loop_t *loop, const queue_config *cfg, const queue_callbacks *cb, void *data,
              queue **out, char errbuf[256]);
void queue_start(queue *q);
/* Stops fetching (a pending BLMOVE is abandoned by reconnecting fetch without it). */
void queue_stop_fetching(queue *q);
/* Resumes fetching after queue_stop_fetching (e.g. model switched). */
void queue_resume_fetching(queue *q);
/* Deregisters (DEL hb, SREM workers) and closes every connection; then on_closed. Deliveries
 * still held are left in the processing list for the reaper. */
void queue_close(queue *q);
void queue_free(queue *q);

/* Terminal success. */
void queue_ack(queue *q, queue_delivery *d, const queue_result *r);
/* Failure: permanent -> failed + dead letter now; else retry with backoff until max_attempts. */
void queue_fail(queue *q, queue_delivery *d, const char *code, const char *message, int permanent);
/* Cancelled (no retry). */
void queue_cancelled(queue *q, queue_delivery *d);
/* Back to the head of its queue, attempts unchanged (shutdown drain). */
void queue_requeue(queue *q, queue_delivery *d);
/* Re-delayed by redelay_ms with state (e.g. "waiting_artifact"), attempts unchanged. */
void queue_redelay(queue *q, queue_delivery *d, const char *state);

/* Publishes progress (0..1) for a running job: HSET progress + PUBLISH, fire and forget. */
void queue_progress(queue *q, queue_delivery *d, double progress);

/* Enqueues a job payload on the pending list (LPUSH), replayed until Redis has it; used by a
 * worker that needs a quantize job (its deterministic id makes repeats harmless). */
void queue_enqueue(queue *q, const char *json, int hi);

/* Fleet lock (SET key token NX PX). cb(q, 1|0|-1 error, data). Keys get the prefix. */
typedef void (*queue_lock_cb)(queue *q, int result, void *data);
void queue_lock_acquire(queue *q, const char *name, const char *token, int ttl_ms,
                        queue_lock_cb cb, void *data);
void queue_lock_renew(queue *q, const char *name, const char *token, int ttl_ms,
                      queue_lock_cb cb, void *data);
void queue_lock_release(queue *q, const char *name, const char *token, queue_lock_cb cb,
                        void *data);

/* Snapshot for /healthz and /metrics. */
typedef struct queue_stats {
    int connected;              /* all three connections up */
    int64_t last_fetch_ms;      /* wall clock of the last fetch reply (health) */
    int held;                   /* deliveries held */
    long long depth_normal, depth_hi, depth_delayed, depth_dead; /* refreshed by heartbeat */
    long long reconnects;
    long long claimed, acked, failed, retried, rejected, cancelled, requeued, recovered;
} queue_stats;
void queue_get_stats(const queue *q, queue_stats *s);
const char *queue_worker_id(const queue *q);
/* Deliveries held or being claimed, plus 1 while a fetch is in flight: 0 means a draining
 * worker may close. */
int queue_busy(const queue *q);

/* A blocking hiredis connection for command-line tools (`voxq enqueue`, `voxq wait`) and tests:
 * parses the URL like the worker, connects with a timeout, AUTH/SELECT as the URL says.
 * Returns a redisContext* (redisFree it) or NULL with errbuf set. */
struct redisContext;
struct redisContext *queue_connect_sync(const char *url, int timeout_ms, char errbuf[256]);

/* One log line on stderr, "HH:MM:SS.mmm voxq: ...", the format of every worker message. */
void queue_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Wall clock in ms. */
int64_t queue_now_ms(void);

#endif
