/* tiny_ckpt.c - random Dia-shaped checkpoints (see tiny_ckpt.h). */
#include "tiny_ckpt.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/safetensors.h"

const tiny_dia_config tiny_dia_tiny = {
    .enc_hidden = 64,
    .enc_layers = 2,
    .enc_heads = 4,
    .enc_kv_heads = 4,
    .enc_head_dim = 16,
    .enc_ffn = 128,
    .enc_vocab = 256,
    .enc_max_pos = 1024,
    .dec_hidden = 64,
    .dec_layers = 2,
    .dec_heads = 4,
    .dec_kv_heads = 2,
    .dec_head_dim = 16,
    .dec_ffn = 128,
    .cross_heads = 4,
    .cross_kv_heads = 4,
    .cross_head_dim = 16,
    .dec_vocab = 1028,
    .channels = 9,
    .dec_max_pos = 3072,
};

const tiny_dia_config tiny_dia_full = {
    .enc_hidden = 1024,
    .enc_layers = 12,
    .enc_heads = 16,
    .enc_kv_heads = 16,
    .enc_head_dim = 128,
    .enc_ffn = 4096,
    .enc_vocab = 256,
    .enc_max_pos = 1024,
    .dec_hidden = 2048,
    .dec_layers = 18,
    .dec_heads = 16,
    .dec_kv_heads = 4,
    .dec_head_dim = 128,
    .dec_ffn = 8192,
    .cross_heads = 16,
    .cross_kv_heads = 16,
    .cross_head_dim = 128,
    .dec_vocab = 1028,
    .channels = 9,
    .dec_max_pos = 3072,
};

enum { ENC_PER_LAYER = 8, DEC_PER_LAYER = 13 };

int tiny_dia_tensor_count(const tiny_dia_config *c) {
    return 1 + ENC_PER_LAYER * c->enc_layers + 1 + 1 + DEC_PER_LAYER * c->dec_layers + 1 + 1;
}

