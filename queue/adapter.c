/* adapter.c - hiredis 0.14.1 async on libuv, through the public ac->ev hooks.
 *
 * Why not <hiredis/adapters/libuv.h>: its poll callback returns at once when libuv reports an
 * error status, and libuv 1.44 reports POLLERR (refused connect, TCP RST) exactly that way and
 * stops the handle. hiredis then never learns the socket died: no connect or disconnect
 * callback, pending callbacks hang forever (spec/queue.md §4.4; fixed upstream only in 1.0.0).
 * Here an error status makes hiredis attempt the armed operations, so the failing read, write
 * or connect check reports the error through the normal callbacks. */
#include <stdlib.h>

#include "queue/internal.h"

typedef struct qadapter {
    redisAsyncContext *ac;
    uv_poll_t poll;
    int events;                 /* UV_READABLE | UV_WRITABLE currently wanted by hiredis */
    int gone;                   /* hiredis called cleanup: ac is freed or being freed */
} qadapter;

static void on_poll(uv_poll_t *handle, int status, int events) {
    qadapter *a = handle->data;
    if (a->gone) return;
    if (status < 0) {
        /* Let hiredis hit the error itself: a write or connect check, then a read. */
        int connected = (a->ac->c.flags & REDIS_CONNECTED) != 0;
        if ((a->events & UV_WRITABLE) || !connected) redisAsyncHandleWrite(a->ac);
        if (!a->gone) redisAsyncHandleRead(a->ac);
        /* Still alive (a spurious error): libuv stopped the handle, so arm it again. */
        if (!a->gone && a->events) uv_poll_start(&a->poll, a->events, on_poll);
        return;
    }
    if ((events & UV_READABLE) && !a->gone) {
        qconn_activity(a->ac); /* bytes arriving count as progress for the watchdog */
        redisAsyncHandleRead(a->ac);
    }
    if ((events & UV_WRITABLE) && !a->gone) redisAsyncHandleWrite(a->ac);
}

static void update(qadapter *a, int events) {
    a->events = events;
    if (events)
        uv_poll_start(&a->poll, events, on_poll);
    else
        uv_poll_stop(&a->poll);
}

static void add_read(void *p) {
    qadapter *a = p;
    update(a, a->events | UV_READABLE);
}
static void del_read(void *p) {
    qadapter *a = p;
    update(a, a->events & ~UV_READABLE);
}
static void add_write(void *p) {
    qadapter *a = p;
    update(a, a->events | UV_WRITABLE);
}
static void del_write(void *p) {
    qadapter *a = p;
    update(a, a->events & ~UV_WRITABLE);
}

static void on_close(uv_handle_t *h) { free(h->data); }

/* hiredis is freeing the context: stop watching the fd and free ourselves once libuv is done. */
static void cleanup(void *p) {
    qadapter *a = p;
    a->gone = 1;
    a->ac->ev.data = NULL;
    uv_poll_stop(&a->poll);
    uv_close((uv_handle_t *)&a->poll, on_close);
}

int qadapter_attach(redisAsyncContext *ac, uv_loop_t *loop) {
    if (ac->ev.data) return -1;
    qadapter *a = calloc(1, sizeof *a);
    if (!a) return -1;
    a->ac = ac;
    if (uv_poll_init_socket(loop, &a->poll, ac->c.fd) != 0) {
        free(a);
        return -1;
    }
    a->poll.data = a;
    ac->ev.data = a;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return 0;
}
