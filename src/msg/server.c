/* The message server: frames in, dispatch by id, replies out.
 *
 * Threads. Everything about a connection (msg_conn_t) lives on its loop. Handlers run on
 * that loop, or on the worker pool; a worker never touches a connection: it gathers the
 * replies into its job and hands its finished jobs back to the loop, one post per batch,
 * where each finds its connection by id (pier_conn_from_id). A connection that closed in
 * the meantime is simply not found, and its job costs only a free. Loop and workers wake
 * each other once per loop iteration or worker batch, not once per message.
 *
 * Bounds. A frame is decoded only when there is room for it: below the connection's
 * inflight_max, below its loop's share of inflight_total and in its worker's queue.
 * Otherwise it stays undecoded in the connection's input and reading pauses ("a stall"),
 * so the server never holds more than the bounds in messages, and a drain never has more
 * than that left to handle. A connection stalled on its own bound resumes when half of
 * its messages are done; one stalled on the loop's share waits in the loop's FIFO, from
 * which connections resume in turn, each with a part of the free room, once half of the
 * share is free. Output over out_max is refused by policy.
 */
#include "msg_int.h"
#include "loop/layer.h"
#include "metrics/metrics.h"
#include "net/conn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#define RETRY_MS 1
#define SHUT_TICK_MS 5
#define SHUT_MAX_MS 15000
#define INFLIGHT_PER_WORKER 256
#define ALLOW_MIN 16
#define READ_SPAN (64 * 1024) /* the most one read of the core delivers anew */

typedef struct {
    pier_msg_handler_cb cb;
    void *ud;
} handler_t;

typedef struct msg_loop_s msg_loop_t;

/* A connection's message state, only while it has some: messages in the workers, reading
 * paused, waiting for the loop's share, at end of input, an unknown id logged. An idle
 * connection has none (its data is NULL) and costs the core's struct alone; its
 * heartbeat is the core's idle deadline, counting only input and held while we are the
 * ones not reading. */
typedef struct msg_conn_s {
    struct msg_conn_s *prev, *next;   /* the loop's connections with state */
    struct msg_conn_s *wprev, *wnext; /* the loop's waiters, while waiting */
    msg_loop_t *lp;
    pier_conn_t *c;
    pier_id_t id;
    unsigned inflight; /* messages read and not yet back from the workers */
    unsigned allow;    /* messages it may still take while others wait for the loop */
    unsigned worker;
    int paused;        /* reading paused by us: a stall, end of input or a drain */
    int waiting;       /* in the loop's FIFO of connections waiting for its share */
    int eof;
    int logged_unknown;
} msg_conn_t;

/* Per-loop state: the loop's connections, and counters with a single writer (the loop). */
struct msg_loop_s {
    pier_msg_server_t *srv;
    pier_loop_t *loop;
    msg_conn_t *conns;
    msg_conn_t *wait_head, *wait_tail;
    unsigned nwait;
    unsigned inflight;      /* this loop's messages in the workers */
    unsigned share;         /* this loop's share of inflight_total */
    pier_timer_t retry;     /* wakes the waiters when no finished job will */
    int draining;
    unsigned char *wake;    /* workers given jobs since the last wake-up (one flag each) */
    int any_wake;           /* wake_task is queued */
    pier_task_t wake_task;
    pier_task_t drain_task;  /* embedded: a drain step lost to -ENOMEM would stall it */
    _Atomic uint64_t n_conns, msgs, handled, unknown, bad_frames, timeouts, out_dropped, out_closed;
};

struct pier_msg_server_s {
    pier_msg_server_opts_t o;
    pier_msg_codec_t codec;
    pier_group_t *group;
    pier_server_t *net;
    pier__msg_pool_t *pool;
    handler_t *handlers; /* indexed by id, 65536 entries */
    unsigned nloops;
    msg_loop_t *loops;
    atomic_int started;
    atomic_int shutting;
    atomic_int abandon;       /* the drain gave up: workers drop jobs not yet started */
    atomic_uint drained;      /* loops that have paused their connections */
    _Atomic long jobs;        /* worker jobs created and not yet finished */
    _Atomic long sends;       /* pier_msg_send frames posted to a loop and not yet run */
    _Atomic uint64_t replies_lost, w_out_dropped, abandoned;
    pier_timer_t shut_timer;  /* loop 0 */
    pier_task_t shut_task;    /* loop 0; embedded, as the loops' drain tasks are */
    /* finished jobs per (worker, loop), handed to the loop once per worker batch; each
     * list is touched only by its worker thread */
    struct job_list_s {
        pier__msg_job_t *head, *tail;
    } *done_lists;
    int shut_phase;
    int stop_group;
    uint64_t shut_deadline;
};

/* What a handler's pier_msg_t points at: the connection (on the loop) or the job. */
typedef struct {
    msg_conn_t *mc;
    pier__msg_job_t *job;
} reply_ctx_t;

static void shut_tick(pier_timer_t *t);

