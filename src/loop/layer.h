/* What the loop offers the library's other layers (net, and through it the protocols),
 * beyond the public loop.h. The loop itself knows nothing of those layers: it polls
 * descriptors, and runs deferred passes whose nodes the layers queue.
 *
 * Not installed. A layer includes this header, never loop/internal.h. */
#ifndef PIER_LOOP_LAYER_H
#define PIER_LOOP_LAYER_H

#include <stdatomic.h>
#include <stdint.h>

#include <pier/loop.h>
#include "queue.h"

#define PIER__READ_BUF (64 * 1024) /* the loop's shared read buffer */
#define PIER__CHUNK (16 * 1024)    /* size of a cached output chunk */

/* ---- descriptors in the loop's epoll set ---- */

/* Anything with an fd in the loop's epoll set starts with this. */
typedef struct pier__io_s pier__io_t;
typedef void (*pier__io_cb)(pier_loop_t *loop, pier__io_t *io, uint32_t events);
struct pier__io_s {
    int fd;
    uint32_t events;  /* as last given to pier__io_add or pier__io_mod */
    pier__io_cb cb;
};

int pier__io_add(pier_loop_t *loop, pier__io_t *io, uint32_t events);
int pier__io_mod(pier_loop_t *loop, pier__io_t *io, uint32_t events);
void pier__io_del(pier_loop_t *loop, pier__io_t *io);

/* ---- deferred passes ----
 *
 * A layer that needs work done once per iteration queues an intrusive node, with its
 * callback, in one of the loop's passes. After each epoll batch the loop runs, in this
 * fixed order:
 *   PIER__PASS_READ   nodes queued before the pass began (a node queued again while it
 *                     runs waits for the next iteration, so one busy peer cannot starve
 *                     the others); then due timers, then posted tasks;
 *   PIER__PASS_FLUSH  until empty (output queued this iteration goes out together);
 *   PIER__PASS_CLOSE  until empty (finishing closes after every callback has returned).
 * A queued node is run once and unlinked before its callback, which may queue it again.
 * While any pass has nodes, the loop does not sleep in epoll. */
enum { PIER__PASS_READ, PIER__PASS_FLUSH, PIER__PASS_CLOSE, PIER__PASSES };

typedef struct pier__pending_s pier__pending_t;
typedef void (*pier__pending_cb)(pier__pending_t *p);
struct pier__pending_s {
    pier__queue_t q;
    pier__pending_cb cb;
};

static inline void pier__pending_init(pier__pending_t *p, pier__pending_cb cb) {
    pier__queue_init(&p->q);
    p->cb = cb;
}
static inline int pier__pending_queued(const pier__pending_t *p) { return pier__queue_linked(&p->q); }
void pier__pending_insert(pier_loop_t *loop, int pass, pier__pending_t *p);
/* Queues p in pass (a no-op if it is already queued, in any pass). */
static inline void pier__pending_add(pier_loop_t *loop, int pass, pier__pending_t *p) {
    if (!pier__queue_linked(&p->q))
        pier__pending_insert(loop, pass, p);
}
/* Unqueues p; a no-op if it is not queued. */
static inline void pier__pending_cancel(pier__pending_t *p) {
    if (pier__queue_linked(&p->q))
        pier__queue_remove(&p->q);
}

/* ---- deadline lists ----
 *
 * Many objects with the same timeout (every idle connection of a server, say) share one
 * list per loop and timeout, ordered by when each was last put at its tail, and one loop
 * timer for the list's head: what an object pays for its deadline is a node, not a timer
 * in the heap. Putting a node at the tail again (activity) is O(1); a list whose head is
 * due runs its callback for each due node, which has been unlinked first. Lists live
 * until the loop is freed, so a list taken once (pier__dlist_get) can be used later
 * without a failure path. */
typedef struct pier__dlist_s pier__dlist_t;
typedef struct pier__dlnode_s pier__dlnode_t;
typedef void (*pier__dl_cb)(pier__dlnode_t *n);
struct pier__dlnode_s {
    pier__queue_t q;
    /* The list it is in: 1 + its index in the loop (low 24 bits; 0: none), and the
     * list's time unit as a shift (high 8 bits: a unit is 2^shift ms; PIER__DL_NEVER for
     * a list without a timer, whose nodes activity need not move). */
    uint32_t list;
    uint32_t stamp;      /* loop time in the list's units (modulo 2^32) when put at the tail */
};
#define PIER__DL_NEVER 0xffu

/* The loop's list for (ms, cb), created on first use; NULL when out of memory. A list
 * with ms 0 has no timer: its nodes are never due (an object without a timeout can
 * still be found through the lists). A list counts time in units of up to ms/64 (a
 * power of two), so that a busy node moves at most once per unit: a deadline comes at
 * most one unit late, never early. Timeouts are capped at 2^31 ms (24 days). */
