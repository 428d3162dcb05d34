/* pier messages: a frame codec, a message server that dispatches by id (on the loop or on
 * a worker pool), heartbeats, and a reconnecting message client.
 *
 * Frames. The default ("narrow") frame is the 4-byte header
 *     [id: u16 big-endian][length: u16 big-endian][body: length bytes]
 * and the wide variant has a 6-byte header with a u32 length:
 *     [id: u16 big-endian][length: u32 big-endian][body: length bytes]
 * Id 0 is reserved and never valid. The codec checks a header as soon as it is complete,
 * so an oversize frame is refused before its body arrives.
 *
 * Errors: functions return 0 (or a count) or a negative errno; pier_strerror() names it.
 *   -EMSGSIZE  a frame's length is over the codec's max_body
 *   -EBADMSG   a frame's id is outside [id_min, id_max]
 */
#ifndef PIER_MSG_H
#define PIER_MSG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "loop.h"
#include "net.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the frame codec: stateless, allocation-free, any thread ---- */

#define PIER_MSG_HDR 4          /* narrow header size */
#define PIER_MSG_HDR_WIDE 6     /* wide header size */
#define PIER_MSG_MAX_BODY 2048  /* default max_body */

/* Limits of a codec. A zero field means its default, so `{0}` is the original protocol:
 * narrow header, bodies up to 2048 bytes, ids 1..65535. Plain data: copy it freely. */
typedef struct pier_msg_codec_s {
    uint32_t max_body; /* largest body accepted (2048); at most 65535 unless wide */
    uint16_t id_min;   /* smallest valid id (1) */
    uint16_t id_max;   /* largest valid id (65535) */
    int wide;          /* 0: u16 length, 4-byte header; 1: u32 length, 6-byte header */
} pier_msg_codec_t;

/* One decoded frame. body points into the caller's bytes (parse in place): it is valid
 * only as long as those bytes are. */
typedef struct pier_msg_frame_s {
    uint16_t id;
    uint32_t len;
    const char *body;
} pier_msg_frame_t;

/* The codec with its defaults filled in. -EINVAL if a narrow codec asks for a max_body
 * over 65535 or id_min > id_max. */
PIER_EXTERN int pier_msg_codec_check(const pier_msg_codec_t *in, pier_msg_codec_t *out);

/* Header size of the codec: 4 or 6. */
PIER_EXTERN size_t pier_msg_hdr_size(const pier_msg_codec_t *codec);

/* Decodes one frame from the start of data[0..len).
 * Returns the size of the whole frame (header + body) with *f filled in; 0 if the frame is
 * not complete yet (nothing consumed: call again with more bytes, from the same start);
 * -EMSGSIZE or -EBADMSG as soon as the header shows it (the stream cannot resync: close
 * the connection). codec NULL means the defaults. */
PIER_EXTERN ssize_t pier_msg_decode(const pier_msg_codec_t *codec, const void *data, size_t len,
                                    pier_msg_frame_t *f);

/* Called for each frame by pier_msg_decode_all(). Return 0 to go on; > 0 to stop after
 * this frame (it counts as consumed); < 0 to stop before it (not consumed: it will be
 * decoded again from the same bytes next time). */
typedef int (*pier_msg_frame_cb)(const pier_msg_frame_t *f, void *ud);

/* Decodes every complete frame in data[0..len) and calls cb for each, in order. This is the
 * shape of a connection's on_read: *consumed is set to the bytes of the frames consumed
 * (whole frames only; a partial frame at the end stays unconsumed). Returns the number of
 * frames consumed, or a negative error from pier_msg_decode() for the frame after them
 * (*consumed still counts the good frames before it, which were delivered). */
PIER_EXTERN ssize_t pier_msg_decode_all(const pier_msg_codec_t *codec, const void *data, size_t len,
                                        size_t *consumed, pier_msg_frame_cb cb, void *ud);

/* Writes the header of a frame (id, body_len) into hdr (room for 6 bytes). Returns the
 * header size, -EMSGSIZE if body_len is over max_body, -EBADMSG for an id out of range. */
PIER_EXTERN ssize_t pier_msg_encode_hdr(const pier_msg_codec_t *codec, uint16_t id, size_t body_len,
                                        void *hdr);

