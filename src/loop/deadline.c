/* Deadline lists (layer.h): one loop timer per (timeout, callback) instead of one per
 * object. Nodes enter at the tail stamped with the loop's time, so a list is ordered by
 * due time and only its head needs a timer. The timer is armed when a node enters an
 * empty list and, when it fires, runs the due nodes and re-arms for the new head; a head
 * that left early makes it fire for nothing once, never late. */
#include "internal.h"

#include <stdlib.h>

struct pier__dlist_s {
    pier__queue_t nodes;
    pier_timer_t timer;
    uint64_t ms;
    pier__dl_cb cb;
    pier__dlist_t *next; /* the loop's lists */
};

static void dlist_timer_cb(pier_timer_t *t);

pier__dlist_t *pier__dlist_get(pier_loop_t *loop, uint64_t ms, pier__dl_cb cb) {
    for (pier__dlist_t *l = loop->dlists; l; l = l->next)
        if (l->ms == ms && l->cb == cb)
            return l;
    pier__dlist_t *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    pier__queue_init(&l->nodes);
    pier_timer_init(loop, &l->timer, dlist_timer_cb, l);
    l->ms = ms;
    l->cb = cb;
    l->next = loop->dlists;
    loop->dlists = l;
    return l;
}

void pier__dlists_free(pier_loop_t *loop) {
    while (loop->dlists) {
        pier__dlist_t *l = loop->dlists;
        loop->dlists = l->next;
        pier_timer_stop(&l->timer);
        free(l);
    }
}

static void link_tail(pier__dlist_t *l, pier__dlnode_t *n, uint64_t now) {
    n->list = l;
    n->stamp = now;
    pier__queue_insert_tail(&l->nodes, &n->q);
    if (l->ms && !pier_timer_active(&l->timer))
        pier_timer_start(&l->timer, l->ms, 0);
}

static void unlink_node(pier__dlnode_t *n) {
    pier__dlist_t *l = n->list;
    pier__queue_remove(&n->q);
    n->list = NULL;
    /* an empty list keeps no timer, so the loop can finish */
    if (pier__queue_empty(&l->nodes))
        pier_timer_stop(&l->timer);
}

void pier__dl_start(pier__dlist_t *l, pier__dlnode_t *n) {
    if (n->list)
        unlink_node(n);
    link_tail(l, n, pier_loop_now(l->timer.loop));
}

void pier__dl_stop(pier__dlnode_t *n) {
    if (n->list)
        unlink_node(n);
}

void pier__dl_touch_slow(pier__dlnode_t *n, uint64_t now) {
    pier__dlist_t *l = n->list;
    if (!l->ms) { /* never due: its place in the list does not matter */
        n->stamp = now;
        return;
    }
    pier__queue_remove(&n->q); /* the list stays non-empty: n goes straight back */
    n->stamp = now;
    pier__queue_insert_tail(&l->nodes, &n->q);
}

static void dlist_timer_cb(pier_timer_t *t) {
    pier__dlist_t *l = t->data;
    uint64_t now = pier_loop_now(t->loop);
    while (!pier__queue_empty(&l->nodes)) {
        pier__dlnode_t *n = pier__container_of(pier__queue_head(&l->nodes), pier__dlnode_t, q);
        if (n->stamp + l->ms > now) {
            /* a callback may have emptied and refilled the list, arming the timer again */
            pier_timer_start(t, n->stamp + l->ms - now, 0);
            return;
        }
        unlink_node(n);
        l->cb(n);
    }
}

void pier__dl_each(pier_loop_t *loop, pier__dl_cb cb, void (*fn)(pier__dlnode_t *n, void *arg), void *arg) {
    for (pier__dlist_t *l = loop->dlists; l; l = l->next) {
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
