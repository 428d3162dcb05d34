/* permessage-deflate's codec (RFC 7692 7.2), with zlib: raw DEFLATE, each message ended
 * by a sync flush whose last 4 bytes (00 00 ff ff) are left off the wire and put back
 * before inflating.
 *
 * Memory is the point of most of what is here. A zlib compressor holds about
 * 2^(bits+2) + 2^(memLevel+9) bytes (256 KiB at 15 bits and memLevel 8), an inflater
 * about 2^bits + 7 KiB. So:
 *  - nothing is made before a connection's first compressed message;
 *  - a direction without context takeover needs no state between messages, so it uses
 *    its loop's shared stream (one compressor per window size, one inflater), reset
 *    after each message: such connections cost nothing while idle;
 *  - smaller windows get a smaller memLevel too;
 *  - inflating never holds more than the maximum message plus one byte of output: the
 *    output grows in bounded steps and a bomb is stopped (1009) at the first byte over.
 */
#include "ws/ws_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

const int pier__ws_zlib = 1;
atomic_ulong pier__ws_deflate_count;

/* Shorter messages go as they are: each compressed message costs about 3 us whatever its
 * size (resetting the compressor clears its 64 KiB hash table), which outweighs the few
 * bytes a short message can lose, and would double the CPU of an echo of small ones. */
#define DEFLATE_MIN 128
#define STEP (1u << 16)       /* the first output size, and the most zlib gets per call */
#define KEEP_ABOVE (1u << 20) /* a loop's buffer larger than this is not kept for reuse */

struct pier__ws_zloop_s {
    z_stream *tx[16];  /* shared compressors by window bits (9..15) */
    z_stream *rx;      /* the shared inflater (15 bits: it takes any smaller window) */
    pier__buf_t def;   /* the last compressed message */
    pier__buf_t inf;   /* the last inflated message (apart: an echo compresses it) */
};

static pier__ws_zloop_t *zloop(pier__ws_zloop_t **zl) {
    if (!*zl)
        *zl = calloc(1, sizeof **zl);
    return *zl;
}

