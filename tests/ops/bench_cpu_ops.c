/* bench_cpu_ops - micro-benchmark of the CPU backend (not a test; never fails on a time).
 * Prints one JSON object per line:
 *   linear: n = 2 rows (a decoder step with CFG) for bf16/int8/int4 (group 128) at 2048x2048
 *     and 8192x2048 ([out, in]), with the weight bytes streamed per second. The weights rotate
 *     through copies totalling >= 4x the L3 size so every call reads W from memory, as a
 *     decoder step (2.5 GB of bf16 weights) does.
 *   conv: DAC-decoder-shaped conv1d / conv_transpose1d, in GFLOP/s; snake in samples/s;
 *   attention: decoder self-attention (2 rows, 16 query / 4 KV heads, 3072 positions) and the
 *     encoder (1024 rows over 1024 keys), in GFLOP/s.
 *   step (with --step): every linear of one full-size Dia-1.6B decoder step (18 layers of
 *     self/cross-attention projections and MLP plus the 9252-row head, 1.26e9 weights; cross
 *     K/V excluded as they are cached) at n = 2, per format, as steps/s and GB/s.
 * Usage: bench_cpu_ops [threads (0 = all CPUs)] [min seconds per case, default 0.5] [--step] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "engine/ops.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float rndf(void) {
    return (float)(rnd() % 2000001) / 1000000.0f - 1.0f;
}

/* Fills a weight's bytes with valid values of its format (no NaN/denormal bf16). */
static void fill_weight(eng_weight *w, void *data, float *scales) {
    size_t bytes = eng_weight_data_bytes(w);
    if (w->fmt == ENG_W_BF16) {
        uint16_t *d = data;
        for (size_t i = 0; i < bytes / 2; i++)
            d[i] = eng_f32_to_bf16(rndf() * 0.05f);
    } else {
        uint8_t *d = data;
        for (size_t i = 0; i < bytes; i++)
            d[i] = (uint8_t)rnd();
        if (w->fmt == ENG_W_I4)
            for (size_t i = 0; i < bytes; i++)
                d[i] = (uint8_t)((d[i] & 0x77) + 0x11); /* q != -8 */
    }
    size_t ns = eng_weight_scale_bytes(w) / 4;
    for (size_t i = 0; i < ns; i++)
        scales[i] = 0.01f + 0.001f * (float)(i % 7);
}

static void bench_linear(eng_backend *be, eng_wfmt fmt, int64_t out, int64_t in, double min_s) {
    const int64_t n = 2;
    eng_weight proto = {fmt, out, in, fmt == ENG_W_I4 ? 128 : 0, NULL, NULL};
    size_t wb = eng_weight_data_bytes(&proto), sb = eng_weight_scale_bytes(&proto);
    int copies = (int)((128u << 20) / (wb + sb)) + 1; /* >= 128 MiB, 4x the 32 MiB L3 */
    eng_weight *ws = calloc((size_t)copies, sizeof *ws);
    for (int c = 0; c < copies; c++) {
        ws[c] = proto;
        void *d = NULL, *s = NULL;
        if (eng_alloc(be, wb, &d) || (sb && eng_alloc(be, sb, &s))) {
            fprintf(stderr, "bench: %s\n", be->errstr);
            exit(1);
        }
        fill_weight(&ws[c], d, s);
        ws[c].data = d;
        ws[c].scales = sb ? s : NULL;
    }
    float *x = malloc(sizeof(float) * (size_t)(n * in)),
          *y = malloc(sizeof(float) * (size_t)(n * out));
    for (int64_t i = 0; i < n * in; i++)
        x[i] = rndf();
    eng_tensor xt = eng_view2(x, ENG_DT_F32, n, in), yt = eng_view2(y, ENG_DT_F32, n, out);
    for (int c = 0; c < copies; c++)
        eng_linear(be, &yt, &xt, &ws[c]); /* warm up */
    long calls = 0;
    double t0 = now(), t;
    do {
        for (int c = 0; c < copies; c++, calls++)
            if (eng_linear(be, &yt, &xt, &ws[c])) {
                fprintf(stderr, "bench: %s\n", be->errstr);
                exit(1);
            }
        t = now() - t0;
    } while (t < min_s);
    double us = t / (double)calls * 1e6;
    printf("{\"op\":\"linear\",\"fmt\":\"%s\",\"n\":%lld,\"out\":%lld,\"in\":%lld,\"threads\":%d,"
           "\"us\":%.1f,\"gbps\":%.2f,\"gweights_per_s\":%.2f}\n",
           eng_wfmt_name(fmt), (long long)n, (long long)out, (long long)in, be->nthreads, us,
           (double)(wb + sb) / (us * 1e3), (double)(out * in) / (us * 1e3));
    fflush(stdout);
    for (int c = 0; c < copies; c++) {
        eng_free(be, (void *)ws[c].data);
        eng_free(be, (void *)ws[c].scales);
    }
    free(ws), free(x), free(y);
}

