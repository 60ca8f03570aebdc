/* worker_fixture.h - runs real `voxq worker` processes against the test redis-server
 * (tests/queue/redis_fixture.h), with the test-only fake engine unless told otherwise, short
 * leases and timers so fault cases take seconds, logs in a temp directory, and every process
 * killed at exit. */
#ifndef VOXQ_TESTS_WORKER_FIXTURE_H
#define VOXQ_TESTS_WORKER_FIXTURE_H

#include "queue/redis_fixture.h"

#define WF_MAX 64

static pid_t wf_pids_[WF_MAX];
static char wf_tmp_[256];
static char wf_out_[300];
static char wf_store_[300];
static int wf_seq_;

static inline void wf_kill_all(void) {
    for (int i = 0; i < WF_MAX; i++)
        if (wf_pids_[i] > 0) {
            kill(wf_pids_[i], SIGKILL);
            waitpid(wf_pids_[i], NULL, 0);
            wf_pids_[i] = 0;
        }
}

static inline void wf_atexit_(void) {
    wf_kill_all();
    rf_rmtree(wf_tmp_);
}

/* Once per binary: Redis, temp dirs. Each test calls wf_reset() first. */
static inline int wf_setup(void) {
    if (wf_tmp_[0]) return 0;
    if (rf_start() != 0) return -1;
    snprintf(wf_tmp_, sizeof wf_tmp_, "/tmp/voxq-worker-XXXXXX");
    if (!mkdtemp(wf_tmp_)) return -1;
    snprintf(wf_out_, sizeof wf_out_, "%s/out", wf_tmp_);
    snprintf(wf_store_, sizeof wf_store_, "%s/store", wf_tmp_);
    mkdir(wf_out_, 0755);
    atexit(wf_atexit_);
    return 0;
}

/* Kills every worker of the previous test and empties Redis. */
static inline int wf_reset(void) {
    if (wf_setup() != 0) return -1;
    wf_kill_all();
    redisReply *r = rf_cmd("FLUSHALL");
    if (!r) return -1;
    freeReplyObject(r);
    return 0;
}

static inline void wf_forget(pid_t pid) {
    for (int i = 0; i < WF_MAX; i++)
        if (wf_pids_[i] == pid) wf_pids_[i] = 0;
}

/* Starts `voxq worker`; env is a NULL-terminated list of "NAME=VALUE" that override the test
 * defaults. Its log goes to <tmp>/worker-N.log (path written to log if not NULL). */
static inline pid_t wf_spawn(const char *const *env, char *log, size_t loglen) {
    char path[400], logbuf[400];
    snprintf(path, sizeof path, "%s/voxq", VOXQ_BINARY_DIR);
    snprintf(logbuf, sizeof logbuf, "%s/worker-%d.log", wf_tmp_, ++wf_seq_);
    if (log) snprintf(log, loglen, "%s", logbuf);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(logbuf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setenv("VOXQ_REDIS_URL", rf_url_, 1);
        setenv("VOXQ_TEST_FAKE_ENGINE", "1", 1);
        setenv("VOXQ_OUTPUT_DIR", wf_out_, 1);
        setenv("VOXQ_STORE", wf_store_, 1);
        setenv("VOXQ_METRICS_ADDR", "off", 1);
        setenv("VOXQ_LEASE_MS", "1500", 1);
        setenv("VOXQ_HEARTBEAT_MS", "250", 1);
        setenv("VOXQ_REAPER_MS", "250", 1);
        setenv("VOXQ_RETRY_BASE_MS", "200", 1);
        setenv("VOXQ_REDELAY_MS", "300", 1);
        setenv("VOXQ_BLOCK_TIMEOUT_S", "1", 1);
        setenv("VOXQ_DRAIN_S", "5", 1);
        setenv("VOXQ_STALL_S", "60", 1);
        setenv("VOXQ_CONNECT_TIMEOUT_MS", "1000", 1);
        for (const char *const *e = env; e && *e; e++) putenv((char *)*e);
        execl(path, "voxq", "worker", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < WF_MAX; i++)
        if (wf_pids_[i] == 0) {
            wf_pids_[i] = pid;
            break;
        }
    return pid;
}

/* Waits up to ms for pid to exit; returns its exit status, 128+signal, or -1 on timeout. */
static inline int wf_wait_exit(pid_t pid, int ms) {
    int64_t end = rf_now_ms() + ms;
    do {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            wf_forget(pid);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        rf_sleep_ms(20);
    } while (rf_now_ms() < end);
    return -1;
}

static inline int wf_alive(pid_t pid) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
        wf_forget(pid);
        return 0;
    }
    return 1;
}

static inline void wf_push(const char *list, const char *json) {
    redisReply *r = rf_cmd("LPUSH %s %s", list, json);
    if (r) freeReplyObject(r);
}

static inline int wf_wait_state(const char *id, const char *state, int ms) {
    char key[200];
    snprintf(key, sizeof key, "voxq:job:%s", id);
    return rf_wait_field(key, "state", state, ms);
}

static inline char *wf_field(const char *id, const char *field) {
    return rf_str("HGET voxq:job:%s %s", id, field);
}

static inline long long wf_field_int(const char *id, const char *field) {
    char *s = wf_field(id, field);
    long long v = s ? atoll(s) : -1;
    free(s);
    return v;
}

/* Lines in a file (the fake engine's mark: runs); 0 when absent. */
static inline int wf_count_lines(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0, c;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

/* 1 when file contains needle. */
static inline int wf_file_contains(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strstr(buf, needle) != NULL;
}

/* Total length of every voxq:proc:* list. */
static inline long long wf_proc_total(void) {
    redisReply *r = rf_cmd("KEYS voxq:proc:*");
    long long n = 0;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        n += rf_int("LLEN %s", r->element[i]->str);
    if (r) freeReplyObject(r);
    return n;
}

/* A per-test path in the temp dir. */
static inline const char *wf_path(const char *name) {
    static char buf[8][400];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 400, "%s/%s", wf_tmp_, name);
    return p;
}

#endif
