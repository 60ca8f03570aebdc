/* config.c - `voxq worker` settings: every one is an environment variable and a flag (flags
 * win), listed by `voxq worker --help` and in the README from one table, so the three cannot
 * drift apart. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/cli.h"
#include "worker/daemon.h"

enum { T_STR, T_INT, T_BOOL };

typedef struct setting {
    const char *flag;
    const char *env;
    int type;
    const char *def;
    size_t offset;              /* into worker_config */
    int min, max;
    const char *help;
} setting;

#define OFF(f) offsetof(worker_config, f)
static const setting settings[] = {
    {"--redis", "VOXQ_REDIS_URL", T_STR, "redis://127.0.0.1:6379", OFF(redis_url), 0, 0,
     "Redis: redis://[:password@]host[:port][/db] or unix:///path"},
    {"--prefix", "VOXQ_QUEUE_PREFIX", T_STR, "voxq:", OFF(prefix), 0, 0, "key prefix"},
    {"--store", "VOXQ_STORE", T_STR, "./store", OFF(store), 0, 0, "artifact store root"},
    {"--output-dir", "VOXQ_OUTPUT_DIR", T_STR, "./output", OFF(output_dir), 0, 0,
     "where audio is written; a job's output can never leave it"},
    {"--model", "VOXQ_MODEL", T_STR, "dia-1.6b", OFF(model), 0, 0, "model name in the store"},
    {"--codec", "VOXQ_CODEC", T_STR, "", OFF(codec), 0, 0,
     "codec model (default: what the model's manifest names, else dac-44khz)"},
    {"--variant", "VOXQ_VARIANT", T_STR, "auto", OFF(variant), 0, 0,
     "auto | original | int8 | int4 (auto prefers int8)"},
    {"--device", "VOXQ_DEVICE", T_STR, "auto", OFF(device), 0, 0, "auto | cuda | cpu"},
    {"--threads", "VOXQ_THREADS", T_INT, "0", OFF(threads), 0, 1024,
     "CPU backend threads (0 = all cores)"},
    {"--auto-quantize", "VOXQ_AUTO_QUANTIZE", T_BOOL, "0", OFF(auto_quantize), 0, 1,
     "enqueue the int8 quantize job once when missing; switch to it when it appears"},
    {"--metrics-addr", "VOXQ_METRICS_ADDR", T_STR, "127.0.0.1:9464", OFF(metrics_addr), 0, 0,
     "/healthz and /metrics listen address (IP:PORT; 'off' disables)"},
    {"--worker-id", "VOXQ_WORKER_ID", T_STR, "", OFF(worker_id), 0, 0,
     "unique worker id (default host:pid:random)"},
    {"--concurrency", "VOXQ_CONCURRENCY", T_INT, "1", OFF(concurrency), 1, 256,
     "jobs held at once; synthesis jobs decode together, one batched step for all"},
    {"--drain-s", "VOXQ_DRAIN_S", T_INT, "25", OFF(drain_s), 0, 86400,
     "on SIGTERM, seconds to finish running jobs before requeueing them"},
    {"--stall-s", "VOXQ_STALL_S", T_INT, "120", OFF(stall_s), 1, 86400,
     "engine silent this long while busy = hung: heartbeat withheld, then exit"},
    {"--block-timeout-s", "VOXQ_BLOCK_TIMEOUT_S", T_INT, "2", OFF(queue.block_timeout_s), 1, 60,
     "BLMOVE timeout"},
    {"--lease-ms", "VOXQ_LEASE_MS", T_INT, "20000", OFF(queue.lease_ms), 200, 3600000,
     "heartbeat key lifetime; a worker silent this long is presumed dead"},
    {"--heartbeat-ms", "VOXQ_HEARTBEAT_MS", T_INT, "0", OFF(queue.heartbeat_ms), 0, 3600000,
     "heartbeat period (0 = lease/4)"},
    {"--reaper-ms", "VOXQ_REAPER_MS", T_INT, "5000", OFF(queue.reaper_ms), 100, 3600000,
     "reaper and delayed-job promotion period"},
    {"--retry-base-ms", "VOXQ_RETRY_BASE_MS", T_INT, "5000", OFF(queue.retry_base_ms), 1,
     3600000, "first retry delay (doubles per attempt, jittered)"},
    {"--retry-cap-ms", "VOXQ_RETRY_CAP_MS", T_INT, "600000", OFF(queue.retry_cap_ms), 1,
     86400000, "longest retry delay"},
    {"--redelay-ms", "VOXQ_REDELAY_MS", T_INT, "30000", OFF(queue.redelay_ms), 1, 3600000,
     "delay for duplicates of running jobs and jobs waiting for an artifact"},
    {"--max-recoveries", "VOXQ_MAX_RECOVERIES", T_INT, "2", OFF(queue.max_recoveries), 0, 100,
     "worker deaths a job survives before it is a poison job"},
    {"--connect-timeout-ms", "VOXQ_CONNECT_TIMEOUT_MS", T_INT, "3000",
     OFF(queue.connect_timeout_ms), 100, 600000, "Redis connect timeout"},
    {"--command-timeout-ms", "VOXQ_COMMAND_TIMEOUT_MS", T_INT, "10000",
     OFF(queue.command_timeout_ms), 100, 600000, "Redis command watchdog"},
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

void worker_config_help(void) {
    printf("usage: voxq worker [FLAGS]\n\n"
           "Runs the job service: fetches synthesize and quantize jobs from Redis, runs them,\n"
           "writes results. Every setting is a flag and an environment variable; flags win.\n\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        printf("  %-22s %-24s [%s]\n      %s\n", s->flag, s->env, s->def[0] ? s->def : "\"\"",
               s->help);
    }
    printf("\nTest only: VOXQ_TEST_FAKE_ENGINE=1 replaces the model with a scripted fake\n"
           "(worker/fake_engine.c); never set it in production.\n"
           "Exit codes: 0 clean shutdown, 1 failure (Redis too old, engine hung), 2 bad usage.\n");
}

