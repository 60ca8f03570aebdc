/* test_quality.c - engine/quality: FFT, log-mel distance, prompt sets, and the figures on the
 * tiny reference Dia (tests/reference/data/dia_tiny): the original against itself is perfect,
 * a copy with one decoder layer's weights scaled is caught. */
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/quality.h"
#include "engine/safetensors.h"
#include "test.h"

#define DIA_TINY VOXQ_FIXTURES "/dia_tiny"
#define DAC_TINY VOXQ_FIXTURES "/dac_tiny"

static uint64_t rng_state = 0x1234567;
/* Uniform in [-1, 1). */
static double urand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

TEST(fft_matches_naive_dft) {
    for (int n = 1; n <= 256; n *= 4) {
        double re[256], im[256], x[256], y[256];
        for (int i = 0; i < n; i++) {
            re[i] = x[i] = urand();
            im[i] = y[i] = urand();
        }
        ASSERT_OK(quality_fft(re, im, n, NULL));
        double worst = 0;
        for (int k = 0; k < n; k++) {
            double sr = 0, si = 0;
            for (int t = 0; t < n; t++) {
                double a = -2 * M_PI * (double)k * t / n;
                sr += x[t] * cos(a) - y[t] * sin(a);
                si += x[t] * sin(a) + y[t] * cos(a);
            }
            double d = fabs(sr - re[k]) + fabs(si - im[k]);
            if (d > worst) worst = d;
        }
        if (worst > 1e-9) fprintf(stderr, "  n=%d max |fft - dft| = %g\n", n, worst);
        ASSERT_TRUE(worst <= 1e-9);
    }
}

