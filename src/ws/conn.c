/* A WebSocket connection after its handshake: the reader (reader.c) fed from the
 * connection's input in place, messages and control frames acted on, frames sent, the
 * close handshake, and pings.
 *
 * on_read hands the input to the reader and returns the bytes it consumed, as any
 * protocol on a pier connection does: a partial header or control frame stays with the
 * core until more comes.
 *
 * Writing: every frame is one unit (header and payload): a server's through
 * pier_conn_writev, a client's masked copy as one buffer. A unit that cannot be queued
 * aborts the connection: its stream would be corrupt.
 *
 * States: OPEN; CLOSE_SENT (our close frame is out, we wait for the peer's; nothing more
 * is sent, but messages still arrive); DONE (the handshake is over or the connection
 * failed; input is dropped and the TCP connection is closing).
 */
#include "ws/ws_int.h"
#include "loop/layer.h"
#include "metrics/metrics.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const pier_conn_cbs_t ws_conn_cbs;

#define SMALL_FRAME 256 /* payloads up to this are copied behind their header */

/* ---- writing ---- */

static void free_frame(void *base, void *ud) {
    (void)ud;
    free(base);
}

/* A client's frame (RFC 6455 5.3): a fresh masking key each, so the payload is copied,
 * masked, behind its header; a large one is handed over rather than copied again. */
static int put_masked(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    uint8_t mask[4], small[PIER__WS_MAX_HEADER + 512];
    size_t cap = PIER__WS_MAX_HEADER + len;
    uint8_t *buf = cap <= sizeof small ? small : malloc(cap);
    if (!buf)
        return -ENOMEM;
    int err = pier__ws_random(mask, sizeof mask);
    if (err < 0) {
        if (buf != small)
            free(buf);
        return err;
    }
    size_t hl = pier__ws_header(buf, opcode, len, mask);
    if (len)
        pier__ws_unmask(buf + hl, data, len, mask, 0);
    if (buf == small)
        return pier_conn_write(ws->c, buf, hl + len);
    return pier_conn_write_ref(ws->c, buf, hl + len, free_frame, NULL);
}

/* A data message compressed, when permessage-deflate was negotiated and it pays: opcode
 * gets RSV1, and data the compressed bytes. 0, or -ENOMEM when a compressor whose
 * context the peer follows failed half-way. */
static int compress(pier_ws_t *ws, int *opcode, const void **data, size_t *len) {
    const uint8_t *z;
    size_t zl;
    if (!ws->deflate || (*opcode & 0x8))
        return 0; /* control frames are never compressed (RFC 7692 6.1) */
    int rc = pier__ws_deflate(&ws->wl->z, &ws->pmd, *data, *len, &z, &zl);
    if (rc == 0) {
        *opcode |= PIER__WS_RSV1;
        *data = z;
        *len = zl;
    }
    return rc < 0 ? rc : 0;
}

/* A server's frame. A short one is put together behind its header on the stack and goes
 * to the core as one buffer: the core's own path for a small write (a copy into its
 * output chunk) costs a fraction of the general one that a vector takes. */
static int put_plain(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    uint8_t buf[PIER__WS_MAX_HEADER + SMALL_FRAME];
    size_t hl = pier__ws_header(buf, opcode, len, NULL);
    if (len <= SMALL_FRAME) {
        if (len)
            memcpy(buf + hl, data, len);
        return pier_conn_write(ws->c, buf, hl + len);
    }
    struct iovec iov[2] = {{buf, hl}, {(void *)data, len}};
    return pier_conn_writev(ws->c, iov, 2);
}

static int put_frame(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    int err = compress(ws, &opcode, &data, &len);
    if (!err)
        err = ws->client ? put_masked(ws, opcode, data, len) : put_plain(ws, opcode, data, len);
    if (opcode & PIER__WS_RSV1) /* the compressed bytes are copied by now */
        pier__ws_zloop_trim_tx(ws->wl->z);
    if (err < 0) {
        ws->state = WS_DONE;
        pier_conn_abort(ws->c);
    }
    return err;
}

int pier__ws_put(pier_ws_t *ws, int opcode, const void *data, size_t len) { return put_frame(ws, opcode, data, len); }

