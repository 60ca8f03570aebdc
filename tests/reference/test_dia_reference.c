/* test_dia_reference.c - the Dia engine (engine/models/dia.h) on the CPU backend against the
 * transformers 5.17 fixtures in tests/reference/data (made by make_fixtures.py; see its
 * README.md): tokenizer cases, encoder output, first-step logits, greedy CFG generation with
 * the delay pattern (codes and processed scores of every step), a run where the model chooses
 * EOS itself, the sampled non-delayed path teacher-forced, bad input and bad checkpoints, and
 * the int8/int4 variants of the tiny model made by engine/quant. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/models/dia.h"
#include "engine/quant.h"
#include "engine/safetensors.h"
#include "replay_backend.h"
#include "test.h"

#define TOL 1e-4 /* fp32 engine vs fp32 transformers: logits, scores, encoder states */

static const char *fixture(const char *name) {
    static char buf[8][1024];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 1024, "%s/%s", VOXQ_FIXTURES, name);
    return p;
}

/* The reference file, opened once. */
static st_file *ref_file(void) {
    static st_file *f;
    if (!f) {
        eng_error err = {0};
        if (st_open(&f, fixture("dia_ref.safetensors"), &err)) {
            fprintf(stderr, "  cannot open dia_ref.safetensors: %s\n", err.msg);
            return NULL;
        }
    }
    return f;
}

/* Fixture tensor `name` as a pointer to its F32 data (NULL when absent or not F32). */
static const float *ref_f32(const char *name, int64_t *numel) {
    st_file *f = ref_file();
    const st_tensor *t = f ? st_find(f, name) : NULL;
    if (!t || t->dtype != ENG_DT_F32) return NULL;
    if (numel) *numel = (int64_t)(t->nbytes / 4);
    return t->data;
}

/* Fixture I64 tensor `name` converted to int32 (malloc'd), with its shape. */
static int32_t *ref_i32(const char *name, int64_t *shape, int *ndim) {
    st_file *f = ref_file();
    const st_tensor *t = f ? st_find(f, name) : NULL;
    if (!t || t->dtype != ENG_DT_I64) return NULL;
    size_t n = t->nbytes / 8;
    int32_t *out = malloc(n * 4 + 4);
    const int64_t *src = t->data;
    for (size_t i = 0; i < n; i++)
        out[i] = (int32_t)src[i];
    if (ndim) *ndim = t->ndim;
    for (int i = 0; shape && i < t->ndim; i++)
        shape[i] = t->shape[i];
    return out;
}

static eng_backend *backend(void) {
    static eng_backend *be;
    if (!be) {
        eng_error err = {0};
        if (eng_backend_cpu_new(&be, 2, &err)) fprintf(stderr, "  cpu backend: %s\n", err.msg);
    }
    return be;
}

/* The backend load() uses when set (step_capture_replay), else the plain CPU backend. */
static eng_backend *use_backend;

static dia_model *load(const char *dir, int max_batch, int max_frames) {
    dia_load_opts o = {.max_batch = max_batch, .max_frames = max_frames, .max_text = 64};
    dia_model *m = NULL;
    eng_error err = {0};
    if (dia_model_load(&m, use_backend ? use_backend : backend(), dir, &o, &err)) {
        fprintf(stderr, "  load %s: %s\n", dir, err.msg);
        return NULL;
    }
    return m;
}

/* Compares processed scores: identical -inf pattern and finite values within tol; prints the
 * first difference. Returns 0 when equal. */
static int compare_scores(const char *what, const float *got, const float *ref, int n, double tol,
                          double *max_abs) {
    for (int i = 0; i < n; i++) {
        int gi = got[i] == -INFINITY, ri = ref[i] == -INFINITY;
        if (gi != ri) {
            fprintf(stderr, "  %s: -inf pattern differs at %d (channel %d id %d): got %g ref %g\n",
                    what, i, i / 1028, i % 1028, got[i], ref[i]);
            return 1;
        }
        if (gi) continue;
        double d = fabs((double)got[i] - ref[i]);
        if (d > *max_abs) *max_abs = d;
        if (!(d <= tol)) {
            fprintf(stderr, "  %s: differs at %d: got %.9g ref %.9g\n", what, i, got[i], ref[i]);
            return 1;
        }
    }
    return 0;
}

/* Prompt b of a padded fixture batch: its real ids (mask = 1) -> ids, returns the count. */
static int prompt_ids(const int32_t *ids, const int32_t *mask, int S, int b, int32_t *out) {
    int n = 0;
    for (int s = 0; s < S; s++)
        if (mask[b * S + s]) out[n++] = ids[b * S + s];
    return n;
}

static void greedy_params(dia_gen_params *p, int max_new) {
    dia_gen_params_default(p);
    p->greedy = 1;
    p->temperature = 1.0f; /* the fixtures pass no temperature */
    p->cfg_scale = 3.0f;
    p->cfg_top_k = 45;
    p->max_new_tokens = max_new;
}

