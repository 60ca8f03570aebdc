/* dia_model.c - Dia's forward passes on the op interface: encoder (spec 4), cross-attention K/V
 * fill, and one decoder step over many rows (spec 5). Backend-agnostic: tensors are only passed
 * to ops, never dereferenced; everything a step varies lives in I32 tensors uploaded first. */
#include <string.h>
#include <time.h>

#include "engine/models/dia_impl.h"

/* Runs one op and turns its failure into an error naming the op and the layer. */
#define OP(call, what, layer)                                                                      \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_)                                                                                   \
            return eng_errorf(err, rc_, "dia: %s (layer %d): %s", what, layer, m->be->errstr);     \
    } while (0)

static eng_tensor mat(void *p, int64_t rows, int64_t cols) {
    return eng_view2(p, ENG_DT_F32, rows, cols);
}
static eng_tensor heads3(void *p, int64_t rows, int64_t heads, int64_t hd) {
    return eng_view3(p, ENG_DT_F32, rows, heads, hd);
}
static eng_tensor idx(void *p, int64_t n) {
    return eng_view1(p, ENG_DT_I32, n);
}

/* x += linear(in, w): one fused op where the backend has it (the residual add in the product's
 * epilogue), else the product into tmp and an add. */
static int linear_add(dia_model *m, eng_tensor *x, eng_tensor *tmp, const eng_tensor *in,
                      const eng_weight *w, const char *what, int layer, eng_error *err) {
    eng_linear_args a = {ENG_PRE_NONE, NULL, 0.f, 1, NULL, tmp, ENG_POST_NONE};
    OP(eng_linear_ex(m->be, x, in, w, &a), what, layer);
    return 0;
}

/* y = linear(rmsnorm(x; norm), w): the norm is computed inside the product where the backend can
 * (each of q, k, v recomputes it: a few KB of reads instead of a launch), else into h. */
static int norm_linear(dia_model *m, eng_tensor *y, eng_tensor *x, eng_tensor *h,
                       const eng_tensor *norm, float eps, const eng_weight *w, const char *what,
                       int layer, eng_error *err) {
    eng_linear_args a = {ENG_PRE_RMSNORM, norm, eps, 0, h, NULL, ENG_POST_NONE};
    OP(eng_linear_ex(m->be, y, x, w, &a), what, layer);
    return 0;
}

/* MLP block shared by encoder and decoder: x += down(silu(gate) * up) of rmsnorm(x). One kernel
 * where the backend has it (CUDA at 1-4 rows: k_mlp); fused backends otherwise do it in two
 * products (norm in the first one's loop, silu*up in its epilogue, the residual in the
 * second's); others compose norm -> gate_up -> silu*up -> down -> add. */
static int mlp_block(dia_model *m, eng_tensor *x, eng_tensor *h, eng_tensor *gu, eng_tensor *act,
                     eng_tensor *tmp, const eng_tensor *norm, float eps, const eng_weight *gate_up,
                     const eng_weight *down, int layer, eng_error *err) {
    OP(eng_mlp(m->be, x, act, gate_up, down, norm, eps, h, gu, tmp), "mlp block", layer);
    return 0;
}

/* Encoder (spec 4): rows r = b*S + s hold the ids staged in sh.enc_ids with pos = s, slot = b,
 * len = S in sh.enc_pos/enc_slot/enc_len (and the U8 key mask in sh.enc_mask when `masked`). K and
 * V of each layer are written straight into contiguous [B, S, heads, hd] buffers, which ops.h
 * treats as a KV store with B slots of S positions. */
