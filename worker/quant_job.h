/* quant_job.h - a quantize job in the worker: one-time across the fleet.
 *
 * 1. A valid variant in the store (and no "force") -> succeeded at once (reuse).
 * 2. Else the fleet lock `<prefix>lock:quant:<model>/<method>` (SET NX PX with a random token,
 *    renewed by compare-and-PEXPIRE every third of its lifetime). Held by another worker -> the
 *    job is re-delayed as waiting_artifact (attempts not counted) and finds the artifact later.
 * 3. worker_quantize() (worker/quantize.h) on the libuv threadpool: it takes the store's own
 *    flock and publishes atomically, so even a lock that expired under a paused holder cannot
 *    leave two artifacts or a partial one. A failed renewal aborts the work (staging discarded).
 * 4. Release with compare-and-DEL; ack / fail / cancel. */
#ifndef VOXQ_WORKER_QUANT_JOB_H
#define VOXQ_WORKER_QUANT_JOB_H

#include <uv.h>

#include "ops/store.h"
#include "queue/queue.h"

typedef struct quant_job quant_job;

/* Starts the job for d on the loop; it hands d back to the queue itself and then calls
 * done(qj, data) once, after which qj is gone. default_model is used when the job names none.
 * Returns NULL (after failing d) when it cannot start. */
quant_job *quant_job_start(uv_loop_t *loop, queue *q, queue_delivery *d, const store *st,
                           const char *default_model, int threads,
                           void (*done)(quant_job *qj, void *data), void *data);
/* Cancel (cooperative): the job stops at the next chunk and is recorded as cancelled. */
void quant_job_cancel(quant_job *qj);
/* Shutdown: stop at the next chunk and requeue with attempts unchanged. */
void quant_job_requeue(quant_job *qj);
/* timeout_s passed: stop at the next chunk; the attempt fails with "timeout" (retryable). */
void quant_job_timeout(quant_job *qj);

#endif