static void bench_conv(eng_backend *be, int transposed, int cin, int cout, int k, int dil_stride,
                       int pad, int tin, double min_s) {
    int64_t tout = transposed ? (int64_t)(tin - 1) * dil_stride - 2 * pad + k
                              : tin + 2 * pad - (int64_t)dil_stride * (k - 1);
    float *x = malloc(4 * (size_t)cin * tin), *w = malloc(4 * (size_t)cin * cout * k);
    float *b = malloc(4 * (size_t)cout), *y = malloc(4 * (size_t)cout * tout);
    for (size_t i = 0; i < (size_t)cin * tin; i++)
        x[i] = rndf();
    for (size_t i = 0; i < (size_t)cin * cout * k; i++)
        w[i] = rndf() * 0.01f;
    for (int i = 0; i < cout; i++)
        b[i] = rndf();
    eng_tensor xt = eng_view2(x, ENG_DT_F32, cin, tin), yt = eng_view2(y, ENG_DT_F32, cout, tout);
    eng_tensor wt = transposed ? eng_view3(w, ENG_DT_F32, cin, cout, k)
                               : eng_view3(w, ENG_DT_F32, cout, cin, k);
    eng_tensor bt = eng_view1(b, ENG_DT_F32, cout);
    long calls = 0;
    double t0 = now(), t;
    do {
        int rc = transposed ? eng_conv_transpose1d(be, &yt, &xt, &wt, &bt, dil_stride, pad)
                            : eng_conv1d(be, &yt, &xt, &wt, &bt, dil_stride, pad);
        if (rc) {
            fprintf(stderr, "bench: %s\n", be->errstr);
            exit(1);
        }
        calls++;
        t = now() - t0;
    } while (t < min_s);
    double s = t / (double)calls;
    /* useful multiply-adds: conv1d cout*tout*cin*k; transposed cin*tin*cout*k */
    double flops =
        2.0 * (transposed ? (double)cin * tin * cout * k : (double)cout * tout * cin * k);
    printf("{\"op\":\"%s\",\"cin\":%d,\"cout\":%d,\"k\":%d,\"%s\":%d,\"tin\":%d,\"threads\":%d,"
           "\"ms\":%.2f,\"gflops\":%.1f}\n",
           transposed ? "conv_transpose1d" : "conv1d", cin, cout, k,
           transposed ? "stride" : "dilation", dil_stride, tin, be->nthreads, s * 1e3,
           flops / s * 1e-9);
    fflush(stdout);
    free(x), free(w), free(b), free(y);
}

/* The yardstick for "memory-bound": plain reads of a 1 GiB buffer, split over `threads`
 * pthreads, 8 independent vector sums each. */
struct stream_arg {
    const float *p;
    size_t n;
    float sum;
};

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static void *stream_part(void *v) {
    struct stream_arg *a = v;
    __m256 s[8];
    for (int k = 0; k < 8; k++)
        s[k] = _mm256_setzero_ps();
    for (size_t i = 0; i + 64 <= a->n; i += 64)
        for (int k = 0; k < 8; k++)
            s[k] = _mm256_add_ps(s[k], _mm256_loadu_ps(a->p + i + 8 * k));
    float out[8];
    for (int k = 1; k < 8; k++)
        s[0] = _mm256_add_ps(s[0], s[k]);
    _mm256_storeu_ps(out, s[0]);
    a->sum = out[0] + out[7];
    return NULL;
}
#else
static void *stream_part(void *v) {
    struct stream_arg *a = v;
    float s = 0;
    for (size_t i = 0; i < a->n; i++)
        s += a->p[i];
    a->sum = s;
    return NULL;
}
#endif

static void bench_stream(int threads, double min_s) {
    size_t n = (1u << 30) / 4;
    float *buf = malloc(n * 4);
    if (!buf || threads < 1 || threads > 256) return;
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)(i & 7);
    pthread_t tid[256];
    struct stream_arg args[256];
    long passes = 0;
    double t0 = now(), t;
    do {
        for (int k = 0; k < threads; k++) {
            args[k] = (struct stream_arg){buf + n / threads * k, n / threads, 0};
            pthread_create(&tid[k], NULL, stream_part, &args[k]);
        }
        for (int k = 0; k < threads; k++)
            pthread_join(tid[k], NULL);
        passes++;
        t = now() - t0;
    } while (t < min_s || passes < 3);
    printf("{\"op\":\"read_bandwidth\",\"threads\":%d,\"gbps\":%.2f,\"check\":%g}\n", threads,
           (double)n * 4 * (double)passes / t * 1e-9, (double)args[0].sum);
    fflush(stdout);
    free(buf);
}

