/* test_weights.c - eng_weight_read / eng_tensor_read over real files: zero-copy views for F32
 * and BF16, conversion of F16, the int8 and int4 layouts of weights.h, shape errors, and
 * misaligned tensors. */
#include "engine/weights.h"
#include "st_util.h"
#include "test.h"
#include "tiny_ckpt.h"

static char tmp_buf[256];

/* Value of element i of the test weights: small exact binary fractions. */
static float val(int i) {
    return (float)(i % 13) * 0.25f - 1.5f;
}

static int put(st_writer *w, const void *p, size_t n) {
    return st_writer_write(w, p, n);
}

/* Writes dir/model.safetensors with the weights used below. group_size NULL: no metadata. */
static int write_weights(const char *dir, const char *group_size, int q8_scale_rows) {
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_writer *w = NULL;
    eng_error err = {0};
    int rc = st_writer_open(&w, path, &err);
    if (rc) return rc;
    const int64_t s46[2] = {4, 6}, s43[2] = {4, 3}, s42[2] = {4, 2};
    const int64_t s161[3] = {1, 6, 1}, s3[1] = {3}, s2[1] = {2};
    const int64_t s_q8s[1] = {q8_scale_rows};
    if (group_size) rc |= st_writer_metadata(w, "voxq.group_size", group_size);
    rc |= st_writer_declare(w, "lin.f32", ENG_DT_F32, 2, s46);
    rc |= st_writer_declare(w, "lin.bf16", ENG_DT_BF16, 2, s46);
    rc |= st_writer_declare(w, "lin.f16", ENG_DT_F16, 2, s46);
    rc |= st_writer_declare(w, "q8", ENG_DT_I8, 2, s46);
    rc |= st_writer_declare(w, "q8_scale", ENG_DT_F32, 1, s_q8s);
    rc |= st_writer_declare(w, "q4", ENG_DT_U8, 2, s43);
    rc |= st_writer_declare(w, "q4_scale", ENG_DT_F32, 2, s42);
    rc |= st_writer_declare(w, "noscale", ENG_DT_I8, 2, s46);
    rc |= st_writer_declare(w, "norm", ENG_DT_F32, 3, s161);
    rc |= st_writer_declare(w, "norm.bf16", ENG_DT_BF16, 3, s161);
    rc |= st_writer_declare(w, "ids", ENG_DT_I64, 1, s2);
    rc |= st_writer_declare(w, "odd", ENG_DT_U8, 1, s3);
    rc |= st_writer_declare(w, "mis", ENG_DT_F32, 2, s46); /* starts 3 bytes past alignment */
    rc |= st_writer_begin_data(w);
    float f[24];
    uint16_t h[24];
    int8_t q[24];
    for (int i = 0; i < 24; i++)
        f[i] = val(i);
    rc |= put(w, f, sizeof f);
    for (int i = 0; i < 24; i++)
        h[i] = eng_f32_to_bf16(f[i]);
    rc |= put(w, h, sizeof h);
    for (int i = 0; i < 24; i++)
        h[i] = eng_f32_to_f16(f[i]);
    rc |= put(w, h, sizeof h);
    for (int i = 0; i < 24; i++)
        q[i] = (int8_t)(i - 12);
    rc |= put(w, q, sizeof q);
    float sc[8] = {0.5f, 0.25f, 2.0f, 1.0f, 3.0f, 4.0f, 5.0f, 6.0f};
    rc |= put(w, sc, (size_t)q8_scale_rows * 4);
    unsigned char packed[12];
    for (int i = 0; i < 12; i++)
        packed[i] = (unsigned char)(i * 17);
    rc |= put(w, packed, sizeof packed);
    rc |= put(w, sc, sizeof sc);
    rc |= put(w, q, sizeof q);
    rc |= put(w, f, 24);
    for (int i = 0; i < 6; i++)
        h[i] = eng_f32_to_bf16(f[i]);
    rc |= put(w, h, 12);
    int64_t ids[2] = {1, 2};
    rc |= put(w, ids, sizeof ids);
    rc |= put(w, "xyz", 3);
    rc |= put(w, f, sizeof f);
    if (rc) {
        fprintf(stderr, "  %s\n", st_writer_errstr(w));
        st_writer_abort(w);
        return rc;
    }
    return st_writer_finish(w);
}

