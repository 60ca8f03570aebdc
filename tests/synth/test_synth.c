/* test_synth.c - worker/audio.c and `voxq synth` end to end.
 *
 * The synth cases build a temporary store with store_import() from the tiny fixtures
 * (tests/reference/data/dia_tiny as models/dia-tiny/original, dac_tiny as
 * models/dac-tiny/original) and run the real voxq binary on it, on the CPU. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <sndfile.h>

#include "engine/models/dac.h"
#include "engine/safetensors.h"
#include "ops/store.h"
#include "test.h"
#include "worker/audio.h"

/* Dia's delay pattern (spec 1); the tiny fixture keeps the default. */
static const int delays[9] = {0, 8, 9, 10, 11, 12, 13, 14, 15};

/* ---- files and processes ---- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static char *make_tmpdir(void) {
    char tmpl[] = "/tmp/voxq-test-synth-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static void remove_tree(char *dir) {
    if (dir) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

/* Whole file into a NUL-terminated buffer; NULL when unreadable. */
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

/* Number of entries in dir other than . and .. */
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

/* Output of one voxq run. */
typedef struct run_result {
    int status; /* exit code, or -1 when it did not exit normally */
    char *out;  /* stdout */
    char *err;  /* stderr */
} run_result;

static void run_free(run_result *r) {
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

/* Runs VOXQ_BINARY_DIR/voxq with args (NULL-terminated), capturing stdout and stderr. */
static run_result run_voxq(const char *tmp, const char *const *args) {
    run_result r = {-1, NULL, NULL};
    char out_path[4096], err_path[4096], *argv[64];
    snprintf(out_path, sizeof out_path, "%s/stdout.txt", tmp);
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", tmp);
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
    if (r.status != 0) fprintf(stderr, "  voxq exited %d; stderr:\n%s", r.status, r.err);
    return r;
}

/* A store with dia-tiny/original and dac-tiny/original, made once per process. */
static char *store_tmp;
static const char *tiny_store(void) {
    static char root[4096];
    if (store_tmp) return root;
    store_tmp = make_tmpdir();
    if (!store_tmp) return NULL;
    snprintf(root, sizeof root, "%s/store", store_tmp);
    store st;
    eng_error err = {0};
    if (store_open(&st, root, &err) ||
        store_import(&st, VOXQ_FIXTURES "/dia_tiny", "dia-tiny", 0, NULL, NULL, &err) ||
        store_import(&st, VOXQ_FIXTURES "/dac_tiny", "dac-tiny", 0, NULL, NULL, &err)) {
        fprintf(stderr, "  building the store: %s\n", err.msg);
        return NULL;
    }
    store_close(&st);
    return root;
}

/* ---- audio_write ---- */

static void sine(float *x, int n, float amp) {
    for (int i = 0; i < n; i++)
        x[i] = amp * sinf(2.0f * 3.14159265f * 440.0f * i / 44100.0f);
}

/* Reads a mono file back as floats; returns frames or -1. */
static long read_audio(const char *path, float **pcm, SF_INFO *info) {
    memset(info, 0, sizeof *info);
    SNDFILE *f = sf_open(path, SFM_READ, info);
    if (!f) return -1;
    *pcm = malloc(sizeof(float) * (size_t)(info->frames + 1));
    sf_count_t got = sf_readf_float(f, *pcm, info->frames);
    sf_close(f);
    return (long)got;
}

TEST(audio_formats_round_trip) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir != NULL);
    enum { N = 4410 };
    static float pcm[N];
    sine(pcm, N, 0.5f);
    pcm[100] = 1.7f; /* clipped, not wrapped */
    pcm[101] = -3.0f;
    const audio_format fmts[3] = {AUDIO_FORMAT_WAV, AUDIO_FORMAT_FLAC, AUDIO_FORMAT_OGG};
    const int majors[3] = {SF_FORMAT_WAV, SF_FORMAT_FLAC, SF_FORMAT_OGG};
    for (int k = 0; k < 3; k++) {
        char path[4096], msg[256] = "";
        snprintf(path, sizeof path, "%s/x.%s", dir, audio_format_name(fmts[k]));
        int rc = audio_write(path, pcm, N, 44100, fmts[k], msg, sizeof msg);
        if (rc) fprintf(stderr, "  %s\n", msg);
        ASSERT_OK(rc);
        ASSERT_EQ(audio_format_from_path(path), fmts[k]);
        SF_INFO info;
        float *back = NULL;
        long got = read_audio(path, &back, &info);
        ASSERT_EQ(got, N);
        ASSERT_EQ(info.samplerate, 44100);
        ASSERT_EQ(info.channels, 1);
        ASSERT_EQ(info.format & SF_FORMAT_TYPEMASK, majors[k]);
        if (fmts[k] != AUDIO_FORMAT_OGG) { /* lossless: 16-bit quantisation only */
            ASSERT_NEAR(back[100], 1.0, 1e-3);
            ASSERT_NEAR(back[101], -1.0, 1e-3);
            back[100] = pcm[100] = 0.0f;
            back[101] = pcm[101] = 0.0f;
            ASSERT_CLOSE_F32(audio_format_name(fmts[k]), back, pcm, N, 2.0 / 32768, 0);
            pcm[100] = 1.7f;
            pcm[101] = -3.0f;
        }
        free(back);
    }
    /* Only the three files: no temporary debris. */
    ASSERT_EQ(count_entries(dir), 3);
    remove_tree(dir);
}

