/* The HTTP/1.1 server's lifecycle: creation with its limits, routes, start and stop,
 * counters. A listener per loop of the group (the core's server); each accepted
 * connection gets the state machine of conn.c and its loop's per-loop state. */
#include "http/http_int.h"
#include "net/conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_HEAD 8192
#define DEFAULT_MAX_TARGET 4096
#define DEFAULT_MAX_BODY (1u << 20)
#define DEFAULT_MAX_CONNS 10000
#define DEFAULT_KEEPALIVE_MS 60000
#define DEFAULT_HEADER_TIMEOUT_MS 10000
#define DEFAULT_BODY_TIMEOUT_MS 60000

static void server_free_parts(pier_http_server_t *srv) {
    if (srv->loops)
        for (unsigned i = 0; i < srv->nloops; i++) {
            pier__buf_free(&srv->loops[i].out);
            free(srv->loops[i].path);
        }
    free(srv->loops);
    pier__http_router_free(&srv->router);
    if (srv->log)
        fclose(srv->log);
    free(srv->host);
    free(srv->server_name);
    free(srv);
}

/* The limits of opts, with defaults for zero fields. -EINVAL for impossible ones. */
static int take_limits(pier_http_server_t *srv, const pier_http_opts_t *o) {
    srv->lim.max_head = o->max_head ? o->max_head : DEFAULT_MAX_HEAD;
    srv->lim.max_target = o->max_target ? o->max_target : DEFAULT_MAX_TARGET;
    srv->lim.max_fields = PIER__HTTP_MAX_FIELDS;
    if (srv->lim.max_head > (1u << 20) || srv->lim.max_target > srv->lim.max_head)
        return -EINVAL;
    srv->max_body = o->max_body ? o->max_body : DEFAULT_MAX_BODY;
    srv->keepalive_ms = o->keepalive_ms ? o->keepalive_ms : DEFAULT_KEEPALIVE_MS;
    srv->header_timeout_ms = o->header_timeout_ms ? o->header_timeout_ms : DEFAULT_HEADER_TIMEOUT_MS;
    srv->body_timeout_ms = o->body_timeout_ms ? o->body_timeout_ms : DEFAULT_BODY_TIMEOUT_MS;
    srv->max_conns = o->max_conns ? o->max_conns : DEFAULT_MAX_CONNS;
    return 0;
}

static int make_loops(pier_http_server_t *srv) {
    srv->nloops = pier_group_size(srv->group);
    srv->loops = calloc(srv->nloops, sizeof *srv->loops);
    if (!srv->loops)
        return -ENOMEM;
    for (unsigned i = 0; i < srv->nloops; i++) {
        srv->loops[i].loop = pier_group_loop(srv->group, i);
        srv->loops[i].mx = pier__loop_metrics(srv->loops[i].loop);
        srv->loops[i].srv = srv;
        if (!(srv->loops[i].path = malloc(srv->lim.max_target + 1)))
            return -ENOMEM;
    }
    return 0;
}

int pier_http_server_new(pier_http_server_t **out, pier_group_t *group, const pier_http_opts_t *opts) {
    static const pier_http_opts_t none;
    const pier_http_opts_t *o = opts ? opts : &none;
    if (!out || !group)
        return -EINVAL;
    pier_http_server_t *srv = calloc(1, sizeof *srv);
    if (!srv)
        return -ENOMEM;
    srv->group = group;
    int rc = take_limits(srv, o);
    if (rc < 0)
        goto fail;
    rc = -ENOMEM;
    srv->host = strdup(o->host ? o->host : "127.0.0.1");
    srv->server_name = strdup(o->server_name ? o->server_name : "pier");
    if (!srv->host || !srv->server_name)
        goto fail;
    if (!pier__http_valid_field("Server", srv->server_name)) {
        rc = -EINVAL;
        goto fail;
    }
    if (o->access_log && !(srv->log = fopen(o->access_log, "ae"))) {
        rc = -errno;
        goto fail;
    }
    if ((rc = make_loops(srv)) < 0)
        goto fail;
    pier_server_opts_t so = {
        .host = srv->host,
        .port = o->port,
        .max_conns = srv->max_conns,
        .limits = {.out_high = PIER__HTTP_OUT_HIGH,
                   .out_low = PIER__HTTP_OUT_LOW,
                   .read_max = srv->lim.max_head + srv->max_body + 65536,
                   .idle_ms = srv->keepalive_ms},
        .on_accept = pier__http_on_accept,
        .data = srv,
        .tls = o->tls,
        .proxy = o->proxy,
    };
    rc = pier_server_new(&srv->srv, group, &so);
    if (rc < 0)
        goto fail;
    pier__server_set_fresh(srv->srv, srv->header_timeout_ms, pier__http_fresh);
    *out = srv;
    return 0;
fail:
    server_free_parts(srv);
    return rc;
}

int pier_http_route_ud(pier_http_server_t *srv, unsigned methods, const char *pattern,
                       pier_http_handler_cb handler, void *ud, void (*ud_free)(void *ud)) {
    int rc = srv->started ? -EBUSY : pier__http_router_add(&srv->router, methods, pattern, handler, ud, ud_free);
    if (rc < 0 && ud_free)
        ud_free(ud);
    return rc;
}

int pier_http_route(pier_http_server_t *srv, unsigned methods, const char *pattern, pier_http_handler_cb handler,
                    void *ud) {
    return pier_http_route_ud(srv, methods, pattern, handler, ud, NULL);
}

int pier_http_server_start(pier_http_server_t *srv) {
    srv->methods = pier__http_router_methods(&srv->router);
    srv->started = 1;
    return pier_server_start(srv->srv);
}

void pier_http_server_stop(pier_http_server_t *srv) {
    __atomic_store_n(&srv->draining, 1, __ATOMIC_RELAXED);
    pier_server_stop(srv->srv);
    pier_server_close_if(srv->srv, pier__http_close_at_drain);
}

void pier_http_server_abort_all(pier_http_server_t *srv) { pier_server_abort_all(srv->srv); }

unsigned pier_http_server_conns(const pier_http_server_t *srv) { return pier_server_conns(srv->srv); }

pier_server_t *pier_http_server_net(const pier_http_server_t *srv) { return srv->srv; }

int pier_http_server_free(pier_http_server_t *srv) {
    if (!srv)
        return 0;
    int rc = pier_server_free(srv->srv);
    if (rc < 0)
        return rc;
    server_free_parts(srv);
    return 0;
}

pier_group_t *pier_http_server_group(const pier_http_server_t *srv) { return srv->group; }

uint16_t pier_http_server_port(const pier_http_server_t *srv) { return pier_server_port(srv->srv); }

uint64_t pier_http_server_requests(const pier_http_server_t *srv) {
    uint64_t n = 0;
    for (unsigned i = 0; i < srv->nloops; i++)
        n += __atomic_load_n(&srv->loops[i].requests, __ATOMIC_RELAXED);
    return n;
}
