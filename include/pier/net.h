/* pier TCP: connections, their ids, servers (listeners) and reconnecting clients.
 *
 * Lifetime contract of a connection (pier_conn_t):
 *  - It is owned by its loop, which holds one reference while it is open. User code may
 *    take more with pier_conn_ref() (for instance to reply later on the loop thread).
 *  - Every callback runs with a reference held, so no close or unref inside a callback
 *    can free the connection under the running code.
 *  - Close is idempotent and two-phase: pier_conn_close() marks it CLOSING and stops
 *    reading; on_close runs exactly once, from the loop, after the current callback
 *    returns; the memory goes when the last reference drops (never inside a callback).
 *  - Events already fetched for a connection that closed earlier in the same epoll batch
 *    are dropped.
 *  - Only the loop thread touches a pier_conn_t. Other threads use its pier_id_t.
 *
 * Ids: 64 bits, slot index (low 32) plus generation (high 32, never 0). An id stays
 * unique for the generation's range (2^32 reuses of one slot); a stale id answers
 * -ENOTCONN even when the fd number has since been reused.
 */
#ifndef PIER_NET_H
#define PIER_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pier_conn_s pier_conn_t;
typedef struct pier_server_s pier_server_t;
typedef struct pier_client_s pier_client_t;
typedef uint64_t pier_id_t;
typedef struct pier_tls_ctx_s pier_tls_ctx_t; /* tls.h */

#define PIER_ID_NONE ((pier_id_t)0)

/* Called when a buffer handed over with pier_conn_write_ref() is no longer needed. */
typedef void (*pier_free_cb)(void *base, void *ud);

/* Callbacks of a connection. All run on the connection's loop with a reference held.
 * A NULL member means the default. The struct must outlive the connection (use static). */
typedef struct pier_conn_cbs_s {
    /* Bytes arrived. data is valid only during the call; return how many bytes were
     * consumed. Unconsumed bytes stay and are passed again, before new bytes, next time.
     * If the unconsumed part reaches the read limit the connection is aborted with
     * -EMSGSIZE (a peer cannot grow memory without bound). */
    size_t (*on_read)(pier_conn_t *c, const char *data, size_t len);
    /* The output queue fell below the low water mark after having been above the high
     * mark. Reading, paused at the high mark, has resumed. */
    void (*on_drain)(pier_conn_t *c);
    /* The peer half-closed (read returned 0). Default (NULL): close gracefully, that is
     * flush what is queued and then close. */
    void (*on_eof)(pier_conn_t *c);
    /* Exactly once per connection. err is 0 for a local close, or a negative errno:
     * -ECONNRESET, -EPIPE, -ETIMEDOUT (idle timeout), -EMSGSIZE (read limit), ... */
    void (*on_close)(pier_conn_t *c, int err);
} pier_conn_cbs_t;

/* Limits of a connection, with defaults used when a field is 0. */
typedef struct pier_conn_limits_s {
    size_t out_high;        /* pause reading above this many queued bytes (256 KiB) */
    size_t out_low;         /* on_drain and resume below this (64 KiB) */
    size_t read_max;        /* largest unconsumed input kept (1 MiB) */
    uint64_t idle_ms;       /* close with -ETIMEDOUT after this long without I/O (0: none) */
    uint64_t close_ms;      /* a graceful close that cannot flush in this time aborts (10 s) */
} pier_conn_limits_t;

/* ---- connections (loop thread only) ---- */

PIER_EXTERN void pier_conn_set_cbs(pier_conn_t *c, const pier_conn_cbs_t *cbs, void *data);
PIER_EXTERN void *pier_conn_data(const pier_conn_t *c);
PIER_EXTERN void pier_conn_set_data(pier_conn_t *c, void *data);
PIER_EXTERN pier_id_t pier_conn_id(const pier_conn_t *c);
PIER_EXTERN pier_loop_t *pier_conn_loop(const pier_conn_t *c);
PIER_EXTERN int pier_conn_fd(const pier_conn_t *c);
/* Peer address as "1.2.3.4:80" or "[::1]:80"; buf of at least 64 bytes. On a server
 * with the PROXY protocol on, the client's address from the header (also after close);
 * otherwise the socket's peer, "-" once closed. */
PIER_EXTERN const char *pier_conn_peer(const pier_conn_t *c, char *buf, size_t size);
PIER_EXTERN int pier_conn_is_open(const pier_conn_t *c);   /* not closing or closed */

PIER_EXTERN void pier_conn_ref(pier_conn_t *c);
PIER_EXTERN void pier_conn_unref(pier_conn_t *c);

