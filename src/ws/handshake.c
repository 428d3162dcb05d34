/* WebSocket endpoints on the HTTP router, and the opening handshake (RFC 6455 4.2).
 *
 * An endpoint is an ordinary route owned by the server (pier_http_route_ud), so it is
 * freed with the server, after every connection has closed. Its handler checks the
 * request, and either answers it with an error as any handler would (400 for a request
 * that is not a valid upgrade, 426 naming version 13 for another version) or queues the
 * 101 and hands the connection to conn.c through pier_http_res_upgrade().
 */
#include "ws/ws_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_MESSAGE (16u << 20)
#define DEFAULT_PING_MS 30000
#define DEFAULT_PONG_MS 10000
#define DEFAULT_CLOSE_MS 5000
#define DEFAULT_OUT_HIGH (256u * 1024)
#define DEFAULT_OUT_LOW (64u * 1024)

/* ---- the request ---- */

static int is_space(char ch) { return ch == ' ' || ch == '\t'; }

/* Calls fn on each element of a comma-separated field value, trimmed; stops and returns
 * 1 when fn does. */
static int each_token(const char *v, size_t n, int (*fn)(const char *t, size_t tl, void *arg), void *arg) {
    size_t i = 0;
    while (v && i < n) {
        size_t start = i;
        while (i < n && v[i] != ',')
            i++;
        size_t a = start, b = i;
        while (a < b && is_space(v[a]))
            a++;
        while (b > a && is_space(v[b - 1]))
            b--;
        if (b > a && fn(v + a, b - a, arg))
            return 1;
        i++;
    }
    return 0;
}

static int token_is(const char *t, size_t tl, void *word) {
    return strlen(word) == tl && strncasecmp(t, word, tl) == 0;
}

static int has_token(const pier_http_req_t *req, const char *field, const char *word) {
    size_t n;
    const char *v = pier_http_req_header(req, field, &n);
    return each_token(v, n, token_is, (void *)word);
}

/* 16 bytes in base64 (4.1): 22 characters whose last carries 2 bits, and "==". */
static int valid_key(const char *k, size_t n) {
    if (!k || n != 24 || k[22] != '=' || k[23] != '=' || !strchr("AQgw", k[21]))
        return 0;
    for (size_t i = 0; i < 22; i++) {
        char ch = k[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '+' ||
              ch == '/'))
            return 0;
    }
    return 1;
}

typedef struct {
    const pier__ws_endpoint_t *ep;
    unsigned best; /* index into ep->protocols of the best offered so far */
} pick_t;

static int offer(const char *t, size_t tl, void *arg) {
    pick_t *pk = arg;
    for (unsigned i = 0; i < pk->best; i++)
        if (strlen(pk->ep->protocols[i]) == tl && memcmp(pk->ep->protocols[i], t, tl) == 0)
            pk->best = i;
    return 0;
}

/* The endpoint's most preferred subprotocol among those the client offers, or NULL. */
static const char *choose_protocol(const pier__ws_endpoint_t *ep, const pier_http_req_t *req) {
    size_t n;
    const char *v = pier_http_req_header(req, "Sec-WebSocket-Protocol", &n);
    pick_t pk = {ep, ep->nprotocols};
    each_token(v, n, offer, &pk);
    return pk.best < ep->nprotocols ? ep->protocols[pk.best] : NULL;
}

static void refuse(pier_http_res_t *res, int status, const char *why) {
    if (status == 426)
        pier_http_res_header(res, "Sec-WebSocket-Version", "13");
    pier_http_res_send(res, status, "text/plain; charset=utf-8", why, strlen(why));
}

/* 0 if the request is a valid upgrade, else the status that refuses it (why says why). */
static int check_request(const pier_http_req_t *req, const char **why) {
    size_t vl, kl;
    const char *ver = pier_http_req_header(req, "Sec-WebSocket-Version", &vl);
    const char *key = pier_http_req_header(req, "Sec-WebSocket-Key", &kl);
    *why = "not a WebSocket handshake\n";
    if (pier_http_req_method(req) != PIER_HTTP_GET || pier_http_req_minor(req) != 1)
        return 400;
    if (!has_token(req, "Upgrade", "websocket") || !has_token(req, "Connection", "upgrade"))
        return 400;
    if (!valid_key(key, kl)) {
        *why = "missing or bad Sec-WebSocket-Key\n";
        return 400;
    }
    if (!ver) {
        *why = "missing Sec-WebSocket-Version\n";
        return 400;
    }
    if (vl != 2 || memcmp(ver, "13", 2) != 0) {
        *why = "unsupported WebSocket version: this server speaks 13\n";
        return 426;
    }
    return 0;
}

/* permessage-deflate, if the endpoint speaks it and the client offers it acceptably. */
static int accept_deflate(pier_ws_t *ws, const pier_http_req_t *req, pier_http_res_t *res) {
    size_t n;
    char ext[160];
    const char *v = pier_http_req_header(req, "Sec-WebSocket-Extensions", &n);
    if (!pier__ws_pmd_accept(v, n, &ws->ep->pmd, &ws->pmd, ext, sizeof ext))
        return 0;
    ws->deflate = 1;
    return pier_http_res_header(res, "Sec-WebSocket-Extensions", ext);
}

