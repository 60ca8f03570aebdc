/* test_store_fault.c - the store under concurrent and crashing writers, with real processes:
 * fork()ed publishers racing for one variant, readers during forced replacement, writers killed
 * with SIGKILL at arbitrary points, and the debris they leave. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ops/sha256.h"
#include "ops/store.h"
#include "store_testutil.h"
#include "test.h"

#define PATH_BUF (STORE_PATH_MAX + 256)
#define NWRITERS 8
#define WEIGHT_BYTES (3u << 20)

/* Child exit codes. */
enum { WON = 0, FAILED = 1, ALREADY = 3, BUSY = 4 };

typedef struct fixture {
    char tmp[256];
    char root[300];
    store st;
} fixture;

static int fixture_open(fixture *f) {
    if (tu_mkdtemp("fault", f->tmp, sizeof f->tmp)) return -1;
    snprintf(f->root, sizeof f->root, "%s/store", f->tmp);
    return store_open(&f->st, f->root, NULL);
}

static void fixture_close(fixture *f) {
    tu_rmtree(f->tmp);
}

/* Children still running, killed at exit so that a failed assertion never leaves a process
 * holding a lock (or the test's output pipe) behind. */
static pid_t children[64];

static void track(pid_t pid) {
    for (int i = 0; i < 64; i++)
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
}

static void untrack(pid_t pid) {
    for (int i = 0; i < 64; i++)
        if (children[i] == pid) children[i] = 0;
}

static void kill_children(void) {
    for (int i = 0; i < 64; i++)
        if (children[i] > 0) {
            kill(children[i], SIGKILL);
            waitpid(children[i], NULL, 0);
            children[i] = 0;
        }
}

static int tmp_entries(const fixture *f) {
    char path[PATH_BUF];
    snprintf(path, sizeof path, "%s/tmp", f->st.root);
    return tu_count_entries(path);
}

/* Fills a stage the way a writer does: config.json naming the writer, then the weights in
 * pieces (so a kill can land mid-file). */
static int fill_stage(store_stage *stage, int writer, size_t weight_bytes) {
    char path[STORE_PATH_MAX], config[64];
    snprintf(config, sizeof config, "{\"writer\": %d}\n", writer);
    if (store_stage_path(stage, "config.json", path, sizeof path, NULL) ||
        tu_write(path, config, strlen(config)))
        return -1;
    if (store_stage_path(stage, "weights.bin", path, sizeof path, NULL)) return -1;
    return tu_write_pattern(path, weight_bytes, (uint32_t)writer);
}

/* One publishing process: opens its own store handle, waits at the barrier (a pipe closed by
 * the parent), publishes, and reports the outcome as its exit code. */
static int writer_main(const char *root, int barrier_fd, int writer, int flags) {
    store s;
    if (store_open(&s, root, NULL)) return FAILED;
    char c;
    while (read(barrier_fd, &c, 1) < 0 && errno == EINTR) {
    }
    store_stage stage;
    eng_error err = {0};
    int rc = store_stage_begin(&s, "m", "v", flags, &stage, &err);
    if (rc == STORE_EEXIST) return ALREADY;
    if (rc == STORE_EBUSY) return BUSY;
    if (rc) {
        fprintf(stderr, "writer %d: begin: %s\n", writer, err.msg);
        return FAILED;
    }
    if (fill_stage(&stage, writer, WEIGHT_BYTES)) {
        store_stage_abort(&stage);
        return FAILED;
    }
    rc = store_stage_commit(&stage, NULL, NULL, NULL, &err);
    if (rc == STORE_EEXIST) return ALREADY;
    if (rc) fprintf(stderr, "writer %d: commit: %s\n", writer, err.msg);
    return rc ? FAILED : WON;
}

/* Starts n writers held at a barrier, releases them together, collects their exit codes. */
static int race(const fixture *f, int n, int flags, int codes[]) {
    int barrier[2];
    if (pipe(barrier)) return -1;
    pid_t pids[NWRITERS];
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] < 0) return -1;
        if (pids[i] == 0) {
            close(barrier[1]);
            _exit(writer_main(f->root, barrier[0], i + 1, flags));
        }
        track(pids[i]);
    }
    close(barrier[0]);
    close(barrier[1]); /* every writer's read() returns 0 now */
    for (int i = 0; i < n; i++) {
        int status;
        if (waitpid(pids[i], &status, 0) != pids[i]) return -1;
        untrack(pids[i]);
        codes[i] = WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
    }
    return 0;
}

