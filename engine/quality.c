/* quality.c - teacher-forced agreement, free-running comparison and their summary for a
 * variant of a Dia checkpoint against the original (see quality.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/quality.h"

void quality_opts_default(quality_opts *o) {
    memset(o, 0, sizeof *o);
    dia_gen_params_default(&o->gen);
    o->gen.seed = 1;
    o->gen.max_new_tokens = 512;
}

/* The temperature the engine divides by (spec 6.2: values below 1 are raised to 1); 1 = none. */
static double effective_tau(const dia_gen_params *p) {
    if (!(p->temperature > 0)) return 1.0;
    return p->temperature < 1.0f ? 1.0 : p->temperature;
}

/* For one step of sequence s: the top-1 pick of every channel (argmax of the processed
 * scores) and the log-probabilities logp[channels][vocab] of softmax(G / tau) over the ids the
 * channel may emit (-inf elsewhere). */
static void step_distribution(const dia_seq *s, const dia_config *c, const dia_gen_params *p,
                              int *top1, double *logp) {
    int V = c->dec_vocab;
    const float *lc_all = dia_seq_logits(s, 0), *lu_all = dia_seq_logits(s, 1);
    const float *scores = dia_seq_scores(s);
    double tau = effective_tau(p);
    for (int ch = 0; ch < c->channels; ch++) {
        const float *sc = scores + (size_t)ch * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (sc[v] > sc[best]) best = v;
        top1[ch] = best;

        const float *lc = lc_all + (size_t)ch * V;
        const float *lu = lu_all ? lu_all + (size_t)ch * V : NULL;
        double *lp = logp + (size_t)ch * V;
        int allowed = ch == 0 ? c->eos_id + 1 : c->eos_id;
        double mx = -INFINITY;
        for (int v = 0; v < allowed; v++) {
            double g = lu ? lc[v] + ((double)lc[v] - lu[v]) * p->cfg_scale : lc[v];
            lp[v] = g / tau;
            if (lp[v] > mx) mx = lp[v];
        }
        double sum = 0;
        for (int v = 0; v < allowed; v++)
            sum += exp(lp[v] - mx);
        double lse = mx + log(sum);
        for (int v = 0; v < allowed; v++)
            lp[v] -= lse;
        for (int v = allowed; v < V; v++)
            lp[v] = -INFINITY;
    }
}

/* KL(P || Q) in nats from log-probabilities over n ids; terms where P is 0 add nothing. */
static double kl_divergence(const double *lp, const double *lq, int n) {
    double kl = 0;
    for (int v = 0; v < n; v++) {
        if (lp[v] == -INFINITY) continue;
        kl += exp(lp[v]) * (lp[v] - lq[v]);
    }
    return kl > 0 ? kl : 0.0; /* rounding can leave -1e-17 for identical rows */
}

