/* weights.h - linear weights and plain tensors read from a checkpoint, as host views.
 *
 * Quantized checkpoints (written by engine/quant) keep each quantized weight under its original
 * name with a companion "<name>_scale" tensor (layout in docs/FORMAT.md):
 *   int8: <name> I8 [out, in],            <name>_scale F32 [out]
 *   int4: <name> U8 [out, ceil(in / 2)],  <name>_scale F32 [out, ceil(in / group)]
 * with the group size in the file's __metadata__ "voxq.group_size". */
#ifndef VOXQ_ENGINE_WEIGHTS_H
#define VOXQ_ENGINE_WEIGHTS_H

#include "engine/error.h"
#include "engine/safetensors.h"
#include "engine/tensor.h"

/* Reads linear weight `name`, which must be [out, in] (or the quantized equivalent), into a host
 * eng_weight that points into the checkpoint's mapping. F16 is converted to an F32 copy, which is
 * returned in *owned (free() it after the weight is no longer used; NULL otherwise).
 * A shape that disagrees names the tensor and both shapes. */
int eng_weight_read(const st_model *m, const char *name, int64_t out, int64_t in, eng_weight *w,
                    void **owned, eng_error *err);

/* Reads a non-linear tensor (norm weight, embedding table, conv kernel, bias) of exactly the
 * given shape as F32 or BF16 host view (F32 when want_f32, converting into *owned as needed).
 * Any element count mismatch names the tensor and both shapes. */
int eng_tensor_read(const st_model *m, const char *name, int ndim, const int64_t *shape,
                    int want_f32, eng_tensor *t, void **owned, eng_error *err);

/* Formats a shape as "[a,b,c]" into buf. */
const char *eng_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);

#endif