TEST(audio_write_replaces_atomically_and_fails_cleanly) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir != NULL);
    float pcm[800];
    sine(pcm, 800, 0.25f);
    char path[4096], msg[256] = "";
    snprintf(path, sizeof path, "%s/out.wav", dir);
    ASSERT_OK(audio_write(path, pcm, 800, 44100, AUDIO_FORMAT_WAV, msg, sizeof msg));
    ASSERT_OK(audio_write(path, pcm, 400, 44100, AUDIO_FORMAT_WAV, msg, sizeof msg));
    SF_INFO info;
    float *back = NULL;
    ASSERT_EQ(read_audio(path, &back, &info), 400);
    free(back);
    ASSERT_EQ(count_entries(dir), 1);

    char bad[4096];
    snprintf(bad, sizeof bad, "%s/no/such/dir/out.wav", dir);
    ASSERT_TRUE(audio_write(bad, pcm, 800, 44100, AUDIO_FORMAT_WAV, msg, sizeof msg) < 0);
    ASSERT_CONTAINS(msg, "no/such/dir/out.wav");
    ASSERT_EQ(audio_write(path, pcm, 800, 0, AUDIO_FORMAT_WAV, msg, sizeof msg), -EINVAL);
    ASSERT_EQ(audio_write(path, pcm, 800, 44100, AUDIO_FORMAT_INVALID, msg, sizeof msg), -EINVAL);
    ASSERT_EQ(count_entries(dir), 1);
    ASSERT_EQ(audio_format_parse("FLAC"), AUDIO_FORMAT_FLAC);
    ASSERT_EQ(audio_format_parse("mp3"), AUDIO_FORMAT_INVALID);
    ASSERT_EQ(audio_format_from_path("a/b.c/noext"), AUDIO_FORMAT_INVALID);
    remove_tree(dir);
}

/* ---- voxq synth ---- */

/* Runs a seeded synth of `text` into dir/name with --codes-out dir/name.json. */
static run_result synth(const char *dir, const char *name, const char *seed, const char *fmt,
                        const char *text) {
    char out[4096], codes[4096];
    snprintf(out, sizeof out, "%s/%s", dir, name);
    snprintf(codes, sizeof codes, "%s/%s.json", dir, name);
    const char *args[] = {"synth",      "--store",
                          tiny_store(), "--model",
                          "dia-tiny",   "--codec",
                          "dac-tiny",   "--device",
                          "cpu",        "--threads",
                          "2",          "--text",
                          text,         "--out",
                          out,          "--seed",
                          seed,         "--max-steps",
                          "40",         "--codes-out",
                          codes,        fmt ? "--format" : NULL,
                          fmt,          NULL};
    return run_voxq(dir, args);
}

/* Checks the codes JSON against the audio file: frames [T][9], codes [9][N] that undo the
 * delay pattern of the frames, N * hop samples in the file, and the file's samples equal the
 * codec's decode of the codes (to 16-bit precision for lossless formats). */