static int apply(worker_config *cfg, const setting *s, const char *value, const char *source) {
    char *field = (char *)cfg + s->offset;
    if (s->type == T_STR) {
        *(const char **)field = value;
        return 0;
    }
    char *end;
    long v = strtol(value, &end, 10);
    if (s->type == T_BOOL && (!strcmp(value, "true") || !strcmp(value, "yes"))) v = 1, end = "";
    if (s->type == T_BOOL && (!strcmp(value, "false") || !strcmp(value, "no"))) v = 0, end = "";
    if (*value == '\0' || *end != '\0' || v < s->min || v > s->max) {
        fprintf(stderr, "voxq worker: %s = '%s' must be %s in [%d, %d]\n", source, value,
                s->type == T_BOOL ? "0 or 1" : "an integer", s->min, s->max);
        return 2;
    }
    *(int *)field = (int)v;
    return 0;
}

int worker_config_load(worker_config *cfg, int argc, char **argv) {
    memset(cfg, 0, sizeof *cfg);
    queue_config_default(&cfg->queue);
    for (size_t i = 0; i < NSETTINGS; i++) {
        const char *v = getenv(settings[i].env);
        if (apply(cfg, &settings[i], settings[i].def, settings[i].flag)) return 2;
        if (v && (*v || settings[i].type == T_STR) && apply(cfg, &settings[i], v, settings[i].env))
            return 2;
    }
    for (int i = 1; i < argc; i++) {
        int matched = 0;
        for (size_t k = 0; k < NSETTINGS && !matched; k++) {
            int missing = 0;
            const char *v = NULL;
            if (settings[k].type == T_BOOL && !strcmp(argv[i], settings[k].flag))
                v = "1"; /* a bare boolean flag */
            else
                v = cli_flag_value(argc, argv, &i, settings[k].flag, &missing);
            if (missing) {
                fprintf(stderr, "voxq worker: %s needs a value\n", settings[k].flag);
                return 2;
            }
            if (!v) continue;
            matched = 1;
            if (apply(cfg, &settings[k], v, settings[k].flag)) return 2;
        }
        if (!matched) {
            fprintf(stderr, "voxq worker: unknown argument '%s' (see voxq worker --help)\n",
                    argv[i]);
            return 2;
        }
    }
    const char *fake = getenv("VOXQ_TEST_FAKE_ENGINE");
    cfg->fake_engine = fake && !strcmp(fake, "1");
    if (strcmp(cfg->variant, "auto") && strcmp(cfg->variant, "original") &&
        strcmp(cfg->variant, "int8") && strcmp(cfg->variant, "int4")) {
        fprintf(stderr, "voxq worker: --variant must be auto, original, int8 or int4\n");
        return 2;
    }
    if (strcmp(cfg->device, "auto") && strcmp(cfg->device, "cuda") && strcmp(cfg->device, "cpu")) {
        fprintf(stderr, "voxq worker: --device must be auto, cuda or cpu\n");
        return 2;
    }
    cfg->queue.redis_url = cfg->redis_url;
    cfg->queue.prefix = cfg->prefix;
    cfg->queue.worker_id = cfg->worker_id;
    cfg->queue.capacity = cfg->concurrency;
    return 0;
}
