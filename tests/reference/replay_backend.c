/* replay_backend.c - see replay_backend.h. One backend at a time (test-only, not thread-safe). */
#include "replay_backend.h"

#include <string.h>

enum { OP_LINEAR, OP_RMSNORM, OP_ADD, OP_ROPE, OP_SILU_MUL, OP_EMBED_SUM, OP_KV_WRITE, OP_ATTN,
       OP_SAMPLE };

/* One recorded op with its arguments by value; has[i] says whether t[i] was a non-NULL
 * pointer argument. */
typedef struct rec_op {
    int kind;
    eng_tensor t[5];
    int has[5];
    eng_weight w;
    eng_kv kv;
    float f;
    int i;
} rec_op;

#define MAX_OPS 8192
#define MAX_GRAPHS 16

static rec_op ops_[MAX_OPS];
static int nops_;
static int recording_, rec_start_;
static struct { int key, start, count; } graphs_[MAX_GRAPHS];
static int ngraphs_;
static int max_graphs_ = MAX_GRAPHS;
static replay_stats stats_;
static const eng_backend_ops *orig_;
static eng_backend_ops table_;

static rec_op *record(int kind) {
    if (nops_ >= MAX_OPS) return NULL;
    rec_op *r = &ops_[nops_++];
    memset(r, 0, sizeof *r);
    r->kind = kind;
    return r;
}

static void put(rec_op *r, int idx, const eng_tensor *t) {
    r->has[idx] = t != NULL;
    if (t) r->t[idx] = *t;
}

static const eng_tensor *get(rec_op *r, int idx) {
    return r->has[idx] ? &r->t[idx] : NULL;
}

static int full(eng_backend *be) {
    return eng_backend_fail(be, ENG_ENOMEM, "replay: too many ops");
}

static int w_linear(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w) {
    if (!recording_) return orig_->linear(be, y, x, w);
    rec_op *r = record(OP_LINEAR);
    if (!r) return full(be);
    put(r, 0, y), put(r, 1, x), r->w = *w;
    return 0;
}

static int w_rmsnorm(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_tensor *wt,
                     float eps) {
    if (!recording_) return orig_->rmsnorm(be, y, x, wt, eps);
    rec_op *r = record(OP_RMSNORM);
    if (!r) return full(be);
    put(r, 0, y), put(r, 1, x), put(r, 2, wt), r->f = eps;
    return 0;
}

static int w_add(eng_backend *be, eng_tensor *y, const eng_tensor *a) {
    if (!recording_) return orig_->add(be, y, a);
    rec_op *r = record(OP_ADD);
    if (!r) return full(be);
    put(r, 0, y), put(r, 1, a);
    return 0;
}

static int w_rope(eng_backend *be, eng_tensor *x, const eng_tensor *pos, float theta) {
    if (!recording_) return orig_->rope(be, x, pos, theta);
    rec_op *r = record(OP_ROPE);
    if (!r) return full(be);
    put(r, 0, x), put(r, 1, pos), r->f = theta;
    return 0;
}

static int w_silu_mul(eng_backend *be, eng_tensor *y, const eng_tensor *gu) {
    if (!recording_) return orig_->silu_mul(be, y, gu);
    rec_op *r = record(OP_SILU_MUL);
    if (!r) return full(be);
    put(r, 0, y), put(r, 1, gu);
    return 0;
}

static int w_embed_sum(eng_backend *be, eng_tensor *y, const eng_tensor *table,
                       const eng_tensor *ids, int stride) {
    if (!recording_) return orig_->embed_sum(be, y, table, ids, stride);
    rec_op *r = record(OP_EMBED_SUM);
    if (!r) return full(be);
    put(r, 0, y), put(r, 1, table), put(r, 2, ids), r->i = stride;
    return 0;
}

static int w_kv_write(eng_backend *be, eng_kv *kv, const eng_tensor *slot, const eng_tensor *pos,
                      const eng_tensor *k, const eng_tensor *v) {
    if (!recording_) return orig_->kv_write(be, kv, slot, pos, k, v);
    rec_op *r = record(OP_KV_WRITE);
    if (!r) return full(be);
    r->kv = *kv;
    put(r, 0, slot), put(r, 1, pos), put(r, 2, k), put(r, 3, v);
    return 0;
}

static int w_attention(eng_backend *be, eng_tensor *out, const eng_tensor *q, const eng_kv *kv,
                       const eng_tensor *slot, const eng_tensor *len, const eng_tensor *mask,
                       float scale) {
    if (!recording_) return orig_->attention(be, out, q, kv, slot, len, mask, scale);
    rec_op *r = record(OP_ATTN);
    if (!r) return full(be);
    r->kv = *kv;
    put(r, 0, out), put(r, 1, q), put(r, 2, slot), put(r, 3, len), put(r, 4, mask);
    r->f = scale;
    return 0;
}