int quality_teacher_forced(dia_model *orig, dia_model *variant, const int32_t *ids, int n_ids,
                           const dia_gen_params *gen, const int32_t *frames, int n_frames,
                           quality_prompt_figures *f, eng_error *err) {
    const dia_config *c = dia_model_config(orig), *cv = dia_model_config(variant);
    if (c->channels != cv->channels || c->dec_vocab != cv->dec_vocab || c->eos_id != cv->eos_id)
        return eng_errorf(err, ENG_EMISMATCH,
                          "quality: the variant has %d channels x %d ids, "
                          "the original %d x %d",
                          cv->channels, cv->dec_vocab, c->channels, c->dec_vocab);
    int C = c->channels, V = c->dec_vocab;
    f->tf_steps = 0;
    f->tf_pairs = f->tf_agree = 0;
    memset(f->ch_pairs, 0, sizeof f->ch_pairs);
    memset(f->ch_agree, 0, sizeof f->ch_agree);
    f->kl_mean = f->kl_max = 0;
    if (n_frames < 2) return 0;

    double *lp = malloc((size_t)C * V * sizeof *lp), *lq = malloc((size_t)C * V * sizeof *lq);
    dia_seq *so = NULL, *sv = NULL;
    int rc = 0;
    if (!lp || !lq) {
        rc = eng_errorf(err, ENG_ENOMEM, "quality: out of memory for %d x %d distributions", C, V);
        goto out;
    }
    if ((rc = dia_seq_start(orig, ids, n_ids, gen, &so, err)) ||
        (rc = dia_seq_start(variant, ids, n_ids, gen, &sv, err)))
        goto out;
    double kl_sum = 0;
    int top_o[DIA_MAX_CHANNELS], top_v[DIA_MAX_CHANNELS];
    for (int k = 0; k + 1 < n_frames; k++) {
        if (dia_seq_done(so) || dia_seq_done(sv)) {
            rc = eng_errorf(err, ENG_EINVAL,
                            "quality: the sequence ended after %d of %d "
                            "teacher-forced frames (were the frames made with these "
                            "parameters?)",
                            k + 1, n_frames);
            goto out;
        }
        const int32_t *target = frames + (size_t)(k + 1) * C;
        /* step each model alone and keep what we need before the next step: when orig and
         * variant are one model they share the host logits buffer */
        dia_seq_force(so, target);
        if ((rc = dia_step(orig, &so, 1, err))) goto out;
        step_distribution(so, c, gen, top_o, lp);
        dia_seq_force(sv, target);
        if ((rc = dia_step(variant, &sv, 1, err))) goto out;
        step_distribution(sv, c, gen, top_v, lq);
        f->tf_steps++;
        for (int ch = 0; ch < C; ch++) {
            /* BOS of the delay pattern and PAD after the channel's EOS are not predictions */
            if (target[ch] < 0 || target[ch] > c->eos_id) continue;
            double kl = kl_divergence(lp + (size_t)ch * V, lq + (size_t)ch * V, V);
            kl_sum += kl;
            if (kl > f->kl_max) f->kl_max = kl;
            int same = top_o[ch] == top_v[ch];
            f->tf_pairs++;
            f->tf_agree += same;
            f->ch_pairs[ch]++;
            f->ch_agree[ch] += same;
        }
    }
    f->kl_mean = f->tf_pairs ? kl_sum / (double)f->tf_pairs : 0.0;
out:
    dia_seq_release(orig, so);
    dia_seq_release(variant, sv);
    free(lp);
    free(lq);
    return rc;
}

/* One free run's outcome. */
typedef struct free_run {
    int32_t *frames; /* [len][channels] delayed frames */
    int len;
    int32_t *codes; /* [channels][n_frames] undelayed, packed */
    int n_frames;
    int chose_eos;
    int eos_frame; /* delayed index of channel 0's EOS; len when there is none */
} free_run;

static void free_run_clear(free_run *r) {
    free(r->frames);
    free(r->codes);
    memset(r, 0, sizeof *r);
}

/* Generates freely from ids with gen and keeps frames and codes. */
static int run_free(dia_model *m, const int32_t *ids, int n_ids, const dia_gen_params *gen,
                    free_run *r, eng_error *err) {
    const dia_config *c = dia_model_config(m);
    int C = c->channels;
    memset(r, 0, sizeof *r);
    dia_seq *s = NULL;
    int rc = dia_seq_start(m, ids, n_ids, gen, &s, err);
    if (rc) return rc;
    while (!dia_seq_done(s))
        if ((rc = dia_step(m, &s, 1, err))) goto out;
    r->len = dia_seq_len(s);
    r->frames = malloc((size_t)r->len * C * sizeof *r->frames);
    r->codes = malloc((size_t)r->len * C * sizeof *r->codes);
    if (!r->frames || !r->codes) {
        rc = eng_errorf(err, ENG_ENOMEM, "quality: out of memory for %d frames", r->len);
        goto out;
    }
    memcpy(r->frames, dia_seq_frames(s), (size_t)r->len * C * sizeof *r->frames);
    if ((rc = dia_seq_codes(s, r->codes, r->len, &r->n_frames, err))) goto out;
    /* rows come with stride len; the codec wants [channels][n_frames] */
    for (int ch = 1; ch < C; ch++)
        memmove(r->codes + (size_t)ch * r->n_frames, r->codes + (size_t)ch * r->len,
                (size_t)r->n_frames * sizeof *r->codes);
    r->chose_eos = dia_seq_chose_eos(s);
    r->eos_frame = r->len;
    for (int t = 0; t < r->len; t++)
        if (r->frames[(size_t)t * C] == c->eos_id) {
            r->eos_frame = t;
            break;
        }
out:
    dia_seq_release(m, s);
    if (rc) free_run_clear(r);
    return rc;
}