static st_model *open_weights(const char *dir, const char *group_size, int q8_scale_rows) {
    if (write_weights(dir, group_size, q8_scale_rows)) return NULL;
    st_model *m = NULL;
    eng_error err = {0};
    if (st_model_open(&m, dir, &err)) fprintf(stderr, "  %s\n", err.msg);
    return m;
}

TEST(linear_formats) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    st_model *m = open_weights(dir, "4", 4);
    ASSERT_TRUE(m);
    eng_weight w;
    void *owned = (void *)1;
    eng_error err = {0};

    ASSERT_OK(eng_weight_read(m, "lin.f32", 4, 6, &w, &owned, &err));
    ASSERT_EQ(w.fmt, ENG_W_F32);
    ASSERT_TRUE(owned == NULL);
    ASSERT_TRUE(w.data == st_model_find(m, "lin.f32")->data); /* zero-copy */
    ASSERT_EQ(w.out, 4);
    ASSERT_EQ(w.in, 6);
    ASSERT_EQ(((const float *)w.data)[23], val(23));

    ASSERT_OK(eng_weight_read(m, "lin.bf16", 4, 6, &w, &owned, &err));
    ASSERT_EQ(w.fmt, ENG_W_BF16);
    ASSERT_TRUE(owned == NULL);
    ASSERT_TRUE(w.data == st_model_find(m, "lin.bf16")->data);

    ASSERT_OK(eng_weight_read(m, "lin.f16", 4, 6, &w, &owned, &err));
    ASSERT_EQ(w.fmt, ENG_W_F32);
    ASSERT_TRUE(owned != NULL && w.data == owned);
    for (int i = 0; i < 24; i++)
        ASSERT_EQ(((const float *)w.data)[i], val(i));
    free(owned);

    ASSERT_OK(eng_weight_read(m, "q8", 4, 6, &w, &owned, &err));
    ASSERT_EQ(w.fmt, ENG_W_I8);
    ASSERT_TRUE(owned == NULL);
    ASSERT_TRUE(w.scales == st_model_find(m, "q8_scale")->data);
    ASSERT_EQ(((const int8_t *)w.data)[0], -12);
    ASSERT_EQ(w.scales[2], 2.0f);
    ASSERT_EQ(eng_weight_data_bytes(&w), 24);
    ASSERT_EQ(eng_weight_scale_bytes(&w), 16);

    ASSERT_OK(eng_weight_read(m, "q4", 4, 6, &w, &owned, &err));
    ASSERT_EQ(w.fmt, ENG_W_I4);
    ASSERT_EQ(w.group, 4);
    ASSERT_TRUE(w.scales == st_model_find(m, "q4_scale")->data);
    ASSERT_EQ(((const unsigned char *)w.data)[11], 187);
    ASSERT_EQ(eng_weight_data_bytes(&w), 12);
    ASSERT_EQ(eng_weight_scale_bytes(&w), 32);
    st_model_close(m);
    st_test_rmtree(dir);
}

