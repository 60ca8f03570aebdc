/* dia_config.c - Dia's config.json (transformers DiaConfig layout) into a dia_config. */
#include "engine/models/dia.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dia_config_default(dia_config *c) {
    static const int delay[9] = {0, 8, 9, 10, 11, 12, 13, 14, 15};
    memset(c, 0, sizeof *c);
    c->enc_hidden = 1024;
    c->enc_layers = 12;
    c->enc_heads = 16;
    c->enc_kv_heads = 16;
    c->enc_head_dim = 128;
    c->enc_ffn = 4096;
    c->enc_vocab = 256;
    c->enc_max_pos = 1024;
    c->enc_norm_eps = 1e-5f;
    c->enc_rope_theta = 10000.0f;
    c->dec_hidden = 2048;
    c->dec_layers = 18;
    c->dec_heads = 16;
    c->dec_kv_heads = 4;
    c->dec_head_dim = 128;
    c->dec_ffn = 8192;
    c->cross_heads = 16;
    c->cross_kv_heads = 16;
    c->cross_head_dim = 128;
    c->cross_hidden = 1024;
    c->dec_vocab = 1028;
    c->dec_max_pos = 3072;
    c->dec_norm_eps = 1e-5f;
    c->dec_rope_theta = 10000.0f;
    c->channels = 9;
    memcpy(c->delay, delay, sizeof delay);
    c->max_delay = 15;
    c->eos_id = 1024;
    c->pad_id = 1025;
    c->bos_id = 1026;
}

/* Reads integer key `key` of object `obj` into *dst when present and not null. Values must be
 * whole numbers in [lo, hi]; anything else names the key (with its section) and fails. */
static int get_int(const cJSON *obj, const char *section, const char *key, int lo, int hi, int *dst,
                   const char *what, eng_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) return 0;
    /* transformers allows eos_token_id as a list; a single-element list is the same id */
    if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 1) it = cJSON_GetArrayItem(it, 0);
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < lo ||
        it->valuedouble > hi)
        return eng_errorf(err, ENG_EFORMAT, "%s: %s%s%s must be an integer in [%d, %d]", what,
                          section, *section ? "." : "", key, lo, hi);
    *dst = (int)it->valuedouble;
    return 0;
}

/* Like get_int for a positive float. */
static int get_float(const cJSON *obj, const char *section, const char *key, float *dst,
                     const char *what, eng_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsNumber(it) || !(it->valuedouble > 0) || !isfinite(it->valuedouble))
        return eng_errorf(err, ENG_EFORMAT, "%s: %s.%s must be a positive number", what, section,
                          key);
    *dst = (float)it->valuedouble;
    return 0;
}

/* RoPE theta: transformers 5 writes rope_parameters {"rope_theta", "rope_type"}; older files
 * have a plain rope_theta. Only the default (unscaled) RoPE is supported. */
static int get_rope(const cJSON *obj, const char *section, float *theta, const char *what,
                    eng_error *err) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(obj, "rope_parameters");
    if (rp && !cJSON_IsNull(rp)) {
        if (!cJSON_IsObject(rp))
            return eng_errorf(err, ENG_EFORMAT, "%s: %s.rope_parameters must be an object", what,
                              section);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (type && !cJSON_IsNull(type) &&
            (!cJSON_IsString(type) || strcmp(type->valuestring, "default") != 0))
            return eng_errorf(err, ENG_EUNSUPPORTED,
                              "%s: %s.rope_parameters.rope_type must be \"default\"", what,
                              section);
        return get_float(rp, section, "rope_theta", theta, what, err);
    }
    return get_float(obj, section, "rope_theta", theta, what, err);
}

/* hidden_act must be SiLU: the MLP is silu(gate) * up. */
static int check_act(const cJSON *obj, const char *section, const char *what, eng_error *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, "hidden_act");
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsString(it) ||
        (strcmp(it->valuestring, "silu") && strcmp(it->valuestring, "swish")))
        return eng_errorf(err, ENG_EUNSUPPORTED, "%s: %s.hidden_act must be \"silu\"", what,
                          section);
    return 0;
}

#define BIG (1 << 20)