static int w_sample(eng_backend *be, eng_tensor *picks, eng_tensor *scores,
                    const eng_tensor *logits, const eng_tensor *params, int eos_id) {
    if (!recording_) return orig_->sample(be, picks, scores, logits, params, eos_id);
    rec_op *r = record(OP_SAMPLE);
    if (!r) return full(be);
    put(r, 0, picks), put(r, 1, scores), put(r, 2, logits), put(r, 3, params);
    r->i = eos_id;
    return 0;
}

static int replay(eng_backend *be, rec_op *r) {
    eng_tensor *t0 = r->has[0] ? &r->t[0] : NULL;
    switch (r->kind) {
    case OP_LINEAR:
        return orig_->linear(be, t0, get(r, 1), &r->w);
    case OP_RMSNORM:
        return orig_->rmsnorm(be, t0, get(r, 1), get(r, 2), r->f);
    case OP_ADD:
        return orig_->add(be, t0, get(r, 1));
    case OP_ROPE:
        return orig_->rope(be, t0, get(r, 1), r->f);
    case OP_SILU_MUL:
        return orig_->silu_mul(be, t0, get(r, 1));
    case OP_EMBED_SUM:
        return orig_->embed_sum(be, t0, get(r, 1), get(r, 2), r->i);
    case OP_KV_WRITE:
        return orig_->kv_write(be, &r->kv, get(r, 0), get(r, 1), get(r, 2), get(r, 3));
    case OP_ATTN:
        return orig_->attention(be, t0, get(r, 1), &r->kv, get(r, 2), get(r, 3), get(r, 4), r->f);
    case OP_SAMPLE:
        return orig_->sample(be, t0, &r->t[1], get(r, 2), get(r, 3), r->i);
    }
    return eng_backend_fail(be, ENG_EINVAL, "replay: unknown op %d", r->kind);
}

static int g_begin(eng_backend *be) {
    if (recording_) return eng_backend_fail(be, ENG_EINVAL, "replay: nested capture");
    recording_ = 1;
    rec_start_ = nops_;
    return 0;
}

static int g_end(eng_backend *be, int key) {
    recording_ = 0;
    if (ngraphs_ >= max_graphs_) {
        nops_ = rec_start_;
        stats_.refused++;
        return eng_backend_fail(be, ENG_EINVAL, "replay: more than %d graphs", max_graphs_);
    }
    graphs_[ngraphs_].key = key;
    graphs_[ngraphs_].start = rec_start_;
    graphs_[ngraphs_].count = nops_ - rec_start_;
    ngraphs_++;
    stats_.captures++;
    return 0;
}

static int g_launch(eng_backend *be, int key) {
    for (int g = ngraphs_ - 1; g >= 0; g--) {
        if (graphs_[g].key != key) continue;
        for (int i = 0; i < graphs_[g].count; i++) {
            int rc = replay(be, &ops_[graphs_[g].start + i]);
            if (rc) return rc;
            stats_.replayed++;
        }
        stats_.launches++;
        return 0;
    }
    return ENG_ENOTFOUND;
}

static void g_reset(eng_backend *be) {
    (void)be;
    ngraphs_ = nops_ = 0;
}

void replay_install(eng_backend *be) {
    orig_ = be->ops;
    table_ = *be->ops;
    table_.linear = w_linear;
    table_.rmsnorm = w_rmsnorm;
    table_.add = w_add;
    table_.rope = w_rope;
    table_.silu_mul = w_silu_mul;
    table_.embed_sum = w_embed_sum;
    table_.kv_write = w_kv_write;
    table_.attention = w_attention;
    table_.sample = w_sample;
    table_.graph_begin = g_begin;
    table_.graph_end = g_end;
    table_.graph_launch = g_launch;
    table_.graph_reset = g_reset;
    be->ops = &table_;
    memset(&stats_, 0, sizeof stats_);
    ngraphs_ = nops_ = recording_ = 0;
    max_graphs_ = MAX_GRAPHS;
}

void replay_uninstall(eng_backend *be) {
    if (orig_) be->ops = orig_;
    orig_ = NULL;
}

const replay_stats *replay_get_stats(void) {
    return &stats_;
}

void replay_set_max_graphs(int n) {
    max_graphs_ = n > 0 && n <= MAX_GRAPHS ? n : MAX_GRAPHS;
}
