/* quant_run.c - the quantization driver: reads a checkpoint tensor by tensor, quantizes rows on a
 * small thread pool and streams the result to one safetensors file.
 *
 * Memory: one chunk of rows (about CHUNK_BYTES of source) of one tensor is quantized at a time;
 * its output is written before the next chunk starts, and the source pages it came from are
 * dropped from this process (madvise MADV_DONTNEED on the read-only file mapping: the bytes stay
 * what the file holds, the kernel just stops counting them here). Only the scales of the current
 * tensor (a few MB at most) are held for a whole tensor, because they follow its data in the
 * file. */
#include "engine/quant.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Source bytes per chunk: big enough to keep the pool busy, small enough to keep memory low. */
#define CHUNK_BYTES (8u << 20)
#define MAX_THREADS 64

/* One chunk of one tensor: rows [r0, r1), handed to every thread of the pool. */
typedef struct chunk_job {
    const st_tensor *t;
    int64_t in;           /* columns */
    int64_t r0, r1;
    eng_quant_method method;
    int group;
    uint8_t *out;         /* quantized bytes of row r0 onwards */
    size_t out_row_bytes;
    float *scales;        /* scales of the whole tensor */
    int64_t scales_per_row;
} chunk_job;

/* Per-thread scratch and results of the current chunk. */
typedef struct worker_state {
    float *row;           /* (in) the source row in f32 */
    float *deq;           /* (in) the row dequantized again, for the error */
    double err_sq, ref_sq;
    int64_t bad_row;      /* first row with a non-finite value, -1 when none */
} worker_state;

typedef struct pool pool;

typedef struct worker_arg {
    pool *p;
    int index;
} worker_arg;

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t start;
    pthread_cond_t done;
    unsigned generation;  /* bumped for each chunk */
    int pending;          /* workers still busy with the current chunk */
    int stop;
    int nthreads;         /* including the calling thread (index 0) */
    int nstarted;         /* worker threads created */
    pthread_t tid[MAX_THREADS];
    worker_arg args[MAX_THREADS];
    worker_state ws[MAX_THREADS];
    const chunk_job *job;
};

/* Monotonic seconds, for the report's timing. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Loads row r of a 2-D float tensor as f32 into dst. The mapping gives no alignment promise for
 * the data, so elements are read with memcpy (the compiler turns it into plain loads). */
static const float *load_row(const st_tensor *t, int64_t in, int64_t r, float *dst) {
    const unsigned char *src = (const unsigned char *)t->data + (size_t)r * (size_t)in *
                               eng_dtype_size(t->dtype);
    if (t->dtype == ENG_DT_F32) {
        if (((uintptr_t)src & 3u) == 0) return (const float *)(const void *)src;
        memcpy(dst, src, (size_t)in * 4);
    } else if (t->dtype == ENG_DT_BF16) {
        for (int64_t j = 0; j < in; j++) {
            uint16_t h;
            memcpy(&h, src + 2 * j, 2);
            dst[j] = eng_bf16_to_f32(h);
        }
    } else {
        for (int64_t j = 0; j < in; j++) {
            uint16_t h;
            memcpy(&h, src + 2 * j, 2);
            dst[j] = eng_f16_to_f32(h);
        }
    }
    return dst;
}