static void check_output(const char *dir, const char *name, int lossless) {
    char path[4096], jpath[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(jpath, sizeof jpath, "%s/%s.json", dir, name);
    char *text = slurp(jpath, NULL);
    ASSERT_TRUE(text != NULL);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    ASSERT_TRUE(doc != NULL);
    const cJSON *frames = cJSON_GetObjectItemCaseSensitive(doc, "frames");
    const cJSON *codes = cJSON_GetObjectItemCaseSensitive(doc, "codes");
    int n = cJSON_GetObjectItemCaseSensitive(doc, "n_frames")->valueint;
    int hop = cJSON_GetObjectItemCaseSensitive(doc, "hop_length")->valueint;
    int T = cJSON_GetArraySize(frames);
    ASSERT_EQ(cJSON_GetArraySize(codes), 9);
    ASSERT_EQ(hop, 8);
    ASSERT_TRUE(n > 0 && T >= n + 16);
    ASSERT_TRUE(T <= 41);
    int32_t *cb = malloc(sizeof(int32_t) * 9 * (size_t)n);
    for (int c = 0; c < 9; c++) {
        const cJSON *row = cJSON_GetArrayItem(codes, c);
        ASSERT_EQ(cJSON_GetArraySize(row), n);
        for (int t = 0; t < n; t++) {
            int code = cJSON_GetArrayItem(row, t)->valueint;
            const cJSON *fr = cJSON_GetArrayItem(frames, t + 1 + delays[c]);
            ASSERT_EQ(cJSON_GetArraySize(fr), 9);
            ASSERT_EQ(code, cJSON_GetArrayItem(fr, c)->valueint);
            ASSERT_TRUE(code >= 0 && code < 1024);
            cb[c * n + t] = code;
        }
    }
    /* The first frame is all BOS (1026). */
    const cJSON *bos = cJSON_GetArrayItem(frames, 0);
    for (int c = 0; c < 9; c++)
        ASSERT_EQ(cJSON_GetArrayItem(bos, c)->valueint, 1026);
    cJSON_Delete(doc);

    SF_INFO info;
    float *pcm = NULL;
    long got = read_audio(path, &pcm, &info);
    ASSERT_EQ(got, (long)n * hop);
    ASSERT_EQ(info.samplerate, 44100);
    ASSERT_EQ(info.channels, 1);

    eng_backend *be = NULL;
    dac_model *dac = NULL;
    eng_error err = {0};
    ASSERT_OK(eng_backend_cpu_new(&be, 1, &err));
    ASSERT_OK(dac_model_load(&dac, be, VOXQ_FIXTURES "/dac_tiny", NULL, &err));
    float *ref = malloc(sizeof(float) * (size_t)n * hop);
    ASSERT_OK(dac_decode(dac, cb, n, ref, &err));
    /* 16-bit PCM: written with scale 32767, read back with 1/32768. */
    if (lossless) ASSERT_CLOSE_F32("file vs codec", pcm, ref, (size_t)n * hop, 2.0 / 32768, 0);
    free(ref);
    free(pcm);
    free(cb);
    dac_model_free(dac);
    eng_backend_free(be);
}

TEST(synth_wav_with_codes) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir && tiny_store());
    run_result r = synth(dir, "hello.wav", "7", NULL, "[S1] Hello.");
    ASSERT_EQ(r.status, 0);
    fprintf(stderr, "%s", r.out);
    ASSERT_CONTAINS(r.out, "steps/s");
    ASSERT_CONTAINS(r.out, "realtime factor");
    ASSERT_CONTAINS(r.out, "peak RSS");
    ASSERT_CONTAINS(r.out, "dia-tiny/original"); /* auto: no int8 in this store */
    ASSERT_CONTAINS(r.out, "seed 7");
    check_output(dir, "hello.wav", 1);
    run_free(&r);
    remove_tree(dir);
}

/* Greedy CFG (3.0, top-k 45), 40 new tokens on "[S1] Short." is item 1 of the transformers
 * reference run (dia_ref.safetensors): the frames must equal gen_sequences[1], the codes
 * audio_codes_1, and the file's samples audio_1 to 16-bit precision. */
