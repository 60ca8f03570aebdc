/* test_safetensors.c - writer/reader round trips, the tiny Dia checkpoint, sharded checkpoints
 * and writer misuse. Hostile files are in test_st_hostile.c. */
#include <sys/stat.h>

#include "engine/safetensors.h"
#include "st_util.h"
#include "test.h"
#include "tiny_ckpt.h"

static char tmp_buf[256];

/* Writes a file with one tensor of each kind the reader must handle: F32 matrix, odd-sized U8,
 * BF16 vector, an empty [0,4] tensor and a scalar; data are deterministic bytes. */
static int write_mixed(const char *path) {
    eng_error err = {0};
    st_writer *w = NULL;
    int rc = st_writer_open(&w, path, &err);
    if (rc) return rc;
    const int64_t s_mat[2] = {3, 5}, s_u8[1] = {7}, s_bf[1] = {6}, s_empty[2] = {0, 4};
    rc |= st_writer_metadata(w, "format", "pt");
    rc |= st_writer_metadata(w, "note", "quote\" backslash\\ tab\t");
    rc |= st_writer_declare(w, "mat", ENG_DT_F32, 2, s_mat);
    rc |= st_writer_declare(w, "bytes", ENG_DT_U8, 1, s_u8);
    rc |= st_writer_declare(w, "half", ENG_DT_BF16, 1, s_bf);
    rc |= st_writer_declare(w, "empty", ENG_DT_F32, 2, s_empty);
    rc |= st_writer_declare(w, "scalar", ENG_DT_I64, 0, NULL);
    rc |= st_writer_begin_data(w);
    float mat[15];
    for (int i = 0; i < 15; i++)
        mat[i] = (float)i * 0.5f - 3.0f;
    /* in uneven pieces, across tensor boundaries */
    unsigned char all[60 + 7 + 12 + 8];
    memcpy(all, mat, 60);
    for (int i = 0; i < 7; i++)
        all[60 + i] = (unsigned char)(200 + i);
    for (int i = 0; i < 6; i++) {
        uint16_t h = eng_f32_to_bf16((float)i + 0.25f);
        memcpy(all + 67 + 2 * i, &h, 2);
    }
    int64_t scalar = -1234567890123LL;
    memcpy(all + 79, &scalar, 8);
    rc |= st_writer_write(w, all, 13);
    rc |= st_writer_write(w, all + 13, 0);
    rc |= st_writer_write(w, all + 13, 61);
    rc |= st_writer_write(w, all + 74, sizeof all - 74);
    if (rc) {
        fprintf(stderr, "  writer: %s\n", st_writer_errstr(w));
        st_writer_abort(w);
        return rc;
    }
    return st_writer_finish(w);
}

