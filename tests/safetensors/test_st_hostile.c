/* test_st_hostile.c - malformed and hostile safetensors files. Each must fail with ENG_EFORMAT
 * (or the stated code) and a message naming the file and, where there is one, the tensor; none
 * may crash or read out of bounds (run under ASan to see the latter). */
#include <sys/stat.h>

#include "engine/safetensors.h"
#include "st_util.h"
#include "test.h"

static char dir_buf[256];
static const char *dir;
static char path[512];

/* Opens `path` expecting failure with `code`; the message must name the file and `needle`. */
static int expect_fail(int code, const char *needle) {
    st_file *f = NULL;
    eng_error err = {0};
    int rc = st_open(&f, path, &err);
    fprintf(stderr, "  -> %s\n", err.msg);
    if (rc != code || f != NULL || !strstr(err.msg, "h.safetensors") ||
        (needle && !strstr(err.msg, needle))) {
        fprintf(stderr, "  expected code %d and \"%s\", got %d\n", code, needle ? needle : "", rc);
        st_close(f);
        return 1;
    }
    return 0;
}

/* A file with header text `h` and `data` payload bytes must fail naming `needle`. */
static int hostile(const char *h, size_t data, const char *needle) {
    if (st_test_write_raw(path, h, 0, data) != 0) return 1;
    return expect_fail(ENG_EFORMAT, needle);
}

/* A file with header `h` must open. */
static int benign(const char *h, size_t data, size_t count) {
    if (st_test_write_raw(path, h, 0, data) != 0) return 1;
    st_file *f = NULL;
    eng_error err = {0};
    int rc = st_open(&f, path, &err);
    if (rc) fprintf(stderr, "  unexpected: %s\n", err.msg);
    int bad = rc != 0 || st_count(f) != count;
    st_close(f);
    return bad;
}

#define HOSTILE(h, data, needle) ASSERT_OK(hostile((h), (data), (needle)))
#define BENIGN(h, data, count) ASSERT_OK(benign((h), (data), (count)))

TEST(empty_file) {
    ASSERT_OK(st_test_write_file(path, "", 0));
    ASSERT_OK(expect_fail(ENG_EFORMAT, "too small"));
}

TEST(shorter_than_length) {
    ASSERT_OK(st_test_write_file(path, "\x05\x00\x00", 3));
    ASSERT_OK(expect_fail(ENG_EFORMAT, "3 bytes"));
}

TEST(huge_header_length) {
    ASSERT_OK(st_test_write_raw(path, "{}", 0xffffffffffffffffull, 0));
    ASSERT_OK(expect_fail(ENG_EFORMAT, "limit"));
    ASSERT_OK(st_test_write_raw(path, "{}", (uint64_t)ST_MAX_HEADER_BYTES + 1, 0));
    ASSERT_OK(expect_fail(ENG_EFORMAT, "limit"));
}

TEST(header_length_beyond_file) {
    ASSERT_OK(st_test_write_raw(path, "{}", 1000, 16));
    ASSERT_OK(expect_fail(ENG_EFORMAT, "exceeds the file"));
    ASSERT_OK(st_test_write_raw(path, "{}", 0, 0)); /* exact fit is fine */
    st_file *f = NULL;
    eng_error err = {0};
    ASSERT_OK(st_open(&f, path, &err));
    st_close(f);
}

TEST(broken_json) {
    HOSTILE("{\"a\": {\"dtype\": \"F32\", ", 0, "not valid JSON");
    HOSTILE("not json at all", 0, "not valid JSON");
    HOSTILE("{\"a\" 1}", 0, "not valid JSON");
}

TEST(deeply_nested_json) {
    char h[5000];
    memset(h, '[', 4000);
    h[4000] = '\0';
    HOSTILE(h, 0, "not valid JSON");
}

TEST(not_an_object) {
    HOSTILE("[1, 2, 3]", 0, "not a JSON object");
    HOSTILE("\"string\"", 0, "not a JSON object");
}

TEST(trailing_bytes) {
    HOSTILE("{} x", 0, "trailing bytes");
    HOSTILE("{}{}", 0, "trailing bytes");
}

TEST(trailing_spaces_allowed) {
    BENIGN("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}      ", 2, 1);
    BENIGN("{}\n\t ", 0, 0);
}

TEST(nul_in_header) {
    /* A NUL byte inside the claimed header: the JSON ends early, the rest is garbage. */
    const char h[] = "{}\0garbage";
    unsigned char buf[8 + sizeof h];
    uint64_t n = sizeof h - 1;
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, h, sizeof h - 1);
    ASSERT_OK(st_test_write_file(path, buf, 8 + (size_t)n));
    ASSERT_OK(expect_fail(ENG_EFORMAT, "trailing"));
}

