/* Listening servers: one SO_REUSEPORT socket per loop of the group.
 *
 * Why per-loop listeners rather than one acceptor handing out round-robin: the kernel
 * spreads connections across the sockets by hash with no cross-thread hand-off, no
 * queue, no wake-up of a second thread per accept, and an idle loop never has to
 * accept for a busy one. bench/README.md has the measurement.
 *
 * The server is the application's; it never owns the group or its loops. Listener
 * changes happen on each loop's own thread through posted tasks. */
#include "conn.h"
#include "inherit.h"
#include "proxy.h"
#include "metrics/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

enum { TASK_START, TASK_STOP, TASK_CLOSE_ALL, TASK_ABORT_ALL, NTASKS };

typedef struct listener_s {
    pier__io_t io;
    pier_server_t *srv;
    pier_loop_t *loop;
    int active;                 /* registered in the loop */
    int reserve_fd;             /* spare fd released to accept-and-close under EMFILE */
    pier__proxy_wait_t pw;      /* sockets waiting for their PROXY header */
    pier_task_t tasks[NTASKS];  /* embedded, so that starting, stopping and closing cannot
                                 * fail for want of memory (a lost stop task would keep
                                 * the server from ever being freed) */
} listener_t;

struct pier_server_s {
    pier__owner_t own;          /* its hooks, and the limits its connections share */
    pier_server_opts_t opts;
    char host[64];
    pier_group_t *group;
    unsigned n;
    listener_t *ls;
    uint16_t port;
    atomic_uint conns;
    atomic_int live;            /* listeners registered in a loop */
    atomic_int state;           /* 0 new, 1 started, 2 stopped */
    atomic_uint_fast64_t log_emfile, log_limit;
    unsigned next;              /* single acceptor: the loop that gets the next one */
    atomic_uint tasks;          /* posted tasks that refer to the server, not yet run */
    _Atomic(int (*)(pier_conn_t *c)) close_now; /* the close-all task's filter (NULL: all) */
    pier__proxy_cfg_t proxy;
};

static void tasks_init(listener_t *l);

typedef struct handoff_s {
    listener_t *to;
    int fd;
} handoff_t;

static int listen_socket(const struct sockaddr_storage *ss, socklen_t len, int backlog) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)ss, len) < 0 || listen(fd, backlog) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* SO_REUSEPORT would let a second server (of the same user) bind a port that another
 * one already listens on and silently share its traffic. A plain bind first, without
 * SO_REUSEPORT, fails with EADDRINUSE in that case, so "port in use" stays an error.
 * With port 0 the probe also picks the port the real listeners then bind. */
static int probe_port(struct sockaddr_storage *ss, socklen_t len) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    int err = bind(fd, (struct sockaddr *)ss, len) < 0 ? -errno : 0;
    if (err == 0) {
        struct sockaddr_storage bound;
        socklen_t blen = sizeof bound;
        getsockname(fd, (struct sockaddr *)&bound, &blen);
        if (ss->ss_family == AF_INET6)
            ((struct sockaddr_in6 *)ss)->sin6_port = ((struct sockaddr_in6 *)&bound)->sin6_port;
        else
            ((struct sockaddr_in *)ss)->sin_port = ((struct sockaddr_in *)&bound)->sin_port;
    }
    close(fd);
    return err;
}

/* The close hook: the connection has finished closing (its on_close has run). */
static void conn_closed(pier__owner_t *owner, pier_conn_t *c, int err) {
    (void)c;
    (void)err;
    pier_server_t *srv = pier__container_of(owner, pier_server_t, own);
    atomic_fetch_sub(&srv->conns, 1);
}

/* The ready hook: the connection is the application's from here (for TLS, after the
 * handshake; for plain TCP, at once). */