TEST(roundtrip_mixed) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    ASSERT_TRUE(dir);
    char path[512];
    snprintf(path, sizeof path, "%s/mixed.safetensors", dir);
    ASSERT_OK(write_mixed(path));

    st_file *f = NULL;
    eng_error err = {0};
    int rc = st_open(&f, path, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(st_count(f), 5);
    ASSERT_STREQ(st_metadata(f, "format"), "pt");
    ASSERT_STREQ(st_metadata(f, "note"), "quote\" backslash\\ tab\t");
    ASSERT_TRUE(st_metadata(f, "missing") == NULL);
    ASSERT_EQ(st_metadata_count(f), 2);
    ASSERT_STREQ(st_metadata_key(f, 1), "note");

    const st_tensor *mat = st_find(f, "mat");
    ASSERT_TRUE(mat);
    ASSERT_EQ(mat->dtype, ENG_DT_F32);
    ASSERT_EQ(mat->ndim, 2);
    ASSERT_EQ(mat->shape[0], 3);
    ASSERT_EQ(mat->shape[1], 5);
    ASSERT_EQ(mat->nbytes, 60);
    ASSERT_EQ(mat->offset % 8, 0); /* the data section starts 8-aligned */
    ASSERT_STREQ(mat->file, path);
    for (int i = 0; i < 15; i++) {
        float v;
        memcpy(&v, (const char *)mat->data + 4 * i, 4);
        ASSERT_EQ(v, (float)i * 0.5f - 3.0f);
    }
    const st_tensor *bytes = st_find(f, "bytes");
    ASSERT_TRUE(bytes);
    ASSERT_EQ(bytes->nbytes, 7);
    ASSERT_EQ(((const unsigned char *)bytes->data)[6], 206);
    const st_tensor *half = st_find(f, "half");
    ASSERT_TRUE(half);
    uint16_t h;
    memcpy(&h, (const char *)half->data + 10, 2);
    ASSERT_EQ(eng_bf16_to_f32(h), 5.25f);
    const st_tensor *empty = st_find(f, "empty");
    ASSERT_TRUE(empty);
    ASSERT_EQ(empty->nbytes, 0);
    ASSERT_EQ(empty->shape[0], 0);
    const st_tensor *scalar = st_find(f, "scalar");
    ASSERT_TRUE(scalar);
    ASSERT_EQ(scalar->ndim, 0);
    ASSERT_EQ(scalar->nbytes, 8);
    int64_t sv;
    memcpy(&sv, scalar->data, 8);
    ASSERT_EQ(sv, -1234567890123LL);
    ASSERT_TRUE(st_find(f, "Mat") == NULL); /* case-sensitive */

    /* file order = data order; data are contiguous (the reference layout) */
    uint64_t expect = st_at(f, 0)->offset;
    for (size_t i = 0; i < st_count(f); i++) {
        ASSERT_EQ(st_at(f, i)->offset, expect);
        expect += st_at(f, i)->nbytes;
    }
    ASSERT_EQ(expect, st_file_size(f));
    ASSERT_STREQ(st_at(f, 0)->name, "mat");
    st_close(f);
    st_test_rmtree(dir);
}

TEST(roundtrip_memory) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    char path[512];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    ASSERT_OK(write_mixed(path));
    FILE *fp = fopen(path, "rb");
    ASSERT_TRUE(fp);
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    st_file *f = NULL;
    eng_error err = {0};
    ASSERT_OK(st_open_memory(&f, buf, n, "image", &err));
    ASSERT_EQ(st_count(f), 5);
    ASSERT_TRUE((const unsigned char *)st_find(f, "mat")->data >= buf);
    ASSERT_STREQ(st_path(f), "image");
    st_close(f);
    st_test_rmtree(dir);
}

/* The tiny Dia checkpoint: 47 tensors with the names and shapes of spec §2.1 at §9.1 sizes,
 * values as tiny_dia_value() defines them, and a config.json that parses. */
