/* daemon.h - private to the `voxq worker` daemon (worker/cmd_worker.c and its helpers):
 * configuration, the engine interface behind which synthesis runs, and the engine thread.
 *
 * The engine interface (worker_engine) keeps the queue machinery independent of the model: the
 * real one (dia_engine.c: Dia + DAC from the store) and a test-only fake (fake_engine.c, chosen
 * only with VOXQ_TEST_FAKE_ENGINE=1) implement the same run(); everything around it - leases,
 * cancellation, timeouts, audio output, results - is the same code in both cases. */
#ifndef VOXQ_WORKER_DAEMON_H
#define VOXQ_WORKER_DAEMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "queue/queue.h"

/* ---- configuration (config.c) ---- */

typedef struct worker_config {
    const char *redis_url;      /* VOXQ_REDIS_URL / --redis */
    const char *prefix;         /* VOXQ_QUEUE_PREFIX / --prefix */
    const char *store;          /* VOXQ_STORE / --store */
    const char *output_dir;     /* VOXQ_OUTPUT_DIR / --output-dir */
    const char *model;          /* VOXQ_MODEL / --model */
    const char *codec;          /* VOXQ_CODEC / --codec ("" = the model's manifest or dac-44khz) */
    const char *variant;        /* VOXQ_VARIANT / --variant: auto|original|int8|int4 */
    const char *device;         /* VOXQ_DEVICE / --device: auto|cuda|cpu */
    const char *metrics_addr;   /* VOXQ_METRICS_ADDR / --metrics-addr; "off" disables */
    const char *worker_id;      /* VOXQ_WORKER_ID / --worker-id ("" = host:pid:random) */
    int threads;                /* VOXQ_THREADS / --threads (CPU backend; 0 = all cores) */
    int auto_quantize;          /* VOXQ_AUTO_QUANTIZE / --auto-quantize */
    int concurrency;            /* VOXQ_CONCURRENCY / --concurrency: jobs held at once */
    int drain_s;                /* VOXQ_DRAIN_S / --drain-s */
    int stall_s;                /* VOXQ_STALL_S / --stall-s: engine silent this long = hung */
    int fake_engine;            /* VOXQ_TEST_FAKE_ENGINE=1 (tests only) */
    queue_config queue;         /* the queue's own knobs (block timeout, lease, retries, ...) */
} worker_config;

/* Fills cfg from the environment and then argv (flags win). Returns 0, or 2 after printing a
 * usage error naming the flag or variable. */
int worker_config_load(worker_config *cfg, int argc, char **argv);
/* Prints every flag and environment variable with its default. */
void worker_config_help(void);

/* ---- engine interface ---- */

/* One synthesis request as the engine thread sees it: copies, never the queue's delivery. */
typedef struct worker_task {
    /* input */
    char id[QUEUE_ID_MAX + 1];
    char *text;
    size_t text_len;
    int attempt;                /* 1 for the first run */
    double cfg_scale, temperature, top_p;
    int cfg_filter_top_k;
    double max_seconds;
    uint64_t seed;
    int has_seed;
    char variant[QUEUE_NAME_MAX + 1]; /* the job's wish ("" = whatever is loaded) */
    /* control: set by the loop thread, polled by the engine between steps */
    atomic_int cancel;          /* 1 cancel requested, 2 timed out */
    _Atomic int64_t *stamp;     /* progress stamp of the engine thread (worker_task_touch) */
    atomic_int permille;        /* work done so far, 0..1000 (published at most once a second) */
    /* output (engine thread; read by the loop thread after completion) */
    int rc;                     /* 0, or -1 with the fields below */
    char error_code[32];
    char error[256];
    int permanent;              /* 1: retrying cannot help (bad input, unknown variant) */
    int cancelled;              /* stopped on request */
    float *pcm;                 /* malloc'd mono PCM */
    int64_t n_samples;
    int sample_rate;
    int steps;
    double gen_ms;
    char variant_used[QUEUE_NAME_MAX + 1];
    /* daemon-private */
    void *owner;
    int64_t started_mono;
    int64_t admitted_mono;      /* when the engine thread took it */
    struct worker_task *next;
} worker_task;

/* Marks the engine as alive (call at least every few seconds while working). */
void worker_task_touch(worker_task *t);
/* Records a failure in t; returns -1. */
int worker_task_fail(worker_task *t, const char *code, int permanent, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

typedef struct worker_engine worker_engine;
struct worker_engine {
    const char *name;
    /* Runs t to completion on the engine thread: fills pcm or the error fields. Used when the
     * engine has no batched interface (admit == NULL). */
    int (*run)(worker_engine *e, worker_task *t);
    /* Batched interface (continuous batching), all on the engine thread; NULL where the engine
     * runs one task at a time. admit() starts t alongside the tasks in flight (at most
     * max_active): 0, or -1 with t's error fields set (t is then finished). step() advances
     * every task in flight by one unit of work (one decoder step for all of them together)
     * and moves those that finished, done or failed, to finished[] (cap >= max_active);
     * returns how many. active() counts the tasks in flight. */
    int max_active;
    int (*admit)(worker_engine *e, worker_task *t);
    int (*step)(worker_engine *e, worker_task **finished, int cap);
    int (*active)(worker_engine *e);
    /* Between jobs, on the engine thread: e.g. switch to a variant that just appeared. */
    void (*idle)(worker_engine *e);
    /* Memory figures for /metrics (any thread; may be approximate). */
    void (*mem)(worker_engine *e, size_t *weights, size_t *peak, size_t *device_total,
                size_t *device_free);
    void (*destroy)(worker_engine *e);
    char variant[QUEUE_NAME_MAX + 1]; /* what is loaded now (for logs and metrics) */
    pthread_mutex_t lock;       /* guards `variant` across threads */
};

/* The test-only fake (fake_engine.c): the job text is a script, see the file's comment. */
int worker_fake_engine_new(worker_engine **out, char errbuf[256]);
/* Dia + DAC from the store (dia_engine.c): picks the variant per cfg->variant and logs why;
 * with auto_quantize a missing int8 is requested through request_quant (loop thread, via the
 * caller) and switched to between jobs once it appears. */
int worker_dia_engine_new(worker_engine **out, const worker_config *cfg, int *want_quantize,
                          char errbuf[512]);

/* ---- the engine thread (scheduler.c) ---- */

typedef struct worker_sched {
    uv_loop_t *loop;
    uv_async_t async;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    worker_task *todo, *todo_tail, *done;
    int stop;
    int started;
    worker_engine *engine;
    _Atomic int64_t stamp;      /* monotonic ms of the engine thread's last sign of life */
    atomic_int busy;            /* a task is running */
    void (*on_done)(worker_task *t, void *data); /* loop thread */
    void *data;
} worker_sched;

int worker_sched_start(worker_sched *s, uv_loop_t *loop, worker_engine *engine,
                       void (*on_done)(worker_task *t, void *data), void *data);
void worker_sched_submit(worker_sched *s, worker_task *t);
/* 0 when the engine is busy and silent for more than stall_ms. */
int worker_sched_healthy(worker_sched *s, int64_t stall_ms);
/* Milliseconds the engine has been busy and silent (0 when idle). */
int64_t worker_sched_silent_ms(worker_sched *s);
/* Stops and joins the thread (tasks not started are dropped); closes the async handle. */
void worker_sched_stop(worker_sched *s);
void worker_task_free(worker_task *t);

int64_t worker_mono_ms(void);

#endif
