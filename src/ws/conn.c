/* A WebSocket connection after its handshake: frames read in place from the connection's
 * input, messages assembled and checked, frames sent, the close handshake, and pings.
 *
 * Reading: on_read parses each frame header where it lies in the input and returns the
 * bytes it consumed, as any protocol on a pier connection does. A data frame's payload is
 * taken as it arrives, unmasked and (for text) validated on the way, so invalid UTF-8
 * fails the connection at the first impossible byte even inside one large frame, and a
 * frame's declared length is checked against the message limit before any of it is kept.
 * A message whose only frame lies whole in the input is unmasked into the loop's scratch
 * buffer and delivered from there; only a fragmented message, or one still arriving,
 * gets a buffer of the connection's own, freed when it is delivered. A control frame (at
 * most 125 bytes) is taken once it is whole; until then its bytes stay with the core.
 *
 * Writing: every frame is one pier_conn_writev unit (header and payload). A unit that
 * cannot be queued aborts the connection: its stream would be corrupt.
 *
 * States: OPEN; CLOSE_SENT (our close frame is out, we wait for the peer's, nothing more
 * is sent); DONE (the handshake is over or the connection failed; input is dropped and
 * the TCP connection is closing).
 */
#include "ws/ws_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define WS_MAGIC 0x70776b73u /* tells a pier_ws_t from other connection data */
#define TRIM_ABOVE 65536     /* buffers larger than this are freed after their message */

enum { WS_OPEN, WS_CLOSE_SENT, WS_DONE };

struct pier_ws_s {
    uint32_t magic;
    int state;
    pier_conn_t *c;
    pier__ws_endpoint_t *ep;
    pier__ws_loop_t *wl;
    const char *protocol;
    void *data;
    /* the data frame whose payload is arriving */
    int in_frame;
    pier__ws_frame_t f;
    uint64_t frame_done;
    /* the message being assembled: msg_op 0 when none */
    int msg_op;
    uint32_t utf8;
    pier__buf_t msg;
    /* liveness: a ping after ping_ms without input, and then pong_ms for an answer */
    pier_timer_t timer;
    uint64_t last_rx;
    int ping_out;
    /* the close handshake, for on_close */
    int opened, got_close, peer_code, our_code;
    uint64_t dropped;
    char reason[PIER__WS_MAX_CONTROL - 1]; /* the peer's (or ours), NUL-terminated */
};

static const pier_conn_cbs_t ws_conn_cbs;

/* ---- writing ---- */

static int put_frame(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    uint8_t h[PIER__WS_MAX_HEADER];
    struct iovec iov[2] = {{h, pier__ws_header(h, opcode, len, NULL)}, {(void *)data, len}};
    int err = pier_conn_writev(ws->c, iov, len ? 2 : 1);
    if (err < 0) {
        ws->state = WS_DONE;
        pier_conn_abort(ws->c);
    }
    return err;
}

static int put_close(pier_ws_t *ws, int code, const char *reason, size_t rl) {
    uint8_t body[PIER__WS_MAX_CONTROL];
    body[0] = (uint8_t)(code >> 8);
    body[1] = (uint8_t)code;
    memcpy(body + 2, reason, rl);
    ws->our_code = code;
    return put_frame(ws, PIER_WS_CLOSE, body, code ? 2 + rl : 0);
}

/* Fails the connection (RFC 6455 7.1.7): a close frame with code, then the TCP close. */
static void fail(pier_ws_t *ws, int code) {
    if (ws->state == WS_DONE)
        return;
    int was_open = ws->state == WS_OPEN;
    ws->state = WS_DONE;
    if (was_open && put_close(ws, code, NULL, 0) < 0)
        return;
    ws->our_code = code;
    pier_conn_close(ws->c);
}

/* ---- reading ---- */

static void deliver(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    if (ws->state == WS_OPEN && ws->ep->cbs.on_message)
        ws->ep->cbs.on_message(ws, opcode, len ? data : "", len); /* never NULL */
}

static void take_reason(pier_ws_t *ws, const uint8_t *p, size_t n) {
    if (n)
        memcpy(ws->reason, p, n);
    ws->reason[n] = '\0';
}

/* The peer's close frame (5.5.1): answered with its code, unless it answers ours. */
static int on_close_frame(pier_ws_t *ws, const uint8_t *p, size_t n) {
    unsigned code = n >= 2 ? (unsigned)p[0] << 8 | p[1] : PIER_WS_NO_STATUS;
    if (n == 1 || (n >= 2 && !pier__ws_close_code_ok(code))) {
        fail(ws, PIER_WS_PROTOCOL_ERROR);
        return -1;
    }
    if (n > 2 && !pier__utf8_valid(p + 2, n - 2)) {
        fail(ws, PIER_WS_INVALID_DATA);
        return -1;
    }
    ws->got_close = 1;
    ws->peer_code = (int)code;
    take_reason(ws, p + 2, n > 2 ? n - 2 : 0);
    if (ws->state == WS_OPEN && put_close(ws, n >= 2 ? (int)code : 0, NULL, 0) < 0)
        return -1;
    ws->state = WS_DONE;
    /* 7.1.1: the server closes the TCP connection first */
    pier_conn_close(ws->c);
    return -1;
}

