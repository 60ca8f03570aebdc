/* test_worker_fault.c - spec/queue.md §6 against real `voxq worker` processes and a real
 * redis-server, with the test-only fake engine (worker/fake_engine.c) doing sleep/fail/crash on
 * command. Each case is runnable alone: ./test_worker_fault NAME. */
#include "test.h"
#include "worker/worker_fixture.h"

#define SETUP()                                                                                    \
    do {                                                                                           \
        if (wf_reset() != 0) TEST_FAIL_("cannot start redis-server");                              \
    } while (0)

static char json_[4096];

/* A synthesize job with the given id and fake-engine script. */
static const char *job(const char *id, const char *script) {
    snprintf(json_, sizeof json_, "{\"id\":\"%s\",\"type\":\"synthesize\",\"text\":\"[S1] %s\"}",
             id, script);
    return json_;
}

/* 1: a valid job succeeds; hash, event and file are there. */
TEST(valid_job_succeeds) {
    SETUP();
    redisContext *sub = redisConnect("127.0.0.1", rf_port_);
    ASSERT_TRUE(sub && !sub->err);
    redisReply *r = redisCommand(sub, "SUBSCRIBE voxq:ev:ok1");
    freeReplyObject(r);
    wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", job("ok1", "sleep:50 audio:500"));
    ASSERT_TRUE(wf_wait_state("ok1", "succeeded", 10000));
    char *path = wf_field("ok1", "output_path");
    ASSERT_TRUE(path != NULL);
    struct stat st;
    ASSERT_EQ(stat(path, &st), 0);
    ASSERT_EQ(st.st_size, wf_field_int("ok1", "bytes"));
    ASSERT_TRUE(st.st_size > 44100); /* 0.5 s of 16-bit mono */
    free(path);
    ASSERT_EQ(wf_field_int("ok1", "attempts"), 1);
    ASSERT_EQ(wf_field_int("ok1", "sample_rate"), 44100);
    char *prog = wf_field("ok1", "progress"); /* 1 on success, even with no report before */
    ASSERT_TRUE(prog && strcmp(prog, "1") == 0);
    free(prog);
    char *sha = wf_field("ok1", "sha256");
    ASSERT_TRUE(sha && strlen(sha) == 64);
    free(sha);
    ASSERT_TRUE(rf_int("TTL voxq:job:ok1") > 86000);
    /* Events: running, then succeeded. */
    struct timeval tv = {5, 0};
    redisSetTimeout(sub, tv);
    int seen_done = 0;
    for (int i = 0; i < 4 && !seen_done; i++) {
        if (redisGetReply(sub, (void **)&r) != REDIS_OK) break;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3)
            seen_done = strstr(r->element[2]->str, "\"state\":\"succeeded\"") != NULL;
        freeReplyObject(r);
    }
    redisFree(sub);
    ASSERT_TRUE(seen_done);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 2-7: bad input is dead-lettered with a clear code; the worker keeps serving. */
TEST(bad_inputs_rejected) {
    SETUP();
    pid_t w = wf_spawn(NULL, NULL, 0);
    static const struct {
        const char *payload;
        const char *code;
    } cases[] = {
        {"hello", "invalid_json"},
        {"{a:", "invalid_json"},
        {"1}", "invalid_json"},
        {"{\"id\":7,\"type\":\"synthesize\",\"text\":\"t\"}", "invalid_id"},
        {"{\"id\":\"a b\",\"type\":\"synthesize\",\"text\":\"t\"}", "invalid_id"},
        {"{\"id\":\"b1\",\"type\":\"dance\",\"text\":\"t\"}", "unknown_type"},
        {"{\"id\":\"b2\",\"type\":\"synthesize\"}", "missing_field"},
        {"{\"id\":\"b3\",\"type\":\"synthesize\",\"text\":\"t\",\"speed\":99}", "invalid_field"},
        {"{\"id\":\"b4\",\"type\":\"synthesize\",\"text\":\"a\\u0000b\"}", "invalid_json"},
        {"{\"id\":\"b5\",\"type\":\"synthesize\",\"text\":\"\xff\"}", "invalid_utf8"},
        {"{\"id\":\"b6\",\"type\":\"synthesize\",\"text\":\"t\",\"output\":\"../../etc/x.wav\"}",
         "path_escape"},
    };
    size_t n = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n; i++) wf_push("voxq:jobs", cases[i].payload);
    /* Nesting 2000 deep and a 50 MB element. */
    char *deep = malloc(4001);
    for (int i = 0; i < 2000; i++) deep[i] = '[', deep[3999 - i] = ']';
    deep[4000] = '\0';
    wf_push("voxq:jobs", deep);
    free(deep);
    size_t big = 50u << 20;
    char *huge = malloc(big + 1);
    memset(huge, 'x', big);
    huge[0] = '"';
    huge[big - 1] = '"';
    huge[big] = '\0';
    wf_push("voxq:jobs", huge);
    free(huge);
    wf_push("voxq:jobs", job("after-bad", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("after-bad", "succeeded", 20000));
    ASSERT_TRUE(wf_alive(w));
    ASSERT_EQ(rf_int("LLEN voxq:dead"), (long long)n + 2);
    /* Dead letters are LPUSHed: the oldest is last. */
    for (size_t i = 0; i < n; i++) {
        char *env = rf_str("LINDEX voxq:dead %lld", (long long)(n + 1 - i));
        ASSERT_TRUE(env != NULL);
        char want[64];
        snprintf(want, sizeof want, "\"error_code\":\"%s\"", cases[i].code);
        if (!strstr(env, want)) fprintf(stderr, "  case %zu: %s\n", i, env);
        ASSERT_CONTAINS(env, want);
        free(env);
    }
    char *env = rf_str("LINDEX voxq:dead 0");
    ASSERT_CONTAINS(env, "too_large");
    free(env);
    /* A rejected job with a usable id has a hash saying why, naming the field. */
    ASSERT_TRUE(wf_wait_state("b3", "rejected", 1000));
    char *err = wf_field("b3", "error");
    ASSERT_CONTAINS(err, "speed");
    free(err);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* A payload cJSON reads but the scripts' Lua cjson refuses (a byte-order mark, a control byte
 * between tokens) is rejected before it runs: were it run and crash its worker, the reaper
 * could not decode it to count the crash. Here it would crash the worker every time. */
