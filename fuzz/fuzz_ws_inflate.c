/* libFuzzer target for permessage-deflate's inflater: any bytes as a compressed message.
 * No crash, over-read or leak (ASan), never more output than the limit (1009 instead),
 * the output buffer never larger than the limit plus one byte, and whatever inflates
 * compresses and inflates back to itself. The same bytes inflated as two messages in a
 * row keep the stream in step or fail the same way. The first byte picks the limit
 * (bit 0), whether the peer keeps its context (bit 1) and the window bits (bits 2-4). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws/ws_int.h"

static void round_trip(const uint8_t *msg, size_t n, int bits) {
    pier__ws_zloop_t *ztx = NULL, *zrx = NULL;
    pier__ws_pmd_t tx = {.tx_bits = (uint8_t)bits, .tx_reset = 1}, rx = {.rx_bits = (uint8_t)bits, .rx_reset = 1};
    const uint8_t *z, *back;
    size_t zl, bl;
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, msg, n);
    if (pier__ws_deflate(&ztx, &tx, copy, n, &z, &zl) == 0) {
        if (pier__ws_inflate(&zrx, &rx, z, zl, n, &back, &bl) != 0 || bl != n || memcmp(back, copy, n) != 0)
            abort();
    }
    free(copy);
    pier__ws_zloop_free(ztx);
    pier__ws_zloop_free(zrx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    uint64_t max = (data[0] & 1) ? 1000 : 1 << 20;
    int bits = 9 + (data[0] >> 2 & 7) % 7;
    pier__ws_pmd_t pmd = {.rx_bits = (uint8_t)bits, .rx_reset = (data[0] & 2) == 0};
    pier__ws_zloop_t *zl = NULL;
    size_t len = size - 1;
    uint8_t *in = malloc(len ? len : 1); /* its own allocation, so ASan sees over-reads */
    memcpy(in, data + 1, len);
    const uint8_t *out;
    size_t n;
    int code = pier__ws_inflate(&zl, &pmd, in, len, max, &out, &n);
    if (pier__ws_zloop_inflate_cap(zl) > max + 1)
        abort();
    if (code == 0) {
        if (n > max)
            abort();
        round_trip(out, n, bits);
        /* again: a second message on the same stream either way must not crash */
        code = pier__ws_inflate(&zl, &pmd, in, len, max, &out, &n);
        if (code == 0 && n > max)
            abort();
    } else if (code != PIER_WS_TOO_BIG && code != PIER_WS_INVALID_DATA) {
        abort(); /* 1011 means memory ran out: not with these sizes */
    }
    free(in);
    pier__ws_pmd_free(&pmd);
    pier__ws_zloop_free(zl);
    return 0;
}
