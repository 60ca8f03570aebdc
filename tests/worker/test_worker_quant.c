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
 * Dia-shaped checkpoint (225 MB of f32, made once per run) that takes about a second to
 * quantize on one thread. */
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
    snprintf(cmd, sizeof cmd, "%s/voxq store import %s --model %s --store %s >/dev/null 2>&1",
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
                                      "VOXQ_QUANT_LOCK_MS=300", NULL};
    char log[400];
    pid_t a = wf_spawn(env, log, sizeof log);
    wf_push("voxq:jobs", quant_job("qr", "big", "int8"));
    ASSERT_TRUE(wait_quantizing(wf_store_, "big", "int8", 20000));
    /* The worker is paused while Redis dies and the lock's lifetime passes, so that on resuming
     * its overdue renewal fails at once, long before the quantization could finish. */
    kill(a, SIGSTOP);
    rf_stop(SIGKILL);
    rf_sleep_ms(600);
    kill(a, SIGCONT);
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

/* timeout_s holds for quantize jobs too: past it the quantization stops at its next chunk, the
 * staging is discarded, the lock released, and the attempt fails with "timeout" (retryable, so
 * max_attempts 1 ends it failed). */
TEST(quantize_timeout) {
    SETUP();
    ASSERT_OK(make_store(wf_store_, "big", 1));
    static const char *const env[] = {"VOXQ_MODEL=big", "VOXQ_THREADS=1", NULL};
    pid_t w = wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs", "{\"id\":\"qt\",\"type\":\"quantize\",\"model\":\"big\","
                         "\"method\":\"int8\",\"timeout_s\":0.1,\"max_attempts\":1}");
    ASSERT_TRUE(wf_wait_state("qt", "failed", 30000));
    char *code = wf_field("qt", "error_code");
    ASSERT_STREQ(code, "timeout");
    free(code);
    ASSERT_EQ(wf_field_int("qt", "attempts"), 1);
    struct stat st;
    ASSERT_NE(stat(sp(wf_store_, "models/big/int8"), &st), 0);
    ASSERT_EQ(count_entries(sp(wf_store_, "tmp")), 0);
    ASSERT_EQ(rf_int("EXISTS voxq:lock:quant:big/int8"), 0);
    ASSERT_TRUE(wf_alive(w));
    ASSERT_EQ(wf_proc_total(), 0);
    /* Without a timeout the same job succeeds: it was the timeout that stopped it. */
    wf_push("voxq:jobs", quant_job("qt2", "big", "int8"));
    ASSERT_TRUE(wf_wait_state("qt2", "succeeded", 60000));
    char *ms = wf_field("qt2", "run_ms");
    fprintf(stderr, "  (the quantization takes %s ms here)\n", ms ? ms : "?");
    free(ms);
}

/* A quantize job asking for a source other than "original" is bad input: rejected (never
 * retried), naming the field, not failed by the worker. */
TEST(quantize_bad_source_rejected) {
    SETUP();
    ASSERT_OK(make_store(wf_store_, "dia-tiny", 0));
    static const char *const env[] = {"VOXQ_MODEL=dia-tiny", NULL};
    wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs", "{\"id\":\"qs\",\"type\":\"quantize\",\"model\":\"dia-tiny\","
                         "\"method\":\"int8\",\"source\":\"int4\"}");
    ASSERT_TRUE(wf_wait_state("qs", "rejected", 10000));
    char *e = wf_field("qs", "error");
    ASSERT_CONTAINS(e, "'source'");
    free(e);
    char *code = wf_field("qs", "error_code");
    ASSERT_STREQ(code, "invalid_field");
    free(code);
    ASSERT_EQ(wf_proc_total(), 0);
}

/* Inode of path, 0 when absent. */
static ino_t inode_of(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? st.st_ino : 0;
}

/* Runs a job that must remake the damaged dia-tiny/int8 and checks the swap: the variant
 * directory is never absent meanwhile (readers see the old one or the new one), the new one is
 * another directory and verifies, no staging is left and the fleet lock is released. */
