/* dia_load.c - building a dia_model: weights from a checkpoint (or random ones for benchmarks),
 * shape checks against config.json, and the memory plan (KV caches, cross K/V, workspace, host
 * staging) so that nothing is allocated after load. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/dia_impl.h"
#include "engine/weights.h"

/* Where weights come from: a checkpoint, or a seeded generator (st == NULL). */
typedef struct wsrc {
    const st_model *st;
    eng_wfmt fmt; /* random: format of linear weights */
    uint64_t seed;
    uint64_t tensor_no; /* random: index of the tensor being generated */
} wsrc;

static int grow(void ***arr, int *n, int *cap) {
    if (*n < *cap) return 0;
    int ncap = *cap ? *cap * 2 : 64;
    void **na = realloc(*arr, (size_t)ncap * sizeof **arr);
    if (!na) return -1;
    *arr = na;
    *cap = ncap;
    return 0;
}

/* Allocates a backend buffer that lives as long as the model, counting it in *category. */
int dia_alloc(dia_model *m, size_t bytes, void **out, size_t *category, eng_error *err) {
    *out = NULL;
    if (grow(&m->dev_bufs, &m->n_dev, &m->cap_dev))
        return eng_errorf(err, ENG_ENOMEM, "dia: out of host memory");
    int rc = eng_alloc(m->be, bytes ? bytes : 1, out);
    if (rc) return eng_errorf(err, rc, "dia: allocating %zu bytes: %s", bytes, m->be->errstr);
    m->dev_bufs[m->n_dev++] = *out;
    if (category) *category += bytes;
    return 0;
}

/* Takes ownership of host memory p (freed at dia_model_free); frees p on failure. */
int dia_keep_host(dia_model *m, void *p, eng_error *err) {
    if (!p) return 0;
    if (grow(&m->host_bufs, &m->n_host, &m->cap_host)) {
        free(p);
        return eng_errorf(err, ENG_ENOMEM, "dia: out of host memory");
    }
    m->host_bufs[m->n_host++] = p;
    return 0;
}

static void *host_alloc(dia_model *m, size_t bytes, eng_error *err) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        eng_errorf(err, ENG_ENOMEM, "dia: out of host memory (%zu bytes)", bytes);
        return NULL;
    }
    if (dia_keep_host(m, p, err)) return NULL;
    m->mem.host += bytes;
    return p;
}

/* splitmix64: the random-weight generator (counter-based, so tensors are independent). */
static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* Approximately standard normal (sum of four uniforms, variance matched). */
static float rand_normal(uint64_t key, uint64_t i) {
    uint64_t r = mix64(key + i);
    float s = 0;
    for (int j = 0; j < 4; j++)
        s += (float)((r >> (16 * j)) & 0xffff) * (1.0f / 65536.0f);
    return (s - 2.0f) * 1.7320508f;
}

