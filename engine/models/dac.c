/* dac.c - DAC decoder: load (with weight-norm folding) and decode codes to PCM (spec dia.md §7).
 *
 * Weights live in one backend buffer laid out in load order; the workspace is three backend
 * buffers, each as large as the largest activation of one chunk ([channels, time] F32). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/dac.h"
#include "engine/safetensors.h"
#include "engine/weights.h"

#define DAC_DEFAULT_CHUNK_FRAMES 256
#define DAC_RES_UNITS 3
#define DAC_KERNEL 7 /* every non-transposed conv but the 1x1 ones */

static const int res_dilations[DAC_RES_UNITS] = {1, 3, 9};

typedef struct dac_conv {
    eng_tensor w; /* Conv1d [cout, cin, k]; ConvTranspose1d [cin, cout, k] */
    eng_tensor b; /* [cout] */
} dac_conv;

typedef struct dac_res_unit {
    eng_tensor alpha1, alpha2; /* [channels] */
    dac_conv conv1;            /* k = 7, dilated */
    dac_conv conv2;            /* k = 1 */
} dac_res_unit;

typedef struct dac_block {
    int cin, cout, stride;
    eng_tensor alpha; /* [cin] */
    dac_conv conv_t;  /* kernel 2 * stride, padding stride / 2 */
    dac_res_unit res[DAC_RES_UNITS];
} dac_block;

struct dac_model {
    eng_backend *be;
    dac_config cfg;
    int chunk_frames;   /* frames of output per chunk */
    int margin;         /* context frames borrowed on each side */
    int64_t max_frames; /* frames one pass can hold: chunk_frames + 2 * margin */

    void *weights; /* backend buffer holding every decoder tensor */
    size_t weights_bytes;
    dac_conv conv1; /* [decoder_hidden, hidden, 7] */
    dac_block blocks[DAC_MAX_BLOCKS];
    eng_tensor alpha_out; /* [channels of the last block] */
    dac_conv conv2;       /* [1, channels, 7] */

    float *proj_table;  /* host (n_codebooks, codebook_size, hidden): out_proj_i applied to
                           every row of codebook i, bias included, so the latent of a frame
                           is a sum of n_codebooks table rows */
    float *latent_row;  /* host (hidden): one frame's latent while it is summed */
    float *latent_host; /* host (hidden, max_frames): one chunk's latent before upload */
    float *pcm_host;    /* host (hop * max_frames): one chunk's waveform after download */

    void *ws[3]; /* backend workspace, ws_floats F32 each */
    size_t ws_floats;
    size_t host_bytes;
};

/* Loading context: a first pass only counts bytes (dst == NULL), the second reads and uploads
 * each tensor into the weights buffer at `used`. */
typedef struct load_ctx {
    dac_model *m;
    const st_model *st;
    const char *dir;
    char *dst;
    size_t used;
} load_ctx;

/* W = g * v / |v| with the norm over every axis but axis 0 (PyTorch weight_norm, dim 0). */
static void fold_weight_norm(float *w, const float *g, const float *v, int64_t dim0,
                             int64_t inner) {
    for (int64_t o = 0; o < dim0; o++) {
        const float *vo = v + o * inner;
        double ss = 0;
        for (int64_t i = 0; i < inner; i++)
            ss += (double)vo[i] * vo[i];
        double scale = ss > 0 ? (double)g[o] / sqrt(ss) : 0.0;
        for (int64_t i = 0; i < inner; i++)
            w[o * inner + i] = (float)(vo[i] * scale);
    }
}

/* Reads the F32 host form of weight `base`.weight of the given shape: the plain tensor, or the
 * fold of weight_g/weight_v or parametrizations.weight.original0/original1. *owned receives a
 * buffer to free (NULL when *data points into the mapping). */
