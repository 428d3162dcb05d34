/* A connection's state machine (states in http_int.h): request heads and bodies are
 * framed here, each complete request is routed and its handler run, and the connection
 * goes on to the next request, waits for a deferred response, or closes.
 *
 * Pipelining: on_read handles every complete request in the bytes it is given, in order;
 * the core sends everything queued in one loop iteration with one writev. A deferred
 * response stops the line: later bytes wait in `pending` until it is finished, so the
 * responses leave in request order. Above OUT_HIGH of queued output the rest of the
 * requests wait, reading paused, until the client has read enough (on_drain).
 */
#include "http/http_int.h"
#include "net/conn.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define TRIM_ABOVE 65536 /* per-connection buffers larger than this are freed when idle */

static void head_clear(pier__http_conn_t *hc);
static void body_clear(pier__http_conn_t *hc);

/* ---- dispatch ---- */

static void allow_field(unsigned allow, char *buf, size_t size) {
    static const unsigned bits[] = {PIER_HTTP_GET,    PIER_HTTP_HEAD,  PIER_HTTP_POST,   PIER_HTTP_PUT,
                                    PIER_HTTP_DELETE, PIER_HTTP_PATCH, PIER_HTTP_OPTIONS};
    size_t n = (size_t)snprintf(buf, size, "Allow: ");
    int first = 1;
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
        if (!(allow & bits[i]))
            continue;
        n += (size_t)snprintf(buf + n, size - n, "%s%s", first ? "" : ", ", pier__http_method_name(bits[i]));
        first = 0;
    }
    snprintf(buf + n, size - n, "\r\n");
}

/* "OPTIONS *" asks about the server, not a resource (RFC 9110 9.3.7). */
static void answer_options(pier__http_conn_t *hc) {
    char allow[128];
    allow_field(hc->srv->methods | PIER_HTTP_OPTIONS, allow, sizeof allow);
    pier__http_send(hc, 200, NULL, allow, strlen(allow), "", 0);
}

/* Routes the request; 0 with the handler to run, or -1 once answered without one. */
static int route(pier__http_conn_t *hc, pier__http_request_t *req) {
    pier__http_loop_t *hl = hc->hl;
    unsigned m = req->method;
    if (req->path_len == 1 && req->path[0] == '*') { /* the parser allows it for OPTIONS only */
        answer_options(hc);
        return -1;
    }
    if (pier__http_pct_decode(hl->path, req->path, req->path_len, 0) < 0) {
        pier__http_send_error(hc, 400);
        return -1;
    }
    if (m == PIER__HTTP_OTHER || m == PIER__HTTP_TRACE) {
        pier__http_send_status(hc, 501, NULL);
        return -1;
    }
    pier__http_router_match(&hc->srv->router, m, hl->path, &hl->match);
    if (!hl->match.route) {
        char allow[128];
        if (hl->match.allow)
            allow_field(hl->match.allow, allow, sizeof allow);
        pier__http_send_status(hc, hl->match.allow ? 405 : 404, hl->match.allow ? allow : NULL);
        return -1;
    }
    return 0;
}

static void dispatch(pier__http_conn_t *hc, pier__http_request_t *req, const char *body, size_t blen) {
    pier__http_loop_t *hl = hc->hl;
    pier_http_server_t *srv = hc->srv;
    body_clear(hc); /* the request is complete */
    hc->seq = ++hl->seq;
    hc->keep_alive = req->keep_alive;
    hc->minor = req->minor;
    hc->is_head = req->method == PIER_HTTP_HEAD;
    hc->sent_continue = 0;
    hc->stream = 0;
    if (srv->log)
        snprintf(hc->logline, sizeof hc->logline, "%.*s %.*s HTTP/1.%d", (int)req->method_len, req->method_str,
                 (int)(req->target_len > 200 ? 200 : req->target_len), req->target, req->minor);
    if (route(hc, req) < 0)
        return;
    hl->hreq = (struct pier_http_req_s){.parsed = req, .path = hl->path, .body = body, .body_len = blen,
                                        .match = &hl->match, .id = pier_conn_id(hc->c)};
    pier_http_res_t *res = &hl->res;
    res->hc = hc;
    res->state = RES_FRESH;
    res->fields_len = 0;
    void *ud;
    pier_http_handler_cb fn = pier__http_route_handler(hl->match.route, &ud);
    fn(&hl->hreq, res, ud);
    if (res->state == RES_FRESH) {
        /* an application bug, not the peer's: say it once per server, not per request */
        if (!__atomic_exchange_n(&srv->warned_silent, 1, __ATOMIC_RELAXED))
            pier_log(PIER_LOG_WARN, "http: handler for %s sent no response (500 sent; said once)", hl->path);
        res->state = RES_DONE;
        pier__http_send_status(hc, 500, NULL);
    } else if (res->state == RES_STREAM) {
        res->state = RES_DONE;
        pier__http_stream_end(hc);
    }
}