/* ---- output ---- */

static void free_base(void *base, void *ud) {
    (void)ud;
    free(base);
}

static void lost_reply(pier_msg_server_t *srv) {
    atomic_fetch_add_explicit(&srv->replies_lost, 1, memory_order_relaxed);
}

/* A reply that could not be queued (out of memory) leaves the byte stream whole but a
 * reply missing, and a client that matches replies to requests in order (pier
 * msg-client does) would take the next one for it: the connection cannot go on. */
static void reply_failed(msg_conn_t *mc) {
    lost_reply(mc->lp->srv);
    pier_conn_abort(mc->c);
}

/* 1 if n more bytes may be queued on mc; otherwise applies the policy and returns 0. */
static int out_admit(msg_loop_t *lp, pier_conn_t *c, size_t n) {
    pier_msg_server_t *srv = lp->srv;
    if (pier_conn_queued(c) + n <= srv->o.out_max)
        return 1;
    if (srv->o.out_policy == PIER_MSG_OUT_DROP) {
        pier__msg_bump(&lp->out_dropped, 1);
        return 0;
    }
    char peer[64];
    pier_log(PIER_LOG_WARN, "msg: closing %s: output over %zu bytes (peer not reading)",
             pier_conn_peer(c, peer, sizeof peer), srv->o.out_max);
    pier__msg_bump(&lp->out_closed, 1);
    pier_conn_abort(c);
    return 0;
}

/* Queues one frame, header and body as one unit. -ENOMEM leaves the stream intact (the
 * core aborts the connection itself in the one case where it is not). */
static int write_frame(msg_conn_t *mc, uint16_t id, const void *body, size_t len) {
    unsigned char hdr[PIER_MSG_HDR_WIDE];
    ssize_t h = pier_msg_encode_hdr(&mc->lp->srv->codec, id, len, hdr);
    if (h < 0)
        return (int)h;
    if (!out_admit(mc->lp, mc->c, (size_t)h + len))
        return 0;
    struct iovec iov[2] = {{.iov_base = hdr, .iov_len = (size_t)h}, {.iov_base = (void *)body, .iov_len = len}};
    return pier_conn_writev(mc->c, iov, len ? 2 : 1);
}

/* Appends a reply frame to a worker job's output, whole or not at all. */
static int job_add_reply(pier__msg_job_t *job, uint16_t id, const void *body, size_t len) {
    pier_msg_server_t *srv = job->srv;
    pier__buf_t *out = &job->out;
    size_t need = pier_msg_hdr_size(&srv->codec) + len;
    if (out->len + need > srv->o.out_max) {
        /* one message's replies alone over the limit: the loop cannot take them either */
        atomic_fetch_add_explicit(&srv->w_out_dropped, 1, memory_order_relaxed);
        return 0;
    }
    if (pier__buf_reserve(out, need) < 0)
        return -ENOMEM;
    /* encoded in place, into the room just reserved */
    ssize_t n = pier_msg_encode(&srv->codec, id, body, len, out->p + out->len, out->cap - out->len);
    if (n < 0)
        return (int)n;
    out->len += (size_t)n;
    return 0;
}

int pier_msg_reply(const pier_msg_t *m, uint16_t id, const void *body, size_t len) {
    reply_ctx_t *ctx = m->priv_;
    if (ctx->job)
        return job_add_reply(ctx->job, id, body, len);
    if (!pier_conn_is_open(ctx->mc->c))
        return -ENOTCONN;
    int err = write_frame(ctx->mc, id, body, len);
    if (err == -ENOMEM)
        reply_failed(ctx->mc);
    return err;
}

static msg_loop_t *loop_of(pier_msg_server_t *srv, pier_loop_t *loop);

/* ---- pier_msg_send: any thread, through the id ---- */

typedef struct {
    pier_msg_server_t *srv;
    size_t len;
    char data[];
} send_t;

static void free_ud(void *base, void *ud) {
    (void)base;
    free(ud);
}

static void send_done(pier_conn_t *c, void *arg) {
    send_t *s = arg;
    pier_msg_server_t *srv = s->srv;
    /* an idle connection has no message state: the loop's is enough here */
    msg_loop_t *lp = c && pier_conn_is_open(c) ? loop_of(srv, pier_conn_loop(c)) : NULL;
    if (!lp) {
        /* gone, or closing with its on_close still to run: lost either way */
        lost_reply(srv);
        free(s);
    } else if (!out_admit(lp, c, s->len)) {
        free(s); /* counted by out_policy */
    } else if (pier_conn_write_ref(c, s->data, s->len, free_ud, s) < 0) {
        /* free_ud has run. -ENOMEM queued nothing and the stream goes on; a frame that
         * went out in part has had its connection aborted by the core */
        lost_reply(srv);
    }
    /* the last touch of srv: pier_msg_server_free() waits for this count */
    atomic_fetch_sub_explicit(&srv->sends, 1, memory_order_acq_rel);
}

