/* cpu_backend.c - the CPU backend object: creation, memory (64-byte aligned, with byte and peak
 * accounting), host<->"device" copies (plain memcpy: the backend's memory is host memory),
 * weights (aliased, never copied) and the op table. */
#include "engine/cpu/cpu_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every allocation is preceded by a header of this many bytes holding its size, so free() can
 * keep the accounting without a table; 64 keeps the returned pointer 64-byte aligned. */
#define CPU_ALLOC_HEADER 64
#define CPU_ALIGN 64

static void *aligned_block(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, CPU_ALIGN, bytes ? bytes : CPU_ALIGN) != 0) return NULL;
    return p;
}

static int cpu_alloc(eng_backend *be, size_t bytes, void **out) {
    cpu_backend *cb = cpu_of(be);
    *out = NULL;
    if (bytes > SIZE_MAX - CPU_ALLOC_HEADER)
        return eng_backend_fail(be, ENG_ENOMEM, "cpu alloc: %zu bytes is too large", bytes);
    char *block = aligned_block(bytes + CPU_ALLOC_HEADER);
    if (!block)
        return eng_backend_fail(be, ENG_ENOMEM, "cpu alloc: out of host memory for %zu bytes",
                                bytes);
    memcpy(block, &bytes, sizeof bytes);
    pthread_mutex_lock(cb->mem_lock);
    cb->allocated += bytes;
    if (cb->allocated > cb->peak) cb->peak = cb->allocated;
    pthread_mutex_unlock(cb->mem_lock);
    *out = block + CPU_ALLOC_HEADER;
    return 0;
}

static void cpu_free(eng_backend *be, void *ptr) {
    if (!ptr) return;
    cpu_backend *cb = cpu_of(be);
    char *block = (char *)ptr - CPU_ALLOC_HEADER;
    size_t bytes;
    memcpy(&bytes, block, sizeof bytes);
    pthread_mutex_lock(cb->mem_lock);
    cb->allocated -= bytes;
    pthread_mutex_unlock(cb->mem_lock);
    free(block);
}

static int cpu_copy(eng_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
    return 0;
}

static int cpu_memset0(eng_backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes) memset(dst, 0, bytes);
    return 0;
}

static int cpu_sync(eng_backend *be) {
    (void)be;
    return 0;
}

static void cpu_mem_stats(eng_backend *be, eng_mem_stats *out) {
    cpu_backend *cb = cpu_of(be);
    pthread_mutex_lock(cb->mem_lock);
    out->allocated = cb->allocated;
    out->peak = cb->peak;
    pthread_mutex_unlock(cb->mem_lock);
    out->device_total = 0;
    out->device_free = 0;
}

/* The CPU reads weights where they lie (usually an mmap of the checkpoint), so loading only
 * checks that the description is one linear() can use. */
static int cpu_weight_load(eng_backend *be, const eng_weight *host, eng_weight *out) {
    if (!host || !out) return eng_backend_fail(be, ENG_EINVAL, "weight_load: NULL weight");
    if (host->fmt < ENG_W_F32 || host->fmt > ENG_W_I4)
        return eng_backend_fail(be, ENG_EUNSUPPORTED, "weight_load: unknown weight format %d",
                                (int)host->fmt);
    if (host->out <= 0 || host->in <= 0 || !host->data)
        return eng_backend_fail(be, ENG_EINVAL, "weight_load: %s weight [%lld,%lld] is empty",
                                eng_wfmt_name(host->fmt), (long long)host->out,
                                (long long)host->in);
    if ((host->fmt == ENG_W_I8 || host->fmt == ENG_W_I4) && !host->scales)
        return eng_backend_fail(be, ENG_EINVAL, "weight_load: %s weight has no scales",
                                eng_wfmt_name(host->fmt));
    if (host->fmt == ENG_W_I4 && host->group <= 0)
        return eng_backend_fail(be, ENG_EINVAL, "weight_load: int4 weight has group %d",
                                host->group);
    *out = *host;
    return 0;
}