/* The published artifact is whole, verifies, and comes from a single writer: its config names
 * the writer and the weights are exactly that writer's pattern. Returns the writer or -1. */
static int artifact_writer(const fixture *f) {
    eng_error err = {0};
    if (store_verify(&f->st, "m", "v", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err) != 0) {
        fprintf(stderr, "  verify: %s\n", err.msg);
        return -1;
    }
    char path[PATH_BUF];
    snprintf(path, sizeof path, "%s/models/m/v/config.json", f->st.root);
    char *config = tu_read(path, NULL);
    int writer = -1;
    if (!config || sscanf(config, "{\"writer\": %d}", &writer) != 1) writer = -1;
    free(config);
    if (writer < 0) return -1;
    char want_path[PATH_BUF], want[65], got[65];
    snprintf(want_path, sizeof want_path, "%s/expected.bin", f->tmp);
    snprintf(path, sizeof path, "%s/models/m/v/weights.bin", f->st.root);
    if (tu_write_pattern(want_path, WEIGHT_BYTES, (uint32_t)writer) ||
        sha256_file(want_path, want, NULL, NULL, NULL, NULL) ||
        sha256_file(path, got, NULL, NULL, NULL, NULL) || strcmp(want, got) != 0)
        return -1;
    unlink(want_path);
    return writer;
}

/* N processes publish one variant at the same moment: exactly one wins, the others are told it
 * is already published, the artifact verifies and is wholly the winner's, tmp/ is empty. */
TEST(concurrent_publishers_leave_one_artifact) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    int codes[NWRITERS], won = 0, already = 0, winner = -1;
    ASSERT_OK(race(&f, NWRITERS, 0, codes));
    for (int i = 0; i < NWRITERS; i++) {
        if (codes[i] == WON) winner = i + 1;
        won += codes[i] == WON;
        already += codes[i] == ALREADY;
    }
    ASSERT_EQ(won, 1);
    ASSERT_EQ(already, NWRITERS - 1);
    ASSERT_EQ(artifact_writer(&f), winner);
    ASSERT_EQ(tmp_entries(&f), 0);
    char models[PATH_BUF];
    snprintf(models, sizeof models, "%s/models/m", f.st.root);
    ASSERT_EQ(tu_count_entries(models), 1);
    fixture_close(&f);
}

/* The same race with STORE_NOWAIT: losers may be refused as busy instead of waiting, but there
 * is still exactly one artifact and no debris. */
TEST(concurrent_nowait_publishers_leave_one_artifact) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    int codes[NWRITERS], won = 0, lost = 0, winner = -1;
    ASSERT_OK(race(&f, NWRITERS, STORE_NOWAIT, codes));
    for (int i = 0; i < NWRITERS; i++) {
        if (codes[i] == WON) winner = i + 1;
        won += codes[i] == WON;
        lost += codes[i] == ALREADY || codes[i] == BUSY;
    }
    ASSERT_EQ(won, 1);
    ASSERT_EQ(lost, NWRITERS - 1);
    ASSERT_EQ(artifact_writer(&f), winner);
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

/* Forced publishers replace the artifact one after another while a reader keeps checking it:
 * the reader never finds it absent or damaged, and what remains is one writer's whole artifact. */
TEST(forced_replacement_never_shows_a_half_artifact) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    store_stage stage;
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", 0, &stage, NULL));
    ASSERT_OK(fill_stage(&stage, 99, WEIGHT_BYTES));
    ASSERT_OK(store_stage_commit(&stage, NULL, NULL, NULL, NULL));
    int stop[2];
    ASSERT_OK(pipe(stop));
    pid_t reader = fork();
    ASSERT_TRUE(reader >= 0);
    if (reader == 0) {
        close(stop[1]);
        store s;
        if (store_open(&s, f.root, NULL)) _exit(FAILED);
        long checks = 0, bad = 0;
        struct timespec pause = {0, 200000};
        for (;;) {
            eng_error why = {0};
            int state = store_variant_state(&s, "m", "v", &why);
            checks++;
            if (state != STORE_VALID) {
                fprintf(stderr, "  reader saw state %d: %s\n", state, why.msg);
                bad++;
            }
            struct timeval zero = {0, 0};
            fd_set fds;
            FD_ZERO(&fds);
            FD_SET(stop[0], &fds);
            if (select(stop[0] + 1, &fds, NULL, NULL, &zero) > 0) break;
            nanosleep(&pause, NULL);
        }
        fprintf(stderr, "  reader: %ld checks, %ld bad\n", checks, bad);
        _exit(bad || checks < 2 ? FAILED : WON);
    }
    track(reader);
    close(stop[0]);
    int codes[NWRITERS], won = 0;
    int rc = race(&f, NWRITERS, STORE_FORCE, codes);
    close(stop[1]);
    int status;
    ASSERT_EQ(waitpid(reader, &status, 0), reader);
    untrack(reader);
    ASSERT_OK(rc);
    for (int i = 0; i < NWRITERS; i++)
        won += codes[i] == WON;
    ASSERT_EQ(won, NWRITERS);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == WON);
    ASSERT_TRUE(artifact_writer(&f) >= 1);
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