/* The job whose handler this worker thread is running, if any. */
static _Thread_local pier__msg_job_t *current_job;

int pier_msg_send(pier_msg_server_t *srv, pier_id_t conn, uint16_t id, const void *body, size_t len) {
    /* inside a worker handler for this very connection: join its replies, so the frame
     * cannot overtake the ones pier_msg_reply gathered before it */
    if (current_job && current_job->conn == conn && current_job->srv == srv)
        return job_add_reply(current_job, id, body, len);
    size_t need = pier_msg_hdr_size(&srv->codec) + len;
    send_t *s = malloc(sizeof *s + need);
    if (!s)
        return -ENOMEM;
    ssize_t n = pier_msg_encode(&srv->codec, id, body, len, s->data, need);
    if (n < 0) {
        free(s);
        return (int)n;
    }
    s->srv = srv;
    s->len = need;
    atomic_fetch_add_explicit(&srv->sends, 1, memory_order_relaxed);
    int err = pier_with_conn(conn, send_done, s);
    if (err < 0) {
        free(s);
        atomic_fetch_sub_explicit(&srv->sends, 1, memory_order_relaxed);
    }
    return err;
}

/* ---- a connection's state, while it has some ---- */

static msg_loop_t *loop_of(pier_msg_server_t *srv, pier_loop_t *loop) {
    for (unsigned i = 0; i < srv->nloops; i++)
        if (srv->loops[i].loop == loop)
            return &srv->loops[i];
    return NULL;
}

static msg_conn_t *mc_new(msg_loop_t *lp, pier_conn_t *c) {
    msg_conn_t *mc = calloc(1, sizeof *mc);
    if (!mc)
        return NULL;
    pier_msg_server_t *srv = lp->srv;
    mc->lp = lp;
    mc->c = c;
    mc->id = pier_conn_id(c);
    mc->worker = srv->pool ? (unsigned)((mc->id ^ (mc->id >> 32)) % pier__msg_pool_size(srv->pool)) : 0;
    mc->next = lp->conns;
    if (lp->conns)
        lp->conns->prev = mc;
    lp->conns = mc;
    pier_conn_set_data(c, mc);
    return mc;
}

static void wait_unlink(msg_conn_t *mc);

static void mc_free(msg_conn_t *mc) {
    msg_loop_t *lp = mc->lp;
    pier_conn_set_data(mc->c, NULL);
    wait_unlink(mc);
    *(mc->prev ? &mc->prev->next : &lp->conns) = mc->next;
    if (mc->next)
        mc->next->prev = mc->prev;
    free(mc);
}

/* Nothing left to remember: the state goes until the next bytes. */
static void mc_maybe_idle(msg_conn_t *mc) {
    if (!mc->inflight && !mc->paused && !mc->waiting && !mc->eof && !mc->logged_unknown && !mc->allow &&
        pier_conn_is_open(mc->c))
        mc_free(mc);
}

/* ---- reading and stalls ---- */

/* While its messages are in the workers or its reading is paused by us, the peer's
 * silence is ours: the heartbeat deadline only starts again. */
static void hold_update(msg_conn_t *mc) { pier__conn_idle_hold(mc->c, mc->inflight || mc->paused); }

static void read_stop(msg_conn_t *mc) {
    if (!mc->paused) {
        mc->paused = 1;
        pier_conn_pause(mc->c);
        hold_update(mc);
    }
}

static void read_start(msg_conn_t *mc) {
    if (mc->paused && !mc->lp->draining && !mc->eof) {
        mc->paused = 0;
        pier_conn_resume(mc->c);
        hold_update(mc);
    }
}

static void wait_unlink(msg_conn_t *mc) {
    msg_loop_t *lp = mc->lp;
    if (!mc->waiting)
        return;
    *(mc->wprev ? &mc->wprev->wnext : &lp->wait_head) = mc->wnext;
    *(mc->wnext ? &mc->wnext->wprev : &lp->wait_tail) = mc->wprev;
    mc->wprev = mc->wnext = NULL;
    mc->waiting = 0;
    lp->nwait--;
}

static void wait_add(msg_conn_t *mc) {
    msg_loop_t *lp = mc->lp;
    if (mc->waiting)
        return;
    mc->wprev = lp->wait_tail;
    mc->wnext = NULL;
    *(lp->wait_tail ? &lp->wait_tail->wnext : &lp->wait_head) = mc;
    lp->wait_tail = mc;
    mc->waiting = 1;
    lp->nwait++;
}

/* Once half of the loop's share is free, resumes waiters in FIFO order, each with an
 * equal part of the free room (at least ALLOW_MIN, so that stalls stay rare when
 * thousands of connections wait: a part of one message each would stall them once per
 * message). While others wait, a connection takes only its part, then queues again at
 * the tail. Not from inside a connection's on_read (its unconsumed input is not kept
 * yet): from finished jobs and the retry timer. */
