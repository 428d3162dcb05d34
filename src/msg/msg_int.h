/* Internals of the msg layer shared by server.c and workers.c. */
#ifndef PIER_MSG_INT_H
#define PIER_MSG_INT_H

#include <pier/msg.h>

#include <stdatomic.h>

#include "base/buf.h"

/* A message handed to a worker: a copy of the frame plus the replies its handler made.
 * Created on the connection's loop, handled on one worker, finished on the loop again
 * (through the connection id, so a connection that went away costs nothing but a free). */
typedef struct pier__msg_job_s {
    struct pier__msg_job_s *next;
    pier_task_t task;  /* posts a batch of finished jobs (headed by this one) to the loop
                        * without allocating, so handing results back cannot fail */
    pier_msg_server_t *srv;
    void *lp;          /* the connection's loop state (server.c) */
    pier_id_t conn;
    uint16_t id;
    uint32_t len;
    pier__buf_t out;   /* the encoded reply frames, whole frames only */
    char body[];
} pier__msg_job_t;

typedef struct pier__msg_pool_s pier__msg_pool_t;
/* run(job, worker, ud) handles one job on worker thread `worker` and owns it from then on;
 * it returns 1 if a handler ran (counted as handled), 0 if the job was dropped unhandled.
 * flush(worker, ud) runs on that thread after every batch (and every PIER__MSG_FLUSH_EVERY
 * jobs, and once a clock tick has passed since the last), so results can be handed back
 * in bulk. */
typedef int (*pier__msg_run_cb)(pier__msg_job_t *job, unsigned worker, void *ud);
typedef void (*pier__msg_flush_cb)(unsigned worker, void *ud);
#define PIER__MSG_FLUSH_EVERY 64

/* Starts n threads, each with its own FIFO of at most queue_max jobs. Threads block every
 * signal so signalfd-based loop signals keep working. */
int pier__msg_pool_new(pier__msg_pool_t **out, unsigned n, unsigned queue_max, pier__msg_run_cb run,
                       pier__msg_flush_cb flush, void *ud);
/* Appends job to worker `w` (< n) without waking it: call pier__msg_pool_wake(p, w) once
 * after a run of pushes (one wake-up per read instead of one per message). Any thread.
 * -EAGAIN if that queue is full (the job stays the caller's), -ESHUTDOWN once stopping. */
int pier__msg_pool_push(pier__msg_pool_t *p, unsigned w, pier__msg_job_t *job);
/* Wakes worker w if it sleeps with jobs queued. */
void pier__msg_pool_wake(pier__msg_pool_t *p, unsigned w);
unsigned pier__msg_pool_size(const pier__msg_pool_t *p);
/* Jobs handled so far, summed over workers (relaxed reads). */
uint64_t pier__msg_pool_handled(const pier__msg_pool_t *p);
/* Lets the workers finish their queues, joins them and frees the pool. */
void pier__msg_pool_free(pier__msg_pool_t *p);

/* Relaxed counter increment for a counter with one writer. */
static inline void pier__msg_bump(_Atomic uint64_t *c, uint64_t by) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by, memory_order_relaxed);
}

#endif