/* Writes a whole frame into out[0..size). Returns its size, the errors of
 * pier_msg_encode_hdr(), or -ENOBUFS if size is too small. */
PIER_EXTERN ssize_t pier_msg_encode(const pier_msg_codec_t *codec, uint16_t id, const void *body,
                                    size_t body_len, void *out, size_t size);

/* ---- the message server ---- */

typedef struct pier_msg_server_s pier_msg_server_t;

/* What to do with a connection whose queued output would go over out_max. */
enum {
    PIER_MSG_OUT_CLOSE = 0, /* abort the connection (counted in stats.out_closed) */
    PIER_MSG_OUT_DROP = 1,  /* drop the reply (counted in stats.out_dropped) */
};

/* Default ping id. The server answers each ping with a pong (empty bodies) at once, on
 * the loop: with workers, a pong may overtake replies to earlier messages. */
#define PIER_MSG_PING 1
#define PIER_MSG_PONG 2 /* default pong id */

/* A message as a handler sees it. Valid only during the handler call: copy what you keep.
 * conn is the connection's id; it may name a connection that has gone by the time you
 * use it (the id-based calls then answer -ENOTCONN). */
typedef struct pier_msg_s {
    pier_msg_server_t *srv;
    pier_id_t conn;
    uint16_t id;
    uint32_t len;
    const char *body;
    void *priv_; /* pier's; do not touch */
} pier_msg_t;

/* A handler. Runs on the connection's loop (workers == 0) or on a worker thread; in both
 * cases the messages of one connection are handled one at a time, in arrival order. */
typedef void (*pier_msg_handler_cb)(const pier_msg_t *m, void *ud);

typedef struct pier_msg_server_opts_s {
    const char *host;          /* default 127.0.0.1 */
    uint16_t port;             /* 0: ephemeral, see pier_msg_server_port() */
    int backlog;               /* default 1024 */
    unsigned max_conns;        /* default 100000 */
    pier_msg_codec_t codec;    /* frame limits; {0} is the default protocol */
    unsigned workers;          /* 0: handlers run on the loops; N: on N worker threads */
    /* How far the server reads ahead of its workers. A message counts from the moment its
     * frame is read until its handler has finished and its replies are queued. A
     * connection at a bound is not read (its bytes wait in the socket) until there is
     * room again, so memory stays bounded and a drain has only this much left to do. */
    unsigned queue_max;        /* per worker, messages waiting (default 4096) */
    unsigned inflight_max;     /* per connection (default 256); reading resumes once half
                                * of them are done */
    unsigned inflight_total;   /* in all, split evenly between the loops (default 256 per
                                * worker); once half of a loop's share is free, the
                                * connections waiting for it resume in turn (FIFO), each
                                * with a part of the room */
    size_t out_max;            /* per connection, queued output bytes (default 1 MiB) */
    int out_policy;            /* PIER_MSG_OUT_CLOSE (default) or PIER_MSG_OUT_DROP */
    uint64_t heartbeat_ms;     /* S: a connection silent for 3*S is closed; 0: never. Time
                                * in which the server itself is not reading it (waiting
                                * for workers) does not count as silence. */
    uint16_t ping_id;          /* default PIER_MSG_PING */
    uint16_t pong_id;          /* default PIER_MSG_PONG */
    int log_unknown;           /* 1 (default 0): log each unknown id, not only the first */
    void *data;                /* pier_msg_server_data() */
    pier_tls_ctx_t *tls;       /* TLS: a server context (tls.h); NULL: plain TCP */
    pier_proxy_opts_t proxy;   /* PROXY protocol (net.h); off by default */
} pier_msg_server_opts_t;

/* Counters, summed over loops and workers; read with pier_msg_server_stats(). */
typedef struct pier_msg_stats_s {
    uint64_t conns;        /* accepted so far */
    uint64_t msgs;         /* frames received (pings included) */
    uint64_t handled;      /* handler calls finished */
    uint64_t unknown;      /* frames with an id that has no handler */
    uint64_t bad_frames;   /* connections closed for a bad frame */
    uint64_t timeouts;     /* connections closed by the heartbeat */
    uint64_t out_dropped;  /* replies dropped by PIER_MSG_OUT_DROP */
    uint64_t out_closed;   /* connections closed by PIER_MSG_OUT_CLOSE */
    uint64_t replies_lost; /* messages whose replies found their connection gone */
    uint64_t abandoned;    /* messages read but dropped unhandled: a drain gave up on them */
} pier_msg_stats_t;

