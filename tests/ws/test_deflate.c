/* permessage-deflate (RFC 7692): the negotiation on both sides (offers accepted, lowered
 * or declined, several offers in one field, malformed fields; responses a client must
 * refuse), compression and inflation round trips with and without context takeover at
 * every window size, the bound on inflating (a bomb gets 1009 and the output buffer never
 * exceeds the limit), and the RSV1 rules, through the frame checks and the reader. */
#include "support.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws/ws_int.h"

static const pier__ws_pmd_cfg_t dflt = {.on = 1, .bits = 15};

static int accept_offer(const char *offer, const pier__ws_pmd_cfg_t *cfg, pier__ws_pmd_t *pmd, char *resp) {
    memset(pmd, 0, sizeof *pmd);
    resp[0] = '\0';
    return pier__ws_pmd_accept(offer, strlen(offer), cfg, pmd, resp, 160);
}

static void server_accepts_and_answers(void **state) {
    (void)state;
    static const struct {
        const char *offer, *resp;
        int tx_bits, rx_bits, rx_reset;
    } cases[] = {
        {"permessage-deflate", "permessage-deflate; server_no_context_takeover", 15, 15, 0},
        {"permessage-deflate; client_max_window_bits",
         "permessage-deflate; server_no_context_takeover; client_max_window_bits=15", 15, 15, 0},
        {"permessage-deflate;client_max_window_bits=10 ; server_max_window_bits=12",
         "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=10", 12,
         10, 0},
        {"permessage-deflate; client_no_context_takeover; server_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 15, 15, 1},
        {"permessage-deflate; client_max_window_bits=\"9\"",
         "permessage-deflate; server_no_context_takeover; client_max_window_bits=9", 15, 9, 0},
        /* several offers: the first acceptable one wins */
        {"permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 15, 15, 1},
        {"permessage-deflate; unknown=1, permessage-deflate", "permessage-deflate; server_no_context_takeover", 15,
         15, 0},
        {"x-webkit-deflate-frame; no_context_takeover, PERMESSAGE-DEFLATE",
         "permessage-deflate; server_no_context_takeover", 15, 15, 0},
        {" , ,permessage-deflate", "permessage-deflate; server_no_context_takeover", 15, 15, 0},
        {"permessage-deflate; x=\"a,b;c\", permessage-deflate; server_max_window_bits=9",
         "permessage-deflate; server_no_context_takeover; server_max_window_bits=9", 9, 15, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pier__ws_pmd_t pmd;
        char resp[160];
        assert_int_equal(accept_offer(cases[i].offer, &dflt, &pmd, resp), 1);
        assert_string_equal(resp, cases[i].resp);
        assert_int_equal(pmd.tx_bits, cases[i].tx_bits);
        assert_int_equal(pmd.rx_bits, cases[i].rx_bits);
        assert_int_equal(pmd.rx_reset, cases[i].rx_reset);
        assert_int_equal(pmd.tx_reset, 1); /* pier's default: server_no_context_takeover */
    }
}

static void server_declines(void **state) {
    (void)state;
    static const char *const offers[] = {
        "",
        "x-webkit-deflate-frame",
        "permessage-deflate; server_max_window_bits=8", /* zlib cannot compress with it */
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; mystery",
        /* malformed fields: nothing of them is trusted, not even a good offer after */
        "permessage-deflate;;, permessage-deflate",
        "permessage-deflate; x=\"unterminated, permessage-deflate",
        "permessage-deflate; =1, permessage-deflate",
        "perm@ssage-deflate, permessage-deflate",
    };
    for (size_t i = 0; i < sizeof offers / sizeof offers[0]; i++) {
        pier__ws_pmd_t pmd;
        char resp[160];
        if (accept_offer(offers[i], &dflt, &pmd, resp) != 0)
            fail_msg("offer accepted: %s", offers[i]);
    }
}

static void server_settings(void **state) {
    (void)state;
    pier__ws_pmd_t pmd;
    char resp[160];
    /* a smaller window: the client's is lowered where the offer lets us, ours used anyway */
    pier__ws_pmd_cfg_t small = {.on = 1, .bits = 10};
    assert_int_equal(accept_offer("permessage-deflate; client_max_window_bits", &small, &pmd, resp), 1);
    assert_string_equal(resp, "permessage-deflate; server_no_context_takeover; client_max_window_bits=10");
    assert_int_equal(pmd.tx_bits, 10);
    assert_int_equal(pmd.rx_bits, 10);
    assert_int_equal(accept_offer("permessage-deflate", &small, &pmd, resp), 1);
    assert_int_equal(pmd.rx_bits, 15); /* the client did not let us limit it */
    /* context takeover kept unless the client asks otherwise */
    pier__ws_pmd_cfg_t keep = {.on = 1, .bits = 15, .takeover = 1};
    assert_int_equal(accept_offer("permessage-deflate", &keep, &pmd, resp), 1);
    assert_string_equal(resp, "permessage-deflate");
    assert_int_equal(pmd.tx_reset, 0);
    assert_int_equal(accept_offer("permessage-deflate; server_no_context_takeover", &keep, &pmd, resp), 1);
    assert_string_equal(resp, "permessage-deflate; server_no_context_takeover");
    assert_int_equal(pmd.tx_reset, 1);
}

static int check_response(const char *resp, const pier__ws_pmd_cfg_t *cfg, pier__ws_pmd_t *pmd) {
    memset(pmd, 0, sizeof *pmd);
    return pier__ws_pmd_check(resp, strlen(resp), cfg, pmd);
}

static void client_offers_and_checks(void **state) {
    (void)state;
    char offer[128];
    pier__ws_pmd_offer(&dflt, offer, sizeof offer);
    assert_string_equal(offer, "permessage-deflate; client_max_window_bits; client_no_context_takeover");
    pier__ws_pmd_cfg_t small = {.on = 1, .bits = 11, .takeover = 1};
    pier__ws_pmd_offer(&small, offer, sizeof offer);
    assert_string_equal(offer, "permessage-deflate; client_max_window_bits=11; server_max_window_bits=11");

    pier__ws_pmd_t pmd;
    assert_int_equal(check_response("permessage-deflate", &dflt, &pmd), 0);
    assert_true(pmd.tx_bits == 15 && pmd.rx_bits == 15 && pmd.tx_reset && !pmd.rx_reset);
    assert_int_equal(check_response("permessage-deflate; server_no_context_takeover; client_max_window_bits=12; "
                                    "server_max_window_bits=10",
                                    &dflt, &pmd),
                     0);
    assert_true(pmd.tx_bits == 12 && pmd.rx_bits == 10 && pmd.rx_reset);
    assert_int_equal(check_response("permessage-deflate; client_no_context_takeover", &small, &pmd), 0);
    assert_true(pmd.tx_reset && pmd.tx_bits == 11);
    static const char *const bad[] = {
        "x-other",
        "permessage-deflate, permessage-deflate",      /* one extension only */
        "permessage-deflate; client_max_window_bits",  /* a response gives a value */
        "permessage-deflate; client_max_window_bits=8", /* zlib cannot */
        "permessage-deflate; what=1",
        "permessage-deflate;",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (check_response(bad[i], &dflt, &pmd) != -EPROTO)
            fail_msg("response taken: %s", bad[i]);
    /* we asked for an 11-bit server window: a larger one is refused */
    assert_int_equal(check_response("permessage-deflate; server_max_window_bits=12", &small, &pmd), -EPROTO);
}

/* ---- the codec ---- */

static void fill(uint8_t *p, size_t n, unsigned seed) {
    /* compressible, but not trivially: words from a small vocabulary */
    static const char *const words[] = {"pier ", "socket ", "frame ", "deflate ", "loop ", "message "};
    size_t i = 0;
    while (i < n) {
        seed = seed * 1103515245u + 12345u;
        const char *w = words[(seed >> 16) % 6];
        for (size_t k = 0; w[k] && i < n; k++)
            p[i++] = (uint8_t)w[k];
    }
}

static void round_trip(int bits, int reset) {
    pier__ws_zloop_t *ztx = NULL, *zrx = NULL; /* two loops: sender and receiver */
    pier__ws_pmd_t tx = {.tx_bits = (uint8_t)bits, .tx_reset = (uint8_t)reset};
    pier__ws_pmd_t rx = {.rx_bits = (uint8_t)bits, .rx_reset = (uint8_t)reset};
    static uint8_t msg[300000];
    size_t sizes[] = {128, 200, 1000, 5000, 65536, 300000, 140, 2000};
    size_t total_in = 0, total_out = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        fill(msg, sizes[i], (unsigned)(i + 1));
        const uint8_t *z, *out;
        size_t zl, outl;
        assert_int_equal(pier__ws_deflate(&ztx, &tx, msg, sizes[i], &z, &zl), 0);
        total_in += sizes[i];
        total_out += zl;
        uint8_t *wire = malloc(zl + 1);
        memcpy(wire, z, zl);
        assert_int_equal(pier__ws_inflate(&zrx, &rx, wire, zl, 1 << 20, &out, &outl), 0);
        assert_int_equal(outl, sizes[i]);
        assert_memory_equal(out, msg, outl);
        free(wire);
    }
    assert_true(total_out < total_in / 2);
    assert_true(reset ? !tx.tx && !rx.rx : tx.tx && rx.rx); /* own streams only with takeover */
    pier__ws_pmd_free(&tx);
    pier__ws_pmd_free(&rx);
    pier__ws_zloop_free(ztx);
    pier__ws_zloop_free(zrx);
}

static void compress_and_inflate_round_trip(void **state) {
    (void)state;
    for (int bits = 9; bits <= 15; bits++) {
        round_trip(bits, 1);
        round_trip(bits, 0);
    }
}

static void small_or_incompressible_goes_plain(void **state) {
    (void)state;
    pier__ws_zloop_t *zl = NULL;
    pier__ws_pmd_t pmd = {.tx_bits = 15, .tx_reset = 1};
    const uint8_t *z;
    size_t n;
    assert_int_equal(pier__ws_deflate(&zl, &pmd, "short", 5, &z, &n), 1);
    uint8_t words[128];
    fill(words, sizeof words, 3);
    assert_int_equal(pier__ws_deflate(&zl, &pmd, words, 127, &z, &n), 1); /* not worth a reset */
    assert_int_equal(pier__ws_deflate(&zl, &pmd, words, 128, &z, &n), 0);
    uint8_t noise[4096];
    unsigned x = 7;
    for (size_t i = 0; i < sizeof noise; i++)
        noise[i] = (uint8_t)((x = x * 1664525u + 1013904223u) >> 24);
    assert_int_equal(pier__ws_deflate(&zl, &pmd, noise, sizeof noise, &z, &n), 1);
    pier__ws_zloop_free(zl);
}

/* A compressed message of n zero bytes, in a buffer of its own (freed by the caller). */
static uint8_t *zeros_compressed(size_t n, size_t *zl) {
    uint8_t *zero = calloc(1, n);
    pier__ws_zloop_t *z = NULL;
    pier__ws_pmd_t pmd = {.tx_bits = 15, .tx_reset = 1};
    const uint8_t *out;
    assert_int_equal(pier__ws_deflate(&z, &pmd, zero, n, &out, zl), 0);
    uint8_t *copy = malloc(*zl);
    memcpy(copy, out, *zl);
    pier__ws_zloop_free(z);
    free(zero);
    return copy;
}

static void a_bomb_gets_1009_within_the_limit(void **state) {
    (void)state;
    size_t zl;
    uint8_t *bomb = zeros_compressed(64u << 20, &zl); /* 64 MiB in about 64 KiB */
    assert_true(zl < (256u << 10));
    pier__ws_zloop_t *z = NULL;
    pier__ws_pmd_t pmd = {.rx_bits = 15};
    const uint8_t *out;
    size_t n;
    const uint64_t max = 1u << 20;
    assert_int_equal(pier__ws_inflate(&z, &pmd, bomb, zl, max, &out, &n), PIER_WS_TOO_BIG);
    assert_true(pier__ws_zloop_inflate_cap(z) <= max + 1); /* never more output held */
    free(bomb);
    /* exactly the limit is taken, one byte more is not */
    bomb = zeros_compressed(max, &zl);
    assert_int_equal(pier__ws_inflate(&z, &pmd, bomb, zl, max, &out, &n), 0);
    assert_int_equal(n, max);
    assert_int_equal(pier__ws_inflate(&z, &pmd, bomb, zl, max - 1, &out, &n), PIER_WS_TOO_BIG);
    free(bomb);
    /* not DEFLATE at all */
    pier__ws_pmd_t fresh = {.rx_bits = 15, .rx_reset = 1};
    assert_int_equal(pier__ws_inflate(&z, &fresh, (const uint8_t *)"\xff\xff\xff\xff", 4, max, &out, &n),
                     PIER_WS_INVALID_DATA);
    pier__ws_pmd_free(&pmd);
    pier__ws_zloop_free(z);
}

/* ---- RSV1 ---- */

static void rsv1_rules(void **state) {
    (void)state;
    pier__ws_frame_t f = {.fin = 1, .masked = 1, .rsv = 4, .opcode = PIER_WS_TEXT, .len = 10};
    assert_int_equal(pier__ws_check(&f, 0, 0, 1000, 1, 0), PIER_WS_PROTOCOL_ERROR); /* not negotiated */
    assert_int_equal(pier__ws_check(&f, 0, 0, 1000, 1, 1), 0);
    f.opcode = PIER_WS_BINARY;
    assert_int_equal(pier__ws_check(&f, 0, 0, 1000, 1, 1), 0);
    f.opcode = 0; /* a continuation */
    assert_int_equal(pier__ws_check(&f, 1, 5, 1000, 1, 1), PIER_WS_PROTOCOL_ERROR);
    f.opcode = PIER_WS_PING; /* control frames are never compressed */
    assert_int_equal(pier__ws_check(&f, 0, 0, 1000, 1, 1), PIER_WS_PROTOCOL_ERROR);
    f.opcode = PIER_WS_CLOSE;
    assert_int_equal(pier__ws_check(&f, 0, 0, 1000, 1, 1), PIER_WS_PROTOCOL_ERROR);
    f.opcode = PIER_WS_TEXT;
    f.rsv = 4 | 2; /* RSV2 belongs to nothing */
    assert_int_equal(pier__ws_check(&f, 0, 0, 1000, 1, 1), PIER_WS_PROTOCOL_ERROR);
    /* our headers carry RSV1 when asked */
    uint8_t h[PIER__WS_MAX_HEADER];
    pier__ws_header(h, PIER_WS_TEXT | PIER__WS_RSV1, 3, NULL);
    assert_int_equal(h[0], 0xC1);
}

/* ---- through the reader ---- */

typedef struct {
    int messages, op;
    char got[4096];
    size_t len;
    const char *want; /* what every TEXT message must say, if set */
    int matched;
} seen_t;

static int on_message(void *ctx, int opcode, const void *data, size_t len) {
    seen_t *s = ctx;
    s->messages++;
    s->op = opcode;
    s->len = len < sizeof s->got ? len : sizeof s->got;
    memcpy(s->got, data, s->len);
    if (opcode == PIER_WS_TEXT && s->want && len == strlen(s->want) && !memcmp(data, s->want, len))
        s->matched++;
    return 0;
}

static int on_control(void *ctx, int opcode, const uint8_t *data, size_t len) {
    (void)ctx, (void)opcode, (void)data, (void)len;
    return 0;
}

/* A masked client frame with b0 (FIN, RSV, opcode) and payload p[0, n) appended to out. */
static size_t put(uint8_t *out, int b0, const uint8_t *p, size_t n) {
    static const uint8_t mask[4] = {1, 2, 3, 4};
    size_t h = 2;
    out[0] = (uint8_t)b0;
    if (n < 126) {
        out[1] = (uint8_t)(0x80 | n);
    } else {
        out[1] = 0x80 | 126;
        out[2] = (uint8_t)(n >> 8);
        out[3] = (uint8_t)n;
        h = 4;
    }
    memcpy(out + h, mask, 4);
    for (size_t i = 0; i < n; i++)
        out[h + 4 + i] = p[i] ^ mask[i & 3];
    return h + 4 + n;
}

/* Feeds all of in as a connection would, arriving a byte at a time when slow, the
 * unconsumed part handed again with what comes next. The close code, 0, or -1 if bytes
 * were left that the reader never took. */
static int feed(pier__ws_reader_t *r, const uint8_t *in, size_t n, int slow) {
    size_t start = 0, end = 0;
    while (end < n) {
        end = slow ? end + 1 : n;
        ssize_t used;
        while (start < end && (used = pier__ws_read(r, in + start, end - start)) != 0) {
            if (used < 0)
                return r->code;
            start += (size_t)used;
        }
    }
    return start == n ? 0 : -1;
}

static void reader_inflates_compressed_messages(void **state) {
    (void)state;
    static const char text[] = "héllo héllo héllo héllo héllo héllo héllo héllo héllo héllo "
                               "héllo héllo héllo héllo héllo héllo héllo héllo héllo héllo "
                               "héllo héllo héllo héllo héllo héllo héllo héllo héllo héllo";
    size_t tl = sizeof text - 1;
    pier__ws_zloop_t *ztx = NULL;
    pier__ws_pmd_t tx = {.tx_bits = 15, .tx_reset = 1};
    const uint8_t *z;
    size_t zl;
    assert_int_equal(pier__ws_deflate(&ztx, &tx, text, tl, &z, &zl), 0);
    uint8_t wire[1024];
    size_t n = put(wire, 0x80 | 0x40 | PIER_WS_TEXT, z, zl);             /* one frame */
    n += put(wire + n, 0x40 | PIER_WS_TEXT, z, zl / 2);                  /* fragments: */
    n += put(wire + n, 0x80 | PIER_WS_PING, (const uint8_t *)"p", 1);   /* a ping between */
    n += put(wire + n, 0x80, z + zl / 2, zl - zl / 2);                   /* RSV1 on the first only */
    n += put(wire + n, 0x80 | PIER_WS_BINARY, (const uint8_t *)"plain", 5); /* an uncompressed one */
    for (int slow = 0; slow < 2; slow++) {
        pier__buf_t scratch = {0};
        pier__ws_zloop_t *zrx = NULL;
        pier__ws_pmd_t rx = {.rx_bits = 15};
        seen_t seen = {.want = text};
        pier__ws_reader_t r = {.max_message = 1 << 20, .masked = 1, .scratch = &scratch, .pmd = &rx, .zl = &zrx,
                               .on_message = on_message, .on_control = on_control, .ctx = &seen};
        assert_int_equal(feed(&r, wire, n, slow), 0);
        assert_int_equal(seen.messages, 3);
        assert_int_equal(seen.matched, 2); /* both compressed ones, inflated */
        assert_int_equal(seen.op, PIER_WS_BINARY);
        assert_true(seen.len == 5 && !memcmp(seen.got, "plain", 5));
        pier__ws_reader_free(&r);
        pier__ws_pmd_free(&rx);
        pier__ws_zloop_free(zrx);
        pier__buf_free(&scratch);
    }
    pier__ws_zloop_free(ztx);
}

static int read_one(const uint8_t *wire, size_t n, uint64_t max, int deflate, seen_t *seen) {
    pier__buf_t scratch = {0};
    pier__ws_zloop_t *zl = NULL;
    pier__ws_pmd_t rx = {.rx_bits = 15};
    pier__ws_reader_t r = {.max_message = max, .masked = 1, .scratch = &scratch, .pmd = deflate ? &rx : NULL,
                           .zl = &zl, .on_message = on_message, .on_control = on_control, .ctx = seen};
    int code = feed(&r, wire, n, 0);
    pier__ws_reader_free(&r);
    pier__ws_pmd_free(&rx);
    pier__ws_zloop_free(zl);
    pier__buf_free(&scratch);
    return code;
}

static void reader_rules_for_compressed_messages(void **state) {
    (void)state;
    seen_t seen = {0};
    uint8_t wire[70000];
    /* compressed text that is not UTF-8 once inflated */
    pier__ws_zloop_t *ztx = NULL;
    pier__ws_pmd_t tx = {.tx_bits = 15, .tx_reset = 1};
    const uint8_t *z;
    size_t zl;
    uint8_t bad[200];
    memset(bad, 'a', sizeof bad);
    bad[140] = 0xff;
    assert_int_equal(pier__ws_deflate(&ztx, &tx, bad, sizeof bad, &z, &zl), 0);
    size_t n = put(wire, 0x80 | 0x40 | PIER_WS_TEXT, z, zl);
    assert_int_equal(read_one(wire, n, 1 << 20, 1, &seen), PIER_WS_INVALID_DATA);
    /* RSV1 without the extension, and on a continuation */
    assert_int_equal(read_one(wire, n, 1 << 20, 0, &seen), PIER_WS_PROTOCOL_ERROR);
    n = put(wire, 0x40 | PIER_WS_BINARY, z, 4);
    n += put(wire + n, 0x80 | 0x40, z + 4, zl - 4);
    assert_int_equal(read_one(wire, n, 1 << 20, 1, &seen), PIER_WS_PROTOCOL_ERROR);
    /* a compressed message of empty fragments: nothing gathered, nothing to inflate (the
     * fuzzer found an offset applied to the missing buffer here) */
    n = put(wire, 0x40 | PIER_WS_BINARY, NULL, 0);
    n += put(wire + n, 0x80, NULL, 0);
    seen.messages = 0;
    assert_int_equal(read_one(wire, n, 1 << 20, 1, &seen), 0);
    assert_true(seen.messages == 1 && seen.len == 0);
    /* a bomb in one frame: 1009 though its compressed size is well under the limit */
    size_t bl;
    uint8_t *bomb = zeros_compressed(16u << 20, &bl);
    assert_true(bl < sizeof wire - 16);
    n = put(wire, 0x80 | 0x40 | PIER_WS_BINARY, bomb, bl);
    seen.messages = 0;
    assert_int_equal(read_one(wire, n, 1 << 20, 1, &seen), PIER_WS_TOO_BIG);
    assert_int_equal(seen.messages, 0);
    free(bomb);
    pier__ws_zloop_free(ztx);
}

int main(void) {
    const struct CMUnitTest negotiation[] = {
        cmocka_unit_test(server_accepts_and_answers),
        cmocka_unit_test(server_declines),
        cmocka_unit_test(server_settings),
        cmocka_unit_test(client_offers_and_checks),
        cmocka_unit_test(rsv1_rules),
    };
    const struct CMUnitTest codec[] = {
        cmocka_unit_test(compress_and_inflate_round_trip),
        cmocka_unit_test(small_or_incompressible_goes_plain),
        cmocka_unit_test(a_bomb_gets_1009_within_the_limit),
        cmocka_unit_test(reader_inflates_compressed_messages),
        cmocka_unit_test(reader_rules_for_compressed_messages),
    };
    int failed = cmocka_run_group_tests(negotiation, NULL, NULL);
    if (!pier__ws_zlib) {
        printf("pier built without zlib: the codec is not there to test\n");
        return failed;
    }
    return failed + cmocka_run_group_tests(codec, NULL, NULL);
}
