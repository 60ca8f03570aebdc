/* bench_wav.c - the benchmark's audio files: 16-bit PCM mono WAV, written without libsndfile so
 * the ops library needs no audio dependency. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/bench.h"

/* Little-endian stores into a byte buffer. */
static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}
static void put_u16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

int bench_write_wav(const char *path, const float *pcm, int64_t n, int sample_rate,
                    eng_error *err) {
    if (n < 0 || n > (int64_t)(0x7fffffff - 44) / 2 || sample_rate < 1)
        return eng_errorf(err, ENG_EINVAL, "%s: %lld samples at %d Hz cannot be a WAV file", path,
                          (long long)n, sample_rate);
    unsigned char h[44];
    uint32_t data = (uint32_t)n * 2;
    memcpy(h, "RIFF", 4);
    put_u32(h + 4, 36 + data);
    memcpy(h + 8, "WAVEfmt ", 8);
    put_u32(h + 16, 16); /* fmt chunk size */
    put_u16(h + 20, 1);  /* PCM */
    put_u16(h + 22, 1);  /* mono */
    put_u32(h + 24, (uint32_t)sample_rate);
    put_u32(h + 28, (uint32_t)sample_rate * 2); /* bytes per second */
    put_u16(h + 32, 2);                         /* block align */
    put_u16(h + 34, 16);                        /* bits per sample */
    memcpy(h + 36, "data", 4);
    put_u32(h + 40, data);
    FILE *f = fopen(path, "wb");
    if (!f) return eng_errorf(err, ENG_EIO, "%s: %s", path, strerror(errno));
    int ok = fwrite(h, 1, sizeof h, f) == sizeof h;
    unsigned char buf[4096];
    for (int64_t i = 0; ok && i < n;) {
        int k = 0;
        for (; k < (int)sizeof buf / 2 && i < n; k++, i++) {
            float x = pcm[i];
            x = x > 1.0f ? 1.0f : (x < -1.0f ? -1.0f : x);
            if (x != x) x = 0.0f; /* NaN */
            int16_t s = (int16_t)(x * 32767.0f);
            put_u16(buf + 2 * k, (uint16_t)s);
        }
        ok = fwrite(buf, 2, (size_t)k, f) == (size_t)k;
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        remove(path);
        return eng_errorf(err, ENG_EIO, "%s: write failed: %s", path, strerror(errno));
    }
    return 0;
}
