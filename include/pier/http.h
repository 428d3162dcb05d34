/* pier HTTP/1.1 server: a strict parser, a router, responses with a length or streamed
 * in chunks, deferred responses finished from any thread, and static files.
 *
 *   pier_http_server_t *srv = NULL;
 *   pier_http_opts_t o = {.port = 8888};
 *   pier_http_server_new(&srv, group, &o);
 *   pier_http_route(srv, PIER_HTTP_GET, "/hello/:name", hello, NULL);
 *   pier_http_server_start(srv);
 *   pier_group_run(group);
 *
 * Ownership: the application creates and frees the group and the server; the server never
 * frees the group it was given. Requests and responses belong to the server and are only
 * valid during the handler call, except a response turned into a pier_http_later_t, which
 * is the application's until it finishes it.
 *
 * Threads: handlers run on the loop that owns the connection. Routes are added before
 * pier_http_server_start(). The pier_http_later_* calls may be made from any thread.
 *
 * Errors: functions return 0 or a negative errno (pier_strerror() names them).
 */
#ifndef PIER_HTTP_H
#define PIER_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "loop.h"
#include "net.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pier_http_server_s pier_http_server_t;
typedef struct pier_http_req_s pier_http_req_t;
typedef struct pier_http_res_s pier_http_res_t;
typedef struct pier_http_later_s pier_http_later_t;

/* Methods, as bits: a route may take several (PIER_HTTP_GET | PIER_HTTP_POST). A route
 * for GET also answers HEAD, without the body. */
enum {
    PIER_HTTP_GET = 1u << 0,
    PIER_HTTP_HEAD = 1u << 1,
    PIER_HTTP_POST = 1u << 2,
    PIER_HTTP_PUT = 1u << 3,
    PIER_HTTP_DELETE = 1u << 4,
    PIER_HTTP_PATCH = 1u << 5,
    PIER_HTTP_OPTIONS = 1u << 6,
    PIER_HTTP_ANY = 0x7fu,
};

/* Runs on the connection's loop for each complete request (head and body). Before it
 * returns it must either answer (pier_http_res_send, or begin/write/end) or take the
 * response with pier_http_res_later(). A handler that does neither gets a 500 sent. */
typedef void (*pier_http_handler_cb)(pier_http_req_t *req, pier_http_res_t *res, void *ud);

typedef struct pier_http_opts_s {
    const char *host;             /* default 127.0.0.1 */
    uint16_t port;                /* 0: ephemeral, see pier_http_server_port() */
    unsigned max_conns;           /* default 10000; over it new connections are closed */
    size_t max_head;              /* request line and fields (8 KiB); over it: 431 */
    size_t max_target;            /* request-target (4 KiB); over it: 414 */
    size_t max_body;              /* request body (1 MiB); over it: 413 */
    uint64_t keepalive_ms;        /* a connection without I/O for this long is closed (60 s);
                                   * this also bounds how long a deferred response may take */
    uint64_t header_timeout_ms;   /* a request head must arrive within (10 s), else 408 */
    uint64_t body_timeout_ms;     /* the whole request, head and body, must arrive within
                                   * (60 s) from its first byte, else 408 and close */
    const char *server_name;      /* Server header value (default "pier") */
    const char *access_log;       /* path to append common-log-format lines to; NULL: none */
    pier_tls_ctx_t *tls;          /* HTTPS: a server context (tls.h); NULL: plain HTTP */
    pier_proxy_opts_t proxy;      /* PROXY protocol (net.h): the access log then shows
                                   * the client's address from the header */
} pier_http_opts_t;

/* ---- server ---- */

/* Creates a server on every loop of group (SO_REUSEPORT), bound and listening at once.
 * *out is the caller's to free with pier_http_server_free(). -EADDRINUSE, -EINVAL for a
 * bad host or option, -ENOMEM, or -errno opening the access log. */
PIER_EXTERN int pier_http_server_new(pier_http_server_t **out, pier_group_t *group, const pier_http_opts_t *opts);

/* Adds a route; call before pier_http_server_start(). pattern is an absolute path with
 * optional ":name" segments (one segment each) and an optional final "*" that matches
 * the rest of the path. An exact path wins over one with parameters, which wins over a
 * wildcard; among wildcards the longest prefix wins. The path is matched after
 * percent-decoding. -EINVAL for a bad pattern or method set, -EEXIST if the same
 * pattern already has one of these methods, -EBUSY once started, -ENOMEM. */
PIER_EXTERN int pier_http_route(pier_http_server_t *srv, unsigned methods, const char *pattern,
                                pier_http_handler_cb handler, void *ud);

/* As pier_http_route, and the server owns ud: ud_free(ud) runs once when the server is
 * freed (pier_http_server_free), on the thread that frees it, after every handler call
 * has returned. On error ud_free(ud) has already run, so ud never leaks. ud_free may be
 * NULL (then this is pier_http_route). */
