/* test_cuda_sample.c - the CUDA sample op against the CPU one, and Dia's steps on CUDA picking
 * what the CPU sampler picks from the same logits.
 *
 * The two samplers run the same f32 arithmetic in the same order and sum their softmaxes in
 * double in the same order, so on the same logits the picks, the EOS flags and every processed
 * score must be equal (scores bit for bit, -inf where the CPU has -inf). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/dia.h"
#include "engine/ops.h"
#include "test.h"

static eng_backend *cpu, *gpu;

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}
static float frand(void) { /* uniform in [-1, 1) */
    return (float)(rnd() >> 8) * (1.0f / 8388608.0f) - 1.0f;
}

/* Runs the op on both backends over the same logits and params; compares everything. */
static int run_both(const float *logits, int rows, int C, int V, const eng_sample_seq *ps, int n,
                    int eos) {
    size_t lbytes = (size_t)rows * C * V * 4, sbytes = (size_t)n * C * V * 4;
    size_t pkbytes = (size_t)n * (C + 1) * 4, pbytes = (size_t)n * sizeof *ps;
    void *gl = NULL, *gs = NULL, *gk = NULL, *gp = NULL;
    if (eng_alloc(gpu, lbytes, &gl) || eng_alloc(gpu, sbytes, &gs) || eng_alloc(gpu, pkbytes, &gk) ||
        eng_alloc(gpu, pbytes, &gp))
        return -1;
    float *cs = malloc(sbytes), *hs = malloc(sbytes);
    int32_t *ck = malloc(pkbytes), *hk = malloc(pkbytes);
    memset(cs, 0xff, sbytes); /* NaN: an entry the op skips stays NaN on both sides */
    memset(ck, 0xff, pkbytes);
    eng_upload(gpu, gl, logits, lbytes);
    eng_upload(gpu, gs, cs, sbytes);
    eng_upload(gpu, gk, ck, pkbytes);
    eng_upload(gpu, gp, ps, pbytes);
    eng_tensor tl = eng_view2((void *)logits, ENG_DT_F32, rows, (int64_t)C * V);
    eng_tensor ts = eng_view3(cs, ENG_DT_F32, n, C, V), tk = eng_view2(ck, ENG_DT_I32, n, C + 1);
    eng_tensor tp = eng_view1((void *)ps, ENG_DT_U8, (int64_t)pbytes);
    int bad = 0;
    if (eng_sample(cpu, &tk, &ts, &tl, &tp, eos)) {
        fprintf(stderr, "  cpu sample: %s\n", cpu->errstr);
        bad = 1;
    }
    tl.data = gl, ts.data = gs, tk.data = gk, tp.data = gp;
    if (!bad && (eng_sample(gpu, &tk, &ts, &tl, &tp, eos) || eng_sync(gpu))) {
        fprintf(stderr, "  cuda sample: %s\n", gpu->errstr);
        bad = 1;
    }
    eng_download(gpu, hs, gs, sbytes);
    eng_download(gpu, hk, gk, pkbytes);
    for (int i = 0; i < n && !bad; i++) {
        if (ps[i].row < 0) continue;
        for (int c = 0; c <= C && !bad; c++) {
            int32_t a = ck[i * (C + 1) + c], b = hk[i * (C + 1) + c];
            if (a != b) {
                fprintf(stderr, "  entry %d %s %d: cpu picked %d, cuda %d\n", i,
                        c < C ? "channel" : "eos flag", c, a, b);
                bad = 1;
            }
        }
        for (size_t v = 0; v < (size_t)C * V && !bad; v++) {
            float a = cs[(size_t)i * C * V + v], b = hs[(size_t)i * C * V + v];
            if (memcmp(&a, &b, 4) != 0) {
                fprintf(stderr, "  entry %d channel %d id %d: cpu score %.9g, cuda %.9g\n", i,
                        (int)(v / V), (int)(v % V), a, b);
                bad = 1;
            }
        }
    }
    eng_free(gpu, gl), eng_free(gpu, gs), eng_free(gpu, gk), eng_free(gpu, gp);
    free(cs), free(hs), free(ck), free(hk);
    return bad;
}

static eng_sample_seq entry(int row, int row_u, float cfg, int cfg_k, float temp, int k, float p,
                            int greedy, uint64_t seed, int step) {
    eng_sample_seq e;
    memset(&e, 0, sizeof e);
    e.seed = seed, e.step = step, e.row = row, e.row_uncond = row_u;
    e.cfg_scale = cfg, e.cfg_top_k = cfg_k, e.temperature = temp;
    e.top_k = k, e.top_p = p, e.greedy = greedy;
    return e;
}

