/* Pub/sub: topics per loop, publishing from any thread.
 *
 * A hub belongs to an HTTP server and is shared by its WebSocket endpoints, so that a
 * topic spans them all. Each loop of the group has its own topic list, touched only on
 * that loop: subscribing and closing happen there, and a publish reaches it as a posted
 * task. So no lock guards a subscriber list, and a connection that closes while a
 * publish is in flight simply is no longer in the list when the task runs.
 *
 * Topics are found through a hash table per loop (seeded, so that names chosen by peers
 * are hard to aim at one chain), so a publish or a subscription costs the same with ten
 * topics or a million.
 *
 * A published message is framed once, in one refcounted block that also carries one
 * posted task per loop. Every loop's task holds a reference until it has run, and every
 * subscriber's output queue holds one (pier_conn_write_ref) until the core has sent or
 * dropped the frame; the last one frees the block. The block also holds the hub, so a
 * task still queued when the server goes (run as its group is freed) finds it.
 *
 * permessage-deflate: a subscriber whose server side keeps no context between messages
 * (server_no_context_takeover, what pier agrees to by default) can take the very same
 * compressed frame as any other such subscriber with the same window size, since each
 * compressed message then stands alone. So the block has one slot per window size: the
 * first loop to need one compresses the message (with its shared compressor) and
 * installs the frame with a compare-and-swap (a loop that loses the race frees its own),
 * and every such subscriber on every loop shares it by reference. A subscriber whose
 * compressor keeps its context (deflate_takeover) cannot share: its copy is compressed
 * and queued as pier_ws_send would.
 */
#include "ws/ws_int.h"
#include "loop/layer.h"
#include "metrics/metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct topic_s topic_t;

typedef struct pier__ws_sub_s {
    topic_t *topic;
    pier_ws_t *ws;
    struct pier__ws_sub_s *prev, *next; /* in the topic */
    struct pier__ws_sub_s *ws_next;     /* in the connection's list */
} sub_t;

struct topic_s {
    topic_t *next;  /* in its hash chain */
    sub_t *subs;
    uint64_t hash;
    size_t len;
    char name[];
};

struct pier__ws_hub_loop_s {
    topic_t **buckets;        /* nbuckets (a power of two, or 0 before the first topic) */
    size_t nbuckets, ntopics;
    pier__ws_hub_t *hub;
};

struct pier__ws_hub_s {
    pier__ws_hub_t *next;     /* in the list of hubs, under hubs_mu */
    pier_http_server_t *srv;
    unsigned endpoints;       /* under hubs_mu */
    atomic_uint refs;         /* one for being listed, one per message in flight */
    uint64_t seed;            /* of the topic hash */
    pier_group_t *group;
    unsigned nloops;
    pier__ws_hub_loop_t loops[];
};

static pthread_mutex_t hubs_mu = PTHREAD_MUTEX_INITIALIZER;
static pier__ws_hub_t *hubs;

/* ---- hubs ---- */

static pier__ws_hub_t *find_hub(pier_http_server_t *srv) {
    pier__ws_hub_t *h = hubs;
    while (h && h->srv != srv)
        h = h->next;
    return h;
}

static pier__ws_hub_t *hub_new(pier_http_server_t *srv) {
    pier_group_t *g = pier_http_server_group(srv);
    unsigned n = pier_group_size(g);
    pier__ws_hub_t *h = calloc(1, sizeof *h + n * sizeof h->loops[0]);
    if (!h)
        return NULL;
    h->srv = srv;
    h->group = g;
    h->nloops = n;
    atomic_init(&h->refs, 1);
    if (pier__ws_random(&h->seed, sizeof h->seed) < 0)
        h->seed = (uint64_t)(uintptr_t)h; /* weaker, but the table works all the same */
    for (unsigned i = 0; i < n; i++)
        h->loops[i].hub = h;
    h->next = hubs;
    hubs = h;
    return h;
}

int pier__ws_hub_get(pier_http_server_t *srv, pier__ws_hub_t **out) {
    pthread_mutex_lock(&hubs_mu);
    pier__ws_hub_t *h = find_hub(srv);
    if (!h)
        h = hub_new(srv);
    if (h)
        h->endpoints++;
    pthread_mutex_unlock(&hubs_mu);
    *out = h;
    return h ? 0 : -ENOMEM;
}