static void expect_remade(const char *id, ino_t old) {
    const char *dir = sp(wf_store_, "models/dia-tiny/int8");
    wf_push("voxq:jobs", quant_job(id, "dia-tiny", "int8"));
    int64_t end = rf_now_ms() + 30000;
    int absent = 0;
    char *state = NULL;
    while (rf_now_ms() < end) {
        absent += inode_of(dir) == 0;
        free(state);
        state = wf_field(id, "state");
        if (state && (!strcmp(state, "succeeded") || !strcmp(state, "failed"))) break;
        rf_sleep_ms(1);
    }
    ASSERT_STREQ(state, "succeeded");
    free(state);
    ASSERT_EQ(absent, 0);
    char *art = wf_field(id, "artifact");
    ASSERT_TRUE(art != NULL);
    int reused = strstr(art, "already") != NULL;
    free(art);
    ASSERT_EQ(reused, 0);
    ASSERT_NE(inode_of(dir), old);
    ASSERT_EQ(verify(wf_store_, "dia-tiny", "int8"), 0);
    ASSERT_EQ(count_entries(sp(wf_store_, "tmp")), 0);
    ASSERT_EQ(count_entries(sp(wf_store_, "models/dia-tiny")), 2);
    ASSERT_EQ(rf_int("EXISTS voxq:lock:quant:dia-tiny/int8"), 0);
}

/* 30: a published variant whose MANIFEST.json is corrupt (then one whose manifest is missing)
 * is not reused: the next quantize job detects it, remakes it under the lock and replaces it
 * atomically. */
TEST(quantize_corrupt_manifest_redone) {
    SETUP();
    ASSERT_OK(make_store(wf_store_, "dia-tiny", 0));
    static const char *const env[] = {"VOXQ_MODEL=dia-tiny", NULL};
    wf_spawn(env, NULL, 0);
    wf_push("voxq:jobs", quant_job("qc1", "dia-tiny", "int8"));
    ASSERT_TRUE(wf_wait_state("qc1", "succeeded", 30000));
    ASSERT_EQ(verify(wf_store_, "dia-tiny", "int8"), 0);
    const char *manifest = sp(wf_store_, "models/dia-tiny/int8/MANIFEST.json");
    /* Corrupt: cut in the middle of the JSON. */
    FILE *f = fopen(manifest, "r+");
    ASSERT_TRUE(f != NULL);
    ASSERT_EQ(ftruncate(fileno(f), 40), 0);
    fclose(f);
    ASSERT_NE(verify(wf_store_, "dia-tiny", "int8"), 0);
    expect_remade("qc2", inode_of(sp(wf_store_, "models/dia-tiny/int8")));
    if (test_failed_) return;
    /* Missing (as a copy by hand that stopped early would leave it). */
    ASSERT_EQ(unlink(sp(wf_store_, "models/dia-tiny/int8/MANIFEST.json")), 0);
    expect_remade("qc3", inode_of(sp(wf_store_, "models/dia-tiny/int8")));
    if (test_failed_) return;
    /* And a valid one is reused, not remade. */
    wf_push("voxq:jobs", quant_job("qc4", "dia-tiny", "int8"));
    ASSERT_TRUE(wf_wait_state("qc4", "succeeded", 30000));
    char *art = wf_field("qc4", "artifact");
    ASSERT_CONTAINS(art, "already");
    free(art);
}

/* ---- 31: a full or read-only volume (a small tmpfs) ---- */

static char vol_[256];
static int vol_mounted_;

static void vol_umount_(void) {
    if (vol_mounted_) umount2(vol_, MNT_DETACH);
    vol_mounted_ = 0;
    if (vol_[0]) rmdir(vol_);
}

/* Mounts a tmpfs of size_mb at a fresh directory. 0 on success, -1 when mount(2) is not allowed
 * here (not root, no CAP_SYS_ADMIN, a sandbox): the caller skips. */
static int vol_mount(int size_mb) {
    snprintf(vol_, sizeof vol_, "/tmp/voxq-vol-XXXXXX");
    if (!mkdtemp(vol_)) return -1;
    static int registered;
    if (!registered) atexit(vol_umount_); /* runs before the fixture's cleanup */
    registered = 1;
    char opt[64];
    snprintf(opt, sizeof opt, "size=%dm,mode=0755", size_mb);
    if (mount("tmpfs", vol_, "tmpfs", 0, opt) != 0) {
        fprintf(stderr, "  SKIP: cannot mount a tmpfs (%s); the full/read-only volume case "
                "needs root with CAP_SYS_ADMIN\n", strerror(errno));
        rmdir(vol_);
        vol_[0] = '\0';
        return -1;
    }
    vol_mounted_ = 1;
    return 0;
}