/* Decodes a free run's codes to PCM (*pcm malloc'd, *n samples). */
static int decode(dac_model *codec, const free_run *r, float **pcm, int64_t *n, eng_error *err) {
    *n = dac_samples(codec, r->n_frames);
    *pcm = malloc((size_t)(*n > 0 ? *n : 1) * sizeof **pcm);
    if (!*pcm)
        return eng_errorf(err, ENG_ENOMEM, "quality: out of memory for %lld samples",
                          (long long)*n);
    return dac_decode(codec, r->codes, r->n_frames, *pcm, err);
}

/* The free-running half and the teacher forcing for one prompt. */
static int compare_prompt(dia_model *orig, dia_model *variant, dac_model *codec,
                          const quality_prompt *p, const dia_gen_params *gen,
                          const quality_mel_opts *mel, quality_prompt_figures *f, eng_error *err) {
    int32_t *ids = malloc(DIA_MAX_TEXT * sizeof *ids);
    free_run ro = {0}, rv = {0};
    float *pa = NULL, *pb = NULL;
    int n_ids = 0, rc;
    if (!ids) return eng_errorf(err, ENG_ENOMEM, "quality: out of memory");
    if ((rc = dia_tokenize(p->text, strlen(p->text), ids, DIA_MAX_TEXT, &n_ids, err)) ||
        (rc = run_free(orig, ids, n_ids, gen, &ro, err)) ||
        (rc = run_free(variant, ids, n_ids, gen, &rv, err)) ||
        (rc = quality_teacher_forced(orig, variant, ids, n_ids, gen, ro.frames, ro.len, f, err)))
        goto out;
    f->eos_orig = ro.eos_frame;
    f->eos_variant = rv.eos_frame;
    f->chose_eos_orig = ro.chose_eos;
    f->chose_eos_variant = rv.chose_eos;
    f->frames_orig = ro.n_frames;
    f->frames_variant = rv.n_frames;
    f->mel_distance = -1;
    if (codec) {
        int64_t na = 0, nb = 0;
        if ((rc = decode(codec, &ro, &pa, &na, err)) || (rc = decode(codec, &rv, &pb, &nb, err)) ||
            (rc = quality_mel_distance(pa, na, pb, nb, dac_model_config(codec)->sampling_rate, mel,
                                       &f->mel_distance, err)))
            goto out;
    }
out:
    if (rc) eng_error_prefix(err, "prompt '%s'", p->name);
    free(ids);
    free_run_clear(&ro);
    free_run_clear(&rv);
    free(pa);
    free(pb);
    return rc;
}

int quality_compare(dia_model *orig, dia_model *variant, dac_model *codec,
                    const quality_prompt *prompts, int n, const quality_opts *o,
                    quality_figures *out, eng_error *err) {
    memset(out, 0, sizeof *out);
    if (n < 1 || n > QUALITY_MAX_PROMPTS)
        return eng_errorf(err, ENG_EINVAL, "quality: %d prompts outside [1, %d]", n,
                          QUALITY_MAX_PROMPTS);
    const dia_config *c = dia_model_config(orig);
    if (codec && dac_model_config(codec)->n_codebooks != c->channels)
        return eng_errorf(err, ENG_EMISMATCH,
                          "quality: the codec has %d codebooks, the model "
                          "emits %d channels",
                          dac_model_config(codec)->n_codebooks, c->channels);
    dia_gen_params gen = o->gen;
    int cap_o = dia_model_opts(orig)->max_frames - 1;
    int cap_v = dia_model_opts(variant)->max_frames - 1;
    if (gen.max_new_tokens > cap_o) gen.max_new_tokens = cap_o;
    if (gen.max_new_tokens > cap_v) gen.max_new_tokens = cap_v;
    out->n = n;
    out->channels = c->channels;
    out->steps = gen.max_new_tokens;
    out->seed = o->gen.seed;
    long pairs = 0, agree = 0, ch_pairs[DIA_MAX_CHANNELS] = {0}, ch_agree[DIA_MAX_CHANNELS] = {0};
    double kl_sum = 0, eos_sum = 0, mel_sum = 0;
    out->mel_distance_max = codec ? 0 : -1;
    for (int i = 0; i < n; i++) {
        quality_prompt_figures *f = &out->prompt[i];
        snprintf(f->name, sizeof f->name, "%s", prompts[i].name ? prompts[i].name : "");
        gen.seed = o->gen.seed + (uint64_t)i;
        int rc = compare_prompt(orig, variant, codec, &prompts[i], &gen, &o->mel, f, err);
        if (rc) return rc;
        pairs += f->tf_pairs;
        agree += f->tf_agree;
        for (int ch = 0; ch < c->channels; ch++) {
            ch_pairs[ch] += f->ch_pairs[ch];
            ch_agree[ch] += f->ch_agree[ch];
        }
        kl_sum += f->kl_mean * (double)f->tf_pairs;
        if (f->kl_max > out->kl_max) out->kl_max = f->kl_max;
        int d = abs(f->eos_variant - f->eos_orig);
        eos_sum += d;
        if (d > out->eos_diff_max_abs) out->eos_diff_max_abs = d;
        if (codec) {
            mel_sum += f->mel_distance;
            if (f->mel_distance > out->mel_distance_max) out->mel_distance_max = f->mel_distance;
        }
    }
    out->top1_agreement = pairs ? (double)agree / (double)pairs : 1.0;
    for (int ch = 0; ch < c->channels; ch++)
        out->ch_agreement[ch] = ch_pairs[ch] ? (double)ch_agree[ch] / (double)ch_pairs[ch] : 1.0;
    out->kl_mean = pairs ? kl_sum / (double)pairs : 0.0;
    out->eos_diff_mean_abs = eos_sum / n;
    out->mel_distance_mean = codec ? mel_sum / n : -1;
    return 0;
}