static void conn_ready(pier__owner_t *owner, pier_conn_t *c) {
    pier_server_t *srv = pier__container_of(owner, pier_server_t, own);
    pier_conn_ref(c);
    pier__conn_fresh_start(c);
    if (srv->opts.on_accept)
        srv->opts.on_accept(srv, c);
    if (!c->cbs)
        pier_conn_close(c);
    pier_conn_unref(c);
}

static const pier__conn_owner_t server_owner = {.closed = conn_closed, .ready = conn_ready};

pier_server_t *pier_conn_server(const pier_conn_t *c) {
    return c->owner->ops == &server_owner ? pier__container_of(c->owner, pier_server_t, own) : NULL;
}

/* client: the address a PROXY header gave (the connection's from here), or NULL. */
static void conn_start(listener_t *l, int fd, pier__sockaddr_t *client) {
    pier_server_t *srv = l->srv;
    pier_conn_t *c;
    int err = pier__conn_new(l->loop, fd, &srv->own, &c);
    if (err < 0) {
        atomic_fetch_sub(&srv->conns, 1);
        pier_log(PIER_LOG_WARN, "cannot set up accepted connection: %s", pier_strerror(err));
        free(client);
        close(fd);
        return;
    }
    pier__mx_inc(pier__loop_metrics(l->loop), PIER__MX(conns_accepted));
    if (client && pier__conn_set_peer_addr(c, client) < 0) {
        pier_log(PIER_LOG_WARN, "cannot keep a PROXY client address: %s", pier_strerror(-ENOMEM));
        pier_conn_abort(c);
        return;
    }
    if (!srv->opts.tls) {
        conn_ready(&srv->own, c);
        return;
    }
    /* the transport calls conn_ready once its handshake is done */
    err = pier__tp_ops(srv->opts.tls)->attach(srv->opts.tls, c, NULL, NULL);
    if (err < 0) {
        pier_log(PIER_LOG_WARN, "cannot set up TLS on an accepted connection: %s", pier_strerror(err));
        pier_conn_abort(c);
    }
}

/* A socket in the PROXY stage counts as a connection (against max_conns, and keeps the
 * server from being freed) from its accept until it is dropped or becomes one. */
static void proxy_done(pier__proxy_wait_t *w, int fd, pier__sockaddr_t *client) {
    conn_start(pier__container_of(w, listener_t, pw), fd, client);
}

static void proxy_dropped(pier__proxy_wait_t *w) {
    atomic_fetch_sub(&pier__container_of(w, listener_t, pw)->srv->conns, 1);
}