pier__dlist_t *pier__dlist_get(pier_loop_t *loop, uint64_t ms, pier__dl_cb cb);
static inline void pier__dlnode_init(pier__dlnode_t *n) {
    pier__queue_init(&n->q);
    n->list = 0;
}
/* Puts n at the tail of l (taking it out of any list it was in): due in l's timeout. */
void pier__dl_start(pier__dlist_t *l, pier__dlnode_t *n);
/* Takes n out of its list; a no-op if it is in none (inline: the common case). */
void pier__dl_unlink(pier_loop_t *loop, pier__dlnode_t *n);
static inline void pier__dl_stop(pier_loop_t *loop, pier__dlnode_t *n) {
    if (n->list)
        pier__dl_unlink(loop, n);
}
/* Activity: n's deadline restarts from now. */
void pier__dl_touch_slow(pier_loop_t *loop, pier__dlnode_t *n);
/* 1 if activity now must move n: it is in a list with a timer and its unit has passed. */
static inline int pier__dl_stale(const pier__dlnode_t *n, uint64_t now) {
    uint32_t shift = n->list >> 24;
    return n->list && shift != PIER__DL_NEVER && n->stamp != (uint32_t)now >> shift;
}
/* Calls fn for each node of every list whose callback is cb. fn may move the node to
 * another list, or stop it; a node moved to a list not yet walked is seen again. */
void pier__dl_each(pier_loop_t *loop, pier__dl_cb cb, void (*fn)(pier__dlnode_t *n, void *arg), void *arg);
static inline void pier__dl_touch(pier_loop_t *loop, pier__dlnode_t *n) {
    if (pier__dl_stale(n, pier_loop_now(loop)))
        pier__dl_touch_slow(loop, n);
}

/* ---- resources shared by a loop's connections ---- */

/* The loop's PIER__READ_BUF-byte read buffer: valid until the caller returns to the loop. */
char *pier__loop_rbuf(pier_loop_t *loop);
/* Output chunks of PIER__CHUNK bytes, cached per loop. get: NULL when out of memory. */
void *pier__chunk_get(pier_loop_t *loop);
void pier__chunk_put(pier_loop_t *loop, void *chunk);
/* Small objects that come and go with a connection's activity (the part it needs only
 * while data waits, a protocol's per-request state), cached per loop and per kind so
 * that taking one back costs a few stores and no allocator call. A kind's objects go
 * only to that kind, so a kind may give its objects back in a known state and skip
 * clearing them: get sets *fresh to 1 for new memory (uninitialised) and to 0 for an
 * object of the kind given back, whose contents are as put, except the first
 * pointer-sized word (the cache links through it). A kind always asks for one size, up
 * to PIER__OBJ_MAX. get: NULL when out of memory. Inline, as they run for most reads
 * and writes: the caches sit at the start of the loop struct (pier__loop_head_t). */
#define PIER__OBJ_MAX 1024
#define PIER__OBJ_CACHE 256 /* objects kept per kind for reuse */
enum { PIER__OBJ_CONN, PIER__OBJ_HTTP, PIER__OBJ_KINDS };
typedef struct pier__objcache_s {
    void *head;             /* a free list linked through each object's first word */
    unsigned n;
} pier__objcache_t;
/* What every loop struct starts with, for the inline functions of this header. */
typedef struct pier__loop_head_s {
    struct pier__metrics_s *mx; /* the loop's counters (pier__loop_metrics) */
    pier__objcache_t objs[PIER__OBJ_KINDS];
} pier__loop_head_t;

void *pier__obj_new(size_t size);
static inline void *pier__obj_get(pier_loop_t *loop, unsigned kind, size_t size, int *fresh) {
    pier__objcache_t *oc = &((pier__loop_head_t *)(void *)loop)->objs[kind];
    void *obj = oc->head;
    *fresh = !obj;
    if (!obj)
        return pier__obj_new(size);
    oc->head = *(void **)obj;
    oc->n--;
    return obj;
}
void pier__obj_free(void *obj);
static inline void pier__obj_put(pier_loop_t *loop, unsigned kind, void *obj) {
    pier__objcache_t *oc = &((pier__loop_head_t *)(void *)loop)->objs[kind];
    if (oc->n >= PIER__OBJ_CACHE) {
        pier__obj_free(obj);
        return;
    }
    *(void **)obj = oc->head;
    oc->head = obj;
    oc->n++;
}
/* Counts a live handle (an open connection, a listener, a client) against the loop, so
 * pier_loop_free refuses while it lives. */
void pier__loop_handle_add(pier_loop_t *loop);
void pier__loop_handle_del(pier_loop_t *loop);

/* The loop's counters (metrics/metrics.h): written by the loop's thread only, read by
 * any (pier_metrics_snapshot). The loop struct starts with a pointer to them, so that an
 * increment on every read and write costs no call. */
static inline struct pier__metrics_s *pier__loop_metrics(pier_loop_t *loop) {
    return ((pier__loop_head_t *)(void *)loop)->mx;
}

/* Rate-limited logging: logs at most once per second per key. */
void pier__log_every(atomic_uint_fast64_t *last_ms, uint64_t now, int level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

uint64_t pier__clock_ms(void);

#endif
