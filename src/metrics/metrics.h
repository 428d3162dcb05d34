/* The loop's block of counters, and the increments the layers make in it.
 *
 * The block mirrors pier_metrics_t field for field, as relaxed atomics. Only the loop's
 * own thread writes it, so an increment is a relaxed load and a relaxed store of the
 * sum: plain moves on x86-64 and arm64, no lock prefix, and no data race for a reader on
 * another thread (TSan agrees). A read-modify-write (atomic_fetch_add) would cost a
 * locked instruction per event for nothing, since no two threads ever write one block.
 *
 * Not installed. A layer reaches its loop's block with pier__loop_metrics (loop/layer.h). */
#ifndef PIER_METRICS_METRICS_H
#define PIER_METRICS_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <pier/metrics.h>

#define PIER__MX_N (sizeof(pier_metrics_t) / sizeof(uint64_t))

typedef struct pier__metrics_s {
    _Atomic uint64_t c[PIER__MX_N];
} pier__metrics_t;

_Static_assert(sizeof(_Atomic uint64_t) == sizeof(uint64_t), "a counter is one 64-bit word");
_Static_assert(sizeof(pier_metrics_t) % sizeof(uint64_t) == 0, "pier_metrics_t holds counters only");

/* The slot of a field of pier_metrics_t: PIER__MX(bytes_in), PIER__MX(conns_closed) + i. */
#define PIER__MX(field) (offsetof(pier_metrics_t, field) / sizeof(uint64_t))

/* Built with -DPIER_NO_METRICS nothing is counted: only to measure what counting costs
 * (the metrics tests then fail, as they should). */
static inline void pier__mx_add(pier__metrics_t *m, size_t slot, uint64_t n) {
#ifndef PIER_NO_METRICS
    _Atomic uint64_t *c = &m->c[slot];
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
#endif
}
static inline void pier__mx_inc(pier__metrics_t *m, size_t slot) { pier__mx_add(m, slot, 1); }

/* Message frame ids with a slot of their own: slot + 1, or 0 for "other". */
extern _Atomic uint8_t pier__mx_msg_slots[65536];
/* Gives id a slot if one is left and it has none (any thread; at registration). */
void pier__mx_msg_track(uint16_t id);
static inline void pier__mx_msg_frame(pier__metrics_t *m, uint16_t id) {
    unsigned s = atomic_load_explicit(&pier__mx_msg_slots[id], memory_order_relaxed);
    pier__mx_inc(m, PIER__MX(msg_frames) + (s ? s - 1 : PIER_METRICS_MSG_IDS - 1));
}

/* The close reason of an on_close error (PIER_CLOSE_*). */
int pier__mx_close_reason(int err);
/* Counts an HTTP response: method (a PIER_METRICS_* index), status and duration. */
void pier__mx_http(pier__metrics_t *m, unsigned method, int status, uint64_t ms);

#endif