static int read_weight(load_ctx *c, const char *base, int ndim, const int64_t *shape,
                       const float **data, void **owned, eng_error *err) {
    static const char *const pairs[2][2] = {
        {"weight_g", "weight_v"},
        {"parametrizations.weight.original0", "parametrizations.weight.original1"},
    };
    char name[320], gname[320];
    eng_tensor t;
    snprintf(name, sizeof name, "%s.weight", base);
    *owned = NULL;
    if (st_model_find(c->st, name)) {
        int rc = eng_tensor_read(c->st, name, ndim, shape, 1, &t, owned, err);
        if (rc) return rc;
        *data = t.data;
        return 0;
    }
    for (int p = 0; p < 2; p++) {
        snprintf(gname, sizeof gname, "%s.%s", base, pairs[p][0]);
        snprintf(name, sizeof name, "%s.%s", base, pairs[p][1]);
        if (!st_model_find(c->st, gname) && !st_model_find(c->st, name)) continue;
        int64_t gshape[ENG_MAX_DIMS] = {shape[0], 1, 1, 1};
        eng_tensor g, v;
        void *gown = NULL, *vown = NULL;
        int rc = eng_tensor_read(c->st, gname, ndim, gshape, 1, &g, &gown, err);
        if (!rc) rc = eng_tensor_read(c->st, name, ndim, shape, 1, &v, &vown, err);
        int64_t n = 1;
        for (int i = 0; i < ndim; i++)
            n *= shape[i];
        float *w = rc ? NULL : malloc((size_t)n * sizeof *w);
        if (!rc && !w)
            rc = eng_errorf(err, ENG_ENOMEM, "%s: folding '%s': out of memory", c->dir, base);
        if (!rc) fold_weight_norm(w, g.data, v.data, shape[0], n / shape[0]);
        free(gown);
        free(vown);
        if (rc) return rc;
        *data = w;
        *owned = w;
        return 0;
    }
    return eng_errorf(err, ENG_ENOTFOUND,
                      "%s: tensor '%s.weight' missing (nor weight_g/weight_v, nor "
                      "parametrizations.weight.original0/1)",
                      c->dir, base);
}

/* Places one tensor of `shape` in the weights buffer and fills *t with its view. In the counting
 * pass only the size is added. `src` is F32 host data of exactly that many elements. */
static int place(load_ctx *c, int ndim, const int64_t *shape, const float *src, eng_tensor *t,
                 eng_error *err) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    size_t bytes = (size_t)n * sizeof(float);
    size_t aligned = (bytes + 255) & ~(size_t)255;
    if (c->dst) {
        *t = eng_view(c->dst + c->used, ENG_DT_F32, ndim, shape);
        int rc = eng_upload(c->m->be, t->data, src, bytes);
        if (rc) return eng_errorf(err, rc, "%s: upload: %s", c->dir, c->m->be->errstr);
    }
    c->used += aligned;
    return 0;
}

/* A plain tensor (bias, Snake alpha) read as `file_shape`, placed as `shape`. */
static int load_tensor(load_ctx *c, const char *name, int file_ndim, const int64_t *file_shape,
                       int ndim, const int64_t *shape, eng_tensor *t, eng_error *err) {
    if (!c->dst) return place(c, ndim, shape, NULL, t, err);
    eng_tensor h;
    void *owned = NULL;
    int rc = eng_tensor_read(c->st, name, file_ndim, file_shape, 1, &h, &owned, err);
    if (!rc) rc = place(c, ndim, shape, h.data, t, err);
    free(owned);
    return rc;
}

/* A conv weight (folded when needed) plus its bias. For transposed convs the stored layout is
 * [cin, cout, k], otherwise [cout, cin, k]. */
static int load_conv(load_ctx *c, const char *base, int64_t d0, int64_t d1, int64_t k, int64_t cout,
                     dac_conv *conv, eng_error *err) {
    int64_t wshape[3] = {d0, d1, k};
    char name[320];
    int rc;
    if (c->dst) {
        const float *w;
        void *owned;
        if ((rc = read_weight(c, base, 3, wshape, &w, &owned, err))) return rc;
        rc = place(c, 3, wshape, w, &conv->w, err);
        free(owned);
        if (rc) return rc;
    } else if ((rc = place(c, 3, wshape, NULL, &conv->w, err))) {
        return rc;
    }
    snprintf(name, sizeof name, "%s.bias", base);
    return load_tensor(c, name, 1, &cout, 1, &cout, &conv->b, err);
}

