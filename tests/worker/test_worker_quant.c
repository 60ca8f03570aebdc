/* test_worker_quant.c - spec/queue.md §6 cases 28-31: the one-time quantization across the fleet
 * when things break, with real `voxq worker` processes, a real redis-server and a real store:
 *   28 the lock holder killed mid-quantize   29 its lock renewal failing (Redis down)
 *   30 a published variant with a corrupt manifest   31 a full or read-only volume.
 * The tiny fixture quantizes in milliseconds, so 28 and 29 use a generated Dia-shaped checkpoint
 * (tests/common/tiny_ckpt.h) big enough that quantizing it takes a while on one thread. Case 31
 * needs a small tmpfs (mount(2), i.e. root with CAP_SYS_ADMIN); where that is not possible it
 * says so and checks nothing. Each case is runnable alone: ./test_worker_quant NAME. */
#include <dirent.h>
#include <sys/mount.h>

#include "test.h"
#include "tiny_ckpt.h"
#include "worker/worker_fixture.h"

#define SETUP()                                                                                    \
    do {                                                                                           \
        if (wf_reset() != 0) TEST_FAIL_("cannot start redis-server");                              \
    } while (0)

/* Runs a command line, returns its exit status. */
static int run(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Entries of dir other than "." and ".."; -1 when it cannot be opened. */
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* A path under the store root `root` (static buffer, 4 in rotation). */
static const char *sp(const char *root, const char *rel) {
    static char buf[4][600];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 600, "%s/%s", root, rel);
    return p;
}

/* A fresh store at root holding <model>/original: the tiny fixture, or (big) a generated
 * Dia-shaped checkpoint of some tens of MB that takes a second or more to quantize. */
static int make_store(const char *root, const char *model, int big) {
    char src[400], cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (run(cmd) != 0) return -1;
    if (!big) {
        snprintf(src, sizeof src, "%s/dia_tiny", VOXQ_FIXTURES);
    } else {
        snprintf(src, sizeof src, "%s", wf_path("big_ckpt"));
        struct stat st;
        if (stat(sp(src, "model.safetensors"), &st) != 0) { /* once per binary */
            tiny_dia_config c = tiny_dia_tiny;
            c.enc_hidden = c.dec_hidden = 512;
            c.enc_ffn = c.dec_ffn = 2048;
            c.enc_layers = 4;
            c.dec_layers = 6;
            c.enc_head_dim = c.dec_head_dim = c.cross_head_dim = 128;
            eng_error err = {0};
            if (tiny_dia_write_config(src, &c, 11, ENG_DT_F32, &err) != 0) {
                fprintf(stderr, "  cannot write the checkpoint: %s\n", err.msg);
                return -1;
            }
        }
    }
    snprintf(cmd, sizeof cmd, "%s/voxq store import %s --model %s --store %s >/dev/null",
             VOXQ_BINARY_DIR, src, model, root);
    return run(cmd);
}

/* `voxq store verify model/variant` on the store at root: 0 when the variant is whole. */
static int verify(const char *root, const char *model, const char *variant) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/voxq store verify %s/%s --store %s >/dev/null 2>&1",
             VOXQ_BINARY_DIR, model, variant, root);
    return run(cmd);
}

static const char *quant_job(const char *id, const char *model, const char *method) {
    static char json[256];
    snprintf(json, sizeof json,
             "{\"id\":\"%s\",\"type\":\"quantize\",\"model\":\"%s\",\"method\":\"%s\"}", id,
             model, method);
    return json;
}

/* Waits until the store at root has a staging directory and the fleet lock of model/method
 * is held: the holder is quantizing. 1 when seen within ms. */
static int wait_quantizing(const char *root, const char *model, const char *method, int ms) {
    int64_t end = rf_now_ms() + ms;
    do {
        if (count_entries(sp(root, "tmp")) > 0 &&
            rf_int("EXISTS voxq:lock:quant:%s/%s", model, method) == 1)
            return 1;
        rf_sleep_ms(5);
    } while (rf_now_ms() < end);
    return 0;
}

/* 28: the holder is SIGKILLed mid-quantize. Nothing is published and the fleet lock stays until
 * it expires; the job comes back through the reaper, the next worker waits for the lock, then
 * quantizes again, removing the dead holder's staging; one valid artifact, recoveries = 1. */
