/* The PROXY protocol: the parser on v1 and v2 headers, good and bad, each placed against
 * a guard page and cut at every length; the source allow-list; and a server with the
 * protocol on, seen from a client: the peer it reports, the bytes after the header left
 * for the protocol, and bad, slow and refused headers closed and counted without an
 * on_accept. */
#include "echo_server.h"

#include <pier/net.h>
#include "net/conn.h"
#include "net/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- input against a guard page: a read past its end faults ---- */

static char *guard_base;
static size_t guard_page;

static int setup(void **state) {
    guard_page = (size_t)sysconf(_SC_PAGESIZE);
    size_t span = 17 * guard_page; /* room for the largest header pier takes, and the guard */
    guard_base = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard_base == MAP_FAILED)
        return -1;
    return mprotect(guard_base + 16 * guard_page, guard_page, PROT_NONE);
}

static int teardown(void **state) { return munmap(guard_base, 17 * guard_page); }

static int parse_at_guard(const void *data, size_t len, pier__proxy_hdr_t *h, size_t *need) {
    assert_true(len <= 16 * guard_page);
    char *p = guard_base + 16 * guard_page - len;
    memcpy(p, data, len);
    return pier__proxy_parse(p, len, h, need);
}

static int parse_str(const char *s, pier__proxy_hdr_t *h) {
    size_t need;
    return parse_at_guard(s, strlen(s), h, &need);
}

static void assert_addr(const pier__sockaddr_t *a, const char *want) {
    char buf[64];
    pier__addr_str(a, buf, sizeof buf);
    assert_string_equal(buf, want);
}

/* Every proper prefix of a valid header is incomplete (never an error, never a success)
 * and asks for more than it has, never more than the whole header. */
static void assert_prefixes_incomplete(const void *hdr, size_t hlen) {
    pier__proxy_hdr_t h;
    for (size_t k = 0; k < hlen; k++) {
        size_t need = 0;
        int r = parse_at_guard(hdr, k, &h, &need);
        if (r != -2)
            fail_msg("prefix of %zu of %zu bytes: %d, want -2", k, hlen, r);
        assert_true(need > k);
        assert_true(need <= hlen);
    }
}

/* ---- v1 ---- */

static void test_v1_tcp4(void **state) {
    static const char hdr[] = "PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n";
    char buf[128];
    snprintf(buf, sizeof buf, "%sGET / HTTP/1.1\r\n", hdr);
    pier__proxy_hdr_t h;
    assert_int_equal(parse_str(buf, &h), (int)strlen(hdr)); /* the request is not the header's */
    assert_int_equal(h.version, 1);
    assert_false(h.local);
    assert_addr(&h.src, "203.0.113.7:51000");
    assert_addr(&h.dst, "192.0.2.1:443");
    assert_prefixes_incomplete(hdr, strlen(hdr));
}

static void test_v1_tcp6(void **state) {
    static const char hdr[] = "PROXY TCP6 2001:db8::7 ::1 0 65535\r\n";
    pier__proxy_hdr_t h;
    assert_int_equal(parse_str(hdr, &h), (int)strlen(hdr));
    assert_addr(&h.src, "[2001:db8::7]:0");
    assert_addr(&h.dst, "[::1]:65535");
    assert_prefixes_incomplete(hdr, strlen(hdr));
}

#define FULL6 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

/* The longest v1 headers: TCP6 with the widest addresses (104 bytes), and the spec's
 * worst case, 107 bytes, UNKNOWN with the same fields. */
static void test_v1_longest(void **state) {
    static const char tcp6[] = "PROXY TCP6 " FULL6 " " FULL6 " 65535 65535\r\n";
    static const char unknown[] = "PROXY UNKNOWN " FULL6 " " FULL6 " 65535 65535\r\n";
    assert_int_equal(strlen(tcp6), 104);
    assert_int_equal(strlen(unknown), 107);
    pier__proxy_hdr_t h;
    assert_int_equal(parse_str(tcp6, &h), 104);
    assert_addr(&h.src, "[" FULL6 "]:65535");
    assert_prefixes_incomplete(tcp6, 104);
    assert_int_equal(parse_str(unknown, &h), 107);
    assert_true(h.local);
    assert_prefixes_incomplete(unknown, 107);
}