static int put_close(pier_ws_t *ws, int code, const char *reason, size_t rl) {
    uint8_t body[PIER__WS_MAX_CONTROL];
    body[0] = (uint8_t)(code >> 8);
    body[1] = (uint8_t)code;
    if (rl) /* reason may be NULL then */
        memcpy(body + 2, reason, rl);
    ws->our_code = code;
    return put_frame(ws, PIER_WS_CLOSE, body, code ? 2 + rl : 0);
}

/* Fails the connection (RFC 6455 7.1.7): a close frame with code, then the TCP close. */
void pier__ws_fail(pier_ws_t *ws, int code) {
    if (ws->state == WS_DONE)
        return;
    int was_open = ws->state == WS_OPEN;
    ws->state = WS_DONE;
    if (was_open && put_close(ws, code, NULL, 0) < 0)
        return;
    ws->our_code = code;
    pier_conn_close(ws->c);
}

/* ---- reading (reader.c does the frames) ---- */

static void take_reason(pier_ws_t *ws, const uint8_t *p, size_t n) {
    if (n)
        memcpy(ws->reason, p, n);
    ws->reason[n] = '\0';
}

static int on_message(void *ctx, int opcode, const void *data, size_t len) {
    pier_ws_t *ws = ctx;
    pier__mx_inc(ws->mx, PIER__MX(ws_messages_in));
    /* also after our close: what the peer sent before its answer is still its say (RFC
     * 6455 1.4) */
    if (ws->state != WS_DONE && ws->ep->cbs.on_message)
        ws->ep->cbs.on_message(ws, opcode, data, len);
    return ws->state == WS_DONE || !pier_conn_is_open(ws->c) ? -1 : 0;
}

/* The peer's close frame, its code and reason checked by the reader (5.5.1): answered
 * with its code, unless it answers ours. Ends the reading either way. */
static int on_close_frame(pier_ws_t *ws, const uint8_t *p, size_t n) {
    int code = n >= 2 ? p[0] << 8 | p[1] : PIER_WS_NO_STATUS;
    ws->got_close = 1;
    ws->peer_code = code;
    take_reason(ws, p + 2, n > 2 ? n - 2 : 0);
    if (ws->state == WS_OPEN && put_close(ws, n >= 2 ? code : 0, NULL, 0) < 0)
        return -1;
    ws->state = WS_DONE;
    pier_conn_close(ws->c); /* 7.1.1: the server closes the TCP connection first */
    return -1;
}

static int on_control(void *ctx, int opcode, const uint8_t *p, size_t n) {
    pier_ws_t *ws = ctx;
    switch (opcode) {
    case PIER_WS_PING:
        /* a pong answers at once, bypassing the output bound: reading is paused above the
         * high water mark, so a peer cannot pile pongs up by not reading */
        return ws->state == WS_OPEN && put_frame(ws, PIER_WS_PONG, p, n) < 0 ? -1 : 0;
    case PIER_WS_PONG:
        return 0; /* any input proves the peer alive (on_read) */
    default:
        return on_close_frame(ws, p, n);
    }
}

static size_t on_read(pier_conn_t *c, const char *data, size_t len) {
    pier_ws_t *ws = pier_conn_data(c);
    if (!ws || ws->state == WS_DONE)
        return len;
    ws->last_rx = pier_loop_now(pier_conn_loop(c));
    ws->ping_out = 0;
    const uint8_t *p = (const uint8_t *)data;
    size_t off = 0;
    while (off < len) {
        /* the rest waits, unconsumed, while our answers exceed the high water mark: the
         * core has paused reading too and hands it back once the peer has read */
        if (pier_conn_queued(c) > ws->ep->out_high)
            break;
        ssize_t r = pier__ws_read(&ws->rd, p + off, len - off);
        if (r < 0) {
            if (ws->rd.code)
                pier__ws_fail(ws, ws->rd.code);
            return len;
        }
        if (r == 0)
            break;
        off += (size_t)r;
    }
    return off;
}

/* ---- liveness and closing ---- */

static void on_timer(pier_timer_t *t) {
    pier_ws_t *ws = t->data;
    if (ws->state != WS_OPEN || ws->ping_out) {
        /* the peer left our close unanswered, or our ping: it is gone or stuck */
        ws->state = WS_DONE;
        pier_conn_abort(ws->c);
        return;
    }
    uint64_t idle = pier_loop_now(pier_conn_loop(ws->c)) - ws->last_rx;
    if (idle < ws->ep->ping_ms) {
        pier_timer_start(t, ws->ep->ping_ms - idle, 0);
        return;
    }
    if (put_frame(ws, PIER_WS_PING, NULL, 0) < 0)
        return;
    ws->ping_out = 1;
    pier_timer_start(t, ws->ep->pong_ms, 0);
}