PIER_EXTERN int pier_http_route_ud(pier_http_server_t *srv, unsigned methods, const char *pattern,
                                   pier_http_handler_cb handler, void *ud, void (*ud_free)(void *ud));

/* Serves the files under root_dir for GET and HEAD on prefix "/x/" (the pattern "/x/"
 * followed by a star), as an ordinary route (pier_http_route_ud). Nothing outside
 * root_dir can be reached: dot segments, dotfiles and encoded slashes are refused, and
 * symbolic links are not followed. A directory serves its index.html, or else a listing
 * of its visible files. Files carry ETag and Last-Modified and answer conditional
 * requests (304) and ranges: 206 for one range, 206 multipart/byteranges for several
 * (at most 16, not overlapping, 1 MiB of parts in all; beyond that the whole file).
 * root_dir is opened now; -ENOENT/-ENOTDIR/-EACCES if it cannot be, -EINVAL for a prefix
 * that does not start and end with '/', and the errors of pier_http_route. */
PIER_EXTERN int pier_http_static(pier_http_server_t *srv, const char *prefix, const char *root_dir);

/* Starts accepting (thread-safe). */
PIER_EXTERN int pier_http_server_start(pier_http_server_t *srv);
/* Stops accepting and closes every connection gracefully (thread-safe). */
PIER_EXTERN void pier_http_server_stop(pier_http_server_t *srv);
/* Resets every open connection, dropping queued output (thread-safe): for the end of a
 * shutdown's grace period. */
PIER_EXTERN void pier_http_server_abort_all(pier_http_server_t *srv);
/* The TCP server underneath (pier_server_stop, pier_server_abort_all...); it stays the
 * HTTP server's: never free it. */
PIER_EXTERN pier_server_t *pier_http_server_net(const pier_http_server_t *srv);
/* Connections open now. */
PIER_EXTERN unsigned pier_http_server_conns(const pier_http_server_t *srv);
/* Frees a stopped server whose connections have all closed; -EBUSY before (run the loops
 * a little longer and retry). Never frees the group. */
PIER_EXTERN int pier_http_server_free(pier_http_server_t *srv);
PIER_EXTERN uint16_t pier_http_server_port(const pier_http_server_t *srv);
/* Requests answered so far, all loops (approximate while running). */
PIER_EXTERN uint64_t pier_http_server_requests(const pier_http_server_t *srv);

/* ---- requests (handler only) ---- */

PIER_EXTERN unsigned pier_http_req_method(const pier_http_req_t *req);      /* PIER_HTTP_* */
PIER_EXTERN const char *pier_http_req_method_name(const pier_http_req_t *req);
/* The percent-decoded path ("/a b" for "/a%20b"), NUL-terminated. */
PIER_EXTERN const char *pier_http_req_path(const pier_http_req_t *req);
/* The path as the client sent it, before percent-decoding and without the query; *len
 * gets its length. Not NUL-terminated. For a handler that must tell "%2F" from "/". */
PIER_EXTERN const char *pier_http_req_raw_path(const pier_http_req_t *req, size_t *len);
/* The raw query string after '?', or NULL; *len its length. */
PIER_EXTERN const char *pier_http_req_query_string(const pier_http_req_t *req, size_t *len);
/* The first field named name (case-insensitive) or NULL; *len gets its length. Values are
 * not NUL-terminated. */
PIER_EXTERN const char *pier_http_req_header(const pier_http_req_t *req, const char *name, size_t *len);
/* The ":name" segment of the matched route, or the "*" part for name "*"; NULL if none. */
PIER_EXTERN const char *pier_http_req_param(const pier_http_req_t *req, const char *name, size_t *len);
/* Decodes query parameter key into buf (NUL-terminated). Returns its length, -ENOENT if
 * absent, -ENOSPC if buf is too small, -EINVAL for a bad escape. */
PIER_EXTERN int pier_http_req_query(const pier_http_req_t *req, const char *key, char *buf, size_t size);
PIER_EXTERN const void *pier_http_req_body(const pier_http_req_t *req, size_t *len);
/* 0 for HTTP/1.0, 1 for HTTP/1.1. */
PIER_EXTERN int pier_http_req_minor(const pier_http_req_t *req);
/* The connection's id, usable from any thread (net.h). */
PIER_EXTERN pier_id_t pier_http_req_conn_id(const pier_http_req_t *req);

/* ---- responses (handler only) ----
 *
 * Each response, and each chunk of a streamed one, is queued whole or not at all. If it
 * cannot be queued (memory ran out, or the client has gone), the connection is reset,
 * since a half-sent response would garble every later one, and the call returns that
 * error (-ENOMEM, -ENOTCONN); later calls for the same response return -ENOTCONN. The
 * handler need do nothing more about it. */

