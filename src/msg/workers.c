/* The worker pool: N threads, one bounded FIFO each. A connection's messages all go to one
 * worker (chosen from its id), which is what keeps their order without any sequencing on
 * the way back: one worker handles them one at a time and posts the results to the
 * connection's loop in the same order, and the loop runs posted tasks in FIFO order. */
#include "msg_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pier__msg_job_t *head, *tail;
    unsigned count;
    int waiting;   /* the thread sleeps on cv: only then is a signal needed */
    int stop;
    _Atomic uint64_t handled;
    pthread_t th;
    int started;
    struct pier__msg_pool_s *pool;
} worker_t;

struct pier__msg_pool_s {
    unsigned n;
    unsigned queue_max;
    pier__msg_run_cb run;
    pier__msg_flush_cb flush;
    void *ud;
    worker_t w[];
};

/* Takes the whole queue at once, so the lock is held once per batch, not once per job. */
static pier__msg_job_t *take_all(worker_t *w, int *stop) {
    pthread_mutex_lock(&w->mu);
    while (!w->head && !w->stop) {
        w->waiting = 1;
        pthread_cond_wait(&w->cv, &w->mu);
        w->waiting = 0;
    }
    pier__msg_job_t *jobs = w->head;
    w->head = w->tail = NULL;
    w->count = 0;
    *stop = w->stop;
    pthread_mutex_unlock(&w->mu);
    return jobs;
}

/* A clock read per job must cost next to nothing (the coarse clock: a few ns, no TSC
 * read), and its resolution of one kernel tick (1-10 ms, 4 here) is enough to tell fast
 * handlers from slow ones. */
static uint64_t tick_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs a batch, handing results back every PIER__MSG_FLUSH_EVERY jobs, at the end, and
 * whenever a clock tick has passed: fast handlers share one hand-off per batch, and a
 * slow one's replies do not wait for the rest of its batch. */
static void run_batch(worker_t *w, pier__msg_job_t *j) {
    pier__msg_pool_t *p = w->pool;
    unsigned idx = (unsigned)(w - p->w), pending = 0;
    uint64_t flushed = tick_now();
    while (j) {
        pier__msg_job_t *next = j->next;
        if (p->run(j, idx, p->ud))
            pier__msg_bump(&w->handled, 1);
        uint64_t now = tick_now();
        if (++pending == PIER__MSG_FLUSH_EVERY || now != flushed) {
            p->flush(idx, p->ud);
            pending = 0;
            flushed = now;
        }
        j = next;
    }
    if (pending)
        p->flush(idx, p->ud);
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    for (;;) {
        int stop = 0;
        pier__msg_job_t *j = take_all(w, &stop);
        run_batch(w, j);
        if (stop) {
            /* a push that raced with stop is refused, so the queue is empty for good */
            pthread_mutex_lock(&w->mu);
            int empty = w->head == NULL;
            pthread_mutex_unlock(&w->mu);
            if (empty)
                return NULL;
        }
    }
}

int pier__msg_pool_new(pier__msg_pool_t **out, unsigned n, unsigned queue_max, pier__msg_run_cb run,
                       pier__msg_flush_cb flush, void *ud) {
    if (n == 0 || queue_max == 0)
        return -EINVAL;
    pier__msg_pool_t *p = calloc(1, sizeof *p + n * sizeof(worker_t));
    if (!p)
        return -ENOMEM;
    p->n = n;
    p->queue_max = queue_max;
    p->run = run;
    p->flush = flush;
    p->ud = ud;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < n; i++) {
        p->w[i].pool = p;
        pthread_mutex_init(&p->w[i].mu, NULL);
        pthread_cond_init(&p->w[i].cv, NULL);
    }
    int err = 0;
    for (unsigned i = 0; i < n && !err; i++) {
        worker_t *w = &p->w[i];
        err = -pthread_create(&w->th, NULL, worker_main, w);
        w->started = !err;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        pier__msg_pool_free(p);
        return err;
    }
    *out = p;
    return 0;
}

int pier__msg_pool_push(pier__msg_pool_t *p, unsigned wi, pier__msg_job_t *job) {
    worker_t *w = &p->w[wi];
    pthread_mutex_lock(&w->mu);
    if (w->stop || w->count >= p->queue_max) {
        int err = w->stop ? -ESHUTDOWN : -EAGAIN;
        pthread_mutex_unlock(&w->mu);
        return err;
    }
    job->next = NULL;
    if (w->tail)
        w->tail->next = job;
    else
        w->head = job;
    w->tail = job;
    w->count++;
    pthread_mutex_unlock(&w->mu);
    return 0;
}

void pier__msg_pool_wake(pier__msg_pool_t *p, unsigned wi) {
    worker_t *w = &p->w[wi];
    pthread_mutex_lock(&w->mu);
    int wake = w->waiting && w->head;
    pthread_mutex_unlock(&w->mu);
    if (wake)
        pthread_cond_signal(&w->cv);
}

unsigned pier__msg_pool_size(const pier__msg_pool_t *p) {
    return p->n;
}

uint64_t pier__msg_pool_handled(const pier__msg_pool_t *p) {
    uint64_t sum = 0;
    for (unsigned i = 0; i < p->n; i++)
        sum += atomic_load_explicit(&p->w[i].handled, memory_order_relaxed);
    return sum;
}

void pier__msg_pool_free(pier__msg_pool_t *p) {
    if (!p)
        return;
    for (unsigned i = 0; i < p->n; i++) {
        worker_t *w = &p->w[i];
        if (!w->started)
            continue;
        pthread_mutex_lock(&w->mu);
        w->stop = 1;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
    for (unsigned i = 0; i < p->n; i++) {
        worker_t *w = &p->w[i];
        if (w->started)
            pthread_join(w->th, NULL);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
    }
    free(p);
}
