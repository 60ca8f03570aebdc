/* gen_dia_random.c - voxq-gen-random: writes a random Dia-shaped checkpoint.
 *
 *   voxq-gen-random [--dtype f32|bf16|f16] [--seed N] [--tiny] OUTDIR
 *
 * OUTDIR gets config.json (DiaConfig defaults, or the spec §9.1 tiny sizes with --tiny) and
 * model.safetensors with all 335 (tiny: 47) tensors, streamed tensor by tensor: memory use stays
 * at a few hundred kilobytes whatever the size (full size: 1.61e9 parameters, 6.4 GB in f32).
 * Values come from a counter-based generator (tests/common/tiny_ckpt.h), so the same seed gives
 * the same file. Exit codes: 0 success, 1 failure, 2 bad usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tiny_ckpt.h"

static void usage(FILE *fp) {
    fprintf(fp, "usage: voxq-gen-random [--dtype f32|bf16|f16] [--seed N] [--tiny] OUTDIR\n"
                "Writes OUTDIR/config.json and OUTDIR/model.safetensors: a random Dia-1.6B-shaped\n"
                "checkpoint (335 tensors, 1.61e9 parameters), or the tiny test config with "
                "--tiny.\n");
}

int main(int argc, char **argv) {
    eng_dtype dtype = ENG_DT_F32;
    uint64_t seed = 1;
    int tiny = 0;
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--tiny") == 0) {
            tiny = 1;
        } else if (strcmp(a, "--dtype") == 0 && i + 1 < argc) {
            const char *d = argv[++i];
            if (strcmp(d, "f32") == 0)
                dtype = ENG_DT_F32;
            else if (strcmp(d, "bf16") == 0)
                dtype = ENG_DT_BF16;
            else if (strcmp(d, "f16") == 0)
                dtype = ENG_DT_F16;
            else {
                fprintf(stderr, "voxq-gen-random: unknown dtype '%s'\n", d);
                return 2;
            }
        } else if (strcmp(a, "--seed") == 0 && i + 1 < argc) {
            char *end = NULL;
            errno = 0;
            seed = strtoull(argv[++i], &end, 0);
            if (errno || !end || *end || argv[i][0] == '-') {
                fprintf(stderr, "voxq-gen-random: bad seed '%s'\n", argv[i]);
                return 2;
            }
        } else if (a[0] == '-' || dir) {
            usage(stderr);
            return 2;
        } else {
            dir = a;
        }
    }
    if (!dir) {
        usage(stderr);
        return 2;
    }
    const tiny_dia_config *cfg = tiny ? &tiny_dia_tiny : &tiny_dia_full;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    eng_error err = {0};
    int rc = tiny_dia_write_config(dir, cfg, seed, dtype, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc != 0) {
        fprintf(stderr, "voxq-gen-random: %s\n", err.msg);
        return 1;
    }
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    fprintf(stderr, "voxq-gen-random: wrote %s (%d tensors, %s, seed %llu) in %.1f s\n", dir,
            tiny_dia_tensor_count(cfg), eng_dtype_name(dtype), (unsigned long long)seed, secs);
    return 0;
}