static void check_tiny(eng_dtype dtype) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    ASSERT_TRUE(dir);
    ASSERT_OK(tiny_dia_write(dir, 42, dtype));
    st_model *m = NULL;
    eng_error err = {0};
    int rc = st_model_open(&m, dir, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(st_model_count(m), 47);
    ASSERT_EQ(st_model_nfiles(m), 1);
    ASSERT_EQ(tiny_dia_tensor_count(&tiny_dia_tiny), 47);
    ASSERT_EQ(tiny_dia_tensor_count(&tiny_dia_full), 335);

    int64_t params = 0;
    for (int i = 0; i < 47; i++) {
        tiny_tensor_spec s;
        tiny_dia_tensor_spec(&tiny_dia_tiny, i, &s);
        const st_tensor *t = st_model_find(m, s.name);
        if (!t) TEST_FAIL_("tensor %s missing", s.name);
        ASSERT_EQ(t->dtype, dtype);
        ASSERT_EQ(t->ndim, s.ndim);
        ASSERT_EQ(t->shape[0], s.shape[0]);
        if (s.ndim == 2) ASSERT_EQ(t->shape[1], s.shape[1]);
        int64_t numel = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
        params += numel;
        for (int64_t e = 0; e < numel; e += 97) {
            float want = tiny_dia_value(&s, 42, e), got;
            if (dtype == ENG_DT_F32) {
                memcpy(&got, (const char *)t->data + 4 * e, 4);
            } else {
                uint16_t hv;
                memcpy(&hv, (const char *)t->data + 2 * e, 2);
                got = eng_bf16_to_f32(hv);
                want = eng_bf16_to_f32(eng_f32_to_bf16(want));
            }
            if (got != want) TEST_FAIL_("%s[%lld]: %g != %g", s.name, (long long)e, got, want);
        }
    }
    ASSERT_EQ(params, 1389824); /* spec §9.3 */
    /* a few names from spec §2.1, spelled out */
    ASSERT_TRUE(st_model_find(m, "model.decoder.layers.1.cross_attention.v_proj.weight"));
    ASSERT_TRUE(st_model_find(m, "model.encoder.layers.1.mlp.gate_up_proj.weight"));
    ASSERT_EQ(st_model_find(m, "logits_dense.weight")->shape[0], 9252);
    ASSERT_EQ(st_model_find(m, "model.decoder.layers.0.self_attention.k_proj.weight")->shape[0],
              32);

    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    FILE *fp = fopen(cfg, "r");
    ASSERT_TRUE(fp);
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[n] = '\0';
    ASSERT_CONTAINS(text, "\"num_key_value_heads\":\t2");
    ASSERT_CONTAINS(text, "\"cross_hidden_size\":\t64");
    ASSERT_CONTAINS(text, "\"model_type\":\t\"dia\"");
    st_model_close(m);
    st_test_rmtree(dir);
}

TEST(tiny_dia_f32) {
    check_tiny(ENG_DT_F32);
}
TEST(tiny_dia_bf16) {
    check_tiny(ENG_DT_BF16);
}

/* Statistics of the generator match what tiny_ckpt.h promises. */
TEST(tiny_values_distribution) {
    tiny_tensor_spec s;
    tiny_dia_tensor_spec(&tiny_dia_tiny, 0, &s); /* encoder embedding: unit normal */
    double sum = 0, sq = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double v = tiny_dia_value(&s, 7, i);
        sum += v;
        sq += v * v;
    }
    ASSERT_NEAR(sum / n, 0.0, 0.01);
    ASSERT_NEAR(sq / n, 1.0, 0.02);
    tiny_dia_tensor_spec(&tiny_dia_tiny, 1, &s); /* a norm weight */
    ASSERT_EQ(s.kind, TINY_NORM);
    for (int i = 0; i < 1000; i++) {
        float v = tiny_dia_value(&s, 7, i);
        ASSERT_TRUE(v >= 0.8f && v <= 1.2f);
    }
    ASSERT_TRUE(tiny_dia_value(&s, 7, 0) != tiny_dia_value(&s, 8, 0));
}

/* Writes a shard holding tensors named names[0..n) of 4 F32 values each (value = k + 10*i). */
static int write_shard(const char *path, const char *const *names, int n, float k) {
    eng_error err = {0};
    st_writer *w = NULL;
    int rc = st_writer_open(&w, path, &err);
    if (rc) return rc;
    const int64_t shape[1] = {4};
    for (int i = 0; i < n; i++)
        rc |= st_writer_declare(w, names[i], ENG_DT_F32, 1, shape);
    rc |= st_writer_metadata(w, "shard", path);
    rc |= st_writer_begin_data(w);
    for (int i = 0; i < n; i++) {
        float v[4] = {k + 10.0f * (float)i, 1, 2, 3};
        rc |= st_writer_write(w, v, sizeof v);
    }
    if (rc) {
        st_writer_abort(w);
        return rc;
    }
    return st_writer_finish(w);
}

static int write_text(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return st_test_write_file(path, text, strlen(text));
}

