/* The chunked transfer coding of request bodies (RFC 9112 7.1), decoded byte by byte.
 *
 *   chunked-body = *chunk last-chunk trailer-section CRLF
 *   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   chunk-ext    = *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] )
 *
 * The decoder keeps only counters and a state between calls, so input may be split
 * anywhere. Extensions are validated and ignored; trailer fields are validated and
 * dropped (RFC 9110 6.5.1 lets a recipient discard them). Lines end in CRLF only. Size
 * lines and the trailer section are bounded, and so is the total when max_body is set.
 */
#include "http/parser.h"

#include <string.h>

#define MAX_CHUNK_LINE 4096
#define MAX_TRAILERS 8192

enum {
    S_SIZE,      /* hex digits of chunk-size */
    S_EXT_WS,    /* BWS before ";" or CR */
    S_EXT_NAME0, /* BWS before an extension name */
    S_EXT_NAME,
    S_EXT_EQ,    /* BWS after a name: "=", ";" or CR */
    S_EXT_VAL0,  /* BWS before a value */
    S_EXT_TOKEN,
    S_EXT_QUOTED,
    S_EXT_ESCAPE,
    S_SIZE_LF,
    S_DATA,
    S_DATA_CR,
    S_DATA_LF,
    S_TRAILER,   /* start of a trailer line, or the final CRLF */
    S_TRAILER_NAME,
    S_TRAILER_VALUE,
    S_TRAILER_LF,
    S_END_LF,
    S_DONE,
};

static int is_tchar(unsigned char c) { return pier__http_tchar[c]; }

static int is_ws(unsigned char c) { return c == ' ' || c == '\t'; }

void pier__chunked_init(pier__chunked_t *d, uint64_t max_body) {
    memset(d, 0, sizeof *d);
    d->max_body = max_body;
    d->state = S_SIZE;
}

/* The size line ended: start the data, or the trailer section after the last chunk. */
static int size_line_done(pier__chunked_t *d) {
    if (d->max_body && d->left > d->max_body - d->total)
        return 413;
    d->state = d->left ? S_DATA : S_TRAILER;
    d->line_len = 0;
    return 0;
}

/* One byte of a size line (size and extensions). Returns 0 or an error status. A byte
 * that ends a name or token is looked at again in the state that follows. */
