/* linear.c - y[n, out] = x[n, in] . W^T on the CPU for F32, BF16, I8 and I4 weights: argument
 * checks, the split into tiles across the pool, and the portable kernel (the AVX2 one is in
 * linear_avx2.c).
 *
 * Work split: the n x out grid is cut into tiles, one task each. A few rows (the decoder step:
 * 2 rows per sequence) make one row tile, so each task streams its slice of W once for all
 * rows; many rows (the encoder, cross-attention K/V) use row tiles sized so the tile of x stays
 * in L2 while the task walks its rows of W, which the AVX2 kernel dequantizes once into a
 * small f32 scratch. Tiling never changes the order in which an output is summed. */
#include "engine/cpu/cpu_internal.h"

#include <string.h>

/* Rows of x up to which the kernel reads W in its own format (no packing). */
#define DIRECT_MAX_ROWS 4

/* Portable kernel: one row of W at a time against up to DIRECT_MAX_ROWS rows of x, 8 partial
 * sums per output (the compiler vectorizes the lane loops for the baseline ISA). */
void cpu_linear_tile_generic(const cpu_linear_job *j, int64_t r0, int64_t r1, int64_t o0,
                             int64_t o1) {
    const eng_weight *w = j->w;
    int64_t in = j->in, in8 = in & ~(int64_t)7;
    for (int64_t rb = r0; rb < r1; rb += DIRECT_MAX_ROWS) {
        int64_t nr = r1 - rb < DIRECT_MAX_ROWS ? r1 - rb : DIRECT_MAX_ROWS;
        for (int64_t o = o0; o < o1; o++) {
            float acc[DIRECT_MAX_ROWS][8];
            memset(acc, 0, sizeof acc);
            for (int64_t i = 0; i < in8; i += 8) {
                float w8[8];
                for (int l = 0; l < 8; l++)
                    w8[l] = cpu_weight_at(w, j->ngroups, o, i + l);
                for (int64_t r = 0; r < nr; r++) {
                    const float *xr = j->x + (rb + r) * in + i;
                    for (int l = 0; l < 8; l++)
                        acc[r][l] += w8[l] * xr[l];
                }
            }
            for (int64_t r = 0; r < nr; r++) {
                const float *a = acc[r], *xr = j->x + (rb + r) * in;
                float s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
                for (int64_t i = in8; i < in; i++)
                    s += cpu_weight_at(w, j->ngroups, o, i) * xr[i];
                j->y[(rb + r) * j->out + o] = s;
            }
        }
    }
}

typedef struct linear_ctx {
    cpu_linear_job job;
    cpu_backend *cb;
    int avx2;
    int pack;
    int64_t r_tile, o_tile, n_otiles;
} linear_ctx;

static void linear_task(void *p, int64_t task, int thread) {
    const linear_ctx *c = p;
    int64_t rt = task / c->n_otiles, ot = task % c->n_otiles;
    int64_t r0 = rt * c->r_tile, o0 = ot * c->o_tile;
    int64_t r1 = r0 + c->r_tile < c->job.n ? r0 + c->r_tile : c->job.n;
    int64_t o1 = o0 + c->o_tile < c->job.out ? o0 + c->o_tile : c->job.out;
    if (c->avx2)
        cpu_linear_tile_avx2(&c->job, r0, r1, o0, o1, c->pack ? c->cb->scratch[thread] : NULL);
    else
        cpu_linear_tile_generic(&c->job, r0, r1, o0, o1);
}

static int check_weight(eng_backend *be, const eng_weight *w) {
    if (!w || !w->data || w->in <= 0 || w->out <= 0)
        return eng_backend_fail(be, ENG_EINVAL, "linear: weight is empty or NULL");
    switch (w->fmt) {
    case ENG_W_F32:
    case ENG_W_BF16:
        return 0;
    case ENG_W_I8:
        if (!w->scales)
            return eng_backend_fail(be, ENG_EINVAL, "linear: int8 weight has no scales");
        return 0;
    case ENG_W_I4:
        if (!w->scales)
            return eng_backend_fail(be, ENG_EINVAL, "linear: int4 weight has no scales");
        if (w->group <= 0)
            return eng_backend_fail(be, ENG_EINVAL, "linear: int4 weight has group %d", w->group);
        return 0;
    }
    return eng_backend_fail(be, ENG_EUNSUPPORTED, "linear: unknown weight format %d", (int)w->fmt);
}

int cpu_linear(eng_backend *be, eng_tensor *y, const eng_tensor *x, const eng_weight *w) {
    int rc;
    char s1[96], s2[96];
    if ((rc = cpu_check_tensor(be, "linear", "x", x, ENG_DT_F32)) ||
        (rc = cpu_check_tensor(be, "linear", "y", y, ENG_DT_F32)) || (rc = check_weight(be, w)))
        return rc;
    int64_t in = w->in, out = w->out;
    int64_t n = x->shape[x->ndim - 1] == in ? eng_numel(x) / in : -1;
    if (n < 0 || y->shape[y->ndim - 1] != out || eng_numel(y) != n * out)
        return eng_backend_fail(be, ENG_EINVAL,
                                "linear: x %s . W^T (%s [%lld,%lld]) does not give "
                                "y %s",
                                cpu_tensor_str(s1, sizeof s1, x), eng_wfmt_name(w->fmt),
                                (long long)out, (long long)in, cpu_tensor_str(s2, sizeof s2, y));
    if (n == 0) return 0;
    cpu_backend *cb = cpu_of(be);
    linear_ctx c = {.job = {w, x->data, y->data, n, in, out, 0}, .cb = cb};
    if (w->fmt == ENG_W_I4) c.job.ngroups = (in + w->group - 1) / w->group;
    if (w->fmt == ENG_W_I8) c.job.ngroups = 1;
    c.avx2 = cb->use_avx2 && cpu_linear_avx2_ok(w);
    c.pack = c.avx2 && n > DIRECT_MAX_ROWS;
    if (c.pack && (rc = cpu_scratch_reserve(cb, (size_t)CPU_LINEAR_PACK_ROWS * (size_t)in)))
        return rc;

    /* Row tiles: all rows when few; else ~256 KiB of x per tile (8..128 rows), which stays in
     * L2 while the task packs and walks its rows of W (each packed once per row tile). */
    if (n <= 16) {
        c.r_tile = n;
    } else {
        int64_t rt = (256 * 1024 / 4) / in;
        c.r_tile = rt < 8 ? 8 : rt > 128 ? 128 : rt;
    }
    int64_t r_tiles = (n + c.r_tile - 1) / c.r_tile;
    /* Output tiles: enough tasks to balance the threads (>= 8 each when W is large), each a
     * multiple of 4 rows of W and at least 16. */
    int64_t want = (int64_t)cb->nthreads * 8;
    int64_t ot = r_tiles >= want ? 64 : (out * r_tiles + want - 1) / want;
    ot = (ot + 3) & ~(int64_t)3;
    c.o_tile = ot < 16 ? 16 : ot > 256 ? 256 : ot;
    c.n_otiles = (out + c.o_tile - 1) / c.o_tile;
    cpu_pool_run(cb->pool, linear_task, &c, r_tiles * c.n_otiles);
    return 0;
}
