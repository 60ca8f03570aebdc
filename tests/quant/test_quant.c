/* test_quant.c - the quantizer: row math (int8, int4), the policy, and the driver on real
 * generated checkpoints read back through the safetensors reader and the engine's loader. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine/quant.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "quant_fixture.h"
#include "test.h"

/* ---- row math ----
 * Error bound of every quantized weight: half a step, plus 1e-4 of a step for float rounding
 * (w * (127 / max) differs from the exact w / scale by a few ulps, which can move a value within
 * ~1e-5 steps of a tie to the other side). */

static void random_row(float *w, int64_t n, uint64_t seed, double sd) {
    qf_rng r = {seed, 0, 0};
    for (int64_t j = 0; j < n; j++) w[j] = (float)(qf_normal(&r) * sd);
}

TEST(i8_known_values) {
    /* scale = 127 / 127 = 1: q = round(w), ties to even. */
    float w[8] = {127.0f, 63.5f, -63.5f, 62.5f, 0.4f, -0.6f, 1.5f, -127.0f};
    int8_t q[8];
    float scale = eng_quant_row_i8(w, 8, q);
    ASSERT_NEAR(scale, 1.0, 0);
    const int want[8] = {127, 64, -64, 62, 0, -1, 2, -127};
    for (int j = 0; j < 8; j++) ASSERT_EQ(q[j], want[j]);
    float back[8];
    eng_dequant_row_i8(q, 8, scale, back);
    for (int j = 0; j < 8; j++) ASSERT_NEAR(back[j], want[j], 0);
}

TEST(i8_error_bound_random_rows) {
    const int64_t sizes[] = {1, 2, 7, 128, 1000, 4096};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t n = sizes[s];
        float *w = malloc(n * sizeof *w), *back = malloc(n * sizeof *back);
        int8_t *q = malloc(n);
        random_row(w, n, 100 + s, 0.05);
        float scale = eng_quant_row_i8(w, n, q);
        float amax = 0;
        int qmax = 0;
        for (int64_t j = 0; j < n; j++) {
            amax = fmaxf(amax, fabsf(w[j]));
            qmax = abs(q[j]) > qmax ? abs(q[j]) : qmax;
        }
        ASSERT_NEAR(scale, amax / 127.0f, 1e-9);
        ASSERT_EQ(qmax, 127); /* the largest weight maps to the end of the range */
        eng_dequant_row_i8(q, n, scale, back);
        for (int64_t j = 0; j < n; j++) {
            ASSERT_TRUE(q[j] >= -127 && q[j] <= 127);
            if (!(fabsf(back[j] - w[j]) <= scale * (0.5f + 1e-4f)))
                TEST_FAIL_("n=%lld j=%lld: |%g - %g| > scale/2 = %g", (long long)n,
                           (long long)j, back[j], w[j], scale / 2);
        }
        free(w);
        free(back);
        free(q);
    }
}

TEST(i8_zero_and_tiny_rows) {
    float w[4] = {0, 0, 0, 0}, back[4];
    int8_t q[4] = {1, 1, 1, 1};
    ASSERT_NEAR(eng_quant_row_i8(w, 4, q), 0, 0);
    for (int j = 0; j < 4; j++) ASSERT_EQ(q[j], 0);
    /* So small that 127 / max overflows: q = 0, dequantized 0, never NaN. */
    float tiny[2] = {1e-44f, -1e-45f};
    float s = eng_quant_row_i8(tiny, 2, q);
    eng_dequant_row_i8(q, 2, s, back);
    for (int j = 0; j < 2; j++) ASSERT_TRUE(isfinite(back[j]) && fabsf(back[j]) < 1e-40f);
}

TEST(i4_known_values_and_packing) {
    /* One group, max 7 -> scale 1; columns 0..4 (odd: the spare high nibble must be 8). */
    float w[5] = {7.0f, -7.0f, 2.5f, -0.4f, 3.5f};
    uint8_t packed[3];
    float scale;
    eng_quant_row_i4(w, 5, 128, packed, &scale);
    ASSERT_NEAR(scale, 1.0, 0);
    /* q = 7, -7, 2 (tie to even), 0, 4 (tie to even) -> nibbles 15, 1, 10, 8, 12 */
    ASSERT_EQ(packed[0], 15 | (1 << 4));
    ASSERT_EQ(packed[1], 10 | (8 << 4));
    ASSERT_EQ(packed[2], 12 | (8 << 4));
    float back[5];
    eng_dequant_row_i4(packed, 5, 128, &scale, back);
    const float want[5] = {7, -7, 2, 0, 4};
    for (int j = 0; j < 5; j++) ASSERT_NEAR(back[j], want[j], 0);
}