TEST(tokenizer_cases) {
    FILE *f = fopen(fixture("tokenizer_cases.json"), "rb");
    ASSERT_TRUE(f != NULL);
    static char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    cJSON *root = cJSON_ParseWithLength(buf, len);
    ASSERT_TRUE(cJSON_IsArray(root));
    int checked = 0, rejected = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, root) {
        const char *text = cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(c, "ids");
        int want = cJSON_GetArraySize(ids);
        static int32_t got[4096];
        int n = -1;
        eng_error err = {0};
        int rc = dia_tokenize(text, strlen(text), got, 4096, &n, &err);
        if (want == 0 || want > DIA_MAX_TEXT) {
            /* transformers accepts these; the engine's documented limits reject them clearly */
            ASSERT_EQ(rc, ENG_EINVAL);
            ASSERT_CONTAINS(err.msg, want == 0 ? "empty" : "too long");
            rejected++;
            continue;
        }
        ASSERT_OK(rc);
        ASSERT_EQ(n, want);
        for (int i = 0; i < n; i++)
            ASSERT_EQ(got[i], cJSON_GetArrayItem(ids, i)->valueint);
        checked++;
    }
    cJSON_Delete(root);
    fprintf(stderr, "  %d cases identical, %d rejected by the engine's limits\n", checked,
            rejected);
    ASSERT_TRUE(checked >= 20);
    ASSERT_EQ(rejected, 2);
}

TEST(tokenizer_rejects_bad_text) {
    static const char *bad[] = {"\xff",         "ab\xc3",           "\xc0\xaf",
                                "\xed\xa0\x80", "\xf4\x90\x80\x80", "x\x80y"};
    int32_t ids[64];
    int n;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        eng_error err = {0};
        ASSERT_EQ(dia_tokenize(bad[i], strlen(bad[i]), ids, 64, &n, &err), ENG_EINVAL);
        ASSERT_CONTAINS(err.msg, "UTF-8");
    }
    /* exactly the limit passes, one more id fails; a tag counts as one id */
    static char text[DIA_MAX_TEXT + 8];
    static int32_t many[DIA_MAX_TEXT + 8];
    memset(text, 'a', sizeof text);
    memcpy(text, "[S1]", 4);
    eng_error err = {0};
    ASSERT_OK(dia_tokenize(text, DIA_MAX_TEXT + 3, many, DIA_MAX_TEXT + 8, &n, &err));
    ASSERT_EQ(n, DIA_MAX_TEXT);
    ASSERT_EQ(dia_tokenize(text, DIA_MAX_TEXT + 4, many, DIA_MAX_TEXT + 8, &n, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "1024");
}

