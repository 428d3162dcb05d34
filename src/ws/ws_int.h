/* Internals of the WebSocket layer, shared by its files:
 *
 *   utf8.c       the UTF-8 validator: incremental, failing at the first impossible byte
 *   frame.c      the frame codec: header parsing and checks, headers, masking, close codes
 *   reader.c     reading a stream: frames checked, payloads unmasked and validated as they
 *                arrive, fragments joined into messages
 *   sha1.c       SHA-1 and base64, for Sec-WebSocket-Accept
 *   handshake.c  endpoints on the HTTP router and the opening handshake
 *   conn.c       a connection after the handshake: reading frames, messages, sends, the
 *                close handshake, pings
 *   pmd.c        permessage-deflate (RFC 7692): the negotiation, on both sides
 *   zlib.c       permessage-deflate: compressing and inflating messages (zlib_none.c
 *                without zlib: never negotiated)
 *   pubsub.c     topics and publishing
 */
#ifndef PIER_WS_INT_H
#define PIER_WS_INT_H

#include <pier/ws.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "base/buf.h"

/* ---- UTF-8 (utf8.c) ---- */

/* The validator's state: ACCEPT between characters, REJECT once the bytes can no longer
 * be UTF-8 (it stays there), any other value inside a character. */
enum { PIER__UTF8_ACCEPT = 0, PIER__UTF8_REJECT = 1 };

/* Feeds n bytes; returns the new state. Rejects at the first byte that no valid
 * continuation could follow (overlong forms, surrogates and code points above U+10FFFF
 * included), so a stream fed in pieces fails as early as the bytes allow. */
uint32_t pier__utf8_feed(uint32_t state, const uint8_t *p, size_t n);
static inline int pier__utf8_valid(const void *p, size_t n) {
    return pier__utf8_feed(PIER__UTF8_ACCEPT, p, n) == PIER__UTF8_ACCEPT;
}

/* ---- frames (frame.c) ---- */

#define PIER__WS_MAX_HEADER 14
#define PIER__WS_MAX_CONTROL 125
/* OR'ed into an opcode given to pier__ws_header: the frame's RSV1 bit, which marks the
 * first frame of a compressed message (RFC 7692 6) */
#define PIER__WS_RSV1 0x40

typedef struct pier__ws_frame_s {
    uint64_t len;      /* payload length */
    uint8_t mask[4];   /* masking key, if masked */
    uint8_t fin, rsv, opcode, masked;
    uint8_t hdr;       /* header length */
} pier__ws_frame_t;

/* Parses the header at buf: its length (2..14), 0 if more bytes are needed, -1 for a
 * 64-bit length with its top bit set. Nothing else is checked here. */
int pier__ws_parse(const uint8_t *buf, size_t len, pier__ws_frame_t *f);
/* The rules of RFC 6455 5 for a frame arriving while in_message (a fragmented message is
 * under way) with msg_len bytes of it so far: 0 if the frame may be taken, else the code
 * to fail with (1002, 1009). masked: what the peer must do (a client masks, a server
 * does not). deflate: permessage-deflate was negotiated, so RSV1 may mark the first frame
 * of a data message (and nothing else). */
int pier__ws_check(const pier__ws_frame_t *f, int in_message, uint64_t msg_len, uint64_t max_message,
                   int masked, int deflate);
/* Writes a final frame's header for opcode (with PIER__WS_RSV1 or not) and len into out
 * (PIER__WS_MAX_HEADER bytes); mask NULL for an unmasked frame. Returns its length.
 * Inline: it is on the path of every frame sent, and mostly two byte stores. */
static inline size_t pier__ws_header(uint8_t *out, int opcode, uint64_t len, const uint8_t *mask) {
    size_t n;
    out[0] = (uint8_t)(0x80 | (opcode & (0xF | PIER__WS_RSV1)));
    if (len < 126) {
        out[1] = (uint8_t)len;
        n = 2;
    } else if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask) {
        out[1] |= 0x80;
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}
/* dst = src XOR mask, for payload bytes starting at offset off of the frame. dst may be
 * src. */
