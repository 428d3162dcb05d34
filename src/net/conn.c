/* Connections: reading into a shared buffer, the output queue, water marks, and the
 * two-phase close.
 *
 * Lifetime invariants (so that no connection is freed while a callback, a queued pass
 * or another thread still refers to it, and none is closed twice):
 *  - the loop holds one reference from pier__conn_new() until finalize();
 *  - every event handler holds a reference for its whole duration, so a callback that
 *    closes or unrefs cannot free the connection under the handler;
 *  - finalize() (fd closed, on_close, id released) runs only from the close pass at the
 *    end of a loop iteration, never during an epoll batch: a later event of the same
 *    batch still finds valid memory and sees CLOSED, and is dropped.
 *
 * Reading: epoll is edge-triggered. A read that fills the buffer leaves the connection
 * READABLE and queues it in the loop's READ pass for the next iteration (fairness); a short read means
 * the socket is drained and the next edge will come. Reads go into the loop's shared
 * 64 KiB buffer; only bytes the protocol did not consume are copied into a buffer of the
 * connection's own, which is freed as soon as it empties, so an idle connection holds no
 * read buffer at all. */
#include "conn.h"
#include "idtab.h"
#include "metrics/metrics.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define IOV_BATCH 64
#define LINGER_MS 2000
#define DIRECT_WRITE_MIN PIER__CHUNK

static void conn_io_cb(pier_loop_t *loop, pier__io_t *io, uint32_t events);
static void deadline_cb(pier__dlnode_t *n);
static void pass_cb(pier__pending_t *p);
static void flush_pass_cb(pier__pending_t *p);
static void close_step(pier_conn_t *c);
static void gone(pier_conn_t *c, int err);

void pier__limits_default(pier_conn_limits_t *lim) {
    if (!lim->out_high)
        lim->out_high = 256 * 1024;
    if (!lim->out_low)
        lim->out_low = lim->out_high / 4;
    if (lim->out_low > lim->out_high)
        lim->out_low = lim->out_high;
    if (!lim->read_max)
        lim->read_max = 1024 * 1024;
    if (!lim->close_ms)
        lim->close_ms = 10000;
}

static uint64_t linger_ms(const pier_conn_limits_t *lim) {
    return lim->close_ms < LINGER_MS ? lim->close_ms : LINGER_MS;
}

/* Makes sure the loop has the deadline lists that lim's timeouts need, so that starting
 * a close or a linger later cannot fail. */
static int take_lists(pier_loop_t *loop, const pier__owner_t *owner, const pier_conn_limits_t *lim) {
    if (!pier__dlist_get(loop, lim->idle_ms, deadline_cb))
        return -ENOMEM;
    if (owner->fresh_ms && !pier__dlist_get(loop, owner->fresh_ms, deadline_cb))
        return -ENOMEM;
    if (!pier__dlist_get(loop, lim->close_ms, deadline_cb) || !pier__dlist_get(loop, linger_ms(lim), deadline_cb))
        return -ENOMEM;
    return 0;
}

/* The connection's deadline is now ms from now. 0: none, but it stays in a list, the
 * one without a timer: the lists are also how an owner finds its connections. */
static void arm_deadline(pier_conn_t *c, uint64_t ms) {
    pier__dlist_t *l = pier__dlist_get(c->loop, ms, deadline_cb);
    if (l)
        pier__dl_start(l, &c->dl); /* never NULL: take_lists made it */
}

typedef struct each_s {
    const pier__owner_t *owner;
    void (*fn)(pier_conn_t *c);
    int (*only)(pier_conn_t *c);
} each_t;

static void each_one(pier__dlnode_t *n, void *arg) {
    each_t *e = arg;
    pier_conn_t *c = pier__container_of(n, pier_conn_t, dl);
    if (c->owner == e->owner && (!e->only || e->only(c)))
        e->fn(c);
}

void pier__conn_each(pier_loop_t *loop, const pier__owner_t *owner, void (*fn)(pier_conn_t *c),
                     int (*only)(pier_conn_t *c)) {
    each_t e = {owner, fn, only};
    pier__dl_each(loop, deadline_cb, each_one, &e);
}

int pier__conn_new(pier_loop_t *loop, int fd, pier__owner_t *owner, pier_conn_t **out) {
    const pier_conn_limits_t *lim = &owner->lim;
    if (take_lists(loop, owner, lim) < 0)
        return -ENOMEM;
    pier_conn_t *c = pier__id_alloc(loop);
    if (!c)
        return -ENOMEM;
    c->io.fd = fd;
    c->io.cb = conn_io_cb;
    c->refs = 1;
    c->owner = owner;
    pier__pending_init(&c->pass_p, pass_cb);
    pier__dlnode_init(&c->dl);
    /* EPOLLOUT only once the socket has been full (out_wait): on a new socket it would
     * be an edge of its own, one wake-up per connection for nothing */
    int err = pier__io_add(loop, &c->io, EPOLLIN | EPOLLRDHUP | EPOLLET);
    if (err < 0) {
        pier__id_free(c);
        return err;
    }
    pier__loop_handle_add(loop);
    pier__mx_inc(pier__loop_metrics(loop), PIER__MX(conns_opened));
    arm_deadline(c, lim->idle_ms);
    *out = c;
    return 0;
}

/* ---- accessors ---- */

void pier_conn_set_cbs(pier_conn_t *c, const pier_conn_cbs_t *cbs, void *data) {
    c->cbs = cbs;
    c->data = data;
}
void *pier_conn_data(const pier_conn_t *c) { return c->data; }
void pier_conn_set_data(pier_conn_t *c, void *data) { c->data = data; }
pier_id_t pier_conn_id(const pier_conn_t *c) { return pier__id_of(c); }
pier_loop_t *pier_conn_loop(const pier_conn_t *c) { return c->loop; }
int pier_conn_fd(const pier_conn_t *c) { return c->flags & PIER__C_CLOSED ? -1 : c->io.fd; }
int pier_conn_is_open(const pier_conn_t *c) { return !(c->flags & PIER__C_CLOSING); }
size_t pier_conn_queued(const pier_conn_t *c) { return c->x ? c->x->queued : 0; }


