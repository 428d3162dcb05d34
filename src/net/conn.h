/* Connection internals shared by conn.c, server.c and client.c. */
#ifndef PIER_NET_CONN_H
#define PIER_NET_CONN_H

#include <pier/net.h>
#include "loop/internal.h"

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

    pier__queue_t all_q, flush_q, close_q, again_q;
    pier_server_t *server;
    pier_client_t *client;
};

/* Wraps a connected non-blocking socket. The loop holds the first reference. */
int pier__conn_new(pier_loop_t *loop, int fd, const pier_conn_limits_t *lim, pier_conn_t **out);
/* Fills zero fields of lim with pier's defaults. */
void pier__limits_default(pier_conn_limits_t *lim);

/* Hooks into the owners, called when a connection has finished closing. */
void pier__server_conn_closed(pier_server_t *srv, pier_conn_t *c);
void pier__client_conn_closed(pier_client_t *cl, pier_conn_t *c, int err);

/* "1.2.3.4:80" / "[::1]:80" from a sockaddr. */
const char *pier__addr_str(const void *sa, char *buf, size_t size);
/* Parses a numeric host and port into a sockaddr_storage; returns its length or -EINVAL. */
int pier__addr_parse(const char *host, uint16_t port, void *ss);

#endif