/* A child that begins a stage of (model, variant), fills part of it, tells the parent through
 * `ready`, and then waits to be killed. */
static pid_t start_stuck_writer(const fixture *f, const char *model, const char *variant) {
    int ready[2];
    if (pipe(ready)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(ready[0]);
        store s;
        store_stage stage;
        if (store_open(&s, f->root, NULL) ||
            store_stage_begin(&s, model, variant, 0, &stage, NULL) || fill_stage(&stage, 7, 100000))
            _exit(FAILED);
        if (write(ready[1], "r", 1) != 1) _exit(FAILED);
        for (;;)
            pause();
    }
    if (pid > 0) track(pid);
    close(ready[1]);
    char c;
    ssize_t got = pid > 0 ? read(ready[0], &c, 1) : -1;
    close(ready[0]);
    if (got != 1) {
        kill_children();
        return -1;
    }
    return pid;
}

static void kill_and_reap(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    untrack(pid);
}

/* tmp/ entries whose name starts with prefix ("m@v."). */
static int tmp_entries_of(const fixture *f, const char *prefix) {
    char path[PATH_BUF];
    snprintf(path, sizeof path, "%s/tmp", f->st.root);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* A writer killed with SIGKILL leaves only tmp/ debris (no variant); the next writer - of that
 * variant or of any other - removes it, while the staging of a live writer is left alone. */
TEST(killed_writer_debris_removed_by_next_writer) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    pid_t live = start_stuck_writer(&f, "m", "live");
    ASSERT_TRUE(live > 0);
    pid_t dead = start_stuck_writer(&f, "m", "v");
    ASSERT_TRUE(dead > 0);
    kill_and_reap(dead);
    ASSERT_EQ(tmp_entries(&f), 2);
    ASSERT_EQ(tmp_entries_of(&f, "m@v."), 1);
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_ABSENT);
    /* A writer of another variant removes the dead writer's debris, not the live one's. */
    dead = start_stuck_writer(&f, "m", "other");
    ASSERT_TRUE(dead > 0);
    kill_and_reap(dead);
    ASSERT_EQ(tmp_entries_of(&f, "m@v."), 0);
    ASSERT_EQ(tmp_entries_of(&f, "m@live."), 1);
    ASSERT_EQ(tmp_entries_of(&f, "m@other."), 1);
    ASSERT_EQ(store_variant_state(&f.st, "m", "other", NULL), STORE_ABSENT);
    /* A dead writer of the same variant, then the next writer of it. */
    dead = start_stuck_writer(&f, "m", "v");
    ASSERT_TRUE(dead > 0);
    kill_and_reap(dead);
    store_stage stage;
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", 0, &stage, NULL));
    ASSERT_EQ(tmp_entries(&f), 2); /* ours + the live writer's */
    ASSERT_EQ(tmp_entries_of(&f, "m@live."), 1);
    ASSERT_OK(fill_stage(&stage, 1, 1000));
    ASSERT_OK(store_stage_commit(&stage, NULL, NULL, NULL, NULL));
    ASSERT_EQ(tmp_entries(&f), 1);
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_VALID);

    /* The live writer holds its lock: a non-waiting writer is told who holds it. */
    eng_error err = {0};
    ASSERT_EQ(store_stage_begin(&f.st, "m", "live", STORE_NOWAIT, &stage, &err), STORE_EBUSY);
    char pid_text[32];
    snprintf(pid_text, sizeof pid_text, "pid %ld", (long)live);
    ASSERT_CONTAINS(err.msg, pid_text);
    ASSERT_EQ(store_remove(&f.st, "m", "live", STORE_NOWAIT, &err), STORE_EBUSY);
    kill_and_reap(live);
    /* The kernel released its lock with the process. */
    ASSERT_OK(store_stage_begin(&f.st, "m", "live", STORE_NOWAIT, &stage, &err));
    ASSERT_EQ(tmp_entries(&f), 1);
    store_stage_abort(&stage);
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