TEST(linear_errors) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    st_model *m = open_weights(dir, "4", 4);
    ASSERT_TRUE(m);
    eng_weight w;
    void *owned = NULL;
    eng_error err = {0};

    ASSERT_EQ(eng_weight_read(m, "lin.f32", 6, 4, &w, &owned, &err), ENG_EMISMATCH);
    fprintf(stderr, "  -> %s\n", err.msg);
    ASSERT_CONTAINS(err.msg,
                    "model.safetensors: tensor 'lin.f32' expects [6,4], file has F32 [4,6]");
    ASSERT_EQ(eng_weight_read(m, "absent", 6, 4, &w, &owned, &err), ENG_ENOTFOUND);
    ASSERT_CONTAINS(err.msg, "'absent'");
    ASSERT_EQ(eng_weight_read(m, "noscale", 4, 6, &w, &owned, &err), ENG_ENOTFOUND);
    fprintf(stderr, "  -> %s\n", err.msg);
    ASSERT_CONTAINS(err.msg, "'noscale_scale'");
    ASSERT_CONTAINS(err.msg, "quantized weight 'noscale'");
    /* int4 with in = 8 would need 4 packed bytes a row */
    ASSERT_EQ(eng_weight_read(m, "q4", 4, 8, &w, &owned, &err), ENG_EMISMATCH);
    ASSERT_CONTAINS(err.msg, "[4,4]");
    ASSERT_EQ(eng_weight_read(m, "ids", 2, 1, &w, &owned, &err), ENG_EUNSUPPORTED);
    ASSERT_CONTAINS(err.msg, "'ids' is I64");
    ASSERT_TRUE(owned == NULL);
    st_model_close(m);
    st_test_rmtree(dir);

    /* a scale of the wrong length, and a bad group size */
    dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    m = open_weights(dir, "zero", 5);
    ASSERT_TRUE(m);
    ASSERT_EQ(eng_weight_read(m, "q8", 4, 6, &w, &owned, &err), ENG_EMISMATCH);
    ASSERT_CONTAINS(err.msg, "'q8_scale' expects [4], file has F32 [5]");
    ASSERT_EQ(eng_weight_read(m, "q4", 4, 6, &w, &owned, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "voxq.group_size 'zero'");
    st_model_close(m);
    st_test_rmtree(dir);
}

TEST(int4_default_group) {
    /* Without metadata the group is 128, so the scale must be [4, 1]: the file's [4,2] is wrong. */
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    st_model *m = open_weights(dir, NULL, 4);
    ASSERT_TRUE(m);
    eng_weight w;
    void *owned = NULL;
    eng_error err = {0};
    ASSERT_EQ(eng_weight_read(m, "q4", 4, 6, &w, &owned, &err), ENG_EMISMATCH);
    ASSERT_CONTAINS(err.msg, "'q4_scale' expects [4,1], file has F32 [4,2]");
    /* in = 200..256 with group 128 needs two groups, i.e. [4,2]; with 128 bytes packed */
    st_model_close(m);
    st_test_rmtree(dir);
}

TEST(plain_tensors) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    st_model *m = open_weights(dir, "4", 4);
    ASSERT_TRUE(m);
    eng_tensor t;
    void *owned = NULL;
    eng_error err = {0};
    const int64_t s6[1] = {6}, s161[3] = {1, 6, 1}, s32[2] = {3, 2}, s46[2] = {4, 6};

    ASSERT_OK(eng_tensor_read(m, "norm", 1, s6, 1, &t, &owned, &err));
    ASSERT_TRUE(owned == NULL);
    ASSERT_EQ(t.dtype, ENG_DT_F32);
    ASSERT_EQ(t.ndim, 1);
    ASSERT_EQ(t.shape[0], 6);
    ASSERT_TRUE(t.data == st_model_find(m, "norm")->data);
    ASSERT_OK(eng_tensor_read(m, "norm", 3, s161, 0, &t, &owned, &err));
    ASSERT_EQ(t.ndim, 3);
    ASSERT_EQ(eng_tensor_read(m, "norm", 2, s32, 1, &t, &owned, &err), ENG_EMISMATCH);
    ASSERT_CONTAINS(err.msg, "'norm' expects [3,2], file has F32 [1,6,1]");

    ASSERT_OK(eng_tensor_read(m, "norm.bf16", 1, s6, 0, &t, &owned, &err));
    ASSERT_EQ(t.dtype, ENG_DT_BF16);
    ASSERT_TRUE(owned == NULL);
    ASSERT_OK(eng_tensor_read(m, "norm.bf16", 1, s6, 1, &t, &owned, &err));
    ASSERT_EQ(t.dtype, ENG_DT_F32);
    ASSERT_TRUE(owned != NULL && t.data == owned);
    for (int i = 0; i < 6; i++)
        ASSERT_EQ(((float *)t.data)[i], val(i));
    free(owned);

    ASSERT_OK(eng_tensor_read(m, "lin.f16", 2, s46, 0, &t, &owned, &err));
    ASSERT_EQ(t.dtype, ENG_DT_F32); /* F16 always becomes F32 */
    ASSERT_EQ(((float *)t.data)[7], val(7));
    free(owned);

    ASSERT_EQ(eng_tensor_read(m, "ids", 1, s6, 1, &t, &owned, &err), ENG_EUNSUPPORTED);
    ASSERT_EQ(eng_tensor_read(m, "nope", 1, s6, 1, &t, &owned, &err), ENG_ENOTFOUND);
    st_model_close(m);
    st_test_rmtree(dir);
}

