/* Strict UTF-8 validation (RFC 3629) for text messages and close reasons.
 *
 * A byte-class table and a transition table written from RFC 3629's table of well-formed
 * sequences: each state knows exactly which bytes may come next, so the first byte that
 * no valid sequence could contain (a stray continuation, C0/C1/F5..FF, an overlong E0 80,
 * a surrogate ED A0, a code point past U+10FFFF as F4 90) rejects at once, whether the text
 * arrives whole or a byte at a time. ASCII, most of what crosses a WebSocket, is skipped
 * 32 bytes per step while no character is open.
 */
#include "ws/ws_int.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* byte classes */
enum { C_ASCII, C_80_8F, C_90_9F, C_A0_BF, C_LEAD2, C_E0, C_LEAD3, C_ED, C_F0, C_LEAD4, C_F4, C_BAD, NCLASS };

static const uint8_t byte_class[256] = {
    [0x00 ... 0x7F] = C_ASCII, [0x80 ... 0x8F] = C_80_8F, [0x90 ... 0x9F] = C_90_9F,
    [0xA0 ... 0xBF] = C_A0_BF, [0xC0 ... 0xC1] = C_BAD,   [0xC2 ... 0xDF] = C_LEAD2,
    [0xE0] = C_E0,             [0xE1 ... 0xEC] = C_LEAD3, [0xED] = C_ED,
    [0xEE ... 0xEF] = C_LEAD3, [0xF0] = C_F0,             [0xF1 ... 0xF3] = C_LEAD4,
    [0xF4] = C_F4,             [0xF5 ... 0xFF] = C_BAD,
};

/* states beyond ACCEPT (0) and REJECT (1): how many continuation bytes remain, and for
 * the four lead bytes with a narrower second byte, which range it must fall in */
enum { S_NEED1 = 2, S_NEED2, S_NEED3, S_E0, S_ED, S_F0, S_F4, NSTATE };

#define R PIER__UTF8_REJECT
static const uint8_t next_state[NSTATE][NCLASS] = {
    /*           ASCII 80-8F   90-9F   A0-BF   LEAD2   E0    LEAD3   ED    F0    LEAD4   F4    BAD */
    [0]       = {0,    R,      R,      R,      S_NEED1, S_E0, S_NEED2, S_ED, S_F0, S_NEED3, S_F4, R},
    [R]       = {R,    R,      R,      R,      R,       R,    R,       R,    R,    R,       R,    R},
    [S_NEED1] = {R,    0,      0,      0,      R,       R,    R,       R,    R,    R,       R,    R},
    [S_NEED2] = {R,    S_NEED1, S_NEED1, S_NEED1, R,    R,    R,       R,    R,    R,       R,    R},
    [S_NEED3] = {R,    S_NEED2, S_NEED2, S_NEED2, R,    R,    R,       R,    R,    R,       R,    R},
    [S_E0]    = {R,    R,      R,      S_NEED1, R,      R,    R,       R,    R,    R,       R,    R}, /* no overlong */
    [S_ED]    = {R,    S_NEED1, S_NEED1, R,     R,      R,    R,       R,    R,    R,       R,    R}, /* no surrogate */
    [S_F0]    = {R,    R,      S_NEED2, S_NEED2, R,     R,    R,       R,    R,    R,       R,    R}, /* no overlong */
    [S_F4]    = {R,    S_NEED2, R,      R,      R,      R,    R,       R,    R,    R,       R,    R}, /* <= U+10FFFF */
};
#undef R

/* The first byte at or after p that is not ASCII, or end. */
static const uint8_t *skip_ascii(const uint8_t *p, const uint8_t *end) {
#ifdef __SSE2__
    while (end - p >= 32) {
        __m128i a = _mm_loadu_si128((const __m128i *)p);
        __m128i b = _mm_loadu_si128((const __m128i *)(p + 16));
        if (_mm_movemask_epi8(_mm_or_si128(a, b))) {
            unsigned m = (unsigned)_mm_movemask_epi8(a) | (unsigned)_mm_movemask_epi8(b) << 16;
            return p + __builtin_ctz(m);
        }
        p += 32;
    }
#endif
    while (end - p >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        if (w & 0x8080808080808080ull)
            break;
        p += 8;
    }
    while (p < end && *p < 0x80)
        p++;
    return p;
}

uint32_t pier__utf8_feed(uint32_t state, const uint8_t *p, size_t n) {
    if (state >= NSTATE)
        return PIER__UTF8_REJECT;
    if (n == 0)
        return state;
    const uint8_t *end = p + n;
    while (p < end) {
        if (state == PIER__UTF8_ACCEPT && (p = skip_ascii(p, end)) == end)
            break;
        state = next_state[state][byte_class[*p++]];
        if (state == PIER__UTF8_REJECT)
            break;
    }
    return state;
}