static void handshake(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier__ws_endpoint_t *ep = ud;
    const char *why;
    int status = check_request(req, &why);
    if (status) {
        refuse(res, status, why);
        return;
    }
    size_t kl;
    const char *key = pier_http_req_header(req, "Sec-WebSocket-Key", &kl);
    char accept[29];
    pier__ws_accept(key, kl, accept);
    const char *proto = choose_protocol(ep, req);
    pier_ws_t *ws = pier__ws_new(ep, proto);
    int err = ws ? pier_http_res_header(res, "Sec-WebSocket-Accept", accept) : -ENOMEM;
    if (!err && proto)
        err = pier_http_res_header(res, "Sec-WebSocket-Protocol", proto);
    if (!err && ep->pmd.on)
        err = accept_deflate(ws, req, res);
    if (!err)
        err = pier_http_res_upgrade(res, "websocket", pier__ws_take_over, ws);
    if (err < 0) {
        free(ws); /* the upgrade never happened: nothing else refers to it */
        if (err != -ENOMEM && err != -ENOTCONN)
            refuse(res, 500, "cannot upgrade\n");
    }
}

/* ---- endpoints ---- */

void pier__ws_endpoint_clear(pier__ws_endpoint_t *ep) {
    for (unsigned i = 0; i < ep->nloops; i++) {
        pier__buf_free(&ep->loops[i].scratch);
        pier__ws_zloop_free(ep->loops[i].z);
    }
    free(ep->loops);
    if (ep->hub)
        pier__ws_hub_put(ep->hub);
    for (unsigned i = 0; i < ep->nprotocols; i++)
        free(ep->protocols[i]);
    free(ep->protocols);
}

static void endpoint_free(void *arg) {
    pier__ws_endpoint_clear(arg);
    free(arg);
}

static int take_protocols(pier__ws_endpoint_t *ep, const char *const *list) {
    unsigned n = 0;
    while (list && list[n])
        n++;
    if (!n)
        return 0;
    if (!(ep->protocols = calloc(n, sizeof *ep->protocols)))
        return -ENOMEM;
    for (; ep->nprotocols < n; ep->nprotocols++) {
        const char *p = list[ep->nprotocols];
        /* a token, since it goes into a field and is compared with the client's list */
        if (!*p || strpbrk(p, " \t,;\"\r\n") || !pier__utf8_valid(p, strlen(p)))
            return -EINVAL;
        if (!(ep->protocols[ep->nprotocols] = strdup(p)))
            return -ENOMEM;
    }
    return 0;
}

int pier__ws_take_opts(pier__ws_endpoint_t *ep, const pier_ws_opts_t *o) {
    ep->max_message = o->max_message ? o->max_message : DEFAULT_MAX_MESSAGE;
    ep->ping_ms = o->ping_ms ? o->ping_ms : DEFAULT_PING_MS;
    ep->pong_ms = o->pong_ms ? o->pong_ms : DEFAULT_PONG_MS;
    ep->close_ms = o->close_ms ? o->close_ms : DEFAULT_CLOSE_MS;
    ep->out_high = o->out_high ? o->out_high : DEFAULT_OUT_HIGH;
    ep->out_low = o->out_low ? o->out_low : ep->out_high / 4;
    ep->slow_policy = o->slow_policy;
    ep->pmd = (pier__ws_pmd_cfg_t){.on = o->deflate && pier__ws_zlib,
                                   .bits = o->deflate_window_bits ? o->deflate_window_bits : 15,
                                   .takeover = o->deflate_takeover};
    if (ep->out_low > ep->out_high || (o->slow_policy != PIER_WS_SLOW_DROP && o->slow_policy != PIER_WS_SLOW_CLOSE))
        return -EINVAL;
    if (ep->pmd.bits < 9 || ep->pmd.bits > 15)
        return -EINVAL;
    return take_protocols(ep, o->protocols);
}

static int make_loops(pier__ws_endpoint_t *ep, pier_http_server_t *srv) {
    pier_group_t *g = pier_http_server_group(srv);
    unsigned n = pier_group_size(g);
    /* nloops only once loops exists: pier__ws_endpoint_clear walks loops[0..nloops) */
    if (!(ep->loops = calloc(n, sizeof *ep->loops)))
        return -ENOMEM;
    ep->nloops = n;
    for (unsigned i = 0; i < ep->nloops; i++)
        ep->loops[i].loop = pier_group_loop(g, i);
    return pier__ws_hub_get(srv, &ep->hub);
}

int pier_http_ws_opts(pier_http_server_t *srv, const char *path, const pier_ws_cbs_t *cbs, void *ud,
                      const pier_ws_opts_t *opts) {
    static const pier_ws_opts_t none;
    if (!srv || !path || !cbs)
        return -EINVAL;
    pier__ws_endpoint_t *ep = calloc(1, sizeof *ep);
    if (!ep)
        return -ENOMEM;
    ep->cbs = *cbs;
    ep->ud = ud;
    int err = pier__ws_take_opts(ep, opts ? opts : &none);
    if (!err)
        err = make_loops(ep, srv);
    if (err < 0) {
        endpoint_free(ep);
        return err;
    }
    /* the server owns ep from here, also on error (then freed already) */
    return pier_http_route_ud(srv, PIER_HTTP_GET, path, handshake, ep, endpoint_free);
}

int pier_http_ws(pier_http_server_t *srv, const char *path, const pier_ws_cbs_t *cbs, void *ud) {
    return pier_http_ws_opts(srv, path, cbs, ud, NULL);
}
