/* Summing the loops' counters, and the Prometheus text writer. */
#include "metrics/metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "loop/layer.h"

static const uint64_t bounds_ms[PIER_METRICS_BUCKETS - 1] = PIER_METRICS_DURATION_BOUNDS_MS;

int pier__mx_close_reason(int err) {
    switch (err) {
    case 0: return PIER_CLOSE_CLEAN;
    case -ECONNRESET:
    case -EPIPE: return PIER_CLOSE_RESET;
    case -ETIMEDOUT: return PIER_CLOSE_TIMEOUT;
    default: return PIER_CLOSE_ERROR;
    }
}

void pier__mx_http(pier__metrics_t *m, unsigned method, int status, uint64_t ms) {
    int cls = status / 100 - 1;
    if (cls < 0 || cls >= PIER_METRICS_CLASSES)
        cls = PIER_METRICS_CLASSES - 1; /* 600..999: the application's own; counted as 5xx */
    if (method >= PIER_METRICS_METHODS)
        method = PIER_METRICS_OTHER;
    pier__mx_inc(m, PIER__MX(http_requests) + method * PIER_METRICS_CLASSES + (unsigned)cls);
    unsigned b = 0;
    while (b < PIER_METRICS_BUCKETS - 1 && ms > bounds_ms[b])
        b++;
    pier__mx_inc(m, PIER__MX(http_duration) + b);
    pier__mx_add(m, PIER__MX(http_duration_ms_sum), ms);
}

/* ---- message frame ids ---- */

_Atomic uint8_t pier__mx_msg_slots[65536];
static _Atomic uint64_t slot_ids[PIER_METRICS_MSG_IDS - 1];
static unsigned nslots;
static pthread_mutex_t slots_mu = PTHREAD_MUTEX_INITIALIZER;

void pier__mx_msg_track(uint16_t id) {
    pthread_mutex_lock(&slots_mu);
    if (!atomic_load_explicit(&pier__mx_msg_slots[id], memory_order_relaxed) && nslots < PIER_METRICS_MSG_IDS - 1) {
        atomic_store_explicit(&slot_ids[nslots], id, memory_order_relaxed);
        nslots++;
        atomic_store_explicit(&pier__mx_msg_slots[id], (uint8_t)nslots, memory_order_relaxed);
    }
    pthread_mutex_unlock(&slots_mu);
}

/* ---- reading, from any thread ---- */

static void add_loop(uint64_t *sum, pier_loop_t *loop) {
    const pier__metrics_t *m = pier__loop_metrics(loop);
    for (size_t k = 0; k < PIER__MX_N; k++)
        sum[k] += atomic_load_explicit(&m->c[k], memory_order_relaxed);
}

/* The ids are the process's, not the loops': they replace the sums. */
static void finish(uint64_t *sum, pier_metrics_t *out) {
    memcpy(out, sum, sizeof *out);
    for (int i = 0; i < PIER_METRICS_MSG_IDS - 1; i++) {
        uint8_t has = 0;
        uint64_t id = atomic_load_explicit(&slot_ids[i], memory_order_relaxed);
        if (id < 65536)
            has = atomic_load_explicit(&pier__mx_msg_slots[id], memory_order_relaxed) == i + 1;
        out->msg_frame_ids[i] = has ? id : UINT64_MAX;
    }
}

int pier_metrics_snapshot(pier_loop_t *const *loops, size_t n, pier_metrics_t *out) {
    if (!out || (n && !loops))
        return -EINVAL;
    uint64_t sum[PIER__MX_N] = {0};
    for (size_t i = 0; i < n; i++) {
        if (!loops[i])
            return -EINVAL;
        add_loop(sum, loops[i]);
    }
    finish(sum, out);
    return 0;
}

int pier_metrics_snapshot_group(const pier_group_t *g, pier_metrics_t *out) {
    if (!g || !out)
        return -EINVAL;
    uint64_t sum[PIER__MX_N] = {0};
    for (unsigned i = 0; i < pier_group_size(g); i++)
        add_loop(sum, pier_group_loop(g, i));
    finish(sum, out);
    return 0;
}

uint64_t pier_metrics_open(const pier_metrics_t *m) {
    uint64_t closed = 0;
    for (int i = 0; i < PIER_CLOSE_REASONS; i++)
        closed += m->conns_closed[i];
    /* each loop's pair is read a moment apart: never report a negative count */
    return m->conns_opened > closed ? m->conns_opened - closed : 0;
}

uint64_t pier_metrics_msg_queue_depth(const pier_metrics_t *m) {
    return m->msg_jobs_queued > m->msg_jobs_done ? m->msg_jobs_queued - m->msg_jobs_done : 0;
}

uint64_t pier_metrics_http_total(const pier_metrics_t *m) {
    uint64_t n = 0;
    for (int i = 0; i < PIER_METRICS_METHODS; i++)
        for (int k = 0; k < PIER_METRICS_CLASSES; k++)
            n += m->http_requests[i][k];
    return n;
}

/* ---- the Prometheus text format ---- */

typedef struct {
    char *buf;
    size_t size, len;
} out_t;

__attribute__((format(printf, 2, 3))) static void put(out_t *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->len < o->size ? o->size - o->len : 0;
    int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n;
}