pier_conn_t *pier_conn_from_id(pier_loop_t *loop, pier_id_t id) {
    pier_conn_t *c = pier__id_conn(id);
    return c && c->loop == loop && !(c->flags & PIER__C_CLOSING) ? c : NULL;
}

const char *pier_conn_peer(const pier_conn_t *c, char *buf, size_t size) {
    if (c->x && c->x->peer_addr)
        return pier__addr_str(c->x->peer_addr, buf, size);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if ((c->flags & PIER__C_CLOSED) || getpeername(c->io.fd, (struct sockaddr *)&ss, &len) < 0) {
        snprintf(buf, size, "-");
        return buf;
    }
    return pier__addr_str(&ss, buf, size);
}

void pier_conn_ref(pier_conn_t *c) { c->refs++; }

void pier_conn_unref(pier_conn_t *c) {
    if (--c->refs > 0)
        return;
    if (!(c->flags & PIER__C_CLOSED)) {
        /* the loop's own reference was given away: a bug in the caller. Keep the memory
         * (a leak is better than a use-after-free) and say so loudly. */
        pier_log(PIER_LOG_ERROR, "connection %llu: last reference dropped while open (unbalanced unref)",
                 (unsigned long long)pier_conn_id(c));
        c->refs = 1;
        return;
    }
    pier__id_free(c);
}

/* ---- the part an idle connection does without ---- */

_Static_assert(sizeof(pier__conn_x_t) <= PIER__OBJ_MAX, "from the loop's object cache");

#define INL_ITEMS (sizeof ((pier__conn_x_t *)0)->inl / sizeof(pier__out_t))

/* The state a part is given back in (x_drop), so that taking it again needs only its
 * owner set: nothing kept, nothing queued, no transport, no address. */
static void x_init(pier__conn_x_t *x) {
    memset(x, 0, offsetof(pier__conn_x_t, lim));
    x->peer_addr = NULL;
    x->out = x->inl;
    x->ocap = INL_ITEMS;
    pier__pending_init(&x->flush_p, flush_pass_cb);
}

/* The connection's cold part, taken when first needed. NULL when out of memory. */
static pier__conn_x_t *x_need(pier_conn_t *c) {
    if (c->x)
        return c->x;
    int fresh;
    pier__conn_x_t *x = pier__obj_get(c->loop, PIER__OBJ_CONN, sizeof *x, &fresh);
    if (!x)
        return NULL;
    if (fresh)
        x_init(x);
    assert(!x->rbuf && !x->rlen && !x->ocount && !x->ohead && x->out == x->inl && !x->queued && !x->tp &&
           !x->tp_state && !x->peer_addr && !pier__pending_queued(&x->flush_p));
    x->c = c;
    c->x = x;
    return x;
}

/* Gives back a part that holds nothing else any more: a queue array that grew goes, and
 * the part goes to the loop's cache. */
static void x_put(pier_conn_t *c) {
    pier__conn_x_t *x = c->x;
    if (x->out != x->inl) {
        free(x->out);
        x->out = x->inl;
        x->ocap = INL_ITEMS;
    }
    c->x = NULL;
    pier__obj_put(c->loop, PIER__OBJ_CONN, x);
}

/* Gives the cold part back, whatever it holds (finalize: the queue is dropped by then),
 * in the state x_init makes: most of it is already, when a busy connection goes idle. */
static void x_drop(pier_conn_t *c) {
    pier__conn_x_t *x = c->x;
    if (!x)
        return;
    c->flags &= ~PIER__C_OWN_LIM; /* the owner's again (nothing reads them after a close) */
    if (x->rbuf) {
        free(x->rbuf);
        x->rbuf = NULL;
    }
    if (x->peer_addr) {
        free(x->peer_addr);
        x->peer_addr = NULL;
    }
    x->rlen = x->rcap = 0;
    x->ohead = x->ocount = 0;
    x->queued = 0;
    x->tp = NULL;
    x->tp_state = NULL;
    x_put(c);
}

/* Input kept from before (not consumed by the protocol). */
static size_t kept(const pier_conn_t *c) { return c->x ? c->x->rlen : 0; }

/* Gives the cold part back once nothing in it is in use: no input kept, nothing queued,
 * no transport, no limits of its own, no flush queued (a close in progress keeps it: it
 * is short-lived and its steps look at the queue). */
static int x_in_use(const pier_conn_t *c) {
    const pier__conn_x_t *x = c->x;
    return x->rlen || x->ocount || x->tp || x->peer_addr || pier__pending_queued(&x->flush_p) ||
           (c->flags & (PIER__C_OWN_LIM | PIER__C_CLOSING));
}

/* A part not in use holds no input, no transport, no address: only a queue array that
 * grew may need freeing before it goes back. */
static void x_release_slow(pier_conn_t *c) {
    if (x_in_use(c))
        return;
    assert(!c->x->rbuf && !c->x->rcap && !c->x->ohead && !c->x->queued && !c->x->tp_state);
    x_put(c);
}

/* Inline, the common answers first: no part, or output still queued. */
static inline void x_release(pier_conn_t *c) {
    if (c->x && !c->x->ocount)
        x_release_slow(c);
}

int pier__conn_set_peer_addr(pier_conn_t *c, void *addr) {
    if (!x_need(c)) {
        free(addr);
        return -ENOMEM;
    }
    free(c->x->peer_addr);
    c->x->peer_addr = addr;
    return 0;
}

int pier__conn_set_transport(pier_conn_t *c, const pier__transport_t *tp, void *state) {
    if (!x_need(c))
        return -ENOMEM;
    c->x->tp = state ? tp : NULL;
    c->x->tp_state = state;
    return 0;
}

/* ---- the output queue ---- */

/* Makes room for n more items in the queue array. 0 or -ENOMEM (nothing changed). */
static int out_reserve(pier_conn_t *c, uint32_t n) {
    if (c->x->ohead + c->x->ocount + n <= c->x->ocap)
        return 0;
    if (c->x->ohead > 0) {
        memmove(c->x->out, c->x->out + c->x->ohead, c->x->ocount * sizeof *c->x->out);
        c->x->ohead = 0;
        if (c->x->ocount + n <= c->x->ocap)
            return 0;
    }
    uint32_t cap = c->x->ocap * 2;
    while (cap < c->x->ocount + n)
        cap *= 2;
    pier__out_t *out = realloc(c->x->out == c->x->inl ? NULL : c->x->out, cap * sizeof *out);
    if (!out)
        return -ENOMEM;
    if (c->x->out == c->x->inl)
        memcpy(out, c->x->inl, c->x->ocount * sizeof *out);
    c->x->out = out;
    c->x->ocap = cap;
    return 0;
}

