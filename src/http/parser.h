/* pier HTTP/1.1 request parser and chunked body decoder (internal).
 *
 * Both are allocation-free and zero-copy: every string they return is a slice of the
 * caller's buffer, valid as long as that buffer is. Neither writes to its input.
 *
 * Request heads (pier__http_parse_request):
 *  - Returns the number of bytes of the head (request line, fields, final CRLF) once it
 *    is complete and valid, -2 if more bytes are needed, -1 if the head is invalid; then
 *    req->status holds the status the server must answer before closing (400, 414, 417,
 *    431, 501 or 505).
 *  - Call it again with the same parser and a buffer that starts with the same bytes and
 *    has more after them (the buffer may have moved). Bytes already scanned are not
 *    scanned again until the head is complete, so a head arriving a byte at a time costs
 *    O(n) in total.
 *  - Strict per RFC 9112 and RFC 9110; see parser.c for the rules and why.
 *
 * Chunked bodies (pier__chunked_feed): a byte-oriented state machine that keeps no
 * pointers between calls, so input may arrive in any split.
 */
#ifndef PIER_HTTP_PARSER_H
#define PIER_HTTP_PARSER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <pier/http.h>

/* Methods as bits, the public PIER_HTTP_* set (http.h) plus the two a route cannot name:
 * one definition, so the parser's and the router's bits cannot drift apart. */
enum {
    PIER__HTTP_OTHER = 0,
    PIER__HTTP_CONNECT = 1u << 7,
    PIER__HTTP_TRACE = 1u << 8,
};

/* The HTTP layer's one table of token characters (RFC 9110 5.6.2 tchar): 1 for
 * "!#$%&'*+-.^_`|~", digits and letters. */
extern const uint8_t pier__http_tchar[256];

/* The layer's one hex digit decoder: 0..15, or -1. */
static inline int pier__http_hexval(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

typedef struct pier__http_field_s {
    const char *name;
    size_t name_len;
    const char *value; /* without leading and trailing whitespace */
    size_t value_len;
} pier__http_field_t;

typedef struct pier__http_limits_s {
    size_t max_head;        /* whole head including the request line (default 8 KiB) */
    size_t max_target;      /* request-target (default 4 KiB) */
    unsigned max_fields;    /* header field lines (default 64, at most PIER__HTTP_MAX_FIELDS) */
} pier__http_limits_t;

#define PIER__HTTP_MAX_FIELDS 128

typedef struct pier__http_request_s {
    unsigned method;             /* PIER__HTTP_* bit, or PIER__HTTP_OTHER */
    const char *method_str;
    size_t method_len;
    const char *target;          /* as sent */
    size_t target_len;
    const char *path;            /* origin-form path ("/..."), also for absolute-form */
    size_t path_len;
    const char *query;           /* after '?', without it; NULL if none */
    size_t query_len;
    const char *authority;       /* Host value, or the authority of an absolute-form target */
    size_t authority_len;
    int minor;                   /* 0 or 1 (HTTP/1.x with x > 1 is treated as 1) */
    int keep_alive;              /* after the Connection field and version defaults */
    int expect_continue;
    int chunked;
    int64_t content_length;      /* -1 when absent */
    int status;                  /* on -1: the status to answer */
    unsigned nfields;
    pier__http_field_t fields[PIER__HTTP_MAX_FIELDS];
} pier__http_request_t;

typedef struct pier__http_parser_s {
    size_t scanned;     /* bytes known to hold no end of head */
    int first_line_end; /* the request line's LF has been seen */
    int empty_lines;    /* empty lines seen before it */
} pier__http_parser_t;

/* Prepares a parser for a new request. */
static inline void pier__http_parser_init(pier__http_parser_t *p) {
    p->scanned = 0;
    p->first_line_end = 0;
    p->empty_lines = 0;
}

/* See the top of this file. lim may be NULL for the defaults. */
int pier__http_parse_request(pier__http_parser_t *p, const pier__http_limits_t *lim,
                             const char *buf, size_t len, pier__http_request_t *req);

/* The first field named name (case-insensitive), or NULL. */
const pier__http_field_t *pier__http_find_field(const pier__http_request_t *req,
                                                const char *name, size_t name_len);

/* Method name to PIER__HTTP_* bit (PIER__HTTP_OTHER if unknown), and back. */
unsigned pier__http_method_from(const char *s, size_t len);
const char *pier__http_method_name(unsigned method);

/* Selects the scalar or the SSE4.2 scanner: 0 scalar, 1 SSE4.2 if the CPU has it, -1
 * decide from the CPU (the default). Returns the choice now in effect (0 or 1). For
 * benchmarks and tests. */
int pier__http_parser_use_simd(int mode);

/* ---- chunked transfer coding (RFC 9112 section 7.1) ---- */

typedef struct pier__chunked_s {
    uint64_t max_body;   /* total data bytes allowed (0: unlimited) */
    uint64_t total;      /* data bytes decoded so far */
    uint64_t left;       /* bytes left in the current chunk's data */
    uint32_t line_len;   /* bytes on the current size or trailer line */
    uint32_t trailer_len;
    uint8_t state;
    uint8_t digits;
    uint8_t done;        /* the last chunk and the trailer section were read */
    int status;          /* on -1: 400, or 413 (over max_body) */
} pier__chunked_t;

/* Prepares a decoder; max_body 0 means unlimited. */
void pier__chunked_init(pier__chunked_t *d, uint64_t max_body);

/* Decodes from in[0, len). Returns the bytes consumed (>= 0), or -1 on an error (then
 * d->status says which). When chunk data was found, *data and *data_len name it (a slice
 * of in) and the call returns right after it, so call again with the rest. Stops at the
 * end of the body (d->done), leaving what follows (the next pipelined request) unread. */
ssize_t pier__chunked_feed(pier__chunked_t *d, const char *in, size_t len,
                           const char **data, size_t *data_len);

/* Decodes in place: buf[0, *len) is rewritten so that its first *out bytes are the data
 * decoded in this call. Returns the bytes of input consumed, or -1. Input bytes after
 * the consumed ones are untouched, so the caller moves them if it wants them. */
ssize_t pier__chunked_decode_inplace(pier__chunked_t *d, char *buf, size_t len, size_t *out);

#endif
