/* pool.c - the CPU backend's thread pool: the calling thread plus nthreads - 1 workers take
 * numbered tasks from a shared atomic counter until none is left.
 *
 * Ops are short (a decoder-step linear is ~100 us), so a worker that just finished spins
 * briefly on the run counter before sleeping on the condition variable; that keeps the wake-up
 * cost out of back-to-back ops without burning a core while the engine is idle. */
#include "engine/cpu/cpu_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* Spin iterations (each a pause, ~10-40 ns) a worker waits for the next run before sleeping. */
#define POOL_SPIN 2000

struct cpu_pool {
    int nthreads; /* including the caller */
    int nworkers;
    pthread_t *workers;
    pthread_mutex_t lock;
    pthread_cond_t wake;    /* signalled when `generation` moves or on shutdown */
    pthread_cond_t done;    /* signalled when the last worker leaves a run */
    atomic_uint generation; /* bumped once per run */
    atomic_int stop;
    int active; /* workers still inside the current run, under lock */

    /* The current run; written by the caller before bumping generation. */
    cpu_task_fn fn;
    void *ctx;
    int64_t ntasks;
    atomic_llong next; /* next task number to take */
};

struct worker_arg {
    cpu_pool *pool;
    int thread;
};

static void run_tasks(cpu_pool *pool, int thread) {
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&pool->next, 1, memory_order_relaxed);
        if (t >= pool->ntasks) break;
        pool->fn(pool->ctx, t, thread);
    }
}

static void *worker_main(void *p) {
    struct worker_arg *arg = p;
    cpu_pool *pool = arg->pool;
    int thread = arg->thread;
    free(arg);
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool->generation, memory_order_acquire) == seen &&
               !atomic_load(&pool->stop) && spins < POOL_SPIN) {
            CPU_RELAX();
            spins++;
        }
        pthread_mutex_lock(&pool->lock);
        while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (atomic_load(&pool->stop)) {
            pthread_mutex_unlock(&pool->lock);
            return NULL;
        }
        seen = atomic_load(&pool->generation);
        pthread_mutex_unlock(&pool->lock);

        run_tasks(pool, thread);

        pthread_mutex_lock(&pool->lock);
        if (--pool->active == 0) pthread_cond_signal(&pool->done);
        pthread_mutex_unlock(&pool->lock);
    }
}

cpu_pool *cpu_pool_new(int nthreads) {
    if (nthreads < 1) nthreads = 1;
    cpu_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->nthreads = nthreads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->next, 0);
    if (nthreads > 1) {
        pool->workers = calloc((size_t)nthreads - 1, sizeof *pool->workers);
        if (!pool->workers) goto err;
    }
    for (int i = 0; i < nthreads - 1; i++) {
        struct worker_arg *arg = malloc(sizeof *arg);
        if (!arg) goto err;
        arg->pool = pool;
        arg->thread = i + 1; /* the caller is thread 0 */
        if (pthread_create(&pool->workers[i], NULL, worker_main, arg) != 0) {
            free(arg);
            goto err;
        }
        pool->nworkers++;
    }
    return pool;
err:
    cpu_pool_free(pool);
    return NULL;
}

void cpu_pool_free(cpu_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->nworkers; i++)
        pthread_join(pool->workers[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    pthread_mutex_destroy(&pool->lock);
    free(pool->workers);
    free(pool);
}

int cpu_pool_threads(const cpu_pool *pool) {
    return pool ? pool->nthreads : 1;
}

void cpu_pool_run(cpu_pool *pool, cpu_task_fn fn, void *ctx, int64_t ntasks) {
    if (ntasks <= 0) return;
    if (!pool || pool->nworkers == 0 || ntasks == 1) {
        for (int64_t t = 0; t < ntasks; t++)
            fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->ntasks = ntasks;
    atomic_store_explicit(&pool->next, 0, memory_order_relaxed);
    pool->active = pool->nworkers;
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    run_tasks(pool, 0);

    pthread_mutex_lock(&pool->lock);
    while (pool->active > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}
