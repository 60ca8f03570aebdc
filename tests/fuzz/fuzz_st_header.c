/* fuzz_st_header.c - libFuzzer target for the safetensors reader's validation.
 *
 * Input byte 0 picks the mode: odd - the rest is a header and gets a length prefix and a 64-byte
 * data section (so the fuzzer explores the JSON checks); even - the whole input is the file. The
 * image is a malloc'd copy of exactly its size, so any read past it is an ASan report. An image
 * that validates must be fully self-consistent: every tensor lies inside the image, lookup by
 * name finds it, and every byte of its data is readable. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

static void check(const st_file *f, const unsigned char *image, size_t size) {
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        const unsigned char *p = t->data;
        if (p < image || t->offset + t->nbytes > size || st_find(f, t->name) != t) abort();
        for (uint64_t k = 0; k < t->nbytes; k++)
            sink ^= p[k];
    }
    for (size_t i = 0; i < st_metadata_count(f); i++)
        if (!st_metadata(f, st_metadata_key(f, i))) abort();
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    unsigned char *image;
    size_t n;
    if (data[0] & 1) {
        uint64_t header = size - 1;
        n = 8 + header + 64;
        image = malloc(n);
        if (!image) return 0;
        for (int i = 0; i < 8; i++)
            image[i] = (unsigned char)(header >> (8 * i));
        memcpy(image + 8, data + 1, header);
        memset(image + 8 + header, 0xa5, 64);
    } else {
        n = size;
        image = malloc(n);
        if (!image) return 0;
        memcpy(image, data, n);
    }
    st_file *f = NULL;
    eng_error err = {0};
    if (st_open_memory(&f, image, n, "fuzz.safetensors", &err) == 0) {
        check(f, image, n);
        st_close(f);
    } else if (err.msg[0] == '\0' || err.code >= 0) {
        abort(); /* every failure must say what went wrong */
    }
    free(image);
    return 0;
}