/* Appends an item; the caller has reserved room for it. */
static pier__out_t *out_push(pier_conn_t *c) {
    pier__out_t *o = &c->x->out[c->x->ohead + c->x->ocount++];
    memset(o, 0, sizeof *o);
    o->fd = -1;
    return o;
}

static void out_release(pier_conn_t *c, pier__out_t *o) {
    switch (o->kind) {
    case PIER__OUT_COPY:
        /* ud holds the chunk's capacity; only standard-size chunks go back to the cache */
        if ((size_t)o->ud == PIER__CHUNK)
            pier__chunk_put(c->loop, o->base);
        else
            free(o->base);
        break;
    case PIER__OUT_REF:
        if (o->free_cb)
            o->free_cb(o->base, o->ud);
        break;
    case PIER__OUT_FILE:
        close(o->fd);
        break;
    }
}

static void out_pop(pier_conn_t *c) {
    out_release(c, &c->x->out[c->x->ohead]);
    c->x->ohead++;
    if (--c->x->ocount == 0)
        c->x->ohead = 0;
}

static void out_drop_all(pier_conn_t *c) {
    if (!c->x)
        return;
    while (c->x->ocount)
        out_pop(c);
    c->x->queued = 0;
}

static void want_flush(pier_conn_t *c) {
    pier__pending_add(c->loop, PIER__PASS_FLUSH, &c->x->flush_p);
}

/* Output not yet on the socket: the queue, or a transport's own bytes. */
static int has_output(const pier_conn_t *c) {
    return c->x && (c->x->ocount > 0 || (c->x->tp && c->x->tp->pending(c)));
}

/* Large units skip the queue and go to the socket at once, when nothing waits before
 * them and no transport has to encode them first. */
static int can_write_direct(const pier_conn_t *c, size_t len) {
    return len >= DIRECT_WRITE_MIN && (!c->x || (c->x->ocount == 0 && !c->x->tp));
}

static void note_queued(pier_conn_t *c, size_t n) {
    c->x->queued += n;
    if (c->x->queued > pier__conn_lim(c)->out_high)
        c->flags |= PIER__C_WATER_PAUSE;
    want_flush(c);
}

static void fail(pier_conn_t *c, int err) {
    if (!c->err)
        c->err = err;
    pier_conn_abort(c);
}

void pier__conn_fail(pier_conn_t *c, int err) { fail(c, err); }
void pier__conn_want_flush(pier_conn_t *c) { want_flush(c); }

void pier__conn_ready(pier_conn_t *c) {
    if (c->owner->ops->ready)
        c->owner->ops->ready(c->owner, c);
}

/* Writes a unit straight to the socket while nothing is queued: large units skip the
 * copy. Returns bytes written (0 if the socket is full) or a negative errno. */
static ssize_t direct_write(pier_conn_t *c, const struct iovec *iov, int iovcnt) {
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
    for (;;) {
        ssize_t n = sendmsg(c->io.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            pier__conn_sent(c);
            pier__mx_add(pier__loop_metrics(c->loop), PIER__MX(bytes_out), (uint64_t)n);
            return n;
        }
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    }
}

/* The copy item at the tail of the queue and the room left in it, if there is one. */
static pier__out_t *tail_copy(pier_conn_t *c, size_t *room) {
    pier__out_t *tail = c->x && c->x->ocount ? &c->x->out[c->x->ohead + c->x->ocount - 1] : NULL;
    if (!tail || tail->kind != PIER__OUT_COPY) {
        *room = 0;
        return NULL;
    }
    *room = (size_t)tail->ud - tail->len;
    return tail;
}

/* Copies len bytes of the unit, starting skip bytes into it, at the end of the queue.
 * Everything that can fail (a new buffer, room for extra queue items) is taken before
 * the first byte is copied, so the unit is queued whole or not at all. */
static int queue_copy(pier_conn_t *c, const struct iovec *iov, int iovcnt, size_t skip, size_t len,
                      uint32_t extra_items) {
    if (!x_need(c))
        return -ENOMEM;
    size_t room;
    pier__out_t *tail = tail_copy(c, &room);
    char *buf = NULL;
    size_t cap = 0;
    uint32_t items = extra_items;
    if (len > room) {
        size_t spill = len - room;
        cap = spill > PIER__CHUNK ? spill : PIER__CHUNK;
        buf = cap == PIER__CHUNK ? pier__chunk_get(c->loop) : malloc(cap);
        if (!buf) {
            x_release(c);
            return -ENOMEM;
        }
        items++;
    }
    if (c->x->ohead + c->x->ocount + items > c->x->ocap) {
        if (out_reserve(c, items) < 0) {
            if (cap == PIER__CHUNK)
                pier__chunk_put(c->loop, buf);
            else
                free(buf);
            x_release(c);
            return -ENOMEM;
        }
        tail = tail_copy(c, &room); /* out_reserve may have moved it */
    }
    /* nothing can fail from here on */
    for (int i = 0; i < iovcnt; i++) {
        const char *p = iov[i].iov_base;
        size_t n = iov[i].iov_len;
        if (skip >= n) {
            skip -= n;
            continue;
        }
        p += skip;
        n -= skip;
        skip = 0;
        size_t k = n < room ? n : room;
        if (k) {
            memcpy(tail->base + tail->len, p, k);
            tail->len += k;
            room -= k;
            p += k;
            n -= k;
        }
        if (n) { /* the tail is full: the rest goes to the new buffer, which holds it all */
            tail = out_push(c);
            tail->kind = PIER__OUT_COPY;
            tail->base = buf;
            tail->ud = (void *)cap;
            memcpy(buf, p, n);
            tail->len = n;
            room = cap - n;
        }
    }
    note_queued(c, len);
    return 0;
}

static size_t iov_total(const struct iovec *iov, int iovcnt) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    return total;
}

