/* Timers in a binary min-heap ordered by (due, seq). Start, stop and re-arm are
 * O(log n); the next deadline is O(1). Each timer stores its heap index, so stopping
 * one needs no search. Connections use one timer each with lazy re-arming: I/O only
 * records a time stamp, and the timer, when it fires early, re-arms for the rest. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define NOT_ACTIVE UINT32_MAX

static int less(const pier_timer_t *a, const pier_timer_t *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void place(pier_loop_t *loop, uint32_t i, pier_timer_t *t) {
    loop->heap[i] = t;
    t->heap_idx = i;
}

static void sift_up(pier_loop_t *loop, uint32_t i) {
    pier_timer_t *t = loop->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!less(t, loop->heap[parent]))
            break;
        place(loop, i, loop->heap[parent]);
        i = parent;
    }
    place(loop, i, t);
}

static void sift_down(pier_loop_t *loop, uint32_t i) {
    pier_timer_t *t = loop->heap[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= loop->heap_len)
            break;
        if (child + 1 < loop->heap_len && less(loop->heap[child + 1], loop->heap[child]))
            child++;
        if (!less(loop->heap[child], t))
            break;
        place(loop, i, loop->heap[child]);
        i = child;
    }
    place(loop, i, t);
}

static void heap_remove(pier_loop_t *loop, pier_timer_t *t) {
    uint32_t i = t->heap_idx;
    pier_timer_t *last = loop->heap[--loop->heap_len];
    t->heap_idx = NOT_ACTIVE;
    loop->handles--;
    if (last == t)
        return;
    place(loop, i, last);
    if (i > 0 && less(last, loop->heap[(i - 1) / 2]))
        sift_up(loop, i);
    else
        sift_down(loop, i);
}

void pier_timer_init(pier_loop_t *loop, pier_timer_t *t, pier_timer_cb cb, void *data) {
    t->loop = loop;
    t->cb = cb;
    t->data = data;
    t->due = t->repeat = t->seq = 0;
    t->heap_idx = NOT_ACTIVE;
}

int pier_timer_start(pier_timer_t *t, uint64_t timeout_ms, uint64_t repeat_ms) {
    pier_loop_t *loop = t->loop;
    if (t->heap_idx != NOT_ACTIVE)
        heap_remove(loop, t);
    if (loop->heap_len == loop->heap_cap) {
        uint32_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
        pier_timer_t **heap = realloc(loop->heap, cap * sizeof *heap);
        if (!heap)
            return -ENOMEM;
        loop->heap = heap;
        loop->heap_cap = cap;
    }
    t->due = loop->now + timeout_ms;
    t->repeat = repeat_ms;
    t->seq = loop->timer_seq++;
    loop->heap[loop->heap_len] = t;
    sift_up(loop, loop->heap_len++);
    loop->handles++;
    return 0;
}

void pier_timer_stop(pier_timer_t *t) {
    if (t->heap_idx != NOT_ACTIVE)
        heap_remove(t->loop, t);
}

int pier_timer_active(const pier_timer_t *t) { return t->heap_idx != NOT_ACTIVE; }

uint64_t pier__timers_next(pier_loop_t *loop) {
    if (loop->heap_len == 0)
        return UINT64_MAX;
    uint64_t due = loop->heap[0]->due, now = pier__clock_ms();
    return due > now ? due - now : 0;
}

void pier__timers_run(pier_loop_t *loop) {
    /* timers started by a callback for "now" wait for the next iteration, so a timer
     * that re-arms itself with 0 cannot spin this loop forever */
    uint64_t limit = loop->timer_seq;
    while (loop->heap_len > 0) {
        pier_timer_t *t = loop->heap[0];
        if (t->due > loop->now || t->seq >= limit)
            break;
        heap_remove(loop, t);
        if (t->repeat)
            pier_timer_start(t, t->repeat, t->repeat);
        t->cb(t);
    }
}
