/* The event loop: one epoll set, an eventfd for cross-thread wake-ups, a posted-task
 * queue, the timer heap and deferred passes that other layers queue work in.
 *
 * One iteration:
 *   1. wait in epoll (no wait if work is already pending), refresh the cached clock;
 *   2. dispatch the whole batch;
 *   3. the READ pass;  4. due timers;  5. posted tasks;
 *   6. the FLUSH pass;  7. the CLOSE pass.
 * The loop does not know what the passes do. The net layer uses READ for connections
 * left readable by a full read, FLUSH for one writev per connection with output queued
 * this iteration, and CLOSE to finish closes and run on_close only after every callback
 * of the iteration has returned: so an event fetched in step 1 for a connection closed
 * earlier in the same batch still finds valid memory, sees it closed and is dropped. */
#include "internal.h"

#include <errno.h>
#include <stddef.h>
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
static void objs_free(pier_loop_t *loop);

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
    loop->head.mx = &loop->metrics;
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
    for (int i = 0; i < PIER__PASSES; i++)
        pier__queue_init(&loop->passes[i]);
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
    pier_task_t *t = loop->task_head;
    while (t) {
        pier_task_t *next = t->next;
        if (t->flags & PIER__TASK_OWNED)
            free(t);
        else
            t->flags &= ~PIER__TASK_QUEUED;
        t = next;
    }
    for (unsigned i = 0; i < loop->nchunks; i++)
        free(loop->chunks[i]);
    pier__dlists_free(loop);
    objs_free(loop);
    if (loop->sig.fd >= 0)
        close(loop->sig.fd);
    close(loop->wake.fd);
    close(loop->epfd);
    pthread_mutex_destroy(&loop->task_mu);
    free(loop->rbuf);
    free(loop);
    return 0;
}

int pier__io_add(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = io};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0)
        return -errno;
    io->events = events;
    return 0;
}

int pier__io_mod(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = io};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0)
        return -errno;
    io->events = events;
    return 0;
}

void pier__io_del(pier_loop_t *loop, pier__io_t *io) {
    struct epoll_event ev = {0};
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, &ev);
}

/* ---- posted tasks ---- */

void pier_task_init(pier_task_t *t, pier_task_cb fn, void *arg) {
    t->next = NULL;
    t->fn = fn;
    t->arg = arg;
    t->flags = 0;
}

static void post(pier_loop_t *loop, pier_task_t *t) {
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

int pier_loop_post_task(pier_loop_t *loop, pier_task_t *t) {
    if (!loop || !t || !t->fn)
        return -EINVAL;
    /* atomic: the loop clears the flag on its thread before running the task, and the
     * next post may come from any thread */
    if (__atomic_fetch_or(&t->flags, PIER__TASK_QUEUED, __ATOMIC_ACQ_REL) & PIER__TASK_QUEUED)
        return -EALREADY;
    post(loop, t);
    return 0;
}

int pier_loop_post(pier_loop_t *loop, pier_task_cb fn, void *arg) {
    if (!loop || !fn)
        return -EINVAL;
    pier_task_t *t = malloc(sizeof *t);
    if (!t)
        return -ENOMEM;
    pier_task_init(t, fn, arg);
    t->flags = PIER__TASK_OWNED | PIER__TASK_QUEUED;
    post(loop, t);
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
    pier_task_t *t = loop->task_head;
    loop->task_head = loop->task_tail = NULL;
    atomic_store_explicit(&loop->tasks_queued, 0, memory_order_relaxed);
    pthread_mutex_unlock(&loop->task_mu);
    while (t) {
        pier_task_t *next = t->next;
        pier_task_cb fn = t->fn;
        void *arg = t->arg;
        /* unmarked before it runs: fn may free the task or post it again */
        if (t->flags & PIER__TASK_OWNED)
            free(t);
        else
            __atomic_fetch_and(&t->flags, ~PIER__TASK_QUEUED, __ATOMIC_ACQ_REL);
        fn(arg);
        t = next;
    }
}

/* ---- resources for the other layers ---- */

char *pier__loop_rbuf(pier_loop_t *loop) { return loop->rbuf; }
void pier__loop_handle_add(pier_loop_t *loop) { loop->handles++; }
void pier__loop_handle_del(pier_loop_t *loop) { loop->handles--; }

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

void *pier__obj_new(size_t size) { return size <= PIER__OBJ_MAX ? malloc(size) : NULL; }
void pier__obj_free(void *obj) { free(obj); }

static void objs_free(pier_loop_t *loop) {
    for (unsigned k = 0; k < PIER__OBJ_KINDS; k++)
        while (loop->head.objs[k].head) {
            void *obj = loop->head.objs[k].head;
            loop->head.objs[k].head = *(void **)obj;
            free(obj);
        }
}

/* ---- deferred passes ---- */

void pier__pending_insert(pier_loop_t *loop, int pass, pier__pending_t *p) {
    pier__queue_insert_tail(&loop->passes[pass], &p->q);
}

static int passes_pending(pier_loop_t *loop) {
    for (int i = 0; i < PIER__PASSES; i++)
        if (!pier__queue_empty(&loop->passes[i]))
            return 1;
    return 0;
}

static void run_node(pier__queue_t *q) {
    pier__pending_t *p = pier__container_of(q, pier__pending_t, q);
    pier__queue_remove(q);
    p->cb(p);
}

/* Runs the nodes queued when the pass began; those queued meanwhile wait a turn. */
static void run_pass_once(pier_loop_t *loop, int pass) {
    pier__queue_t taken;
    pier__queue_move(&loop->passes[pass], &taken);
    while (!pier__queue_empty(&taken))
        run_node(pier__queue_head(&taken));
}

/* Runs the pass until it is empty, including nodes queued while it runs. */
static void run_pass_all(pier_loop_t *loop, int pass) {
    pier__queue_t *h = &loop->passes[pass];
    while (!pier__queue_empty(h))
        run_node(pier__queue_head(h));
}

/* ---- running ---- */

static int poll_timeout(pier_loop_t *loop, int timeout_ms) {
    if (atomic_load(&loop->stop) || passes_pending(loop) || tasks_pending(loop))
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
    run_pass_once(loop, PIER__PASS_READ);
    pier__timers_run(loop);
    run_tasks(loop);
    run_pass_all(loop, PIER__PASS_FLUSH);
    run_pass_all(loop, PIER__PASS_CLOSE);
}

int pier_loop_run_once(pier_loop_t *loop, int timeout_ms) {
    unsigned long self = (unsigned long)pthread_self(), none = 0;
    /* outside pier_loop_run the caller's thread owns the loop for this one iteration */
    int mine = atomic_compare_exchange_strong(&loop->owner, &none, self);
    if (!mine && atomic_load(&loop->owner) != self)
        return -EBUSY;
    if (loop->dispatching)
        return -EBUSY; /* called from one of this loop's callbacks: never nest a pass */
    loop->dispatching = 1;
    dispatch(loop, timeout_ms);
    loop->dispatching = 0;
    if (mine)
        atomic_store(&loop->owner, 0);
    return 0;
}

int pier_loop_run(pier_loop_t *loop) {
    unsigned long none = 0;
    if (!atomic_compare_exchange_strong(&loop->owner, &none, (unsigned long)pthread_self()))
        return -EBUSY;
    loop->dispatching = 1;
    while (!atomic_load(&loop->stop))
        dispatch(loop, -1);
    loop->dispatching = 0;
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
_Static_assert(offsetof(struct pier_loop_s, head) == 0, "layer.h reads the loop's head first");
