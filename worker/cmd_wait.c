/* cmd_wait.c - `voxq wait ID`: follow a job until it ends and print its result hash as JSON.
 * Polls the job hash (the source of truth; pub/sub is at-most-once) every 200 ms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>

#include "queue/queue.h"
#include "worker/cli.h"

void cmd_wait_help(void) {
    printf("usage: voxq wait ID [--timeout SECONDS] [--redis URL] [--prefix P]\n\n"
           "Waits until job ID is succeeded, failed, cancelled or rejected and prints its\n"
           "result as JSON. Exit 0 when it succeeded, 1 otherwise or on timeout\n"
           "(default 600 s).\n");
}

static int terminal(const char *s) {
    return !strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "cancelled") ||
           !strcmp(s, "rejected");
}

int cmd_wait(int argc, char **argv) {
    const char *url = cli_env("VOXQ_REDIS_URL", "redis://127.0.0.1:6379");
    const char *prefix = cli_env("VOXQ_QUEUE_PREFIX", "voxq:");
    const char *id = NULL;
    double timeout = 600;
    for (int i = 1; i < argc; i++) {
        int missing = 0;
        const char *v;
        if ((v = cli_flag_value(argc, argv, &i, "--timeout", &missing))) timeout = atof(v);
        else if ((v = cli_flag_value(argc, argv, &i, "--redis", &missing))) url = v;
        else if ((v = cli_flag_value(argc, argv, &i, "--prefix", &missing))) prefix = v;
        else if (missing) {
            fprintf(stderr, "voxq wait: %s needs a value\n", argv[i]);
            return 2;
        } else if (!id && argv[i][0] != '-') id = argv[i];
        else {
            fprintf(stderr, "voxq wait: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!id || !queue_id_valid(id, strlen(id))) {
        fprintf(stderr, "voxq wait: give a job id (see voxq wait --help)\n");
        return 2;
    }
    char errbuf[256];
    redisContext *c = queue_connect_sync(url, 5000, errbuf);
    if (!c) {
        fprintf(stderr, "voxq wait: %s\n", errbuf);
        return 1;
    }
    char key[256];
    snprintf(key, sizeof key, "%sjob:%s", prefix, id);
    int64_t deadline = queue_now_ms() + (int64_t)(timeout * 1000);
    int rc = 1;
    for (;;) {
        redisReply *r = redisCommand(c, "HGETALL %s", key);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "voxq wait: HGETALL %s: %s\n", key,
                    r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
            if (r) freeReplyObject(r);
            break;
        }
        const char *state = "";
        for (size_t i = 0; i + 1 < r->elements; i += 2)
            if (!strcmp(r->element[i]->str, "state")) state = r->element[i + 1]->str;
        if (terminal(state)) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "id", id);
            for (size_t i = 0; i + 1 < r->elements; i += 2)
                if (strcmp(r->element[i]->str, "lease"))
                    cJSON_AddStringToObject(o, r->element[i]->str, r->element[i + 1]->str);
            char *s = cJSON_PrintUnformatted(o);
            if (s) printf("%s\n", s);
            free(s);
            cJSON_Delete(o);
            rc = strcmp(state, "succeeded") ? 1 : 0;
            freeReplyObject(r);
            break;
        }
        freeReplyObject(r);
        if (queue_now_ms() > deadline) {
            fprintf(stderr, "voxq wait: %s not finished after %g s (state '%s')\n", id, timeout,
                    state[0] ? state : "queued");
            break;
        }
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }
    redisFree(c);
    return rc;
}
