/* hub_fixture.c - see hub_fixture.h. */
#include "hub_fixture.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine/safetensors.h"
#include "store/store_testutil.h"

static hub *running_hub; /* stopped at exit if a failed case left it up */

static void stop_at_exit(void) {
    if (running_hub) hub_stop(running_hub);
}

int hub_init(hub *h, const char *tag) {
    memset(h, 0, sizeof *h);
    if (tu_mkdtemp(tag, h->dir, sizeof h->dir)) return -1;
    snprintf(h->repos, sizeof h->repos, "%s/repos", h->dir);
    snprintf(h->store, sizeof h->store, "%s/store", h->dir);
    snprintf(h->log, sizeof h->log, "%s/server.log", h->dir);
    if (mkdir(h->repos, 0755) || mkdir(h->store, 0755)) return -1;
    /* The hub is on loopback: never through a proxy the environment may name. */
    setenv("NO_PROXY", "127.0.0.1,localhost", 1);
    setenv("no_proxy", "127.0.0.1,localhost", 1);
    static int registered;
    if (!registered) registered = !atexit(stop_at_exit);
    return 0;
}

void hub_free(hub *h) {
    hub_stop(h);
    if (h->dir[0]) tu_rmtree(h->dir);
    h->dir[0] = '\0';
}

int hub_start(hub *h, const char *const *args) {
    char port_file[700], script[1024];
    snprintf(port_file, sizeof port_file, "%s/port", h->dir);
    snprintf(script, sizeof script, "%s/tests/pull/hub_server.py", VOXQ_SOURCE_DIR);
    unlink(port_file);
    const char *argv[32] = {"python3",     script,    "--root", h->repos,
                            "--port-file", port_file, "--log",  h->log};
    int argc = 8;
    for (int i = 0; args && args[i] && argc < 31; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    /* Debian's interpreter when present: version-manager shims on PATH add a second a start. */
    const char *python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execvp(python, (char *const *)argv);
        fprintf(stderr, "hub_fixture: exec python3: %s\n", strerror(errno));
        _exit(127);
    }
    h->pid = pid;
    running_hub = h;
    for (int i = 0; i < 500; i++) { /* up to 10 s for python to start */
        char *port = tu_read(port_file, NULL);
        if (port) {
            snprintf(h->endpoint, sizeof h->endpoint, "http://127.0.0.1:%d", atoi(port));
            free(port);
            return 0;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            h->pid = 0;
            fprintf(stderr, "hub_fixture: the server exited before listening\n");
            return -1;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    hub_stop(h);
    return -1;
}

void hub_stop(hub *h) {
    if (h->pid > 0) {
        kill(h->pid, SIGTERM);
        int status;
        for (int i = 0; i < 250 && waitpid(h->pid, &status, WNOHANG) == 0; i++) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
            if (i == 249) {
                kill(h->pid, SIGKILL);
                waitpid(h->pid, &status, 0);
            }
        }
    }
    h->pid = 0;
    if (running_hub == h) running_hub = NULL;
}

/* Calls fn for every logged request; returns how many it accepted. */
typedef int (*request_fn)(const cJSON *req, void *ud);

static int each_request(const hub *h, request_fn fn, void *ud) {
    char *text = tu_read(h->log, NULL);
    if (!text) return 0;
    int n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *req = cJSON_Parse(line);
        if (req) n += fn(req, ud);
        cJSON_Delete(req);
    }
    free(text);
    return n;
}

typedef struct match {
    const char *method, *part;
    int with_range;
    long long max_start;
} match;

static const char *str_of(const cJSON *req, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int count_fn(const cJSON *req, void *ud) {
    const match *m = ud;
    const char *method = str_of(req, "method"), *path = str_of(req, "path");
    const char *range = str_of(req, "range");
    if (!method || !path || (m->method && strcmp(method, m->method))) return 0;
    if (!strstr(path, m->part)) return 0;
    if (m->with_range == 1 && !range) return 0;
    if (m->with_range == 0 && range) return 0;
    return 1;
}

int hub_count(const hub *h, const char *method, const char *part, int with_range) {
    match m = {method, part, with_range, -1};
    return each_request(h, count_fn, &m);
}

static int range_fn(const cJSON *req, void *ud) {
    match *m = ud;
    const char *path = str_of(req, "path"), *range = str_of(req, "range");
    long long start;
    if (path && range && strstr(path, m->part) && sscanf(range, "bytes=%lld-", &start) == 1 &&
        start > m->max_start)
        m->max_start = start;
    return 0;
}

long long hub_max_range_start(const hub *h, const char *part) {
    match m = {NULL, part, -1, -1};
    each_request(h, range_fn, &m);
    return m.max_start;
}

static int auth_fn(const cJSON *req, void *ud) {
    const match *m = ud;
    const char *path = str_of(req, "path");
    return path && strstr(path, m->part) &&
           cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "auth"));
}

