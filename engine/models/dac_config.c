/* dac_config.c - reads a transformers DacConfig config.json into a dac_config. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/models/dac.h"

/* A config.json is a few hundred bytes; anything past this is not a config. */
#define DAC_CONFIG_MAX_BYTES (1 << 20)

/* Reads the whole of a small text file into a NUL-terminated heap buffer. */
static int read_small_file(const char *path, char **out, size_t *len, eng_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        int code = errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO;
        return eng_errorf(err, code, "%s: %s", path, strerror(errno));
    }
    char *buf = malloc(DAC_CONFIG_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return eng_errorf(err, ENG_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, DAC_CONFIG_MAX_BYTES + 1, f);
    int rd_err = ferror(f);
    fclose(f);
    if (rd_err) {
        free(buf);
        return eng_errorf(err, ENG_EIO, "%s: read failed", path);
    }
    if (n > DAC_CONFIG_MAX_BYTES) {
        free(buf);
        return eng_errorf(err, ENG_EFORMAT, "%s: larger than %d bytes, not a config", path,
                          DAC_CONFIG_MAX_BYTES);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* A required positive integer field; the error names the file and field. */
static int get_int(const cJSON *root, const char *path, const char *field, int *out,
                   eng_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!v) return eng_errorf(err, ENG_EFORMAT, "%s: field '%s' missing", path, field);
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble)
        return eng_errorf(err, ENG_EFORMAT, "%s: field '%s' is not an integer", path, field);
    if (v->valuedouble <= 0 || v->valuedouble > 1e8)
        return eng_errorf(err, ENG_EFORMAT, "%s: field '%s' = %g is out of range", path, field,
                          v->valuedouble);
    *out = (int)v->valuedouble;
    return 0;
}

/* An optional array of small positive integers; *n = -1 when absent. */
static int get_int_array(const cJSON *root, const char *path, const char *field, int *vals, int *n,
                         eng_error *err) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, field);
    *n = -1;
    if (!a) return 0;
    if (!cJSON_IsArray(a))
        return eng_errorf(err, ENG_EFORMAT, "%s: field '%s' is not an array", path, field);
    int count = cJSON_GetArraySize(a);
    if (count < 1 || count > DAC_MAX_BLOCKS)
        return eng_errorf(err, ENG_EFORMAT, "%s: field '%s' has %d entries (1..%d supported)", path,
                          field, count, DAC_MAX_BLOCKS);
    for (int i = 0; i < count; i++) {
        const cJSON *v = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble ||
            v->valuedouble <= 0 || v->valuedouble > 4096)
            return eng_errorf(err, ENG_EFORMAT, "%s: field '%s'[%d] is not a positive integer",
                              path, field, i);
        vals[i] = (int)v->valuedouble;
    }
    *n = count;
    return 0;
}

/* Checks an optional derived field the file may state against the value we derive. */
static int check_derived(const cJSON *root, const char *path, const char *field, int want,
                         eng_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)want)
        return eng_errorf(err, ENG_EMISMATCH, "%s: field '%s' disagrees with the derived value %d",
                          path, field, want);
    return 0;
}

/* Fills cfg from the parsed JSON; see dac_config_read. */
static int parse_config(const cJSON *root, const char *path, dac_config *cfg, eng_error *err) {
    int rc;
    if (!cJSON_IsObject(root)) return eng_errorf(err, ENG_EFORMAT, "%s: not a JSON object", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "dac") != 0))
        return eng_errorf(err, ENG_EMISMATCH,
                          "%s: model_type '%s' is not 'dac': not a DAC codec checkpoint", path,
                          cJSON_IsString(type) ? type->valuestring : "?");
    memset(cfg, 0, sizeof *cfg);
    if ((rc = get_int(root, path, "encoder_hidden_size", &cfg->encoder_hidden_size, err)) ||
        (rc = get_int(root, path, "decoder_hidden_size", &cfg->decoder_hidden_size, err)) ||
        (rc = get_int(root, path, "n_codebooks", &cfg->n_codebooks, err)) ||
        (rc = get_int(root, path, "codebook_size", &cfg->codebook_size, err)) ||
        (rc = get_int(root, path, "codebook_dim", &cfg->codebook_dim, err)) ||
        (rc = get_int(root, path, "sampling_rate", &cfg->sampling_rate, err)))
        return rc;

    int down[DAC_MAX_BLOCKS], up[DAC_MAX_BLOCKS], ndown, nup;
    if ((rc = get_int_array(root, path, "downsampling_ratios", down, &ndown, err)) ||
        (rc = get_int_array(root, path, "upsampling_ratios", up, &nup, err)))
        return rc;
    if (ndown < 0 && nup < 0)
        return eng_errorf(err, ENG_EFORMAT, "%s: field 'downsampling_ratios' missing", path);
    if (ndown >= 0 && nup >= 0) {
        int same = ndown == nup;
        for (int i = 0; same && i < ndown; i++)
            same = up[i] == down[ndown - 1 - i];
        if (!same)
            return eng_errorf(err, ENG_EMISMATCH,
                              "%s: 'upsampling_ratios' is not 'downsampling_ratios' reversed",
                              path);
    }
    cfg->n_blocks = nup >= 0 ? nup : ndown;
    for (int i = 0; i < cfg->n_blocks; i++)
        cfg->upsampling_ratios[i] = nup >= 0 ? up[i] : down[ndown - 1 - i];

    int64_t hop = 1;
    for (int i = 0; i < cfg->n_blocks; i++) {
        int s = cfg->upsampling_ratios[i];
        if (s % 2 != 0)
            return eng_errorf(err, ENG_EUNSUPPORTED,
                              "%s: upsampling ratio %d is odd; only even ratios are supported "
                              "(every published DAC uses even ones)",
                              path, s);
        hop *= s;
    }
    if (hop > (1 << 20)) return eng_errorf(err, ENG_EFORMAT, "%s: hop length too large", path);
    cfg->hop_length = (int)hop;
    int64_t hidden = (int64_t)cfg->encoder_hidden_size << cfg->n_blocks;
    if (hidden > (1 << 20)) return eng_errorf(err, ENG_EFORMAT, "%s: hidden size too large", path);
    cfg->hidden_size = (int)hidden;
    if (cfg->decoder_hidden_size % (1 << cfg->n_blocks) != 0)
        return eng_errorf(err, ENG_EFORMAT,
                          "%s: decoder_hidden_size %d is not divisible by 2^%d (one halving per "
                          "block)",
                          path, cfg->decoder_hidden_size, cfg->n_blocks);
    if ((rc = check_derived(root, path, "hidden_size", cfg->hidden_size, err)) ||
        (rc = check_derived(root, path, "hop_length", cfg->hop_length, err)))
        return rc;
    return 0;
}

int dac_config_read(dac_config *cfg, const char *path, eng_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = read_small_file(path, &text, &len, err);
    if (rc) return rc;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        rc = eng_errorf(err, ENG_EFORMAT, "%s: invalid JSON near byte %ld", path,
                        end ? (long)(end - text) : -1L);
        free(text);
        return rc;
    }
    rc = parse_config(root, path, cfg, err);
    cJSON_Delete(root);
    free(text);
    return rc;
}
