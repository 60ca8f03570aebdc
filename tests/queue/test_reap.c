/* test_reap.c - the reaper script (queue/scripts.c `reap`) run directly against a real
 * redis-server, for what a real worker cannot be made to leave behind: a payload the scripts'
 * Lua cjson cannot decode in a dead worker's processing list. Each case is runnable alone. */
#include <cjson/cJSON.h>

#include "queue/internal.h"
#include "queue/redis_fixture.h"
#include "test.h"

#define MAX_RECOVERIES 2

/* One reap by the live worker "reaper" as a later round would run it (the lock of the last
 * round expired). Returns the number of poison jobs it reported, or -1. */
static long long reap_once(void) {
    redisReply *r = rf_cmd("DEL voxq:reaper:lock");
    if (r) freeReplyObject(r);
    r = rf_cmd("EVAL %s 0 voxq: reaper %lld %d 100 5000 86400 2592000", qscript_source(QS_REAP),
               (long long)rf_now_ms(), MAX_RECOVERIES);
    long long dead = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->integer >= 0)
        dead = r->element[2]->integer;
    else
        fprintf(stderr, "  reap: %s\n", r && r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
    if (r) freeReplyObject(r);
    return dead;
}

/* How many keys match pattern; when count is not 0, -1 unless each holds that count and
 * expires. */
static long long count_keys(const char *pattern, long long count) {
    redisReply *r = rf_cmd("KEYS %s", pattern);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r) freeReplyObject(r);
        return -1;
    }
    long long n = (long long)r->elements;
    for (size_t i = 0; count && i < r->elements; i++) {
        long long ttl = rf_int("TTL %s", r->element[i]->str);
        long long got = rf_int("GET %s", r->element[i]->str);
        if (ttl <= 0 || got != count) {
            fprintf(stderr, "  %s: count %lld (want %lld), ttl %lld\n", r->element[i]->str, got,
                    count, ttl);
            n = -1;
        }
    }
    freeReplyObject(r);
    return n;
}

/* A worker that took the payload (from the queue, or directly for the first round) and died:
 * registered, holding it, no heartbeat. */
static int dead_worker_holds(const char *wid, const char *raw, size_t len, int from_queue) {
    char proc[64];
    snprintf(proc, sizeof proc, "voxq:proc:%s", wid);
    redisReply *r = from_queue ? rf_cmd("LMOVE voxq:jobs %s RIGHT LEFT", proc)
                               : rf_cmd("LPUSH %s %b", proc, raw, len);
    int ok = r && r->type != REDIS_REPLY_ERROR && r->type != REDIS_REPLY_NIL;
    if (r) freeReplyObject(r);
    r = rf_cmd("SADD voxq:workers %s", wid);
    if (r) freeReplyObject(r);
    return ok ? 0 : -1;
}

/* A payload that cJSON reads and Lua cjson does not (a byte-order mark, a control byte between
 * tokens) or that is no JSON at all crashes a worker every time it is taken: the reaper counts
 * it under its digest, requeues it max_recoveries times, then dead-letters it as poison (no job
 * hash, there is no id) instead of requeuing it forever. */
TEST(undecodable_payload_poisoned) {
    ASSERT_OK(rf_start());
    static const char *const payloads[] = {
        "\xEF\xBB\xBF{\"id\":\"u1\",\"type\":\"synthesize\",\"text\":\"[S1] crash\"}",
        "{\x0b\"id\":\"u2\",\"type\":\"synthesize\",\"text\":\"[S1] crash\"}",
        "not json",
    };
    for (size_t p = 0; p < sizeof payloads / sizeof *payloads; p++) {
        const char *raw = payloads[p];
        size_t len = strlen(raw);
        redisReply *r = rf_cmd("FLUSHALL");
        ASSERT_TRUE(r != NULL);
        freeReplyObject(r);
        long long counted = -2; /* keys holding the count before the last reap */
        for (int round = 1; round <= MAX_RECOVERIES + 1; round++) {
            char wid[32];
            snprintf(wid, sizeof wid, "dead%d", round);
            ASSERT_OK(dead_worker_holds(wid, raw, len, round > 1));
            long long dead = reap_once();
            ASSERT_EQ(rf_int("EXISTS voxq:proc:%s", wid), 0);
            ASSERT_EQ(rf_int("SISMEMBER voxq:workers %s", wid), 0);
            if (round <= MAX_RECOVERIES) { /* recovered: back on the queue, counted */
                ASSERT_EQ(dead, 0);
                ASSERT_EQ(rf_int("LLEN voxq:jobs"), 1);
                ASSERT_EQ(rf_int("LLEN voxq:dead"), 0);
                if (round == MAX_RECOVERIES) counted = count_keys("voxq:reaper:raw:*", round);
            } else { /* poison: dead letter, not requeued */
                ASSERT_EQ(dead, 1);
                ASSERT_EQ(rf_int("LLEN voxq:jobs"), 0);
                ASSERT_EQ(rf_int("LLEN voxq:dead"), 1);
                ASSERT_EQ(count_keys("voxq:reaper:raw:*", 0), 0); /* the count is done with */
            }
        }
        ASSERT_EQ(counted, 1); /* one key, holding max_recoveries, with a TTL */
        r = rf_cmd("LINDEX voxq:dead 0");
        ASSERT_TRUE(r && r->type == REDIS_REPLY_STRING);
        cJSON *env = cJSON_ParseWithLength(r->str, r->len);
        freeReplyObject(r);
        ASSERT_TRUE(env != NULL);
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(env, "error_code");
        const cJSON *got = cJSON_GetObjectItemCaseSensitive(env, "raw");
        const cJSON *worker = cJSON_GetObjectItemCaseSensitive(env, "worker");
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(env, "error");
        int raw_kept = cJSON_IsString(got) && !strcmp(got->valuestring, raw);
        ASSERT_STREQ(cJSON_IsString(code) ? code->valuestring : NULL, "poison");
        char last[32], times[32];
        snprintf(last, sizeof last, "dead%d", MAX_RECOVERIES + 1);
        snprintf(times, sizeof times, " %d times", MAX_RECOVERIES + 1);
        ASSERT_STREQ(cJSON_IsString(worker) ? worker->valuestring : NULL, last);
        ASSERT_CONTAINS(cJSON_IsString(error) ? error->valuestring : NULL, times);
        cJSON_Delete(env);
        ASSERT_TRUE(raw_kept);
        ASSERT_EQ(count_keys("voxq:job:*", 0), 0); /* no record: there is no id */
    }
}

int main(int argc, char **argv) { return test_main(argc, argv); }
