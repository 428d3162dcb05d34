/* The frame codec: headers of every length form parsed from input placed against a guard
 * page and cut at every byte (incomplete until whole, never a read past the end); every
 * rule of RFC 6455 5 that fails a frame, with its code; headers we write parse back;
 * unmasking from any offset; close codes; the handshake's SHA-1 and accept key; and short
 * one-frame messages through the reader, whole and cut, within and over the limits. */
#include "support.h"

#include <stdio.h>
#include <string.h>

#include "../http/guard.h"
#include "ws/ws_int.h"

static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};

/* A masked client frame header for len, built by hand (not by the code under test). */
static size_t client_header(uint8_t *b, int b0, uint64_t len) {
    size_t n = 2;
    b[0] = (uint8_t)b0;
    if (len < 126) {
        b[1] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        b[1] = 0x80 | 126;
        b[2] = (uint8_t)(len >> 8);
        b[3] = (uint8_t)len;
        n = 4;
    } else {
        b[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            b[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    memcpy(b + n, key, 4);
    return n + 4;
}

static void parse_every_length_form_at_every_cut(void **state) {
    (void)state;
    static const uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 1ull << 32, (1ull << 63) - 1};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        uint8_t h[14];
        size_t n = client_header(h, 0x82, lens[i]);
        for (size_t cut = 0; cut < n; cut++) {
            pier__ws_frame_t f;
            assert_int_equal(pier__ws_parse((const uint8_t *)guarded((char *)h, cut), cut, &f), 0);
        }
        pier__ws_frame_t f;
        assert_int_equal(pier__ws_parse((const uint8_t *)guarded((char *)h, n), n, &f), (int)n);
        assert_true(f.fin && f.masked && f.opcode == 2 && f.rsv == 0);
        assert_true(f.len == lens[i]);
        assert_memory_equal(f.mask, key, 4);
    }
}

static void top_bit_of_64_bit_length(void **state) {
    (void)state;
    uint8_t h[14] = {0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    pier__ws_frame_t f;
    assert_int_equal(pier__ws_parse(h, sizeof h, &f), -1);
}

typedef struct {
    const char *what;
    int b0;
    uint64_t len;
    int masked, in_message;
    uint64_t msg_len;
    int code;
} rule_t;

#define MAX 1000
static const rule_t rules[] = {
    {"text", 0x81, 10, 1, 0, 0, 0},
    {"binary at the limit", 0x82, MAX, 1, 0, 0, 0},
    {"binary over the limit", 0x82, MAX + 1, 1, 0, 0, PIER_WS_TOO_BIG},
    {"continuation over the limit", 0x80, 11, 1, 1, MAX - 10, PIER_WS_TOO_BIG},
    {"continuation to the limit", 0x80, 10, 1, 1, MAX - 10, 0},
    {"a huge declared length", 0x82, 1ull << 62, 1, 0, 0, PIER_WS_TOO_BIG},
    {"unmasked", 0x81, 10, 0, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"rsv1", 0xC1, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"rsv2", 0xA1, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"rsv3", 0x91, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"opcode 3", 0x83, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"opcode 7", 0x87, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"opcode b", 0x8B, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"opcode f", 0x8F, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"continuation with no message", 0x80, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"text inside a message", 0x81, 1, 1, 1, 5, PIER_WS_PROTOCOL_ERROR},
    {"binary start inside a message", 0x02, 1, 1, 1, 5, PIER_WS_PROTOCOL_ERROR},
    {"ping inside a message", 0x89, 5, 1, 1, 5, 0},
    {"ping of 125", 0x89, 125, 1, 0, 0, 0},
    {"ping of 126", 0x89, 126, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"fragmented ping", 0x09, 1, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"fragmented close", 0x08, 2, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"close of 126", 0x88, 126, 1, 0, 0, PIER_WS_PROTOCOL_ERROR},
    {"pong unmasked", 0x8A, 0, 0, 0, 0, PIER_WS_PROTOCOL_ERROR},
};

static void every_rule_with_its_code(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        const rule_t *r = &rules[i];
        uint8_t h[14];
        size_t n = client_header(h, r->b0, r->len);
        if (!r->masked) { /* drop the key */
            h[1] &= 0x7F;
            n -= 4;
        }
        pier__ws_frame_t f;
        assert_int_equal(pier__ws_parse(h, n, &f), (int)n);
        int code = pier__ws_check(&f, r->in_message, r->msg_len, MAX, 1, 0);
        if (code != r->code) {
            fprintf(stderr, "%s: %d, expected %d\n", r->what, code, r->code);
            fail();
        }
    }
}

static void a_client_rejects_masked_server_frames(void **state) {
    (void)state;
    uint8_t h[14];
    size_t n = client_header(h, 0x81, 3);
    pier__ws_frame_t f;
    assert_int_equal(pier__ws_parse(h, n, &f), (int)n);
    assert_int_equal(pier__ws_check(&f, 0, 0, MAX, 0, 0), PIER_WS_PROTOCOL_ERROR);
}

static void written_headers_parse_back(void **state) {
    (void)state;
    static const uint64_t lens[] = {0, 125, 126, 65535, 65536, 1ull << 40};
    static const int ops[] = {PIER_WS_TEXT, PIER_WS_BINARY, PIER_WS_PING, PIER_WS_CLOSE};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
        for (size_t j = 0; j < 4; j++)
            for (int masked = 0; masked < 2; masked++) {
                uint8_t h[PIER__WS_MAX_HEADER];
                size_t n = pier__ws_header(h, ops[j], lens[i], masked ? key : NULL);
                assert_int_equal(n, (lens[i] < 126 ? 2 : lens[i] < 65536 ? 4 : 10) + (masked ? 4 : 0));
                pier__ws_frame_t f;
                assert_int_equal(pier__ws_parse(h, n, &f), (int)n);
                assert_true(f.fin && f.rsv == 0 && f.opcode == ops[j] && f.len == lens[i] && f.masked == masked);
            }
}

static void unmask_from_any_offset(void **state) {
    (void)state;
    uint8_t plain[100], masked[100], out[100];
    for (int i = 0; i < 100; i++) {
        plain[i] = (uint8_t)(i * 7 + 3);
        masked[i] = plain[i] ^ key[i % 4];
    }
    /* the payload taken in two pieces at every cut, as it arrives */
    for (size_t cut = 0; cut <= 100; cut++) {
        pier__ws_unmask(out, masked, cut, key, 0);
        pier__ws_unmask(out + cut, masked + cut, 100 - cut, key, cut);
        assert_memory_equal(out, plain, 100);
    }
    memcpy(out, masked, 100); /* in place */
    pier__ws_unmask(out, out, 100, key, 0);
    assert_memory_equal(out, plain, 100);
}

static void close_codes(void **state) {
    (void)state;
    static const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999};
    static const unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_true(pier__ws_close_code_ok(ok[i]));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(pier__ws_close_code_ok(bad[i]));
}

