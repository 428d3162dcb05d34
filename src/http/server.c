/* The HTTP/1.1 server: connections, requests, responses and deferred responses.
 *
 * A connection moves through states: HEAD (waiting for a request head), BODY (a
 * Content-Length body still arriving; the bytes stay unconsumed in the connection's read
 * buffer, so the body is handed over in place), CHUNKED (a chunked body being decoded
 * into a buffer of our own), WAIT (a handler took the response for later) and CLOSED.
 *
 * Pipelining: on_read handles every complete request in the bytes it is given, in order,
 * and the core sends everything queued in one loop iteration with one writev. A deferred
 * response stops the line: later bytes wait in `pending` until it is finished, so the
 * responses leave in request order.
 *
 * Per-loop state (date cache, the parsed request, the response being built) is only
 * touched by its loop's thread, and only during one handler at a time.
 */
#include "http/http_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_MAX_HEAD 8192
#define DEFAULT_MAX_TARGET 4096
#define DEFAULT_MAX_BODY (1u << 20)
#define DEFAULT_MAX_CONNS 10000
#define DEFAULT_KEEPALIVE_MS 60000
#define DEFAULT_HEADER_TIMEOUT_MS 10000
#define DEFAULT_BODY_TIMEOUT_MS 60000
#define INLINE_BODY 16384 /* bodies up to this size share one buffer with the head */
#define TRIM_ABOVE 65536  /* per-connection buffers larger than this are freed when idle */
/* A connection's output water marks. Pipelined requests are answered only while the
 * output is under OUT_HIGH; above it the rest wait (reading paused) until on_drain, so a
 * client that sends many requests and reads nothing cannot make the answers pile up. */
#define OUT_HIGH (256u * 1024)
#define OUT_LOW (64u * 1024)
/* A deferred response's output, queued or posted and not yet written to the socket,
 * above which pier_http_later_write answers -ENOBUFS. Above OUT_HIGH, so once a write has
 * been refused the core's on_drain is sure to come and say the queue has gone down. */
#define LATER_MAX_QUEUED (1024u * 1024)

enum { ST_HEAD, ST_BODY, ST_CHUNKED, ST_WAIT, ST_CLOSED };
enum { RES_FRESH, RES_STREAM, RES_DONE, RES_LATER };

typedef struct http_loop_s http_loop_t;

typedef struct pier__http_conn_s {
    pier_http_server_t *srv;
    http_loop_t *hl;
    pier_conn_t *c;
    pier_timer_t timer; /* the request-head timeout */
    pier_timer_t body_timer; /* the whole-request (head and body) timeout */
    pier__http_parser_t parser;
    int state;
    size_t need;        /* BODY: head plus body bytes */
    pier__chunked_t chunked;
    char *head_copy;    /* CHUNKED: the head, parsed again once the body is complete */
    size_t head_len;
    char *body;
    size_t body_len, body_cap;
    char *pending;      /* input that arrived while a response was deferred */
    size_t pending_len, pending_cap;
    uint64_t seq;       /* requests dispatched; names the one a deferred response is for */
    /* the response under way */
    int keep_alive, minor, is_head, stream, sent_continue, eof;
    int held;           /* reading paused: the answers so far must drain first */
    uint64_t sent_bytes;
    pier_http_later_t *later; /* the deferred response under way (one reference) */
    char logline[300];
} http_conn_t;

struct pier_http_res_s {
    http_conn_t *hc;
    int state;
    size_t fields_len;
    char fields[PIER__HTTP_RES_FIELDS];
};

struct http_loop_s {
    pier_loop_t *loop;
    pier_http_server_t *srv;
    uint64_t date_sec;
    char date[30];
    /* "Server: ...\r\nDate: ...\r\n", rebuilt once a second */
    char common[300];
    size_t common_len;
    uint64_t requests;
    char *out;
    size_t out_len, out_cap;
    int out_failed;         /* out_add could not grow out: what it holds is truncated */
    char *path;             /* decoded path of the current request */
    pier__http_request_t req;
    pier__http_match_t match;
    struct pier_http_req_s hreq;
    struct pier_http_res_s res;
};

struct pier_http_server_s {
    pier_group_t *group;
    pier_server_t *srv;
    pier__http_limits_t lim;
    size_t max_body;
    uint64_t keepalive_ms, header_timeout_ms, body_timeout_ms;
    unsigned max_conns;
    char *host, *server_name;
    FILE *log;
    pier__http_router_t router;
    pier__http_static_t **statics;
    unsigned nstatics;
    int started;
    int warned_silent;
    unsigned nloops;
    http_loop_t *loops;
};

/* Shared by the application (until send, end or cancel) and the connection (until the
 * response is done or the connection closes): freed when both have let go. The counters
 * let pier_http_later_write see, from any thread, how much output waits for the client;
 * each has one writer, and all are read and written atomically. */
struct pier_http_later_s {
    pier_id_t id;
    uint64_t seq;
    int refs;
    size_t posted;      /* bytes handed to pier_http_later_write (application) */
    size_t ran;         /* of those, bytes the loop has queued on the connection (loop) */
    size_t conn_queued; /* the connection's unwritten output when last seen (loop) */
    size_t fields_len;
    char fields[];
};

static void process_pending(http_conn_t *hc);

int (*pier__http_writev)(pier_conn_t *c, const struct iovec *iov, int iovcnt) = pier_conn_writev;
int (*pier__http_writev_file)(pier_conn_t *c, const struct iovec *iov, int iovcnt, int fd, off_t offset,
                              size_t len) = pier_conn_writev_file;

static void http_write(pier_conn_t *c, const void *p, size_t n) {
    struct iovec v = {.iov_base = (void *)p, .iov_len = n};
    pier__http_writev(c, &v, 1);
}