static void hub_unref(pier__ws_hub_t *h) {
    if (atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) == 1) {
        for (unsigned i = 0; i < h->nloops; i++)
            free(h->loops[i].buckets); /* empty by now: every connection has closed */
        free(h);
    }
}

void pier__ws_hub_put(pier__ws_hub_t *h) {
    pthread_mutex_lock(&hubs_mu);
    int last = --h->endpoints == 0;
    if (last) { /* unlisted now: a new server at the same address gets a hub of its own */
        pier__ws_hub_t **pp = &hubs;
        while (*pp != h)
            pp = &(*pp)->next;
        *pp = h->next;
    }
    pthread_mutex_unlock(&hubs_mu);
    if (last)
        hub_unref(h);
}

pier__ws_hub_loop_t *pier__ws_hub_loop(pier__ws_hub_t *hub, unsigned i) {
    return hub && i < hub->nloops ? &hub->loops[i] : NULL;
}

/* ---- subscriptions (the connection's loop) ---- */

/* FNV-1a from a seeded basis. */
static uint64_t topic_hash(const pier__ws_hub_t *hub, const char *name, size_t len) {
    uint64_t h = 0xcbf29ce484222325u ^ hub->seed;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)name[i]) * 0x100000001b3u;
    return h;
}

static topic_t *find_topic(pier__ws_hub_loop_t *hl, uint64_t hash, const char *name, size_t len) {
    topic_t *t = hl->nbuckets ? hl->buckets[hash & (hl->nbuckets - 1)] : NULL;
    while (t && (t->hash != hash || t->len != len || memcmp(t->name, name, len) != 0))
        t = t->next;
    return t;
}

/* Doubles the table when it holds as many topics as buckets. A failed growth leaves it as
 * it was: chains get longer, nothing is lost. */
static void table_grow(pier__ws_hub_loop_t *hl) {
    if (hl->ntopics < hl->nbuckets)
        return;
    size_t nb = hl->nbuckets ? hl->nbuckets * 2 : 16;
    topic_t **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < hl->nbuckets; i++) {
        for (topic_t *t = hl->buckets[i], *next; t; t = next) {
            next = t->next;
            t->next = b[t->hash & (nb - 1)];
            b[t->hash & (nb - 1)] = t;
        }
    }
    free(hl->buckets);
    hl->buckets = b;
    hl->nbuckets = nb;
}

static topic_t *topic_get(pier__ws_hub_loop_t *hl, const char *name, size_t len) {
    uint64_t hash = topic_hash(hl->hub, name, len);
    topic_t *t = find_topic(hl, hash, name, len);
    if (t)
        return t;
    table_grow(hl);
    if (!hl->nbuckets || !(t = calloc(1, sizeof *t + len + 1)))
        return NULL;
    t->hash = hash;
    t->len = len;
    memcpy(t->name, name, len);
    topic_t **head = &hl->buckets[hash & (hl->nbuckets - 1)];
    t->next = *head;
    *head = t;
    hl->ntopics++;
    return t;
}

static void topic_drop_if_empty(pier__ws_hub_loop_t *hl, topic_t *t) {
    if (t->subs)
        return;
    topic_t **pp = &hl->buckets[t->hash & (hl->nbuckets - 1)];
    while (*pp != t)
        pp = &(*pp)->next;
    *pp = t->next;
    hl->ntopics--;
    free(t);
}

static sub_t **find_sub(pier_ws_t *ws, const char *name, size_t len) {
    sub_t **pp = &ws->subs;
    while (*pp && ((*pp)->topic->len != len || memcmp((*pp)->topic->name, name, len) != 0))
        pp = &(*pp)->ws_next;
    return pp;
}

