/* The admin listener: see admin.h. */
#include "admin.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pier/http.h>
#include <pier/metrics.h>

#ifndef PIER_SOURCE_DIR
#define PIER_SOURCE_DIR "."
#endif

typedef struct admin_s {
    pier_group_t *pub;         /* the public servers' loops: the ones counted */
    pier_group_t *own;         /* one loop, run by th: scrapes never wait on a busy public loop */
    pier_http_server_t *srv;
    pthread_t th;
    int running;
    atomic_int draining;
} admin_t;

int pier_admin_parse(const char *cmd, const char *arg, pier_admin_cfg_t *out) {
    if (strcmp(arg, "off") == 0) {
        out->on = 0;
        return 0;
    }
    const char *colon = strrchr(arg, ':');
    const char *host = arg;
    size_t hl = colon ? (size_t)(colon - arg) : 0;
    if (hl >= 2 && arg[0] == '[' && arg[hl - 1] == ']') {
        host++;
        hl -= 2;
    }
    if (!colon || hl == 0 || hl >= sizeof out->host)
        return pier_cli_usage_error(cmd, "--admin wants HOST:PORT (or off), not '%s'", arg);
    uint64_t port;
    if (pier_cli_u64(cmd, "--admin's port", colon + 1, 0, 65535, &port) < 0)
        return 2;
    memcpy(out->host, host, hl);
    out->host[hl] = '\0';
    out->port = (uint16_t)port;
    out->on = 1;
    return 0;
}

void pier_admin_add(pier_service_run_t *runs, int *n, pier_admin_cfg_t *cfg) {
    if (cfg->on)
        runs[(*n)++] = (pier_service_run_t){.svc = &pier_admin_service, .cfg = cfg};
}

/* ---- the routes ---- */

static void metrics_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    admin_t *a = ud;
    pier_metrics_t m;
    pier_metrics_snapshot_group(a->pub, &m);
    char small[16384];
    size_t need = pier_metrics_prometheus(&m, small, sizeof small);
    char *buf = need < sizeof small ? small : malloc(need + 1);
    if (!buf)
        return; /* 500 */
    if (buf != small)
        pier_metrics_prometheus(&m, buf, need + 1);
    pier_http_res_send(res, 200, "text/plain; version=0.0.4; charset=utf-8", buf, need);
    if (buf != small)
        free(buf);
}

static void healthz_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    admin_t *a = ud;
    if (atomic_load(&a->draining))
        pier_http_res_send(res, 503, "text/plain", "draining\n", 9);
    else
        pier_http_res_send(res, 200, "text/plain", "ok\n", 3);
}

typedef struct {
    char buf[2048];
    size_t len; /* clamped to the buffer: a text that did not fit is cut, never overrun */
} json_t;

__attribute__((format(printf, 2, 3))) static void jput(json_t *j, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->buf + j->len, sizeof j->buf - j->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        j->len = j->len + (size_t)n < sizeof j->buf ? j->len + (size_t)n : sizeof j->buf - 1;
}

static void jarray(json_t *j, const char *name, const uint64_t *v, size_t n) {
    jput(j, ",\"%s\":[", name);
    for (size_t i = 0; i < n; i++)
        jput(j, "%s%llu", i ? "," : "", (unsigned long long)v[i]);
    jput(j, "]");
}

static void jnum(json_t *j, const char *name, uint64_t v) {
    jput(j, ",\"%s\":%llu", name, (unsigned long long)v);
}

/* Cumulative counters and gauges: the page takes differences between two reads for the
 * rates and the latency percentiles of each second. */
static void status_json_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    admin_t *a = ud;
    pier_metrics_t m;
    pier_metrics_snapshot_group(a->pub, &m);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    static const uint64_t bounds[] = PIER_METRICS_DURATION_BOUNDS_MS;
    uint64_t classes[PIER_METRICS_CLASSES] = {0};
    for (int i = 0; i < PIER_METRICS_METHODS; i++)
        for (int k = 0; k < PIER_METRICS_CLASSES; k++)
            classes[k] += m.http_requests[i][k];
    json_t j = {.len = 0};
    jput(&j, "{\"draining\":%s", atomic_load(&a->draining) ? "true" : "false");
    jnum(&j, "t_ms", (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
    jnum(&j, "requests", pier_metrics_http_total(&m));
    jnum(&j, "open", pier_metrics_open(&m));
    jnum(&j, "accepted", m.conns_accepted);
    jnum(&j, "bytes_in", m.bytes_in);
    jnum(&j, "bytes_out", m.bytes_out);
    jnum(&j, "ws_in", m.ws_messages_in);
    jnum(&j, "ws_out", m.ws_messages_out);
    jnum(&j, "msg_queue", pier_metrics_msg_queue_depth(&m));
    jnum(&j, "tls_ok", m.tls_handshakes_ok);
    jnum(&j, "tls_failed", m.tls_handshakes_failed);
    jarray(&j, "classes", classes, PIER_METRICS_CLASSES);
    jarray(&j, "bounds_ms", bounds, PIER_METRICS_BUCKETS - 1);
    jarray(&j, "buckets", m.http_duration, PIER_METRICS_BUCKETS);
    jput(&j, "}\n");
    pier_http_res_header(res, "Cache-Control", "no-store");
    pier_http_res_send(res, 200, "application/json", j.buf, j.len);
}

/* The page is built into the binary (cmake/embed.cmake), so an installed pier serves it
 * too; it loads nothing from another host. */
extern const unsigned char pier_status_html[];
extern const unsigned long pier_status_html_len;

static void status_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    (void)req;
    (void)ud;
    pier_http_res_header(res, "Cache-Control", "no-store");
    pier_http_res_send(res, 200, "text/html; charset=utf-8", pier_status_html, pier_status_html_len);
}