static void on_drain(pier_conn_t *c) {
    pier_ws_t *ws = pier_conn_data(c);
    if (ws && ws->state == WS_OPEN && ws->ep->cbs.on_drain)
        ws->ep->cbs.on_drain(ws);
}

static void on_conn_close(pier_conn_t *c, int err) {
    (void)err;
    pier_ws_t *ws = pier_conn_data(c);
    if (!ws)
        return;
    pier_timer_stop(&ws->timer);
    ws->state = WS_DONE;
    pier__ws_unsubscribe_all(ws);
    int code = ws->got_close ? ws->peer_code : ws->our_code ? ws->our_code : PIER_WS_ABNORMAL;
    if (ws->ep->cbs.on_close)
        ws->ep->cbs.on_close(ws, code, ws->reason);
    pier_conn_set_data(c, NULL);
    pier__ws_reader_free(&ws->rd);
    pier__ws_pmd_free(&ws->pmd);
    ws->magic = 0;
    free(ws);
}

static const pier_conn_cbs_t ws_conn_cbs = {
    .on_read = on_read,
    .on_drain = on_drain,
    .on_close = on_conn_close,
};

/* ---- the hand-over from HTTP ---- */

pier_ws_t *pier__ws_new(pier__ws_endpoint_t *ep, const char *protocol) {
    pier_ws_t *ws = calloc(1, sizeof *ws);
    if (ws) {
        ws->magic = WS_MAGIC;
        ws->ep = ep;
        ws->protocol = protocol;
        ws->rd = (pier__ws_reader_t){.max_message = ep->max_message, .masked = 1, .on_message = on_message,
                                     .on_control = on_control, .ctx = ws};
    }
    return ws;
}

static pier__ws_loop_t *loop_state(pier__ws_endpoint_t *ep, pier_loop_t *loop) {
    for (unsigned i = 0; i < ep->nloops; i++)
        if (ep->loops[i].loop == loop)
            return &ep->loops[i];
    return NULL;
}

size_t pier__ws_take_over(pier_conn_t *c, void *arg, const char *rest, size_t len) {
    pier_ws_t *ws = arg;
    pier__ws_endpoint_t *ep = ws->ep;
    pier_loop_t *loop = pier_conn_loop(c);
    ws->c = c;
    ws->mx = pier__loop_metrics(loop);
    ws->wl = loop_state(ep, loop);
    if (ws->wl) {
        ws->rd.scratch = &ws->wl->scratch;
        ws->rd.zl = &ws->wl->z;
        ws->rd.pmd = ws->deflate ? &ws->pmd : NULL;
        ws->hl = pier__ws_hub_loop(ep->hub, (unsigned)(ws->wl - ep->loops));
    }
    pier_conn_set_cbs(c, &ws_conn_cbs, ws);
    /* the core's idle timeout stays only as a backstop behind the ping and its pong */
    pier_conn_limits_t lim = {.out_high = ep->out_high, .out_low = ep->out_low,
                              .idle_ms = ep->ping_ms + ep->pong_ms + 1000};
    pier_conn_set_limits(c, &lim);
    pier_timer_init(loop, &ws->timer, on_timer, ws);
    pier_timer_start(&ws->timer, ep->ping_ms, 0);
    ws->last_rx = pier_loop_now(loop);
    ws->opened = 1;
    if (!ws->wl) { /* a loop outside the server's group: cannot happen */
        pier__ws_fail(ws, PIER_WS_INTERNAL);
        return len;
    }
    if (ep->cbs.on_open)
        ep->cbs.on_open(ws);
    return len ? on_read(c, rest, len) : 0;
}

/* ---- the public calls ---- */

static int valid_send(int opcode, size_t len) {
    if (opcode == PIER_WS_TEXT || opcode == PIER_WS_BINARY)
        return 1;
    return (opcode == PIER_WS_PING || opcode == PIER_WS_PONG) && len <= PIER__WS_MAX_CONTROL;
}