TEST(unknown_dtype) {
    HOSTILE("{\"w\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "'w'");
    HOSTILE("{\"w\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
            "unknown dtype 'f32'");
    HOSTILE("{\"w\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w'");
}

TEST(bad_shape) {
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":5,\"data_offsets\":[0,8]}}", 8,
            "tensor 'w': shape is not an array");
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8,
            "tensor 'w': shape[0]");
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
            "tensor 'w': shape[0]");
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}", 8,
            "tensor 'w': shape[1]");
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,8]}}", 8,
            "tensor 'w': shape[0]");
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,8]}}", 8, "'w'");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
            "more than 8 dimensions");
}

TEST(shape_overflow) {
    /* 2^40 * 2^40 elements: prod(shape) overflows 64 bits */
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],"
            "\"data_offsets\":[0,8]}}",
            8, "'w': shape's byte count overflows");
    /* 2^62 elements of 4 bytes: the byte count overflows */
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
            "\"data_offsets\":[0,8]}}",
            8, "'w'");
}

TEST(bad_data_offsets) {
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,1,2]}}", 2,
            "'w': data_offsets is not an array of two");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0]}}", 2, "'w'");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":{\"a\":0,\"b\":2}}}", 2,
            "'w'");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-1,1]}}", 2, "'w'");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0.5,2.5]}}", 2, "'w'");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,0]}}", 2,
            "'w': data_offsets [2,0] end before begin");
}

TEST(dtype_shape_mismatch) {
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 16,
            "tensor 'w': F32 shape needs 16 bytes, data_offsets [0,8] hold 8");
    HOSTILE("{\"w\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16, "'w'");
}

TEST(offsets_out_of_range) {
    HOSTILE("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
            "tensor 'w': data_offsets [0,16] beyond the 8-byte data section");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9007199254740990,"
            "9007199254740991]}}",
            8, "'w'");
}

TEST(truncated_data) {
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}";
    BENIGN(h, 32, 2);
    HOSTILE(h, 31, "tensor 'b'");
    HOSTILE(h, 31, "truncated");
}

TEST(overlapping_tensors) {
    HOSTILE("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}",
            12, "tensor 'b' [4,12] overlaps tensor 'a' [0,8]");
    HOSTILE("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
            8, "overlaps");
    /* zero-byte tensors overlap nothing */
    BENIGN("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
           "\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]}}",
           8, 2);
}

TEST(duplicate_names) {
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
            "\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}",
            4, "tensor 'w' appears twice");
    HOSTILE("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
            "'w': field 'dtype' appears twice");
    HOSTILE("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "'k' appears twice");
}

TEST(bad_fields) {
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[2]}}", 2, "'w': missing field 'data_offsets'");
    HOSTILE("{\"w\":{\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "missing field 'dtype'");
    HOSTILE("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":1}}", 2,
            "'w': unknown field 'x'");
    HOSTILE("{\"w\":[1,2]}", 0, "tensor 'w': entry is not a JSON object");
    HOSTILE("{\"\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "empty name");
    HOSTILE("{\"__metadata__\":{\"k\":1}}", 0, "'k' is not a string");
    HOSTILE("{\"__metadata__\":[\"k\"]}", 0, "__metadata__ is not a JSON object");
}

TEST(zero_element_and_scalar) {
    BENIGN("{\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
           "\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}",
           8, 2);
    BENIGN("{\"e\":{\"dtype\":\"F32\",\"shape\":[3,0,5],\"data_offsets\":[0,0]}}", 0, 1);
}

TEST(not_a_regular_file) {
    char d[600];
    snprintf(d, sizeof d, "%s/h.safetensors.d", dir);
    ASSERT_OK(mkdir(d, 0755));
    st_file *f = NULL;
    eng_error err = {0};
    ASSERT_EQ(st_open(&f, d, &err), ENG_EFORMAT);
    ASSERT_CONTAINS(err.msg, "not a regular file");
    snprintf(d, sizeof d, "%s/absent.safetensors", dir);
    ASSERT_EQ(st_open(&f, d, &err), ENG_ENOTFOUND);
    ASSERT_CONTAINS(err.msg, "absent.safetensors");
}

/* In-memory images get the same checks, including one only 3 bytes long. */
TEST(memory_images) {
    st_file *f = NULL;
    eng_error err = {0};
    ASSERT_EQ(st_open_memory(&f, "abc", 3, "h.safetensors", &err), ENG_EFORMAT);
    unsigned char buf[64] = {40};
    ASSERT_EQ(st_open_memory(&f, buf, sizeof buf, "h.safetensors", &err), ENG_EFORMAT);
    ASSERT_TRUE(f == NULL);
}

int main(int argc, char **argv) {
    dir = st_test_tmpdir(dir_buf, sizeof dir_buf);
    if (!dir) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/h.safetensors", dir);
    int rc = test_main(argc, argv);
    st_test_rmtree(dir);
    return rc;
}
