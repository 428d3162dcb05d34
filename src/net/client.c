/* TCP client: non-blocking connect with a timeout, and reconnection with exponential
 * backoff and full jitter, so a fleet of clients does not return in lock-step when a
 * server comes back. The client is the application's; it never owns the loop. */
#include "conn.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { CL_IDLE, CL_CONNECTING, CL_HANDSHAKE, CL_CONNECTED, CL_WAITING };

struct pier_client_s {
    pier__owner_t own;          /* its hooks, and its connections' limits */
    pier_client_opts_t opts;
    char host[256];
    char servername[256];       /* for TLS */
    void *tls_session;          /* the last TLS session, offered again on reconnect */
    pier_loop_t *loop;
    struct sockaddr_storage addr;
    socklen_t alen;
    pier__io_t io;              /* the socket while connecting */
    pier_timer_t timer;         /* connect timeout, or the wait before a retry */
    pier_conn_t *conn;
    pier_conn_t *handshaking;   /* connected over TCP, its transport not yet ready */
    int state;
    int failures;               /* consecutive */
    int stopped;
    unsigned connects;
    unsigned seed;
};

static void start_connect(pier_client_t *cl);
static void conn_closed(pier__owner_t *owner, pier_conn_t *c, int err);
/* The close hook through which the client's connection says it has closed. */
static void conn_ready(pier__owner_t *owner, pier_conn_t *c);
static const pier__conn_owner_t client_owner = {.closed = conn_closed, .ready = conn_ready};

pier_client_t *pier_conn_client(const pier_conn_t *c) {
    return c->owner->ops == &client_owner ? pier__container_of(c->owner, pier_client_t, own) : NULL;
}

/* The client is a live handle of its loop whenever it is not idle. */
static void set_state(pier_client_t *cl, int state) {
    if (cl->state == CL_IDLE && state != CL_IDLE)
        pier__loop_handle_add(cl->loop);
    else if (cl->state != CL_IDLE && state == CL_IDLE)
        pier__loop_handle_del(cl->loop);
    cl->state = state;
}

static uint64_t backoff_ms(pier_client_t *cl) {
    unsigned shift = cl->failures > 1 ? (unsigned)(cl->failures - 1) : 0;
    uint64_t delay = cl->opts.backoff_min_ms << (shift > 20 ? 20 : shift);
    if (delay > cl->opts.backoff_max_ms)
        delay = cl->opts.backoff_max_ms;
    /* half fixed, half random: never immediate, never synchronized */
    return delay / 2 + (uint64_t)rand_r(&cl->seed) % (delay / 2 + 1);
}

static void schedule_retry(pier_client_t *cl) {
    uint64_t ms = backoff_ms(cl);
    set_state(cl, CL_WAITING);
    pier_timer_start(&cl->timer, ms, 0);
    pier_log(PIER_LOG_DEBUG, "client %s:%u: retrying in %llu ms", cl->host, cl->opts.port, (unsigned long long)ms);
}

static void connect_failed(pier_client_t *cl, int err) {
    pier_timer_stop(&cl->timer); /* the connect timeout, if this was not it */
    cl->failures++;
    int retry = cl->opts.reconnect && !cl->stopped &&
                (cl->opts.max_retries == 0 || cl->failures < cl->opts.max_retries);
    if (retry)
        schedule_retry(cl);
    else
        set_state(cl, CL_IDLE);
    if (cl->opts.on_connect_error)
        cl->opts.on_connect_error(cl, err, retry);
}

static void connected(pier_client_t *cl, int fd) {
    pier_timer_stop(&cl->timer);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pier_conn_t *c;
    int err = pier__conn_new(cl->loop, fd, &cl->own, &c);
    if (err < 0) {
        close(fd);
        connect_failed(cl, err);
        return;
    }
    if (!cl->opts.tls) {
        conn_ready(&cl->own, c);
        return;
    }
    /* connected only once the transport's handshake is done (conn_ready); a close before
     * that is a failed connect (conn_closed) */
    cl->handshaking = c;
    set_state(cl, CL_HANDSHAKE);
    err = pier__tp_ops(cl->opts.tls)->attach(cl->opts.tls, c, cl->servername, &cl->tls_session);
    if (err < 0)
        pier__conn_fail(c, err);
}

static void conn_ready(pier__owner_t *owner, pier_conn_t *c) {
    pier_client_t *cl = pier__container_of(owner, pier_client_t, own);
    cl->handshaking = NULL;
    cl->conn = c;
    cl->failures = 0;
    cl->connects++;
    set_state(cl, CL_CONNECTED);
    pier_conn_ref(c);
    if (cl->opts.on_connect)
        cl->opts.on_connect(cl, c);
    if (!c->cbs)
        pier_conn_close(c);
    pier_conn_unref(c);
}

static void drop_socket(pier_client_t *cl) {
    if (cl->io.fd < 0)
        return;
    pier__io_del(cl->loop, &cl->io);
    close(cl->io.fd);
    cl->io.fd = -1;
}

static void connect_io_cb(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    pier_client_t *cl = pier__container_of(io, pier_client_t, io);
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr == 0 && !(events & (EPOLLERR | EPOLLHUP))) {
        int fd = io->fd;
        pier__io_del(loop, io);
        io->fd = -1;
        connected(cl, fd);
        return;
    }
    drop_socket(cl);
    connect_failed(cl, soerr ? -soerr : -ECONNREFUSED);
}