/* Queues a copy of data. Small writes are coalesced; everything queued during one loop
 * iteration goes out in one writev at its end. -ENOTCONN if closing/closed. -ENOMEM if
 * memory ran out: if part of data had already been sent or queued by then, the
 * connection is also aborted (the rest of its stream would be corrupt); otherwise
 * nothing of data was queued and the connection goes on. The same holds for
 * pier_conn_write_ref. */
PIER_EXTERN int pier_conn_write(pier_conn_t *c, const void *data, size_t len);
/* Queues data without copying; free_cb(base, ud) runs once pier no longer needs it,
 * also when the write fails or the connection closes (free_cb may be NULL). On error
 * free_cb has already run. */
PIER_EXTERN int pier_conn_write_ref(pier_conn_t *c, const void *base, size_t len,
                                    pier_free_cb free_cb, void *ud);
/* Queues one protocol unit made of iovcnt buffers (copied), all or nothing: on success
 * every byte is queued (or already sent), in order, and no other write can come between
 * them. -ENOTCONN if closing/closed. -ENOMEM if memory ran out: when nothing of the unit
 * had gone out, nothing is queued and the connection goes on; when part of it had (a
 * large unit is sent directly while nothing else waits), the connection is aborted,
 * since its stream would be corrupt. -EINVAL for iovcnt < 0. A response head and its
 * body, or a frame header and its payload, go out with one call. */
PIER_EXTERN int pier_conn_writev(pier_conn_t *c, const struct iovec *iov, int iovcnt);
/* As pier_conn_writev for the head (iov, may be empty), followed in the same unit by len
 * bytes of file fd from offset, sent with sendfile(). Takes ownership of fd in every case
 * (closed when sent, on error or on close). */
PIER_EXTERN int pier_conn_writev_file(pier_conn_t *c, const struct iovec *iov, int iovcnt, int fd, off_t offset,
                                      size_t len);
/* Queues len bytes of file fd from offset, sent with sendfile(). Takes ownership of fd
 * (closed when sent, or on error/close). */
PIER_EXTERN int pier_conn_sendfile(pier_conn_t *c, int fd, off_t offset, size_t len);
/* Bytes queued and not yet written. */
PIER_EXTERN size_t pier_conn_queued(const pier_conn_t *c);

/* Pauses/resumes reading (also used by protocols that must apply back-pressure). */
PIER_EXTERN void pier_conn_pause(pier_conn_t *c);
PIER_EXTERN void pier_conn_resume(pier_conn_t *c);

/* Changes the limits; fields left 0 keep their current value. */
PIER_EXTERN void pier_conn_set_limits(pier_conn_t *c, const pier_conn_limits_t *lim);
/* Restarts the idle clock (I/O restarts it too). */
PIER_EXTERN void pier_conn_touch(pier_conn_t *c);

/* Graceful close: stop reading, flush the queue, then send our FIN and wait (up to 2 s,
 * at most limits.close_ms) for the peer's, reading and dropping what it still sends:
 * closing over unread input would reset the connection and could destroy the last
 * response before the peer has read it. When the peer's FIN has already been read, or
 * its protocol says it has sent its last word (HTTP: a whole request that asked to
 * close) and none of its input is unread, the socket is closed at once after the output
 * instead. Idempotent. */
PIER_EXTERN void pier_conn_close(pier_conn_t *c);
/* Abort: drop the queue and reset the connection (RST). Idempotent; also upgrades a
 * graceful close in progress. */
PIER_EXTERN void pier_conn_abort(pier_conn_t *c);

/* Loop thread only: the open connection that id names if it belongs to loop, else NULL
 * (stale, closing, or owned by another loop). O(1), no allocation. */
PIER_EXTERN pier_conn_t *pier_conn_from_id(pier_loop_t *loop, pier_id_t id);

/* ---- the id-based calls: any thread, any time ---- */

/* Copies data and has the owning loop queue it. -ENOTCONN if the id is stale (the
 * connection has gone or is closing); -ENOMEM. A connection that closes after the check
 * but before its loop runs the task drops the data. */
PIER_EXTERN int pier_send(pier_id_t id, const void *data, size_t len);
/* Graceful close through the id. -ENOTCONN if stale. */
PIER_EXTERN int pier_close(pier_id_t id);
/* As pier_send, but calls fn(conn, arg) on the owning loop with the live connection;
 * if it is gone by then, fn(NULL, arg) runs instead so arg can be released. */
PIER_EXTERN int pier_with_conn(pier_id_t id, void (*fn)(pier_conn_t *c, void *arg), void *arg);
/* 1 if the id names a live connection at the time of the call. */
PIER_EXTERN int pier_id_alive(pier_id_t id);

/* ---- servers ---- */