TEST(synth_greedy_matches_transformers) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir && tiny_store());
    char out[4096], codes_path[4096];
    snprintf(out, sizeof out, "%s/greedy.wav", dir);
    snprintf(codes_path, sizeof codes_path, "%s/greedy.json", dir);
    const char *args[] = {"synth",       "--store",     tiny_store(),  "--model",  "dia-tiny",
                          "--variant",   "original",    "--codec",     "dac-tiny", "--device",
                          "cpu",         "--text",      "[S1] Short.", "--out",    out,
                          "--greedy",    "--cfg-scale", "3",           "--top-k",  "45",
                          "--max-steps", "40",          "--codes-out", codes_path, NULL};
    run_result r = run_voxq(dir, args);
    ASSERT_EQ(r.status, 0);
    run_free(&r);

    st_file *ref = NULL;
    eng_error err = {0};
    ASSERT_OK(st_open(&ref, VOXQ_FIXTURES "/dia_ref.safetensors", &err));
    const st_tensor *seq = st_find(ref, "gen_sequences");
    const st_tensor *rc = st_find(ref, "audio_codes_1");
    const st_tensor *ra = st_find(ref, "audio_1");
    ASSERT_TRUE(seq && rc && ra && seq->ndim == 3 && seq->shape[0] == 2 && seq->shape[2] == 9);
    char *text = slurp(codes_path, NULL);
    cJSON *doc = text ? cJSON_Parse(text) : NULL;
    free(text);
    ASSERT_TRUE(doc != NULL);
    const cJSON *frames = cJSON_GetObjectItemCaseSensitive(doc, "frames");
    const cJSON *codes = cJSON_GetObjectItemCaseSensitive(doc, "codes");
    int64_t T = seq->shape[1], n = rc->shape[2];
    ASSERT_EQ(cJSON_GetArraySize(frames), T);
    const int64_t *ys = (const int64_t *)seq->data + T * 9; /* item 1 */
    int frame_mismatch = 0, code_mismatch = 0;
    for (int64_t t = 0; t < T; t++)
        for (int c = 0; c < 9; c++)
            frame_mismatch += cJSON_GetArrayItem(cJSON_GetArrayItem(frames, (int)t), c)->valueint !=
                              ys[t * 9 + c];
    for (int c = 0; c < 9; c++) {
        const cJSON *row = cJSON_GetArrayItem(codes, c);
        ASSERT_EQ(cJSON_GetArraySize(row), n);
        for (int64_t t = 0; t < n; t++)
            code_mismatch +=
                cJSON_GetArrayItem(row, (int)t)->valueint != ((const int64_t *)rc->data)[c * n + t];
    }
    ASSERT_EQ(frame_mismatch, 0);
    ASSERT_EQ(code_mismatch, 0);
    cJSON_Delete(doc);

    SF_INFO info;
    float *pcm = NULL;
    ASSERT_EQ(read_audio(out, &pcm, &info), (long)(ra->nbytes / sizeof(float)));
    ASSERT_CLOSE_F32("file vs transformers", pcm, (const float *)ra->data,
                     ra->nbytes / sizeof(float), 2.0 / 32768 + 1e-4, 0);
    free(pcm);
    st_close(ref);
    remove_tree(dir);
}

TEST(synth_flac_and_ogg) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir && tiny_store());
    run_result r = synth(dir, "a.flac", "3", NULL, "[S1] Flac. [S2] Yes.");
    ASSERT_EQ(r.status, 0);
    check_output(dir, "a.flac", 1);
    run_free(&r);
    r = synth(dir, "b.audio", "3", "ogg", "[S1] Ogg.");
    ASSERT_EQ(r.status, 0);
    check_output(dir, "b.audio", 0);
    SF_INFO info;
    float *pcm = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/b.audio", dir);
    ASSERT_TRUE(read_audio(path, &pcm, &info) > 0);
    ASSERT_EQ(info.format & SF_FORMAT_TYPEMASK, SF_FORMAT_OGG);
    free(pcm);
    run_free(&r);
    remove_tree(dir);
}

TEST(synth_seeded_runs_are_reproducible) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir && tiny_store());
    run_result a = synth(dir, "a.wav", "12345", NULL, "[S1] Same seed. [S2] Same audio.");
    run_result b = synth(dir, "b.wav", "12345", NULL, "[S1] Same seed. [S2] Same audio.");
    ASSERT_EQ(a.status, 0);
    ASSERT_EQ(b.status, 0);
    char pa[4096], pb[4096];
    size_t la, lb;
    snprintf(pa, sizeof pa, "%s/a.wav", dir);
    snprintf(pb, sizeof pb, "%s/b.wav", dir);
    char *wa = slurp(pa, &la), *wb = slurp(pb, &lb);
    ASSERT_TRUE(wa && wb);
    ASSERT_EQ(la, lb);
    ASSERT_TRUE(memcmp(wa, wb, la) == 0);
    free(wa);
    free(wb);
    snprintf(pa, sizeof pa, "%s/a.wav.json", dir);
    snprintf(pb, sizeof pb, "%s/b.wav.json", dir);
    cJSON *ja = cJSON_Parse(wa = slurp(pa, NULL)), *jb = cJSON_Parse(wb = slurp(pb, NULL));
    ASSERT_TRUE(ja && jb);
    ASSERT_TRUE(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(ja, "frames"),
                              cJSON_GetObjectItemCaseSensitive(jb, "frames"), 1));
    free(wa);
    free(wb);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    run_free(&a);
    run_free(&b);
    remove_tree(dir);
}

