/* The UTF-8 validator: every class of invalid sequence is rejected at the first byte
 * that makes it impossible, whether the text comes whole or split at any byte; every
 * sequence of one to four bytes gets the verdict of an independent decoder; ASCII runs
 * of every length and alignment are taken (the fast path skips 32 or 8 at a time). */
#include "support.h"

#include <stdio.h>
#include <string.h>

#include "../http/guard.h"
#include "ws/ws_int.h"

/* Feeds s in two pieces split at k; returns the state, and *at the byte index at which
 * it rejected (n if it did not). */
static uint32_t feed_split(const uint8_t *s, size_t n, size_t k, size_t *at) {
    uint32_t st = PIER__UTF8_ACCEPT;
    *at = n;
    for (size_t i = 0; i < n; i++) { /* byte by byte: find where it rejects */
        st = pier__utf8_feed(st, s + i, 1);
        if (st == PIER__UTF8_REJECT) {
            *at = i;
            break;
        }
    }
    uint32_t two = pier__utf8_feed(pier__utf8_feed(PIER__UTF8_ACCEPT, s, k), s + k, n - k);
    assert_int_equal(two == PIER__UTF8_REJECT, st == PIER__UTF8_REJECT);
    if (st != PIER__UTF8_REJECT)
        assert_int_equal(two, st);
    return st;
}

typedef struct {
    const char *what;
    const char *bytes;
    size_t len;
    int at; /* index of the byte that must reject; -1: valid; -2: incomplete at the end */
} case_t;

#define C(what, s, at) {what, s, sizeof s - 1, at}

static const case_t cases[] = {
    C("ascii", "hello, world", -1),
    C("two-byte", "caf\xc3\xa9", -1),
    C("three-byte", "\xe2\x82\xac euro", -1),
    C("four-byte", "\xf0\x9f\x98\x80", -1),
    C("lowest of each length", "\x00\xc2\x80\xe0\xa0\x80\xf0\x90\x80\x80", -1),
    C("highest of each length", "\x7f\xdf\xbf\xef\xbf\xbf\xf4\x8f\xbf\xbf", -1),
    C("around the surrogates", "\xed\x9f\xbf\xee\x80\x80", -1),
    C("stray continuation 80", "ab\x80", 2),
    C("stray continuation bf", "\xbf", 0),
    C("overlong lead c0", "a\xc0\x80", 1),
    C("overlong lead c1", "\xc1\xbf", 0),
    C("lead f5", "\xf5\x80\x80\x80", 0),
    C("lead ff", "x\xff", 1),
    C("lead fe", "\xfe", 0),
    C("overlong three-byte e0 80", "\xe0\x80\x80", 1),
    C("overlong three-byte e0 9f", "\xe0\x9f\xbf", 1),
    C("overlong four-byte f0 80", "\xf0\x80\x80\x80", 1),
    C("overlong four-byte f0 8f", "\xf0\x8f\xbf\xbf", 1),
    C("surrogate d800", "\xed\xa0\x80", 1),
    C("surrogate dfff", "\xed\xbf\xbf", 1),
    C("above U+10FFFF", "\xf4\x90\x80\x80", 1),
    C("lead then ascii", "\xc3" "a", 1),
    C("three-byte cut by ascii", "\xe2\x82" "a", 2),
    C("four-byte cut by a lead", "\xf0\x9f\x98\xc3\xa9", 3),
    C("lead then lead", "\xe2\xe2\x82\xac", 1),
    C("incomplete two-byte", "ok\xc3", -2),
    C("incomplete three-byte", "\xe2\x82", -2),
    C("incomplete four-byte", "\xf0\x9f\x98", -2),
    C("invalid after a long ascii run", "0123456789012345678901234567890123456789012345678\x80", 49),
    C("invalid deep in a run", "0123456789012345678901234567890123456789\xc0 0123456789", 40),
};

static void every_class_every_split(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const case_t *c = &cases[i];
        const uint8_t *s = (const uint8_t *)guarded(c->bytes, c->len);
        for (size_t k = 0; k <= c->len; k++) {
            size_t at;
            uint32_t st = feed_split(s, c->len, k, &at);
            if (c->at >= 0 && (st != PIER__UTF8_REJECT || at != (size_t)c->at)) {
                fprintf(stderr, "%s: rejected at %zu, expected %d\n", c->what, at, c->at);
                fail();
            }
            if (c->at == -1 && st != PIER__UTF8_ACCEPT) {
                fprintf(stderr, "%s: not accepted\n", c->what);
                fail();
            }
            if (c->at == -2 && (st == PIER__UTF8_ACCEPT || st == PIER__UTF8_REJECT)) {
                fprintf(stderr, "%s: should be inside a character\n", c->what);
                fail();
            }
        }
    }
}

/* An independent decoder: 1 if s[0, n) is exactly one well-formed character. */
static int reference_one(const uint8_t *s, size_t n) {
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t need = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (need != n)
        return 0;
    uint32_t cp = need == 1 ? s[0] : s[0] & (0x7F >> need);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    return cp >= min[n] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
}

static void exhaustive_against_reference(void **state) {
    (void)state;
    uint8_t s[4];
    unsigned long checked = 0;
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        assert_int_equal(pier__utf8_valid(s, 1), reference_one(s, 1));
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            assert_int_equal(pier__utf8_valid(s, 2), reference_one(s, 2) || (reference_one(s, 1) && reference_one(s + 1, 1)));
            if (a < 0xE0 || a > 0xF4)
                continue; /* three and four bytes: only leads that can start them */
            for (unsigned c = 0; c < 256; c++) {
                s[2] = (uint8_t)c;
                int want3 = reference_one(s, 3);
                if (pier__utf8_valid(s, 3) != want3) {
                    fprintf(stderr, "%02x %02x %02x\n", a, b, c);
                    fail();
                }
                if (a < 0xF0)
                    continue;
                for (unsigned d = 0x70; d < 0xC8; d++) { /* around the continuation range */
                    s[3] = (uint8_t)d;
                    assert_int_equal(pier__utf8_valid(s, 4), reference_one(s, 4));
                    checked++;
                }
            }
        }
    }
    assert_true(checked > 1000000);
}

static void ascii_every_length_and_alignment(void **state) {
    (void)state;
    uint8_t buf[200];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)('a' + i % 26);
    for (size_t start = 0; start < 40; start++)
        for (size_t len = 0; start + len <= sizeof buf; len++) {
            assert_true(pier__utf8_valid(buf + start, len));
            if (len == 0)
                continue;
            /* one bad byte at each place in the run is found */
            for (size_t bad = 0; bad < len; bad += 7) {
                buf[start + bad] = 0xFF;
                assert_false(pier__utf8_valid(buf + start, len));
                buf[start + bad] = (uint8_t)('a' + (start + bad) % 26);
            }
        }
}

static void reject_is_final(void **state) {
    (void)state;
    uint32_t st = pier__utf8_feed(PIER__UTF8_ACCEPT, (const uint8_t *)"\xff", 1);
    assert_int_equal(st, PIER__UTF8_REJECT);
    assert_int_equal(pier__utf8_feed(st, (const uint8_t *)"abc", 3), PIER__UTF8_REJECT);
    assert_int_equal(pier__utf8_feed(PIER__UTF8_ACCEPT, NULL, 0), PIER__UTF8_ACCEPT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_class_every_split),
        cmocka_unit_test(exhaustive_against_reference),
        cmocka_unit_test(ascii_every_length_and_alignment),
        cmocka_unit_test(reject_is_final),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
