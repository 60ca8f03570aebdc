/* test_pull.c - `voxq store pull` (ops/pull.h) against a loopback stand-in for the hub
 * (hub_server.py): resolve URLs, 302 to a CDN path, ETag/X-Linked-Etag sha256, X-Linked-Size,
 * Range. Full and sharded downloads, resume after a dropped connection (in one pull and across
 * pulls), a corrupted file, 404s and a gated repo reported clearly, nothing half-written left in
 * the store, the worker's VOXQ_PULL first run, and the command line's exit codes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hub_fixture.h"
#include "ops/pull.h"
#include "ops/sha256.h"
#include "ops/store.h"
#include "store/store_testutil.h"
#include "test.h"

#define FLOATS 40000 /* 160 kB a tensor: many write callbacks, a real halfway point */

static hub H;

/* One pull into H.store with test-sized retries and no token from the environment. */
static int pull(const char *repo, const char *model, int retries, const char *token,
                const char *revision, pull_result *res, eng_error *err) {
    store s;
    int rc = store_open(&s, H.store, err);
    if (rc) return rc;
    pull_options opt = {.endpoint = H.endpoint,
                        .token = token ? token : "",
                        .retries = retries,
                        .retry_delay_ms = 10,
                        .revision = revision,
                        .jobs = 3};
    rc = pull_model(&s, repo, model, &opt, res, err);
    store_close(&s);
    return rc;
}

/* The file in the store equals the one the hub serves. */
static int same_file(const char *repo, const char *model, const char *file) {
    char src[1024], dst[1024], a[SHA256_HEX_BYTES], b[SHA256_HEX_BYTES];
    hub_repo_file(&H, repo, file, src, sizeof src);
    snprintf(dst, sizeof dst, "%s/models/%s/original/%s", H.store, model, file);
    if (sha256_file(src, a, NULL, NULL, NULL, NULL) || sha256_file(dst, b, NULL, NULL, NULL, NULL))
        return 0;
    return strcmp(a, b) == 0;
}

static int model_absent(const char *model) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/%s", H.store, model);
    return !tu_exists(path);
}

static int tmp_entries(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tmp", H.store);
    return tu_count_entries(path);
}

static int setup(const char *tag, const char *const *server_args) {
    if (hub_init(&H, tag)) return -1;
    if (hub_make_repo(&H, "acme/tiny", 1, 0, FLOATS, 1)) return -1;
    if (hub_make_repo(&H, "acme/sharded", 0, 3, FLOATS / 4, 2)) return -1;
    if (hub_make_repo(&H, "acme/noweights", 0, 0, 16, 3)) return -1;
    char path[1024];
    hub_repo_file(&H, "acme/noweights", "model.safetensors", path, sizeof path);
    unlink(path);
    return hub_start(&H, server_args);
}

/* ---- cases ---- */

static void full_download_body(void) {
    pull_result res;
    eng_error err = {0};
    int rc = pull("acme/tiny", "tiny", 2, NULL, NULL, &res, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(res.nfiles, 3);
    ASSERT_STREQ(res.commit, HUB_COMMIT);
    ASSERT_EQ(res.resumed, 0);
    ASSERT_EQ(res.fetched_bytes, res.total_bytes);
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "model.safetensors"));
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "config.json"));
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "generation_config.json"));
    store s;
    ASSERT_OK(store_open(&s, H.store, &err));
    store_manifest m;
    ASSERT_OK(store_verify(&s, "tiny", "original", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    ASSERT_OK(store_manifest_read(&s, "tiny", "original", &m, &err));
    ASSERT_STREQ(m.method, "pull");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(m.json, "source");
    ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(src, "repo")), "acme/tiny");
    ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(src, "revision")), "main");
    ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(src, "commit")), HUB_COMMIT);
    store_manifest_free(&m);
    store_close(&s);
    /* The revision was pinned: after config.json every request names the commit. */
    ASSERT_EQ(hub_count(&H, NULL, "/resolve/main/model.safetensors", -1), 0);
    ASSERT_EQ(hub_count(&H, "GET", "/cdn/acme/tiny/" HUB_COMMIT "/model.safetensors", 0), 1);
    ASSERT_EQ(tmp_entries(), 0); /* no staging or download debris */
}

