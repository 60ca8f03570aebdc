/* sha256_accel.h - the hardware SHA-256 path used by ops/sha256.c; private to ops/. */
#ifndef VOXQ_OPS_SHA256_ACCEL_H
#define VOXQ_OPS_SHA256_ACCEL_H

#include <stddef.h>
#include <stdint.h>

/* 1 when this CPU has the x86 SHA extensions (plus SSSE3 and SSE4.1), else 0. */
int sha256_x86_available(void);

/* Compresses nblocks consecutive 64-byte blocks into state with the SHA instructions; k is the
 * table of 64 round constants. Only call when sha256_x86_available(). */
void sha256_x86_blocks(uint32_t state[8], const uint8_t *data, size_t nblocks,
                       const uint32_t k[64]);

#endif
