/* test_bench.c - `voxq quantize` quality figures in MANIFEST.json and `voxq store ls`, and
 * `voxq bench --compare` end to end on the tiny reference Dia/DAC: valid results.json, an HTML
 * report with the expected sections and one chart per metric (checked in headless Chromium
 * when it is installed), one WAV file per variant and prompt, and clear failures. */
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ops/store.h"
#include "test.h"

/* ---- files and processes ---- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* The test's own temp directory, made once; removed at exit. */
static char tmp_root[256];
static const char *tmp_dir(void) {
    if (!tmp_root[0]) {
        char tmpl[] = "/tmp/voxq-test-bench-XXXXXX";
        if (!mkdtemp(tmpl)) return NULL;
        snprintf(tmp_root, sizeof tmp_root, "%s", tmpl);
    }
    return tmp_root;
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    if (len) *len = (size_t)n;
    return buf;
}

typedef struct run_result {
    int status;
    char *out, *err;
} run_result;

static void run_free(run_result *r) {
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

/* Runs VOXQ_BINARY_DIR/voxq with args (NULL-terminated), capturing stdout and stderr. */
static run_result run_voxq(const char *const *args) {
    run_result r = {-1, NULL, NULL};
    char out_path[512], err_path[512], *argv[64];
    snprintf(out_path, sizeof out_path, "%s/stdout.txt", tmp_dir());
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", tmp_dir());
    int n = 0;
    argv[n++] = (char *)VOXQ_BINARY_DIR "/voxq";
    for (; args[n - 1] && n < 63; n++)
        argv[n] = (char *)args[n - 1];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (o < 0 || e < 0) _exit(127);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status))
        r.status = WEXITSTATUS(status);
    r.out = slurp(out_path, NULL);
    r.err = slurp(err_path, NULL);
    if (!r.out) r.out = strdup("");
    if (!r.err) r.err = strdup("");
    return r;
}

/* A store with dia-tiny (original, int8, int4 made by voxq quantize with quality figures),
 * dac-tiny, and "notdia" (a DAC checkpoint posing as a text-to-speech model). */
static const char *tiny_store(void) {
    static char root[512];
    static int ready;
    if (ready) return root;
    snprintf(root, sizeof root, "%s/store", tmp_dir());
    store st;
    eng_error err = {0};
    if (store_open(&st, root, &err) ||
        store_import(&st, VOXQ_FIXTURES "/dia_tiny", "dia-tiny", 0, NULL, NULL, &err) ||
        store_import(&st, VOXQ_FIXTURES "/dac_tiny", "dac-tiny", 0, NULL, NULL, &err) ||
        store_import(&st, VOXQ_FIXTURES "/dac_tiny", "notdia", 0, NULL, NULL, &err)) {
        fprintf(stderr, "  building the store: %s\n", err.msg);
        return NULL;
    }
    store_close(&st);
    static const char *methods[] = {"int8", "int4"};
    for (int i = 0; i < 2; i++) {
        const char *args[] = {"quantize",        "dia-tiny", "--method",  methods[i],
                              "--store",         root,       "--threads", "2",
                              "--quality-steps", "48",       NULL};
        run_result r = run_voxq(args);
        int ok = r.status == 0;
        if (!ok) fprintf(stderr, "  voxq quantize %s: %d\n%s", methods[i], r.status, r.err);
        run_free(&r);
        if (!ok) return NULL;
    }
    ready = 1;
    return root;
}