/* Quantizes this thread's share of the chunk's rows and accumulates the error figures. */
static void run_share(const chunk_job *job, int index, int nthreads, worker_state *ws) {
    int64_t rows = job->r1 - job->r0;
    int64_t a = job->r0 + rows * index / nthreads, b = job->r0 + rows * (index + 1) / nthreads;
    int64_t in = job->in;
    ws->err_sq = ws->ref_sq = 0.0;
    ws->bad_row = -1;
    for (int64_t r = a; r < b; r++) {
        const float *w = load_row(job->t, in, r, ws->row);
        double ref = 0.0;
        for (int64_t j = 0; j < in; j++) ref += (double)w[j] * (double)w[j];
        if (!isfinite(ref)) { /* an Inf or NaN (or a sum of squares beyond double: not a weight) */
            ws->bad_row = r;
            return;
        }
        uint8_t *out = job->out + (size_t)(r - job->r0) * job->out_row_bytes;
        float *scales = job->scales + r * job->scales_per_row;
        if (job->method == ENG_QUANT_INT8) {
            scales[0] = eng_quant_row_i8(w, in, (int8_t *)out);
            eng_dequant_row_i8((const int8_t *)out, in, scales[0], ws->deq);
        } else {
            eng_quant_row_i4(w, in, job->group, out, scales);
            eng_dequant_row_i4(out, in, job->group, scales, ws->deq);
        }
        double err = 0.0;
        for (int64_t j = 0; j < in; j++) {
            double d = (double)w[j] - (double)ws->deq[j];
            err += d * d;
        }
        ws->err_sq += err;
        ws->ref_sq += ref;
    }
}

/* A pool thread: waits for each new chunk (generation), runs its share, reports done; exits on
 * stop. */
static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    pool *p = wa->p;
    unsigned seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->start, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        const chunk_job *job = p->job;
        pthread_mutex_unlock(&p->mu);
        run_share(job, wa->index, p->nthreads, &p->ws[wa->index]);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Stops and joins the started threads and frees the scratch rows; safe after a partial start. */
static void pool_stop(pool *p) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nstarted; i++) pthread_join(p->tid[i], NULL);
    for (int i = 0; i < p->nthreads; i++) {
        free(p->ws[i].row);
        free(p->ws[i].deq);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
}

/* Starts nthreads - 1 workers (the caller is worker 0) with scratch rows of max_in floats. */
static int pool_start(pool *p, int nthreads, int64_t max_in, eng_error *err) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    p->nthreads = nthreads;
    for (int i = 0; i < nthreads; i++) {
        size_t bytes = (size_t)(max_in > 0 ? max_in : 1) * sizeof(float);
        p->ws[i].row = malloc(bytes);
        p->ws[i].deq = malloc(bytes);
        if (!p->ws[i].row || !p->ws[i].deq) {
            pool_stop(p);
            return eng_errorf(err, ENG_ENOMEM, "quantize: out of memory for row buffers");
        }
    }
    for (int i = 1; i < nthreads; i++) {
        p->args[i] = (worker_arg){p, i};
        int rc = pthread_create(&p->tid[i - 1], NULL, worker_main, &p->args[i]);
        if (rc != 0) {
            pool_stop(p);
            return eng_errorf(err, ENG_ENOMEM, "quantize: cannot start a thread: %s",
                              strerror(rc));
        }
        p->nstarted++;
    }
    return 0;
}