/* One decoder step's linears: {out, in, count per layer} (spec/dia.md section 5). */
static const struct {
    int64_t out, in;
    int per_layer;
} step_shapes[] = {
    {2048, 2048, 4},  /* self q, self o, cross q, cross o */
    {512, 2048, 2},   /* self k, v (4 KV heads) */
    {16384, 2048, 1}, /* gate_up */
    {2048, 8192, 1},  /* down */
};

static void bench_step(eng_backend *be, eng_wfmt fmt, double min_s) {
    enum { LAYERS = 18 };
    int nw = 1;
    for (size_t k = 0; k < sizeof step_shapes / sizeof step_shapes[0]; k++)
        nw += LAYERS * step_shapes[k].per_layer;
    eng_weight *ws = calloc((size_t)nw, sizeof *ws);
    size_t bytes = 0;
    int64_t weights = 0, max_out = 16384, max_in = 8192;
    int at = 0;
    for (int l = 0; l < LAYERS; l++)
        for (size_t k = 0; k < sizeof step_shapes / sizeof step_shapes[0]; k++)
            for (int r = 0; r < step_shapes[k].per_layer; r++)
                ws[at++] = (eng_weight){
                    fmt, step_shapes[k].out, step_shapes[k].in, fmt == ENG_W_I4 ? 128 : 0, NULL,
                    NULL};
    ws[at++] = (eng_weight){fmt, 9252, 2048, fmt == ENG_W_I4 ? 128 : 0, NULL, NULL}; /* head */
    for (int k = 0; k < nw; k++) {
        size_t wb = eng_weight_data_bytes(&ws[k]), sb = eng_weight_scale_bytes(&ws[k]);
        void *d = NULL, *s = NULL;
        if (eng_alloc(be, wb, &d) || (sb && eng_alloc(be, sb, &s))) {
            fprintf(stderr, "bench: %s\n", be->errstr);
            exit(1);
        }
        fill_weight(&ws[k], d, s);
        ws[k].data = d;
        ws[k].scales = sb ? s : NULL;
        bytes += wb + sb;
        weights += ws[k].out * ws[k].in;
    }
    float *x = malloc(sizeof(float) * 2 * (size_t)max_in),
          *y = malloc(sizeof(float) * 2 * (size_t)max_out);
    for (int64_t i = 0; i < 2 * max_in; i++)
        x[i] = rndf();
    long steps = 0;
    double t0 = now(), t;
    do {
        for (int k = 0; k < nw; k++) {
            eng_tensor xt = eng_view2(x, ENG_DT_F32, 2, ws[k].in);
            eng_tensor yt = eng_view2(y, ENG_DT_F32, 2, ws[k].out);
            if (eng_linear(be, &yt, &xt, &ws[k])) {
                fprintf(stderr, "bench: %s\n", be->errstr);
                exit(1);
            }
        }
        steps++;
        t = now() - t0;
    } while (t < min_s || steps < 2);
    double ms = t / (double)steps * 1e3;
    printf("{\"op\":\"decoder_step_linears\",\"fmt\":\"%s\",\"n\":2,\"weights\":%lld,"
           "\"bytes\":%zu,\"threads\":%d,\"ms_per_step\":%.1f,\"steps_per_s\":%.2f,"
           "\"gbps\":%.2f}\n",
           eng_wfmt_name(fmt), (long long)weights, bytes, be->nthreads, ms, 1e3 / ms,
           (double)bytes / (ms * 1e6));
    fflush(stdout);
    for (int k = 0; k < nw; k++) {
        eng_free(be, (void *)ws[k].data);
        eng_free(be, (void *)ws[k].scales);
    }
    free(ws), free(x), free(y);
}

