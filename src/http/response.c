/* Responses: the head is built in the loop's buffer and queued together with its body.
 *
 * One protocol unit, one write (pier_conn_writev, all or nothing): a response with a
 * length is its head and body; a streamed response is its head, then each chunk (size
 * line, data, CRLF), then the last chunk; a file response is its head and the file
 * (pier_conn_writev_file). When a unit cannot be queued (memory ran out, or the client
 * has gone), nothing of it went out, but the stream is past saving all the same: the
 * client would read the next unit as the rest of this response, or a later pipelined
 * response as the answer to this request. The connection is then reset, and nothing more
 * is written to it.
 *
 * The writes only queue: everything queued in one loop iteration leaves in one writev at
 * its end, so pipelined responses still share one system call.
 */
#include "http/http_int.h"
#include "net/conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The fixed parts of a head, at most: status line without the reason, Content-Type and
 * Content-Length or Transfer-Encoding without their values, Connection, final CRLF. */
#define HEAD_FIXED 128
/* Bodies up to this size are copied after the head and queued as one piece: cheaper for
 * the core than a second buffer in the unit. */
#define INLINE_BODY 1024

int (*pier__http_writev)(pier_conn_t *c, const struct iovec *iov, int iovcnt) = pier_conn_writev;
int (*pier__http_writev_file)(pier_conn_t *c, const struct iovec *iov, int iovcnt, int fd, off_t offset,
                              size_t len) = pier_conn_writev_file;

