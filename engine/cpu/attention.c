/* attention.c - the KV store write and attention over it on the CPU. One task per (query row,
 * KV head) covering the query heads that share that KV head: scores into the thread's scratch,
 * softmax in f32 with the maximum subtracted, normalized weights, then the weighted sum of the
 * values (kept in registers on AVX2). */
#include "engine/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

static int check_kv(eng_backend *be, const char *op, const eng_kv *kv) {
    if (!kv || !kv->k || !kv->v)
        return eng_backend_fail(be, ENG_EINVAL, "%s: KV store has no K/V memory", op);
    if (kv->dtype != ENG_DT_F32)
        return eng_backend_fail(be, ENG_EUNSUPPORTED, "%s: the CPU KV store must be F32, got %s",
                                op, eng_dtype_name(kv->dtype));
    if (kv->slots <= 0 || kv->max_len <= 0 || kv->heads <= 0 || kv->head_dim <= 0)
        return eng_backend_fail(be, ENG_EINVAL,
                                "%s: KV store slots %d, max_len %d, heads %d, "
                                "head_dim %d must all be positive",
                                op, kv->slots, kv->max_len, kv->heads, kv->head_dim);
    return 0;
}

/* Rows of a [..., heads, hd] tensor, or -1 when its last two dimensions are not heads, hd. */
static int64_t rows_of(const eng_tensor *t, int64_t heads, int64_t hd) {
    if (t->ndim < 2 || t->shape[t->ndim - 1] != hd || t->shape[t->ndim - 2] != heads) return -1;
    return eng_numel(t) / (heads * hd);
}

int cpu_kv_write(eng_backend *be, eng_kv *kv, const eng_tensor *slot, const eng_tensor *pos,
                 const eng_tensor *k, const eng_tensor *v) {
    int rc;
    char s1[96], s2[96];
    if ((rc = check_kv(be, "kv_write", kv)) ||
        (rc = cpu_check_tensor(be, "kv_write", "slot", slot, ENG_DT_I32)) ||
        (rc = cpu_check_tensor(be, "kv_write", "pos", pos, ENG_DT_I32)) ||
        (rc = cpu_check_tensor(be, "kv_write", "k", k, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "kv_write", "v", v, ENG_DT_F32)))
        return rc;
    int64_t n = rows_of(k, kv->heads, kv->head_dim);
    if (n < 0 || rows_of(v, kv->heads, kv->head_dim) != n || eng_numel(slot) != n ||
        eng_numel(pos) != n)
        return eng_backend_fail(be, ENG_EINVAL,
                                "kv_write: k %s and v %s must be [n, %d, %d] with "
                                "n slots and positions",
                                cpu_tensor_str(s1, sizeof s1, k), cpu_tensor_str(s2, sizeof s2, v),
                                kv->heads, kv->head_dim);
    const int32_t *sl = slot->data, *ps = pos->data;
    for (int64_t i = 0; i < n; i++)
        if (sl[i] < 0 || sl[i] >= kv->slots || ps[i] < 0 || ps[i] >= kv->max_len)
            return eng_backend_fail(be, ENG_EINVAL,
                                    "kv_write: row %lld has slot %d, pos %d "
                                    "outside the store (%d slots x %d positions)",
                                    (long long)i, sl[i], ps[i], kv->slots, kv->max_len);
    size_t row = (size_t)kv->heads * (size_t)kv->head_dim;
    for (int64_t i = 0; i < n; i++) {
        size_t at = ((size_t)sl[i] * (size_t)kv->max_len + (size_t)ps[i]) * row;
        memcpy((float *)kv->k + at, (const float *)k->data + (size_t)i * row, row * sizeof(float));
        memcpy((float *)kv->v + at, (const float *)v->data + (size_t)i * row, row * sizeof(float));
    }
    return 0;
}

typedef struct attn_ctx {
    cpu_backend *cb;
    float *out;         /* [n, qh, hd] */
    const float *q;     /* [n, qh, hd] */
    const float *k, *v; /* the store */
    const int32_t *slot, *len;
    const uint8_t *mask;   /* [slots, max_len] or NULL */
    int64_t qh, hd, group; /* group = query heads per KV head */
    int64_t kvh, max_len;
    float scale;
    int64_t rows; /* n */
} attn_ctx;

/* score[t] = q . k_t for the 4 keys k0 + t * stride, t < 4 (portable). */
static void dot4_generic(const float *q, const float *k0, size_t stride, int64_t hd, float *score) {
    for (int t = 0; t < 4; t++) {
        const float *k = k0 + t * stride;
        float s = 0;
        for (int64_t d = 0; d < hd; d++)
            s += q[d] * k[d];
        score[t] = s;
    }
}