/* A random host linear weight [out, in] in format fmt, values ~ N(0, 1/in). */
static int random_weight(wsrc *src, int64_t out, int64_t in, eng_weight *hw, void **owned,
                         eng_error *err) {
    uint64_t key = mix64(src->seed ^ mix64(++src->tensor_no));
    float std = 1.0f / sqrtf((float)in);
    size_t n = (size_t)(out * in);
    memset(hw, 0, sizeof *hw);
    hw->fmt = src->fmt;
    hw->out = out;
    hw->in = in;
    if (src->fmt == ENG_W_F32 || src->fmt == ENG_W_BF16) {
        int bf = src->fmt == ENG_W_BF16;
        void *p = malloc(n * (bf ? 2 : 4));
        if (!p) return eng_errorf(err, ENG_ENOMEM, "dia: out of host memory");
        for (size_t i = 0; i < n; i++) {
            float v = rand_normal(key, i) * std;
            if (bf)
                ((uint16_t *)p)[i] = eng_f32_to_bf16(v);
            else
                ((float *)p)[i] = v;
        }
        hw->data = p;
        *owned = p;
        return 0;
    }
    int i4 = src->fmt == ENG_W_I4;
    int group = 128;
    size_t cols = i4 ? (size_t)(in + 1) / 2 : (size_t)in;
    size_t nscale = i4 ? (size_t)out * (size_t)((in + group - 1) / group) : (size_t)out;
    size_t dbytes = (size_t)out * cols;
    char *p = malloc(dbytes + nscale * 4 + 16);
    if (!p) return eng_errorf(err, ENG_ENOMEM, "dia: out of host memory");
    uint8_t *q = (uint8_t *)p;
    for (size_t i = 0; i < dbytes; i += 8) {
        uint64_t r = mix64(key + i);
        for (size_t j = 0; j < 8 && i + j < dbytes; j++) {
            uint8_t b = (uint8_t)(r >> (8 * j));
            if (i4)
                b = (uint8_t)(1 + (b & 0x0f) % 15) | (uint8_t)((1 + (b >> 4) % 15) << 4);
            else if (b == 0x80)
                b = 0x81; /* keep int8 symmetric: -127..127 */
            q[i + j] = b;
        }
    }
    float *scales = (float *)(p + ((dbytes + 15) & ~(size_t)15));
    /* uniform q has std ~ 74 (int8) or ~4.3 (int4); scale so that w ~ std */
    float s = std / (i4 ? 4.3f : 74.0f);
    for (size_t i = 0; i < nscale; i++)
        scales[i] = s;
    hw->fmt = i4 ? ENG_W_I4 : ENG_W_I8;
    hw->group = i4 ? group : 0;
    hw->data = q;
    hw->scales = scales;
    *owned = p;
    return 0;
}

/* Loads linear weight `name` [out, in] onto the backend into *dst. */
static int load_weight(dia_model *m, wsrc *src, const char *name, int64_t out, int64_t in,
                       eng_weight *dst, eng_error *err) {
    eng_weight hw;
    void *owned = NULL;
    int rc = src->st ? eng_weight_read(src->st, name, out, in, &hw, &owned, err)
                     : random_weight(src, out, in, &hw, &owned, err);
    if (rc) return rc;
    if (grow((void ***)&m->weights, &m->n_w, &m->cap_w)) {
        free(owned);
        return eng_errorf(err, ENG_ENOMEM, "dia: out of host memory");
    }
    rc = m->be->ops->weight_load(m->be, &hw, dst);
    if (rc) {
        free(owned);
        return eng_errorf(err, rc, "dia: loading %s onto %s: %s", name, m->be->ops->name,
                          m->be->errstr);
    }
    m->weights[m->n_w++] = dst;
    m->mem.weights += eng_weight_data_bytes(dst) + eng_weight_scale_bytes(dst);
    /* the CPU backend aliases host bytes; other backends copied them */
    if (m->be->kind == ENG_BACKEND_CPU) return dia_keep_host(m, owned, err);
    free(owned);
    return 0;
}

/* Loads plain tensor `name` of the given shape into a backend buffer (F32 when want_f32, else
 * F32 or BF16 as stored). Random tensors: norms (want_f32) 1 +- 0.1, embeddings N(0, 1). */
static int load_tensor(dia_model *m, wsrc *src, const char *name, int ndim, const int64_t *shape,
                       int want_f32, eng_tensor *dst, eng_error *err) {
    eng_tensor ht;
    void *owned = NULL;
    int rc = 0;
    if (src->st) {
        rc = eng_tensor_read(src->st, name, ndim, shape, want_f32, &ht, &owned, err);
        if (rc) return rc;
    } else {
        uint64_t key = mix64(src->seed ^ mix64(++src->tensor_no));
        ht = eng_view(NULL, ENG_DT_F32, ndim, shape);
        size_t n = (size_t)eng_numel(&ht);
        float *p = malloc(n * 4 + 4);
        if (!p) return eng_errorf(err, ENG_ENOMEM, "dia: out of host memory");
        for (size_t i = 0; i < n; i++)
            p[i] = want_f32 ? 1.0f + 0.1f * rand_normal(key, i) : rand_normal(key, i);
        ht.data = p;
        owned = p;
    }
    size_t bytes = eng_nbytes(&ht);
    void *dev = NULL;
    rc = dia_alloc(m, bytes, &dev, &m->mem.weights, err);
    if (!rc && (rc = eng_upload(m->be, dev, ht.data, bytes)))
        rc = eng_errorf(err, rc, "dia: uploading %s: %s", name, m->be->errstr);
    free(owned);
    if (rc) return rc;
    *dst = ht;
    dst->data = dev;
    return 0;
}

