/* test_worker_engine.c - the worker with real pieces: quantize jobs through the store and the
 * quantizer (three workers, one artifact), and synthesize jobs through the real engine on the
 * tiny fixture checkpoints (tests/reference/data/dia_tiny + dac_tiny), including the switch to
 * an int8 variant made by VOXQ_AUTO_QUANTIZE while the worker runs. */
#include <dirent.h>

#include <sndfile.h>

#include "test.h"
#include "worker/worker_fixture.h"

#define SETUP()                                                                                    \
    do {                                                                                           \
        if (wf_reset() != 0) TEST_FAIL_("cannot start redis-server");                              \
        if (import_fixtures() != 0) TEST_FAIL_("cannot import the tiny fixtures into the store");  \
    } while (0)

/* Runs a command line, returns its exit status. */
static int run(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A fresh store with dia-tiny/original and dac-tiny/original (voxq store import). */
static int import_fixtures(void) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "rm -rf %s && %s/voxq store import %s/dia_tiny --model dia-tiny --store %s "
             ">/dev/null && %s/voxq store import %s/dac_tiny --model dac-tiny --store %s "
             ">/dev/null",
             wf_store_, VOXQ_BINARY_DIR, VOXQ_FIXTURES, wf_store_, VOXQ_BINARY_DIR,
             VOXQ_FIXTURES, wf_store_);
    return run(cmd);
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* 27: the same quantization asked of three workers at once: one runs, the others wait for it
 * and reuse it; one artifact, every job succeeds. */
TEST(quantize_three_workers_one_artifact) {
    SETUP();
    static const char *const env[] = {"VOXQ_MODEL=dia-tiny", NULL};
    for (int i = 0; i < 3; i++) wf_spawn(env, NULL, 0);
    rf_sleep_ms(800);
    for (int i = 0; i < 3; i++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"id\":\"q%d\",\"type\":\"quantize\",\"model\":\"dia-tiny\","
                 "\"method\":\"int8\"}", i);
        wf_push("voxq:jobs", json);
    }
    for (int i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof id, "q%d", i);
        ASSERT_TRUE(wf_wait_state(id, "succeeded", 60000));
    }
    char path[600];
    snprintf(path, sizeof path, "%s/models/dia-tiny", wf_store_);
    ASSERT_EQ(count_entries(path), 2); /* original + int8 */
    snprintf(path, sizeof path, "%s/models/dia-tiny/int8/MANIFEST.json", wf_store_);
    struct stat st;
    ASSERT_EQ(stat(path, &st), 0);
    snprintf(path, sizeof path, "%s/tmp", wf_store_);
    ASSERT_EQ(count_entries(path), 0);
    int reused = 0;
    for (int i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof id, "q%d", i);
        char *a = wf_field(id, "artifact");
        ASSERT_TRUE(a != NULL);
        reused += strstr(a, "already") != NULL;
        free(a);
    }
    ASSERT_EQ(reused, 2);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/voxq store verify dia-tiny/int8 --store %s >/dev/null",
             VOXQ_BINARY_DIR, wf_store_);
    ASSERT_EQ(run(cmd), 0);
}

/* A quantize job for a model the store does not have fails at once (permanent, no retry). */
TEST(quantize_missing_source_fails_permanently) {
    SETUP();
    static const char *const env[] = {"VOXQ_MODEL=dia-tiny", NULL};
    wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs",
            "{\"id\":\"qm\",\"type\":\"quantize\",\"model\":\"nope\",\"method\":\"int4\"}");
    ASSERT_TRUE(wf_wait_state("qm", "failed", 30000));
    ASSERT_EQ(wf_field_int("qm", "attempts"), 1);
    char *code = wf_field("qm", "error_code");
    ASSERT_STREQ(code, "quantize_invalid");
    free(code);
}

/* Reads a sound file's frame count and rate. */
static long long sound_frames(const char *path, int *rate) {
    SF_INFO info = {0};
    SNDFILE *f = sf_open(path, SFM_READ, &info);
    if (!f) return -1;
    sf_close(f);
    *rate = info.samplerate;
    return (long long)info.frames;
}