TEST(fft_rejects_sizes_that_are_not_powers_of_two) {
    double re[12] = {0}, im[12] = {0};
    eng_error err = {0};
    ASSERT_EQ(quality_fft(re, im, 12, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "12");
    quality_mel_opts bad = {1000, 0, 0, 0};
    float pcm[64] = {0}, *out = NULL;
    int frames, mels;
    ASSERT_EQ(quality_logmel(pcm, 64, 16000, &bad, &out, &frames, &mels, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "n_fft");
    ASSERT_TRUE(out == NULL);
}

TEST(logmel_of_a_sine_peaks_in_its_band) {
    const int sr = 16000, n = 8000;
    float *pcm = malloc(n * sizeof *pcm);
    ASSERT_TRUE(pcm != NULL);
    for (int i = 0; i < n; i++)
        pcm[i] = 0.5f * (float)sin(2 * M_PI * 1000.0 * i / sr);
    quality_mel_opts o = {512, 128, 40, 0};
    float *spec = NULL;
    int frames = 0, mels = 0;
    ASSERT_OK(quality_logmel(pcm, n, sr, &o, &spec, &frames, &mels, NULL));
    ASSERT_EQ(frames, n / 128 + 1);
    ASSERT_EQ(mels, 40);
    /* the middle frame: the band whose centre is nearest 1 kHz holds the maximum */
    const float *row = spec + (size_t)(frames / 2) * mels;
    int best = 0;
    for (int m = 1; m < mels; m++)
        if (row[m] > row[best]) best = m;
    double top = 2595.0 * log10(1.0 + 8000.0 / 700.0);
    double centre = 700.0 * (pow(10.0, top * (best + 1) / (mels + 1) / 2595.0) - 1.0);
    fprintf(stderr, "  peak band %d centred at %.0f Hz, ln|mel| %.3f\n", best, centre, row[best]);
    ASSERT_TRUE(fabs(centre - 1000.0) < 150.0);
    /* a full-scale sine peaks near 0.5 of the amplitude after the window normalisation */
    ASSERT_TRUE(row[best] > logf(0.05f) && row[best] < logf(0.5f));
    /* silence sits at the floor */
    float zeros[1024] = {0};
    float *quiet = NULL;
    ASSERT_OK(quality_logmel(zeros, 1024, sr, &o, &quiet, &frames, &mels, NULL));
    ASSERT_NEAR(quiet[3], logf(1e-5f), 1e-6);
    free(quiet);
    free(spec);
    free(pcm);
}

TEST(mel_distance_is_zero_for_equal_audio_and_grows_with_change) {
    const int sr = 44100, n = 44100 / 4;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    ASSERT_TRUE(a && b);
    for (int i = 0; i < n; i++) {
        a[i] = 0.3f * (float)sin(2 * M_PI * 440.0 * i / sr);
        b[i] = a[i];
    }
    double d0 = -1, d1 = -1, d2 = -1, d3 = -1;
    ASSERT_OK(quality_mel_distance(a, n, b, n, sr, NULL, &d0, NULL));
    ASSERT_EQ(d0, 0.0);
    for (int i = 0; i < n; i++)
        b[i] = a[i] * 1.01f; /* 1 % louder: ln(1.01) where the bands rise above the floor */
    ASSERT_OK(quality_mel_distance(a, n, b, n, sr, NULL, &d1, NULL));
    for (int i = 0; i < n; i++)
        b[i] = 0.3f * (float)sin(2 * M_PI * 1760.0 * i / sr);
    ASSERT_OK(quality_mel_distance(a, n, b, n, sr, NULL, &d2, NULL));
    /* the same audio, half of it missing: the missing half counts as silence */
    ASSERT_OK(quality_mel_distance(a, n, a, n / 2, sr, NULL, &d3, NULL));
    fprintf(stderr, "  1%% louder %.4f, other pitch %.4f, truncated %.4f\n", d1, d2, d3);
    ASSERT_TRUE(d1 > 0 && d1 <= log(1.01) + 1e-6 && d2 > 10 * d1 && d3 > 10 * d1);
    double e = -1;
    ASSERT_OK(quality_mel_distance(NULL, 0, NULL, 0, sr, NULL, &e, NULL));
    ASSERT_EQ(e, 0.0);
    free(a);
    free(b);
}

/* The whole file at path (NUL-terminated), or NULL. */
static char *slurp(const char *path) {
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
    if (buf) buf[n] = '\0';
    fclose(f);
    return buf;
}

TEST(default_prompts_match_the_documented_file) {
    const quality_prompt *def = NULL;
    int nd = quality_default_prompts(&def);
    ASSERT_EQ(nd, 4);
    char *buf = slurp(VOXQ_SOURCE_DIR "/docs/quality-prompts.txt");
    ASSERT_TRUE(buf != NULL);
    quality_prompt file[QUALITY_MAX_PROMPTS];
    int nf = 0;
    eng_error err = {0};
    ASSERT_OK(
        quality_prompts_parse(buf, file, QUALITY_MAX_PROMPTS, &nf, "quality-prompts.txt", &err));
    ASSERT_EQ(nf, nd);
    int non_ascii = 0, two_speakers = 0;
    for (int i = 0; i < nd; i++) {
        ASSERT_STREQ(file[i].name, def[i].name);
        ASSERT_STREQ(file[i].text, def[i].text);
        int32_t ids[DIA_MAX_TEXT];
        int n = 0;
        ASSERT_OK(dia_tokenize(def[i].text, strlen(def[i].text), ids, DIA_MAX_TEXT, &n, &err));
        for (int k = 0; k < n; k++) {
            non_ascii |= ids[k] > 127;
            two_speakers |= ids[k] == 2;
        }
    }
    ASSERT_TRUE(non_ascii && two_speakers);
    free(buf);
}

TEST(prompt_file_errors_name_the_line) {
    quality_prompt p[4];
    int n = 0;
    eng_error err = {0};
    char ok[] = "# comment\n\na\t[S1] one\r\nb-2\t[S1] two\n";
    ASSERT_OK(quality_prompts_parse(ok, p, 4, &n, "p.txt", &err));
    ASSERT_EQ(n, 2);
    ASSERT_STREQ(p[1].name, "b-2");
    ASSERT_STREQ(p[0].text, "[S1] one");
    char no_tab[] = "a\t[S1] one\nb [S1] two\n";
    ASSERT_EQ(quality_prompts_parse(no_tab, p, 4, &n, "p.txt", &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "p.txt:2");
    char dup[] = "a\tx\na\ty\n";
    ASSERT_EQ(quality_prompts_parse(dup, p, 4, &n, "p.txt", &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "twice");
    char bad_name[] = "Bad Name\tx\n";
    ASSERT_EQ(quality_prompts_parse(bad_name, p, 4, &n, "p.txt", &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "Bad Name");
    char empty[] = "# nothing\n";
    ASSERT_EQ(quality_prompts_parse(empty, p, 4, &n, "p.txt", &err), ENG_EFORMAT);
}

/* --- the figures on the tiny reference model --- */

static eng_backend *backend(void) {
    static eng_backend *be;
    eng_error err = {0};
    if (!be && eng_backend_cpu_new(&be, 2, &err)) fprintf(stderr, "cpu backend: %s\n", err.msg);
    return be;
}

static dia_model *load(const char *dir, int max_batch) {
    dia_model *m = NULL;
    eng_error err = {0};
    dia_load_opts lo = {0};
    lo.max_batch = max_batch;
    lo.max_frames = 129;
    lo.max_text = DIA_MAX_TEXT;
    if (dia_model_load(&m, backend(), dir, &lo, &err)) fprintf(stderr, "%s: %s\n", dir, err.msg);
    return m;
}

/* Settings for the tiny runs: 96 steps so the delayed channels produce plenty of codes. */
static void tiny_opts(quality_opts *o) {
    quality_opts_default(o);
    o->gen.max_new_tokens = 96;
    o->gen.seed = 7;
}

static void remove_tree(const char *dir);

/* Copies dia_tiny into a temp dir with every weight of decoder layer `layer`'s MLP down
 * projection multiplied by `scale`. Returns the directory (malloc'd) or NULL. */
static char *damaged_copy(int layer, float scale) {
    char tmpl[] = "/tmp/voxq-quality-XXXXXX";
    if (!mkdtemp(tmpl)) return NULL;
    char *dir = strdup(tmpl);
    char path[4096], target[160];
    snprintf(target, sizeof target, "model.decoder.layers.%d.mlp.down_proj.weight", layer);
    char *cfg = slurp(DIA_TINY "/config.json");
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!cfg || !f || fputs(cfg, f) < 0) goto fail;
    fclose(f);
    f = NULL;
    free(cfg);
    cfg = NULL;
    st_file *src = NULL;
    st_writer *w = NULL;
    eng_error err = {0};
    if (st_open(&src, DIA_TINY "/model.safetensors", &err)) goto fail;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_writer_open(&w, path, &err);
    int found = 0;
    for (size_t i = 0; rc == 0 && i < st_count(src); i++) {
        const st_tensor *t = st_at(src, i);
        rc = st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape);
    }
    if (rc == 0) rc = st_writer_begin_data(w);
    for (size_t i = 0; rc == 0 && i < st_count(src); i++) {
        const st_tensor *t = st_at(src, i);
        if (strcmp(t->name, target) != 0 || t->dtype != ENG_DT_F32) {
            rc = st_writer_write(w, t->data, t->nbytes);
            continue;
        }
        found = 1;
        float *x = malloc(t->nbytes);
        if (!x) {
            rc = -1;
            break;
        }
        memcpy(x, t->data, t->nbytes);
        for (size_t k = 0; k < t->nbytes / sizeof *x; k++)
            x[k] *= scale;
        rc = st_writer_write(w, x, t->nbytes);
        free(x);
    }
    if (rc == 0) {
        rc = st_writer_finish(w);
        if (rc) st_writer_abort(w);
    } else {
        st_writer_abort(w);
    }
    st_close(src);
    if (rc || !found) goto fail;
    return dir;
fail:
    if (f) fclose(f);
    free(cfg);
    remove_tree(dir);
    free(dir);
    return NULL;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}
/* Removes a directory this test created (only ever a mkdtemp result). */
static void remove_tree(const char *dir) {
    if (dir && !strncmp(dir, "/tmp/voxq-quality-", 18))
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void print_figures(const char *what, const quality_figures *q) {
    fprintf(stderr,
            "  %s: top-1 %.4f, KL mean %.3g max %.3g, |EOS diff| mean %.2f max %d, "
            "mel mean %.4f max %.4f\n",
            what, q->top1_agreement, q->kl_mean, q->kl_max, q->eos_diff_mean_abs,
            q->eos_diff_max_abs, q->mel_distance_mean, q->mel_distance_max);
}

TEST(original_against_itself_is_perfect) {
    dia_model *m = load(DIA_TINY, 2);
    dac_model *codec = NULL;
    ASSERT_TRUE(m != NULL);
    eng_error err = {0};
    ASSERT_OK(dac_model_load(&codec, backend(), DAC_TINY, NULL, &err));
    const quality_prompt *prompts = NULL;
    int n = quality_default_prompts(&prompts);
    quality_opts o;
    tiny_opts(&o);
    quality_figures *q = calloc(1, sizeof *q);
    ASSERT_TRUE(q != NULL);
    /* one model in both roles (two sequence slots) */
    ASSERT_OK(quality_compare(m, m, codec, prompts, n, &o, q, &err));
    print_figures("self", q);
    ASSERT_EQ(q->n, n);
    ASSERT_EQ(q->top1_agreement, 1.0);
    ASSERT_EQ(q->kl_mean, 0.0);
    ASSERT_EQ(q->kl_max, 0.0);
    ASSERT_EQ(q->eos_diff_max_abs, 0);
    ASSERT_EQ(q->mel_distance_max, 0.0);
    for (int i = 0; i < n; i++) {
        ASSERT_TRUE(q->prompt[i].tf_pairs > 9 * 40);
        ASSERT_TRUE(q->prompt[i].frames_orig > 0);
        ASSERT_EQ(q->prompt[i].frames_orig, q->prompt[i].frames_variant);
    }
    /* a second load of the same files: a different model object, the same numbers */
    dia_model *m2 = load(DIA_TINY, 1);
    dia_model *m1 = load(DIA_TINY, 1);
    ASSERT_TRUE(m1 && m2);
    ASSERT_OK(quality_compare(m1, m2, codec, prompts, 2, &o, q, &err));
    ASSERT_EQ(q->top1_agreement, 1.0);
    ASSERT_EQ(q->kl_max, 0.0);
    ASSERT_EQ(q->mel_distance_max, 0.0);

    cJSON *j = quality_figures_json(q);
    ASSERT_TRUE(j != NULL);
    ASSERT_EQ(cJSON_GetObjectItem(j, "top1_agreement")->valuedouble, 1.0);
    ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(j, "prompts")), 2);
    ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(j, "channel_agreement")), 9);
    cJSON_Delete(j);
    free(q);
    dia_model_free(m1);
    dia_model_free(m2);
    dia_model_free(m);
    dac_model_free(codec);
}

