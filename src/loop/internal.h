/* The loop's own insides, shared by the files of src/loop only. Other layers use
 * layer.h. Not installed. */
#ifndef PIER_LOOP_INTERNAL_H
#define PIER_LOOP_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include "layer.h"
#include "metrics/metrics.h"

#define PIER__BATCH 256            /* epoll events fetched per wait */
#define PIER__CHUNK_CACHE 256      /* chunks kept per loop for reuse */

enum { PIER__TASK_QUEUED = 1u << 0, PIER__TASK_OWNED = 1u << 1 };

struct pier_loop_s {
    pier__loop_head_t head;        /* first, as layer.h reads it inline: counters, caches */
    int epfd;
    pier__io_t wake;               /* eventfd */
    uint64_t now;
    unsigned handles;
    int dispatching;               /* inside an iteration: run_once refuses to nest */
    atomic_int stop;
    atomic_ulong owner;            /* pthread_self() of the thread running it, or 0 */
    void *data;

    pthread_mutex_t task_mu;
    pier_task_t *task_head, *task_tail;
    atomic_int wake_pending;       /* an eventfd write is in flight */
    atomic_int tasks_queued;       /* task_head != NULL, readable without the lock */

    pier_timer_t *heap_min;        /* root of the intrusive timer heap */
    uint64_t heap_len;
    uint64_t timer_seq;

    pier__queue_t passes[PIER__PASSES];
    pier__dlist_t **dlists;        /* deadline lists, one per (timeout, callback) */
    uint32_t ndlists;

    char *rbuf;                    /* PIER__READ_BUF bytes shared by all reads */
    void *chunks[PIER__CHUNK_CACHE];
    unsigned nchunks;

    pier__io_t sig;                /* signalfd, -1 when no signal is watched */
    sigset_t sigmask;
    struct { pier_signal_cb cb; void *arg; } sigs[65];

    /* last, away from the hot fields above: other threads read them at scrapes */
    pier__metrics_t metrics;
};

void pier__dlists_free(pier_loop_t *loop); /* deadline.c */

/* Timer heap internals (timer.c). */
uint64_t pier__timers_next(pier_loop_t *loop); /* ms until the next timer, UINT64_MAX if none */
void pier__timers_run(pier_loop_t *loop);

#endif
