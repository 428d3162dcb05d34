/* The event loop: one epoll set, an eventfd for cross-thread wake-ups, a posted-task
 * queue, the timer heap and the per-iteration connection passes.
 *
 * One iteration:
 *   1. wait in epoll (no wait if work is already pending), refresh the cached clock;
 *   2. dispatch the whole batch (a connection closed earlier in the batch ignores its
 *      later events: memory is only released in step 6, after the batch);
 *   3. run due timers;  4. run posted tasks;
 *   5. flush: one writev per connection with output queued this iteration;
 *   6. close: finish the closes requested this iteration, run on_close, drop the loop's
 *      reference. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

uint64_t pier__clock_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int tasks_pending(pier_loop_t *loop);

static void wake_cb(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    uint64_t v;
    /* Drain first, then clear. A post between the two sees the flag still set and does
     * not write, but its task is already queued and runs in this iteration's task pass.
     * Clearing first would let a racing write be drained here and leave the flag set
     * with no wake-up pending: the next post would then sleep in the queue. */
    while (read(io->fd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    atomic_store(&loop->wake_pending, 0);
}

int pier_loop_new(pier_loop_t **out) {
    pier_loop_t *loop = calloc(1, sizeof *loop);
    if (!loop)
        return -ENOMEM;
    int err = -ENOMEM;
    loop->epfd = loop->wake.fd = loop->sig.fd = -1;
    loop->rbuf = malloc(PIER__READ_BUF);
    if (!loop->rbuf)
        goto fail;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) {
        err = -errno;
        goto fail;
    }
    loop->wake.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->wake.fd < 0) {
        err = -errno;
        goto fail;
    }
    loop->wake.cb = wake_cb;
    if ((err = pier__io_add(loop, &loop->wake, EPOLLIN)) < 0)
        goto fail;
    pthread_mutex_init(&loop->task_mu, NULL);
    pier__queue_init(&loop->conns);
    pier__queue_init(&loop->flush_q);
    pier__queue_init(&loop->close_q);
    pier__queue_init(&loop->again_q);
    sigemptyset(&loop->sigmask);
    loop->now = pier__clock_ms();

    /* A peer that resets must never kill the process. Writes use MSG_NOSIGNAL, but
     * sendfile() cannot, so SIGPIPE is ignored unless the program chose a handler. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    *out = loop;
    return 0;
fail:
    if (loop->wake.fd >= 0)
        close(loop->wake.fd);
    if (loop->epfd >= 0)
        close(loop->epfd);
    free(loop->rbuf);
    free(loop);
    return err;
}

int pier_loop_free(pier_loop_t *loop) {
    if (!loop)
        return 0;
    if (atomic_load(&loop->owner))
        return -EBUSY;
    /* tasks queued by the last close pass (a pier_with_conn from on_close, say) still
     * run, so every posted callback keeps its promise to be called */
    if (loop->handles == 0)
        for (int i = 0; i < 16 && tasks_pending(loop); i++)
            pier_loop_run_once(loop, 0);
    if (loop->handles > 0)
        return -EBUSY;
    pier__task_t *t = loop->task_head;
    while (t) {
        pier__task_t *next = t->next;
        if (t->owned)
            free(t);
        t = next;
    }
    for (unsigned i = 0; i < loop->nchunks; i++)
        free(loop->chunks[i]);
    if (loop->sig.fd >= 0)
        close(loop->sig.fd);
    close(loop->wake.fd);
    close(loop->epfd);
    pthread_mutex_destroy(&loop->task_mu);
    free(loop->heap);
    free(loop->rbuf);
    free(loop);
    return 0;
}

int pier__io_add(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = io};
    return epoll_ctl(loop->epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0 ? -errno : 0;
}

int pier__io_mod(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = io};
    return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0 ? -errno : 0;
}

void pier__io_del(pier_loop_t *loop, pier__io_t *io) {
    struct epoll_event ev = {0};
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, &ev);
}

/* ---- posted tasks ---- */