static int parse_encoder(dia_config *c, const cJSON *e, const char *what, eng_error *err) {
    const char *s = "encoder_config";
    int rc = 0;
    if (!cJSON_IsObject(e))
        return eng_errorf(err, ENG_EFORMAT, "%s: %s must be an object", what, s);
    if ((rc = get_int(e, s, "hidden_size", 1, BIG, &c->enc_hidden, what, err)) ||
        (rc = get_int(e, s, "num_hidden_layers", 1, 1024, &c->enc_layers, what, err)) ||
        (rc = get_int(e, s, "num_attention_heads", 1, 1024, &c->enc_heads, what, err)) ||
        (rc = get_int(e, s, "num_key_value_heads", 1, 1024, &c->enc_kv_heads, what, err)) ||
        (rc = get_int(e, s, "head_dim", 2, 4096, &c->enc_head_dim, what, err)) ||
        (rc = get_int(e, s, "intermediate_size", 1, BIG, &c->enc_ffn, what, err)) ||
        (rc = get_int(e, s, "vocab_size", 1, BIG, &c->enc_vocab, what, err)) ||
        (rc = get_int(e, s, "max_position_embeddings", 1, BIG, &c->enc_max_pos, what, err)) ||
        (rc = get_float(e, s, "norm_eps", &c->enc_norm_eps, what, err)) ||
        (rc = get_rope(e, s, &c->enc_rope_theta, what, err)) || (rc = check_act(e, s, what, err)))
        return rc;
    return 0;
}

static int parse_decoder(dia_config *c, const cJSON *d, const char *what, eng_error *err) {
    const char *s = "decoder_config";
    int rc = 0;
    if (!cJSON_IsObject(d))
        return eng_errorf(err, ENG_EFORMAT, "%s: %s must be an object", what, s);
    if ((rc = get_int(d, s, "hidden_size", 1, BIG, &c->dec_hidden, what, err)) ||
        (rc = get_int(d, s, "num_hidden_layers", 1, 1024, &c->dec_layers, what, err)) ||
        (rc = get_int(d, s, "num_attention_heads", 1, 1024, &c->dec_heads, what, err)) ||
        (rc = get_int(d, s, "num_key_value_heads", 1, 1024, &c->dec_kv_heads, what, err)) ||
        (rc = get_int(d, s, "head_dim", 2, 4096, &c->dec_head_dim, what, err)) ||
        (rc = get_int(d, s, "intermediate_size", 1, BIG, &c->dec_ffn, what, err)) ||
        (rc = get_int(d, s, "cross_num_attention_heads", 1, 1024, &c->cross_heads, what, err)) ||
        (rc = get_int(d, s, "cross_num_key_value_heads", 1, 1024, &c->cross_kv_heads, what, err)) ||
        (rc = get_int(d, s, "cross_head_dim", 1, 4096, &c->cross_head_dim, what, err)) ||
        (rc = get_int(d, s, "cross_hidden_size", 1, BIG, &c->cross_hidden, what, err)) ||
        (rc = get_int(d, s, "vocab_size", 1, BIG, &c->dec_vocab, what, err)) ||
        (rc = get_int(d, s, "num_channels", 1, DIA_MAX_CHANNELS, &c->channels, what, err)) ||
        (rc = get_int(d, s, "max_position_embeddings", 1, BIG, &c->dec_max_pos, what, err)) ||
        (rc = get_int(d, s, "eos_token_id", 0, BIG, &c->eos_id, what, err)) ||
        (rc = get_int(d, s, "pad_token_id", 0, BIG, &c->pad_id, what, err)) ||
        (rc = get_int(d, s, "bos_token_id", 0, BIG, &c->bos_id, what, err)) ||
        (rc = get_float(d, s, "norm_eps", &c->dec_norm_eps, what, err)) ||
        (rc = get_rope(d, s, &c->dec_rope_theta, what, err)) || (rc = check_act(d, s, what, err)))
        return rc;
    return 0;
}

