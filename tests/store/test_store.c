/* test_store.c - the artifact store in one process: names, layout, publishing, manifests,
 * verification, listing, removal and import of a real (tiny, generated) Dia checkpoint. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/tiny_ckpt.h"
#include "ops/sha256.h"
#include "ops/store.h"
#include "store_testutil.h"
#include "test.h"

/* Room for the store root plus a suffix, so -Wformat-truncation stays quiet. */
#define PATH_BUF (STORE_PATH_MAX + 256)

/* A fresh store in a temp dir; the dir path stays in `tmp` for cleanup. */
typedef struct fixture {
    char tmp[256];
    store st;
} fixture;

static int fixture_open(fixture *f) {
    char root[300];
    if (tu_mkdtemp("unit", f->tmp, sizeof f->tmp)) return -1;
    snprintf(root, sizeof root, "%s/store", f->tmp);
    return store_open(&f->st, root, NULL);
}

static void fixture_close(fixture *f) {
    store_close(&f->st);
    tu_rmtree(f->tmp);
}

/* Stages config.json + weights.bin (n pattern bytes of seed) and commits with `extra`. */
static int publish(const store *s, const char *model, const char *variant, uint32_t seed, size_t n,
                   int flags, const cJSON *extra, eng_error *err) {
    store_stage stage;
    int rc = store_stage_begin(s, model, variant, flags, &stage, err);
    if (rc) return rc;
    char path[PATH_BUF], config[64];
    snprintf(config, sizeof config, "{\"seed\": %u}\n", seed);
    if (store_stage_path(&stage, "config.json", path, sizeof path, err) ||
        tu_write(path, config, strlen(config)) ||
        store_stage_path(&stage, "weights.bin", path, sizeof path, err) ||
        tu_write_pattern(path, n, seed)) {
        store_stage_abort(&stage);
        return -100;
    }
    return store_stage_commit(&stage, extra, NULL, NULL, err);
}

static void variant_file(const fixture *f, const char *model, const char *variant, const char *name,
                         char *buf, size_t n) {
    snprintf(buf, n, "%s/models/%s/%s/%s", f->st.root, model, variant, name);
}

static int tmp_entries(const fixture *f) {
    char path[PATH_BUF];
    snprintf(path, sizeof path, "%s/tmp", f->st.root);
    return tu_count_entries(path);
}