/* Runs one chunk on every thread, the caller included, and waits for all of them. */
static void pool_run(pool *p, const chunk_job *job) {
    pthread_mutex_lock(&p->mu);
    p->job = job;
    p->pending = p->nthreads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    run_share(job, 0, p->nthreads, &p->ws[0]);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* The run's state, shared by the helpers below. */
typedef struct run {
    const st_model *src;
    const eng_quant_options *opt;
    int group;
    st_writer *w;
    pool pool;
    int pool_started;
    eng_quant_report *rep;
    uint64_t bytes_done, bytes_total;
    double t0;
    eng_error *err;
    uintptr_t page;       /* page size */
    uintptr_t ra_base;    /* mapping of the file being read (0: none yet) */
    uintptr_t ra_end;     /* its end */
    uintptr_t ra_done;    /* read-ahead requested up to here */
} run;

/* Bytes the kernel is asked to read ahead of the tensor being quantized, so the disk works
 * while the threads compute (page-fault reads alone run at a fraction of the disk's speed). */
#define READAHEAD_BYTES (64u << 20)

/* Size of the checkpoint file holding t (its mapping's length). */
static uint64_t file_size_of(const st_model *m, const st_tensor *t) {
    for (size_t i = 0; i < st_model_nfiles(m); i++)
        if (!strcmp(st_path(st_model_file(m, i)), t->file))
            return st_file_size(st_model_file(m, i));
    return t->offset + t->nbytes;
}

/* Called as t's bytes [0, upto) have been consumed: drops their pages from this process and
 * keeps READAHEAD_BYTES of the file requested ahead (MADV_WILLNEED). Dropping is safe because
 * st_model maps every file whole, PROT_READ, MAP_PRIVATE from offset 0: the pages were never
 * written, so the kernel just reads them again if anyone touches them; a tensor whose mapping
 * base is not page-aligned (not such a mapping) is left alone. The page holding byte `upto` may
 * still be needed and is kept. Advice only: failures are ignored. */
static void source_advise(run *r, const st_tensor *t, uint64_t upto) {
    uintptr_t pg = r->page, data = (uintptr_t)t->data, base = data - (uintptr_t)t->offset;
    if (!pg || (base & (pg - 1)) != 0) return;
    uintptr_t first = data & ~(pg - 1), cur = (data + upto) & ~(pg - 1);
    if (cur > first) madvise((void *)first, cur - first, MADV_DONTNEED);
    if (base != r->ra_base) {
        r->ra_base = base;
        r->ra_end = base + file_size_of(r->src, t);
        r->ra_done = cur;
    }
    if (r->ra_done < cur) r->ra_done = cur;
    if (r->ra_done < r->ra_end && r->ra_done - cur < READAHEAD_BYTES / 2) {
        uintptr_t until = cur + READAHEAD_BYTES < r->ra_end ? cur + READAHEAD_BYTES : r->ra_end;
        madvise((void *)r->ra_done, until - r->ra_done, MADV_WILLNEED);
        r->ra_done = until;
    }
}

/* Tells the caller's progress callback where we are; its nonzero answer becomes
 * ENG_ECANCELLED. */
static int report_progress(run *r, size_t i) {
    if (!r->opt->progress) return 0;
    eng_quant_progress p = {i, r->rep->ntensors, r->rep->tensors[i].name, r->bytes_done,
                            r->bytes_total, now_s() - r->t0};
    if (r->opt->progress(&p, r->opt->progress_ctx))
        return eng_errorf(r->err, ENG_ECANCELLED, "quantize: cancelled at tensor '%s'",
                          r->rep->tensors[i].name);
    return 0;
}

/* Streams n bytes of tensor `name` to the output; a failure names the tensor and the file. */
static int write_bytes(run *r, const void *bytes, size_t n, const char *name) {
    if (st_writer_write(r->w, bytes, n) != 0)
        return eng_errorf(r->err, ENG_EIO, "quantize: writing tensor '%s': %s", name,
                          st_writer_errstr(r->w));
    return 0;
}

/* Copies a kept tensor byte for byte, in chunks. */
static int copy_tensor(run *r, size_t i, const st_tensor *t) {
    source_advise(r, t, 0);
    for (uint64_t off = 0; off < t->nbytes;) {
        uint64_t n = t->nbytes - off < CHUNK_BYTES ? t->nbytes - off : CHUNK_BYTES;
        int rc = write_bytes(r, (const char *)t->data + off, (size_t)n, t->name);
        if (rc) return rc;
        off += n;
        r->bytes_done += n;
        source_advise(r, t, off);
        if ((rc = report_progress(r, i))) return rc;
    }
    if (t->nbytes == 0) return report_progress(r, i);
    return 0;
}

/* Quantizes one 2-D tensor chunk by chunk and writes its data, then its scales. */
static int quantize_tensor(run *r, size_t i, const st_tensor *t) {
    eng_quant_tensor_report *tr = &r->rep->tensors[i];
    int64_t out = t->shape[0], in = t->shape[1];
    int int8 = r->opt->method == ENG_QUANT_INT8;
    size_t row_bytes = int8 ? (size_t)in : (size_t)(in + 1) / 2;
    int64_t per_row = int8 ? 1 : (in + r->group - 1) / r->group;
    size_t src_row = (size_t)in * eng_dtype_size(t->dtype);
    int64_t rows_per_chunk = (int64_t)(CHUNK_BYTES / src_row);
    if (rows_per_chunk < r->pool.nthreads) rows_per_chunk = r->pool.nthreads;
    if (rows_per_chunk > out) rows_per_chunk = out;
    uint8_t *buf = malloc((size_t)rows_per_chunk * row_bytes);
    float *scales = malloc((size_t)(out * per_row) * sizeof(float));
    int rc = 0;
    if (!buf || !scales) {
        rc = eng_errorf(r->err, ENG_ENOMEM, "quantize: out of memory for tensor '%s'", t->name);
        goto out;
    }
    source_advise(r, t, 0);
    for (int64_t r0 = 0; r0 < out; r0 += rows_per_chunk) {
        int64_t r1 = r0 + rows_per_chunk < out ? r0 + rows_per_chunk : out;
        chunk_job job = {t, in, r0, r1, r->opt->method, r->group, buf, row_bytes, scales,
                         per_row};
        pool_run(&r->pool, &job);
        for (int k = 0; k < r->pool.nthreads; k++) {
            worker_state *ws = &r->pool.ws[k];
            if (ws->bad_row >= 0) {
                rc = eng_errorf(r->err, ENG_EINVAL,
                                "quantize: tensor '%s' row %lld holds a non-finite value",
                                t->name, (long long)ws->bad_row);
                goto out;
            }
            tr->err_sq += ws->err_sq;
            tr->ref_sq += ws->ref_sq;
        }
        if ((rc = write_bytes(r, buf, (size_t)(r1 - r0) * row_bytes, t->name))) goto out;
        r->bytes_done += (uint64_t)(r1 - r0) * src_row;
        source_advise(r, t, (uint64_t)r1 * src_row);
        if ((rc = report_progress(r, i))) goto out;
    }
    rc = write_bytes(r, scales, (size_t)(out * per_row) * sizeof(float), t->name);
    tr->rel_err = tr->ref_sq > 0 ? sqrt(tr->err_sq / tr->ref_sq) : 0.0;
out:
    free(buf);
    free(scales);
    return rc;
}

/* Records why a tensor was kept (truncated to the report's field). */
static void set_why(eng_quant_tensor_report *tr, const char *why) {
    snprintf(tr->why, sizeof tr->why, "%s", why);
}

/* Decides every tensor, fills the report's per-tensor entries and declares the output tensors.
 * Returns the widest quantized row (for the scratch buffers) in *max_in. */
static int plan(run *r, int64_t *max_in) {
    const st_model *src = r->src;
    eng_quant_report *rep = r->rep;
    eng_error *err = r->err;
    size_t n = st_model_count(src);
    rep->tensors = calloc(n ? n : 1, sizeof *rep->tensors);
    if (!rep->tensors) return eng_errorf(err, ENG_ENOMEM, "quantize: out of memory");
    rep->ntensors = n;
    *max_in = 0;
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_model_at(src, i);
        eng_quant_tensor_report *tr = &rep->tensors[i];
        if (!(tr->name = strdup(t->name))) return eng_errorf(err, ENG_ENOMEM, "quantize: OOM");
        tr->src_dtype = t->dtype;
        tr->ndim = t->ndim;
        memcpy(tr->shape, t->shape, sizeof tr->shape);
        tr->src_bytes = t->nbytes;
        r->bytes_total += t->nbytes;
        char why[sizeof tr->why];
        tr->quantized = eng_quant_policy_decide(&r->opt->policy, t, why, sizeof why);
        if (!tr->quantized) {
            set_why(tr, why);
            tr->out_bytes = t->nbytes;
            if (st_writer_declare(r->w, t->name, t->dtype, t->ndim, t->shape) != 0)
                return eng_errorf(err, ENG_EINVAL, "quantize: declaring '%s': %s", t->name,
                                  st_writer_errstr(r->w));
            continue;
        }
        char scale_name[1024];
        if ((size_t)snprintf(scale_name, sizeof scale_name, "%s_scale", t->name) >=
            sizeof scale_name)
            return eng_errorf(err, ENG_EINVAL, "quantize: tensor name too long: '%s'", t->name);
        if (st_model_find(src, scale_name))
            return eng_errorf(err, ENG_EFORMAT,
                              "quantize: tensor '%s' would get the scale tensor '%s', which the "
                              "source already has", t->name, scale_name);
        int64_t out = t->shape[0], in = t->shape[1];
        int64_t qshape[2], sshape[2] = {out, 1};
        int sdims = 1;
        eng_dtype qdt;
        if (r->opt->method == ENG_QUANT_INT8) {
            qdt = ENG_DT_I8;
            qshape[0] = out, qshape[1] = in;
        } else {
            qdt = ENG_DT_U8;
            qshape[0] = out, qshape[1] = (in + 1) / 2;
            sshape[1] = (in + r->group - 1) / r->group;
            sdims = 2;
        }
        tr->out_bytes = (uint64_t)(qshape[0] * qshape[1]) + (uint64_t)(sshape[0] * sshape[1]) * 4;
        if (st_writer_declare(r->w, t->name, qdt, 2, qshape) != 0 ||
            st_writer_declare(r->w, scale_name, ENG_DT_F32, sdims, sshape) != 0)
            return eng_errorf(err, ENG_EINVAL, "quantize: declaring '%s': %s", t->name,
                              st_writer_errstr(r->w));
        rep->nquantized++;
        rep->quantized_src_bytes += t->nbytes;
        if (in > *max_in) *max_in = in;
    }
    return 0;
}