/* Creates a message server on every loop of group and binds its port at once: -EADDRINUSE,
 * -EINVAL (bad host or codec), -ENOMEM, or an error starting the worker threads. The
 * group stays the caller's; *out is freed with pier_msg_server_free(). Not accepting yet:
 * register handlers, then pier_msg_server_start(). Call before pier_group_run(). */
PIER_EXTERN int pier_msg_server_new(pier_msg_server_t **out, pier_group_t *group,
                                    const pier_msg_server_opts_t *opts);

/* Routes frames with this id to handler(m, ud). Before pier_msg_server_start() only (the
 * table is then read without locks). A second call for an id replaces the first; a NULL
 * handler removes it. -EINVAL for id 0 or the ping/pong ids, -EBUSY once started. */
PIER_EXTERN int pier_msg_on(pier_msg_server_t *srv, uint16_t id, pier_msg_handler_cb handler, void *ud);

/* Starts accepting. Any thread. */
PIER_EXTERN int pier_msg_server_start(pier_msg_server_t *srv);

/* Replies to m's connection with a frame (id, body). Only inside the handler call, on its
 * thread (m is gone afterwards: reply later with pier_msg_send(m->srv, m->conn, ...)).
 * Replies keep the message order: all replies to message k go out before those to k+1.
 * The body is copied. On the loop the frame is queued at once: -ENOTCONN if the
 * connection is closing. On a worker the frames are gathered and handed to the loop when
 * the handler returns, so this never answers -ENOTCONN there; if the connection has gone
 * by then they are dropped and counted in stats.replies_lost. -EMSGSIZE/-EBADMSG for a
 * frame the codec refuses, -ENOMEM. A reply over the output limit follows out_policy and
 * still returns 0 (it is counted). */
PIER_EXTERN int pier_msg_reply(const pier_msg_t *m, uint16_t id, const void *body, size_t len);

/* Sends a frame to a connection by id. Any thread, any time; the frame is queued by the
 * connection's loop in a later iteration. Ordered after earlier pier_msg_send calls from
 * the same thread to the same id, and after the replies of a handler that calls it for
 * its own connection; not against handlers still running on other threads. Errors as
 * pier_msg_reply(), where -ENOTCONN means the id was already stale (a connection that
 * goes or starts closing after the call drops the frame, counted in stats.replies_lost;
 * so is a frame its loop fails to queue, which also aborts the connection). */
PIER_EXTERN int pier_msg_send(pier_msg_server_t *srv, pier_id_t conn, uint16_t id, const void *body,
                              size_t len);

/* Graceful drain. Any thread (also a signal callback). Stops accepting, stops reading,
 * lets messages already read finish in the handlers, flushes their replies and closes
 * every connection gracefully (connections that cannot flush within the close timeout are
 * aborted by the core). The inflight bounds keep what is left to handle small. If the
 * handlers have not finished after 15 s, messages not yet started are dropped (counted
 * in stats.abandoned) and the connections are closed anyway. The loops must keep
 * running; pier_msg_server_active() reaches 0 when it is done. Idempotent. */
PIER_EXTERN void pier_msg_server_drain(pier_msg_server_t *srv);

/* Open connections plus messages still being handled. Any thread. */
PIER_EXTERN unsigned pier_msg_server_active(const pier_msg_server_t *srv);

/* As pier_msg_server_drain(), then pier_group_stop() on the group once the drain is done
 * (or after 15 s), so pier_group_run() returns. For programs that run only this server
 * on their group. Idempotent. */
PIER_EXTERN void pier_msg_server_shutdown(pier_msg_server_t *srv);

/* Frees a server once pier_group_run() has returned (or it never ran): joins the workers
 * and frees the listener. -EBUSY (nothing freed) while connections or listeners are
 * still open, or while messages are still in the workers or on their way back to a loop
 * (or pier_msg_send frames not yet run by their loop): abort the connections
 * (pier_server_abort_all(pier_msg_server_net(srv))), run the loops until their on_close
 * has run and pier_msg_server_active() is 0, and call again. */