void pier__loop_post_task(pier_loop_t *loop, pier__task_t *t) {
    t->next = NULL;
    pthread_mutex_lock(&loop->task_mu);
    if (loop->task_tail)
        loop->task_tail->next = t;
    else
        loop->task_head = t;
    loop->task_tail = t;
    atomic_store_explicit(&loop->tasks_queued, 1, memory_order_release);
    pthread_mutex_unlock(&loop->task_mu);
    /* one eventfd write per wake-up is enough; the loop clears the flag when it drains */
    if (!pier_loop_is_current(loop) && !atomic_exchange(&loop->wake_pending, 1)) {
        uint64_t one = 1;
        while (write(loop->wake.fd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    }
}

int pier_loop_post(pier_loop_t *loop, pier_task_cb fn, void *arg) {
    if (!loop || !fn)
        return -EINVAL;
    pier__task_t *t = malloc(sizeof *t);
    if (!t)
        return -ENOMEM;
    t->fn = fn;
    t->arg = arg;
    t->owned = 1;
    pier__loop_post_task(loop, t);
    return 0;
}

/* Without taking the lock: the flag is set under it by posters and cleared under it
 * by run_tasks, and a post that races with this read also writes the eventfd. */
static int tasks_pending(pier_loop_t *loop) { return atomic_load_explicit(&loop->tasks_queued, memory_order_acquire); }

static void run_tasks(pier_loop_t *loop) {
    if (!tasks_pending(loop))
        return;
    /* take the whole list at once: tasks posted by tasks run next iteration, so a task
     * that re-posts itself cannot starve I/O */
    pthread_mutex_lock(&loop->task_mu);
    pier__task_t *t = loop->task_head;
    loop->task_head = loop->task_tail = NULL;
    atomic_store_explicit(&loop->tasks_queued, 0, memory_order_relaxed);
    pthread_mutex_unlock(&loop->task_mu);
    while (t) {
        pier__task_t *next = t->next;
        pier_task_cb fn = t->fn;
        void *arg = t->arg;
        if (t->owned)
            free(t);
        fn(arg);
        t = next;
    }
}

/* ---- chunk cache for output copies ---- */

void *pier__chunk_get(pier_loop_t *loop) {
    if (loop->nchunks > 0)
        return loop->chunks[--loop->nchunks];
    return malloc(PIER__CHUNK);
}

void pier__chunk_put(pier_loop_t *loop, void *chunk) {
    if (loop->nchunks < PIER__CHUNK_CACHE)
        loop->chunks[loop->nchunks++] = chunk;
    else
        free(chunk);
}

/* ---- running ---- */

static int poll_timeout(pier_loop_t *loop, int timeout_ms) {
    if (atomic_load(&loop->stop) || !pier__queue_empty(&loop->again_q) || tasks_pending(loop))
        return 0;
    uint64_t next = pier__timers_next(loop);
    if (next != UINT64_MAX && (timeout_ms < 0 || next < (uint64_t)timeout_ms))
        return next > INT32_MAX ? INT32_MAX : (int)next;
    return timeout_ms;
}

static void dispatch(pier_loop_t *loop, int timeout_ms) {
    struct epoll_event evs[PIER__BATCH];
    int n = epoll_wait(loop->epfd, evs, PIER__BATCH, poll_timeout(loop, timeout_ms));
    loop->now = pier__clock_ms();
    for (int i = 0; i < n; i++) {
        pier__io_t *io = evs[i].data.ptr;
        io->cb(loop, io, evs[i].events);
    }
    pier__net_process_again(loop);
    pier__timers_run(loop);
    run_tasks(loop);
    pier__net_process_flush(loop);
    pier__net_process_close(loop);
}

int pier_loop_run_once(pier_loop_t *loop, int timeout_ms) {
    unsigned long self = (unsigned long)pthread_self(), none = 0;
    /* outside pier_loop_run the caller's thread owns the loop for this one iteration */
    int mine = atomic_compare_exchange_strong(&loop->owner, &none, self);
    if (!mine && atomic_load(&loop->owner) != self)
        return -EBUSY;
    dispatch(loop, timeout_ms);
    if (mine)
        atomic_store(&loop->owner, 0);
    return 0;
}

int pier_loop_run(pier_loop_t *loop) {
    unsigned long none = 0;
    if (!atomic_compare_exchange_strong(&loop->owner, &none, (unsigned long)pthread_self()))
        return -EBUSY;
    while (!atomic_load(&loop->stop))
        dispatch(loop, -1);
    atomic_store(&loop->stop, 0);
    atomic_store(&loop->owner, 0);
    return 0;
}

void pier_loop_stop(pier_loop_t *loop) {
    atomic_store(&loop->stop, 1);
    if (!pier_loop_is_current(loop) && !atomic_exchange(&loop->wake_pending, 1)) {
        uint64_t one = 1;
        while (write(loop->wake.fd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    }
}

int pier_loop_is_current(const pier_loop_t *loop) {
    return atomic_load(&((pier_loop_t *)loop)->owner) == (unsigned long)pthread_self();
}

uint64_t pier_loop_now(const pier_loop_t *loop) { return loop->now; }
void pier_loop_update_time(pier_loop_t *loop) { loop->now = pier__clock_ms(); }
unsigned pier_loop_handles(const pier_loop_t *loop) { return loop->handles; }
void pier_loop_set_data(pier_loop_t *loop, void *data) { loop->data = data; }
void *pier_loop_data(const pier_loop_t *loop) { return loop->data; }
