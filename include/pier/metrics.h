/* pier metrics: counters kept by every loop, summed on demand, and written in the
 * Prometheus text exposition format.
 *
 *   pier_metrics_t m;
 *   pier_metrics_snapshot_group(group, &m);          // any thread, while the loops live
 *   size_t need = pier_metrics_prometheus(&m, buf, sizeof buf);
 *
 * Each loop owns its own block of counters and is the only thread that writes it, with
 * plain increments (no lock, no read-modify-write bus lock). Other threads read it with
 * relaxed atomic loads, so a snapshot taken while loops run is a sum of values that were
 * each true at some moment of the read: monotonic per counter, though two counters may be
 * a few events apart. Nothing is posted to the loops, so a scrape never waits for a busy
 * loop and never adds work to it.
 *
 * Ownership: the snapshot is the caller's plain struct. The loops (or the group) passed
 * must stay alive for the length of the call. Later versions may add fields at the end of
 * pier_metrics_t: a program is built against the header of the library it runs with.
 *
 * Errors: functions return 0 or a negative errno.
 */
#ifndef PIER_METRICS_H
#define PIER_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Why a connection closed: its error as on_close saw it. clean: 0 (a graceful end);
 * reset: -ECONNRESET or -EPIPE; timeout: -ETIMEDOUT (idle, header or body deadlines,
 * a close that could not flush); error: anything else. */
enum { PIER_CLOSE_CLEAN, PIER_CLOSE_RESET, PIER_CLOSE_TIMEOUT, PIER_CLOSE_ERROR, PIER_CLOSE_REASONS };

/* HTTP request methods counted apart; every other method (and a request too malformed
 * to name one) counts as PIER_METRICS_OTHER. */
enum {
    PIER_METRICS_GET, PIER_METRICS_HEAD, PIER_METRICS_POST, PIER_METRICS_PUT, PIER_METRICS_DELETE,
    PIER_METRICS_PATCH, PIER_METRICS_OPTIONS, PIER_METRICS_OTHER, PIER_METRICS_METHODS
};
#define PIER_METRICS_CLASSES 5 /* status 1xx .. 5xx */
/* Request durations: the upper bounds of the buckets in milliseconds, the last one +Inf.
 * A duration runs from the loop iteration in which the request head arrived to the one
 * in which its response was complete, on the loop's cached clock. */
#define PIER_METRICS_DURATION_BOUNDS_MS {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}
#define PIER_METRICS_BUCKETS 14
/* Message frames by id: the first 16 ids the process's message servers registered
 * (handlers, ping and pong) have a slot each, and every other id shares the last one, so
 * the label set stays bounded whatever ids peers send. */
#define PIER_METRICS_MSG_IDS 17

typedef struct pier_metrics_s {
    uint64_t conns_accepted;      /* by servers */
    uint64_t conns_opened;        /* accepted, and made by clients */
    uint64_t conns_closed[PIER_CLOSE_REASONS];
    uint64_t bytes_in, bytes_out; /* what the protocols read and wrote (plaintext under TLS) */
    uint64_t http_requests[PIER_METRICS_METHODS][PIER_METRICS_CLASSES]; /* by response status */
    uint64_t http_duration[PIER_METRICS_BUCKETS]; /* per bucket, not cumulative */
    uint64_t http_duration_ms_sum;
    uint64_t msg_frames[PIER_METRICS_MSG_IDS];    /* frames read by servers, by slot */
    uint64_t msg_frame_ids[PIER_METRICS_MSG_IDS - 1]; /* the id of each slot, UINT64_MAX if
                                                   * none (set by the snapshot, not summed) */
    uint64_t msg_heartbeat_drops; /* connections closed for silence */
    uint64_t msg_jobs_queued, msg_jobs_done;      /* to the worker pool and back */
    uint64_t tls_handshakes_ok, tls_handshakes_failed, tls_handshakes_resumed;
    uint64_t ws_messages_in, ws_messages_out;
    /* PROXY headers by outcome, in the order of pier_proxy_stats_t: ok, local, bad,
     * timeout, refused, aborted (the last four closed the connection) */
    uint64_t proxy_headers[6];
} pier_metrics_t;

/* Sums the counters of n loops into *out (which it zeroes first). Any thread. -EINVAL
 * for a NULL out, or a NULL loop. */
PIER_EXTERN int pier_metrics_snapshot(pier_loop_t *const *loops, size_t n, pier_metrics_t *out);
/* The same over every loop of a group. */
PIER_EXTERN int pier_metrics_snapshot_group(const pier_group_t *g, pier_metrics_t *out);

/* Connections open at the moment of the snapshot. */
PIER_EXTERN uint64_t pier_metrics_open(const pier_metrics_t *m);
/* Worker queue depth: messages handed to workers whose results are not back yet. */
PIER_EXTERN uint64_t pier_metrics_msg_queue_depth(const pier_metrics_t *m);
/* HTTP requests answered, all methods and classes. */
PIER_EXTERN uint64_t pier_metrics_http_total(const pier_metrics_t *m);

/* Writes m in the Prometheus text exposition format (version 0.0.4) into buf, NUL
 * terminated, as snprintf does: returns the length the whole text needs (without the
 * NUL), which is larger than size - 1 when buf was too small (then call again with a
 * larger one). Metric names start with "pier_". */
PIER_EXTERN size_t pier_metrics_prometheus(const pier_metrics_t *m, char *buf, size_t size);

#ifdef __cplusplus
}
#endif
#endif