static z_stream *deflater(int bits) {
    z_stream *s = calloc(1, sizeof *s);
    int mem_level = bits >= 15 ? 8 : bits - 7; /* the hash table sized to the window */
    if (s && deflateInit2(s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -bits, mem_level, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(s);
        s = NULL;
    }
    return s;
}

static z_stream *inflater(int bits) {
    z_stream *s = calloc(1, sizeof *s);
    if (s && inflateInit2(s, -bits) != Z_OK) {
        free(s);
        s = NULL;
    }
    return s;
}

static void deflater_free(z_stream *s) {
    if (s) {
        deflateEnd(s);
        free(s);
    }
}

static void inflater_free(z_stream *s) {
    if (s) {
        inflateEnd(s);
        free(s);
    }
}

void pier__ws_zloop_free(pier__ws_zloop_t *zl) {
    if (!zl)
        return;
    for (int i = 0; i < 16; i++)
        deflater_free(zl->tx[i]);
    inflater_free(zl->rx);
    pier__buf_free(&zl->def);
    pier__buf_free(&zl->inf);
    free(zl);
}

void pier__ws_zloop_trim_tx(pier__ws_zloop_t *zl) {
    if (zl && zl->def.cap > KEEP_ABOVE)
        pier__buf_free(&zl->def);
}

void pier__ws_zloop_trim_rx(pier__ws_zloop_t *zl) {
    if (zl && zl->inf.cap > KEEP_ABOVE)
        pier__buf_free(&zl->inf);
}

size_t pier__ws_zloop_inflate_cap(const pier__ws_zloop_t *zl) { return zl ? zl->inf.cap : 0; }

void pier__ws_pmd_free(pier__ws_pmd_t *pmd) {
    deflater_free(pmd->tx);
    inflater_free(pmd->rx);
    pmd->tx = pmd->rx = NULL;
}

static void buf_fresh(pier__buf_t *b) {
    if (b->cap > KEEP_ABOVE)
        pier__buf_free(b); /* one huge message should not pin its size on the loop */
    pier__buf_reset(b);
}

/* ---- compressing ---- */

/* Runs all of in through s with a sync flush at the end, appending to b. 0 or -ENOMEM. */
static int run_deflate(z_stream *s, pier__buf_t *b, const uint8_t *in, size_t n) {
    size_t left = n;
    do {
        uInt ain = (uInt)(left < (1u << 30) ? left : 1u << 30);
        s->next_in = (Bytef *)(uintptr_t)in;
        s->avail_in = ain;
        in += ain;
        left -= ain;
        int flush = left ? Z_NO_FLUSH : Z_SYNC_FLUSH;
        do { /* until the input is taken and the output did not fill up */
            if (b->cap - b->len < 64 && pier__buf_reserve(b, b->cap > STEP ? b->cap : STEP) < 0)
                return -ENOMEM;
            size_t room = b->cap - b->len;
            uInt aout = (uInt)(room < (1u << 30) ? room : 1u << 30);
            s->next_out = (Bytef *)b->p + b->len;
            s->avail_out = aout;
            int rc = deflate(s, flush);
            b->len += aout - s->avail_out;
            if (rc != Z_OK && rc != Z_BUF_ERROR)
                return -ENOMEM;
        } while (s->avail_in || s->avail_out == 0);
    } while (left);
    return 0;
}

int pier__ws_deflate(pier__ws_zloop_t **zlp, pier__ws_pmd_t *pmd, const void *in, size_t n, const uint8_t **out,
                     size_t *outlen) {
    pier__ws_zloop_t *zl = n >= DEFLATE_MIN ? zloop(zlp) : NULL;
    if (!zl)
        return 1; /* sent as it is, which leaves both contexts as they were */
    z_stream **sp = pmd->tx_reset ? &zl->tx[pmd->tx_bits & 15] : (z_stream **)&pmd->tx;
    pier__buf_t *b = &zl->def;
    buf_fresh(b);
    if ((!*sp && !(*sp = deflater(pmd->tx_bits))) || pier__buf_reserve(b, deflateBound(*sp, n) + 16) < 0)
        return 1;
    atomic_fetch_add_explicit(&pier__ws_deflate_count, 1, memory_order_relaxed);
    int err = run_deflate(*sp, b, in, n);
    if (pmd->tx_reset)
        deflateReset(*sp);
    if (err < 0 || b->len < 4) /* with takeover the peer's context can no longer follow ours */
        return pmd->tx_reset ? 1 : -ENOMEM;
    b->len -= 4; /* the sync flush's 00 00 ff ff (7.2.1) */
    if (pmd->tx_reset && b->len >= n)
        return 1; /* not smaller, and no context to keep in step */
    *out = (const uint8_t *)b->p;
    *outlen = b->len;
    return 0;
}

/* ---- inflating ---- */

/* Makes room for more output, never beyond max + 1 bytes in all: the realloc is ours
 * rather than pier__buf_reserve's, whose doubling could overshoot the bound. */
static int grow(pier__buf_t *b, uint64_t max) {
    size_t limit = max >= SIZE_MAX - 1 ? SIZE_MAX : (size_t)max + 1;
    size_t want = b->cap ? (b->cap > limit / 2 ? limit : b->cap * 2) : (STEP < limit ? STEP : limit);
    if (b->cap >= limit)
        return PIER_WS_TOO_BIG;
    char *p = realloc(b->p, want);
    if (!p)
        return PIER_WS_INTERNAL;
    b->p = p;
    b->cap = want;
    return 0;
}

/* Inflates in[0, n) into b: 0, or the close code. */
static int run_inflate(z_stream *s, pier__buf_t *b, const uint8_t *in, size_t n, uint64_t max) {
    for (;;) {
        int code = b->len == b->cap ? grow(b, max) : 0;
        if (code)
            return code;
        size_t room = b->cap - b->len;
        uInt ain = (uInt)(n < STEP ? n : STEP), aout = (uInt)(room < STEP ? room : STEP);
        s->next_in = (Bytef *)(uintptr_t)in;
        s->avail_in = ain;
        s->next_out = (Bytef *)b->p + b->len;
        s->avail_out = aout;
        int rc = inflate(s, Z_SYNC_FLUSH);
        size_t used = ain - s->avail_in, made = aout - s->avail_out;
        in += used;
        n -= used;
        b->len += made;
        if (b->len > max)
            return PIER_WS_TOO_BIG;
        if (rc == Z_STREAM_END) { /* a final block (BFINAL): what follows is a new stream */
            inflateReset(s);
            continue;
        }
        if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT)
            return PIER_WS_INVALID_DATA;
        if (rc == Z_MEM_ERROR)
            return PIER_WS_INTERNAL;
        if (!used && !made) /* no progress with room to write: the input is all taken */
            return n ? PIER_WS_INVALID_DATA : 0;
    }
}

int pier__ws_inflate(pier__ws_zloop_t **zlp, pier__ws_pmd_t *pmd, const uint8_t *in, size_t n, uint64_t max,
                     const uint8_t **out, size_t *outlen) {
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    pier__ws_zloop_t *zl = zloop(zlp);
    if (!zl)
        return PIER_WS_INTERNAL;
    /* at least 9 bits: a peer whose zlib turned 8 into 9 is still understood */
    z_stream **sp = pmd->rx_reset ? &zl->rx : (z_stream **)&pmd->rx;
    int bits = pmd->rx_reset ? 15 : pmd->rx_bits < 9 ? 9 : pmd->rx_bits;
    if (!*sp && !(*sp = inflater(bits)))
        return PIER_WS_INTERNAL;
    pier__buf_t *b = &zl->inf;
    buf_fresh(b);
    int code = run_inflate(*sp, b, in ? in : tail, n, max); /* an empty message may have no buffer */
    if (!code)
        code = run_inflate(*sp, b, tail, sizeof tail, max);
    if (pmd->rx_reset || code)
        inflateReset(*sp);
    if (code)
        return code;
    *out = b->len ? (const uint8_t *)b->p : (const uint8_t *)"";
    *outlen = b->len;
    return 0;
}
