/* cuda_profile.cu - per-op GPU time, for `voxq-bench` (VOXQ_CUDA_PROFILE=1).
 *
 * With profiling on, every op is bracketed by two CUDA events and the stream is synchronized
 * after it, so each op's device time is measured alone (launch gaps excluded). That serializes
 * the host with the GPU and cannot run inside a captured graph, so the model must run its steps
 * uncaptured while profiling; the numbers are a breakdown, not a speed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/cuda_internal.h"

enum {
    P_LINEAR, P_LINEAR_NORM, P_LINEAR_NORM_SILU, P_LINEAR_ACC, P_LINEAR_SILU_ACC, P_LINEAR_OTHER, P_MLP, P_RMSNORM, P_ADD,
    P_ROPE, P_SILU, P_EMBED, P_KV_WRITE, P_ATTENTION, P_CONV1D, P_CONVT, P_SNAKE, P_TANH, P_SAMPLE, P_COUNT
};
static const char *p_names[P_COUNT] = {
    "linear", "linear+rmsnorm", "linear+rmsnorm+silu_mul", "linear+residual", "linear+silu_mul+residual", "linear(other fused)",
    "mlp block", "rmsnorm", "add", "rope", "silu_mul", "embed_sum", "kv_write", "attention", "conv1d",
    "conv_transpose1d", "snake", "tanh", "sample"};

typedef struct prof_state {
    cudaEvent_t e0, e1;
    double ms[P_COUNT];
    long calls[P_COUNT];
} prof_state;

static prof_state g_prof;
static int g_prof_on = -1;

int cuda_profile_enabled(void) {
    if (g_prof_on < 0) {
        const char *v = getenv("VOXQ_CUDA_PROFILE");
        g_prof_on = v && *v && strcmp(v, "0") != 0;
        if (g_prof_on && (cudaEventCreate(&g_prof.e0) != cudaSuccess ||
                          cudaEventCreate(&g_prof.e1) != cudaSuccess))
            g_prof_on = 0;
    }
    return g_prof_on;
}

static void begin(eng_backend *be) { cudaEventRecord(g_prof.e0, cuda_of(be)->stream); }
static int end(eng_backend *be, int kind, int rc) {
    cudaEventRecord(g_prof.e1, cuda_of(be)->stream);
    cudaEventSynchronize(g_prof.e1);
    float ms = 0.f;
    cudaEventElapsedTime(&ms, g_prof.e0, g_prof.e1);
    g_prof.ms[kind] += ms;
    g_prof.calls[kind]++;
    return rc;
}

static int p_linear(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w) {
    begin(be);
    return end(be, P_LINEAR, cuda_linear(be, y, x, w));
}
static int p_linear_ex(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w,
                       const eng_linear_args *a) {
    int kind = a->post == ENG_POST_SILU_MUL                  ? P_LINEAR_NORM_SILU
               : a->pre == ENG_PRE_RMSNORM && !a->accumulate  ? P_LINEAR_NORM
               : a->pre == ENG_PRE_NONE && a->accumulate      ? P_LINEAR_ACC
               : a->pre == ENG_PRE_SILU_MUL && a->accumulate  ? P_LINEAR_SILU_ACC
               : a->pre == ENG_PRE_NONE && !a->accumulate     ? P_LINEAR
                                                              : P_LINEAR_OTHER;
    begin(be);
    return end(be, kind, cuda_linear_ex(be, y, x, w, a));
}
static int p_mlp(eng_backend *be, eng_tensor *x, eng_tensor *act, const eng_weight *gu,
                 const eng_weight *down, const eng_tensor *norm, float eps) {
    begin(be);
    int rc = cuda_mlp(be, x, act, gu, down, norm, eps);
    return rc == ENG_EUNSUPPORTED ? rc : end(be, P_MLP, rc); /* composed: profiled as its parts */
}
static int p_rmsnorm(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *wt,
                     float eps) {
    begin(be);
    return end(be, P_RMSNORM, cuda_rmsnorm(be, y, x, wt, eps));
}
static int p_add(eng_backend *be, eng_tensor *y, const eng_tensor *a) {
    begin(be);
    return end(be, P_ADD, cuda_add(be, y, a));
}
static int p_rope(eng_backend *be, eng_tensor *x, const eng_tensor *pos, float theta) {
    begin(be);
    return end(be, P_ROPE, cuda_rope(be, x, pos, theta));
}
static int p_silu(eng_backend *be, eng_tensor *y, const eng_tensor *gu) {
    begin(be);
    return end(be, P_SILU, cuda_silu_mul(be, y, gu));
}
static int p_embed(eng_backend *be, eng_tensor *y, const eng_tensor *t, const eng_tensor *ids,
                   int stride) {
    begin(be);
    return end(be, P_EMBED, cuda_embed_sum(be, y, t, ids, stride));
}
static int p_kv_write(eng_backend *be, eng_kv *kv, const eng_tensor *slot, const eng_tensor *pos,
                      const eng_tensor *k, const eng_tensor *v) {
    begin(be);
    return end(be, P_KV_WRITE, cuda_kv_write(be, kv, slot, pos, k, v));
}
static int p_attention(eng_backend *be, eng_tensor *o, const eng_tensor *q, const eng_kv *kv,
                       const eng_tensor *slot, const eng_tensor *len, const eng_tensor *mask,
                       float scale) {
    begin(be);
    return end(be, P_ATTENTION, cuda_attention(be, o, q, kv, slot, len, mask, scale));
}
static int p_conv1d(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                    const eng_tensor *b, int dil, int pad) {
    begin(be);
    return end(be, P_CONV1D, cuda_conv1d(be, y, x, w, b, dil, pad));
}
static int p_convt(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                   const eng_tensor *b, int stride, int pad) {
    begin(be);
    return end(be, P_CONVT, cuda_conv_transpose1d(be, y, x, w, b, stride, pad));
}
static int p_snake(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *a) {
    begin(be);
    return end(be, P_SNAKE, cuda_snake(be, y, x, a));
}
static int p_tanh(eng_backend *be, eng_tensor *y, const eng_tensor *x) {
    begin(be);
    return end(be, P_TANH, cuda_tanh(be, y, x));
}
static int p_sample(eng_backend *be, eng_tensor *picks, eng_tensor *scores,
                    const eng_tensor *logits, const eng_tensor *params, int eos_id) {
    begin(be);
    return end(be, P_SAMPLE, cuda_sample(be, picks, scores, logits, params, eos_id));
}

