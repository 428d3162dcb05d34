/* The WebSocket client: a URL, a pier_client_t beneath, the opening handshake (RFC 6455
 * 4.1), and then the very connection the server side runs (conn.c), with masked frames.
 *
 * The client's endpoint is embedded in it, with one "loop" (the client's) so conn.c finds
 * its scratch buffer as on a server. Its callbacks are the application's, except on_open
 * and on_close, which pass through here to track the open connection.
 */
#include "ws/ws_int.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#define MAX_RESPONSE_HEAD 16384

struct pier_ws_client_s {
    pier__ws_endpoint_t ep;   /* first: conn.c hands back &ep, on_open finds the client */
    pier__ws_loop_t wl;
    const pier_ws_cbs_t *app;
    pier_client_t *cl;
    pier_ws_t *ws;            /* open, or NULL */
    char *host, *authority, *path, *offer;
    char ext_offer[128];      /* Sec-WebSocket-Extensions, or "" */
    uint16_t port;
    int secure, reconnect, stopped, reported;
    int max_retries, refusals; /* handshakes refused in a row */
    int status;               /* of the last handshake response, or 0 */
    char accept[29];          /* what the server must answer this attempt's key with */
    void (*on_connect_error)(pier_ws_client_t *cl, int err, int will_retry);
};

/* ---- random bytes ---- */

int pier__ws_random(void *out, size_t n) {
    /* one getrandom call per 64 masks, not one per frame */
    static __thread uint8_t pool[256];
    static __thread size_t pos, end;
    uint8_t *o = out;
    while (n) {
        if (pos == end) {
            ssize_t r = getrandom(pool, sizeof pool, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return r < 0 ? -errno : -EIO;
            pos = 0;
            end = (size_t)r;
        }
        size_t k = n < end - pos ? n : end - pos;
        memcpy(o, pool + pos, k);
        pos += k;
        o += k;
        n -= k;
    }
    return 0;
}

/* ---- the URL ---- */

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static int parse_port(const char **pp, uint16_t *port) {
    const char *p = *pp;
    unsigned v = 0;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 6) {
        v = v * 10 + (unsigned)(*p++ - '0');
        digits++;
    }
    if (!digits || v == 0 || v > 65535)
        return -EINVAL;
    *port = (uint16_t)v;
    *pp = p;
    return 0;
}

/* ws://host[:port][/path][?query]; no fragment (4.1), nothing that cannot go in a
 * request line. */
static int parse_url(pier_ws_client_t *cl, const char *url) {
    const char *p;
    if (!strncasecmp(url, "ws://", 5)) {
        p = url + 5, cl->port = 80;
    } else if (!strncasecmp(url, "wss://", 6)) {
        p = url + 6, cl->port = 443, cl->secure = 1;
    } else {
        return -EINVAL;
    }
    const char *auth = p, *hs = p, *he;
    if (*p == '[') {
        if (!(he = strchr(p, ']')))
            return -EINVAL;
        hs = p + 1;
        p = he + 1;
    } else {
        p = he = p + strcspn(p, ":/?#");
    }
    if (he == hs || (*p == ':' && (p++, parse_port(&p, &cl->port) < 0)))
        return -EINVAL;
    if (*p && *p != '/' && *p != '?')
        return -EINVAL;
    for (const char *q = p; *q; q++)
        if ((unsigned char)*q <= ' ' || *q == '#' || *q == 0x7f)
            return -EINVAL;
    cl->host = dup_n(hs, (size_t)(he - hs));
    cl->authority = dup_n(auth, (size_t)(p - auth));
    size_t pl = strlen(p);
    cl->path = malloc(pl + 2);
    if (!cl->host || !cl->authority || !cl->path)
        return -ENOMEM;
    snprintf(cl->path, pl + 2, "%s%s", *p == '/' ? "" : "/", p);
    return 0;
}

/* The Sec-WebSocket-Protocol offer: the endpoint's list, comma-separated (NULL if none). */
static int make_offer(pier_ws_client_t *cl) {
    size_t n = 1;
    for (unsigned i = 0; i < cl->ep.nprotocols; i++)
        n += strlen(cl->ep.protocols[i]) + 2;
    if (!cl->ep.nprotocols || !(cl->offer = calloc(1, n)))
        return cl->ep.nprotocols ? -ENOMEM : 0;
    for (unsigned i = 0; i < cl->ep.nprotocols; i++)
        snprintf(cl->offer + strlen(cl->offer), n - strlen(cl->offer), "%s%s", i ? ", " : "",
                 cl->ep.protocols[i]);
    return 0;
}

/* ---- the handshake ---- */

static int will_retry(const pier_ws_client_t *cl) { return cl->reconnect && !cl->stopped; }

static void report(pier_ws_client_t *cl, int err) {
    if (cl->reported++ == 0 && cl->on_connect_error)
        cl->on_connect_error(cl, err, will_retry(cl));
}