static void family(out_t *o, const char *name, const char *type, const char *help) {
    put(o, "# HELP pier_%s %s\n# TYPE pier_%s %s\n", name, help, name, type);
}

static void one(out_t *o, const char *name, const char *type, const char *help, uint64_t v) {
    family(o, name, type, help);
    put(o, "pier_%s %llu\n", name, (unsigned long long)v);
}

static void conns(out_t *o, const pier_metrics_t *m) {
    static const char *const reasons[PIER_CLOSE_REASONS] = {"clean", "reset", "timeout", "error"};
    one(o, "connections_accepted_total", "counter", "Connections accepted by servers.", m->conns_accepted);
    one(o, "connections_open", "gauge", "Connections open now.", pier_metrics_open(m));
    family(o, "connections_closed_total", "counter", "Connections closed, by reason.");
    for (int i = 0; i < PIER_CLOSE_REASONS; i++)
        put(o, "pier_connections_closed_total{reason=\"%s\"} %llu\n", reasons[i],
            (unsigned long long)m->conns_closed[i]);
    one(o, "bytes_received_total", "counter", "Bytes read by the protocols.", m->bytes_in);
    one(o, "bytes_sent_total", "counter", "Bytes written by the protocols.", m->bytes_out);
}

static void http(out_t *o, const pier_metrics_t *m) {
    static const char *const methods[PIER_METRICS_METHODS] = {"GET",   "HEAD",    "POST", "PUT",
                                                             "DELETE", "PATCH", "OPTIONS", "other"};
    family(o, "http_requests_total", "counter", "HTTP responses, by request method and status class.");
    for (int i = 0; i < PIER_METRICS_METHODS; i++)
        for (int k = 0; k < PIER_METRICS_CLASSES; k++)
            put(o, "pier_http_requests_total{method=\"%s\",status=\"%dxx\"} %llu\n", methods[i], k + 1,
                (unsigned long long)m->http_requests[i][k]);
    family(o, "http_request_duration_seconds", "histogram", "HTTP request durations, head to complete response.");
    uint64_t cum = 0;
    for (int b = 0; b < PIER_METRICS_BUCKETS - 1; b++) {
        cum += m->http_duration[b];
        put(o, "pier_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n", (double)bounds_ms[b] / 1000.0,
            (unsigned long long)cum);
    }
    cum += m->http_duration[PIER_METRICS_BUCKETS - 1];
    put(o, "pier_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    put(o, "pier_http_request_duration_seconds_sum %.3f\n", (double)m->http_duration_ms_sum / 1000.0);
    put(o, "pier_http_request_duration_seconds_count %llu\n", (unsigned long long)cum);
}

static void msg(out_t *o, const pier_metrics_t *m) {
    family(o, "msg_frames_total", "counter", "Message frames read by servers, by id (other: past the first 16 ids).");
    for (int i = 0; i < PIER_METRICS_MSG_IDS - 1; i++)
        if (m->msg_frame_ids[i] != UINT64_MAX)
            put(o, "pier_msg_frames_total{id=\"%llu\"} %llu\n", (unsigned long long)m->msg_frame_ids[i],
                (unsigned long long)m->msg_frames[i]);
    put(o, "pier_msg_frames_total{id=\"other\"} %llu\n", (unsigned long long)m->msg_frames[PIER_METRICS_MSG_IDS - 1]);
    one(o, "msg_heartbeat_drops_total", "counter", "Message connections closed for silence.",
        m->msg_heartbeat_drops);
    one(o, "msg_worker_queue_depth", "gauge", "Messages handed to workers and not answered yet.",
        pier_metrics_msg_queue_depth(m));
}

static void tls_ws(out_t *o, const pier_metrics_t *m) {
    family(o, "tls_handshakes_total", "counter", "TLS handshakes, by result (resumed: also counted as ok).");
    put(o, "pier_tls_handshakes_total{result=\"ok\"} %llu\n", (unsigned long long)m->tls_handshakes_ok);
    put(o, "pier_tls_handshakes_total{result=\"failed\"} %llu\n", (unsigned long long)m->tls_handshakes_failed);
    put(o, "pier_tls_handshakes_total{result=\"resumed\"} %llu\n", (unsigned long long)m->tls_handshakes_resumed);
    family(o, "ws_messages_total", "counter", "WebSocket messages, by direction.");
    put(o, "pier_ws_messages_total{direction=\"in\"} %llu\n", (unsigned long long)m->ws_messages_in);
    put(o, "pier_ws_messages_total{direction=\"out\"} %llu\n", (unsigned long long)m->ws_messages_out);
    static const char *const outcomes[6] = {"ok", "local", "bad", "timeout", "refused", "aborted"};
    family(o, "proxy_headers_total", "counter",
           "PROXY protocol headers, by outcome (bad, timeout, refused and aborted closed the connection).");
    for (int i = 0; i < 6; i++)
        put(o, "pier_proxy_headers_total{outcome=\"%s\"} %llu\n", outcomes[i],
            (unsigned long long)m->proxy_headers[i]);
}

size_t pier_metrics_prometheus(const pier_metrics_t *m, char *buf, size_t size) {
    out_t o = {.buf = buf, .size = buf ? size : 0};
    if (o.size)
        buf[0] = '\0';
    conns(&o, m);
    http(&o, m);
    msg(&o, m);
    tls_ws(&o, m);
    return o.len;
}
