/* dia_generate.c - sequences, the sampler entries handed to the backend's sample op (which runs
 * spec 6.2's logits processing and the seeded pick next to the logits), the delay-pattern and
 * EOS bookkeeping on the picks, and the undelayed codes for the codec (spec 6.4). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/dia_impl.h"

void dia_gen_params_default(dia_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->cfg_scale = 3.0f;
    p->cfg_top_k = 45;
    p->temperature = 1.2f;
    p->top_k = 45;
    p->top_p = 0.95f;
    p->max_new_tokens = 3072;
}

/* The sampler entry of sequence s for this step (spec 6.2's parameters; the stages themselves
 * run in the backend's sample op). */
static eng_sample_seq sample_entry(const dia_seq *s) {
    const dia_gen_params *p = &s->p;
    eng_sample_seq e;
    memset(&e, 0, sizeof e);
    e.seed = p->seed;
    e.step = s->len - 1;
    e.row = s->row;
    e.row_uncond = s->cfg ? s->row + 1 : -1;
    e.cfg_scale = p->cfg_scale;
    e.cfg_top_k = p->cfg_top_k;
    /* transformers raises temperatures below 1 to 1 */
    e.temperature = p->temperature > 0 && p->temperature < 1.0f ? 1.0f : p->temperature;
    e.top_k = p->top_k;
    e.top_p = p->top_p;
    e.greedy = p->greedy;
    return e;
}

/* The EOS countdown of the delay pattern (spec 6.2, last stage) on the sampler's picks: once
 * channel 0's argmax is EOS (or the length limit nears), channel c is forced to EOS d_c steps
 * later. Turns picks[channels + 1] into the next frame in `next`. */
static void eos_countdown(dia_seq *s, const int32_t *picks, int32_t *next) {
    const dia_config *c = &s->m->cfg;
    int C = c->channels, eos_argmax0 = picks[C];
    memcpy(next, picks, (size_t)C * sizeof *next);
    if (eos_argmax0 && !s->active) s->chose_eos = 1;
    if (eos_argmax0 || s->len == s->max_len - c->max_delay - 1) s->active = 1;
    s->forced = 0;
    if (!s->active) return;
    for (int ch = 0; ch < C; ch++) {
        if (s->delay_left[ch] == 0) {
            next[ch] = c->eos_id;
            s->forced |= 1u << ch;
        }
        s->delay_left[ch]--;
    }
}

/* Appends frame `next` (PAD on finished rows unless teacher-forced), applies the delay
 * overwrite (channel c is BOS at positions 0..d_c) and updates finished/done. */
static void append(dia_seq *s, const int32_t *next) {
    const dia_config *c = &s->m->cfg;
    int C = c->channels, t = s->len;
    int32_t *f = s->frames + (size_t)t * C;
    for (int ch = 0; ch < C; ch++) {
        int32_t tok = s->teacher ? s->force_frame[ch] : (s->finished[ch] ? c->pad_id : next[ch]);
        if (tok == c->eos_id) s->finished[ch] = 1;
        if (!s->p.no_delay_mask && t <= c->delay[ch]) tok = c->bos_id;
        f[ch] = tok;
    }
    s->teacher = 0;
    s->len++;
    int all = 1;
    for (int ch = 0; ch < C; ch++)
        all &= s->finished[ch];
    if (all || s->len >= s->max_len) s->done = 1;
}

/* Rejects parameters no stage of spec 6.2 can honour; each message names the parameter. */
static int check_params(const dia_gen_params *p, eng_error *err) {
    if (!(p->cfg_scale >= 0) || !isfinite(p->cfg_scale))
        return eng_errorf(err, ENG_EINVAL, "dia: cfg_scale must be a finite number >= 0");
    if (p->cfg_top_k < 0 || p->top_k < 0)
        return eng_errorf(err, ENG_EINVAL, "dia: top_k and cfg_top_k must be >= 0");
    if (!(p->temperature >= 0) || !isfinite(p->temperature))
        return eng_errorf(err, ENG_EINVAL, "dia: temperature must be a finite number >= 0");
    if (!(p->top_p > 0) || !isfinite(p->top_p))
        return eng_errorf(err, ENG_EINVAL, "dia: top_p must be in (0, 1] (>= 1 switches it off)");
    if (p->max_new_tokens < 1)
        return eng_errorf(err, ENG_EINVAL, "dia: max_new_tokens must be >= 1");
    return 0;
}

