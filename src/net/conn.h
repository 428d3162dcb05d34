/* Connection internals shared by conn.c, server.c and client.c. */
#ifndef PIER_NET_CONN_H
#define PIER_NET_CONN_H

#include <pier/net.h>
#include "loop/layer.h"

enum {
    PIER__C_CLOSING = 1 << 0,   /* close requested: no more reads, no new writes */
    PIER__C_CLOSED = 1 << 1,    /* fd closed, on_close ran; only references remain */
    PIER__C_ABORT = 1 << 2,     /* drop output, reset */
    PIER__C_READABLE = 1 << 3,  /* edge seen, socket not yet drained */
    PIER__C_USER_PAUSE = 1 << 4,
    PIER__C_WATER_PAUSE = 1 << 5,
    PIER__C_EOF = 1 << 6,       /* peer half-closed */
    PIER__C_SHUT = 1 << 7,      /* our FIN is out; lingering until the peer's */
    PIER__C_REDELIVER = 1 << 8, /* resumed with kept input: deliver it before reading */
    PIER__C_RDHUP = 1 << 9,     /* epoll reported the peer's FIN: read until it shows */
    PIER__C_TP_SHUT = 1 << 10,  /* the transport's shutdown has run */
    PIER__C_OWN_LIM = 1 << 11,  /* its limits are x->lim, not the owner's */
    PIER__C_IDLE_RX = 1 << 12,  /* only input restarts the idle deadline (a heartbeat) */
    PIER__C_IDLE_HOLD = 1 << 13, /* the idle deadline starts again instead of closing */
    PIER__C_IDLE_GONE = 1 << 14, /* closed by its idle deadline */
    PIER__C_FRESH = 1 << 15,    /* no input yet: the owner's first deadline, from the accept */
};

enum { PIER__OUT_COPY, PIER__OUT_REF, PIER__OUT_FILE };

/* A transport beneath a connection (TLS, src/tls/): it turns socket bytes into the
 * plaintext the protocol reads, and the queued plaintext (out[]) into socket bytes. A
 * connection without one reads and writes the socket itself. All run on the loop thread,
 * with a reference held by the caller. */
typedef struct pier__transport_s {
    /* Reads up to len bytes of plaintext into buf: the count, 0 at a clean end of the
     * stream, or a negative errno, -EAGAIN when there is nothing to read now. Sets *more
     * when it may have more without a new edge from epoll (it must then be called again). */
    ssize_t (*read)(pier_conn_t *c, char *buf, size_t len, int *more);
    /* Writes what it can of out[] (consuming items with pier__conn_consume) and of its own
     * output: 0 when done or waiting for the socket, or a negative errno. */
    int (*flush)(pier_conn_t *c);
    /* 1 while it holds output of its own that is not on the socket yet. */
    int (*pending)(const pier_conn_t *c);
    /* A graceful close has flushed out[]: queue the transport's own goodbye (once). */
    void (*shutdown)(pier_conn_t *c);
    /* Frees its state; runs once, after on_close. */
    void (*free)(pier_conn_t *c);
} pier__transport_t;

/* What net knows of a transport context such as pier_tls_ctx_t, whose struct starts with
 * a pointer to this: enough to wrap a new connection without linking to the layer. */
typedef struct pier__tp_ops_s {
    /* Wraps c (not yet handed to the application). servername: a client's expected name
     * (NULL for a server). session: a client's slot for the last session it was given,
     * offered again to resume and replaced by each new one (NULL: none kept); the slot
     * must outlive c. The owner's ready hook runs once the transport is ready. */
    int (*attach)(pier_tls_ctx_t *ctx, pier_conn_t *c, const char *servername, void **session);
    /* Frees what a session slot holds (NULL is a no-op). */
    void (*session_free)(void *session);
    void (*ref)(pier_tls_ctx_t *ctx);
    void (*unref)(pier_tls_ctx_t *ctx);
} pier__tp_ops_t;

static inline const pier__tp_ops_t *pier__tp_ops(pier_tls_ctx_t *ctx) {
    return *(const pier__tp_ops_t *const *)(void *)ctx;
}

typedef struct pier__out_s {
    char *base;
    size_t len, off;            /* off: bytes of this item already written */
    pier_free_cb free_cb;
    void *ud;
    off_t foff;
    int fd;
    int kind;
} pier__out_t;

