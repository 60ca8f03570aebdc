/* test_job.c - the job schema: what is accepted, what is rejected with which code and field
 * (spec/queue.md §6 cases 2-7 at the parser level). */
#include "queue/queue.h"
#include "test.h"

static int parse(const char *json, queue_job *job, queue_job_error *err) {
    return queue_job_parse(json, strlen(json), NULL, job, err);
}

/* Expects a rejection with `code`, and a message and field naming `field`. */
#define EXPECT_REJECT(json, code_, field_)                                                         \
    do {                                                                                           \
        queue_job job_;                                                                            \
        queue_job_error err_;                                                                      \
        ASSERT_EQ(parse(json, &job_, &err_), -1);                                                  \
        ASSERT_STREQ(err_.code, code_);                                                            \
        ASSERT_STREQ(err_.field, field_);                                                          \
        if ((field_)[0]) ASSERT_CONTAINS(err_.message, field_);                                    \
    } while (0)

TEST(valid_synthesize_defaults) {
    queue_job job;
    queue_job_error err;
    ASSERT_OK(parse("{\"id\":\"a1\",\"type\":\"synthesize\",\"text\":\"[S1] Hello.\"}", &job,
                    &err));
    ASSERT_EQ(job.type, QUEUE_JOB_SYNTHESIZE);
    ASSERT_STREQ(job.id, "a1");
    ASSERT_EQ(job.id_assigned, 0);
    ASSERT_STREQ(job.text, "[S1] Hello.");
    ASSERT_EQ(job.max_attempts, 3);
    ASSERT_EQ(job.result_ttl_s, 86400);
    ASSERT_STREQ(job.format, "wav");
    ASSERT_STREQ(job.output, "a1.wav");
    ASSERT_NEAR(job.cfg_scale, 3.0, 0);
    ASSERT_NEAR(job.temperature, 1.2, 1e-12);
    ASSERT_NEAR(job.top_p, 0.95, 1e-12);
    ASSERT_EQ(job.cfg_filter_top_k, 45);
    ASSERT_EQ(job.priority_hi, 0);
    queue_job_free(&job);
}

TEST(valid_synthesize_all_fields) {
    queue_job job;
    queue_job_error err;
    ASSERT_OK(parse("{\"v\":1,\"id\":\"x:y.z-1_2\",\"type\":\"synthesize\",\"text\":\"h\xc3\xa9\","
                    "\"format\":\"flac\",\"seed\":42,\"cfg_scale\":2.5,\"temperature\":1.0,"
                    "\"top_p\":0.9,\"cfg_filter_top_k\":30,\"max_seconds\":5,\"output\":"
                    "\"sub/dir/out.flac\",\"priority\":\"hi\",\"reply_to\":\"r:1\","
                    "\"max_attempts\":5,\"timeout_s\":30,\"result_ttl_s\":60,\"extra\":1}",
                    &job, &err));
    ASSERT_STREQ(job.output, "sub/dir/out.flac");
    ASSERT_EQ(job.seed, 42);
    ASSERT_EQ(job.has_seed, 1);
    ASSERT_EQ(job.priority_hi, 1);
    ASSERT_STREQ(job.reply_to, "r:1");
    ASSERT_EQ(job.max_attempts, 5);
    ASSERT_EQ(job.result_ttl_s, 60);
    ASSERT_STREQ(job.ignored, "extra");
    queue_job_free(&job);
}

/* The default output is the id made a file name, one-to-one: ids that differ only where the
 * escaping works (':' against '_', a leading '.') must not write the same file. */