int dia_encoder_run(dia_model *m, int B, int S, int masked, eng_error *err) {
    const dia_config *c = &m->cfg;
    dia_enc_ws *w = &m->ews;
    int64_t n = (int64_t)B * S;
    int hd = c->enc_head_dim, qh = c->enc_heads, kvh = c->enc_kv_heads;
    if (n > w->rows)
        return eng_errorf(err, ENG_EINVAL, "dia: encoder batch %d x %d exceeds the planned %d rows",
                          B, S, w->rows);
    eng_tensor x = mat(w->x, n, c->enc_hidden), h = mat(w->h, n, c->enc_hidden);
    eng_tensor tmp = mat(w->tmp, n, c->enc_hidden);
    eng_tensor q = mat(w->q, n, (int64_t)qh * hd), k = mat(w->k, n, (int64_t)kvh * hd);
    eng_tensor v = mat(w->v, n, (int64_t)kvh * hd), att = mat(w->att, n, (int64_t)qh * hd);
    eng_tensor q3 = heads3(w->q, n, qh, hd), k3 = heads3(w->k, n, kvh, hd);
    eng_tensor att3 = heads3(w->att, n, qh, hd);
    eng_tensor gu = mat(w->gu, n, 2 * (int64_t)c->enc_ffn), act = mat(w->mlp, n, c->enc_ffn);
    eng_tensor ids = eng_view2(w->ids, ENG_DT_I32, n, 1);
    eng_tensor pos = idx(w->pos, n), slot = idx(w->slot, n), len = idx(w->len, n);
    eng_tensor mask = eng_view1(w->mask, ENG_DT_U8, n);
    eng_kv store = {w->k, w->v, ENG_DT_F32, B, S, kvh, hd};
    const dia_step_host *hs = &m->sh;
    size_t n4 = (size_t)n * 4;
    int rc = eng_upload(m->be, w->ids, hs->enc_ids, n4);
    if (!rc) rc = eng_upload(m->be, w->pos, hs->enc_pos, n4);
    if (!rc) rc = eng_upload(m->be, w->slot, hs->enc_slot, n4);
    if (!rc) rc = eng_upload(m->be, w->len, hs->enc_len, n4);
    if (!rc && masked) rc = eng_upload(m->be, w->mask, hs->enc_mask, (size_t)n);
    if (rc) return eng_errorf(err, rc, "dia: encoder upload: %s", m->be->errstr);

    OP(eng_embed_sum(m->be, &x, &m->enc_embed, &ids, 0), "encoder embedding", -1);
    for (int l = 0; l < c->enc_layers; l++) {
        const dia_enc_layer *L = &m->enc[l];
        OP(eng_rmsnorm(m->be, &h, &x, &L->pre_sa_norm, c->enc_norm_eps), "pre_sa_norm", l);
        OP(eng_linear(m->be, &q, &h, &L->q), "encoder q_proj", l);
        OP(eng_linear(m->be, &k, &h, &L->k), "encoder k_proj", l);
        OP(eng_linear(m->be, &v, &h, &L->v), "encoder v_proj", l);
        OP(eng_rope(m->be, &q3, &pos, c->enc_rope_theta), "encoder rope q", l);
        OP(eng_rope(m->be, &k3, &pos, c->enc_rope_theta), "encoder rope k", l);
        OP(eng_attention(m->be, &att3, &q3, &store, &slot, &len, masked ? &mask : NULL, 1.0f),
           "encoder attention", l);
        rc = linear_add(m, &x, &tmp, &att, &L->o, "encoder o_proj", l, err);
        if (!rc)
            rc = mlp_block(m, &x, &h, &gu, &act, &tmp, &L->post_sa_norm, c->enc_norm_eps,
                           &L->gate_up, &L->down, l, err);
        if (rc) return rc;
    }
    OP(eng_rmsnorm(m->be, &h, &x, &m->enc_norm, c->enc_norm_eps), "encoder norm", -1);
    return 0;
}

/* Cross-attention K/V (spec 5 step 4): K = enc . Wk^T, V = enc . Wv^T for every decoder layer,
 * from the B*n encoder states in ews.h (B = 2: cond prompt rows 0..n-1, unconditional rows
 * n..2n-1; B = 1 without CFG), written to KV slot 2*slot + b at positions 0..n-1. No RoPE. */
int dia_cross_fill(dia_model *m, int slot, int B, int n, eng_error *err) {
    const dia_config *c = &m->cfg;
    dia_enc_ws *w = &m->ews;
    int64_t rows = (int64_t)B * n;
    int kvh = c->cross_kv_heads, hd = c->cross_head_dim;
    int32_t *hpos = m->sh.enc_pos, *hslot = m->sh.enc_slot;
    for (int64_t r = 0; r < rows; r++) {
        hpos[r] = (int32_t)(r % n);
        hslot[r] = 2 * slot + (int32_t)(r / n);
    }
    int rc = eng_upload(m->be, w->pos, hpos, (size_t)rows * 4);
    if (!rc) rc = eng_upload(m->be, w->slot, hslot, (size_t)rows * 4);
    if (rc) return eng_errorf(err, rc, "dia: cross K/V upload: %s", m->be->errstr);
    eng_tensor enc = mat(w->h, rows, c->enc_hidden);
    eng_tensor k = mat(w->q, rows, (int64_t)kvh * hd), v = mat(w->k, rows, (int64_t)kvh * hd);
    eng_tensor k3 = heads3(w->q, rows, kvh, hd), v3 = heads3(w->k, rows, kvh, hd);
    eng_tensor pos = idx(w->pos, rows), slots = idx(w->slot, rows);
    for (int l = 0; l < c->dec_layers; l++) {
        dia_dec_layer *L = &m->dec[l];
        OP(eng_linear(m->be, &k, &enc, &L->ca_k), "cross k_proj", l);
        OP(eng_linear(m->be, &v, &enc, &L->ca_v), "cross v_proj", l);
        OP(eng_kv_write(m->be, &L->cross_kv, &slots, &pos, &k3, &v3), "cross K/V write", l);
    }
    return 0;
}