void pier__ws_unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4], uint64_t off);
/* 1 if a peer may send code in a close frame (RFC 6455 7.4). */
int pier__ws_close_code_ok(unsigned code);

/* ---- permessage-deflate (pmd.c, zlib.c) ---- */

/* The configuration of one side (from pier_ws_opts_t). */
typedef struct pier__ws_pmd_cfg_s {
    int on;
    int bits;      /* the largest window we compress with, and ask the peer to (9..15) */
    int takeover;  /* our compressor keeps its context between messages */
} pier__ws_pmd_cfg_t;

/* What a connection agreed on, per direction (tx: our messages, rx: the peer's), and
 * its own zlib streams: made on first use, and only for a direction whose context lives
 * from one message to the next; a direction that starts afresh with each message uses
 * the loop's shared stream instead (pier__ws_zloop_t), so costs a connection nothing. */
typedef struct pier__ws_pmd_s {
    uint8_t tx_bits, rx_bits;   /* LZ77 window bits of our compressor, of the peer's */
    uint8_t tx_reset, rx_reset; /* no context takeover for that direction */
    void *tx, *rx;              /* own z_streams, or NULL */
} pier__ws_pmd_t;

/* Parsed parameters of one offer or response (RFC 7692 7). bits: 0 absent, -1 present
 * without a value, else 8..15. */
typedef struct pier__ws_pmd_params_s {
    int server_nct, client_nct;
    int server_bits, client_bits;
} pier__ws_pmd_params_t;

/* Server: picks the first acceptable permessage-deflate offer in the field value
 * v[0, n) (several offers, comma-separated; unknown, repeated or malformed parameters and
 * other extensions are declined), fills pmd and writes the Sec-WebSocket-Extensions
 * value for the response into resp (NUL-terminated). 1 if one was accepted, else 0. */
int pier__ws_pmd_accept(const char *v, size_t n, const pier__ws_pmd_cfg_t *cfg, pier__ws_pmd_t *pmd, char *resp,
                        size_t size);
/* Client: the offer to send (NUL-terminated into out). */
void pier__ws_pmd_offer(const pier__ws_pmd_cfg_t *cfg, char *out, size_t size);
/* Client: checks the server's Sec-WebSocket-Extensions value v[0, n) against our offer
 * and fills pmd: 0, or -EPROTO for anything we did not offer or cannot honour. */
int pier__ws_pmd_check(const char *v, size_t n, const pier__ws_pmd_cfg_t *cfg, pier__ws_pmd_t *pmd);
/* Parses one extension of a field value at *pp (up to end), its parameters into prm, and
 * moves *pp past it and its comma.
 * 1 for a well-formed permessage-deflate with known parameters, 0 for another extension
 * or unknown or bad parameters (declined), -1 for a malformed field (nothing after it can
 * be trusted). */
int pier__ws_pmd_parse(const char **pp, const char *end, pier__ws_pmd_params_t *prm);

/* 1 if pier was built with zlib, else 0 (permessage-deflate is then never negotiated). */
extern const int pier__ws_zlib;
/* Messages compressed so far, by every loop (the tests count how often a published
 * message is compressed). */
extern atomic_ulong pier__ws_deflate_count;

/* A loop's shared zlib streams and buffers (zlib.c), made on first use. */
typedef struct pier__ws_zloop_s pier__ws_zloop_t;
void pier__ws_zloop_free(pier__ws_zloop_t *zl);
/* After a compressed message was sent (tx) or delivered (rx): the loop's buffer for it
 * is freed if a large message grew it, so one large message does not pin its size on the
 * loop. Only what is no longer in use: an rx message may still be read while a tx one is
 * made from it. */