TEST(names_are_validated) {
    static const char *const good[] = {"dia-1.6b",  "dac-44khz", "original", "int8",
                                       "gptq-int4", "a",         "x_y.z",    "0"};
    static const char *const bad[] = {
        "",      ".",
        "..",    "../x",
        "a/b",   "/abs",
        "a..b",  ".hidden",
        "-flag", "Dia",
        "a b",   "a@b",
        "a\\b",  "\xc3\xa4",
        "a\nb",  "x123456789012345678901234567890123456789012345678901234567890123"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!store_name_valid(good[i])) TEST_FAIL_("'%s' refused", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (store_name_valid(bad[i])) TEST_FAIL_("'%s' accepted", bad[i]);
    ASSERT_TRUE(!store_name_valid(NULL));
    ASSERT_TRUE(store_file_name_valid("model-00001-of-00002.safetensors"));
    ASSERT_TRUE(store_file_name_valid("README.md"));
    ASSERT_TRUE(!store_file_name_valid("../config.json"));
    ASSERT_TRUE(!store_file_name_valid("sub/config.json"));
    ASSERT_TRUE(!store_file_name_valid(".."));
}

/* Every entry point that builds a path refuses a name that could leave the store root. */
TEST(escaping_names_rejected_everywhere) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    char buf[STORE_PATH_MAX], model[STORE_NAME_MAX], variant[STORE_NAME_MAX];
    eng_error err = {0};
    ASSERT_EQ(store_variant_dir(&f.st, "..", "x", buf, sizeof buf, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "invalid model name '..'");
    ASSERT_EQ(store_variant_dir(&f.st, "m", "../../etc", buf, sizeof buf, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "invalid variant name");
    ASSERT_EQ(store_model_dir(&f.st, "/etc", buf, sizeof buf, &err), ENG_EINVAL);
    ASSERT_EQ(store_split_ref("../x/original", model, variant, &err), ENG_EINVAL);
    ASSERT_EQ(store_split_ref("m/a/b", model, variant, &err), ENG_EINVAL);
    ASSERT_EQ(store_split_ref("m", model, variant, &err), ENG_EINVAL);
    ASSERT_OK(store_split_ref("dia-1.6b/int8", model, variant, &err));
    ASSERT_STREQ(model, "dia-1.6b");
    ASSERT_STREQ(variant, "int8");
    store_stage stage;
    ASSERT_EQ(store_stage_begin(&f.st, "../../tmp", "x", 0, &stage, &err), ENG_EINVAL);
    ASSERT_EQ(store_stage_begin(&f.st, "m", "..", 0, &stage, &err), ENG_EINVAL);
    ASSERT_EQ(store_remove(&f.st, "m", "../../..", 0, &err), ENG_EINVAL);
    ASSERT_EQ(store_import(&f.st, f.tmp, "../evil", 0, NULL, NULL, &err), ENG_EINVAL);
    ASSERT_EQ(store_verify(&f.st, "m", "a/../../b", 0, NULL, NULL, NULL, &err), ENG_EINVAL);
    /* File names inside a stage. */
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", 0, &stage, &err));
    ASSERT_EQ(store_stage_path(&stage, "../escape", buf, sizeof buf, &err), ENG_EINVAL);
    ASSERT_EQ(store_stage_path(&stage, "a/b", buf, sizeof buf, &err), ENG_EINVAL);
    ASSERT_EQ(store_stage_path(&stage, STORE_MANIFEST, buf, sizeof buf, &err), ENG_EINVAL);
    store_stage_abort(&stage);
    /* Nothing was created beside the store root. */
    ASSERT_EQ(tu_count_entries(f.tmp), 1);
    fixture_close(&f);
}

TEST(open_creates_layout_and_absolute_root) {
    char tmp[256], cwd[4096];
    ASSERT_OK(tu_mkdtemp("open", tmp, sizeof tmp));
    ASSERT_TRUE(getcwd(cwd, sizeof cwd) != NULL);
    ASSERT_OK(chdir(tmp));
    store s;
    int rc = store_open(&s, "nested", NULL);
    ASSERT_OK(chdir(cwd));
    ASSERT_OK(rc);
    char want[400], resolved[4096];
    snprintf(want, sizeof want, "%s/nested", tmp);
    ASSERT_TRUE(realpath(want, resolved) != NULL);
    ASSERT_STREQ(s.root, resolved);
    static const char *const sub[] = {"models", "locks", "tmp"};
    for (int i = 0; i < 3; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", s.root, sub[i]);
        ASSERT_TRUE(tu_exists(p));
    }
    /* A root that is a file is an error naming it. */
    snprintf(want, sizeof want, "%s/file", tmp);
    ASSERT_OK(tu_write(want, "x", 1));
    eng_error err = {0};
    ASSERT_NE(store_open(&s, want, &err), 0);
    ASSERT_CONTAINS(err.msg, want);
    tu_rmtree(tmp);
}

TEST(default_root_from_env) {
    unsetenv("VOXQ_STORE");
    ASSERT_STREQ(store_default_root(), "./store");
    setenv("VOXQ_STORE", "", 1);
    ASSERT_STREQ(store_default_root(), "./store");
    setenv("VOXQ_STORE", "/models", 1);
    ASSERT_STREQ(store_default_root(), "/models");
    unsetenv("VOXQ_STORE");
}

/* A publish produces the documented layout and a manifest whose every field checks out against
 * the files themselves (sizes, sha256 recomputed independently, digest, extras). */
TEST(publish_writes_manifest) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    cJSON *extra = cJSON_Parse(
        "{\"method\": \"int8\", \"source\": {\"model\": \"m\", \"variant\": \"original\", "
        "\"digest\": \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"},"
        " \"params\": {\"group\": 128}, \"quality\": {\"rel_err\": 0.004}}");
    ASSERT_TRUE(extra != NULL);
    eng_error err = {0};
    ASSERT_OK(publish(&f.st, "m", "int8", 5, 200000, 0, extra, &err));
    cJSON_Delete(extra);
    ASSERT_EQ(store_variant_state(&f.st, "m", "int8", NULL), STORE_VALID);
    ASSERT_TRUE(store_variant_exists_valid(&f.st, "m", "int8"));
    ASSERT_EQ(store_variant_state(&f.st, "m", "int4", NULL), STORE_ABSENT);

    store_manifest m;
    ASSERT_OK(store_manifest_read(&f.st, "m", "int8", &m, &err));
    ASSERT_EQ(m.format, 1);
    ASSERT_STREQ(m.model, "m");
    ASSERT_STREQ(m.variant, "int8");
    ASSERT_STREQ(m.method, "int8");
    ASSERT_STREQ(m.tool, "voxq " VOXQ_VERSION);
    ASSERT_STREQ(m.source_digest,
                 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    ASSERT_EQ(strlen(m.created), 20);
    ASSERT_EQ(m.created[10], 'T');
    ASSERT_EQ(m.created[19], 'Z');
    ASSERT_EQ(m.nfiles, 2);
    ASSERT_STREQ(m.files[0].name, "config.json");
    ASSERT_STREQ(m.files[1].name, "weights.bin");
    ASSERT_EQ(m.files[1].size, 200000);
    ASSERT_EQ(m.total_bytes, m.files[0].size + 200000);
    char path[PATH_BUF], hex[65];
    variant_file(&f, "m", "int8", "weights.bin", path, sizeof path);
    ASSERT_OK(sha256_file(path, hex, NULL, NULL, NULL, NULL));
    ASSERT_STREQ(store_manifest_file(&m, "weights.bin")->sha256, hex);
    ASSERT_TRUE(store_manifest_file(&m, "nope") == NULL);
    /* The digest is sha256 of the sha256sum-style listing. */
    char listing[300];
    snprintf(listing, sizeof listing, "%s  config.json\n%s  weights.bin\n", m.files[0].sha256,
             m.files[1].sha256);
    sha256_buf_hex(listing, strlen(listing), hex);
    ASSERT_STREQ(m.digest, hex);
    const cJSON *q = cJSON_GetObjectItem(cJSON_GetObjectItem(m.json, "quality"), "rel_err");
    ASSERT_NEAR(cJSON_GetNumberValue(q), 0.004, 1e-12);
    const cJSON *g = cJSON_GetObjectItem(cJSON_GetObjectItem(m.json, "params"), "group");
    ASSERT_EQ(cJSON_GetNumberValue(g), 128);
    store_manifest_free(&m);
    store_manifest_free(&m); /* twice is harmless */
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

TEST(extras_cannot_override_store_fields) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    cJSON *extra = cJSON_Parse("{\"files\": {}}");
    eng_error err = {0};
    ASSERT_EQ(publish(&f.st, "m", "v", 1, 10, 0, extra, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "'files'");
    cJSON_Delete(extra);
    extra = cJSON_Parse("[1]");
    ASSERT_EQ(publish(&f.st, "m", "v", 1, 10, 0, extra, &err), ENG_EINVAL);
    cJSON_Delete(extra);
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_ABSENT);
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

TEST(second_publish_is_already_published) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    eng_error err = {0};
    ASSERT_OK(publish(&f.st, "m", "v", 1, 1000, 0, NULL, &err));
    ASSERT_EQ(publish(&f.st, "m", "v", 2, 1000, 0, NULL, &err), STORE_EEXIST);
    ASSERT_CONTAINS(err.msg, "m/v: already published");
    /* The first artifact is untouched. */
    char path[PATH_BUF];
    variant_file(&f, "m", "v", "config.json", path, sizeof path);
    char *text = tu_read(path, NULL);
    ASSERT_CONTAINS(text, "\"seed\": 1}");
    free(text);
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

/* STORE_FORCE replaces a valid artifact (swapped atomically) and the old files are gone. */
TEST(forced_publish_replaces) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    eng_error err = {0};
    ASSERT_OK(publish(&f.st, "m", "v", 1, 1000, 0, NULL, &err));
    store_manifest before, after;
    ASSERT_OK(store_manifest_read(&f.st, "m", "v", &before, NULL));
    ASSERT_OK(publish(&f.st, "m", "v", 2, 3000, STORE_FORCE, NULL, &err));
    ASSERT_OK(store_manifest_read(&f.st, "m", "v", &after, NULL));
    int differ = strcmp(before.digest, after.digest) != 0;
    uint64_t size = store_manifest_file(&after, "weights.bin")->size;
    store_manifest_free(&before);
    store_manifest_free(&after);
    ASSERT_TRUE(differ);
    ASSERT_EQ(size, 3000);
    ASSERT_OK(store_verify(&f.st, "m", "v", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

/* A variant directory without a valid manifest is detected, blocks an ordinary publish, and is
 * replaced by a forced one. */
TEST(damaged_variant_detected_and_force_replaced) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    char dir[PATH_BUF], path[PATH_BUF + 32];
    snprintf(dir, sizeof dir, "%s/models/m", f.st.root);
    ASSERT_OK(mkdir(dir, 0755));
    snprintf(dir, sizeof dir, "%s/models/m/v", f.st.root);
    ASSERT_OK(mkdir(dir, 0755));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ASSERT_OK(tu_write(path, "half", 4));
    eng_error why = {0};
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", &why), STORE_INVALID);
    ASSERT_CONTAINS(why.msg, "MANIFEST.json: missing");
    ASSERT_TRUE(!store_variant_exists_valid(&f.st, "m", "v"));
    eng_error err = {0};
    ASSERT_EQ(publish(&f.st, "m", "v", 1, 100, 0, NULL, &err), STORE_ECORRUPT);
    ASSERT_CONTAINS(err.msg, "forced publish");
    /* A manifest that is not JSON. */
    snprintf(path, sizeof path, "%s/MANIFEST.json", dir);
    ASSERT_OK(tu_write(path, "{not json", 9));
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", &why), STORE_INVALID);
    ASSERT_CONTAINS(why.msg, "not valid JSON");
    ASSERT_OK(publish(&f.st, "m", "v", 1, 100, STORE_FORCE, NULL, &err));
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_VALID);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ASSERT_TRUE(!tu_exists(path));
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

/* Rewrites one field of a published manifest (keeping it valid JSON). */
static void edit_manifest(const fixture *f, const char *model, const char *variant, const char *key,
                          cJSON *value) {
    char path[PATH_BUF];
    variant_file(f, model, variant, STORE_MANIFEST, path, sizeof path);
    char *text = tu_read(path, NULL);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    cJSON_ReplaceItemInObject(doc, key, value);
    text = cJSON_Print(doc);
    tu_write(path, text, strlen(text));
    free(text);
    cJSON_Delete(doc);
}

TEST(manifest_tampering_detected) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    ASSERT_OK(publish(&f.st, "m", "v", 1, 100, 0, NULL, NULL));
    eng_error why = {0};
    edit_manifest(
        &f, "m", "v", "digest",
        cJSON_CreateString("ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"));
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", &why), STORE_INVALID);
    ASSERT_CONTAINS(why.msg, "'digest' does not match");
    ASSERT_OK(publish(&f.st, "m", "v", 1, 100, STORE_FORCE, NULL, NULL));
    edit_manifest(&f, "m", "v", "variant", cJSON_CreateString("other"));
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", &why), STORE_INVALID);
    ASSERT_CONTAINS(why.msg, "MANIFEST.json names m/other");
    ASSERT_OK(publish(&f.st, "m", "v", 1, 100, STORE_FORCE, NULL, NULL));
    edit_manifest(&f, "m", "v", "format", cJSON_CreateNumber(2));
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", &why), STORE_INVALID);
    ASSERT_CONTAINS(why.msg, "'format'");
    ASSERT_OK(publish(&f.st, "m", "v", 1, 100, STORE_FORCE, NULL, NULL));
    edit_manifest(&f, "m", "v", "files",
                  cJSON_Parse("{\"../x\": {\"size\": 1, \"sha256\": \"00\"}}"));
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", &why), STORE_INVALID);
    ASSERT_CONTAINS(why.msg, "invalid file name '../x'");
    fixture_close(&f);
}

/* verify: a single flipped bit in a 2 MB file is caught by the hash check and named; the cheap
 * check misses it by design; size changes, missing and unlisted files are named too. */
TEST(verify_catches_flipped_byte) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    ASSERT_OK(publish(&f.st, "m", "v", 3, (2u << 20) + 17, 0, NULL, NULL));
    eng_error err = {0};
    store_report report;
    ASSERT_OK(store_verify(&f.st, "m", "v", STORE_VERIFY_HASHES, NULL, NULL, &report, &err));
    ASSERT_EQ(report.nproblems, 0);
    store_report_free(&report);
    char path[PATH_BUF];
    variant_file(&f, "m", "v", "weights.bin", path, sizeof path);
    ASSERT_OK(tu_flip_byte(path, 1234567, 0x10));
    ASSERT_OK(store_verify(&f.st, "m", "v", 0, NULL, NULL, &report, &err));
    store_report_free(&report);
    ASSERT_EQ(store_verify(&f.st, "m", "v", STORE_VERIFY_HASHES, NULL, NULL, &report, &err),
              STORE_ECORRUPT);
    ASSERT_EQ(report.nproblems, 1);
    ASSERT_CONTAINS(report.problems[0], "weights.bin: sha256");
    ASSERT_CONTAINS(err.msg, "m/v: weights.bin: sha256");
    store_report_free(&report);
    ASSERT_OK(tu_flip_byte(path, 1234567, 0x10));
    ASSERT_OK(store_verify(&f.st, "m", "v", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    /* Truncation, a missing file and an unlisted one. */
    ASSERT_OK(truncate(path, 1000));
    variant_file(&f, "m", "v", "config.json", path, sizeof path);
    ASSERT_OK(unlink(path));
    variant_file(&f, "m", "v", "extra.bin", path, sizeof path);
    ASSERT_OK(tu_write(path, "x", 1));
    ASSERT_EQ(store_verify(&f.st, "m", "v", STORE_VERIFY_HASHES, NULL, NULL, &report, &err),
              STORE_ECORRUPT);
    ASSERT_EQ(report.nproblems, 3);
    int saw = 0;
    for (size_t i = 0; i < report.nproblems; i++) {
        saw += strstr(report.problems[i], "weights.bin: size 1000, manifest says") != NULL;
        saw += strstr(report.problems[i], "config.json: missing") != NULL;
        saw += strstr(report.problems[i], "extra.bin: not listed") != NULL;
    }
    store_report_free(&report);
    ASSERT_EQ(saw, 3);
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_INVALID);
    ASSERT_EQ(store_verify(&f.st, "m", "absent", 0, NULL, NULL, NULL, &err), ENG_ENOTFOUND);
    fixture_close(&f);
}

/* Staged entries must be plain files: a subdirectory or a symlink is refused, nothing is
 * published and the staging directory is removed (without following the link). */
TEST(commit_refuses_links_and_subdirs) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    store_stage stage;
    eng_error err = {0};
    char path[PATH_BUF], victim[300];
    snprintf(victim, sizeof victim, "%s/victim", f.tmp);
    ASSERT_OK(tu_write(victim, "keep", 4));
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", 0, &stage, &err));
    ASSERT_OK(store_stage_path(&stage, "link", path, sizeof path, NULL));
    ASSERT_OK(symlink(victim, path));
    ASSERT_EQ(store_stage_commit(&stage, NULL, NULL, NULL, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "'link' is not a regular file");
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", 0, &stage, &err));
    ASSERT_OK(store_stage_path(&stage, "sub", path, sizeof path, NULL));
    ASSERT_OK(mkdir(path, 0755));
    ASSERT_EQ(store_stage_commit(&stage, NULL, NULL, NULL, &err), ENG_EINVAL);
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_ABSENT);
    ASSERT_EQ(tmp_entries(&f), 0);
    ASSERT_EQ(tu_file_size(victim), 4);
    fixture_close(&f);
}

/* A writer that bypassed the lock got there first: commit notices at rename time, keeps theirs,
 * deletes ours and says "already published". */
TEST(rename_race_loser_cleans_up) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    ASSERT_OK(publish(&f.st, "m", "theirs", 8, 500, 0, NULL, NULL));
    store_stage stage;
    eng_error err = {0};
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", 0, &stage, &err));
    char path[PATH_BUF], theirs[STORE_PATH_MAX], target[STORE_PATH_MAX];
    ASSERT_OK(store_stage_path(&stage, "weights.bin", path, sizeof path, NULL));
    ASSERT_OK(tu_write_pattern(path, 700, 9));
    /* Their artifact appears at our target, its manifest rewritten for the new name. */
    ASSERT_OK(store_variant_dir(&f.st, "m", "theirs", theirs, sizeof theirs, NULL));
    ASSERT_OK(store_variant_dir(&f.st, "m", "v", target, sizeof target, NULL));
    ASSERT_OK(rename(theirs, target));
    edit_manifest(&f, "m", "v", "variant", cJSON_CreateString("v"));
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_VALID);
    ASSERT_EQ(store_stage_commit(&stage, NULL, NULL, NULL, &err), STORE_EEXIST);
    ASSERT_CONTAINS(err.msg, "already published");
    store_manifest m;
    ASSERT_OK(store_manifest_read(&f.st, "m", "v", &m, NULL));
    uint64_t size = store_manifest_file(&m, "weights.bin")->size;
    store_manifest_free(&m);
    ASSERT_EQ(size, 500);
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

