/* fake_engine.c - TEST-ONLY engine, selected by VOXQ_TEST_FAKE_ENGINE=1 and nothing else.
 *
 * The fault tests need a worker whose "GPU work" sleeps, fails or crashes on command, so that
 * leases, retries, the reaper and shutdown can be exercised on a machine without a GPU and
 * without a model. The job's text is a script of space-separated words (any other word is
 * ignored, so speaker tags may stay):
 *
 *   sleep:MS         work for MS milliseconds in 10 ms steps, touching the progress stamp and
 *                    stopping at the next step when cancelled
 *   audio:MS         length of the sine tone produced (default 200 ms, 44100 Hz)
 *   fail:transient   fail with a retryable error        fail:permanent   fail for good
 *   fail-until:N     fail (retryable) while the attempt number is below N
 *   crash            kill the whole worker process with SIGKILL (a segfault's effect)
 *   crash-once:PATH  crash unless PATH exists; create it first (crash once across workers)
 *   hang             stop touching the progress stamp and never return (a hung CUDA call)
 *   hang-once:PATH   hang unless PATH exists; create it first (hang once across workers)
 *   mark:PATH        append one line "<id> <attempt>" to PATH (tests count runs with it)
 *
 * The output is a real audio file written by the same code path as the real engine's. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "worker/daemon.h"

#define FAKE_RATE 44100

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int fake_run(worker_engine *e, worker_task *t) {
    (void)e;
    int audio_ms = 200;
    /* Walk the words of the text; each one is an instruction or ignored. */
    const char *p = t->text;
    while (*p) {
        while (*p == ' ' || *p == '\n') p++;
        size_t n = strcspn(p, " \n");
        char word[256];
        snprintf(word, sizeof word, "%.*s", (int)(n < 255 ? n : 255), p);
        p += n;
        if (!strncmp(word, "sleep:", 6)) {
            int ms = atoi(word + 6);
            for (int done = 0; done < ms; done += 10) {
                if (atomic_load(&t->cancel)) {
                    t->cancelled = 1;
                    return worker_task_fail(t, "cancelled", 1, "cancelled after %d ms", done);
                }
                worker_task_touch(t);
                atomic_store(&t->permille, (int)(1000LL * done / ms));
                sleep_ms(10);
            }
        } else if (!strncmp(word, "audio:", 6)) {
            audio_ms = atoi(word + 6);
            if (audio_ms < 1 || audio_ms > 600000) audio_ms = 200;
        } else if (!strcmp(word, "fail:transient")) {
            return worker_task_fail(t, "engine_transient", 0, "fake engine: transient failure "
                                    "(attempt %d)", t->attempt);
        } else if (!strcmp(word, "fail:permanent")) {
            return worker_task_fail(t, "engine_permanent", 1, "fake engine: permanent failure");
        } else if (!strncmp(word, "fail-until:", 11)) {
            if (t->attempt < atoi(word + 11))
                return worker_task_fail(t, "engine_transient", 0,
                                        "fake engine: failing attempt %d of %s", t->attempt,
                                        word + 11);
        } else if (!strcmp(word, "crash")) {
            raise(SIGKILL);
        } else if (!strncmp(word, "crash-once:", 11)) {
            int fd = open(word + 11, O_CREAT | O_EXCL | O_WRONLY, 0644);
            if (fd >= 0) {
                close(fd);
                raise(SIGKILL);
            }
        } else if (!strncmp(word, "mark:", 5)) {
            FILE *f = fopen(word + 5, "a");
            if (f) {
                fprintf(f, "%s %d\n", t->id, t->attempt);
                fclose(f);
            }
        } else if (!strncmp(word, "hang-once:", 10)) {
            int fd = open(word + 10, O_CREAT | O_EXCL | O_WRONLY, 0644);
            if (fd >= 0) {
                close(fd);
                for (;;) sleep_ms(1000);
            }
        } else if (!strcmp(word, "hang")) {
            for (;;) sleep_ms(1000);
        }
    }
    int64_t n = (int64_t)FAKE_RATE * audio_ms / 1000;
    t->pcm = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!t->pcm) return worker_task_fail(t, "out_of_memory", 0, "fake engine: no memory");
    for (int64_t i = 0; i < n; i++)
        t->pcm[i] = 0.25f * (float)sin(2.0 * M_PI * 440.0 * (double)i / FAKE_RATE);
    t->n_samples = n;
    t->sample_rate = FAKE_RATE;
    t->steps = (int)(n / 512);
    snprintf(t->variant_used, sizeof t->variant_used, "fake");
    return 0;
}

static void fake_mem(worker_engine *e, size_t *weights, size_t *peak, size_t *total,
                     size_t *free_) {
    (void)e;
    *weights = *peak = *total = *free_ = 0;
}

static void fake_destroy(worker_engine *e) {
    pthread_mutex_destroy(&e->lock);
    free(e);
}

int worker_fake_engine_new(worker_engine **out, char errbuf[256]) {
    worker_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(errbuf, 256, "out of memory");
        return -1;
    }
    e->name = "fake (VOXQ_TEST_FAKE_ENGINE, tests only)";
    e->run = fake_run;
    e->mem = fake_mem;
    e->destroy = fake_destroy;
    snprintf(e->variant, sizeof e->variant, "fake");
    pthread_mutex_init(&e->lock, NULL);
    *out = e;
    return 0;
}