/* The PROXY protocol (v1 text and v2 binary): a load balancer in front (HAProxy's
 * send-proxy / send-proxy-v2, nginx's proxy_protocol, cloud balancers) sends a header
 * first on each connection that names the client it stands for. With it on, a server
 * reads that header before anything else (before TLS, before on_accept), within
 * timeout_ms, and pier_conn_peer() then gives the client's address. A LOCAL header (a
 * balancer's health check), v1 "UNKNOWN" and v2 families that carry no TCP address
 * keep the socket's own peer. A connection without a valid header in time, or from a
 * source not in `from`, is closed before on_accept and counted (pier_server_proxy_stats),
 * with a log line at most once a second per cause. A socket waiting for its header
 * counts in pier_server_conns() and against max_conns. */
typedef struct pier_proxy_opts_s {
    int on;                       /* 1: every connection must start with a PROXY header */
    uint64_t timeout_ms;          /* the whole header must arrive within (default 3000) */
    /* Sources allowed to connect at all, as "10.0.0.0/8,192.168.1.7,fd00::/8"; NULL:
     * any. Copied by pier_server_new, which answers -EINVAL for a bad list. */
    const char *from;
} pier_proxy_opts_t;

/* Outcomes of PROXY headers so far, summed over the server's loops. */
typedef struct pier_proxy_stats_s {
    uint64_t ok;                  /* headers that gave a client address */
    uint64_t local;               /* valid headers with no address: the socket's peer is kept */
    uint64_t bad;                 /* closed: not a valid PROXY header */
    uint64_t timeout;             /* closed: no whole header within timeout_ms */
    uint64_t refused;             /* closed: source not in `from` */
    uint64_t aborted;             /* the peer closed or reset before a whole header */
} pier_proxy_stats_t;

/* 0 if list is a valid `from` list; -EINVAL with *bad_off (may be NULL) the offset of
 * the first item that is not an IPv4 or IPv6 address or CIDR. Any thread. */
PIER_EXTERN int pier_proxy_from_check(const char *list, size_t *bad_off);

typedef struct pier_server_opts_s {
    const char *host;             /* "127.0.0.1", "::1", "0.0.0.0", "::"; default 127.0.0.1 */
    uint16_t port;                /* 0: an ephemeral port, see pier_server_port() */
    int backlog;                  /* default 1024 */
    unsigned max_conns;           /* across all loops; default 100000. Over it: accept, close */
    /* 0 (default): one SO_REUSEPORT listener per loop, the kernel spreads connections.
     * 1: one listener on loop 0 that hands connections to the loops round-robin (even
     * spread, at the cost of a cross-thread hand-off per connection). */
    int single_acceptor;
    pier_conn_limits_t limits;    /* for every accepted connection */
    /* TLS (tls.h): a server context; every accepted connection then speaks TLS only.
     * The server keeps its own reference. NULL: plain TCP. */
    pier_tls_ctx_t *tls;
    /* Called on the connection's loop for each accepted connection, before any read
     * (with tls: once the handshake is done); set callbacks and data here
     * (pier_conn_set_cbs). A connection left without callbacks is closed. */
    void (*on_accept)(pier_server_t *srv, pier_conn_t *c);
    void *data;                   /* pier_server_data() */
    pier_proxy_opts_t proxy;      /* PROXY protocol; off by default */
} pier_server_opts_t;

/* Creates a server that will listen on every loop of group (one SO_REUSEPORT socket per
 * loop; the kernel spreads connections). The group stays the caller's. Binds and
 * listens at once, so a port in use fails here: -EADDRINUSE, -EINVAL for a bad host.
 * Sockets given to pier_net_inherit for this host and port are used instead of binding
 * (with fewer of them than loops, loops share them). */
PIER_EXTERN int pier_server_new(pier_server_t **out, pier_group_t *group, const pier_server_opts_t *opts);
/* Starts accepting (thread-safe: posts to each loop). */
PIER_EXTERN int pier_server_start(pier_server_t *srv);
/* Stops accepting and closes the listeners (thread-safe); open connections stay. */
PIER_EXTERN void pier_server_stop(pier_server_t *srv);
/* Closes every open connection of this server gracefully (thread-safe). */
PIER_EXTERN void pier_server_close_all(pier_server_t *srv);
/* A drain for protocols that know which connections are between requests: closes
 * gracefully each open connection for which close_now(c) answers 1, on its own loop
 * (thread-safe); the others stay open for their owner to close once done. close_now
 * runs on each connection's loop and must not close or free anything itself. A call
 * made before an earlier close_all or close_if has run on some loop replaces its
 * filter there. */
PIER_EXTERN void pier_server_close_if(pier_server_t *srv, int (*close_now)(pier_conn_t *c));
/* Aborts (resets, dropping queued output) every open connection of this server
 * (thread-safe): what a shutdown does once its grace period is over. */