/* A whole control frame, its payload unmasked in p. 0, or -1 once the connection is done. */
static int on_control(pier_ws_t *ws, int opcode, const uint8_t *p, size_t n) {
    switch (opcode) {
    case PIER_WS_PING:
        /* a pong answers at once, bypassing the output bound: reading is paused above the
         * high water mark, so a peer cannot pile pongs up by not reading */
        if (ws->state == WS_OPEN && put_frame(ws, PIER_WS_PONG, p, n) < 0)
            return -1;
        return 0;
    case PIER_WS_PONG:
        return 0; /* any input proves the peer alive (on_read) */
    default:
        return on_close_frame(ws, p, n);
    }
}

static void message_done(pier_ws_t *ws) {
    pier__buf_reset(&ws->msg);
    if (ws->msg.cap > TRIM_ABOVE)
        pier__buf_free(&ws->msg);
    ws->msg_op = 0;
}

/* The current data frame's payload is complete. */
static int frame_done(pier_ws_t *ws) {
    ws->in_frame = 0;
    if (!ws->f.fin)
        return 0;
    if (ws->msg_op == PIER_WS_TEXT && ws->utf8 != PIER__UTF8_ACCEPT) {
        fail(ws, PIER_WS_INVALID_DATA); /* the message ends inside a character */
        return -1;
    }
    deliver(ws, ws->msg_op, ws->msg.p, ws->msg.len);
    message_done(ws);
    return 0;
}

/* Payload bytes of the current data frame. Returns bytes consumed or -1. */
static ssize_t payload(pier_ws_t *ws, const uint8_t *p, size_t n) {
    uint64_t left = ws->f.len - ws->frame_done;
    size_t k = n < left ? n : (size_t)left;
    if (pier__buf_reserve(&ws->msg, k) < 0) {
        fail(ws, PIER_WS_INTERNAL);
        return -1;
    }
    uint8_t *dst = (uint8_t *)ws->msg.p + ws->msg.len;
    pier__ws_unmask(dst, p, k, ws->f.mask, ws->frame_done);
    if (ws->msg_op == PIER_WS_TEXT && (ws->utf8 = pier__utf8_feed(ws->utf8, dst, k)) == PIER__UTF8_REJECT) {
        fail(ws, PIER_WS_INVALID_DATA);
        return -1;
    }
    ws->msg.len += k;
    ws->frame_done += k;
    if (ws->frame_done == ws->f.len && frame_done(ws) < 0)
        return -1;
    return (ssize_t)k;
}

/* A one-frame message lying whole in the input: unmasked into the loop's scratch buffer
 * and delivered without a buffer of the connection's own. */
static int whole_message(pier_ws_t *ws, const pier__ws_frame_t *f, const uint8_t *p) {
    pier__buf_t *s = &ws->wl->scratch;
    pier__buf_reset(s);
    if (pier__buf_reserve(s, (size_t)f->len) < 0) {
        fail(ws, PIER_WS_INTERNAL);
        return -1;
    }
    pier__ws_unmask((uint8_t *)s->p, p, (size_t)f->len, f->mask, 0);
    if (f->opcode == PIER_WS_TEXT && !pier__utf8_valid(s->p, (size_t)f->len)) {
        fail(ws, PIER_WS_INVALID_DATA);
        return -1;
    }
    deliver(ws, f->opcode, s->p, (size_t)f->len);
    if (s->cap > (1u << 20))
        pier__buf_free(s); /* one huge message should not pin its size on the loop */
    return 0;
}

/* A frame header at p. Returns bytes consumed (0: wait for more) or -1. */
static ssize_t frame(pier_ws_t *ws, const uint8_t *p, size_t n) {
    pier__ws_frame_t f;
    int h = pier__ws_parse(p, n, &f);
    if (h == 0)
        return 0;
    int code = h < 0 ? PIER_WS_PROTOCOL_ERROR
                     : pier__ws_check(&f, ws->msg_op != 0, ws->msg.len, ws->ep->max_message, 1);
    if (code) {
        fail(ws, code);
        return -1;
    }
    size_t avail = n - (size_t)h;
    if (f.opcode & 0x8) {
        if (avail < f.len)
            return 0; /* at most 125 bytes: the core keeps them until the rest comes */
        uint8_t body[PIER__WS_MAX_CONTROL];
        pier__ws_unmask(body, p + h, (size_t)f.len, f.mask, 0);
        return on_control(ws, f.opcode, body, (size_t)f.len) < 0 ? -1 : (ssize_t)(h + f.len);
    }
    if (f.fin && !ws->msg_op && avail >= f.len)
        return whole_message(ws, &f, p + h) < 0 ? -1 : (ssize_t)(h + f.len);
    if (!ws->msg_op) {
        ws->msg_op = f.opcode;
        ws->utf8 = PIER__UTF8_ACCEPT;
    }
    ws->f = f;
    ws->frame_done = 0;
    ws->in_frame = 1;
    if (f.len == 0 && frame_done(ws) < 0)
        return -1;
    return h;
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
        ssize_t r = ws->in_frame ? payload(ws, p + off, len - off) : frame(ws, p + off, len - off);
        if (r < 0 || ws->state == WS_DONE || !pier_conn_is_open(c))
            return len;
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
    int code = ws->got_close ? ws->peer_code : ws->our_code ? ws->our_code : PIER_WS_ABNORMAL;
    if (ws->ep->cbs.on_close)
        ws->ep->cbs.on_close(ws, code, ws->reason);
    pier_conn_set_data(c, NULL);
    pier__buf_free(&ws->msg);
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
    ws->wl = loop_state(ep, loop);
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
        fail(ws, PIER_WS_INTERNAL);
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
    return put_frame(ws, opcode, data, len);
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
            fail(ws, PIER_WS_POLICY);
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