TEST(default_output_escapes_id) {
    static const char *const cases[][2] = {
        {"a:b", "a_-b.ogg"},   {"a_b", "a__b.ogg"},    {"a-b", "a-b.ogg"},
        {"a_-b", "a__-b.ogg"}, {"a:_b", "a_-__b.ogg"}, {".x", "_.x.ogg"},
        {"x.y", "x.y.ogg"},    {"_.x", "__.x.ogg"},    {"quant:dia:int8", "quant_-dia_-int8.ogg"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"id\":\"%s\",\"type\":\"synthesize\",\"text\":\"t\","
                 "\"format\":\"ogg\"}", cases[i][0]);
        queue_job job;
        queue_job_error err;
        ASSERT_OK(parse(json, &job, &err));
        ASSERT_STREQ(job.output, cases[i][1]);
        ASSERT_TRUE(queue_path_safe(job.output));
        queue_job_free(&job);
    }
    /* 128 ':' would need 256 bytes of name: too long for a file, so the job must name one. */
    char json[512], id[129];
    memset(id, ':', 128);
    id[128] = '\0';
    snprintf(json, sizeof json, "{\"id\":\"%s\",\"type\":\"synthesize\",\"text\":\"t\"}", id);
    EXPECT_REJECT(json, "invalid_field", "output");
    snprintf(json, sizeof json, "{\"id\":\"%s\",\"type\":\"synthesize\",\"text\":\"t\","
             "\"output\":\"x.wav\"}", id);
    queue_job job;
    queue_job_error err;
    ASSERT_OK(parse(json, &job, &err));
    queue_job_free(&job);
}

TEST(quantize) {
    queue_job job;
    queue_job_error err;
    ASSERT_OK(parse("{\"id\":\"q\",\"type\":\"quantize\",\"model\":\"dia-1.6b\","
                    "\"method\":\"int8\"}", &job, &err));
    ASSERT_EQ(job.type, QUEUE_JOB_QUANTIZE);
    ASSERT_STREQ(job.source, "original");
    ASSERT_EQ(job.force, 0);
    queue_job_free(&job);
    EXPECT_REJECT("{\"id\":\"q\",\"type\":\"quantize\"}", "missing_field", "method");
    EXPECT_REJECT("{\"id\":\"q\",\"type\":\"quantize\",\"method\":\"int3\"}", "invalid_field",
                  "method");
    EXPECT_REJECT("{\"id\":\"q\",\"type\":\"quantize\",\"method\":\"int8\",\"force\":1}",
                  "invalid_field", "force");
    EXPECT_REJECT("{\"id\":\"q\",\"type\":\"quantize\",\"method\":\"int8\",\"model\":\"../x\"}",
                  "invalid_field", "model");
    /* A bad source is named as such, also beside a good model; only "original" is quantized. */
    EXPECT_REJECT("{\"id\":\"q\",\"type\":\"quantize\",\"method\":\"int8\",\"model\":\"m\","
                  "\"source\":\"../x\"}", "invalid_field", "source");
    EXPECT_REJECT("{\"id\":\"q\",\"type\":\"quantize\",\"method\":\"int8\",\"model\":\"m\","
                  "\"source\":\"int8\"}", "invalid_field", "source");
    ASSERT_OK(parse("{\"id\":\"q\",\"type\":\"quantize\",\"method\":\"int4\",\"source\":"
                    "\"original\"}", &job, &err));
    queue_job_free(&job);
}

TEST(not_json) {
    EXPECT_REJECT("hello", "invalid_json", "");
    EXPECT_REJECT("{\"a\": 1", "invalid_json", "");
    EXPECT_REJECT("{\"a\":1} trailing", "invalid_json", "");
    EXPECT_REJECT("", "invalid_json", "");
    /* The unquoted shell `LPUSH q {"a": 1}` arrives as two elements: "{a:" and "1}". */
    EXPECT_REJECT("{a:", "invalid_json", "");
    EXPECT_REJECT("1}", "invalid_json", "");
    EXPECT_REJECT("[1,2]", "not_object", "");
    EXPECT_REJECT("\"s\"", "not_object", "");
}

/* What cJSON reads but the scripts' Lua cjson refuses (so the reaper could not count the job's
 * crashes): a byte-order mark, a control byte between tokens. Rejected, saying what and where;
 * the four JSON whitespace bytes, and control bytes inside strings, still pass. */
