/* The frame codec over every way TCP can cut or join a stream of frames. The stream is fed
 * the way a connection's on_read sees it: unconsumed bytes come back first, new bytes
 * after them. */
#include "support.h"

#include <pier/msg.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAXF 16

typedef struct {
    uint16_t id;
    uint32_t len;
    char body[4096];
} want_t;

/* What a receiver collected: frames in order, and a running on_read buffer. */
typedef struct {
    const pier_msg_codec_t *codec;
    unsigned n;
    want_t got[MAXF];
    char pend[1 << 17];
    size_t npend;
    int err;
    int stop_after; /* callback asks to stop after this many frames (0: never) */
} rx_t;

static int on_frame(const pier_msg_frame_t *f, void *ud) {
    rx_t *rx = ud;
    assert_true(rx->n < MAXF);
    want_t *w = &rx->got[rx->n++];
    w->id = f->id;
    w->len = f->len;
    assert_true(f->len <= sizeof w->body);
    memcpy(w->body, f->body, f->len);
    return rx->stop_after && rx->n % (unsigned)rx->stop_after == 0;
}

/* One on_read: the pending bytes plus a new chunk; keep what is not consumed. */
static void feed(rx_t *rx, const char *chunk, size_t len) {
    assert_true(rx->npend + len <= sizeof rx->pend);
    memcpy(rx->pend + rx->npend, chunk, len);
    rx->npend += len;
    for (;;) {
        size_t used = 0;
        ssize_t r = pier_msg_decode_all(rx->codec, rx->pend, rx->npend, &used, on_frame, rx);
        assert_true(used <= rx->npend);
        memmove(rx->pend, rx->pend + used, rx->npend - used);
        rx->npend -= used;
        if (r < 0) {
            rx->err = (int)r;
            return;
        }
        /* a stopped decode leaves whole frames for the next call, as a paused read would */
        if (r == 0 || !rx->stop_after)
            return;
    }
}

/* A stream of frames of mixed sizes: empty, small, max-sized, and ids at both ends. */
static want_t stream_frames[6];
static unsigned stream_n;

static size_t make_stream(const pier_msg_codec_t *codec, char *out, size_t size, uint32_t big) {
    static const uint16_t ids[] = {1, 1001, 65535, 7, 1001, 2};
    const uint32_t lens[] = {0, 5, big, 1, 40, 3};
    size_t off = 0;
    stream_n = 6;
    for (unsigned i = 0; i < stream_n; i++) {
        want_t *w = &stream_frames[i];
        w->id = ids[i];
        w->len = lens[i];
        for (uint32_t k = 0; k < w->len; k++)
            w->body[k] = (char)('a' + (i * 7 + k) % 26);
        ssize_t r = pier_msg_encode(codec, w->id, w->body, w->len, out + off, size - off);
        assert_true(r > 0);
        off += (size_t)r;
    }
    return off;
}

static void check_all(const rx_t *rx) {
    assert_int_equal(rx->err, 0);
    assert_int_equal(rx->n, stream_n);
    assert_int_equal(rx->npend, 0);
    for (unsigned i = 0; i < stream_n; i++) {
        assert_int_equal(rx->got[i].id, stream_frames[i].id);
        assert_int_equal(rx->got[i].len, stream_frames[i].len);
        assert_memory_equal(rx->got[i].body, stream_frames[i].body, stream_frames[i].len);
    }
}

static rx_t *rx_new(const pier_msg_codec_t *codec) {
    rx_t *rx = calloc(1, sizeof *rx);
    assert_non_null(rx);
    rx->codec = codec;
    return rx;
}

/* All frames in one read: every one is delivered by a single call. */
static void test_coalesced(void **state) {
    char buf[8192];
    size_t len = make_stream(NULL, buf, sizeof buf, PIER_MSG_MAX_BODY);
    rx_t *rx = rx_new(NULL);
    size_t used = 0;
    assert_int_equal(pier_msg_decode_all(NULL, buf, len, &used, on_frame, rx), (ssize_t)stream_n);
    assert_int_equal(used, len);
    check_all(rx);
    free(rx);
}

/* The stream cut in two at every byte, and in three at every pair of points. */
static void test_every_split(void **state) {
    char buf[512];
    size_t len = make_stream(NULL, buf, sizeof buf, 100);
    for (size_t a = 0; a <= len; a++) {
        rx_t *rx = rx_new(NULL);
        feed(rx, buf, a);
        feed(rx, buf + a, len - a);
        check_all(rx);
        for (size_t b = a; b <= len; b++) {
            rx_t *rx3 = rx_new(NULL);
            feed(rx3, buf, a);
            feed(rx3, buf + a, b - a);
            feed(rx3, buf + b, len - b);
            check_all(rx3);
            free(rx3);
        }
        free(rx);
    }
}