/* Writers force-replacing a valid artifact are killed at arbitrary moments (while writing,
 * hashing, fsyncing or renaming). After every kill the variant is still valid - the old or the
 * new artifact, whole - and the next writer leaves no debris. */
TEST(sigkill_at_random_points_never_damages_the_variant) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    store_stage stage;
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", 0, &stage, NULL));
    ASSERT_OK(fill_stage(&stage, 1, WEIGHT_BYTES));
    ASSERT_OK(store_stage_commit(&stage, NULL, NULL, NULL, NULL));
    /* One uninterrupted forced publish, timed, so that the kills below spread over all of its
     * phases on a machine of any speed (the time only places the kills; nothing asserts it). */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", STORE_FORCE, &stage, NULL));
    ASSERT_OK(fill_stage(&stage, 1, WEIGHT_BYTES));
    ASSERT_OK(store_stage_commit(&stage, NULL, NULL, NULL, NULL));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long span_us = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
    span_us = span_us * 5 / 4 + 1000; /* plus fork() and a margin past the end */
    unsigned seed = (unsigned)getpid();
    int survived = 0;
    for (int round = 0; round < 12; round++) {
        pid_t pid = fork();
        ASSERT_TRUE(pid >= 0);
        if (pid == 0) {
            store s;
            store_stage st;
            if (store_open(&s, f.root, NULL) ||
                store_stage_begin(&s, "m", "v", STORE_FORCE, &st, NULL) ||
                fill_stage(&st, 2 + round, WEIGHT_BYTES) ||
                store_stage_commit(&st, NULL, NULL, NULL, NULL))
                _exit(FAILED);
            _exit(WON);
        }
        track(pid);
        long us = (long)(rand_r(&seed) % (unsigned)span_us);
        struct timespec delay = {us / 1000000, us % 1000000 * 1000};
        nanosleep(&delay, NULL);
        kill(pid, SIGKILL);
        int status;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        untrack(pid);
        survived += WIFEXITED(status);
        eng_error err = {0};
        int v = store_verify(&f.st, "m", "v", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err);
        if (v != 0) TEST_FAIL_("round %d: variant damaged after SIGKILL: %s", round, err.msg);
        ASSERT_TRUE(artifact_writer(&f) >= 1);
    }
    fprintf(stderr, "  %d of 12 writers finished before the kill (publish takes ~%ld us)\n",
            survived, span_us);
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", STORE_FORCE, &stage, NULL));
    ASSERT_EQ(tmp_entries(&f), 1);
    store_stage_abort(&stage);
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

/* A blocking writer waits for the holder and then sees its result. */
TEST(blocking_writer_waits_for_holder) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    int ready[2];
    ASSERT_OK(pipe(ready));
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        store s;
        store_stage st;
        if (store_open(&s, f.root, NULL) || store_stage_begin(&s, "m", "v", 0, &st, NULL))
            _exit(FAILED);
        if (write(ready[1], "r", 1) != 1) _exit(FAILED);
        struct timespec hold = {0, 300 * 1000 * 1000};
        nanosleep(&hold, NULL);
        if (fill_stage(&st, 5, 1000) || store_stage_commit(&st, NULL, NULL, NULL, NULL))
            _exit(FAILED);
        _exit(WON);
    }
    track(pid);
    close(ready[1]);
    char c;
    ASSERT_EQ(read(ready[0], &c, 1), 1);
    close(ready[0]);
    store_stage stage;
    eng_error err = {0};
    ASSERT_EQ(store_stage_begin(&f.st, "m", "v", 0, &stage, &err), STORE_EEXIST);
    int status;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    untrack(pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == WON);
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_VALID);
    fixture_close(&f);
}

int main(int argc, char **argv) {
    atexit(kill_children);
    return test_main(argc, argv);
}