/* Every tensor of spec 2.1, shapes derived from the config. */
static int load_all(dia_model *m, wsrc *src, eng_error *err) {
    const dia_config *c = &m->cfg;
    char nm[160];
    int rc;
    int64_t de = c->enc_hidden, dd = c->dec_hidden;
    int64_t eq = (int64_t)c->enc_heads * c->enc_head_dim;
    int64_t ekv = (int64_t)c->enc_kv_heads * c->enc_head_dim;
    int64_t dq = (int64_t)c->dec_heads * c->dec_head_dim;
    int64_t dkv = (int64_t)c->dec_kv_heads * c->dec_head_dim;
    int64_t xq = (int64_t)c->cross_heads * c->cross_head_dim;
    int64_t xkv = (int64_t)c->cross_kv_heads * c->cross_head_dim;
    int64_t shp[2];

#define TENSOR(name_fmt, idx, n0, n1, nd, f32, dst)                                                \
    do {                                                                                           \
        snprintf(nm, sizeof nm, name_fmt, idx);                                                    \
        shp[0] = (n0);                                                                             \
        shp[1] = (n1);                                                                             \
        if ((rc = load_tensor(m, src, nm, nd, shp, f32, dst, err))) return rc;                     \
    } while (0)
#define WEIGHT(name_fmt, idx, out, in, dst)                                                        \
    do {                                                                                           \
        snprintf(nm, sizeof nm, name_fmt, idx);                                                    \
        if ((rc = load_weight(m, src, nm, out, in, dst, err))) return rc;                          \
    } while (0)

    shp[0] = c->enc_vocab, shp[1] = de;
    if ((rc = load_tensor(m, src, "model.encoder.embedding.weight", 2, shp, 0, &m->enc_embed, err)))
        return rc;
    for (int l = 0; l < c->enc_layers; l++) {
        dia_enc_layer *L = &m->enc[l];
        TENSOR("model.encoder.layers.%d.pre_sa_norm.weight", l, de, 0, 1, 1, &L->pre_sa_norm);
        WEIGHT("model.encoder.layers.%d.self_attention.q_proj.weight", l, eq, de, &L->q);
        WEIGHT("model.encoder.layers.%d.self_attention.k_proj.weight", l, ekv, de, &L->k);
        WEIGHT("model.encoder.layers.%d.self_attention.v_proj.weight", l, ekv, de, &L->v);
        WEIGHT("model.encoder.layers.%d.self_attention.o_proj.weight", l, de, eq, &L->o);
        TENSOR("model.encoder.layers.%d.post_sa_norm.weight", l, de, 0, 1, 1, &L->post_sa_norm);
        WEIGHT("model.encoder.layers.%d.mlp.gate_up_proj.weight", l, 2 * (int64_t)c->enc_ffn, de,
               &L->gate_up);
        WEIGHT("model.encoder.layers.%d.mlp.down_proj.weight", l, de, c->enc_ffn, &L->down);
    }
    shp[0] = de;
    if ((rc = load_tensor(m, src, "model.encoder.norm.weight", 1, shp, 1, &m->enc_norm, err)))
        return rc;
    shp[0] = (int64_t)c->channels * c->dec_vocab, shp[1] = dd;
    if ((rc = load_tensor(m, src, "model.decoder.embeddings.embed.weight", 2, shp, 0, &m->dec_embed,
                          err)))
        return rc;
    for (int l = 0; l < c->dec_layers; l++) {
        dia_dec_layer *L = &m->dec[l];
        TENSOR("model.decoder.layers.%d.pre_sa_norm.weight", l, dd, 0, 1, 1, &L->pre_sa_norm);
        WEIGHT("model.decoder.layers.%d.self_attention.q_proj.weight", l, dq, dd, &L->sa_q);
        WEIGHT("model.decoder.layers.%d.self_attention.k_proj.weight", l, dkv, dd, &L->sa_k);
        WEIGHT("model.decoder.layers.%d.self_attention.v_proj.weight", l, dkv, dd, &L->sa_v);
        WEIGHT("model.decoder.layers.%d.self_attention.o_proj.weight", l, dd, dq, &L->sa_o);
        TENSOR("model.decoder.layers.%d.pre_ca_norm.weight", l, dd, 0, 1, 1, &L->pre_ca_norm);
        WEIGHT("model.decoder.layers.%d.cross_attention.q_proj.weight", l, xq, dd, &L->ca_q);
        WEIGHT("model.decoder.layers.%d.cross_attention.k_proj.weight", l, xkv, de, &L->ca_k);
        WEIGHT("model.decoder.layers.%d.cross_attention.v_proj.weight", l, xkv, de, &L->ca_v);
        WEIGHT("model.decoder.layers.%d.cross_attention.o_proj.weight", l, dd, xq, &L->ca_o);
        TENSOR("model.decoder.layers.%d.pre_mlp_norm.weight", l, dd, 0, 1, 1, &L->pre_mlp_norm);
        WEIGHT("model.decoder.layers.%d.mlp.gate_up_proj.weight", l, 2 * (int64_t)c->dec_ffn, dd,
               &L->gate_up);
        WEIGHT("model.decoder.layers.%d.mlp.down_proj.weight", l, dd, c->dec_ffn, &L->down);
    }
    shp[0] = dd;
    if ((rc = load_tensor(m, src, "model.decoder.norm.weight", 1, shp, 1, &m->dec_norm, err)) ||
        (rc = load_weight(m, src, "logits_dense.weight", (int64_t)c->channels * c->dec_vocab, dd,
                          &m->logits_w, err)))
        return rc;
#undef TENSOR
#undef WEIGHT
    return 0;
}