/* A Snake alpha, stored [1, channels, 1], placed as [channels]. */
static int load_alpha(load_ctx *c, const char *name, int64_t channels, eng_tensor *t,
                      eng_error *err) {
    int64_t fshape[3] = {1, channels, 1};
    return load_tensor(c, name, 3, fshape, 1, &channels, t, err);
}

/* Walks every decoder tensor in a fixed order (both passes use it). */
static int load_decoder(load_ctx *c, eng_error *err) {
    dac_model *m = c->m;
    const dac_config *cfg = &m->cfg;
    char name[256], base[256];
    int rc;
    if ((rc = load_conv(c, "decoder.conv1", cfg->decoder_hidden_size, cfg->hidden_size, DAC_KERNEL,
                        cfg->decoder_hidden_size, &m->conv1, err)))
        return rc;
    for (int b = 0; b < cfg->n_blocks; b++) {
        dac_block *blk = &m->blocks[b];
        blk->cin = cfg->decoder_hidden_size >> b;
        blk->cout = cfg->decoder_hidden_size >> (b + 1);
        blk->stride = cfg->upsampling_ratios[b];
        snprintf(name, sizeof name, "decoder.block.%d.snake1.alpha", b);
        if ((rc = load_alpha(c, name, blk->cin, &blk->alpha, err))) return rc;
        snprintf(base, sizeof base, "decoder.block.%d.conv_t1", b);
        if ((rc = load_conv(c, base, blk->cin, blk->cout, 2 * blk->stride, blk->cout, &blk->conv_t,
                            err)))
            return rc;
        for (int r = 0; r < DAC_RES_UNITS; r++) {
            dac_res_unit *ru = &blk->res[r];
            snprintf(name, sizeof name, "decoder.block.%d.res_unit%d.snake1.alpha", b, r + 1);
            if ((rc = load_alpha(c, name, blk->cout, &ru->alpha1, err))) return rc;
            snprintf(name, sizeof name, "decoder.block.%d.res_unit%d.snake2.alpha", b, r + 1);
            if ((rc = load_alpha(c, name, blk->cout, &ru->alpha2, err))) return rc;
            snprintf(base, sizeof base, "decoder.block.%d.res_unit%d.conv1", b, r + 1);
            if ((rc = load_conv(c, base, blk->cout, blk->cout, DAC_KERNEL, blk->cout, &ru->conv1,
                                err)))
                return rc;
            snprintf(base, sizeof base, "decoder.block.%d.res_unit%d.conv2", b, r + 1);
            if ((rc = load_conv(c, base, blk->cout, blk->cout, 1, blk->cout, &ru->conv2, err)))
                return rc;
        }
    }
    int last = cfg->decoder_hidden_size >> cfg->n_blocks;
    if ((rc = load_alpha(c, "decoder.snake1.alpha", last, &m->alpha_out, err))) return rc;
    return load_conv(c, "decoder.conv2", 1, last, DAC_KERNEL, 1, &m->conv2, err);
}

/* Builds the projected codebook table from the quantizers' codebooks and out_proj (folded if
 * needed): table_i[code][h] = b_i[h] + sum_d W_i[h][d] * codebook_i[code][d], summed in f32 in
 * the order transformers' 1x1 conv uses, once at load instead of for every decoded frame. */