int pier_ws_subscribe(pier_ws_t *ws, const char *topic) {
    if (!ws || !topic)
        return -EINVAL;
    if (ws->state != WS_OPEN || !ws->hl)
        return -ENOTCONN;
    size_t len = strlen(topic);
    if (*find_sub(ws, topic, len))
        return 0;
    sub_t *s = calloc(1, sizeof *s);
    topic_t *t = s ? topic_get(ws->hl, topic, len) : NULL;
    if (!t) {
        free(s);
        return -ENOMEM;
    }
    *s = (sub_t){.topic = t, .ws = ws, .next = t->subs, .ws_next = ws->subs};
    if (t->subs)
        t->subs->prev = s;
    t->subs = s;
    ws->subs = s;
    return 0;
}

static void sub_free(pier__ws_hub_loop_t *hl, sub_t *s) {
    if (s->prev)
        s->prev->next = s->next;
    else
        s->topic->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    topic_drop_if_empty(hl, s->topic);
    free(s);
}

int pier_ws_unsubscribe(pier_ws_t *ws, const char *topic) {
    if (!ws || !topic)
        return -EINVAL;
    sub_t **pp = find_sub(ws, topic, strlen(topic));
    sub_t *s = *pp;
    if (!s)
        return -ENOENT;
    *pp = s->ws_next;
    sub_free(ws->hl, s);
    return 0;
}

void pier__ws_unsubscribe_all(pier_ws_t *ws) {
    while (ws->subs) {
        sub_t *s = ws->subs;
        ws->subs = s->ws_next;
        sub_free(ws->hl, s);
    }
}

/* ---- publishing ---- */

typedef struct msg_s msg_t;

typedef struct {
    pier_task_t task;
    msg_t *msg;
    pier__ws_hub_loop_t *hl;
} loop_task_t;

/* A compressed frame of a published message, for one window size. */
typedef struct {
    size_t len;
    uint8_t frame[];
} zframe_t;

static zframe_t not_smaller; /* the slot's answer when compressing did not pay */

/* One block: this header, the tasks, the topic (NUL-terminated), the frame. */
struct msg_s {
    atomic_uint refs;
    pier__ws_hub_t *hub;
    const char *topic;
    size_t topic_len;
    uint64_t hash;
    int opcode;
    const uint8_t *frame;
    size_t frame_len, hdr_len;
    _Atomic(zframe_t *) z[16]; /* compressed frames by window bits, made on first need */
    loop_task_t tasks[];
};

static void msg_unref(msg_t *m) {
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) {
        for (int i = 0; i < 16; i++) {
            zframe_t *z = atomic_load_explicit(&m->z[i], memory_order_relaxed);
            if (z != &not_smaller)
                free(z);
        }
        hub_unref(m->hub);
        free(m);
    }
}

/* m compressed without context for ws's window, on ws's loop; &not_smaller if that does
 * not pay or memory ran out. */
static zframe_t *compress_for(msg_t *m, pier_ws_t *ws) {
    pier__ws_pmd_t alone = {.tx_bits = ws->pmd.tx_bits, .tx_reset = 1};
    const uint8_t *z;
    size_t zl;
    if (pier__ws_deflate(&ws->wl->z, &alone, m->frame + m->hdr_len, m->frame_len - m->hdr_len, &z, &zl) != 0)
        return &not_smaller;
    zframe_t *f = malloc(sizeof *f + PIER__WS_MAX_HEADER + zl);
    if (!f)
        return &not_smaller;
    size_t hl = pier__ws_header(f->frame, m->opcode | PIER__WS_RSV1, zl, NULL);
    memcpy(f->frame + hl, z, zl);
    f->len = hl + zl;
    pier__ws_zloop_trim_tx(ws->wl->z);
    return f;
}

/* The frame shared by the subscribers with ws's window: made once, by whichever loop
 * needs it first. NULL: send the plain frame. */
static const zframe_t *shared_zframe(msg_t *m, pier_ws_t *ws) {
    _Atomic(zframe_t *) *slot = &m->z[ws->pmd.tx_bits & 15];
    zframe_t *z = atomic_load_explicit(slot, memory_order_acquire), *none = NULL;
    if (!z) {
        z = compress_for(m, ws);
        if (!atomic_compare_exchange_strong_explicit(slot, &none, z, memory_order_acq_rel, memory_order_acquire)) {
            if (z != &not_smaller)
                free(z); /* another loop was first: its frame serves */
            z = none;
        }
    }
    return z == &not_smaller ? NULL : z;
}