TEST(i4_groups_error_bound) {
    const int64_t sizes[] = {1, 3, 128, 129, 300, 1024, 2047};
    const int groups[] = {128, 32, 2};
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int64_t n = sizes[s], ng = (n + groups[g] - 1) / groups[g];
            float *w = malloc(n * sizeof *w), *back = malloc(n * sizeof *back);
            float *scales = malloc(ng * sizeof *scales);
            uint8_t *packed = malloc((n + 1) / 2);
            random_row(w, n, 7 + s, 0.1);
            eng_quant_row_i4(w, n, groups[g], packed, scales);
            for (int64_t k = 0; k < ng; k++) {
                float amax = 0;
                for (int64_t j = k * groups[g]; j < n && j < (k + 1) * groups[g]; j++)
                    amax = fmaxf(amax, fabsf(w[j]));
                ASSERT_NEAR(scales[k], amax / 7.0f, 1e-9);
            }
            for (int64_t b = 0; b < (n + 1) / 2; b++) {
                int lo = packed[b] & 15, hi = packed[b] >> 4;
                ASSERT_TRUE(lo >= 1 && lo <= 15 && hi >= 1 && hi <= 15);
            }
            if (n & 1) ASSERT_EQ(packed[n / 2] >> 4, 8);
            eng_dequant_row_i4(packed, n, groups[g], scales, back);
            for (int64_t j = 0; j < n; j++) {
                float sc = scales[j / groups[g]];
                if (!(fabsf(back[j] - w[j]) <= sc * (0.5f + 1e-4f)))
                    TEST_FAIL_("group %d n=%lld j=%lld: |%g - %g| > %g", groups[g],
                               (long long)n, (long long)j, back[j], w[j], sc / 2);
            }
            free(w);
            free(back);
            free(scales);
            free(packed);
        }
    }
}

/* ---- policy ---- */

static int decide(eng_quant_policy_kind kind, const char *name, eng_dtype dt, int ndim,
                  const char *const *keep, size_t nkeep, char *why) {
    st_tensor t = {.name = name, .dtype = dt, .ndim = ndim, .shape = {8, 8}};
    eng_quant_policy p = {kind, keep, nkeep};
    return eng_quant_policy_decide(&p, &t, why, 96);
}

TEST(policy_dia) {
    char why[96];
    const eng_quant_policy_kind D = ENG_QUANT_POLICY_DIA;
    ASSERT_EQ(decide(D, "model.encoder.layers.3.self_attention.q_proj.weight", ENG_DT_F32, 2, 0,
                     0, why), 1);
    ASSERT_EQ(decide(D, "model.decoder.layers.17.cross_attention.o_proj.weight", ENG_DT_BF16, 2,
                     0, 0, why), 1);
    ASSERT_EQ(decide(D, "model.decoder.layers.0.mlp.gate_up_proj.weight", ENG_DT_F16, 2, 0, 0,
                     why), 1);
    ASSERT_EQ(decide(D, "model.encoder.layers.11.mlp.down_proj.weight", ENG_DT_F32, 2, 0, 0, why),
              1);
    ASSERT_EQ(decide(D, "logits_dense.weight", ENG_DT_F32, 2, 0, 0, why), 0);
    ASSERT_STREQ(why, "output head");
    ASSERT_EQ(decide(D, "model.decoder.embeddings.embed.weight", ENG_DT_F32, 2, 0, 0, why), 0);
    ASSERT_STREQ(why, "embedding");
    ASSERT_EQ(decide(D, "model.encoder.embedding.weight", ENG_DT_F32, 2, 0, 0, why), 0);
    ASSERT_EQ(decide(D, "model.decoder.layers.2.pre_sa_norm.weight", ENG_DT_F32, 1, 0, 0, why), 0);
    ASSERT_STREQ(why, "1-D tensor");
    ASSERT_EQ(decide(D, "model.decoder.something_new.weight", ENG_DT_F32, 2, 0, 0, why), 0);
    ASSERT_STREQ(why, "not a Dia linear layer");
    const char *keep[] = {"model.decoder.layers.*.cross_attention.*"};
    ASSERT_EQ(decide(D, "model.decoder.layers.5.cross_attention.k_proj.weight", ENG_DT_F32, 2,
                     keep, 1, why), 0);
    ASSERT_STREQ(why, "--keep 'model.decoder.layers.*.cross_attention.*'");
    ASSERT_EQ(decide(D, "model.decoder.layers.5.self_attention.k_proj.weight", ENG_DT_F32, 2,
                     keep, 1, why), 1);
}

