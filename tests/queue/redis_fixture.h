/* redis_fixture.h - a real redis-server for tests, on a free loopback port in a temp directory,
 * killed at exit whatever happens (atexit and fatal signals), plus small sync helpers.
 *
 *   rf_start();                        // once per test binary (idempotent)
 *   redisReply *r = rf_cmd("LLEN %s", "voxq:jobs");  freeReplyObject(r);
 *   long long n = rf_int("LLEN %s", key);  char *s = rf_str("HGET %s %s", k, f);  (free)
 *   rf_stop(SIGKILL); rf_restart();    // Redis fault cases
 *
 * Used by tests/queue and tests/worker (labels redis, fault). */
#ifndef VOXQ_TESTS_REDIS_FIXTURE_H
#define VOXQ_TESTS_REDIS_FIXTURE_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

static pid_t rf_pid_;
static int rf_port_;
static char rf_dir_[256];
static char rf_url_[64];
static redisContext *rf_ctx_;
static int rf_aof_; /* 1: restart with AOF, for the restart-while-busy case */

static inline void rf_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline int64_t rf_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A port nobody listens on right now (bind :0 and read it back). */
static inline int rf_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Stops the server: SIGTERM (clean) or SIGKILL (crash). */
static inline void rf_stop(int sig) {
    if (rf_ctx_) {
        redisFree(rf_ctx_);
        rf_ctx_ = NULL;
    }
    if (rf_pid_ > 0) {
        kill(rf_pid_, sig);
        waitpid(rf_pid_, NULL, 0);
        rf_pid_ = 0;
    }
}

static inline int rf_rm_entry_(const char *path, const struct stat *st, int flag,
                               struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Removes a temp tree unless VOXQ_KEEP_TMP=1 (keep logs for a post-mortem). */
static inline void rf_rmtree(const char *dir) {
    const char *keep = getenv("VOXQ_KEEP_TMP");
    if (dir[0] && !(keep && !strcmp(keep, "1"))) nftw(dir, rf_rm_entry_, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void rf_atexit_(void) {
    rf_stop(SIGKILL);
    rf_rmtree(rf_dir_);
}

static inline void rf_on_signal_(int sig) {
    if (rf_pid_ > 0) kill(rf_pid_, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static inline redisContext *rf_connect_(void) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", rf_port_, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* (Re)starts redis-server on rf_port_ and waits until it answers PING. Returns 0 or -1. */
static inline int rf_spawn_(void) {
    char port[16], logf[300];
    snprintf(port, sizeof port, "%d", rf_port_);
    snprintf(logf, sizeof logf, "%s/redis.log", rf_dir_);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", rf_aof_ ? "yes" : "no", "--appendfsync", "always", "--dir",
               rf_dir_, "--daemonize", "no", "--maxmemory-policy", "noeviction", (char *)NULL);
        _exit(127);
    }
    rf_pid_ = pid;
    for (int i = 0; i < 250; i++) {
        redisContext *c = rf_connect_();
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            if (r) freeReplyObject(r);
            if (ok) {
                rf_ctx_ = c;
                return 0;
            }
            redisFree(c);
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            rf_pid_ = 0;
            fprintf(stderr, "redis-server exited at start; see %s\n", logf);
            return -1;
        }
        rf_sleep_ms(20);
    }
    return -1;
}

static inline int rf_start(void) {
    if (rf_pid_ > 0) return 0;
    if (!rf_dir_[0]) {
        snprintf(rf_dir_, sizeof rf_dir_, "/tmp/voxq-redis-XXXXXX");
        if (!mkdtemp(rf_dir_)) return -1;
        atexit(rf_atexit_);
        signal(SIGINT, rf_on_signal_);
        signal(SIGTERM, rf_on_signal_);
        signal(SIGABRT, rf_on_signal_);
        signal(SIGSEGV, rf_on_signal_);
    }
    for (int tries = 0; tries < 5; tries++) {
        rf_port_ = rf_free_port();
        snprintf(rf_url_, sizeof rf_url_, "redis://127.0.0.1:%d", rf_port_);
        if (rf_port_ > 0 && rf_spawn_() == 0) return 0;
        rf_stop(SIGKILL);
    }
    return -1;
}

/* Starts it again on the same port after rf_stop. */
static inline int rf_restart(void) { return rf_spawn_(); }

static inline redisReply *rf_vcmd_(const char *fmt, va_list ap) {
    if (!rf_ctx_) rf_ctx_ = rf_connect_();
    if (!rf_ctx_) return NULL;
    redisReply *r = redisvCommand(rf_ctx_, fmt, ap);
    if (!r) {
        redisFree(rf_ctx_);
        rf_ctx_ = NULL;
    }
    return r;
}

static inline redisReply *rf_cmd(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = rf_vcmd_(fmt, ap);
    va_end(ap);
    return r;
}

/* An integer reply (or the integer a bulk string holds); -1 on nil or error. */
static inline long long rf_int(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = rf_vcmd_(fmt, ap);
    va_end(ap);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_INTEGER) v = r->integer;
    if (r && r->type == REDIS_REPLY_STRING) v = atoll(r->str);
    if (r) freeReplyObject(r);
    return v;
}

/* A bulk-string reply as a malloc'd string (free it); NULL on nil or error. */
static inline char *rf_str(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = rf_vcmd_(fmt, ap);
    va_end(ap);
    char *s = NULL;
    if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)) s = strdup(r->str);
    if (r) freeReplyObject(r);
    return s;
}

/* Waits up to ms for HGET key field == want. Returns 1 when seen. */
static inline int rf_wait_field(const char *key, const char *field, const char *want, int ms) {
    int64_t end = rf_now_ms() + ms;
    do {
        char *v = rf_str("HGET %s %s", key, field);
        int ok = v && !strcmp(v, want);
        free(v);
        if (ok) return 1;
        rf_sleep_ms(25);
    } while (rf_now_ms() < end);
    return 0;
}

#endif