/* A number, or null for the "not measured" marker -1. */
static void add_measure(cJSON *o, const char *key, double v) {
    if (v < 0)
        cJSON_AddNullToObject(o, key);
    else
        cJSON_AddNumberToObject(o, key, v);
}

cJSON *quality_figures_json(const quality_figures *f) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddNumberToObject(root, "top1_agreement", f->top1_agreement);
    cJSON *chs = cJSON_AddArrayToObject(root, "channel_agreement");
    for (int ch = 0; chs && ch < f->channels; ch++)
        cJSON_AddItemToArray(chs, cJSON_CreateNumber(f->ch_agreement[ch]));
    cJSON_AddNumberToObject(root, "kl_mean", f->kl_mean);
    cJSON_AddNumberToObject(root, "kl_max", f->kl_max);
    cJSON_AddNumberToObject(root, "eos_diff_mean_abs", f->eos_diff_mean_abs);
    cJSON_AddNumberToObject(root, "eos_diff_max_abs", f->eos_diff_max_abs);
    add_measure(root, "mel_distance_mean", f->mel_distance_mean);
    add_measure(root, "mel_distance_max", f->mel_distance_max);
    cJSON_AddNumberToObject(root, "steps", f->steps);
    cJSON_AddNumberToObject(root, "seed", (double)f->seed);
    cJSON *arr = cJSON_AddArrayToObject(root, "prompts");
    for (int i = 0; arr && i < f->n; i++) {
        const quality_prompt_figures *p = &f->prompt[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddStringToObject(o, "name", p->name);
        cJSON_AddNumberToObject(o, "tf_steps", p->tf_steps);
        cJSON_AddNumberToObject(o, "tf_pairs", (double)p->tf_pairs);
        cJSON_AddNumberToObject(o, "top1_agreement",
                                p->tf_pairs ? (double)p->tf_agree / (double)p->tf_pairs : 1.0);
        cJSON_AddNumberToObject(o, "kl_mean", p->kl_mean);
        cJSON_AddNumberToObject(o, "kl_max", p->kl_max);
        cJSON_AddNumberToObject(o, "eos_orig", p->eos_orig);
        cJSON_AddNumberToObject(o, "eos_variant", p->eos_variant);
        cJSON_AddNumberToObject(o, "eos_diff", p->eos_variant - p->eos_orig);
        cJSON_AddBoolToObject(o, "chose_eos_orig", p->chose_eos_orig);
        cJSON_AddBoolToObject(o, "chose_eos_variant", p->chose_eos_variant);
        cJSON_AddNumberToObject(o, "frames_orig", p->frames_orig);
        cJSON_AddNumberToObject(o, "frames_variant", p->frames_variant);
        add_measure(o, "mel_distance", p->mel_distance);
        cJSON_AddItemToArray(arr, o);
    }
    if (!chs || !arr) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}