/* out[0:hd] = sum_t p[t] * v_t over the listed keys (portable). */
static void wsum_generic(float *out, const float *p, const float *v0, size_t stride,
                         const int32_t *keys, int64_t nkeys, int64_t hd) {
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int64_t n = 0; n < nkeys; n++) {
        const float *v = v0 + (size_t)keys[n] * stride;
        for (int64_t d = 0; d < hd; d++)
            out[d] += p[n] * v[d];
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define ATTN_X86 1
#include <immintrin.h>

static inline __attribute__((always_inline, target("avx2,fma"))) float attn_hsum(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

/* Four keys at once: four independent FMA chains instead of one (hd a multiple of 8). */
__attribute__((target("avx2,fma"))) static void dot4_avx2(const float *q, const float *k0,
                                                          size_t stride, int64_t hd, float *score) {
    const float *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t d = 0; d < hd; d += 8) {
        __m256 qv = _mm256_loadu_ps(q + d);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + d), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + d), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + d), a3);
    }
    score[0] = attn_hsum(a0), score[1] = attn_hsum(a1);
    score[2] = attn_hsum(a2), score[3] = attn_hsum(a3);
}

/* The weighted sum kept in registers, 64 outputs per pass (hd a multiple of 8). */
__attribute__((target("avx2,fma"))) static void wsum_avx2(float *out, const float *p,
                                                          const float *v0, size_t stride,
                                                          const int32_t *keys, int64_t nkeys,
                                                          int64_t hd) {
    for (int64_t d0 = 0; d0 < hd; d0 += 64) {
        int nv = hd - d0 >= 64 ? 8 : (int)((hd - d0) / 8);
        __m256 acc[8];
        for (int j = 0; j < 8; j++)
            acc[j] = _mm256_setzero_ps();
        for (int64_t n = 0; n < nkeys; n++) {
            const float *v = v0 + (size_t)keys[n] * stride + d0;
            __m256 pv = _mm256_set1_ps(p[n]);
            if (nv == 8) {
                acc[0] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v), acc[0]);
                acc[1] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 8), acc[1]);
                acc[2] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 16), acc[2]);
                acc[3] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 24), acc[3]);
                acc[4] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 32), acc[4]);
                acc[5] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 40), acc[5]);
                acc[6] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 48), acc[6]);
                acc[7] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 56), acc[7]);
            } else {
                for (int j = 0; j < nv; j++)
                    acc[j] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 8 * j), acc[j]);
            }
        }
        for (int j = 0; j < nv; j++)
            _mm256_storeu_ps(out + d0 + 8 * j, acc[j]);
    }
}
#endif

/* One task: query row i and KV head kh, with the `group` query heads that share it, so each key
 * and value row is read once for all of them. Scratch per thread: the indices of the unmasked
 * keys, then group x len scores. */
static void attn_task(void *p, int64_t task, int thread) {
    const attn_ctx *c = p;
    /* KV-head-major: consecutive tasks (the encoder's rows) reuse one head's K/V from cache */
    int64_t i = task % c->rows, kh = task / c->rows, hd = c->hd, g = c->group;
    int64_t slot = c->slot[i], len = c->len[i];
    const uint8_t *mask = c->mask ? c->mask + slot * c->max_len : NULL;
    size_t stride = (size_t)(c->kvh * hd);
    const float *k0 = c->k + ((size_t)(slot * c->max_len) * (size_t)c->kvh + (size_t)kh) * hd;
    const float *v0 = c->v + ((size_t)(slot * c->max_len) * (size_t)c->kvh + (size_t)kh) * hd;
    int avx2 = 0;
#ifdef ATTN_X86
    avx2 = c->cb->use_avx2 && hd % 8 == 0;
#endif
    int32_t *keys = (int32_t *)c->cb->scratch[thread];
    float *score = c->cb->scratch[thread] + c->max_len;
    int64_t nkeys = 0;
    for (int64_t t = 0; t < len; t++)
        if (!mask || mask[t]) keys[nkeys++] = (int32_t)t;
    for (int64_t h = kh * g; h < (kh + 1) * g; h++) {
        const float *q = c->q + (i * c->qh + h) * hd;
        float *out = c->out + (i * c->qh + h) * hd, *sc = score + (h - kh * g) * c->max_len;
        if (nkeys == 0) { /* every key masked (or len 0): the row's output is zero */
            memset(out, 0, (size_t)hd * sizeof(float));
            continue;
        }
        /* scores; runs of 4 consecutive unmasked keys go 4 at a time */
        for (int64_t n = 0; n < nkeys;) {
            if (n + 4 <= nkeys && keys[n + 3] == keys[n] + 3) {
                const float *kt = k0 + (size_t)keys[n] * stride;
#ifdef ATTN_X86
                if (avx2)
                    dot4_avx2(q, kt, stride, hd, sc + n);
                else
#endif
                    dot4_generic(q, kt, stride, hd, sc + n);
                n += 4;
            } else {
                sc[n] = cpu_dot(c->cb, q, k0 + (size_t)keys[n] * stride, hd);
                n++;
            }
        }
        float maxs = -INFINITY;
        for (int64_t n = 0; n < nkeys; n++) {
            sc[n] *= c->scale;
            if (sc[n] > maxs) maxs = sc[n];
        }
        float sum = 0;
        for (int64_t n = 0; n < nkeys; n++) {
            sc[n] = expf(sc[n] - maxs);
            sum += sc[n];
        }
        float inv = 1.0f / sum;
        for (int64_t n = 0; n < nkeys; n++)
            sc[n] *= inv;
#ifdef ATTN_X86
        if (avx2)
            wsum_avx2(out, sc, v0, stride, keys, nkeys, hd);
        else
#endif
            wsum_generic(out, sc, v0, stride, keys, nkeys, hd);
    }
}