TEST(policy_generic) {
    char why[96];
    const eng_quant_policy_kind G = ENG_QUANT_POLICY_GENERIC;
    ASSERT_EQ(decide(G, "model.layers.0.self_attn.q_proj.weight", ENG_DT_BF16, 2, 0, 0, why), 1);
    ASSERT_EQ(decide(G, "lm_head.weight", ENG_DT_BF16, 2, 0, 0, why), 1);
    ASSERT_EQ(decide(G, "model.embed_tokens.weight", ENG_DT_BF16, 2, 0, 0, why), 0);
    ASSERT_EQ(decide(G, "transformer.wte.weight", ENG_DT_F32, 2, 0, 0, why), 0);
    ASSERT_EQ(decide(G, "model.layers.0.input_layernorm.weight", ENG_DT_BF16, 2, 0, 0, why), 0);
    ASSERT_STREQ(why, "norm");
    ASSERT_EQ(decide(G, "model.layers.0.self_attn.q_proj.bias", ENG_DT_BF16, 2, 0, 0, why), 0);
    ASSERT_EQ(decide(G, "model.layers.0.self_attn.q_proj.weight", ENG_DT_I32, 2, 0, 0, why), 0);
    ASSERT_STREQ(why, "dtype I32 is not a float type");
    ASSERT_EQ(decide(G, "conv.weight", ENG_DT_F32, 3, 0, 0, why), 0);
    const char *keep[] = {"lm_head.*"};
    ASSERT_EQ(decide(G, "lm_head.weight", ENG_DT_BF16, 2, keep, 1, why), 0);
}

TEST(parse_names) {
    eng_quant_method m;
    ASSERT_OK(eng_quant_method_parse("int4", &m));
    ASSERT_EQ(m, ENG_QUANT_INT4);
    ASSERT_EQ(eng_quant_method_parse("int3", &m), ENG_EINVAL);
    eng_quant_policy_kind k;
    ASSERT_OK(eng_quant_policy_parse("dia", &k));
    ASSERT_EQ(k, ENG_QUANT_POLICY_DIA);
    ASSERT_EQ(eng_quant_policy_parse("Dia", &k), ENG_EINVAL);
}

/* ---- the driver ---- */

static const qf_dia_dims small_dims = {64, 96, 32, 2, 2, 300};

static float element(const st_tensor *t, int64_t i) {
    const unsigned char *p = (const unsigned char *)t->data + (size_t)i * eng_dtype_size(t->dtype);
    if (t->dtype == ENG_DT_F32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p, 2);
    return t->dtype == ENG_DT_BF16 ? eng_bf16_to_f32(h) : eng_f16_to_f32(h);
}

/* Checks an output file against its source independently of the driver's own bookkeeping:
 * every kept tensor byte-identical, every quantized one in the documented layout, within half a
 * scale step of the source, with the relative error the report claims. */