/* ---- reading ---- */

/* 0, or -1 if the interim answer could not be queued (the connection is then reset). */
static int send_continue(pier__http_conn_t *hc, const pier__http_request_t *req) {
    if (!req->expect_continue || req->minor != 1 || hc->sent_continue)
        return 0;
    hc->sent_continue = 1;
    struct iovec iov = {(void *)"HTTP/1.1 100 Continue\r\n\r\n", 25};
    return pier__http_write_unit(hc, &iov, 1) < 0 ? -1 : 0;
}

/* Both run from a request's first byte: the head must arrive within the header timeout,
 * and the whole request, body included, within the body timeout. The idle timeout alone
 * cannot bound a body, since every byte that trickles in resets it. A fresh connection's
 * header deadline is the core's, from the accept (pier__http_fresh), so the first
 * request's body may take up to the wait for its first byte longer. A request that
 * comes whole in the read that brings its first byte needs neither: they are started
 * only when one read leaves it incomplete (its first byte came with that read). */
static void start_body_timer(pier__http_conn_t *hc) {
    if (!hc->body_due) {
        hc->body_due = pier_loop_now(hc->hl->loop) + hc->srv->body_timeout_ms;
        pier__dl_start(hc->hl->body_list, &hc->body_dl);
    }
}

static void start_header_timer(pier__http_conn_t *hc) {
    if (!hc->head_due) {
        hc->head_due = pier_loop_now(hc->hl->loop) + hc->srv->header_timeout_ms;
        if (!pier__conn_is_fresh(hc->c))
            pier__dl_start(hc->hl->head_list, &hc->head_dl);
    }
    start_body_timer(hc);
}

static void head_clear(pier__http_conn_t *hc) {
    hc->head_due = 0;
    pier__dl_stop(hc->hl->loop, &hc->head_dl);
}

static void body_clear(pier__http_conn_t *hc) {
    hc->body_due = 0;
    pier__dl_stop(hc->hl->loop, &hc->body_dl);
}

/* A chunked body is decoded into a buffer of our own, and the head kept to be parsed
 * again once the body is complete (the input it came in is gone by then). */
static size_t start_chunked(pier__http_conn_t *hc, const pier__http_request_t *req, const char *buf, size_t len,
                            size_t n) {
    pier__buf_reset(&hc->head_copy);
    if (pier__buf_append(&hc->head_copy, buf, n) < 0) {
        pier__http_send_error(hc, 500);
        return len;
    }
    pier__buf_reset(&hc->body);
    pier__chunked_init(&hc->chunked, hc->srv->max_body);
    hc->state = ST_CHUNKED;
    start_body_timer(hc);
    if (n == len && send_continue(hc, req) < 0)
        return len;
    return n;
}