static void index_route(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    static const char page[] = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>pier admin</title>"
                               "</head><body><h1>pier admin</h1><ul><li><a href=\"/status\">/status</a>: live charts</li>"
                               "<li><a href=\"/metrics\">/metrics</a>: Prometheus text format</li>"
                               "<li><a href=\"/healthz\">/healthz</a>: 200, or 503 while draining</li>"
                               "<li><a href=\"/status.json\">/status.json</a>: the counters the charts read</li>"
                               "</ul></body></html>\n";
    pier_http_res_send(res, 200, "text/html; charset=utf-8", page, sizeof page - 1);
}

static int add_routes(admin_t *a) {
    int err = pier_http_route(a->srv, PIER_HTTP_GET, "/", index_route, a);
    err = err ? err : pier_http_route(a->srv, PIER_HTTP_GET, "/metrics", metrics_route, a);
    err = err ? err : pier_http_route(a->srv, PIER_HTTP_GET, "/healthz", healthz_route, a);
    err = err ? err : pier_http_route(a->srv, PIER_HTTP_GET, "/status", status_route, a);
    return err ? err : pier_http_route(a->srv, PIER_HTTP_GET, "/status.json", status_json_route, a);
}

/* ---- the service ---- */

static void *admin_main(void *arg) {
    admin_t *a = arg;
    pier_group_run(a->own);
    return NULL;
}

/* Signals stay with loop 0's signalfd of the public group. */
static int start_thread(admin_t *a) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&a->th, NULL, admin_main, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    a->running = err == 0;
    return -err;
}

static int srv_freed(void *arg) {
    admin_t *a = arg;
    if (a->srv && pier_http_server_free(a->srv) == 0)
        a->srv = NULL;
    return a->srv == NULL;
}

/* Idempotent. The runner has stopped the server and reset its connections (posted to
 * the admin loop): the loop's thread ends, and the loop runs here until they are done. */
static int admin_freed(void *state) {
    admin_t *a = state;
    if (a->running) {
        pier_group_stop(a->own);
        pthread_join(a->th, NULL);
        a->running = 0;
    }
    if (a->srv) {
        pier_http_server_stop(a->srv);
        pier_cli_settle(a->own, srv_freed, a, 5000);
    }
    return a->srv == NULL;
}

static void admin_finish(void *state) {
    admin_t *a = state;
    if (a->srv || pier_group_free(a->own) < 0)
        pier_log(PIER_LOG_ERROR, "admin: its loop could not be freed");
    free(a);
}

static int admin_open(admin_t *a, const pier_admin_cfg_t *cfg) {
    pier_http_opts_t o = {.host = cfg->host, .port = cfg->port, .max_conns = cfg->max_conns,
                          .keepalive_ms = cfg->keepalive_ms, .header_timeout_ms = cfg->header_timeout_ms,
                          .body_timeout_ms = cfg->body_timeout_ms};
    int err = pier_http_server_new(&a->srv, a->own, &o);
    if (err < 0) {
        fprintf(stderr, "pier: --admin %s:%u: cannot listen: %s\n", cfg->host, cfg->port, pier_strerror(err));
        return err;
    }
    if ((err = add_routes(a)) == 0 && (err = pier_http_server_start(a->srv)) == 0 && (err = start_thread(a)) == 0)
        return 0;
    fprintf(stderr, "pier: --admin: cannot start: %s\n", pier_strerror(err));
    return err;
}

static int admin_start(pier_group_t *g, void *cfgp, void **state) {
    const pier_admin_cfg_t *cfg = cfgp;
    admin_t *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    a->pub = g;
    int err = pier_group_new(&a->own, 1);
    if (err < 0) {
        fprintf(stderr, "pier: --admin: cannot create its loop: %s\n", pier_strerror(err));
        free(a);
        return err;
    }
    if ((err = admin_open(a, cfg)) < 0) {
        admin_freed(a);
        admin_finish(a);
        return err;
    }
    pier_log(PIER_LOG_INFO, "admin: /metrics, /healthz and /status on %s:%u", cfg->host,
             pier_http_server_port(a->srv));
    *state = a;
    return 0;
}

static void admin_drain(void *state) { atomic_store(&((admin_t *)state)->draining, 1); }

/* Nothing of the admin port holds up the drain: it is reset once the public servers end. */
static unsigned admin_active(void *state) { return 0; }

static pier_server_t *admin_net(void *state) { return pier_http_server_net(((admin_t *)state)->srv); }

const pier_service_t pier_admin_service = {
    .name = "admin", .start = admin_start, .drain = admin_drain, .active = admin_active,
    .net = admin_net, .freed = admin_freed, .finish = admin_finish,
};