static size_t imax(size_t a, size_t b) {
    return a > b ? a : b;
}

/* The step's input block (dia_step_ws.inputs and its host mirror): the sampler entries first
 * (8-byte fields), then ids [rows, channels], slot, pos, len and xlen [rows]. Sets the six
 * pointers into `base` (NULL: only the size) and returns the block's size in bytes. */
static size_t step_inputs(void *base, size_t rows, size_t channels, eng_sample_seq **params,
                          int32_t **ids, int32_t **slot, int32_t **pos, int32_t **len,
                          int32_t **xlen) {
    char *b = base;
    size_t off = rows * sizeof(eng_sample_seq);
    int32_t **i32[5] = {ids, slot, pos, len, xlen};
    size_t n[5] = {rows * channels, rows, rows, rows, rows};
    if (b) *params = (eng_sample_seq *)b;
    for (int t = 0; t < 5; t++) {
        if (b) *i32[t] = (int32_t *)(b + off);
        off += n[t] * 4;
    }
    return off;
}

/* The memory plan: KV stores, workspace, host staging and the sequence pool. */
static int plan(dia_model *m, eng_error *err) {
    const dia_config *c = &m->cfg;
    const dia_load_opts *o = &m->opts;
    /* with step graphs, rows are padded to a power-of-two bucket (one graph per bucket); the
     * padding rows use one spare KV slot of their own, after the 2*max_batch real ones */
    int slots = 2 * o->max_batch + (m->graphs ? 1 : 0);
    int rc;
    for (int l = 0; l < c->dec_layers; l++) {
        dia_dec_layer *L = &m->dec[l];
        size_t es = eng_dtype_size(o->kv_dtype);
        size_t self_b = (size_t)slots * (size_t)o->max_frames * (size_t)c->dec_kv_heads *
                        (size_t)c->dec_head_dim * es;
        size_t cross_b = (size_t)slots * (size_t)o->max_text * (size_t)c->cross_kv_heads *
                         (size_t)c->cross_head_dim * es;
        L->self_kv = (eng_kv){
            NULL, NULL, o->kv_dtype, slots, o->max_frames, c->dec_kv_heads, c->dec_head_dim};
        L->cross_kv = (eng_kv){
            NULL, NULL, o->kv_dtype, slots, o->max_text, c->cross_kv_heads, c->cross_head_dim};
        if ((rc = dia_alloc(m, self_b, &L->self_kv.k, &m->mem.kv_self, err)) ||
            (rc = dia_alloc(m, self_b, &L->self_kv.v, &m->mem.kv_self, err)) ||
            (rc = dia_alloc(m, cross_b, &L->cross_kv.k, &m->mem.kv_cross, err)) ||
            (rc = dia_alloc(m, cross_b, &L->cross_kv.v, &m->mem.kv_cross, err)))
            return rc;
        if (m->graphs) {
            /* the padding rows' cross-attention reads position 0 of the spare slot: zeros */
            size_t one = cross_b / (size_t)slots, off = one * (size_t)(slots - 1);
            if ((rc = m->be->ops->memset0(m->be, (char *)L->cross_kv.k + off, one)) ||
                (rc = m->be->ops->memset0(m->be, (char *)L->cross_kv.v + off, one)))
                return eng_errorf(err, rc, "dia: clearing the spare KV slot: %s", m->be->errstr);
        }
    }

    /* encoder workspace: B*S <= 2*max_text rows (a prompt and its unconditional twin) */
    dia_enc_ws *e = &m->ews;
    size_t er = (size_t)(e->rows = 2 * o->max_text);
    size_t eq = (size_t)c->enc_heads * (size_t)c->enc_head_dim;
    size_t ekv = (size_t)c->enc_kv_heads * (size_t)c->enc_head_dim;
    size_t xkv = (size_t)c->cross_kv_heads * (size_t)c->cross_head_dim;
    size_t *ws = &m->mem.workspace;
#define DEV(ptr, n, esize)                                                                         \
    if ((rc = dia_alloc(m, (size_t)(n) * (esize), (void **)&(ptr), ws, err))) return rc
    DEV(e->x, er * (size_t)c->enc_hidden, 4);
    DEV(e->h, er * (size_t)c->enc_hidden, 4);
    DEV(e->tmp, er * (size_t)c->enc_hidden, 4);
    DEV(e->q, er * imax(eq, xkv), 4);
    DEV(e->k, er * imax(ekv, xkv), 4);
    DEV(e->v, er * ekv, 4);
    DEV(e->att, er * eq, 4);
    DEV(e->gu, er * 2 * (size_t)c->enc_ffn, 4);
    DEV(e->mlp, er * (size_t)c->enc_ffn, 4);
    DEV(e->ids, er, 4);
    DEV(e->pos, er, 4);
    DEV(e->slot, er, 4);
    DEV(e->len, er, 4);
    DEV(e->mask, er, 1);

    /* step workspace: 2 rows per sequence */
    dia_step_ws *s = &m->sws;
    int step_rows = 2 * o->max_batch;
    if (m->graphs)
        while (step_rows & (step_rows - 1))
            step_rows += step_rows & -step_rows;
    size_t sr = (size_t)(s->rows = step_rows);
    size_t dq = imax((size_t)c->dec_heads * (size_t)c->dec_head_dim,
                     (size_t)c->cross_heads * (size_t)c->cross_head_dim);
    size_t dkv = (size_t)c->dec_kv_heads * (size_t)c->dec_head_dim;
    size_t nlog = (size_t)c->channels * (size_t)c->dec_vocab;
    DEV(s->x, sr * (size_t)c->dec_hidden, 4);
    DEV(s->h, sr * (size_t)c->dec_hidden, 4);
    DEV(s->tmp, sr * (size_t)c->dec_hidden, 4);
    DEV(s->q, sr * dq, 4);
    DEV(s->k, sr * dkv, 4);
    DEV(s->v, sr * dkv, 4);
    DEV(s->att, sr * dq, 4);
    DEV(s->gu, sr * 2 * (size_t)c->dec_ffn, 4);
    DEV(s->mlp, sr * (size_t)c->dec_ffn, 4);
    DEV(s->logits, sr * nlog, 4);
    DEV(s->scores, sr * nlog, 4);
    DEV(s->picks, sr * ((size_t)c->channels + 1), 4);
    size_t ch = (size_t)c->channels;
    s->inputs_bytes = step_inputs(NULL, sr, ch, NULL, NULL, NULL, NULL, NULL, NULL);
    DEV(s->inputs, s->inputs_bytes, 1);
#undef DEV
    step_inputs(s->inputs, sr, ch, &s->params, &s->ids, &s->slot, &s->pos, &s->len, &s->xlen);

    dia_step_host *h = &m->sh;
    if (!(h->inputs = host_alloc(m, s->inputs_bytes, err)) ||
        !(h->picks = host_alloc(m, sr * ((size_t)c->channels + 1) * 4, err)) ||
        !(h->logits = host_alloc(m, sr * nlog * 4, err)) ||
        !(h->enc_ids = host_alloc(m, er * 4, err)) || !(h->enc_pos = host_alloc(m, er * 4, err)) ||
        !(h->enc_slot = host_alloc(m, er * 4, err)) || !(h->enc_len = host_alloc(m, er * 4, err)) ||
        !(h->enc_mask = host_alloc(m, er, err)))
        return err ? err->code : ENG_ENOMEM;
    step_inputs(h->inputs, sr, ch, &h->params, &h->ids, &h->slot, &h->pos, &h->len, &h->xlen);

    if (!(m->seqs = host_alloc(m, (size_t)o->max_batch * sizeof *m->seqs, err)))
        return err ? err->code : ENG_ENOMEM;
    for (int i = 0; i < o->max_batch; i++) {
        dia_seq *q = &m->seqs[i];
        q->m = m;
        q->slot = i;
        if (!(q->frames = host_alloc(m, (size_t)o->max_frames * (size_t)c->channels * 4, err)) ||
            !(q->scores = host_alloc(m, nlog * 4, err)))
            return err ? err->code : ENG_ENOMEM;
    }
    return 0;
}