/* A request head is complete (n bytes of buf). Returns bytes consumed, 0 to wait. */
static size_t head_done(pier__http_conn_t *hc, const char *buf, size_t len, int n) {
    pier__http_request_t *req = &hc->hl->req;
    head_clear(hc);
    pier__conn_fresh_end(hc->c); /* the first head is in: the idle deadline from now on */
    /* the method bits GET .. OPTIONS are 1 << PIER_METRICS_GET .. PIER_METRICS_OPTIONS */
    hc->mx_method = (uint8_t)(1 + (req->method && req->method <= PIER_HTTP_OPTIONS ? (unsigned)__builtin_ctz(req->method)
                                                                                    : PIER_METRICS_OTHER));
    hc->mx_t0 = (uint32_t)pier_loop_now(hc->hl->loop);
    pier__http_parser_init(&hc->parser);
    if (req->content_length > (int64_t)hc->srv->max_body) {
        hc->logline[0] = '\0';
        pier__http_send_error(hc, 413);
        return len;
    }
    if (req->chunked)
        return start_chunked(hc, req, buf, len, (size_t)n);
    size_t cl = req->content_length > 0 ? (size_t)req->content_length : 0;
    if (len - (size_t)n < cl) {
        if (send_continue(hc, req) < 0)
            return len;
        hc->state = ST_BODY;
        hc->need = (size_t)n + cl;
        start_body_timer(hc);
        return 0;
    }
    dispatch(hc, req, cl ? buf + n : NULL, cl);
    return (size_t)n + cl;
}

/* Buffers grown by one large chunked body or a long wait are given back, so an idle
 * keep-alive connection costs its struct and little more. Never while a handler runs:
 * the request, body included, is valid for the whole call, also after it has answered. */
static void trim(pier__buf_t *b) {
    if (b->len == 0 && b->cap > TRIM_ABOVE)
        pier__buf_free(b);
}

static size_t chunked_step(pier__http_conn_t *hc, const char *buf, size_t len) {
    size_t off = 0;
    while (off < len && !hc->chunked.done) {
        const char *data;
        size_t dl;
        ssize_t r = pier__chunked_feed(&hc->chunked, buf + off, len - off, &data, &dl);
        if (r < 0 || (dl && pier__buf_append(&hc->body, data, dl) < 0)) {
            hc->logline[0] = '\0';
            pier__http_send_error(hc, r < 0 ? hc->chunked.status : 500);
            return len;
        }
        off += (size_t)r;
        if (r == 0)
            break;
    }
    if (!hc->chunked.done)
        return off;
    pier__http_parser_t p;
    pier__http_parser_init(&p);
    pier__http_request_t *req = &hc->hl->req;
    if (pier__http_parse_request(&p, &hc->srv->lim, hc->head_copy.p, hc->head_copy.len, req) !=
        (int)hc->head_copy.len) {
        pier__http_send_error(hc, 500);
        return len;
    }
    hc->state = ST_HEAD;
    dispatch(hc, req, hc->body.p, hc->body.len);
    pier__buf_reset(&hc->body);
    trim(&hc->body);
    return off;
}

/* Handles one request or part of one. Returns bytes consumed; *more says whether to go on. */
static size_t step(pier__http_conn_t *hc, const char *buf, size_t len, int *more) {
    pier__http_request_t *req = &hc->hl->req;
    *more = 0;
    switch (hc->state) {
    case ST_HEAD: {
        int n = pier__http_parse_request(&hc->parser, &hc->srv->lim, buf, len, req);
        if (n == -2) {
            start_header_timer(hc);
            return 0;
        }
        if (n < 0) {
            hc->logline[0] = '\0';
            pier__http_send_error(hc, req->status);
            return len;
        }
        size_t used = head_done(hc, buf, len, n);
        *more = used > 0;
        return used;
    }
    case ST_BODY: {
        if (len < hc->need)
            return 0;
        pier__http_parser_t p;
        pier__http_parser_init(&p);
        int n = pier__http_parse_request(&p, &hc->srv->lim, buf, len, req);
        size_t cl = hc->need - (size_t)n;
        hc->state = ST_HEAD;
        dispatch(hc, req, cl ? buf + n : NULL, cl);
        *more = 1;
        return hc->need;
    }
    case ST_CHUNKED: {
        size_t used = chunked_step(hc, buf, len);
        *more = hc->state == ST_HEAD;
        return used;
    }
    default:
        return len; /* CLOSED: drop */
    }
}

