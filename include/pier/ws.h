/* pier WebSocket (RFC 6455), server side, on the HTTP router.
 *
 *   static void on_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
 *       pier_ws_send(ws, opcode, data, len);            echo
 *   }
 *   static const pier_ws_cbs_t cbs = {.on_message = on_message};
 *   pier_http_ws(srv, "/ws/echo", &cbs, NULL);
 *
 * What pier enforces, so that the application sees only whole, valid messages: the
 * handshake (400 for a bad one, 426 naming version 13 for another version), masked client
 * frames, fragmentation (control frames may come between fragments), text that is valid
 * UTF-8 (checked as the bytes arrive, across fragments), the close handshake with its code
 * and reason checked, automatic pongs, an idle ping whose pong must come in time, and a
 * maximum message size enforced on the declared length before anything is buffered. A
 * peer that breaks a rule gets a close frame with the code RFC 6455 names (1002 protocol
 * error, 1007 invalid data, 1009 too big) and its connection is closed.
 *
 * Lifetime: a pier_ws_t is the connection's, and lives from on_open to the return of
 * on_close; it is touched only on its loop. Other threads use its id (pier_ws_id) with
 * the *_id calls, which answer -ENOTCONN once it has gone.
 *
 * Backpressure: each connection's output is bounded by its water marks. While more than
 * out_high bytes wait for the peer, reading pauses (a peer that does not read cannot make
 * the server buffer its echoes), pier_ws_send answers -ENOBUFS without queuing anything,
 * and on_drain follows once the output is below out_low.
 */
#ifndef PIER_WS_H
#define PIER_WS_H

#include <stddef.h>
#include <stdint.h>
#include "http.h"
#include "net.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pier_ws_s pier_ws_t;

/* Opcodes (RFC 6455 5.2). Messages are TEXT or BINARY; PING and PONG may be sent too. */
enum {
    PIER_WS_TEXT = 0x1,
    PIER_WS_BINARY = 0x2,
    PIER_WS_CLOSE = 0x8,
    PIER_WS_PING = 0x9,
    PIER_WS_PONG = 0xA,
};

/* Close codes (RFC 6455 7.4.1) pier uses. */
enum {
    PIER_WS_NORMAL = 1000,
    PIER_WS_GOING_AWAY = 1001,
    PIER_WS_PROTOCOL_ERROR = 1002,
    PIER_WS_NO_STATUS = 1005,      /* on_close: the peer's close frame had no code */
    PIER_WS_ABNORMAL = 1006,       /* on_close: the connection ended without a close frame */
    PIER_WS_INVALID_DATA = 1007,
    PIER_WS_POLICY = 1008,
    PIER_WS_TOO_BIG = 1009,
    PIER_WS_INTERNAL = 1011,
};

/* Callbacks; all run on the connection's loop, any may be NULL. The struct must outlive
 * the endpoint (use static). */
typedef struct pier_ws_cbs_s {
    /* The handshake is done. pier_ws_send may be called from here on. */
    void (*on_open)(pier_ws_t *ws);
    /* A whole message: opcode PIER_WS_TEXT (data is valid UTF-8, not NUL-terminated) or
     * PIER_WS_BINARY. data is valid only during the call. */
    void (*on_message)(pier_ws_t *ws, int opcode, const void *data, size_t len);
    /* Exactly once, after on_open, when the connection has closed. code: the peer's close
     * code if it sent a close frame (PIER_WS_NO_STATUS if that had none), else the code
     * pier or the application closed with, else PIER_WS_ABNORMAL. reason: the matching
     * reason, NUL-terminated ("" if none). The pier_ws_t is freed after it returns. */
    void (*on_close)(pier_ws_t *ws, int code, const char *reason);
    /* The output fell below out_low after having been above out_high: sends are taken
     * again. */
    void (*on_drain)(pier_ws_t *ws);
} pier_ws_cbs_t;

/* What a send that cannot report back (by id from another thread) does when the
 * connection's output is above its high water mark. */
enum {
    PIER_WS_SLOW_DROP = 0,   /* drop that message for that connection (counted) */
    PIER_WS_SLOW_CLOSE = 1,  /* close the connection with 1008 */
};