/* __metadata__: the source's own entries (except voxq.*), then ours. */
static int write_metadata(run *r) {
    const st_model *src = r->src;
    st_writer *w = r->w;
    int rc = 0;
    if (st_model_nfiles(src) > 0) {
        const st_file *f = st_model_file(src, 0);
        for (size_t i = 0; i < st_metadata_count(f) && !rc; i++) {
            const char *key = st_metadata_key(f, i);
            if (strncmp(key, "voxq.", 5) != 0) rc = st_writer_metadata(w, key, st_metadata(f, key));
        }
    }
    char group[16];
    snprintf(group, sizeof group, "%d", r->group);
    if (!rc) rc = st_writer_metadata(w, "voxq.format", ENG_QUANT_FORMAT);
    if (!rc) rc = st_writer_metadata(w, "voxq.method", eng_quant_method_name(r->opt->method));
    if (!rc && r->opt->method == ENG_QUANT_INT4)
        rc = st_writer_metadata(w, "voxq.group_size", group);
    if (!rc) rc = st_writer_metadata(w, "voxq.policy", eng_quant_policy_name(r->opt->policy.kind));
    /* JSON arrays as strings: the --keep patterns and the names of the tensors kept as they are. */
    cJSON *keep = cJSON_CreateArray(), *kept = cJSON_CreateArray();
    char *keep_s = NULL, *kept_s = NULL;
    if (keep && kept) {
        for (size_t i = 0; i < r->opt->policy.nkeep; i++)
            cJSON_AddItemToArray(keep, cJSON_CreateString(r->opt->policy.keep[i]));
        for (size_t i = 0; i < r->rep->ntensors; i++)
            if (!r->rep->tensors[i].quantized)
                cJSON_AddItemToArray(kept, cJSON_CreateString(r->rep->tensors[i].name));
        keep_s = cJSON_PrintUnformatted(keep);
        kept_s = cJSON_PrintUnformatted(kept);
    }
    if (!keep_s || !kept_s) rc = ENG_ENOMEM;
    if (!rc) rc = st_writer_metadata(w, "voxq.keep", keep_s);
    if (!rc) rc = st_writer_metadata(w, "voxq.kept", kept_s);
    cJSON_Delete(keep);
    cJSON_Delete(kept);
    free(keep_s);
    free(kept_s);
    if (rc)
        return eng_errorf(r->err, rc == ENG_ENOMEM ? ENG_ENOMEM : ENG_EIO,
                          "quantize: writing metadata: %s",
                          rc == ENG_ENOMEM ? "out of memory" : st_writer_errstr(w));
    return 0;
}

