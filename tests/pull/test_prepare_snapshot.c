/* test_prepare_snapshot.c - deploy/prepare-snapshot.sh against the loopback hub with a tiny Dia
 * checkpoint: the first run pulls, quantizes, verifies and prints what to snapshot; a second
 * run does no work at all (no request to the hub, artifacts untouched, "nothing to do"); asking
 * for int4 later adds exactly that, and the run after it is again a no-op. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hub_fixture.h"
#include "ops/store.h"
#include "store/store_testutil.h"
#include "test.h"
#include "tiny_ckpt.h"

static hub H;

static char *manifest(const char *ref) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/%s/MANIFEST.json", H.store, ref);
    return tu_read(path, NULL);
}

/* Runs the script with the test's store, model and hub; output into H.dir/run.txt. */
static int run_script(int int4, char **output) {
    char script[1024], bin[1024], endpoint[128], out[700];
    snprintf(script, sizeof script, "%s/deploy/prepare-snapshot.sh", VOXQ_SOURCE_DIR);
    snprintf(bin, sizeof bin, "%s/voxq", VOXQ_BINARY_DIR);
    snprintf(endpoint, sizeof endpoint, "HF_ENDPOINT=%s", H.endpoint);
    snprintf(out, sizeof out, "%s/run.txt", H.dir);
    const char *env[] = {endpoint, "VOXQ_THREADS=2", NULL};
    const char *argv[] = {"/bin/sh",  script,         "--no-install",  "--voxq",
                          bin,        "--store",      H.store,         "--model",
                          "tiny-dia", "--repo",       "acme/tiny-dia", "--codec",
                          "codec",    "--codec-repo", "acme/codec",    int4 ? "--int4" : NULL,
                          NULL};
    int rc = hub_run(env, argv, out);
    *output = tu_read(out, NULL);
    if (rc != 0 && *output) fprintf(stderr, "%s\n", *output);
    return rc;
}

static void twice_body(void) {
    char *out = NULL;
    ASSERT_EQ(run_script(0, &out), 0);
    ASSERT_CONTAINS(out, "tiny-dia/original: pulled acme/tiny-dia");
    ASSERT_CONTAINS(out, "codec/original: pulled acme/codec");
    ASSERT_CONTAINS(out, "== quantize");
    ASSERT_CONTAINS(out, "tiny-dia/int8: OK");
    ASSERT_CONTAINS(out, "snapshot this disk");
    ASSERT_CONTAINS(out, "ready:");
    free(out);
    store s;
    eng_error err = {0};
    ASSERT_OK(store_open(&s, H.store, &err));
    ASSERT_OK(
        store_verify(&s, "tiny-dia", "original", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    ASSERT_OK(store_verify(&s, "tiny-dia", "int8", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    ASSERT_OK(store_verify(&s, "codec", "original", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    ASSERT_EQ(store_variant_exists_valid(&s, "tiny-dia", "int4"), 0);
    store_close(&s);
    char *orig = manifest("tiny-dia/original"), *int8 = manifest("tiny-dia/int8");
    ASSERT_TRUE(orig && int8);

    hub_clear_log(&H);
    ASSERT_EQ(run_script(0, &out), 0);
    ASSERT_CONTAINS(out, "nothing to do");
    ASSERT_TRUE(!strstr(out, "pulled") && !strstr(out, "warm the page cache"));
    ASSERT_EQ(hub_count(&H, NULL, "/", -1), 0); /* not one request to the hub */
    char *orig2 = manifest("tiny-dia/original"), *int82 = manifest("tiny-dia/int8");
    ASSERT_STREQ(orig, orig2); /* same artifacts, same creation times */
    ASSERT_STREQ(int8, int82);
    free(out);
    free(orig2);
    free(int82);

    ASSERT_EQ(run_script(1, &out), 0); /* int4 asked for later: only that is made */
    ASSERT_CONTAINS(out, "tiny-dia/int4: OK");
    ASSERT_TRUE(!strstr(out, "pulled"));
    free(out);
    orig2 = manifest("tiny-dia/original");
    int82 = manifest("tiny-dia/int8");
    ASSERT_STREQ(orig, orig2);
    ASSERT_STREQ(int8, int82);
    ASSERT_EQ(run_script(1, &out), 0);
    ASSERT_CONTAINS(out, "nothing to do");
    free(out);
    free(orig);
    free(int8);
    free(orig2);
    free(int82);
}

TEST(second_run_does_nothing) {
    char dir[1024];
    int rc = hub_init(&H, "snapshot");
    if (!rc) rc = hub_make_repo(&H, "acme/codec", 0, 0, 64, 7);
    snprintf(dir, sizeof dir, "%s/acme/tiny-dia", H.repos);
    if (!rc) rc = mkdir(dir, 0755) || tiny_dia_write(dir, 1, ENG_DT_F32);
    if (!rc) rc = hub_start(&H, NULL);
    if (rc) {
        hub_free(&H);
        TEST_FAIL_("hub setup failed");
    }
    twice_body();
    hub_free(&H);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