/* Options of an endpoint; a zero field means its default. */
typedef struct pier_ws_opts_s {
    size_t max_message;     /* largest message, all fragments together (16 MiB); over: 1009 */
    uint64_t ping_ms;       /* ping after this long without input (30 s) */
    uint64_t pong_ms;       /* then close if nothing arrives within this (10 s) */
    uint64_t close_ms;      /* wait this long for the peer's answer to our close (5 s) */
    size_t out_high;        /* water marks of each connection's output (256 KiB, 64 KiB) */
    size_t out_low;
    int slow_policy;        /* PIER_WS_SLOW_DROP or PIER_WS_SLOW_CLOSE */
    /* permessage-deflate (RFC 7692, with zlib): 1 to accept it (server) or offer it
     * (client); 0, the default: never. A build without zlib never negotiates it. The
     * peer may send compressed messages or not, as it likes; its compressed messages are
     * inflated within max_message (a larger one is 1009, whatever its compressed size).
     * Ours are compressed from 128 bytes up, when that makes them smaller. */
    int deflate;
    /* The largest LZ77 window (9..15, 0: 15) our compressor uses, and the one we ask the
     * peer to use where the negotiation lets us: smaller saves memory, at some ratio. */
    int deflate_window_bits;
    /* 1: our compressor keeps its context from one message to the next (context
     * takeover): a better ratio on streams of similar messages, but a compressor per
     * connection (about 2^(bits+3) bytes: 256 KiB at 15) and a published message is then
     * compressed for each such subscriber. 0 (the default): server_no_context_takeover
     * (client_no_context_takeover on a client); each loop shares one compressor among its
     * connections, and a published message is compressed once for all subscribers that
     * agreed on the same window. */
    int deflate_takeover;
    /* Subprotocols the endpoint speaks, in order of preference, NULL-terminated (copied).
     * The first of them the client offers is chosen; none offered or none in common: no
     * subprotocol. */
    const char *const *protocols;
} pier_ws_opts_t;

/* Serves WebSocket on path (an exact route pattern, as for pier_http_route, for GET).
 * Call before pier_http_server_start(). ud is handed to every callback through
 * pier_ws_endpoint_ud() and stays the caller's. -EINVAL for a bad path or option, and the
 * errors of pier_http_route. */
PIER_EXTERN int pier_http_ws(pier_http_server_t *srv, const char *path, const pier_ws_cbs_t *cbs, void *ud);
PIER_EXTERN int pier_http_ws_opts(pier_http_server_t *srv, const char *path, const pier_ws_cbs_t *cbs, void *ud,
                                  const pier_ws_opts_t *opts);

/* ---- on the connection's loop ---- */

/* Sends one message (TEXT, BINARY) or control frame (PING, PONG; at most 125 bytes) as
 * one frame, header and payload queued as one unit; a message compressed if
 * permessage-deflate was agreed and it pays. TEXT must be valid UTF-8 (not checked). -ENOBUFS when the output is above out_high (nothing queued; on_drain
 * follows), -ENOTCONN once a close was sent or received, -EINVAL for a bad opcode or
 * size. A frame that cannot be queued (-ENOMEM) aborts the connection. */
PIER_EXTERN int pier_ws_send(pier_ws_t *ws, int opcode, const void *data, size_t len);
/* Starts the close handshake: sends a close frame with code (1000-1003, 1007-1014 or
 * 3000-4999) and reason (UTF-8, at most 123 bytes, may be NULL), and closes the TCP
 * connection when the peer answers, or after close_ms. Idempotent: -ENOTCONN once a
 * close was sent or received. -EINVAL for a bad code or reason. */
PIER_EXTERN int pier_ws_close(pier_ws_t *ws, int code, const char *reason);

PIER_EXTERN pier_id_t pier_ws_id(const pier_ws_t *ws);
PIER_EXTERN pier_conn_t *pier_ws_conn(const pier_ws_t *ws);
PIER_EXTERN void *pier_ws_endpoint_ud(const pier_ws_t *ws);
/* A pointer of the application's, per connection (NULL at first). */
PIER_EXTERN void *pier_ws_data(const pier_ws_t *ws);
PIER_EXTERN void pier_ws_set_data(pier_ws_t *ws, void *data);
/* The subprotocol chosen in the handshake, or NULL. */
PIER_EXTERN const char *pier_ws_protocol(const pier_ws_t *ws);
/* Messages dropped by the slow-consumer policy on this connection. */
PIER_EXTERN uint64_t pier_ws_dropped(const pier_ws_t *ws);

/* ---- any thread, any time ---- */

/* As pier_ws_send, through the connection's id: the data is copied and the frame queued
 * by the connection's loop in a later iteration (also when called on that loop), in the
 * order of the calls. -ENOTCONN if the id names no open connection, -EINVAL, -ENOMEM. A
 * connection that closes before its loop runs the send drops it. Since the caller cannot
 * be told, the output bound is applied on the loop by the endpoint's slow_policy. */
PIER_EXTERN int pier_ws_send_id(pier_id_t id, int opcode, const void *data, size_t len);
/* As pier_ws_close, through the id. */
PIER_EXTERN int pier_ws_close_id(pier_id_t id, int code, const char *reason);