static size_t process(pier__http_conn_t *hc, const char *buf, size_t len) {
    size_t off = 0;
    int more = 1;
    while (more && off < len && (hc->state == ST_HEAD || hc->state == ST_BODY || hc->state == ST_CHUNKED)) {
        if (hc->state == ST_HEAD && pier__conn_queued(hc->c) > PIER__HTTP_OUT_HIGH) {
            /* the rest waits, unconsumed, for on_drain (the core is above its high mark
             * too, so on_drain comes once the peer has read enough) */
            if (!hc->held) {
                hc->held = 1;
                pier_conn_pause(hc->c);
            }
            break;
        }
        off += step(hc, buf + off, len - off, &more);
    }
    return off;
}

_Static_assert(sizeof(pier__http_conn_t) <= PIER__OBJ_MAX, "from the loop's object cache");

static void head_late(pier__dlnode_t *n);
static void body_late(pier__dlnode_t *n);

static int pending_add(pier__http_conn_t *hc, const char *data, size_t n) {
    size_t limit = hc->srv->lim.max_head + hc->srv->max_body + 65536;
    if (hc->pending.len + n > limit)
        return -EMSGSIZE;
    return pier__buf_append(&hc->pending, data, n);
}

/* An empty buffer with no memory and no error, as a zeroed one (most are already). */
static void buf_drop(pier__buf_t *b) {
    if (b->cap || b->err)
        pier__buf_free(b);
}

/* The HTTP state of the connection goes (at its close, when it is handed over, or while
 * it waits idle between requests), back to the loop's cache with its deadlines stopped,
 * its buffers freed and no deferred response, as conn_new expects it. */
static void conn_free(pier__http_conn_t *hc) {
    pier_loop_t *loop = hc->hl->loop;
    pier__dl_stop(loop, &hc->head_dl);
    pier__dl_stop(loop, &hc->body_dl);
    if (hc->later)
        pier__http_later_detach(hc);
    pier__conn_set_data(hc->c, NULL);
    buf_drop(&hc->head_copy);
    buf_drop(&hc->body);
    buf_drop(&hc->pending);
    pier__obj_put(loop, PIER__OBJ_HTTP, hc);
}

static pier__http_loop_t *loop_state(pier_http_server_t *srv, pier_loop_t *loop) {
    for (unsigned i = 0; i < srv->nloops; i++)
        if (srv->loops[i].loop == loop)
            return &srv->loops[i];
    return NULL;
}

/* The connection's HTTP state, from the loop's cache: with its first bytes, and again
 * when a keep-alive connection that gave its state back sends its next request. Until
 * its first bytes a connection has none: the core runs the first request's header
 * deadline from the accept (pier__http_fresh answers it). */
static pier__http_conn_t *conn_new(pier_conn_t *c) {
    pier_http_server_t *srv = pier_server_data(pier_conn_server(c));
    pier__http_loop_t *hl = loop_state(srv, pier__conn_loop(c));
    /* each list is taken until it exists: one allocation failing must not leave the
     * other set and the loop refusing every later connection */
    if (hl && !hl->head_list)
        hl->head_list = pier__dlist_get(hl->loop, srv->header_timeout_ms, head_late);
    if (hl && !hl->body_list)
        hl->body_list = pier__dlist_get(hl->loop, srv->body_timeout_ms, body_late);
    int fresh;
    pier__http_conn_t *hc = hl && hl->head_list && hl->body_list
                                ? pier__obj_get(hl->loop, PIER__OBJ_HTTP, sizeof *hc, &fresh)
                                : NULL;
    if (!hc)
        return NULL;
    if (fresh) {
        memset(hc, 0, offsetof(pier__http_conn_t, head_due));
        pier__dlnode_init(&hc->head_dl);
        pier__dlnode_init(&hc->body_dl);
    }
    assert(!hc->head_dl.list && !hc->body_dl.list && !hc->head_copy.cap && !hc->head_copy.err && !hc->body.cap &&
           !hc->body.err && !hc->pending.cap && !hc->pending.err && !hc->later);
    memset(&hc->head_due, 0, offsetof(pier__http_conn_t, logline) - offsetof(pier__http_conn_t, head_due));
    hc->logline[0] = '\0';
    hc->srv = srv;
    hc->hl = hl;
    hc->c = c;
    hc->state = ST_HEAD;
    pier__http_parser_init(&hc->parser);
    pier__conn_set_data(c, hc);
    return hc;
}

