/* weights.c - linear weights and plain tensors read out of a validated checkpoint.
 *
 * Everything is a host view into the checkpoint's mapping where the bytes can be used as they
 * are (F32, BF16, I8, packed int4 and their F32 scales). A copy is made only to convert (F16 to
 * F32, BF16 to F32 on request) or when a tensor is not aligned to its element size in the file
 * (possible in a valid file after a tensor of odd byte size), since the ops read typed
 * pointers. The copy goes to *owned for the caller to free(). */
#include "engine/weights.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_GROUP_SIZE 128

const char *eng_shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t at = 0;
    if (n == 0) return buf;
    buf[0] = '\0';
    at += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && at < n; i++)
        at += (size_t)snprintf(buf + at, n - at, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (at < n) snprintf(buf + at, n - at, "]");
    return buf;
}

static int shapes_equal(int na, const int64_t *a, int nb, const int64_t *b) {
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* Equal once dimensions of size 1 are dropped: [1,96,1] reads as [96]. */
static int shapes_match_squeezed(int na, const int64_t *a, int nb, const int64_t *b) {
    int i = 0, j = 0;
    for (;;) {
        while (i < na && a[i] == 1)
            i++;
        while (j < nb && b[j] == 1)
            j++;
        if (i == na || j == nb) return i == na && j == nb;
        if (a[i++] != b[j++]) return 0;
    }
}

static int shape_error(const st_tensor *t, int ndim, const int64_t *want, eng_error *err) {
    char a[96], b[96];
    return eng_errorf(err, ENG_EMISMATCH, "%s: tensor '%s' expects %s, file has %s %s", t->file,
                      t->name, eng_shape_str(a, sizeof a, ndim, want), eng_dtype_name(t->dtype),
                      eng_shape_str(b, sizeof b, t->ndim, t->shape));
}

static const st_tensor *find_tensor(const st_model *m, const char *name, eng_error *err) {
    const st_tensor *t = st_model_find(m, name);
    if (!t) eng_errorf(err, ENG_ENOTFOUND, "checkpoint has no tensor '%s'", name);
    return t;
}

static int is_aligned(const void *p, size_t align) {
    return ((uintptr_t)p % align) == 0;
}

/* A malloc'd copy of t's bytes (for misaligned views). */
static void *copy_bytes(const st_tensor *t, eng_error *err) {
    void *p = malloc(t->nbytes ? (size_t)t->nbytes : 1);
    if (!p) {
        eng_errorf(err, ENG_ENOMEM, "%s: tensor '%s': out of memory for %llu bytes", t->file,
                   t->name, (unsigned long long)t->nbytes);
        return NULL;
    }
    memcpy(p, t->data, (size_t)t->nbytes);
    return p;
}

/* A malloc'd F32 copy of an F32, BF16 or F16 tensor. */
static float *to_f32(const st_tensor *t, eng_error *err) {
    size_t n = (size_t)(t->nbytes / eng_dtype_size(t->dtype));
    float *out = malloc(n ? n * sizeof *out : 1);
    if (!out) {
        eng_errorf(err, ENG_ENOMEM, "%s: tensor '%s': out of memory for %zu floats", t->file,
                   t->name, n);
        return NULL;
    }
    const unsigned char *src = t->data;
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == ENG_DT_F32) {
            memcpy(&out[i], src + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = t->dtype == ENG_DT_BF16 ? eng_bf16_to_f32(h) : eng_f16_to_f32(h);
        }
    }
    return out;
}

/* The int4 group size of the checkpoint: __metadata__ "voxq.group_size", default 128. */
static int group_size(const st_model *m, const char *name, int *group, eng_error *err) {
    const char *s = st_model_metadata(m, "voxq.group_size");
    if (!s) {
        *group = DEFAULT_GROUP_SIZE;
        return 0;
    }
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 1 || v > (1L << 20))
        return eng_errorf(err, ENG_EFORMAT,
                          "tensor '%s': metadata voxq.group_size '%s' is not a "
                          "positive integer",
                          name, s);
    *group = (int)v;
    return 0;
}