int pier_conn_writev(pier_conn_t *c, const struct iovec *iov, int iovcnt) {
    if (iovcnt < 0 || (iovcnt > 0 && !iov))
        return -EINVAL;
    if (c->flags & PIER__C_CLOSING)
        return -ENOTCONN;
    size_t total = iov_total(iov, iovcnt), sent = 0;
    if (can_write_direct(c, total)) {
        ssize_t n = direct_write(c, iov, iovcnt < IOV_BATCH ? iovcnt : IOV_BATCH);
        if (n < 0) {
            fail(c, (int)n);
            return -ENOTCONN;
        }
        sent = (size_t)n;
    }
    if (sent == total)
        return 0;
    int err = queue_copy(c, iov, iovcnt, sent, total - sent, 0);
    /* part of the unit is already on the wire: the rest of the stream would be corrupt */
    if (err < 0 && sent > 0)
        fail(c, err);
    return err;
}

int pier_conn_write(pier_conn_t *c, const void *data, size_t len) {
    /* The common case without the general path: a small write that fits the tail chunk,
     * or starts a new one while the queue array has room. Anything else (a write split
     * over two chunks, a growing array, a large or refused write) goes the general way. */
    if (len == 0)
        return c->flags & PIER__C_CLOSING ? -ENOTCONN : 0;
    if (len < DIRECT_WRITE_MIN && !(c->flags & PIER__C_CLOSING)) {
        if (!x_need(c))
            return -ENOMEM;
        size_t room;
        pier__out_t *tail = tail_copy(c, &room);
        if (len > room) {
            if (room || c->x->ohead + c->x->ocount == c->x->ocap)
                goto general;
            char *buf = pier__chunk_get(c->loop);
            if (!buf) {
                x_release(c);
                return -ENOMEM;
            }
            tail = out_push(c);
            tail->kind = PIER__OUT_COPY;
            tail->base = buf;
            tail->ud = (void *)(size_t)PIER__CHUNK;
        }
        memcpy(tail->base + tail->len, data, len);
        tail->len += len;
        note_queued(c, len);
        return 0;
    }
general:;
    struct iovec v = {.iov_base = (void *)data, .iov_len = len};
    return pier_conn_writev(c, &v, 1);
}

int pier_conn_write_ref(pier_conn_t *c, const void *base, size_t len, pier_free_cb free_cb, void *ud) {
    if (c->flags & PIER__C_CLOSING) {
        if (free_cb)
            free_cb((void *)base, ud);
        return -ENOTCONN;
    }
    size_t done = 0;
    if (can_write_direct(c, len)) {
        struct iovec v = {.iov_base = (void *)base, .iov_len = len};
        ssize_t n = direct_write(c, &v, 1);
        if (n < 0) {
            fail(c, (int)n);
            if (free_cb)
                free_cb((void *)base, ud);
            return -ENOTCONN;
        }
        done = (size_t)n;
    }
    if (done == len) {
        if (free_cb)
            free_cb((void *)base, ud);
        return 0;
    }
    if (!x_need(c) || out_reserve(c, 1) < 0) {
        x_release(c);
        if (done > 0)
            fail(c, -ENOMEM); /* a partial write: the stream cannot go on */
        if (free_cb)
            free_cb((void *)base, ud);
        return -ENOMEM;
    }
    pier__out_t *o = out_push(c);
    o->kind = PIER__OUT_REF;
    o->base = (char *)base;
    o->len = len;
    o->off = done;
    o->free_cb = free_cb;
    o->ud = ud;
    note_queued(c, len - done);
    return 0;
}

int pier_conn_writev_file(pier_conn_t *c, const struct iovec *iov, int iovcnt, int fd, off_t offset, size_t len) {
    int err = 0;
    if (iovcnt < 0 || (iovcnt > 0 && !iov))
        err = -EINVAL;
    else if (c->flags & PIER__C_CLOSING)
        err = -ENOTCONN;
    else
        err = queue_copy(c, iov, iovcnt, 0, iov_total(iov, iovcnt), len ? 1 : 0);
    if (err < 0 || len == 0) {
        close(fd);
        return err;
    }
    pier__out_t *o = out_push(c); /* reserved by queue_copy */
    o->kind = PIER__OUT_FILE;
    o->fd = fd;
    o->foff = offset;
    o->len = len;
    note_queued(c, len);
    return 0;
}

int pier_conn_sendfile(pier_conn_t *c, int fd, off_t offset, size_t len) {
    return pier_conn_writev_file(c, NULL, 0, fd, offset, len);
}

void pier__conn_consume(pier_conn_t *c, size_t n) {
    c->x->queued -= n;
    pier__mx_add(pier__loop_metrics(c->loop), PIER__MX(bytes_out), n);
    while (n > 0) {
        pier__out_t *o = &c->x->out[c->x->ohead];
        size_t left = o->len - o->off;
        if (n < left) {
            o->off += n;
            return;
        }
        n -= left;
        out_pop(c);
    }
}

/* Sends what the socket takes of the memory items at the head, up to IOV_BATCH: the
 * bytes sent, or -1 with errno. */
static __attribute__((noinline)) ssize_t send_items(int fd, const pier__out_t *o, uint32_t count, size_t *total) {
    struct iovec iov[IOV_BATCH];
    int cnt = 0;
    *total = 0;
    for (uint32_t i = 0; i < count && cnt < IOV_BATCH && o[i].kind != PIER__OUT_FILE; i++) {
        iov[cnt].iov_base = o[i].base + o[i].off;
        iov[cnt].iov_len = o[i].len - o[i].off;
        *total += iov[cnt++].iov_len;
    }
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
    return sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Writes as much of the queue as the socket takes: memory items at the head in one
 * send (send for one item, the common case: the kernel then copies no iovec), sendfile
 * for file items. 0 when the queue is empty or the socket is full; a negative errno
 * when the connection failed. */
static int flush(pier_conn_t *c) {
    pier__conn_x_t *x = c->x; /* kept while its queue is not empty */
    if (!x)
        return 0;
    if (x->tp)
        return x->tp->flush(c);
    while (x->ocount > 0) {
        pier__out_t *o = &x->out[x->ohead];
        size_t want = o->len - o->off;
        int file = o->kind == PIER__OUT_FILE;
        ssize_t n;
        if (file)
            n = sendfile(c->io.fd, o->fd, &o->foff, want);
        else if (x->ocount == 1)
            n = send(c->io.fd, o->base + o->off, want, MSG_NOSIGNAL | MSG_DONTWAIT);
        else
            n = send_items(c->io.fd, o, x->ocount, &want);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        }
        if (n == 0 && file)
            return -EIO; /* the file shrank under us */
        pier__conn_sent(c);
        pier__conn_consume(c, (size_t)n);
        /* a short sendfile is tried again: the next one says if the socket is full */
        if ((size_t)n < want && !file)
            return 0; /* the socket is full; EPOLLOUT will bring us back */
    }
    return 0;
}