static int check_output(const char *src_dir, const char *out_path, eng_quant_method method,
                        const eng_quant_report *rep, double max_rel) {
    st_model *src = NULL, *out = NULL;
    eng_error err = {0};
    int bad = 0;
    if (st_model_open(&src, src_dir, &err) || st_model_open(&out, out_path, &err)) {
        fprintf(stderr, "  open: %s\n", err.msg);
        bad = 1;
        goto done;
    }
    const int group = 128;
    const char *want_method = eng_quant_method_name(method);
    const char *format = st_model_metadata(out, "voxq.format");
    const char *group_s = st_model_metadata(out, "voxq.group_size");
    if (!st_model_metadata(out, "voxq.method") ||
        strcmp(st_model_metadata(out, "voxq.method"), want_method) || !format ||
        strcmp(format, "1") ||
        (method == ENG_QUANT_INT4 && (!group_s || strcmp(group_s, "128"))) ||
        !st_model_metadata(out, "voxq.kept")) {
        fprintf(stderr, "  metadata wrong\n");
        bad = 1;
        goto done;
    }
    cJSON *kept = cJSON_Parse(st_model_metadata(out, "voxq.kept"));
    size_t nq = 0;
    for (size_t i = 0; i < st_model_count(src) && !bad; i++) {
        const st_tensor *s = st_model_at(src, i);
        const st_tensor *o = st_model_find(out, s->name);
        const eng_quant_tensor_report *tr = &rep->tensors[i];
        char scale_name[512];
        snprintf(scale_name, sizeof scale_name, "%s_scale", s->name);
        const st_tensor *sc = st_model_find(out, scale_name);
        int listed = 0;
        for (cJSON *k = kept ? kept->child : NULL; k; k = k->next)
            listed |= cJSON_IsString(k) && !strcmp(k->valuestring, s->name);
        if (!o || strcmp(tr->name, s->name) != 0) {
            fprintf(stderr, "  %s missing from the output or the report\n", s->name);
            bad = 1;
            break;
        }
        if (!tr->quantized) {
            if (o->dtype != s->dtype || o->nbytes != s->nbytes ||
                memcmp(o->data, s->data, s->nbytes) != 0 || sc || !listed) {
                fprintf(stderr, "  kept tensor %s not byte-identical (or has a scale)\n",
                        s->name);
                bad = 1;
            }
            continue;
        }
        nq++;
        int64_t rows = s->shape[0], in = s->shape[1];
        int64_t ng = method == ENG_QUANT_INT8 ? 1 : (in + group - 1) / group;
        int shape_ok = sc && sc->dtype == ENG_DT_F32 && !listed && o->ndim == 2 &&
                       o->shape[0] == rows;
        if (method == ENG_QUANT_INT8)
            shape_ok = shape_ok && o->dtype == ENG_DT_I8 && o->shape[1] == in && sc->ndim == 1 &&
                       sc->shape[0] == rows;
        else
            shape_ok = shape_ok && o->dtype == ENG_DT_U8 && o->shape[1] == (in + 1) / 2 &&
                       sc->ndim == 2 && sc->shape[0] == rows && sc->shape[1] == ng;
        if (!shape_ok) {
            fprintf(stderr, "  %s: wrong quantized layout\n", s->name);
            bad = 1;
            break;
        }
        double err_sq = 0, ref_sq = 0;
        for (int64_t r = 0; r < rows && !bad; r++) {
            for (int64_t j = 0; j < in; j++) {
                float scale, q;
                int64_t si = method == ENG_QUANT_INT8 ? r : r * ng + j / group;
                memcpy(&scale, (const char *)sc->data + 4 * si, 4);
                if (method == ENG_QUANT_INT8) {
                    q = (float)((const int8_t *)o->data)[r * in + j];
                } else {
                    uint8_t b = ((const uint8_t *)o->data)[r * ((in + 1) / 2) + j / 2];
                    q = (float)(((j & 1) ? b >> 4 : b & 15) - 8);
                }
                float w = element(s, r * in + j), deq = q * scale;
                if (!(fabsf(deq - w) <= scale * (0.5f + 1e-4f))) {
                    fprintf(stderr, "  %s[%lld,%lld]: %.9g vs %.9g (scale %.9g)\n", s->name,
                            (long long)r, (long long)j, deq, w, scale);
                    bad = 1;
                    break;
                }
                err_sq += ((double)deq - w) * ((double)deq - w);
                ref_sq += (double)w * w;
            }
        }
        double rel = sqrt(err_sq / ref_sq);
        if (!bad && (fabs(rel - tr->rel_err) > 1e-9 + 1e-6 * rel || rel > max_rel)) {
            fprintf(stderr, "  %s: rel error %g, report %g, bound %g\n", s->name, rel,
                    tr->rel_err, max_rel);
            bad = 1;
        }
    }
    if (!bad && nq != rep->nquantized) {
        fprintf(stderr, "  %zu quantized tensors, report says %zu\n", nq, rep->nquantized);
        bad = 1;
    }
    /* No tensor in the output that is neither a source tensor nor a scale. */
    if (!bad && st_model_count(out) != st_model_count(src) + nq) {
        fprintf(stderr, "  output has %zu tensors, expected %zu\n", st_model_count(out),
                st_model_count(src) + nq);
        bad = 1;
    }
    cJSON_Delete(kept);
done:
    st_model_close(src);
    st_model_close(out);
    return bad;
}

static uint64_t file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

static int quantize_dir(const char *src_dir, const char *out_path, eng_quant_method method,
                        int threads, eng_quant_report *rep, eng_error *err) {
    st_model *src = NULL;
    int rc = st_model_open(&src, src_dir, err);
    if (rc) return rc;
    eng_quant_options opt = {method, 0, {eng_quant_policy_detect(src), NULL, 0}, threads, NULL,
                             NULL};
    rc = eng_quant_checkpoint(src, out_path, &opt, rep, err);
    st_model_close(src);
    return rc;
}

