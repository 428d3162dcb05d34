/* Internals of the HTTP server shared by its files. */
#ifndef PIER_HTTP_INT_H
#define PIER_HTTP_INT_H

#include <pier/http.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

#include "http/parser.h"

#define PIER__HTTP_MAX_PARAMS 8
#define PIER__HTTP_RES_FIELDS 4096

/* ---- utilities (util.c) ---- */

/* The one percent-decoder. Decodes src[0, n) into dst (room for n + 1 bytes; dst may be
 * src). plus_space turns '+' into ' ' (query strings). Returns the decoded length
 * (dst is NUL-terminated), or -1 for a bad escape or an encoded NUL. */
ssize_t pier__http_pct_decode(char *dst, const char *src, size_t n, int plus_space);
/* IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"): out needs 30 bytes. */
void pier__http_date(time_t t, char *out);
/* Parses an IMF-fixdate; -1 if it is not one. */
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

int pier__http_router_add(pier__http_router_t *r, unsigned methods, const char *pattern,
                          pier_http_handler_cb handler, void *ud);
/* Finds the route for method and path (decoded, NUL-terminated). Params point into path. */
void pier__http_router_match(const pier__http_router_t *r, unsigned method, const char *path,
                             pier__http_match_t *m);
pier_http_handler_cb pier__http_route_handler(const pier__http_route_t *rt, void **ud);
void pier__http_router_free(pier__http_router_t *r);

/* ---- the request a handler sees ---- */

struct pier_http_req_s {
    pier__http_request_t *parsed;
    const char *path;                /* decoded, NUL-terminated */
    const char *body;
    size_t body_len;
    pier__http_match_t *match;
    pier_id_t id;
    struct pier__http_conn_s *hc;
};

/* ---- static files (static.c) ---- */

typedef struct pier__http_static_s pier__http_static_t;
int pier__http_static_new(pier__http_static_t **out, const char *root_dir);
void pier__http_static_free(pier__http_static_t *st);
/* The route handler; ud is the pier__http_static_t. */
void pier__http_static_handler(pier_http_req_t *req, pier_http_res_t *res, void *ud);

/* ---- for static.c: a response whose body is a file (takes fd, sends with sendfile) ---- */
int pier__http_res_sendfile(pier_http_res_t *res, int status, const char *content_type, int fd,
                            off_t offset, size_t len);

/* Every write of the layer goes through these (pier_conn_writev and
 * pier_conn_writev_file), so that a test can make one fail. */
extern int (*pier__http_writev)(pier_conn_t *c, const struct iovec *iov, int iovcnt);
extern int (*pier__http_writev_file)(pier_conn_t *c, const struct iovec *iov, int iovcnt, int fd, off_t offset,
                                     size_t len);

#endif