/* Fills defaults and checks the options against the config. */
static int set_opts(dia_model *m, const dia_load_opts *in, eng_error *err) {
    dia_load_opts o = in ? *in : (dia_load_opts){0};
    const dia_config *c = &m->cfg;
    if (o.max_batch <= 0) o.max_batch = 1;
    if (o.max_frames <= 0) o.max_frames = c->dec_max_pos + 1;
    if (o.max_text <= 0) o.max_text = DIA_MAX_TEXT < c->enc_max_pos ? DIA_MAX_TEXT : c->enc_max_pos;
    if (o.kv_dtype == ENG_DT_INVALID)
        o.kv_dtype = m->be->kind == ENG_BACKEND_CPU ? ENG_DT_F32 : ENG_DT_BF16;
    if (o.kv_dtype != ENG_DT_F32 && o.kv_dtype != ENG_DT_BF16)
        return eng_errorf(err, ENG_EINVAL, "dia: kv_dtype must be F32 or BF16, not %s",
                          eng_dtype_name(o.kv_dtype));
    if (o.max_batch > 4096)
        return eng_errorf(err, ENG_EINVAL, "dia: max_batch %d is more than 4096", o.max_batch);
    if (o.max_text > DIA_MAX_TEXT || o.max_text > c->enc_max_pos)
        return eng_errorf(err, ENG_EINVAL,
                          "dia: max_text %d exceeds the encoder's limit (%d, config %d)",
                          o.max_text, DIA_MAX_TEXT, c->enc_max_pos);
    if (o.max_frames < 2 || o.max_frames > (1 << 20))
        return eng_errorf(err, ENG_EINVAL, "dia: max_frames %d out of [2, %d]", o.max_frames,
                          1 << 20);
    m->opts = o;
    return 0;
}