static void wake_waiters(msg_loop_t *lp) {
    if (!lp->wait_head || lp->inflight > lp->share / 2)
        return;
    pier_timer_stop(&lp->retry);
    unsigned room = lp->share - lp->inflight;
    unsigned part = room / lp->nwait;
    if (part < ALLOW_MIN)
        part = room < ALLOW_MIN ? room : ALLOW_MIN;
    while (lp->wait_head && room >= part) {
        msg_conn_t *mc = lp->wait_head;
        wait_unlink(mc);
        mc->allow = part;
        room -= part;
        read_start(mc);
    }
    /* if none of those resumed takes anything (they may close first), no finished job
     * will come to wake the rest */
    if (lp->wait_head && lp->inflight == 0)
        pier_timer_start(&lp->retry, RETRY_MS, 0);
}

static void retry_cb(pier_timer_t *t) {
    wake_waiters(t->data);
}

/* No room for the frame at hand: leave it unconsumed and pause. own: the connection's
 * own bound, which its own finished jobs lift; otherwise it waits for the loop. */
static int stall(msg_conn_t *mc, int own) {
    msg_loop_t *lp = mc->lp;
    read_stop(mc);
    if (!own) {
        wait_add(mc);
        /* nothing of this loop in the workers (a full worker queue or no memory): no
         * finished job will come to wake the waiters */
        if (lp->inflight == 0 && !pier_timer_active(&lp->retry))
            pier_timer_start(&lp->retry, RETRY_MS, 0);
    }
    mc->allow = 0;
    return -1;
}

/* Wakes the workers given jobs in this loop iteration, once, after all of its reads: a
 * worker woken per read (or per message) would preempt the loop for a handful of jobs
 * each time when they share a CPU, and a big batch is what makes the hand-off cheap. */
static void wake_workers(void *arg) {
    msg_loop_t *lp = arg;
    lp->any_wake = 0;
    unsigned n = pier__msg_pool_size(lp->srv->pool);
    for (unsigned w = 0; w < n; w++) {
        if (lp->wake[w]) {
            lp->wake[w] = 0;
            pier__msg_pool_wake(lp->srv->pool, w);
        }
    }
}

/* ---- worker jobs ---- */

static void job_free(pier__msg_job_t *job) {
    pier_msg_server_t *srv = job->srv;
    pier__buf_free(&job->out);
    free(job);
    atomic_fetch_sub_explicit(&srv->jobs, 1, memory_order_acq_rel);
}

/* Queues a finished job's replies on its open connection: all of them as one unit. */
static void job_output(msg_conn_t *mc, pier__msg_job_t *job) {
    if (pier__buf_failed(&job->out)) { /* a reply the worker could not add */
        reply_failed(mc);
        return;
    }
    if (!job->out.len || !out_admit(mc->lp, mc->c, job->out.len))
        return;
    size_t n;
    char *p = pier__buf_steal(&job->out, &n);
    int err = pier_conn_write_ref(mc->c, p, n, free_base, NULL);
    if (err == -ENOMEM)
        reply_failed(mc);
    else if (err < 0) /* -ENOTCONN: it failed under us */
        lost_reply(mc->lp->srv);
}

/* A finished job back on its loop; mc is NULL if the connection has gone or is closing. */
static void job_finish(msg_loop_t *lp, msg_conn_t *mc, pier__msg_job_t *job) {
    lp->inflight--;
    pier__mx_inc(pier__loop_metrics(lp->loop), PIER__MX(msg_jobs_done));
    if (!mc) {
        if (job->out.len)
            lost_reply(lp->srv);
        job_free(job);
        return;
    }
    mc->inflight--;
    job_output(mc, job);
    job_free(job);
    if (!pier_conn_is_open(mc->c))
        return;
    hold_update(mc);
    if (mc->eof && mc->inflight == 0) {
        pier_conn_close(mc->c);
    } else if (mc->paused && !mc->waiting && !mc->eof && mc->inflight <= lp->srv->o.inflight_max / 2) {
        /* others wait for the loop's share: queue behind them rather than jump ahead */
        if (lp->wait_head)
            wait_add(mc);
        else
            read_start(mc);
    }
    mc_maybe_idle(mc);
}

/* On the loop: a worker's finished jobs for this loop, in the order it handled them.
 * Each finds its connection by id; a worker never holds a connection pointer. */
static void jobs_back(void *arg) {
    pier__msg_job_t *job = arg;
    msg_loop_t *lp = job->lp;
    while (job) {
        pier__msg_job_t *next = job->next;
        pier_conn_t *c = pier_conn_from_id(lp->loop, job->conn);
        job_finish(lp, c ? pier_conn_data(c) : NULL, job);
        job = next;
    }
    wake_waiters(lp);
}

