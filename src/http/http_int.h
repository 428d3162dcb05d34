/* Internals of the HTTP server, shared by its files:
 *
 *   server.c    the server: creation, routes, start and stop, counters
 *   conn.c      a connection's state machine: reading, framing, pipelining, timeouts, and
 *               the dispatch of each request to its route
 *   response.c  building responses and queuing each unit whole (pier_http_res_*)
 *   later.c     deferred responses, finished from any thread (pier_http_later_*)
 *   request.c   what a handler can ask of its request (pier_http_req_*)
 *   static.c    static files: an ordinary route on the public API
 *   router.c, parser.c, chunked.c, util.c: routing, parsing and small helpers
 */
#ifndef PIER_HTTP_INT_H
#define PIER_HTTP_INT_H

#include <pier/http.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

#include "base/buf.h"
#include "http/parser.h"
#include "loop/layer.h"
#include "metrics/metrics.h"

#define PIER__HTTP_MAX_PARAMS 8
#define PIER__HTTP_RES_FIELDS 4096
/* A connection's output water marks. Pipelined requests are answered only while the
 * output is under the high mark; above it the rest wait (reading paused) until on_drain,
 * so a client that sends many requests and reads nothing cannot make answers pile up. */
#define PIER__HTTP_OUT_HIGH (256u * 1024)
#define PIER__HTTP_OUT_LOW (64u * 1024)

/* ---- utilities (util.c) ---- */

/* The one percent-decoder. Decodes src[0, n) into dst (room for n + 1 bytes; dst may be
 * src). plus_space turns '+' into ' ' (query strings). Returns the decoded length
 * (dst is NUL-terminated), or -1 for a bad escape or an encoded NUL. */
ssize_t pier__http_pct_decode(char *dst, const char *src, size_t n, int plus_space);
/* IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"): out needs 30 bytes. */
void pier__http_date(time_t t, char *out);
/* Parses an HTTP-date in any of its three forms (RFC 9110 5.6.7): IMF-fixdate, the
 * obsolete rfc850-date and asctime-date. -1 if it is none of them, or names no real
 * time (February 30th, hour 24). */
time_t pier__http_parse_date(const char *s, size_t n);
/* Content-Type for a file name, by extension. */
const char *pier__http_mime(const char *name);

/* ---- router (router.c) ---- */

typedef struct pier__http_route_s pier__http_route_t;
typedef struct pier__http_router_s {
    pier__http_route_t **routes;
    unsigned n, cap;
} pier__http_router_t;

typedef struct pier__http_match_s {
    const pier__http_route_t *route; /* NULL: no route for this path and method */
    unsigned allow;                  /* methods the path has, for 405 */
    unsigned nparams;
    struct {
        const char *name;
        const char *value;
        size_t len;
    } params[PIER__HTTP_MAX_PARAMS + 1];
} pier__http_match_t;

/* Adds a route; ud_free(ud) (if not NULL) runs in pier__http_router_free. On error it
 * has not run: ud is still the caller's. */
int pier__http_router_add(pier__http_router_t *r, unsigned methods, const char *pattern,
                          pier_http_handler_cb handler, void *ud, void (*ud_free)(void *ud));
/* Finds the route for method and path (decoded, NUL-terminated). Params point into path. */
void pier__http_router_match(const pier__http_router_t *r, unsigned method, const char *path,
                             pier__http_match_t *m);
pier_http_handler_cb pier__http_route_handler(const pier__http_route_t *rt, void **ud);
/* Every method some route takes. */
unsigned pier__http_router_methods(const pier__http_router_t *r);
void pier__http_router_free(pier__http_router_t *r);

/* ---- the server and its per-loop state ---- */

typedef struct pier__http_conn_s pier__http_conn_t;

/* The request a handler sees (request.c). */
struct pier_http_req_s {
    pier__http_request_t *parsed;
    const char *path;                /* decoded, NUL-terminated */
    const char *body;
    size_t body_len;
    pier__http_match_t *match;
    pier_id_t id;
};

enum { RES_FRESH, RES_STREAM, RES_DONE, RES_LATER };

/* The response a handler fills (response.c). */
struct pier_http_res_s {
    pier__http_conn_t *hc;
    int state;
    size_t fields_len;
    char fields[PIER__HTTP_RES_FIELDS];
};

/* Touched only by its loop's thread (requests is read by others, atomically), and by one
 * handler at a time. */
typedef struct pier__http_loop_s {
    pier_loop_t *loop;
    pier__metrics_t *mx;   /* the loop's counters, looked up once */
    pier_http_server_t *srv;
    uint64_t date_sec;
    char date[30];
    char common[300];      /* "Server: ...\r\nDate: ...\r\n", rebuilt once a second */
    size_t common_len;
    uint64_t requests;
    uint64_t seq;          /* requests dispatched on this loop: names each one */
    pier__dlist_t *head_list, *body_list; /* the request deadlines of its connections */
    pier__buf_t out;       /* the head of the response being built */
    char *path;            /* decoded path of the current request */
    pier__http_request_t req;
    pier__http_match_t match;
    struct pier_http_req_s hreq;
    struct pier_http_res_s res;
} pier__http_loop_t;

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
    unsigned methods;      /* every method some route takes, for OPTIONS * */
    int started;
    int draining;          /* set once by pier_http_server_stop; read atomically */
    int warned_silent, warned_write;
    unsigned nloops;
    pier__http_loop_t *loops;
};

