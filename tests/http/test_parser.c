/* The HTTP/1.1 request parser: every rule, valid and invalid, each input parsed whole and
 * fed one byte at a time, always against a guard page. */
#include "support.h"
#include "guard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/parser.h"

static pier__http_request_t req;

/* Parses s whole and then a byte at a time (each prefix copied against the guard page,
 * as a moving buffer would be); both must agree. Returns the result. */
static int parse_lim(const char *s, size_t n, const pier__http_limits_t *lim) {
    pier__http_parser_t p;
    pier__http_parser_init(&p);
    int whole = pier__http_parse_request(&p, lim, guarded(s, n), n, &req);
    int whole_status = req.status;

    pier__http_parser_init(&p);
    int rc = -2;
    size_t k;
    for (k = 1; k <= n && rc == -2; k++)
        rc = pier__http_parse_request(&p, lim, guarded(s, k), k, &req);
    if (rc != whole || (rc == -1 && req.status != whole_status)) {
        print_error("whole %d (status %d) but bytewise %d (status %d) for: %.*s\n", whole, whole_status, rc,
                    req.status, (int)n, s);
        fail();
    }
    /* leave req describing the whole parse, pointing into the guard area */
    pier__http_parser_init(&p);
    pier__http_parse_request(&p, lim, guarded(s, n), n, &req);
    return whole;
}

static int parse(const char *s) { return parse_lim(s, strlen(s), NULL); }

static void expect_status(const char *s, int status) {
    int rc = parse(s);
    if (rc != -1 || req.status != status) {
        print_error("expected status %d, got rc %d status %d for: %s\n", status, rc, req.status, s);
        fail();
    }
}

static void expect_ok(const char *s) {
    int rc = parse(s);
    if (rc != (int)strlen(s)) {
        print_error("expected %d, got rc %d status %d for: %s\n", (int)strlen(s), rc, req.status, s);
        fail();
    }
}

#define assert_slice(p, n, lit)                                                                   \
    do {                                                                                          \
        assert_int_equal((n), strlen(lit));                                                       \
        assert_memory_equal((p), (lit), (n));                                                     \
    } while (0)

static void test_simple_get(void **state) {
    (void)state;
    expect_ok("GET /hello/world?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n");
    assert_int_equal(req.method, PIER_HTTP_GET);
    assert_slice(req.method_str, req.method_len, "GET");
    assert_slice(req.target, req.target_len, "/hello/world?x=1&y=%20");
    assert_slice(req.path, req.path_len, "/hello/world");
    assert_slice(req.query, req.query_len, "x=1&y=%20");
    assert_slice(req.authority, req.authority_len, "example.com");
    assert_int_equal(req.minor, 1);
    assert_int_equal(req.keep_alive, 1);
    assert_int_equal(req.content_length, -1);
    assert_int_equal(req.chunked, 0);
    assert_int_equal(req.nfields, 2);
    assert_slice(req.fields[1].name, req.fields[1].name_len, "User-Agent");
    assert_slice(req.fields[1].value, req.fields[1].value_len, "t");
    const pier__http_field_t *f = pier__http_find_field(&req, "user-AGENT", 10);
    assert_non_null(f);
    assert_ptr_equal(f, &req.fields[1]);
    assert_null(pier__http_find_field(&req, "Accept", 6));
}

