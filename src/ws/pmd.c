/* permessage-deflate (RFC 7692): the negotiation in Sec-WebSocket-Extensions, on both
 * sides. Nothing here needs zlib.
 *
 * The field (RFC 6455 9.1) is a comma-separated list of extensions, each a name and
 * ";"-separated parameters, a parameter a token with an optional "=" value that is a
 * token or a quoted-string. A client may offer permessage-deflate several times, with
 * other parameters, in order of preference.
 *
 * What a pier server agrees to, and why:
 *  - server_no_context_takeover always, unless the endpoint asks for takeover (7.1.1.1
 *    lets a server say it unasked). Our compressor then starts afresh with each message,
 *    which is what lets one loop share a single compressor among all its connections
 *    (no compressor per connection, ~256 KiB each with zlib's defaults) and lets a
 *    published message be compressed once and the same bytes go to every subscriber.
 *    The cost is a worse ratio on streams of small similar messages.
 *  - the client's own takeover as it offers it (the inflater then lives with the
 *    connection, ~40 KiB at 15 bits); client_no_context_takeover offered is echoed, and
 *    the client's messages are then inflated with the loop's shared stream.
 *  - client_max_window_bits, when offered, lowered to the endpoint's bits.
 *  - server_max_window_bits honoured down to 9; an offer asking for 8 is declined: zlib
 *    cannot compress raw DEFLATE with a 256-byte window.
 */
#include "ws/ws_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int tchar(char c) { return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?={}", c); }

static void ows(const char **pp, const char *end) {
    while (*pp < end && (**pp == ' ' || **pp == '\t'))
        (*pp)++;
}

static size_t token(const char **pp, const char *end) {
    const char *s = *pp;
    while (*pp < end && tchar(**pp))
        (*pp)++;
    return (size_t)(*pp - s);
}

/* A parameter's value, a token or a quoted-string, unquoted into val (size bytes; a
 * longer one is cut and then is no valid number anyway). 0, or -1 if malformed. */
static int value(const char **pp, const char *end, char *val, size_t size) {
    size_t n = 0;
    const char *p = *pp;
    if (p < end && *p == '"') {
        for (p++;; p++) {
            if (p >= end)
                return -1;
            if (*p == '"')
                break;
            if (*p == '\\' && ++p >= end)
                return -1;
            if (n + 1 < size)
                val[n++] = *p;
        }
        p++;
    } else {
        const char *s = p;
        size_t k = token(&p, end);
        if (!k)
            return -1;
        n = k < size - 1 ? k : size - 1;
        memcpy(val, s, n);
    }
    val[n] = '\0';
    *pp = p;
    return 0;
}

/* "8".."15", without leading zeros (7.1.2.1); -1 otherwise. */
static int window_bits(const char *v) {
    if (v[0] >= '8' && v[0] <= '9' && !v[1])
        return v[0] - '0';
    if (v[0] == '1' && v[1] >= '0' && v[1] <= '5' && !v[2])
        return 10 + v[1] - '0';
    return -1;
}

/* One parameter of a permessage-deflate offer or response: 0, or -1 for an unknown or
 * repeated one or a bad value (the whole offer is then declined, 7.1). */
static int param(pier__ws_pmd_params_t *prm, const char *name, size_t nl, const char *val) {
#define IS(s) (nl == sizeof(s) - 1 && !strncasecmp(name, s, nl))
    int *flag = IS("server_no_context_takeover") ? &prm->server_nct
              : IS("client_no_context_takeover") ? &prm->client_nct : NULL;
    int *bits = IS("server_max_window_bits") ? &prm->server_bits
              : IS("client_max_window_bits") ? &prm->client_bits : NULL;
#undef IS
    if (flag) {
        if (val || *flag)
            return -1;
        *flag = 1;
        return 0;
    }
    if (!bits || *bits)
        return -1;
    if (!val) /* only the client's may come without a value, in an offer */
        return bits == &prm->client_bits ? (*bits = -1, 0) : -1;
    return (*bits = window_bits(val)) < 0 ? -1 : 0;
}