/* One byte per read: nothing is delivered early, nothing late. */
static void test_byte_at_a_time(void **state) {
    char buf[8192];
    size_t len = make_stream(NULL, buf, sizeof buf, PIER_MSG_MAX_BODY);
    rx_t *rx = rx_new(NULL);
    size_t ends[6], off = 0;
    for (unsigned i = 0; i < stream_n; i++)
        ends[i] = (off += PIER_MSG_HDR + stream_frames[i].len);
    for (size_t i = 0; i < len; i++) {
        feed(rx, buf + i, 1);
        unsigned done = 0;
        while (done < stream_n && ends[done] <= i + 1)
            done++;
        assert_int_equal(rx->n, done);
    }
    check_all(rx);
    free(rx);
}

/* A callback that stops after each frame still gets every frame, in order. */
static void test_stop_from_callback(void **state) {
    char buf[8192];
    size_t len = make_stream(NULL, buf, sizeof buf, 300);
    rx_t *rx = rx_new(NULL);
    rx->stop_after = 1;
    size_t used = 0;
    assert_int_equal(pier_msg_decode_all(NULL, buf, len, &used, on_frame, rx), 1);
    assert_int_equal(used, PIER_MSG_HDR + stream_frames[0].len);
    rx->n = 0;
    feed(rx, buf, len);
    check_all(rx);
    free(rx);
}

/* A callback that refuses a frame (< 0) leaves it unconsumed; it comes again next call. */
static int refuse_third(const pier_msg_frame_t *f, void *ud) {
    rx_t *rx = ud;
    if (rx->n == 2 && !rx->stop_after) {
        rx->stop_after = -1; /* refuse once */
        return -1;
    }
    return on_frame(f, ud);
}

static void test_refuse_keeps_frame(void **state) {
    char buf[8192];
    size_t len = make_stream(NULL, buf, sizeof buf, 300);
    rx_t *rx = rx_new(NULL);
    size_t used = 0;
    assert_int_equal(pier_msg_decode_all(NULL, buf, len, &used, refuse_third, rx), 2);
    assert_int_equal(used, 2 * PIER_MSG_HDR + stream_frames[0].len + stream_frames[1].len);
    size_t used2 = 0;
    assert_int_equal(pier_msg_decode_all(NULL, buf + used, len - used, &used2, refuse_third, rx),
                     (ssize_t)stream_n - 2);
    assert_int_equal(used + used2, len);
    rx->stop_after = 0;
    check_all(rx);
    free(rx);
}

/* A body one byte over the limit is refused on the header alone; at the limit it passes. */
static void test_oversize(void **state) {
    unsigned char hdr[4] = {0x03, 0xE9, 0x08, 0x01}; /* id 1001, len 2049 */
    pier_msg_frame_t f;
    assert_int_equal(pier_msg_decode(NULL, hdr, 3, &f), 0);
    assert_int_equal(pier_msg_decode(NULL, hdr, 4, &f), -EMSGSIZE);
    hdr[3] = 0x00; /* 2048: fine, waits for the body */
    assert_int_equal(pier_msg_decode(NULL, hdr, 4, &f), 0);

    pier_msg_codec_t small = {.max_body = 10};
    char buf[64];
    assert_int_equal(pier_msg_encode(&small, 5, "0123456789", 10, buf, sizeof buf), 14);
    assert_int_equal(pier_msg_decode(&small, buf, 14, &f), 14);
    assert_int_equal(f.len, 10);
    assert_int_equal(pier_msg_encode(&small, 5, "0123456789x", 11, buf, sizeof buf), -EMSGSIZE);
    buf[3] = 11;
    assert_int_equal(pier_msg_decode(&small, buf, 4, &f), -EMSGSIZE);
}

/* Id 0 and ids outside a configured range are refused. */
static void test_bad_ids(void **state) {
    unsigned char z[4] = {0, 0, 0, 0};
    pier_msg_frame_t f;
    assert_int_equal(pier_msg_decode(NULL, z, 4, &f), -EBADMSG);

    pier_msg_codec_t range = {.id_min = 100, .id_max = 200};
    char buf[16];
    assert_int_equal(pier_msg_encode(&range, 99, NULL, 0, buf, sizeof buf), -EBADMSG);
    assert_int_equal(pier_msg_encode(&range, 201, NULL, 0, buf, sizeof buf), -EBADMSG);
    assert_int_equal(pier_msg_encode(&range, 200, NULL, 0, buf, sizeof buf), 4);
    assert_int_equal(pier_msg_decode(&range, buf, 4, &f), 4);
    assert_int_equal(f.id, 200);
    buf[1] = (char)201;
    assert_int_equal(pier_msg_decode(&range, buf, 4, &f), -EBADMSG);
    assert_int_equal(pier_msg_encode(NULL, 0, NULL, 0, buf, sizeof buf), -EBADMSG);
}