void pier__ws_zloop_trim_tx(pier__ws_zloop_t *zl);
void pier__ws_zloop_trim_rx(pier__ws_zloop_t *zl);
/* Bytes the loop's inflate output buffer holds (for the tests of the bound). */
size_t pier__ws_zloop_inflate_cap(const pier__ws_zloop_t *zl);
void pier__ws_pmd_free(pier__ws_pmd_t *pmd);

/* Compresses the message in[0, n) for pmd's peer (RFC 7692 7.2.1: a sync flush, its
 * last 4 bytes removed) into the loop's buffer: *out and *outlen, valid until the next
 * call on this loop. 0; 1 if it is better sent as it is (small, or no smaller compressed
 * and no context to keep in step); -ENOMEM (with an own stream: its context is lost, so
 * the connection cannot go on). */
int pier__ws_deflate(pier__ws_zloop_t **zl, pier__ws_pmd_t *pmd, const void *in, size_t n, const uint8_t **out,
                     size_t *outlen);
/* Inflates the compressed message in[0, n) into the loop's buffer, in bounded steps:
 * never more than max + 1 bytes of output are held. 0 with *out and *outlen, or the code
 * to fail with: 1009 over max, 1007 for data that is not DEFLATE, 1011 without memory. */
int pier__ws_inflate(pier__ws_zloop_t **zl, pier__ws_pmd_t *pmd, const uint8_t *in, size_t n, uint64_t max,
                     const uint8_t **out, size_t *outlen);

/* ---- reading a stream (reader.c) ---- */

/* Zero it, then set the fields above the line. The handlers return 0 to go on, or -1 to
 * stop reading (the connection is done). */
typedef struct pier__ws_reader_s {
    uint64_t max_message;
    int masked;            /* what the peer must do: 1 for a client's frames */
    pier__buf_t *scratch;  /* where whole one-frame messages are unmasked (shareable) */
    pier__ws_pmd_t *pmd;   /* permessage-deflate, if negotiated: RSV1 marks compressed messages */
    pier__ws_zloop_t **zl; /* with pmd: the loop's shared zlib state (made on first use) */
    /* a whole message: TEXT (valid UTF-8) or BINARY; data is never NULL */
    int (*on_message)(void *ctx, int opcode, const void *data, size_t len);
    /* a whole control frame, unmasked; a close frame's code and reason already checked */
    int (*on_control)(void *ctx, int opcode, const uint8_t *data, size_t len);
    void *ctx;
    /* ---- the reader's ---- */
    int code;              /* the close code that stopped the stream, or 0 */
    int in_frame, msg_op;  /* a data frame's payload is arriving; the message's opcode */
    int compressed;        /* the message under way had RSV1 on its first frame */
    pier__ws_frame_t f;
    uint64_t frame_done;
    uint32_t utf8;
    pier__buf_t msg;       /* the message gathered so far, unmasked */
} pier__ws_reader_t;

/* One step on the input p[0, n): returns bytes consumed, 0 if more bytes are needed
 * before anything can be taken, or -1 to stop: code is then the close code to fail the
 * connection with (1002, 1007, 1009, 1011), or 0 if a handler asked to stop. */
ssize_t pier__ws_read(pier__ws_reader_t *r, const uint8_t *p, size_t n);
void pier__ws_reader_free(pier__ws_reader_t *r);

/* ---- handshake helpers (sha1.c) ---- */

void pier__sha1(const void *data, size_t len, uint8_t out[20]);
/* Base64 of n bytes into out (4 * ceil(n / 3) + 1 bytes, NUL-terminated). */
void pier__base64(const uint8_t *in, size_t n, char *out);
/* Sec-WebSocket-Accept for a key: out needs 29 bytes. */
void pier__ws_accept(const char *key, size_t len, char out[29]);

/* ---- endpoints and connections ---- */

typedef struct pier__ws_hub_s pier__ws_hub_t;
typedef struct pier__ws_hub_loop_s pier__ws_hub_loop_t;