TEST(abort_removes_staging) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    store_stage stage;
    char path[PATH_BUF];
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", 0, &stage, NULL));
    ASSERT_OK(store_stage_path(&stage, "weights.bin", path, sizeof path, NULL));
    ASSERT_OK(tu_write_pattern(path, 1000, 1));
    ASSERT_EQ(tmp_entries(&f), 1);
    store_stage_abort(&stage);
    store_stage_abort(&stage); /* twice is harmless */
    ASSERT_EQ(tmp_entries(&f), 0);
    ASSERT_EQ(store_variant_state(&f.st, "m", "v", NULL), STORE_ABSENT);
    /* The lock is free again: a non-waiting writer gets it. */
    ASSERT_OK(store_stage_begin(&f.st, "m", "v", STORE_NOWAIT, &stage, NULL));
    store_stage_abort(&stage);
    fixture_close(&f);
}

TEST(list_and_remove) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    ASSERT_OK(publish(&f.st, "dia-1.6b", "original", 1, 5000, 0, NULL, NULL));
    ASSERT_OK(publish(&f.st, "dia-1.6b", "int8", 2, 1300, 0, NULL, NULL));
    ASSERT_OK(publish(&f.st, "dac-44khz", "original", 3, 700, 0, NULL, NULL));
    char dir[PATH_BUF];
    snprintf(dir, sizeof dir, "%s/models/dia-1.6b/int4", f.st.root);
    ASSERT_OK(mkdir(dir, 0755)); /* damaged: no manifest */
    snprintf(dir, sizeof dir, "%s/models/dia-1.6b/Bad Name", f.st.root);
    ASSERT_OK(mkdir(dir, 0755)); /* not a store name: skipped */
    store_entry *list;
    size_t n;
    ASSERT_OK(store_list(&f.st, NULL, &list, &n, NULL));
    ASSERT_EQ(n, 4);
    ASSERT_STREQ(list[0].model, "dac-44khz");
    ASSERT_STREQ(list[1].variant, "int4");
    ASSERT_EQ(list[1].state, STORE_INVALID);
    ASSERT_CONTAINS(list[1].problem, "MANIFEST.json: missing");
    ASSERT_STREQ(list[2].variant, "int8");
    ASSERT_EQ(list[2].state, STORE_VALID);
    ASSERT_EQ(list[2].bytes, 1300 + strlen("{\"seed\": 2}\n"));
    ASSERT_EQ(strlen(list[2].created), 20);
    ASSERT_STREQ(list[3].variant, "original");
    free(list);
    ASSERT_OK(store_list(&f.st, "dac-44khz", &list, &n, NULL));
    ASSERT_EQ(n, 1);
    free(list);
    ASSERT_OK(store_list(&f.st, "nothing", &list, &n, NULL));
    ASSERT_EQ(n, 0);
    free(list);

    eng_error err = {0};
    ASSERT_OK(store_remove(&f.st, "dac-44khz", "original", 0, &err));
    ASSERT_EQ(store_variant_state(&f.st, "dac-44khz", "original", NULL), STORE_ABSENT);
    snprintf(dir, sizeof dir, "%s/models/dac-44khz", f.st.root);
    ASSERT_TRUE(!tu_exists(dir)); /* the empty model directory goes too */
    ASSERT_EQ(store_remove(&f.st, "dac-44khz", "original", 0, &err), ENG_ENOTFOUND);
    ASSERT_OK(store_remove(&f.st, "dia-1.6b", "int4", 0, &err)); /* damaged ones can go too */
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