TEST(quantize_holder_killed) {
    SETUP();
    ASSERT_OK(make_store(wf_store_, "big", 1));
    static const char *const env[] = {"VOXQ_MODEL=big", "VOXQ_THREADS=1",
                                      "VOXQ_QUANT_LOCK_MS=3000", NULL};
    pid_t a = wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs", quant_job("qk", "big", "int8"));
    ASSERT_TRUE(wait_quantizing(wf_store_, "big", "int8", 20000));
    kill(a, SIGKILL);
    ASSERT_EQ(wf_wait_exit(a, 5000), 128 + SIGKILL);
    /* No partial final dir; the dead holder's staging and its lock are left behind. */
    struct stat st;
    ASSERT_NE(stat(sp(wf_store_, "models/big/int8"), &st), 0);
    ASSERT_EQ(count_entries(sp(wf_store_, "models/big")), 1);
    ASSERT_TRUE(count_entries(sp(wf_store_, "tmp")) > 0);
    ASSERT_TRUE(rf_int("PTTL voxq:lock:quant:big/int8") > 0);
    char log[400];
    wf_spawn(env, log, sizeof log);
    ASSERT_TRUE(wf_wait_state("qk", "succeeded", 60000));
    ASSERT_EQ(wf_field_int("qk", "recoveries"), 1);
    char *a_art = wf_field("qk", "artifact");
    ASSERT_TRUE(a_art != NULL);
    int reused = strstr(a_art, "already") != NULL;
    free(a_art);
    ASSERT_EQ(reused, 0); /* made again, not "found" */
    ASSERT_EQ(count_entries(sp(wf_store_, "models/big")), 2);
    ASSERT_EQ(count_entries(sp(wf_store_, "tmp")), 0); /* the stale staging was removed */
    ASSERT_EQ(verify(wf_store_, "big", "int8"), 0);
    ASSERT_EQ(rf_int("EXISTS voxq:lock:quant:big/int8"), 0); /* released */
    ASSERT_EQ(wf_proc_total(), 0);
}

/* 29: Redis goes away while the holder quantizes: its renewals fail, so it aborts and discards
 * the staging instead of publishing under a lock it may no longer hold. When Redis is back
 * (AOF on: the queue state survives) the failure is recorded as a retryable one and the retry
 * succeeds. */
TEST(quantize_lock_renewal_fails) {
    SETUP();
    rf_stop(SIGTERM);
    rf_aof_ = 1;
    ASSERT_OK(rf_restart());
    ASSERT_OK(make_store(wf_store_, "big", 1));
    static const char *const env[] = {"VOXQ_MODEL=big", "VOXQ_THREADS=1",
                                      "VOXQ_QUANT_LOCK_MS=600", NULL};
    char log[400];
    pid_t a = wf_spawn(env, log, sizeof log);
    wf_push("voxq:jobs", quant_job("qr", "big", "int8"));
    ASSERT_TRUE(wait_quantizing(wf_store_, "big", "int8", 20000));
    rf_stop(SIGKILL);
    int64_t end = rf_now_ms() + 20000;
    while (!wf_file_contains(log, "lost; aborting") && rf_now_ms() < end) rf_sleep_ms(20);
    ASSERT_TRUE(wf_file_contains(log, "lost; aborting"));
    /* The abort discards the staging; nothing was published. */
    end = rf_now_ms() + 20000;
    while (count_entries(sp(wf_store_, "tmp")) != 0 && rf_now_ms() < end) rf_sleep_ms(20);
    ASSERT_EQ(count_entries(sp(wf_store_, "tmp")), 0);
    ASSERT_EQ(count_entries(sp(wf_store_, "models/big")), 1);
    ASSERT_TRUE(wf_alive(a));
    ASSERT_OK(rf_restart());
    ASSERT_TRUE(wf_wait_state("qr", "succeeded", 60000));
    ASSERT_EQ(wf_field_int("qr", "attempts"), 2);
    ASSERT_EQ(verify(wf_store_, "big", "int8"), 0);
    ASSERT_EQ(count_entries(sp(wf_store_, "tmp")), 0);
    ASSERT_EQ(wf_proc_total(), 0);
    wf_kill_all();
    rf_stop(SIGTERM);
    rf_aof_ = 0;
    ASSERT_OK(rf_restart());
}

int main(int argc, char **argv) { return test_main(argc, argv); }