static int load_quantizers(load_ctx *c, eng_error *err) {
    dac_model *m = c->m;
    const dac_config *cfg = &m->cfg;
    int hidden = cfg->hidden_size, dim = cfg->codebook_dim;
    char name[256];
    for (int i = 0; i < cfg->n_codebooks; i++) {
        eng_tensor book, bias;
        void *book_own = NULL, *w_own = NULL, *b_own = NULL;
        const float *w = NULL;
        int64_t cshape[2] = {cfg->codebook_size, dim};
        int64_t wshape[3] = {hidden, dim, 1};
        int64_t bshape = hidden;
        snprintf(name, sizeof name, "quantizer.quantizers.%d.codebook.weight", i);
        int rc = eng_tensor_read(c->st, name, 2, cshape, 1, &book, &book_own, err);
        if (!rc) {
            snprintf(name, sizeof name, "quantizer.quantizers.%d.out_proj", i);
            rc = read_weight(c, name, 3, wshape, &w, &w_own, err);
        }
        if (!rc) {
            snprintf(name, sizeof name, "quantizer.quantizers.%d.out_proj.bias", i);
            rc = eng_tensor_read(c->st, name, 1, &bshape, 1, &bias, &b_own, err);
        }
        if (!rc) {
            const float *rows = book.data, *b = bias.data;
            for (int code = 0; code < cfg->codebook_size; code++) {
                const float *e = rows + (size_t)code * dim;
                float *out = m->proj_table + ((size_t)i * cfg->codebook_size + code) * hidden;
                for (int h = 0; h < hidden; h++) {
                    float acc = b[h];
                    for (int d = 0; d < dim; d++)
                        acc += w[(size_t)h * dim + d] * e[d];
                    out[h] = acc;
                }
            }
        }
        free(book_own);
        free(w_own);
        free(b_own);
        if (rc) return rc;
    }
    return 0;
}

/* Tells a DAC checkpoint from another kind before reading any tensor: a file without the
 * quantizer tensors is not a DAC codec, and we say what it looks like. */
static int check_kind(const st_model *st, const char *dir, eng_error *err) {
    if (st_model_find(st, "quantizer.quantizers.0.codebook.weight") &&
        (st_model_find(st, "decoder.conv1.weight") || st_model_find(st, "decoder.conv1.weight_v") ||
         st_model_find(st, "decoder.conv1.parametrizations.weight.original1")))
        return 0;
    if (st_model_find(st, "model.decoder.embeddings.embed.weight") ||
        st_model_find(st, "logits_dense.weight") ||
        st_model_find(st, "model.encoder.embedding.weight"))
        return eng_errorf(err, ENG_EMISMATCH,
                          "%s: this is a Dia text-to-speech checkpoint, not a DAC codec "
                          "(no quantizer/decoder tensors)",
                          dir);
    return eng_errorf(err, ENG_EMISMATCH,
                      "%s: not a DAC codec checkpoint: tensors "
                      "'quantizer.quantizers.0.codebook.weight' and 'decoder.conv1.weight' "
                      "missing",
                      dir);
}

/* Receptive half-width of one output frame, in latent frames, walking the decoder backwards:
 * a k=7 conv widens by 3 samples, a residual stack by 3 * (1 + 3 + 9), a stride-s transposed
 * conv maps R samples to ceil(R / s) + 2 input samples. One frame of slack on top. */
static int receptive_margin(const dac_config *cfg) {
    int64_t r = DAC_KERNEL / 2;
    for (int b = cfg->n_blocks - 1; b >= 0; b--) {
        for (int u = 0; u < DAC_RES_UNITS; u++)
            r += (DAC_KERNEL / 2) * res_dilations[u];
        int s = cfg->upsampling_ratios[b];
        r = (r + s - 1) / s + 2;
    }
    r += DAC_KERNEL / 2;
    return (int)r + 1;
}

/* Largest activation (in floats) of one pass over `frames` latent frames. */
static size_t workspace_floats(const dac_config *cfg, int64_t frames) {
    int64_t len = frames, best = (int64_t)cfg->hidden_size * len;
    int64_t first = (int64_t)cfg->decoder_hidden_size * len;
    if (first > best) best = first;
    for (int b = 0; b < cfg->n_blocks; b++) {
        len *= cfg->upsampling_ratios[b];
        int64_t sz = (int64_t)(cfg->decoder_hidden_size >> (b + 1)) * len;
        if (sz > best) best = sz;
    }
    return (size_t)best;
}

