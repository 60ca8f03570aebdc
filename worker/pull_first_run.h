/* pull_first_run.h - a worker's first run on an empty store: pull what it needs (VOXQ_PULL=1). */
#ifndef VOXQ_WORKER_PULL_FIRST_RUN_H
#define VOXQ_WORKER_PULL_FIRST_RUN_H

#include "ops/store.h"

/* With VOXQ_PULL=1 (the container default): when the store holds no valid variant of `model`,
 * downloads it (VOXQ_PULL_REPO, else the known default repository, at VOXQ_PULL_REVISION), and
 * likewise the codec (`codec`, "" meaning dac-44khz; VOXQ_PULL_CODEC_REPO), logging what it does
 * and its progress. HF_TOKEN and HF_ENDPOINT are honoured. Without VOXQ_PULL it does nothing.
 * Returns 0 when the worker may go on to its normal variant choice (and auto-quantize), -1 after
 * logging why it cannot. */
int worker_pull_first_run(const store *st, const char *model, const char *codec);

#endif
