/* error.h - how the engine reports failure.
 *
 * Every engine function that can fail returns 0 or a negative ENG_E* code and, when given an
 * eng_error, fills its message with what went wrong and where ("model.safetensors: tensor
 * 'x.weight' expects [8,4], file has [4,8]"). Library code never exits or aborts on input,
 * I/O or memory failure. */
#ifndef VOXQ_ENGINE_ERROR_H
#define VOXQ_ENGINE_ERROR_H

enum {
    ENG_OK = 0,
    ENG_EINVAL = -1,      /* bad argument or input (text too long, bad config value) */
    ENG_EIO = -2,         /* read/write/open failed; errno in the message */
    ENG_ENOMEM = -3,      /* host or device allocation failed */
    ENG_EFORMAT = -4,     /* a file is malformed or hostile (safetensors, config.json) */
    ENG_ENOTFOUND = -5,   /* missing tensor, file, variant */
    ENG_EUNSUPPORTED = -6,/* a dtype, layout or feature this build does not handle */
    ENG_EMISMATCH = -7,   /* checkpoint disagrees with its config (shape, kind) */
    ENG_EDEVICE = -8,     /* CUDA / cuBLAS failure */
    ENG_ECANCELLED = -9,  /* stopped on request */
};

typedef struct eng_error {
    int code;
    char msg[512];
} eng_error;

/* Records code and a printf-style message in err (err may be NULL); returns code. */
int eng_errorf(eng_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefixes err->msg with "prefix: " (for adding the file or tensor a lower layer did not know). */
void eng_error_prefix(eng_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A short name for a code: "invalid input", "I/O error", ... */
const char *eng_strerror(int code);

#endif
