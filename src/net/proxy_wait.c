/* The PROXY header stage: an accepted socket waits here, with its own watcher, until its
 * header is in; then it becomes a connection as any other.
 *
 * Why the socket is peeked rather than read: the header is consumed exactly (one recv of
 * its length once it has all arrived), so whatever follows it, a TLS ClientHello or a
 * request, stays in the socket for the connection that reads next, and a waiting socket
 * holds no buffer of pier's. A peek copies at most PIER__PROXY_PEEK bytes unless a v2
 * header has said it is longer; SO_RCVLOWAT then keeps a trickling sender from waking
 * the loop before the whole of it is there.
 *
 * Every waiting socket has the same timeout, so the queue in arrival order is also in
 * deadline order and one timer per stage, armed for the oldest, serves them all. */
#include "proxy.h"
#include "conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 3000

typedef struct waiting_s {
    pier__io_t io;
    pier__queue_t q;
    pier__proxy_wait_t *w;
    uint64_t due;
    int lowat;                  /* SO_RCVLOWAT was raised */
} waiting_t;

static const char *const cause[PIER__PROXY_NSTATS] = {
    [PIER__PROXY_BAD] = "not a valid PROXY header",
    [PIER__PROXY_TIMEOUT] = "no whole PROXY header in time",
    [PIER__PROXY_REFUSED] = "source not allowed to send a PROXY header",
};

int pier__proxy_cfg_init(pier__proxy_cfg_t *cfg, const pier_proxy_opts_t *o) {
    memset(cfg, 0, sizeof *cfg);
    cfg->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
    if (!o->from)
        return 0;
    size_t bad;
    int n = pier__cidr_parse(o->from, NULL, 0, &bad);
    if (n < 0)
        return n;
    if (!(cfg->from = calloc((size_t)n, sizeof *cfg->from)))
        return -ENOMEM;
    cfg->nfrom = (size_t)pier__cidr_parse(o->from, cfg->from, (size_t)n, &bad);
    return 0;
}

void pier__proxy_cfg_free(pier__proxy_cfg_t *cfg) {
    free(cfg->from);
    cfg->from = NULL;
}

static void timer_cb(pier_timer_t *t);

void pier__proxy_wait_init(pier__proxy_wait_t *w, pier_loop_t *loop, pier__proxy_cfg_t *cfg) {
    w->loop = loop;
    w->cfg = cfg;
    pier__queue_init(&w->waiting);
    pier_timer_init(loop, &w->timer, timer_cb, w);
}

static void count(pier__proxy_wait_t *w, int what) {
    atomic_fetch_add_explicit(&w->stats[what], 1, memory_order_relaxed);
}

/* Takes the socket out of the stage; the fd stays open. */
static void unlink_waiting(waiting_t *e) {
    pier__io_del(e->w->loop, &e->io);
    pier__loop_handle_del(e->w->loop);
    pier__queue_remove(&e->q);
    if (pier__queue_empty(&e->w->waiting))
        pier_timer_stop(&e->w->timer);
}

static void log_drop(pier__proxy_wait_t *w, int fd, int what, const char *why) {
    if (what < 0 || !cause[what])
        return;
    pier__sockaddr_t peer;
    socklen_t len = sizeof peer;
    char addr[64] = "-";
    if (getpeername(fd, &peer.sa, &len) == 0)
        pier__addr_str(&peer, addr, sizeof addr);
    pier__log_every(&w->cfg->log_key[what], pier_loop_now(w->loop), PIER_LOG_WARN,
                    "proxy: closed a connection from %s: %s%s%s (%llu so far on this loop; at most one such "
                    "line a second)", addr, cause[what], why ? ": " : "", why ? why : "",
                    (unsigned long long)atomic_load_explicit(&w->stats[what], memory_order_relaxed));
}

/* Closes a socket that never became a connection and counts why (what < 0: the server
 * is closing its connections, which is no outcome of the header). A reset, not a FIN:
 * nothing was promised to the peer, and no TIME_WAIT is left behind for it. */
static void drop_fd(pier__proxy_wait_t *w, int fd, int what, const char *why) {
    if (what >= 0)
        count(w, what);
    log_drop(w, fd, what, why);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    w->dropped(w);
}

static void drop(waiting_t *e, int what, const char *why) {
    pier__proxy_wait_t *w = e->w;
    int fd = e->io.fd;
    unlink_waiting(e);
    free(e);
    drop_fd(w, fd, what, why);
}

