/* safetensors.h - read (mmap, validated) and write (streamed) safetensors checkpoints.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
 * then the data; offsets are relative to the first byte after the JSON.
 *
 * The reader validates everything before any tensor byte is trusted: header length bound, well-
 * formed JSON, known dtype, prod(shape) * dtype size == end - begin, offsets inside the file, no
 * overlaps, unique names. Every violation is an ENG_EFORMAT error naming the file and tensor.
 * Sharded checkpoints are opened through model.safetensors.index.json as one st_model. */
#ifndef VOXQ_ENGINE_SAFETENSORS_H
#define VOXQ_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/dtype.h"
#include "engine/error.h"

#define ST_MAX_DIMS 8
/* Largest header the reader accepts (the format's own limit is 100 MB). */
#define ST_MAX_HEADER_BYTES (100u * 1024u * 1024u)

typedef struct st_tensor {
    const char *name;        /* owned by the file */
    eng_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset;         /* absolute offset of the first byte in the file */
    const void *data;        /* points into the mapping: valid while the file is open */
    const char *file;        /* path of the file that holds it (owned by the file) */
} st_tensor;

typedef struct st_file st_file;

/* Opens and validates one .safetensors file, mapping it read-only. */
int st_open(st_file **out, const char *path, eng_error *err);
void st_close(st_file *f);
size_t st_count(const st_file *f);
/* Tensors in file order (sorted by data offset). */
const st_tensor *st_at(const st_file *f, size_t i);
/* Case-sensitive lookup; NULL when absent. */
const st_tensor *st_find(const st_file *f, const char *name);
/* A __metadata__ value; NULL when absent. */
const char *st_metadata(const st_file *f, const char *key);
const char *st_path(const st_file *f);
uint64_t st_file_size(const st_file *f);
/* The __metadata__ entries in header order, for tools that copy them (i < count). */
size_t st_metadata_count(const st_file *f);
const char *st_metadata_key(const st_file *f, size_t i);
/* Validates a safetensors image already in memory (tests, fuzzing); `name` stands for the path
 * in messages. Tensors point into `data`, which must outlive the st_file; st_close() frees only
 * what the reader allocated. */
int st_open_memory(st_file **out, const void *data, size_t size, const char *name,
                   eng_error *err);

/* A checkpoint: one model.safetensors or the shards an index names, seen as one set of tensors. */
typedef struct st_model st_model;

/* dir holds model.safetensors or model.safetensors.index.json (+ shards). A path to a single
 * .safetensors file is accepted too. Each shard named by the index is validated, and every
 * tensor the index names must be in the shard it names. */
int st_model_open(st_model **out, const char *path, eng_error *err);
void st_model_close(st_model *m);
size_t st_model_count(const st_model *m);
const st_tensor *st_model_at(const st_model *m, size_t i);
const st_tensor *st_model_find(const st_model *m, const char *name);
/* Metadata of the first file that has the key. */
const char *st_model_metadata(const st_model *m, const char *key);
size_t st_model_nfiles(const st_model *m);
const st_file *st_model_file(const st_model *m, size_t i);

/* Streams a safetensors file: declare every tensor first (name, dtype, shape), then write each
 * tensor's bytes in declaration order, in as many pieces as convenient. The header is written at
 * st_writer_begin_data(); data is aligned to 8 bytes in the file; st_writer_finish() checks that
 * every byte arrived, fsyncs and closes. Nothing of the checkpoint is held in memory.
 * Layout: the header is padded with spaces so the data section starts 8-byte aligned, and tensors
 * follow one another with no gaps (the reference implementation rejects gaps), so a tensor is
 * 8-byte aligned when the sizes of the tensors before it are multiples of 8. */
typedef struct st_writer st_writer;

int st_writer_open(st_writer **out, const char *path, eng_error *err);
int st_writer_metadata(st_writer *w, const char *key, const char *value);
int st_writer_declare(st_writer *w, const char *name, eng_dtype dtype, int ndim,
                      const int64_t *shape);
int st_writer_begin_data(st_writer *w);
int st_writer_write(st_writer *w, const void *bytes, size_t n);
/* Success frees the writer. On failure the file is closed and deleted, and the writer stays
 * for st_writer_errstr(); free it with st_writer_abort(). */
int st_writer_finish(st_writer *w);
/* Closes and deletes a file that was not finished (error paths) and frees the writer; NULL is a
 * no-op. After a failed call the writer accepts nothing more: abort it. */
void st_writer_abort(st_writer *w);
/* The writer's last error message. */
const char *st_writer_errstr(const st_writer *w);

#endif