int dac_model_load(dac_model **out, eng_backend *be, const char *dir, const dac_options *opts,
                   eng_error *err) {
    char path[4096];
    st_model *st = NULL;
    int rc;
    *out = NULL;
    dac_model *m = calloc(1, sizeof *m);
    if (!m) return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", dir);
    m->be = be;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = dac_config_read(&m->cfg, path, err))) goto fail;
    if ((rc = st_model_open(&st, dir, err))) goto fail;
    if ((rc = check_kind(st, dir, err))) goto fail;

    const dac_config *cfg = &m->cfg;
    m->chunk_frames =
        opts && opts->chunk_frames > 0 ? opts->chunk_frames : DAC_DEFAULT_CHUNK_FRAMES;
    m->margin = receptive_margin(cfg);
    m->max_frames = (int64_t)m->chunk_frames + 2 * (int64_t)m->margin;

    size_t table = (size_t)cfg->n_codebooks * cfg->codebook_size * cfg->hidden_size;
    size_t lat = (size_t)cfg->hidden_size * (size_t)m->max_frames;
    size_t pcm = (size_t)cfg->hop_length * (size_t)m->max_frames;
    m->proj_table = malloc(table * sizeof(float));
    m->latent_row = malloc((size_t)cfg->hidden_size * sizeof(float));
    m->latent_host = malloc(lat * sizeof(float));
    m->pcm_host = malloc(pcm * sizeof(float));
    m->host_bytes = (table + (size_t)cfg->hidden_size + lat + pcm) * sizeof(float);
    if (!m->proj_table || !m->latent_row || !m->latent_host || !m->pcm_host) {
        rc = eng_errorf(err, ENG_ENOMEM, "%s: out of host memory", dir);
        goto fail;
    }

    load_ctx c = {m, st, dir, NULL, 0};
    if ((rc = load_quantizers(&c, err))) goto fail;
    if ((rc = load_decoder(&c, err))) goto fail; /* counting pass */
    m->weights_bytes = c.used;
    if ((rc = eng_alloc(be, m->weights_bytes, &m->weights))) {
        rc = eng_errorf(err, rc, "%s: allocating %zu bytes of weights: %s", dir, m->weights_bytes,
                        be->errstr);
        goto fail;
    }
    c.dst = m->weights;
    c.used = 0;
    if ((rc = load_decoder(&c, err))) goto fail;

    m->ws_floats = workspace_floats(cfg, m->max_frames);
    for (int i = 0; i < 3; i++) {
        if ((rc = eng_alloc(be, m->ws_floats * sizeof(float), &m->ws[i]))) {
            rc = eng_errorf(err, rc, "%s: allocating workspace (%zu bytes): %s", dir,
                            m->ws_floats * sizeof(float), be->errstr);
            goto fail;
        }
    }
    if ((rc = eng_sync(be))) {
        rc = eng_errorf(err, rc, "%s: upload: %s", dir, be->errstr);
        goto fail;
    }
    st_model_close(st);
    *out = m;
    return 0;
fail:
    st_model_close(st);
    dac_model_free(m);
    return rc;
}

void dac_model_free(dac_model *m) {
    if (!m) return;
    for (int i = 0; i < 3; i++)
        eng_free(m->be, m->ws[i]);
    eng_free(m->be, m->weights);
    free(m->proj_table);
    free(m->latent_row);
    free(m->latent_host);
    free(m->pcm_host);
    free(m);
}

const dac_config *dac_model_config(const dac_model *m) {
    return &m->cfg;
}

void dac_model_mem(const dac_model *m, dac_mem *out) {
    out->weights = m->weights_bytes;
    out->workspace = 3 * m->ws_floats * sizeof(float);
    out->host = m->host_bytes;
}

int dac_model_margin_frames(const dac_model *m) {
    return m->margin;
}

int64_t dac_samples(const dac_model *m, int64_t n_frames) {
    return n_frames * m->cfg.hop_length;
}

/* Latent of frames [lo, hi) of codes [n_codebooks][stride] into out[hidden][hi - lo]:
 * z[h][t] = sum_i table_i[code_i[t]][h], codebooks added in order (0 + z_0 + z_1 + ...) like
 * transformers' quantizer.from_codes. */