/* Only for a closing connection: its pass node is then in the close pass or in none
 * (the close took it out of the read pass, and nothing queues a read after it). */
static void schedule_close(pier_conn_t *c) {
    pier__pending_add(c->loop, PIER__PASS_CLOSE, &c->pass_p);
}

static void queue_read(pier_conn_t *c) {
    if (!(c->flags & PIER__C_CLOSING))
        pier__pending_add(c->loop, PIER__PASS_READ, &c->pass_p);
}

static void want_read(pier_conn_t *c) {
    if (c->flags & (PIER__C_READABLE | PIER__C_REDELIVER))
        queue_read(c);
}

/* The read was interrupted, or the transport holds more than the socket shows (records
 * OpenSSL has read already, a result kept for its next call): read again in the next
 * pass, even if a read earlier in this iteration found the socket drained. No edge will
 * come for what the transport holds. */
static void read_again(pier_conn_t *c) {
    c->flags |= PIER__C_READABLE;
    queue_read(c);
}

/* After a flush: resume below the low water mark, and let a pending close proceed. */
static void after_flush(pier_conn_t *c) {
    if ((c->flags & PIER__C_WATER_PAUSE) && pier_conn_queued(c) <= pier__conn_lim(c)->out_low) {
        c->flags &= ~PIER__C_WATER_PAUSE;
        if (!(c->flags & PIER__C_CLOSING)) {
            /* input kept while paused is handed to the protocol again, as on resume:
             * it may hold complete requests that waited for the queue to drain */
            if (kept(c) > 0 && !(c->flags & PIER__C_USER_PAUSE))
                c->flags |= PIER__C_REDELIVER;
            want_read(c);
            if (c->cbs && c->cbs->on_drain)
                c->cbs->on_drain(c);
        }
    }
    if ((c->flags & PIER__C_CLOSING) && !has_output(c))
        schedule_close(c);
}

/* Output waits for room in the socket: the next EPOLLOUT edge must reach us. A socket is
 * watched for it from its first time full on (edge-triggered, it costs nothing after).
 * 0, or a negative errno if epoll refused (the connection cannot go on). Adding it finds
 * a socket that has room by now ready at once, so no edge is lost in between. */
static int out_wait(pier_conn_t *c) {
    if (c->io.events & EPOLLOUT)
        return 0;
    return pier__io_mod(c->loop, &c->io, c->io.events | EPOLLOUT);
}

/* flush(), and if output is left for the socket, the EPOLLOUT that brings it back. */
static int flush_or_wait(pier_conn_t *c) {
    int err = flush(c);
    return err == 0 && has_output(c) ? out_wait(c) : err;
}

static void flush_now(pier_conn_t *c) {
    if (c->flags & PIER__C_CLOSED)
        return;
    int err = flush_or_wait(c);
    if (err < 0)
        fail(c, err);
    else
        after_flush(c);
    x_release(c);
}

/* ---- reading ---- */

/* Keeps the bytes the protocol did not consume, in a buffer of the connection's own. */
static int keep_unconsumed(pier_conn_t *c, const char *data, size_t len, int own) {
    if (len == 0) {
        if (!c->x)
            return 0;
        free(c->x->rbuf);
        c->x->rbuf = NULL;
        c->x->rlen = c->x->rcap = 0;
        return 0;
    }
    if (len >= pier__conn_lim(c)->read_max)
        return -EMSGSIZE;
    if (!x_need(c))
        return -ENOMEM;
    if (own) {
        memmove(c->x->rbuf, data, len);
    } else {
        size_t cap = len * 2 < 4096 ? 4096 : len * 2;
        if (cap > pier__conn_lim(c)->read_max)
            cap = pier__conn_lim(c)->read_max;
        char *buf = malloc(cap);
        if (!buf)
            return -ENOMEM;
        memcpy(buf, data, len);
        c->x->rbuf = buf;
        c->x->rcap = cap;
    }
    c->x->rlen = len;
    return 0;
}

/* Reads and discards while lingering after our FIN, until the peer's FIN or an error. */
static void linger_read(pier_conn_t *c) {
    for (;;) {
        ssize_t n = read(c->io.fd, pier__loop_rbuf(c->loop), PIER__READ_BUF);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        c->flags |= PIER__C_EOF;
        schedule_close(c);
        return;
    }
}

/* Hands data to the protocol and keeps what it did not consume. */
static void deliver(pier_conn_t *c, const char *data, size_t len, int own) {
    size_t used = c->cbs && c->cbs->on_read ? c->cbs->on_read(c, data, len) : len;
    if (used > len)
        used = len;
    if (c->flags & PIER__C_CLOSING) {
        /* Input the protocol left at its close is never read: a close told that the
         * peer was done lingers after all. Taken whole, nothing is kept any more. */
        if (used < len)
            c->flags &= ~PIER__C_EOF;
        else
            keep_unconsumed(c, NULL, 0, own); /* cannot fail with nothing to keep */
        return;
    }
    int err = keep_unconsumed(c, data + used, len - used, own);
    if (err < 0) {
        pier_log(PIER_LOG_WARN, "connection %llu: %zu unconsumed bytes reach the read limit, closing",
                 (unsigned long long)pier_conn_id(c), len - used);
        fail(c, err);
        return;
    }
    x_release(c);
}

/* Bytes for the protocol: from the transport, or from the socket. As the transport's
 * read: a count, 0 at the end, or a negative errno (-EAGAIN: drained). */
static ssize_t conn_recv(pier_conn_t *c, char *buf, size_t len, int *more) {
    const pier__transport_t *tp = pier__conn_tp(c);
    ssize_t n = tp ? tp->read(c, buf, len, more) : read(c->io.fd, buf, len);
    if (n > 0)
        pier__mx_add(pier__loop_metrics(c->loop), PIER__MX(bytes_in), (uint64_t)n);
    return n >= 0 || tp ? n : errno == EWOULDBLOCK ? -EAGAIN : -errno;
}