static int send_request(pier_ws_client_t *cl, pier_conn_t *c) {
    uint8_t raw[16];
    char key[25], req[8192];
    int err = pier__ws_random(raw, sizeof raw);
    if (err < 0)
        return err;
    pier__base64(raw, sizeof raw, key);
    pier__ws_accept(key, 24, cl->accept);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s%s%s%s%s\r\n",
                     cl->path, cl->authority, key, cl->offer ? "Sec-WebSocket-Protocol: " : "",
                     cl->offer ? cl->offer : "", cl->offer ? "\r\n" : "",
                     *cl->ext_offer ? "Sec-WebSocket-Extensions: " : "", cl->ext_offer, *cl->ext_offer ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req)
        return -E2BIG;
    return pier_conn_write(c, req, (size_t)n);
}

static int has_token(const char *v, size_t n, const char *word) {
    size_t wl = strlen(word);
    for (size_t i = 0; i < n;) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == wl && !strncasecmp(v + s, word, wl))
            return 1;
    }
    return 0;
}

/* What the 101's fields must say (4.1, the client's checks): upgrade, connection, the
 * accept for our key, no extension but permessage-deflate as we offered it, a
 * subprotocol we offered. */
typedef struct {
    int upgrade, connection, accept, bad, deflate;
    const char *protocol;
    pier__ws_pmd_t pmd;
} answer_t;

static void check_field(pier_ws_client_t *cl, answer_t *a, const char *name, size_t nl, const char *v, size_t vl) {
#define IS(s) (nl == sizeof(s) - 1 && !strncasecmp(name, s, nl))
    if (IS("Upgrade"))
        a->upgrade |= has_token(v, vl, "websocket");
    else if (IS("Connection"))
        a->connection |= has_token(v, vl, "upgrade");
    else if (IS("Sec-WebSocket-Accept"))
        a->accept = vl == 28 && !memcmp(v, cl->accept, 28);
    else if (IS("Sec-WebSocket-Extensions"))
        a->bad |= !cl->ep.pmd.on || a->deflate++ || pier__ws_pmd_check(v, vl, &cl->ep.pmd, &a->pmd) < 0;
    else if (IS("Sec-WebSocket-Protocol")) {
        a->bad |= a->protocol != NULL;
        for (unsigned i = 0; i < cl->ep.nprotocols && !a->protocol; i++)
            if (strlen(cl->ep.protocols[i]) == vl && !memcmp(cl->ep.protocols[i], v, vl))
                a->protocol = cl->ep.protocols[i];
        a->bad |= a->protocol == NULL;
    }
#undef IS
}

/* The status of a response head, or 0 if it has none. */
static int status_of(const char *p, size_t n) {
    if (n < 13 || memcmp(p, "HTTP/1.", 7) || p[8] != ' ' || (p[12] != ' ' && p[12] != '\r'))
        return 0;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        st = st * 10 + p[i] - '0';
    }
    return st;
}

/* The response head [p, p + n): 0, the chosen protocol and permessage-deflate's
 * agreement if it accepts. */
static int check_response(pier_ws_client_t *cl, const char *p, size_t n, answer_t *out) {
    answer_t a = {0};
    cl->status = status_of(p, n);
    if (cl->status != 101 || memcmp(p, "HTTP/1.1", 8))
        return -EPROTO;
    const char *end = p + n, *line = memchr(p, '\n', n) + 1;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            const char *v = colon + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            check_field(cl, &a, line, (size_t)(colon - line), v, (size_t)(ve - v));
        }
        line = eol + 1;
    }
    *out = a;
    return a.upgrade && a.connection && a.accept && !a.bad ? 0 : -EPROTO;
}

/* A refused handshake: another attempt follows as after any failed connect, unless the
 * refusal is definitive (a 4xx but 408 and 429: asking again gets the same answer) or
 * max_retries refusals came in a row. */
static void refused(pier_ws_client_t *cl, int err) {
    int st = cl->status;
    int definitive = st >= 400 && st < 500 && st != 408 && st != 429;
    if (definitive || (cl->max_retries && ++cl->refusals >= cl->max_retries)) {
        cl->stopped = 1;
        pier_client_stop(cl->cl);
    }
    report(cl, err);
}

static size_t hs_read(pier_conn_t *c, const char *data, size_t len) {
    pier_ws_client_t *cl = pier_conn_data(c);
    const char *eoh = memmem(data, len, "\r\n\r\n", 4);
    if (!eoh) {
        if (len < MAX_RESPONSE_HEAD)
            return 0;
        eoh = data; /* too long: refused below */
    }
    size_t head = (size_t)(eoh - data) + 4;
    answer_t a;
    int err = eoh == data ? -EPROTO : check_response(cl, data, head, &a);
    pier_ws_t *ws = err ? NULL : pier__ws_new(&cl->ep, a.protocol);
    if (!ws) {
        pier_conn_set_data(c, NULL); /* reported here, not again by hs_close */
        pier_conn_abort(c);
        refused(cl, err ? err : -ENOMEM);
        return len;
    }
    cl->refusals = 0;
    ws->client = 1;
    ws->deflate = a.deflate;
    ws->pmd = a.pmd;
    ws->rd.masked = 0; /* a server's frames must not be masked */
    return head + pier__ws_take_over(c, ws, data + head, len - head);
}