/* Rejects bad options and an already quantized source before anything is created; sets the
 * effective int4 group (0 for int8). */
static int check_options(const st_model *src, const eng_quant_options *opt, int *group,
                         eng_error *err) {
    if (opt->method != ENG_QUANT_INT8 && opt->method != ENG_QUANT_INT4)
        return eng_errorf(err, ENG_EINVAL, "quantize: unknown method %d", (int)opt->method);
    if (opt->policy.kind != ENG_QUANT_POLICY_GENERIC && opt->policy.kind != ENG_QUANT_POLICY_DIA)
        return eng_errorf(err, ENG_EINVAL, "quantize: unknown policy %d", (int)opt->policy.kind);
    *group = 0;
    if (opt->method == ENG_QUANT_INT4) {
        *group = opt->group ? opt->group : ENG_QUANT_GROUP;
        if (*group < 2 || *group % 2 != 0 || *group > (1 << 20))
            return eng_errorf(err, ENG_EINVAL,
                              "quantize: int4 group size %d must be even and in [2, 2^20]",
                              *group);
    }
    if (opt->threads < 0 || opt->threads > MAX_THREADS)
        return eng_errorf(err, ENG_EINVAL, "quantize: threads %d not in [0, %d]", opt->threads,
                          MAX_THREADS);
    const char *method = st_model_metadata(src, "voxq.method");
    if (method)
        return eng_errorf(err, ENG_EINVAL,
                          "quantize: the source is already quantized (voxq.method = %s)", method);
    return 0;
}

