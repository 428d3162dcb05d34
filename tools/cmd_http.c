/* pier http: the HTTP/1.1 server with its demo routes, and the service `pier serve` runs.
 *
 *   GET, HEAD /plaintext   "Hello, World!" as text/plain
 *   GET /json              {"message":"Hello, World!"}
 *   POST /echo             the request body, with its Content-Type
 *   GET, HEAD /static/...  files under --root (default: the www/ folder shipped with pier)
 *   GET /                  a page about the server and its routes
 *   GET /ws/echo           WebSocket: each message echoed as it came (text as text)
 *   GET /ws/chat           WebSocket: a room; every message goes to every member
 *   GET /chat              the chat page (chat.html under --root) that uses /ws/chat
 *   GET /stream?n=N&size=S[&defer=MS]
 *                          a chunked stream of N chunks of S bytes (a fixed pattern); with
 *                          defer, written after MS ms from the deferral thread through
 *                          pier_http_later_begin/_write/_end, backing off on -ENOBUFS
 *   GET /defer?ms=MS&size=S
 *                          S bytes of the same pattern, sent after MS ms from the deferral
 *                          thread with pier_http_later_send
 * /defer and /stream are for the fault scenarios (tests/faults/): responses finished from
 * another thread, and streams. Their bytes depend only on the query, so a client can
 * check every byte.
 */
#include "cli.h"
#include "admin.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pier/http.h>
#include <pier/ws.h>

#ifndef PIER_SOURCE_DIR
#define PIER_SOURCE_DIR "."
#endif

/* Not in cli.h (owned by the core); declared here so that main.c and cmd_serve.c can
 * declare them the same way. */
typedef struct pier_http_cfg_s {
    const char *host;
    uint16_t port;
    const char *root;        /* NULL: the shipped www/ folder if present */
    size_t max_body;
    const char *access_log;
    uint64_t keepalive_ms;   /* 0: the library's default */
    uint64_t header_timeout_ms;
    uint64_t body_timeout_ms;
    unsigned max_conns;      /* 0: the library's default */
    pier_tls_ctx_t *tls;     /* HTTPS; NULL: plain HTTP */
    pier_proxy_opts_t proxy;
} pier_http_cfg_t;

int pier_cmd_http(int argc, char **argv);
extern const pier_service_t pier_http_service;

/* ---- the deferral thread: /defer and /stream?defer= are finished from here ---- */

typedef struct defer_item_s {
    struct defer_item_s *next;
    pier_http_later_t *later;
    uint64_t due_ms;
    unsigned long n, size;  /* chunks and bytes per chunk; n = 0: one whole response */
    unsigned long done;     /* chunks written so far */
    int begun;
} defer_item_t;

typedef struct deferrer_s {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    defer_item_t *items; /* by due time */
    int stop, started;
} deferrer_t;

typedef struct http_state_s {
    pier_http_server_t *srv;
    deferrer_t defer;
} http_state_t;