static void hs_close(pier_conn_t *c, int err) {
    pier_ws_client_t *cl = pier_conn_data(c);
    if (cl) /* closed before a 101 came */
        report(cl, err < 0 ? err : -ECONNRESET);
}

static const pier_conn_cbs_t hs_cbs = {.on_read = hs_read, .on_close = hs_close};

static void on_connect(pier_client_t *pcl, pier_conn_t *c) {
    pier_ws_client_t *cl = pier_client_data(pcl);
    cl->reported = 0;
    pier_conn_set_cbs(c, &hs_cbs, cl);
    int err = send_request(cl, c);
    if (err < 0) {
        report(cl, err);
        pier_conn_abort(c);
    }
}

static void on_connect_error(pier_client_t *pcl, int err, int retry) {
    pier_ws_client_t *cl = pier_client_data(pcl);
    if (cl->on_connect_error)
        cl->on_connect_error(cl, err, retry && !cl->stopped);
}

/* ---- the connection's life, seen from the client ---- */

static pier_ws_client_t *client_of(pier_ws_t *ws) {
    return (pier_ws_client_t *)((char *)ws->ep - offsetof(pier_ws_client_t, ep));
}

static void ws_open(pier_ws_t *ws) {
    pier_ws_client_t *cl = client_of(ws);
    cl->ws = ws;
    if (cl->app->on_open)
        cl->app->on_open(ws);
}

static void ws_close(pier_ws_t *ws, int code, const char *reason) {
    pier_ws_client_t *cl = client_of(ws);
    cl->ws = NULL;
    if (cl->app->on_close)
        cl->app->on_close(ws, code, reason);
    if (cl->stopped) /* the close handshake pier_ws_client_stop began is over */
        pier_client_stop(cl->cl);
}

/* ---- the public calls ---- */

static void client_clear(pier_ws_client_t *cl) {
    pier__ws_endpoint_clear(&cl->ep);
    pier__buf_free(&cl->wl.scratch);
    pier__ws_zloop_free(cl->wl.z);
    free(cl->host);
    free(cl->authority);
    free(cl->path);
    free(cl->offer);
    free(cl);
}

static int client_start(pier_ws_client_t *cl, pier_loop_t *loop, const pier_ws_client_opts_t *o) {
    pier_client_opts_t co = {.host = cl->host, .port = cl->port, .connect_timeout_ms = o->connect_timeout_ms,
                             .reconnect = o->reconnect, .backoff_min_ms = o->backoff_min_ms,
                             .backoff_max_ms = o->backoff_max_ms, .max_retries = o->max_retries,
                             .tls = cl->secure ? o->tls : NULL, .on_connect = on_connect,
                             .on_connect_error = on_connect_error, .data = cl};
    return pier_client_new(&cl->cl, loop, &co);
}

int pier_ws_client_new(pier_ws_client_t **out, pier_loop_t *loop, const pier_ws_client_opts_t *o,
                       const pier_ws_cbs_t *cbs, void *ud) {
    if (!out || !loop || !o || !o->url || !cbs)
        return -EINVAL;
    pier_ws_client_t *cl = calloc(1, sizeof *cl);
    if (!cl)
        return -ENOMEM;
    cl->app = cbs;
    cl->ep.cbs = (pier_ws_cbs_t){.on_open = ws_open, .on_message = cbs->on_message, .on_close = ws_close,
                                 .on_drain = cbs->on_drain};
    cl->ep.ud = ud;
    cl->ep.loops = &cl->wl;
    cl->ep.nloops = 1;
    cl->wl.loop = loop;
    cl->reconnect = o->reconnect;
    cl->max_retries = o->max_retries;
    cl->on_connect_error = o->on_connect_error;
    int err = parse_url(cl, o->url);
    if (!err && cl->secure && !o->tls)
        err = -EINVAL;
    err = err ? err : pier__ws_take_opts(&cl->ep, &o->ws);
    err = err ? err : make_offer(cl);
    if (!err && cl->ep.pmd.on)
        pier__ws_pmd_offer(&cl->ep.pmd, cl->ext_offer, sizeof cl->ext_offer);
    err = err ? err : client_start(cl, loop, o);
    if (err < 0) {
        cl->ep.loops = NULL; /* embedded, not the endpoint's to free */
        cl->ep.nloops = 0;
        client_clear(cl);
        return err;
    }
    *out = cl;
    return 0;
}

pier_ws_t *pier_ws_client_ws(const pier_ws_client_t *cl) { return cl->ws; }
int pier_ws_client_status(const pier_ws_client_t *cl) { return cl->status; }

void pier_ws_client_stop(pier_ws_client_t *cl) {
    if (cl->stopped++)
        return;
    if (!cl->ws || pier_ws_close(cl->ws, PIER_WS_NORMAL, NULL) < 0)
        pier_client_stop(cl->cl);
}

int pier_ws_client_free(pier_ws_client_t *cl) {
    int err = pier_client_free(cl->cl);
    if (err < 0)
        return err;
    cl->ep.loops = NULL;
    cl->ep.nloops = 0;
    client_clear(cl);
    return 0;
}