TEST(lua_cjson_unreadable) {
    queue_job job;
    queue_job_error err;
    const char *bom = "\xEF\xBB\xBF{\"type\":\"synthesize\",\"text\":\"[S1] hi\"}";
    EXPECT_REJECT(bom, "invalid_json", "");
    ASSERT_EQ(parse(bom, &job, &err), -1);
    ASSERT_CONTAINS(err.message, "byte-order mark");
    static const char *const bad[] = {
        "{\x0b\"type\":\"synthesize\",\"text\":\"[S1] hi\"}",
        "{\"type\":\x0c\"synthesize\",\"text\":\"[S1] hi\"}",
        "{\"type\":\"synthesize\",\"text\":\"[S1] hi\"}\x01",
        "\x1f{\"type\":\"synthesize\",\"text\":\"[S1] hi\"}",
    };
    static const char *const where[] = {"0x0B at offset 1", "0x0C at offset 8", "0x01 at offset 38",
                                        "0x1F at offset 0"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ASSERT_EQ(parse(bad[i], &job, &err), -1);
        ASSERT_STREQ(err.code, "invalid_json");
        ASSERT_STREQ(err.field, "");
        ASSERT_CONTAINS(err.message, where[i]);
    }
    ASSERT_OK(parse(" \t\r\n{ \"type\" :\t\"synthesize\",\r\n\"text\": \"[S1] hi\" }\n", &job,
                    &err));
    queue_job_free(&job);
    /* Inside a string a control byte (and an escaped quote before it) is the text's business. */
    ASSERT_OK(parse("{\"type\":\"synthesize\",\"text\":\"[S1] \\\"a\x0b\"}", &job, &err));
    queue_job_free(&job);
}

TEST(ids) {
    EXPECT_REJECT("{\"id\":12,\"type\":\"synthesize\",\"text\":\"t\"}", "invalid_id", "id");
    EXPECT_REJECT("{\"id\":\"\",\"type\":\"synthesize\",\"text\":\"t\"}", "invalid_id", "id");
    EXPECT_REJECT("{\"id\":\"a b\",\"type\":\"synthesize\",\"text\":\"t\"}", "invalid_id", "id");
    EXPECT_REJECT("{\"id\":\"a/b\",\"type\":\"synthesize\",\"text\":\"t\"}", "invalid_id", "id");
    char big[400];
    snprintf(big, sizeof big, "{\"id\":\"%0129d\",\"type\":\"synthesize\",\"text\":\"t\"}", 0);
    EXPECT_REJECT(big, "invalid_id", "id");
    snprintf(big, sizeof big, "{\"id\":\"%0128d\",\"type\":\"synthesize\",\"text\":\"t\"}", 0);
    queue_job job;
    queue_job_error err;
    ASSERT_OK(parse(big, &job, &err));
    queue_job_free(&job);
    /* No id: the parser assigns one and says so. */
    ASSERT_OK(parse("{\"type\":\"synthesize\",\"text\":\"t\"}", &job, &err));
    ASSERT_EQ(job.id_assigned, 1);
    ASSERT_TRUE(queue_id_valid(job.id, strlen(job.id)));
    queue_job_free(&job);
}

TEST(types_and_fields) {
    EXPECT_REJECT("{\"id\":\"a\",\"text\":\"t\"}", "missing_field", "type");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"dance\",\"text\":\"t\"}", "unknown_type", "type");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"Synthesize\",\"text\":\"t\"}", "unknown_type", "type");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\"}", "missing_field", "text");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"\"}", "missing_field", "text");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":5}", "invalid_field", "text");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"speed\":99}",
                  "invalid_field", "speed");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"temperature\":\"hot\"}",
                  "invalid_field", "temperature");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"top_p\":1.5}",
                  "invalid_field", "top_p");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"seed\":1.5}",
                  "invalid_field", "seed");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"format\":\"mp3\"}",
                  "invalid_field", "format");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"max_attempts\":11}",
                  "invalid_field", "max_attempts");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"max_seconds\":1e9}",
                  "invalid_field", "max_seconds");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"priority\":\"top\"}",
                  "invalid_field", "priority");
    EXPECT_REJECT("{\"v\":2,\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\"}", "invalid_field",
                  "v");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"variant\":\"fp8\"}",
                  "invalid_field", "variant");
}

/* reply_to is read before the other fields, so a job rejected for one of them still names where
 * its terminal message goes; a bad reply_to is the rejection and stays empty. */