TEST(config_parse) {
    dia_config c;
    eng_error err = {0};
    ASSERT_OK(dia_config_load(&c, fixture("dia_tiny"), &err));
    ASSERT_EQ(c.enc_hidden, 64);
    ASSERT_EQ(c.enc_layers, 2);
    ASSERT_EQ(c.dec_kv_heads, 2);
    ASSERT_EQ(c.cross_heads, 4);
    ASSERT_EQ(c.channels, 9);
    ASSERT_EQ(c.delay[1], 8);
    ASSERT_EQ(c.max_delay, 15);
    ASSERT_EQ(c.eos_id, 1024);
    ASSERT_EQ(c.bos_id, 1026);
    ASSERT_NEAR(c.dec_rope_theta, 10000.0, 0);
    const char *bad = "{\"decoder_config\": {\"hidden_size\": \"64\"}}";
    ASSERT_EQ(dia_config_parse(&c, bad, strlen(bad), "x.json", &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "decoder_config.hidden_size");
    /* keys are case-sensitive: "Hidden_Size" is not hidden_size */
    const char *cased = "{\"encoder_config\": {\"Hidden_Size\": 7}}";
    ASSERT_OK(dia_config_parse(&c, cased, strlen(cased), "x.json", &err));
    ASSERT_EQ(c.enc_hidden, 1024);
    const char *delay = "{\"delay_pattern\": [0, 1]}";
    ASSERT_EQ(dia_config_parse(&c, delay, strlen(delay), "x.json", &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "delay_pattern");
}

TEST(encoder_matches_transformers) {
    dia_model *m = load(fixture("dia_tiny"), 1, 64);
    ASSERT_TRUE(m != NULL);
    int64_t shape[4];
    int32_t *ids = ref_i32("input_ids", shape, NULL);
    int32_t *mask = ref_i32("attention_mask", NULL, NULL);
    int B = (int)shape[0], S = (int)shape[1];
    uint8_t m8[256];
    for (int i = 0; i < B * S; i++)
        m8[i] = (uint8_t)mask[i];
    int64_t n;
    const float *ref = ref_f32("encoder_out", &n);
    ASSERT_TRUE(ref && n == (int64_t)B * S * 64);
    float *got = malloc((size_t)n * 4);
    eng_error err = {0};
    int rc = dia_encode(m, ids, m8, B, S, got, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_CLOSE_F32("encoder_out (padded batch, masked)", got, ref, (size_t)n, TOL, 0);
    /* the second prompt alone, unpadded: same states at its real positions */
    int32_t one[64];
    int len = prompt_ids(ids, mask, S, 1, one);
    ASSERT_OK(dia_encode(m, one, NULL, 1, len, got, &err));
    ASSERT_CLOSE_F32("encoder_out (prompt 1 unpadded)", got, ref + (size_t)S * 64, (size_t)len * 64,
                     TOL, 0);
    free(got);
    free(ids);
    free(mask);
    dia_model_free(m);
}

/* Runs the two fixture prompts as two sequences stepped together; checks every step's scores
 * (and the first steps' raw logits) and the final sequences against the greedy reference. */
static void greedy_check(const char *model_dir, const char *pfx_ids, const char *pfx_mask,
                         const char *seq_name, const char *scores_name, const char *raw_name,
                         int expect_chosen_eos, int extra) {
    dia_model *m = load(fixture(model_dir), extra ? 3 : 2, 41);
    ASSERT_TRUE(m != NULL);
    int64_t shape[4], sshape[4];
    int32_t *ids = ref_i32(pfx_ids, shape, NULL);
    int32_t *mask = ref_i32(pfx_mask, NULL, NULL);
    int32_t *seq = ref_i32(seq_name, sshape, NULL);
    int64_t nscores;
    const float *scores = scores_name ? ref_f32(scores_name, &nscores) : NULL;
    const float *raw = raw_name ? ref_f32(raw_name, NULL) : NULL;
    ASSERT_TRUE(ids && mask && seq && (scores || !scores_name));
    int B = (int)shape[0], S = (int)shape[1], T = (int)sshape[1];
    int CV = 9 * 1028;
    dia_gen_params p;
    greedy_params(&p, 40);
    dia_seq *sq[2];
    eng_error err = {0};
    for (int b = 0; b < B; b++) {
        int32_t one[64];
        int n = prompt_ids(ids, mask, S, b, one);
        ASSERT_OK(dia_seq_start(m, one, n, &p, &sq[b], &err));
    }
    /* an unchecked third sequence sharing the steps must not change the other two */
    dia_seq *other = NULL;
    int32_t other_ids[] = {1, 32, 65, 98, 99, 46, 2, 32, 68};
    if (extra) ASSERT_OK(dia_seq_start(m, other_ids, 9, &p, &other, &err));
    double max_abs = 0;
    for (int step = 0; step < T - 1; step++) {
        dia_seq *run[3];
        int nrun = 0;
        for (int b = 0; b < B; b++)
            if (!dia_seq_done(sq[b])) run[nrun++] = sq[b];
        if (!nrun) break;
        if (other && !dia_seq_done(other)) run[nrun++] = other;
        int rc = dia_step(m, run, nrun, &err);
        if (rc) fprintf(stderr, "  step %d: %s\n", step, err.msg);
        ASSERT_OK(rc);
        for (int i = 0; i < nrun; i++) {
            if (run[i] == other) continue;
            int b = run[i] == sq[0] ? 0 : 1;
            char what[64];
            snprintf(what, sizeof what, "%s step %d item %d", seq_name, step, b);
            const float *want = scores ? scores + ((size_t)step * B + b) * CV : NULL;
            if (want)
                ASSERT_TRUE(compare_scores(what, dia_seq_scores(run[i]), want, CV, TOL, &max_abs) ==
                            0);
            if (raw && step < 4) {
                /* gen_raw_logits [step][cond/uncond][item][9][1028] */
                for (int u = 0; u < 2; u++) {
                    snprintf(what, sizeof what, "raw logits step %d %s item %d", step,
                             u ? "uncond" : "cond", b);
                    const float *rw = raw + (((size_t)step * 2 + u) * B + b) * CV;
                    double ma = 0;
                    ASSERT_TRUE(compare_scores(what, dia_seq_logits(run[i], u), rw, CV, TOL, &ma) ==
                                0);
                    if (ma > max_abs) max_abs = ma;
                }
            }
        }
    }
    if (scores) fprintf(stderr, "  %s: max |score or logit - ref| = %.3g\n", seq_name, max_abs);
    int chosen = 0;
    for (int b = 0; b < B; b++) {
        ASSERT_TRUE(dia_seq_done(sq[b]));
        int len = dia_seq_len(sq[b]);
        ASSERT_TRUE(len <= T);
        const int32_t *fr = dia_seq_frames(sq[b]);
        for (int t = 0; t < T; t++) {
            for (int c = 0; c < 9; c++) {
                int32_t want = seq[((size_t)b * T + t) * 9 + c];
                /* transformers keeps stepping a finished item with PAD until the batch ends */
                int32_t got = t < len ? fr[t * 9 + c] : 1025;
                if (got != want)
                    TEST_FAIL_("%s item %d frame %d channel %d: got %d want %d", seq_name, b, t, c,
                               got, want);
            }
        }
        chosen += dia_seq_chose_eos(sq[b]);
        /* codes: frames 1 .. s-1 for a channel-0 EOS at s (spec 6.4) */
        int s_eos = -1;
        for (int t = 0; t < len && s_eos < 0; t++)
            if (fr[t * 9] == 1024) s_eos = t;
        ASSERT_TRUE(s_eos > 0);
        int32_t codes[9 * 64];
        int nf = 0;
        ASSERT_OK(dia_seq_codes(sq[b], codes, 64, &nf, &err));
        ASSERT_EQ(nf, s_eos - 1);
        for (int c = 0; c < 9; c++)
            for (int t = 0; t < nf; t++) {
                static const int d[9] = {0, 8, 9, 10, 11, 12, 13, 14, 15};
                ASSERT_EQ(codes[c * 64 + t], seq[((size_t)b * T + 1 + t + d[c]) * 9 + c]);
                ASSERT_TRUE(codes[c * 64 + t] >= 0 && codes[c * 64 + t] < 1024);
            }
        if (!strcmp(seq_name, "gen_sequences")) {
            /* the codes transformers' batch_decode handed to the DAC: [1, 9, frames] */
            int64_t cs[4];
            char an[32];
            snprintf(an, sizeof an, "audio_codes_%d", b);
            int32_t *want = ref_i32(an, cs, NULL);
            ASSERT_TRUE(want != NULL);
            ASSERT_EQ(cs[2], nf);
            for (int c = 0; c < 9; c++)
                for (int t = 0; t < nf; t++)
                    ASSERT_EQ(codes[c * 64 + t], want[c * nf + t]);
            free(want);
        }
        dia_seq_release(m, sq[b]);
    }
    dia_seq_release(m, other);
    ASSERT_EQ(chosen > 0, expect_chosen_eos);
    free(ids);
    free(mask);
    free(seq);
    dia_model_free(m);
}

TEST(first_step_logits) {
    dia_model *m = load(fixture("dia_tiny"), 2, 8);
    ASSERT_TRUE(m != NULL);
    int64_t shape[4];
    int32_t *ids = ref_i32("input_ids", shape, NULL);
    int32_t *mask = ref_i32("attention_mask", NULL, NULL);
    const float *lc = ref_f32("step0_logits_cond", NULL),
                *lu = ref_f32("step0_logits_uncond", NULL);
    ASSERT_TRUE(ids && lc && lu);
    dia_gen_params p;
    greedy_params(&p, 4);
    dia_seq *sq[2];
    eng_error err = {0};
    for (int b = 0; b < 2; b++) {
        int32_t one[64];
        int n = prompt_ids(ids, mask, (int)shape[1], b, one);
        ASSERT_OK(dia_seq_start(m, one, n, &p, &sq[b], &err));
    }
    ASSERT_EQ(dia_model_free_slots(m), 0);
    dia_seq *extra;
    int32_t one_id = 65;
    ASSERT_EQ(dia_seq_start(m, &one_id, 1, &p, &extra, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "busy");
    ASSERT_OK(dia_step(m, sq, 2, &err));
    for (int b = 0; b < 2; b++) {
        ASSERT_CLOSE_F32("step0 cond", dia_seq_logits(sq[b], 0), lc + (size_t)b * 9252, 9252, TOL,
                         0);
        ASSERT_CLOSE_F32("step0 uncond", dia_seq_logits(sq[b], 1), lu + (size_t)b * 9252, 9252, TOL,
                         0);
        dia_seq_release(m, sq[b]);
    }
    free(ids);
    free(mask);
    dia_model_free(m);
}

TEST(greedy_generation) {
    greedy_check("dia_tiny", "input_ids", "attention_mask", "gen_sequences", "gen_scores",
                 "gen_raw_logits", 0, 0);
}

TEST(greedy_generation_chosen_eos) {
    greedy_check("dia_tiny", "eos_input_ids", "eos_attention_mask", "eos_sequences", NULL, NULL, 1,
                 0);
}

/* The same greedy runs with every decoder step captured once per row bucket and replayed (as a
 * CUDA graph would be): the step must take all it varies from tensors. The EOS run changes the
 * bucket when its first item finishes, so it captures twice; the three-sequence run pads its
 * 6 rows to 8 and must leave the two checked sequences exactly as before; a backend without
 * room for a second graph makes the model run that bucket uncaptured. */
TEST(step_capture_replay) {
    eng_backend *be = NULL;
    eng_error err = {0};
    ASSERT_OK(eng_backend_cpu_new(&be, 2, &err));
    replay_install(be);
    use_backend = be;
    greedy_check("dia_tiny", "input_ids", "attention_mask", "gen_sequences", "gen_scores",
                 "gen_raw_logits", 0, 0);
    greedy_check("dia_tiny", "eos_input_ids", "eos_attention_mask", "eos_sequences", NULL, NULL, 1,
                 0);
    /* three sequences: 6 rows padded to a bucket of 8 with rows on the spare slot */
    greedy_check("dia_tiny", "input_ids", "attention_mask", "gen_sequences", "gen_scores",
                 "gen_raw_logits", 0, 1);
    /* a backend with room for one graph: the second bucket of the EOS run runs uncaptured */
    replay_set_max_graphs(1);
    greedy_check("dia_tiny", "eos_input_ids", "eos_attention_mask", "eos_sequences", NULL, NULL, 1,
                 0);
    use_backend = NULL;
    const replay_stats *st = replay_get_stats();
    fprintf(stderr, "  %d captures, %d launches, %d ops replayed, %d refused\n", st->captures,
            st->launches, st->replayed, st->refused);
    int captures = st->captures, launches = st->launches, refused = st->refused;
    replay_uninstall(be);
    eng_backend_free(be);
    ASSERT_TRUE(captures >= 5 && captures <= 6);
    ASSERT_EQ(refused, 1);
    ASSERT_EQ(launches, 120 + 31); /* the last run: bucket 4 for 31 steps, then 2 uncaptured */
}

/* Sampled run of transformers (non-delayed path), teacher-forced with its tokens: every step's
 * processed scores must match, which pins the order CFG filter -> temperature -> EOS filter ->
 * top-k -> top-p -> delayed EOS forcing. */
TEST(sampled_scores_teacher_forced) {
    dia_model *m = load(fixture("dia_tiny"), 2, 31);
    ASSERT_TRUE(m != NULL);
    int64_t shape[4], sshape[4];
    int32_t *ids = ref_i32("input_ids", shape, NULL);
    int32_t *mask = ref_i32("attention_mask", NULL, NULL);
    int32_t *seq = ref_i32("s1_seq", sshape, NULL);
    const float *scores = ref_f32("s1_scores", NULL);
    ASSERT_TRUE(ids && seq && scores);
    int T = (int)sshape[1];
    dia_gen_params p;
    dia_gen_params_default(&p);
    p.temperature = 1.8f;
    p.top_p = 0.9f;
    p.top_k = 45;
    p.cfg_top_k = 45;
    p.cfg_scale = 3.0f;
    p.max_new_tokens = 30;
    p.no_delay_mask = 1;
    dia_seq *sq[2];
    eng_error err = {0};
    for (int b = 0; b < 2; b++) {
        int32_t one[64];
        int n = prompt_ids(ids, mask, (int)shape[1], b, one);
        ASSERT_OK(dia_seq_start(m, one, n, &p, &sq[b], &err));
    }
    double max_abs = 0;
    int compared = 0;
    for (int step = 0; step < T - 1; step++) {
        dia_seq *run[2];
        int nrun = 0;
        for (int b = 0; b < 2; b++) {
            if (dia_seq_done(sq[b])) continue;
            dia_seq_force(sq[b], seq + ((size_t)b * T + step + 1) * 9);
            run[nrun++] = sq[b];
        }
        if (!nrun) break;
        ASSERT_OK(dia_step(m, run, nrun, &err));
        for (int i = 0; i < nrun; i++) {
            int b = run[i] == sq[0] ? 0 : 1;
            char what[64];
            snprintf(what, sizeof what, "s1 step %d item %d", step, b);
            const float *want = scores + ((size_t)step * 2 + b) * 9252;
            ASSERT_TRUE(compare_scores(what, dia_seq_scores(run[i]), want, 9252, TOL, &max_abs) ==
                        0);
            compared++;
        }
    }
    fprintf(stderr, "  %d item-steps compared, max |score - ref| = %.3g\n", compared, max_abs);
    ASSERT_EQ(compared, 2 * (T - 1));
    for (int b = 0; b < 2; b++) {
        ASSERT_TRUE(dia_seq_done(sq[b]));
        ASSERT_EQ(dia_seq_len(sq[b]), T);
        ASSERT_TRUE(memcmp(dia_seq_frames(sq[b]), seq + (size_t)b * T * 9, (size_t)T * 36) == 0);
        dia_seq_release(m, sq[b]);
    }
    free(ids);
    free(mask);
    free(seq);
    dia_model_free(m);
}

/* Runs `text` with params p, optionally alongside a second sequence that joins after `join`
 * steps; returns the frames of the first sequence (malloc'd) and its length. */
static int32_t *sample_run(dia_model *m, const dia_gen_params *p, int with_other, int join,
                           int *len) {
    eng_error err = {0};
    int32_t a[] = {1, 32, 72, 105, 46}, b[] = {1, 32, 79, 107, 97, 121, 46, 2, 32, 89, 111};
    dia_seq *s = NULL, *o = NULL;
    if (dia_seq_start(m, a, 5, p, &s, &err)) return NULL;
    for (int step = 0; !dia_seq_done(s); step++) {
        if (with_other && step == join && dia_seq_start(m, b, 11, p, &o, &err)) return NULL;
        dia_seq *run[2] = {s, o};
        int n = o && !dia_seq_done(o) ? 2 : 1;
        if (dia_step(m, run, n, &err)) {
            fprintf(stderr, "  %s\n", err.msg);
            return NULL;
        }
    }
    *len = dia_seq_len(s);
    int32_t *out = malloc((size_t)*len * 36);
    memcpy(out, dia_seq_frames(s), (size_t)*len * 36);
    dia_seq_release(m, s);
    dia_seq_release(m, o);
    return out;
}

/* The seeded sampler: same seed, same codes, whether the sequence runs alone or shares its
 * steps with another that joins mid-way (continuous batching); another seed differs. */
TEST(sampling_seeded_and_batch_independent) {
    dia_model *m = load(fixture("dia_tiny"), 2, 64);
    ASSERT_TRUE(m != NULL);
    dia_gen_params p;
    dia_gen_params_default(&p);
    p.max_new_tokens = 40;
    p.seed = 42;
    int la = 0, lb = 0, lc = 0;
    int32_t *alone = sample_run(m, &p, 0, 0, &la);
    int32_t *shared = sample_run(m, &p, 1, 7, &lb);
    p.seed = 43;
    int32_t *other = sample_run(m, &p, 0, 0, &lc);
    ASSERT_TRUE(alone && shared && other);
    ASSERT_EQ(la, lb);
    ASSERT_TRUE(memcmp(alone, shared, (size_t)la * 36) == 0);
    ASSERT_TRUE(la != lc || memcmp(alone, other, (size_t)la * 36) != 0);
    /* sampled codes are real codes, delayed channels BOS until their delay passed */
    for (int t = 1; t < la; t++)
        for (int c = 0; c < 9; c++) {
            int32_t y = alone[t * 9 + c];
            static const int d[9] = {0, 8, 9, 10, 11, 12, 13, 14, 15};
            if (t <= d[c])
                ASSERT_EQ(y, 1026);
            else
                ASSERT_TRUE(y >= 0 && y <= 1025);
        }
    free(alone);
    free(shared);
    free(other);
    dia_model_free(m);
}

static int progress_cancel(void *user, int steps, int max_steps) {
    (void)max_steps;
    return steps >= *(int *)user;
}

TEST(generate_convenience_and_cancel) {
    dia_model *m = load(fixture("dia_tiny"), 1, 41);
    ASSERT_TRUE(m != NULL);
    dia_gen_params p;
    greedy_params(&p, 40);
    dia_result r;
    eng_error err = {0};
    const char *text = "[S1] Hello there. [S2] Hi!";
    ASSERT_OK(dia_generate(m, text, strlen(text), &p, &r, NULL, NULL, NULL, &err));
    ASSERT_EQ(r.channels, 9);
    ASSERT_EQ(r.steps, 40);
    ASSERT_EQ(r.n_frames, 24); /* forced EOS at 25 = 41 - 16 */
    int32_t *seq = ref_i32("gen_sequences", NULL, NULL);
    for (int t = 0; t < r.n_frames; t++)
        ASSERT_EQ(r.codes[0 * r.n_frames + t], seq[(1 + t) * 9 + 0]);
    free(seq);
    dia_result_free(&r);
    int stop_after = 3;
    ASSERT_EQ(dia_generate(m, text, strlen(text), &p, &r, progress_cancel, &stop_after, NULL, &err),
              ENG_ECANCELLED);
    volatile int cancel = 1;
    ASSERT_EQ(dia_generate(m, text, strlen(text), &p, &r, NULL, NULL, &cancel, &err),
              ENG_ECANCELLED);
    ASSERT_EQ(dia_model_free_slots(m), 1);
    ASSERT_EQ(dia_generate(m, "\xff", 1, &p, &r, NULL, NULL, NULL, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "UTF-8");
    dia_model_free(m);
}

/* Random models (voxq-bench --random-full uses them): every weight format loads and steps; the
 * bf16 model is the f32 one rounded, so their logits agree to bf16 precision; without CFG no
 * unconditional row runs. */
TEST(random_model_formats) {
    dia_config cfg;
    eng_error err = {0};
    ASSERT_OK(dia_config_load(&cfg, fixture("dia_tiny"), &err));
    static const eng_wfmt fmts[] = {ENG_W_F32, ENG_W_BF16, ENG_W_I8, ENG_W_I4};
    static float first[2][9252];
    dia_load_opts o = {.max_batch = 1, .max_frames = 8, .max_text = 16};
    for (int f = 0; f < 4; f++) {
        dia_model *m = NULL;
        int rc = dia_model_random(&m, backend(), &cfg, fmts[f], 7, &o, &err);
        if (rc) fprintf(stderr, "  %s\n", err.msg);
        ASSERT_OK(rc);
        dia_gen_params p;
        greedy_params(&p, 5);
        if (f == 3) p.cfg_scale = 1.0f;
        int32_t text[] = {1, 32, 72, 105};
        dia_seq *s = NULL;
        ASSERT_OK(dia_seq_start(m, text, 4, &p, &s, &err));
        while (!dia_seq_done(s)) {
            ASSERT_OK(dia_step(m, &s, 1, &err));
            if (f < 2 && dia_seq_len(s) == 2)
                memcpy(first[f], dia_seq_logits(s, 0), sizeof first[f]);
        }
        ASSERT_EQ(dia_seq_len(s), 6);
        ASSERT_TRUE((dia_seq_logits(s, 1) == NULL) == (f == 3));
        for (int i = 0; i < 9252; i++)
            ASSERT_TRUE(isfinite(dia_seq_logits(s, 0)[i]));
        dia_seq_release(m, s);
        dia_model_free(m);
    }
    double max_abs = 0, scale = 0;
    for (int i = 0; i < 9252; i++) {
        max_abs = fmax(max_abs, fabs(first[0][i] - first[1][i]));
        scale = fmax(scale, fabs(first[0][i]));
    }
    fprintf(stderr, "  random f32 vs bf16 first-step logits: max |diff| %.3g of max |logit| %.3g\n",
            max_abs, scale);
    ASSERT_TRUE(max_abs > 0 && max_abs < 0.05 * scale);
}

/* ---- bad checkpoints ---- */

static char *tmpdir(void) {
    char *d = malloc(256);
    snprintf(d, 256, "/tmp/voxq-dia-test-XXXXXX");
    return mkdtemp(d) ? d : NULL;
}

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int rc = a && b ? 0 : -1;
    char buf[65536];
    size_t n;
    while (!rc && (n = fread(buf, 1, sizeof buf, a)) > 0)
        if (fwrite(buf, 1, n, b) != n) rc = -1;
    if (a) fclose(a);
    if (b && fclose(b)) rc = -1;
    return rc;
}

static void rm_dir(const char *d) {
    char p[512];
    static const char *names[] = {"config.json", "model.safetensors", "generation_config.json"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", d, names[i]);
        unlink(p);
    }
    rmdir(d);
}

/* A copy of dia_tiny whose safetensors leaves out tensor `skip` (NULL: keep all). */
static int write_copy(const char *dir, const char *skip) {
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (copy_file(fixture("dia_tiny/config.json"), p)) return -1;
    eng_error err = {0};
    st_file *f = NULL;
    if (st_open(&f, fixture("dia_tiny/model.safetensors"), &err)) return -1;
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    st_writer *w = NULL;
    int rc = st_writer_open(&w, p, &err);
    for (size_t i = 0; !rc && i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        if (skip && !strcmp(t->name, skip)) continue;
        rc = st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape);
    }
    if (!rc) rc = st_writer_begin_data(w);
    for (size_t i = 0; !rc && i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        if (skip && !strcmp(t->name, skip)) continue;
        rc = st_writer_write(w, t->data, t->nbytes);
    }
    if (!rc)
        rc = st_writer_finish(w);
    else
        st_writer_abort(w);
    st_close(f);
    return rc;
}

TEST(checkpoint_missing_tensor) {
    char *d = tmpdir();
    ASSERT_TRUE(d != NULL);
    const char *name = "model.decoder.layers.1.cross_attention.v_proj.weight";
    ASSERT_OK(write_copy(d, name));
    dia_model *m = NULL;
    eng_error err = {0};
    int rc = dia_model_load(&m, backend(), d, NULL, &err);
    rm_dir(d);
    free(d);
    fprintf(stderr, "  error: %s\n", err.msg);
    ASSERT_EQ(rc, ENG_ENOTFOUND);
    ASSERT_TRUE(m == NULL);
    ASSERT_CONTAINS(err.msg, name);
}

TEST(checkpoint_shape_disagrees_with_config) {
    char *d = tmpdir();
    ASSERT_TRUE(d != NULL);
    ASSERT_OK(write_copy(d, NULL));
    /* config says intermediate_size 96 for the encoder: gate_up is [192,64], file has [256,64] */
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", d);
    FILE *f = fopen(p, "rb");
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *root = cJSON_Parse(buf);
    cJSON *enc = cJSON_GetObjectItemCaseSensitive(root, "encoder_config");
    cJSON_ReplaceItemInObjectCaseSensitive(enc, "intermediate_size", cJSON_CreateNumber(96));
    char *out = cJSON_Print(root);
    f = fopen(p, "wb");
    fputs(out, f);
    fclose(f);
    free(out);
    cJSON_Delete(root);
    dia_model *m = NULL;
    eng_error err = {0};
    int rc = dia_model_load(&m, backend(), d, NULL, &err);
    rm_dir(d);
    free(d);
    fprintf(stderr, "  error: %s\n", err.msg);
    ASSERT_EQ(rc, ENG_EMISMATCH);
    ASSERT_CONTAINS(err.msg, "model.encoder.layers.0.mlp.gate_up_proj.weight");
    ASSERT_CONTAINS(err.msg, "[192,64]");
    ASSERT_CONTAINS(err.msg, "[256,64]");
}

/* ---- quantized variants ---- */

/* Teacher-forces `m` along the greedy reference frames of prompt 0 and compares its raw
 * conditional logits with those of the original model `ref` at each step. */
static void quant_agreement(dia_model *ref, dia_model *m, const char *label, double *agree,
                            double *max_err, double *ref_scale) {
    int64_t shape[4], sshape[4];
    int32_t *ids = ref_i32("input_ids", shape, NULL);
    int32_t *mask = ref_i32("attention_mask", NULL, NULL);
    int32_t *seq = ref_i32("gen_sequences", sshape, NULL);
    int T = (int)sshape[1];
    dia_gen_params p;
    greedy_params(&p, 40);
    int32_t one[64];
    int n = prompt_ids(ids, mask, (int)shape[1], 0, one);
    dia_seq *a = NULL, *b = NULL;
    eng_error err = {0};
    int hits = 0, total = 0;
    *max_err = 0;
    *ref_scale = 0;
    if (dia_seq_start(ref, one, n, &p, &a, &err) || dia_seq_start(m, one, n, &p, &b, &err)) {
        fprintf(stderr, "  %s: %s\n", label, err.msg);
        goto out;
    }
    for (int t = 0; t + 1 < T; t++) {
        dia_seq_force(a, seq + (size_t)(t + 1) * 9);
        dia_seq_force(b, seq + (size_t)(t + 1) * 9);
        if (dia_step(ref, &a, 1, &err) || dia_step(m, &b, 1, &err)) {
            fprintf(stderr, "  %s: %s\n", label, err.msg);
            goto out;
        }
        const float *la = dia_seq_logits(a, 0), *lb = dia_seq_logits(b, 0);
        for (int c = 0; c < 9; c++) {
            int ia = 0, ib = 0;
            for (int v = 0; v < 1028; v++) {
                if (la[c * 1028 + v] > la[c * 1028 + ia]) ia = v;
                if (lb[c * 1028 + v] > lb[c * 1028 + ib]) ib = v;
                double d = fabs((double)la[c * 1028 + v] - lb[c * 1028 + v]);
                if (d > *max_err) *max_err = d;
                if (fabs(la[c * 1028 + v]) > *ref_scale) *ref_scale = fabs(la[c * 1028 + v]);
            }
            hits += ia == ib;
            total++;
        }
        if (dia_seq_done(a) || dia_seq_done(b)) break;
    }
out:
    *agree = total ? (double)hits / total : 0;
    fprintf(stderr,
            "  %s: teacher-forced top-1 agreement %.4f (%d/%d channel-steps), max |logit "
            "error| %.4g (max |logit| %.4g)\n",
            label, *agree, hits, total, *max_err, *ref_scale);
    dia_seq_release(ref, a);
    dia_seq_release(m, b);
    free(ids);
    free(mask);
    free(seq);
}

static void quant_variant(eng_quant_method method, double min_agree) {
    char *d = tmpdir();
    ASSERT_TRUE(d != NULL);
    char p[512];
    eng_error err = {0};
    st_model *src = NULL;
    ASSERT_OK(st_model_open(&src, fixture("dia_tiny"), &err));
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    eng_quant_options o = {
        .method = method, .policy = {.kind = ENG_QUANT_POLICY_DIA}, .threads = 2};
    eng_quant_report rep;
    int rc = eng_quant_checkpoint(src, p, &o, &rep, &err);
    st_model_close(src);
    if (rc) fprintf(stderr, "  quantize: %s\n", err.msg);
    ASSERT_OK(rc);
    fprintf(stderr, "  %s: %zu of %zu tensors quantized, overall weight rel err %.4g\n",
            eng_quant_method_name(method), rep.nquantized, rep.ntensors, rep.rel_err);
    eng_quant_report_free(&rep);
    snprintf(p, sizeof p, "%s/config.json", d);
    ASSERT_OK(copy_file(fixture("dia_tiny/config.json"), p));
    dia_model *ref = load(fixture("dia_tiny"), 1, 41);
    dia_model *m = load(d, 1, 41);
    rm_dir(d);
    free(d);
    ASSERT_TRUE(ref && m);
    dia_mem a, b;
    dia_model_mem(ref, &a);
    dia_model_mem(m, &b);
    fprintf(stderr, "  weights: original %zu bytes, %s %zu bytes\n", a.weights,
            eng_quant_method_name(method), b.weights);
    ASSERT_TRUE(b.weights < a.weights);
    double agree, max_err, scale;
    quant_agreement(ref, m, eng_quant_method_name(method), &agree, &max_err, &scale);
    dia_model_free(ref);
    dia_model_free(m);
    /* loose sanity bounds only: the figures are reported, not targets */
    ASSERT_TRUE(agree >= min_agree);
    ASSERT_TRUE(max_err < scale);
}

TEST(quantized_int8) {
    quant_variant(ENG_QUANT_INT8, 0.8);
}
TEST(quantized_int4) {
    quant_variant(ENG_QUANT_INT4, 0.3);
}

int main(int argc, char **argv) {
    int rc = test_main(argc, argv);
    if (ref_file()) st_close(ref_file());
    eng_backend_free(backend());
    return rc;
}
