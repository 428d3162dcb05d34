/* Timers in an intrusive binary min-heap ordered by (due, seq). The heap node (parent,
 * left, right) lives in the timer itself, so starting a timer never allocates and
 * cannot fail: an idle timeout or a close deadline is never dropped for want of memory.
 * The tree is kept complete by addressing nodes by their 1-based position: the path
 * from the root to position n follows the bits of n below its top bit (0 left, 1 right).
 * Start, stop and re-arm are O(log n); the next deadline is O(1).
 *
 * Connections use one timer each with lazy re-arming: I/O only records a time stamp,
 * and the timer, when it fires early, re-arms for the rest. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

static int less(const pier_timer_t *a, const pier_timer_t *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

/* Swaps a node with its parent p (child is p's left or right child). */
static void swap_with_parent(pier_loop_t *loop, pier_timer_t *p, pier_timer_t *child) {
    pier_timer_t *sib, *t;
    pier_timer_t *cl = child->heap_left, *cr = child->heap_right;
    if (p->heap_left == child) {
        sib = p->heap_right;
        child->heap_left = p;
        child->heap_right = sib;
    } else {
        sib = p->heap_left;
        child->heap_left = sib;
        child->heap_right = p;
    }
    if (sib)
        sib->heap_parent = child;
    p->heap_left = cl;
    p->heap_right = cr;
    if (cl)
        cl->heap_parent = p;
    if (cr)
        cr->heap_parent = p;
    t = p->heap_parent;
    child->heap_parent = t;
    p->heap_parent = child;
    if (!t)
        loop->heap_min = child;
    else if (t->heap_left == p)
        t->heap_left = child;
    else
        t->heap_right = child;
}

/* The link that holds (or would hold) the node at 1-based position n, and its parent. */
static pier_timer_t **slot_of(pier_loop_t *loop, uint64_t n, pier_timer_t **parent) {
    pier_timer_t **link = &loop->heap_min;
    *parent = NULL;
    int bits = 63 - __builtin_clzll(n);
    for (int b = bits - 1; b >= 0; b--) {
        *parent = *link;
        link = (n >> b) & 1 ? &(*link)->heap_right : &(*link)->heap_left;
    }
    return link;
}

static void sift_up(pier_loop_t *loop, pier_timer_t *t) {
    while (t->heap_parent && less(t, t->heap_parent))
        swap_with_parent(loop, t->heap_parent, t);
}

static void sift_down(pier_loop_t *loop, pier_timer_t *t) {
    for (;;) {
        pier_timer_t *m = t;
        if (t->heap_left && less(t->heap_left, m))
            m = t->heap_left;
        if (t->heap_right && less(t->heap_right, m))
            m = t->heap_right;
        if (m == t)
            return;
        swap_with_parent(loop, t, m);
    }
}

static void heap_insert(pier_loop_t *loop, pier_timer_t *t) {
    pier_timer_t *parent;
    pier_timer_t **link = slot_of(loop, ++loop->heap_len, &parent);
    t->heap_left = t->heap_right = NULL;
    t->heap_parent = parent;
    *link = t;
    sift_up(loop, t);
}

static void heap_remove(pier_loop_t *loop, pier_timer_t *t) {
    pier_timer_t *parent;
    pier_timer_t **link = slot_of(loop, loop->heap_len--, &parent);
    pier_timer_t *last = *link;
    *link = NULL; /* detach the last node */
    if (last == t)
        return;
    /* the last node takes t's place, then moves up or down */
    last->heap_left = t->heap_left;
    last->heap_right = t->heap_right;
    last->heap_parent = t->heap_parent;
    if (last->heap_left)
        last->heap_left->heap_parent = last;
    if (last->heap_right)
        last->heap_right->heap_parent = last;
    if (!t->heap_parent)
        loop->heap_min = last;
    else if (t->heap_parent->heap_left == t)
        t->heap_parent->heap_left = last;
    else
        t->heap_parent->heap_right = last;
    sift_down(loop, last);
    sift_up(loop, last);
}

void pier_timer_init(pier_loop_t *loop, pier_timer_t *t, pier_timer_cb cb, void *data) {
    t->loop = loop;
    t->cb = cb;
    t->data = data;
    t->due = t->repeat = t->seq = 0;
    t->heap_parent = t->heap_left = t->heap_right = NULL;
    t->active = 0;
}

void pier_timer_start(pier_timer_t *t, uint64_t timeout_ms, uint64_t repeat_ms) {
    pier_loop_t *loop = t->loop;
    /* Inside an iteration the cached time is this iteration's (cheap, and what its
     * callbacks count from); between iterations it may be old by any amount, and a
     * timeout counted from it would fire early. */
    if (!loop->dispatching)
        loop->now = pier__clock_ms();
    t->due = loop->now + timeout_ms;
    t->repeat = repeat_ms;
    t->seq = loop->timer_seq++;
    if (t->active) {
        /* re-arming moves the node from where it is: no walk to the last node */
        sift_down(loop, t);
        sift_up(loop, t);
        return;
    }
    heap_insert(loop, t);
    t->active = 1;
    loop->handles++;
}

void pier_timer_stop(pier_timer_t *t) {
    if (!t->active)
        return;
    heap_remove(t->loop, t);
    t->heap_parent = t->heap_left = t->heap_right = NULL;
    t->active = 0;
    t->loop->handles--;
}

int pier_timer_active(const pier_timer_t *t) { return t->active; }

uint64_t pier__timers_next(pier_loop_t *loop) {
    if (!loop->heap_min)
        return UINT64_MAX;
    uint64_t due = loop->heap_min->due, now = pier__clock_ms();
    return due > now ? due - now : 0;
}

void pier__timers_run(pier_loop_t *loop) {
    /* timers started by a callback for "now" wait for the next iteration, so a timer
     * that re-arms itself with 0 cannot spin this loop forever */
    uint64_t limit = loop->timer_seq;
    while (loop->heap_min) {
        pier_timer_t *t = loop->heap_min;
        if (t->due > loop->now || t->seq >= limit)
            break;
        /* a repeating timer moves in place to its next due time (its new seq keeps it
         * out of this pass); a one-shot one leaves the heap */
        if (t->repeat)
            pier_timer_start(t, t->repeat, t->repeat);
        else
            pier_timer_stop(t);
        t->cb(t);
    }
}