int dia_encode(dia_model *m, const int32_t *ids, const uint8_t *mask, int B, int S, float *out,
               eng_error *err) {
    if (B < 1 || S < 1 || (int64_t)B * S > m->ews.rows)
        return eng_errorf(err, ENG_EINVAL, "dia: encode batch %d x %d outside [1, %d rows]", B, S,
                          m->ews.rows);
    dia_step_host *h = &m->sh;
    for (int b = 0; b < B; b++) {
        for (int s = 0; s < S; s++) {
            int r = b * S + s;
            if (ids[r] < 0 || ids[r] >= m->cfg.enc_vocab)
                return eng_errorf(err, ENG_EINVAL, "dia: text id %d at [%d,%d] out of [0, %d)",
                                  ids[r], b, s, m->cfg.enc_vocab);
            h->enc_ids[r] = ids[r];
            h->enc_pos[r] = s;
            h->enc_slot[r] = b;
            h->enc_len[r] = S;
            h->enc_mask[r] = mask ? (mask[r] != 0) : 1;
        }
    }
    int rc = dia_encoder_run(m, B, S, mask != NULL, err);
    if (rc) return rc;
    size_t bytes = (size_t)B * (size_t)S * (size_t)m->cfg.enc_hidden * 4;
    rc = eng_download(m->be, out, m->ews.h, bytes);
    if (!rc) rc = eng_sync(m->be);
    if (rc) return eng_errorf(err, rc, "dia: encoder download: %s", m->be->errstr);
    return 0;
}

/* The ops of one decoder step over `rows` rows (index tensors already uploaded). Recorded once
 * per row count when the backend captures graphs, so it must not depend on anything but rows. */
static int decoder_ops(dia_model *m, int rows, eng_error *err) {
    const dia_config *c = &m->cfg;
    dia_step_ws *w = &m->sws;
    int64_t n = rows;
    int hd = c->dec_head_dim, qh = c->dec_heads, kvh = c->dec_kv_heads;
    int xh = c->cross_heads, xhd = c->cross_head_dim;
    eng_tensor x = mat(w->x, n, c->dec_hidden), h = mat(w->h, n, c->dec_hidden);
    eng_tensor tmp = mat(w->tmp, n, c->dec_hidden);
    eng_tensor q = mat(w->q, n, (int64_t)qh * hd), q3 = heads3(w->q, n, qh, hd);
    eng_tensor k = mat(w->k, n, (int64_t)kvh * hd), k3 = heads3(w->k, n, kvh, hd);
    eng_tensor v = mat(w->v, n, (int64_t)kvh * hd), v3 = heads3(w->v, n, kvh, hd);
    eng_tensor att = mat(w->att, n, (int64_t)qh * hd), att3 = heads3(w->att, n, qh, hd);
    eng_tensor xq = mat(w->q, n, (int64_t)xh * xhd), xq3 = heads3(w->q, n, xh, xhd);
    eng_tensor xatt = mat(w->att, n, (int64_t)xh * xhd), xatt3 = heads3(w->att, n, xh, xhd);
    eng_tensor gu = mat(w->gu, n, 2 * (int64_t)c->dec_ffn), act = mat(w->mlp, n, c->dec_ffn);
    eng_tensor logits = mat(w->logits, n, (int64_t)c->channels * c->dec_vocab);
    eng_tensor ids = eng_view2(w->ids, ENG_DT_I32, n, c->channels);
    eng_tensor slot = idx(w->slot, n), pos = idx(w->pos, n), len = idx(w->len, n);
    eng_tensor xlen = idx(w->xlen, n);

    OP(eng_embed_sum(m->be, &x, &m->dec_embed, &ids, c->dec_vocab), "decoder embedding", -1);
    for (int l = 0; l < c->dec_layers; l++) {
        dia_dec_layer *L = &m->dec[l];
        /* self-attention over this row's cache, RoPE at the frame's position, GQA */
        eng_tensor *qkv[3] = {&q, &k, &v};
        const eng_weight *wqkv[3] = {&L->sa_q, &L->sa_k, &L->sa_v};
        eng_linear_args na = {ENG_PRE_RMSNORM, &L->pre_sa_norm, c->dec_norm_eps, 0, &h, NULL,
                              ENG_POST_NONE};
        OP(eng_linear_group(m->be, 3, qkv, &x, wqkv, &na), "self q/k/v_proj", l);
        OP(eng_rope_attention(m->be, &att3, &q3, &k3, &v3, &pos, c->dec_rope_theta, &L->self_kv,
                              &slot, &len, 1.0f),
           "self rope + K/V write + attention", l);
        int rc = linear_add(m, &x, &tmp, &att, &L->sa_o, "self o_proj", l, err);
        /* cross-attention over the row's prompt (cond or unconditional), no RoPE */
        if (!rc)
            rc = norm_linear(m, &xq, &x, &h, &L->pre_ca_norm, c->dec_norm_eps, &L->ca_q,
                             "cross q_proj", l, err);
        if (rc) return rc;
        OP(eng_attention(m->be, &xatt3, &xq3, &L->cross_kv, &slot, &xlen, NULL, 1.0f),
           "cross attention", l);
        rc = linear_add(m, &x, &tmp, &xatt, &L->ca_o, "cross o_proj", l, err);
        if (!rc)
            rc = mlp_block(m, &x, &h, &gu, &act, &tmp, &L->pre_mlp_norm, c->dec_norm_eps,
                           &L->gate_up, &L->down, l, err);
        if (rc) return rc;
    }
    int rc = norm_linear(m, &logits, &x, &h, &m->dec_norm, c->dec_norm_eps, &m->logits_w,
                         "logits_dense", -1, err);
    if (rc) return rc;
    /* spec 6.2 on the backend: one sampler entry per possible sequence of the bucket */
    eng_tensor scores = eng_view3(w->scores, ENG_DT_F32, n, c->channels, c->dec_vocab);
    eng_tensor picks = eng_view2(w->picks, ENG_DT_I32, n, (int64_t)c->channels + 1);
    eng_tensor params = eng_view1(w->params, ENG_DT_U8, n * (int64_t)sizeof(eng_sample_seq));
    OP(eng_sample(m->be, &picks, &scores, &logits, &params, c->eos_id), "sampling", -1);
    return 0;
}

