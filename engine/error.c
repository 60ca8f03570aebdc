#include "engine/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int eng_errorf(eng_error *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void eng_error_prefix(eng_error *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Truncation is acceptable: the message is for people and ends with what fits. */
    size_t n = strlen(prefix);
    if (n > sizeof err->msg - 3) n = sizeof err->msg - 3;
    memcpy(err->msg, prefix, n);
    err->msg[n] = ':';
    err->msg[n + 1] = ' ';
    size_t room = sizeof err->msg - n - 2;
    size_t m = strnlen(old, room - 1);
    memcpy(err->msg + n + 2, old, m);
    err->msg[n + 2 + m] = '\0';
}

const char *eng_strerror(int code) {
    switch (code) {
    case ENG_OK: return "success";
    case ENG_EINVAL: return "invalid input";
    case ENG_EIO: return "I/O error";
    case ENG_ENOMEM: return "out of memory";
    case ENG_EFORMAT: return "malformed file";
    case ENG_ENOTFOUND: return "not found";
    case ENG_EUNSUPPORTED: return "unsupported";
    case ENG_EMISMATCH: return "checkpoint does not match its config";
    case ENG_EDEVICE: return "device error";
    case ENG_ECANCELLED: return "cancelled";
    default: return "unknown error";
    }
}