static void test_incomplete(void **state) {
    (void)state;
    static const char r[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    pier__http_parser_t p;
    for (size_t k = 0; k < sizeof r - 1; k++) {
        pier__http_parser_init(&p);
        assert_int_equal(pier__http_parse_request(&p, NULL, guarded(r, k), k, &req), -2);
    }
}

static void test_pipelined_leaves_rest(void **state) {
    (void)state;
    static const char two[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    pier__http_parser_t p;
    pier__http_parser_init(&p);
    int n = pier__http_parse_request(&p, NULL, guarded(two, sizeof two - 1), sizeof two - 1, &req);
    assert_int_equal(n, (sizeof two - 1) / 2);
    assert_slice(req.path, req.path_len, "/a");
    /* a body after the head is not the parser's business either */
    static const char post[] = "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    pier__http_parser_init(&p);
    n = pier__http_parse_request(&p, NULL, guarded(post, sizeof post - 1), sizeof post - 1, &req);
    assert_int_equal(n, sizeof post - 1 - 5);
    assert_int_equal(req.content_length, 5);
}

/* Arriving a byte at a time, each byte is scanned once: the parser moves its mark to the
 * end of what it was given every time. */
static void test_bytewise_is_linear(void **state) {
    (void)state;
    char big[8000];
    int off = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: a\r\n");
    while (off < 7900)
        off += snprintf(big + off, sizeof big - (size_t)off, "X-F: %0100d\r\n", off);
    off += snprintf(big + off, sizeof big - (size_t)off, "\r\n");
    pier__http_parser_t p;
    pier__http_parser_init(&p);
    pier__http_limits_t lim = {.max_head = 8000, .max_fields = 128};
    for (int k = 1; k < off; k++) {
        assert_int_equal(pier__http_parse_request(&p, &lim, big, (size_t)k, &req), -2);
        assert_int_equal(p.scanned, (size_t)k);
    }
    assert_int_equal(pier__http_parse_request(&p, &lim, big, (size_t)off, &req), off);
}

static void test_versions(void **state) {
    (void)state;
    expect_ok("GET / HTTP/1.0\r\n\r\n"); /* no Host needed in 1.0 */
    assert_int_equal(req.minor, 0);
    assert_int_equal(req.keep_alive, 0);
    expect_ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert_int_equal(req.keep_alive, 1);
    expect_ok("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
    assert_int_equal(req.keep_alive, 0);
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, CLOSE\r\n\r\n");
    assert_int_equal(req.keep_alive, 0);
    expect_ok("GET / HTTP/1.9\r\nHost: a\r\n\r\n"); /* a higher minor is answered as 1.1 */
    assert_int_equal(req.minor, 1);
    expect_status("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
    expect_status("GET / HTTP/0.9\r\n\r\n", 505);
    expect_status("GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505);
    expect_status("GET / http/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/x.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET /\r\n\r\n", 400); /* HTTP/0.9 style */
    /* the first error wins, however the bytes arrive (the bare LF comes later) */
    expect_status("GET / HTTP/2.0\r\nX: a\n\r\n", 505);
}

static void test_request_line(void **state) {
    (void)state;
    expect_ok("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"); /* an empty line before is ignored */
    assert_int_equal(req.method, PIER_HTTP_GET);
    expect_ok("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    expect_status("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_ok("BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n"); /* any token is a method */
    assert_int_equal(req.method, PIER__HTTP_OTHER);
    assert_slice(req.method_str, req.method_len, "BREW");
    expect_ok("get / HTTP/1.1\r\nHost: a\r\n\r\n"); /* case-sensitive: not GET */
    assert_int_equal(req.method, PIER__HTTP_OTHER);
    expect_status("GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_ok("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345 / HTTP/1.1\r\nHost: a\r\n\r\n"); /* 32 */
    expect_status("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456 / HTTP/1.1\r\nHost: a\r\n\r\n", 501);
    expect_status(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501);
}

static void test_targets(void **state) {
    (void)state;
    expect_ok("GET http://Example.com:8080/p/q?z HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_slice(req.authority, req.authority_len, "Example.com:8080"); /* target wins */
    assert_slice(req.path, req.path_len, "/p/q");
    assert_slice(req.query, req.query_len, "z");
    expect_ok("GET HTTPS://h HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_slice(req.path, req.path_len, "/");
    assert_null(req.query);
    expect_ok("GET http://h?a=b HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_slice(req.path, req.path_len, "/");
    assert_slice(req.query, req.query_len, "a=b");
    expect_ok("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_slice(req.path, req.path_len, "*");
    expect_ok("GET /? HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_non_null(req.query);
    assert_int_equal(req.query_len, 0);
    expect_status("GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("GET a/b HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("GET http://u:p@h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("GET http://h h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    expect_status("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400); /* raw non-ASCII */
    expect_status("GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    /* absolute-form still needs Host in 1.1 */
    expect_status("GET http://h/ HTTP/1.1\r\n\r\n", 400);
}

static void test_host(void **state) {
    (void)state;
    expect_ok("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
    assert_slice(req.authority, req.authority_len, "[::1]:8080");
    expect_ok("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    expect_ok("GET / HTTP/1.1\r\nHost:\r\n\r\n"); /* empty is allowed */
    expect_ok("GET / HTTP/1.1\r\nhOST: a\r\n\r\n");
    assert_slice(req.authority, req.authority_len, "a");
    expect_status("GET / HTTP/1.1\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400);
}

static void test_field_syntax(void **state) {
    (void)state;
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nX:  \t spaced \t value\t \r\n\r\n");
    assert_slice(req.fields[1].value, req.fields[1].value_len, "spaced \t value");
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nEmpty:\r\n\r\n");
    assert_int_equal(req.fields[1].value_len, 0);
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n"); /* obs-text in a value */
    expect_ok("GET / HTTP/1.1\r\nHost: a\r\n!#$%&'*+-.^_`|~09az: v\r\n\r\n");
    expect_status("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfolded\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\n: novalue\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX\x80: 1\r\n\r\n", 400);
}

static void test_line_endings_and_controls(void **state) {
    (void)state;
    expect_status("GET / HTTP/1.1\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\n\n", 400);
    expect_status("GET / HTTP/1.1\n\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\rHost: a\r\n\r\n", 400);
    expect_status("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400);
    expect_status("GET / HTTP/1.1\r\nHost: a\r\nX: a\x1b[0m\r\n\r\n", 400);
    /* NUL cannot be written in a C string literal test, so build them */
    static const char nul_value[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    assert_int_equal(parse_lim(nul_value, sizeof nul_value - 1, NULL), -1);
    assert_int_equal(req.status, 400);
    static const char nul_target[] = "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(parse_lim(nul_target, sizeof nul_target - 1, NULL), -1);
    assert_int_equal(req.status, 400);
    static const char nul_name[] = "GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n";
    assert_int_equal(parse_lim(nul_name, sizeof nul_name - 1, NULL), -1);
    assert_int_equal(req.status, 400);
    static const char nul_method[] = "G\0T / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(parse_lim(nul_method, sizeof nul_method - 1, NULL), -1);
    assert_int_equal(req.status, 400);
}

static void test_content_length(void **state) {
    (void)state;
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(req.content_length, 0);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123\r\n\r\n");
    assert_int_equal(req.content_length, 1234567890123LL);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
    assert_int_equal(req.content_length, 5);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n");
    assert_int_equal(req.content_length, 7);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400);
}

static void test_transfer_encoding(void **state) {
    (void)state;
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_int_equal(req.chunked, 1);
    assert_int_equal(req.content_length, -1);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n");
    assert_int_equal(req.chunked, 1);
    /* smuggling: CL and TE together, in either order */
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 501);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501);
    expect_status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

static void test_expect(void **state) {
    (void)state;
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
    assert_int_equal(req.expect_continue, 1);
    expect_ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n");
    assert_int_equal(req.expect_continue, 0);
    expect_status("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417);
}

static void test_limits(void **state) {
    (void)state;
    static char buf[20000];
    pier__http_limits_t lim = {.max_head = 1024, .max_target = 100, .max_fields = 4};
    /* target exactly at the limit passes, one more is 414 */
    int n = snprintf(buf, sizeof buf, "GET /%099d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    assert_int_equal(parse_lim(buf, (size_t)n, &lim), n);
    n = snprintf(buf, sizeof buf, "GET /%0100d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    assert_int_equal(parse_lim(buf, (size_t)n, &lim), -1);
    assert_int_equal(req.status, 414);
    /* an endless request line is cut at the limit, before any end is seen */
    n = snprintf(buf, sizeof buf, "GET /%0500d", 0);
    assert_int_equal(parse_lim(buf, (size_t)n, &lim), -1);
    assert_int_equal(req.status, 414);
    /* fields */
    n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
    assert_int_equal(parse_lim(buf, (size_t)n, &lim), n);
    n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n");
    assert_int_equal(parse_lim(buf, (size_t)n, &lim), -1);
    assert_int_equal(req.status, 431);
    /* head size, complete or still growing */
    n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nBig: %01000d\r\n\r\n", 0);
    assert_int_equal(parse_lim(buf, (size_t)n, &lim), -1);
    assert_int_equal(req.status, 431);
    n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nBig: %01000d", 0);
    assert_int_equal(parse_lim(buf, (size_t)n, &lim), -1);
    assert_int_equal(req.status, 431);
    /* defaults: 8 KiB head */
    n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nBig: %09000d\r\n\r\n", 0);
    assert_int_equal(parse_lim(buf, (size_t)n, NULL), -1);
    assert_int_equal(req.status, 431);
}

static void test_simd_and_scalar_agree(void **state) {
    (void)state;
    /* long values and targets cross several 16-byte blocks; the bad byte sits at each
     * position of a block in turn */
    for (int mode = 0; mode <= 1; mode++) {
        pier__http_parser_use_simd(mode);
        for (int at = 0; at < 40; at++) {
            char buf[256];
            char val[64];
            memset(val, 'v', sizeof val);
            val[at] = '\x01';
            int n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nX: %.*s\r\n\r\n", 48, val);
            assert_int_equal(parse_lim(buf, (size_t)n, NULL), -1);
            assert_int_equal(req.status, 400);
            val[at] = ' ';
            n = snprintf(buf, sizeof buf, "GET /%.*s HTTP/1.1\r\nHost: a\r\n\r\n", 48, val);
            assert_int_equal(parse_lim(buf, (size_t)n, NULL), -1);
            val[at] = '~';
            n = snprintf(buf, sizeof buf, "GET /%.*s HTTP/1.1\r\nHost: a\r\nX: %.*s\r\n\r\n", 48, val, 48, val);
            assert_int_equal(parse_lim(buf, (size_t)n, NULL), n);
            assert_int_equal(req.target_len, 49);
            assert_int_equal(req.fields[1].value_len, 48);
        }
    }
    pier__http_parser_use_simd(-1);
}

static void test_method_names(void **state) {
    (void)state;
    assert_int_equal(pier__http_method_from("DELETE", 6), PIER_HTTP_DELETE);
    assert_int_equal(pier__http_method_from("DELET", 5), PIER__HTTP_OTHER);
    assert_string_equal(pier__http_method_name(PIER_HTTP_PATCH), "PATCH");
    assert_null(pier__http_method_name(PIER__HTTP_OTHER));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_pipelined_leaves_rest),
        cmocka_unit_test(test_bytewise_is_linear),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_request_line),
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_field_syntax),
        cmocka_unit_test(test_line_endings_and_controls),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_transfer_encoding),
        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_simd_and_scalar_agree),
        cmocka_unit_test(test_method_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
