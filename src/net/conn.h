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
};

enum { PIER__OUT_COPY, PIER__OUT_REF, PIER__OUT_FILE };

typedef struct pier__out_s {
    char *base;
    size_t len, off;            /* off: bytes of this item already written */
    pier_free_cb free_cb;
    void *ud;
    off_t foff;
    int fd;
    int kind;
} pier__out_t;

struct pier_conn_s {
    pier__io_t io;
    pier_loop_t *loop;
    const pier_conn_cbs_t *cbs;
    void *data;
    pier_id_t id;
    unsigned refs;
    unsigned flags;
    int err;                    /* first error, reported to on_close */

    char *rbuf;                 /* unconsumed input only; NULL when there is none */
    size_t rlen, rcap;

    pier__out_t *out;           /* out[ohead .. ohead+ocount) */
    uint32_t ohead, ocount, ocap;
    size_t queued;

    pier_conn_limits_t lim;
    uint64_t last_io;
    pier_timer_t timer;         /* idle, flush-on-close and linger deadlines */

    pier__pending_t read_p, flush_p, close_p; /* nodes in the loop's passes */
    /* The owner (a server, a client) that made the connection, told through its hook
     * when the connection has finished closing. owner_q links it in the owner's list. */
    const struct pier__conn_owner_s *owner_ops;
    void *owner;
    pier__queue_t owner_q;
};

/* How a connection tells its owner that it closed: closed() runs once, in the close pass,
 * after on_close, with the connection's error; the owner unlinks owner_q there. */
typedef struct pier__conn_owner_s {
    void (*closed)(void *owner, pier_conn_t *c, int err);
} pier__conn_owner_t;

/* Wraps a connected non-blocking socket. The loop holds the first reference. */
int pier__conn_new(pier_loop_t *loop, int fd, const pier_conn_limits_t *lim, pier_conn_t **out);
/* Fills zero fields of lim with pier's defaults. */
void pier__limits_default(pier_conn_limits_t *lim);

/* Sets the owner of a new connection (before any callback can run). */
void pier__conn_set_owner(pier_conn_t *c, const pier__conn_owner_t *ops, void *owner);

/* "1.2.3.4:80" / "[::1]:80" from a sockaddr. */
const char *pier__addr_str(const void *sa, char *buf, size_t size);
/* Parses a numeric host and port into a sockaddr_storage; returns its length or -EINVAL. */
int pier__addr_parse(const char *host, uint16_t port, void *ss);

#endif