static cJSON *read_json(const char *path) {
    char *text = slurp(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    return j;
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* ---- voxq quantize / store ls ---- */

TEST(quantize_records_quality_figures_and_store_ls_shows_them) {
    const char *root = tiny_store();
    ASSERT_TRUE(root != NULL);
    char path[1024];
    snprintf(path, sizeof path, "%s/models/dia-tiny/int8/MANIFEST.json", root);
    cJSON *m = read_json(path);
    ASSERT_TRUE(m != NULL);
    const cJSON *q = cJSON_GetObjectItem(m, "quality");
    ASSERT_TRUE(cJSON_IsNumber(cJSON_GetObjectItem(q, "rel_error"))); /* the quantizer's own */
    double agree = cJSON_GetNumberValue(cJSON_GetObjectItem(q, "top1_agreement"));
    double kl = cJSON_GetNumberValue(cJSON_GetObjectItem(q, "kl_mean"));
    fprintf(stderr, "  int8: top-1 %.4f, KL %.3g\n", agree, kl);
    ASSERT_TRUE(agree > 0.5 && agree < 1.0);
    ASSERT_TRUE(kl > 0);
    ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(q, "steps")), 48);
    ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(q, "prompts")), 4);
    /* no dac-44khz in this store: the distance is not measured, and says so */
    ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(q, "mel_distance_mean")));
    cJSON_Delete(m);

    const char *args[] = {"store", "ls", "dia-tiny", "--store", root, NULL};
    run_result r = run_voxq(args);
    ASSERT_EQ(r.status, 0);
    ASSERT_EQ(count(r.out, "quality: top-1"), 2); /* int8 and int4, not the original */
    ASSERT_CONTAINS(r.out, "log-mel n/a (4 prompts, 48 steps)");
    run_free(&r);
}

TEST(quantize_quality_steps_zero_skips_the_figures) {
    const char *root = tiny_store();
    ASSERT_TRUE(root != NULL);
    const char *args[] = {"quantize", "dia-tiny", "--method",        "int8", "--store",
                          root,       "--force",  "--quality-steps", "0",    NULL};
    run_result r = run_voxq(args);
    ASSERT_EQ(r.status, 0);
    run_free(&r);
    char path[1024];
    snprintf(path, sizeof path, "%s/models/dia-tiny/int8/MANIFEST.json", root);
    cJSON *m = read_json(path);
    ASSERT_TRUE(m != NULL);
    ASSERT_TRUE(!cJSON_HasObjectItem(cJSON_GetObjectItem(m, "quality"), "top1_agreement"));
    cJSON_Delete(m);
    /* back to the figures for the other cases */
    const char *again[] = {"quantize", "dia-tiny", "--method",        "int8", "--store",
                           root,       "--force",  "--quality-steps", "48",   NULL};
    r = run_voxq(again);
    ASSERT_EQ(r.status, 0);
    ASSERT_CONTAINS(r.out, "quality     top-1");
    run_free(&r);
    const char *bad[] = {"quantize", "dia-tiny",        "--method", "int8", "--store",
                         root,       "--quality-steps", "lots",     NULL};
    r = run_voxq(bad);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "--quality-steps");
    run_free(&r);
}

/* ---- voxq bench --compare ---- */

static const char *const prompt_names[] = {"short", "long", "two_speakers", "non_ascii"};

/* Runs the comparison once into TMP/out (shared by the cases below). */
static const char *compare_out(void) {
    static char out[512];
    static int status = -1;
    if (status == 0) return out;
    const char *root = tiny_store();
    if (!root) return NULL;
    snprintf(out, sizeof out, "%s/out", tmp_dir());
    const char *args[] = {"bench",
                          "--model",
                          "dia-tiny",
                          "--codec",
                          "dac-tiny",
                          "--compare",
                          "original,int8,int4",
                          "--store",
                          root,
                          "--out",
                          out,
                          "--steps",
                          "48",
                          "--concurrency",
                          "1,2",
                          "--threads",
                          "2",
                          "--runs",
                          "2",
                          NULL};
    run_result r = run_voxq(args);
    status = r.status;
    if (status != 0) fprintf(stderr, "  voxq bench: %d\n%s", r.status, r.err);
    run_free(&r);
    return status == 0 ? out : NULL;
}