static void record_progress(void *ud, const char *file, uint64_t done, uint64_t total) {
    int *finished = ud;
    if (done == total && !strcmp(file, "model.safetensors")) (*finished)++;
}

/* Import of a real tiny Dia checkpoint: files byte-identical, manifest hashes match, progress
 * reported; a second import is "already published"; force redoes it. */
TEST(import_tiny_checkpoint) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    char src[300], extra_file[400];
    snprintf(src, sizeof src, "%s/download", f.tmp);
    ASSERT_OK(tiny_dia_write(src, 42, ENG_DT_BF16));
    snprintf(extra_file, sizeof extra_file, "%s/generation_config.json", src);
    ASSERT_OK(tu_write(extra_file, "{\"max_length\": 3072}", 20));
    snprintf(extra_file, sizeof extra_file, "%s/README.md", src);
    ASSERT_OK(tu_write(extra_file, "not copied", 10));
    int finished = 0;
    eng_error err = {0};
    ASSERT_OK(store_import(&f.st, src, "dia-tiny", 0, record_progress, &finished, &err));
    ASSERT_TRUE(finished >= 1);
    ASSERT_OK(
        store_verify(&f.st, "dia-tiny", "original", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    store_manifest m;
    ASSERT_OK(store_manifest_read(&f.st, "dia-tiny", "original", &m, &err));
    static const char *const names[] = {"config.json", "generation_config.json",
                                        "model.safetensors"};
    int identical = 0, hashes = 0;
    for (int i = 0; i < 3; i++) {
        char a[400], b[PATH_BUF], hex[65];
        snprintf(a, sizeof a, "%s/%s", src, names[i]);
        variant_file(&f, "dia-tiny", "original", names[i], b, sizeof b);
        size_t na = 0, nb = 0;
        char *da = tu_read(a, &na), *db = tu_read(b, &nb);
        identical += da && db && na == nb && memcmp(da, db, na) == 0;
        free(da);
        free(db);
        const store_file_entry *e = store_manifest_file(&m, names[i]);
        hashes += e && sha256_file(a, hex, NULL, NULL, NULL, NULL) == 0 && !strcmp(e->sha256, hex);
    }
    size_t nfiles = m.nfiles;
    char method[64], path[4096], resolved[4096];
    snprintf(method, sizeof method, "%s", m.method);
    snprintf(
        path, sizeof path, "%s",
        cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(m.json, "source"), "path")));
    store_manifest_free(&m);
    ASSERT_EQ(nfiles, 3);
    ASSERT_EQ(identical, 3);
    ASSERT_EQ(hashes, 3);
    ASSERT_STREQ(method, "import");
    ASSERT_TRUE(realpath(src, resolved) != NULL);
    ASSERT_STREQ(path, resolved);
    ASSERT_EQ(store_import(&f.st, src, "dia-tiny", 0, NULL, NULL, &err), STORE_EEXIST);
    ASSERT_OK(store_import(&f.st, src, "dia-tiny", STORE_FORCE, NULL, NULL, &err));
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