TEST(a_damaged_layer_is_detected) {
    char *dir = damaged_copy(1, 1.6f);
    ASSERT_TRUE(dir != NULL);
    dia_model *orig = load(DIA_TINY, 1), *bad = load(dir, 1);
    dac_model *codec = NULL;
    eng_error err = {0};
    ASSERT_TRUE(orig && bad);
    ASSERT_OK(dac_model_load(&codec, backend(), DAC_TINY, NULL, &err));
    const quality_prompt *prompts = NULL;
    int n = quality_default_prompts(&prompts);
    quality_opts o;
    tiny_opts(&o);
    quality_figures *q = calloc(1, sizeof *q);
    ASSERT_TRUE(q != NULL);
    ASSERT_OK(quality_compare(orig, bad, codec, prompts, n, &o, q, &err));
    print_figures("damaged", q);
    ASSERT_TRUE(q->top1_agreement < 0.95);
    ASSERT_TRUE(q->kl_mean > 1e-3);
    ASSERT_TRUE(q->mel_distance_mean > 0);
    /* a milder damage scores between the two */
    char *dir2 = damaged_copy(1, 1.05f);
    ASSERT_TRUE(dir2 != NULL);
    dia_model *mild = load(dir2, 1);
    ASSERT_TRUE(mild != NULL);
    quality_figures *q2 = calloc(1, sizeof *q2);
    ASSERT_TRUE(q2 != NULL);
    ASSERT_OK(quality_compare(orig, mild, codec, prompts, n, &o, q2, &err));
    print_figures("mild", q2);
    ASSERT_TRUE(q2->top1_agreement < 1.0);
    ASSERT_TRUE(q2->top1_agreement > q->top1_agreement);
    ASSERT_TRUE(q2->kl_mean > 0 && q2->kl_mean < q->kl_mean);
    free(q);
    free(q2);
    dia_model_free(mild);
    dia_model_free(bad);
    dia_model_free(orig);
    dac_model_free(codec);
    remove_tree(dir);
    remove_tree(dir2);
    free(dir);
    free(dir2);
}

TEST(teacher_forcing_rejects_frames_from_other_settings) {
    dia_model *m = load(DIA_TINY, 2);
    ASSERT_TRUE(m != NULL);
    eng_error err = {0};
    int32_t ids[32];
    int n = 0;
    ASSERT_OK(dia_tokenize("[S1] Hi.", 8, ids, 32, &n, &err));
    /* frames longer than the sequence can run with max_new_tokens 4 */
    dia_gen_params p;
    dia_gen_params_default(&p);
    p.max_new_tokens = 4;
    int32_t frames[20 * 9];
    for (int i = 0; i < 20 * 9; i++)
        frames[i] = 1026;
    quality_prompt_figures f;
    memset(&f, 0, sizeof f);
    ASSERT_EQ(quality_teacher_forced(m, m, ids, n, &p, frames, 20, &f, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "teacher-forced");
    /* both slots came back */
    ASSERT_EQ(dia_model_free_slots(m), 2);
    dia_model_free(m);
}

int main(int argc, char **argv) {
    int rc = test_main(argc, argv);
    eng_backend_free(backend());
    return rc;
}
