/* cuda_backend.cu - the CUDA backend object: memory, transfers, weights, step graphs.
 *
 * One stream per backend; every op is enqueued on it in order, so ops are asynchronous and
 * eng_sync() is the only wait. Allocations are counted (live bytes and peak) so the engine can
 * report its memory plan; the device's own free/used figures come from cudaMemGetInfo. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_profiler_api.h>

#include "engine/cuda/cuda_internal.h"

/* Allocations are rounded up to this many bytes (16-byte vector loads never cross an end). */
#define CUDA_ALLOC_ALIGN 256

typedef struct alloc_rec {
    void *ptr;
    size_t bytes;
} alloc_rec;

/* A simple open-addressed table of live allocations (pointer -> size), so free() can account
 * for the bytes it returns. */
typedef struct alloc_table {
    alloc_rec *recs;
    size_t cap;
    size_t count;
} alloc_table;

static size_t hash_ptr(const void *p, size_t cap) {
    uintptr_t v = (uintptr_t)p;
    v ^= v >> 17;
    v *= 0x9e3779b97f4a7c15ull;
    return (size_t)(v >> 7) & (cap - 1);
}

typedef struct cuda_backend_state {
    cuda_impl impl;
    alloc_table table;
} cuda_backend_state;

static int table_put(alloc_table *t, void *p, size_t bytes) {
    if ((t->count + 1) * 2 > t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 1024;
        alloc_rec *n = (alloc_rec *)calloc(ncap, sizeof *n);
        if (!n) return ENG_ENOMEM;
        for (size_t i = 0; i < t->cap; i++) {
            if (!t->recs[i].ptr) continue;
            size_t h = hash_ptr(t->recs[i].ptr, ncap);
            while (n[h].ptr) h = (h + 1) & (ncap - 1);
            n[h] = t->recs[i];
        }
        free(t->recs);
        t->recs = n;
        t->cap = ncap;
    }
    size_t h = hash_ptr(p, t->cap);
    while (t->recs[h].ptr) h = (h + 1) & (t->cap - 1);
    t->recs[h].ptr = p;
    t->recs[h].bytes = bytes;
    t->count++;
    return 0;
}

/* Removes p and returns its size (0 when unknown). Backward-shift deletion keeps probes valid. */
static size_t table_take(alloc_table *t, void *p) {
    if (!t->cap) return 0;
    size_t h = hash_ptr(p, t->cap);
    while (t->recs[h].ptr && t->recs[h].ptr != p) h = (h + 1) & (t->cap - 1);
    if (!t->recs[h].ptr) return 0;
    size_t bytes = t->recs[h].bytes;
    t->recs[h].ptr = NULL;
    t->count--;
    size_t j = h;
    for (;;) {
        j = (j + 1) & (t->cap - 1);
        if (!t->recs[j].ptr) break;
        size_t want = hash_ptr(t->recs[j].ptr, t->cap);
        /* move j back to h when its home position is not in (h, j] */
        int between = (h < j) ? (want > h && want <= j) : (want > h || want <= j);
        if (!between) {
            t->recs[h] = t->recs[j];
            t->recs[j].ptr = NULL;
            h = j;
        }
    }
    return bytes;
}

static cuda_backend_state *state_of(eng_backend *be) { return (cuda_backend_state *)be->impl; }

static int cuda_alloc(eng_backend *be, size_t bytes, void **out) {
    cuda_impl *c = cuda_of(be);
    void *p = NULL;
    if (bytes == 0) bytes = 1;
    bytes = (bytes + CUDA_ALLOC_ALIGN - 1) / CUDA_ALLOC_ALIGN * CUDA_ALLOC_ALIGN;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return eng_backend_fail(be, ENG_ENOMEM,
                                "cudaMalloc(%zu bytes) failed: %s (device free %zu of %zu bytes)",
                                bytes, cudaGetErrorString(e), fr, tot);
    }
    if (table_put(&state_of(be)->table, p, bytes) != 0) {
        cudaFree(p);
        return eng_backend_fail(be, ENG_ENOMEM, "out of host memory for the allocation table");
    }
    c->allocated += bytes;
    if (c->allocated > c->peak) c->peak = c->allocated;
    *out = p;
    return 0;
}