/* Splits a single-file safetensors checkpoint into two shards + index the way transformers
 * names them (tensors alternate between the shards, bytes copied exactly). */
static int write_sharded(const char *src_dir, const char *dst_dir) {
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", src_dir);
    size_t n;
    char *file = tu_read(path, &n);
    if (!file || n < 8) return -1;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | (unsigned char)file[i];
    char *htext = strndup(file + 8, hlen);
    cJSON *header = cJSON_Parse(htext);
    free(htext);
    const char *data = file + 8 + hlen;
    cJSON *index = cJSON_CreateObject(), *map = cJSON_AddObjectToObject(index, "weight_map");
    cJSON *parts[2] = {cJSON_CreateObject(), cJSON_CreateObject()};
    uint64_t offset[2] = {0, 0};
    int count = 0;
    char *blob[2] = {malloc(n), malloc(n)};
    const cJSON *t;
    cJSON_ArrayForEach(t, header) {
        if (!strcmp(t->string, "__metadata__")) continue;
        int p = count++ % 2;
        const cJSON *off = cJSON_GetObjectItem(t, "data_offsets");
        uint64_t b = (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        uint64_t e = (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        memcpy(blob[p] + offset[p], data + b, e - b);
        cJSON *copy = cJSON_Duplicate(t, 1);
        cJSON *no = cJSON_CreateArray();
        cJSON_AddItemToArray(no, cJSON_CreateNumber((double)offset[p]));
        cJSON_AddItemToArray(no, cJSON_CreateNumber((double)(offset[p] + e - b)));
        cJSON_ReplaceItemInObject(copy, "data_offsets", no);
        cJSON_AddItemToObject(parts[p], t->string, copy);
        offset[p] += e - b;
        cJSON_AddStringToObject(map, t->string,
                                p ? "model-00002-of-00002.safetensors"
                                  : "model-00001-of-00002.safetensors");
    }
    int rc = 0;
    mkdir(dst_dir, 0755);
    for (int p = 0; p < 2; p++) {
        char *h = cJSON_PrintUnformatted(parts[p]);
        uint64_t hl = strlen(h);
        snprintf(path, sizeof path, "%s/model-0000%d-of-00002.safetensors", dst_dir, p + 1);
        FILE *f = fopen(path, "wb");
        unsigned char len8[8];
        for (int i = 0; i < 8; i++)
            len8[i] = (unsigned char)(hl >> (8 * i));
        if (!f || fwrite(len8, 1, 8, f) != 8 || fwrite(h, 1, hl, f) != hl ||
            fwrite(blob[p], 1, offset[p], f) != offset[p])
            rc = -1;
        if (f) fclose(f);
        free(h);
    }
    char *itext = cJSON_Print(index);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dst_dir);
    if (tu_write(path, itext, strlen(itext))) rc = -1;
    snprintf(path, sizeof path, "%s/config.json", src_dir);
    char *config = tu_read(path, &n);
    snprintf(path, sizeof path, "%s/config.json", dst_dir);
    if (!config || tu_write(path, config, n)) rc = -1;
    free(config);
    free(itext);
    free(blob[0]);
    free(blob[1]);
    cJSON_Delete(parts[0]);
    cJSON_Delete(parts[1]);
    cJSON_Delete(index);
    cJSON_Delete(header);
    free(file);
    return rc;
}

TEST(import_sharded_checkpoint) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    char src[300], sharded[300];
    snprintf(src, sizeof src, "%s/single", f.tmp);
    snprintf(sharded, sizeof sharded, "%s/sharded", f.tmp);
    ASSERT_OK(tiny_dia_write(src, 7, ENG_DT_F32));
    ASSERT_OK(write_sharded(src, sharded));
    eng_error err = {0};
    ASSERT_OK(store_import(&f.st, sharded, "dia-sharded", 0, NULL, NULL, &err));
    store_manifest m;
    ASSERT_OK(store_manifest_read(&f.st, "dia-sharded", "original", &m, &err));
    int ok = m.nfiles == 4 && store_manifest_file(&m, "model.safetensors.index.json") &&
             store_manifest_file(&m, "model-00001-of-00002.safetensors") &&
             store_manifest_file(&m, "model-00002-of-00002.safetensors") &&
             !store_manifest_file(&m, "model.safetensors");
    store_manifest_free(&m);
    ASSERT_TRUE(ok);
    /* A shard that the index names but that is missing fails before anything is published. */
    char path[400];
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", sharded);
    ASSERT_OK(unlink(path));
    ASSERT_EQ(store_import(&f.st, sharded, "dia-broken", 0, NULL, NULL, &err), ENG_ENOTFOUND);
    ASSERT_CONTAINS(err.msg, "model-00002-of-00002.safetensors: missing");
    ASSERT_EQ(store_variant_state(&f.st, "dia-broken", "original", NULL), STORE_ABSENT);
    fixture_close(&f);
}

