/* libFuzzer target for the WebSocket reader (frame codec, unmasking, fragments, UTF-8,
 * permessage-deflate): a client stream read as the server reads it, whole and cut in two
 * at a point the input chooses, with unconsumed bytes kept and handed again as a
 * connection does. No crash or over-read (ASan), no message over the limit (inflated ones
 * included), and the same messages, control frames and verdict however the stream was
 * cut. The input as text also gets one UTF-8 verdict wherever it is cut. The first byte
 * picks the message limit (bit 0), whether permessage-deflate was negotiated (bit 1) and
 * whether the client keeps its compression context (bit 2). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws/ws_int.h"

typedef struct {
    uint32_t sum; /* over messages and control frames, in order */
    unsigned count;
    uint64_t max;
} trace_t;

static void mix(trace_t *t, int op, const uint8_t *p, size_t n) {
    t->sum = t->sum * 31u + (uint32_t)op;
    for (size_t i = 0; i < n; i++)
        t->sum = t->sum * 31u + p[i];
    t->count++;
}

static int on_message(void *ctx, int opcode, const void *data, size_t len) {
    trace_t *t = ctx;
    if (!data || len > t->max || (opcode == PIER_WS_TEXT && !pier__utf8_valid(data, len)))
        abort();
    mix(t, opcode, data, len);
    return 0;
}

static int on_control(void *ctx, int opcode, const uint8_t *data, size_t len) {
    mix(ctx, opcode, data, len);
    return opcode == PIER_WS_CLOSE ? -1 : 0; /* the connection stops reading there */
}

/* Feeds buf[0, len) in two reads cut at split; returns the close code (0: none). */
static int run(trace_t *t, const uint8_t *buf, size_t len, size_t split, uint64_t max, int mode) {
    pier__buf_t scratch = {0};
    pier__ws_zloop_t *zl = NULL;
    pier__ws_pmd_t pmd = {.rx_bits = 15, .rx_reset = (mode & 4) == 0};
    pier__ws_reader_t r = {.max_message = max, .masked = 1, .scratch = &scratch, .on_message = on_message,
                           .on_control = on_control, .ctx = t, .pmd = mode & 2 ? &pmd : NULL, .zl = &zl};
    memset(t, 0, sizeof *t);
    t->max = max;
    uint8_t *kept = malloc(len + 1);
    size_t klen = 0, fed = 0, cuts[2] = {split, len};
    int stop = 0;
    for (int i = 0; i < 2 && !stop; i++) {
        memcpy(kept + klen, buf + fed, cuts[i] - fed);
        klen += cuts[i] - fed;
        fed = cuts[i];
        size_t off = 0;
        while (off < klen) {
            ssize_t used = pier__ws_read(&r, kept + off, klen - off);
            if (used < 0)
                stop = 1;
            if (used <= 0)
                break;
            off += (size_t)used;
        }
        memmove(kept, kept + off, klen - off);
        klen -= off;
    }
    free(kept);
    pier__ws_reader_free(&r);
    pier__ws_pmd_free(&pmd);
    pier__ws_zloop_free(zl);
    pier__buf_free(&scratch);
    return r.code;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    uint64_t max = (data[0] & 1) ? 64 : 1 << 20;
    const uint8_t *in = data + 2;
    size_t len = size - 2, k = len ? data[1] % (len + 1) : 0;
    uint8_t *copy = malloc(len ? len : 1); /* its own allocation, so ASan sees over-reads */
    memcpy(copy, in, len);
    trace_t whole, cut;
    int cw = run(&whole, copy, len, len, max, data[0]);
    int cc = run(&cut, copy, len, k, max, data[0]);
    if (cw != cc || whole.sum != cut.sum || whole.count != cut.count)
        abort(); /* the verdict depends on how the stream was cut */
    uint32_t all = pier__utf8_feed(PIER__UTF8_ACCEPT, copy, len);
    uint32_t two = pier__utf8_feed(pier__utf8_feed(PIER__UTF8_ACCEPT, copy, k), copy + k, len - k);
    if (all != two)
        abort();
    free(copy);
    return 0;
}