static void later_unref(pier_http_later_t *l) {
    if (__atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(l);
}

/* The connection is done with its deferred response. */
static void later_detach(http_conn_t *hc) {
    if (hc->later) {
        later_unref(hc->later);
        hc->later = NULL;
    }
}

/* Tells the application side how much output now waits for the client. */
static void later_note_queued(http_conn_t *hc) {
    if (hc->later)
        __atomic_store_n(&hc->later->conn_queued, pier_conn_queued(hc->c), __ATOMIC_RELEASE);
}

/* ---- building output ---- */

static int out_reserve(http_loop_t *hl, size_t more) {
    if (hl->out_len + more <= hl->out_cap)
        return 0;
    size_t cap = hl->out_cap ? hl->out_cap : 8192;
    while (cap < hl->out_len + more)
        cap *= 2;
    char *n = realloc(hl->out, cap);
    if (!n)
        return -ENOMEM;
    hl->out = n;
    hl->out_cap = cap;
    return 0;
}

/* A failure is remembered in out_failed (cleared by build_head) and checked by
 * out_send, so a truncated head is never sent. */
static void out_add(http_loop_t *hl, const void *p, size_t n) {
    if (!n)
        return;
    if (out_reserve(hl, n) < 0) {
        hl->out_failed = 1;
        return;
    }
    memcpy(hl->out + hl->out_len, p, n);
    hl->out_len += n;
}

/* The Server and Date fields, formatted again only when the loop's second changes. */
static void refresh_common(http_loop_t *hl) {
    uint64_t sec = pier_loop_now(hl->loop) / 1000;
    if (sec == hl->date_sec && hl->common_len)
        return;
    hl->date_sec = sec;
    pier__http_date(time(NULL), hl->date);
    int n = snprintf(hl->common, sizeof hl->common, "Server: %s\r\nDate: %s\r\n", hl->srv->server_name, hl->date);
    hl->common_len = n > 0 && (size_t)n < sizeof hl->common ? (size_t)n : 0;
}

static int status_has_body(int status) { return status >= 200 && status != 204 && status != 304; }

static void out_str(http_loop_t *hl, const char *s) { out_add(hl, s, strlen(s)); }

static void out_u64(http_loop_t *hl, uint64_t v) {
    char tmp[24];
    size_t i = sizeof tmp;
    do
        tmp[--i] = (char)('0' + v % 10);
    while (v /= 10);
    out_add(hl, tmp + i, sizeof tmp - i);
}

/* Writes the status line and fields into hl->out. content_length < 0: the body is
 * streamed (chunked in HTTP/1.1, until close in HTTP/1.0). Plain copies, no printf: this
 * runs once per response. */
static void build_head(http_conn_t *hc, int status, const char *ctype, const char *fields, size_t flen,
                       int64_t content_length) {
    http_loop_t *hl = hc->hl;
    hl->out_len = 0;
    hl->out_failed = 0;
    if (status == 200) {
        out_add(hl, "HTTP/1.1 200 OK\r\n", 17);
    } else {
        out_add(hl, "HTTP/1.1 ", 9);
        out_u64(hl, (uint64_t)status);
        out_add(hl, " ", 1);
        out_str(hl, pier_http_reason(status));
        out_add(hl, "\r\n", 2);
    }
    refresh_common(hl);
    out_add(hl, hl->common, hl->common_len);
    if (status_has_body(status)) {
        if (ctype) {
            out_add(hl, "Content-Type: ", 14);
            out_str(hl, ctype);
            out_add(hl, "\r\n", 2);
        }
        if (content_length >= 0) {
            out_add(hl, "Content-Length: ", 16);
            out_u64(hl, (uint64_t)content_length);
            out_add(hl, "\r\n", 2);
        } else if (hc->minor == 1) {
            out_add(hl, "Transfer-Encoding: chunked\r\n", 28);
        } else {
            hc->keep_alive = 0;
        }
    }
    if (!hc->keep_alive)
        out_add(hl, "Connection: close\r\n", 19);
    else if (hc->minor == 0)
        out_add(hl, "Connection: keep-alive\r\n", 24);
    out_add(hl, fields, flen);
    out_add(hl, "\r\n", 2);
}

static void access_log(http_conn_t *hc, int status) {
    FILE *f = hc->srv->log;
    if (!f)
        return;
    char peer[64], when[40];
    pier_conn_peer(hc->c, peer, sizeof peer);
    char *colon = strrchr(peer, ':');
    if (colon)
        *colon = '\0';
    const char *host = peer[0] == '[' ? peer + 1 : peer;
    size_t hl = strlen(host);
    if (hl && host[hl - 1] == ']')
        peer[strlen(peer) - 1] = '\0';
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%d/%b/%Y:%H:%M:%S +0000", &tm);
    /* one fprintf per line: stdio locks the stream, so loops on other threads cannot
     * interleave within a line */
    fprintf(f, "%s - - [%s] \"%s\" %d %llu\n", host, when, hc->logline, status,
            (unsigned long long)hc->sent_bytes);
    fflush(f);
}

/* Queues what build_head (and out_add) built. If it could not all be built, the response
 * fails: the connection is reset, so the client sees an error rather than a truncated
 * head, and -1 is returned. */
static int out_send(http_conn_t *hc) {
    http_loop_t *hl = hc->hl;
    if (hl->out_failed) {
        hl->out_failed = 0;
        hc->state = ST_CLOSED;
        hc->stream = 0;
        pier_conn_abort(hc->c);
        return -1;
    }
    http_write(hc->c, hl->out, hl->out_len);
    return 0;
}

/* The response is complete: log it, then either close or wait for the next request. */
static void response_done(http_conn_t *hc, int status) {
    if (hc->state == ST_CLOSED)
        return; /* out_send failed the response and reset the connection */
    later_detach(hc);
    __atomic_fetch_add(&hc->hl->requests, 1, __ATOMIC_RELAXED);
    access_log(hc, status);
    hc->stream = 0;
    /* after a half-close, requests that waited behind this one still get answered */
    if (!hc->keep_alive || (hc->eof && !hc->pending_len)) {
        hc->state = ST_CLOSED;
        pier_conn_close(hc->c);
    } else {
        hc->state = ST_HEAD;
    }
}

static void send_whole(http_conn_t *hc, int status, const char *ctype, const char *fields, size_t flen,
                       const void *body, size_t len) {
    http_loop_t *hl = hc->hl;
    int with_body = status_has_body(status);
    build_head(hc, status, ctype, fields, flen, with_body ? (int64_t)len : -1);
    if (!with_body || hc->is_head)
        len = 0;
    hc->sent_bytes = len;
    if (len <= INLINE_BODY) {
        out_add(hl, body, len);
        if (out_send(hc) < 0)
            return;
    } else {
        if (out_send(hc) < 0)
            return;
        http_write(hc->c, body, len);
    }
    response_done(hc, status);
}

/* An answer to a request that cannot go on (bad framing, limits): always closes. */
static void send_error(http_conn_t *hc, int status) {
    char body[80];
    int n = snprintf(body, sizeof body, "%d %s\n", status, pier_http_reason(status));
    hc->keep_alive = 0;
    hc->is_head = 0;
    if (!hc->logline[0])
        snprintf(hc->logline, sizeof hc->logline, "-");
    send_whole(hc, status, "text/plain; charset=utf-8", NULL, 0, body, (size_t)n);
}

static void stream_begin(http_conn_t *hc, int status, const char *ctype, const char *fields, size_t flen) {
    build_head(hc, status, ctype, fields, flen, -1);
    if (out_send(hc) < 0)
        return; /* hc->stream stays 0: later writes send nothing */
    hc->sent_bytes = 0;
    hc->stream = status;
}

static void stream_write(http_conn_t *hc, const void *data, size_t len) {
    if (!len || hc->is_head || !status_has_body(hc->stream))
        return;
    if (hc->minor == 1) {
        char size[24];
        int n = snprintf(size, sizeof size, "%zx\r\n", len);
        http_write(hc->c, size, (size_t)n);
        http_write(hc->c, data, len);
        http_write(hc->c, "\r\n", 2);
    } else {
        http_write(hc->c, data, len);
    }
    hc->sent_bytes += len;
}

static void stream_end(http_conn_t *hc) {
    if (hc->minor == 1 && !hc->is_head && status_has_body(hc->stream))
        http_write(hc->c, "0\r\n\r\n", 5);
    response_done(hc, hc->stream);
}

/* ---- responses from handlers ---- */

static int valid_field(const char *name, const char *value) {
    if (!name || !value || !*name)
        return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (!pier__http_tchar[*p])
            return 0;
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return 0;
    return 1;
}

int pier_http_res_header(pier_http_res_t *res, const char *name, const char *value) {
    if (res->state != RES_FRESH)
        return -EALREADY;
    if (!valid_field(name, value))
        return -EINVAL;
    size_t nl = strlen(name), vl = strlen(value);
    if (res->fields_len + nl + vl + 4 > sizeof res->fields)
        return -ENOSPC;
    char *p = res->fields + res->fields_len;
    memcpy(p, name, nl);
    memcpy(p + nl, ": ", 2);
    memcpy(p + nl + 2, value, vl);
    memcpy(p + nl + 2 + vl, "\r\n", 2);
    res->fields_len += nl + vl + 4;
    return 0;
}

int pier_http_res_send(pier_http_res_t *res, int status, const char *content_type, const void *body,
                       size_t len) {
    if (res->state != RES_FRESH)
        return -EALREADY;
    if (status < 200 || status > 999)
        return -EINVAL;
    res->state = RES_DONE;
    send_whole(res->hc, status, content_type, res->fields, res->fields_len, body, len);
    return 0;
}

int pier_http_res_begin(pier_http_res_t *res, int status, const char *content_type) {
    if (res->state != RES_FRESH)
        return -EALREADY;
    if (status < 200 || status > 999)
        return -EINVAL;
    res->state = RES_STREAM;
    stream_begin(res->hc, status, content_type, res->fields, res->fields_len);
    return 0;
}

int pier_http_res_write(pier_http_res_t *res, const void *data, size_t len) {
    if (res->state != RES_STREAM)
        return -EINVAL;
    stream_write(res->hc, data, len);
    return 0;
}

int pier_http_res_end(pier_http_res_t *res) {
    if (res->state != RES_STREAM)
        return -EINVAL;
    res->state = RES_DONE;
    stream_end(res->hc);
    return 0;
}

int pier__http_res_sendfile(pier_http_res_t *res, int status, const char *content_type, int fd, off_t offset,
                            size_t len) {
    http_conn_t *hc = res->hc;
    if (res->state != RES_FRESH) {
        close(fd);
        return -EALREADY;
    }
    res->state = RES_DONE;
    build_head(hc, status, content_type, res->fields, res->fields_len, (int64_t)len);
    if (out_send(hc) < 0) {
        close(fd);
        return 0;
    }
    if (hc->is_head || len == 0) {
        close(fd);
        hc->sent_bytes = 0;
    } else {
        pier__http_writev_file(hc->c, NULL, 0, fd, offset, len);
        hc->sent_bytes = len;
    }
    response_done(hc, status);
    return 0;
}

/* ---- deferred responses ---- */

enum { OP_SEND, OP_BEGIN, OP_WRITE, OP_END };

typedef struct {
    int op, status;
    uint64_t seq;
    char ctype[128];
    size_t fields_len, len;
    char *fields;
    char data[];
} later_task_t;

pier_http_later_t *pier_http_res_later(pier_http_res_t *res) {
    if (res->state != RES_FRESH)
        return NULL;
    pier_http_later_t *l = malloc(sizeof *l + res->fields_len);
    if (!l)
        return NULL;
    l->id = pier_conn_id(res->hc->c);
    l->seq = res->hc->seq;
    l->refs = 2; /* the application's and the connection's */
    l->posted = l->ran = 0;
    l->conn_queued = pier_conn_queued(res->hc->c);
    res->hc->later = l;
    l->fields_len = res->fields_len;
    memcpy(l->fields, res->fields, res->fields_len);
    res->state = RES_LATER;
    res->hc->state = ST_WAIT;
    return l;
}

static void later_run(pier_conn_t *c, void *arg) {
    later_task_t *t = arg;
    http_conn_t *hc = c && pier_conn_is_open(c) ? pier_conn_data(c) : NULL;
    /* the connection may be gone, or be past this request already (cancelled) */
    if (!hc || hc->state != ST_WAIT || hc->seq != t->seq)
        goto out;
    const char *ctype = t->ctype[0] ? t->ctype : NULL;
    switch (t->op) {
    case OP_SEND:
        send_whole(hc, t->status, ctype, t->fields, t->fields_len, t->data, t->len);
        break;
    case OP_BEGIN:
        stream_begin(hc, t->status, ctype, t->fields, t->fields_len);
        later_note_queued(hc);
        goto out;
    case OP_WRITE:
        if (hc->stream)
            stream_write(hc, t->data, t->len);
        if (hc->later) {
            __atomic_add_fetch(&hc->later->ran, t->len, __ATOMIC_ACQ_REL);
            later_note_queued(hc);
        }
        goto out;
    case OP_END:
        if (!hc->stream)
            stream_begin(hc, 204, NULL, t->fields, t->fields_len);
        stream_end(hc);
        break;
    }
    if (hc->state == ST_HEAD)
        process_pending(hc);
out:
    free(t->fields);
    free(t);
}

static int later_post(pier_http_later_t *l, int op, int status, const char *ctype, const void *data, size_t len,
                      int with_fields) {
    later_task_t *t = malloc(sizeof *t + len);
    if (!t)
        return -ENOMEM;
    t->op = op;
    t->status = status;
    t->seq = l->seq;
    t->ctype[0] = '\0';
    if (ctype)
        snprintf(t->ctype, sizeof t->ctype, "%s", ctype);
    t->fields = NULL;
    t->fields_len = 0;
    if (with_fields && l->fields_len) {
        t->fields = malloc(l->fields_len);
        if (!t->fields) {
            free(t);
            return -ENOMEM;
        }
        memcpy(t->fields, l->fields, l->fields_len);
        t->fields_len = l->fields_len;
    }
    t->len = len;
    if (len)
        memcpy(t->data, data, len);
    /* once posted, later_run frees t, also with c NULL if the connection is gone by then */
    int rc = pier_with_conn(l->id, later_run, t);
    if (rc < 0) {
        free(t->fields);
        free(t);
    }
    return rc;
}

/* Resets the connection if it still waits on the deferred response seq: for cancel, and
 * for a send or end that could not be posted, after which nothing else would ever finish
 * that response and the client would wait until the idle timeout. */
static void later_abort_run(pier_conn_t *c, void *arg) {
    http_conn_t *hc = c && pier_conn_is_open(c) ? pier_conn_data(c) : NULL;
    if (!hc || hc->state != ST_WAIT || (uintptr_t)hc->seq != (uintptr_t)arg)
        return;
    hc->state = ST_CLOSED;
    later_detach(hc);
    pier_conn_abort(c);
}

/* Needs no allocation of ours (the seq rides in the argument), so it still works when
 * posting the response just failed with -ENOMEM. If the core cannot post even this, a
 * graceful close through the id is the last resort. */
static void later_abort(const pier_http_later_t *l) {
    if (pier_with_conn(l->id, later_abort_run, (void *)(uintptr_t)l->seq) == -ENOMEM)
        pier_close(l->id);
}

static int valid_ctype(const char *ctype) { return !ctype || valid_field("Content-Type", ctype); }

int pier_http_later_send(pier_http_later_t *l, int status, const char *content_type, const void *body,
                         size_t len) {
    int rc = (status < 200 || status > 999 || !valid_ctype(content_type))
                 ? -EINVAL
                 : later_post(l, OP_SEND, status, content_type, body, len, 1);
    /* the handle is gone after this call: if the response could not be posted, the
     * connection must not wait for one that will never come */
    if (rc == -EINVAL || rc == -ENOMEM)
        later_abort(l);
    later_unref(l);
    return rc;
}

int pier_http_later_begin(pier_http_later_t *l, int status, const char *content_type) {
    if (status < 200 || status > 999 || !valid_ctype(content_type))
        return -EINVAL;
    return later_post(l, OP_BEGIN, status, content_type, NULL, 0, 1);
}

int pier_http_later_write(pier_http_later_t *l, const void *data, size_t len) {
    if (!len)
        return 0;
    /* posted - ran: on its way to the loop; conn_queued: queued there, not yet written */
    size_t posted = __atomic_load_n(&l->posted, __ATOMIC_ACQUIRE);
    size_t waiting = posted - __atomic_load_n(&l->ran, __ATOMIC_ACQUIRE) +
                     __atomic_load_n(&l->conn_queued, __ATOMIC_ACQUIRE);
    if (waiting > LATER_MAX_QUEUED)
        return -ENOBUFS;
    __atomic_add_fetch(&l->posted, len, __ATOMIC_ACQ_REL);
    int rc = later_post(l, OP_WRITE, 0, NULL, data, len, 0);
    if (rc < 0)
        __atomic_sub_fetch(&l->posted, len, __ATOMIC_ACQ_REL);
    return rc;
}

int pier_http_later_end(pier_http_later_t *l) {
    int rc = later_post(l, OP_END, 0, NULL, NULL, 0, 1);
    if (rc == -ENOMEM)
        later_abort(l); /* as in pier_http_later_send */
    later_unref(l);
    return rc;
}

void pier_http_later_cancel(pier_http_later_t *l) {
    later_abort(l);
    later_unref(l);
}

/* ---- requests ---- */

unsigned pier_http_req_method(const pier_http_req_t *req) { return req->parsed->method; }

const char *pier_http_req_method_name(const pier_http_req_t *req) {
    const char *n = pier__http_method_name(req->parsed->method);
    return n ? n : "OTHER";
}

const char *pier_http_req_path(const pier_http_req_t *req) { return req->path; }

const char *pier_http_req_query_string(const pier_http_req_t *req, size_t *len) {
    if (len)
        *len = req->parsed->query_len;
    return req->parsed->query;
}

const char *pier_http_req_header(const pier_http_req_t *req, const char *name, size_t *len) {
    const pier__http_field_t *f = pier__http_find_field(req->parsed, name, strlen(name));
    if (len)
        *len = f ? f->value_len : 0;
    return f ? f->value : NULL;
}

const char *pier_http_req_param(const pier_http_req_t *req, const char *name, size_t *len) {
    size_t nl = strlen(name);
    for (unsigned i = 0; i < req->match->nparams; i++) {
        const char *pn = req->match->params[i].name;
        int same = pn[0] == '*' ? (nl == 1 && name[0] == '*') : (strncmp(pn, name, nl) == 0 && (pn[nl] == '/' || pn[nl] == '\0'));
        if (same) {
            if (len)
                *len = req->match->params[i].len;
            return req->match->params[i].value;
        }
    }
    return NULL;
}

int pier_http_req_query(const pier_http_req_t *req, const char *key, char *buf, size_t size) {
    const char *q = req->parsed->query, *end = q ? q + req->parsed->query_len : NULL;
    size_t kl = strlen(key);
    char kbuf[256];
    while (q && q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        const char *ke = eq ? eq : pe;
        size_t raw = (size_t)(ke - q);
        if (raw < sizeof kbuf) {
            ssize_t dk = pier__http_pct_decode(kbuf, q, raw, 1);
            if (dk == (ssize_t)kl && memcmp(kbuf, key, kl) == 0) {
                const char *v = eq ? eq + 1 : pe;
                size_t vl = (size_t)(pe - v);
                if (vl + 1 > size) {
                    /* the decoded value may be shorter: decode into scratch to know */
                    char *tmp = malloc(vl + 1);
                    if (!tmp)
                        return -ENOMEM;
                    ssize_t dv = pier__http_pct_decode(tmp, v, vl, 1);
                    int rc = dv < 0 ? -EINVAL : (size_t)dv + 1 > size ? -ENOSPC : (memcpy(buf, tmp, (size_t)dv + 1), (int)dv);
                    free(tmp);
                    return rc;
                }
                ssize_t dv = pier__http_pct_decode(buf, v, vl, 1);
                return dv < 0 ? -EINVAL : (int)dv;
            }
        }
        q = amp ? amp + 1 : end;
    }
    return -ENOENT;
}

const void *pier_http_req_body(const pier_http_req_t *req, size_t *len) {
    if (len)
        *len = req->body_len;
    return req->body;
}

int pier_http_req_minor(const pier_http_req_t *req) { return req->parsed->minor; }

pier_id_t pier_http_req_conn_id(const pier_http_req_t *req) { return req->id; }

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

static void simple(http_conn_t *hc, int status, const char *fields) {
    char body[80];
    int n = snprintf(body, sizeof body, "%d %s\n", status, pier_http_reason(status));
    send_whole(hc, status, "text/plain; charset=utf-8", fields, fields ? strlen(fields) : 0, body, (size_t)n);
}

/* Buffers grown by one large chunked body or a long wait are given back, so an idle
 * keep-alive connection costs its struct and little more. Never while a handler runs:
 * the request, body included, is valid for the whole call, also after it has answered. */
static void trim_body(http_conn_t *hc) {
    if (hc->body_cap > TRIM_ABOVE) {
        free(hc->body);
        hc->body = NULL;
        hc->body_len = hc->body_cap = 0;
    }
}

static void dispatch(http_conn_t *hc, pier__http_request_t *req, const char *body, size_t blen) {
    http_loop_t *hl = hc->hl;
    pier_http_server_t *srv = hc->srv;
    pier_timer_stop(&hc->body_timer); /* the request is complete */
    hc->seq++;
    hc->keep_alive = req->keep_alive;
    hc->minor = req->minor;
    hc->is_head = req->method == PIER_HTTP_HEAD;
    hc->sent_continue = 0;
    hc->stream = 0;
    if (srv->log)
        snprintf(hc->logline, sizeof hc->logline, "%.*s %.*s HTTP/1.%d", (int)req->method_len, req->method_str,
                 (int)(req->target_len > 200 ? 200 : req->target_len), req->target, req->minor);

    ssize_t pl = pier__http_pct_decode(hl->path, req->path, req->path_len, 0);
    if (pl < 0) {
        send_error(hc, 400);
        return;
    }
    unsigned m = req->method;
    if (m == PIER__HTTP_OTHER || m == PIER__HTTP_TRACE) {
        simple(hc, 501, NULL);
        return;
    }
    pier__http_router_match(&srv->router, m, hl->path, &hl->match);
    if (!hl->match.route) {
        char allow[128];
        if (hl->match.allow) {
            allow_field(hl->match.allow, allow, sizeof allow);
            simple(hc, 405, allow);
        } else {
            simple(hc, 404, NULL);
        }
        return;
    }
    hl->hreq = (struct pier_http_req_s){.parsed = req, .path = hl->path, .body = body, .body_len = blen,
                                        .match = &hl->match, .id = pier_conn_id(hc->c), .hc = hc};
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
        res->fields_len = 0;
        simple(hc, 500, NULL);
    } else if (res->state == RES_STREAM) {
        res->state = RES_DONE;
        stream_end(hc);
    }
}

