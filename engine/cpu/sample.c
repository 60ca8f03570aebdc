/* sample.c - the sample op on the CPU: logits processing in transformers' order and the seeded
 * pick (spec 6.2). This is the reference the CUDA sampler is tested against: every stage is
 * plain f32 arithmetic (no contraction), the softmax sums are doubles in a fixed order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu/cpu_internal.h"
#include "engine/sample_rng.h"

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

/* Guidance: G = Lc + (Lc - Lu) * g; with top_k, the conditional logits at exactly the k largest
 * entries of G (ties at the boundary taken in index order) and -inf elsewhere. */
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
static int draw(const float *x, int n, double u) {
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

/* One (sequence, channel): scores sc[V] from the logits, the pick returned, *eos_argmax set
 * when the argmax after the EOS masking was eos_id. */
static int process_channel(const eng_sample_seq *p, const float *lc, const float *lu, int ch,
                           int V, int eos, float *sc, float *scratch, sort_item *items,
                           int *eos_argmax) {
    if (lu)
        cfg_filter(sc, lc, lu, V, p->cfg_scale, p->cfg_top_k, scratch);
    else
        memcpy(sc, lc, (size_t)V * sizeof *sc);
    float tau = p->temperature;
    if (tau > 0 && tau != 1.0f)
        for (int v = 0; v < V; v++)
            sc[v] = sc[v] / tau;
    *eos_argmax = 0;
    if (eos >= 0 && eos < V) {
        for (int v = ch == 0 ? eos + 1 : eos; v < V; v++)
            sc[v] = -INFINITY;
        if (argmax(sc, V) == eos) {
            for (int v = 0; v < eos; v++)
                sc[v] = -INFINITY;
            *eos_argmax = 1;
        } else {
            sc[eos] = -INFINITY;
        }
    }
    if (p->greedy) return argmax(sc, V);
    top_k_filter(sc, V, p->top_k, scratch);
    top_p_filter(sc, V, p->top_p, items);
    return draw(sc, V, eng_rng_uniform(p->seed, p->step, ch));
}

int cpu_sample(eng_backend *be, eng_tensor *picks, eng_tensor *scores, const eng_tensor *logits,
               const eng_tensor *params, int eos_id) {
    int rc;
    if ((rc = cpu_check_tensor(be, "sample", "picks", picks, ENG_DT_I32)) ||
        (rc = cpu_check_tensor(be, "sample", "scores", scores, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "sample", "logits", logits, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "sample", "params", params, ENG_DT_U8)))
        return rc;
    if (scores->ndim != 3 || logits->ndim != 2)
        return eng_backend_fail(be, ENG_EINVAL,
                                "sample: scores must be [n, channels, vocab], logits [rows, "
                                "channels * vocab]");
    int64_t n = scores->shape[0], C = scores->shape[1], V = scores->shape[2];
    int64_t rows = logits->shape[0];
    if (logits->shape[1] != C * V || eng_numel(picks) != n * (C + 1) ||
        eng_numel(params) != n * (int64_t)sizeof(eng_sample_seq) || V < 1)
        return eng_backend_fail(be, ENG_EINVAL,
                                "sample: logits [%lld, %lld], picks %lld values and params %lld "
                                "bytes do not fit %lld entries of %lld channels x %lld ids",
                                (long long)rows, (long long)logits->shape[1],
                                (long long)eng_numel(picks), (long long)eng_numel(params),
                                (long long)n, (long long)C, (long long)V);
    /* scratch: V floats for the heap, V (value, index) pairs for top-p; planned, not malloc'd */
    cpu_backend *cb = cpu_of(be);
    if ((rc = cpu_scratch_reserve(cb, (size_t)V * 3))) return rc;
    float *scratch = cb->scratch[0];
    sort_item *items = (sort_item *)(scratch + V);
    const eng_sample_seq *ps = params->data;
    const float *lg = logits->data;
    int32_t *pk = picks->data;
    float *sc_all = scores->data;
    rc = 0;
    for (int64_t i = 0; i < n && !rc; i++) {
        eng_sample_seq p;
        memcpy(&p, &ps[i], sizeof p);
        if (p.row < 0) continue;
        if (p.row >= rows || p.row_uncond >= rows) {
            rc = eng_backend_fail(be, ENG_EINVAL, "sample: entry %lld reads row %d/%d of %lld",
                                  (long long)i, p.row, p.row_uncond, (long long)rows);
            break;
        }
        int any_eos = 0;
        for (int64_t ch = 0; ch < C; ch++) {
            const float *lc = lg + (size_t)p.row * (size_t)(C * V) + (size_t)(ch * V);
            const float *lu = p.row_uncond >= 0
                                  ? lg + (size_t)p.row_uncond * (size_t)(C * V) + (size_t)(ch * V)
                                  : NULL;
            int eos_argmax = 0;
            pk[i * (C + 1) + ch] =
                process_channel(&p, lc, lu, (int)ch, (int)V, eos_id,
                                sc_all + (size_t)(i * C + ch) * (size_t)V, scratch, items,
                                &eos_argmax);
            if (ch == 0) any_eos = eos_argmax;
        }
        pk[i * (C + 1) + C] = any_eos;
    }
    return rc;
}