/* ---- connections (conn.c) ---- */

/* HEAD: waiting for a request head. BODY: a Content-Length body still arriving (the
 * bytes stay unconsumed in the core's read buffer, so the body is handed over in place).
 * CHUNKED: a chunked body being decoded into body. WAIT: a handler took the response for
 * later. CLOSED: nothing more is read or written. UPGRADE: a 101 was queued; once the
 * handler returns the connection is handed to its new owner (pier_http_res_upgrade). */
enum { ST_HEAD, ST_BODY, ST_CHUNKED, ST_WAIT, ST_CLOSED, ST_UPGRADE };

struct pier__http_conn_s {
    /* Kept from one connection to the next in the loop's cache (conn_new, conn_free): */
    pier_http_server_t *srv;  /* first: the cache links through it */
    pier__http_loop_t *hl;
    pier_conn_t *c;
    /* The request's deadlines, each a node in its loop's list for the server's timeout
     * (a few stores to start or stop, no timer of its own); while the connection is fresh
     * (its first head not complete) the core runs the header deadline from the accept.
     * Out of their lists whenever the state is given back. */
    pier__dlnode_t head_dl, body_dl;
    pier__buf_t head_copy;    /* CHUNKED: the head, parsed again once the body is complete */
    pier__buf_t body;         /* CHUNKED: the decoded body */
    pier__buf_t pending;      /* input that arrived while a response was deferred */
    pier_http_later_t *later; /* the deferred response under way (one reference) */
    size_t need;              /* BODY: head plus body bytes (set on entering BODY) */
    pier__chunked_t chunked;  /* CHUNKED: set on entering it */
    /* Cleared for every new state, from here to logline: */
    uint64_t head_due;        /* nonzero while the head must still arrive (header timeout) */
    uint64_t body_due;        /* nonzero while the whole request must (body timeout) */
    pier__http_parser_t parser;
    int state;
    uint64_t seq;             /* the request dispatched last (unique in its loop), which a
                               * deferred response names: a later state of the same
                               * connection never reuses it */
    /* the response under way */
    int keep_alive, minor, is_head, stream, sent_continue, eof;
    int held;                 /* reading paused: the answers so far must drain first */
    uint64_t sent_bytes;
    uint32_t mx_t0;           /* loop ms when the head arrived, for the duration histogram */
    uint8_t mx_method;        /* PIER_METRICS_* index + 1 of that head; 0: none parsed */
    pier_http_upgrade_cb upgrade_cb; /* UPGRADE: the new owner */
    void *upgrade_arg;
    char logline[300];
};

void pier__http_on_accept(pier_server_t *s, pier_conn_t *c);
/* A connection that sent nothing within the header timeout of its accept: 408. */
void pier__http_fresh(pier_conn_t *c);
/* The drain's filter (pier_server_close_if): 1 for a connection to close now. */
int pier__http_close_at_drain(pier_conn_t *c);
/* Runs the requests that waited behind a deferred response, once it is done. */
void pier__http_process_pending(pier__http_conn_t *hc);

/* ---- responses (response.c) ----
 *
 * Each sends one unit (see response.c). A unit that cannot be queued resets the
 * connection (state CLOSED) and the call returns the error; a response that completes
 * leaves the connection in HEAD, or CLOSED and closing. */

/* 1 if name is a token and value holds no CR, LF, NUL or other control character. */
int pier__http_valid_field(const char *name, const char *value);
int pier__http_write_unit(pier__http_conn_t *hc, const struct iovec *iov, int iovcnt);
int pier__http_send(pier__http_conn_t *hc, int status, const char *ctype, const char *fields, size_t flen,
                    const void *body, size_t len);
/* A short text body naming the status ("404 Not Found"), with extra fields (or NULL). */
int pier__http_send_status(pier__http_conn_t *hc, int status, const char *fields);
/* For a request that cannot go on (bad framing, limits): answers and closes. */
void pier__http_send_error(pier__http_conn_t *hc, int status);
int pier__http_stream_begin(pier__http_conn_t *hc, int status, const char *ctype, const char *fields,
                            size_t flen);
int pier__http_stream_write(pier__http_conn_t *hc, const void *data, size_t len);
int pier__http_stream_end(pier__http_conn_t *hc);

/* ---- deferred responses (later.c) ---- */

/* The connection is done with its deferred response. */
void pier__http_later_detach(pier__http_conn_t *hc);
/* Tells the application side how much output now waits for the client. */
void pier__http_later_note_queued(pier__http_conn_t *hc);

/* Every write of the layer goes through these (pier_conn_writev and
 * pier_conn_writev_file), so that a test can make one fail. */
extern int (*pier__http_writev)(pier_conn_t *c, const struct iovec *iov, int iovcnt);
extern int (*pier__http_writev_file)(pier_conn_t *c, const struct iovec *iov, int iovcnt, int fd, off_t offset,
                                     size_t len);

#endif
