/* The loop's insides, shared by src/loop and src/net. Not installed. */
#ifndef PIER_LOOP_INTERNAL_H
#define PIER_LOOP_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include <pier/loop.h>
#include "queue.h"

#define PIER__BATCH 256            /* epoll events fetched per wait */
#define PIER__READ_BUF (64 * 1024) /* the loop's shared read buffer */
#define PIER__CHUNK (16 * 1024)    /* output copy chunk */
#define PIER__CHUNK_CACHE 256      /* chunks kept per loop for reuse */

/* Anything with an fd in the loop's epoll set starts with this. */
typedef struct pier__io_s pier__io_t;
typedef void (*pier__io_cb)(pier_loop_t *loop, pier__io_t *io, uint32_t events);
struct pier__io_s {
    int fd;
    pier__io_cb cb;
};

/* A posted task. pier_loop_post allocates one; internal callers may embed it. */
typedef struct pier__task_s {
    struct pier__task_s *next;
    pier_task_cb fn;
    void *arg;
    int owned; /* freed by the loop after running */
} pier__task_t;

struct pier_loop_s {
    int epfd;
    pier__io_t wake;               /* eventfd */
    uint64_t now;
    unsigned handles;
    atomic_int stop;
    atomic_ulong owner;            /* pthread_self() of the thread running it, or 0 */
    void *data;

    pthread_mutex_t task_mu;
    pier__task_t *task_head, *task_tail;
    atomic_int wake_pending;       /* an eventfd write is in flight */
    atomic_int tasks_queued;       /* task_head != NULL, readable without the lock */

    pier_timer_t **heap;
    uint32_t heap_len, heap_cap;
    uint64_t timer_seq;

    pier__queue_t conns;           /* every open connection of this loop */
    pier__queue_t flush_q;         /* connections with output to write this iteration */
    pier__queue_t close_q;         /* connections to finish closing this iteration */
    pier__queue_t again_q;         /* connections left readable by a full read */

    char *rbuf;                    /* PIER__READ_BUF bytes shared by all reads */
    void *chunks[PIER__CHUNK_CACHE];
    unsigned nchunks;

    pier__io_t sig;                /* signalfd, -1 when no signal is watched */
    sigset_t sigmask;
    struct { pier_signal_cb cb; void *arg; } sigs[65];
};

int pier__io_add(pier_loop_t *loop, pier__io_t *io, uint32_t events);
int pier__io_mod(pier_loop_t *loop, pier__io_t *io, uint32_t events);
void pier__io_del(pier_loop_t *loop, pier__io_t *io);

/* Queues a caller-owned task node (not freed by the loop). */
void pier__loop_post_task(pier_loop_t *loop, pier__task_t *t);

void *pier__chunk_get(pier_loop_t *loop);
void pier__chunk_put(pier_loop_t *loop, void *chunk);

/* Timer heap internals (timer.c). */
uint64_t pier__timers_next(pier_loop_t *loop); /* ms until the next timer, UINT64_MAX if none */
void pier__timers_run(pier_loop_t *loop);

/* net hooks run by the loop each iteration (src/net/conn.c). */
void pier__net_process_again(pier_loop_t *loop);
void pier__net_process_flush(pier_loop_t *loop);
void pier__net_process_close(pier_loop_t *loop);

/* Rate-limited logging: logs at most once per second per key. */
void pier__log_every(atomic_uint_fast64_t *last_ms, uint64_t now, int level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

uint64_t pier__clock_ms(void);

#endif