/* Between requests a keep-alive connection needs no HTTP state: nothing is half-read
 * (all input consumed, so the parser is at its start), nothing waits on a deferred
 * response or the output draining, no deadline runs (the core's idle timeout is the
 * keep-alive one). Giving the state back keeps an idle connection small. */
static void maybe_idle(pier__http_conn_t *hc) {
    if (hc->state != ST_HEAD || hc->head_due || hc->body_due || hc->pending.len || hc->later || hc->held ||
        hc->eof || hc->head_copy.cap || hc->body.cap)
        return;
    conn_free(hc);
}

/* An upgrade's 101 is queued and its handler has returned: the connection leaves HTTP.
 * rest (the bytes after the request) must not point into hc. Returns how many of them
 * the new owner consumed. */
static size_t hand_over(pier__http_conn_t *hc, const char *rest, size_t len) {
    pier_conn_t *c = hc->c;
    pier_http_upgrade_cb cb = hc->upgrade_cb;
    void *arg = hc->upgrade_arg;
    conn_free(hc);
    pier_conn_set_cbs(c, NULL, NULL);
    return cb(c, arg, rest, len);
}

/* The upgrade came from input kept in pending, which the core no longer holds: what the
 * new owner leaves of it cannot be given back. Only a client that pipelined behind a
 * deferred response and then sent data before its 101 (RFC 6455 4.1 forbids it) gets
 * here with bytes left over; its connection is reset. */
static void hand_over_pending(pier__http_conn_t *hc, size_t used) {
    pier_conn_t *c = hc->c;
    pier__buf_t kept = hc->pending;
    hc->pending = (pier__buf_t){0};
    size_t rest = kept.len - used;
    if (hand_over(hc, kept.p + used, rest) < rest) {
        pier_log(PIER_LOG_DEBUG, "http: data behind an upgrade that waited on a deferred response; reset");
        pier_conn_abort(c);
    }
    pier__buf_free(&kept);
}

void pier__http_process_pending(pier__http_conn_t *hc) {
    if (!hc->pending.len)
        return;
    pier_conn_t *c = hc->c;
    pier_conn_ref(c);
    size_t used = process(hc, hc->pending.p, hc->pending.len);
    if (pier_conn_data(c) == hc && hc->state == ST_UPGRADE) {
        hand_over_pending(hc, used);
    } else if (pier_conn_data(c) == hc) {
        pier__buf_consume(&hc->pending, used);
        trim(&hc->pending); /* not before: process() was reading it */
        /* the peer half-closed: once nothing waits on a deferred response, what is left
         * is at most an incomplete request that can never complete; unless the requests
         * wait for the answers to drain (held), and on_drain takes them up again */
        if (hc->eof && !hc->held && (hc->state == ST_HEAD || hc->state == ST_BODY || hc->state == ST_CHUNKED)) {
            hc->state = ST_CLOSED;
            pier_conn_close(c);
        }
    }
    pier_conn_unref(c);
}

/* ---- the connection's callbacks ---- */

static void reset(pier__http_conn_t *hc) {
    hc->state = ST_CLOSED;
    pier_conn_abort(hc->c);
}

static size_t on_read(pier_conn_t *c, const char *data, size_t len) {
    pier__http_conn_t *hc = pier__conn_data(c);
    if (!hc && !(hc = conn_new(c))) {
        pier_conn_abort(c);
        return len;
    }
    if (hc->state == ST_CLOSED)
        return len;
    if (hc->state == ST_WAIT || hc->pending.len) {
        if (pending_add(hc, data, len) < 0)
            reset(hc);
        else if (hc->state != ST_WAIT)
            pier__http_process_pending(hc);
        return len;
    }
    size_t used = process(hc, data, len);
    if (hc->state == ST_UPGRADE)
        return used + hand_over(hc, data + used, len - used);
    if (hc->state == ST_WAIT && used < len) {
        if (pending_add(hc, data + used, len - used) < 0)
            reset(hc);
        used = len;
    }
    if (used == len && pier__conn_is_open(c))
        maybe_idle(hc);
    return used;
}