TEST(synth_missing_variant_lists_the_store) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir && tiny_store());
    char out[4096];
    snprintf(out, sizeof out, "%s/x.wav", dir);
    const char *a1[] = {"synth",     "--store", tiny_store(), "--model",  "dia-tiny",
                        "--variant", "int4",    "--codec",    "dac-tiny", "--text",
                        "[S1] Hi.",  "--out",   out,          NULL};
    run_result r = run_voxq(dir, a1);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "dia-tiny/int4");
    ASSERT_CONTAINS(r.err, "has these variants: original");
    run_free(&r);

    const char *a2[] = {"synth",  "--store",  tiny_store(), "--model", "dia-huge",
                        "--text", "[S1] Hi.", "--out",      out,       NULL};
    r = run_voxq(dir, a2);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "no model 'dia-huge'");
    ASSERT_CONTAINS(r.err, "dac-tiny/original");
    ASSERT_CONTAINS(r.err, "dia-tiny/original");
    run_free(&r);

    /* The default codec (dac-44khz) is not in this store. */
    const char *a3[] = {"synth",  "--store",  tiny_store(), "--model", "dia-tiny",
                        "--text", "[S1] Hi.", "--out",      out,       NULL};
    r = run_voxq(dir, a3);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "dac-44khz");
    run_free(&r);
    ASSERT_EQ(access(out, F_OK), -1);
    remove_tree(dir);
}

/* --variant auto takes int8 once `voxq quantize` made it; original stays reachable. Uses its own
 * store so the other cases keep seeing only the original. */
TEST(synth_auto_variant_prefers_int8) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir != NULL);
    char root[4096], out[4096];
    snprintf(root, sizeof root, "%s/store", dir);
    snprintf(out, sizeof out, "%s/x.wav", dir);
    store st;
    eng_error err = {0};
    ASSERT_OK(store_open(&st, root, &err));
    ASSERT_OK(store_import(&st, VOXQ_FIXTURES "/dia_tiny", "dia-tiny", 0, NULL, NULL, &err));
    ASSERT_OK(store_import(&st, VOXQ_FIXTURES "/dac_tiny", "dac-tiny", 0, NULL, NULL, &err));
    store_close(&st);
    const char *quant[] = {"quantize", "dia-tiny", "--method", "int8", "--store", root, NULL};
    run_result r = run_voxq(dir, quant);
    ASSERT_EQ(r.status, 0);
    run_free(&r);
    const char *variants[2] = {"auto", "original"};
    const char *expect[2] = {"model dia-tiny/int8,", "model dia-tiny/original,"};
    for (int k = 0; k < 2; k++) {
        const char *args[] = {"synth",     "--store",   root,          "--model",  "dia-tiny",
                              "--variant", variants[k], "--codec",     "dac-tiny", "--device",
                              "cpu",       "--text",    "[S1] Hi.",    "--out",    out,
                              "--seed",    "1",         "--max-steps", "40",       NULL};
        r = run_voxq(dir, args);
        ASSERT_EQ(r.status, 0);
        ASSERT_CONTAINS(r.out, expect[k]);
        run_free(&r);
    }
    /* A damaged int8 (no manifest) is never picked by auto, and asking for it fails. */
    char manifest[4200];
    snprintf(manifest, sizeof manifest, "%s/models/dia-tiny/int8/MANIFEST.json", root);
    ASSERT_OK(unlink(manifest));
    const char *again[] = {"synth",    "--store",  root,  "--model",     "dia-tiny", "--codec",
                           "dac-tiny", "--device", "cpu", "--text",      "[S1] Hi.", "--out",
                           out,        "--seed",   "1",   "--max-steps", "40",       NULL};
    r = run_voxq(dir, again);
    ASSERT_EQ(r.status, 0);
    ASSERT_CONTAINS(r.out, "model dia-tiny/original,");
    run_free(&r);
    const char *damaged[] = {"synth",     "--store", root,      "--model",  "dia-tiny",
                             "--variant", "int8",    "--codec", "dac-tiny", "--text",
                             "[S1] Hi.",  "--out",   out,       NULL};
    r = run_voxq(dir, damaged);
    ASSERT_EQ(r.status, 1);
    ASSERT_CONTAINS(r.err, "dia-tiny/int8 is damaged");
    run_free(&r);
    remove_tree(dir);
}