static void test_v1_unknown(void **state) {
    pier__proxy_hdr_t h;
    assert_int_equal(parse_str("PROXY UNKNOWN\r\n", &h), 15);
    assert_true(h.local);
    /* whatever follows UNKNOWN is ignored, as the spec says */
    static const char more[] = "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest";
    assert_int_equal(parse_str(more, &h), (int)strlen(more) - 4);
    assert_true(h.local);
    assert_prefixes_incomplete("PROXY UNKNOWN\r\n", 15);
}

static void test_v1_bad(void **state) {
    static const char *const bad[] = {
        "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",            /* three octets */
        "PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",        /* octet over 255 */
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",              /* v6 under TCP4 */
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",              /* v4 under TCP6 */
        "PROXY TCP6 2001:db8::g ::1 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",      /* port over 65535 */
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1x 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",        /* a fifth field */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",            /* three fields */
        "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",         /* two spaces */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",         /* trailing space */
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY \r\n",
        "PROXY TCP4\r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",            /* LF without CR */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\t2\r\n",          /* a control byte */
        "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "\x16\x03\x01\x02\x00",                          /* a TLS ClientHello */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pier__proxy_hdr_t h;
        int r = parse_str(bad[i], &h);
        if (r != -1)
            fail_msg("%s: %d, want -1", bad[i], r);
        assert_non_null(h.why);
    }
}

/* No CRLF within 107 bytes is an error as soon as the 107th byte is in, whatever
 * follows; and a NUL inside the line is an error, not the end of a string. */
static void test_v1_too_long(void **state) {
    char line[300];
    memset(line, '1', sizeof line);
    memcpy(line, "PROXY TCP4 ", 11);
    pier__proxy_hdr_t h;
    size_t need;
    assert_int_equal(parse_at_guard(line, 106, &h, &need), -1); /* CRLF can no longer fit */
    assert_int_equal(parse_at_guard(line, 105, &h, &need), -2);
    assert_int_equal(parse_at_guard(line, sizeof line, &h, &need), -1);
    /* 108 bytes ending in CRLF: one over */
    static const char over[] = "PROXY UNKNOWN " FULL6 " " FULL6 " 65535 655350\r\n";
    assert_int_equal(strlen(over), 108);
    assert_int_equal(parse_str(over, &h), -1);
    static const char nul[] = "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n";
    assert_int_equal(parse_at_guard(nul, sizeof nul - 1, &h, &need), -1);
}

/* ---- v2 ---- */

static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* A v2 header into buf: version/command byte vc, family/protocol byte fp, then body. */
static size_t v2(unsigned char *buf, unsigned vc, unsigned fp, const void *body, size_t blen) {
    memcpy(buf, sig, 12);
    buf[12] = (unsigned char)vc;
    buf[13] = (unsigned char)fp;
    buf[14] = (unsigned char)(blen >> 8);
    buf[15] = (unsigned char)blen;
    if (blen)
        memcpy(buf + 16, body, blen);
    return 16 + blen;
}

static size_t inet_block(unsigned char *b, const char *src, const char *dst, uint16_t sp, uint16_t dp) {
    inet_pton(AF_INET, src, b);
    inet_pton(AF_INET, dst, b + 4);
    b[8] = (unsigned char)(sp >> 8), b[9] = (unsigned char)sp;
    b[10] = (unsigned char)(dp >> 8), b[11] = (unsigned char)dp;
    return 12;
}

static void test_v2_inet_tlvs(void **state) {
    unsigned char body[64], buf[128];
    size_t n = inet_block(body, "198.51.100.9", "10.0.0.1", 4444, 80);
    /* ALPN "h2", an empty TLV, a unique id */
    static const unsigned char tlvs[] = {0x01, 0x00, 0x02, 'h', '2', 0x04, 0x00, 0x00, 0x05, 0x00, 0x03, 'a', 'b', 'c'};
    memcpy(body + n, tlvs, sizeof tlvs);
    size_t len = v2(buf, 0x21, 0x11, body, n + sizeof tlvs);
    memcpy(buf + len, "GET", 3); /* what follows stays unconsumed */
    pier__proxy_hdr_t h;
    size_t need;
    assert_int_equal(parse_at_guard(buf, len + 3, &h, &need), (int)len);
    assert_int_equal(h.version, 2);
    assert_false(h.local);
    assert_addr(&h.src, "198.51.100.9:4444");
    assert_addr(&h.dst, "10.0.0.1:80");
    assert_prefixes_incomplete(buf, len);
}