int pier__http_valid_field(const char *name, const char *value) {
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

static int valid_status(int status) { return status >= 200 && status <= 999; }

static int status_has_body(int status) { return status >= 200 && status != 204 && status != 304; }

/* A unit could not be queued: reset the connection (see the top of this file). */
static void fail_response(pier__http_conn_t *hc, int err) {
    if (!__atomic_exchange_n(&hc->srv->warned_write, 1, __ATOMIC_RELAXED))
        pier_log(PIER_LOG_WARN, "http: a response could not be queued (%s); its connection was reset (said once)",
                 pier_strerror(err));
    hc->state = ST_CLOSED;
    hc->stream = 0;
    pier_conn_abort(hc->c);
}

int pier__http_write_unit(pier__http_conn_t *hc, const struct iovec *iov, int iovcnt) {
    int err = pier__http_writev(hc->c, iov, iovcnt);
    if (err < 0)
        fail_response(hc, err);
    return err;
}

/* ---- the head ---- */

/* The Server and Date fields, formatted again only when the loop's second changes. */
static void refresh_common(pier__http_loop_t *hl) {
    uint64_t sec = pier_loop_now(hl->loop) / 1000;
    if (sec == hl->date_sec && hl->common_len)
        return;
    hl->date_sec = sec;
    pier__http_date(time(NULL), hl->date);
    int n = snprintf(hl->common, sizeof hl->common, "Server: %s\r\nDate: %s\r\n", hl->srv->server_name, hl->date);
    hl->common_len = n > 0 && (size_t)n < sizeof hl->common ? (size_t)n : 0;
}

/* Plain copies into room reserved beforehand: this runs once per response. */
static inline void put(pier__buf_t *b, const void *p, size_t n) {
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void put_u64(pier__buf_t *b, uint64_t v) {
    char tmp[24];
    size_t i = sizeof tmp;
    do
        tmp[--i] = (char)('0' + v % 10);
    while (v /= 10);
    put(b, tmp + i, sizeof tmp - i);
}

static void put_status(pier__buf_t *b, int status, const char *reason, size_t rl) {
    if (status == 200) {
        put(b, "HTTP/1.1 200 OK\r\n", 17);
        return;
    }
    put(b, "HTTP/1.1 ", 9);
    put_u64(b, (uint64_t)status);
    put(b, " ", 1);
    put(b, reason, rl);
    put(b, "\r\n", 2);
}

/* Builds the status line and fields in hl->out, with room for extra more bytes after
 * them. content_length < 0: the body is streamed (chunked in HTTP/1.1, until close in
 * HTTP/1.0). 0, or -ENOMEM. */
static int build_head(pier__http_conn_t *hc, int status, const char *ctype, const char *fields, size_t flen,
                      int64_t content_length, size_t extra) {
    pier__http_loop_t *hl = hc->hl;
    pier__buf_t *b = &hl->out;
    const char *reason = status == 200 ? "" : pier_http_reason(status);
    size_t rl = status == 200 ? 0 : strlen(reason), cl = ctype ? strlen(ctype) : 0;
    refresh_common(hl);
    pier__buf_reset(b);
    size_t need = HEAD_FIXED + rl + cl + hl->common_len + flen + extra;
    if (b->cap < need && pier__buf_reserve(b, need) < 0)
        return -ENOMEM;
    put_status(b, status, reason, rl);
    put(b, hl->common, hl->common_len);
    if (status_has_body(status)) {
        if (ctype) {
            put(b, "Content-Type: ", 14);
            put(b, ctype, cl);
            put(b, "\r\n", 2);
        }
        if (content_length >= 0) {
            put(b, "Content-Length: ", 16);
            put_u64(b, (uint64_t)content_length);
            put(b, "\r\n", 2);
        } else if (hc->minor == 1) {
            put(b, "Transfer-Encoding: chunked\r\n", 28);
        } else {
            hc->keep_alive = 0;
        }
    }
    if (status != 101 && __atomic_load_n(&hc->srv->draining, __ATOMIC_RELAXED))
        hc->keep_alive = 0; /* the server stops: this is the connection's last answer */
    if (!hc->keep_alive)
        put(b, "Connection: close\r\n", 19);
    else if (hc->minor == 0)
        put(b, "Connection: keep-alive\r\n", 24);
    if (flen) /* fields may be NULL then */
        put(b, fields, flen);
    put(b, "\r\n", 2);
    return 0;
}

/* ---- after a response ---- */

static void access_log(pier__http_conn_t *hc, int status) {
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

/* Counts an answered request in the loop's metrics: its method, status and duration. */
static void count_response(pier__http_conn_t *hc, int status) {
    uint32_t ms = hc->mx_method ? (uint32_t)pier_loop_now(hc->hl->loop) - hc->mx_t0 : 0;
    pier__mx_http(hc->hl->mx, hc->mx_method ? hc->mx_method - 1u : PIER_METRICS_OTHER, status, ms);
    hc->mx_method = 0;
}

/* The response is complete: log it, then either close or wait for the next request. */
static void response_done(pier__http_conn_t *hc, int status) {
    if (hc->later)
        pier__http_later_detach(hc);
    __atomic_fetch_add(&hc->hl->requests, 1, __ATOMIC_RELAXED);
    count_response(hc, status);
    access_log(hc, status);
    hc->stream = 0;
    /* after a half-close, requests that waited behind this one still get answered */
    if (!hc->keep_alive || (hc->eof && !hc->pending.len)) {
        hc->state = ST_CLOSED;
        /* A client that asked to close after a whole request, and sent nothing after
         * it, has said its last word: no wait for its FIN (the core still lingers if a
         * byte came after all). A close of the server's own (an error, a drain) lingers. */
        if (hc->asked_close && !hc->pending.len)
            pier__conn_close_peer_done(hc->c);
        else
            pier_conn_close(hc->c);
    } else {
        hc->state = ST_HEAD;
    }
}

/* ---- the units ---- */

int pier__http_send(pier__http_conn_t *hc, int status, const char *ctype, const char *fields, size_t flen,
                    const void *body, size_t len) {
    int with_body = status_has_body(status);
    int64_t clen = with_body ? (int64_t)len : -1;
    if (!with_body || hc->is_head)
        len = 0;
    int inline_body = len <= INLINE_BODY;
    pier__buf_t *out = &hc->hl->out;
    int err = build_head(hc, status, ctype, fields, flen, clen, inline_body ? len : 0);
    if (err < 0) {
        fail_response(hc, err);
        return err;
    }
    if (inline_body && len)
        put(out, body, len);
    struct iovec iov[2] = {{out->p, out->len}, {(void *)body, len}};
    err = pier__http_write_unit(hc, iov, inline_body ? 1 : 2);
    if (err < 0)
        return err;
    hc->sent_bytes = len;
    response_done(hc, status);
    return 0;
}

int pier__http_send_status(pier__http_conn_t *hc, int status, const char *fields) {
    char body[80];
    int n = snprintf(body, sizeof body, "%d %s\n", status, pier_http_reason(status));
    return pier__http_send(hc, status, "text/plain; charset=utf-8", fields, fields ? strlen(fields) : 0, body,
                           (size_t)n);
}

void pier__http_send_error(pier__http_conn_t *hc, int status) {
    hc->keep_alive = 0;
    hc->is_head = 0;
    if (!hc->logline[0])
        snprintf(hc->logline, sizeof hc->logline, "-");
    pier__http_send_status(hc, status, NULL);
}

/* Takes fd in every case. */
static int send_file(pier__http_conn_t *hc, int status, const char *ctype, const char *fields, size_t flen, int fd,
                     off_t offset, size_t len) {
    if (!status_has_body(status))
        len = 0;
    int err = build_head(hc, status, ctype, fields, flen, (int64_t)len, 0);
    if (err < 0) {
        close(fd);
        fail_response(hc, err);
        return err;
    }
    if (hc->is_head)
        len = 0; /* the head alone; pier_conn_writev_file closes fd */
    struct iovec iov = {hc->hl->out.p, hc->hl->out.len};
    err = pier__http_writev_file(hc->c, &iov, 1, fd, offset, len);
    if (err < 0) {
        fail_response(hc, err);
        return err;
    }
    hc->sent_bytes = len;
    response_done(hc, status);
    return 0;
}

int pier__http_stream_begin(pier__http_conn_t *hc, int status, const char *ctype, const char *fields,
                            size_t flen) {
    int err = build_head(hc, status, ctype, fields, flen, -1, 0);
    if (err < 0) {
        fail_response(hc, err);
        return err;
    }
    struct iovec iov = {hc->hl->out.p, hc->hl->out.len};
    err = pier__http_write_unit(hc, &iov, 1);
    if (err < 0)
        return err; /* hc->stream stays 0: later writes send nothing */
    hc->sent_bytes = 0;
    hc->stream = status;
    return 0;
}

int pier__http_stream_write(pier__http_conn_t *hc, const void *data, size_t len) {
    if (hc->state == ST_CLOSED)
        return -ENOTCONN;
    if (!len || hc->is_head || !status_has_body(hc->stream))
        return 0;
    char size[24];
    struct iovec iov[3] = {{size, 0}, {(void *)data, len}, {(void *)"\r\n", 2}};
    int err;
    if (hc->minor == 1) {
        iov[0].iov_len = (size_t)snprintf(size, sizeof size, "%zx\r\n", len);
        err = pier__http_write_unit(hc, iov, 3);
    } else {
        err = pier__http_write_unit(hc, iov + 1, 1);
    }
    if (err < 0)
        return err;
    hc->sent_bytes += len;
    return 0;
}

int pier__http_stream_end(pier__http_conn_t *hc) {
    if (hc->state == ST_CLOSED)
        return -ENOTCONN;
    if (hc->minor == 1 && !hc->is_head && status_has_body(hc->stream)) {
        struct iovec iov = {(void *)"0\r\n\r\n", 5};
        int err = pier__http_write_unit(hc, &iov, 1);
        if (err < 0)
            return err;
    }
    response_done(hc, hc->stream);
    return 0;
}

/* ---- the public calls, for handlers ---- */

int pier_http_res_header(pier_http_res_t *res, const char *name, const char *value) {
    if (res->state != RES_FRESH)
        return -EALREADY;
    if (!pier__http_valid_field(name, value))
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
    if (!valid_status(status))
        return -EINVAL;
    res->state = RES_DONE;
    return pier__http_send(res->hc, status, content_type, res->fields, res->fields_len, body, len);
}

int pier_http_res_sendfile(pier_http_res_t *res, int status, const char *content_type, int fd, off_t offset,
                           size_t len) {
    if (res->state != RES_FRESH || fd < 0 || offset < 0 || !valid_status(status)) {
        if (fd >= 0)
            close(fd);
        return res->state != RES_FRESH ? -EALREADY : -EINVAL;
    }
    res->state = RES_DONE;
    return send_file(res->hc, status, content_type, res->fields, res->fields_len, fd, offset, len);
}

int pier_http_res_begin(pier_http_res_t *res, int status, const char *content_type) {
    if (res->state != RES_FRESH)
        return -EALREADY;
    if (!valid_status(status))
        return -EINVAL;
    res->state = RES_STREAM;
    return pier__http_stream_begin(res->hc, status, content_type, res->fields, res->fields_len);
}

int pier_http_res_write(pier_http_res_t *res, const void *data, size_t len) {
    if (res->state != RES_STREAM)
        return -EINVAL;
    return pier__http_stream_write(res->hc, data, len);
}

int pier_http_res_end(pier_http_res_t *res) {
    if (res->state != RES_STREAM)
        return -EINVAL;
    res->state = RES_DONE;
    return pier__http_stream_end(res->hc);
}

/* The 101 is a unit like any response; after it the stream is no longer HTTP, so the
 * connection is handed over (conn.c) instead of waiting for another request. */
int pier_http_res_upgrade(pier_http_res_t *res, const char *protocol, pier_http_upgrade_cb cb, void *arg) {
    if (res->state != RES_FRESH)
        return -EALREADY;
    pier__http_conn_t *hc = res->hc;
    if (!cb || !protocol || !*protocol || hc->minor != 1 || hc->is_head ||
        !pier__http_valid_field("Upgrade", protocol))
        return -EINVAL;
    int err = pier_http_res_header(res, "Connection", "Upgrade");
    err = err ? err : pier_http_res_header(res, "Upgrade", protocol);
    if (err < 0)
        return err;
    res->state = RES_DONE;
    hc->keep_alive = 1; /* the head then carries no Connection field of its own */
    err = build_head(hc, 101, NULL, res->fields, res->fields_len, -1, 0);
    if (err < 0) {
        fail_response(hc, err);
        return err;
    }
    struct iovec iov = {hc->hl->out.p, hc->hl->out.len};
    if ((err = pier__http_write_unit(hc, &iov, 1)) < 0)
        return err;
    hc->sent_bytes = 0;
    __atomic_fetch_add(&hc->hl->requests, 1, __ATOMIC_RELAXED);
    count_response(hc, 101);
    access_log(hc, 101);
    hc->state = ST_UPGRADE;
    hc->upgrade_cb = cb;
    hc->upgrade_arg = arg;
    return 0;
}