int pier__ws_pmd_parse(const char **pp, const char *end, pier__ws_pmd_params_t *prm) {
    const char *p = *pp;
    memset(prm, 0, sizeof *prm);
    while (p < end && (*p == ',' || *p == ' ' || *p == '\t')) /* empty list elements */
        p++;
    const char *name = p;
    size_t nl = token(&p, end);
    if (!nl)
        return p == end ? (*pp = p, 0) : -1;
    int ok = nl == 18 && !strncasecmp(name, "permessage-deflate", 18);
    for (;;) {
        ows(&p, end);
        if (p == end || *p == ',')
            break;
        if (*p++ != ';')
            return -1;
        ows(&p, end);
        const char *pn = p;
        size_t pl = token(&p, end);
        if (!pl)
            return -1;
        ows(&p, end);
        char val[4];
        int has = p < end && *p == '=';
        if (has) {
            p++;
            ows(&p, end);
            if (value(&p, end, val, sizeof val) < 0)
                return -1;
        }
        if (ok && param(prm, pn, pl, has ? val : NULL) < 0)
            ok = 0;
    }
    *pp = p < end ? p + 1 : p;
    return ok;
}

static int min_bits(int a, int b) { return a < b ? a : b; }

/* The agreement for an accepted offer, and the response that states it. */
static void agree(const pier__ws_pmd_params_t *o, const pier__ws_pmd_cfg_t *cfg, pier__ws_pmd_t *pmd, char *resp,
                  size_t size) {
    pmd->tx_bits = (uint8_t)(o->server_bits > 0 ? min_bits(o->server_bits, cfg->bits) : cfg->bits);
    pmd->tx_reset = !cfg->takeover || o->server_nct;
    pmd->rx_bits = (uint8_t)(o->client_bits ? min_bits(o->client_bits > 0 ? o->client_bits : 15, cfg->bits) : 15);
    pmd->rx_reset = (uint8_t)o->client_nct;
    int n = snprintf(resp, size, "permessage-deflate%s%s", pmd->tx_reset ? "; server_no_context_takeover" : "",
                     pmd->rx_reset ? "; client_no_context_takeover" : "");
    /* a window limit offered is answered (7.1.2.1); the client's only if it allows one */
    if (o->server_bits && n > 0 && (size_t)n < size)
        n += snprintf(resp + n, size - (size_t)n, "; server_max_window_bits=%d", pmd->tx_bits);
    if (o->client_bits && n > 0 && (size_t)n < size)
        snprintf(resp + n, size - (size_t)n, "; client_max_window_bits=%d", pmd->rx_bits);
}

int pier__ws_pmd_accept(const char *v, size_t n, const pier__ws_pmd_cfg_t *cfg, pier__ws_pmd_t *pmd, char *resp,
                        size_t size) {
    if (!v)
        return 0; /* no offer */
    const char *p = v, *end = v + n;
    while (p < end) {
        pier__ws_pmd_params_t o;
        int r = pier__ws_pmd_parse(&p, end, &o);
        if (r < 0)
            return 0; /* a malformed field: none of it is trusted */
        if (r == 1 && o.server_bits != 8) {
            agree(&o, cfg, pmd, resp, size);
            return 1;
        }
    }
    return 0;
}

void pier__ws_pmd_offer(const pier__ws_pmd_cfg_t *cfg, char *out, size_t size) {
    /* a window under 15 is asked of the server too: it is what our inflater is sized to */
    if (cfg->bits < 15)
        snprintf(out, size, "permessage-deflate; client_max_window_bits=%d; server_max_window_bits=%d%s", cfg->bits,
                 cfg->bits, cfg->takeover ? "" : "; client_no_context_takeover");
    else
        snprintf(out, size, "permessage-deflate; client_max_window_bits%s",
                 cfg->takeover ? "" : "; client_no_context_takeover");
}

int pier__ws_pmd_check(const char *v, size_t n, const pier__ws_pmd_cfg_t *cfg, pier__ws_pmd_t *pmd) {
    const char *p = v, *end = v + n;
    pier__ws_pmd_params_t r;
    if (pier__ws_pmd_parse(&p, end, &r) != 1)
        return -EPROTO;
    ows(&p, end);
    /* one extension only, and in a response every window limit has a value */
    if (p != end || r.client_bits < 0 || (cfg->bits < 15 && r.server_bits > cfg->bits))
        return -EPROTO;
    pmd->rx_bits = (uint8_t)(r.server_bits ? r.server_bits : 15);
    pmd->rx_reset = (uint8_t)r.server_nct;
    pmd->tx_bits = (uint8_t)(r.client_bits ? min_bits(r.client_bits, cfg->bits) : cfg->bits);
    pmd->tx_reset = !cfg->takeover || r.client_nct;
    return pmd->tx_bits < 9 ? -EPROTO : 0; /* 8: zlib cannot compress with it */
}