TEST(reply_to_known_on_rejection) {
    queue_job job;
    queue_job_error err;
    ASSERT_EQ(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":5,\"reply_to\":\"r:x\"}", &job,
                    &err),
              -1);
    ASSERT_STREQ(err.field, "text");
    ASSERT_STREQ(job.reply_to, "r:x");
    ASSERT_EQ(parse("{\"id\":\"a b\",\"reply_to\":\"r:z\",\"text\":\"t\"}", &job, &err), -1);
    ASSERT_STREQ(err.field, "id");
    ASSERT_STREQ(job.reply_to, "r:z");
    ASSERT_EQ(parse("{\"v\":2,\"reply_to\":\"r:y\",\"text\":\"t\"}", &job, &err), -1);
    ASSERT_STREQ(err.field, "v");
    ASSERT_STREQ(job.reply_to, "r:y");
    ASSERT_EQ(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"reply_to\":7}", &job,
                    &err),
              -1);
    ASSERT_STREQ(err.field, "reply_to");
    ASSERT_STREQ(job.reply_to, "");
    ASSERT_EQ(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"reply_to\":\"\xff\"}",
                    &job, &err),
              -1);
    ASSERT_STREQ(err.field, "reply_to");
    ASSERT_STREQ(job.reply_to, "");
}

/* reply_to may not name a key of the service: a terminal message pushed onto voxq:jobs or a
 * processing list would come back as a job. The prefix is the configured one. */
TEST(reply_to_not_a_service_key) {
    queue_job job;
    queue_job_error err;
    static const char *const bad[] = {"voxq:jobs", "voxq:jobs:hi", "voxq:proc:w1", "voxq:dead",
                                      "voxq:job:a", "voxq:anything"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\","
                 "\"reply_to\":\"%s\"}", bad[i]);
        ASSERT_EQ(parse(json, &job, &err), -1);
        ASSERT_STREQ(err.code, "invalid_field");
        ASSERT_STREQ(err.field, "reply_to");
        ASSERT_CONTAINS(err.message, "'reply_to'");
        ASSERT_STREQ(job.reply_to, ""); /* the rejection is not pushed there either */
    }
    ASSERT_OK(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"reply_to\":"
                    "\"voxqr:x\"}", &job, &err));
    queue_job_free(&job);
    /* Another prefix: its keys are refused, voxq: ones are just keys. */
    queue_job_limits lim;
    queue_job_limits_default(&lim);
    lim.key_prefix = "tts:";
    const char *j1 = "{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"reply_to\":"
                     "\"tts:jobs\"}";
    ASSERT_EQ(queue_job_parse(j1, strlen(j1), &lim, &job, &err), -1);
    ASSERT_STREQ(err.field, "reply_to");
    const char *j2 = "{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"reply_to\":"
                     "\"voxq:jobs\"}";
    ASSERT_OK(queue_job_parse(j2, strlen(j2), &lim, &job, &err));
    queue_job_free(&job);
    /* No prefix: the service's own names are refused, other keys are not. */
    lim.key_prefix = "";
    const char *j3 = "{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"reply_to\":"
                     "\"proc:w1\"}";
    ASSERT_EQ(queue_job_parse(j3, strlen(j3), &lim, &job, &err), -1);
    ASSERT_STREQ(err.field, "reply_to");
    const char *j4 = "{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"reply_to\":"
                     "\"my:replies\"}";
    ASSERT_OK(queue_job_parse(j4, strlen(j4), &lim, &job, &err));
    queue_job_free(&job);
}

/* A rejected job's record lives for the result_ttl_s it gave, when it gave a valid one before
 * the field that failed; the default otherwise. */