static const char *const shard1[] = {"a.weight", "b.weight"};
static const char *const shard2[] = {"c.weight"};

static const char *make_shards(void) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    char p[512];
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dir);
    if (write_shard(p, shard1, 2, 100)) return NULL;
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    if (write_shard(p, shard2, 1, 200)) return NULL;
    return dir;
}

TEST(sharded_index) {
    const char *dir = make_shards();
    ASSERT_TRUE(dir);
    ASSERT_OK(write_text(dir, "model.safetensors.index.json",
                         "{\"metadata\": {\"total_size\": 48}, \"weight_map\": {"
                         "\"c.weight\": \"model-00002-of-00002.safetensors\","
                         "\"a.weight\": \"model-00001-of-00002.safetensors\","
                         "\"b.weight\": \"model-00001-of-00002.safetensors\"}}"));
    st_model *m = NULL;
    eng_error err = {0};
    int rc = st_model_open(&m, dir, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    ASSERT_OK(rc);
    ASSERT_EQ(st_model_count(m), 3);
    ASSERT_EQ(st_model_nfiles(m), 2);
    const st_tensor *c = st_model_find(m, "c.weight");
    ASSERT_TRUE(c);
    ASSERT_CONTAINS(c->file, "model-00002-of-00002.safetensors");
    float v;
    memcpy(&v, c->data, 4);
    ASSERT_EQ(v, 200.0f);
    memcpy(&v, st_model_find(m, "b.weight")->data, 4);
    ASSERT_EQ(v, 110.0f);
    /* file order (first mention in the index), then data order */
    ASSERT_STREQ(st_model_at(m, 0)->name, "c.weight");
    ASSERT_STREQ(st_model_at(m, 1)->name, "a.weight");
    ASSERT_STREQ(st_model_at(m, 2)->name, "b.weight");
    ASSERT_CONTAINS(st_model_metadata(m, "shard"), "model-00002");
    st_model_close(m);

    /* the index path itself opens the same model */
    char idx[512];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    ASSERT_OK(st_model_open(&m, idx, &err));
    ASSERT_EQ(st_model_count(m), 3);
    st_model_close(m);
    st_test_rmtree(dir);
}

/* Each broken index gives the expected error naming what is wrong. */
static void check_bad_index(const char *index, int code, const char *needle) {
    const char *dir = make_shards();
    ASSERT_TRUE(dir);
    ASSERT_OK(write_text(dir, "model.safetensors.index.json", index));
    st_model *m = NULL;
    eng_error err = {0};
    int rc = st_model_open(&m, dir, &err);
    fprintf(stderr, "  -> %s\n", err.msg);
    ASSERT_EQ(rc, code);
    ASSERT_TRUE(m == NULL);
    ASSERT_CONTAINS(err.msg, needle);
    ASSERT_CONTAINS(err.msg, "model.safetensors.index.json");
    st_test_rmtree(dir);
}

TEST(sharded_missing_shard) {
    check_bad_index("{\"weight_map\": {\"a.weight\": \"model-00003-of-00002.safetensors\"}}",
                    ENG_ENOTFOUND, "model-00003-of-00002.safetensors");
}
TEST(sharded_tensor_absent) {
    check_bad_index("{\"weight_map\": {\"c.weight\": \"model-00001-of-00002.safetensors\"}}",
                    ENG_EFORMAT, "'c.weight' is not in its shard");
}
TEST(sharded_slash_in_name) {
    check_bad_index("{\"weight_map\": {\"a.weight\": \"sub/model.safetensors\"}}", ENG_EFORMAT,
                    "'a.weight'");
}
TEST(sharded_dotdot_in_name) {
    check_bad_index("{\"weight_map\": {\"a.weight\": \"..model.safetensors\"}}", ENG_EFORMAT,
                    "not a plain shard file name");
}
TEST(sharded_duplicate_key) {
    check_bad_index("{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\","
                    "\"a.weight\": \"model-00001-of-00002.safetensors\"}}",
                    ENG_EFORMAT, "a.weight");
}
TEST(sharded_no_weight_map) {
    check_bad_index("{\"weights\": {}}", ENG_EFORMAT, "weight_map");
}
TEST(sharded_broken_json) {
    check_bad_index("{\"weight_map\": {", ENG_EFORMAT, "not valid JSON");
}
TEST(sharded_bad_shard_propagates) {
    const char *dir = make_shards();
    ASSERT_TRUE(dir);
    char p[512];
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    ASSERT_OK(st_test_write_raw(p, "{\"c.weight\": {\"dtype\": \"F32\"}}", 0, 0));
    ASSERT_OK(write_text(dir, "model.safetensors.index.json",
                         "{\"weight_map\": {\"c.weight\": \"model-00002-of-00002.safetensors\"}}"));
    st_model *m = NULL;
    eng_error err = {0};
    ASSERT_EQ(st_model_open(&m, dir, &err), ENG_EFORMAT);
    fprintf(stderr, "  -> %s\n", err.msg);
    ASSERT_CONTAINS(err.msg, "model-00002-of-00002.safetensors");
    ASSERT_CONTAINS(err.msg, "'c.weight'");
    st_test_rmtree(dir);
}

TEST(model_missing_dir_contents) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    st_model *m = NULL;
    eng_error err = {0};
    ASSERT_EQ(st_model_open(&m, dir, &err), ENG_ENOTFOUND);
    ASSERT_CONTAINS(err.msg, dir);
    char p[512];
    snprintf(p, sizeof p, "%s/nope", dir);
    ASSERT_EQ(st_model_open(&m, p, &err), ENG_ENOTFOUND);
    st_test_rmtree(dir);
}