static void cpu_weight_release(eng_backend *be, eng_weight *w) {
    (void)be;
    if (w) memset(w, 0, sizeof *w);
}

int cpu_scratch_reserve(cpu_backend *cb, size_t floats) {
    if (floats <= cb->scratch_floats) return 0;
    floats = (floats + 15) & ~(size_t)15;
    for (int t = 0; t < cb->nthreads; t++) {
        float *p = aligned_block(floats * sizeof(float));
        if (!p)
            return eng_backend_fail(&cb->base, ENG_ENOMEM,
                                    "cpu scratch: out of host memory for %zu floats", floats);
        free(cb->scratch[t]);
        cb->scratch[t] = p;
    }
    cb->scratch_floats = floats;
    return 0;
}

static void cpu_destroy(eng_backend *be) {
    if (!be) return;
    cpu_backend *cb = cpu_of(be);
    cpu_pool_free(cb->pool);
    if (cb->scratch)
        for (int t = 0; t < cb->nthreads; t++)
            free(cb->scratch[t]);
    free(cb->scratch);
    if (cb->mem_lock) {
        pthread_mutex_destroy(cb->mem_lock);
        free(cb->mem_lock);
    }
    free(cb);
}

static const eng_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .memset0 = cpu_memset0,
    .sync = cpu_sync,
    .mem_stats = cpu_mem_stats,
    .weight_load = cpu_weight_load,
    .weight_release = cpu_weight_release,
    .linear = cpu_linear,
    .rmsnorm = cpu_rmsnorm,
    .add = cpu_add,
    .rope = cpu_rope,
    .silu_mul = cpu_silu_mul,
    .embed_sum = cpu_embed_sum,
    .kv_write = cpu_kv_write,
    .attention = cpu_attention,
    .conv1d = cpu_conv1d,
    .conv_transpose1d = cpu_conv_transpose1d,
    .snake = cpu_snake,
    .tanh_ = cpu_tanh,
    .sample = cpu_sample,
    /* graph capture: none on the CPU (designated initializers leave the rest NULL) */
};

/* Creates the backend. VOXQ_CPU_SIMD=generic selects the portable kernels even on an AVX2
 * machine (tests use it to check both paths; results differ only in rounding). */
int eng_backend_cpu_new(eng_backend **out, int nthreads, eng_error *err) {
    *out = NULL;
    if (nthreads < 0) return eng_errorf(err, ENG_EINVAL, "cpu backend: nthreads %d < 0", nthreads);
    if (nthreads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = n > 0 ? (int)n : 1;
    }
    if (nthreads > 256) nthreads = 256;
    cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb) return eng_errorf(err, ENG_ENOMEM, "cpu backend: out of memory");
    cb->base.ops = &cpu_ops;
    cb->base.kind = ENG_BACKEND_CPU;
    cb->base.nthreads = nthreads;
    cb->base.impl = cb;
    cb->nthreads = nthreads;
    const char *simd = getenv("VOXQ_CPU_SIMD");
    cb->use_avx2 = cpu_have_avx2() && !(simd && strcmp(simd, "generic") == 0);
    cb->mem_lock = malloc(sizeof(pthread_mutex_t));
    cb->scratch = calloc((size_t)nthreads, sizeof *cb->scratch);
    if (!cb->mem_lock || !cb->scratch) {
        free(cb->mem_lock);
        cb->mem_lock = NULL;
        cpu_destroy(&cb->base);
        return eng_errorf(err, ENG_ENOMEM, "cpu backend: out of memory");
    }
    pthread_mutex_init(cb->mem_lock, NULL);
    cb->pool = cpu_pool_new(nthreads);
    if (!cb->pool) {
        cpu_destroy(&cb->base);
        return eng_errorf(err, ENG_ENOMEM, "cpu backend: cannot start %d threads", nthreads);
    }
    *out = &cb->base;
    return 0;
}