int cpu_attention(eng_backend *be, eng_tensor *out, const eng_tensor *q, const eng_kv *kv,
                  const eng_tensor *slot, const eng_tensor *len, const eng_tensor *key_mask,
                  float scale) {
    int rc;
    char s1[96], s2[96];
    if ((rc = check_kv(be, "attention", kv)) ||
        (rc = cpu_check_tensor(be, "attention", "q", q, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "attention", "out", out, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "attention", "slot", slot, ENG_DT_I32)) ||
        (rc = cpu_check_tensor(be, "attention", "len", len, ENG_DT_I32)) ||
        (key_mask && (rc = cpu_check_tensor(be, "attention", "key_mask", key_mask, ENG_DT_U8))))
        return rc;
    int64_t hd = kv->head_dim, qh = q->ndim >= 2 ? q->shape[q->ndim - 2] : 0;
    int64_t n = rows_of(q, qh, hd);
    if (n < 0 || qh <= 0 || qh % kv->heads != 0)
        return eng_backend_fail(be, ENG_EINVAL,
                                "attention: q %s must be [n, qh, %d] with qh a "
                                "multiple of the store's %d heads",
                                cpu_tensor_str(s1, sizeof s1, q), kv->head_dim, kv->heads);
    if (rows_of(out, qh, hd) != n)
        return eng_backend_fail(be, ENG_EINVAL, "attention: out %s must match q %s",
                                cpu_tensor_str(s1, sizeof s1, out),
                                cpu_tensor_str(s2, sizeof s2, q));
    if (eng_numel(slot) != n || eng_numel(len) != n)
        return eng_backend_fail(be, ENG_EINVAL, "attention: slot %s and len %s need %lld entries",
                                cpu_tensor_str(s1, sizeof s1, slot),
                                cpu_tensor_str(s2, sizeof s2, len), (long long)n);
    if (key_mask && eng_numel(key_mask) != (int64_t)kv->slots * kv->max_len)
        return eng_backend_fail(be, ENG_EINVAL,
                                "attention: key_mask %s must have slots x max_len "
                                "= %d x %d entries",
                                cpu_tensor_str(s1, sizeof s1, key_mask), kv->slots, kv->max_len);
    const int32_t *sl = slot->data, *ln = len->data;
    for (int64_t i = 0; i < n; i++)
        if (sl[i] < 0 || sl[i] >= kv->slots || ln[i] < 0 || ln[i] > kv->max_len)
            return eng_backend_fail(be, ENG_EINVAL,
                                    "attention: row %lld has slot %d, len %d "
                                    "outside the store (%d slots x %d positions)",
                                    (long long)i, sl[i], ln[i], kv->slots, kv->max_len);
    if (n == 0) return 0;
    cpu_backend *cb = cpu_of(be);
    if ((rc = cpu_scratch_reserve(cb, (size_t)kv->max_len * (size_t)(1 + qh / kv->heads))))
        return rc;
    attn_ctx c = {cb,
                  out->data,
                  q->data,
                  kv->k,
                  kv->v,
                  sl,
                  ln,
                  key_mask ? key_mask->data : NULL,
                  qh,
                  hd,
                  qh / kv->heads,
                  kv->heads,
                  kv->max_len,
                  scale,
                  n};
    cpu_pool_run(cb->pool, attn_task, &c, n * kv->heads);
    return 0;
}