TEST(lua_cjson_unreadable_rejected) {
    SETUP();
    pid_t w = wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", "\xEF\xBB\xBF{\"id\":\"bom1\",\"type\":\"synthesize\",\"text\":"
                         "\"[S1] crash\"}");
    wf_push("voxq:jobs", "{\"id\":\"vt1\",\x0b\"type\":\"synthesize\",\"text\":\"[S1] crash\"}");
    wf_push("voxq:jobs", job("after-unreadable", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("after-unreadable", "succeeded", 20000));
    ASSERT_TRUE(wf_alive(w));
    ASSERT_EQ(rf_int("LLEN voxq:dead"), 2);
    char *env = rf_str("LINDEX voxq:dead 1");
    ASSERT_CONTAINS(env, "\"error_code\":\"invalid_json\"");
    ASSERT_CONTAINS(env, "byte-order mark");
    free(env);
    env = rf_str("LINDEX voxq:dead 0");
    ASSERT_CONTAINS(env, "\"error_code\":\"invalid_json\"");
    ASSERT_CONTAINS(env, "0x0B at offset 12");
    free(env);
    ASSERT_EQ(rf_int("EXISTS voxq:job:bom1"), 0);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* Waits up to ms for list key to hold n elements. */
static int wait_len(const char *key, long long n, int ms) {
    int64_t end = rf_now_ms() + ms;
    while (rf_int("LLEN %s", key) < n && rf_now_ms() < end) rf_sleep_ms(25);
    return rf_int("LLEN %s", key) == n;
}

/* 6 with repeated keys: the first of each wins (cJSON's reading, documented), and the worker
 * keeps the job in Redis without the repeats, so the scripts, whose Lua cjson would read the
 * last, see the same job: it runs, retries (the delayed member is the rewritten payload) and
 * answers under the first id and the first reply_to. */
TEST(duplicate_keys_first_wins) {
    SETUP();
    static const char *const env[] = {"VOXQ_RETRY_BASE_MS=2000", NULL};
    char log[400];
    wf_spawn(env, log, sizeof log);
    wf_push("voxq:jobs", "{\"id\":\"dk1\",\"type\":\"synthesize\",\"reply_to\":\"dk:r1\","
                         "\"text\":\"[S1] fail-until:2\",\"id\":\"dk2\",\"reply_to\":\"dk:r2\"}");
    ASSERT_TRUE(wf_wait_state("dk1", "retrying", 10000));
    redisReply *r = rf_cmd("ZRANGE voxq:delayed 0 -1");
    ASSERT_TRUE(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    const char *member = r->element[0]->str;
    int first_only = strstr(member, "\"id\":\"dk1\"") && !strstr(member, "dk2") &&
                     !strstr(member, "dk:r2");
    if (!first_only) fprintf(stderr, "  delayed: %s\n", member);
    freeReplyObject(r);
    ASSERT_TRUE(first_only);
    ASSERT_TRUE(wf_wait_state("dk1", "succeeded", 10000));
    ASSERT_EQ(wf_field_int("dk1", "attempts"), 2);
    ASSERT_EQ(rf_int("EXISTS voxq:job:dk2"), 0);
    ASSERT_TRUE(wait_len("dk:r1", 1, 1000));
    ASSERT_EQ(rf_int("EXISTS dk:r2"), 0);
    ASSERT_TRUE(wf_file_contains(log, "repeated key"));
    /* Without an id: the one rewrite writes the assigned id in and drops the repeats, so the
     * retry runs under the same id and answers the first reply_to. */
    wf_push("voxq:jobs", "{\"type\":\"synthesize\",\"reply_to\":\"dk:r3\",\"text\":"
                         "\"[S1] fail-until:2\",\"reply_to\":\"dk:r4\"}");
    ASSERT_TRUE(wait_len("dk:r3", 1, 15000));
    char *msg = rf_str("LINDEX dk:r3 0");
    ASSERT_CONTAINS(msg, "\"state\":\"succeeded\"");
    ASSERT_CONTAINS(msg, "\"attempts\":\"2\"");
    free(msg);
    ASSERT_EQ(rf_int("EXISTS dk:r4"), 0);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 10 with repeated ids: the reaper decodes the payload in a dead worker's processing list with
 * Lua cjson, where the last of repeated keys wins. It finds the rewritten payload there, so the
 * crash is counted under the first id, the one the job runs under. */
TEST(duplicate_ids_recovered_under_first) {
    SETUP();
    const char *mark = wf_path("dupkill.mark");
    unlink(mark);
    pid_t a = wf_spawn(NULL, NULL, 0);
    snprintf(json_, sizeof json_, "{\"id\":\"dr1\",\"type\":\"synthesize\",\"text\":"
             "\"[S1] mark:%s sleep:2000\",\"id\":\"dr2\"}", mark);
    wf_push("voxq:jobs", json_);
    ASSERT_TRUE(wf_wait_state("dr1", "running", 5000));
    kill(a, SIGKILL);
    ASSERT_EQ(wf_wait_exit(a, 2000), 128 + SIGKILL);
    wf_spawn(NULL, NULL, 0);
    ASSERT_TRUE(wf_wait_state("dr1", "succeeded", 15000));
    ASSERT_EQ(wf_field_int("dr1", "recoveries"), 1);
    ASSERT_EQ(wf_field_int("dr1", "attempts"), 1);
    ASSERT_EQ(rf_int("EXISTS voxq:job:dr2"), 0);
    ASSERT_EQ(wf_count_lines(mark), 2);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 9 with repeated keys: a copy that arrives while another worker runs the job waits in delayed
 * as the rewritten payload too (the reaper decodes it when it comes due), and is then
 * short-circuited under the first id. */
TEST(duplicate_keys_copy_delayed_rewritten) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    wf_spawn(NULL, NULL, 0);
    const char *payload = "{\"id\":\"dd1\",\"type\":\"synthesize\",\"text\":\"[S1] sleep:1500\","
                          "\"id\":\"dd2\"}";
    wf_push("voxq:jobs", payload);
    ASSERT_TRUE(wf_wait_state("dd1", "running", 5000));
    wf_push("voxq:jobs", payload);
    int64_t end = rf_now_ms() + 3000;
    while (rf_int("ZCARD voxq:delayed") == 0 && rf_now_ms() < end) rf_sleep_ms(10);
    redisReply *r = rf_cmd("ZRANGE voxq:delayed 0 -1");
    ASSERT_TRUE(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    int first_only = strstr(r->element[0]->str, "\"id\":\"dd1\"") &&
                     !strstr(r->element[0]->str, "dd2");
    if (!first_only) fprintf(stderr, "  delayed: %s\n", r->element[0]->str);
    freeReplyObject(r);
    ASSERT_TRUE(first_only);
    ASSERT_TRUE(wf_wait_state("dd1", "succeeded", 10000));
    end = rf_now_ms() + 5000;
    while ((rf_int("ZCARD voxq:delayed") || rf_int("LLEN voxq:jobs") || wf_proc_total()) &&
           rf_now_ms() < end)
        rf_sleep_ms(25);
    ASSERT_EQ(rf_int("ZCARD voxq:delayed"), 0);
    ASSERT_EQ(wf_proc_total(), 0);
    ASSERT_EQ(wf_field_int("dd1", "attempts"), 1);
    ASSERT_EQ(rf_int("EXISTS voxq:job:dd2"), 0);
}

/* 11 with repeated keys: a poison job found by the reaper is failed under the first id, keeps
 * its record for the first result_ttl_s, answers the first reply_to, and its dead letter holds
 * the rewritten payload. */
TEST(duplicate_keys_poison_under_first) {
    SETUP();
    static const char *const env[] = {"VOXQ_MAX_RECOVERIES=0", NULL};
    pid_t w = wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs", "{\"id\":\"dp1\",\"type\":\"synthesize\",\"reply_to\":\"dp:r1\","
                         "\"result_ttl_s\":60,\"text\":\"[S1] crash\",\"id\":\"dp2\","
                         "\"reply_to\":\"dp:r2\",\"result_ttl_s\":7200}");
    ASSERT_TRUE(wf_wait_exit(w, 10000) >= 0);
    wf_spawn(env, NULL, 0);
    ASSERT_TRUE(wf_wait_state("dp1", "failed", 10000));
    char *code = wf_field("dp1", "error_code");
    ASSERT_STREQ(code, "poison");
    free(code);
    long long ttl = rf_int("TTL voxq:job:dp1");
    ASSERT_TRUE(ttl > 0 && ttl <= 60);
    ASSERT_EQ(rf_int("EXISTS voxq:job:dp2"), 0);
    ASSERT_TRUE(wait_len("dp:r1", 1, 1000));
    ASSERT_EQ(rf_int("EXISTS dp:r2"), 0);
    char *env_dead = rf_str("LINDEX voxq:dead 0");
    ASSERT_CONTAINS(env_dead, "\"id\":\"dp1\"");
    ASSERT_TRUE(!strstr(env_dead, "dp2"));
    free(env_dead);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* reply_to naming one of the service's own keys is rejected, and nothing is pushed there: a
 * message on voxq:jobs would be fetched as a job, one on a processing list would sit in it. */
TEST(reply_to_service_key_rejected) {
    SETUP();
    pid_t w = wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", "{\"id\":\"rs1\",\"type\":\"synthesize\",\"reply_to\":\"voxq:jobs\","
                         "\"text\":\"[S1] sleep:10\"}");
    wf_push("voxq:jobs", "{\"id\":\"rs2\",\"type\":\"synthesize\",\"reply_to\":\"voxq:dead\","
                         "\"text\":5}");
    wf_push("voxq:jobs", job("rs-after", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("rs-after", "succeeded", 10000));
    ASSERT_TRUE(wf_wait_state("rs1", "rejected", 1000));
    char *e = wf_field("rs1", "error");
    ASSERT_CONTAINS(e, "'reply_to'");
    free(e);
    ASSERT_TRUE(wf_wait_state("rs2", "rejected", 1000));
    rf_sleep_ms(500); /* anything pushed onto voxq:jobs would have been fetched and rejected */
    ASSERT_EQ(rf_int("LLEN voxq:jobs"), 0);
    ASSERT_EQ(rf_int("LLEN voxq:dead"), 2); /* the two dead letters, no reply messages */
    char *env = rf_str("LINDEX voxq:dead 0");
    ASSERT_CONTAINS(env, "\"id\":\"rs2\"");
    free(env);
    ASSERT_TRUE(wf_alive(w));
    ASSERT_EQ(wf_proc_total(), 0);
}

/* result_ttl_s is honoured where the record is written by the rejection or the reaper, not only
 * by the scripts that end a run: a rejected job and a poison job keep their record as long as
 * they asked (here a minute, not the default day). */
TEST(result_ttl_on_rejection_and_poison) {
    SETUP();
    static const char *const env[] = {"VOXQ_MAX_RECOVERIES=0", NULL};
    pid_t w = wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs", "{\"id\":\"ttl1\",\"type\":\"synthesize\",\"result_ttl_s\":60,"
                         "\"text\":5}");
    ASSERT_TRUE(wf_wait_state("ttl1", "rejected", 10000));
    long long ttl = rf_int("TTL voxq:job:ttl1");
    ASSERT_TRUE(ttl > 0 && ttl <= 60);
    /* A bad result_ttl_s itself: the default. */
    wf_push("voxq:jobs", "{\"id\":\"ttl2\",\"type\":\"synthesize\",\"result_ttl_s\":0,"
                         "\"text\":\"t\"}");
    ASSERT_TRUE(wf_wait_state("ttl2", "rejected", 10000));
    ASSERT_TRUE(rf_int("TTL voxq:job:ttl2") > 86000);
    /* Poison: with VOXQ_MAX_RECOVERIES=0 the first crash makes it one. */
    wf_push("voxq:jobs", "{\"id\":\"ttl3\",\"type\":\"synthesize\",\"result_ttl_s\":60,"
                         "\"text\":\"[S1] crash\"}");
    ASSERT_TRUE(wf_wait_exit(w, 10000) >= 0);
    wf_spawn(env, NULL, 0);
    ASSERT_TRUE(wf_wait_state("ttl3", "failed", 10000));
    char *code = wf_field("ttl3", "error_code");
    ASSERT_STREQ(code, "poison");
    free(code);
    ttl = rf_int("TTL voxq:job:ttl3");
    ASSERT_TRUE(ttl > 0 && ttl <= 60);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* Default output names are one-to-one with ids: "col:1" and "col_1" used to share "col_1.wav",
 * the second overwriting the first. */
TEST(default_outputs_distinct) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", job("col:1", "audio:300"));
    wf_push("voxq:jobs", job("col_1", "audio:600"));
    ASSERT_TRUE(wf_wait_state("col:1", "succeeded", 10000));
    ASSERT_TRUE(wf_wait_state("col_1", "succeeded", 10000));
    char *a = wf_field("col:1", "output_path"), *b = wf_field("col_1", "output_path");
    ASSERT_TRUE(a && b && strcmp(a, b) != 0);
    struct stat sa, sb;
    ASSERT_EQ(stat(a, &sa), 0);
    ASSERT_EQ(stat(b, &sb), 0);
    ASSERT_EQ(sa.st_size, wf_field_int("col:1", "bytes"));
    ASSERT_EQ(sb.st_size, wf_field_int("col_1", "bytes"));
    free(a);
    free(b);
}

/* 8: the same id pushed twice runs once; the second re-emits the result. */
TEST(duplicate_id_runs_once) {
    SETUP();
    const char *mark = wf_path("dup.mark");
    unlink(mark);
    wf_spawn(NULL, NULL, 0);
    char script[512];
    snprintf(script, sizeof script, "sleep:100 mark:%s", mark);
    wf_push("voxq:jobs", job("dup1", script));
    ASSERT_TRUE(wf_wait_state("dup1", "succeeded", 10000));
    wf_push("voxq:jobs", job("dup1", script));
    rf_sleep_ms(1500);
    ASSERT_EQ(rf_int("LLEN voxq:jobs"), 0);
    ASSERT_EQ(wf_proc_total(), 0);
    ASSERT_EQ(wf_count_lines(mark), 1);
    ASSERT_EQ(wf_field_int("dup1", "attempts"), 1);
}

/* 9: pushed again while running on another worker: re-delayed, later short-circuited. */
TEST(duplicate_while_running) {
    SETUP();
    const char *mark = wf_path("dup2.mark");
    unlink(mark);
    wf_spawn(NULL, NULL, 0);
    wf_spawn(NULL, NULL, 0);
    char script[512];
    snprintf(script, sizeof script, "sleep:1500 mark:%s", mark);
    wf_push("voxq:jobs", job("dup2", script));
    ASSERT_TRUE(wf_wait_state("dup2", "running", 5000));
    wf_push("voxq:jobs", job("dup2", script));
    ASSERT_TRUE(wf_wait_state("dup2", "succeeded", 10000));
    rf_sleep_ms(1500);
    ASSERT_EQ(rf_int("ZCARD voxq:delayed"), 0);
    ASSERT_EQ(rf_int("LLEN voxq:jobs"), 0);
    ASSERT_EQ(wf_proc_total(), 0);
    ASSERT_EQ(wf_count_lines(mark), 1);
}

/* 10: SIGKILL mid-job: the reaper requeues after the heartbeat expires; done once more. */
TEST(sigkill_mid_job_recovered) {
    SETUP();
    const char *mark = wf_path("kill.mark");
    unlink(mark);
    pid_t a = wf_spawn(NULL, NULL, 0);
    char script[512];
    snprintf(script, sizeof script, "mark:%s sleep:2000", mark);
    wf_push("voxq:jobs", job("k1", script));
    ASSERT_TRUE(wf_wait_state("k1", "running", 5000));
    kill(a, SIGKILL);
    ASSERT_EQ(wf_wait_exit(a, 2000), 128 + SIGKILL);
    wf_spawn(NULL, NULL, 0);
    ASSERT_TRUE(wf_wait_state("k1", "succeeded", 15000));
    ASSERT_EQ(wf_field_int("k1", "recoveries"), 1);
    ASSERT_EQ(wf_field_int("k1", "attempts"), 1);
    ASSERT_EQ(wf_count_lines(mark), 2);
    ASSERT_EQ(wf_proc_total(), 0);
    ASSERT_EQ(rf_int("SCARD voxq:workers"), 1);
}

/* 11: a job that kills its worker every time is dead after 3 recoveries; others flow. */
TEST(poison_job_dead_after_recoveries) {
    SETUP();
    wf_push("voxq:jobs", job("poison", "crash"));
    wf_push("voxq:jobs", job("fine", "sleep:10"));
    pid_t w = wf_spawn(NULL, NULL, 0);
    int64_t end = rf_now_ms() + 30000;
    int spawned = 1;
    while (rf_now_ms() < end && !wf_wait_state("poison", "failed", 100)) {
        if (!wf_alive(w)) {
            w = wf_spawn(NULL, NULL, 0);
            spawned++;
        }
    }
    ASSERT_TRUE(wf_wait_state("poison", "failed", 100));
    char *code = wf_field("poison", "error_code");
    ASSERT_STREQ(code, "poison");
    free(code);
    ASSERT_EQ(wf_field_int("poison", "recoveries"), 3);
    ASSERT_TRUE(wf_wait_state("fine", "succeeded", 10000));
    ASSERT_EQ(spawned, 4); /* three crashes, then a worker that lives */
    char *env = rf_str("LINDEX voxq:dead 0");
    ASSERT_CONTAINS(env, "poison");
    free(env);
}

/* 11 and 32 with a reply_to that names a key of another type (a hash): the terminal message is
 * skipped instead of failing the script half way, so the poison job still ends dead (the push
 * used to fail before the job left the dead worker's list: requeued forever) and a good job
 * still succeeds. */
TEST(reply_to_of_another_type) {
    SETUP();
    redisReply *r = rf_cmd("HSET not:alist f 1");
    freeReplyObject(r);
    wf_push("voxq:jobs", "{\"id\":\"poison2\",\"type\":\"synthesize\",\"reply_to\":"
                         "\"not:alist\",\"text\":\"[S1] crash\"}");
    wf_push("voxq:jobs", "{\"id\":\"fine2\",\"type\":\"synthesize\",\"reply_to\":"
                         "\"not:alist\",\"text\":\"[S1] sleep:10\"}");
    pid_t w = wf_spawn(NULL, NULL, 0);
    int64_t end = rf_now_ms() + 30000;
    int spawned = 1;
    while (rf_now_ms() < end && !wf_wait_state("poison2", "failed", 100)) {
        if (!wf_alive(w)) {
            w = wf_spawn(NULL, NULL, 0);
            spawned++;
        }
    }
    ASSERT_TRUE(wf_wait_state("poison2", "failed", 100));
    ASSERT_EQ(spawned, 4);
    ASSERT_TRUE(wf_wait_state("fine2", "succeeded", 10000));
    ASSERT_EQ(rf_int("HLEN not:alist"), 1); /* untouched */
    rf_sleep_ms(500);
    ASSERT_TRUE(wf_alive(w));
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 12: transient errors retry with growing delays until success, or die at max_attempts. */
TEST(transient_errors_retry) {
    SETUP();
    const char *mark = wf_path("retry.mark");
    unlink(mark);
    wf_spawn(NULL, NULL, 0);
    char script[512];
    snprintf(script, sizeof script, "mark:%s fail-until:3", mark);
    wf_push("voxq:jobs", job("t1", script));
    ASSERT_TRUE(wf_wait_state("t1", "succeeded", 15000));
    ASSERT_EQ(wf_field_int("t1", "attempts"), 3);
    ASSERT_EQ(wf_count_lines(mark), 3);
    snprintf(json_, sizeof json_, "{\"id\":\"t2\",\"type\":\"synthesize\",\"max_attempts\":2,"
             "\"text\":\"fail:transient\"}");
    wf_push("voxq:jobs", json_);
    ASSERT_TRUE(wf_wait_state("t2", "failed", 15000));
    ASSERT_EQ(wf_field_int("t2", "attempts"), 2);
    char *env = rf_str("LINDEX voxq:dead 0");
    ASSERT_CONTAINS(env, "engine_transient");
    free(env);
}

/* 13: a permanent error is dead at once with attempts = 1. */
TEST(permanent_error_dead_at_once) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", job("p1", "fail:permanent"));
    ASSERT_TRUE(wf_wait_state("p1", "failed", 10000));
    ASSERT_EQ(wf_field_int("p1", "attempts"), 1);
    ASSERT_EQ(rf_int("ZCARD voxq:delayed"), 0);
    char *env = rf_str("LINDEX voxq:dead 0");
    ASSERT_CONTAINS(env, "engine_permanent");
    free(env);
}

/* 14: a hung engine stops the heartbeat; the job is recovered elsewhere; the hung worker exits. */
TEST(hung_engine_recovered) {
    SETUP();
    const char *flag = wf_path("hang.flag");
    unlink(flag);
    static const char *const env[] = {"VOXQ_STALL_S=1", NULL};
    pid_t a = wf_spawn(env, NULL, 0);
    char script[512];
    snprintf(script, sizeof script, "hang-once:%s", flag);
    wf_push("voxq:jobs", job("h1", script));
    ASSERT_TRUE(wf_wait_state("h1", "running", 5000));
    pid_t b = wf_spawn(NULL, NULL, 0);
    ASSERT_TRUE(wf_wait_state("h1", "succeeded", 15000));
    ASSERT_EQ(wf_wait_exit(a, 10000), 1);
    ASSERT_TRUE(wf_alive(b));
    ASSERT_EQ(wf_field_int("h1", "recoveries"), 1);
}

/* 15: SIGTERM while idle: exit 0 within the block timeout + 1 s; nothing left behind. */
TEST(sigterm_idle) {
    SETUP();
    pid_t a = wf_spawn(NULL, NULL, 0);
    rf_sleep_ms(1200);
    ASSERT_EQ(rf_int("SCARD voxq:workers"), 1);
    int64_t t0 = rf_now_ms();
    kill(a, SIGTERM);
    ASSERT_EQ(wf_wait_exit(a, 5000), 0);
    /* The contract's bound (block timeout 1 s + 1 s), with a second of slack for slow CI. */
    ASSERT_TRUE(rf_now_ms() - t0 < 3000);
    ASSERT_EQ(rf_int("SCARD voxq:workers"), 0);
    ASSERT_EQ(wf_proc_total(), 0);
    redisReply *r = rf_cmd("KEYS voxq:hb:*");
    ASSERT_EQ(r->elements, 0);
    freeReplyObject(r);
}

/* 16: SIGTERM mid-job that ends within the drain: succeeded, exit 0. */
TEST(sigterm_drains) {
    SETUP();
    pid_t a = wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", job("d1", "sleep:1000"));
    ASSERT_TRUE(wf_wait_state("d1", "running", 5000));
    kill(a, SIGTERM);
    ASSERT_EQ(wf_wait_exit(a, 8000), 0);
    ASSERT_TRUE(wf_wait_state("d1", "succeeded", 100));
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 17: SIGTERM mid-job past the drain: requeued with attempts unchanged; another worker ends it. */
TEST(sigterm_past_drain_requeues) {
    SETUP();
    static const char *const env[] = {"VOXQ_DRAIN_S=1", NULL};
    pid_t a = wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs", job("d2", "sleep:4000"));
    ASSERT_TRUE(wf_wait_state("d2", "running", 5000));
    kill(a, SIGTERM);
    ASSERT_EQ(wf_wait_exit(a, 8000), 0);
    ASSERT_TRUE(wf_wait_state("d2", "queued", 100));
    ASSERT_EQ(wf_field_int("d2", "attempts"), 0);
    ASSERT_EQ(rf_int("LLEN voxq:jobs"), 1);
    ASSERT_EQ(wf_proc_total(), 0);
    wf_spawn(NULL, NULL, 0);
    ASSERT_TRUE(wf_wait_state("d2", "succeeded", 10000));
    ASSERT_EQ(wf_field_int("d2", "attempts"), 1);
}

/* 18 (idle) and 21: Redis restarted, or down at start: the worker reconnects and serves. */
TEST(redis_restart_idle_and_down_at_start) {
    SETUP();
    pid_t a = wf_spawn(NULL, NULL, 0);
    rf_sleep_ms(800);
    rf_stop(SIGTERM);
    rf_sleep_ms(700);
    ASSERT_OK(rf_restart());
    wf_push("voxq:jobs", job("r1", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("r1", "succeeded", 15000));
    ASSERT_TRUE(wf_alive(a));
    /* Down at start: a new worker waits quietly, then serves. */
    wf_kill_all();
    rf_stop(SIGKILL);
    char log[400];
    wf_spawn(NULL, log, sizeof log);
    rf_sleep_ms(2500);
    ASSERT_OK(rf_restart());
    wf_push("voxq:jobs", job("r2", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("r2", "succeeded", 15000));
    ASSERT_TRUE(wf_file_contains(log, "connection refused") ||
                wf_file_contains(log, "Connection refused"));
}

/* NOSCRIPT (a Redis that forgot the scripts, e.g. SCRIPT FLUSH or a restart between load and
 * use) is answered with EVAL of the source. */
TEST(noscript_handled) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", job("ns0", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("ns0", "succeeded", 10000));
    redisReply *r = rf_cmd("SCRIPT FLUSH");
    freeReplyObject(r);
    wf_push("voxq:jobs", job("ns1", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("ns1", "succeeded", 10000));
}

/* 18 (busy), 23: Redis killed mid-job (AOF on): after the restart the job's ack is replayed
 * once; no lost or double result. */
TEST(redis_killed_while_busy) {
    SETUP();
    /* Restart Redis with AOF (what production runs) so the crash keeps the queue state. */
    rf_stop(SIGTERM);
    rf_aof_ = 1;
    ASSERT_OK(rf_restart());
    const char *mark = wf_path("busy.mark");
    unlink(mark);
    wf_spawn(NULL, NULL, 0);
    char script[512];
    snprintf(script, sizeof script, "mark:%s sleep:1500", mark);
    snprintf(json_, sizeof json_, "{\"id\":\"rb1\",\"type\":\"synthesize\",\"reply_to\":"
             "\"rb1:reply\",\"text\":\"%s\"}", script);
    wf_push("voxq:jobs", json_);
    ASSERT_TRUE(wf_wait_state("rb1", "running", 5000));
    rf_sleep_ms(300);
    rf_stop(SIGKILL);
    rf_sleep_ms(1500); /* the job finishes while Redis is down: its ack waits */
    ASSERT_OK(rf_restart());
    ASSERT_TRUE(wf_wait_state("rb1", "succeeded", 15000));
    rf_sleep_ms(500);
    ASSERT_EQ(rf_int("LLEN rb1:reply"), 1);
    ASSERT_EQ(wf_count_lines(mark), 1);
    ASSERT_EQ(wf_proc_total(), 0);
    wf_kill_all();
    rf_stop(SIGTERM);
    rf_aof_ = 0;
    ASSERT_OK(rf_restart());
}

/* 19: the fetch connection killed (as by a TCP RST): detected and re-established. */
TEST(fetch_connection_killed) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    rf_sleep_ms(1200);
    /* Kill every client blocked in BLMOVE, i.e. the fetch connection. */
    redisReply *r = rf_cmd("CLIENT LIST");
    ASSERT_TRUE(r && r->type == REDIS_REPLY_STRING);
    int killed = 0;
    for (char *line = strtok(r->str, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strstr(line, "cmd=blmove") && !strstr(line, "cmd=lmove")) continue;
        long long id = atoll(strstr(line, "id=") + 3);
        killed += rf_int("CLIENT KILL ID %lld", id) == 1;
    }
    freeReplyObject(r);
    ASSERT_TRUE(killed >= 1);
    int64_t t0 = rf_now_ms();
    wf_push("voxq:jobs", job("fk1", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("fk1", "succeeded", 10000));
    /* Reconnected within the contract's block timeout + 3 s (+ slack for slow CI). */
    ASSERT_TRUE(rf_now_ms() - t0 < 1000 + 3000 + 2000);
}

/* 24: a worker paused past its lease loses the job; its late ack writes nothing. */
TEST(stale_lease_never_writes) {
    SETUP();
    char loga[400];
    pid_t a = wf_spawn(NULL, loga, sizeof loga);
    wf_push("voxq:jobs", job("sl1", "sleep:1500"));
    ASSERT_TRUE(wf_wait_state("sl1", "running", 5000));
    char *owner = wf_field("sl1", "worker");
    kill(a, SIGSTOP);
    pid_t b = wf_spawn(NULL, NULL, 0);
    ASSERT_TRUE(wf_wait_state("sl1", "succeeded", 15000));
    char *winner = wf_field("sl1", "worker");
    ASSERT_TRUE(owner && winner && strcmp(owner, winner) != 0);
    kill(a, SIGCONT);
    rf_sleep_ms(2500);
    ASSERT_TRUE(wf_file_contains(loga, "lease lost"));
    char *after = wf_field("sl1", "worker");
    ASSERT_STREQ(after, winner);
    ASSERT_EQ(wf_field_int("sl1", "attempts"), 1);
    free(owner);
    free(winner);
    free(after);
    (void)b;
}

/* 25: cancel before start -> never run; mid-run -> stops, no retry. */
TEST(cancel_before_and_during) {
    SETUP();
    const char *mark = wf_path("cancel.mark");
    unlink(mark);
    redisReply *r = rf_cmd("SET voxq:cancel:c1 1 EX 86400");
    freeReplyObject(r);
    wf_spawn(NULL, NULL, 0);
    char script[512];
    snprintf(script, sizeof script, "mark:%s sleep:100", mark);
    wf_push("voxq:jobs", job("c1", script));
    ASSERT_TRUE(wf_wait_state("c1", "cancelled", 5000));
    ASSERT_EQ(wf_count_lines(mark), 0);
    snprintf(script, sizeof script, "mark:%s sleep:10000", mark);
    wf_push("voxq:jobs", job("c2", script));
    ASSERT_TRUE(wf_wait_state("c2", "running", 5000));
    /* Progress is published while it runs (at most once a second). */
    rf_sleep_ms(1300);
    char *progress = wf_field("c2", "progress");
    ASSERT_TRUE(progress && atof(progress) > 0 && atof(progress) < 1);
    free(progress);
    int64_t t0 = rf_now_ms();
    r = rf_cmd("SET voxq:cancel:c2 1 EX 86400");
    freeReplyObject(r);
    r = rf_cmd("PUBLISH voxq:ev:cancel c2");
    freeReplyObject(r);
    ASSERT_TRUE(wf_wait_state("c2", "cancelled", 5000));
    /* Stopped at a step boundary, well before the 10 s the job would have run. */
    ASSERT_TRUE(rf_now_ms() - t0 < 5000);
    rf_sleep_ms(500);
    ASSERT_EQ(rf_int("ZCARD voxq:delayed"), 0);
    ASSERT_EQ(wf_count_lines(mark), 1);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 25 and the re-push rule: a cancel stays in force for the key's lifetime (a day), so every
 * copy of the job claimed meanwhile, queued before the cancel or pushed again after it, ends
 * cancelled and never runs. A producer that wants the id run again deletes the key first. */
TEST(cancel_then_repush_runs) {
    SETUP();
    const char *mark = wf_path("repush.mark");
    unlink(mark);
    char one[512], two[512];
    snprintf(one, sizeof one, "{\"id\":\"rp1\",\"type\":\"synthesize\",\"reply_to\":\"rp:1\","
             "\"text\":\"[S1] mark:%s sleep:10\"}", mark);
    /* Two copies queued, then cancelled before start: neither runs. */
    wf_push("voxq:jobs", one);
    wf_push("voxq:jobs", one);
    redisReply *r = rf_cmd("SET voxq:cancel:rp1 1 EX 86400");
    freeReplyObject(r);
    wf_spawn(NULL, NULL, 0);
    ASSERT_TRUE(wait_len("rp:1", 2, 5000));
    ASSERT_TRUE(wf_wait_state("rp1", "cancelled", 100));
    /* Pushed again: cancelled again, still not run. */
    wf_push("voxq:jobs", one);
    ASSERT_TRUE(wait_len("rp:1", 3, 5000));
    ASSERT_TRUE(wf_wait_state("rp1", "cancelled", 100));
    ASSERT_EQ(wf_count_lines(mark), 0);
    ASSERT_EQ(rf_int("EXISTS voxq:cancel:rp1"), 1);
    /* The producer deletes the key: the id runs afresh. */
    r = rf_cmd("DEL voxq:cancel:rp1");
    freeReplyObject(r);
    wf_push("voxq:jobs", one);
    ASSERT_TRUE(wf_wait_state("rp1", "succeeded", 5000));
    ASSERT_EQ(wf_count_lines(mark), 1);
    ASSERT_EQ(wf_field_int("rp1", "attempts"), 1);
    /* Cancelled mid-run, then pushed again: cancelled, not run again until the key is gone. */
    snprintf(two, sizeof two, "{\"id\":\"rp2\",\"type\":\"synthesize\",\"reply_to\":\"rp:2\","
             "\"text\":\"[S1] mark:%s sleep:10000\"}", mark);
    wf_push("voxq:jobs", two);
    ASSERT_TRUE(wf_wait_state("rp2", "running", 5000));
    r = rf_cmd("SET voxq:cancel:rp2 1 EX 86400");
    freeReplyObject(r);
    ASSERT_TRUE(wf_wait_state("rp2", "cancelled", 5000));
    ASSERT_TRUE(wait_len("rp:2", 1, 1000));
    snprintf(two, sizeof two, "{\"id\":\"rp2\",\"type\":\"synthesize\",\"reply_to\":\"rp:2\","
             "\"text\":\"[S1] mark:%s sleep:10\"}", mark);
    wf_push("voxq:jobs", two);
    ASSERT_TRUE(wait_len("rp:2", 2, 5000));
    ASSERT_TRUE(wf_wait_state("rp2", "cancelled", 100));
    ASSERT_EQ(wf_count_lines(mark), 2);
    r = rf_cmd("DEL voxq:cancel:rp2");
    freeReplyObject(r);
    wf_push("voxq:jobs", two);
    ASSERT_TRUE(wf_wait_state("rp2", "succeeded", 5000));
    ASSERT_EQ(wf_count_lines(mark), 3);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 25 with a copy of a running job: while another live worker runs the job and its cancel is
 * pending, a copy is dropped, and the record left to the running worker, which cancels at its
 * next heartbeat. Marking the copy cancelled would overwrite the record under that worker's
 * run, whose own cancel would then find no running job and leave its processing list behind.
 * The running worker is stopped (SIGSTOP) for well under its lease while the copy arrives,
 * so it cannot act on the cancel first. */
TEST(cancel_drops_copy_of_running_job) {
    SETUP();
    const char *mark = wf_path("dropcopy.mark");
    unlink(mark);
    pid_t a = wf_spawn(NULL, NULL, 0);
    snprintf(json_, sizeof json_, "{\"id\":\"cd1\",\"type\":\"synthesize\",\"reply_to\":"
             "\"cd:r\",\"text\":\"[S1] mark:%s sleep:10000\"}", mark);
    wf_push("voxq:jobs", json_);
    ASSERT_TRUE(wf_wait_state("cd1", "running", 5000));
    char *owner = wf_field("cd1", "worker");
    char logb[400];
    wf_spawn(NULL, logb, sizeof logb);
    int64_t end = rf_now_ms() + 5000;
    while (rf_int("SCARD voxq:workers") < 2 && rf_now_ms() < end) rf_sleep_ms(25);
    ASSERT_EQ(rf_int("SCARD voxq:workers"), 2);
    kill(a, SIGSTOP);
    redisReply *r = rf_cmd("SET voxq:cancel:cd1 1 EX 86400");
    freeReplyObject(r);
    wf_push("voxq:jobs", json_); /* the copy */
    end = rf_now_ms() + 1000;
    while (!wf_file_contains(logb, "dropped") && rf_now_ms() < end) rf_sleep_ms(10);
    int dropped = wf_file_contains(logb, "dropped");
    char *state = wf_field("cd1", "state"), *worker = wf_field("cd1", "worker");
    long long replies = rf_int("LLEN cd:r"), queued = rf_int("LLEN voxq:jobs");
    kill(a, SIGCONT);
    ASSERT_STREQ(state, "running");
    ASSERT_STREQ(worker, owner);
    ASSERT_EQ(replies, 0);
    ASSERT_EQ(queued, 0);
    ASSERT_TRUE(dropped);
    free(state);
    free(worker);
    ASSERT_TRUE(wf_wait_state("cd1", "cancelled", 5000));
    worker = wf_field("cd1", "worker");
    ASSERT_STREQ(worker, owner);
    free(worker);
    free(owner);
    ASSERT_TRUE(wait_len("cd:r", 1, 1000));
    rf_sleep_ms(300);
    ASSERT_EQ(rf_int("LLEN cd:r"), 1);
    ASSERT_EQ(rf_int("ZCARD voxq:delayed"), 0);
    ASSERT_EQ(wf_count_lines(mark), 1);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 26: a cancel whose PUBLISH is missed (sub connection down) is caught by the heartbeat. */
TEST(cancel_without_pubsub) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", job("c3", "sleep:10000"));
    ASSERT_TRUE(wf_wait_state("c3", "running", 5000));
    long long killed = rf_int("CLIENT KILL TYPE pubsub");
    ASSERT_TRUE(killed >= 1);
    redisReply *r = rf_cmd("SET voxq:cancel:c3 1 EX 86400");
    freeReplyObject(r);
    ASSERT_TRUE(wf_wait_state("c3", "cancelled", 3000));
}

/* 32: reply_to gets exactly one terminal message, expiring within an hour. */
TEST(reply_to_one_message) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    snprintf(json_, sizeof json_, "{\"id\":\"rt1\",\"type\":\"synthesize\",\"reply_to\":"
             "\"my:reply\",\"text\":\"fail-until:2\"}");
    wf_push("voxq:jobs", json_);
    ASSERT_TRUE(wf_wait_state("rt1", "succeeded", 10000));
    rf_sleep_ms(300);
    ASSERT_EQ(rf_int("LLEN my:reply"), 1);
    long long ttl = rf_int("TTL my:reply");
    ASSERT_TRUE(ttl > 3500 && ttl <= 3600);
    char *msg = rf_str("LINDEX my:reply 0");
    ASSERT_CONTAINS(msg, "\"state\":\"succeeded\"");
    ASSERT_CONTAINS(msg, "\"output_path\"");
    free(msg);
}

/* 32 for rejected jobs: bad input is a terminal state too, so reply_to gets one message naming
 * the problem, with or without a usable id (the field that failed is not reply_to). */
TEST(reply_to_on_rejection) {
    SETUP();
    pid_t w = wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs",
            "{\"id\":\"rj1\",\"type\":\"synthesize\",\"reply_to\":\"rj:1\",\"text\":5}");
    wf_push("voxq:jobs", "{\"id\":\"rj2\",\"reply_to\":\"rj:2\",\"text\":\"t\"}");
    wf_push("voxq:jobs", "{\"type\":\"synthesize\",\"reply_to\":\"rj:3\",\"text\":\"t\","
                         "\"top_p\":7}");
    wf_push("voxq:jobs", "{\"id\":7,\"type\":\"synthesize\",\"reply_to\":\"rj:4\",\"text\":\"t\"}");
    wf_push("voxq:jobs", job("rj-after", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("rj-after", "succeeded", 10000));
    ASSERT_TRUE(wf_wait_state("rj1", "rejected", 1000));
    rf_sleep_ms(200);
    static const char *const want[4][2] = {{"rj:1", "'text' must be a string"},
                                           {"rj:2", "'type' is required"},
                                           {"rj:3", "top_p"},
                                           {"rj:4", "'id' must be a string"}};
    for (int i = 0; i < 4; i++) {
        ASSERT_EQ(rf_int("LLEN %s", want[i][0]), 1);
        long long ttl = rf_int("TTL %s", want[i][0]);
        ASSERT_TRUE(ttl > 3500 && ttl <= 3600);
        char *msg = rf_str("LINDEX %s 0", want[i][0]);
        ASSERT_CONTAINS(msg, "\"state\":\"rejected\"");
        ASSERT_CONTAINS(msg, want[i][1]);
        if (i < 2) ASSERT_CONTAINS(msg, i ? "\"id\":\"rj2\"" : "\"id\":\"rj1\"");
        free(msg);
    }
    ASSERT_TRUE(wf_alive(w));
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 8 with a malformed copy: a bad payload reusing the id of a running job is dead-lettered and
 * answered on its own reply_to, and leaves the running job's record alone, so that job's ack
 * still finds its lease and the job succeeds. */
TEST(malformed_copy_of_running_job) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", job("live1", "sleep:1500 audio:10"));
    ASSERT_TRUE(wf_wait_state("live1", "running", 5000));
    wf_push("voxq:jobs",
            "{\"id\":\"live1\",\"type\":\"synthesize\",\"reply_to\":\"copy:r\",\"text\":5}");
    ASSERT_TRUE(wf_wait_state("live1", "succeeded", 10000));
    /* With one job at a time the copy is fetched only after live1's ack: wait for its answer. */
    int64_t end = rf_now_ms() + 5000;
    while (rf_int("LLEN copy:r") == 0 && rf_now_ms() < end) rf_sleep_ms(25);
    char *msg = rf_str("LINDEX copy:r 0");
    ASSERT_CONTAINS(msg, "\"state\":\"rejected\"");
    ASSERT_CONTAINS(msg, "\"id\":\"live1\"");
    free(msg);
    ASSERT_EQ(rf_int("LLEN copy:r"), 1);
    ASSERT_EQ(rf_int("LLEN voxq:dead"), 1);
    char *out = wf_field("live1", "output_path");
    ASSERT_TRUE(out && out[0]);
    free(out);
}

/* A worker holding more jobs than a fixed argument array had room for (the heartbeat carries one
 * argument a held job): every job is still acknowledged and the heartbeat keeps the lease. */
TEST(many_held_jobs_heartbeat) {
    SETUP();
    char id[32];
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "m%d", i);
        wf_push("voxq:jobs", job(id, "sleep:30 audio:10"));
    }
    const char *env[] = {"VOXQ_CONCURRENCY=100", NULL};
    pid_t w = wf_spawn(env, NULL, 0);
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "m%d", i);
        ASSERT_TRUE(wf_wait_state(id, "succeeded", 30000));
        ASSERT_EQ(wf_field_int(id, "attempts"), 1); /* never recovered as if the worker died */
    }
    ASSERT_TRUE(wf_alive(w));
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 33: a hi job behind 100 normal ones starts within one block timeout. */
TEST(hi_priority_jumps_queue) {
    SETUP();
    char id[32];
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "n%d", i);
        wf_push("voxq:jobs", job(id, "sleep:20 audio:10"));
    }
    snprintf(json_, sizeof json_, "{\"id\":\"hi1\",\"type\":\"synthesize\",\"priority\":\"hi\","
             "\"text\":\"audio:10\"}");
    wf_push("voxq:jobs:hi", json_);
    wf_spawn(NULL, NULL, 0);
    ASSERT_TRUE(wf_wait_state("hi1", "succeeded", 10000));
    long long hi_done = wf_field_int("hi1", "finished_at");
    ASSERT_TRUE(wf_wait_state("n99", "succeeded", 30000));
    int before = 0;
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof id, "n%d", i);
        before += wf_field_int(id, "finished_at") < hi_done;
    }
    ASSERT_TRUE(before <= 2);
}

/* 34 (reduced; the 2,000-job soak is test_worker_soak): a job without id gets one, reported in
 * the hash, and keeps it through a retry. */
TEST(job_without_id_keeps_assigned_id) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs",
            "{\"type\":\"synthesize\",\"reply_to\":\"noid:r\",\"text\":\"fail-until:2\"}");
    redisReply *r = NULL;
    struct timeval tv = {10, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", rf_port_, tv);
    redisSetTimeout(c, tv);
    r = redisCommand(c, "BLPOP noid:r 10");
    ASSERT_TRUE(r && r->type == REDIS_REPLY_ARRAY);
    ASSERT_CONTAINS(r->element[1]->str, "\"state\":\"succeeded\"");
    ASSERT_CONTAINS(r->element[1]->str, "\"attempts\":\"2\"");
    freeReplyObject(r);
    redisFree(c);
}

/* 14 (timeout_s): a job past its timeout is cancelled cooperatively and retried. */
TEST(job_timeout) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    wf_push("voxq:jobs", "{\"id\":\"to1\",\"type\":\"synthesize\",\"timeout_s\":0.5,"
                         "\"max_attempts\":2,\"text\":\"sleep:5000\"}");
    ASSERT_TRUE(wf_wait_state("to1", "failed", 15000));
    char *code = wf_field("to1", "error_code");
    ASSERT_STREQ(code, "timeout");
    free(code);
    ASSERT_EQ(wf_field_int("to1", "attempts"), 2);
}

/* One HTTP GET to 127.0.0.1:port; returns the status and copies the body. */
static int http_get(int port, const char *path, char *body, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    static char buf[1 << 16];
    size_t len = 0;
    ssize_t got;
    while ((got = read(fd, buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)got;
    close(fd);
    buf[len] = '\0';
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(body, cap, "%s", b ? b + 4 : "");
    return len > 12 ? atoi(buf + 9) : -1;
}

/* /healthz and /metrics answer on the configured address. */
TEST(health_and_metrics) {
    SETUP();
    int port = rf_free_port();
    char addr[64];
    snprintf(addr, sizeof addr, "VOXQ_METRICS_ADDR=127.0.0.1:%d", port);
    const char *env[] = {addr, NULL};
    wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs", job("m1", "sleep:10 audio:1000"));
    ASSERT_TRUE(wf_wait_state("m1", "succeeded", 10000));
    static char body[1 << 16];
    int64_t end = rf_now_ms() + 5000;
    int status = -1;
    while (rf_now_ms() < end && (status = http_get(port, "/healthz", body, sizeof body)) != 200)
        rf_sleep_ms(100);
    ASSERT_EQ(status, 200);
    ASSERT_CONTAINS(body, "\"ok\":true");
    ASSERT_EQ(http_get(port, "/metrics", body, sizeof body), 200);
    ASSERT_CONTAINS(body, "voxq_jobs_total{state=\"succeeded\"} 1");
    ASSERT_CONTAINS(body, "voxq_queue_depth{queue=\"normal\"}");
    ASSERT_CONTAINS(body, "voxq_job_duration_seconds_count 1");
    ASSERT_CONTAINS(body, "voxq_realtime_factor_bucket");
    ASSERT_CONTAINS(body, "voxq_engine_memory_bytes");
    ASSERT_EQ(http_get(port, "/nope", body, sizeof body), 404);
    /* Redis gone: not healthy. */
    rf_stop(SIGKILL);
    rf_sleep_ms(500);
    ASSERT_EQ(http_get(port, "/healthz", body, sizeof body), 503);
    ASSERT_OK(rf_restart());
}

/* `voxq enqueue` and `voxq wait` for people without redis-cli. */
TEST(enqueue_and_wait_commands) {
    SETUP();
    wf_spawn(NULL, NULL, 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "VOXQ_REDIS_URL=%s %s/voxq enqueue --text 'sleep:10' --id cli1 "
             ">/dev/null && VOXQ_REDIS_URL=%s %s/voxq wait cli1 --timeout 10 > %s",
             rf_url_, VOXQ_BINARY_DIR, rf_url_, VOXQ_BINARY_DIR, wf_path("wait.out"));
    int st = system(cmd);
    ASSERT_EQ(WEXITSTATUS(st), 0);
    ASSERT_TRUE(wf_file_contains(wf_path("wait.out"), "\"state\":\"succeeded\""));
    /* A job that fails: wait exits 1. Bad input: enqueue exits 2 before pushing. */
    snprintf(cmd, sizeof cmd, "VOXQ_REDIS_URL=%s %s/voxq enqueue --text 'fail:permanent' "
             "--id cli2 >/dev/null && VOXQ_REDIS_URL=%s %s/voxq wait cli2 --timeout 10 "
             ">/dev/null", rf_url_, VOXQ_BINARY_DIR, rf_url_, VOXQ_BINARY_DIR);
    st = system(cmd);
    ASSERT_EQ(WEXITSTATUS(st), 1);
    snprintf(cmd, sizeof cmd, "VOXQ_REDIS_URL=%s %s/voxq enqueue --text 'x' --output ../x.wav "
             "2>/dev/null", rf_url_, VOXQ_BINARY_DIR);
    st = system(cmd);
    ASSERT_EQ(WEXITSTATUS(st), 2);
}

/* 22: a Redis older than 6.2 (no BLMOVE) is refused with one clear line. A scripted server
 * answers INFO with an old version. */
TEST(old_redis_refused) {
    SETUP();
    int port = rf_free_port();
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(ls, (struct sockaddr *)&a, sizeof a), 0);
    ASSERT_EQ(listen(ls, 8), 0);
    pid_t srv = fork();
    if (srv == 0) {
        /* Every connection: INFO -> an old version; anything else -> +OK. */
        for (;;) {
            int c = accept(ls, NULL, NULL);
            if (c < 0) _exit(0);
            if (fork() == 0) {
                char buf[4096];
                ssize_t n;
                while ((n = read(c, buf, sizeof buf - 1)) > 0) {
                    buf[n] = '\0';
                    const char *info = "$38\r\nredis_version:6.0.16\r\naof_enabled:1\r\n\r\n";
                    const char *out = strstr(buf, "INFO") ? info : "+OK\r\n";
                    if (write(c, out, strlen(out)) < 0) break;
                }
                _exit(0);
            }
            close(c);
        }
    }
    close(ls);
    char url[80], log[400];
    snprintf(url, sizeof url, "VOXQ_REDIS_URL=redis://127.0.0.1:%d", port);
    const char *env[] = {url, NULL};
    pid_t w = wf_spawn(env, log, sizeof log);
    int code = wf_wait_exit(w, 10000);
    kill(srv, SIGKILL);
    waitpid(srv, NULL, 0);
    ASSERT_EQ(code, 1);
    ASSERT_TRUE(wf_file_contains(log, "needs Redis >= 6.2"));
}

/* 20: a blackholed Redis (the server frozen with SIGSTOP: connections stay open, nothing
 * answers) trips the watchdogs; after it heals the job's result is written exactly once. */
TEST(blackholed_redis_heals) {
    SETUP();
    static const char *const env[] = {"VOXQ_COMMAND_TIMEOUT_MS=1500", NULL};
    char log[400];
    wf_spawn(env, log, sizeof log);
    snprintf(json_, sizeof json_, "{\"id\":\"bh1\",\"type\":\"synthesize\",\"reply_to\":"
             "\"bh1:reply\",\"text\":\"sleep:800\"}");
    wf_push("voxq:jobs", json_);
    ASSERT_TRUE(wf_wait_state("bh1", "running", 5000));
    kill(rf_pid_, SIGSTOP);
    rf_sleep_ms(6000); /* the job ends meanwhile; its ack cannot get through */
    kill(rf_pid_, SIGCONT);
    ASSERT_TRUE(wf_wait_state("bh1", "succeeded", 20000));
    rf_sleep_ms(1000);
    ASSERT_EQ(rf_int("LLEN bh1:reply"), 1);
    ASSERT_EQ(wf_field_int("bh1", "attempts"), 1);
    ASSERT_TRUE(wf_file_contains(log, "watchdog"));
    wf_push("voxq:jobs", job("bh2", "sleep:10"));
    ASSERT_TRUE(wf_wait_state("bh2", "succeeded", 10000));
    ASSERT_EQ(wf_proc_total(), 0);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