#define DEMO_MAX_N 10000
#define DEMO_MAX_SIZE (16ul << 20) /* more than a socket's send buffer, so output can queue up */
#define DEMO_MAX_MS 10000
#define DEFER_RETRY_MS 1

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Chunk i of the demo pattern: printable, and different for each chunk and offset. */
static void demo_fill(char *buf, unsigned long i, unsigned long size) {
    static const char abc[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for (unsigned long j = 0; j < size; j++)
        buf[j] = abc[(i * 7 + j) % (sizeof abc - 1)];
}

static void defer_insert(deferrer_t *d, defer_item_t *it) {
    defer_item_t **p = &d->items;
    while (*p && (*p)->due_ms <= it->due_ms)
        p = &(*p)->next;
    it->next = *p;
    *p = it;
}

/* One step of an item, with buf of it->size bytes. Returns 1 when it is finished (and
 * the handle gone), 0 to run it again later: the server said -ENOBUFS (the client reads
 * slowly) or -ENOMEM. */
static int defer_write(defer_item_t *it, char *buf) {
    int rc;
    if (it->n == 0) {
        demo_fill(buf, 0, it->size);
        pier_http_later_send(it->later, 200, "text/plain", buf, it->size); /* frees it, also on error */
        return 1;
    }
    if (!it->begun) {
        if ((rc = pier_http_later_begin(it->later, 200, "text/plain")) == -ENOMEM)
            return 0;
        if (rc < 0)
            goto give_up;
        it->begun = 1;
    }
    for (; it->done < it->n; it->done++) {
        demo_fill(buf, it->done, it->size);
        if ((rc = pier_http_later_write(it->later, buf, it->size)) == -ENOBUFS || rc == -ENOMEM)
            return 0;
        if (rc < 0)
            goto give_up;
    }
    pier_http_later_end(it->later);
    return 1;
give_up: /* the client has gone, say */
    pier_http_later_cancel(it->later);
    return 1;
}

static int defer_step(defer_item_t *it) {
    char *buf = malloc(it->size ? it->size : 1);
    if (!buf)
        return 0; /* try again later */
    int rc = defer_write(it, buf);
    free(buf);
    return rc;
}

static void *defer_main(void *arg) {
    deferrer_t *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->stop) {
        defer_item_t *it = d->items;
        uint64_t now = mono_ms();
        if (!it || it->due_ms > now) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t wait = it ? it->due_ms - now : 1000;
            ts.tv_sec += (time_t)(wait / 1000);
            ts.tv_nsec += (long)(wait % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&d->cv, &d->mu, &ts);
            continue;
        }
        d->items = it->next;
        pthread_mutex_unlock(&d->mu);
        int finished = defer_step(it);
        pthread_mutex_lock(&d->mu);
        if (finished) {
            free(it);
        } else {
            it->due_ms = mono_ms() + DEFER_RETRY_MS;
            defer_insert(d, it);
        }
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static int defer_start(deferrer_t *d) {
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* signals stay with the loops' signalfd */
    int err = pthread_create(&d->thread, NULL, defer_main, d);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    d->started = err == 0;
    return -err;
}

/* Stops the thread and gives up on what still waits: each connection is reset. */
static void defer_stop(deferrer_t *d) {
    if (!d->started)
        return;
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->thread, NULL);
    d->started = 0;
    while (d->items) {
        defer_item_t *it = d->items;
        d->items = it->next;
        pier_http_later_cancel(it->later);
        free(it);
    }
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
}

/* A number from the query: 1 if present and at most max, 0 if absent, -1 if bad. */
static int query_num(pier_http_req_t *req, const char *key, unsigned long max, unsigned long *out) {
    char v[32], *end;
    int n = pier_http_req_query(req, key, v, sizeof v);
    *out = 0;
    if (n == -ENOENT)
        return 0;
    unsigned long x = n > 0 ? strtoul(v, &end, 10) : 0;
    if (n <= 0 || *end || x > max)
        return -1;
    *out = x;
    return 1;
}

static void bad_query(pier_http_res_t *res) {
    static const char msg[] = "n <= 10000, size <= 16777216, ms and defer <= 10000\n";
    pier_http_res_send(res, 400, "text/plain", msg, sizeof msg - 1);
}

static void defer_later(pier_http_res_t *res, deferrer_t *d, unsigned long ms, unsigned long n, unsigned long size) {
    defer_item_t *it = calloc(1, sizeof *it);
    pier_http_later_t *l = it ? pier_http_res_later(res) : NULL;
    if (!l) {
        free(it); /* the server answers 500 for a handler that took nothing */
        return;
    }
    *it = (defer_item_t){.later = l, .due_ms = mono_ms() + ms, .n = n, .size = size};
    pthread_mutex_lock(&d->mu);
    defer_insert(d, it);
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void defer_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    unsigned long ms, size;
    if (query_num(req, "ms", DEMO_MAX_MS, &ms) < 0 || query_num(req, "size", DEMO_MAX_SIZE, &size) < 0)
        bad_query(res);
    else
        defer_later(res, ud, ms, 0, size);
}