TEST(op_matches_cpu) {
    const int C = 9, V = 1028, eos = 1024, rows = 16;
    float *lg = malloc((size_t)rows * C * V * 4);
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < (size_t)rows * C * V; i++) {
            float x = frand() * 6.0f;
            /* rounds 2-3: values on a coarse grid, so guidance and top-k boundaries tie */
            lg[i] = round >= 2 ? roundf(x * 4.0f) / 4.0f : x;
        }
        /* row 2's channel 0 and 3 favour EOS, row 6 everything above EOS (masked ids) */
        for (int c = 0; c < C; c++) {
            if (c == 0 || c == 3) lg[((size_t)2 * C + c) * V + eos] = 40.0f;
            for (int v = eos + 1; v < V; v++) lg[((size_t)6 * C + c) * V + v] = 50.0f;
        }
        eng_sample_seq ps[10] = {
            entry(0, 1, 3.0f, 45, 1.2f, 45, 0.95f, 0, 7, round),   /* Nari defaults */
            entry(2, 3, 3.0f, 45, 1.2f, 45, 0.95f, 0, 8, round),   /* EOS argmax */
            entry(4, -1, 1.0f, 45, 1.0f, 45, 0.95f, 0, 9, round),  /* no guidance */
            entry(6, 7, 2.0f, 0, 1.5f, 0, 0.8f, 0, 10, round),     /* guidance, no filter */
            entry(8, 9, 3.0f, 45, 1.2f, 45, 0.95f, 1, 11, round),  /* greedy */
            entry(-1, -1, 3.0f, 45, 1.2f, 45, 0.95f, 0, 12, round), /* unused */
            entry(10, 11, 3.0f, 1, 1.2f, 1, 0.5f, 0, 13, round),  /* k = 1 */
            entry(12, -1, 1.0f, 0, 0.7f, 0, 1.0f, 0, 14, round),  /* nothing but the draw */
            entry(13, 14, 4.0f, 100, 2.0f, 10, 0.99f, 0, 15, round),
            entry(15, 1, 3.0f, 1027, 1.0f, 1028, 0.3f, 0, 16, round), /* k >= vocab: off */
        };
        ASSERT_EQ(run_both(lg, rows, C, V, ps, 10, eos), 0);
    }
    /* a small vocabulary without EOS rules, every entry greedy or not */
    const int C2 = 2, V2 = 37;
    for (size_t i = 0; i < (size_t)4 * C2 * V2; i++) lg[i] = roundf(frand() * 8.0f) / 2.0f;
    eng_sample_seq ps2[3] = {entry(0, 1, 3.0f, 5, 1.2f, 4, 0.9f, 0, 1, 3),
                             entry(2, 3, 3.0f, 5, 1.2f, 4, 0.9f, 1, 1, 3),
                             entry(3, -1, 1.0f, 0, 1.0f, 3, 1.0f, 0, 99, 0)};
    ASSERT_EQ(run_both(lg, 4, C2, V2, ps2, 3, -1), 0);
    free(lg);
}

TEST(op_rejects_bad_shapes) {
    void *d = NULL;
    ASSERT_OK(eng_alloc(gpu, 1 << 16, &d));
    eng_tensor lg = eng_view2(d, ENG_DT_F32, 2, 9 * 3000);
    eng_tensor sc = eng_view3(d, ENG_DT_F32, 1, 9, 3000), pk = eng_view2(d, ENG_DT_I32, 1, 10);
    eng_tensor pr = eng_view1(d, ENG_DT_U8, sizeof(eng_sample_seq));
    ASSERT_EQ(eng_sample(gpu, &pk, &sc, &lg, &pr, 1024), ENG_EINVAL); /* vocab over 2048 */
    ASSERT_TRUE(strstr(gpu->errstr, "sample") != NULL);
    lg = eng_view2(d, ENG_DT_F32, 2, 9 * 100);
    sc = eng_view3(d, ENG_DT_F32, 1, 9, 100);
    pr = eng_view1(d, ENG_DT_U8, 7);
    ASSERT_EQ(eng_sample(gpu, &pk, &sc, &lg, &pr, 1024), ENG_EINVAL); /* params not whole */
    eng_free(gpu, d);
}

/* A small random Dia on CUDA: every step's picks (before the EOS countdown) equal the CPU
 * sampler's picks from the logits the GPU produced, for several sequences stepped together. */
