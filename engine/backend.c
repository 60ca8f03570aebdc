/* backend.c - picking a backend by name, freeing it, and the error helper every backend uses. */
#include "engine/ops.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int eng_backend_fail(eng_backend *be, int code, const char *fmt, ...) {
    if (!be) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->errstr, sizeof be->errstr, fmt, ap);
    va_end(ap);
    be->err = code;
    return code;
}

/* Without VOXQ_HAVE_CUDA this build has no GPU code at all; say so rather than "no device". */
int eng_backend_cuda_new(eng_backend **out, int device, eng_error *err) {
    *out = NULL;
#ifdef VOXQ_HAVE_CUDA
    return eng_cuda_backend_create(out, device, err);
#else
    (void)device;
    return eng_errorf(err, ENG_EUNSUPPORTED,
                      "cuda backend: this build has no CUDA support (configure with "
                      "-DVOXQ_CUDA=ON on a machine with nvcc)");
#endif
}

/* "auto" tries CUDA device 0 and falls back to the CPU only when CUDA is unavailable
 * (ENG_EUNSUPPORTED: no CUDA in the build or no GPU); a GPU that is present but fails is an
 * error, not a silent CPU fallback. */
int eng_backend_new(eng_backend **out, const char *which, int nthreads, eng_error *err) {
    *out = NULL;
    if (!which || strcmp(which, "auto") == 0) {
        eng_error cuda_err = {0};
        int rc = eng_backend_cuda_new(out, 0, &cuda_err);
        if (rc != ENG_EUNSUPPORTED) {
            if (rc != 0 && err) *err = cuda_err;
            return rc;
        }
        return eng_backend_cpu_new(out, nthreads, err);
    }
    if (strcmp(which, "cpu") == 0) return eng_backend_cpu_new(out, nthreads, err);
    if (strcmp(which, "cuda") == 0) return eng_backend_cuda_new(out, 0, err);
    if (strncmp(which, "cuda:", 5) == 0) {
        char *end = NULL;
        long dev = strtol(which + 5, &end, 10);
        if (end && *end == '\0' && end != which + 5 && dev >= 0 && dev < 1024)
            return eng_backend_cuda_new(out, (int)dev, err);
    }
    return eng_errorf(err, ENG_EINVAL, "unknown backend '%s' (expected auto, cpu, cuda or cuda:N)",
                      which);
}

void eng_backend_free(eng_backend *be) {
    if (be) be->ops->destroy(be);
}