TEST(full_download) {
    if (setup("pull-full", NULL)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    full_download_body();
    hub_free(&H);
}

static void sharded_body(void) {
    pull_result res;
    eng_error err = {0};
    int rc = pull("acme/sharded", "sharded", 2, NULL, NULL, &res, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(res.nfiles, 5); /* config, index, 3 shards */
    ASSERT_TRUE(same_file("acme/sharded", "sharded", "model.safetensors.index.json"));
    for (int i = 1; i <= 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-00003.safetensors", i);
        ASSERT_TRUE(same_file("acme/sharded", "sharded", name));
    }
    /* No generation_config.json on the hub: asked once (HEAD), not an error. */
    ASSERT_EQ(hub_count(&H, "HEAD", "generation_config.json", -1), 1);
    ASSERT_EQ(tmp_entries(), 0);
}

TEST(sharded_download) {
    if (setup("pull-sharded", NULL)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    sharded_body();
    hub_free(&H);
}

static void resume_in_one_pull_body(void) {
    pull_result res;
    eng_error err = {0};
    int rc = pull("acme/tiny", "tiny", 3, NULL, NULL, &res, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(res.resumed, 1);
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "model.safetensors"));
    /* The second GET asked for the rest only, from where the first stopped (about halfway). */
    long long start = hub_max_range_start(&H, "/cdn/acme/tiny/");
    char path[1024];
    hub_repo_file(&H, "acme/tiny", "model.safetensors", path, sizeof path);
    long long total = tu_file_size(path);
    ASSERT_TRUE(start > 0);
    ASSERT_TRUE(start <= total / 2 + 1);
    ASSERT_EQ(hub_count(&H, "GET", "/cdn/acme/tiny/", 1), 1);
    ASSERT_EQ(res.fetched_bytes, res.total_bytes); /* half, then the other half */
    ASSERT_EQ(tmp_entries(), 0);
}

TEST(resume_after_dropped_connection) {
    const char *args[] = {"--drop", "model.safetensors:1", NULL};
    if (setup("pull-drop", args)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    resume_in_one_pull_body();
    hub_free(&H);
}

static void resume_across_pulls_body(void) {
    pull_result res;
    eng_error err = {0};
    /* No retries: the drop ends the pull; the partial file stays for the next one. */
    int rc = pull("acme/tiny", "tiny", 0, NULL, NULL, &res, &err);
    ASSERT_EQ(rc, ENG_EIO);
    ASSERT_CONTAINS(err.msg, "model.safetensors");
    ASSERT_CONTAINS(err.msg, "next pull resumes");
    ASSERT_TRUE(model_absent("tiny"));
    char part[1024], src[1024];
    snprintf(part, sizeof part, "%s/tmp/pull.tiny/model.safetensors.part", H.store);
    hub_repo_file(&H, "acme/tiny", "model.safetensors", src, sizeof src);
    long long kept = tu_file_size(part), total = tu_file_size(src);
    ASSERT_TRUE(kept > 0 && kept < total);
    hub_clear_log(&H);
    rc = pull("acme/tiny", "tiny", 0, NULL, NULL, &res, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(res.resumed, 1);
    ASSERT_EQ(hub_max_range_start(&H, "/cdn/acme/tiny/"), kept);
    /* Only the rest of the weights came again: the small files finished in the first pull. */
    ASSERT_EQ(res.fetched_bytes, (uint64_t)(total - kept));
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "model.safetensors"));
    ASSERT_EQ(tmp_entries(), 0);
}

TEST(resume_across_pulls) {
    const char *args[] = {"--drop", "model.safetensors:1", NULL};
    if (setup("pull-resume", args)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    resume_across_pulls_body();
    hub_free(&H);
}

static void no_range_body(void) {
    pull_result res;
    eng_error err = {0};
    int rc = pull("acme/tiny", "tiny", 3, NULL, NULL, &res, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "model.safetensors"));
    /* The server ignored the Range: the bytes came again from zero and still verify. */
    ASSERT_TRUE(res.fetched_bytes > res.total_bytes);
}

TEST(server_without_range_support) {
    const char *args[] = {"--drop", "model.safetensors:1", "--no-range", NULL};
    if (setup("pull-norange", args)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    no_range_body();
    hub_free(&H);
}

static void corrupted_body(void) {
    pull_result res;
    eng_error err = {0};
    int rc = pull("acme/tiny", "tiny", 2, NULL, NULL, &res, &err);
    ASSERT_EQ(rc, ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "model.safetensors");
    ASSERT_CONTAINS(err.msg, "sha256");
    ASSERT_TRUE(model_absent("tiny"));
    ASSERT_EQ(tmp_entries(), 0); /* no .part, no staging directory */
}

TEST(corrupted_file_detected) {
    const char *args[] = {"--corrupt", "model.safetensors", NULL};
    if (setup("pull-corrupt", args)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    corrupted_body();
    hub_free(&H);
}

static void not_found_body(void) {
    pull_result res;
    eng_error err = {0};
    ASSERT_EQ(pull("acme/nope", "nope", 2, NULL, NULL, &res, &err), ENG_ENOTFOUND);
    ASSERT_CONTAINS(err.msg, "acme/nope");
    ASSERT_CONTAINS(err.msg, "404");
    ASSERT_TRUE(model_absent("nope"));
    ASSERT_EQ(pull("acme/noweights", "nw", 2, NULL, NULL, &res, &err), ENG_ENOTFOUND);
    ASSERT_CONTAINS(err.msg, "model.safetensors");
    ASSERT_CONTAINS(err.msg, "404");
    ASSERT_TRUE(model_absent("nw"));
    ASSERT_EQ(pull("acme/tiny", "tiny", 2, NULL, "v9", &res, &err), ENG_ENOTFOUND);
    ASSERT_CONTAINS(err.msg, "revision 'v9'");
    ASSERT_TRUE(model_absent("tiny"));
    ASSERT_EQ(tmp_entries(), 0);
    /* Nothing large was fetched before the 404s were known. */
    ASSERT_EQ(hub_count(&H, "GET", "/cdn/", -1), 0);
}

TEST(not_found_reported) {
    if (setup("pull-404", NULL)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    not_found_body();
    hub_free(&H);
}

static void gated_body(void) {
    pull_result res;
    eng_error err = {0};
    ASSERT_EQ(pull("acme/tiny", "tiny", 2, NULL, NULL, &res, &err), PULL_EAUTH);
    ASSERT_CONTAINS(err.msg, "HF_TOKEN");
    ASSERT_CONTAINS(err.msg, "401");
    ASSERT_TRUE(model_absent("tiny"));
    int rc = pull("acme/tiny", "tiny", 2, "s3cret", NULL, &res, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "model.safetensors"));
    /* The token went to the hub, never to the CDN host the hub redirected to. */
    ASSERT_TRUE(hub_count_auth(&H, "/resolve/") > 0);
    ASSERT_EQ(hub_count(&H, "GET", "/cdn/", -1), 1);
    ASSERT_EQ(hub_count_auth(&H, "/cdn/"), 0);
}

TEST(gated_repo_needs_token) {
    const char *args[] = {"--token", "s3cret", "--cdn-host", "localhost", NULL};
    if (setup("pull-gated", args)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    gated_body();
    hub_free(&H);
}

static void present_body(void) {
    pull_result res;
    eng_error err = {0};
    ASSERT_OK(pull("acme/tiny", "tiny", 2, NULL, NULL, &res, &err));
    hub_clear_log(&H);
    ASSERT_EQ(pull("acme/tiny", "tiny", 2, NULL, NULL, &res, &err), STORE_EEXIST);
    store s;
    ASSERT_OK(store_open(&s, H.store, &err));
    pull_options opt = {.endpoint = H.endpoint, .token = "", .retries = 1};
    int pulled = -1;
    ASSERT_OK(pull_model_if_missing(&s, "tiny", "acme/tiny", NULL, &opt, &pulled, &err));
    ASSERT_EQ(pulled, 0);
    ASSERT_EQ(hub_count(&H, NULL, "/", -1), 0); /* present: not a single request */
    ASSERT_OK(pull_model_if_missing(&s, "sharded", "acme/sharded", NULL, &opt, &pulled, &err));
    ASSERT_EQ(pulled, 1);
    ASSERT_EQ(pull_model_if_missing(&s, "unknown-model", NULL, NULL, &opt, &pulled, &err),
              ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "unknown-model");
    store_close(&s);
}

TEST(present_model_is_not_pulled) {
    if (setup("pull-present", NULL)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    present_body();
    hub_free(&H);
}

TEST(names_and_defaults) {
    ASSERT_STREQ(pull_default_repo("dia-1.6b"), "nari-labs/Dia-1.6B-0626");
    ASSERT_STREQ(pull_default_repo("dac-44khz"), "descript/dac_44khz");
    ASSERT_TRUE(pull_default_repo("other") == NULL);
    ASSERT_TRUE(pull_repo_valid("nari-labs/Dia-1.6B-0626"));
    ASSERT_TRUE(pull_repo_valid("gpt2"));
    ASSERT_TRUE(!pull_repo_valid("a/b/c"));
    ASSERT_TRUE(!pull_repo_valid("../etc"));
    ASSERT_TRUE(!pull_repo_valid("a/.."));
    ASSERT_TRUE(!pull_repo_valid("a b/c"));
    ASSERT_TRUE(!pull_repo_valid(""));
}

/* Runs the voxq binary with env assignments (NULL-terminated "K=V" list) and args; returns its
 * exit code and its stderr in errbuf. */
static int run_voxq(const char *const *env, const char *const *args, char *errbuf, size_t n) {
    char errfile[1024];
    snprintf(errfile, sizeof errfile, "%s/stderr.txt", H.dir);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *fp = freopen(errfile, "w", stderr);
        (void)fp;
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        unsetenv("HF_TOKEN");
        unsetenv("HUGGING_FACE_HUB_TOKEN");
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        char bin[1024];
        snprintf(bin, sizeof bin, "%s/voxq", VOXQ_BINARY_DIR);
        const char *argv[32] = {bin};
        int argc = 1;
        for (int i = 0; args[i] && argc < 31; i++)
            argv[argc++] = args[i];
        argv[argc] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    char *text = tu_read(errfile, NULL);
    snprintf(errbuf, n, "%s", text ? text : "");
    free(text);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void cli_body(void) {
    char out[8192], endpoint[128];
    snprintf(endpoint, sizeof endpoint, "HF_ENDPOINT=%s", H.endpoint);
    const char *env[] = {endpoint, NULL};
    const char *missing[] = {"store", "pull",    "acme/nope", "--model",
                             "nope",  "--store", H.store,     NULL};
    ASSERT_EQ(run_voxq(env, missing, out, sizeof out), 2);
    ASSERT_CONTAINS(out, "repository acme/nope not found");
    const char *ok[] = {"store", "pull", "acme/tiny", "--model", "tiny", "--store", H.store, NULL};
    ASSERT_EQ(run_voxq(env, ok, out, sizeof out), 0);
    ASSERT_CONTAINS(out, "pull: 100%");
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "model.safetensors"));
    ASSERT_EQ(run_voxq(env, ok, out, sizeof out), 0); /* present: says so, exit 0 */
    const char *bad[] = {"store", "pull", "acme/tiny", "--store", H.store, NULL};
    ASSERT_EQ(run_voxq(env, bad, out, sizeof out), 2); /* no --model for an unknown repo */
    const char *corrupt[] = {"store",   "pull",  "acme/tiny", "--model", "other",
                             "--store", H.store, "--retries", "0",       NULL};
    hub_stop(&H);
    const char *args[] = {"--corrupt", "model.safetensors", NULL};
    ASSERT_OK(hub_start(&H, args));
    snprintf(endpoint, sizeof endpoint, "HF_ENDPOINT=%s", H.endpoint);
    ASSERT_EQ(run_voxq(env, corrupt, out, sizeof out), 1);
    ASSERT_CONTAINS(out, "corrupted download");
    ASSERT_TRUE(model_absent("other"));
}

TEST(command_line) {
    if (setup("pull-cli", NULL)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    cli_body();
    hub_free(&H);
}

/* The worker's first run with VOXQ_PULL=1: it pulls the model it lacks, logs that, and then
 * goes on to the codec, which this hub does not have: a clear log line and exit 1, before any
 * Redis connection. Without VOXQ_PULL nothing is fetched. */
static void worker_body(void) {
    char out[16384], endpoint[128], store_env[700], outdir[700];
    snprintf(endpoint, sizeof endpoint, "HF_ENDPOINT=%s", H.endpoint);
    snprintf(store_env, sizeof store_env, "VOXQ_STORE=%s", H.store);
    snprintf(outdir, sizeof outdir, "VOXQ_OUTPUT_DIR=%s/out", H.dir);
    const char *off[] = {endpoint,
                         store_env,
                         outdir,
                         "VOXQ_MODEL=tiny",
                         "VOXQ_METRICS_ADDR=off",
                         "VOXQ_REDIS_URL=redis://127.0.0.1:1",
                         NULL};
    const char *args[] = {"worker", NULL};
    ASSERT_NE(run_voxq(off, args, out, sizeof out), 0); /* nothing to load */
    ASSERT_TRUE(!strstr(out, "VOXQ_PULL"));
    ASSERT_EQ(hub_count(&H, NULL, "/", -1), 0);
    const char *on[] = {endpoint,
                        store_env,
                        outdir,
                        "VOXQ_MODEL=tiny",
                        "VOXQ_METRICS_ADDR=off",
                        "VOXQ_REDIS_URL=redis://127.0.0.1:1",
                        "VOXQ_PULL=1",
                        "VOXQ_PULL_REPO=acme/tiny",
                        "VOXQ_PULL_CODEC_REPO=acme/no-codec",
                        NULL};
    ASSERT_EQ(run_voxq(on, args, out, sizeof out), 1);
    ASSERT_CONTAINS(out, "VOXQ_PULL: tiny is not in the store");
    ASSERT_CONTAINS(out, "pull tiny: 100%");
    ASSERT_CONTAINS(out, "VOXQ_PULL: tiny/original is in the store");
    ASSERT_CONTAINS(out, "cannot pull dac-44khz");
    ASSERT_CONTAINS(out, "acme/no-codec");
    ASSERT_TRUE(same_file("acme/tiny", "tiny", "model.safetensors"));
}

TEST(worker_first_run) {
    if (setup("pull-worker", NULL)) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    worker_body();
    hub_free(&H);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