/* Writer misuse: every case fails with a message naming the tensor, and leaves no file. */
TEST(writer_errors) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    char p[512];
    snprintf(p, sizeof p, "%s/w.safetensors", dir);
    eng_error err = {0};
    st_writer *w = NULL;
    const int64_t shape[2] = {2, 3}, neg[1] = {-1}, huge[2] = {INT64_MAX, 4};
    struct stat st;

    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_OK(st_writer_declare(w, "x", ENG_DT_F32, 2, shape));
    ASSERT_EQ(st_writer_declare(w, "x", ENG_DT_F32, 2, shape), ENG_EINVAL);
    ASSERT_CONTAINS(st_writer_errstr(w), "'x' declared twice");
    ASSERT_EQ(st_writer_begin_data(w), ENG_EINVAL); /* sticky */
    st_writer_abort(w);
    ASSERT_TRUE(stat(p, &st) != 0);

    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_EQ(st_writer_declare(w, "n", ENG_DT_F32, 1, neg), ENG_EINVAL);
    ASSERT_CONTAINS(st_writer_errstr(w), "negative");
    st_writer_abort(w);

    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_EQ(st_writer_declare(w, "big", ENG_DT_F32, 2, huge), ENG_EINVAL);
    ASSERT_CONTAINS(st_writer_errstr(w), "overflows");
    st_writer_abort(w);

    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_EQ(st_writer_declare(w, "__metadata__", ENG_DT_F32, 2, shape), ENG_EINVAL);
    st_writer_abort(w);

    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_OK(st_writer_declare(w, "x", ENG_DT_F32, 2, shape));
    ASSERT_EQ(st_writer_write(w, "abcd", 4), ENG_EINVAL); /* before begin_data */
    st_writer_abort(w);

    /* too many bytes */
    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_OK(st_writer_declare(w, "x", ENG_DT_F32, 2, shape));
    ASSERT_OK(st_writer_begin_data(w));
    ASSERT_EQ(st_writer_declare(w, "late", ENG_DT_F32, 2, shape), ENG_EINVAL);
    st_writer_abort(w);
    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_OK(st_writer_declare(w, "x", ENG_DT_F32, 2, shape));
    ASSERT_OK(st_writer_begin_data(w));
    char bytes[32] = {0};
    ASSERT_EQ(st_writer_write(w, bytes, 28), ENG_EINVAL);
    ASSERT_CONTAINS(st_writer_errstr(w), "'x'");
    st_writer_abort(w);
    ASSERT_TRUE(stat(p, &st) != 0);

    /* too few bytes: finish fails naming the incomplete tensor and deletes the file */
    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_OK(st_writer_declare(w, "x", ENG_DT_F32, 2, shape));
    ASSERT_OK(st_writer_declare(w, "y", ENG_DT_U8, 1, shape));
    ASSERT_OK(st_writer_begin_data(w));
    ASSERT_OK(st_writer_write(w, bytes, 25));
    ASSERT_EQ(st_writer_finish(w), ENG_EINVAL);
    ASSERT_CONTAINS(st_writer_errstr(w), "'y' is incomplete");
    ASSERT_CONTAINS(st_writer_errstr(w), p);
    st_writer_abort(w);
    ASSERT_TRUE(stat(p, &st) != 0);

    /* a writer into a missing directory fails at open */
    char q[600];
    snprintf(q, sizeof q, "%s/none/w.safetensors", dir);
    ASSERT_EQ(st_writer_open(&w, q, &err), ENG_EIO);
    ASSERT_CONTAINS(err.msg, "none/w.safetensors");
    st_test_rmtree(dir);
}