/* Downloads that are incomplete or hostile are refused with the file named, nothing published. */
TEST(import_rejects_bad_downloads) {
    fixture f;
    ASSERT_OK(fixture_open(&f));
    char src[300], path[400];
    snprintf(src, sizeof src, "%s/dl", f.tmp);
    ASSERT_OK(tiny_dia_write(src, 1, ENG_DT_F32));
    eng_error err = {0};
    /* Truncated weights (an interrupted download). */
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    long long size = tu_file_size(path);
    ASSERT_OK(truncate(path, size - 100));
    ASSERT_EQ(store_import(&f.st, src, "m", 0, NULL, NULL, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "model.safetensors: ");
    /* A header length pointing past the end. */
    ASSERT_OK(tu_write(path, "\xff\xff\xff\x00\x00\x00\x00\x00{}", 10));
    ASSERT_EQ(store_import(&f.st, src, "m", 0, NULL, NULL, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "header length");
    ASSERT_OK(unlink(path));
    ASSERT_EQ(store_import(&f.st, src, "m", 0, NULL, NULL, &err), ENG_ENOTFOUND);
    ASSERT_CONTAINS(err.msg, "model.safetensors: missing");
    /* An index whose shard name tries to leave the download directory. */
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", src);
    const char *index = "{\"weight_map\": {\"a\": \"../../etc/passwd\"}}";
    ASSERT_OK(tu_write(path, index, strlen(index)));
    ASSERT_EQ(store_import(&f.st, src, "m", 0, NULL, NULL, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "invalid shard");
    /* config.json that is not JSON. */
    ASSERT_OK(unlink(path));
    snprintf(path, sizeof path, "%s/config.json", src);
    ASSERT_OK(tu_write(path, "nope", 4));
    ASSERT_EQ(store_import(&f.st, src, "m", 0, NULL, NULL, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "config.json");
    ASSERT_EQ(store_import(&f.st, "/nonexistent/dl", "m", 0, NULL, NULL, &err), ENG_ENOTFOUND);
    ASSERT_EQ(store_variant_state(&f.st, "m", "original", NULL), STORE_ABSENT);
    ASSERT_EQ(tmp_entries(&f), 0);
    fixture_close(&f);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