int eng_quant_checkpoint(const st_model *src, const char *out_path, const eng_quant_options *opt,
                         eng_quant_report *report, eng_error *err) {
    eng_quant_report local;
    eng_quant_report *rep = report ? report : &local;
    memset(rep, 0, sizeof *rep);
    long page = sysconf(_SC_PAGESIZE);
    run r = {.src = src, .opt = opt, .rep = rep, .err = err, .t0 = now_s(),
             .page = page > 0 ? (uintptr_t)page : 0};
    int rc = check_options(src, opt, &r.group, err);
    if (rc) return rc;
    struct stat sb;
    if (lstat(out_path, &sb) == 0)
        return eng_errorf(err, ENG_EINVAL, "quantize: output '%s' already exists", out_path);
    rep->method = opt->method;
    rep->group = r.group;
    rep->policy = opt->policy.kind;
    if ((rc = st_writer_open(&r.w, out_path, err)) != 0) goto fail;
    int64_t max_in = 0;
    if ((rc = plan(&r, &max_in)) || (rc = write_metadata(&r))) goto fail;
    if (st_writer_begin_data(r.w) != 0) {
        rc = eng_errorf(err, ENG_EIO, "quantize: %s: %s", out_path, st_writer_errstr(r.w));
        goto fail;
    }
    int nthreads = opt->threads;
    if (nthreads == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = ncpu < 1 ? 1 : (ncpu > MAX_THREADS ? MAX_THREADS : (int)ncpu);
    }
    rep->threads = nthreads;
    if ((rc = pool_start(&r.pool, nthreads, max_in, err))) goto fail;
    r.pool_started = 1;
    for (size_t i = 0; i < rep->ntensors; i++) {
        const st_tensor *t = st_model_at(src, i);
        rc = rep->tensors[i].quantized ? quantize_tensor(&r, i, t) : copy_tensor(&r, i, t);
        if (rc) goto fail;
    }
    pool_stop(&r.pool);
    r.pool_started = 0;
    if (st_writer_finish(r.w) != 0) { /* the file is deleted; the writer stays for its errstr */
        rc = eng_errorf(err, ENG_EIO, "quantize: %s", st_writer_errstr(r.w));
        goto fail;
    }
    r.w = NULL; /* freed by a successful finish */
    if (stat(out_path, &sb) != 0) {
        rc = eng_errorf(err, ENG_EIO, "quantize: %s: %s", out_path, strerror(errno));
        unlink(out_path);
        goto fail;
    }
    rep->out_file_bytes = (uint64_t)sb.st_size;
    for (size_t i = 0; i < st_model_nfiles(src); i++)
        rep->src_file_bytes += st_file_size(st_model_file(src, i));
    rep->ratio = rep->out_file_bytes ? (double)rep->src_file_bytes / (double)rep->out_file_bytes
                                     : 0.0;
    double err_sq = 0, ref_sq = 0;
    for (size_t i = 0; i < rep->ntensors; i++) {
        eng_quant_tensor_report *tr = &rep->tensors[i];
        if (!tr->quantized) continue;
        err_sq += tr->err_sq;
        ref_sq += tr->ref_sq;
        if (!rep->max_rel_err_tensor || tr->rel_err > rep->max_rel_err) {
            rep->max_rel_err = tr->rel_err;
            rep->max_rel_err_tensor = tr->name;
        }
    }
    rep->rel_err = ref_sq > 0 ? sqrt(err_sq / ref_sq) : 0.0;
    rep->seconds = now_s() - r.t0;
    if (!report) eng_quant_report_free(rep);
    return 0;
fail:
    if (r.pool_started) pool_stop(&r.pool);
    st_writer_abort(r.w);
    eng_quant_report_free(rep);
    return rc;
}

