/* op.c - the client's command queue: every script call or command is a qop, sent on the `cmd`
 * connection and kept until Redis gives a definitive answer. A lost connection queues it again
 * for the next connect, NOSCRIPT resends the source with EVAL, a transient error (LOADING, BUSY,
 * -UNBLOCKED...) retries after 500 ms, up to OP_ERROR_RETRIES times. The scripts are idempotent
 * (scripts.c), so replaying one whose reply was lost changes nothing. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/internal.h"

#define OP_ERROR_RETRIES 20

qop *qop_new(queue *q, int script, qop_done done, void *priv, int retry) {
    qop *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->q = q;
    op->script = script;
    op->done = done;
    op->priv = priv;
    op->retry = retry;
    return op;
}

void qop_free(qop *op) {
    if (!op) return;
    for (int i = 0; i < op->argc; i++) free(op->argv[i]);
    free(op->argv);
    free(op->lens);
    free(op);
}

/* Appends one argument (copied); failures are remembered as argc = -1 and reported on submit. */
void qop_argn(qop *op, const char *s, size_t n) {
    if (op->argc < 0) return;
    if (op->argc == op->cap) {
        int cap = op->cap ? op->cap * 2 : 16;
        char **a = realloc(op->argv, sizeof *a * (size_t)cap);
        if (a) op->argv = a;
        size_t *l = realloc(op->lens, sizeof *l * (size_t)cap);
        if (l) op->lens = l;
        if (!a || !l) {
            op->argc = -1;
            return;
        }
        op->cap = cap;
    }
    char *c = malloc(n + 1);
    if (!c) {
        op->argc = -1;
        return;
    }
    memcpy(c, s, n);
    c[n] = '\0';
    op->argv[op->argc] = c;
    op->lens[op->argc] = n;
    op->argc++;
}

void qop_arg(qop *op, const char *s) { qop_argn(op, s, strlen(s)); }

void qop_argf(qop *op, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    qop_arg(op, buf);
}

static void op_wait(queue *q, qop *op) {
    op->next = NULL;
    if (q->waiting_tail)
        q->waiting_tail->next = op;
    else
        q->waiting = op;
    q->waiting_tail = op;
}

static int op_send(queue *q, qop *op);

static void op_reply(qconn *c, redisReply *r, void *priv) {
    qop *op = priv;
    queue *q = c->owner;
    if (!r) {
        if (op->retry && !q->closing) {
            op_wait(q, op);
            return;
        }
        if (op->done) op->done(q, NULL, op->priv);
        qop_free(op);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (!strncmp(r->str, "NOSCRIPT", 8) && op->script >= 0 && !op->use_eval) {
            op->use_eval = 1; /* a restarted Redis forgot the script: send the source */
            if (op_send(q, op) != 0) op_wait(q, op);
            return;
        }
        if (op->retry && !q->closing && ++op->errors < OP_ERROR_RETRIES) {
            if (op->errors == 1)
                qlog("redis %s: %s (will retry)",
                     op->script >= 0 ? qscript_name(op->script) : op->argv[0], r->str);
            q->not_before = qconn_mono_ms() + 500;
            op_wait(q, op);
            return;
        }
        qlog("redis %s failed: %s", op->script >= 0 ? qscript_name(op->script) : op->argv[0],
             r->str);
    }
    if (op->done) op->done(q, r, op->priv);
    qop_free(op);
}

/* Sends op on cmd: EVALSHA sha 0 args (EVAL source 0 args after NOSCRIPT) or the command. Any
 * number of arguments (a heartbeat carries one a held job, and a worker may hold up to 256):
 * beyond OP_STACK_ARGS the argument arrays come from the heap. */
#define OP_STACK_ARGS 64
static int op_send(queue *q, qop *op) {
    if (!q->ready || op->argc < 0) return -1;
    const char *argv_s[OP_STACK_ARGS + 3];
    size_t lens_s[OP_STACK_ARGS + 3];
    const char **argv = argv_s;
    size_t *lens = lens_s;
    if (op->argc > OP_STACK_ARGS) {
        argv = malloc((size_t)(op->argc + 3) * sizeof *argv);
        lens = malloc((size_t)(op->argc + 3) * sizeof *lens);
        if (!argv || !lens) {
            free(argv);
            free(lens);
            return -1; /* waits, and is sent when memory allows */
        }
    }
    int n = 0;
    if (op->script >= 0) {
        argv[n] = op->use_eval ? "EVAL" : "EVALSHA";
        lens[n++] = strlen(argv[0]);
        argv[n] = op->use_eval ? qscript_source(op->script) : q->sha[op->script];
        lens[n] = strlen(argv[n]);
        n++;
        argv[n] = "0";
        lens[n++] = 1;
    }
    for (int i = 0; i < op->argc; i++) {
        argv[n] = op->argv[i];
        lens[n++] = op->lens[i];
    }
    int rc = qconn_send(&q->cmd, op_reply, op, n, argv, lens);
    if (argv != argv_s) {
        free(argv);
        free(lens);
    }
    return rc;
}

void qop_submit(queue *q, qop *op) {
    if (!op) return;
    if (op->argc < 0) {
        qlog("out of memory building a redis command");
        if (op->done) op->done(q, NULL, op->priv);
        qop_free(op);
        return;
    }
    if (q->waiting || qconn_mono_ms() < q->not_before || op_send(q, op) != 0) {
        if (!op->retry && (!q->ready || q->closing)) {
            if (op->done) op->done(q, NULL, op->priv);
            qop_free(op);
            return;
        }
        op_wait(q, op);
    }
}

/* Sends what waited for the connection, in order. */
void qop_flush(queue *q) {
    while (q->waiting && q->ready && qconn_mono_ms() >= q->not_before) {
        qop *op = q->waiting;
        q->waiting = op->next;
        if (!q->waiting) q->waiting_tail = NULL;
        if (op_send(q, op) != 0) {
            op->next = q->waiting; /* put it back at the head */
            q->waiting = op;
            if (!q->waiting_tail) q->waiting_tail = op;
            break;
        }
    }
}

/* A script op with ARGV[1] = prefix already added. */
qop *qop_script(queue *q, int script, qop_done done, void *priv, int retry) {
    qop *op = qop_new(q, script, done, priv, retry);
    if (op) qop_arg(op, q->prefix);
    return op;
}