static void test_v2_inet6(void **state) {
    unsigned char body[36], buf[64];
    inet_pton(AF_INET6, "2001:db8::42", body);
    inet_pton(AF_INET6, "2001:db8::1", body + 16);
    body[32] = 0xC3, body[33] = 0x50, body[34] = 0x01, body[35] = 0xBB; /* 50000, 443 */
    size_t len = v2(buf, 0x21, 0x21, body, sizeof body);
    pier__proxy_hdr_t h;
    size_t need;
    assert_int_equal(parse_at_guard(buf, len, &h, &need), (int)len);
    assert_addr(&h.src, "[2001:db8::42]:50000");
    assert_addr(&h.dst, "[2001:db8::1]:443");
    assert_prefixes_incomplete(buf, len);
}

/* LOCAL (a balancer's health check) is valid whatever its family and block say, and
 * keeps the socket's own address. */
static void test_v2_local(void **state) {
    unsigned char buf[64], junk[7] = {1, 2, 3, 4, 5, 6, 7};
    pier__proxy_hdr_t h;
    size_t need;
    size_t len = v2(buf, 0x20, 0x00, NULL, 0);
    assert_int_equal(parse_at_guard(buf, len, &h, &need), 16);
    assert_true(h.local);
    len = v2(buf, 0x20, 0xF7, junk, sizeof junk); /* unknown family, short block: ignored */
    assert_int_equal(parse_at_guard(buf, len, &h, &need), (int)len);
    assert_true(h.local);
    assert_prefixes_incomplete(buf, len);
}

/* PROXY with UNSPEC, unix or a datagram protocol: valid, and the spec has the receiver
 * fall back to the socket's addresses. */
static void test_v2_fallback_families(void **state) {
    static const unsigned fps[] = {0x00, 0x31, 0x32, 0x12, 0x22, 0x10, 0x20};
    static const size_t blocks[] = {0, 216, 216, 12, 36, 12, 36};
    unsigned char body[300] = {0}, buf[400];
    for (size_t i = 0; i < sizeof fps / sizeof fps[0]; i++) {
        size_t len = v2(buf, 0x21, fps[i], body, blocks[i]);
        pier__proxy_hdr_t h;
        size_t need;
        assert_int_equal(parse_at_guard(buf, len, &h, &need), (int)len);
        assert_true(h.local);
    }
}

