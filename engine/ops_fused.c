/* ops_fused.c - fused ops expressed through the plain ones, for backends without kernels. */
#include "engine/ops.h"

int eng_linear_ex(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w,
                  const eng_linear_args *a) {
    if (be->ops->linear_ex) return be->ops->linear_ex(be, y, x, w, a);
    const eng_tensor *in = x;
    int rc;
    if (a->pre != ENG_PRE_NONE) {
        if (!a->tmp_in)
            return eng_backend_fail(be, ENG_EINVAL, "linear_ex: pre-op needs tmp_in scratch");
        if (a->pre == ENG_PRE_RMSNORM)
            rc = be->ops->rmsnorm(be, a->tmp_in, x, a->norm, a->eps);
        else if (a->pre == ENG_PRE_SILU_MUL)
            rc = be->ops->silu_mul(be, a->tmp_in, x);
        else
            return eng_backend_fail(be, ENG_EINVAL, "linear_ex: unknown pre-op %d", a->pre);
        if (rc) return rc;
        in = a->tmp_in;
    }
    if (a->post == ENG_POST_SILU_MUL) {
        if (!a->tmp_out || a->accumulate)
            return eng_backend_fail(be, ENG_EINVAL,
                                    "linear_ex: silu epilogue needs tmp_out and no accumulate");
        rc = be->ops->linear(be, a->tmp_out, in, w);
        return rc ? rc : be->ops->silu_mul(be, y, a->tmp_out);
    }
    if (!a->accumulate) return be->ops->linear(be, y, in, w);
    if (!a->tmp_out)
        return eng_backend_fail(be, ENG_EINVAL, "linear_ex: accumulate needs tmp_out scratch");
    rc = be->ops->linear(be, a->tmp_out, in, w);
    if (rc) return rc;
    return be->ops->add(be, y, a->tmp_out);
}

int eng_linear_group(eng_backend *be, int count, eng_tensor *const *y, const eng_tensor *x,
                     const eng_weight *const *w, const eng_linear_args *a) {
    if (be->ops->linear_group) return be->ops->linear_group(be, count, y, x, w, a);
    eng_linear_args one = *a;
    one.accumulate = 0;
    one.post = ENG_POST_NONE;
    if (!be->ops->linear_ex && a->pre != ENG_PRE_NONE && a->tmp_in && count > 1) {
        /* no fused kernels: the prologue once into tmp_in, then plain products */
        int rc = a->pre == ENG_PRE_RMSNORM ? be->ops->rmsnorm(be, a->tmp_in, x, a->norm, a->eps)
                                           : be->ops->silu_mul(be, a->tmp_in, x);
        for (int i = 0; i < count && !rc; i++)
            rc = be->ops->linear(be, y[i], a->tmp_in, w[i]);
        return rc;
    }
    for (int i = 0; i < count; i++) {
        int rc = eng_linear_ex(be, y[i], x, w[i], &one);
        if (rc) return rc;
    }
    return 0;
}

int eng_mlp(eng_backend *be, eng_tensor *x, eng_tensor *act, const eng_weight *gate_up,
            const eng_weight *down, const eng_tensor *norm, float eps, eng_tensor *h,
            eng_tensor *gu, eng_tensor *tmp) {
    if (be->ops->mlp) {
        int rc = be->ops->mlp(be, x, act, gate_up, down, norm, eps);
        if (rc != ENG_EUNSUPPORTED) return rc;
    }
    eng_linear_args a = {ENG_PRE_RMSNORM, norm, eps, 0, h, gu, ENG_POST_SILU_MUL};
    int rc = eng_linear_ex(be, act, x, gate_up, &a);
    if (rc) return rc;
    eng_linear_args d = {ENG_PRE_NONE, NULL, 0.f, 1, NULL, tmp, ENG_POST_NONE};
    return eng_linear_ex(be, x, act, down, &d);
}

int eng_rope_kv_write(eng_backend *be, eng_tensor *q, eng_tensor *k, const eng_tensor *v,
                      const eng_tensor *pos, float theta, eng_kv *kv, const eng_tensor *slot) {
    if (be->ops->rope_kv_write) return be->ops->rope_kv_write(be, q, k, v, pos, theta, kv, slot);
    int rc = be->ops->rope(be, q, pos, theta);
    if (!rc) rc = be->ops->rope(be, k, pos, theta);
    if (!rc) rc = be->ops->kv_write(be, kv, slot, pos, k, v);
    return rc;
}

int eng_rope_attention(eng_backend *be, eng_tensor *out, eng_tensor *q, eng_tensor *k,
                       const eng_tensor *v, const eng_tensor *pos, float theta, eng_kv *kv,
                       const eng_tensor *slot, const eng_tensor *len, float scale) {
    if (be->ops->rope_attention)
        return be->ops->rope_attention(be, out, q, k, v, pos, theta, kv, slot, len, scale);
    int rc = eng_rope_kv_write(be, q, k, v, pos, theta, kv, slot);
    return rc ? rc : be->ops->attention(be, out, q, kv, slot, len, NULL, scale);
}