/* Thousands of tensors and metadata keys: lookups by name find each one. */
TEST(many_tensors) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    char p[512], name[64];
    snprintf(p, sizeof p, "%s/many.safetensors", dir);
    eng_error err = {0};
    st_writer *w = NULL;
    const int n = 5000;
    const int64_t shape[1] = {3};
    ASSERT_OK(st_writer_open(&w, p, &err));
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "layer.%d.weight", (i * 7919) % n);
        ASSERT_OK(st_writer_declare(w, name, ENG_DT_I16, 1, shape));
        snprintf(name, sizeof name, "key%d", i);
        ASSERT_OK(st_writer_metadata(w, name, name + 3));
    }
    ASSERT_OK(st_writer_begin_data(w));
    for (int i = 0; i < n; i++) {
        int16_t v[3] = {(int16_t)i, (int16_t)-i, 7};
        ASSERT_OK(st_writer_write(w, v, sizeof v));
    }
    ASSERT_OK(st_writer_finish(w));
    st_file *f = NULL;
    ASSERT_OK(st_open(&f, p, &err));
    ASSERT_EQ(st_count(f), n);
    ASSERT_EQ(st_metadata_count(f), n);
    ASSERT_STREQ(st_metadata(f, "key4321"), "4321");
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "layer.%d.weight", (i * 7919) % n);
        const st_tensor *t = st_find(f, name);
        if (!t) TEST_FAIL_("%s missing", name);
        int16_t v;
        memcpy(&v, t->data, 2);
        ASSERT_EQ(v, (int16_t)i);
        ASSERT_TRUE(st_at(f, (size_t)i) == t);
    }
    st_close(f);
    st_test_rmtree(dir);
}

/* A file with no tensors at all is valid (header "{}" padded). */
TEST(writer_empty_file) {
    const char *dir = st_test_tmpdir(tmp_buf, sizeof tmp_buf);
    char p[512];
    snprintf(p, sizeof p, "%s/e.safetensors", dir);
    eng_error err = {0};
    st_writer *w = NULL;
    ASSERT_OK(st_writer_open(&w, p, &err));
    ASSERT_OK(st_writer_finish(w));
    st_file *f = NULL;
    ASSERT_OK(st_open(&f, p, &err));
    ASSERT_EQ(st_count(f), 0);
    ASSERT_EQ(st_file_size(f), 16);
    st_close(f);
    st_test_rmtree(dir);
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
