/* test_quantize_cli.c - `voxq quantize` end to end: the real binary (fork + exec, found through
 * VOXQ_BINARY_DIR) on a real store in a temporary directory, with checkpoints imported by the
 * store API. Once-only behaviour, --force, --keep, usage errors, and the fault cases: kill -9
 * and SIGINT in the middle of a run leave no variant, and the next run succeeds. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine/safetensors.h"
#include "ops/store.h"
#include "quant_fixture.h"
#include "test.h"
#include "tiny_ckpt.h"

/* A test's world: a temp dir with src/ (the download), store/ and the captured output. */
typedef struct world {
    char dir[256];
    char src[300];
    char store_root[300];
    char out[300];  /* stdout of the last run */
    char err[300];  /* stderr of the last run */
    store st;
} world;

static const char *voxq_binary(void) {
    static char path[1024];
    const char *dir = getenv("VOXQ_BINARY_DIR");
    snprintf(path, sizeof path, "%s/voxq", dir && *dir ? dir : VOXQ_BINARY_DIR);
    return path;
}

static int world_open(world *w) {
    memset(w, 0, sizeof *w);
    if (qf_tempdir(w->dir, sizeof w->dir, "qcli")) return -1;
    snprintf(w->src, sizeof w->src, "%s/src", w->dir);
    snprintf(w->store_root, sizeof w->store_root, "%s/store", w->dir);
    snprintf(w->out, sizeof w->out, "%s/stdout.txt", w->dir);
    snprintf(w->err, sizeof w->err, "%s/stderr.txt", w->dir);
    eng_error err = {0};
    if (mkdir(w->src, 0755) || store_open(&w->st, w->store_root, &err)) return -1;
    return 0;
}

static void world_close(world *w) {
    store_close(&w->st);
    qf_rmtree(w->dir);
}

static int import_src(world *w, const char *model) {
    eng_error err = {0};
    int rc = store_import(&w->st, w->src, model, 0, NULL, NULL, &err);
    if (rc) fprintf(stderr, "  import: %s\n", err.msg);
    return rc;
}

/* Starts `voxq quantize ARGS...` with VOXQ_STORE set, stdout/stderr into the world's files. */
static pid_t start_voxq(const world *w, const char *threads, const char *const *args) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    const char *argv[32] = {"voxq", "quantize"};
    int n = 2;
    for (int i = 0; args[i] && n < 31; i++) argv[n++] = args[i];
    argv[n] = NULL;
    setenv("VOXQ_STORE", w->store_root, 1);
    unsetenv("VOXQ_QUANT_KEEP");
    unsetenv("VOXQ_QUANT_METHOD");
    if (threads) setenv("VOXQ_THREADS", threads, 1);
    if (!freopen(w->out, "w", stdout) || !freopen(w->err, "w", stderr)) _exit(126);
    execv(voxq_binary(), (char *const *)argv);
    fprintf(stderr, "exec %s: %s\n", voxq_binary(), strerror(errno));
    _exit(127);
}