/* The real engine end to end: a synthesize job on the tiny Dia + DAC writes a real wav. Then
 * VOXQ_AUTO_QUANTIZE: the worker enqueues the int8 job, serves original meanwhile, and switches
 * to int8 between jobs once it is published. */
TEST(real_engine_synthesize_and_auto_quantize) {
    SETUP();
    char log[400];
    static const char *const env[] = {"VOXQ_TEST_FAKE_ENGINE=0", "VOXQ_MODEL=dia-tiny",
                                      "VOXQ_CODEC=dac-tiny",     "VOXQ_DEVICE=cpu",
                                      "VOXQ_THREADS=2",          "VOXQ_AUTO_QUANTIZE=1",
                                      "VOXQ_STALL_S=120",        NULL};
    wf_spawn(env, log, sizeof log);
    wf_push("voxq:jobs", "{\"id\":\"s1\",\"type\":\"synthesize\",\"text\":\"[S1] Hello there.\","
                         "\"seed\":7,\"max_seconds\":0.3}");
    ASSERT_TRUE(wf_wait_state("s1", "succeeded", 120000));
    char *path = wf_field("s1", "output_path");
    int rate = 0;
    long long frames = sound_frames(path, &rate);
    free(path);
    ASSERT_TRUE(frames > 0);
    ASSERT_EQ(rate, wf_field_int("s1", "sample_rate"));
    /* The auto-quantize job, enqueued by the worker itself, succeeds... */
    ASSERT_TRUE(wf_wait_state("quant:dia-tiny:int8", "succeeded", 120000));
    /* ...and the worker picks the new variant up between jobs. */
    int64_t end = rf_now_ms() + 30000;
    while (!wf_file_contains(log, "now serving dia-tiny/int8") && rf_now_ms() < end)
        rf_sleep_ms(100);
    ASSERT_TRUE(wf_file_contains(log, "now serving dia-tiny/int8"));
    wf_push("voxq:jobs", "{\"id\":\"s2\",\"type\":\"synthesize\",\"text\":\"[S1] Again.\","
                         "\"seed\":7,\"max_seconds\":0.3}");
    ASSERT_TRUE(wf_wait_state("s2", "succeeded", 120000));
    ASSERT_TRUE(wf_file_contains(log, "variant int8"));
    /* A bad variant request fails permanently, naming the field. */
    wf_push("voxq:jobs", "{\"id\":\"s3\",\"type\":\"synthesize\",\"text\":\"[S1] x\","
                         "\"variant\":\"int4\"}");
    ASSERT_TRUE(wf_wait_state("s3", "failed", 30000));
    char *err = wf_field("s3", "error");
    ASSERT_CONTAINS(err, "variant");
    free(err);
}

/* Continuous batching: four seeded jobs on a worker that decodes three at a time give the same
 * audio, byte for byte, as on a worker that decodes one at a time (on the CPU backend a job's
 * codes do not depend on what shares its steps), and the jobs did share steps. */