static void timer_cb(pier_timer_t *t) {
    pier_client_t *cl = t->data;
    if (cl->state == CL_CONNECTING) {
        drop_socket(cl);
        connect_failed(cl, -ETIMEDOUT);
    } else if (cl->state == CL_WAITING) {
        start_connect(cl);
    }
}

static void start_connect(pier_client_t *cl) {
    set_state(cl, CL_CONNECTING);
    int fd = socket(cl->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        connect_failed(cl, -errno);
        return;
    }
    if (connect(fd, (struct sockaddr *)&cl->addr, cl->alen) == 0) {
        connected(cl, fd);
        return;
    }
    if (errno != EINPROGRESS) {
        int err = -errno;
        close(fd);
        connect_failed(cl, err);
        return;
    }
    cl->io.fd = fd;
    int err = pier__io_add(cl->loop, &cl->io, EPOLLOUT);
    if (err < 0) {
        close(fd);
        cl->io.fd = -1;
        connect_failed(cl, err);
        return;
    }
    pier_timer_start(&cl->timer, cl->opts.connect_timeout_ms, 0);
}

static int resolve(pier_client_t *cl) {
    int len = pier__addr_parse(cl->host, cl->opts.port, &cl->addr);
    if (len > 0) {
        cl->alen = (socklen_t)len;
        return 0;
    }
    /* a name: resolved once, here, with the blocking resolver */
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", cl->opts.port);
    if (getaddrinfo(cl->host, port, &hints, &res) != 0 || !res)
        return -EINVAL;
    memcpy(&cl->addr, res->ai_addr, res->ai_addrlen);
    cl->alen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int pier_client_new(pier_client_t **out, pier_loop_t *loop, const pier_client_opts_t *opts) {
    if (!loop || !opts || opts->port == 0)
        return -EINVAL;
    pier_client_t *cl = calloc(1, sizeof *cl);
    if (!cl)
        return -ENOMEM;
    cl->opts = *opts;
    pier__limits_default(&cl->opts.limits);
    cl->own.ops = &client_owner;
    cl->own.lim = cl->opts.limits;
    snprintf(cl->host, sizeof cl->host, "%s", opts->host && *opts->host ? opts->host : "127.0.0.1");
    cl->opts.host = cl->host;
    snprintf(cl->servername, sizeof cl->servername, "%s",
             opts->tls_servername && *opts->tls_servername ? opts->tls_servername : cl->host);
    cl->opts.tls_servername = cl->servername;
    if (!cl->opts.connect_timeout_ms)
        cl->opts.connect_timeout_ms = 5000;
    if (!cl->opts.backoff_min_ms)
        cl->opts.backoff_min_ms = 100;
    if (!cl->opts.backoff_max_ms)
        cl->opts.backoff_max_ms = 10000;
    if (cl->opts.backoff_max_ms < cl->opts.backoff_min_ms)
        cl->opts.backoff_max_ms = cl->opts.backoff_min_ms;
    cl->loop = loop;
    cl->io.fd = -1;
    cl->io.cb = connect_io_cb;
    cl->seed = (unsigned)(uintptr_t)cl ^ (unsigned)pier__clock_ms();
    pier_timer_init(loop, &cl->timer, timer_cb, cl);
    int err = resolve(cl);
    if (err < 0) {
        free(cl);
        return err;
    }
    if (cl->opts.tls)
        pier__tp_ops(cl->opts.tls)->ref(cl->opts.tls);
    *out = cl;
    start_connect(cl);
    return 0;
}

static void conn_closed(pier__owner_t *owner, pier_conn_t *c, int err) {
    (void)c;
    pier_client_t *cl = pier__container_of(owner, pier_client_t, own);
    if (cl->state == CL_HANDSHAKE) {
        cl->handshaking = NULL;
        if (cl->stopped)
            set_state(cl, CL_IDLE);
        else
            connect_failed(cl, err ? err : -ECONNRESET);
        return;
    }
    cl->conn = NULL;
    if (cl->opts.reconnect && !cl->stopped) {
        pier_log(PIER_LOG_INFO, "connection to %s:%u closed (%s), reconnecting", cl->host, cl->opts.port,
                 pier_strerror(err));
        cl->failures = 1;
        schedule_retry(cl);
    } else {
        set_state(cl, CL_IDLE);
    }
}

void pier_client_stop(pier_client_t *cl) {
    cl->stopped = 1;
    switch (cl->state) {
    case CL_CONNECTING:
        drop_socket(cl);
        /* fall through */
    case CL_WAITING:
        pier_timer_stop(&cl->timer);
        set_state(cl, CL_IDLE);
        break;
    case CL_HANDSHAKE:
        pier_conn_abort(cl->handshaking); /* idle once it has closed */
        break;
    case CL_CONNECTED:
        pier_conn_close(cl->conn); /* idle once its on_close has run */
        break;
    default:
        break;
    }
}

int pier_client_free(pier_client_t *cl) {
    if (!cl)
        return 0;
    if (cl->state != CL_IDLE)
        return -EBUSY;
    pier_timer_stop(&cl->timer);
    if (cl->opts.tls) {
        pier__tp_ops(cl->opts.tls)->session_free(cl->tls_session);
        pier__tp_ops(cl->opts.tls)->unref(cl->opts.tls);
    }
    free(cl);
    return 0;
}

pier_conn_t *pier_client_conn(const pier_client_t *cl) { return cl->conn; }
void *pier_client_data(const pier_client_t *cl) { return cl->opts.data; }
unsigned pier_client_connects(const pier_client_t *cl) { return cl->connects; }