/* Reads "<name>_scale" as an F32 tensor of exactly `shape`, copying it when misaligned. */
static int read_scale(const st_model *m, const char *name, int ndim, const int64_t *shape,
                      const float **scales, void **owned, eng_error *err) {
    char scale_name[512];
    if ((size_t)snprintf(scale_name, sizeof scale_name, "%s_scale", name) >= sizeof scale_name)
        return eng_errorf(err, ENG_EINVAL, "tensor name too long: '%s'", name);
    const st_tensor *s = find_tensor(m, scale_name, err);
    if (!s) {
        eng_error_prefix(err, "quantized weight '%s'", name);
        return ENG_ENOTFOUND;
    }
    if (s->dtype != ENG_DT_F32)
        return eng_errorf(err, ENG_EFORMAT, "%s: tensor '%s' is %s, expected F32", s->file, s->name,
                          eng_dtype_name(s->dtype));
    if (!shapes_equal(ndim, shape, s->ndim, s->shape)) return shape_error(s, ndim, shape, err);
    *scales = s->data;
    if (!is_aligned(s->data, 4)) {
        if (!(*owned = copy_bytes(s, err))) return ENG_ENOMEM;
        *scales = *owned;
    }
    return 0;
}

int eng_weight_read(const st_model *m, const char *name, int64_t out, int64_t in, eng_weight *w,
                    void **owned, eng_error *err) {
    *owned = NULL;
    memset(w, 0, sizeof *w);
    const st_tensor *t = find_tensor(m, name, err);
    if (!t) return ENG_ENOTFOUND;
    int64_t want[2] = {out, in};
    w->out = out;
    w->in = in;
    w->data = t->data;
    switch (t->dtype) {
    case ENG_DT_F32:
    case ENG_DT_BF16:
    case ENG_DT_F16:
        if (!shapes_equal(2, want, t->ndim, t->shape)) return shape_error(t, 2, want, err);
        w->fmt = t->dtype == ENG_DT_BF16 ? ENG_W_BF16 : ENG_W_F32;
        if (t->dtype == ENG_DT_F16 || !is_aligned(t->data, eng_dtype_size(t->dtype))) {
            *owned = t->dtype == ENG_DT_BF16 ? copy_bytes(t, err) : (void *)to_f32(t, err);
            if (!*owned) return ENG_ENOMEM;
            w->data = *owned;
        }
        return 0;
    case ENG_DT_I8: {
        if (!shapes_equal(2, want, t->ndim, t->shape)) return shape_error(t, 2, want, err);
        w->fmt = ENG_W_I8;
        return read_scale(m, name, 1, &out, &w->scales, owned, err);
    }
    case ENG_DT_U8: {
        int64_t packed[2] = {out, (in + 1) / 2};
        if (!shapes_equal(2, packed, t->ndim, t->shape)) return shape_error(t, 2, packed, err);
        int rc = group_size(m, name, &w->group, err);
        if (rc != 0) return rc;
        w->fmt = ENG_W_I4;
        int64_t scale_shape[2] = {out, (in + w->group - 1) / w->group};
        return read_scale(m, name, 2, scale_shape, &w->scales, owned, err);
    }
    default:
        return eng_errorf(err, ENG_EUNSUPPORTED,
                          "%s: tensor '%s' is %s, not a linear weight "
                          "format (F32, BF16, F16, I8, int4 U8)",
                          t->file, t->name, eng_dtype_name(t->dtype));
    }
}

int eng_tensor_read(const st_model *m, const char *name, int ndim, const int64_t *shape,
                    int want_f32, eng_tensor *out, void **owned, eng_error *err) {
    *owned = NULL;
    if (ndim < 0 || ndim > ENG_MAX_DIMS)
        return eng_errorf(err, ENG_EINVAL, "tensor '%s': %d dimensions requested (at most %d)",
                          name, ndim, ENG_MAX_DIMS);
    const st_tensor *t = find_tensor(m, name, err);
    if (!t) return ENG_ENOTFOUND;
    if (t->dtype != ENG_DT_F32 && t->dtype != ENG_DT_BF16 && t->dtype != ENG_DT_F16)
        return eng_errorf(err, ENG_EUNSUPPORTED,
                          "%s: tensor '%s' is %s, expected F32, BF16 or "
                          "F16",
                          t->file, t->name, eng_dtype_name(t->dtype));
    if (!shapes_match_squeezed(ndim, shape, t->ndim, t->shape))
        return shape_error(t, ndim, shape, err);
    eng_dtype dt = (want_f32 || t->dtype != ENG_DT_BF16) ? ENG_DT_F32 : ENG_DT_BF16;
    void *data = (void *)t->data;
    if (dt != t->dtype) {
        if (!(*owned = to_f32(t, err))) return ENG_ENOMEM;
        data = *owned;
    } else if (!is_aligned(t->data, eng_dtype_size(dt))) {
        if (!(*owned = copy_bytes(t, err))) return ENG_ENOMEM;
        data = *owned;
    }
    *out = eng_view(data, dt, ndim, shape);
    return 0;
}