static void accept_one(pier_server_t *srv, listener_t *l, int fd) {
    unsigned open = atomic_fetch_add(&srv->conns, 1);
    if (open >= srv->opts.max_conns) {
        atomic_fetch_sub(&srv->conns, 1);
        pier__log_every(&srv->log_limit, pier_loop_now(l->loop), PIER_LOG_WARN,
                        "connection limit %u reached, refusing new connections", srv->opts.max_conns);
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (srv->opts.proxy.on)
        pier__proxy_wait_add(&l->pw, fd);
    else
        conn_start(l, fd, NULL);
}

static void handoff_task(void *arg) {
    handoff_t *h = arg;
    pier_server_t *srv = h->to->srv;
    if (atomic_load(&srv->state) == 1)
        accept_one(srv, h->to, h->fd);
    else
        close(h->fd);
    free(h);
    atomic_fetch_sub(&srv->tasks, 1); /* last: pier_server_free may now proceed */
}

/* Single-acceptor mode: loop 0 accepts and deals connections out in turn. */
static void hand_out(pier_server_t *srv, listener_t *l, int fd) {
    listener_t *to = &srv->ls[srv->next++ % srv->n];
    handoff_t *h = to == l ? NULL : malloc(sizeof *h);
    if (h) {
        h->to = to;
        h->fd = fd;
        atomic_fetch_add(&srv->tasks, 1);
        if (pier_loop_post(to->loop, handoff_task, h) == 0)
            return;
        atomic_fetch_sub(&srv->tasks, 1);
        free(h);
    }
    accept_one(srv, l, fd);
}

/* Out of descriptors: the pending connection would make the listener readable forever
 * and spin the loop. Give back the reserve fd, accept and close at once, take it back. */
static void shed_on_emfile(pier_server_t *srv, listener_t *l) {
    pier__log_every(&srv->log_emfile, pier_loop_now(l->loop), PIER_LOG_WARN,
                    "out of file descriptors: closing new connections at once");
    if (l->reserve_fd >= 0) {
        close(l->reserve_fd);
        l->reserve_fd = -1;
    }
    int fd = accept4(l->io.fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0)
        close(fd);
    l->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void listener_cb(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    listener_t *l = pier__container_of(io, listener_t, io);
    for (int i = 0; i < 64; i++) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            if (l->srv->opts.single_acceptor && l->srv->n > 1)
                hand_out(l->srv, l, fd);
            else
                accept_one(l->srv, l, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE)
            shed_on_emfile(l->srv, l);
        else if (errno != EAGAIN)
            pier_log(PIER_LOG_WARN, "accept: %s", pier_strerror(-errno));
        return;
    }
}

int pier_server_new(pier_server_t **out, pier_group_t *group, const pier_server_opts_t *opts) {
    if (!group || !opts)
        return -EINVAL;
    pier_server_t *srv = calloc(1, sizeof *srv);
    if (!srv)
        return -ENOMEM;
    srv->opts = *opts;
    snprintf(srv->host, sizeof srv->host, "%s", opts->host && *opts->host ? opts->host : "127.0.0.1");
    srv->opts.host = srv->host;
    if (!srv->opts.backlog)
        srv->opts.backlog = 1024;
    if (!srv->opts.max_conns)
        srv->opts.max_conns = 100000;
    pier__limits_default(&srv->opts.limits);
    srv->own.ops = &server_owner;
    srv->own.lim = srv->opts.limits;
    if (srv->opts.tls)
        pier__tp_ops(srv->opts.tls)->ref(srv->opts.tls);
    srv->group = group;
    srv->n = pier_group_size(group);
    srv->ls = calloc(srv->n, sizeof *srv->ls);
    int *inh = NULL, err = -ENOMEM;
    if (!srv->ls)
        goto fail;
    /* first, so that every failure below finds no socket to close (calloc's 0 is fd 0) */
    for (unsigned i = 0; i < srv->n; i++) {
        srv->ls[i].io.fd = srv->ls[i].reserve_fd = -1;
        tasks_init(&srv->ls[i]);
        pier__proxy_wait_init(&srv->ls[i].pw, pier_group_loop(group, i), &srv->proxy);
        srv->ls[i].pw.done = proxy_done;
        srv->ls[i].pw.dropped = proxy_dropped;
    }
    srv->opts.proxy.from = NULL; /* the caller's string: only its parsed form is kept */
    if ((err = pier__proxy_cfg_init(&srv->proxy, &opts->proxy)) < 0)
        goto fail;
    struct sockaddr_storage ss;
    int len = pier__addr_parse(srv->host, opts->port, &ss);
    if (len < 0) {
        err = len;
        goto fail;
    }
    /* sockets handed over by systemd or an upgrade are already bound: no probe, no bind */
    int ninh = -ENOMEM;
    if ((inh = calloc(srv->n, sizeof *inh)))
        ninh = pier__inherit_fds(&ss, inh, srv->opts.single_acceptor ? 1 : srv->n);
    if (ninh < 0) {
        err = ninh;
        goto fail;
    }
    if (ninh == 0 && (err = probe_port(&ss, (socklen_t)len)) < 0)
        goto fail;
    for (unsigned i = 0; i < srv->n; i++) {
        if (i > 0 && srv->opts.single_acceptor) {
            srv->ls[i].srv = srv; /* no socket: only a target for hand-offs */
            srv->ls[i].loop = pier_group_loop(group, i);
            continue;
        }
        /* every socket binds the port the first one got, so port 0 works with N loops */
        int fd = ninh ? inh[i] : listen_socket(&ss, (socklen_t)len, srv->opts.backlog);
        if (fd < 0) {
            err = fd;
            goto fail;
        }
        listener_t *l = &srv->ls[i];
        l->io.fd = fd;
        l->io.cb = listener_cb;
        l->srv = srv;
        l->loop = pier_group_loop(group, i);
        if (i == 0) {
            struct sockaddr_storage bound;
            socklen_t blen = sizeof bound;
            getsockname(fd, (struct sockaddr *)&bound, &blen);
            srv->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                          : ((struct sockaddr_in *)&bound)->sin_port);
            if (ss.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons(srv->port);
            else
                ((struct sockaddr_in *)&ss)->sin_port = htons(srv->port);
        }
    }
    for (unsigned i = 0; i < srv->n; i++)
        srv->ls[i].reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    free(inh);
    *out = srv;
    return 0;
fail:
    free(inh);
    if (srv->ls)
        for (unsigned i = 0; i < srv->n; i++)
            if (srv->ls[i].io.fd >= 0)
                close(srv->ls[i].io.fd);
    free(srv->ls);
    if (srv->opts.tls)
        pier__tp_ops(srv->opts.tls)->unref(srv->opts.tls);
    pier__proxy_cfg_free(&srv->proxy);
    free(srv);
    return err;
}

/* Every task that refers to the server is counted until it has run, so that
 * pier_server_free cannot free the server under one still queued on some loop. A task
 * already queued is not queued again: the one in the queue does the same work. */
static void post_to(listener_t *l, int task) {
    atomic_fetch_add(&l->srv->tasks, 1);
    if (pier_loop_post_task(l->loop, &l->tasks[task]) < 0)
        atomic_fetch_sub(&l->srv->tasks, 1);
}

static void task_done(listener_t *l) { atomic_fetch_sub(&l->srv->tasks, 1); } /* last touch of srv */

static void stop_task(listener_t *l);

static void start_task(listener_t *l) {
    if (l->active || l->io.fd < 0 || atomic_load(&l->srv->state) != 1)
        return;
    int err = pier__io_add(l->loop, &l->io, EPOLLIN);
    if (err < 0) {
        /* closed, so that the kernel stops giving it a share of the connections, which
         * would wait in its backlog with nobody to accept them */
        pier_log(PIER_LOG_ERROR, "cannot watch listener: %s; closing it", pier_strerror(err));
        stop_task(l);
        return;
    }
    l->active = 1;
    pier__loop_handle_add(l->loop);
    atomic_fetch_add(&l->srv->live, 1);
}

int pier_server_start(pier_server_t *srv) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&srv->state, &expected, 1))
        return -EBUSY;
    for (unsigned i = 0; i < srv->n; i++)
        post_to(&srv->ls[i], TASK_START);
    return 0;
}