/* ---- reading ---- */

static void send_continue(http_conn_t *hc, const pier__http_request_t *req) {
    if (req->expect_continue && req->minor == 1 && !hc->sent_continue) {
        http_write(hc->c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        hc->sent_continue = 1;
    }
}

/* Both run from a request's first byte (or the accept): the head must arrive within the
 * header timeout, and the whole request, body included, within the body timeout. The
 * idle timeout alone cannot bound a body, since every byte that trickles in resets it. */
static void start_header_timer(http_conn_t *hc) {
    if (!pier_timer_active(&hc->timer))
        pier_timer_start(&hc->timer, hc->srv->header_timeout_ms, 0);
    if (!pier_timer_active(&hc->body_timer))
        pier_timer_start(&hc->body_timer, hc->srv->body_timeout_ms, 0);
}

/* A request head is complete (n bytes of buf). Returns bytes consumed, 0 to wait. */
static size_t head_done(http_conn_t *hc, const char *buf, size_t len, int n) {
    pier__http_request_t *req = &hc->hl->req;
    pier_timer_stop(&hc->timer);
    pier__http_parser_init(&hc->parser);
    if (req->content_length > (int64_t)hc->srv->max_body) {
        hc->logline[0] = '\0';
        send_error(hc, 413);
        return len;
    }
    if (req->chunked) {
        char *copy = realloc(hc->head_copy, (size_t)n);
        if (!copy) {
            send_error(hc, 500);
            return len;
        }
        memcpy(copy, buf, (size_t)n);
        hc->head_copy = copy;
        hc->head_len = (size_t)n;
        hc->body_len = 0;
        pier__chunked_init(&hc->chunked, hc->srv->max_body);
        hc->state = ST_CHUNKED;
        if ((size_t)n == len)
            send_continue(hc, req);
        return (size_t)n;
    }
    size_t cl = req->content_length > 0 ? (size_t)req->content_length : 0;
    if (len - (size_t)n < cl) {
        send_continue(hc, req);
        hc->state = ST_BODY;
        hc->need = (size_t)n + cl;
        return 0;
    }
    dispatch(hc, req, cl ? buf + n : NULL, cl);
    return (size_t)n + cl;
}

static int body_append(http_conn_t *hc, const char *data, size_t n) {
    if (hc->body_len + n > hc->body_cap) {
        size_t cap = hc->body_cap ? hc->body_cap : 4096;
        while (cap < hc->body_len + n)
            cap *= 2;
        char *b = realloc(hc->body, cap);
        if (!b)
            return -ENOMEM;
        hc->body = b;
        hc->body_cap = cap;
    }
    memcpy(hc->body + hc->body_len, data, n);
    hc->body_len += n;
    return 0;
}

static size_t chunked_step(http_conn_t *hc, const char *buf, size_t len) {
    size_t off = 0;
    while (off < len && !hc->chunked.done) {
        const char *data;
        size_t dl;
        ssize_t r = pier__chunked_feed(&hc->chunked, buf + off, len - off, &data, &dl);
        if (r < 0 || (dl && body_append(hc, data, dl) < 0)) {
            hc->logline[0] = '\0';
            send_error(hc, r < 0 ? hc->chunked.status : 500);
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
    if (pier__http_parse_request(&p, &hc->srv->lim, hc->head_copy, hc->head_len, req) != (int)hc->head_len) {
        send_error(hc, 500);
        return len;
    }
    hc->state = ST_HEAD;
    dispatch(hc, req, hc->body, hc->body_len);
    trim_body(hc);
    return off;
}

/* Handles one request or part of one. Returns bytes consumed; *more says whether to go on. */
static size_t step(http_conn_t *hc, const char *buf, size_t len, int *more) {
    pier__http_request_t *req = &hc->hl->req;
    *more = 0;
    switch (hc->state) {
    case ST_HEAD: {
        start_header_timer(hc);
        int n = pier__http_parse_request(&hc->parser, &hc->srv->lim, buf, len, req);
        if (n == -2)
            return 0;
        if (n < 0) {
            hc->logline[0] = '\0';
            send_error(hc, req->status);
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

static size_t process(http_conn_t *hc, const char *buf, size_t len) {
    size_t off = 0;
    int more = 1;
    while (more && off < len && (hc->state == ST_HEAD || hc->state == ST_BODY || hc->state == ST_CHUNKED)) {
        if (hc->state == ST_HEAD && pier_conn_queued(hc->c) > OUT_HIGH) {
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

static int pending_add(http_conn_t *hc, const char *data, size_t n) {
    size_t limit = hc->srv->lim.max_head + hc->srv->max_body + 65536;
    if (hc->pending_len + n > limit)
        return -EMSGSIZE;
    if (hc->pending_len + n > hc->pending_cap) {
        size_t cap = hc->pending_cap ? hc->pending_cap : 4096;
        while (cap < hc->pending_len + n)
            cap *= 2;
        char *p = realloc(hc->pending, cap);
        if (!p)
            return -ENOMEM;
        hc->pending = p;
        hc->pending_cap = cap;
    }
    memcpy(hc->pending + hc->pending_len, data, n);
    hc->pending_len += n;
    return 0;
}

/* Runs the requests that waited behind a deferred response. */
static void process_pending(http_conn_t *hc) {
    if (!hc->pending_len)
        return;
    pier_conn_ref(hc->c);
    pier_conn_t *c = hc->c;
    size_t used = process(hc, hc->pending, hc->pending_len);
    if (pier_conn_data(c) == hc) {
        memmove(hc->pending, hc->pending + used, hc->pending_len - used);
        hc->pending_len -= used;
        if (hc->pending_len == 0 && hc->pending_cap > TRIM_ABOVE) {
            free(hc->pending); /* not before: process() was reading it */
            hc->pending = NULL;
            hc->pending_cap = 0;
        }
        /* the peer half-closed: once nothing waits on a deferred response, what is left
         * is at most an incomplete request that can never complete */
        if (hc->eof && (hc->state == ST_HEAD || hc->state == ST_BODY || hc->state == ST_CHUNKED)) {
            hc->state = ST_CLOSED;
            pier_conn_close(c);
        }
    }
    pier_conn_unref(c);
}

static size_t on_read(pier_conn_t *c, const char *data, size_t len) {
    http_conn_t *hc = pier_conn_data(c);
    if (!hc || hc->state == ST_CLOSED)
        return len;
    if (hc->state == ST_WAIT || hc->pending_len) {
        if (pending_add(hc, data, len) < 0) {
            hc->state = ST_CLOSED;
            pier_conn_abort(c);
            return len;
        }
        if (hc->state != ST_WAIT)
            process_pending(hc);
        return len;
    }
    size_t used = process(hc, data, len);
    if (hc->state == ST_WAIT && used < len) {
        if (pending_add(hc, data + used, len - used) < 0) {
            hc->state = ST_CLOSED;
            pier_conn_abort(c);
        }
        used = len;
    }
    return used;
}

static void on_eof(pier_conn_t *c) {
    http_conn_t *hc = pier_conn_data(c);
    /* a client may half-close after its last request: answer it, then close */
    if (hc && hc->state == ST_WAIT) {
        hc->eof = 1;
        if (!hc->pending_len)
            hc->keep_alive = 0; /* the last answer: it says Connection: close */
        return;
    }
    pier_conn_close(c);
}

/* The answers queued before a pause have drained: go on with the requests that wait. */
static void on_drain(pier_conn_t *c) {
    http_conn_t *hc = pier_conn_data(c);
    if (hc)
        later_note_queued(hc); /* a deferred response may write again */
    if (!hc || !hc->held)
        return;
    hc->held = 0;
    pier_conn_resume(c); /* the core hands its kept bytes to on_read again */
    if (hc->state == ST_HEAD)
        process_pending(hc);
}

static void on_close(pier_conn_t *c, int err) {
    (void)err;
    http_conn_t *hc = pier_conn_data(c);
    if (!hc)
        return;
    pier_timer_stop(&hc->timer);
    pier_timer_stop(&hc->body_timer);
    later_detach(hc);
    pier_conn_set_data(c, NULL);
    free(hc->head_copy);
    free(hc->body);
    free(hc->pending);
    free(hc);
}

static void on_header_timeout(pier_timer_t *t) {
    http_conn_t *hc = t->data;
    if (hc->state != ST_HEAD && hc->state != ST_BODY)
        return;
    hc->logline[0] = '\0';
    send_error(hc, 408);
}

/* The request, head and body, did not arrive in time (a body trickled byte by byte). */
static void on_body_timeout(pier_timer_t *t) {
    http_conn_t *hc = t->data;
    if (hc->state != ST_HEAD && hc->state != ST_BODY && hc->state != ST_CHUNKED)
        return;
    hc->logline[0] = '\0';
    send_error(hc, 408);
}

static const pier_conn_cbs_t conn_cbs = {
    .on_read = on_read,
    .on_drain = on_drain,
    .on_eof = on_eof,
    .on_close = on_close,
};

static void on_accept(pier_server_t *s, pier_conn_t *c) {
    pier_http_server_t *srv = pier_server_data(s);
    http_loop_t *hl = NULL;
    for (unsigned i = 0; i < srv->nloops; i++)
        if (srv->loops[i].loop == pier_conn_loop(c))
            hl = &srv->loops[i];
    http_conn_t *hc = hl ? calloc(1, sizeof *hc) : NULL;
    if (!hc) {
        pier_conn_abort(c);
        return;
    }
    hc->srv = srv;
    hc->hl = hl;
    hc->c = c;
    hc->state = ST_HEAD;
    pier__http_parser_init(&hc->parser);
    pier_timer_init(pier_conn_loop(c), &hc->timer, on_header_timeout, hc);
    pier_timer_init(pier_conn_loop(c), &hc->body_timer, on_body_timeout, hc);
    pier_conn_set_cbs(c, &conn_cbs, hc);
    start_header_timer(hc);
}

/* ---- server ---- */

static void server_free_parts(pier_http_server_t *srv) {
    if (srv->loops)
        for (unsigned i = 0; i < srv->nloops; i++) {
            free(srv->loops[i].out);
            free(srv->loops[i].path);
        }
    free(srv->loops);
    for (unsigned i = 0; i < srv->nstatics; i++)
        pier__http_static_free(srv->statics[i]);
    free(srv->statics);
    pier__http_router_free(&srv->router);
    if (srv->log)
        fclose(srv->log);
    free(srv->host);
    free(srv->server_name);
    free(srv);
}

int pier_http_server_new(pier_http_server_t **out, pier_group_t *group, const pier_http_opts_t *opts) {
    static const pier_http_opts_t none;
    const pier_http_opts_t *o = opts ? opts : &none;
    if (!out || !group)
        return -EINVAL;
    pier_http_server_t *srv = calloc(1, sizeof *srv);
    if (!srv)
        return -ENOMEM;
    int rc = -ENOMEM;
    srv->group = group;
    srv->lim.max_head = o->max_head ? o->max_head : DEFAULT_MAX_HEAD;
    srv->lim.max_target = o->max_target ? o->max_target : DEFAULT_MAX_TARGET;
    srv->lim.max_fields = PIER__HTTP_MAX_FIELDS;
    if (srv->lim.max_head > (1u << 20) || srv->lim.max_target > srv->lim.max_head) {
        rc = -EINVAL;
        goto fail;
    }
    srv->max_body = o->max_body ? o->max_body : DEFAULT_MAX_BODY;
    srv->keepalive_ms = o->keepalive_ms ? o->keepalive_ms : DEFAULT_KEEPALIVE_MS;
    srv->header_timeout_ms = o->header_timeout_ms ? o->header_timeout_ms : DEFAULT_HEADER_TIMEOUT_MS;
    srv->body_timeout_ms = o->body_timeout_ms ? o->body_timeout_ms : DEFAULT_BODY_TIMEOUT_MS;
    srv->max_conns = o->max_conns ? o->max_conns : DEFAULT_MAX_CONNS;
    srv->host = strdup(o->host ? o->host : "127.0.0.1");
    srv->server_name = strdup(o->server_name ? o->server_name : "pier");
    if (!srv->host || !srv->server_name)
        goto fail;
    if (!valid_field("Server", srv->server_name)) {
        rc = -EINVAL;
        goto fail;
    }
    if (o->access_log && !(srv->log = fopen(o->access_log, "ae"))) {
        rc = -errno;
        goto fail;
    }
    srv->nloops = pier_group_size(group);
    srv->loops = calloc(srv->nloops, sizeof *srv->loops);
    if (!srv->loops)
        goto fail;
    for (unsigned i = 0; i < srv->nloops; i++) {
        srv->loops[i].loop = pier_group_loop(group, i);
        srv->loops[i].srv = srv;
        if (!(srv->loops[i].path = malloc(srv->lim.max_target + 1)))
            goto fail;
    }
    pier_server_opts_t so = {
        .host = srv->host,
        .port = o->port,
        .max_conns = srv->max_conns,
        .limits = {.out_high = OUT_HIGH,
                   .out_low = OUT_LOW,
                   .read_max = srv->lim.max_head + srv->max_body + 65536,
                   .idle_ms = srv->keepalive_ms},
        .on_accept = on_accept,
        .data = srv,
    };
    rc = pier_server_new(&srv->srv, group, &so);
    if (rc < 0)
        goto fail;
    *out = srv;
    return 0;
fail:
    server_free_parts(srv);
    return rc;
}

int pier_http_route(pier_http_server_t *srv, unsigned methods, const char *pattern, pier_http_handler_cb handler,
                    void *ud) {
    if (srv->started)
        return -EBUSY;
    return pier__http_router_add(&srv->router, methods, pattern, handler, ud);
}

int pier_http_static(pier_http_server_t *srv, const char *prefix, const char *root_dir) {
    size_t pl = prefix ? strlen(prefix) : 0;
    if (!pl || prefix[0] != '/' || prefix[pl - 1] != '/' || pl > 1000)
        return -EINVAL;
    if (srv->started)
        return -EBUSY;
    pier__http_static_t **arr = realloc(srv->statics, (srv->nstatics + 1) * sizeof *arr);
    if (!arr)
        return -ENOMEM;
    srv->statics = arr;
    pier__http_static_t *st;
    int rc = pier__http_static_new(&st, root_dir);
    if (rc < 0)
        return rc;
    char pattern[1024];
    snprintf(pattern, sizeof pattern, "%s*", prefix);
    rc = pier__http_router_add(&srv->router, PIER_HTTP_GET | PIER_HTTP_HEAD, pattern, pier__http_static_handler, st);
    if (rc < 0) {
        pier__http_static_free(st);
        return rc;
    }
    srv->statics[srv->nstatics++] = st;
    return 0;
}

int pier_http_server_start(pier_http_server_t *srv) {
    srv->started = 1;
    return pier_server_start(srv->srv);
}

void pier_http_server_stop(pier_http_server_t *srv) {
    pier_server_stop(srv->srv);
    pier_server_close_all(srv->srv);
}

void pier_http_server_abort_all(pier_http_server_t *srv) { pier_server_abort_all(srv->srv); }

unsigned pier_http_server_conns(const pier_http_server_t *srv) { return pier_server_conns(srv->srv); }

int pier_http_server_free(pier_http_server_t *srv) {
    if (!srv)
        return 0;
    int rc = pier_server_free(srv->srv);
    if (rc < 0)
        return rc;
    server_free_parts(srv);
    return 0;
}

uint16_t pier_http_server_port(const pier_http_server_t *srv) { return pier_server_port(srv->srv); }

uint64_t pier_http_server_requests(const pier_http_server_t *srv) {
    uint64_t n = 0;
    for (unsigned i = 0; i < srv->nloops; i++)
        n += __atomic_load_n(&srv->loops[i].requests, __ATOMIC_RELAXED);
    return n;
}
