/* Internals of the msg layer shared by server.c and workers.c. */
#ifndef PIER_MSG_INT_H
#define PIER_MSG_INT_H

#include <pier/msg.h>

#include <stdatomic.h>

/* A message handed to a worker: a copy of the frame plus the replies its handler made.
 * Created on the connection's loop, handled on one worker, finished on the loop again
 * (through the connection id, so a connection that went away costs nothing but a free). */
typedef struct pier__msg_job_s {
    struct pier__msg_job_s *next;
    pier_msg_server_t *srv;
    void *lp;        /* the connection's loop state (server.c) */
    pier_id_t conn;
    uint16_t id;
    uint32_t len;
    char *out;       /* encoded reply frames, malloc'd; handed to the connection as is */
    size_t out_len;
    size_t out_cap;
    int out_err;     /* first error met while gathering replies */
    char body[];
} pier__msg_job_t;

typedef struct pier__msg_pool_s pier__msg_pool_t;
typedef void (*pier__msg_run_cb)(pier__msg_job_t *job, void *ud);

/* Starts n threads, each with its own FIFO of at most queue_max jobs. run(job, ud) runs
 * on the worker and owns job from then on. Threads block every signal so signalfd-based
 * loop signals keep working. */
int pier__msg_pool_new(pier__msg_pool_t **out, unsigned n, unsigned queue_max, pier__msg_run_cb run,
                       void *ud);
/* Appends job to worker `w` (mod n). Any thread. -EAGAIN if that queue is full (the job
 * stays the caller's), -ESHUTDOWN once the pool is stopping. */
int pier__msg_pool_push(pier__msg_pool_t *p, unsigned w, pier__msg_job_t *job);
unsigned pier__msg_pool_size(const pier__msg_pool_t *p);
/* Jobs handled so far, summed over workers (relaxed reads). */
uint64_t pier__msg_pool_handled(const pier__msg_pool_t *p);
/* Lets the workers finish their queues, joins them and frees the pool. Jobs still queued
 * when a worker exits are run first, so nothing is leaked. */
void pier__msg_pool_free(pier__msg_pool_t *p);

/* Relaxed counter increment for a counter with one writer. */
static inline void pier__msg_bump(_Atomic uint64_t *c, uint64_t by) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by, memory_order_relaxed);
}

#endif