TEST(compare_writes_valid_results_json) {
    const char *out = compare_out();
    ASSERT_TRUE(out != NULL);
    char path[1024];
    snprintf(path, sizeof path, "%s/results.json", out);
    cJSON *res = read_json(path);
    ASSERT_TRUE(res != NULL);
    ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(res, "model")), "dia-tiny");
    ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(res, "prompts")), 4);
    const cJSON *vs = cJSON_GetObjectItem(res, "variants");
    ASSERT_EQ(cJSON_GetArraySize(vs), 3);
    static const char *names[] = {"original", "int8", "int4"};
    double agree[3] = {0}, weights[3] = {0};
    for (int i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetArrayItem(vs, i);
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(v, "name")), names[i]);
        ASSERT_TRUE(!cJSON_HasObjectItem(v, "error"));
        ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(v, "load_s")) > 0);
        ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(v, "steps_per_s")) > 0);
        ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(v, "rtf")) > 0);
        ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(v, "ttfa_s")) > 0);
        /* 4 prompts x 2 runs x at most 48 steps */
        ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(v, "steps")) > 4 * 2 * 16);
        const cJSON *mem = cJSON_GetObjectItem(v, "memory");
        weights[i] = cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "dia_weights_bytes"));
        ASSERT_TRUE(weights[i] > 0);
        ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "kv_bytes")) > 0);
        ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "workspace_bytes")) > 0);
        double base = cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "baseline_bytes"));
        double peak = cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "peak_bytes"));
        ASSERT_TRUE(base > 0 && peak >= base);
        const cJSON *conc = cJSON_GetObjectItem(v, "concurrency");
        ASSERT_EQ(cJSON_GetArraySize(conc), 2);
        ASSERT_EQ(
            cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(conc, 1), "sequences")), 2);
        ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(v, "audio")), 4);
        const cJSON *q = cJSON_GetObjectItem(v, "quality");
        if (i == 0) {
            ASSERT_TRUE(q == NULL); /* the reference */
            continue;
        }
        agree[i] = cJSON_GetNumberValue(cJSON_GetObjectItem(q, "top1_agreement"));
        ASSERT_TRUE(cJSON_GetNumberValue(cJSON_GetObjectItem(q, "mel_distance_mean")) >= 0);
        ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(q, "prompts")), 4);
    }
    fprintf(stderr, "  top-1 agreement: int8 %.4f, int4 %.4f\n", agree[1], agree[2]);
    ASSERT_TRUE(agree[1] > agree[2] && agree[2] > 0);
    ASSERT_TRUE(weights[0] > weights[1] && weights[1] > weights[2]);
    cJSON_Delete(res);
}

TEST(compare_writes_one_wav_per_variant_and_prompt) {
    const char *out = compare_out();
    ASSERT_TRUE(out != NULL);
    static const char *names[] = {"original", "int8", "int4"};
    for (int v = 0; v < 3; v++)
        for (int p = 0; p < 4; p++) {
            char path[1024];
            snprintf(path, sizeof path, "%s/audio/%s-%s.wav", out, names[v], prompt_names[p]);
            size_t len = 0;
            char *wav = slurp(path, &len);
            ASSERT_TRUE(wav != NULL);
            ASSERT_TRUE(len >= 44 && !memcmp(wav, "RIFF", 4) && !memcmp(wav + 8, "WAVE", 4));
            uint32_t data = (uint8_t)wav[40] | (uint8_t)wav[41] << 8 | (uint8_t)wav[42] << 16 |
                            (uint32_t)(uint8_t)wav[43] << 24;
            ASSERT_EQ(data, len - 44);
            ASSERT_EQ(data % 16, 0); /* whole frames of 8 samples x 2 bytes */
            free(wav);
        }
}

TEST(compare_report_has_the_sections_and_one_chart_per_metric) {
    const char *out = compare_out();
    ASSERT_TRUE(out != NULL);
    char path[1024];
    snprintf(path, sizeof path, "%s/report.html", out);
    char *html = slurp(path, NULL);
    ASSERT_TRUE(html != NULL);
    static const char *sections[] = {"id=\"summary\"", "id=\"charts\"",  "id=\"concurrency\"",
                                     "id=\"table\"",   "id=\"quality\"", "id=\"audio\""};
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
        ASSERT_CONTAINS(html, sections[i]);
    /* 13 metrics + the concurrency curve, each an inline SVG; nothing fetched, no script */
    ASSERT_EQ(count(html, "<figure class=\"chart\""), 14);
    ASSERT_EQ(count(html, "<svg "), 14);
    ASSERT_EQ(count(html, "<audio "), 12);
    ASSERT_EQ(count(html, "<script"), 0);
    ASSERT_EQ(count(html, "http://") - count(html, "http://www.w3.org/2000/svg"), 0);
    ASSERT_EQ(count(html, "https://"), 0);
    ASSERT_CONTAINS(html, "audio/int4-non_ascii.wav");
    ASSERT_CONTAINS(html, "Sch\xc3\xb6n"); /* UTF-8 prompt text, escaped as HTML */
    ASSERT_CONTAINS(html, "&times;)");     /* ratios against the original */
    free(html);
}