static int latent_range(const dac_model *m, const int32_t *codes, int64_t stride, int64_t lo,
                        int64_t hi, float *out, eng_error *err) {
    const dac_config *cfg = &m->cfg;
    int64_t len = hi - lo;
    int hidden = cfg->hidden_size;
    for (int64_t t = 0; t < len; t++)
        for (int i = 0; i < cfg->n_codebooks; i++) {
            int32_t code = codes[(int64_t)i * stride + lo + t];
            if (code < 0 || code >= cfg->codebook_size)
                return eng_errorf(err, ENG_EINVAL,
                                  "dac: code %d of codebook %d at frame %lld is outside [0, %d)",
                                  code, i, (long long)(lo + t), cfg->codebook_size);
        }
    float *row = m->latent_row;
    for (int64_t t = 0; t < len; t++) {
        for (int h = 0; h < hidden; h++)
            row[h] = 0.0f;
        for (int i = 0; i < cfg->n_codebooks; i++) {
            int32_t code = codes[(int64_t)i * stride + lo + t];
            const float *p = m->proj_table + ((size_t)i * cfg->codebook_size + code) * hidden;
            for (int h = 0; h < hidden; h++)
                row[h] += p[h];
        }
        for (int h = 0; h < hidden; h++)
            out[(size_t)h * len + t] = row[h];
    }
    return 0;
}

int dac_latent(const dac_model *m, const int32_t *codes, int64_t n_frames, float *latent,
               eng_error *err) {
    if (n_frames < 0) return eng_errorf(err, ENG_EINVAL, "dac: negative frame count");
    return latent_range(m, codes, n_frames, 0, n_frames, latent, err);
}

/* Turns an op failure into an error naming the stage. */
static int op_fail(dac_model *m, int rc, const char *stage, eng_error *err) {
    return eng_errorf(err, rc, "dac decode: %s: %s", stage, m->be->errstr);
}

/* Runs the decoder on the latent already in ws[0] ([hidden, frames]); on success *wave is the
 * [1, hop * frames] waveform (one of the workspace buffers). */
static int run_decoder(dac_model *m, int64_t frames, eng_tensor *wave, eng_error *err) {
    eng_backend *be = m->be;
    const dac_config *cfg = &m->cfg;
    void *a = m->ws[0], *x = m->ws[1], *tmp = m->ws[2];
    int64_t len = frames;
    int rc;

    eng_tensor z = eng_view2(a, ENG_DT_F32, cfg->hidden_size, len);
    eng_tensor h = eng_view2(x, ENG_DT_F32, cfg->decoder_hidden_size, len);
    if ((rc = eng_conv1d(be, &h, &z, &m->conv1.w, &m->conv1.b, 1, DAC_KERNEL / 2)))
        return op_fail(m, rc, "decoder.conv1", err);
    for (int b = 0; b < cfg->n_blocks; b++) {
        const dac_block *blk = &m->blocks[b];
        /* h: [cin, len] in x */
        eng_tensor s = eng_view2(a, ENG_DT_F32, blk->cin, len);
        if ((rc = eng_snake(be, &s, &h, &blk->alpha))) return op_fail(m, rc, "block snake", err);
        len *= blk->stride;
        h = eng_view2(x, ENG_DT_F32, blk->cout, len);
        if ((rc = eng_conv_transpose1d(be, &h, &s, &blk->conv_t.w, &blk->conv_t.b, blk->stride,
                                       blk->stride / 2)))
            return op_fail(m, rc, "block conv_t1", err);
        for (int r = 0; r < DAC_RES_UNITS; r++) {
            const dac_res_unit *ru = &blk->res[r];
            int dil = res_dilations[r];
            eng_tensor u = eng_view2(a, ENG_DT_F32, blk->cout, len);
            eng_tensor v = eng_view2(tmp, ENG_DT_F32, blk->cout, len);
            if ((rc = eng_snake(be, &u, &h, &ru->alpha1)))
                return op_fail(m, rc, "res_unit snake1", err);
            if ((rc = eng_conv1d(be, &v, &u, &ru->conv1.w, &ru->conv1.b, dil,
                                 (DAC_KERNEL / 2) * dil)))
                return op_fail(m, rc, "res_unit conv1", err);
            if ((rc = eng_snake(be, &v, &v, &ru->alpha2)))
                return op_fail(m, rc, "res_unit snake2", err);
            if ((rc = eng_conv1d(be, &u, &v, &ru->conv2.w, &ru->conv2.b, 1, 0)))
                return op_fail(m, rc, "res_unit conv2", err);
            if ((rc = eng_add(be, &h, &u))) return op_fail(m, rc, "res_unit add", err);
        }
    }
    int last = cfg->decoder_hidden_size >> cfg->n_blocks;
    eng_tensor s = eng_view2(a, ENG_DT_F32, last, len);
    if ((rc = eng_snake(be, &s, &h, &m->alpha_out))) return op_fail(m, rc, "decoder.snake1", err);
    *wave = eng_view2(tmp, ENG_DT_F32, 1, len);
    if ((rc = eng_conv1d(be, wave, &s, &m->conv2.w, &m->conv2.b, 1, DAC_KERNEL / 2)))
        return op_fail(m, rc, "decoder.conv2", err);
    if ((rc = eng_tanh(be, wave, wave))) return op_fail(m, rc, "tanh", err);
    return 0;
}