static void cuda_free(eng_backend *be, void *p) {
    if (!p) return;
    cuda_impl *c = cuda_of(be);
    c->allocated -= table_take(&state_of(be)->table, p);
    cudaFree(p);
}

static int cuda_upload(eng_backend *be, void *dst, const void *src, size_t n) {
    CU_CHECK(be, cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cuda_of(be)->stream));
    return 0;
}

/* Downloads are synchronous from the caller's point of view: the bytes are there on return. */
static int cuda_download(eng_backend *be, void *dst, const void *src, size_t n) {
    CU_CHECK(be, cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, cuda_of(be)->stream));
    CU_CHECK(be, cudaStreamSynchronize(cuda_of(be)->stream));
    return 0;
}

static int cuda_copy(eng_backend *be, void *dst, const void *src, size_t n) {
    CU_CHECK(be, cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, cuda_of(be)->stream));
    return 0;
}

static int cuda_memset0(eng_backend *be, void *dst, size_t n) {
    CU_CHECK(be, cudaMemsetAsync(dst, 0, n, cuda_of(be)->stream));
    return 0;
}

static int cuda_sync(eng_backend *be) {
    CU_CHECK(be, cudaStreamSynchronize(cuda_of(be)->stream));
    return 0;
}

static void cuda_mem_stats(eng_backend *be, eng_mem_stats *out) {
    cuda_impl *c = cuda_of(be);
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) cudaGetLastError();
    out->allocated = c->allocated;
    out->peak = c->peak;
    out->device_total = tot;
    out->device_free = fr;
}

long cuda_env_knob(const char *name, long def, long lo, long hi) {
    const char *e = getenv(name);
    if (!e || !*e) return def;
    char *end = NULL;
    long v = strtol(e, &end, 10);
    return *end == '\0' && v >= lo && v <= hi ? v : def;
}

int cuda_pdl_enabled(void) {
    static int on = -1;
    if (on < 0) on = cuda_env_knob("VOXQ_CUDA_PDL_ALL", 1, 0, 1) != 0;
    return on;
}

int cuda_scratch(eng_backend *be, size_t bytes, void **out) {
    cuda_impl *c = cuda_of(be);
    if (bytes > c->scratch_bytes) {
        if (c->capturing)
            return eng_backend_fail(be, ENG_EINVAL,
                                    "scratch of %zu bytes needed during graph capture (have %zu)",
                                    bytes, c->scratch_bytes);
        CU_CHECK(be, cudaStreamSynchronize(c->stream));
        cuda_free(be, c->scratch);
        c->scratch = NULL;
        c->scratch_bytes = 0;
        int rc = cuda_alloc(be, bytes, &c->scratch);
        if (rc) return rc;
        c->scratch_bytes = bytes;
    }
    *out = c->scratch;
    return 0;
}

__global__ void k_f32_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (; i < n; i += stride) dst[i] = __float2bfloat16_rn(src[i]);
}

/* Uploads a host weight. F32 becomes BF16 on the device (the decode kernels stream bf16);
 * BF16, int8 and int4 are uploaded as stored, so loading never repacks. */
