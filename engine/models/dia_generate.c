/* dia_generate.c - sequences, logits processing in transformers' order (spec 6.2), the seeded
 * sampler, delay-pattern and EOS bookkeeping, and the undelayed codes for the codec (spec 6.4). */
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

/* splitmix64 finaliser; see the RNG contract in dia.h. */
static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The uniform number of (seed, step, channel) in [0, 1), as documented in dia.h. */
static double rng_uniform(uint64_t seed, int step, int channel) {
    uint64_t key = mix64(seed ^ 0x9e3779b97f4a7c15ull);
    uint64_t r = mix64(key + (((uint64_t)step << 8) | (uint64_t)channel));
    return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

/* First index of the maximum (torch.argmax); 0 when every value is -inf. */
static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The k-th largest value of x[n] (1 <= k <= n). A min-heap of the k largest seen so far: one
 * comparison per element once it is full, which suits k = 45 of 1028. */
static float kth_largest(const float *x, int n, int k, float *heap) {
    for (int i = 0; i < k; i++) {
        /* sift up */
        int j = i;
        heap[j] = x[i];
        while (j > 0 && heap[(j - 1) / 2] > heap[j]) {
            float t = heap[j];
            heap[j] = heap[(j - 1) / 2];
            heap[(j - 1) / 2] = t;
            j = (j - 1) / 2;
        }
    }
    for (int i = k; i < n; i++) {
        if (!(x[i] > heap[0])) continue;
        /* replace the minimum and sift down */
        heap[0] = x[i];
        int j = 0;
        for (;;) {
            int l = 2 * j + 1, r = l + 1, s = j;
            if (l < k && heap[l] < heap[s]) s = l;
            if (r < k && heap[r] < heap[s]) s = r;
            if (s == j) break;
            float t = heap[j];
            heap[j] = heap[s];
            heap[s] = t;
            j = s;
        }
    }
    return heap[0];
}

/* CFG (spec 6.2 step 1): G = Lc + (Lc - Lu) * g; with top_k, the conditional logits at exactly
 * the k largest entries of G (ties at the boundary taken in index order) and -inf elsewhere. */
static void cfg_filter(float *out, const float *lc, const float *lu, int n, float g, int top_k,
                       float *scratch) {
    for (int v = 0; v < n; v++)
        out[v] = lc[v] + (lc[v] - lu[v]) * g;
    if (top_k <= 0 || top_k >= n) return;
    float theta = kth_largest(out, n, top_k, scratch);
    int above = 0;
    for (int v = 0; v < n; v++)
        above += out[v] > theta;
    int ties_left = top_k - above;
    for (int v = 0; v < n; v++) {
        int keep = out[v] > theta || (out[v] == theta && ties_left-- > 0);
        out[v] = keep ? lc[v] : -INFINITY;
    }
}

/* Sampling top-k (transformers TopKLogitsWarper): values below the k-th largest become -inf;
 * ties at the k-th value stay. */
static void top_k_filter(float *x, int n, int k, float *scratch) {
    if (k <= 0 || k >= n) return;
    int finite = 0;
    for (int v = 0; v < n; v++)
        finite += x[v] > -INFINITY;
    if (finite <= k) return; /* the k-th value is -inf or the smallest finite one */
    float theta = kth_largest(x, n, k, scratch);
    for (int v = 0; v < n; v++)
        if (x[v] < theta) x[v] = -INFINITY;
}

typedef struct sort_item {
    float value;
    int index;
} sort_item;

static int by_value_asc(const void *a, const void *b) {
    const sort_item *x = a, *y = b;
    if (x->value != y->value) return x->value < y->value ? -1 : 1;
    return x->index - y->index;
}

/* Sampling top-p (transformers TopPLogitsWarper): sort ascending, softmax, cumulative sum;
 * drop entries whose cumulative probability is <= 1 - top_p, always keeping the largest. Only
 * finite entries take part (-inf ones have probability 0 and are dropped already). */
static void top_p_filter(float *x, int n, float top_p, sort_item *items) {
    if (!(top_p < 1.0f)) return;
    int m = 0;
    for (int v = 0; v < n; v++)
        if (x[v] > -INFINITY) items[m++] = (sort_item){x[v], v};
    if (m <= 1) return;
    qsort(items, (size_t)m, sizeof *items, by_value_asc);
    double mx = items[m - 1].value, sum = 0;
    for (int i = 0; i < m; i++)
        sum += exp((double)items[i].value - mx);
    float cut = (float)(1.0 - (double)top_p);
    double cum = 0;
    for (int i = 0; i < m - 1; i++) {
        cum += exp((double)items[i].value - mx) / sum;
        if ((float)cum <= cut) x[items[i].index] = -INFINITY;
    }
}

/* One draw from softmax(x) with uniform u (inverse CDF in index order). */
static int sample(const float *x, int n, double u) {
    int best = argmax(x, n);
    double mx = x[best], total = 0;
    for (int v = 0; v < n; v++)
        if (x[v] > -INFINITY) total += exp((double)x[v] - mx);
    double target = u * total, cum = 0;
    int last = best;
    for (int v = 0; v < n; v++) {
        if (!(x[v] > -INFINITY)) continue;
        cum += exp((double)x[v] - mx);
        last = v;
        if (cum > target) return v;
    }
    return last;
}

/* Spec 6.2 for one sequence: raw logits -> processed scores (s->scores) -> next frame. The
 * EOS-countdown state (active, delay_left) advances; the frame is not appended yet. */
static void process(dia_seq *s, const float *lc_all, const float *lu_all, int32_t *next,
                    float *scratch, sort_item *items) {
    const dia_config *c = &s->m->cfg;
    const dia_gen_params *p = &s->p;
    int V = c->dec_vocab, C = c->channels, eos = c->eos_id;
    float tau = p->temperature > 0 && p->temperature < 1.0f ? 1.0f : p->temperature;
    int eos_argmax0 = 0;
    for (int ch = 0; ch < C; ch++) {
        float *sc = s->scores + (size_t)ch * V;
        const float *lc = lc_all + (size_t)ch * V;
        if (s->cfg)
            cfg_filter(sc, lc, lu_all + (size_t)ch * V, V, p->cfg_scale, p->cfg_top_k, scratch);
        else
            memcpy(sc, lc, (size_t)V * sizeof *sc);
        if (tau > 0 && tau != 1.0f)
            for (int v = 0; v < V; v++)
                sc[v] = sc[v] / tau;
        /* only channel 0 may say EOS; ids above EOS (pad, bos, unused) never */
        for (int v = ch == 0 ? eos + 1 : eos; v < V; v++)
            sc[v] = -INFINITY;
        if (argmax(sc, V) == eos) {
            for (int v = 0; v < eos; v++)
                sc[v] = -INFINITY;
            if (ch == 0) eos_argmax0 = 1;
        } else {
            sc[eos] = -INFINITY;
        }
        if (!p->greedy) {
            top_k_filter(sc, V, p->top_k, scratch);
            top_p_filter(sc, V, p->top_p, items);
        }
    }
    /* delay-pattern EOS forcing: channel c closes d_c steps after channel 0 */
    if (eos_argmax0 && !s->active) s->chose_eos = 1;
    if (eos_argmax0 || s->len == s->max_len - c->max_delay - 1) s->active = 1;
    if (s->active) {
        for (int ch = 0; ch < C; ch++) {
            if (s->delay_left[ch] == 0) {
                float *sc = s->scores + (size_t)ch * V;
                for (int v = 0; v < V; v++)
                    sc[v] = -INFINITY;
                sc[eos] = 0.0f;
            }
            s->delay_left[ch]--;
        }
    }
    int step = s->len - 1;
    for (int ch = 0; ch < C; ch++) {
        const float *sc = s->scores + (size_t)ch * V;
        next[ch] = p->greedy ? argmax(sc, V) : sample(sc, V, rng_uniform(p->seed, step, ch));
    }
}

/* Appends frame `next` (PAD on finished rows unless teacher-forced), applies the delay
 * overwrite (channel c is BOS at positions 0..d_c) and updates finished/done. */
static void append(dia_seq *s, const int32_t *next) {
    const dia_config *c = &s->m->cfg;
    int C = c->channels, t = s->len;
    int32_t *f = s->frames + (size_t)t * C;
    for (int ch = 0; ch < C; ch++) {
        int32_t tok = s->forced ? s->force_frame[ch] : (s->finished[ch] ? c->pad_id : next[ch]);
        if (tok == c->eos_id) s->finished[ch] = 1;
        if (!s->p.no_delay_mask && t <= c->delay[ch]) tok = c->bos_id;
        f[ch] = tok;
    }
    s->forced = 0;
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
    s->active = s->done = s->chose_eos = s->forced = 0;
    s->logits_c = s->logits_u = NULL;
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
    int rc = dia_decoder_step(m, rows, err);
    if (rc) return rc;

    size_t nlog = (size_t)C * (size_t)c->dec_vocab;
    int32_t next[DIA_MAX_CHANNELS];
    for (int i = 0; i < n; i++) {
        dia_seq *s = seqs[i];
        s->logits_c = h->logits + (size_t)s->row * nlog;
        s->logits_u = s->cfg ? h->logits + (size_t)(s->row + 1) * nlog : NULL;
        process(s, s->logits_c, s->logits_u, next, h->proc_scratch, h->proc_items);
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
const int32_t *dia_seq_frames(const dia_seq *s) {
    return s->frames;
}
const float *dia_seq_logits(const dia_seq *s, int uncond) {
    return uncond ? s->logits_u : s->logits_c;
}
const float *dia_seq_scores(const dia_seq *s) {
    return s->scores;
}

void dia_seq_force(dia_seq *s, const int32_t *frame) {
    memcpy(s->force_frame, frame, (size_t)s->m->cfg.channels * sizeof *frame);
    s->forced = 1;
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
    int max_steps = s->max_len - 1, steps = 0;
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
    int frames = 0;
    dia_seq_codes(s, NULL, 0, &frames, NULL);
    out->codes = malloc((size_t)(frames ? frames : 1) * (size_t)m->cfg.channels * sizeof(int32_t));
    if (!out->codes) {
        rc = eng_errorf(err, ENG_ENOMEM, "dia: out of memory for %d frames of codes", frames);
        goto done;
    }
    rc = dia_seq_codes(s, out->codes, frames, &out->n_frames, err);
    out->channels = m->cfg.channels;
    out->steps = steps;
    out->chose_eos = s->chose_eos;
done:
    if (rc) dia_result_free(out);
    dia_seq_release(m, s);
    return rc;
}