static int job_run(pier__msg_job_t *job, unsigned w, void *ud) {
    pier_msg_server_t *srv = ud;
    int run = !atomic_load_explicit(&srv->abandon, memory_order_relaxed);
    if (run) {
        handler_t *h = &srv->handlers[job->id];
        reply_ctx_t ctx = {.job = job};
        pier_msg_t m = {.srv = srv, .conn = job->conn, .id = job->id, .len = job->len, .body = job->body,
                        .priv_ = &ctx};
        current_job = job;
        h->cb(&m, h->ud);
        current_job = NULL;
    } else {
        atomic_fetch_add_explicit(&srv->abandoned, 1, memory_order_relaxed);
    }
    struct job_list_s *l = &srv->done_lists[w * srv->nloops + (unsigned)((msg_loop_t *)job->lp - srv->loops)];
    job->next = NULL;
    if (l->tail)
        l->tail->next = job;
    else
        l->head = job;
    l->tail = job;
    return run;
}

/* Worker thread, after a batch: one post per loop for all of its finished jobs. The post
 * uses the task embedded in the first job, so it cannot fail: every job comes back to its
 * loop, which is what keeps the in-flight counts right (a connection at end of input
 * closes, and a stalled one resumes, only as its jobs come back). */
static void jobs_flush(unsigned w, void *ud) {
    pier_msg_server_t *srv = ud;
    for (unsigned i = 0; i < srv->nloops; i++) {
        struct job_list_s *l = &srv->done_lists[w * srv->nloops + i];
        pier__msg_job_t *head = l->head;
        if (!head)
            continue;
        l->head = l->tail = NULL;
        /* the loop reads fn and arg before calling jobs_back, which frees head */
        pier_task_init(&head->task, jobs_back, head);
        pier_loop_post_task(srv->loops[i].loop, &head->task);
    }
}

/* Hands a frame to the connection's worker if there is room for it; otherwise stalls
 * (returns -1, the frame stays unconsumed). */
static int dispatch_worker(msg_conn_t *mc, const pier_msg_frame_t *f) {
    msg_loop_t *lp = mc->lp;
    pier_msg_server_t *srv = lp->srv;
    if (mc->inflight >= srv->o.inflight_max)
        return stall(mc, 1);
    if (lp->inflight >= lp->share || (lp->wait_head && mc->allow == 0))
        return stall(mc, 0);
    pier__msg_job_t *job = malloc(sizeof *job + f->len);
    if (!job)
        return stall(mc, 0); /* nothing is lost: the frame is decoded again on retry */
    *job = (pier__msg_job_t){.srv = srv, .lp = lp, .conn = mc->id, .id = f->id, .len = f->len};
    memcpy(job->body, f->body, f->len);
    atomic_fetch_add_explicit(&srv->jobs, 1, memory_order_relaxed);
    /* counted before the push: a worker may handle it at once, and stats must never show
     * more messages handled than read */
    pier__msg_bump(&lp->msgs, 1);
    if (pier__msg_pool_push(srv->pool, mc->worker, job) < 0) {
        pier__msg_bump(&lp->msgs, (uint64_t)-1);
        job_free(job);
        return stall(mc, 0);
    }
    if (mc->inflight++ == 0)
        hold_update(mc);
    if (mc->allow)
        mc->allow--;
    lp->inflight++;
    pier__metrics_t *m = pier__loop_metrics(lp->loop);
    pier__mx_inc(m, PIER__MX(msg_jobs_queued));
    pier__mx_msg_frame(m, f->id);
    lp->wake[mc->worker] = 1;
    if (!lp->any_wake) {
        lp->any_wake = 1;
        /* tasks run after this iteration's reads; from the loop thread, with no wake-up */
        pier_loop_post_task(lp->loop, &lp->wake_task);
    }
    return 0;
}

static void unknown_id(msg_conn_t *mc, uint16_t id) {
    pier__msg_bump(&mc->lp->unknown, 1);
    if (mc->logged_unknown && !mc->lp->srv->o.log_unknown)
        return;
    mc->logged_unknown = 1;
    char peer[64];
    pier_log(PIER_LOG_WARN, "msg: %s sent unknown id %u (ignored%s)", pier_conn_peer(mc->c, peer, sizeof peer),
             id, mc->lp->srv->o.log_unknown ? "" : "; further ones on this connection only counted");
}

static int on_frame(const pier_msg_frame_t *f, void *ud) {
    msg_conn_t *mc = ud;
    pier_msg_server_t *srv = mc->lp->srv;
    handler_t *h = &srv->handlers[f->id];
    if (h->cb && srv->pool)
        return dispatch_worker(mc, f);
    /* counted here and at the push, not above: a stalled frame is decoded again */
    pier__mx_msg_frame(pier__loop_metrics(mc->lp->loop), f->id);
    pier__msg_bump(&mc->lp->msgs, 1);
    if (f->id == srv->o.ping_id) {
        /* a pong that cannot be queued (-ENOMEM) is not worth a connection: the peer
         * pings again */
        (void)write_frame(mc, srv->o.pong_id, NULL, 0);
        return pier_conn_is_open(mc->c) ? 0 : 1;
    }
    if (f->id == srv->o.pong_id)
        return 0;
    if (!h->cb) {
        unknown_id(mc, f->id);
        return 0;
    }
    reply_ctx_t ctx = {.mc = mc};
    pier_msg_t m = {.srv = srv, .conn = mc->id, .id = f->id, .len = f->len, .body = f->body, .priv_ = &ctx};
    h->cb(&m, h->ud);
    pier__msg_bump(&mc->lp->handled, 1);
    return pier_conn_is_open(mc->c) ? 0 : 1;
}