static void stream_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    unsigned long n, size, defer;
    int deferred = query_num(req, "defer", DEMO_MAX_MS, &defer);
    if (query_num(req, "n", DEMO_MAX_N, &n) < 0 || query_num(req, "size", DEMO_MAX_SIZE, &size) < 0 || deferred < 0) {
        bad_query(res);
        return;
    }
    if (deferred) {
        defer_later(res, ud, defer, n ? n : 1, size);
        return;
    }
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return; /* 500 */
    pier_http_res_begin(res, 200, "text/plain");
    for (unsigned long i = 0; i < n; i++) {
        demo_fill(buf, i, size);
        pier_http_res_write(res, buf, size);
    }
    pier_http_res_end(res);
    free(buf);
}

static const char hello[] = "Hello, World!";
static const char json[] = "{\"message\":\"Hello, World!\"}";

static void plaintext(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 200, "text/plain", hello, sizeof hello - 1);
}

static void json_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 200, "application/json", json, sizeof json - 1);
}

static void echo_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    size_t len, tl;
    const void *body = pier_http_req_body(req, &len);
    const char *t = pier_http_req_header(req, "Content-Type", &tl);
    char ctype[256] = "application/octet-stream";
    if (t && tl < sizeof ctype) {
        memcpy(ctype, t, tl);
        ctype[tl] = '\0';
    }
    pier_http_res_send(res, 200, ctype, body, len);
}

static const char home[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pier http</title></head>\n"
    "<body style=\"font-family: system-ui, sans-serif; max-width: 40em; margin: 2em auto\">\n"
    "<h1>pier http</h1>\n"
    "<p>An HTTP/1.1 server built on pier's event loop: a strict parser, a router,\n"
    "keep-alive and pipelining, chunked bodies, and static files with validators and ranges.</p>\n"
    "<h2>Routes</h2>\n<ul>\n"
    "<li><a href=\"/plaintext\">GET /plaintext</a>: Hello, World! as text/plain</li>\n"
    "<li><a href=\"/json\">GET /json</a>: a JSON message</li>\n"
    "<li>POST /echo: the request body, echoed with its content type</li>\n"
    "<li><a href=\"/static/\">GET /static/...</a>: files under the --root folder</li>\n"
    "<li>GET /ws/echo: WebSocket echo; <a href=\"/chat\">GET /chat</a>: a chat room on /ws/chat</li>\n"
    "</ul>\n</body></html>\n";

static void home_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 200, "text/html; charset=utf-8", home, sizeof home - 1);
}

/* ---- WebSocket: /ws/echo, and the /ws/chat room with its /chat page ---- */

static void ws_echo(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    pier_ws_send(ws, opcode, data, len); /* -ENOBUFS cannot happen: reading pauses first */
}

/* The room is the topic "chat" of pub/sub, which spans every loop of a server; for pier
 * serve it spans the HTTP and the HTTPS server too, since a message is published on each
 * server that serves the room. A member too slow to read misses messages (the endpoint's
 * slow-consumer policy) rather than growing the server's memory. A server leaves the
 * list as it is freed: the list is the ud of its /chat route. */
#define ROOM_MAX_SERVERS 4

static struct {
    pthread_mutex_t mu;
    pier_http_server_t *srvs[ROOM_MAX_SERVERS];
    unsigned n;
} room = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct {
    pier_http_server_t *srv;
    const char *root;
} chat_route_t;

static void chat_open(pier_ws_t *ws) {
    if (pier_ws_subscribe(ws, "chat") < 0)
        pier_ws_close(ws, PIER_WS_INTERNAL, "out of memory");
}

