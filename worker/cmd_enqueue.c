/* cmd_enqueue.c - `voxq enqueue`: push one job without redis-cli. Builds the JSON with cJSON
 * (so quoting is never the user's problem), gives it an id when none is given (so `voxq wait`
 * can follow it), LPUSHes it and prints the id. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>

#include "queue/queue.h"
#include "worker/cli.h"

void cmd_enqueue_help(void) {
    printf("usage: voxq enqueue [--text TEXT | --quantize METHOD] [OPTIONS]\n\n"
           "Pushes a job on the queue and prints its id.\n\n"
           "  --text TEXT        synthesize TEXT (Dia speaker tags: \"[S1] Hi. [S2] Hello.\")\n"
           "  --quantize METHOD  a quantize job instead: int8 | int4\n"
           "  --id ID            job id ([A-Za-z0-9._:-]{1,128}; default: a random one)\n"
           "  --model NAME       model (default: the worker's)\n"
           "  --variant V        original | int8 | int4 (synthesize)\n"
           "  --format F         wav | flac | ogg (synthesize, default wav)\n"
           "  --output PATH      relative path in the output directory (default ID.FORMAT)\n"
           "  --seed N           sampling seed\n"
           "  --max-seconds S    longest audio to generate\n"
           "  --reply-to KEY     also RPUSH the result to this list\n"
           "  --hi               use the priority queue\n"
           "  --json JSON        push this payload as is (other options ignored)\n"
           "  --redis URL        [VOXQ_REDIS_URL or redis://127.0.0.1:6379]\n"
           "  --prefix P         [VOXQ_QUEUE_PREFIX or voxq:]\n");
}

int cmd_enqueue(int argc, char **argv) {
    const char *url = cli_env("VOXQ_REDIS_URL", "redis://127.0.0.1:6379");
    const char *prefix = cli_env("VOXQ_QUEUE_PREFIX", "voxq:");
    const char *text = NULL, *quant = NULL, *id = NULL, *json = NULL, *model = NULL;
    const char *variant = NULL, *format = NULL, *output = NULL, *seed = NULL, *reply = NULL;
    const char *maxs = NULL;
    int hi = 0;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
#define FLAG(name, var)                                                                            \
    if ((v = cli_flag_value(argc, argv, &i, name, &missing))) {                                    \
        var = v;                                                                                   \
        continue;                                                                                  \
    }                                                                                              \
    if (missing) {                                                                                 \
        fprintf(stderr, "voxq enqueue: %s needs a value\n", name);                                 \
        return 2;                                                                                  \
    }
        FLAG("--text", text)
        FLAG("--quantize", quant)
        FLAG("--id", id)
        FLAG("--json", json)
        FLAG("--model", model)
        FLAG("--variant", variant)
        FLAG("--format", format)
        FLAG("--output", output)
        FLAG("--seed", seed)
        FLAG("--max-seconds", maxs)
        FLAG("--reply-to", reply)
        FLAG("--redis", url)
        FLAG("--prefix", prefix)
#undef FLAG
        if (!strcmp(argv[i], "--hi")) {
            hi = 1;
            continue;
        }
        fprintf(stderr, "voxq enqueue: unknown argument '%s'\n", argv[i]);
        return 2;
    }
    if (!json && !text == !quant) {
        fprintf(stderr, "voxq enqueue: give exactly one of --text, --quantize or --json\n");
        return 2;
    }
    char idbuf[40];
    char *payload = NULL;
    if (!json) {
        if (!id) {
            char hex[33];
            queue_random_hex(hex);
            snprintf(idbuf, sizeof idbuf, "e-%.24s", hex);
            id = idbuf;
        }
        if (!queue_id_valid(id, strlen(id))) {
            fprintf(stderr, "voxq enqueue: --id must match [A-Za-z0-9._:-]{1,128}\n");
            return 2;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddStringToObject(o, "type", text ? "synthesize" : "quantize");
        if (text) cJSON_AddStringToObject(o, "text", text);
        if (quant) cJSON_AddStringToObject(o, "method", quant);
        if (model) cJSON_AddStringToObject(o, "model", model);
        if (variant) cJSON_AddStringToObject(o, "variant", variant);
        if (format) cJSON_AddStringToObject(o, "format", format);
        if (output) cJSON_AddStringToObject(o, "output", output);
        if (seed) cJSON_AddNumberToObject(o, "seed", strtod(seed, NULL));
        if (maxs) cJSON_AddNumberToObject(o, "max_seconds", strtod(maxs, NULL));
        if (reply) cJSON_AddStringToObject(o, "reply_to", reply);
        if (hi) cJSON_AddStringToObject(o, "priority", "hi");
        payload = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!payload) return 1;
        json = payload;
    }
    /* Check what a worker would check, so a mistake shows here and not in the dead letters. */
    queue_job_limits lim;
    queue_job_limits_default(&lim);
    lim.key_prefix = prefix;
    queue_job job;
    queue_job_error jerr;
    if (queue_job_parse(json, strlen(json), &lim, &job, &jerr) != 0) {
        fprintf(stderr, "voxq enqueue: %s: %s\n", jerr.code, jerr.message);
        free(payload);
        return 2;
    }
    char errbuf[256];
    redisContext *c = queue_connect_sync(url, 5000, errbuf);
    if (!c) {
        fprintf(stderr, "voxq enqueue: %s\n", errbuf);
        queue_job_free(&job);
        free(payload);
        return 1;
    }
    char key[128];
    snprintf(key, sizeof key, "%sjobs%s", prefix, job.priority_hi ? ":hi" : "");
    redisReply *r = redisCommand(c, "LPUSH %s %s", key, json);
    int rc = 0;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "voxq enqueue: LPUSH %s: %s\n", key, r ? r->str : c->errstr);
        rc = 1;
    } else {
        printf("%s\n", job.id_assigned ? "(the worker will assign an id)" : job.id);
    }
    if (r) freeReplyObject(r);
    redisFree(c);
    queue_job_free(&job);
    free(payload);
    return rc;
}