TEST(result_ttl_known_on_rejection) {
    queue_job job;
    queue_job_error err;
    ASSERT_EQ(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":5,\"result_ttl_s\":120}",
                    &job, &err), -1);
    ASSERT_STREQ(err.field, "text");
    ASSERT_EQ(job.result_ttl_s, 120);
    ASSERT_EQ(parse("{\"id\":\"a\",\"result_ttl_s\":60,\"text\":\"t\"}", &job, &err), -1);
    ASSERT_STREQ(err.field, "type");
    ASSERT_EQ(job.result_ttl_s, 60);
    ASSERT_EQ(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":5}", &job, &err), -1);
    ASSERT_EQ(job.result_ttl_s, QUEUE_RESULT_TTL_S);
    ASSERT_EQ(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"result_ttl_s\":0}",
                    &job, &err), -1);
    ASSERT_STREQ(err.field, "result_ttl_s");
    ASSERT_EQ(job.result_ttl_s, QUEUE_RESULT_TTL_S);
}

TEST(case_sensitive_and_duplicates) {
    /* "ID" is not "id": the job has no id, so one is assigned. */
    queue_job job;
    queue_job_error err;
    ASSERT_OK(parse("{\"ID\":\"upper\",\"type\":\"synthesize\",\"text\":\"t\"}", &job, &err));
    ASSERT_EQ(job.id_assigned, 1);
    ASSERT_STREQ(job.ignored, "ID");
    queue_job_free(&job);
    EXPECT_REJECT("{\"id\":\"a\",\"Type\":\"synthesize\",\"text\":\"t\"}", "missing_field", "type");
    /* Duplicate keys: the first wins (spec §6 case 6; cJSON's lookups return it), for every
     * field, also when a later spelling is escaped ("i\u0064" is "id" once decoded). Each
     * repeat is counted: the worker then stores the payload without them (canonical_payload). */
    ASSERT_OK(parse("{\"id\":\"first\",\"id\":\"second\",\"type\":\"synthesize\",\"reply_to\":"
                    "\"r:1\",\"text\":\"t\",\"reply_to\":\"r:2\",\"i\\u0064\":\"third\"}",
                    &job, &err));
    ASSERT_STREQ(job.id, "first");
    ASSERT_EQ(job.id_assigned, 0);
    ASSERT_STREQ(job.reply_to, "r:1");
    ASSERT_EQ(job.duplicate_keys, 3);
    queue_job_free(&job);
    /* A later value is not even looked at, valid or not; a bad first one is not rescued. */
    ASSERT_OK(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"type\":\"dance\",\"text\":\"t\","
                    "\"text\":5,\"result_ttl_s\":60,\"result_ttl_s\":0,\"x\":1,\"x\":2}",
                    &job, &err));
    ASSERT_EQ(job.type, QUEUE_JOB_SYNTHESIZE);
    ASSERT_STREQ(job.text, "t");
    ASSERT_EQ(job.result_ttl_s, 60);
    ASSERT_EQ(job.duplicate_keys, 4);
    queue_job_free(&job);
    EXPECT_REJECT("{\"id\":7,\"id\":\"ok\",\"type\":\"synthesize\",\"text\":\"t\"}", "invalid_id",
                  "id");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"quantize\",\"method\":\"int2\",\"method\":\"int8\"}",
                  "invalid_field", "method");
    ASSERT_OK(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"x\":{\"k\":1,"
                    "\"k\":2}}", &job, &err));
    ASSERT_EQ(job.duplicate_keys, 0); /* only top-level keys count: the scripts read no others */
    queue_job_free(&job);
}

/* What a worker keeps in Redis for a job (queue_job_canonical). The scripts decode it with Lua
 * cjson, which keeps the LAST of duplicate keys, so a payload with repeats must be stored
 * without them for the scripts to read the job the worker parsed (first wins). */
