/* sha256_x86.c - SHA-256 block compression with the x86 SHA extensions (SHA-NI), about ten
 * times the portable code: hashing a 5 GB checkpoint at publish or verify time is then bound by
 * the disk, not the CPU. Selected at run time by ops/sha256.c; other CPUs use the portable
 * compression there. */
#include "ops/sha256_accel.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>

int sha256_x86_available(void) {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    int ssse3 = (ecx >> 9) & 1, sse41 = (ecx >> 19) & 1;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    int sha = (ebx >> 29) & 1;
    return ssse3 && sse41 && sha;
}

/* The instructions work on the state split as ABEF and CDGH (a in the high lane) and on four
 * message words at a time, W[t..t+3], each group of four rounds being two SHA256RNDS2.
 * Message schedule for t >= 16, four words at once:
 *   W[t..t+3] = msg2(msg1(W[t-16..t-13], W[t-12..t-9]) + W[t-7..t-4], W[t-4..t-1])
 * where msg1 adds sigma0 of the following word and msg2 adds sigma1 of the word two back. */
__attribute__((target("sha,sse4.1,ssse3"))) void
sha256_x86_blocks(uint32_t state[8], const uint8_t *data, size_t nblocks, const uint32_t k[64]) {
    /* Big-endian words of the block into lanes. */
    const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i dcba = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&state[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    for (; nblocks > 0; nblocks--, data += 64) {
        __m128i abef_in = abef, cdgh_in = cdgh;
        __m128i w[4]; /* W[4i..4i+3] for the last four groups, indexed i mod 4 */
        for (int i = 0; i < 16; i++) {
            __m128i words;
            if (i < 4) {
                words =
                    _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * i)), byteswap);
            } else {
                __m128i t = _mm_sha256msg1_epu32(w[(i - 4) & 3], w[(i - 3) & 3]);
                t = _mm_add_epi32(t, _mm_alignr_epi8(w[(i - 1) & 3], w[(i - 2) & 3], 4));
                words = _mm_sha256msg2_epu32(t, w[(i - 1) & 3]);
            }
            w[i & 3] = words;
            __m128i msg = _mm_add_epi32(words, _mm_loadu_si128((const __m128i *)&k[4 * i]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, msg);
            msg = _mm_shuffle_epi32(msg, 0x0E);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, msg);
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    dcba = _mm_blend_epi16(feba, dchg, 0xF0);
    hgfe = _mm_alignr_epi8(dchg, feba, 8);
    _mm_storeu_si128((__m128i *)&state[0], dcba);
    _mm_storeu_si128((__m128i *)&state[4], hgfe);
}

#else

int sha256_x86_available(void) {
    return 0;
}

void sha256_x86_blocks(uint32_t state[8], const uint8_t *data, size_t nblocks,
                       const uint32_t k[64]) {
    (void)state;
    (void)data;
    (void)nblocks;
    (void)k;
}

#endif
