/* bench_cuda_gemv.c - weight-streaming speed of the CUDA linear kernels (a benchmark, not a test).
 *
 * Prints JSON: for each decoder shape, format and row count, the median time of one linear and
 * the achieved weight bandwidth; then the whole decoder step's weight products (18 layers of
 * Dia-1.6B + the output head, as in shared/tools/peer_baselines.py) replayed from one CUDA graph:
 * the floor our decode step can reach before attention and the small ops.
 * Usage: bench_cuda_gemv [--reps N] */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/ops.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t rs = 0x1234567u;
static uint32_t rnd(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs >> 32);
}

/* A random weight of the given format, in host memory (bf16 values kept small and finite). */
static eng_weight host_weight(eng_wfmt fmt, int64_t out, int64_t in) {
    eng_weight w = {fmt, out, in, fmt == ENG_W_I4 ? 128 : 0, NULL, NULL};
    size_t bytes = eng_weight_data_bytes(&w), sb = eng_weight_scale_bytes(&w);
    uint8_t *d = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) d[i] = (uint8_t)rnd();
    if (fmt == ENG_W_BF16)
        for (size_t i = 0; i < bytes / 2; i++)
            ((uint16_t *)d)[i] = (uint16_t)(0x3c00 | (rnd() & 0x807f));
    w.data = d;
    if (sb) {
        float *s = malloc(sb);
        for (size_t i = 0; i < sb / 4; i++) s[i] = 0.01f;
        w.scales = s;
    }
    return w;
}

static void free_host_weight(eng_weight *w) {
    free((void *)w->data);
    free((void *)w->scales);
}

int main(int argc, char **argv) {
    int reps = 50;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    eng_error err = {0};
    eng_backend *be = NULL;
    if (eng_backend_cuda_new(&be, 0, &err) != 0) {
        fprintf(stderr, "bench_cuda_gemv: %s\n", err.msg);
        return 1;
    }
    const int64_t shapes[][2] = {{2048, 2048}, {512, 2048}, {16384, 2048}, {2048, 8192},
                                 {9252, 2048}};
    const eng_wfmt fmts[] = {ENG_W_BF16, ENG_W_I8, ENG_W_I4};
    const int rows[] = {2, 8, 32, 128};
    void *x = NULL, *y = NULL;
    size_t act = (size_t)128 * 16384 * 4;
    if (eng_alloc(be, act, &x) || eng_alloc(be, act, &y)) return 1;
    be->ops->memset0(be, x, act);
    printf("{\"linear\": [\n");
    int first = 1;
    for (size_t f = 0; f < 3; f++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            eng_weight hw = host_weight(fmts[f], shapes[s][0], shapes[s][1]), dw;
            if (be->ops->weight_load(be, &hw, &dw) != 0) {
                fprintf(stderr, "weight_load: %s\n", be->errstr);
                return 1;
            }
            for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
                int n = rows[r];
                eng_tensor tx = eng_view2(x, ENG_DT_F32, n, dw.in);
                eng_tensor ty = eng_view2(y, ENG_DT_F32, n, dw.out);
                double *t = malloc(sizeof(double) * reps);
                for (int i = 0; i < 3; i++) eng_linear(be, &ty, &tx, &dw);
                eng_sync(be);
                for (int i = 0; i < reps; i++) {
                    double t0 = now_s();
                    for (int k = 0; k < 10; k++) eng_linear(be, &ty, &tx, &dw);
                    if (eng_sync(be) != 0) {
                        fprintf(stderr, "linear: %s\n", be->errstr);
                        return 1;
                    }
                    t[i] = (now_s() - t0) / 10;
                }
                qsort(t, reps, sizeof *t, cmp_d);
                double med = t[reps / 2];
                size_t bytes = eng_weight_data_bytes(&dw) + eng_weight_scale_bytes(&dw);
                printf("%s  {\"fmt\": \"%s\", \"out\": %lld, \"in\": %lld, \"rows\": %d, "
                       "\"us\": %.2f, \"weight_GBps\": %.1f}",
                       first ? "" : ",\n", eng_wfmt_name(dw.fmt), (long long)dw.out,
                       (long long)dw.in, n, med * 1e6, bytes / med / 1e9);
                first = 0;
                free(t);
            }
            be->ops->weight_release(be, &dw);
            free_host_weight(&hw);
        }
    printf("\n],\n\"decoder_weights_step\": [\n");
    /* The decoder step's products: per layer q, k, v, o, cross q, cross o, gate_up, down. */
    const int64_t layer[][2] = {{2048, 2048}, {512, 2048},  {512, 2048},   {2048, 2048},
                                {2048, 2048}, {2048, 2048}, {16384, 2048}, {2048, 8192}};
    first = 1;
    for (size_t f = 0; f < 3; f++) {
        int nw = 18 * 8 + 1;
        eng_weight *ws = calloc(nw, sizeof *ws);
        size_t total = 0;
        for (int l = 0; l < 18; l++)
            for (int j = 0; j < 8; j++) {
                eng_weight hw = host_weight(fmts[f], layer[j][0], layer[j][1]);
                if (be->ops->weight_load(be, &hw, &ws[l * 8 + j])) return 1;
                total += eng_weight_data_bytes(&hw) + eng_weight_scale_bytes(&hw);
                free_host_weight(&hw);
            }
        eng_weight hh = host_weight(ENG_W_BF16, 9252, 2048); /* the head stays bf16 */
        if (be->ops->weight_load(be, &hh, &ws[nw - 1])) return 1;
        total += eng_weight_data_bytes(&hh);
        free_host_weight(&hh);
        for (int seqs = 1; seqs <= 64; seqs *= 4) {
            int n = 2 * seqs;
            for (int i = 0; i < nw; i++) { /* warm (grows scratch outside capture) */
                eng_tensor tx = eng_view2(x, ENG_DT_F32, n, ws[i].in);
                eng_tensor ty = eng_view2(y, ENG_DT_F32, n, ws[i].out);
                eng_linear(be, &ty, &tx, &ws[i]);
            }
            if (be->ops->graph_begin(be) != 0) return 1;
            for (int i = 0; i < nw; i++) {
                eng_tensor tx = eng_view2(x, ENG_DT_F32, n, ws[i].in);
                eng_tensor ty = eng_view2(y, ENG_DT_F32, n, ws[i].out);
                eng_linear(be, &ty, &tx, &ws[i]);
            }
            if (be->ops->graph_end(be, n) != 0) {
                fprintf(stderr, "graph: %s\n", be->errstr);
                return 1;
            }
            for (int i = 0; i < 5; i++) be->ops->graph_launch(be, n);
            eng_sync(be);
            double t0 = now_s();
            for (int i = 0; i < 100; i++) be->ops->graph_launch(be, n);
            if (eng_sync(be) != 0) {
                fprintf(stderr, "replay: %s\n", be->errstr);
                return 1;
            }
            double per = (now_s() - t0) / 100;
            printf("%s  {\"fmt\": \"%s\", \"seqs\": %d, \"ms\": %.3f, \"steps_per_s\": %.1f, "
                   "\"weight_bytes\": %zu, \"GBps\": %.1f}",
                   first ? "" : ",\n", eng_wfmt_name(fmts[f]), seqs, per * 1e3, 1 / per, total,
                   total / per / 1e9);
            first = 0;
        }
        be->ops->graph_reset(be);
        for (int i = 0; i < nw; i++) be->ops->weight_release(be, &ws[i]);
        free(ws);
    }
    printf("\n]}\n");
    eng_free(be, x);
    eng_free(be, y);
    eng_backend_free(be);
    return 0;
}