static void stop_task(listener_t *l) {
    if (l->io.fd < 0)
        return;
    if (l->active) {
        pier__io_del(l->loop, &l->io);
        pier__loop_handle_del(l->loop);
        l->active = 0;
        atomic_fetch_sub(&l->srv->live, 1);
    }
    close(l->io.fd);
    l->io.fd = -1;
}

void pier_server_stop(pier_server_t *srv) {
    int prev = atomic_exchange(&srv->state, 2);
    if (prev == 2)
        return;
    for (unsigned i = 0; i < srv->n; i++) {
        if (prev == 0)
            stop_task(&srv->ls[i]); /* never started: nothing is registered anywhere */
        else
            post_to(&srv->ls[i], TASK_STOP);
    }
}

/* close and abort only mark and queue: no connection leaves the loop's lists under us */
static void each_conn(listener_t *l, void (*fn)(pier_conn_t *c), int (*only)(pier_conn_t *c)) {
    pier__conn_each(l->loop, &l->srv->own, fn, only);
}

/* A filtered drain lets connections still waiting for their PROXY header go on: like
 * those just accepted, their first request may be on its way. */
static void close_all_task(listener_t *l) {
    int (*close_now)(pier_conn_t *c) = atomic_load(&l->srv->close_now);
    if (!close_now)
        pier__proxy_wait_drop_all(&l->pw);
    each_conn(l, pier_conn_close, close_now);
}
static void abort_all_task(listener_t *l) {
    pier__proxy_wait_drop_all(&l->pw);
    each_conn(l, pier_conn_abort, NULL);
}

