/* The chunked body decoder: valid and invalid bodies, whole and byte by byte, against a
 * guard page, plus the in-place variant. */
#include "support.h"
#include "guard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/parser.h"

static char body[65536];
static size_t body_len;
static int status;
static int done;

/* Feeds s[0, n) in pieces of at most step bytes (each piece copied against the guard
 * page). Returns the bytes consumed or -1; the decoded body is in body/body_len. */
static long decode_steps(const char *s, size_t n, size_t step, uint64_t max_body) {
    pier__chunked_t d;
    pier__chunked_init(&d, max_body);
    body_len = 0;
    size_t off = 0;
    while (off < n && !d.done) {
        size_t piece = n - off < step ? n - off : step;
        const char *in = guarded(s + off, piece);
        size_t used = 0;
        while (used < piece && !d.done) {
            const char *data;
            size_t dl;
            ssize_t r = pier__chunked_feed(&d, in + used, piece - used, &data, &dl);
            if (r < 0) {
                status = d.status;
                done = 0;
                return -1;
            }
            assert_true(body_len + dl <= sizeof body);
            if (dl)
                memcpy(body + body_len, data, dl);
            body_len += dl;
            used += (size_t)r;
            if (r == 0)
                break;
        }
        off += used;
        if (used < piece && !d.done)
            fail_msg("decoder stopped early");
    }
    status = 0;
    done = d.done;
    return (long)off;
}

/* Whole and byte-at-a-time must agree. */
static long decode(const char *s, size_t n, uint64_t max_body) {
    long whole = decode_steps(s, n, n ? n : 1, max_body);
    int whole_status = status, whole_done = done;
    char whole_body[sizeof body];
    size_t whole_len = body_len;
    memcpy(whole_body, body, body_len);
    long bytewise = decode_steps(s, n, 1, max_body);
    assert_int_equal(whole, bytewise);
    assert_int_equal(whole_status, status);
    assert_int_equal(whole_done, done);
    assert_int_equal(whole_len, body_len);
    assert_memory_equal(whole_body, body, body_len);
    return whole;
}

static void expect_body(const char *s, const char *want) {
    size_t n = strlen(s);
    long r = decode(s, n, 0);
    if (r != (long)n || !done) {
        print_error("expected all %zu bytes and done, got %ld (status %d, done %d): %s\n", n, r, status, done, s);
        fail();
    }
    assert_int_equal(body_len, strlen(want));
    assert_memory_equal(body, want, body_len);
}

static void expect_error(const char *s, int want_status) {
    long r = decode(s, strlen(s), 0);
    if (r != -1 || status != want_status) {
        print_error("expected status %d, got %ld (status %d): %s\n", want_status, r, status, s);
        fail();
    }
}