/* ---- pub/sub ----
 *
 * Topics span every WebSocket endpoint of a server and every loop of its group. A
 * message published to a topic is framed once and the frame shared, not copied, by the
 * output queues of its subscribers; with permessage-deflate, compressed once per window
 * size and shared by the subscribers without server context takeover (the default). A subscriber whose output is above out_high misses
 * it, by its endpoint's slow_policy: dropped (counted in pier_ws_dropped) or closed with
 * 1008. A connection that closes leaves its topics; one that closes while a publish is
 * in flight is simply not reached. */

/* On the connection's loop, while it is open: ws receives what is published to topic
 * (a NUL-terminated name, copied) from now on. Subscribing twice is one subscription.
 * -ENOTCONN once a close was sent or received, -EINVAL, -ENOMEM. */
PIER_EXTERN int pier_ws_subscribe(pier_ws_t *ws, const char *topic);
/* On the connection's loop: -ENOENT if ws was not subscribed to topic. */
PIER_EXTERN int pier_ws_unsubscribe(pier_ws_t *ws, const char *topic);
/* Any thread, between the first pier_http_ws on srv and pier_http_server_free: sends a
 * message (TEXT or BINARY) to the subscribers of topic, queued by each loop in a later
 * iteration (also when called on a loop), in the order of the calls made by one thread.
 * The data is copied once. -ENOENT if srv has no WebSocket endpoint, -EINVAL, -ENOMEM. */
PIER_EXTERN int pier_ws_publish(pier_http_server_t *srv, const char *topic, int opcode, const void *data,
                                size_t len);

/* ---- client ----
 *
 *   pier_ws_client_opts_t o = {.url = "ws://127.0.0.1:8888/ws/echo"};
 *   pier_ws_client_new(&cl, loop, &o, &cbs, NULL);     on_open, then messages as above
 *
 * A client connects (pier_client_t beneath: connect timeout, reconnect with backoff),
 * sends the opening handshake with a random key and checks the server's
 * Sec-WebSocket-Accept, then runs the same connection as the server side, with the
 * same callbacks and calls (pier_ws_send, pier_ws_close, the *_id calls), except that its
 * frames are masked (with keys from getrandom) and the server's must not be. Each
 * connection is a new pier_ws_t: on_open, ..., on_close; with reconnect, the client then
 * connects again after a backoff. Everything runs on the client's loop. */

typedef struct pier_ws_client_s pier_ws_client_t;

typedef struct pier_ws_client_opts_s {
    /* ws://host[:port][/path] (port 80) or wss://... (port 443, needs tls); host a name,
     * an IPv4 address or [an IPv6 address]. Copied. */
    const char *url;
    /* wss://: a client context (tls.h), whose certificate checks apply to the URL's
     * host. The client keeps its own reference. */
    pier_tls_ctx_t *tls;
    /* As pier_client_opts_t: 0 means its default. reconnect: connect again after a
     * failed connect or handshake, and after a close; but a handshake the server refuses
     * with a 4xx other than 408 and 429 is not tried again (the answer would not change),
     * and max_retries counts refused handshakes in a row too. */
    uint64_t connect_timeout_ms;
    int reconnect;
    uint64_t backoff_min_ms, backoff_max_ms;
    int max_retries;
    /* The connection's rules (max_message, ping_ms, ...); protocols: offered, in order,
     * and the one the server chose is pier_ws_protocol(). */
    pier_ws_opts_t ws;
    /* A connect or handshake failed (err: the connect's error, -EPROTO for a response
     * that is not a valid 101, whose status pier_ws_client_status() tells); will_retry
     * says whether another attempt comes. */
    void (*on_connect_error)(pier_ws_client_t *cl, int err, int will_retry);
} pier_ws_client_opts_t;

/* Creates a client on loop and starts connecting; cbs (which must outlive the client)
 * and ud as for pier_http_ws. *out is the caller's: pier_ws_client_stop, then
 * pier_ws_client_free. -EINVAL for a bad URL or option (wss:// without tls included),
 * -ENOMEM, and the errors of pier_client_new. Loop thread. */
PIER_EXTERN int pier_ws_client_new(pier_ws_client_t **out, pier_loop_t *loop, const pier_ws_client_opts_t *opts,
                                   const pier_ws_cbs_t *cbs, void *ud);
/* The open connection, or NULL (connecting, or between connections). */
PIER_EXTERN pier_ws_t *pier_ws_client_ws(const pier_ws_client_t *cl);
/* The HTTP status of the last handshake response (101 for an accepted one), or 0 if none
 * came or it had none. */
PIER_EXTERN int pier_ws_client_status(const pier_ws_client_t *cl);
/* Stops reconnecting and ends the connection: a close handshake with 1000 when it is
 * open, else a plain close. */
PIER_EXTERN void pier_ws_client_stop(pier_ws_client_t *cl);
/* Frees a stopped client once its connection has closed; -EBUSY before. */
PIER_EXTERN int pier_ws_client_free(pier_ws_client_t *cl);

#ifdef __cplusplus
}
#endif
#endif