typedef struct pier__ws_loop_s {
    pier_loop_t *loop;
    pier__buf_t scratch; /* unmasked payload of whole messages delivered in place */
    pier__ws_zloop_t *z; /* permessage-deflate's shared streams, made on first use */
} pier__ws_loop_t;

typedef struct pier__ws_endpoint_s {
    pier_ws_cbs_t cbs;
    void *ud;
    uint64_t max_message, ping_ms, pong_ms, close_ms;
    size_t out_high, out_low;
    int slow_policy;
    pier__ws_pmd_cfg_t pmd;
    char **protocols;
    unsigned nprotocols, nloops;
    pier__ws_loop_t *loops;
    pier__ws_hub_t *hub;
} pier__ws_endpoint_t;

/* A connection; conn.c runs it, pubsub.c reads its state and output bound. */
#define WS_MAGIC 0x70776b73u /* tells a pier_ws_t from other connection data */

enum { WS_OPEN, WS_CLOSE_SENT, WS_DONE };

struct pier_ws_s {
    uint32_t magic;
    int state;
    pier_conn_t *c;
    struct pier__metrics_s *mx; /* the loop's counters, looked up once */
    pier__ws_endpoint_t *ep;
    pier__ws_loop_t *wl;
    const char *protocol;
    void *data;
    pier__ws_reader_t rd;
    /* liveness: a ping after ping_ms without input, and then pong_ms for an answer */
    pier_timer_t timer;
    uint64_t last_rx;
    int ping_out;
    /* the close handshake, for on_close */
    int opened, got_close, peer_code, our_code;
    uint64_t dropped;
    /* pub/sub (pubsub.c): this loop's topics, and the subscriptions of this connection */
    struct pier__ws_hub_loop_s *hl;
    struct pier__ws_sub_s *subs;
    int client;  /* our frames are masked (client.c) */
    int deflate; /* permessage-deflate was negotiated, as pmd says */
    pier__ws_pmd_t pmd;
    char reason[PIER__WS_MAX_CONTROL - 1]; /* the peer's (or ours), NUL-terminated */
};

/* Fails the connection (RFC 6455 7.1.7): a close frame with code, then the TCP close. */
void pier__ws_fail(pier_ws_t *ws, int code);
/* Queues one message or control frame as one unit, compressed if negotiated and worth
 * it, with no check of state or output bound; a failure aborts the connection. 0 or the
 * error. */
int pier__ws_put(pier_ws_t *ws, int opcode, const void *data, size_t len);

/* ---- random bytes (client.c) ---- */

/* n bytes from the kernel's generator, drawn in bulk and handed out from a per-thread
 * pool: 0, or -errno of getrandom. */
int pier__ws_random(void *out, size_t n);

/* ---- pub/sub (pubsub.c) ---- */

/* The hub of srv's endpoints (shared by all of them, made by the first): -ENOMEM. */
int pier__ws_hub_get(pier_http_server_t *srv, pier__ws_hub_t **out);
void pier__ws_hub_put(pier__ws_hub_t *hub);
pier__ws_hub_loop_t *pier__ws_hub_loop(pier__ws_hub_t *hub, unsigned i);
/* Drops every subscription of ws: on its close, before it is freed. */
void pier__ws_unsubscribe_all(pier_ws_t *ws);

/* The options of an endpoint (or a client's), defaults filled in: -EINVAL, -ENOMEM. */
int pier__ws_take_opts(pier__ws_endpoint_t *ep, const pier_ws_opts_t *o);
/* Frees what pier__ws_take_opts and an endpoint's loops hold, not ep itself. */
void pier__ws_endpoint_clear(pier__ws_endpoint_t *ep);

/* A connection that completed the handshake as protocol (NULL for none) on ep. */
pier_ws_t *pier__ws_new(pier__ws_endpoint_t *ep, const char *protocol);
/* The pier_http_upgrade_cb that makes it live. */
size_t pier__ws_take_over(pier_conn_t *c, void *ws, const char *rest, size_t len);

#endif