/* Fills the volume: writes a file until the device is full. 0 when ENOSPC was reached. */
static int vol_fill(void) {
    int fd = open(sp(vol_, "filler"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    static char block[65536];
    int e = 0;
    for (;;) {
        ssize_t n = write(fd, block, sizeof block);
        if (n < 0) {
            e = errno;
            break;
        }
        if (n == 0) break;
    }
    for (;;) { /* the last partial block */
        if (write(fd, block, 1) < 0) {
            e = errno;
            break;
        }
    }
    close(fd);
    return e == ENOSPC ? 0 : -1;
}

/* Waits for the job to end failed after max_attempts (3); checks its error names code. */
static void expect_dead(const char *id, const char *code) {
    ASSERT_TRUE(wf_wait_state(id, "failed", 30000));
    ASSERT_EQ(wf_field_int(id, "attempts"), 3);
    char *err = wf_field(id, "error");
    ASSERT_CONTAINS(err, code);
    free(err);
    ASSERT_TRUE(rf_int("LLEN voxq:dead") >= 1);
}

/* 31: the output and store volume full, then read-only. Synthesize and quantize jobs fail with
 * errors naming ENOSPC / EROFS, are retried (transient) and end dead after max_attempts; no
 * audio file, temp file, staging or variant is left half-written. */
TEST(volume_full_or_read_only) {
    SETUP();
    if (vol_mount(16) != 0) return; /* skipped, said why */
    char store_env[400], out_env[400], store[300], out[300];
    snprintf(store, sizeof store, "%s/store", vol_);
    snprintf(out, sizeof out, "%s/out", vol_);
    ASSERT_EQ(mkdir(out, 0755), 0);
    ASSERT_OK(make_store(store, "dia-tiny", 0));
    snprintf(store_env, sizeof store_env, "VOXQ_STORE=%s", store);
    snprintf(out_env, sizeof out_env, "VOXQ_OUTPUT_DIR=%s", out);
    const char *env[] = {"VOXQ_MODEL=dia-tiny", store_env, out_env, NULL};
    char log[400];
    pid_t w = wf_spawn(env, log, sizeof log);
    wf_push("voxq:jobs", "{\"id\":\"v0\",\"type\":\"synthesize\",\"text\":\"[S1] audio:100\"}");
    ASSERT_TRUE(wf_wait_state("v0", "succeeded", 10000)); /* the volume works */
    ASSERT_EQ(count_entries(out), 1);
    ASSERT_OK(vol_fill());

    wf_push("voxq:jobs", "{\"id\":\"v1\",\"type\":\"synthesize\",\"text\":\"[S1] audio:3000\"}");
    expect_dead("v1", "ENOSPC");
    if (test_failed_) return;
    wf_push("voxq:jobs", quant_job("v2", "dia-tiny", "int8"));
    expect_dead("v2", "ENOSPC");
    if (test_failed_) return;
    ASSERT_EQ(count_entries(out), 1); /* v0's file only: no partial file, no temp */
    ASSERT_EQ(count_entries(sp(store, "models/dia-tiny")), 1);
    ASSERT_EQ(count_entries(sp(store, "tmp")), 0);
    ASSERT_TRUE(wf_alive(w));

    ASSERT_EQ(unlink(sp(vol_, "filler")), 0);
    ASSERT_EQ(mount(NULL, vol_, NULL, MS_REMOUNT | MS_RDONLY, NULL), 0);
    wf_push("voxq:jobs", "{\"id\":\"v3\",\"type\":\"synthesize\",\"text\":\"[S1] audio:100\"}");
    expect_dead("v3", "EROFS");
    if (test_failed_) return;
    wf_push("voxq:jobs", quant_job("v4", "dia-tiny", "int8"));
    expect_dead("v4", "EROFS");
    if (test_failed_) return;
    ASSERT_EQ(count_entries(out), 1);
    ASSERT_EQ(count_entries(sp(store, "models/dia-tiny")), 1);
    ASSERT_EQ(count_entries(sp(store, "tmp")), 0);
    ASSERT_TRUE(wf_alive(w));
    ASSERT_EQ(wf_proc_total(), 0);
    wf_kill_all();
    vol_umount_();
}

int main(int argc, char **argv) { return test_main(argc, argv); }