int dia_seq_start(dia_model *m, const int32_t *ids, int n, const dia_gen_params *p, dia_seq **out,
                  eng_error *err) {
    const dia_config *c = &m->cfg;
    *out = NULL;
    int rc = check_params(p, err);
    if (rc) return rc;
    if (n < 1 || n > m->opts.max_text)
        return eng_errorf(err, ENG_EINVAL, "dia: text of %d ids outside [1, %d]", n,
                          m->opts.max_text);
    dia_seq *s = NULL;
    for (int i = 0; i < m->opts.max_batch && !s; i++)
        if (!m->seqs[i].in_use) s = &m->seqs[i];
    if (!s)
        return eng_errorf(err, ENG_EINVAL, "dia: all %d sequence slots are busy",
                          m->opts.max_batch);
    int cfg = p->cfg_scale > 1.0f;
    int B = cfg ? 2 : 1;
    dia_step_host *h = &m->sh;
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < n; i++) {
            int r = b * n + i;
            if (ids[i] < 0 || ids[i] >= c->enc_vocab)
                return eng_errorf(err, ENG_EINVAL, "dia: text id %d at %d out of [0, %d)", ids[i],
                                  i, c->enc_vocab);
            /* the unconditional prompt: all ids 0 with the same (all-ones) mask */
            h->enc_ids[r] = b == 0 ? ids[i] : 0;
            h->enc_pos[r] = i;
            h->enc_slot[r] = b;
            h->enc_len[r] = n;
        }
    }
    if ((rc = dia_encoder_run(m, B, n, 0, err)) || (rc = dia_cross_fill(m, s->slot, B, n, err)))
        return rc;

    s->p = *p;
    s->cfg = cfg;
    s->text_len = n;
    int limit = m->opts.max_frames - 1;
    s->max_len = (p->max_new_tokens < limit ? p->max_new_tokens : limit) + 1;
    s->len = 1;
    for (int ch = 0; ch < c->channels; ch++) {
        s->frames[ch] = c->bos_id;
        s->delay_left[ch] = c->delay[ch];
        s->finished[ch] = 0;
    }
    s->active = s->done = s->chose_eos = s->teacher = 0;
    s->forced = 0;
    s->row = -1;
    s->have_logits = s->have_scores = 0;
    s->in_use = 1;
    *out = s;
    return 0;
}