int pier_ws_send(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    if (!valid_send(opcode, len) || (len && !data))
        return -EINVAL;
    if (ws->state != WS_OPEN || !pier_conn_is_open(ws->c))
        return -ENOTCONN;
    if (pier_conn_queued(ws->c) > ws->ep->out_high)
        return -ENOBUFS;
    int err = put_frame(ws, opcode, data, len);
    if (err == 0)
        pier__mx_inc(ws->mx, PIER__MX(ws_messages_out));
    return err;
}

/* What the application may close with: a code a peer could send (so not 1005, 1006 or
 * 1015, which only report), and a reason that fits a control frame. */
static int valid_close(int code, const char *reason, size_t *rl) {
    *rl = reason ? strlen(reason) : 0;
    return pier__ws_close_code_ok((unsigned)code) && *rl <= PIER__WS_MAX_CONTROL - 2 &&
           (!reason || pier__utf8_valid(reason, *rl));
}

int pier_ws_close(pier_ws_t *ws, int code, const char *reason) {
    size_t rl;
    if (!valid_close(code, reason, &rl))
        return -EINVAL;
    if (ws->state != WS_OPEN || !pier_conn_is_open(ws->c))
        return -ENOTCONN;
    if (put_close(ws, code, reason ? reason : "", rl) < 0)
        return -ENOTCONN;
    take_reason(ws, (const uint8_t *)reason, rl);
    ws->state = WS_CLOSE_SENT;
    pier_timer_start(&ws->timer, ws->ep->close_ms, 0);
    return 0;
}

pier_id_t pier_ws_id(const pier_ws_t *ws) { return pier_conn_id(ws->c); }
pier_conn_t *pier_ws_conn(const pier_ws_t *ws) { return ws->c; }
void *pier_ws_endpoint_ud(const pier_ws_t *ws) { return ws->ep->ud; }
void *pier_ws_data(const pier_ws_t *ws) { return ws->data; }
void pier_ws_set_data(pier_ws_t *ws, void *data) { ws->data = data; }
const char *pier_ws_protocol(const pier_ws_t *ws) { return ws->protocol; }
uint64_t pier_ws_dropped(const pier_ws_t *ws) { return ws->dropped; }

/* ---- by id, from any thread ---- */

typedef struct id_op_s {
    int opcode; /* PIER_WS_CLOSE: close with code and data as the reason */
    int code;
    size_t len;
    char data[];
} id_op_t;

/* The live WebSocket on c, or NULL (c gone, or not a WebSocket connection). */
static pier_ws_t *ws_of(pier_conn_t *c) {
    pier_ws_t *ws = c ? pier_conn_data(c) : NULL;
    return ws && ws->magic == WS_MAGIC && pier_conn_is_open(c) ? ws : NULL;
}

static void id_op_run(pier_conn_t *c, void *arg) {
    id_op_t *op = arg;
    pier_ws_t *ws = ws_of(c);
    if (ws && op->opcode == PIER_WS_CLOSE) {
        pier_ws_close(ws, op->code, op->data);
    } else if (ws && pier_ws_send(ws, op->opcode, op->data, op->len) == -ENOBUFS) {
        ws->dropped++;
        if (ws->ep->slow_policy == PIER_WS_SLOW_CLOSE)
            pier__ws_fail(ws, PIER_WS_POLICY);
    }
    free(op);
}

static int post_op(pier_id_t id, int opcode, int code, const void *data, size_t len) {
    id_op_t *op = malloc(sizeof *op + len + 1);
    if (!op)
        return -ENOMEM;
    op->opcode = opcode;
    op->code = code;
    op->len = len;
    if (len)
        memcpy(op->data, data, len);
    op->data[len] = '\0';
    int err = pier_with_conn(id, id_op_run, op); /* id_op_run frees op once posted */
    if (err < 0)
        free(op);
    return err;
}

int pier_ws_send_id(pier_id_t id, int opcode, const void *data, size_t len) {
    if (!valid_send(opcode, len) || (len && !data))
        return -EINVAL;
    return post_op(id, opcode, 0, data, len);
}

int pier_ws_close_id(pier_id_t id, int code, const char *reason) {
    size_t rl;
    if (!valid_close(code, reason, &rl))
        return -EINVAL;
    return post_op(id, PIER_WS_CLOSE, code, reason, rl);
}
