/* sha256.c - SHA-256 as specified in FIPS 180-4, plus streaming file hashing. */
#include "ops/sha256.h"

#include "ops/sha256_accel.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* First 32 bits of the fractional parts of the cube roots of the first 64 primes (§4.2.2). */
static const uint32_t round_constants[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t rotr(uint32_t x, int n) {
    return (x >> n) | (x << (32 - n));
}

static inline uint32_t load_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Compresses one 64-byte block into the state (§6.2.2). */
static void compress(uint32_t state[8], const uint8_t block[64]) {
    uint32_t schedule[64]; /* message schedule W[0..63] */
    for (int t = 0; t < 16; t++)
        schedule[t] = load_be32(block + 4 * t);
    for (int t = 16; t < 64; t++) {
        uint32_t w15 = schedule[t - 15], w2 = schedule[t - 2];
        uint32_t sigma0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3);
        uint32_t sigma1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10);
        schedule[t] = schedule[t - 16] + sigma0 + schedule[t - 7] + sigma1;
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int t = 0; t < 64; t++) {
        uint32_t sum1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        uint32_t choose = (e & f) ^ (~e & g);
        uint32_t temp1 = h + sum1 + choose + round_constants[t] + schedule[t];
        uint32_t sum0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
        uint32_t temp2 = sum0 + majority;
        h = g;
        g = f;
        f = e;
        e = d + temp1;
        d = c;
        c = b;
        b = a;
        a = temp1 + temp2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

/* Sets the initial hash value H(0) (§5.3.3). */
void sha256_init(sha256_ctx *c) {
    static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->state, initial, sizeof initial);
    c->nbytes = 0;
    c->nblock = 0;
}

/* Which compression runs: -1 not decided yet, 0 portable, 1 SHA instructions. Deciding twice
 * from two threads gives the same answer, so the race on first use is benign. */
static volatile int accel_mode = -1;

int sha256_use_accel(int enable) {
    accel_mode = enable && sha256_x86_available();
    return accel_mode;
}

/* Compresses nblocks whole blocks with the fastest implementation this CPU has. */
static void compress_blocks(uint32_t state[8], const uint8_t *data, size_t nblocks) {
    if (accel_mode < 0) accel_mode = sha256_x86_available();
    if (accel_mode) {
        sha256_x86_blocks(state, data, nblocks, round_constants);
        return;
    }
    for (; nblocks > 0; nblocks--, data += 64)
        compress(state, data);
}

/* Buffers input into whole blocks; full blocks of the input are compressed in place. */
void sha256_update(sha256_ctx *c, const void *data, size_t n) {
    const uint8_t *p = data;
    c->nbytes += n;
    if (c->nblock > 0) {
        size_t take = 64 - c->nblock < n ? 64 - c->nblock : n;
        memcpy(c->block + c->nblock, p, take);
        c->nblock += take;
        p += take;
        n -= take;
        if (c->nblock < 64) return;
        compress_blocks(c->state, c->block, 1);
        c->nblock = 0;
    }
    size_t whole = n / 64;
    compress_blocks(c->state, p, whole);
    p += 64 * whole;
    n -= 64 * whole;
    memcpy(c->block, p, n);
    c->nblock = n;
}

/* Pads with 0x80, zeros and the 64-bit big-endian bit length (§5.1.1), then emits H(N). */
void sha256_final(sha256_ctx *c, uint8_t digest[SHA256_DIGEST_BYTES]) {
    uint64_t bits = c->nbytes * 8;
    c->block[c->nblock++] = 0x80;
    if (c->nblock > 56) {
        memset(c->block + c->nblock, 0, 64 - c->nblock);
        compress_blocks(c->state, c->block, 1);
        c->nblock = 0;
    }
    memset(c->block + c->nblock, 0, 56 - c->nblock);
    for (int i = 0; i < 8; i++)
        c->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    compress_blocks(c->state, c->block, 1);
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (uint8_t)(c->state[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(c->state[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(c->state[i] >> 8);
        digest[4 * i + 3] = (uint8_t)c->state[i];
    }
}

void sha256_hex(const uint8_t digest[SHA256_DIGEST_BYTES], char hex[SHA256_HEX_BYTES]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < SHA256_DIGEST_BYTES; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = '\0';
}

void sha256_buf_hex(const void *data, size_t n, char hex[SHA256_HEX_BYTES]) {
    sha256_ctx c;
    uint8_t digest[SHA256_DIGEST_BYTES];
    sha256_init(&c);
    sha256_update(&c, data, n);
    sha256_final(&c, digest);
    sha256_hex(digest, hex);
}

/* Reads in 1 MiB pieces so a 5 GB checkpoint costs 1 MiB of memory; reports progress every
 * 64 MiB. Short reads and EINTR are retried; the size is what was read, not what stat said. */
int sha256_fd(int fd, const char *label, char hex[SHA256_HEX_BYTES], uint64_t *size,
              sha256_progress_fn progress, void *ud, eng_error *err) {
    enum { CHUNK = 1 << 20, REPORT_EVERY = 64 << 20 };
    struct stat sb;
    uint64_t total = fstat(fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    uint8_t *buf = malloc(CHUNK);
    if (!buf) return eng_errorf(err, ENG_ENOMEM, "%s: no memory for the read buffer", label);
    sha256_ctx c;
    sha256_init(&c);
    uint64_t done = 0, next_report = REPORT_EVERY;
    int rc = 0;
    for (;;) {
        ssize_t got = read(fd, buf, CHUNK);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            rc = eng_errorf(err, ENG_EIO, "%s: read at byte %llu: %s", label,
                            (unsigned long long)done, strerror(errno));
            break;
        }
        if (got == 0) break;
        sha256_update(&c, buf, (size_t)got);
        done += (uint64_t)got;
        if (progress && done >= next_report) {
            progress(ud, done, total > done ? total : done);
            next_report = done + REPORT_EVERY;
        }
    }
    free(buf);
    if (rc) return rc;
    uint8_t digest[SHA256_DIGEST_BYTES];
    sha256_final(&c, digest);
    sha256_hex(digest, hex);
    if (size) *size = done;
    if (progress) progress(ud, done, done);
    return 0;
}

int sha256_file(const char *path, char hex[SHA256_HEX_BYTES], uint64_t *size,
                sha256_progress_fn progress, void *ud, eng_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return eng_errorf(err, ENG_EIO, "%s: open: %s", path, strerror(errno));
    int rc = sha256_fd(fd, path, hex, size, progress, ud, err);
    close(fd);
    return rc;
}
