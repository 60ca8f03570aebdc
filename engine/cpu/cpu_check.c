/* cpu_check.c - argument checks shared by the CPU ops, so every op reports a bad shape the same
 * way: "op: name must be F32, got I32[2,3]". */
#include "engine/cpu/cpu_internal.h"

#include <stdio.h>

const char *cpu_tensor_str(char *buf, size_t n, const eng_tensor *t) {
    if (!t) {
        snprintf(buf, n, "(null)");
        return buf;
    }
    size_t used = (size_t)snprintf(buf, n, "%s[", eng_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && used < n; i++)
        used +=
            (size_t)snprintf(buf + used, n - used, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

int cpu_check_tensor(eng_backend *be, const char *op, const char *name, const eng_tensor *t,
                     eng_dtype dt) {
    char s[96];
    if (!t) return eng_backend_fail(be, ENG_EINVAL, "%s: %s is NULL", op, name);
    if (t->ndim < 1 || t->ndim > ENG_MAX_DIMS)
        return eng_backend_fail(be, ENG_EINVAL, "%s: %s has %d dimensions", op, name, t->ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0)
            return eng_backend_fail(be, ENG_EINVAL, "%s: %s has a negative dimension %s", op, name,
                                    cpu_tensor_str(s, sizeof s, t));
    if (t->dtype != dt)
        return eng_backend_fail(be, ENG_EINVAL, "%s: %s must be %s, got %s", op, name,
                                eng_dtype_name(dt), cpu_tensor_str(s, sizeof s, t));
    if (!t->data && eng_numel(t) > 0)
        return eng_backend_fail(be, ENG_EINVAL, "%s: %s has no data", op, name);
    return 0;
}