/* A valid file may place an F32 tensor at an odd offset; readers get an aligned copy. */
TEST(misaligned_tensor_is_copied) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    st_model *m = open_weights(dir, "4", 4);
    ASSERT_TRUE(m);
    const st_tensor *mis = st_model_find(m, "mis");
    ASSERT_TRUE(mis);
    ASSERT_NE((uintptr_t)mis->data % 4, 0);
    eng_weight w;
    void *owned = NULL;
    eng_error err = {0};
    ASSERT_OK(eng_weight_read(m, "mis", 4, 6, &w, &owned, &err));
    ASSERT_TRUE(owned != NULL && w.data == owned);
    ASSERT_EQ((uintptr_t)w.data % 4, 0);
    for (int i = 0; i < 24; i++)
        ASSERT_EQ(((const float *)w.data)[i], val(i));
    free(owned);
    eng_tensor t;
    const int64_t s46[2] = {4, 6};
    ASSERT_OK(eng_tensor_read(m, "mis", 2, s46, 0, &t, &owned, &err));
    ASSERT_TRUE(owned != NULL && t.data == owned);
    free(owned);
    st_model_close(m);
    st_test_rmtree(dir);
}

TEST(shape_str) {
    char buf[64];
    const int64_t s[3] = {9252, 2048, 1};
    ASSERT_STREQ(eng_shape_str(buf, sizeof buf, 3, s), "[9252,2048,1]");
    ASSERT_STREQ(eng_shape_str(buf, sizeof buf, 0, s), "[]");
    ASSERT_STREQ(eng_shape_str(buf, 6, 3, s), "[9252");
}

/* Every linear weight of the tiny Dia checkpoint reads at its spec shape, zero-copy in F32. */
TEST(tiny_dia_weights) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    ASSERT_OK(tiny_dia_write(dir, 3, ENG_DT_F32));
    st_model *m = NULL;
    eng_error err = {0};
    ASSERT_OK(st_model_open(&m, dir, &err));
    int linears = 0;
    for (int i = 0; i < tiny_dia_tensor_count(&tiny_dia_tiny); i++) {
        tiny_tensor_spec s;
        tiny_dia_tensor_spec(&tiny_dia_tiny, i, &s);
        void *owned = NULL;
        if (s.kind == TINY_LINEAR) {
            eng_weight w;
            int rc = eng_weight_read(m, s.name, s.shape[0], s.shape[1], &w, &owned, &err);
            if (rc) TEST_FAIL_("%s", err.msg);
            ASSERT_TRUE(owned == NULL);
            ASSERT_EQ(((const float *)w.data)[5], tiny_dia_value(&s, 3, 5));
            linears++;
        } else {
            eng_tensor t;
            int rc = eng_tensor_read(m, s.name, s.ndim, s.shape, 1, &t, &owned, &err);
            if (rc) TEST_FAIL_("%s", err.msg);
            ASSERT_TRUE(owned == NULL);
        }
    }
    /* per encoder layer q,k,v,o,gate_up,down; per decoder layer 4 self + 4 cross + 2 mlp; head */
    ASSERT_EQ(linears, 2 * 6 + 2 * 10 + 1);
    st_model_close(m);
    st_test_rmtree(dir);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