/* Relations the model code relies on; each violation names the keys involved. */
static int check_config(const dia_config *c, const char *what, eng_error *err) {
    if (c->enc_heads % c->enc_kv_heads)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: encoder num_attention_heads %d is not a multiple of "
                          "num_key_value_heads %d",
                          what, c->enc_heads, c->enc_kv_heads);
    if (c->dec_heads % c->dec_kv_heads)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: decoder num_attention_heads %d is not a multiple of "
                          "num_key_value_heads %d",
                          what, c->dec_heads, c->dec_kv_heads);
    if (c->cross_heads % c->cross_kv_heads)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: decoder cross_num_attention_heads %d is not a multiple of "
                          "cross_num_key_value_heads %d",
                          what, c->cross_heads, c->cross_kv_heads);
    if (c->enc_head_dim % 2 || c->dec_head_dim % 2)
        return eng_errorf(err, ENG_EFORMAT, "%s: head_dim must be even for RoPE", what);
    if (c->cross_hidden != c->enc_hidden)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: decoder_config.cross_hidden_size %d != encoder_config.hidden_size "
                          "%d",
                          what, c->cross_hidden, c->enc_hidden);
    if (c->enc_vocab < 256)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: encoder_config.vocab_size %d cannot hold byte ids (needs 256)", what,
                          c->enc_vocab);
    if (c->eos_id >= c->dec_vocab || c->pad_id >= c->dec_vocab || c->bos_id >= c->dec_vocab)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: eos/pad/bos token ids (%d/%d/%d) must be < decoder vocab_size %d",
                          what, c->eos_id, c->pad_id, c->bos_id, c->dec_vocab);
    /* the EOS/channel filter of spec 6.2 masks ids >= eos on channels 1.. and > eos on 0 */
    if (c->eos_id > c->pad_id || c->eos_id > c->bos_id)
        return eng_errorf(err, ENG_EUNSUPPORTED,
                          "%s: eos_token_id %d must be below pad (%d) and bos (%d)", what,
                          c->eos_id, c->pad_id, c->bos_id);
    return 0;
}

int dia_config_parse(dia_config *c, const char *json, size_t len, const char *what,
                     eng_error *err) {
    dia_config_default(c);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return eng_errorf(err, ENG_EFORMAT, "%s: not valid JSON", what);
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: top level must be an object", what);
        goto done;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (mt && cJSON_IsString(mt) && strcmp(mt->valuestring, "dia") != 0) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: model_type is \"%s\", expected \"dia\"", what,
                        mt->valuestring);
        goto done;
    }
    const cJSON *enc = cJSON_GetObjectItemCaseSensitive(root, "encoder_config");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder_config");
    if ((enc && !cJSON_IsNull(enc) && (rc = parse_encoder(c, enc, what, err))) ||
        (dec && !cJSON_IsNull(dec) && (rc = parse_decoder(c, dec, what, err))))
        goto done;
    /* deprecated top-level token ids override the decoder's, as DiaConfig does */
    if ((rc = get_int(root, "", "eos_token_id", 0, BIG, &c->eos_id, what, err)) ||
        (rc = get_int(root, "", "pad_token_id", 0, BIG, &c->pad_id, what, err)) ||
        (rc = get_int(root, "", "bos_token_id", 0, BIG, &c->bos_id, what, err)))
        goto done;
    const cJSON *dp = cJSON_GetObjectItemCaseSensitive(root, "delay_pattern");
    if (dp && !cJSON_IsNull(dp)) {
        if (!cJSON_IsArray(dp) || cJSON_GetArraySize(dp) != c->channels) {
            rc = eng_errorf(err, ENG_EFORMAT,
                            "%s: delay_pattern must be a list of num_channels (%d) integers", what,
                            c->channels);
            goto done;
        }
        int i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, dp) {
            if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
                v->valuedouble < 0 || v->valuedouble > 1024) {
                rc = eng_errorf(err, ENG_EFORMAT,
                                "%s: delay_pattern[%d] must be an integer in "
                                "[0, 1024]",
                                what, i);
                goto done;
            }
            c->delay[i++] = (int)v->valuedouble;
        }
    } else if (c->channels != 9) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: num_channels %d needs an explicit delay_pattern",
                        what, c->channels);
        goto done;
    }
    c->max_delay = 0;
    for (int i = 0; i < c->channels; i++)
        if (c->delay[i] > c->max_delay) c->max_delay = c->delay[i];
    rc = check_config(c, what, err);
done:
    cJSON_Delete(root);
    return rc;
}

int dia_config_load(dia_config *c, const char *dir, eng_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return eng_errorf(err, ENG_EIO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (len == cap) {
            if (cap >= (16u << 20)) {
                rc = eng_errorf(err, ENG_EFORMAT, "%s: larger than 16 MiB", path);
                goto done;
            }
            size_t ncap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                rc = eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
                goto done;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        rc = eng_errorf(err, ENG_EIO, "%s: read failed", path);
        goto done;
    }
    rc = dia_config_parse(c, buf, len, path, err);
done:
    free(buf);
    fclose(f);
    return rc;
}