static void chat_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    pthread_mutex_lock(&room.mu);
    for (unsigned i = 0; i < room.n; i++)
        pier_ws_publish(room.srvs[i], "chat", opcode, data, len); /* -ENOMEM: lost */
    pthread_mutex_unlock(&room.mu);
}

static void chat_page(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    const chat_route_t *cr = ud;
    char path[4096];
    snprintf(path, sizeof path, "%s/chat.html", cr->root ? cr->root : "");
    int fd = cr->root ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        if (fd >= 0)
            close(fd);
        pier_http_res_send(res, 404, "text/plain", "no chat.html under --root\n", 26);
        return;
    }
    pier_http_res_sendfile(res, 200, "text/html; charset=utf-8", fd, 0, (size_t)sb.st_size);
}

static void chat_route_free(void *ud) {
    chat_route_t *cr = ud;
    pthread_mutex_lock(&room.mu);
    for (unsigned i = 0; i < room.n; i++)
        if (room.srvs[i] == cr->srv)
            room.srvs[i] = room.srvs[--room.n];
    pthread_mutex_unlock(&room.mu);
    free(cr);
}

static int join_room(pier_http_server_t *srv, const char *root) {
    chat_route_t *cr = malloc(sizeof *cr);
    if (!cr)
        return -ENOMEM;
    *cr = (chat_route_t){srv, root};
    pthread_mutex_lock(&room.mu);
    int full = room.n == ROOM_MAX_SERVERS;
    if (!full)
        room.srvs[room.n++] = srv;
    pthread_mutex_unlock(&room.mu);
    if (full) {
        free(cr);
        return -ENOSPC;
    }
    /* the server owns cr from here, also on error: chat_route_free leaves the room */
    return pier_http_route_ud(srv, PIER_HTTP_GET, "/chat", chat_page, cr, chat_route_free);
}

/* --no-deflate: permessage-deflate is on in the tool unless this says otherwise */
static int ws_no_deflate;

static int add_ws_routes(pier_http_server_t *srv, const char *root) {
    static const pier_ws_cbs_t echo_cbs = {.on_message = ws_echo};
    static const pier_ws_cbs_t chat_cbs = {.on_open = chat_open, .on_message = chat_message};
    pier_ws_opts_t wo = {.deflate = !ws_no_deflate};
    int err = pier_http_ws_opts(srv, "/ws/echo", &echo_cbs, NULL, &wo);
    err = err ? err : pier_http_ws_opts(srv, "/ws/chat", &chat_cbs, NULL, &wo);
    return err ? err : join_room(srv, root);
}

static const char *default_root(void) {
    static const char root[] = PIER_SOURCE_DIR "/www";
    struct stat sb;
    return stat(root, &sb) == 0 && S_ISDIR(sb.st_mode) ? root : NULL;
}

static int add_routes(pier_http_server_t *srv, const pier_http_cfg_t *cfg, deferrer_t *d) {
    int err = 0;
    err = err ? err : pier_http_route(srv, PIER_HTTP_GET, "/plaintext", plaintext, NULL);
    err = err ? err : pier_http_route(srv, PIER_HTTP_GET, "/json", json_route, NULL);
    err = err ? err : pier_http_route(srv, PIER_HTTP_POST, "/echo", echo_route, NULL);
    err = err ? err : pier_http_route(srv, PIER_HTTP_GET, "/", home_route, NULL);
    err = err ? err : pier_http_route(srv, PIER_HTTP_GET, "/defer", defer_route, d);
    err = err ? err : pier_http_route(srv, PIER_HTTP_GET, "/stream", stream_route, d);
    if (err) {
        fprintf(stderr, "pier http: cannot add the routes: %s\n", pier_strerror(err));
        return err;
    }
    const char *root = cfg->root ? cfg->root : default_root();
    if ((err = add_ws_routes(srv, root)) < 0)
        return err;
    if (!root) {
        pier_log(PIER_LOG_WARN, "http: no www/ folder found and no --root given: /static/ is off");
        return 0;
    }
    err = pier_http_static(srv, "/static/", root);
    if (err < 0)
        fprintf(stderr, "pier http: cannot serve --root %s: %s\n", root, pier_strerror(err));
    return err;
}