static void set(tiny_tensor_spec *s, tiny_kind kind, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void set(tiny_tensor_spec *s, tiny_kind kind, int64_t d0, int64_t d1, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->kind = kind;
    s->ndim = d1 ? 2 : 1;
    s->shape[0] = d0;
    s->shape[1] = d1 ? d1 : 1;
}

#define ENC "model.encoder.layers.%d.%s"
#define DEC "model.decoder.layers.%d.%s"

/* Tensor order: the state_dict order of DiaForConditionalGeneration. */
void tiny_dia_tensor_spec(const tiny_dia_config *c, int i, tiny_tensor_spec *s) {
    memset(s, 0, sizeof *s);
    s->index = i;
    const int64_t eh = c->enc_hidden, dh = c->dec_hidden;
    const int64_t enc_q = (int64_t)c->enc_heads * c->enc_head_dim;
    const int64_t enc_kv = (int64_t)c->enc_kv_heads * c->enc_head_dim;
    const int64_t dec_q = (int64_t)c->dec_heads * c->dec_head_dim;
    const int64_t dec_kv = (int64_t)c->dec_kv_heads * c->dec_head_dim;
    const int64_t x_q = (int64_t)c->cross_heads * c->cross_head_dim;
    const int64_t x_kv = (int64_t)c->cross_kv_heads * c->cross_head_dim;
    const int64_t enc_end = 1 + (int64_t)ENC_PER_LAYER * c->enc_layers;
    const int64_t dec_begin = enc_end + 2, dec_end = dec_begin + DEC_PER_LAYER * c->dec_layers;

    if (i == 0) {
        set(s, TINY_EMBED, c->enc_vocab, eh, "model.encoder.embedding.weight");
    } else if (i < enc_end) {
        int l = (i - 1) / ENC_PER_LAYER;
        switch ((i - 1) % ENC_PER_LAYER) {
        case 0:
            set(s, TINY_NORM, eh, 0, ENC, l, "pre_sa_norm.weight");
            break;
        case 1:
            set(s, TINY_LINEAR, enc_q, eh, ENC, l, "self_attention.q_proj.weight");
            break;
        case 2:
            set(s, TINY_LINEAR, enc_kv, eh, ENC, l, "self_attention.k_proj.weight");
            break;
        case 3:
            set(s, TINY_LINEAR, enc_kv, eh, ENC, l, "self_attention.v_proj.weight");
            break;
        case 4:
            set(s, TINY_LINEAR, eh, enc_q, ENC, l, "self_attention.o_proj.weight");
            break;
        case 5:
            set(s, TINY_NORM, eh, 0, ENC, l, "post_sa_norm.weight");
            break;
        case 6:
            set(s, TINY_LINEAR, 2 * (int64_t)c->enc_ffn, eh, ENC, l, "mlp.gate_up_proj.weight");
            break;
        default:
            set(s, TINY_LINEAR, eh, c->enc_ffn, ENC, l, "mlp.down_proj.weight");
            break;
        }
    } else if (i == enc_end) {
        set(s, TINY_NORM, eh, 0, "model.encoder.norm.weight");
    } else if (i == enc_end + 1) {
        set(s, TINY_EMBED, (int64_t)c->dec_vocab * c->channels, dh,
            "model.decoder.embeddings.embed.weight");
    } else if (i < dec_end) {
        int l = (int)((i - dec_begin) / DEC_PER_LAYER);
        switch ((i - dec_begin) % DEC_PER_LAYER) {
        case 0:
            set(s, TINY_NORM, dh, 0, DEC, l, "pre_sa_norm.weight");
            break;
        case 1:
            set(s, TINY_LINEAR, dec_q, dh, DEC, l, "self_attention.q_proj.weight");
            break;
        case 2:
            set(s, TINY_LINEAR, dec_kv, dh, DEC, l, "self_attention.k_proj.weight");
            break;
        case 3:
            set(s, TINY_LINEAR, dec_kv, dh, DEC, l, "self_attention.v_proj.weight");
            break;
        case 4:
            set(s, TINY_LINEAR, dh, dec_q, DEC, l, "self_attention.o_proj.weight");
            break;
        case 5:
            set(s, TINY_NORM, dh, 0, DEC, l, "pre_ca_norm.weight");
            break;
        case 6:
            set(s, TINY_LINEAR, x_q, dh, DEC, l, "cross_attention.q_proj.weight");
            break;
        case 7:
            set(s, TINY_LINEAR, x_kv, eh, DEC, l, "cross_attention.k_proj.weight");
            break;
        case 8:
            set(s, TINY_LINEAR, x_kv, eh, DEC, l, "cross_attention.v_proj.weight");
            break;
        case 9:
            set(s, TINY_LINEAR, dh, x_q, DEC, l, "cross_attention.o_proj.weight");
            break;
        case 10:
            set(s, TINY_NORM, dh, 0, DEC, l, "pre_mlp_norm.weight");
            break;
        case 11:
            set(s, TINY_LINEAR, 2 * (int64_t)c->dec_ffn, dh, DEC, l, "mlp.gate_up_proj.weight");
            break;
        default:
            set(s, TINY_LINEAR, dh, c->dec_ffn, DEC, l, "mlp.down_proj.weight");
            break;
        }
    } else if (i == dec_end) {
        set(s, TINY_NORM, dh, 0, "model.decoder.norm.weight");
    } else {
        set(s, TINY_LINEAR, (int64_t)c->dec_vocab * c->channels, dh, "logits_dense.weight");
    }
}

/* splitmix64: a counter-based generator, one 64-bit hash per element. */
static inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Per-tensor constants of the value function. */
typedef struct value_gen {
    uint64_t base; /* hash of (seed, tensor index) */
    tiny_kind kind;
    float scale; /* multiplies the normal deviate of linear weights and embeddings */
} value_gen;

static value_gen value_gen_init(const tiny_tensor_spec *s, uint64_t seed) {
    value_gen g = {mix64(seed ^ ((uint64_t)s->index << 48)), s->kind, 1.0f};
    if (s->kind == TINY_LINEAR) g.scale = 0.2f / sqrtf((float)s->shape[1]);
    return g;
}

static inline float value_at(const value_gen *g, int64_t elem) {
    uint64_t h = mix64(g->base + (uint64_t)elem);
    if (g->kind == TINY_NORM) return 0.8f + 0.4f * (float)((double)(h >> 11) * 0x1.0p-53);
    /* Irwin-Hall of four 16-bit uniforms, centred and scaled to unit variance. */
    uint32_t sum = (uint32_t)(h & 0xffff) + (uint32_t)((h >> 16) & 0xffff) +
                   (uint32_t)((h >> 32) & 0xffff) + (uint32_t)(h >> 48);
    float n = (((float)sum + 2.0f) * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
    return n * g->scale;
}

float tiny_dia_value(const tiny_tensor_spec *s, uint64_t seed, int64_t elem) {
    value_gen g = value_gen_init(s, seed);
    return value_at(&g, elem);
}

static cJSON *config_json(const tiny_dia_config *c, eng_dtype dtype) {
    cJSON *root = cJSON_CreateObject(), *enc = cJSON_CreateObject(), *dec = cJSON_CreateObject();
    const int delay[9] = {0, 8, 9, 10, 11, 12, 13, 14, 15};
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "architectures"),
                         cJSON_CreateString("DiaForConditionalGeneration"));
    cJSON_AddNumberToObject(root, "bos_token_id", 1026);
    cJSON_AddItemToObject(root, "decoder_config", dec);
    cJSON_AddItemToObject(root, "delay_pattern", cJSON_CreateIntArray(delay, 9));
    cJSON_AddStringToObject(root, "dtype",
                            dtype == ENG_DT_BF16  ? "bfloat16"
                            : dtype == ENG_DT_F16 ? "float16"
                                                  : "float32");
    cJSON_AddItemToObject(root, "encoder_config", enc);
    cJSON_AddNumberToObject(root, "eos_token_id", 1024);
    cJSON_AddNumberToObject(root, "initializer_range", 0.02);
    cJSON_AddBoolToObject(root, "is_encoder_decoder", 1);
    cJSON_AddStringToObject(root, "model_type", "dia");
    cJSON_AddNumberToObject(root, "norm_eps", 1e-5);
    cJSON_AddNumberToObject(root, "pad_token_id", 1025);
    cJSON_AddStringToObject(root, "transformers_version", "5.17.0");
    cJSON_AddBoolToObject(root, "use_cache", 1);

    cJSON_AddStringToObject(enc, "hidden_act", "silu");
    cJSON_AddNumberToObject(enc, "head_dim", c->enc_head_dim);
    cJSON_AddNumberToObject(enc, "hidden_size", c->enc_hidden);
    cJSON_AddNumberToObject(enc, "initializer_range", 0.02);
    cJSON_AddNumberToObject(enc, "intermediate_size", c->enc_ffn);
    cJSON_AddNumberToObject(enc, "max_position_embeddings", c->enc_max_pos);
    cJSON_AddStringToObject(enc, "model_type", "dia_encoder");
    cJSON_AddNumberToObject(enc, "norm_eps", 1e-5);
    cJSON_AddNumberToObject(enc, "num_attention_heads", c->enc_heads);
    cJSON_AddNumberToObject(enc, "num_hidden_layers", c->enc_layers);
    cJSON_AddNumberToObject(enc, "num_key_value_heads", c->enc_kv_heads);
    cJSON_AddNumberToObject(enc, "rope_theta", 10000.0);
    cJSON_AddNullToObject(enc, "rope_scaling");
    cJSON_AddNumberToObject(enc, "vocab_size", c->enc_vocab);

    cJSON_AddNumberToObject(dec, "cross_head_dim", c->cross_head_dim);
    cJSON_AddNumberToObject(dec, "cross_hidden_size", c->enc_hidden);
    cJSON_AddNumberToObject(dec, "cross_num_attention_heads", c->cross_heads);
    cJSON_AddNumberToObject(dec, "cross_num_key_value_heads", c->cross_kv_heads);
    cJSON_AddStringToObject(dec, "hidden_act", "silu");
    cJSON_AddNumberToObject(dec, "head_dim", c->dec_head_dim);
    cJSON_AddNumberToObject(dec, "hidden_size", c->dec_hidden);
    cJSON_AddNumberToObject(dec, "initializer_range", 0.02);
    cJSON_AddNumberToObject(dec, "intermediate_size", c->dec_ffn);
    cJSON_AddBoolToObject(dec, "is_encoder_decoder", 1);
    cJSON_AddNumberToObject(dec, "max_position_embeddings", c->dec_max_pos);
    cJSON_AddStringToObject(dec, "model_type", "dia_decoder");
    cJSON_AddNumberToObject(dec, "norm_eps", 1e-5);
    cJSON_AddNumberToObject(dec, "num_attention_heads", c->dec_heads);
    cJSON_AddNumberToObject(dec, "num_channels", c->channels);
    cJSON_AddNumberToObject(dec, "num_hidden_layers", c->dec_layers);
    cJSON_AddNumberToObject(dec, "num_key_value_heads", c->dec_kv_heads);
    cJSON_AddNumberToObject(dec, "rope_theta", 10000.0);
    cJSON_AddNullToObject(dec, "rope_scaling");
    cJSON_AddBoolToObject(dec, "use_cache", 1);
    cJSON_AddNumberToObject(dec, "vocab_size", c->dec_vocab);
    return root;
}

