/* Reading a WebSocket stream: frames parsed in place from the input, checked, their
 * payload unmasked (and text validated) as it arrives, fragments joined into messages.
 *
 * A data frame's payload is taken as it comes, so invalid UTF-8 fails at its first
 * impossible byte even inside one large frame, and a frame's declared length is checked
 * against the message limit before any of it is kept. A message whose only frame lies
 * whole in the input is unmasked into the caller's scratch buffer (shared, per loop) and
 * delivered from there; only a fragmented message, or one still arriving, is gathered in
 * the reader's own buffer, which is trimmed once the message is delivered. A control
 * frame (at most 125 bytes) is taken once it is whole; until then its bytes stay with the
 * caller, as unconsumed input.
 *
 * A short message in one frame (the usual case) skips the general parse: it is unmasked
 * on the stack and delivered from there.
 *
 * A compressed message (permessage-deflate, RSV1 on its first frame) is gathered the same
 * way, its declared lengths checked against the limit as they are, and inflated once it
 * is whole, bounded by the same limit; its text can only be checked then.
 */
#include "ws/ws_int.h"

#define TRIM_ABOVE 65536      /* a message buffer larger than this is freed after use */
#define SCRATCH_KEEP (1u << 20) /* and the scratch buffer above this */

/* Stops the stream with code (RFC 6455 7.1.7: the caller fails the connection). */
static ssize_t fail(pier__ws_reader_t *r, int code) {
    r->code = code;
    return -1;
}

static ssize_t deliver(pier__ws_reader_t *r, int opcode, const void *data, size_t len) {
    return r->on_message(r->ctx, opcode, len ? data : "", len) < 0 ? -1 : 0; /* never NULL */
}

static void message_done(pier__ws_reader_t *r) {
    pier__buf_reset(&r->msg);
    if (r->msg.cap > TRIM_ABOVE)
        pier__buf_free(&r->msg);
    r->msg_op = 0;
}

/* A whole message, unmasked: inflated first if it came compressed (its text is checked
 * then, since its compressed bytes could not be), and delivered. 0 or -1. */
static ssize_t complete(pier__ws_reader_t *r, int opcode, int compressed, const void *data, size_t len) {
    if (compressed) {
        const uint8_t *p;
        int code = pier__ws_inflate(r->zl, r->pmd, data, len, r->max_message, &p, &len);
        if (code)
            return fail(r, code);
        if (opcode == PIER_WS_TEXT && !pier__utf8_valid(p, len))
            return fail(r, PIER_WS_INVALID_DATA);
        ssize_t rc = deliver(r, opcode, p, len);
        pier__ws_zloop_trim_rx(*r->zl);
        return rc;
    }
    return deliver(r, opcode, data, len);
}

/* The current data frame's payload is complete. 0 or -1. */
static ssize_t frame_done(pier__ws_reader_t *r) {
    r->in_frame = 0;
    if (!r->f.fin)
        return 0;
    if (!r->compressed && r->msg_op == PIER_WS_TEXT && r->utf8 != PIER__UTF8_ACCEPT)
        return fail(r, PIER_WS_INVALID_DATA); /* the message ends inside a character */
    ssize_t rc = complete(r, r->msg_op, r->compressed, r->msg.p, r->msg.len);
    message_done(r);
    return rc;
}

/* Payload bytes of the current data frame. Returns bytes consumed or -1. */
static ssize_t payload(pier__ws_reader_t *r, const uint8_t *p, size_t n) {
    uint64_t left = r->f.len - r->frame_done;
    size_t k = n < left ? n : (size_t)left;
    if (pier__buf_reserve(&r->msg, k) < 0)
        return fail(r, PIER_WS_INTERNAL);
    uint8_t *dst = (uint8_t *)r->msg.p + r->msg.len;
    pier__ws_unmask(dst, p, k, r->f.mask, r->frame_done);
    if (r->msg_op == PIER_WS_TEXT && !r->compressed &&
        (r->utf8 = pier__utf8_feed(r->utf8, dst, k)) == PIER__UTF8_REJECT)
        return fail(r, PIER_WS_INVALID_DATA);
    r->msg.len += k;
    r->frame_done += k;
    if (r->frame_done == r->f.len && frame_done(r) < 0)
        return -1;
    return (ssize_t)k;
}