TEST(dia_steps_pick_like_cpu_sampler) {
    dia_config c;
    dia_config_default(&c);
    c.enc_hidden = c.cross_hidden = 128, c.enc_layers = 2, c.enc_heads = c.enc_kv_heads = 2;
    c.enc_head_dim = 64, c.enc_ffn = 256;
    c.dec_hidden = 256, c.dec_layers = 2, c.dec_heads = 4, c.dec_kv_heads = 2;
    c.dec_head_dim = 64, c.dec_ffn = 512, c.cross_heads = c.cross_kv_heads = 4;
    c.cross_head_dim = 64;
    dia_load_opts lo = {.max_batch = 3, .max_frames = 40, .max_text = 32};
    dia_model *m = NULL;
    eng_error err = {0};
    ASSERT_OK(dia_model_random(&m, gpu, &c, ENG_W_BF16, 5, &lo, &err));
    int32_t text[20];
    int n = 0;
    ASSERT_OK(dia_tokenize("[S1] Hello there.", 17, text, 20, &n, &err));
    dia_seq *seqs[3];
    dia_gen_params p[3];
    for (int i = 0; i < 3; i++) {
        dia_gen_params_default(&p[i]);
        p[i].seed = 100 + (uint64_t)i;
        p[i].max_new_tokens = 30;
    }
    p[1].greedy = 1;
    p[2].cfg_scale = 1.0f; /* no unconditional row */
    p[2].top_p = 0.8f;
    for (int i = 0; i < 3; i++) ASSERT_OK(dia_seq_start(m, text, n, &p[i], &seqs[i], &err));
    int V = c.dec_vocab, C = c.channels, compared = 0;
    float *lg = malloc((size_t)2 * C * V * 4), *sc = malloc((size_t)C * V * 4);
    int32_t pk[DIA_MAX_CHANNELS + 1];
    int counting_down[3] = {0, 0, 0};
    for (int step = 0; step < 12; step++) {
        ASSERT_OK(dia_step(m, seqs, 3, &err));
        for (int i = 0; i < 3; i++) {
            if (counting_down[i]) continue; /* from its first EOS on, the countdown decides */
            int len = dia_seq_len(seqs[i]);
            const int32_t *frame = dia_seq_frames(seqs[i]) + (size_t)(len - 1) * C;
            const float *lc = dia_seq_logits(seqs[i], 0), *lu = dia_seq_logits(seqs[i], 1);
            ASSERT_TRUE(lc != NULL && (lu != NULL) == (p[i].cfg_scale > 1.0f));
            memcpy(lg, lc, (size_t)C * V * 4);
            if (lu) memcpy(lg + (size_t)C * V, lu, (size_t)C * V * 4);
            eng_sample_seq e = entry(0, lu ? 1 : -1, p[i].cfg_scale, p[i].cfg_top_k,
                                     p[i].temperature < 1.0f ? 1.0f : p[i].temperature,
                                     p[i].top_k, p[i].top_p, p[i].greedy, p[i].seed, len - 2);
            eng_tensor tl = eng_view2(lg, ENG_DT_F32, lu ? 2 : 1, (int64_t)C * V);
            eng_tensor ts = eng_view3(sc, ENG_DT_F32, 1, C, V), tk = eng_view2(pk, ENG_DT_I32, 1, C + 1);
            eng_tensor tp = eng_view1(&e, ENG_DT_U8, sizeof e);
            ASSERT_OK(eng_sample(cpu, &tk, &ts, &tl, &tp, c.eos_id));
            if (pk[C]) {
                counting_down[i] = 1;
                continue;
            }
            for (int ch = 0; ch < C; ch++) {
                if (len - 1 <= c.delay[ch]) continue; /* BOS by the delay pattern */
                if (frame[ch] != pk[ch])
                    fprintf(stderr, "  seq %d step %d channel %d: frame %d, cpu sampler %d\n", i,
                            step, ch, frame[ch], pk[ch]);
                ASSERT_EQ(frame[ch], pk[ch]);
                compared++;
            }
        }
    }
    fprintf(stderr, "  %d picks compared\n", compared);
    ASSERT_TRUE(compared > 40);
    for (int i = 0; i < 3; i++) dia_seq_release(m, seqs[i]);
    free(lg);
    free(sc);
    dia_model_free(m);
}

int main(int argc, char **argv) {
    eng_error err = {0};
    if (eng_backend_cpu_new(&cpu, 0, &err) != 0) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }
    if (eng_backend_cuda_new(&gpu, 0, &err) != 0) {
        fprintf(stderr, "cuda backend: %s\n", err.msg);
        return 1;
    }
    int rc = test_main(argc, argv);
    eng_backend_free(gpu);
    eng_backend_free(cpu);
    return rc;
}