int dia_step(dia_model *m, dia_seq *const *seqs, int n, eng_error *err) {
    const dia_config *c = &m->cfg;
    int C = c->channels;
    if (n < 1 || n > m->opts.max_batch)
        return eng_errorf(err, ENG_EINVAL, "dia: step of %d sequences outside [1, %d]", n,
                          m->opts.max_batch);
    dia_step_host *h = &m->sh;
    int rows = 0;
    for (int i = 0; i < n; i++) {
        dia_seq *s = seqs[i];
        if (!s || s->m != m || !s->in_use || s->done)
            return eng_errorf(err, ENG_EINVAL, "dia: sequence %d is not running", i);
        for (int j = 0; j < i; j++)
            if (seqs[j] == s)
                return eng_errorf(err, ENG_EINVAL, "dia: sequence %d appears twice", i);
        s->row = rows;
        for (int u = 0; u <= s->cfg; u++, rows++) {
            memcpy(h->ids + (size_t)rows * C, s->frames + (size_t)(s->len - 1) * C,
                   (size_t)C * sizeof(int32_t));
            h->slot[rows] = 2 * s->slot + u;
            h->pos[rows] = s->len - 1;
            h->len[rows] = s->len;
            h->xlen[rows] = s->text_len;
        }
    }
    if (m->graphs) {
        /* pad to the power-of-two bucket the step graph was captured for: padding rows read
         * id 0 on every channel at position 0 of the spare slot, which only they use */
        int bucket = 1, spare = 2 * m->opts.max_batch;
        while (bucket < rows)
            bucket *= 2;
        for (; rows < bucket; rows++) {
            memset(h->ids + (size_t)rows * C, 0, (size_t)C * sizeof(int32_t));
            h->slot[rows] = spare;
            h->pos[rows] = 0;
            h->len[rows] = 1;
            h->xlen[rows] = 1;
        }
    }
    /* one sampler entry per sequence, the rest of the step's entries unused */
    const eng_sample_seq unused = {.row = -1, .row_uncond = -1};
    for (int i = 0; i < rows; i++)
        h->params[i] = i < n ? sample_entry(seqs[i]) : unused;
    int rc = dia_decoder_step(m, rows, n, err);
    if (rc) {
        for (int i = 0; i < n; i++) /* the last step's logits are gone: nothing to inspect */
            seqs[i]->row = -1;
        return rc;
    }

    int32_t next[DIA_MAX_CHANNELS];
    for (int i = 0; i < n; i++) {
        dia_seq *s = seqs[i];
        s->entry = i;
        s->have_logits = s->have_scores = 0;
        eos_countdown(s, h->picks + (size_t)i * (size_t)(C + 1), next);
        append(s, next);
    }
    return 0;
}

int dia_seq_done(const dia_seq *s) {
    return s->done;
}
int dia_seq_chose_eos(const dia_seq *s) {
    return s->chose_eos;
}
int dia_seq_len(const dia_seq *s) {
    return s->len;
}
int dia_seq_max_steps(const dia_seq *s) {
    return s->max_len - 1;
}
const int32_t *dia_seq_frames(const dia_seq *s) {
    return s->frames;
}
/* Fetches the last step's rows of the sequence from the backend into the host staging (the
 * backend keeps them until the next step). The sequence is the model's, so it may be updated. */
const float *dia_seq_logits(const dia_seq *cs, int uncond) {
    dia_seq *s = (dia_seq *)cs;
    dia_model *m = s->m;
    if (s->row < 0 || (uncond && !s->cfg)) return NULL;
    size_t nlog = (size_t)m->cfg.channels * (size_t)m->cfg.dec_vocab;
    float *host = m->sh.logits + (size_t)s->row * nlog;
    if (!s->have_logits) {
        size_t rows = (size_t)(1 + s->cfg);
        if (eng_download(m->be, host, m->sws.logits + (size_t)s->row * nlog, rows * nlog * 4) ||
            eng_sync(m->be))
            return NULL;
        s->have_logits = 1;
    }
    return uncond ? host + nlog : host;
}

/* The processed scores of the last step, with the EOS countdown's forcing applied as spec 6.2
 * states it (a forced channel's scores are 0 at EOS and -inf elsewhere). */
const float *dia_seq_scores(const dia_seq *cs) {
    dia_seq *s = (dia_seq *)cs;
    dia_model *m = s->m;
    if (s->row < 0) return NULL;
    const dia_config *c = &m->cfg;
    size_t V = (size_t)c->dec_vocab, nlog = (size_t)c->channels * V;
    if (!s->have_scores) {
        if (eng_download(m->be, s->scores, m->sws.scores + (size_t)s->entry * nlog, nlog * 4) ||
            eng_sync(m->be))
            return NULL;
        for (int ch = 0; ch < c->channels; ch++) {
            if (!(s->forced & (1u << ch))) continue;
            float *sc = s->scores + (size_t)ch * V;
            for (size_t v = 0; v < V; v++)
                sc[v] = -INFINITY;
            sc[c->eos_id] = 0.0f;
        }
        s->have_scores = 1;
    }
    return s->scores;
}