static void run_roundtrip(eng_dtype dt, eng_quant_method method, double max_rel) {
    char dir[256], out[300];
    ASSERT_OK(qf_tempdir(dir, sizeof dir, "quant"));
    ASSERT_OK(qf_write_dia(dir, &small_dims, dt, 42));
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    eng_quant_report rep;
    eng_error err = {0};
    int rc = quantize_dir(dir, out, method, 2, &rep, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(rep.policy, ENG_QUANT_POLICY_DIA);
    /* 2 layers x (4 + 2) encoder linears + 2 x (4 + 4 + 2) decoder linears */
    ASSERT_EQ(rep.nquantized, 2 * 6 + 2 * 10);
    int bad = check_output(dir, out, method, &rep, max_rel);
    char src_path[300];
    snprintf(src_path, sizeof src_path, "%s/model.safetensors", dir);
    ASSERT_EQ(rep.out_file_bytes, file_size(out));
    ASSERT_EQ(rep.src_file_bytes, file_size(src_path));
    ASSERT_NEAR(rep.ratio, (double)file_size(src_path) / (double)file_size(out), 1e-12);
    ASSERT_TRUE(rep.rel_err > 0 && rep.rel_err <= rep.max_rel_err && rep.max_rel_err <= max_rel);
    fprintf(stderr, "  %s -> %s: ratio %.3f rel_err %.5f (max %.5f in %s)\n",
            eng_dtype_name(dt), eng_quant_method_name(method), rep.ratio, rep.rel_err,
            rep.max_rel_err, rep.max_rel_err_tensor);
    eng_quant_report_free(&rep);
    qf_rmtree(dir);
    ASSERT_EQ(bad, 0);
}

/* Error bounds for N(0, 1) rows: int8 ~ 1/127 of the row max (~3-4 sigma) / sqrt(12) ~ 0.01,
 * int4 with groups of 128 (or fewer) ~ 3/7/sqrt(12) ~ 0.12. */
TEST(roundtrip_f32_int8) { run_roundtrip(ENG_DT_F32, ENG_QUANT_INT8, 0.015); }
TEST(roundtrip_bf16_int8) { run_roundtrip(ENG_DT_BF16, ENG_QUANT_INT8, 0.015); }
TEST(roundtrip_f16_int8) { run_roundtrip(ENG_DT_F16, ENG_QUANT_INT8, 0.015); }
TEST(roundtrip_f32_int4) { run_roundtrip(ENG_DT_F32, ENG_QUANT_INT4, 0.16); }
TEST(roundtrip_bf16_int4) { run_roundtrip(ENG_DT_BF16, ENG_QUANT_INT4, 0.16); }

TEST(threads_give_identical_files) {
    char dir[256], out1[300], out3[300];
    ASSERT_OK(qf_tempdir(dir, sizeof dir, "quant"));
    ASSERT_OK(qf_write_dia(dir, &small_dims, ENG_DT_F32, 5));
    snprintf(out1, sizeof out1, "%s/t1.safetensors", dir);
    snprintf(out3, sizeof out3, "%s/t3.safetensors", dir);
    eng_error err = {0};
    ASSERT_OK(quantize_dir(dir, out1, ENG_QUANT_INT4, 1, NULL, &err));
    ASSERT_OK(quantize_dir(dir, out3, ENG_QUANT_INT4, 3, NULL, &err));
    size_t n1 = 0, n3 = 0;
    void *a = qf_read_file(out1, &n1), *b = qf_read_file(out3, &n3);
    int same = a && b && n1 == n3 && memcmp(a, b, n1) == 0;
    free(a);
    free(b);
    qf_rmtree(dir);
    ASSERT_TRUE(same);
}

/* A checkpoint whose linear layers dominate (Dia's names and structure, hidden 512, a small
 * vocabulary) shows the ratio int8 gives on the linear weights: f32 ~3.9x, bf16 ~1.95x. (Full
 * Dia-1.6B keeps 38 M of its 1.6 G parameters - embeddings, head, norms - in the source dtype,
 * which puts f32 -> int8 at 3.73x.) */
static void ratio_case(eng_dtype dt, double lo, double hi) {
    const qf_dia_dims dims = {512, 2048, 256, 2, 4, 36};
    char dir[256], out[300], src_path[300];
    ASSERT_OK(qf_tempdir(dir, sizeof dir, "ratio"));
    ASSERT_OK(qf_write_dia(dir, &dims, dt, 9));
    snprintf(out, sizeof out, "%s/int8.safetensors", dir);
    snprintf(src_path, sizeof src_path, "%s/model.safetensors", dir);
    eng_quant_report rep;
    eng_error err = {0};
    int rc = quantize_dir(dir, out, ENG_QUANT_INT8, 0, &rep, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    double real = (double)file_size(src_path) / (double)file_size(out);
    fprintf(stderr, "  %s -> int8: %llu -> %llu bytes, ratio %.4f (reported %.4f)\n",
            eng_dtype_name(dt), (unsigned long long)file_size(src_path),
            (unsigned long long)file_size(out), real, rep.ratio);
    ASSERT_NEAR(rep.ratio, real, 1e-12);
    ASSERT_TRUE(rep.ratio > lo && rep.ratio < hi);
    eng_quant_report_free(&rep);
    qf_rmtree(dir);
}

TEST(ratio_f32_int8) { ratio_case(ENG_DT_F32, 3.85, 4.0); }
TEST(ratio_bf16_int8) { ratio_case(ENG_DT_BF16, 1.92, 2.0); }

static int cancel_after(const eng_quant_progress *p, void *ctx) {
    int *calls = ctx;
    return ++*calls >= 5 && p->bytes_done < p->bytes_total;
}

TEST(cancel_leaves_no_file) {
    char dir[256], out[300];
    ASSERT_OK(qf_tempdir(dir, sizeof dir, "quant"));
    ASSERT_OK(qf_write_dia(dir, &small_dims, ENG_DT_F32, 1));
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    st_model *src = NULL;
    eng_error err = {0};
    ASSERT_OK(st_model_open(&src, dir, &err));
    int calls = 0;
    eng_quant_options opt = {ENG_QUANT_INT8, 0, {ENG_QUANT_POLICY_DIA, NULL, 0}, 2, cancel_after,
                             &calls};
    eng_quant_report rep;
    int rc = eng_quant_checkpoint(src, out, &opt, &rep, &err);
    st_model_close(src);
    ASSERT_EQ(rc, ENG_ECANCELLED);
    ASSERT_CONTAINS(err.msg, "cancelled");
    ASSERT_TRUE(access(out, F_OK) != 0);
    ASSERT_EQ(rep.ntensors, 0); /* nothing left to free */
    qf_rmtree(dir);
}

/* Writes a two-tensor checkpoint: a.weight [4, 8] (with a NaN at row 2 when nan) and `second`. */
static int write_small(const char *path, int nan, const char *second, const char *meta) {
    st_writer *w = NULL;
    eng_error err = {0};
    int64_t shape[2] = {4, 8};
    float data[32];
    for (int i = 0; i < 32; i++) data[i] = (float)(i % 7) - 3.0f;
    if (nan) data[2 * 8 + 5] = NAN;
    int rc = st_writer_open(&w, path, &err);
    if (!rc && meta) rc = st_writer_metadata(w, "voxq.method", meta);
    if (!rc) rc = st_writer_declare(w, "a.weight", ENG_DT_F32, 2, shape);
    if (!rc) rc = st_writer_declare(w, second, ENG_DT_F32, 2, shape);
    if (!rc) rc = st_writer_begin_data(w);
    if (!rc) rc = st_writer_write(w, data, sizeof data);
    if (!rc) rc = st_writer_write(w, data, sizeof data);
    if (!rc) rc = st_writer_finish(w);
    if (rc) st_writer_abort(w);
    return rc;
}

static int quantize_file(const char *src_path, const char *out, eng_error *err) {
    st_model *src = NULL;
    int rc = st_model_open(&src, src_path, err);
    if (rc) return rc;
    eng_quant_options opt = {ENG_QUANT_INT8, 0, {ENG_QUANT_POLICY_GENERIC, NULL, 0}, 2, NULL,
                             NULL};
    rc = eng_quant_checkpoint(src, out, &opt, NULL, err);
    st_model_close(src);
    return rc;
}

TEST(bad_sources_are_refused) {
    char dir[256], src[300], out[300];
    ASSERT_OK(qf_tempdir(dir, sizeof dir, "quant"));
    snprintf(src, sizeof src, "%s/src.safetensors", dir);
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    eng_error err = {0};

    ASSERT_OK(write_small(src, 1, "b.weight", NULL));
    ASSERT_EQ(quantize_file(src, out, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "'a.weight' row 2 holds a non-finite value");
    ASSERT_TRUE(access(out, F_OK) != 0);

    unlink(src);
    ASSERT_OK(write_small(src, 0, "a.weight_scale", NULL));
    ASSERT_EQ(quantize_file(src, out, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "a.weight_scale");
    ASSERT_TRUE(access(out, F_OK) != 0);

    unlink(src);
    ASSERT_OK(write_small(src, 0, "b.weight", "int8"));
    ASSERT_EQ(quantize_file(src, out, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "already quantized");

    unlink(src);
    ASSERT_OK(write_small(src, 0, "b.weight", NULL));
    FILE *f = fopen(out, "w");
    ASSERT_TRUE(f != NULL);
    fclose(f);
    ASSERT_EQ(quantize_file(src, out, &err), ENG_EINVAL);
    ASSERT_CONTAINS(err.msg, "already exists");
    ASSERT_EQ(file_size(out), 0); /* left alone */
    unlink(out);
    ASSERT_OK(quantize_file(src, out, &err));
    qf_rmtree(dir);
}

TEST(report_json) {
    char dir[256], out[300];
    ASSERT_OK(qf_tempdir(dir, sizeof dir, "quant"));
    ASSERT_OK(qf_write_dia(dir, &small_dims, ENG_DT_BF16, 3));
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    eng_quant_report rep;
    eng_error err = {0};
    ASSERT_OK(quantize_dir(dir, out, ENG_QUANT_INT4, 2, &rep, &err));
    cJSON *j = eng_quant_report_json(&rep);
    ASSERT_TRUE(j != NULL);
    ASSERT_STREQ(cJSON_GetObjectItemCaseSensitive(j, "method")->valuestring, "int4");
    ASSERT_EQ(cJSON_GetObjectItemCaseSensitive(j, "group_size")->valuedouble, 128);
    ASSERT_EQ(cJSON_GetObjectItemCaseSensitive(j, "quantized_bytes")->valuedouble,
              rep.out_file_bytes);
    ASSERT_NEAR(cJSON_GetObjectItemCaseSensitive(j, "ratio")->valuedouble, rep.ratio, 1e-12);
    cJSON *tensors = cJSON_GetObjectItemCaseSensitive(j, "tensors");
    ASSERT_EQ(cJSON_GetArraySize(tensors), rep.ntensors);
    cJSON *head = cJSON_GetArrayItem(tensors, (int)rep.ntensors - 1);
    ASSERT_STREQ(cJSON_GetObjectItemCaseSensitive(head, "name")->valuestring,
                 "logits_dense.weight");
    ASSERT_STREQ(cJSON_GetObjectItemCaseSensitive(head, "kept")->valuestring, "output head");
    cJSON_Delete(j);
    eng_quant_report_free(&rep);
    qf_rmtree(dir);
}

/* The engine's loader (engine/weights.h) reads what the quantizer writes: same format, group,
 * data and scales, and the weights it yields are within half a step of the source. */
static void loader_agrees(eng_quant_method method) {
    char dir[256], out[300];
    ASSERT_OK(qf_tempdir(dir, sizeof dir, "quant"));
    ASSERT_OK(qf_write_dia(dir, &small_dims, ENG_DT_BF16, 11));
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    eng_quant_report rep;
    eng_error err = {0};
    ASSERT_OK(quantize_dir(dir, out, method, 2, &rep, &err));
    st_model *src = NULL, *q = NULL;
    ASSERT_OK(st_model_open(&src, dir, &err));
    ASSERT_OK(st_model_open(&q, out, &err));
    int bad = 0;
    for (size_t i = 0; i < rep.ntensors && !bad; i++) {
        const eng_quant_tensor_report *tr = &rep.tensors[i];
        if (!tr->quantized) continue;
        int64_t rows = tr->shape[0], in = tr->shape[1];
        eng_weight w;
        void *owned = NULL;
        if (eng_weight_read(q, tr->name, rows, in, &w, &owned, &err) != 0) {
            fprintf(stderr, "  %s\n", err.msg);
            bad = 1;
            break;
        }
        int want_fmt = method == ENG_QUANT_INT8 ? ENG_W_I8 : ENG_W_I4;
        if ((int)w.fmt != want_fmt || w.out != rows || w.in != in ||
            (method == ENG_QUANT_INT4 && w.group != 128)) {
            fprintf(stderr, "  %s: loader sees fmt %d group %d\n", tr->name, (int)w.fmt,
                    w.group);
            bad = 1;
        }
        const st_tensor *s = st_model_find(src, tr->name);
        float *row = malloc((size_t)in * sizeof *row);
        int64_t ng = (in + 127) / 128;
        for (int64_t r = 0; r < rows && !bad; r++) {
            const float *sc;
            if (method == ENG_QUANT_INT8) {
                sc = w.scales + r;
                eng_dequant_row_i8((const int8_t *)w.data + r * in, in, *sc, row);
            } else {
                sc = w.scales + r * ng;
                eng_dequant_row_i4((const uint8_t *)w.data + r * ((in + 1) / 2), in, 128, sc,
                                   row);
            }
            for (int64_t j = 0; j < in; j++) {
                float step = method == ENG_QUANT_INT8 ? sc[0] : sc[j / 128];
                float ref = element(s, r * in + j);
                if (!(fabsf(row[j] - ref) <= step * (0.5f + 1e-4f))) {
                    fprintf(stderr, "  %s[%lld,%lld]: loader weight %g, source %g\n", tr->name,
                            (long long)r, (long long)j, row[j], ref);
                    bad = 1;
                    break;
                }
            }
        }
        free(row);
        free(owned);
    }
    st_model_close(src);
    st_model_close(q);
    eng_quant_report_free(&rep);
    qf_rmtree(dir);
    ASSERT_EQ(bad, 0);
}

TEST(loader_reads_int8) { loader_agrees(ENG_QUANT_INT8); }
TEST(loader_reads_int4) { loader_agrees(ENG_QUANT_INT4); }

/* Writes one shard holding the named [rows, 256] f32 tensors (1-D [256] when rows is 0). */
static int write_shard(const char *path, const char *const *names, const int *rows, int n,
                       uint64_t seed) {
    st_writer *w = NULL;
    eng_error err = {0};
    qf_rng rng = {seed, 0, 0};
    float row[256];
    int rc = st_writer_open(&w, path, &err);
    for (int i = 0; i < n && !rc; i++) {
        int64_t shape[2] = {rows[i] ? rows[i] : 256, 256};
        rc = st_writer_declare(w, names[i], ENG_DT_F32, rows[i] ? 2 : 1, shape);
    }
    if (!rc) rc = st_writer_begin_data(w);
    for (int i = 0; i < n && !rc; i++) {
        for (int r = 0; r < (rows[i] ? rows[i] : 1) && !rc; r++) {
            for (int j = 0; j < 256; j++) row[j] = (float)qf_normal(&rng);
            rc = st_writer_write(w, row, sizeof row);
        }
    }
    if (!rc) rc = st_writer_finish(w);
    if (rc) st_writer_abort(w);
    return rc;
}

/* A sharded source (model.safetensors.index.json + two shards) becomes one output file; the
 * ratio counts both shards. */
TEST(sharded_source) {
    char dir[256], path[400], out[300];
    ASSERT_OK(qf_tempdir(dir, sizeof dir, "quant"));
    const char *n1[] = {"model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"};
    const char *n2[] = {"model.layers.0.mlp.down_proj.weight", "model.norm.weight"};
    const int r1[] = {64, 48}, r2[] = {32, 0};
    char s1[400], s2[400];
    snprintf(s1, sizeof s1, "%s/model-00001-of-00002.safetensors", dir);
    snprintf(s2, sizeof s2, "%s/model-00002-of-00002.safetensors", dir);
    ASSERT_OK(write_shard(s1, n1, r1, 2, 1));
    ASSERT_OK(write_shard(s2, n2, r2, 2, 2));
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    ASSERT_TRUE(f != NULL);
    fprintf(f, "{\"metadata\": {}, \"weight_map\": {\"%s\": \"model-00001-of-00002.safetensors\", "
               "\"%s\": \"model-00001-of-00002.safetensors\", \"%s\": "
               "\"model-00002-of-00002.safetensors\", \"%s\": "
               "\"model-00002-of-00002.safetensors\"}}\n", n1[0], n1[1], n2[0], n2[1]);
    fclose(f);
    snprintf(out, sizeof out, "%s/out.safetensors", dir);
    eng_quant_report rep;
    eng_error err = {0};
    int rc = quantize_dir(dir, out, ENG_QUANT_INT8, 2, &rep, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(rep.policy, ENG_QUANT_POLICY_GENERIC);
    ASSERT_EQ(rep.ntensors, 4);
    ASSERT_EQ(rep.nquantized, 2); /* up_proj and down_proj; the embedding and norm stay */
    ASSERT_EQ(rep.src_file_bytes, file_size(s1) + file_size(s2));
    ASSERT_NEAR(rep.ratio, (double)(file_size(s1) + file_size(s2)) / (double)file_size(out),
                1e-12);
    int bad = check_output(dir, out, ENG_QUANT_INT8, &rep, 0.015);
    eng_quant_report_free(&rep);
    qf_rmtree(dir);
    ASSERT_EQ(bad, 0);
}

int main(int argc, char **argv) { return test_main(argc, argv); }
