/* scheduler.c - the engine thread: takes synthesis tasks in order, runs them on the engine and
 * hands each finished task back to the libuv loop through uv_async_send. An engine with the
 * batched interface runs up to max_active tasks together (continuous batching: tasks join and
 * leave between decoder steps); others run one task at a time.
 *
 * The engine thread never touches Redis, files or the loop's handles; the loop thread never
 * waits for the engine. The progress stamp is how the loop tells a slow job from a hung device:
 * the heartbeat is withheld while the engine is busy and silent for longer than the stall limit
 * (spec/queue.md §5, "Lease and heartbeat"), so the reaper hands the job to another worker. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/daemon.h"

int64_t worker_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void worker_task_touch(worker_task *t) {
    if (t->stamp) atomic_store(t->stamp, worker_mono_ms());
}

int worker_task_fail(worker_task *t, const char *code, int permanent, const char *fmt, ...) {
    snprintf(t->error_code, sizeof t->error_code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->error, sizeof t->error, fmt, ap);
    va_end(ap);
    t->permanent = permanent;
    t->rc = -1;
    return -1;
}

void worker_task_free(worker_task *t) {
    if (!t) return;
    free(t->text);
    free(t->pcm);
    free(t);
}

/* Hands a finished task to the loop thread (called with s->mu unlocked). */
static void finish(worker_sched *s, worker_task *t) {
    if (t->rc != 0 && atomic_load(&t->cancel)) t->cancelled = 1;
    t->gen_ms = (double)(worker_mono_ms() - t->admitted_mono);
    pthread_mutex_lock(&s->mu);
    t->next = s->done;
    s->done = t;
    uv_async_send(&s->async);
    pthread_mutex_unlock(&s->mu);
}

/* Waits for work while nothing is in flight, giving the engine its idle calls; returns with
 * s->mu held, 1 when asked to stop. */
static int wait_for_work(worker_sched *s, int in_flight) {
    while (!s->stop && !s->todo && !in_flight) {
        /* Wake up now and then while idle so the engine can switch variants between jobs. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&s->cv, &s->mu, &until);
        if (!s->stop && !s->todo && s->engine->idle) {
            pthread_mutex_unlock(&s->mu);
            s->engine->idle(s->engine);
            pthread_mutex_lock(&s->mu);
        }
    }
    return s->stop;
}

/* Pops the next task (s->mu held on entry, released on return) and marks the engine busy with
 * it; a task cancelled while it waited comes back already finished (rc -1, cancelled). */
static worker_task *take(worker_sched *s) {
    worker_task *t = s->todo;
    s->todo = t->next;
    if (!s->todo) s->todo_tail = NULL;
    t->next = NULL;
    pthread_mutex_unlock(&s->mu);
    t->stamp = &s->stamp;
    t->admitted_mono = worker_mono_ms();
    atomic_store(&s->stamp, t->admitted_mono);
    atomic_store(&s->busy, 1);
    if (atomic_load(&t->cancel)) {
        t->cancelled = 1;
        t->rc = -1;
    }
    return t;
}

/* Continuous batching: new tasks join the ones in flight between steps, finished ones leave
 * after the step that finished them, so a long job never holds up a short one. */
static void *engine_main_batched(void *arg) {
    worker_sched *s = arg;
    worker_engine *e = s->engine;
    worker_task **fin = calloc((size_t)(e->max_active > 0 ? e->max_active : 1), sizeof *fin);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        int in_flight = e->active(e);
        if (wait_for_work(s, in_flight)) break;
        while (s->todo && in_flight < e->max_active) {
            worker_task *t = take(s);
            if (t->cancelled) {
                finish(s, t);
            } else if (e->admit(e, t) != 0) {
                if (t->rc == 0) worker_task_fail(t, "engine_error", 0, "engine failed to start");
                finish(s, t);
            } else {
                in_flight++;
            }
            pthread_mutex_lock(&s->mu);
        }
        pthread_mutex_unlock(&s->mu);
        if (in_flight > 0 && fin) {
            atomic_store(&s->busy, 1);
            int n = e->step(e, fin, e->max_active);
            for (int i = 0; i < n; i++) finish(s, fin[i]);
            atomic_store(&s->stamp, worker_mono_ms());
        }
        if (e->active(e) == 0) atomic_store(&s->busy, 0);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    free(fin);
    return NULL;
}

static void *engine_main(void *arg) {
    worker_sched *s = arg;
    if (s->engine->admit) return engine_main_batched(arg);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (wait_for_work(s, 0)) break;
        worker_task *t = take(s);
        if (!t->cancelled && s->engine->run(s->engine, t) != 0 && t->rc == 0) {
            worker_task_fail(t, "engine_error", 0, "engine failed without a message");
        }
        atomic_store(&s->busy, 0);
        atomic_store(&s->stamp, worker_mono_ms());
        finish(s, t);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Loop thread: deliver every finished task (uv_async_send may coalesce several). */
static void on_async(uv_async_t *a) {
    worker_sched *s = a->data;
    pthread_mutex_lock(&s->mu);
    worker_task *list = s->done;
    s->done = NULL;
    pthread_mutex_unlock(&s->mu);
    /* Reverse to completion order. */
    worker_task *ordered = NULL;
    while (list) {
        worker_task *next = list->next;
        list->next = ordered;
        ordered = list;
        list = next;
    }
    while (ordered) {
        worker_task *next = ordered->next;
        ordered->next = NULL;
        s->on_done(ordered, s->data);
        ordered = next;
    }
}

int worker_sched_start(worker_sched *s, uv_loop_t *loop, worker_engine *engine,
                       void (*on_done)(worker_task *t, void *data), void *data) {
    memset(s, 0, sizeof *s);
    s->loop = loop;
    s->engine = engine;
    s->on_done = on_done;
    s->data = data;
    atomic_store(&s->stamp, worker_mono_ms());
    if (uv_async_init(loop, &s->async, on_async) != 0) return -1;
    s->async.data = s;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
        uv_close((uv_handle_t *)&s->async, NULL);
        return -1;
    }
    s->started = 1;
    return 0;
}

void worker_sched_submit(worker_sched *s, worker_task *t) {
    t->next = NULL;
    t->started_mono = worker_mono_ms();
    pthread_mutex_lock(&s->mu);
    if (s->todo_tail)
        s->todo_tail->next = t;
    else
        s->todo = t;
    s->todo_tail = t;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int64_t worker_sched_silent_ms(worker_sched *s) {
    if (!atomic_load(&s->busy)) return 0;
    return worker_mono_ms() - atomic_load(&s->stamp);
}

int worker_sched_healthy(worker_sched *s, int64_t stall_ms) {
    return worker_sched_silent_ms(s) <= stall_ms;
}

void worker_sched_stop(worker_sched *s) {
    if (!s->started) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    s->started = 0;
    while (s->todo) {
        worker_task *t = s->todo;
        s->todo = t->next;
        worker_task_free(t);
    }
    while (s->done) {
        worker_task *t = s->done;
        s->done = t->next;
        worker_task_free(t);
    }
    uv_close((uv_handle_t *)&s->async, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
}
