/* quant_fixture.h - checkpoints for the quantizer tests, written with the real st_writer.
 *
 * qf_write_dia() writes model.safetensors with Dia's tensor names and structure (spec dia.md
 * 2.1: encoder/decoder layers with q/k/v/o, gate_up/down, norms, the decoder embedding and the
 * output head) at chosen sizes, random weights (linear ~ N(0, 1) / sqrt(in), norms 1 +- 0.2). */
#ifndef VOXQ_TESTS_QUANT_FIXTURE_H
#define VOXQ_TESTS_QUANT_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/dtype.h"

typedef struct qf_dia_dims {
    int hidden;        /* encoder and decoder hidden size */
    int intermediate;  /* MLP width (gate_up has 2x rows) */
    int kv_dim;        /* decoder self-attention k/v rows */
    int enc_layers;
    int dec_layers;
    int vocab_rows;    /* rows of the decoder embedding and of logits_dense (9 x 1028 in Dia) */
} qf_dia_dims;

/* Writes dir/model.safetensors (dir must exist). 0 on success. */
int qf_write_dia(const char *dir, const qf_dia_dims *dims, eng_dtype dtype, uint64_t seed);

/* A deterministic N(0, 1) stream. */
typedef struct qf_rng {
    uint64_t s;
    int have;
    double spare;
} qf_rng;
double qf_normal(qf_rng *r);

/* Makes a fresh temporary directory under $TMPDIR (or /tmp) into buf; 0 on success. */
int qf_tempdir(char *buf, size_t n, const char *tag);
/* rm -rf of a directory tree made by a test. */
void qf_rmtree(const char *path);
/* Reads a whole file into a malloc()ed buffer; NULL on failure. */
void *qf_read_file(const char *path, size_t *size);

#endif