static void on_eof(pier_conn_t *c) {
    pier__http_conn_t *hc = pier_conn_data(c);
    /* a client may half-close after its last request: answer it, then close */
    if (hc && hc->state == ST_WAIT) {
        hc->eof = 1;
        if (!hc->pending.len)
            hc->keep_alive = 0; /* the last answer: it says Connection: close */
        return;
    }
    pier_conn_close(c);
}

/* The answers queued before a pause have drained: go on with the requests that wait. */
static void on_drain(pier_conn_t *c) {
    pier__http_conn_t *hc = pier_conn_data(c);
    if (hc)
        pier__http_later_note_queued(hc); /* a deferred response may write again */
    if (!hc || !hc->held)
        return;
    hc->held = 0;
    pier_conn_resume(c); /* the core hands its kept bytes to on_read again */
    if (hc->state == ST_HEAD)
        pier__http_process_pending(hc);
}

static void on_close(pier_conn_t *c, int err) {
    (void)err;
    pier__http_conn_t *hc = pier_conn_data(c);
    if (hc)
        conn_free(hc);
}

/* The head (header timeout) or the whole request, body included (body timeout: a body
 * trickled byte by byte), did not arrive in time: 408. */
static void answer_late(pier__http_conn_t *hc) {
    head_clear(hc);
    body_clear(hc);
    hc->logline[0] = '\0';
    pier__http_send_error(hc, 408);
}

static void head_late(pier__dlnode_t *n) {
    pier__http_conn_t *hc = pier__container_of(n, pier__http_conn_t, head_dl);
    if (hc->head_due && (hc->state == ST_HEAD || hc->state == ST_BODY))
        answer_late(hc);
}

static void body_late(pier__dlnode_t *n) {
    pier__http_conn_t *hc = pier__container_of(n, pier__http_conn_t, body_dl);
    if (hc->body_due && (hc->state == ST_HEAD || hc->state == ST_BODY || hc->state == ST_CHUNKED))
        answer_late(hc);
}

static const pier_conn_cbs_t conn_cbs = {
    .on_read = on_read,
    .on_drain = on_drain,
    .on_eof = on_eof,
    .on_close = on_close,
};

/* A drain closes at once only a connection that has answered requests and holds no
 * byte of the next: a request that crosses that close is one a client may send again
 * (RFC 9112, 9.3.1). A connection with a request under way, or one just accepted whose
 * first request may be on its way (nobody would send that again), stays: its next
 * response says Connection: close, or the header timeout ends it. Connections handed
 * to another protocol close now, as before. */
int pier__http_close_at_drain(pier_conn_t *c) {
    pier__http_conn_t *hc = pier_conn_data(c);
    if (c->cbs == &conn_cbs && !hc) /* no state: fresh (its request may be on its way) or idle */
        return !pier__conn_is_fresh(c);
    if (c->cbs != &conn_cbs)
        return 1;
    if (hc->state != ST_HEAD)
        return hc->state == ST_CLOSED || hc->state == ST_UPGRADE;
    int idle = !hc->parser.scanned && !hc->parser.first_line_end && !hc->parser.empty_lines &&
               !hc->pending.len && !hc->stream && !hc->later && !hc->held;
    return hc->seq > 0 && idle;
}

void pier__http_on_accept(pier_server_t *s, pier_conn_t *c) {
    (void)s;
    pier_conn_set_cbs(c, &conn_cbs, NULL);
}

void pier__http_fresh(pier_conn_t *c) {
    pier__http_conn_t *hc = pier_conn_data(c);
    if (!hc && !(hc = conn_new(c))) {
        pier_conn_abort(c);
        return;
    }
    if (hc->state == ST_HEAD || hc->state == ST_BODY)
        answer_late(hc);
}