static int size_state(pier__chunked_t *d, unsigned char c) {
    switch (d->state) {
    case S_SIZE: {
        int h = pier__http_hexval(c);
        if (h >= 0) {
            if (d->left >> 60)
                return 400; /* would overflow 64 bits */
            d->left = d->left << 4 | (uint64_t)h;
            d->digits++;
            return 0;
        }
        if (!d->digits)
            return 400;
        if (c == '\r')
            d->state = S_SIZE_LF;
        else if (c == ';')
            d->state = S_EXT_NAME0;
        else if (is_ws(c))
            d->state = S_EXT_WS;
        else
            return 400;
        return 0;
    }
    case S_EXT_WS:
    case S_EXT_EQ:
        if (c == '\r')
            d->state = S_SIZE_LF;
        else if (c == ';')
            d->state = S_EXT_NAME0;
        else if (c == '=' && d->state == S_EXT_EQ)
            d->state = S_EXT_VAL0;
        else if (!is_ws(c))
            return 400;
        return 0;
    case S_EXT_NAME0:
        if (is_tchar(c))
            d->state = S_EXT_NAME;
        else if (!is_ws(c))
            return 400;
        return 0;
    case S_EXT_NAME:
        if (is_tchar(c))
            return 0;
        d->state = S_EXT_EQ;
        return size_state(d, c);
    case S_EXT_VAL0:
        if (c == '"')
            d->state = S_EXT_QUOTED;
        else if (is_tchar(c))
            d->state = S_EXT_TOKEN;
        else if (!is_ws(c))
            return 400;
        return 0;
    case S_EXT_TOKEN:
        if (is_tchar(c))
            return 0;
        d->state = S_EXT_WS;
        return size_state(d, c);
    case S_EXT_QUOTED:
        /* qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
        if (c == '"')
            d->state = S_EXT_WS;
        else if (c == '\\')
            d->state = S_EXT_ESCAPE;
        else if (!(c == '\t' || (c >= 0x20 && c != 0x7f)))
            return 400;
        return 0;
    case S_EXT_ESCAPE:
        if (!(c == '\t' || (c >= 0x20 && c != 0x7f)))
            return 400;
        d->state = S_EXT_QUOTED;
        return 0;
    case S_SIZE_LF:
        if (c != '\n')
            return 400;
        return size_line_done(d);
    }
    return 400;
}

static int size_line_byte(pier__chunked_t *d, unsigned char c) {
    if (++d->line_len > MAX_CHUNK_LINE)
        return 400;
    return size_state(d, c);
}

/* One byte of the trailer section or the final CRLF. */
static int trailer_byte(pier__chunked_t *d, unsigned char c) {
    if (++d->trailer_len > MAX_TRAILERS)
        return 431;
    switch (d->state) {
    case S_TRAILER:
        if (c == '\r')
            d->state = S_END_LF;
        else if (is_tchar(c))
            d->state = S_TRAILER_NAME;
        else
            return 400; /* also obs-fold */
        return 0;
    case S_TRAILER_NAME:
        if (c == ':')
            d->state = S_TRAILER_VALUE;
        else if (!is_tchar(c))
            return 400;
        return 0;
    case S_TRAILER_VALUE:
        if (c == '\r')
            d->state = S_TRAILER_LF;
        else if (!(c == '\t' || (c >= 0x20 && c != 0x7f)))
            return 400;
        return 0;
    case S_TRAILER_LF:
        if (c != '\n')
            return 400;
        d->state = S_TRAILER;
        return 0;
    case S_END_LF:
        if (c != '\n')
            return 400;
        d->state = S_DONE;
        d->done = 1;
        return 0;
    }
    return 400;
}

ssize_t pier__chunked_feed(pier__chunked_t *d, const char *in, size_t len, const char **data,
                           size_t *data_len) {
    size_t i = 0;
    *data = NULL;
    *data_len = 0;
    while (i < len && d->state != S_DONE) {
        unsigned char c = (unsigned char)in[i];
        int st = 0;
        switch (d->state) {
        case S_DATA: {
            size_t n = len - i;
            if (n > d->left)
                n = (size_t)d->left;
            *data = in + i;
            *data_len = n;
            d->left -= n;
            d->total += n;
            if (!d->left)
                d->state = S_DATA_CR;
            return (ssize_t)(i + n);
        }
        case S_DATA_CR:
            st = c == '\r' ? (d->state = S_DATA_LF, 0) : 400;
            break;
        case S_DATA_LF:
            if (c == '\n') {
                d->state = S_SIZE;
                d->digits = 0;
                d->line_len = 0;
            } else {
                st = 400;
            }
            break;
        case S_TRAILER:
        case S_TRAILER_NAME:
        case S_TRAILER_VALUE:
        case S_TRAILER_LF:
        case S_END_LF:
            st = trailer_byte(d, c);
            break;
        default:
            st = size_line_byte(d, c);
            break;
        }
        if (st) {
            d->status = st;
            return -1;
        }
        i++;
    }
    return (ssize_t)i;
}

ssize_t pier__chunked_decode_inplace(pier__chunked_t *d, char *buf, size_t len, size_t *out) {
    size_t in = 0, o = 0;
    *out = 0;
    while (in < len && !d->done) {
        const char *data;
        size_t n;
        ssize_t used = pier__chunked_feed(d, buf + in, len - in, &data, &n);
        if (used < 0)
            return -1;
        if (n) {
            /* data always lies at or after o, so moving it left is safe */
            memmove(buf + o, data, n);
            o += n;
        }
        in += (size_t)used;
        if (used == 0)
            break;
    }
    *out = o;
    return (ssize_t)in;
}