static int cuda_weight_load(eng_backend *be, const eng_weight *host, eng_weight *out) {
    cuda_impl *c = cuda_of(be);
    *out = *host;
    out->data = NULL;
    out->scales = NULL;
    size_t nel = (size_t)host->out * (size_t)host->in;
    void *d = NULL;
    int rc;
    if (host->fmt == ENG_W_F32) {
        /* Stage f32 in chunks through a device buffer and convert. */
        rc = cuda_alloc(be, nel * 2, &d);
        if (rc) return rc;
        const size_t chunk = (size_t)16 << 20; /* floats per pass */
        void *stage = NULL;
        rc = cuda_alloc(be, (nel < chunk ? nel : chunk) * 4, &stage);
        if (rc) {
            cuda_free(be, d);
            return rc;
        }
        for (size_t off = 0; off < nel; off += chunk) {
            size_t m = nel - off < chunk ? nel - off : chunk;
            cudaError_t e = cudaMemcpyAsync(stage, (const float *)host->data + off, m * 4,
                                            cudaMemcpyHostToDevice, c->stream);
            if (e == cudaSuccess) {
                k_f32_to_bf16<<<512, 256, 0, c->stream>>>((__nv_bfloat16 *)d + off,
                                                          (const float *)stage, m);
                e = cudaGetLastError();
            }
            if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
            if (e != cudaSuccess) {
                cuda_free(be, stage);
                cuda_free(be, d);
                return eng_backend_fail(be, ENG_EDEVICE, "weight upload: %s", cudaGetErrorString(e));
            }
        }
        cuda_free(be, stage);
        out->fmt = ENG_W_BF16;
        out->data = d;
        return cuda_linear_reserve(be, out);
    }
    size_t bytes = eng_weight_data_bytes(host);
    rc = cuda_alloc(be, bytes, &d);
    if (rc) return rc;
    cudaError_t e = cudaMemcpy(d, host->data, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        cuda_free(be, d);
        return eng_backend_fail(be, ENG_EDEVICE, "weight upload: %s", cudaGetErrorString(e));
    }
    out->data = d;
    size_t sbytes = eng_weight_scale_bytes(host);
    if (sbytes) {
        void *s = NULL;
        rc = cuda_alloc(be, sbytes, &s);
        if (rc) {
            cuda_free(be, d);
            return rc;
        }
        e = cudaMemcpy(s, host->scales, sbytes, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            cuda_free(be, s);
            cuda_free(be, d);
            return eng_backend_fail(be, ENG_EDEVICE, "scale upload: %s", cudaGetErrorString(e));
        }
        out->scales = (const float *)s;
    }
    return cuda_linear_reserve(be, out);
}

static void cuda_weight_release(eng_backend *be, eng_weight *w) {
    cuda_free(be, (void *)w->data);
    cuda_free(be, (void *)w->scales);
    w->data = NULL;
    w->scales = NULL;
}

unsigned long long *cuda_block_trace;
unsigned cuda_block_trace_cap;

/* VOXQ_CUDA_BLOCK_TRACE=records (debug): the trace buffer, allocated by the first backend. */
static void block_trace_start(void) {
    long cap = cuda_env_knob("VOXQ_CUDA_BLOCK_TRACE", 0, 0, 1L << 22);
    if (!cap || cuda_block_trace) return;
    size_t bytes = (size_t)(cap + 1) * CUDA_TRACE_REC * sizeof(unsigned long long);
    if (cudaMalloc((void **)&cuda_block_trace, bytes) != cudaSuccess ||
        cudaMemset(cuda_block_trace, 0, bytes) != cudaSuccess) {
        fprintf(stderr, "voxq: VOXQ_CUDA_BLOCK_TRACE: no room for %ld records\n", cap);
        cudaFree(cuda_block_trace);
        cuda_block_trace = NULL;
        return;
    }
    cuda_block_trace_cap = (unsigned)cap;
}

/* Writes the surviving records, oldest first, as CSV to VOXQ_CUDA_BLOCK_TRACE_OUT (or stderr). */
static void block_trace_dump(void) {
    if (!cuda_block_trace) return;
    size_t cap = cuda_block_trace_cap, n = (cap + 1) * CUDA_TRACE_REC;
    unsigned long long *h = (unsigned long long *)malloc(n * sizeof *h);
    if (h && cudaMemcpy(h, cuda_block_trace, n * sizeof *h, cudaMemcpyDeviceToHost) == cudaSuccess) {
        const char *path = getenv("VOXQ_CUDA_BLOCK_TRACE_OUT");
        FILE *f = path && *path ? fopen(path, "w") : stderr;
        if (f) {
            unsigned long long count = h[0], first = count > cap ? count - cap : 0;
            fprintf(f, "tag,block,sm,grid,t_start,t_wait,t_end\n");
            for (unsigned long long i = first; i < count; i++) {
                const unsigned long long *r = h + CUDA_TRACE_REC * (1 + i % cap);
                fprintf(f, "%llx,%llu,%llu,%llu,%llu,%llu,%llu\n", r[0], r[1] & 0xffffffffull,
                        r[1] >> 32, r[2], r[3], r[4], r[5]);
            }
            if (f != stderr) fclose(f);
        }
    }
    free(h);
    cudaFree(cuda_block_trace);
    cuda_block_trace = NULL;
}