void eng_quant_report_free(eng_quant_report *r) {
    if (!r) return;
    for (size_t i = 0; i < r->ntensors; i++) free(r->tensors[i].name);
    free(r->tensors);
    memset(r, 0, sizeof *r);
}

cJSON *eng_quant_report_json(const eng_quant_report *r) {
    cJSON *o = cJSON_CreateObject(), *tensors = cJSON_CreateArray();
    if (!o || !tensors) goto oom;
    cJSON_AddStringToObject(o, "method", eng_quant_method_name(r->method));
    if (r->method == ENG_QUANT_INT4) cJSON_AddNumberToObject(o, "group_size", r->group);
    cJSON_AddStringToObject(o, "policy", eng_quant_policy_name(r->policy));
    cJSON_AddNumberToObject(o, "source_bytes", (double)r->src_file_bytes);
    cJSON_AddNumberToObject(o, "quantized_bytes", (double)r->out_file_bytes);
    cJSON_AddNumberToObject(o, "ratio", r->ratio);
    cJSON_AddNumberToObject(o, "rel_error", r->rel_err);
    cJSON_AddNumberToObject(o, "max_rel_error", r->max_rel_err);
    if (r->max_rel_err_tensor)
        cJSON_AddStringToObject(o, "max_rel_error_tensor", r->max_rel_err_tensor);
    cJSON_AddNumberToObject(o, "tensors_total", (double)r->ntensors);
    cJSON_AddNumberToObject(o, "tensors_quantized", (double)r->nquantized);
    cJSON_AddNumberToObject(o, "threads", r->threads);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    for (size_t i = 0; i < r->ntensors; i++) {
        const eng_quant_tensor_report *tr = &r->tensors[i];
        cJSON *t = cJSON_CreateObject(), *shape = cJSON_CreateArray();
        if (!t || !shape) {
            cJSON_Delete(t);
            cJSON_Delete(shape);
            goto oom;
        }
        cJSON_AddItemToArray(tensors, t);
        cJSON_AddStringToObject(t, "name", tr->name);
        cJSON_AddStringToObject(t, "dtype", eng_dtype_name(tr->src_dtype));
        for (int d = 0; d < tr->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)tr->shape[d]));
        cJSON_AddItemToObject(t, "shape", shape);
        cJSON_AddBoolToObject(t, "quantized", tr->quantized);
        if (tr->quantized)
            cJSON_AddNumberToObject(t, "rel_error", tr->rel_err);
        else
            cJSON_AddStringToObject(t, "kept", tr->why);
        cJSON_AddNumberToObject(t, "source_bytes", (double)tr->src_bytes);
        cJSON_AddNumberToObject(t, "bytes", (double)tr->out_bytes);
    }
    cJSON_AddItemToObject(o, "tensors", tensors);
    return o;
oom:
    cJSON_Delete(o);
    cJSON_Delete(tensors);
    return NULL;
}