static int write_config(const char *dir, const tiny_dia_config *c, eng_dtype dtype,
                        eng_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *root = config_json(c, dtype);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
    FILE *fp = fopen(path, "w");
    int rc = 0;
    if (!fp || fputs(text, fp) < 0 || fputc('\n', fp) == EOF) rc = ENG_EIO;
    if (fp && fclose(fp) != 0) rc = ENG_EIO;
    free(text);
    if (rc) return eng_errorf(err, ENG_EIO, "%s: cannot write: %s", path, strerror(errno));
    return 0;
}

/* Streams every tensor through a fixed chunk buffer: values are generated, converted and
 * written CHUNK elements at a time. */
#define CHUNK 65536

int tiny_dia_write_config(const char *dir, const tiny_dia_config *c, uint64_t seed, eng_dtype dtype,
                          eng_error *err) {
    if (dtype != ENG_DT_F32 && dtype != ENG_DT_BF16 && dtype != ENG_DT_F16)
        return eng_errorf(err, ENG_EINVAL, "tiny checkpoint: dtype %s not supported",
                          eng_dtype_name(dtype));
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return eng_errorf(err, ENG_EIO, "%s: cannot create: %s", dir, strerror(errno));
    int rc = write_config(dir, c, dtype, err);
    if (rc) return rc;

    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_writer *w = NULL;
    if ((rc = st_writer_open(&w, path, err)) != 0) return rc;
    const int n = tiny_dia_tensor_count(c);
    tiny_tensor_spec s;
    rc = st_writer_metadata(w, "format", "pt");
    for (int i = 0; i < n && rc == 0; i++) {
        tiny_dia_tensor_spec(c, i, &s);
        rc = st_writer_declare(w, s.name, dtype, s.ndim, s.shape);
    }
    if (rc == 0) rc = st_writer_begin_data(w);

    float *vals = malloc(CHUNK * sizeof *vals);
    uint16_t *half = malloc(CHUNK * sizeof *half);
    if (!vals || !half) rc = ENG_ENOMEM;
    for (int i = 0; i < n && rc == 0; i++) {
        tiny_dia_tensor_spec(c, i, &s);
        int64_t numel = s.shape[0] * (s.ndim == 2 ? s.shape[1] : 1);
        value_gen g = value_gen_init(&s, seed);
        for (int64_t at = 0; at < numel && rc == 0; at += CHUNK) {
            int64_t m = numel - at < CHUNK ? numel - at : CHUNK;
            for (int64_t k = 0; k < m; k++)
                vals[k] = value_at(&g, at + k);
            if (dtype == ENG_DT_F32) {
                rc = st_writer_write(w, vals, (size_t)m * 4);
            } else {
                for (int64_t k = 0; k < m; k++)
                    half[k] =
                        dtype == ENG_DT_BF16 ? eng_f32_to_bf16(vals[k]) : eng_f32_to_f16(vals[k]);
                rc = st_writer_write(w, half, (size_t)m * 2);
            }
        }
    }
    free(vals);
    free(half);
    if (rc == 0) rc = st_writer_finish(w);
    if (rc != 0) {
        if (rc == ENG_ENOMEM && !st_writer_errstr(w)[0])
            eng_errorf(err, rc, "%s: out of memory", path);
        else
            eng_errorf(err, rc, "%s", st_writer_errstr(w));
        st_writer_abort(w);
    }
    return rc;
}

int tiny_dia_write(const char *dir, uint64_t seed, eng_dtype dtype) {
    eng_error err = {0};
    int rc = tiny_dia_write_config(dir, &tiny_dia_tiny, seed, dtype, &err);
    if (rc) fprintf(stderr, "tiny_dia_write: %s\n", err.msg);
    return rc;
}