static int cuda_graph_begin(eng_backend *be) {
    cuda_impl *c = cuda_of(be);
    CU_CHECK(be, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = 1;
    return 0;
}

static int cuda_graph_end(eng_backend *be, int key) {
    cuda_impl *c = cuda_of(be);
    cudaGraph_t g = NULL;
    c->capturing = 0;
    CU_CHECK(be, cudaStreamEndCapture(c->stream, &g));
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess)
        return eng_backend_fail(be, ENG_EDEVICE, "cudaGraphInstantiate: %s", cudaGetErrorString(e));
    for (int i = 0; i < c->ngraphs; i++)
        if (c->graphs[i].key == key) {
            cudaGraphExecDestroy(c->graphs[i].exec);
            c->graphs[i].exec = exec;
            return 0;
        }
    if (c->ngraphs == CUDA_MAX_GRAPHS) {
        cudaGraphExecDestroy(exec);
        return eng_backend_fail(be, ENG_EINVAL, "more than %d step graphs", CUDA_MAX_GRAPHS);
    }
    c->graphs[c->ngraphs].key = key;
    c->graphs[c->ngraphs].exec = exec;
    c->ngraphs++;
    return 0;
}

/* VOXQ_CUDA_PROFILE_FROM_STEP=N (read once): cudaProfilerStart() before the N-th step graph
 * launch, so `ncu --profile-from-start off` (tools/device/ncu-step.sh) sees decoder steps only,
 * not the admissions and captures in front of them. 0 (unset): never. */
static long profile_from_step(void) {
    static long step = -1;
    if (step < 0) step = cuda_env_knob("VOXQ_CUDA_PROFILE_FROM_STEP", 0, 0, 1L << 30);
    return step;
}

static int cuda_graph_launch(eng_backend *be, int key) {
    cuda_impl *c = cuda_of(be);
    for (int i = 0; i < c->ngraphs; i++)
        if (c->graphs[i].key == key) {
            if (++c->graph_launches == profile_from_step()) CU_CHECK(be, cudaProfilerStart());
            CU_CHECK(be, cudaGraphLaunch(c->graphs[i].exec, c->stream));
            return 0;
        }
    return ENG_ENOTFOUND;
}

static void cuda_graph_reset(eng_backend *be) {
    cuda_impl *c = cuda_of(be);
    for (int i = 0; i < c->ngraphs; i++) cudaGraphExecDestroy(c->graphs[i].exec);
    c->ngraphs = 0;
}

static void cuda_destroy(eng_backend *be) {
    if (!be) return;
    cuda_backend_state *st = state_of(be);
    cuda_impl *c = &st->impl;
    cudaStreamSynchronize(c->stream);
    block_trace_dump();
    cuda_graph_reset(be);
    cuda_free(be, c->scratch);
    cuda_free(be, c->cublas_ws);
    cuda_free(be, c->att_part);
    cuda_free(be, c->att_count);
    cuda_free(be, c->grid_bar);
    cublasDestroy(c->cublas);
    cudaStreamDestroy(c->stream);
    free(st->table.recs);
    free(st);
    free(be);
}

static eng_backend_ops make_ops(void) {
    eng_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.destroy = cuda_destroy;
    o.alloc = cuda_alloc;
    o.free = cuda_free;
    o.upload = cuda_upload;
    o.download = cuda_download;
    o.copy = cuda_copy;
    o.memset0 = cuda_memset0;
    o.sync = cuda_sync;
    o.mem_stats = cuda_mem_stats;
    o.weight_load = cuda_weight_load;
    o.weight_release = cuda_weight_release;
    o.linear = cuda_linear;
    o.linear_ex = cuda_linear_ex;
    o.linear_group = cuda_linear_group;
    o.mlp = cuda_mlp;
    o.rmsnorm = cuda_rmsnorm;
    o.add = cuda_add;
    o.rope = cuda_rope;
    o.rope_kv_write = cuda_rope_kv_write;
    o.rope_attention = cuda_rope_attention;
    o.silu_mul = cuda_silu_mul;
    o.embed_sum = cuda_embed_sum;
    o.kv_write = cuda_kv_write;
    o.attention = cuda_attention;
    o.conv1d = cuda_conv1d;
    o.conv_transpose1d = cuda_conv_transpose1d;
    o.snake = cuda_snake;
    o.tanh_ = cuda_tanh;
    o.sample = cuda_sample;
    o.graph_begin = cuda_graph_begin;
    o.graph_end = cuda_graph_end;
    o.graph_launch = cuda_graph_launch;
    o.graph_reset = cuda_graph_reset;
    if (cuda_profile_enabled()) {
        cuda_profile_install(&o);
        o.linear_group = NULL; /* profiled as its parts (one linear+rmsnorm per weight) */
        o.profile_json = cuda_profile_json;
    }
    return o;
}