TEST(canonical_payload) {
    queue_job job;
    queue_job_error err;
    char *out;
    size_t n;
    /* Canonical already: nothing to store instead. */
    const char *plain = "{\"id\":\"a\", \"type\":\"synthesize\",\"text\":\"t\"}";
    ASSERT_OK(parse(plain, &job, &err));
    ASSERT_OK(queue_job_canonical(plain, strlen(plain), &job, &out, &n));
    ASSERT_TRUE(out == NULL);
    ASSERT_EQ(n, 0);
    queue_job_free(&job);
    /* Only an id to add: raw's bytes are kept around it. */
    const char *noid = "{\"type\":\"synthesize\", \"text\":\"t\"}";
    ASSERT_OK(parse(noid, &job, &err));
    ASSERT_OK(queue_job_canonical(noid, strlen(noid), &job, &out, &n));
    char want[256];
    snprintf(want, sizeof want, "{\"id\":\"%s\",\"type\":\"synthesize\", \"text\":\"t\"}", job.id);
    ASSERT_STREQ(out, want);
    ASSERT_EQ(n, strlen(want));
    free(out);
    queue_job_free(&job);
    /* Repeats: the first of each top-level key only, each kept member copied byte for byte
     * (a cJSON reprint would round 9007199254740991 to ...990), nested objects left alone
     * (their own repeats too: no script reads them), strings holding braces and quotes too. */
    const char *dup = "{ \"id\" : \"first\" , \"type\":\"synthesize\","
                      "\"text\":\"a \\\"}\\\" b,{\" ,\"seed\":9007199254740991,"
                      "\"cfg_scale\":2.5,\"x\":{\"k\":[1,\"]\"],\"k\":2},"
                      "\"id\":\"second\",\"reply_to\":\"r:1\",\"n\":-1.5e3,\"reply_to\":\"r:2\","
                      "\"x\":true,\"i\\u0064\":\"third\"}";
    ASSERT_OK(parse(dup, &job, &err));
    ASSERT_EQ(job.duplicate_keys, 4);
    ASSERT_OK(queue_job_canonical(dup, strlen(dup), &job, &out, &n));
    ASSERT_STREQ(out, "{\"id\" : \"first\",\"type\":\"synthesize\",\"text\":\"a \\\"}\\\" b,{\","
                      "\"seed\":9007199254740991,\"cfg_scale\":2.5,\"x\":{\"k\":[1,\"]\"],\"k\":2},"
                      "\"reply_to\":\"r:1\",\"n\":-1.5e3}");
    ASSERT_EQ(n, strlen(out));
    queue_job again;
    ASSERT_OK(queue_job_parse(out, n, NULL, &again, &err));
    ASSERT_STREQ(again.id, job.id);
    ASSERT_STREQ(again.reply_to, job.reply_to);
    ASSERT_STREQ(again.text, job.text);
    ASSERT_EQ(again.seed, 9007199254740991ull);
    ASSERT_EQ(again.cfg_scale, job.cfg_scale);
    ASSERT_EQ(again.duplicate_keys, 0);
    char *twice;
    size_t n2;
    ASSERT_OK(queue_job_canonical(out, n, &again, &twice, &n2)); /* a fixed point */
    ASSERT_TRUE(twice == NULL);
    queue_job_free(&again);
    free(out);
    queue_job_free(&job);
    /* Repeats and no id: one rewrite does both, so retries keep the id and the first value. */
    const char *both = "{\"type\":\"synthesize\",\"text\":\"t\",\"reply_to\":\"r:1\","
                       "\"reply_to\":\"r:2\"}";
    ASSERT_OK(parse(both, &job, &err));
    ASSERT_EQ(job.id_assigned, 1);
    ASSERT_OK(queue_job_canonical(both, strlen(both), &job, &out, &n));
    ASSERT_TRUE(strstr(out, "r:2") == NULL);
    ASSERT_OK(queue_job_parse(out, n, NULL, &again, &err));
    ASSERT_STREQ(again.id, job.id);
    ASSERT_EQ(again.id_assigned, 0);
    ASSERT_STREQ(again.reply_to, "r:1");
    ASSERT_EQ(again.duplicate_keys, 0);
    queue_job_free(&again);
    free(out);
    queue_job_free(&job);
}

TEST(hostile_text) {
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"a\\u0000b\"}", "invalid_json",
                  "");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"\xff\xfe\"}", "invalid_utf8",
                  "text");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"\xc0\xaf\"}", "invalid_utf8",
                  "text");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"\xed\xa0\x80\"}",
                  "invalid_utf8", "text");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"\xe2\x82\"}", "invalid_utf8",
                  "text");
    /* An escaped backslash before u0000 is just text. */
    queue_job job;
    queue_job_error err;
    ASSERT_OK(parse("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"a\\\\u0000\"}", &job, &err));
    ASSERT_STREQ(job.text, "a\\u0000");
    queue_job_free(&job);
    /* Text over the documented maximum (1024 bytes). */
    char *big = malloc(2000);
    int n = snprintf(big, 2000, "{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"");
    memset(big + n, 'x', 1025);
    strcpy(big + n + 1025, "\"}");
    EXPECT_REJECT(big, "text_too_long", "text");
    free(big);
}