/* What a connection needs only while data waits or a feature is in use: input the
 * protocol has not consumed, the output queue, a transport, limits of its own. An idle
 * connection has none (x is NULL); the part comes from a per-loop cache when needed and
 * goes back as soon as it is empty again (a few stores each way). */
typedef struct pier__conn_x_s {
    pier_conn_t *c;
    char *rbuf;                 /* unconsumed input only; NULL when there is none */
    size_t rlen, rcap;

    pier__out_t *out;           /* out[ohead .. ohead+ocount): inl, or a larger array */
    uint32_t ohead, ocount, ocap;
    size_t queued;
    pier__pending_t flush_p;    /* in the loop's flush pass */

    const pier__transport_t *tp; /* NULL: the socket itself */
    void *tp_state;
    pier_conn_limits_t lim;     /* with PIER__C_OWN_LIM: the connection's own limits */
    /* The client's address from a PROXY header (a pier__sockaddr_t of src/net/proxy.h,
     * freed with the part, which a proxied connection keeps for its life); NULL: the
     * socket's peer is the client. */
    void *peer_addr;
    pier__out_t inl[2];         /* most connections queue one or two items */
} pier__conn_x_t;

/* Connections live in the id table's slots (idtab.c), which are never freed: aid and
 * loop come first and are atomic, since another thread may read them through a stale id
 * while the slot is reused. */
struct pier_conn_s {
    _Atomic uint64_t aid;       /* the id, with PIER__ID_DEAD once closing */
    _Atomic(pier_loop_t *) loop;
    pier__io_t io;
    const pier_conn_cbs_t *cbs;
    void *data;
    unsigned refs;
    uint16_t flags;
    int16_t err;                /* first error (a negative errno), reported to on_close */

    pier__conn_x_t *x;          /* NULL while idle */
    /* The owner (a server, a client) that made the connection: its hooks and the limits
     * its connections share (x->lim instead after pier_conn_set_limits). */
    struct pier__owner_s *owner;
    /* The one deadline a connection has at a time, in its loop's list for that timeout:
     * idle while open, flush-on-close while closing, linger after our FIN. */
    pier__dlnode_t dl;

    /* The read pass while open, the close pass once closing: never both, since a close
     * cancels a queued read and nothing reads after it. */
    pier__pending_t pass_p;
};

/* The public accessors, inline for the layers above (they run on every request). */
static inline void *pier__conn_data(const pier_conn_t *c) { return c->data; }
static inline void pier__conn_set_data(pier_conn_t *c, void *data) { c->data = data; }
static inline pier_loop_t *pier__conn_loop(const pier_conn_t *c) { return c->loop; }
static inline size_t pier__conn_queued(const pier_conn_t *c) { return c->x ? c->x->queued : 0; }
static inline int pier__conn_is_open(const pier_conn_t *c) { return !(c->flags & PIER__C_CLOSING); }

/* The transport's state (src/tls), and the first queued item (NULL if none). */
static inline void *pier__conn_tp_state(const pier_conn_t *c) { return c->x ? c->x->tp_state : NULL; }
static inline const pier__transport_t *pier__conn_tp(const pier_conn_t *c) { return c->x ? c->x->tp : NULL; }
static inline pier__out_t *pier__conn_out_head(const pier_conn_t *c) {
    return c->x && c->x->ocount ? &c->x->out[c->x->ohead] : NULL;
}

/* How a connection tells its owner that it closed: closed() runs once, in the close pass,
 * after on_close, with the connection's error. */
typedef struct pier__owner_s pier__owner_t;
typedef struct pier__conn_owner_s {
    void (*closed)(pier__owner_t *owner, pier_conn_t *c, int err);
    /* A connection with a transport is ready for the application (its handshake is
     * done): the owner hands it over (on_accept, on_connect). */
    void (*ready)(pier__owner_t *owner, pier_conn_t *c);
} pier__conn_owner_t;

/* Embedded in a server or a client: one copy of the limits for all its connections. */
struct pier__owner_s {
    const pier__conn_owner_t *ops;
    pier_conn_limits_t lim;     /* defaults filled in (pier__limits_default) */
    /* A protocol's deadline for the first input (HTTP's header timeout), counted from
     * the accept without any state of the protocol's: fresh_cb runs (with a reference
     * held) if nothing has come by then. 0: none. See pier__conn_fresh_end. */
    uint64_t fresh_ms;
    void (*fresh_cb)(pier_conn_t *c);
};

