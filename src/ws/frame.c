/* The frame codec (RFC 6455 5.2): headers parsed in place from the input and checked
 * against the rules, headers written for our frames, payloads unmasked.
 *
 *   byte 0: FIN, RSV1-3, opcode      byte 1: MASK, length 0..125, or 126 (16-bit length
 *   follows) or 127 (64-bit length follows); then the 4-byte masking key if MASK.
 */
#include "ws/ws_int.h"

#include <string.h>

int pier__ws_parse(const uint8_t *b, size_t len, pier__ws_frame_t *f) {
    if (len < 2)
        return 0;
    f->fin = b[0] >> 7;
    f->rsv = (b[0] >> 4) & 7;
    f->opcode = b[0] & 0xF;
    f->masked = b[1] >> 7;
    uint64_t n = b[1] & 0x7F;
    size_t hdr = 2;
    if (n == 126) {
        if (len < 4)
            return 0;
        n = (uint64_t)b[2] << 8 | b[3];
        hdr = 4;
    } else if (n == 127) {
        if (len < 10)
            return 0;
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | b[2 + i];
        if (n >> 63)
            return -1;
        hdr = 10;
    }
    if (f->masked) {
        if (len < hdr + 4)
            return 0;
        memcpy(f->mask, b + hdr, 4);
        hdr += 4;
    } else {
        memset(f->mask, 0, sizeof f->mask); /* a server's frames: unmasking keeps them */
    }
    f->len = n;
    f->hdr = (uint8_t)hdr;
    return (int)hdr;
}

int pier__ws_check(const pier__ws_frame_t *f, int in_message, uint64_t msg_len, uint64_t max_message,
                   int masked, int deflate) {
    /* RSV2 and RSV3 belong to no extension pier speaks; RSV1 to permessage-deflate, and
     * only on a message's first frame (RFC 7692 6: not on continuations or control
     * frames) */
    int rsv1_ok = deflate && (f->opcode == PIER_WS_TEXT || f->opcode == PIER_WS_BINARY);
    if ((f->rsv & ~(rsv1_ok ? 4 : 0)) || f->masked != masked)
        return PIER_WS_PROTOCOL_ERROR; /* 5.1 on masking */
    switch (f->opcode) {
    case 0x0: /* continuation */
        if (!in_message)
            return PIER_WS_PROTOCOL_ERROR;
        break;
    case PIER_WS_TEXT:
    case PIER_WS_BINARY:
        if (in_message)
            return PIER_WS_PROTOCOL_ERROR; /* a new message before the last one ended */
        break;
    case PIER_WS_CLOSE:
    case PIER_WS_PING:
    case PIER_WS_PONG:
        /* 5.5: control frames are never fragmented and carry at most 125 bytes */
        return !f->fin || f->len > PIER__WS_MAX_CONTROL ? PIER_WS_PROTOCOL_ERROR : 0;
    default:
        return PIER_WS_PROTOCOL_ERROR; /* reserved opcodes */
    }
    /* the declared length decides, before a byte of the payload is buffered */
    return f->len > max_message - msg_len ? PIER_WS_TOO_BIG : 0;
}

/* 16 bytes, one SSE2 or NEON register; a vector of the compiler's own, so that no loop
 * needs its vectorizer and the checks it adds before it */
typedef uint64_t u64x2 __attribute__((vector_size(16)));

/* A word at a time, with the key rotated to the offset once: most messages are short, so
 * the set-up counts as much as the loop. Two copies of the key side by side give the
 * rotated key, in memory order whatever the byte order, as one unaligned load. */
void pier__ws_unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4], uint64_t off) {
    uint8_t m[8];
    uint32_t k32;
    memcpy(m, mask, 4);
    memcpy(m + 4, mask, 4);
    memcpy(&k32, m + (off & 3), 4);
    uint64_t k = (uint64_t)k32 << 32 | k32, a;
    u64x2 kv = {k, k}, v;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        memcpy(&v, src + i, 16);
        v ^= kv;
        memcpy(dst + i, &v, 16);
    }
    if (i + 8 <= n) {
        memcpy(&a, src + i, 8);
        a ^= k;
        memcpy(dst + i, &a, 8);
        i += 8;
    }
    if (i + 4 <= n) {
        uint32_t w;
        memcpy(&w, src + i, 4);
        w ^= k32;
        memcpy(dst + i, &w, 4);
        i += 4;
    }
    for (size_t j = 0; i < n; i++, j++)
        dst[i] = src[i] ^ m[(off & 3) + j];
}

int pier__ws_close_code_ok(unsigned code) {
    /* 1004-1006 and 1015 are reserved and never sent; 1016-2999 are unassigned; 3000-4999
     * belong to libraries and applications */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}