static void sha1_and_accept(void **state) {
    (void)state;
    uint8_t d[20];
    char hex[41];
    static const struct {
        const char *in, *hex;
    } v[] = {
        {"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
        {"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
    };
    for (size_t i = 0; i < 3; i++) {
        pier__sha1(v[i].in, strlen(v[i].in), d);
        for (int j = 0; j < 20; j++)
            snprintf(hex + 2 * j, 3, "%02x", d[j]);
        assert_string_equal(hex, v[i].hex);
    }
    char million[1000];
    memset(million, 'a', sizeof million); /* 64-byte blocks and a padding block of its own */
    pier__sha1(million, 1000, d);
    for (int j = 0; j < 20; j++)
        snprintf(hex + 2 * j, 3, "%02x", d[j]);
    assert_string_equal(hex, "291e9a6c66994949b57ba5e650361e98fc36b1ba");
    char acc[29];
    pier__ws_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, acc); /* RFC 6455 1.3 */
    assert_string_equal(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    char b64[16];
    pier__base64((const uint8_t *)"ab", 2, b64);
    assert_string_equal(b64, "YWI=");
    pier__base64((const uint8_t *)"a", 1, b64);
    assert_string_equal(b64, "YQ==");
}

/* ---- the reader, for the short one-frame messages that skip the general parse ---- */

typedef struct {
    int messages, opcode;
    uint8_t data[200];
    size_t len;
} got_t;

static int got_message(void *ctx, int opcode, const void *data, size_t len) {
    got_t *g = ctx;
    g->messages++;
    g->opcode = opcode;
    g->len = len;
    memcpy(g->data, data, len);
    return 0;
}

static int got_control(void *ctx, int opcode, const uint8_t *data, size_t len) {
    (void)ctx, (void)opcode, (void)data, (void)len;
    return 0;
}

/* Feeds wire[0, n) as it would arrive in two reads cut at cut (the rest kept, unconsumed,
 * as the core keeps it). Returns the reader's code (0 if it went through). */
static int read_cut(const uint8_t *wire, size_t n, size_t cut, uint64_t max, int masked, got_t *g) {
    pier__buf_t scratch = {0};
    pier__ws_reader_t r = {.max_message = max, .masked = masked, .scratch = &scratch, .on_message = got_message,
                           .on_control = got_control, .ctx = g};
    size_t off = 0, avail = cut;
    int code = 0;
    while (off < n) {
        ssize_t k = pier__ws_read(&r, wire + off, avail - off);
        if (k < 0) {
            code = r.code;
            break;
        }
        if (k == 0 && avail == n)
            fail_msg("the reader waits for bytes that are all there");
        off += (size_t)k;
        if (k == 0 || off == avail)
            avail = n;
    }
    pier__ws_reader_free(&r);
    pier__buf_free(&scratch);
    return code;
}

static size_t short_frame(uint8_t *wire, int b0, const uint8_t *plain, size_t len) {
    size_t h = client_header(wire, b0, len);
    for (size_t i = 0; i < len; i++)
        wire[h + i] = plain[i] ^ key[i % 4];
    return h + len;
}

static void short_messages_through_the_reader(void **state) {
    (void)state;
    uint8_t plain[125], wire[200];
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (uint8_t)('a' + i % 26);
    static const size_t lens[] = {0, 1, 3, 4, 7, 8, 15, 16, 17, 64, 125};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t n = short_frame(wire, 0x82, plain, lens[i]);
        for (size_t cut = 0; cut <= n; cut++) {
            got_t g = {0};
            assert_int_equal(read_cut(wire, n, cut, 1 << 20, 1, &g), 0);
            assert_int_equal(g.messages, 1);
            assert_int_equal(g.opcode, PIER_WS_BINARY);
            assert_int_equal(g.len, lens[i]);
            assert_memory_equal(g.data, plain, lens[i]);
        }
        /* the declared length over the limit: 1009, nothing delivered */
        got_t g = {0};
        if (lens[i])
            assert_int_equal(read_cut(wire, n, n, lens[i] - 1, 1, &g), PIER_WS_TOO_BIG);
        assert_int_equal(read_cut(wire, n, n, lens[i], 1, &g), 0);
        assert_int_equal(g.messages, 1);
    }
    got_t g = {0};
    size_t n = short_frame(wire, 0x81, (const uint8_t *)"ok \xc3\x28", 5);
    assert_int_equal(read_cut(wire, n, n, 1 << 20, 1, &g), PIER_WS_INVALID_DATA);
    n = short_frame(wire, 0x81, (const uint8_t *)"\xe2\x82\xac", 3);
    assert_int_equal(read_cut(wire, n, n, 1 << 20, 1, &g), 0);
    assert_int_equal(g.opcode, PIER_WS_TEXT);
    /* a masked frame to a client, RSV bits, a reserved opcode: the general rules */
    n = short_frame(wire, 0x82, plain, 10);
    assert_int_equal(read_cut(wire, n, n, 1 << 20, 0, &g), PIER_WS_PROTOCOL_ERROR);
    n = short_frame(wire, 0x82 | 0x40, plain, 10);
    assert_int_equal(read_cut(wire, n, n, 1 << 20, 1, &g), PIER_WS_PROTOCOL_ERROR);
    n = short_frame(wire, 0x83, plain, 10);
    assert_int_equal(read_cut(wire, n, n, 1 << 20, 1, &g), PIER_WS_PROTOCOL_ERROR);
    /* a new message while a fragmented one is under way */
    n = short_frame(wire, 0x02, plain, 10);
    n += short_frame(wire + n, 0x82, plain, 10);
    assert_int_equal(read_cut(wire, n, n, 1 << 20, 1, &g), PIER_WS_PROTOCOL_ERROR);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_every_length_form_at_every_cut),
        cmocka_unit_test(top_bit_of_64_bit_length),
        cmocka_unit_test(every_rule_with_its_code),
        cmocka_unit_test(a_client_rejects_masked_server_frames),
        cmocka_unit_test(written_headers_parse_back),
        cmocka_unit_test(unmask_from_any_offset),
        cmocka_unit_test(close_codes),
        cmocka_unit_test(sha1_and_accept),
        cmocka_unit_test(short_messages_through_the_reader),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
