/* quant_fixture.c - see quant_fixture.h. */
#include "quant_fixture.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/safetensors.h"

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double qf_normal(qf_rng *r) {
    if (r->have) {
        r->have = 0;
        return r->spare;
    }
    double u1 = ((double)(splitmix(&r->s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(splitmix(&r->s) >> 11) / 9007199254740992.0;
    double m = sqrt(-2.0 * log(u1));
    r->spare = m * sin(2.0 * M_PI * u2);
    r->have = 1;
    return m * cos(2.0 * M_PI * u2);
}

typedef struct fx_tensor {
    char name[160];
    int ndim;
    int64_t shape[2];
    int norm; /* 1 +- 0.2 instead of N(0, 1/in) */
} fx_tensor;

typedef struct fx_list {
    fx_tensor *t;
    size_t n, cap;
} fx_list;

static int add(fx_list *l, int norm, int64_t d0, int64_t d1, const char *fmt, int layer) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        fx_tensor *t = realloc(l->t, cap * sizeof *t);
        if (!t) return -1;
        l->t = t;
        l->cap = cap;
    }
    fx_tensor *t = &l->t[l->n++];
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->norm = norm;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    return 0;
}

static int build(fx_list *l, const qf_dia_dims *d) {
    int h = d->hidden, f = d->intermediate, rc = 0;
    rc |= add(l, 0, 256, h, "model.encoder.embedding.weight", 0);
    for (int i = 0; i < d->enc_layers; i++) {
        rc |= add(l, 1, h, 0, "model.encoder.layers.%d.pre_sa_norm.weight", i);
        rc |= add(l, 0, h, h, "model.encoder.layers.%d.self_attention.q_proj.weight", i);
        rc |= add(l, 0, h, h, "model.encoder.layers.%d.self_attention.k_proj.weight", i);
        rc |= add(l, 0, h, h, "model.encoder.layers.%d.self_attention.v_proj.weight", i);
        rc |= add(l, 0, h, h, "model.encoder.layers.%d.self_attention.o_proj.weight", i);
        rc |= add(l, 1, h, 0, "model.encoder.layers.%d.post_sa_norm.weight", i);
        rc |= add(l, 0, 2 * f, h, "model.encoder.layers.%d.mlp.gate_up_proj.weight", i);
        rc |= add(l, 0, h, f, "model.encoder.layers.%d.mlp.down_proj.weight", i);
    }
    rc |= add(l, 1, h, 0, "model.encoder.norm.weight", 0);
    rc |= add(l, 0, d->vocab_rows, h, "model.decoder.embeddings.embed.weight", 0);
    for (int i = 0; i < d->dec_layers; i++) {
        rc |= add(l, 1, h, 0, "model.decoder.layers.%d.pre_sa_norm.weight", i);
        rc |= add(l, 0, h, h, "model.decoder.layers.%d.self_attention.q_proj.weight", i);
        rc |= add(l, 0, d->kv_dim, h, "model.decoder.layers.%d.self_attention.k_proj.weight", i);
        rc |= add(l, 0, d->kv_dim, h, "model.decoder.layers.%d.self_attention.v_proj.weight", i);
        rc |= add(l, 0, h, h, "model.decoder.layers.%d.self_attention.o_proj.weight", i);
        rc |= add(l, 1, h, 0, "model.decoder.layers.%d.pre_ca_norm.weight", i);
        rc |= add(l, 0, h, h, "model.decoder.layers.%d.cross_attention.q_proj.weight", i);
        rc |= add(l, 0, h, h, "model.decoder.layers.%d.cross_attention.k_proj.weight", i);
        rc |= add(l, 0, h, h, "model.decoder.layers.%d.cross_attention.v_proj.weight", i);
        rc |= add(l, 0, h, h, "model.decoder.layers.%d.cross_attention.o_proj.weight", i);
        rc |= add(l, 1, h, 0, "model.decoder.layers.%d.pre_mlp_norm.weight", i);
        rc |= add(l, 0, 2 * f, h, "model.decoder.layers.%d.mlp.gate_up_proj.weight", i);
        rc |= add(l, 0, h, f, "model.decoder.layers.%d.mlp.down_proj.weight", i);
    }
    rc |= add(l, 1, h, 0, "model.decoder.norm.weight", 0);
    rc |= add(l, 0, d->vocab_rows, h, "logits_dense.weight", 0);
    return rc;
}

static void put(unsigned char *dst, eng_dtype dt, float v) {
    if (dt == ENG_DT_F32) {
        memcpy(dst, &v, 4);
    } else {
        uint16_t h = dt == ENG_DT_BF16 ? eng_f32_to_bf16(v) : eng_f32_to_f16(v);
        memcpy(dst, &h, 2);
    }
}

int qf_write_dia(const char *dir, const qf_dia_dims *dims, eng_dtype dtype, uint64_t seed) {
    fx_list l = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_writer *w = NULL;
    eng_error err = {0};
    unsigned char *row = NULL;
    int rc = build(&l, dims);
    if (rc == 0) rc = st_writer_open(&w, path, &err);
    if (rc == 0) rc = st_writer_metadata(w, "format", "pt");
    for (size_t i = 0; i < l.n && rc == 0; i++)
        rc = st_writer_declare(w, l.t[i].name, dtype, l.t[i].ndim, l.t[i].shape);
    if (rc == 0) rc = st_writer_begin_data(w);
    size_t es = eng_dtype_size(dtype);
    qf_rng rng = {seed, 0, 0};
    for (size_t i = 0; i < l.n && rc == 0; i++) {
        fx_tensor *t = &l.t[i];
        int64_t rows = t->ndim == 2 ? t->shape[0] : 1;
        int64_t in = t->ndim == 2 ? t->shape[1] : t->shape[0];
        unsigned char *grown = realloc(row, (size_t)in * es);
        if (!grown) {
            rc = -1;
            break;
        }
        row = grown;
        for (int64_t r = 0; r < rows && rc == 0; r++) {
            for (int64_t j = 0; j < in; j++) {
                double u = (double)(splitmix(&rng.s) >> 11) / 9007199254740992.0;
                double v = t->norm ? 1.0 + 0.2 * (2.0 * u - 1.0)
                                   : qf_normal(&rng) / sqrt((double)in);
                put(row + (size_t)j * es, dtype, (float)v);
            }
            rc = st_writer_write(w, row, (size_t)in * es);
        }
    }
    if (rc == 0) {
        rc = st_writer_finish(w);
        if (rc != 0) fprintf(stderr, "qf_write_dia: %s\n", st_writer_errstr(w));
        if (rc == 0) w = NULL;
    } else if (w) {
        fprintf(stderr, "qf_write_dia: %s %s\n", err.msg, st_writer_errstr(w));
    }
    st_writer_abort(w);
    free(row);
    free(l.t);
    return rc;
}

int qf_tempdir(char *buf, size_t n, const char *tag) {
    const char *tmp = getenv("TMPDIR");
    snprintf(buf, n, "%s/voxq-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    return mkdtemp(buf) ? 0 : -1;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void qf_rmtree(const char *path) {
    /* Only ever our own temporary directories. */
    if (strstr(path, "/voxq-") == NULL) return;
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void *qf_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(len > 0 ? (size_t)len : 1);
    if (buf && len > 0 && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) *size = (size_t)len;
    return buf;
}