int hub_count_auth(const hub *h, const char *part) {
    match m = {NULL, part, -1, -1};
    return each_request(h, auth_fn, &m);
}

void hub_clear_log(const hub *h) {
    tu_write(h->log, "", 0);
}

void hub_repo_file(const hub *h, const char *repo, const char *file, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s/%s", h->repos, repo, file);
}

/* A safetensors file of `count` f32 tensors "t<first+i>" of `floats` values each. */
static int write_weights(const char *path, int first, int count, size_t floats, uint32_t seed) {
    st_writer *w;
    if (st_writer_open(&w, path, NULL)) return -1;
    int64_t shape[1] = {(int64_t)floats};
    char name[32];
    for (int i = 0; i < count; i++) {
        snprintf(name, sizeof name, "t%d", first + i);
        if (st_writer_declare(w, name, ENG_DT_F32, 1, shape)) goto fail;
    }
    if (st_writer_begin_data(w)) goto fail;
    uint32_t x = seed * 2654435761u + 1;
    for (int i = 0; i < count; i++)
        for (size_t k = 0; k < floats; k++) {
            x = x * 1664525u + 1013904223u;
            float v = (float)(x >> 8) / 16777216.0f - 0.5f;
            if (st_writer_write(w, &v, sizeof v)) goto fail;
        }
    if (st_writer_finish(w)) goto fail;
    return 0;
fail:
    st_writer_abort(w);
    return -1;
}

int hub_make_repo(const hub *h, const char *repo, int with_generation, int nshards, size_t floats,
                  uint32_t seed) {
    char dir[800], path[1024];
    snprintf(dir, sizeof dir, "%s/%s", h->repos, repo);
    char *slash = strchr(dir + strlen(h->repos) + 1, '/');
    if (slash) {
        *slash = '\0';
        mkdir(dir, 0755);
        *slash = '/';
    }
    if (mkdir(dir, 0755) && errno != EEXIST) return -1;
    const char *config = "{\"model_type\": \"voxq-test\", \"hidden_size\": 8}\n";
    hub_repo_file(h, repo, "config.json", path, sizeof path);
    if (tu_write(path, config, strlen(config))) return -1;
    if (with_generation) {
        const char *gen = "{\"max_length\": 3072}\n";
        hub_repo_file(h, repo, "generation_config.json", path, sizeof path);
        if (tu_write(path, gen, strlen(gen))) return -1;
    }
    if (nshards == 0) {
        hub_repo_file(h, repo, "model.safetensors", path, sizeof path);
        return write_weights(path, 0, 3, floats, seed);
    }
    cJSON *index = cJSON_CreateObject(), *map = cJSON_AddObjectToObject(index, "weight_map");
    cJSON_AddObjectToObject(index, "metadata");
    for (int s = 0; s < nshards; s++) {
        char shard[64], tname[32];
        snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        hub_repo_file(h, repo, shard, path, sizeof path);
        if (write_weights(path, 2 * s, 2, floats, seed + (uint32_t)s)) {
            cJSON_Delete(index);
            return -1;
        }
        for (int t = 0; t < 2; t++) {
            snprintf(tname, sizeof tname, "t%d", 2 * s + t);
            cJSON_AddStringToObject(map, tname, shard);
        }
    }
    char *text = cJSON_Print(index);
    cJSON_Delete(index);
    hub_repo_file(h, repo, "model.safetensors.index.json", path, sizeof path);
    int rc = text ? tu_write(path, text, strlen(text)) : -1;
    free(text);
    return rc;
}

int hub_run(const char *const *env, const char *const *argv, const char *outfile) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (!freopen(outfile, "w", stdout) || dup2(fileno(stdout), 2) < 0) _exit(126);
        unsetenv("HF_TOKEN");
        unsetenv("HUGGING_FACE_HUB_TOKEN");
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
