/* The PROXY header stage: an accepted socket whose header is not in yet waits here, with
 * its own watcher, until it is; then it becomes a connection as any other.
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
#include "metrics/metrics.h"

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

_Static_assert(PIER__PROXY_NSTATS == sizeof ((pier_metrics_t *)0)->proxy_headers / sizeof(uint64_t),
               "one metrics slot per PROXY outcome");

static void count(pier__proxy_wait_t *w, int what) {
    atomic_fetch_add_explicit(&w->stats[what], 1, memory_order_relaxed);
    pier__mx_inc(pier__loop_metrics(w->loop), PIER__MX(proxy_headers) + (size_t)what);
}

/* Takes the socket out of the stage; the fd stays open. */
static void unlink_waiting(waiting_t *e) {
    pier__io_del(e->w->loop, &e->io);
    pier__loop_handle_del(e->w->loop);
    pier__queue_remove(&e->q);
    if (pier__queue_empty(&e->w->waiting))
        pier_timer_stop(&e->w->timer);
}

/* A peer that closes before its header (a balancer's plain TCP check, say) is counted
 * but not logged, unless pier itself was the reason (why). */
static void log_drop(pier__proxy_wait_t *w, int fd, int what, const char *why) {
    if (what < 0 || (!cause[what] && !why))
        return;
    const char *text = cause[what] ? cause[what] : why;
    if (!cause[what])
        why = NULL;
    pier__sockaddr_t peer;
    socklen_t len = sizeof peer;
    char addr[64] = "-";
    if (getpeername(fd, &peer.sa, &len) == 0)
        pier__addr_str(&peer, addr, sizeof addr);
    pier__log_every(&w->cfg->log_key[what], pier_loop_now(w->loop), PIER_LOG_WARN,
                    "proxy: closed a connection from %s: %s%s%s (%llu so far on this loop; at most one such "
                    "line a second)", addr, text, why ? ": " : "", why ? why : "",
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

/* What became of a header: HDR_WAIT (more is to come), or an outcome of the stats enum,
 * with the client's address for PIER__PROXY_OK. */
enum { HDR_WAIT = -1 };

typedef struct outcome_s {
    int what;
    const char *why;
    pier__sockaddr_t *client;
} outcome_t;

/* The header is whole: consume exactly its bytes. */
static int consume(int fd, char *buf, int hlen, const pier__proxy_hdr_t *h, int lowat, outcome_t *o) {
    if (!h->local && !(o->client = malloc(sizeof *o->client))) {
        o->why = "out of memory";
        return o->what = PIER__PROXY_ABORTED;
    }
    if (recv(fd, buf, (size_t)hlen, 0) != hlen) { /* peeked bytes are in the socket: cannot be short */
        free(o->client);
        o->client = NULL;
        return o->what = PIER__PROXY_ABORTED;
    }
    if (lowat) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    }
    if (o->client)
        *o->client = h->src;
    return o->what = o->client ? PIER__PROXY_OK : PIER__PROXY_LOCAL;
}

/* Peeks as much as the header is known to need, so a long v2 header already in the
 * socket takes two peeks and no more. *lowat: SO_RCVLOWAT has been raised on fd. */
static int try_header(pier_loop_t *loop, int fd, uint32_t events, int *lowat, outcome_t *o) {
    char *buf = pier__loop_rbuf(loop);
    size_t want = PIER__PROXY_PEEK, need;
    pier__proxy_hdr_t h;
    *o = (outcome_t){0};
    for (;;) {
        ssize_t n = recv(fd, buf, want, MSG_PEEK);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return HDR_WAIT;
        if (n <= 0)
            return o->what = PIER__PROXY_ABORTED;
        int r = pier__proxy_parse(buf, (size_t)n, &h, &need);
        if (r > 0)
            return consume(fd, buf, r, &h, *lowat, o);
        if (r == -1) {
            o->why = h.why;
            return o->what = PIER__PROXY_BAD;
        }
        if ((size_t)n < want || need <= want)
            break;
        want = need; /* more may be in already */
    }
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) /* no more is coming */
        return o->what = PIER__PROXY_ABORTED;
    if (need > PIER__PROXY_PEEK && !*lowat) {
        int v = (int)need;
        *lowat = setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v) == 0;
    }
    return HDR_WAIT;
}

/* fd is out of the stage (or never entered it): hand it over or close it. */
static void conclude(pier__proxy_wait_t *w, int fd, const outcome_t *o) {
    if (o->what != PIER__PROXY_OK && o->what != PIER__PROXY_LOCAL) {
        drop_fd(w, fd, o->what, o->why);
        return;
    }
    count(w, o->what);
    w->done(w, fd, o->client);
}

static void drop(waiting_t *e, int what) {
    pier__proxy_wait_t *w = e->w;
    int fd = e->io.fd;
    unlink_waiting(e);
    free(e);
    drop_fd(w, fd, what, NULL);
}

static void io_cb(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    waiting_t *e = pier__container_of(io, waiting_t, io);
    outcome_t o;
    if (try_header(loop, io->fd, events, &e->lowat, &o) == HDR_WAIT)
        return;
    pier__proxy_wait_t *w = e->w;
    int fd = io->fd;
    unlink_waiting(e); /* before the connection registers the same fd */
    free(e);
    conclude(w, fd, &o);
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
        drop(e, PIER__PROXY_TIMEOUT);
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
    /* a balancer sends the header with its connect, so it is often in already: then the
     * socket never enters the stage (no watcher to add and remove, no wait for an edge) */
    outcome_t o;
    int lowat = 0;
    if (try_header(w->loop, fd, 0, &lowat, &o) != HDR_WAIT) {
        conclude(w, fd, &o);
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
    e->lowat = lowat;
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
}

void pier__proxy_wait_drop_all(pier__proxy_wait_t *w) {
    while (!pier__queue_empty(&w->waiting))
        drop(pier__container_of(w->waiting.next, waiting_t, q), -1);
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