static void test_v2_bad(void **state) {
    unsigned char body[300] = {0}, buf[400];
    struct {
        unsigned vc, fp;
        size_t blen;
        const char *what;
    } bad[] = {
        {0x11, 0x11, 12, "version 1"},
        {0x31, 0x11, 12, "version 3"},
        {0x22, 0x11, 12, "command 2"},
        {0x2F, 0x11, 12, "command 15"},
        {0x21, 0x41, 12, "family 4"},
        {0x21, 0xF1, 12, "family 15"},
        {0x21, 0x13, 12, "protocol 3"},
        {0x21, 0x11, 11, "inet block short"},
        {0x21, 0x21, 35, "inet6 block short"},
        {0x21, 0x31, 215, "unix block short"},
        {0x21, 0x11, 0, "no block"},
        {0x21, 0x11, 14, "two bytes of a TLV"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len = v2(buf, bad[i].vc, bad[i].fp, body, bad[i].blen);
        pier__proxy_hdr_t h;
        size_t need;
        int r = parse_at_guard(buf, len, &h, &need);
        if (r != -1)
            fail_msg("%s: %d, want -1", bad[i].what, r);
    }
}

/* A TLV whose length runs past the declared header length is refused; so is a wrong
 * byte anywhere in the signature. */
static void test_v2_tlv_overrun_and_signature(void **state) {
    unsigned char body[64], buf[128];
    size_t n = inet_block(body, "1.2.3.4", "5.6.7.8", 1, 2);
    static const unsigned char tlv[] = {0x05, 0x00, 0x05, 'a', 'b', 'c', 'd'}; /* says 5, has 4 */
    memcpy(body + n, tlv, sizeof tlv);
    size_t len = v2(buf, 0x21, 0x11, body, n + sizeof tlv);
    memset(buf + len, 'x', 8); /* bytes after the header must not be taken for the TLV */
    pier__proxy_hdr_t h;
    size_t need;
    assert_int_equal(parse_at_guard(buf, len + 8, &h, &need), -1);
    len = v2(buf, 0x21, 0x11, body, n);
    for (size_t i = 0; i < 12; i++) {
        buf[i] ^= 0x20;
        assert_int_equal(parse_at_guard(buf, len, &h, &need), -1);
        assert_int_equal(parse_at_guard(buf, i + 1, &h, &need), -1); /* known bad at once */
        buf[i] ^= 0x20;
    }
}

/* A CRC32C TLV is checked over the whole header (its own value taken as zeros): the
 * right one is taken, a wrong one or one of the wrong size is refused. */
static void test_v2_crc32c(void **state) {
    assert_int_equal(pier__crc32c("123456789", 9, 0), 0xE3069283u); /* the standard check value */
    assert_int_equal(pier__crc32c("6789", 4, pier__crc32c("12345", 5, 0)), 0xE3069283u);
    unsigned char body[64], buf[128];
    size_t n = inet_block(body, "203.0.113.1", "10.0.0.1", 1000, 443);
    static const unsigned char tlvs[] = {0x01, 0x00, 0x02, 'h', '2', 0x03, 0x00, 0x04, 0, 0, 0, 0};
    memcpy(body + n, tlvs, sizeof tlvs);
    size_t len = v2(buf, 0x21, 0x11, body, n + sizeof tlvs);
    uint32_t crc = pier__crc32c(buf, len, 0);
    unsigned char *v = buf + len - 4;
    v[0] = (unsigned char)(crc >> 24), v[1] = (unsigned char)(crc >> 16), v[2] = (unsigned char)(crc >> 8);
    v[3] = (unsigned char)crc;
    pier__proxy_hdr_t h;
    size_t need;
    assert_int_equal(parse_at_guard(buf, len, &h, &need), (int)len);
    assert_addr(&h.src, "203.0.113.1:1000");
    buf[20] ^= 1; /* an address byte */
    assert_int_equal(parse_at_guard(buf, len, &h, &need), -1);
    buf[20] ^= 1;
    v[3] ^= 0x80;
    assert_int_equal(parse_at_guard(buf, len, &h, &need), -1);
    static const unsigned char short_crc[] = {0x03, 0x00, 0x03, 0, 0, 0};
    memcpy(body + n, short_crc, sizeof short_crc);
    len = v2(buf, 0x21, 0x11, body, n + sizeof short_crc);
    assert_int_equal(parse_at_guard(buf, len, &h, &need), -1);
}

/* The largest header pier takes is PIER__PROXY_MAX bytes; one over is refused as soon as
 * its fixed part says so, before waiting for the rest. */
static void test_v2_size_limit(void **state) {
    size_t blen = PIER__PROXY_MAX - 16;
    unsigned char *body = calloc(1, blen + 1), *buf = malloc(PIER__PROXY_MAX + 16);
    size_t n = inet_block(body, "1.2.3.4", "5.6.7.8", 1, 2);
    /* one TLV filling the rest */
    size_t vlen = blen - n - 3;
    body[n] = 0xE0, body[n + 1] = (unsigned char)(vlen >> 8), body[n + 2] = (unsigned char)vlen;
    size_t len = v2(buf, 0x21, 0x11, body, blen);
    pier__proxy_hdr_t h;
    size_t need;
    assert_int_equal(parse_at_guard(buf, len, &h, &need), (int)len);
    assert_int_equal(parse_at_guard(buf, 16, &h, &need), -2);
    assert_int_equal(need, len);
    v2(buf, 0x21, 0x11, body, blen + 1);
    assert_int_equal(parse_at_guard(buf, 16, &h, &need), -1);
    free(body);
    free(buf);
}

/* ---- the allow-list ---- */

static int matches(const char *list, const char *addr) {
    pier__cidr_t c[8];
    size_t bad;
    int n = pier__cidr_parse(list, c, 8, &bad);
    assert_true(n > 0);
    pier__sockaddr_t a = {0};
    if (inet_pton(AF_INET, addr, &a.in.sin_addr) == 1)
        a.sa.sa_family = AF_INET;
    else if (inet_pton(AF_INET6, addr, &a.in6.sin6_addr) == 1)
        a.sa.sa_family = AF_INET6;
    else
        fail_msg("bad test address %s", addr);
    return pier__cidr_match(c, (size_t)n, &a.sa);
}

static void test_cidr_match(void **state) {
    assert_true(matches("10.0.0.0/8", "10.255.1.2"));
    assert_false(matches("10.0.0.0/8", "11.0.0.1"));
    assert_true(matches("192.168.1.7", "192.168.1.7"));
    assert_false(matches("192.168.1.7", "192.168.1.8"));
    assert_true(matches("172.16.0.0/12", "172.31.255.255"));
    assert_false(matches("172.16.0.0/12", "172.32.0.0"));
    assert_true(matches("10.1.2.3/8", "10.9.9.9")); /* host bits are ignored */
    assert_true(matches("0.0.0.0/0", "203.0.113.1"));
    assert_false(matches("0.0.0.0/0", "::1"));       /* families stay apart */
    assert_true(matches("::/0", "2001:db8::1"));
    assert_true(matches("fd00::/8", "fdab::1"));
    assert_false(matches("fd00::/8", "fe80::1"));
    assert_true(matches("2001:db8::/33", "2001:db8:7fff::1"));
    assert_false(matches("2001:db8::/33", "2001:db8:8000::1"));
    assert_true(matches("::1", "::1"));
    assert_true(matches("127.0.0.0/8", "::ffff:127.0.0.1")); /* a v4-mapped source is v4 */
    assert_true(matches(" 10.0.0.0/8 , ::1 ", "::1"));
}

static void test_cidr_bad(void **state) {
    static const struct {
        const char *list;
        size_t off;
    } bad[] = {
        {"", 0}, {"10.0.0.0/33", 0}, {"::1/129", 0}, {"10.0.0.0/", 0}, {"10.0.0.0/8x", 0},
        {"host.example", 0}, {"10.0.0.0/8,", 11}, {"10.0.0.0/8,,::1", 11}, {"::1,1.2.3", 4},
        {"1.2.3.4/-1", 0}, {"1.2.3.4/0008", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t off = 99;
        if (pier_proxy_from_check(bad[i].list, &off) != -EINVAL)
            fail_msg("'%s' was taken", bad[i].list);
        assert_int_equal(off, bad[i].off);
    }
    assert_int_equal(pier_proxy_from_check("10.0.0.0/8,::1,fd00::/8", NULL), 0);
    pier__cidr_t one[1];
    size_t off;
    assert_int_equal(pier__cidr_parse("1.2.3.4,5.6.7.8", one, 1, &off), -E2BIG);
    assert_int_equal(off, 8);
}

/* ---- a server with the protocol on ---- */

static int accepted, closed;
static char peer_seen[64];

static void on_close(pier_conn_t *c, int err) { closed++; }

static const pier_conn_cbs_t echo_cbs = {.on_read = echo_server_read, .on_close = on_close};

static void on_accept(pier_server_t *srv, pier_conn_t *c) {
    accepted++;
    pier_conn_peer(c, peer_seen, sizeof peer_seen);
    pier_conn_set_cbs(c, &echo_cbs, NULL);
}

typedef echo_server_fx_t fx_t;

/* A started server with the PROXY protocol on, from the sources in from (NULL: any). */
static fx_t up(const char *from, uint64_t timeout_ms) {
    accepted = closed = 0;
    peer_seen[0] = '\0';
    pier_server_opts_t o = {.on_accept = on_accept, .proxy = {.on = 1, .from = from, .timeout_ms = timeout_ms}};
    return echo_server_up(&o);
}

/* Closes what is still open and frees the server and its group. */
static void down(fx_t *f) {
    pier_server_stop(f->srv); /* and again in echo_server_free: idempotent */
    pier_server_close_all(f->srv);
    echo_server_free(f->srv, f->g);
}

static pier_proxy_stats_t stats(fx_t *f) {
    pier_proxy_stats_t s;
    pier_server_proxy_stats(f->srv, &s);
    return s;
}

/* Drives the loop until fd has len bytes to read (then reads them) or reaches its end. */
static size_t drive_read(fx_t *f, int fd, char *buf, size_t len) {
    size_t got = 0;
    uint64_t end = pier_test_now_ms() + 10000;
    while (got < len && pier_test_now_ms() < end) {
        pier_loop_run_once(f->loop, 2);
        ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            break;
        if (n > 0)
            got += (size_t)n;
    }
    return got;
}

/* 1 once the server has closed fd (EOF or reset), driving the loop; 0 after 10 s. */
static int drive_closed(fx_t *f, int fd) {
    uint64_t end = pier_test_now_ms() + 10000;
    char b[64];
    while (pier_test_now_ms() < end) {
        pier_loop_run_once(f->loop, 2);
        ssize_t n = recv(fd, b, sizeof b, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN))
            return 1;
    }
    return 0;
}

/* Header and data in one send: the connection is accepted with the header's address and
 * echoes exactly the data, so not a byte of it was taken with the header. */
static void test_server_v1_then_data(void **state) {
    fx_t f = up(NULL, 0);
    int fd = pier_test_connect(f.port);
    static const char msg[] = "PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\nhello";
    assert_int_equal(send(fd, msg, sizeof msg - 1, 0), (ssize_t)sizeof msg - 1);
    char buf[16] = {0};
    assert_int_equal(drive_read(&f, fd, buf, 5), 5);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(accepted, 1);
    assert_string_equal(peer_seen, "203.0.113.7:51000");
    assert_int_equal(stats(&f).ok, 1);
    close(fd);
    down(&f);
}

/* A v2 header sent a byte at a time, with a TLV, then data: the same. A LOCAL header keeps
 * the socket's own address. */
static void test_server_v2_trickled_and_local(void **state) {
    fx_t f = up(NULL, 0);
    unsigned char body[32], buf[64];
    size_t n = inet_block(body, "198.51.100.9", "127.0.0.1", 4444, 80);
    static const unsigned char tlv[] = {0x02, 0x00, 0x03, 'a', 'b', 'c'};
    memcpy(body + n, tlv, sizeof tlv);
    size_t len = v2(buf, 0x21, 0x11, body, n + sizeof tlv);
    int fd = pier_test_connect(f.port);
    for (size_t i = 0; i + 1 < len; i++) {
        assert_int_equal(send(fd, buf + i, 1, 0), 1);
        pier_loop_run_once(f.loop, 1);
    }
    for (int i = 0; i < 5; i++)
        pier_loop_run_once(f.loop, 2);
    assert_int_equal(accepted, 0); /* not before the whole header */
    assert_int_equal(send(fd, buf + len - 1, 1, 0), 1);
    assert_int_equal(send(fd, "ping", 4, 0), 4);
    char got[8];
    assert_int_equal(drive_read(&f, fd, got, 4), 4);
    assert_memory_equal(got, "ping", 4);
    assert_string_equal(peer_seen, "198.51.100.9:4444");
    close(fd);

    fd = pier_test_connect(f.port);
    len = v2(buf, 0x20, 0x00, NULL, 0);
    memcpy(buf + len, "ping", 4);
    assert_int_equal(send(fd, buf, len + 4, 0), (ssize_t)len + 4);
    assert_int_equal(drive_read(&f, fd, got, 4), 4);
    assert_int_equal(strncmp(peer_seen, "127.0.0.1:", 10), 0);
    pier_proxy_stats_t s = stats(&f);
    assert_int_equal(s.ok, 1);
    assert_int_equal(s.local, 1);
    close(fd);
    down(&f);
}

/* Bad, slow and refused headers: each connection is closed, counted once, and never
 * reaches on_accept; a good one alongside is served. */
static void test_server_rejects(void **state) {
    fx_t f = up(NULL, 50);
    int bad = pier_test_connect(f.port);
    int slow = pier_test_connect(f.port);
    static const char garbage[] = "GET / HTTP/1.1\r\n\r\n";
    assert_int_equal(send(bad, garbage, sizeof garbage - 1, 0), (ssize_t)sizeof garbage - 1);
    assert_int_equal(send(slow, "PROXY TCP4 1.2.3.4", 18, 0), 18);
    assert_true(drive_closed(&f, bad));
    assert_true(drive_closed(&f, slow));
    static const char ok[] = "PROXY TCP4 192.0.2.5 127.0.0.1 1 2\r\nok";
    int good = pier_test_connect(f.port);
    assert_int_equal(send(good, ok, sizeof ok - 1, 0), (ssize_t)sizeof ok - 1);
    char buf[2];
    assert_int_equal(drive_read(&f, good, buf, 2), 2);
    pier_proxy_stats_t s = stats(&f);
    assert_int_equal(s.bad, 1);
    assert_int_equal(s.timeout, 1);
    assert_int_equal(s.ok, 1);
    assert_int_equal(accepted, 1);
    /* the good connection was the only one that counted as open */
    assert_int_equal(pier_server_conns(f.srv), 1);
    close(bad);
    close(slow);
    close(good);
    down(&f);

    f = up("10.0.0.0/8,::1", 0);
    int fd = pier_test_connect(f.port);
    assert_true(drive_closed(&f, fd));
    assert_int_equal(stats(&f).refused, 1);
    assert_int_equal(accepted, 0);
    close(fd);
    down(&f);

    f = up("127.0.0.0/8", 0);
    fd = pier_test_connect(f.port);
    assert_int_equal(send(fd, ok, sizeof ok - 1, 0), (ssize_t)sizeof ok - 1);
    assert_int_equal(drive_read(&f, fd, buf, 2), 2);
    assert_int_equal(stats(&f).ok, 1);
    close(fd);
    down(&f);
}

/* A socket still waiting for its header when the server closes everything is dropped,
 * so the server can be freed and the loop ends with no live handle. */
static void test_server_close_all_drops_waiting(void **state) {
    fx_t f = up(NULL, 60000);
    int fd = pier_test_connect(f.port);
    assert_int_equal(send(fd, "PROXY ", 6, 0), 6);
    for (int i = 0; i < 20 && pier_server_conns(f.srv) == 0; i++)
        pier_loop_run_once(f.loop, 5);
    assert_int_equal(pier_server_conns(f.srv), 1); /* waiting counts as open */
    down(&f);
    char b[4];
    assert_true(recv(fd, b, sizeof b, 0) <= 0);
    close(fd);
}

/* A bad allow-list (or host) fails pier_server_new with -EINVAL, and its clean-up closes
 * no descriptor it did not open: it used to close fd 0, once per loop, taking the
 * listeners' zeroed fd fields for sockets. */
static void test_server_bad_from(void **state) {
    int null = open("/dev/null", O_RDONLY);
    assert_true(null >= 0);
    assert_int_equal(dup2(null, 0), 0);
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 2), 0);
    pier_server_t *srv;
    pier_server_opts_t o = {.on_accept = on_accept, .proxy = {.on = 1, .from = "10.0.0.0/40"}};
    assert_int_equal(pier_server_new(&srv, g, &o), -EINVAL);
    assert_true(fcntl(0, F_GETFD) >= 0);
    pier_server_opts_t bad_host = {.host = "no.such.host", .on_accept = on_accept};
    assert_int_equal(pier_server_new(&srv, g, &bad_host), -EINVAL);
    assert_true(fcntl(0, F_GETFD) >= 0);
    assert_int_equal(pier_group_free(g), 0);
    close(null);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4),
        cmocka_unit_test(test_v1_tcp6),
        cmocka_unit_test(test_v1_longest),
        cmocka_unit_test(test_v1_unknown),
        cmocka_unit_test(test_v1_bad),
        cmocka_unit_test(test_v1_too_long),
        cmocka_unit_test(test_v2_inet_tlvs),
        cmocka_unit_test(test_v2_inet6),
        cmocka_unit_test(test_v2_local),
        cmocka_unit_test(test_v2_fallback_families),
        cmocka_unit_test(test_v2_bad),
        cmocka_unit_test(test_v2_tlv_overrun_and_signature),
        cmocka_unit_test(test_v2_crc32c),
        cmocka_unit_test(test_v2_size_limit),
        cmocka_unit_test(test_cidr_match),
        cmocka_unit_test(test_cidr_bad),
        cmocka_unit_test(test_server_v1_then_data),
        cmocka_unit_test(test_server_v2_trickled_and_local),
        cmocka_unit_test(test_server_rejects),
        cmocka_unit_test(test_server_close_all_drops_waiting),
        cmocka_unit_test(test_server_bad_from),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