/* Decodes frames [lo, hi) (hi - lo <= max_frames) and copies the samples of frames [keep_lo,
 * keep_hi) into pcm at their absolute position. */
static int decode_window(dac_model *m, const int32_t *codes, int64_t n_frames, int64_t lo,
                         int64_t hi, int64_t keep_lo, int64_t keep_hi, float *pcm, eng_error *err) {
    const dac_config *cfg = &m->cfg;
    int64_t len = hi - lo;
    int rc = latent_range(m, codes, n_frames, lo, hi, m->latent_host, err);
    if (rc) return rc;
    size_t zbytes = (size_t)cfg->hidden_size * (size_t)len * sizeof(float);
    if ((rc = eng_upload(m->be, m->ws[0], m->latent_host, zbytes)))
        return op_fail(m, rc, "latent upload", err);
    eng_tensor wave;
    if ((rc = run_decoder(m, len, &wave, err))) return rc;
    size_t samples = (size_t)len * (size_t)cfg->hop_length;
    if ((rc = eng_download(m->be, m->pcm_host, wave.data, samples * sizeof(float))))
        return op_fail(m, rc, "waveform download", err);
    if ((rc = eng_sync(m->be))) return op_fail(m, rc, "sync", err);
    size_t hop = (size_t)cfg->hop_length;
    memcpy(pcm + (size_t)keep_lo * hop, m->pcm_host + (size_t)(keep_lo - lo) * hop,
           (size_t)(keep_hi - keep_lo) * hop * sizeof(float));
    return 0;
}

int dac_decode(dac_model *m, const int32_t *codes, int64_t n_frames, float *pcm, eng_error *err) {
    if (n_frames < 0) return eng_errorf(err, ENG_EINVAL, "dac: negative frame count");
    if (n_frames == 0) return 0;
    if (n_frames > INT64_MAX / m->cfg.hop_length)
        return eng_errorf(err, ENG_EINVAL, "dac: %lld frames is too many", (long long)n_frames);
    /* Whatever fits in one pass is decoded whole: no chunk edges at all. */
    if (n_frames <= m->max_frames)
        return decode_window(m, codes, n_frames, 0, n_frames, 0, n_frames, pcm, err);
    for (int64_t f0 = 0; f0 < n_frames; f0 += m->chunk_frames) {
        int64_t f1 = f0 + m->chunk_frames < n_frames ? f0 + m->chunk_frames : n_frames;
        int64_t lo = f0 - m->margin > 0 ? f0 - m->margin : 0;
        int64_t hi = f1 + m->margin < n_frames ? f1 + m->margin : n_frames;
        int rc = decode_window(m, codes, n_frames, lo, hi, f0, f1, pcm, err);
        if (rc) return rc;
    }
    return 0;
}
