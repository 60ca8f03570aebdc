/* hub_fixture.h - a loopback stand-in for the Hugging Face hub (hub_server.py) for the pull
 * tests: tiny repositories in a temp directory, the server started and stopped per case, and
 * its request log read back. */
#ifndef VOXQ_TESTS_PULL_HUB_FIXTURE_H
#define VOXQ_TESTS_PULL_HUB_FIXTURE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HUB_COMMIT "0123456789abcdef0123456789abcdef01234567"

typedef struct hub {
    char dir[512];     /* temp directory: repos/, store/, server.log, port */
    char repos[600];   /* repos/<owner>/<name>/<files> */
    char store[600];   /* a store root for the case */
    char log[600];     /* one JSON line per request */
    char endpoint[64]; /* http://127.0.0.1:<port> */
    pid_t pid;         /* the server, 0 when stopped */
} hub;

/* Makes the temp directory (repos/ and store/ inside); 0 on success. */
int hub_init(hub *h, const char *tag);
/* Stops the server and removes the temp directory. */
void hub_free(hub *h);

/* Starts hub_server.py on a free loopback port with extra arguments (NULL-terminated list, may
 * be NULL), waiting until it listens; 0 on success. */
int hub_start(hub *h, const char *const *args);
/* SIGTERM and wait; safe when not running. */
void hub_stop(hub *h);

/* Requests in the log whose method is `method` (NULL: any) and whose path contains `part`;
 * with_range: 1 only those with a Range header, 0 only those without, -1 either. */
int hub_count(const hub *h, const char *method, const char *part, int with_range);
/* The largest start offset of a "Range: bytes=N-" request for a path containing part (-1 when
 * none). */
long long hub_max_range_start(const hub *h, const char *part);
/* Requests whose path contains part that carried an Authorization header. */
int hub_count_auth(const hub *h, const char *part);
/* Empties the request log. */
void hub_clear_log(const hub *h);

/* Writes repos/<repo>/: config.json, generation_config.json (when with_generation), and either
 * model.safetensors (nshards == 0) or model.safetensors.index.json + nshards shards, holding
 * tensors of `floats` f32 values each (deterministic from seed). 0 on success. */
int hub_make_repo(const hub *h, const char *repo, int with_generation, int nshards, size_t floats,
                  uint32_t seed);
/* The path of repos/<repo>/<file> into buf. */
void hub_repo_file(const hub *h, const char *repo, const char *file, char *buf, size_t n);

/* Runs argv[0] (a path) with the environment plus `env` ("K=V", NULL-terminated, may be NULL;
 * HF_TOKEN is always removed), stdout and stderr both into `outfile`. Returns the exit code
 * (128 + signal when killed). */
int hub_run(const char *const *env, const char *const *argv, const char *outfile);

#endif
