/* sample_rng.h - the counter-based RNG of the samplers, shared by the CPU and CUDA backends so
 * both draw the same numbers (the contract is spelled out in engine/models/dia.h).
 * Plain C that nvcc also compiles as device code. */
#ifndef VOXQ_ENGINE_SAMPLE_RNG_H
#define VOXQ_ENGINE_SAMPLE_RNG_H

#include <stdint.h>

#ifdef __CUDACC__
#define ENG_HOST_DEVICE __host__ __device__
#else
#define ENG_HOST_DEVICE
#endif

/* splitmix64 finaliser. */
static inline ENG_HOST_DEVICE uint64_t eng_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The uniform number of (seed, step, channel) in [0, 1): 53 random bits as a double. */
static inline ENG_HOST_DEVICE double eng_rng_uniform(uint64_t seed, int step, int channel) {
    uint64_t key = eng_mix64(seed ^ 0x9e3779b97f4a7c15ull);
    uint64_t r = eng_mix64(key + (((uint64_t)step << 8) | (uint64_t)channel));
    return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

#endif