/* The step graph of `rows` rows: its key in the backend, and the bit of its power-of-two row
 * bucket in graph_off (rows is padded to the bucket when graphs are on; dia_step does that). */
static int step_graph_key(const dia_model *m, int rows, int *bucket_bit) {
    int bit = 0;
    while ((1 << bit) < rows)
        bit++;
    *bucket_bit = bit;
    return m->graph_uid * 32 + bit;
}

/* Uploads the step's inputs (index tensors and sampler entries, one transfer), runs (or
 * replays) the step, downloads the picks of the first `entries` sampler entries. */
int dia_decoder_step(dia_model *m, int rows, int entries, eng_error *err) {
    const dia_config *c = &m->cfg;
    dia_step_ws *w = &m->sws;
    dia_step_host *s = &m->sh;
    int rc = eng_upload(m->be, w->inputs, s->inputs, w->inputs_bytes);
    if (rc) return eng_errorf(err, rc, "dia: step upload: %s", m->be->errstr);

    int bucket_bit, key = step_graph_key(m, rows, &bucket_bit);
    const eng_backend_ops *ops = m->be->ops;
    int direct = !m->graphs || (m->graph_off & (1u << bucket_bit));
    if (!direct) {
        rc = ops->graph_launch(m->be, key);
        if (rc == ENG_ENOTFOUND) {
            rc = ops->graph_begin(m->be);
            if (rc) return eng_errorf(err, rc, "dia: graph capture: %s", m->be->errstr);
            rc = decoder_ops(m, rows, err);
            int rc2 = ops->graph_end(m->be, key);
            if (rc) return rc;
            /* a backend out of graph room: run this bucket uncaptured from now on */
            if (rc2) m->graph_off |= 1u << bucket_bit;
            direct = rc2 != 0;
            rc = rc2 ? 0 : ops->graph_launch(m->be, key);
        }
        if (rc) return eng_errorf(err, rc, "dia: graph launch: %s", m->be->errstr);
    }
    if (direct && (rc = decoder_ops(m, rows, err))) return rc;
    size_t pbytes = (size_t)entries * ((size_t)c->channels + 1) * 4;
    rc = eng_download(m->be, s->picks, w->picks, pbytes);
    if (!rc) rc = eng_sync(m->be);
    if (rc) return eng_errorf(err, rc, "dia: picks download: %s", m->be->errstr);
    return 0;
}

int dia_time_step_graph(dia_model *m, dia_seq *const *seqs, int n, int reps, double *ms,
                        eng_error *err) {
    int rows = 0;
    for (int i = 0; i < n; i++)
        rows += 1 + seqs[i]->cfg;
    int bucket_bit, key = step_graph_key(m, rows, &bucket_bit);
    if (!m->graphs || (m->graph_off & (1u << bucket_bit)))
        return eng_errorf(err, ENG_EUNSUPPORTED, "dia: no step graph to time on backend %s",
                          m->be->ops->name);
    int rc = eng_sync(m->be);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < reps && !rc; r++)
        rc = m->be->ops->graph_launch(m->be, key);
    if (!rc) rc = eng_sync(m->be);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc) return eng_errorf(err, rc, "dia: timing the step graph: %s", m->be->errstr);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    *ms = reps > 0 ? s * 1e3 / reps : 0;
    return 0;
}