/* Idempotent: settle may ask again after it said yes. */
static int http_freed(void *state) {
    http_state_t *st = state;
    if (st->srv && pier_http_server_free(st->srv) == 0)
        st->srv = NULL;
    return st->srv == NULL;
}

static int http_start(pier_group_t *g, void *cfgp, void **state) {
    const pier_http_cfg_t defaults = {.host = "127.0.0.1", .port = 8888};
    const pier_http_cfg_t *cfg = cfgp ? cfgp : &defaults;
    http_state_t *st = calloc(1, sizeof *st);
    if (!st)
        return -1;
    pier_http_opts_t o = {.host = cfg->host, .port = cfg->port, .max_body = cfg->max_body,
                          .access_log = cfg->access_log, .keepalive_ms = cfg->keepalive_ms,
                          .header_timeout_ms = cfg->header_timeout_ms, .body_timeout_ms = cfg->body_timeout_ms,
                          .max_conns = cfg->max_conns, .tls = cfg->tls, .proxy = cfg->proxy};
    int err = pier_http_server_new(&st->srv, g, &o);
    if (err < 0) {
        if (cfg->access_log && err != -EADDRINUSE)
            fprintf(stderr, "pier http: cannot start (access log %s): %s\n", cfg->access_log, pier_strerror(err));
        else
            fprintf(stderr, "pier http: cannot listen on %s:%u: %s\n", cfg->host, cfg->port, pier_strerror(err));
        free(st);
        return err;
    }
    err = add_routes(st->srv, cfg, &st->defer);
    if (err == 0 && (err = defer_start(&st->defer)) < 0)
        fprintf(stderr, "pier http: cannot start the deferral thread: %s\n", pier_strerror(err));
    if (err < 0) {
        pier_http_server_stop(st->srv);
        /* the stop posts close-all tasks to the loops, which do not run yet: run them, or
         * the server cannot be freed */
        if (!pier_cli_settle(g, http_freed, st, 1000))
            pier_log(PIER_LOG_ERROR, "http: server could not be freed");
        free(st);
        return err;
    }
    pier_http_server_start(st->srv);
    pier_log(PIER_LOG_INFO, "http: listening on %s:%u%s (%u loops)", cfg->host, pier_http_server_port(st->srv),
             cfg->tls ? " with TLS (HTTPS only)" : "", pier_group_size(g));
    *state = st;
    return 0;
}

static void http_drain(void *state) { pier_http_server_stop(((http_state_t *)state)->srv); }

static unsigned http_active(void *state) { return pier_http_server_conns(((http_state_t *)state)->srv); }

static pier_server_t *http_net(void *state) { return pier_http_server_net(((http_state_t *)state)->srv); }

/* After the server is freed: the deferral thread stops, and what still waits in it is
 * cancelled (the handles' abort tasks run in the loops' last iterations). */
static void http_finish(void *state) {
    http_state_t *st = state;
    defer_stop(&st->defer);
    free(st);
}

const pier_service_t pier_http_service = {
    .name = "http", .start = http_start, .drain = http_drain, .active = http_active,
    .net = http_net, .freed = http_freed, .finish = http_finish,
};

/* HTTPS on 8443 for `pier serve`; its cfg is the server's TLS context. */
static int https_start(pier_group_t *g, void *tls, void **state) {
    pier_http_cfg_t cfg = {.host = "127.0.0.1", .port = 8443, .tls = tls};
    return http_start(g, &cfg, state);
}

const pier_service_t pier_https_service = {
    .name = "https", .start = https_start, .drain = http_drain, .active = http_active,
    .net = http_net, .freed = http_freed, .finish = http_finish,
};