TEST(depth_and_size) {
    size_t depth = 2000;
    char *deep = malloc(depth * 2 + 1);
    for (size_t i = 0; i < depth; i++) {
        deep[i] = '[';
        deep[depth * 2 - 1 - i] = ']';
    }
    deep[depth * 2] = '\0';
    EXPECT_REJECT(deep, "invalid_json", "");
    free(deep);
    size_t big = 50u << 20;
    char *huge = malloc(big);
    memset(huge, ' ', big);
    memcpy(huge, "{\"id\":\"a\"", 9);
    huge[big - 1] = '}';
    queue_job job;
    queue_job_error err;
    ASSERT_EQ(queue_job_parse(huge, big, NULL, &job, &err), -1);
    ASSERT_STREQ(err.code, "too_large");
    free(huge);
    /* Embedded NUL inside the payload length. */
    ASSERT_EQ(queue_job_parse("{\"id\":\"a\"}\0junk", 15, NULL, &job, &err), -1);
    ASSERT_STREQ(err.code, "invalid_json");
}

TEST(paths) {
    ASSERT_TRUE(queue_path_safe("a.wav"));
    ASSERT_TRUE(queue_path_safe("x/y/z-1_2.flac"));
    ASSERT_TRUE(!queue_path_safe("../a.wav"));
    ASSERT_TRUE(!queue_path_safe("a/../../b.wav"));
    ASSERT_TRUE(!queue_path_safe("/etc/passwd"));
    ASSERT_TRUE(!queue_path_safe("a//b"));
    ASSERT_TRUE(!queue_path_safe("a/"));
    ASSERT_TRUE(!queue_path_safe(".hidden"));
    ASSERT_TRUE(!queue_path_safe("a/./b"));
    ASSERT_TRUE(!queue_path_safe("a b.wav"));
    ASSERT_TRUE(!queue_path_safe(""));
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"output\":\"../x.wav\"}",
                  "path_escape", "output");
    EXPECT_REJECT("{\"id\":\"a\",\"type\":\"synthesize\",\"text\":\"t\",\"output\":\"/tmp/x.wav\"}",
                  "path_escape", "output");
}

TEST(with_id) {
    size_t n;
    char *s = queue_job_with_id("{\"type\":\"synthesize\"}", 21, "w-1", &n);
    ASSERT_STREQ(s, "{\"id\":\"w-1\",\"type\":\"synthesize\"}");
    ASSERT_EQ(n, strlen(s));
    free(s);
    s = queue_job_with_id("  { }", 5, "w-2", &n);
    ASSERT_STREQ(s, "  {\"id\":\"w-2\" }");
    free(s);
    /* The result parses to the same job with that id. */
    const char *raw = "{\"type\":\"synthesize\",\"text\":\"t\"}";
    s = queue_job_with_id(raw, strlen(raw), "w-3", &n);
    queue_job job;
    queue_job_error err;
    ASSERT_OK(queue_job_parse(s, n, NULL, &job, &err));
    ASSERT_STREQ(job.id, "w-3");
    ASSERT_EQ(job.id_assigned, 0);
    queue_job_free(&job);
    free(s);
}

TEST(utf8) {
    ASSERT_TRUE(queue_utf8_valid("abc", 3));
    ASSERT_TRUE(queue_utf8_valid("\xf0\x9f\x98\x80", 4));
    ASSERT_TRUE(!queue_utf8_valid("\xf0\x9f\x98", 3));
    ASSERT_TRUE(!queue_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    ASSERT_TRUE(!queue_utf8_valid("\xe0\x80\x80", 3));     /* overlong */
    ASSERT_TRUE(!queue_utf8_valid("a\0b", 3));
}

int main(int argc, char **argv) { return test_main(argc, argv); }