static void do_read(pier_conn_t *c) {
    if (c->flags & (PIER__C_CLOSING | PIER__C_USER_PAUSE | PIER__C_WATER_PAUSE))
        return;
    if (c->flags & PIER__C_REDELIVER) {
        /* resumed with bytes kept from before the pause: the protocol sees them again
         * before anything new is read */
        c->flags &= ~PIER__C_REDELIVER;
        if (c->x)
            deliver(c, c->x->rbuf, c->x->rlen, 1);
        want_read(c);
        return;
    }
    int own = kept(c) > 0;
    char *buf = pier__loop_rbuf(c->loop);
    size_t room = PIER__READ_BUF;
    if (own) {
        if (c->x->rlen == c->x->rcap) {
            size_t cap = c->x->rcap * 2 > pier__conn_lim(c)->read_max ? pier__conn_lim(c)->read_max : c->x->rcap * 2;
            char *nb = cap > c->x->rcap ? realloc(c->x->rbuf, cap) : NULL;
            if (!nb) {
                fail(c, cap > c->x->rcap ? -ENOMEM : -EMSGSIZE);
                return;
            }
            c->x->rbuf = nb;
            c->x->rcap = cap;
        }
        buf = c->x->rbuf + c->x->rlen;
        room = c->x->rcap - c->x->rlen;
    }
    int more = 0;
    ssize_t n = conn_recv(c, buf, room, &more);
    if (n < 0) {
        if (n == -EINTR || more) {
            read_again(c);
            return;
        }
        c->flags &= ~PIER__C_READABLE;
        if (n != -EAGAIN)
            fail(c, (int)n);
        return;
    }
    if (n == 0) {
        c->flags = (c->flags & ~PIER__C_READABLE) | PIER__C_EOF;
        if (c->cbs && c->cbs->on_eof)
            c->cbs->on_eof(c);
        else
            pier_conn_close(c);
        return;
    }
    /* A short read drains the socket, and the next edge brings more, except for a FIN
     * that came with this data: that edge is already spent, so read again for it. */
    if (more)
        read_again(c);
    else if ((size_t)n < room && !(c->flags & PIER__C_RDHUP))
        c->flags &= ~PIER__C_READABLE;
    else
        want_read(c);
    pier__conn_active(c);
    if (own) {
        c->x->rlen += (size_t)n;
        deliver(c, c->x->rbuf, c->x->rlen, 1);
    } else {
        deliver(c, buf, (size_t)n, 0);
    }
}

static void conn_io_cb(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    pier_conn_t *c = pier__container_of(io, pier_conn_t, io);
    if (c->flags & PIER__C_CLOSED)
        return; /* a stale event from earlier in this batch */
    pier_conn_ref(c);
    if (events & EPOLLERR) {
        int soerr = 0;
        socklen_t len = sizeof soerr;
        getsockopt(c->io.fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        if (soerr)
            gone(c, -soerr);
        else
            fail(c, -EIO);
    } else {
        if ((events & EPOLLOUT) && has_output(c))
            flush_now(c);
        if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) {
            c->flags |= PIER__C_READABLE;
            if (events & (EPOLLHUP | EPOLLRDHUP))
                c->flags |= PIER__C_RDHUP;
            if (c->flags & PIER__C_SHUT)
                linger_read(c);
            else
                do_read(c);
        }
    }
    pier_conn_unref(c);
}

/* A connection that had more to read (or kept input to hand back); the loop runs each
 * once per iteration, and one that still has more waits for the next. */
static void pass_cb(pier__pending_t *p) {
    pier_conn_t *c = pier__container_of(p, pier_conn_t, pass_p);
    pier_conn_ref(c);
    if (c->flags & PIER__C_CLOSING)
        close_step(c);
    else
        do_read(c);
    pier_conn_unref(c);
}

void pier_conn_pause(pier_conn_t *c) { c->flags |= PIER__C_USER_PAUSE; }

void pier_conn_resume(pier_conn_t *c) {
    if (!(c->flags & PIER__C_USER_PAUSE))
        return;
    c->flags &= ~PIER__C_USER_PAUSE;
    /* bytes kept from before the pause are delivered with the next read; if the socket
     * has nothing more, deliver them now through the again pass */
    if (kept(c) > 0)
        c->flags |= PIER__C_REDELIVER;
    if (c->flags & (PIER__C_READABLE | PIER__C_REDELIVER))
        queue_read(c);
}

/* A connection that changes its limits gets its own copy (a WebSocket's, say); the
 * others share their owner's. */
void pier_conn_set_limits(pier_conn_t *c, const pier_conn_limits_t *lim) {
    if (c->flags & PIER__C_CLOSED)
        return; /* its owner may be gone */
    pier_conn_limits_t next = *pier__conn_lim(c);
    if (lim->out_high)
        next.out_high = lim->out_high;
    if (lim->out_low)
        next.out_low = lim->out_low;
    if (lim->read_max)
        next.read_max = lim->read_max;
    if (lim->close_ms)
        next.close_ms = lim->close_ms;
    if (lim->idle_ms)
        next.idle_ms = lim->idle_ms;
    if (!x_need(c) || take_lists(c->loop, c->owner, &next) < 0) {
        /* the old limits stay: still bounded, only not the ones asked for */
        pier_log(PIER_LOG_WARN, "connection %llu: out of memory changing its limits", (unsigned long long)pier_conn_id(c));
        x_release(c);
        return;
    }
    c->x->lim = next;
    c->flags |= PIER__C_OWN_LIM;
    if (lim->idle_ms && !(c->flags & (PIER__C_CLOSING | PIER__C_FRESH)))
        arm_deadline(c, lim->idle_ms);
}

void pier_conn_touch(pier_conn_t *c) { pier__conn_active(c); }

/* A close's deadlines (flush, linger) run from the close, whatever moves meanwhile. */
void pier__conn_touch_slow(pier_conn_t *c) {
    if (!(c->flags & (PIER__C_FRESH | PIER__C_CLOSING)))
        pier__dl_touch_slow(c->loop, &c->dl);
}