/* What a plain HTTP request to the HTTPS port gets, raw, before the connection closes. */
const char pier_http_plain_reply[] =
    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 60\r\nConnection: close\r\n\r\n"
    "This port speaks HTTPS only: a plain HTTP request was sent.\n";

static const char http_help[] =
    "usage: pier http [--host 127.0.0.1] [--port 8888] [--threads N] [--root DIR]\n"
    "                 [--max-body BYTES] [--access-log FILE] [--keepalive-timeout S]\n"
    "                 [--header-timeout S] [--body-timeout S] [--max-conns N] [--quiet]\n"
    "                 [--tls-cert FILE --tls-key FILE] [--no-deflate]\n"
    "                 [--proxy-protocol [--proxy-from CIDR,...] [--proxy-timeout S]]\n"
    "\n"
    "An HTTP/1.1 server with keep-alive, pipelining and static files. Routes:\n"
    "  GET, HEAD /plaintext   Hello, World! as text/plain\n"
    "  GET /json              {\"message\":\"Hello, World!\"}\n"
    "  POST /echo             the request body, with its Content-Type\n"
    "  GET, HEAD /static/...  files under --root\n"
    "  GET /                  a page about the server\n"
    "  GET /ws/echo           WebSocket echo (text as text, binary as binary)\n"
    "  GET /ws/chat           WebSocket chat room: each message goes to every member\n"
    "  GET /chat              the chat page, chat.html under --root\n"
    "  GET /stream?n=N&size=S[&defer=MS]\n"
    "                         N chunks of S bytes, streamed (after MS ms from another thread)\n"
    "  GET /defer?ms=MS&size=S  S bytes, answered after MS ms from another thread\n"
    "SIGINT or SIGTERM stops accepting, finishes what is in flight, exits 0.\n"
    "\n"
    "  --host H            address to listen on (IPv4 or IPv6), default 127.0.0.1\n"
    "  --port P            port, default 8888 (0: any free port, logged)\n"
    "  --threads N         event loops, one thread each (default 1; 0: one per CPU)\n"
    "  --root DIR          folder served under /static/ (default: pier's www/ folder)\n"
    "  --max-body BYTES    largest request body (default 1048576); larger gets 413\n"
    "  --access-log FILE   append a common-log-format line per request to FILE\n"
    "  --keepalive-timeout S  close idle connections after S seconds (default 60)\n"
    "  --header-timeout S  a request head must arrive within S seconds, else 408 (default 10)\n"
    "  --body-timeout S    a whole request, head and body, must arrive within S seconds,\n"
    "                      else 408 (default 60)\n"
    "  --max-conns N       open connections at most; more are closed at once (default 10000)\n"
    "  --quiet             log warnings and errors only\n"
    "  --admin HOST:PORT   /metrics, /healthz and /status on a port of their own (off: none)\n"
    "  --no-deflate        WebSocket without permessage-deflate (on by default)\n"
    "  --tls-cert FILE     certificate chain (PEM, leaf first): the port speaks only HTTPS,\n"
    "                      and answers a plain HTTP request with a 400 that says so\n"
    "  --tls-key FILE      its private key (PEM); SIGHUP reads both files again\n"
    "                      repeat both for more pairs: each client gets the first whose\n"
    "                      certificate names the host it asks for (SNI), else the first\n"
    "                      SIGUSR1 replaces the session ticket key now (it is anyway hourly)\n"
    PIER_CLI_PROXY_HELP;

