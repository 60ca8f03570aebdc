/* test_sha256.c - SHA-256 against the FIPS 180-4 / NIST example vectors and against coreutils'
 * sha256sum (an independent implementation) on lengths around the padding boundaries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/sha256.h"
#include "store_testutil.h"
#include "test.h"

static void hex_of(const void *data, size_t n, char hex[65]) {
    sha256_buf_hex(data, n, hex);
}

TEST(nist_short_vectors) {
    char hex[65];
    hex_of("", 0, hex);
    ASSERT_STREQ(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex_of("abc", 3, hex);
    ASSERT_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(m448, strlen(m448), hex);
    ASSERT_STREQ(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                       "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    hex_of(m896, strlen(m896), hex);
    ASSERT_STREQ(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

/* One million 'a', fed in irregular pieces so every buffering path of update() runs. */
TEST(million_a_in_pieces) {
    size_t n = 1000000;
    char *a = malloc(n);
    ASSERT_TRUE(a != NULL);
    memset(a, 'a', n);
    sha256_ctx c;
    sha256_init(&c);
    size_t done = 0, step = 1;
    while (done < n) {
        size_t take = step < n - done ? step : n - done;
        sha256_update(&c, a + done, take);
        done += take;
        step = step * 7 % 131 + 1;
    }
    uint8_t digest[32];
    char hex[65], whole[65];
    sha256_final(&c, digest);
    sha256_hex(digest, hex);
    sha256_buf_hex(a, n, whole);
    free(a);
    ASSERT_STREQ(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    ASSERT_STREQ(whole, hex);
}

/* sha256sum's digest of a file, or "" when the tool is unavailable. */
static void coreutils_sha256(const char *path, char hex[65]) {
    char cmd[512];
    hex[0] = '\0';
    snprintf(cmd, sizeof cmd, "sha256sum '%s' 2>/dev/null", path);
    FILE *p = popen(cmd, "r");
    if (!p) return;
    if (fscanf(p, "%64s", hex) != 1) hex[0] = '\0';
    pclose(p);
}

TEST(matches_sha256sum_around_padding_boundaries) {
    char dir[256], path[300];
    ASSERT_OK(tu_mkdtemp("sha", dir, sizeof dir));
    snprintf(path, sizeof path, "%s/data", dir);
    static const size_t lengths[] = {1,   2,   54,  55,  56,  57,  62,  63,   64,   65,   119,
                                     120, 127, 128, 129, 191, 192, 500, 1000, 4096, 65537};
    int failures = 0, compared = 0;
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        if (tu_write_pattern(path, lengths[i], (uint32_t)i + 7)) failures++;
        char ours[65], ref[65];
        uint64_t size = 0;
        if (sha256_file(path, ours, &size, NULL, NULL, NULL) || size != lengths[i]) failures++;
        coreutils_sha256(path, ref);
        if (strlen(ref) != 64) continue;
        compared++;
        if (strcmp(ours, ref) != 0) {
            fprintf(stderr, "  length %zu: ours %s, sha256sum %s\n", lengths[i], ours, ref);
            failures++;
        }
    }
    tu_rmtree(dir);
    ASSERT_EQ(failures, 0);
    ASSERT_EQ(compared, sizeof lengths / sizeof lengths[0]);
}

static void count_progress(void *ud, uint64_t done, uint64_t total) {
    uint64_t *calls = ud;
    calls[0]++;
    calls[1] = done;
    calls[2] = total;
}

/* A file larger than the read buffer: streamed hashing agrees with sha256sum, and progress ends
 * at done == total. */
TEST(file_streaming_and_progress) {
    char dir[256], path[300];
    ASSERT_OK(tu_mkdtemp("sha", dir, sizeof dir));
    snprintf(path, sizeof path, "%s/big", dir);
    size_t n = (3u << 20) + 12345;
    ASSERT_OK(tu_write_pattern(path, n, 99));
    char ours[65], ref[65];
    uint64_t calls[3] = {0, 0, 0};
    ASSERT_OK(sha256_file(path, ours, NULL, count_progress, calls, NULL));
    coreutils_sha256(path, ref);
    tu_rmtree(dir);
    ASSERT_STREQ(ours, ref);
    ASSERT_TRUE(calls[0] >= 1);
    ASSERT_EQ(calls[1], n);
    ASSERT_EQ(calls[2], n);
}

TEST(missing_file_names_the_path) {
    eng_error err = {0};
    char hex[65];
    ASSERT_EQ(sha256_file("/nonexistent/voxq/x.bin", hex, NULL, NULL, NULL, &err), ENG_EIO);
    ASSERT_CONTAINS(err.msg, "/nonexistent/voxq/x.bin");
}

/* The SHA-instruction path and the portable one agree on every length 0..300 and on long
 * inputs fed in odd pieces (when the CPU has no SHA instructions both runs are portable, and
 * the NIST and sha256sum cases above cover it). */
TEST(accelerated_and_portable_paths_agree) {
    size_t n = (1u << 20) + 333;
    unsigned char *data = malloc(n);
    ASSERT_TRUE(data != NULL);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        data[i] = (unsigned char)(x >> 24);
    }
    int mismatches = 0;
    for (size_t len = 0; len <= 300; len++) {
        char portable[65], fast[65];
        sha256_use_accel(0);
        sha256_buf_hex(data, len, portable);
        sha256_use_accel(1);
        sha256_buf_hex(data, len, fast);
        mismatches += strcmp(portable, fast) != 0;
    }
    char portable[65], fast[65];
    sha256_use_accel(0);
    sha256_buf_hex(data, n, portable);
    int accel = sha256_use_accel(1);
    sha256_ctx c;
    sha256_init(&c);
    for (size_t done = 0, step = 1; done < n; step = step * 3 % 1000 + 1) {
        size_t take = step < n - done ? step : n - done;
        sha256_update(&c, data + done, take);
        done += take;
    }
    uint8_t digest[32];
    sha256_final(&c, digest);
    sha256_hex(digest, fast);
    free(data);
    fprintf(stderr, "  SHA instructions %s\n", accel ? "in use" : "not available");
    ASSERT_EQ(mismatches, 0);
    ASSERT_STREQ(portable, fast);
}

TEST(nist_vectors_portable_path) {
    sha256_use_accel(0);
    char hex[65];
    sha256_buf_hex("abc", 3, hex);
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                       "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    char hex896[65];
    sha256_buf_hex(m896, strlen(m896), hex896);
    sha256_use_accel(1);
    ASSERT_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ASSERT_STREQ(hex896, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

int main(int argc, char **argv) {
    return test_main(argc, argv);
}