void dia_seq_force(dia_seq *s, const int32_t *frame) {
    memcpy(s->force_frame, frame, (size_t)s->m->cfg.channels * sizeof *frame);
    s->teacher = 1;
}

void dia_seq_release(dia_model *m, dia_seq *s) {
    (void)m;
    if (s) s->in_use = 0;
}

/* Spec 6.4: start = BOS frames of channel 0, end = T - PAD frames of channel 0 - 1 (the
 * channel-0 EOS), code[c][t] = Y[start + t + d_c][c]. */
int dia_seq_codes(const dia_seq *s, int32_t *codes, int cap_frames, int *n_frames, eng_error *err) {
    const dia_config *c = &s->m->cfg;
    int C = c->channels, T = s->len;
    int bos0 = 0, pad0 = 0;
    for (int t = 0; t < T; t++) {
        int32_t y = s->frames[(size_t)t * C];
        bos0 += y == c->bos_id;
        pad0 += y == c->pad_id;
    }
    int start = bos0, end = T - pad0 - 1;
    int n = end > start ? end - start : 0;
    *n_frames = n;
    if (n > cap_frames)
        return eng_errorf(err, ENG_EINVAL, "dia: %d frames do not fit in %d", n, cap_frames);
    for (int ch = 0; ch < C; ch++) {
        for (int t = 0; t < n; t++) {
            int src = start + t + c->delay[ch];
            int32_t y = src < T ? s->frames[(size_t)src * C + ch] : 0;
            codes[(size_t)ch * cap_frames + t] = (y >= 0 && y < c->eos_id) ? y : 0;
        }
    }
    return 0;
}

int dia_seq_result(const dia_seq *s, dia_result *out, eng_error *err) {
    memset(out, 0, sizeof *out);
    int frames = 0, C = s->m->cfg.channels;
    dia_seq_codes(s, NULL, 0, &frames, NULL);
    out->codes = malloc((size_t)(frames ? frames : 1) * (size_t)C * sizeof(int32_t));
    if (!out->codes)
        return eng_errorf(err, ENG_ENOMEM, "dia: out of memory for %d frames of codes", frames);
    int rc = dia_seq_codes(s, out->codes, frames, &out->n_frames, err);
    if (rc) {
        dia_result_free(out);
        return rc;
    }
    out->channels = C;
    out->steps = s->len - 1;
    out->chose_eos = s->chose_eos;
    return 0;
}

void dia_result_free(dia_result *r) {
    if (!r) return;
    free(r->codes);
    memset(r, 0, sizeof *r);
}

int dia_generate(dia_model *m, const char *text, size_t len, const dia_gen_params *p,
                 dia_result *out, dia_progress_fn progress, void *user, const volatile int *cancel,
                 eng_error *err) {
    memset(out, 0, sizeof *out);
    int32_t ids[DIA_MAX_TEXT];
    int n = 0;
    int rc = dia_tokenize(text, len, ids, m->opts.max_text, &n, err);
    if (rc) return rc;
    dia_seq *s = NULL;
    if ((rc = dia_seq_start(m, ids, n, p, &s, err))) return rc;
    int max_steps = dia_seq_max_steps(s), steps = 0;
    while (!s->done) {
        if (cancel && *cancel) {
            rc = eng_errorf(err, ENG_ECANCELLED, "dia: generation cancelled after %d steps", steps);
            goto done;
        }
        if ((rc = dia_step(m, &s, 1, err))) goto done;
        steps++;
        if (progress && progress(user, steps, max_steps)) {
            rc = eng_errorf(err, ENG_ECANCELLED, "dia: generation cancelled after %d steps", steps);
            goto done;
        }
    }
    rc = dia_seq_result(s, out, err);
done:
    if (rc) dia_result_free(out);
    dia_seq_release(m, s);
    return rc;
}
