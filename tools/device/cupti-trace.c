/* A kernel timeline without Nsight Systems (the device machine has none): loaded with LD_PRELOAD
 * into any CUDA program, it records every kernel's GPU start and end through CUPTI's activity
 * API (kernel nodes of CUDA graphs included) and writes them, when the program exits, as CSV to
 * the file named by VOXQ_TRACE_OUT (default trace.csv):
 *   start_ns,end_ns,correlation,graph,grid_x,grid_y,block_x,name
 * `correlation` is the id of the API call that launched the kernel: every kernel of one graph
 * launch shares it, which is how tools/device/trace-step.sh cuts the timeline into steps.
 * Build: cc -O2 -shared -fPIC -o libvoxq_trace.so cupti-trace.c -I$CUDA/include -L$CUDA/lib64
 *        -lcupti   (tools/device/stage.sh does, where CUPTI is installed) */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

#define TRACE_BUF (8u << 20)

static FILE *trace_out;
static unsigned long trace_count, trace_dropped;

static void CUPTIAPI buffer_requested(uint8_t **buf, size_t *size, size_t *max_records) {
    *buf = aligned_alloc(8, TRACE_BUF);
    *size = *buf ? TRACE_BUF : 0;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size,
                                      size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *rec = NULL;
    while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL)
            continue;
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
        if (trace_out)
            fprintf(trace_out, "%llu,%llu,%u,%u,%d,%d,%d,%s\n", (unsigned long long)k->start,
                    (unsigned long long)k->end, k->correlationId, k->graphId, k->gridX, k->gridY,
                    k->blockX, k->name ? k->name : "?");
        trace_count++;
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS)
        trace_dropped += dropped;
    free(buf);
}

static void trace_finish(void) {
    cuptiActivityFlushAll(1);
    if (trace_out) fclose(trace_out);
    trace_out = NULL;
    fprintf(stderr, "voxq-trace: %lu kernels written, %lu dropped\n", trace_count, trace_dropped);
}

__attribute__((constructor)) static void trace_start(void) {
    const char *path = getenv("VOXQ_TRACE_OUT");
    trace_out = fopen(path && *path ? path : "trace.csv", "w");
    if (!trace_out) {
        perror("voxq-trace: cannot open the output");
        return;
    }
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
        fprintf(stderr, "voxq-trace: CUPTI activity tracing unavailable\n");
        fclose(trace_out);
        trace_out = NULL;
        return;
    }
    cuptiActivityFlushPeriod(200); /* completed buffers reach the file while the program runs */
    atexit(trace_finish);
}