PIER_EXTERN int pier_msg_server_free(pier_msg_server_t *srv);

/* Any thread. The port actually bound (useful with port 0). */
PIER_EXTERN uint16_t pier_msg_server_port(const pier_msg_server_t *srv);
PIER_EXTERN void *pier_msg_server_data(const pier_msg_server_t *srv);
/* The underlying net server (still the msg server's: do not free it, do not change its
 * callbacks). For pier_server_conns(), pier_server_abort_all() and the like. */
PIER_EXTERN pier_server_t *pier_msg_server_net(const pier_msg_server_t *srv);
/* Any thread; the counters are read without stopping anything, so may be slightly behind. */
PIER_EXTERN void pier_msg_server_stats(const pier_msg_server_t *srv, pier_msg_stats_t *out);

/* ---- the message client: one connection that reconnects, with heartbeat ---- */

typedef struct pier_msg_client_s pier_msg_client_t;

typedef struct pier_msg_client_opts_s {
    const char *host;          /* default 127.0.0.1 */
    uint16_t port;
    pier_msg_codec_t codec;
    uint64_t heartbeat_ms;     /* S: ping after S idle; close (and reconnect) after 3*S silent */
    uint16_t ping_id;          /* default PIER_MSG_PING */
    uint16_t pong_id;          /* default PIER_MSG_PONG */
    uint64_t backoff_min_ms;   /* default 100 */
    uint64_t backoff_max_ms;   /* default 10000 */
    int max_retries;           /* consecutive failed connects before giving up; 0: forever */
    /* TLS (tls.h): a client context, and the name to check (and send as SNI); as
     * pier_client_opts_t.tls and .tls_servername. NULL: plain TCP. */
    pier_tls_ctx_t *tls;
    const char *tls_servername;
    /* All callbacks run on the client's loop. */
    void (*on_up)(pier_msg_client_t *mc);                 /* connected (again) */
    void (*on_down)(pier_msg_client_t *mc, int err);      /* connection lost; err as on_close */
    /* a frame from the server (pongs are not passed on); body valid during the call only */
    void (*on_msg)(pier_msg_client_t *mc, uint16_t id, const char *body, size_t len);
    /* a connect attempt failed; will_retry is 0 when the client has given up */
    void (*on_connect_error)(pier_msg_client_t *mc, int err, int will_retry);
    void *data;
} pier_msg_client_opts_t;

/* Creates a client on loop and starts connecting. Loop thread (or before the loop runs).
 * The loop stays the caller's; *out is freed with pier_msg_client_free(). -EINVAL for a
 * bad codec, -ENOMEM, or an error of pier_client_new(). */
PIER_EXTERN int pier_msg_client_new(pier_msg_client_t **out, pier_loop_t *loop,
                                    const pier_msg_client_opts_t *opts);

/* Queues one frame to the server, whole (as one write) or not at all. Loop thread.
 * -ENOTCONN while not connected (nothing is queued across reconnects: resending is the
 * caller's choice), codec errors. -ENOMEM: nothing of the frame was queued and the
 * connection goes on, so the frame may be sent again later; but if part of it had
 * already gone out, the core has aborted the connection (on_down runs, then the client
 * reconnects as usual), since the server could not find the next frame after it. */
PIER_EXTERN int pier_msg_client_send(pier_msg_client_t *mc, uint16_t id, const void *body, size_t len);

/* 1 while connected. */
PIER_EXTERN int pier_msg_client_up(const pier_msg_client_t *mc);
/* Bytes queued to the server and not yet written (0 while down). */
PIER_EXTERN size_t pier_msg_client_queued(const pier_msg_client_t *mc);
PIER_EXTERN void *pier_msg_client_data(const pier_msg_client_t *mc);
PIER_EXTERN unsigned pier_msg_client_connects(const pier_msg_client_t *mc);

/* Stops reconnecting, stops the heartbeat and closes the connection gracefully. Loop
 * thread. Idempotent. on_down still runs for the connection being closed. */
PIER_EXTERN void pier_msg_client_stop(pier_msg_client_t *mc);

/* Frees a stopped client once its connection has closed; -EBUSY before (run the loop a
 * little and retry). */
PIER_EXTERN int pier_msg_client_free(pier_msg_client_t *mc);

#ifdef __cplusplus
}
#endif
#endif