/* The header is whole: consume exactly its bytes and hand the socket over. */
static void finish(waiting_t *e, char *buf, int hlen, const pier__proxy_hdr_t *h) {
    pier__proxy_wait_t *w = e->w;
    pier__sockaddr_t *client = NULL;
    if (!h->local && !(client = malloc(sizeof *client))) {
        drop(e, PIER__PROXY_ABORTED, "out of memory");
        return;
    }
    ssize_t n = recv(e->io.fd, buf, (size_t)hlen, 0);
    if (n != hlen) { /* peeked bytes are in the socket: this cannot come short */
        free(client);
        drop(e, PIER__PROXY_ABORTED, NULL);
        return;
    }
    if (e->lowat) {
        int one = 1;
        setsockopt(e->io.fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    }
    if (client)
        *client = h->src;
    count(w, client ? PIER__PROXY_OK : PIER__PROXY_LOCAL);
    int fd = e->io.fd;
    unlink_waiting(e);
    free(e);
    w->done(w, fd, client);
}

/* Peeks as much as the header is known to need, so a long v2 header already in the
 * socket takes two peeks and no more. */
static void try_header(waiting_t *e, uint32_t events) {
    char *buf = pier__loop_rbuf(e->w->loop);
    size_t want = PIER__PROXY_PEEK, need;
    pier__proxy_hdr_t h;
    for (;;) {
        ssize_t n = recv(e->io.fd, buf, want, MSG_PEEK);
        if (n <= 0) {
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return;
            drop(e, PIER__PROXY_ABORTED, NULL);
            return;
        }
        int r = pier__proxy_parse(buf, (size_t)n, &h, &need);
        if (r > 0) {
            finish(e, buf, r, &h);
            return;
        }
        if (r == -1) {
            drop(e, PIER__PROXY_BAD, h.why);
            return;
        }
        if ((size_t)n == want && need > want) {
            want = need; /* more may be in already */
            continue;
        }
        break;
    }
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) { /* no more is coming */
        drop(e, PIER__PROXY_ABORTED, NULL);
        return;
    }
    if (need > PIER__PROXY_PEEK && !e->lowat) {
        int lowat = (int)need;
        e->lowat = setsockopt(e->io.fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof lowat) == 0;
    }
}

static void io_cb(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    try_header(pier__container_of(io, waiting_t, io), events);
}

static void timer_cb(pier_timer_t *t) {
    pier__proxy_wait_t *w = t->data;
    uint64_t now = pier_loop_now(w->loop);
    while (!pier__queue_empty(&w->waiting)) {
        waiting_t *e = pier__container_of(w->waiting.next, waiting_t, q);
        if (e->due > now) {
            pier_timer_start(&w->timer, e->due - now, 0);
            return;
        }
        drop(e, PIER__PROXY_TIMEOUT, NULL);
    }
}

static int allowed(const pier__proxy_cfg_t *cfg, int fd) {
    if (!cfg->from)
        return 1;
    pier__sockaddr_t peer;
    socklen_t len = sizeof peer;
    return getpeername(fd, &peer.sa, &len) == 0 && pier__cidr_match(cfg->from, cfg->nfrom, &peer.sa);
}

void pier__proxy_wait_add(pier__proxy_wait_t *w, int fd) {
    if (!allowed(w->cfg, fd)) {
        drop_fd(w, fd, PIER__PROXY_REFUSED, NULL);
        return;
    }
    waiting_t *e = calloc(1, sizeof *e);
    if (!e) {
        drop_fd(w, fd, PIER__PROXY_ABORTED, "out of memory");
        return;
    }
    e->w = w;
    e->io.fd = fd;
    e->io.cb = io_cb;
    e->due = pier_loop_now(w->loop) + w->cfg->timeout_ms;
    if (pier__io_add(w->loop, &e->io, EPOLLIN | EPOLLRDHUP | EPOLLET) < 0) {
        free(e);
        drop_fd(w, fd, PIER__PROXY_ABORTED, "cannot watch the socket");
        return;
    }
    pier__loop_handle_add(w->loop);
    if (pier__queue_empty(&w->waiting))
        pier_timer_start(&w->timer, w->cfg->timeout_ms, 0);
    pier__queue_insert_tail(&w->waiting, &e->q);
    /* epoll reports a socket that is readable when added: its first edge comes anyway */
}

void pier__proxy_wait_drop_all(pier__proxy_wait_t *w) {
    while (!pier__queue_empty(&w->waiting))
        drop(pier__container_of(w->waiting.next, waiting_t, q), -1, NULL);
}

void pier__proxy_wait_stats(pier__proxy_wait_t *w, pier_proxy_stats_t *out) {
    uint64_t v[PIER__PROXY_NSTATS];
    for (int i = 0; i < PIER__PROXY_NSTATS; i++)
        v[i] = atomic_load_explicit(&w->stats[i], memory_order_relaxed);
    out->ok += v[PIER__PROXY_OK];
    out->local += v[PIER__PROXY_LOCAL];
    out->bad += v[PIER__PROXY_BAD];
    out->timeout += v[PIER__PROXY_TIMEOUT];
    out->refused += v[PIER__PROXY_REFUSED];
    out->aborted += v[PIER__PROXY_ABORTED];
}