TEST(report_renders_in_headless_chromium) {
    const char *out = compare_out();
    ASSERT_TRUE(out != NULL);
    const char *browser = NULL;
    static const char *candidates[] = {"/usr/bin/chromium", "/usr/bin/chromium-browser",
                                       "/usr/bin/google-chrome"};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0] && !browser; i++)
        if (access(candidates[i], X_OK) == 0) browser = candidates[i];
    if (!browser) {
        fprintf(stderr, "  SKIPPED: no chromium installed (deploy/install-deps.sh installs it; "
                        "CI runs this case)\n");
        return;
    }
    char cmd[4096], dom[600], log[600], png[600];
    snprintf(dom, sizeof dom, "%s/dom.html", tmp_dir());
    snprintf(log, sizeof log, "%s/chromium.log", tmp_dir());
    snprintf(png, sizeof png, "%s/report.png", tmp_dir());
    snprintf(cmd, sizeof cmd,
             "timeout 120 %s --headless --no-sandbox --disable-gpu --no-first-run "
             "--user-data-dir=%s/chromium-profile --enable-logging=stderr --v=0 "
             "--virtual-time-budget=5000 --dump-dom file://%s/report.html > %s 2> %s && "
             "timeout 120 %s --headless --no-sandbox --disable-gpu --no-first-run "
             "--user-data-dir=%s/chromium-profile --window-size=1200,4000 "
             "--screenshot=%s file://%s/report.html >> %s 2>&1",
             browser, tmp_dir(), out, dom, log, browser, tmp_dir(), png, out, log);
    int rc = system(cmd);
    char *text = slurp(dom, NULL), *errs = slurp(log, NULL);
    if (rc != 0) fprintf(stderr, "  chromium exited %d; log:\n%s\n", rc, errs ? errs : "");
    ASSERT_EQ(rc, 0);
    ASSERT_TRUE(text && errs);
    /* the DOM the browser built: every chart is there as SVG */
    ASSERT_EQ(count(text, "<figure class=\"chart\""), 14);
    ASSERT_EQ(count(text, "<svg "), 14);
    ASSERT_EQ(count(text, "<rect class=\"bar\""), 13 * 3);
    ASSERT_CONTAINS(text, "id=\"audio\"");
    /* no console errors, no failed loads (the page has no script and no network) */
    ASSERT_EQ(count(errs, "CONSOLE"), 0);
    ASSERT_EQ(count(errs, "Uncaught"), 0);
    ASSERT_EQ(count(errs, "net::ERR_"), 0);
    size_t png_len = 0;
    char *shot = slurp(png, &png_len);
    ASSERT_TRUE(shot && png_len > 1000 && !memcmp(shot + 1, "PNG", 3));
    free(shot);
    free(text);
    free(errs);
}