static size_t on_read(pier_conn_t *c, const char *data, size_t len) {
    msg_conn_t *mc = pier_conn_data(c);
    if (!mc) {
        msg_loop_t *lp = loop_of(pier_server_data(pier_conn_server(c)), pier_conn_loop(c));
        if (lp && lp->draining) { /* the drain pauses what it finds with state; this had none */
            pier_conn_pause(c);
            return 0;
        }
        if (!lp || !(mc = mc_new(lp, c))) {
            pier_conn_abort(c);
            return len;
        }
    }
    pier_msg_server_t *srv = mc->lp->srv;
    size_t used = 0;
    ssize_t r = pier_msg_decode_all(&srv->codec, data, len, &used, on_frame, mc);
    if (r >= 0) {
        if (used == len)
            mc_maybe_idle(mc);
        return used;
    }
    char peer[64];
    pier_log(PIER_LOG_WARN, "msg: closing %s: bad frame: %s", pier_conn_peer(c, peer, sizeof peer),
             r == -EMSGSIZE ? "length over the maximum" : "id out of range");
    pier__msg_bump(&mc->lp->bad_frames, 1);
    /* the frames before the bad one were good: their replies still go out, then close */
    read_stop(mc);
    wait_unlink(mc);
    mc->eof = 1;
    if (mc->inflight == 0)
        pier_conn_close(c);
    return len;
}

/* The peer half-closed, so every whole frame it sent has been read: replies still owed
 * by the workers are sent before closing. */
static void on_eof(pier_conn_t *c) {
    msg_conn_t *mc = pier_conn_data(c);
    if (!mc || mc->inflight == 0) {
        pier_conn_close(c);
        return;
    }
    mc->eof = 1;
}

static void on_close(pier_conn_t *c, int err) {
    msg_conn_t *mc = pier_conn_data(c);
    if (err == -ETIMEDOUT && pier__conn_idle_gone(c)) {
        pier_msg_server_t *srv = pier_server_data(pier_conn_server(c));
        msg_loop_t *lp = loop_of(srv, pier_conn_loop(c));
        pier_log(PIER_LOG_INFO, "msg: closed connection %llu: silent for %" PRIu64 " ms (heartbeat %" PRIu64 " ms)",
                 (unsigned long long)pier_conn_id(c), 3 * srv->o.heartbeat_ms, srv->o.heartbeat_ms);
        if (lp) {
            pier__msg_bump(&lp->timeouts, 1);
            pier__mx_inc(pier__loop_metrics(lp->loop), PIER__MX(msg_heartbeat_drops));
        }
    } else if (err && err != -ECONNRESET && err != -EPIPE) {
        pier_log(PIER_LOG_DEBUG, "msg: connection closed: %s", pier_strerror(err));
    }
    if (mc)
        mc_free(mc);
}

static const pier_conn_cbs_t conn_cbs = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_close = on_close,
};

/* ---- accepting ---- */

static void on_accept(pier_server_t *net, pier_conn_t *c) {
    pier_msg_server_t *srv = pier_server_data(net);
    msg_loop_t *lp = loop_of(srv, pier_conn_loop(c));
    if (!lp || lp->draining)
        return; /* left without callbacks: the core closes it */
    if (srv->o.heartbeat_ms)
        pier__conn_idle_rx_only(c); /* silence is the peer's: our replies do not count */
    pier__msg_bump(&lp->n_conns, 1);
    pier_conn_set_cbs(c, &conn_cbs, NULL);
}

/* ---- life cycle ---- */

static void free_tables(pier_msg_server_t *srv) {
    for (unsigned i = 0; srv->loops && i < srv->nloops; i++)
        free(srv->loops[i].wake);
    free(srv->done_lists);
    free(srv->handlers);
    free(srv->loops);
}

static int fill_opts(pier_msg_server_t *srv, const pier_msg_server_opts_t *opts) {
    srv->o = opts ? *opts : (pier_msg_server_opts_t){0};
    pier_msg_server_opts_t *o = &srv->o;
    int err = pier_msg_codec_check(&o->codec, &srv->codec);
    if (err)
        return err;
    if (!o->queue_max)
        o->queue_max = 4096;
    if (!o->inflight_max)
        o->inflight_max = 256;
    if (!o->inflight_total)
        o->inflight_total = INFLIGHT_PER_WORKER * (o->workers ? o->workers : 1);
    if (!o->out_max)
        o->out_max = 1 << 20;
    if (!o->ping_id)
        o->ping_id = PIER_MSG_PING;
    if (!o->pong_id)
        o->pong_id = PIER_MSG_PONG;
    if (o->out_policy != PIER_MSG_OUT_CLOSE && o->out_policy != PIER_MSG_OUT_DROP)
        return -EINVAL;
    if (o->ping_id == o->pong_id)
        return -EINVAL;
    return 0;
}