int pier_cmd_http(int argc, char **argv) {
    pier_http_cfg_t cfg = {.host = "127.0.0.1", .port = 8888};
    pier_admin_cfg_t admin = {0};
    uint64_t threads = 1, v;
    pier_cli_tls_t tf = {0};
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"tls-cert", required_argument, 0, 'C'}, {"tls-key", required_argument, 0, 'K'},
        {"threads", required_argument, 0, 't'},  {"root", required_argument, 0, 'r'},
        {"max-body", required_argument, 0, 'b'}, {"access-log", required_argument, 0, 'l'},
        {"keepalive-timeout", required_argument, 0, 'k'}, {"header-timeout", required_argument, 0, 'T'},
        {"body-timeout", required_argument, 0, 'B'}, {"max-conns", required_argument, 0, 'm'},
        {"quiet", no_argument, 0, 'q'},          {"help", no_argument, 0, 'H'},
        PIER_CLI_PROXY_LONGOPTS,                 {"admin", required_argument, 0, 'A'},
        {"no-deflate", no_argument, 0, 'Z'},
        {0, 0, 0, 0},
    };
    int opt;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': cfg.host = optarg; break;
        case 'p':
            if (pier_cli_port("http", optarg, &cfg.port) < 0)
                return 2;
            break;
        case 'A': if (pier_admin_parse("http", optarg, &admin)) return 2; break;
        case 't':
            if (pier_cli_u64("http", "--threads", optarg, 0, 256, &threads) < 0)
                return 2;
            break;
        case 'r': {
            struct stat sb;
            if (stat(optarg, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
                fprintf(stderr, "pier http: --root %s is not a directory\n", optarg);
                return 2;
            }
            cfg.root = optarg;
            break;
        }
        case 'b':
            if (pier_cli_u64("http", "--max-body", optarg, 1, (uint64_t)1 << 32, &v) < 0)
                return 2;
            cfg.max_body = (size_t)v;
            break;
        case 'l': cfg.access_log = optarg; break;
        case 'k':
            if (pier_cli_u64("http", "--keepalive-timeout", optarg, 1, 86400, &v) < 0)
                return 2;
            cfg.keepalive_ms = v * 1000;
            break;
        case 'T':
            if (pier_cli_u64("http", "--header-timeout", optarg, 1, 3600, &v) < 0)
                return 2;
            cfg.header_timeout_ms = v * 1000;
            break;
        case 'B':
            if (pier_cli_u64("http", "--body-timeout", optarg, 1, 3600, &v) < 0)
                return 2;
            cfg.body_timeout_ms = v * 1000;
            break;
        case 'm':
            if (pier_cli_u64("http", "--max-conns", optarg, 1, 10000000, &v) < 0)
                return 2;
            cfg.max_conns = (unsigned)v;
            break;
        case 'q': pier_log_set_level(PIER_LOG_WARN); break;
        case 'Z': ws_no_deflate = 1; break;
        case 'C': if (pier_cli_tls_add("http", &tf, 0, optarg)) return 2; break;
        case 'K': if (pier_cli_tls_add("http", &tf, 1, optarg)) return 2; break;
        case PIER_CLI_PROXY_ON: case PIER_CLI_PROXY_FROM: case PIER_CLI_PROXY_TIMEOUT:
            if (pier_cli_proxy_flag("http", opt, optarg, &cfg.proxy))
                return 2;
            break;
        case 'H': fputs(http_help, stdout); return 0;
        default:
            return pier_cli_usage_error("http", "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return pier_cli_usage_error("http", "unexpected argument '%s'", argv[optind]);
    if (pier_cli_proxy_check("http", &cfg.proxy))
        return 2;
    int code = pier_cli_tls_server("http", &tf, pier_http_plain_reply, "http/1.1", &cfg.tls);
    if (code)
        return code;
    admin.max_conns = cfg.max_conns;
    admin.keepalive_ms = cfg.keepalive_ms;
    admin.header_timeout_ms = cfg.header_timeout_ms;
    admin.body_timeout_ms = cfg.body_timeout_ms;
    pier_service_run_t runs[2] = {{.svc = &pier_http_service, .cfg = &cfg}};
    int n = 1;
    pier_admin_add(runs, &n, &admin);
    code = pier_cli_run((unsigned)threads, runs, n, 10000);
    pier_tls_ctx_free(cfg.tls);
    return code;
}
