/* replay_backend.h - a CPU backend with step capture, for testing that model code is capturable.
 *
 * The CPU backend has no graph_begin/graph_end/graph_launch (engine/ops.h). This test backend
 * adds them the way a CUDA graph behaves: between graph_begin() and graph_end(key) the compute
 * ops are recorded (their tensor, weight and KV arguments copied by value, nothing run), and
 * graph_launch(key) replays the recording with whatever the tensors hold now. A model that
 * passed a per-step value by value (instead of in a tensor) would replay stale values. */
#ifndef VOXQ_TESTS_REPLAY_BACKEND_H
#define VOXQ_TESTS_REPLAY_BACKEND_H

#include "engine/ops.h"

typedef struct replay_stats {
    int captures; /* graph_end calls */
    int launches; /* successful graph_launch calls */
    int replayed; /* ops run by replays */
    int refused;  /* graph_end calls refused for lack of room */
} replay_stats;

/* Turns a CPU backend into a capturing one (its ops table is replaced; undo before freeing). */
void replay_install(eng_backend *be);
void replay_uninstall(eng_backend *be);
const replay_stats *replay_get_stats(void);
/* Graphs the backend keeps at most (16 unless set); graph_end fails beyond, like a full CUDA
 * graph table. */
void replay_set_max_graphs(int n);

#endif