static ssize_t whole_message(pier__ws_reader_t *r, const pier__ws_frame_t *f, const uint8_t *p) {
    pier__buf_t *s = r->scratch;
    size_t n = (size_t)f->len;
    pier__buf_reset(s);
    if (pier__buf_reserve(s, n) < 0)
        return fail(r, PIER_WS_INTERNAL);
    pier__ws_unmask((uint8_t *)s->p, p, n, f->mask, 0);
    int compressed = f->rsv & 4;
    if (!compressed && f->opcode == PIER_WS_TEXT && !pier__utf8_valid(s->p, n))
        return fail(r, PIER_WS_INVALID_DATA);
    ssize_t rc = complete(r, f->opcode, compressed, s->p, n);
    if (s->cap > SCRATCH_KEEP)
        pier__buf_free(s); /* one huge message should not pin its size on the loop */
    return rc;
}

static ssize_t control(pier__ws_reader_t *r, const pier__ws_frame_t *f, const uint8_t *p) {
    uint8_t body[PIER__WS_MAX_CONTROL];
    size_t n = (size_t)f->len;
    pier__ws_unmask(body, p, n, f->mask, 0);
    if (f->opcode == PIER_WS_CLOSE) {
        unsigned code = n >= 2 ? (unsigned)body[0] << 8 | body[1] : 0;
        if (n == 1 || (n >= 2 && !pier__ws_close_code_ok(code)))
            return fail(r, PIER_WS_PROTOCOL_ERROR);
        if (n > 2 && !pier__utf8_valid(body + 2, n - 2))
            return fail(r, PIER_WS_INVALID_DATA);
    }
    return r->on_control(r->ctx, f->opcode, body, n) < 0 ? -1 : 0;
}

/* The frame nearly every message is: a client's final, uncompressed text or binary frame
 * of at most 125 bytes, whole in the input, outside a fragmented message. Its length if p
 * holds one that the limit allows, else 0 (the general path decides). */
static size_t small_frame(const pier__ws_reader_t *r, const uint8_t *p, size_t n) {
    if (n < 6 || !r->masked || r->msg_op || (p[0] & 0xF0) != 0x80 || (p[1] & 0x80) == 0)
        return 0;
    size_t len = p[1] & 0x7F;
    int op = p[0] & 0xF;
    if ((op != PIER_WS_TEXT && op != PIER_WS_BINARY) || len > PIER__WS_MAX_CONTROL || n - 6 < len ||
        len > r->max_message)
        return 0;
    return 6 + len;
}

/* It is unmasked on the stack and delivered, without the general parse and checks. */
static ssize_t small_message(pier__ws_reader_t *r, const uint8_t *p, size_t flen) {
    uint8_t body[PIER__WS_MAX_CONTROL];
    size_t n = flen - 6;
    int op = p[0] & 0xF;
    pier__ws_unmask(body, p + 6, n, p + 2, 0);
    if (op == PIER_WS_TEXT && !pier__utf8_valid(body, n))
        return fail(r, PIER_WS_INVALID_DATA);
    return deliver(r, op, body, n) < 0 ? -1 : (ssize_t)flen;
}

/* A frame header at p. Returns bytes consumed (0: wait for more) or -1. */
static ssize_t frame(pier__ws_reader_t *r, const uint8_t *p, size_t n) {
    size_t small = small_frame(r, p, n);
    if (small)
        return small_message(r, p, small);
    pier__ws_frame_t f;
    int h = pier__ws_parse(p, n, &f);
    if (h == 0)
        return 0;
    int code = h < 0 ? PIER_WS_PROTOCOL_ERROR
                     : pier__ws_check(&f, r->msg_op != 0, r->msg.len, r->max_message, r->masked, r->pmd != NULL);
    if (code)
        return fail(r, code);
    size_t avail = n - (size_t)h;
    if (f.opcode & 0x8) {
        if (avail < f.len)
            return 0; /* at most 125 bytes: the caller keeps them until the rest comes */
        return control(r, &f, p + h) < 0 ? -1 : (ssize_t)(h + f.len);
    }
    if (f.fin && !r->msg_op && avail >= f.len)
        return whole_message(r, &f, p + h) < 0 ? -1 : (ssize_t)(h + f.len);
    if (!r->msg_op) {
        r->msg_op = f.opcode;
        r->compressed = f.rsv & 4;
        r->utf8 = PIER__UTF8_ACCEPT;
    }
    r->f = f;
    r->frame_done = 0;
    r->in_frame = 1;
    if (f.len == 0 && frame_done(r) < 0)
        return -1;
    return h;
}

ssize_t pier__ws_read(pier__ws_reader_t *r, const uint8_t *p, size_t n) {
    return r->in_frame ? payload(r, p, n) : frame(r, p, n);
}

void pier__ws_reader_free(pier__ws_reader_t *r) { pier__buf_free(&r->msg); }