TEST(synth_bad_input_exits_2) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir && tiny_store());
    char out[4096];
    snprintf(out, sizeof out, "%s/x.wav", dir);
    static char long_text[1200];
    memset(long_text, 'a', sizeof long_text - 1);
    const char *texts[] = {"\xff\xfe bad utf-8", "", long_text};
    for (int i = 0; i < 3; i++) {
        const char *args[] = {"synth",    "--store", tiny_store(), "--model", "dia-tiny", "--codec",
                              "dac-tiny", "--text",  texts[i],     "--out",   out,        NULL};
        run_result r = run_voxq(dir, args);
        ASSERT_EQ(r.status, 2);
        ASSERT_CONTAINS(r.err, "bad text");
        run_free(&r);
    }
    const char *usage1[] = {"synth", "--text", "[S1] Hi.", NULL};
    run_result r = run_voxq(dir, usage1);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "--out");
    run_free(&r);
    const char *usage2[] = {"synth", "--text", "[S1] Hi.", "--out", out, "--top-p", "2", NULL};
    r = run_voxq(dir, usage2);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "--top-p");
    run_free(&r);
    const char *usage3[] = {"synth",    "--text", "[S1] Hi.", "--out",      out,
                            "--format", "mp3",    "--store",  tiny_store(), NULL};
    r = run_voxq(dir, usage3);
    ASSERT_EQ(r.status, 2);
    ASSERT_CONTAINS(r.err, "mp3");
    run_free(&r);
    ASSERT_EQ(access(out, F_OK), -1);
    remove_tree(dir);
}

/* SIGINT between decoder steps: exit 1, a message, and no output file. */
TEST(synth_interrupt_writes_nothing) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir && tiny_store());
    char out[4096], log[4096];
    snprintf(out, sizeof out, "%s/x.wav", dir);
    snprintf(log, sizeof log, "%s/stderr.txt", dir);
    /* SIGINT is blocked across fork and exec, so it stays pending until voxq has installed
     * its handler and unblocked it: no race with the child's start-up. */
    sigset_t block, old_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
    pid_t pid = fork();
    if (pid == 0) {
        int e = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (e < 0) _exit(127);
        dup2(e, 2);
        /* 3000 steps of the tiny model take seconds; the signal comes long before the end. */
        execl(VOXQ_BINARY_DIR "/voxq", "voxq", "synth", "--store", tiny_store(), "--model",
              "dia-tiny", "--codec", "dac-tiny", "--device", "cpu", "--threads", "1", "--text",
              "[S1] A long one.", "--out", out, "--greedy", "--max-steps", "3000", (char *)NULL);
        _exit(127);
    }
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    ASSERT_TRUE(pid > 0);
    kill(pid, SIGINT);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 1);
    char *err = slurp(log, NULL);
    ASSERT_CONTAINS(err, "interrupted");
    free(err);
    ASSERT_EQ(access(out, F_OK), -1);
    remove_tree(dir);
}

TEST(synth_codec_of_the_wrong_kind_fails) {
    char *dir = make_tmpdir();
    ASSERT_TRUE(dir && tiny_store());
    char out[4096];
    snprintf(out, sizeof out, "%s/x.wav", dir);
    const char *args[] = {"synth",    "--store",  tiny_store(), "--model", "dia-tiny",
                          "--codec",  "dia-tiny", "--device",   "cpu",     "--text",
                          "[S1] Hi.", "--out",    out,          NULL};
    run_result r = run_voxq(dir, args);
    ASSERT_EQ(r.status, 1);
    ASSERT_CONTAINS(r.err, "not a DAC");
    run_free(&r);
    remove_tree(dir);
}

int main(int argc, char **argv) {
    int rc = test_main(argc, argv);
    remove_tree(store_tmp);
    return rc;
}