/* Good frames before a bad one are delivered and consumed; the bad one is reported. */
static void test_good_then_bad(void **state) {
    char buf[8192];
    size_t len = make_stream(NULL, buf, sizeof buf, 50);
    static const unsigned char bad[4] = {0x03, 0xE9, 0xFF, 0xFF};
    memcpy(buf + len, bad, sizeof bad);
    rx_t *rx = rx_new(NULL);
    size_t used = 0;
    assert_int_equal(pier_msg_decode_all(NULL, buf, len + 4, &used, on_frame, rx), -EMSGSIZE);
    assert_int_equal(used, len);
    assert_int_equal(rx->n, stream_n);
    /* split at every point, the error still comes, and only after the good frames */
    for (size_t a = 0; a <= len + 4; a++) {
        rx_t *r2 = rx_new(NULL);
        feed(r2, buf, a);
        if (!r2->err)
            feed(r2, buf + a, len + 4 - a);
        assert_int_equal(r2->err, -EMSGSIZE);
        assert_int_equal(r2->n, stream_n);
        free(r2);
    }
    free(rx);
}

/* Wide frames: 6-byte header, u32 length, bodies past 65535 when allowed. */
static void test_wide(void **state) {
    pier_msg_codec_t wide = {.wide = 1, .max_body = 100000};
    pier_msg_codec_t chk;
    assert_int_equal(pier_msg_codec_check(&wide, &chk), 0);
    assert_int_equal(pier_msg_hdr_size(&chk), 6);
    pier_msg_codec_t narrow_big = {.max_body = 70000};
    assert_int_equal(pier_msg_codec_check(&narrow_big, &chk), -EINVAL);

    size_t blen = 70000, cap = 3 * (blen + 6);
    char *body = malloc(blen), *buf = malloc(cap);
    assert_non_null(body);
    assert_non_null(buf);
    for (size_t i = 0; i < blen; i++)
        body[i] = (char)(i * 31);
    size_t len = 0;
    for (int i = 0; i < 3; i++) {
        ssize_t r = pier_msg_encode(&wide, (uint16_t)(10 + i), body, i == 1 ? 0 : blen, buf + len,
                                    cap - len);
        assert_true(r > 0);
        len += (size_t)r;
    }
    assert_int_equal((unsigned char)buf[2], 0x00);
    assert_int_equal((unsigned char)buf[3], 0x01); /* 70000 = 0x00011170 */
    assert_int_equal((unsigned char)buf[4], 0x11);
    assert_int_equal((unsigned char)buf[5], 0x70);

    /* cut at a spread of points including each header boundary */
    for (size_t a = 0; a <= len; a += (a < 16 || len - a < 16) ? 1 : 997) {
        size_t off = 0, pend_from = 0;
        unsigned n = 0;
        while (pend_from < len) {
            size_t avail = (off == 0 ? a : len) - pend_from;
            pier_msg_frame_t f;
            ssize_t r = pier_msg_decode(&wide, buf + pend_from, avail, &f);
            assert_true(r >= 0);
            if (r == 0) {
                assert_int_equal(off, 0);
                off = 1; /* second read: the rest arrives */
                continue;
            }
            assert_int_equal(f.id, 10 + n);
            assert_int_equal(f.len, n == 1 ? 0 : blen);
            if (f.len)
                assert_memory_equal(f.body, body, blen);
            pend_from += (size_t)r;
            n++;
        }
        assert_int_equal(n, 3);
    }
    /* over the wide limit */
    unsigned char h[6] = {0, 10, 0, 0x01, 0x86, 0xA1}; /* 100001 */
    pier_msg_frame_t f;
    assert_int_equal(pier_msg_decode(&wide, h, 6, &f), -EMSGSIZE);
    free(body);
    free(buf);
}

/* Too small an output buffer is refused, not overrun. */
static void test_encode_nobufs(void **state) {
    char buf[8];
    assert_int_equal(pier_msg_encode(NULL, 1, "abcde", 5, buf, sizeof buf), -ENOBUFS);
    assert_int_equal(pier_msg_encode(NULL, 1, "abcd", 4, buf, sizeof buf), 8);
}

/* Every prefix of a frame placed against a PROT_NONE page: the decoder never reads past
 * the bytes it was given (ASan cannot see this for mmap'd memory; the guard page can). */
static void test_guard_page(void **state) {
    long pg = sysconf(_SC_PAGESIZE);
    char *map = mmap(NULL, (size_t)pg * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(map != MAP_FAILED);
    assert_int_equal(mprotect(map + pg, (size_t)pg, PROT_NONE), 0);
    char frame[64];
    ssize_t flen = pier_msg_encode(NULL, 1001, "hello, guard", 12, frame, sizeof frame);
    assert_int_equal(flen, 16);
    for (ssize_t k = 0; k <= flen; k++) {
        char *at = map + pg - k;
        memcpy(at, frame, (size_t)k);
        pier_msg_frame_t f;
        ssize_t r = pier_msg_decode(NULL, at, (size_t)k, &f);
        assert_int_equal(r, k == flen ? flen : 0);
        pier_msg_codec_t wide = {.wide = 1};
        (void)pier_msg_decode(&wide, at, (size_t)k, &f);
    }
    munmap(map, (size_t)pg * 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_coalesced),
        cmocka_unit_test(test_every_split),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_stop_from_callback),
        cmocka_unit_test(test_refuse_keeps_frame),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_bad_ids),
        cmocka_unit_test(test_good_then_bad),
        cmocka_unit_test(test_wide),
        cmocka_unit_test(test_encode_nobufs),
        cmocka_unit_test(test_guard_page),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