static inline const pier_conn_limits_t *pier__conn_lim(const pier_conn_t *c) {
    return c->flags & PIER__C_OWN_LIM ? &c->x->lim : &c->owner->lim;
}

/* Input arrived, or output left: the idle deadline starts again (not the first-input
 * deadline of a fresh connection, which runs from the accept). */
void pier__conn_touch_slow(pier_conn_t *c);
static inline void pier__conn_active(pier_conn_t *c) {
    if (pier__dl_stale(&c->dl, pier_loop_now(c->loop)))
        pier__conn_touch_slow(c);
}
static inline void pier__conn_sent(pier_conn_t *c) {
    if (!(c->flags & PIER__C_IDLE_RX))
        pier__conn_active(c);
}
/* The connection is the application's (accepted, and for TLS its handshake done): the
 * owner's first-input deadline, if it has one, runs from now. */
void pier__conn_fresh_start(pier_conn_t *c);
/* The protocol has taken up a fresh connection (its first input): the idle deadline
 * applies from now on. Returns the loop time of the accept, or 0 if it was not fresh. */
uint64_t pier__conn_fresh_end(pier_conn_t *c);
static inline int pier__conn_is_fresh(const pier_conn_t *c) { return !!(c->flags & PIER__C_FRESH); }
/* Sets a server's first-input deadline (before it starts). */
void pier__server_set_fresh(pier_server_t *srv, uint64_t ms, void (*cb)(pier_conn_t *c));

/* For a protocol whose idle timeout is a heartbeat (msg): only the peer's input counts
 * as activity, and while held (the protocol itself is not reading) the deadline only
 * starts again. idle_gone: the close came from the idle deadline. */
static inline void pier__conn_idle_rx_only(pier_conn_t *c) { c->flags |= PIER__C_IDLE_RX; }
static inline void pier__conn_idle_hold(pier_conn_t *c, int hold) {
    c->flags = hold ? c->flags | PIER__C_IDLE_HOLD : c->flags & ~PIER__C_IDLE_HOLD;
}
static inline int pier__conn_idle_gone(const pier_conn_t *c) { return !!(c->flags & PIER__C_IDLE_GONE); }

/* Wraps a connected non-blocking socket for owner, which must outlive the connection's
 * open life. The loop holds the first reference. */
int pier__conn_new(pier_loop_t *loop, int fd, pier__owner_t *owner, pier_conn_t **out);
/* Calls fn for each connection of owner on loop that has not finished closing, and for
 * which only (if not NULL) answers 1; fn may close or abort it. */
void pier__conn_each(pier_loop_t *loop, const pier__owner_t *owner, void (*fn)(pier_conn_t *c),
                     int (*only)(pier_conn_t *c));
/* For transports: the owner's ready hook; consuming n bytes of out[] (they have been
 * taken by the transport); the flush pass; a failure that aborts with err. */
void pier__conn_ready(pier_conn_t *c);
void pier__conn_consume(pier_conn_t *c, size_t n);
void pier__conn_want_flush(pier_conn_t *c);
void pier__conn_fail(pier_conn_t *c, int err);
/* Puts a transport beneath c (state NULL takes it away). 0 or -ENOMEM. */
int pier__conn_set_transport(pier_conn_t *c, const pier__transport_t *tp, void *state);
/* Gives c the client address a PROXY header carried (it takes addr, a malloc'd
 * pier__sockaddr_t, also on failure). 0 or -ENOMEM. */
int pier__conn_set_peer_addr(pier_conn_t *c, void *addr);

/* Fills zero fields of lim with pier's defaults. */
void pier__limits_default(pier_conn_limits_t *lim);


/* Logs what an idle and a busy connection cost, and the id table's size (at a server's end). */
void pier__conn_mem_log(void);

/* "1.2.3.4:80" / "[::1]:80" from a sockaddr. */
const char *pier__addr_str(const void *sa, char *buf, size_t size);
/* Parses a numeric host and port into a sockaddr_storage; returns its length or -EINVAL. */
int pier__addr_parse(const char *host, uint16_t port, void *ss);

#endif