static void run_start(void *arg) {
    start_task(arg);
    task_done(arg);
}
static void run_stop(void *arg) {
    stop_task(arg);
    task_done(arg);
}
static void run_close_all(void *arg) {
    close_all_task(arg);
    task_done(arg);
}
static void run_abort_all(void *arg) {
    abort_all_task(arg);
    task_done(arg);
}

static void tasks_init(listener_t *l) {
    static const pier_task_cb run[NTASKS] = {run_start, run_stop, run_close_all, run_abort_all};
    for (int i = 0; i < NTASKS; i++)
        pier_task_init(&l->tasks[i], run[i], l);
}

void pier_server_close_all(pier_server_t *srv) { pier_server_close_if(srv, NULL); }

void pier_server_close_if(pier_server_t *srv, int (*close_now)(pier_conn_t *c)) {
    atomic_store(&srv->close_now, close_now);
    for (unsigned i = 0; i < srv->n; i++)
        post_to(&srv->ls[i], TASK_CLOSE_ALL);
}

void pier_server_abort_all(pier_server_t *srv) {
    for (unsigned i = 0; i < srv->n; i++)
        post_to(&srv->ls[i], TASK_ABORT_ALL);
}

int pier_server_free(pier_server_t *srv) {
    if (!srv)
        return 0;
    if (atomic_load(&srv->state) == 1 || atomic_load(&srv->live) > 0 || atomic_load(&srv->conns) > 0 ||
        atomic_load(&srv->tasks) > 0)
        return -EBUSY;
    for (unsigned i = 0; i < srv->n; i++)
        if (srv->ls[i].io.fd >= 0)
            return -EBUSY; /* a stop task has not run yet */
    for (unsigned i = 0; i < srv->n; i++)
        if (srv->ls[i].reserve_fd >= 0)
            close(srv->ls[i].reserve_fd);
    free(srv->ls);
    pier__conn_mem_log();
    if (srv->opts.tls)
        pier__tp_ops(srv->opts.tls)->unref(srv->opts.tls);
    pier__proxy_cfg_free(&srv->proxy);
    free(srv);
    return 0;
}


void pier__server_set_fresh(pier_server_t *srv, uint64_t ms, void (*cb)(pier_conn_t *c)) {
    srv->own.fresh_ms = cb ? ms : 0;
    srv->own.fresh_cb = cb;
}

uint16_t pier_server_port(const pier_server_t *srv) { return srv->port; }

unsigned pier_server_listen_fds(const pier_server_t *srv, int *fds, unsigned max) {
    unsigned n = 0;
    for (unsigned i = 0; i < srv->n; i++) {
        if (srv->ls[i].io.fd < 0)
            continue;
        if (n < max)
            fds[n] = srv->ls[i].io.fd;
        n++;
    }
    return n;
}
void *pier_server_data(const pier_server_t *srv) { return srv->opts.data; }
unsigned pier_server_conns(const pier_server_t *srv) { return atomic_load(&((pier_server_t *)srv)->conns); }

void pier_server_proxy_stats(const pier_server_t *srv, pier_proxy_stats_t *out) {
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < srv->n; i++)
        pier__proxy_wait_stats(&srv->ls[i].pw, out);
}