/* Runs voxq quantize to completion; returns its exit code (-signal when killed). */
static int run_voxq(const world *w, const char *const *args) {
    pid_t pid = start_voxq(w, NULL, args);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1000;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

static char *slurp(const char *path) {
    size_t n = 0;
    char *s = qf_read_file(path, &n);
    if (!s) return NULL;
    char *z = realloc(s, n + 1);
    if (!z) {
        free(s);
        return NULL;
    }
    z[n] = '\0';
    return z;
}

/* Prints the captured output of the last run (for a failing assertion's context). */
static void show_output(const world *w) {
    char *o = slurp(w->out), *e = slurp(w->err);
    fprintf(stderr, "  --- stdout ---\n%.2000s  --- stderr ---\n%.2000s", o ? o : "",
            e ? e : "");
    free(o);
    free(e);
}

static int output_has(const char *path, const char *needle) {
    char *s = slurp(path);
    int found = s && strstr(s, needle) != NULL;
    free(s);
    return found;
}

static uint64_t file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

static int same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    void *x = qf_read_file(a, &na), *y = qf_read_file(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* Entries of tmp/ whose name starts with prefix (staging or debris of that variant). */
static int tmp_entries(const world *w, const char *prefix, char *first, size_t n) {
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s/tmp", w->store_root);
    DIR *d = opendir(tmp);
    if (!d) return -1;
    int count = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        if (count++ == 0 && first) snprintf(first, n, "%s/%s", tmp, e->d_name);
    }
    closedir(d);
    return count;
}

/* Every kept tensor of the variant is byte-identical to the source's; returns the number of
 * kept tensors, or -1 on a difference. */
static int kept_identical(const char *src_dir, const char *variant_dir) {
    st_model *src = NULL, *q = NULL;
    eng_error err = {0};
    int kept = -1;
    if (st_model_open(&src, src_dir, &err) || st_model_open(&q, variant_dir, &err)) {
        fprintf(stderr, "  open: %s\n", err.msg);
        goto done;
    }
    cJSON *list = cJSON_Parse(st_model_metadata(q, "voxq.kept"));
    kept = 0;
    for (cJSON *k = list ? list->child : NULL; k; k = k->next) {
        const st_tensor *a = st_model_find(src, k->valuestring);
        const st_tensor *b = st_model_find(q, k->valuestring);
        if (!a || !b || a->dtype != b->dtype || a->nbytes != b->nbytes ||
            memcmp(a->data, b->data, a->nbytes) != 0) {
            fprintf(stderr, "  kept tensor %s differs\n", k->valuestring);
            kept = -1;
            break;
        }
        kept++;
    }
    cJSON_Delete(list);
done:
    st_model_close(src);
    st_model_close(q);
    return kept;
}

static double json_number(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
    return cJSON_IsNumber(x) ? x->valuedouble : -1;
}

TEST(int8_once_then_force) {
    world w;
    ASSERT_OK(world_open(&w));
    ASSERT_OK(tiny_dia_write(w.src, 1, ENG_DT_F32));
    ASSERT_OK(import_src(&w, "tiny"));
    const char *args[] = {"tiny", "--method", "int8", NULL};
    int rc = run_voxq(&w, args);
    if (rc != 0) show_output(&w);
    ASSERT_EQ(rc, 0);
    ASSERT_TRUE(output_has(w.out, "tiny/int8 published"));

    /* A whole, valid artifact: every hash checks out. */
    eng_error err = {0};
    ASSERT_OK(store_verify(&w.st, "tiny", "int8", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    char orig[400], q[400], path_a[500], path_b[500];
    snprintf(orig, sizeof orig, "%s/models/tiny/original", w.store_root);
    snprintf(q, sizeof q, "%s/models/tiny/int8", w.store_root);
    snprintf(path_a, sizeof path_a, "%s/config.json", orig);
    snprintf(path_b, sizeof path_b, "%s/config.json", q);
    ASSERT_TRUE(same_file(path_a, path_b));
    ASSERT_EQ(kept_identical(orig, q), 15); /* 2 embeddings, head, 12 norms */

    /* The manifest: the reported ratio is the ratio of the real files; the source is named. */
    store_manifest m = {0}, src = {0};
    ASSERT_OK(store_manifest_read(&w.st, "tiny", "int8", &m, &err));
    ASSERT_OK(store_manifest_read(&w.st, "tiny", "original", &src, &err));
    ASSERT_STREQ(m.method, "int8");
    ASSERT_STREQ(m.source_digest, src.digest);
    snprintf(path_a, sizeof path_a, "%s/model.safetensors", orig);
    snprintf(path_b, sizeof path_b, "%s/model.safetensors", q);
    double real = (double)file_size(path_a) / (double)file_size(path_b);
    const cJSON *summary = cJSON_GetObjectItemCaseSensitive(m.json, "quantization");
    ASSERT_NEAR(json_number(summary, "ratio", NULL), real, 1e-12);
    ASSERT_EQ(json_number(summary, "source_bytes", NULL), file_size(path_a));
    ASSERT_EQ(json_number(summary, "quantized_bytes", NULL), file_size(path_b));
    ASSERT_EQ(json_number(summary, "tensors_quantized", NULL), 32);
    double rel = json_number(m.json, "quality", "rel_error");
    ASSERT_TRUE(rel > 0 && rel < 0.015);
    store_manifest_free(&src);
    char manifest[500], before[500];
    snprintf(manifest, sizeof manifest, "%s/MANIFEST.json", q);
    snprintf(before, sizeof before, "%s/manifest-before.json", w.dir);
    char *text = slurp(manifest);
    FILE *f = fopen(before, "w");
    ASSERT_TRUE(text && f);
    fputs(text, f);
    fclose(f);
    free(text);
    char digest[65];
    snprintf(digest, sizeof digest, "%s", m.digest);
    store_manifest_free(&m);

    /* Once only: the second run finds it and does nothing. */
    ASSERT_EQ(run_voxq(&w, args), 0);
    ASSERT_TRUE(output_has(w.out, "already exists"));
    ASSERT_TRUE(same_file(manifest, before));

    /* --force remakes it (the same bytes: quantization is deterministic). */
    const char *force[] = {"tiny", "--method", "int8", "--force", NULL};
    ASSERT_EQ(run_voxq(&w, force), 0);
    ASSERT_TRUE(output_has(w.out, "tiny/int8 published"));
    ASSERT_OK(store_verify(&w.st, "tiny", "int8", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    ASSERT_OK(store_manifest_read(&w.st, "tiny", "int8", &m, &err));
    ASSERT_STREQ(m.digest, digest);
    store_manifest_free(&m);
    ASSERT_EQ(tmp_entries(&w, "tiny@", NULL, 0), 0);
    world_close(&w);
}

TEST(int4_bf16_with_keep) {
    world w;
    ASSERT_OK(world_open(&w));
    ASSERT_OK(tiny_dia_write(w.src, 2, ENG_DT_BF16));
    ASSERT_OK(import_src(&w, "tiny"));
    const char *args[] = {"tiny", "--method=int4", "--keep",
                          "model.decoder.layers.*.cross_attention.*", NULL};
    int rc = run_voxq(&w, args);
    if (rc != 0) show_output(&w);
    ASSERT_EQ(rc, 0);
    char orig[400], q[400];
    snprintf(orig, sizeof orig, "%s/models/tiny/original", w.store_root);
    snprintf(q, sizeof q, "%s/models/tiny/int4", w.store_root);
    ASSERT_EQ(kept_identical(orig, q), 15 + 8); /* + 2 layers x 4 cross-attention projections */
    store_manifest m = {0};
    eng_error err = {0};
    ASSERT_OK(store_manifest_read(&w.st, "tiny", "int4", &m, &err));
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(m.json, "params");
    ASSERT_EQ(json_number(params, "group_size", NULL), 128);
    const cJSON *keep = cJSON_GetObjectItemCaseSensitive(params, "keep");
    ASSERT_TRUE(cJSON_GetArraySize(keep) == 1);
    ASSERT_STREQ(cJSON_GetArrayItem(keep, 0)->valuestring,
                 "model.decoder.layers.*.cross_attention.*");
    ASSERT_EQ(json_number(m.json, "quantization", "tensors_quantized"), 24);
    double rel = json_number(m.json, "quality", "rel_error");
    ASSERT_TRUE(rel > 0.05 && rel < 0.16);
    store_manifest_free(&m);
    world_close(&w);
}

TEST(usage_errors) {
    world w;
    ASSERT_OK(world_open(&w));
    const char *no_method[] = {"tiny", NULL};
    ASSERT_EQ(run_voxq(&w, no_method), 2);
    ASSERT_TRUE(output_has(w.err, "--method must be int8 or int4"));
    const char *bad_method[] = {"tiny", "--method", "int5", NULL};
    ASSERT_EQ(run_voxq(&w, bad_method), 2);
    ASSERT_TRUE(output_has(w.err, "int5"));
    const char *bad_name[] = {"../escape", "--method", "int8", NULL};
    ASSERT_EQ(run_voxq(&w, bad_name), 2);
    const char *bad_option[] = {"tiny", "--method", "int8", "--frobnicate", NULL};
    ASSERT_EQ(run_voxq(&w, bad_option), 2);
    ASSERT_TRUE(output_has(w.err, "--frobnicate"));
    const char *missing[] = {"nosuch", "--method", "int8", NULL};
    ASSERT_EQ(run_voxq(&w, missing), 1);
    ASSERT_TRUE(output_has(w.err, "nosuch/original not found"));
    world_close(&w);
}

/* A checkpoint big enough that a single-threaded quantize runs for a while (~114 MB f32). */
static int big_source(world *w) {
    const qf_dia_dims dims = {512, 2048, 256, 2, 4, 36};
    if (qf_write_dia(w->src, &dims, ENG_DT_F32, 3)) return -1;
    FILE *f;
    char path[400];
    snprintf(path, sizeof path, "%s/config.json", w->src);
    if (!(f = fopen(path, "w"))) return -1;
    fputs("{\"model_type\": \"dia\"}\n", f);
    fclose(f);
    return import_src(w, "big");
}

/* Starts a quantize of "big" and waits until its staging file has data in it: the run is in
 * the middle of quantizing. Returns the pid, or -1 when the run ended first. */
static pid_t start_mid_run(world *w) {
    const char *args[] = {"big", "--method", "int8", NULL};
    pid_t pid = start_voxq(w, "1", args);
    for (int i = 0; i < 20000 && pid > 0; i++) { /* up to ~20 s */
        char stage[1024], file[1100];
        if (tmp_entries(w, "big@int8.", stage, sizeof stage) > 0) {
            snprintf(file, sizeof file, "%s/model.safetensors", stage);
            if (file_size(file) > (1u << 20)) return pid;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) return -1;
        usleep(1000);
    }
    return pid;
}

static int variant_dir_exists(const world *w, const char *variant) {
    char path[500];
    struct stat sb;
    snprintf(path, sizeof path, "%s/models/big/%s", w->store_root, variant);
    return stat(path, &sb) == 0;
}

TEST(kill9_leaves_no_variant) {
    world w;
    ASSERT_OK(world_open(&w));
    ASSERT_OK(big_source(&w));
    pid_t pid = start_mid_run(&w);
    ASSERT_TRUE(pid > 0);
    ASSERT_OK(kill(pid, SIGKILL));
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    ASSERT_TRUE(!variant_dir_exists(&w, "int8"));
    ASSERT_EQ(store_variant_state(&w.st, "big", "int8", NULL), STORE_ABSENT);
    ASSERT_EQ(tmp_entries(&w, "big@int8.", NULL, 0), 1); /* only debris */

    const char *args[] = {"big", "--method", "int8", NULL};
    int rc = run_voxq(&w, args);
    if (rc != 0) show_output(&w);
    ASSERT_EQ(rc, 0);
    eng_error err = {0};
    ASSERT_OK(store_verify(&w.st, "big", "int8", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    ASSERT_EQ(tmp_entries(&w, "big@int8.", NULL, 0), 0); /* the debris is gone */
    world_close(&w);
}

TEST(sigint_cancels_cleanly) {
    world w;
    ASSERT_OK(world_open(&w));
    ASSERT_OK(big_source(&w));
    pid_t pid = start_mid_run(&w);
    ASSERT_TRUE(pid > 0);
    ASSERT_OK(kill(pid, SIGINT));
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 1) show_output(&w);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 1);
    ASSERT_TRUE(output_has(w.err, "cancelled; nothing was published"));
    ASSERT_TRUE(!variant_dir_exists(&w, "int8"));
    ASSERT_EQ(tmp_entries(&w, "big@int8.", NULL, 0), 0); /* staging removed, not left */

    const char *args[] = {"big", "--method", "int8", NULL};
    ASSERT_EQ(run_voxq(&w, args), 0);
    ASSERT_EQ(store_variant_state(&w.st, "big", "int8", NULL), STORE_VALID);
    world_close(&w);
}

/* A variant made from an original that was re-imported since is remade, and says why. */
TEST(stale_variant_is_remade) {
    world w;
    ASSERT_OK(world_open(&w));
    ASSERT_OK(tiny_dia_write(w.src, 1, ENG_DT_F32));
    ASSERT_OK(import_src(&w, "tiny"));
    const char *args[] = {"tiny", "--method", "int8", NULL};
    ASSERT_EQ(run_voxq(&w, args), 0);
    ASSERT_OK(tiny_dia_write(w.src, 7, ENG_DT_F32)); /* other weights, same names */
    eng_error err = {0};
    ASSERT_OK(store_import(&w.st, w.src, "tiny", STORE_FORCE, NULL, NULL, &err));
    int rc = run_voxq(&w, args);
    if (rc != 0) show_output(&w);
    ASSERT_EQ(rc, 0);
    ASSERT_TRUE(output_has(w.err, "was made from another original"));
    ASSERT_TRUE(output_has(w.out, "tiny/int8 published"));
    store_manifest m = {0}, src = {0};
    ASSERT_OK(store_manifest_read(&w.st, "tiny", "int8", &m, &err));
    ASSERT_OK(store_manifest_read(&w.st, "tiny", "original", &src, &err));
    ASSERT_STREQ(m.source_digest, src.digest);
    store_manifest_free(&m);
    store_manifest_free(&src);
    world_close(&w);
}

/* A damaged variant (a file cut short) does not count as existing: it is remade. */
TEST(damaged_variant_is_remade) {
    world w;
    ASSERT_OK(world_open(&w));
    ASSERT_OK(tiny_dia_write(w.src, 1, ENG_DT_BF16));
    ASSERT_OK(import_src(&w, "tiny"));
    const char *args[] = {"tiny", "--method", "int4", NULL};
    ASSERT_EQ(run_voxq(&w, args), 0);
    char path[500];
    snprintf(path, sizeof path, "%s/models/tiny/int4/model.safetensors", w.store_root);
    ASSERT_OK(truncate(path, 1000));
    ASSERT_EQ(store_variant_state(&w.st, "tiny", "int4", NULL), STORE_INVALID);
    int rc = run_voxq(&w, args);
    if (rc != 0) show_output(&w);
    ASSERT_EQ(rc, 0);
    ASSERT_TRUE(output_has(w.err, "exists but is damaged"));
    eng_error err = {0};
    ASSERT_OK(store_verify(&w.st, "tiny", "int4", STORE_VERIFY_HASHES, NULL, NULL, NULL, &err));
    world_close(&w);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