/* Adds a response field (copied). -EINVAL for a name or value that would break the head
 * (CR, LF, NUL, a name that is not a token), -ENOSPC past 4 KiB of fields, -EALREADY
 * once the head is sent. */
PIER_EXTERN int pier_http_res_header(pier_http_res_t *res, const char *name, const char *value);
/* Sends a whole response with Content-Length; body is copied. content_type may be NULL.
 * -EALREADY if a response was already sent, -EINVAL for a status outside 200..999. */
PIER_EXTERN int pier_http_res_send(pier_http_res_t *res, int status, const char *content_type,
                                   const void *body, size_t len);
/* As pier_http_res_send, with a body of len bytes of the file fd from offset, sent with
 * sendfile() without copying (nothing of it for HEAD). Takes fd in every case: it is
 * closed once sent, or on error. The file must not shrink meanwhile (the connection is
 * then reset). -EALREADY, -EINVAL as for pier_http_res_send, also for fd < 0. */
PIER_EXTERN int pier_http_res_sendfile(pier_http_res_t *res, int status, const char *content_type, int fd,
                                       off_t offset, size_t len);
/* Streams a response: begin sends the head (chunked for HTTP/1.1; for HTTP/1.0 the end
 * of the body is the end of the connection), write sends a chunk (copied; empty writes
 * are ignored), end finishes it. */
PIER_EXTERN int pier_http_res_begin(pier_http_res_t *res, int status, const char *content_type);
PIER_EXTERN int pier_http_res_write(pier_http_res_t *res, const void *data, size_t len);
PIER_EXTERN int pier_http_res_end(pier_http_res_t *res);

/* Takes the response out of the handler, to be finished later from any thread. Further
 * requests on the connection wait (responses stay in order). Fields added with
 * pier_http_res_header() are kept. NULL on -ENOMEM (then the server answers 500). */
PIER_EXTERN pier_http_later_t *pier_http_res_later(pier_http_res_t *res);

/* ---- protocol upgrades (WebSocket and the like) ---- */

/* Takes a connection over from the HTTP layer. Runs on the connection's loop, once, after
 * the handler has returned and the 101 has been queued; by then the HTTP layer has freed
 * its state of the connection and cleared its callbacks and data. It must set its own
 * (pier_conn_set_cbs) and may change the limits (pier_conn_set_limits: the server's still
 * apply). rest holds the bytes the client sent after the upgrade request, len of them
 * (often none); return how many were consumed, as on_read does: the others are passed
 * to the new on_read, before anything newer, when more bytes arrive. */
typedef size_t (*pier_http_upgrade_cb)(pier_conn_t *c, void *arg, const char *rest, size_t len);

/* Answers 101 Switching Protocols with "Connection: Upgrade", "Upgrade: protocol" and
 * the fields added with pier_http_res_header(), and hands the connection to cb(c, arg)
 * once the handler returns. On 0, cb runs exactly once, also if the connection has
 * started to close meanwhile (its new on_close will then follow); on error it never
 * runs and arg is still the caller's. -EINVAL for an HTTP/1.0 or HEAD request or a
 * protocol that is not a token, -EALREADY once a response was sent; -ENOMEM and
 * -ENOTCONN as for pier_http_res_send (the connection is then reset). */
PIER_EXTERN int pier_http_res_upgrade(pier_http_res_t *res, const char *protocol, pier_http_upgrade_cb cb,
                                      void *arg);

/* The group the server runs on (for a layer that keeps per-loop state of its own). */
PIER_EXTERN pier_group_t *pier_http_server_group(const pier_http_server_t *srv);

/* ---- deferred responses: any thread ----
 *
 * Each call posts to the connection's loop. If the client has gone, the calls return
 * -ENOTCONN and nothing is sent; that is not an error the application must handle. send
 * and end free the handle (also on error): do not use it afterwards. Every handle must
 * end with one of send, end or cancel. */
PIER_EXTERN int pier_http_later_send(pier_http_later_t *later, int status, const char *content_type,
                                     const void *body, size_t len);
PIER_EXTERN int pier_http_later_begin(pier_http_later_t *later, int status, const char *content_type);
/* -ENOBUFS when more than 1 MiB of this response's output already waits for the client
 * (written here and not yet taken by the client's socket): nothing is sent, and the
 * handle stays usable. Back off and write again later (the client may be slow or not
 * reading at all), or cancel. */
PIER_EXTERN int pier_http_later_write(pier_http_later_t *later, const void *data, size_t len);
PIER_EXTERN int pier_http_later_end(pier_http_later_t *later);
/* Gives up: the connection is closed without a response, and the handle freed. */
PIER_EXTERN void pier_http_later_cancel(pier_http_later_t *later);

/* The reason phrase of a status ("Not Found"), "Unknown" if pier does not know it. */
PIER_EXTERN const char *pier_http_reason(int status);

#ifdef __cplusplus
}
#endif
#endif