static void frame_sent(void *base, void *ud) {
    (void)base;
    msg_unref(ud);
}

/* The frame to one subscriber, under the endpoint's slow-consumer policy. */
static void deliver(pier_ws_t *ws, msg_t *m) {
    if (ws->state != WS_OPEN || !pier_conn_is_open(ws->c))
        return;
    if (pier_conn_queued(ws->c) > ws->ep->out_high) {
        ws->dropped++;
        if (ws->ep->slow_policy == PIER_WS_SLOW_CLOSE)
            pier__ws_fail(ws, PIER_WS_POLICY);
        return;
    }
    if (ws->deflate && !ws->pmd.tx_reset) { /* its own context: compressed for it alone */
        if (pier__ws_put(ws, m->opcode, m->frame + m->hdr_len, m->frame_len - m->hdr_len) == 0)
            pier__mx_inc(ws->mx, PIER__MX(ws_messages_out));
        return;
    }
    const zframe_t *z = ws->deflate ? shared_zframe(m, ws) : NULL;
    atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    /* on error frame_sent has run, and the core aborted the connection if the stream
     * could be corrupt: nothing is left to undo */
    if (pier_conn_write_ref(ws->c, z ? z->frame : m->frame, z ? z->len : m->frame_len, frame_sent, m) == 0)
        pier__mx_inc(ws->mx, PIER__MX(ws_messages_out));
}

static void publish_run(void *arg) {
    loop_task_t *lt = arg;
    msg_t *m = lt->msg;
    topic_t *t = find_topic(lt->hl, m->hash, m->topic, m->topic_len);
    for (sub_t *s = t ? t->subs : NULL, *next; s; s = next) {
        /* a subscriber failed here leaves only its own subscriptions, on its close */
        next = s->next;
        deliver(s->ws, m);
    }
    msg_unref(m);
}

static msg_t *msg_new(pier__ws_hub_t *hub, const char *topic, int opcode, const void *data, size_t len) {
    size_t tl = strlen(topic), tasks = hub->nloops * sizeof(loop_task_t);
    msg_t *m = malloc(sizeof *m + tasks + tl + 1 + PIER__WS_MAX_HEADER + len);
    if (!m)
        return NULL;
    char *name = (char *)m->tasks + tasks;
    memcpy(name, topic, tl + 1);
    uint8_t *frame = (uint8_t *)name + tl + 1;
    size_t hl = pier__ws_header(frame, opcode, len, NULL);
    if (len)
        memcpy(frame + hl, data, len);
    m->hub = hub;
    m->topic = name;
    m->topic_len = tl;
    m->hash = topic_hash(hub, topic, tl);
    m->opcode = opcode;
    m->frame = frame;
    m->frame_len = hl + len;
    m->hdr_len = hl;
    for (int i = 0; i < 16; i++)
        atomic_init(&m->z[i], NULL);
    atomic_init(&m->refs, hub->nloops);
    return m;
}

int pier_ws_publish(pier_http_server_t *srv, const char *topic, int opcode, const void *data, size_t len) {
    if (!srv || !topic || (opcode != PIER_WS_TEXT && opcode != PIER_WS_BINARY) || (len && !data))
        return -EINVAL;
    pthread_mutex_lock(&hubs_mu);
    pier__ws_hub_t *hub = find_hub(srv);
    if (hub)
        atomic_fetch_add_explicit(&hub->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&hubs_mu);
    if (!hub)
        return -ENOENT;
    msg_t *m = msg_new(hub, topic, opcode, data, len);
    if (!m) {
        hub_unref(hub);
        return -ENOMEM;
    }
    pier_group_t *g = hub->group;
    /* n saved: once the last task is posted, m and the hub may be gone */
    for (unsigned i = 0, n = hub->nloops; i < n; i++) {
        loop_task_t *lt = &m->tasks[i];
        lt->msg = m;
        lt->hl = &hub->loops[i];
        pier_task_init(&lt->task, publish_run, lt);
        pier_loop_post_task(pier_group_loop(g, i), &lt->task);
    }
    return 0;
}
