/* Deadline lists (layer.h): one loop timer per (timeout, callback) instead of one per
 * object. Nodes enter at the tail stamped with the loop's time, so a list is ordered by
 * due time and only its head needs a timer. The timer is armed when a node enters an
 * empty list and, when it fires, runs the due nodes and re-arms for the new head; a head
 * that left early makes it fire for nothing once, never late. A node names its list by
 * index (lists live as long as the loop), and its stamp is the loop's time modulo 2^32,
 * so that a node costs 24 bytes. */
#include "internal.h"

#include <stdlib.h>

#define MAX_MS ((uint64_t)INT32_MAX)

struct pier__dlist_s {
    pier__queue_t nodes;
    pier_timer_t timer;
    uint32_t ms;
    uint32_t tag;        /* what a node's list field holds: 1 + index, and the shift */
    uint32_t shift;      /* the time unit: 2^shift ms */
    pier__dl_cb cb;
};

static uint32_t unit_shift(uint64_t ms) {
    if (!ms)
        return PIER__DL_NEVER;
    uint32_t shift = 0;
    while (((uint64_t)2 << shift) <= ms / 64)
        shift++;
    return shift;
}

static void dlist_timer_cb(pier_timer_t *t);

/* A list's timer does not keep the loop alive (its nodes' owners do), and it stays armed
 * when the list empties: a list that empties and fills again with every request (one
 * connection's request deadline) then costs no timer operation. It fires once for
 * nothing and is not armed again. handles: the loop's count without it. */
static void weak_start(pier__dlist_t *l, uint64_t ms) {
    pier_timer_start(&l->timer, ms, 0);
    l->timer.loop->handles--;
}

static void weak_stop(pier__dlist_t *l) {
    if (pier_timer_active(&l->timer)) {
        pier_timer_stop(&l->timer);
        l->timer.loop->handles++;
    }
}

pier__dlist_t *pier__dlist_get(pier_loop_t *loop, uint64_t ms, pier__dl_cb cb) {
    if (ms > MAX_MS)
        ms = MAX_MS;
    for (uint32_t i = 0; i < loop->ndlists; i++)
        if (loop->dlists[i]->ms == ms && loop->dlists[i]->cb == cb)
            return loop->dlists[i];
    pier__dlist_t **v = realloc(loop->dlists, (loop->ndlists + 1) * sizeof *v);
    if (!v)
        return NULL;
    loop->dlists = v;
    pier__dlist_t *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    pier__queue_init(&l->nodes);
    pier_timer_init(loop, &l->timer, dlist_timer_cb, l);
    l->ms = (uint32_t)ms;
    l->cb = cb;
    l->shift = unit_shift(ms);
    l->tag = (loop->ndlists + 1) | l->shift << 24;
    v[loop->ndlists++] = l;
    return l;
}

void pier__dlists_free(pier_loop_t *loop) {
    for (uint32_t i = 0; i < loop->ndlists; i++) {
        weak_stop(loop->dlists[i]);
        free(loop->dlists[i]);
    }
    free(loop->dlists);
    loop->dlists = NULL;
    loop->ndlists = 0;
}

static pier__dlist_t *list_of(pier_loop_t *loop, const pier__dlnode_t *n) {
    return loop->dlists[(n->list & 0xffffff) - 1];
}

static uint32_t stamp_now(const pier__dlist_t *l, uint64_t now) {
    return l->shift == PIER__DL_NEVER ? 0 : (uint32_t)now >> l->shift;
}

static void link_tail(pier__dlist_t *l, pier__dlnode_t *n) {
    n->list = l->tag;
    n->stamp = stamp_now(l, pier_loop_now(l->timer.loop));
    pier__queue_insert_tail(&l->nodes, &n->q);
    if (l->ms && !pier_timer_active(&l->timer))
        weak_start(l, l->ms);
}

static void unlink_node(pier__dlist_t *l, pier__dlnode_t *n) {
    (void)l;
    pier__queue_remove(&n->q);
    n->list = 0;
}

void pier__dl_start(pier__dlist_t *l, pier__dlnode_t *n) {
    if (n->list)
        unlink_node(list_of(l->timer.loop, n), n);
    link_tail(l, n);
}

void pier__dl_unlink(pier_loop_t *loop, pier__dlnode_t *n) { unlink_node(list_of(loop, n), n); }

void pier__dl_touch_slow(pier_loop_t *loop, pier__dlnode_t *n) {
    pier__dlist_t *l = list_of(loop, n);
    n->stamp = stamp_now(l, pier_loop_now(loop));
    pier__queue_remove(&n->q); /* the list stays non-empty: n goes straight back */
    pier__queue_insert_tail(&l->nodes, &n->q);
}

static void dlist_timer_cb(pier_timer_t *t) {
    pier__dlist_t *l = t->data;
    t->loop->handles++; /* the run took the timer out, counting it as a handle */
    uint32_t now = (uint32_t)pier_loop_now(t->loop);
    while (!pier__queue_empty(&l->nodes)) {
        pier__dlnode_t *n = pier__container_of(pier__queue_head(&l->nodes), pier__dlnode_t, q);
        /* activity counts as at the end of its unit: late by less than a unit, never early */
        int32_t left = (int32_t)(((n->stamp + 1) << l->shift) - 1 + l->ms - now);
        if (left > 0) {
            /* a callback may have emptied and refilled the list, arming the timer again */
            if (pier_timer_active(t))
                weak_stop(l);
            weak_start(l, (uint64_t)left);
            return;
        }
        unlink_node(l, n);
        l->cb(n);
    }
}

void pier__dl_each(pier_loop_t *loop, pier__dl_cb cb, void (*fn)(pier__dlnode_t *n, void *arg), void *arg) {
    for (uint32_t i = 0; i < loop->ndlists; i++) {
        pier__dlist_t *l = loop->dlists[i];
        if (l->cb != cb)
            continue;
        pier__queue_t *q = l->nodes.next;
        while (q != &l->nodes) {
            pier__queue_t *next = q->next;
            fn(pier__container_of(q, pier__dlnode_t, q), arg);
            q = next;
        }
    }
}