/* Snake over a [channels, samples] signal, in million samples per second. */
static void bench_snake(eng_backend *be, int ch, int len, double min_s) {
    size_t n = (size_t)ch * len;
    float *x = malloc(4 * n), *a = malloc(4 * (size_t)ch);
    for (size_t i = 0; i < n; i++)
        x[i] = rndf() * 3.0f;
    for (int i = 0; i < ch; i++)
        a[i] = 0.5f + (float)(i % 10) * 0.1f;
    eng_tensor xt = eng_view2(x, ENG_DT_F32, ch, len), at = eng_view1(a, ENG_DT_F32, ch);
    long calls = 0;
    double t0 = now(), t;
    do {
        eng_snake(be, &xt, &xt, &at);
        for (size_t i = 0; i < n; i += 4096)
            x[i] = rndf(); /* keep values bounded */
        calls++;
        t = now() - t0;
    } while (t < min_s);
    printf("{\"op\":\"snake\",\"channels\":%d,\"samples\":%d,\"threads\":%d,\"ms\":%.2f,"
           "\"msamples_per_s\":%.1f}\n",
           ch, len, be->nthreads, t / (double)calls * 1e3, (double)n * (double)calls / t * 1e-6);
    fflush(stdout);
    free(x), free(a);
}

/* Attention of `rows` query rows (qh heads of 128) over `keys` positions of kvh heads. */
static void bench_attention(eng_backend *be, int rows, int qh, int kvh, int keys, double min_s) {
    const int hd = 128;
    size_t kvn = (size_t)keys * kvh * hd, qn = (size_t)rows * qh * hd;
    float *k = malloc(4 * kvn), *v = malloc(4 * kvn), *q = malloc(4 * qn), *o = malloc(4 * qn);
    for (size_t i = 0; i < kvn; i++)
        k[i] = rndf(), v[i] = rndf();
    for (size_t i = 0; i < qn; i++)
        q[i] = rndf() * 0.1f;
    int32_t *slot = calloc((size_t)rows, 4), *len = malloc(4 * (size_t)rows);
    for (int i = 0; i < rows; i++)
        len[i] = keys;
    eng_kv kv = {k, v, ENG_DT_F32, 1, keys, kvh, hd};
    eng_tensor qt = eng_view3(q, ENG_DT_F32, rows, qh, hd),
               ot = eng_view3(o, ENG_DT_F32, rows, qh, hd);
    eng_tensor st = eng_view1(slot, ENG_DT_I32, rows), lt = eng_view1(len, ENG_DT_I32, rows);
    long calls = 0;
    double t0 = now(), t;
    do {
        if (eng_attention(be, &ot, &qt, &kv, &st, &lt, NULL, 1.0f)) {
            fprintf(stderr, "bench: %s\n", be->errstr);
            exit(1);
        }
        calls++;
        t = now() - t0;
    } while (t < min_s);
    double s = t / (double)calls;
    printf("{\"op\":\"attention\",\"rows\":%d,\"q_heads\":%d,\"kv_heads\":%d,\"keys\":%d,"
           "\"threads\":%d,\"ms\":%.3f,\"gflops\":%.1f}\n",
           rows, qh, kvh, keys, be->nthreads, s * 1e3,
           4.0 * rows * qh * (double)keys * hd / s * 1e-9);
    fflush(stdout);
    free(k), free(v), free(q), free(o), free(slot), free(len);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    double min_s = argc > 2 ? atof(argv[2]) : 0.5;
    int step = argc > 3 && strcmp(argv[3], "--step") == 0;
    eng_backend *be = NULL;
    eng_error err = {0};
    if (eng_backend_cpu_new(&be, threads, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    const eng_wfmt fmts[3] = {ENG_W_BF16, ENG_W_I8, ENG_W_I4};
    if (step) {
        bench_stream(be->nthreads, min_s);
        for (int f = 0; f < 3; f++)
            bench_step(be, fmts[f], min_s);
        eng_backend_free(be);
        return 0;
    }
    for (int f = 0; f < 3; f++) {
        bench_linear(be, fmts[f], 2048, 2048, min_s);
        bench_linear(be, fmts[f], 8192, 2048, min_s);
    }
    /* DAC decoder, about 1 s of audio: block-0 res-unit conv, the stride-8 upsampler, the last
     * block's k=7 conv at 96 channels. */
    bench_conv(be, 0, 768, 768, 7, 1, 3, 689, min_s);
    bench_conv(be, 0, 768, 768, 7, 9, 27, 689, min_s);
    bench_conv(be, 1, 1536, 768, 16, 8, 4, 86, min_s);
    bench_conv(be, 1, 192, 96, 4, 2, 1, 22050, min_s);
    bench_conv(be, 0, 96, 96, 7, 1, 3, 44100, min_s);
    bench_snake(be, 96, 441000, min_s);
    bench_attention(be, 2, 16, 4, 3072, min_s); /* decoder self-attention, CFG pair, 3072 frames */
    bench_attention(be, 1024, 16, 16, 1024, min_s); /* encoder, one row of 1024 bytes */
    eng_backend_free(be);
    return 0;
}