void pier__conn_fresh_start(pier_conn_t *c) {
    if (c->owner->fresh_ms && !(c->flags & PIER__C_CLOSING)) {
        c->flags |= PIER__C_FRESH;
        arm_deadline(c, c->owner->fresh_ms);
    }
}

uint64_t pier__conn_fresh_end(pier_conn_t *c) {
    if (!(c->flags & PIER__C_FRESH))
        return 0;
    /* the end of the accept's time unit in the list: deadlines from it are never early */
    uint64_t now = pier_loop_now(c->loop);
    uint32_t shift = c->dl.list >> 24;
    uint64_t since = now - (uint64_t)(int64_t)(int32_t)((uint32_t)now - (((c->dl.stamp + 1) << shift) - 1));
    c->flags &= ~PIER__C_FRESH;
    if (!(c->flags & PIER__C_CLOSING))
        arm_deadline(c, pier__conn_lim(c)->idle_ms);
    return since ? since : 1;
}

/* ---- closing ----
 *
 * A graceful close flushes the queue (and the transport's goodbye), then ends in one of
 * two ways. If the peer sends nothing more that matters (PIER__C_EOF: its FIN was read,
 * or its protocol said so) and none of its input is unread, close() alone is enough: it
 * sends our FIN after the output, and there is nothing to wait for. Otherwise it
 * half-closes and lingers, reading and dropping input until the peer's FIN (or a
 * deadline), since close() over unread input resets the connection, and the reset can
 * destroy our last response before the peer has read it. Either way finalize() runs only
 * from the close pass. */

void pier_conn_close(pier_conn_t *c) {
    if (c->flags & PIER__C_CLOSING)
        return;
    c->flags |= PIER__C_CLOSING;
    pier__id_release(c);
    pier__pending_cancel(&c->pass_p);
    arm_deadline(c, pier__conn_lim(c)->close_ms);
    schedule_close(c);
}

void pier__conn_close_peer_done(pier_conn_t *c) {
    if (c->flags & PIER__C_CLOSING)
        return; /* a close under way stays what it was */
    c->flags |= PIER__C_EOF;
    pier_conn_close(c);
}

/* The kernel reported the connection broken (a reset, a retransmission timeout) and has
 * closed it: nothing can be sent or read any more. The close then has no output to
 * flush, no goodbye to send, no FIN to wait for and no reset to make (SO_LINGER would
 * change nothing); err still reaches on_close. */
static void gone(pier_conn_t *c, int err) {
    if (!c->err)
        c->err = err;
    out_drop_all(c);
    c->flags |= PIER__C_SHUT | PIER__C_EOF;
    if (c->flags & PIER__C_CLOSING)
        schedule_close(c);
    else
        pier_conn_close(c);
}

void pier_conn_abort(pier_conn_t *c) {
    if (c->flags & (PIER__C_CLOSED | PIER__C_ABORT))
        return;
    pier__id_release(c);
    if (!(c->flags & PIER__C_CLOSING))
        pier__pending_cancel(&c->pass_p); /* a read queued; a close queued stays */
    c->flags |= PIER__C_CLOSING | PIER__C_ABORT;
    out_drop_all(c);
    schedule_close(c);
}

static void deadline_cb(pier__dlnode_t *n) {
    pier_conn_t *c = pier__container_of(n, pier_conn_t, dl);
    if (c->flags & PIER__C_CLOSING) {
        /* the flush or the linger took too long */
        if (!(c->flags & PIER__C_SHUT)) {
            pier_log(PIER_LOG_DEBUG, "connection %llu: close could not flush %zu bytes in time, resetting",
                     (unsigned long long)pier_conn_id(c), pier_conn_queued(c));
            fail(c, -ETIMEDOUT);
        }
        c->flags |= PIER__C_EOF;
        schedule_close(c);
        return;
    }
    if (c->flags & PIER__C_FRESH) {
        /* nothing came in the owner's first deadline: the protocol answers */
        c->flags &= ~PIER__C_FRESH;
        arm_deadline(c, pier__conn_lim(c)->idle_ms);
        pier_conn_ref(c);
        c->owner->fresh_cb(c);
        pier_conn_unref(c);
        return;
    }
    if (c->flags & PIER__C_IDLE_HOLD) {
        arm_deadline(c, pier__conn_lim(c)->idle_ms);
        return;
    }
    if (!c->err)
        c->err = -ETIMEDOUT;
    c->flags |= PIER__C_IDLE_GONE;
    pier_conn_ref(c);
    pier_conn_close(c);
    pier_conn_unref(c);
}

static void finalize(pier_conn_t *c) {
    pier_loop_t *loop = c->loop;
    c->flags |= PIER__C_CLOSED | PIER__C_CLOSING;
    if (c->x)
        pier__pending_cancel(&c->x->flush_p);
    /* close_step's own linger read may have queued it again on its way here */
    pier__pending_cancel(&c->pass_p);
    pier__dl_stop(c->loop, &c->dl);
    if (c->flags & PIER__C_ABORT) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close() sends RST */
        setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    /* close() alone leaves the socket in epoll while another reference to it lives (a
     * child between fork and exec, as an upgrade makes, or a dup), and its events
     * would then name this freed connection */
    pier__io_del(loop, &c->io);
    close(c->io.fd);
    pier__id_release(c);
    pier__loop_handle_del(loop);
    pier__mx_inc(pier__loop_metrics(loop), PIER__MX(conns_closed) + (size_t)pier__mx_close_reason(c->err));
    out_drop_all(c);
    pier_conn_ref(c);
    if (c->cbs && c->cbs->on_close)
        c->cbs->on_close(c, c->err);
    c->owner->ops->closed(c->owner, c, c->err);
    if (c->x && c->x->tp)
        c->x->tp->free(c);
    x_drop(c);
    pier_conn_unref(c);
    pier_conn_unref(c); /* the loop's reference */
}

/* Flushes during a close: 0 when all is out, -1 when the close must wait (for the
 * socket: after_flush() brings it back) or is over (a failure finalized it). */
static int close_flush(pier_conn_t *c) {
    int err = flush_or_wait(c);
    if (err < 0) {
        fail(c, err);
        finalize(c);
        return -1;
    }
    return has_output(c) ? -1 : 0;
}