TEST(compare_with_a_prompt_file) {
    const char *root = tiny_store();
    ASSERT_TRUE(root != NULL);
    char prompts[600], out[600];
    snprintf(prompts, sizeof prompts, "%s/prompts.txt", tmp_dir());
    snprintf(out, sizeof out, "%s/out-prompts", tmp_dir());
    FILE *f = fopen(prompts, "w");
    ASSERT_TRUE(f != NULL);
    fputs("# two of our own\nhi\t[S1] Hi.\nbye\t[S2] Bye now. [S1] Bye!\n", f);
    fclose(f);
    const char *args[] = {
        "bench",   "--model",   "dia-tiny", "--codec",   "dac-tiny", "--compare", "int8,original",
        "--store", root,        "--out",    out,         "--steps",  "32",        "--concurrency",
        "none",    "--prompts", prompts,    "--threads", "2",        NULL};
    run_result r = run_voxq(args);
    ASSERT_EQ(r.status, 0);
    run_free(&r);
    char path[1024];
    snprintf(path, sizeof path, "%s/results.json", out);
    cJSON *res = read_json(path);
    ASSERT_TRUE(res != NULL);
    ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(res, "prompts")), 2);
    const cJSON *v0 = cJSON_GetArrayItem(cJSON_GetObjectItem(res, "variants"), 0);
    ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(v0, "name")), "int8");
    ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(v0, "concurrency")), 0);
    cJSON_Delete(res);
    snprintf(path, sizeof path, "%s/audio/int8-bye.wav", out);
    ASSERT_EQ(access(path, R_OK), 0);
    snprintf(path, sizeof path, "%s/report.html", out);
    char *html = slurp(path, NULL);
    ASSERT_TRUE(html != NULL);
    ASSERT_CONTAINS(html, "Not measured");
    free(html);
}

TEST(compare_usage_errors_exit_2) {
    const char *root = tiny_store();
    ASSERT_TRUE(root != NULL);
    char out[600], prompts[600];
    snprintf(out, sizeof out, "%s/out-bad", tmp_dir());
    const char *missing[] = {
        "bench",   "--model", "dia-tiny", "--codec", "dac-tiny", "--compare", "original,gptq-int4",
        "--store", root,      "--out",    out,       NULL};
    run_result r = run_voxq(missing);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "dia-tiny/gptq-int4 is not in the store");
    run_free(&r);
    snprintf(prompts, sizeof prompts, "%s/bad-prompts.txt", tmp_dir());
    FILE *f = fopen(prompts, "w");
    ASSERT_TRUE(f != NULL);
    fputs("ok\t[S1] fine\nno tab here\n", f);
    fclose(f);
    const char *bad[] = {"bench",     "--model",   "dia-tiny", "--codec", "dac-tiny",
                         "--compare", "original",  "--store",  root,      "--out",
                         out,         "--prompts", prompts,    NULL};
    r = run_voxq(bad);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "bad-prompts.txt:2");
    run_free(&r);
    const char *conc[] = {"bench", "--concurrency", "1,0", NULL};
    r = run_voxq(conc);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "--concurrency");
    run_free(&r);
}

TEST(a_variant_that_fails_is_reported_and_the_files_still_written) {
    const char *root = tiny_store();
    ASSERT_TRUE(root != NULL);
    char out[600];
    snprintf(out, sizeof out, "%s/out-fail", tmp_dir());
    /* "notdia" holds a DAC checkpoint: its child cannot load it as Dia */
    const char *args[] = {"bench",    "--model",       "notdia", "--codec", "dac-tiny", "--compare",
                          "original", "--store",       root,     "--out",   out,        "--steps",
                          "16",       "--concurrency", "none",   NULL};
    run_result r = run_voxq(args);
    ASSERT_EQ(r.status, 1);
    ASSERT_CONTAINS(r.err, "original");
    run_free(&r);
    char path[1024];
    snprintf(path, sizeof path, "%s/results.json", out);
    cJSON *res = read_json(path);
    ASSERT_TRUE(res != NULL);
    const cJSON *v = cJSON_GetArrayItem(cJSON_GetObjectItem(res, "variants"), 0);
    ASSERT_CONTAINS(cJSON_GetStringValue(cJSON_GetObjectItem(v, "error")), "exit code 1");
    cJSON_Delete(res);
    snprintf(path, sizeof path, "%s/report.html", out);
    char *html = slurp(path, NULL);
    ASSERT_TRUE(html != NULL);
    ASSERT_CONTAINS(html, "was not measured");
    free(html);
}

int main(int argc, char **argv) {
    int rc = test_main(argc, argv);
    if (tmp_root[0] && !strncmp(tmp_root, "/tmp/voxq-test-bench-", 21))
        nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