void cuda_profile_install(eng_backend_ops *o) {
    o->linear = p_linear;
    o->linear_ex = p_linear_ex;
    o->mlp = p_mlp;
    o->rmsnorm = p_rmsnorm;
    o->add = p_add;
    o->rope = p_rope;
    o->rope_kv_write = NULL; /* profiled as its parts */
    o->rope_attention = NULL;
    o->silu_mul = p_silu;
    o->embed_sum = p_embed;
    o->kv_write = p_kv_write;
    o->attention = p_attention;
    o->conv1d = p_conv1d;
    o->conv_transpose1d = p_convt;
    o->snake = p_snake;
    o->tanh_ = p_tanh;
    o->sample = p_sample;
    /* A profiled step cannot be captured: every op synchronizes. */
    o->graph_begin = NULL;
    o->graph_end = NULL;
    o->graph_launch = NULL;
}

int cuda_profile_json(eng_backend *be, char *buf, size_t cap) {
    (void)be;
    size_t n = 0;
    double total = 0;
    for (int i = 0; i < P_COUNT; i++) total += g_prof.ms[i];
    n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "{\"total_ms\": %.3f, \"ops\": [", total);
    int first = 1;
    for (int i = 0; i < P_COUNT; i++) {
        if (!g_prof.calls[i]) continue;
        n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0,
                              "%s{\"op\": \"%s\", \"calls\": %ld, \"ms\": %.3f, \"share\": %.3f}",
                              first ? "" : ", ", p_names[i], g_prof.calls[i], g_prof.ms[i],
                              total > 0 ? g_prof.ms[i] / total : 0.0);
        first = 0;
    }
    n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "]}");
    memset(&g_prof.ms, 0, sizeof g_prof.ms);
    memset(&g_prof.calls, 0, sizeof g_prof.calls);
    return n < cap ? 0 : ENG_EINVAL;
}