static int loops_init(pier_msg_server_t *srv) {
    srv->nloops = pier_group_size(srv->group);
    srv->loops = calloc(srv->nloops, sizeof *srv->loops);
    if (!srv->loops)
        return -ENOMEM;
    unsigned share = (srv->o.inflight_total + srv->nloops - 1) / srv->nloops;
    for (unsigned i = 0; i < srv->nloops; i++) {
        msg_loop_t *lp = &srv->loops[i];
        lp->srv = srv;
        lp->loop = pier_group_loop(srv->group, i);
        lp->share = share;
        pier_timer_init(lp->loop, &lp->retry, retry_cb, lp);
        pier_task_init(&lp->wake_task, wake_workers, lp);
        lp->wake = calloc(srv->o.workers ? srv->o.workers : 1, 1);
        if (!lp->wake)
            return -ENOMEM;
    }
    return 0;
}

int pier_msg_server_new(pier_msg_server_t **out, pier_group_t *group, const pier_msg_server_opts_t *opts) {
    pier_msg_server_t *srv = calloc(1, sizeof *srv);
    if (!srv)
        return -ENOMEM;
    int err = fill_opts(srv, opts);
    if (err)
        goto fail;
    srv->group = group;
    err = loops_init(srv);
    if (err)
        goto fail;
    err = -ENOMEM;
    srv->handlers = calloc(65536, sizeof *srv->handlers);
    if (!srv->handlers)
        goto fail;
    if (srv->o.workers && !(srv->done_lists = calloc((size_t)srv->o.workers * srv->nloops,
                                                     sizeof *srv->done_lists)))
        goto fail;
    pier_timer_init(srv->loops[0].loop, &srv->shut_timer, shut_tick, srv);
    if (srv->o.workers) {
        err = pier__msg_pool_new(&srv->pool, srv->o.workers, srv->o.queue_max, job_run, jobs_flush, srv);
        if (err)
            goto fail;
    }
    /* Unconsumed input is a partial frame, or the rest of a read that stalled (at most
     * twice a frame and a read buffer, the core's growth included). */
    size_t frame_max = pier_msg_hdr_size(&srv->codec) + srv->codec.max_body;
    size_t keep_max = 2 * (frame_max + READ_SPAN);
    pier_server_opts_t no = {
        .host = srv->o.host,
        .port = srv->o.port,
        .backlog = srv->o.backlog,
        .max_conns = srv->o.max_conns,
        .limits = {.read_max = keep_max < (1u << 20) ? 0 : keep_max + 1,
                   .idle_ms = 3 * srv->o.heartbeat_ms}, /* the heartbeat: see msg_conn_t */
        .on_accept = on_accept,
        .data = srv,
        .tls = srv->o.tls,
        .proxy = srv->o.proxy,
    };
    err = pier_server_new(&srv->net, group, &no);
    if (err)
        goto fail;
    pier__mx_msg_track(srv->o.ping_id);
    pier__mx_msg_track(srv->o.pong_id);
    *out = srv;
    return 0;
fail:
    pier__msg_pool_free(srv->pool);
    free_tables(srv);
    free(srv);
    return err;
}

int pier_msg_on(pier_msg_server_t *srv, uint16_t id, pier_msg_handler_cb handler, void *ud) {
    if (atomic_load(&srv->started))
        return -EBUSY;
    if (id == 0 || id == srv->o.ping_id || id == srv->o.pong_id || id < srv->codec.id_min ||
        id > srv->codec.id_max)
        return -EINVAL;
    srv->handlers[id] = (handler_t){handler, handler ? ud : NULL};
    if (handler)
        pier__mx_msg_track(id);
    return 0;
}

int pier_msg_server_start(pier_msg_server_t *srv) {
    atomic_store(&srv->started, 1);
    return pier_server_start(srv->net);
}

/* Shutdown, step 1 on every loop: no more reading, so the work left is finite. */
static void drain_task(void *arg) {
    msg_loop_t *lp = arg;
    lp->draining = 1;
    pier_timer_stop(&lp->retry);
    while (lp->wait_head)
        wait_unlink(lp->wait_head);
    for (msg_conn_t *mc = lp->conns; mc; mc = mc->next)
        read_stop(mc);
    atomic_fetch_add(&lp->srv->drained, 1);
}

/* Step 2 on loop 0: once every loop has drained and the workers are done, close every
 * connection gracefully (which flushes its replies); once they are gone, stop the group
 * if asked to. Past the deadline the workers drop what they have not started. */