PIER_EXTERN void pier_server_abort_all(pier_server_t *srv);
/* Frees a stopped server once its listeners are closed and its connections have all
 * finished closing (their on_close has run); -EBUSY otherwise, and nothing is freed. */
PIER_EXTERN int pier_server_free(pier_server_t *srv);
PIER_EXTERN uint16_t pier_server_port(const pier_server_t *srv);
PIER_EXTERN void *pier_server_data(const pier_server_t *srv);
PIER_EXTERN unsigned pier_server_conns(const pier_server_t *srv);  /* open now */
PIER_EXTERN pier_server_t *pier_conn_server(const pier_conn_t *c);  /* NULL for clients */
/* Any thread: the server's PROXY header outcomes so far (all 0 when proxy is off). */
PIER_EXTERN void pier_server_proxy_stats(const pier_server_t *srv, pier_proxy_stats_t *out);

/* The listening sockets of srv, for handing them to another process (a binary upgrade):
 * at most max of them into fds, which stay the server's (close nothing; after
 * pier_server_stop they are closed). Returns how many there are, even if more than max. */
PIER_EXTERN unsigned pier_server_listen_fds(const pier_server_t *srv, int *fds, unsigned max);

/* ---- listening sockets made by someone else: socket activation, upgrades ---- */

/* Hands the library an already-listening TCP socket (bound, listen() called). A later
 * pier_server_new whose host and port it is bound to uses it instead of binding (with
 * port 0: the first socket on that host; a host of 0.0.0.0 or :: takes a socket on
 * either wildcard). The fd becomes the library's: it is made non-blocking and
 * close-on-exec, and closed by the server that takes it or by
 * pier_net_inherit_close_unused. Thread-safe. -ENOTSOCK if fd is not a listening
 * TCP/IP socket, -EBADF for a closed fd, -ENOSPC past 256 sockets. */
PIER_EXTERN int pier_net_inherit(int fd);
/* systemd socket activation: when LISTEN_PID is this process, hands fds 3 to
 * 3+LISTEN_FDS-1 to pier_net_inherit (LISTEN_FDNAMES is not needed: sockets match by
 * address). Removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment
 * either way. Returns how many sockets were taken (0 without activation). Call it
 * before creating servers and before starting threads (it changes the environment). */
PIER_EXTERN int pier_net_inherit_systemd(void);
/* Closes the inherited sockets no server has taken (logging each, since connections
 * queued on them are lost) and returns how many. Call once every server exists. */
PIER_EXTERN unsigned pier_net_inherit_close_unused(void);

/* ---- clients: connect with timeout, reconnect with exponential backoff and jitter ---- */

typedef struct pier_client_opts_s {
    const char *host;             /* numeric IPv4/IPv6 or a name; default 127.0.0.1 */
    uint16_t port;
    uint64_t connect_timeout_ms;  /* default 5000 */
    int reconnect;                /* 0: no; 1: reconnect after failure or close */
    uint64_t backoff_min_ms;      /* default 100 */
    uint64_t backoff_max_ms;      /* default 10000 */
    int max_retries;              /* consecutive failures before giving up; 0: forever */
    pier_conn_limits_t limits;
    /* TLS (tls.h): a client context; the connection is up only once the handshake is
     * done, and a failed handshake is a failed connect. The client keeps its own
     * reference. NULL: plain TCP. */
    pier_tls_ctx_t *tls;
    /* The name sent as SNI and checked against the server's certificate; default: host
     * when it is a name (an IP literal is checked against the certificate's addresses). */
    const char *tls_servername;
    /* The connection is up; set its callbacks here (pier_conn_set_cbs). */
    void (*on_connect)(pier_client_t *cl, pier_conn_t *c);
    /* A connect attempt failed (err < 0); will_retry says whether another comes. */
    void (*on_connect_error)(pier_client_t *cl, int err, int will_retry);
    void *data;
} pier_client_opts_t;

/* Creates a client on loop and starts connecting. The loop stays the caller's. */
PIER_EXTERN int pier_client_new(pier_client_t **out, pier_loop_t *loop, const pier_client_opts_t *opts);
/* Stops reconnecting and closes the current connection gracefully. */
PIER_EXTERN void pier_client_stop(pier_client_t *cl);
/* Frees a stopped client once its connection has closed; -EBUSY before. */
PIER_EXTERN int pier_client_free(pier_client_t *cl);
PIER_EXTERN pier_conn_t *pier_client_conn(const pier_client_t *cl);  /* NULL if not connected */
PIER_EXTERN void *pier_client_data(const pier_client_t *cl);
PIER_EXTERN unsigned pier_client_connects(const pier_client_t *cl); /* successful connects so far */
PIER_EXTERN pier_client_t *pier_conn_client(const pier_conn_t *c);  /* NULL for accepted ones */

#ifdef __cplusplus
}
#endif
#endif