/* The part of loading shared by checkpoints and random models. */
static int build(dia_model **out, eng_backend *be, const dia_config *cfg, wsrc *src,
                 const dia_load_opts *opts, eng_error *err) {
    *out = NULL;
    dia_model *m = calloc(1, sizeof *m);
    if (!m) return eng_errorf(err, ENG_ENOMEM, "dia: out of host memory");
    m->be = be;
    m->cfg = *cfg;
    int rc = set_opts(m, opts, err);
    if (rc) goto fail;
    m->enc = calloc((size_t)cfg->enc_layers, sizeof *m->enc);
    m->dec = calloc((size_t)cfg->dec_layers, sizeof *m->dec);
    if (!m->enc || !m->dec) {
        rc = eng_errorf(err, ENG_ENOMEM, "dia: out of host memory");
        goto fail;
    }
    const eng_backend_ops *ops = be->ops;
    m->graphs = !m->opts.no_graphs && ops->graph_begin && ops->graph_end && ops->graph_launch;
    /* distinct keys per model, so two models on one backend never replay each other's step */
    static int next_uid;
    m->graph_uid = __atomic_fetch_add(&next_uid, 1, __ATOMIC_RELAXED) % (1 << 20);
    if ((rc = load_all(m, src, err)) || (rc = plan(m, err))) goto fail;
    *out = m;
    return 0;
fail:
    dia_model_free(m);
    return rc;
}