static eng_backend_ops g_cuda_ops;

CUDA_EXTERN int eng_cuda_backend_create(eng_backend **out, int device, eng_error *err) {
    *out = NULL;
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev == 0) {
        cudaGetLastError();
        return eng_errorf(err, ENG_EUNSUPPORTED, "no CUDA device: %s",
                          e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
    }
    if (device < 0 || device >= ndev)
        return eng_errorf(err, ENG_EINVAL, "CUDA device %d does not exist (%d present)", device,
                          ndev);
    e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return eng_errorf(err, ENG_EDEVICE, "cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
    eng_backend *be = (eng_backend *)calloc(1, sizeof *be);
    cuda_backend_state *st = (cuda_backend_state *)calloc(1, sizeof *st);
    if (!be || !st) {
        free(be);
        free(st);
        return eng_errorf(err, ENG_ENOMEM, "out of memory creating the CUDA backend");
    }
    if (!g_cuda_ops.name) g_cuda_ops = make_ops();
    be->ops = &g_cuda_ops;
    be->kind = ENG_BACKEND_CUDA;
    be->nthreads = 1;
    be->impl = st;
    cuda_impl *c = &st->impl;
    c->device = device;
    cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        free(st);
        free(be);
        return eng_errorf(err, ENG_EDEVICE, "CUDA setup: %s", cudaGetErrorString(e));
    }
    block_trace_start();
    c->sm_count = prop.multiProcessorCount;
    c->smem_optin = prop.sharedMemPerBlockOptin;
    if (cublasCreate(&c->cublas) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(c->cublas, c->stream) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(c->stream);
        free(st);
        free(be);
        return eng_errorf(err, ENG_EDEVICE, "cublasCreate failed");
    }
    cublasSetMathMode(c->cublas, CUBLAS_DEFAULT_MATH);
    /* A fixed cuBLAS workspace, so products inside a captured graph never allocate. */
    if (cuda_alloc(be, CUDA_CUBLAS_WORKSPACE, &c->cublas_ws) != 0 ||
        cublasSetWorkspace(c->cublas, c->cublas_ws, CUDA_CUBLAS_WORKSPACE) !=
            CUBLAS_STATUS_SUCCESS) {
        eng_errorf(err, ENG_EDEVICE, "cuBLAS workspace: %s", be->errstr);
        cuda_destroy(be);
        return ENG_EDEVICE;
    }
    if (cuda_alloc(be, CUDA_ATT_PART_BYTES, (void **)&c->att_part) != 0 ||
        cuda_alloc(be, CUDA_ATT_COUNTERS * sizeof(int), (void **)&c->att_count) != 0 ||
        cudaMemset(c->att_count, 0, CUDA_ATT_COUNTERS * sizeof(int)) != cudaSuccess ||
        cuda_alloc(be, sizeof *c->grid_bar, (void **)&c->grid_bar) != 0 ||
        cudaMemset(c->grid_bar, 0, sizeof *c->grid_bar) != cudaSuccess) {
        eng_errorf(err, ENG_EDEVICE, "attention / grid barrier workspace: %s", be->errstr);
        cuda_destroy(be);
        return ENG_EDEVICE;
    }
    c->att_part_bytes = CUDA_ATT_PART_BYTES;
    c->att_count_len = CUDA_ATT_COUNTERS;
    *out = be;
    return 0;
}