static void test_valid(void **state) {
    (void)state;
    expect_body("5\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("0\r\n\r\n", "");
    expect_body("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", "abcdef");
    expect_body("a\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n", "0123456789abcdefghij");
    expect_body("0000000000000000000005\r\nhello\r\n000\r\n\r\n", "hello");
    expect_body("1\r\n\r\r\n1\r\n\n\r\n0\r\n\r\n", "\r\n"); /* data is opaque */
}

static void test_extensions(void **state) {
    (void)state;
    expect_body("5;name\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;a=b;c=d\r\nhello\r\n0;last\r\n\r\n", "hello");
    expect_body("5 ; a = b \t;c\r\nhello\r\n0\r\n\r\n", "hello");
    expect_body("5;a=\"q \\\"x\\\\ ;=\"\r\nhello\r\n0\r\n\r\n", "hello");
    expect_error("5;\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("5;=b\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("5;a=\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("5;a@b\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("5;a=\"open\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("5;a=b c\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("5;a=\"x\"y\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", 400);
}

static void test_trailers(void **state) {
    (void)state;
    expect_body("5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-B:\r\n\r\n", "hello");
    expect_error("5\r\nhello\r\n0\r\n folded\r\n\r\n", 400);
    expect_error("5\r\nhello\r\n0\r\nX-A 1\r\n\r\n", 400);
    expect_error("5\r\nhello\r\n0\r\nX-A : 1\r\n\r\n", 400);
    expect_error("5\r\nhello\r\n0\r\nX-A: a\rb\r\n\r\n", 400);
    expect_error("5\r\nhello\r\n0\r\nX-A: 1\n\r\n", 400);
    expect_error("5\r\nhello\r\n0\r\n\n", 400);
    /* the trailer section is bounded */
    static char big[12000];
    int n = snprintf(big, sizeof big, "0\r\n");
    while (n < 10000)
        n += snprintf(big + n, sizeof big - (size_t)n, "X-T: %080d\r\n", n);
    n += snprintf(big + n, sizeof big - (size_t)n, "\r\n");
    assert_int_equal(decode(big, (size_t)n, 0), -1);
    assert_int_equal(status, 431);
}

static void test_invalid_framing(void **state) {
    (void)state;
    expect_error("\r\nhello\r\n0\r\n\r\n", 400);            /* no size */
    expect_error("g\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("0x5\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("-5\r\nhello\r\n0\r\n\r\n", 400);
    expect_error("5\nhello\r\n0\r\n\r\n", 400);             /* bare LF */
    expect_error("5\rhello\r\n0\r\n\r\n", 400);             /* bare CR */
    expect_error("5\r\nhelloX\r\n0\r\n\r\n", 400);          /* data longer than its size */
    expect_error("5\r\nhello\n0\r\n\r\n", 400);
    expect_error("5\r\nhello\r\r\n0\r\n\r\n", 400);
    expect_error("10000000000000000\r\n", 400);             /* 2^64: overflow */
    assert_int_equal(decode("FFFFFFFFFFFFFFF\r\n", 17, 0), 17); /* 2^60-1 is fine so far */
    assert_int_equal(done, 0);
    static char longline[6000];
    memset(longline, '0', sizeof longline);
    assert_int_equal(decode(longline, sizeof longline, 0), -1);
    assert_int_equal(status, 400);
    int n = snprintf(longline, sizeof longline, "5;x=%05000d\r\nhello\r\n0\r\n\r\n", 0);
    assert_int_equal(decode(longline, (size_t)n, 0), -1);
    assert_int_equal(status, 400);
}

static void test_incomplete_and_rest(void **state) {
    (void)state;
    static const char s[] = "5\r\nhello\r\n0\r\n\r\n";
    for (size_t k = 0; k < sizeof s - 1; k++) {
        assert_int_equal(decode(s, k, 0), (long)k);
        assert_int_equal(done, 0);
    }
    /* the next pipelined request is left alone */
    static const char piped[] = "2\r\nhi\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    assert_int_equal(decode(piped, sizeof piped - 1, 0), (long)strlen("2\r\nhi\r\n0\r\n\r\n"));
    assert_int_equal(done, 1);
}

static void test_max_body(void **state) {
    (void)state;
    static const char s[] = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    assert_int_equal(decode(s, sizeof s - 1, 11), (long)sizeof s - 1);
    assert_int_equal(body_len, 11);
    assert_int_equal(decode(s, sizeof s - 1, 10), -1);
    assert_int_equal(status, 413);
    assert_int_equal(body_len, 5); /* refused at the size line, before the data arrives */
    assert_int_equal(decode("FFFFFFFFFFFFFFF\r\n", 17, 1 << 20), -1);
    assert_int_equal(status, 413);
}

static void test_inplace(void **state) {
    (void)state;
    static const char s[] = "5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nT: 1\r\n\r\nNEXT";
    char *buf = guarded(s, sizeof s - 1);
    pier__chunked_t d;
    pier__chunked_init(&d, 0);
    size_t out;
    ssize_t used = pier__chunked_decode_inplace(&d, buf, sizeof s - 1, &out);
    assert_int_equal(used, sizeof s - 1 - 4);
    assert_true(d.done);
    assert_int_equal(out, 11);
    assert_memory_equal(buf, "hello world", 11);
    assert_memory_equal(buf + used, "NEXT", 4);
    /* in pieces: each call appends what it decoded */
    pier__chunked_init(&d, 0);
    char acc[64];
    size_t acc_len = 0, off = 0;
    while (!d.done) {
        size_t piece = sizeof s - 1 - off < 3 ? sizeof s - 1 - off : 3;
        char *in = guarded(s + off, piece);
        used = pier__chunked_decode_inplace(&d, in, piece, &out);
        assert_true(used > 0);
        memcpy(acc + acc_len, in, out);
        acc_len += out;
        off += (size_t)used;
    }
    assert_int_equal(acc_len, 11);
    assert_memory_equal(acc, "hello world", 11);
    pier__chunked_init(&d, 0);
    buf = guarded("5\r\nhe\nlo", 8);
    assert_int_equal(pier__chunked_decode_inplace(&d, buf, 8, &out), 8);
    assert_int_equal(out, 5);
    assert_memory_equal(buf, "he\nlo", 5);
    buf = guarded("zz\r\n", 4);
    assert_int_equal(pier__chunked_decode_inplace(&d, buf, 4, &out), -1);
    assert_int_equal(d.status, 400);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_extensions),
        cmocka_unit_test(test_trailers),
        cmocka_unit_test(test_invalid_framing),
        cmocka_unit_test(test_incomplete_and_rest),
        cmocka_unit_test(test_max_body),
        cmocka_unit_test(test_inplace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