int dia_model_load(dia_model **out, eng_backend *be, const char *dir, const dia_load_opts *opts,
                   eng_error *err) {
    *out = NULL;
    dia_config cfg;
    int rc = dia_config_load(&cfg, dir, err);
    if (rc) return rc;
    st_model *st = NULL;
    if ((rc = st_model_open(&st, dir, err))) return rc;
    wsrc src = {.st = st};
    rc = build(out, be, &cfg, &src, opts, err);
    if (rc) {
        if (rc == ENG_ENOTFOUND) eng_error_prefix(err, "%s", dir);
        st_model_close(st);
        return rc;
    }
    (*out)->st = st;
    return 0;
}

int dia_model_random(dia_model **out, eng_backend *be, const dia_config *cfg, eng_wfmt fmt,
                     uint64_t seed, const dia_load_opts *opts, eng_error *err) {
    wsrc src = {.st = NULL, .fmt = fmt, .seed = seed};
    if (fmt != ENG_W_F32 && fmt != ENG_W_BF16 && fmt != ENG_W_I8 && fmt != ENG_W_I4)
        return eng_errorf(err, ENG_EINVAL, "dia: unknown weight format %d", (int)fmt);
    return build(out, be, cfg, &src, opts, err);
}

void dia_model_free(dia_model *m) {
    if (!m) return;
    if (m->graphs && m->be->ops->graph_reset) m->be->ops->graph_reset(m->be);
    for (int i = 0; i < m->n_w; i++)
        m->be->ops->weight_release(m->be, m->weights[i]);
    for (int i = 0; i < m->n_dev; i++)
        eng_free(m->be, m->dev_bufs[i]);
    for (int i = 0; i < m->n_host; i++)
        free(m->host_bufs[i]);
    free(m->weights);
    free(m->dev_bufs);
    free(m->host_bufs);
    free(m->enc);
    free(m->dec);
    st_model_close(m->st);
    free(m);
}

const dia_config *dia_model_config(const dia_model *m) {
    return &m->cfg;
}

const dia_load_opts *dia_model_opts(const dia_model *m) {
    return &m->opts;
}

void dia_model_mem(dia_model *m, dia_mem *out) {
    *out = m->mem;
    m->be->ops->mem_stats(m->be, &out->backend);
}

int dia_model_free_slots(const dia_model *m) {
    int n = 0;
    for (int i = 0; i < m->opts.max_batch; i++)
        n += !m->seqs[i].in_use;
    return n;
}
