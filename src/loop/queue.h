/* Intrusive circular doubly-linked list. A node is embedded in its owner and found back
 * with pier__container_of. Header-only: every operation is a handful of stores. */
#ifndef PIER_QUEUE_H
#define PIER_QUEUE_H

#include <stddef.h>

typedef struct pier__queue_s {
    struct pier__queue_s *next, *prev;
} pier__queue_t;

#define pier__container_of(ptr, type, field) ((type *)((char *)(ptr) - offsetof(type, field)))

static inline void pier__queue_init(pier__queue_t *q) { q->next = q->prev = q; }
static inline int pier__queue_empty(const pier__queue_t *q) { return q->next == q; }
/* A detached node points at itself, so "is it linked" is one compare. */
static inline int pier__queue_linked(const pier__queue_t *n) { return n->next != n; }

static inline void pier__queue_insert_tail(pier__queue_t *h, pier__queue_t *n) {
    n->next = h;
    n->prev = h->prev;
    h->prev->next = n;
    h->prev = n;
}

static inline void pier__queue_remove(pier__queue_t *n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = n;
}

/* Moves every node of h onto the empty list to, leaving h empty. */
static inline void pier__queue_move(pier__queue_t *h, pier__queue_t *to) {
    if (pier__queue_empty(h)) {
        pier__queue_init(to);
        return;
    }
    to->next = h->next;
    to->prev = h->prev;
    to->next->prev = to;
    to->prev->next = to;
    pier__queue_init(h);
}

static inline pier__queue_t *pier__queue_head(const pier__queue_t *h) { return h->next; }

#endif