TEST(batched_jobs_match_one_at_a_time) {
    static const char *const texts[4] = {"[S1] Hello there.", "[S1] One. [S2] Two!",
                                         "[S2] A longer line of dialogue.", "[S1] Hm."};
    char sha[2][4][80];
    for (int pass = 0; pass < 2; pass++) {
        SETUP();
        char log[400];
        const char *env[] = {"VOXQ_TEST_FAKE_ENGINE=0", "VOXQ_MODEL=dia-tiny",
                             "VOXQ_CODEC=dac-tiny",     "VOXQ_DEVICE=cpu",
                             "VOXQ_THREADS=2",          "VOXQ_STALL_S=120",
                             pass ? "VOXQ_CONCURRENCY=3" : "VOXQ_CONCURRENCY=1", NULL};
        /* jobs first, then the worker: all four wait in the queue when it starts */
        for (int i = 0; i < 4; i++) {
            char json[256];
            snprintf(json, sizeof json,
                     "{\"id\":\"b%d\",\"type\":\"synthesize\",\"text\":\"%s\",\"seed\":%d,"
                     "\"max_seconds\":%s}",
                     i, texts[i], 11 + i, i == 2 ? "0.5" : "0.25");
            wf_push("voxq:jobs", json);
        }
        wf_spawn(env, log, sizeof log);
        for (int i = 0; i < 4; i++) {
            char id[8];
            snprintf(id, sizeof id, "b%d", i);
            ASSERT_TRUE(wf_wait_state(id, "succeeded", 120000));
            char *h = wf_field(id, "sha256");
            ASSERT_TRUE(h != NULL && strlen(h) == 64);
            snprintf(sha[pass][i], sizeof sha[pass][i], "%s", h);
            free(h);
        }
        if (pass) {
            ASSERT_TRUE(wf_file_contains(log, "up to 3 jobs per step"));
            ASSERT_TRUE(wf_file_contains(log, "3 of 3 in flight"));
        } else {
            ASSERT_TRUE(!wf_file_contains(log, "in flight"));
        }
    }
    for (int i = 0; i < 4; i++) ASSERT_STREQ(sha[1][i], sha[0][i]);
}

/* Continuous batching around a long job: a short job admitted beside it finishes while it runs,
 * a job the engine refuses (a variant it does not serve) fails at once without disturbing it,
 * cancelling it stops it mid-run, and the engine then serves the next job. */
TEST(batched_cancel_and_refusal_beside_a_long_job) {
    SETUP();
    char log[400];
    static const char *const env[] = {"VOXQ_TEST_FAKE_ENGINE=0", "VOXQ_MODEL=dia-tiny",
                                      "VOXQ_CODEC=dac-tiny",     "VOXQ_DEVICE=cpu",
                                      "VOXQ_THREADS=2",          "VOXQ_STALL_S=120",
                                      "VOXQ_CONCURRENCY=2",      NULL};
    /* the tiny codec runs 5,512 frames a second: 0.55 s is ~3,000 steps (seed 1 picks no EOS
     * before), 0.1 s ~550 */
    wf_push("voxq:jobs", "{\"id\":\"long\",\"type\":\"synthesize\",\"text\":\"[S1] A long line. "
                         "[S2] Another one.\",\"seed\":1,\"max_seconds\":0.55}");
    wf_push("voxq:jobs", "{\"id\":\"short\",\"type\":\"synthesize\",\"text\":\"[S1] Hi.\","
                         "\"seed\":3,\"max_seconds\":0.1}");
    wf_spawn(env, log, sizeof log);
    ASSERT_TRUE(wf_wait_state("short", "succeeded", 60000));
    char *st = wf_field("long", "state");
    ASSERT_STREQ(st, "running"); /* the short job joined and left while the long one ran */
    free(st);
    wf_push("voxq:jobs", "{\"id\":\"other\",\"type\":\"synthesize\",\"text\":\"[S1] x\","
                         "\"variant\":\"int4\"}");
    ASSERT_TRUE(wf_wait_state("other", "failed", 30000));
    char *err = wf_field("other", "error");
    ASSERT_CONTAINS(err, "variant");
    free(err);
    st = wf_field("long", "state");
    ASSERT_STREQ(st, "running");
    free(st);
    redisReply *r = rf_cmd("SET voxq:cancel:long 1 EX 86400");
    freeReplyObject(r);
    r = rf_cmd("PUBLISH voxq:ev:cancel long");
    freeReplyObject(r);
    ASSERT_TRUE(wf_wait_state("long", "cancelled", 30000));
    wf_push("voxq:jobs", "{\"id\":\"after\",\"type\":\"synthesize\",\"text\":\"[S2] Done.\","
                         "\"seed\":3,\"max_seconds\":0.1}");
    ASSERT_TRUE(wf_wait_state("after", "succeeded", 60000));
    ASSERT_TRUE(wf_file_contains(log, "job short: decoding, 2 of 2 in flight"));
}

int main(int argc, char **argv) { return test_main(argc, argv); }