static void shut_tick(pier_timer_t *t) {
    pier_msg_server_t *srv = t->data;
    uint64_t now = pier_loop_now(t->loop);
    if (srv->shut_phase == 0) {
        if (atomic_load(&srv->drained) < srv->nloops || atomic_load(&srv->jobs) > 0) {
            if (now < srv->shut_deadline)
                return;
            pier_log(PIER_LOG_WARN, "msg: drain: %ld messages still in the workers after %d s; dropping those "
                     "not yet started", atomic_load(&srv->jobs), SHUT_MAX_MS / 1000);
            atomic_store(&srv->abandon, 1);
        }
        srv->shut_phase = 1;
        pier_server_close_all(srv->net);
        if (!srv->stop_group) {
            pier_timer_stop(t);
            return;
        }
    }
    if (pier_server_conns(srv->net) > 0 && now < srv->shut_deadline)
        return;
    pier_timer_stop(t);
    pier_group_stop(srv->group);
}

static void shut_start(void *arg) {
    pier_msg_server_t *srv = arg;
    pier_loop_t *loop0 = srv->loops[0].loop;
    srv->shut_deadline = pier_loop_now(loop0) + SHUT_MAX_MS;
    pier_timer_start(&srv->shut_timer, SHUT_TICK_MS, SHUT_TICK_MS);
}

static void drain(pier_msg_server_t *srv, int stop_group) {
    if (atomic_exchange(&srv->shutting, 1))
        return;
    srv->stop_group = stop_group; /* read by loop 0 after the post below */
    pier_server_stop(srv->net);
    /* embedded tasks, each posted once (shutting): posting them cannot fail, and a lost
     * one would leave connections reading (drain_task) or never closed (shut_start)
     * until the caller's deadline */
    for (unsigned i = 0; i < srv->nloops; i++) {
        pier_task_init(&srv->loops[i].drain_task, drain_task, &srv->loops[i]);
        pier_loop_post_task(srv->loops[i].loop, &srv->loops[i].drain_task);
    }
    pier_task_init(&srv->shut_task, shut_start, srv);
    pier_loop_post_task(srv->loops[0].loop, &srv->shut_task);
}

void pier_msg_server_drain(pier_msg_server_t *srv) {
    drain(srv, 0);
}

void pier_msg_server_shutdown(pier_msg_server_t *srv) {
    drain(srv, 1);
}

unsigned pier_msg_server_active(const pier_msg_server_t *srv) {
    long jobs = atomic_load(&srv->jobs);
    return pier_server_conns(srv->net) + (unsigned)(jobs > 0 ? jobs : 0);
}

int pier_msg_server_free(pier_msg_server_t *srv) {
    if (!srv)
        return 0;
    /* A message still in a worker, or finished and posted back to its loop, points at
     * srv, and so does a pier_msg_send frame posted and not yet run: the loops must run
     * them (pier_loop_free would, after srv is gone) before srv may go. */
    if (atomic_load(&srv->jobs) > 0 || atomic_load(&srv->sends) > 0)
        return -EBUSY;
    for (unsigned i = 0; i < srv->nloops; i++)
        if (srv->loops[i].any_wake)
            return -EBUSY; /* its wake task is still queued on the loop */
    /* the loops are not running any more */
    pier_timer_stop(&srv->shut_timer);
    for (unsigned i = 0; i < srv->nloops; i++)
        pier_timer_stop(&srv->loops[i].retry);
    pier_server_stop(srv->net);
    int err = pier_server_free(srv->net);
    if (err)
        return err;
    pier__msg_pool_free(srv->pool);
    free_tables(srv);
    free(srv);
    return 0;
}

uint16_t pier_msg_server_port(const pier_msg_server_t *srv) {
    return pier_server_port(srv->net);
}

void *pier_msg_server_data(const pier_msg_server_t *srv) {
    return srv->o.data;
}

pier_server_t *pier_msg_server_net(const pier_msg_server_t *srv) {
    return srv->net;
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

void pier_msg_server_stats(const pier_msg_server_t *srv, pier_msg_stats_t *out) {
    *out = (pier_msg_stats_t){0};
    for (unsigned i = 0; i < srv->nloops; i++) {
        const msg_loop_t *lp = &srv->loops[i];
        out->conns += LOAD(lp->n_conns);
        out->msgs += LOAD(lp->msgs);
        out->handled += LOAD(lp->handled);
        out->unknown += LOAD(lp->unknown);
        out->bad_frames += LOAD(lp->bad_frames);
        out->timeouts += LOAD(lp->timeouts);
        out->out_dropped += LOAD(lp->out_dropped);
        out->out_closed += LOAD(lp->out_closed);
    }
    if (srv->pool)
        out->handled += pier__msg_pool_handled(srv->pool);
    out->out_dropped += LOAD(srv->w_out_dropped);
    out->replies_lost = LOAD(srv->replies_lost);
    out->abandoned = LOAD(srv->abandoned);
}