/* Input the peer sent that nobody has read: close() over it would reset the connection. */
static int unread(const pier_conn_t *c) {
    return (c->flags & PIER__C_READABLE) || kept(c) > 0;
}

/* One step of a close: flush, then either close at once, when the peer is done and
 * nothing of its is unread (close() sends our FIN after the output, and nothing is to
 * come that a wait could take), or send our FIN and linger for the peer's; then
 * finalize. Returns without finalizing while it has to wait for the socket or the peer. */
static void close_step(pier_conn_t *c) {
    if (c->flags & PIER__C_CLOSED)
        return;
    if (!(c->flags & (PIER__C_ABORT | PIER__C_SHUT))) {
        if (has_output(c) && close_flush(c) < 0)
            return;
        if (pier__conn_tp(c) && !(c->flags & PIER__C_TP_SHUT)) {
            /* the transport's goodbye (TLS close_notify) goes after the queue, once */
            c->flags |= PIER__C_TP_SHUT;
            c->x->tp->shutdown(c);
            if (has_output(c) && close_flush(c) < 0)
                return;
        }
        if ((c->flags & PIER__C_EOF) && !unread(c)) {
            finalize(c);
            return;
        }
        /* Half-close and wait for the peer's FIN before close(): closing with unread
         * input would reset the connection and could destroy our last response
         * before the peer has read it. A FIN already read shows again at once. */
        shutdown(c->io.fd, SHUT_WR);
        c->flags = (c->flags & ~PIER__C_EOF) | PIER__C_SHUT;
        arm_deadline(c, linger_ms(pier__conn_lim(c)));
        linger_read(c);
    }
    if (c->flags & (PIER__C_ABORT | PIER__C_EOF))
        finalize(c);
}

static void flush_pass_cb(pier__pending_t *p) {
    pier_conn_t *c = pier__container_of(p, pier__conn_x_t, flush_p)->c;
    pier_conn_ref(c);
    flush_now(c);
    pier_conn_unref(c);
}


/* ---- the id-based calls ---- */

typedef struct id_task_s {
    pier_task_t task;
    pier_id_t id;
    void (*fn)(pier_conn_t *c, void *arg);
    void *arg;
    size_t len;
    char data[];
} id_task_t;

static void send_task(void *arg) {
    id_task_t *t = arg;
    pier_conn_t *c = pier__id_conn(t->id);
    if (t->fn) {
        t->fn(c && pier_conn_is_open(c) ? c : NULL, t->arg);
    } else if (c) {
        if (t->len)
            pier_conn_write(c, t->data, t->len);
        else
            pier_conn_close(c);
    }
    free(t);
}

static int post_id_task(pier_id_t id, const void *data, size_t len, void (*fn)(pier_conn_t *, void *), void *arg) {
    pier_loop_t *loop = pier__id_loop(id);
    if (!loop)
        return -ENOTCONN;
    id_task_t *t = malloc(sizeof *t + len);
    if (!t)
        return -ENOMEM;
    pier_task_init(&t->task, send_task, t);
    t->id = id;
    t->fn = fn;
    t->arg = arg;
    t->len = len;
    if (len)
        memcpy(t->data, data, len);
    pier_loop_post_task(loop, &t->task); /* a fresh task: cannot fail */
    return 0;
}

int pier_send(pier_id_t id, const void *data, size_t len) {
    pier_loop_t *loop = pier__id_loop(id);
    if (!loop)
        return -ENOTCONN;
    if (pier_loop_is_current(loop)) {
        pier_conn_t *c = pier__id_conn(id);
        return c ? pier_conn_write(c, data, len) : -ENOTCONN;
    }
    if (len == 0)
        return 0;
    return post_id_task(id, data, len, NULL, NULL);
}

int pier_close(pier_id_t id) {
    pier_loop_t *loop = pier__id_loop(id);
    if (!loop)
        return -ENOTCONN;
    if (pier_loop_is_current(loop)) {
        pier_conn_t *c = pier__id_conn(id);
        if (!c)
            return -ENOTCONN;
        pier_conn_close(c);
        return 0;
    }
    return post_id_task(id, NULL, 0, NULL, NULL);
}

int pier_with_conn(pier_id_t id, void (*fn)(pier_conn_t *c, void *arg), void *arg) {
    if (!fn)
        return -EINVAL;
    return post_id_task(id, NULL, 0, fn, arg);
}

/* ---- where the memory goes ---- */

void pier__conn_mem_log(void) {
    /* the figures are the process's (one id table for every server): said once */
    static atomic_flag said = ATOMIC_FLAG_INIT;
    if (atomic_flag_test_and_set(&said))
        return;
    size_t bytes, slots, live;
    pier__id_mem(&bytes, &slots, &live);
    pier_log(PIER_LOG_INFO,
             "net: an idle connection costs %zu bytes: its struct, in the id table (no allocator header, no "
             "buffer, queue or protocol state while idle); table: %zu slots, %zu KiB at most resident, %zu "
             "connections in it now. While busy a connection also takes a %zu-byte part (kept input, output "
             "queue of %zu items inline, transport) from its loop's cache, %d-byte output chunks (cached, up "
             "to %d per loop) and a buffer for input its protocol left unconsumed; all go back when it is idle",
             sizeof(pier_conn_t), slots, bytes / 1024, live, sizeof(pier__conn_x_t),
             INL_ITEMS, PIER__CHUNK, 256);
}

/* ---- addresses ---- */

const char *pier__addr_str(const void *sa, char *buf, size_t size) {
    const struct sockaddr *s = sa;
    char host[INET6_ADDRSTRLEN] = "?";
    if (s->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        const struct sockaddr_in *in = sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(buf, size, "%s:%u", host, ntohs(in->sin_port));
    }
    return buf;
}

int pier__addr_parse(const char *host, uint16_t port, void *ss) {
    memset(ss, 0, sizeof(struct sockaddr_storage));
    if (!host || !*host)
        host = "127.0.0.1";
    struct sockaddr_in *in = ss;
    struct sockaddr_in6 *in6 = ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        return sizeof *in;
    }
    char tmp[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof tmp) { /* "[::1]" */
        memcpy(tmp, host + 1, n - 2);
        tmp[n - 2] = 0;
        host = tmp;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        return sizeof *in6;
    }
    return -EINVAL;
}
