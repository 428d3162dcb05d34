/* Connections: reading into a shared buffer, the output queue, water marks, and the
 * two-phase close.
 *
 * Lifetime invariants (DESIGN.md):
 *  - the loop holds one reference from pier__conn_new() until finalize();
 *  - every event handler holds a reference for its whole duration, so a callback that
 *    closes or unrefs cannot free the connection under the handler;
 *  - finalize() (fd closed, on_close, id released) runs only from the close pass at the
 *    end of a loop iteration, never during an epoll batch: a later event of the same
 *    batch still finds valid memory and sees CLOSED, and is dropped.
 *
 * Reading: epoll is edge-triggered. A read that fills the buffer leaves the connection
 * READABLE and queues it on again_q for the next iteration (fairness); a short read means
 * the socket is drained and the next edge will come. Reads go into the loop's shared
 * 64 KiB buffer; only bytes the protocol did not consume are copied into a buffer of the
 * connection's own, which is freed as soon as it empties, so an idle connection holds no
 * read buffer at all. */
#include "conn.h"
#include "idtab.h"

#include <arpa/inet.h>
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
static void conn_timer_cb(pier_timer_t *t);

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

int pier__conn_new(pier_loop_t *loop, int fd, const pier_conn_limits_t *lim, pier_conn_t **out) {
    pier_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->io.fd = fd;
    c->io.cb = conn_io_cb;
    c->loop = loop;
    c->refs = 1;
    if (lim)
        c->lim = *lim;
    pier__limits_default(&c->lim);
    c->id = pier__id_alloc(loop, c);
    if (c->id == PIER_ID_NONE) {
        free(c);
        return -ENOMEM;
    }
    pier__queue_init(&c->flush_q);
    pier__queue_init(&c->close_q);
    pier__queue_init(&c->again_q);
    pier_timer_init(loop, &c->timer, conn_timer_cb, c);
    int err = pier__io_add(loop, &c->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
    if (err < 0) {
        pier__id_release(c->id);
        free(c);
        return err;
    }
    pier__queue_insert_tail(&loop->conns, &c->all_q);
    loop->handles++;
    c->last_io = loop->now;
    if (c->lim.idle_ms)
        pier_timer_start(&c->timer, c->lim.idle_ms, 0);
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
pier_id_t pier_conn_id(const pier_conn_t *c) { return c->id; }
pier_loop_t *pier_conn_loop(const pier_conn_t *c) { return c->loop; }
int pier_conn_fd(const pier_conn_t *c) { return c->flags & PIER__C_CLOSED ? -1 : c->io.fd; }
int pier_conn_is_open(const pier_conn_t *c) { return !(c->flags & PIER__C_CLOSING); }
size_t pier_conn_queued(const pier_conn_t *c) { return c->queued; }
pier_server_t *pier_conn_server(const pier_conn_t *c) { return c->server; }
pier_client_t *pier_conn_client(const pier_conn_t *c) { return c->client; }

const char *pier_conn_peer(const pier_conn_t *c, char *buf, size_t size) {
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
                 (unsigned long long)c->id);
        c->refs = 1;
        return;
    }
    free(c);
}

/* ---- the output queue ---- */

static pier__out_t *out_push(pier_conn_t *c) {
    if (c->ohead + c->ocount == c->ocap) {
        if (c->ohead > 0) {
            memmove(c->out, c->out + c->ohead, c->ocount * sizeof *c->out);
            c->ohead = 0;
        } else {
            uint32_t cap = c->ocap ? c->ocap * 2 : 2; /* most connections queue one or two items */
            pier__out_t *out = realloc(c->out, cap * sizeof *out);
            if (!out)
                return NULL;
            c->out = out;
            c->ocap = cap;
        }
    }
    pier__out_t *o = &c->out[c->ohead + c->ocount++];
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
    out_release(c, &c->out[c->ohead]);
    c->ohead++;
    if (--c->ocount == 0)
        c->ohead = 0;
}

static void out_drop_all(pier_conn_t *c) {
    while (c->ocount)
        out_pop(c);
    c->queued = 0;
    free(c->out);
    c->out = NULL;
    c->ocap = 0;
}

static void want_flush(pier_conn_t *c) {
    if (!pier__queue_linked(&c->flush_q))
        pier__queue_insert_tail(&c->loop->flush_q, &c->flush_q);
}

static void note_queued(pier_conn_t *c, size_t n) {
    c->queued += n;
    if (c->queued > c->lim.out_high)
        c->flags |= PIER__C_WATER_PAUSE;
    want_flush(c);
}

static void fail(pier_conn_t *c, int err) {
    if (!c->err)
        c->err = err;
    pier_conn_abort(c);
}

/* Writes straight to the socket while nothing is queued: large buffers skip the copy.
 * Returns bytes written (0 if the socket is full) or a negative errno. */
static ssize_t direct_write(pier_conn_t *c, const void *data, size_t len) {
    for (;;) {
        ssize_t n = send(c->io.fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            c->last_io = c->loop->now;
            return n;
        }
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    }
}

int pier_conn_write(pier_conn_t *c, const void *data, size_t len) {
    if (c->flags & PIER__C_CLOSING)
        return -ENOTCONN;
    const char *p = data;
    if (len >= DIRECT_WRITE_MIN && c->ocount == 0) {
        ssize_t n = direct_write(c, p, len);
        if (n < 0) {
            fail(c, (int)n);
            return -ENOTCONN;
        }
        p += n;
        len -= (size_t)n;
    }
    size_t total = len;
    while (len > 0) {
        pier__out_t *tail = c->ocount ? &c->out[c->ohead + c->ocount - 1] : NULL;
        size_t room = tail && tail->kind == PIER__OUT_COPY ? (size_t)tail->ud - tail->len : 0;
        if (room == 0) {
            size_t cap = len > PIER__CHUNK ? len : PIER__CHUNK;
            char *buf = cap == PIER__CHUNK ? pier__chunk_get(c->loop) : malloc(cap);
            if (!buf || !(tail = out_push(c))) {
                free(buf);
                note_queued(c, total - len);
                /* part of this write is already out or queued: what follows on the
                 * stream would be corrupt, so the connection cannot go on */
                if (p != (const char *)data)
                    fail(c, -ENOMEM);
                return -ENOMEM;
            }
            tail->kind = PIER__OUT_COPY;
            tail->base = buf;
            tail->ud = (void *)cap;
            room = cap;
        }
        size_t n = len < room ? len : room;
        memcpy(tail->base + tail->len, p, n);
        tail->len += n;
        p += n;
        len -= n;
    }
    note_queued(c, total);
    return 0;
}

int pier_conn_write_ref(pier_conn_t *c, const void *base, size_t len, pier_free_cb free_cb, void *ud) {
    if (c->flags & PIER__C_CLOSING) {
        if (free_cb)
            free_cb((void *)base, ud);
        return -ENOTCONN;
    }
    size_t done = 0;
    if (len >= DIRECT_WRITE_MIN && c->ocount == 0) {
        ssize_t n = direct_write(c, base, len);
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
    pier__out_t *o = out_push(c);
    if (!o) {
        if (done > 0)
            fail(c, -ENOMEM); /* a partial write: the stream cannot go on */
        if (free_cb)
            free_cb((void *)base, ud);
        return -ENOMEM;
    }
    o->kind = PIER__OUT_REF;
    o->base = (char *)base;
    o->len = len;
    o->off = done;
    o->free_cb = free_cb;
    o->ud = ud;
    note_queued(c, len - done);
    return 0;
}

int pier_conn_sendfile(pier_conn_t *c, int fd, off_t offset, size_t len) {
    if (c->flags & PIER__C_CLOSING) {
        close(fd);
        return -ENOTCONN;
    }
    if (len == 0) {
        close(fd);
        return 0;
    }
    pier__out_t *o = out_push(c);
    if (!o) {
        close(fd);
        return -ENOMEM;
    }
    o->kind = PIER__OUT_FILE;
    o->fd = fd;
    o->foff = offset;
    o->len = len;
    note_queued(c, len);
    return 0;
}

static void consume(pier_conn_t *c, size_t n) {
    c->queued -= n;
    while (n > 0) {
        pier__out_t *o = &c->out[c->ohead];
        size_t left = o->len - o->off;
        if (n < left) {
            o->off += n;
            return;
        }
        n -= left;
        out_pop(c);
    }
}

/* Writes as much of the queue as the socket takes: one sendmsg for the memory items at
 * the head (up to IOV_BATCH), sendfile for file items. 0 when the queue is empty or the
 * socket is full; a negative errno when the connection failed. */
static int flush(pier_conn_t *c) {
    while (c->ocount > 0) {
        pier__out_t *o = &c->out[c->ohead];
        if (o->kind == PIER__OUT_FILE) {
            ssize_t n = sendfile(c->io.fd, o->fd, &o->foff, o->len - o->off);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return errno == EAGAIN ? 0 : -errno;
            }
            if (n == 0)
                return -EIO; /* the file shrank under us */
            c->last_io = c->loop->now;
            consume(c, (size_t)n);
            continue;
        }
        struct iovec iov[IOV_BATCH];
        int cnt = 0;
        size_t total = 0;
        for (uint32_t i = c->ohead; i < c->ohead + c->ocount && cnt < IOV_BATCH; i++) {
            if (c->out[i].kind == PIER__OUT_FILE)
                break;
            iov[cnt].iov_base = c->out[i].base + c->out[i].off;
            iov[cnt].iov_len = c->out[i].len - c->out[i].off;
            total += iov[cnt++].iov_len;
        }
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
        ssize_t n = sendmsg(c->io.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        }
        c->last_io = c->loop->now;
        consume(c, (size_t)n);
        if ((size_t)n < total)
            return 0; /* the socket is full; EPOLLOUT will bring us back */
    }
    return 0;
}

static void schedule_close(pier_conn_t *c) {
    if (!pier__queue_linked(&c->close_q))
        pier__queue_insert_tail(&c->loop->close_q, &c->close_q);
}

static void queue_read(pier_conn_t *c) {
    if (!pier__queue_linked(&c->again_q))
        pier__queue_insert_tail(&c->loop->again_q, &c->again_q);
}

static void want_read(pier_conn_t *c) {
    if (c->flags & (PIER__C_READABLE | PIER__C_REDELIVER))
        queue_read(c);
}

/* After a flush: resume below the low water mark, and let a pending close proceed. */
static void after_flush(pier_conn_t *c) {
    if ((c->flags & PIER__C_WATER_PAUSE) && c->queued <= c->lim.out_low) {
        c->flags &= ~PIER__C_WATER_PAUSE;
        if (!(c->flags & PIER__C_CLOSING)) {
            /* input kept while paused is handed to the protocol again, as on resume:
             * it may hold complete requests that waited for the queue to drain */
            if (c->rlen > 0 && !(c->flags & PIER__C_USER_PAUSE))
                c->flags |= PIER__C_REDELIVER;
            want_read(c);
            if (c->cbs && c->cbs->on_drain)
                c->cbs->on_drain(c);
        }
    }
    if ((c->flags & PIER__C_CLOSING) && c->ocount == 0)
        schedule_close(c);
}

static void flush_now(pier_conn_t *c) {
    if (c->flags & PIER__C_CLOSED)
        return;
    int err = flush(c);
    if (err < 0)
        fail(c, err);
    else
        after_flush(c);
}

/* ---- reading ---- */

/* Keeps the bytes the protocol did not consume, in a buffer of the connection's own. */
static int keep_unconsumed(pier_conn_t *c, const char *data, size_t len, int own) {
    if (len == 0) {
        free(c->rbuf);
        c->rbuf = NULL;
        c->rlen = c->rcap = 0;
        return 0;
    }
    if (len >= c->lim.read_max)
        return -EMSGSIZE;
    if (own) {
        memmove(c->rbuf, data, len);
    } else {
        size_t cap = len * 2 < 4096 ? 4096 : len * 2;
        if (cap > c->lim.read_max)
            cap = c->lim.read_max;
        char *buf = malloc(cap);
        if (!buf)
            return -ENOMEM;
        memcpy(buf, data, len);
        c->rbuf = buf;
        c->rcap = cap;
    }
    c->rlen = len;
    return 0;
}

/* Reads and discards while lingering after our FIN, until the peer's FIN or an error. */
static void linger_read(pier_conn_t *c) {
    for (;;) {
        ssize_t n = read(c->io.fd, c->loop->rbuf, PIER__READ_BUF);
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
    if (c->flags & PIER__C_CLOSING)
        return;
    int err = keep_unconsumed(c, data + used, len - used, own);
    if (err < 0) {
        pier_log(PIER_LOG_WARN, "connection %llu: %zu unconsumed bytes reach the read limit, closing",
                 (unsigned long long)c->id, len - used);
        fail(c, err);
    }
}

static void do_read(pier_conn_t *c) {
    if (c->flags & (PIER__C_CLOSING | PIER__C_USER_PAUSE | PIER__C_WATER_PAUSE))
        return;
    if (c->flags & PIER__C_REDELIVER) {
        /* resumed with bytes kept from before the pause: the protocol sees them again
         * before anything new is read */
        c->flags &= ~PIER__C_REDELIVER;
        deliver(c, c->rbuf, c->rlen, 1);
        want_read(c);
        return;
    }
    int own = c->rlen > 0;
    char *buf = c->loop->rbuf;
    size_t room = PIER__READ_BUF;
    if (own) {
        if (c->rlen == c->rcap) {
            size_t cap = c->rcap * 2 > c->lim.read_max ? c->lim.read_max : c->rcap * 2;
            char *nb = cap > c->rcap ? realloc(c->rbuf, cap) : NULL;
            if (!nb) {
                fail(c, cap > c->rcap ? -ENOMEM : -EMSGSIZE);
                return;
            }
            c->rbuf = nb;
            c->rcap = cap;
        }
        buf = c->rbuf + c->rlen;
        room = c->rcap - c->rlen;
    }
    ssize_t n = read(c->io.fd, buf, room);
    if (n < 0) {
        if (errno == EINTR) {
            want_read(c);
            return;
        }
        c->flags &= ~PIER__C_READABLE;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            fail(c, -errno);
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
    if ((size_t)n < room && !(c->flags & PIER__C_RDHUP))
        c->flags &= ~PIER__C_READABLE;
    else
        want_read(c);
    c->last_io = c->loop->now;
    if (own) {
        c->rlen += (size_t)n;
        deliver(c, c->rbuf, c->rlen, 1);
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
        fail(c, soerr ? -soerr : -EIO);
    } else {
        if ((events & EPOLLOUT) && c->ocount)
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

void pier__net_process_again(pier_loop_t *loop) {
    /* one pass over the connections that had more to read, taken aside first: those
     * that still have more after this read are queued again for the next iteration */
    pier__queue_t pending;
    pier__queue_move(&loop->again_q, &pending);
    while (!pier__queue_empty(&pending)) {
        pier_conn_t *c = pier__container_of(pier__queue_head(&pending), pier_conn_t, again_q);
        pier__queue_remove(&c->again_q);
        pier_conn_ref(c);
        do_read(c);
        pier_conn_unref(c);
    }
}

void pier_conn_pause(pier_conn_t *c) { c->flags |= PIER__C_USER_PAUSE; }

void pier_conn_resume(pier_conn_t *c) {
    if (!(c->flags & PIER__C_USER_PAUSE))
        return;
    c->flags &= ~PIER__C_USER_PAUSE;
    /* bytes kept from before the pause are delivered with the next read; if the socket
     * has nothing more, deliver them now through the again pass */
    if (c->rlen > 0)
        c->flags |= PIER__C_REDELIVER;
    if (c->flags & (PIER__C_READABLE | PIER__C_REDELIVER))
        queue_read(c);
}

void pier_conn_set_limits(pier_conn_t *c, const pier_conn_limits_t *lim) {
    if (lim->out_high)
        c->lim.out_high = lim->out_high;
    if (lim->out_low)
        c->lim.out_low = lim->out_low;
    if (lim->read_max)
        c->lim.read_max = lim->read_max;
    if (lim->close_ms)
        c->lim.close_ms = lim->close_ms;
    if (lim->idle_ms) {
        c->lim.idle_ms = lim->idle_ms;
        if (!(c->flags & PIER__C_CLOSING))
            pier_timer_start(&c->timer, lim->idle_ms, 0);
    }
}

void pier_conn_touch(pier_conn_t *c) { c->last_io = c->loop->now; }

/* ---- closing ---- */

void pier_conn_close(pier_conn_t *c) {
    if (c->flags & PIER__C_CLOSING)
        return;
    c->flags |= PIER__C_CLOSING;
    pier__id_closing(c->id);
    if (pier__queue_linked(&c->again_q))
        pier__queue_remove(&c->again_q);
    pier_timer_start(&c->timer, c->lim.close_ms, 0);
    schedule_close(c);
}

void pier_conn_abort(pier_conn_t *c) {
    if (c->flags & (PIER__C_CLOSED | PIER__C_ABORT))
        return;
    c->flags |= PIER__C_CLOSING | PIER__C_ABORT;
    pier__id_closing(c->id);
    if (pier__queue_linked(&c->again_q))
        pier__queue_remove(&c->again_q);
    out_drop_all(c);
    schedule_close(c);
}

static void conn_timer_cb(pier_timer_t *t) {
    pier_conn_t *c = t->data;
    if (c->flags & PIER__C_CLOSING) {
        /* the flush or the linger took too long */
        if (!(c->flags & PIER__C_SHUT)) {
            pier_log(PIER_LOG_DEBUG, "connection %llu: close could not flush %zu bytes in time, resetting",
                     (unsigned long long)c->id, c->queued);
            fail(c, -ETIMEDOUT);
        }
        c->flags |= PIER__C_EOF;
        schedule_close(c);
        return;
    }
    uint64_t idle = c->loop->now - c->last_io;
    if (idle < c->lim.idle_ms) {
        pier_timer_start(t, c->lim.idle_ms - idle, 0);
        return;
    }
    if (!c->err)
        c->err = -ETIMEDOUT;
    pier_conn_ref(c);
    pier_conn_close(c);
    pier_conn_unref(c);
}

static void finalize(pier_conn_t *c) {
    pier_loop_t *loop = c->loop;
    c->flags |= PIER__C_CLOSED | PIER__C_CLOSING;
    if (pier__queue_linked(&c->flush_q))
        pier__queue_remove(&c->flush_q);
    if (pier__queue_linked(&c->again_q))
        pier__queue_remove(&c->again_q);
    /* close_step's own linger read may have queued it again on its way here */
    if (pier__queue_linked(&c->close_q))
        pier__queue_remove(&c->close_q);
    pier__queue_remove(&c->all_q);
    pier_timer_stop(&c->timer);
    if (c->flags & PIER__C_ABORT) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close() sends RST */
        setsockopt(c->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->io.fd);
    pier__id_release(c->id);
    loop->handles--;
    out_drop_all(c);
    free(c->rbuf);
    c->rbuf = NULL;
    c->rlen = c->rcap = 0;
    pier_conn_ref(c);
    if (c->cbs && c->cbs->on_close)
        c->cbs->on_close(c, c->err);
    if (c->server)
        pier__server_conn_closed(c->server, c);
    if (c->client)
        pier__client_conn_closed(c->client, c, c->err);
    pier_conn_unref(c);
    pier_conn_unref(c); /* the loop's reference */
}

/* One step of a close: flush, send our FIN, linger for the peer's, then finalize.
 * Returns without finalizing while it has to wait for the socket. */
static void close_step(pier_conn_t *c) {
    if (c->flags & PIER__C_CLOSED)
        return;
    if (!(c->flags & PIER__C_ABORT)) {
        if (c->ocount > 0) {
            int err = flush(c);
            if (err < 0) {
                fail(c, err);
                finalize(c);
                return;
            }
            if (c->ocount > 0)
                return; /* after_flush() brings us back when the socket drains */
        }
        if (!(c->flags & PIER__C_SHUT)) {
            /* Half-close and wait for the peer's FIN before close(): closing with unread
             * input would reset the connection and could destroy our last response
             * before the peer has read it. */
            shutdown(c->io.fd, SHUT_WR);
            c->flags |= PIER__C_SHUT;
            if (!(c->flags & PIER__C_EOF)) {
                uint64_t ms = c->lim.close_ms < LINGER_MS ? c->lim.close_ms : LINGER_MS;
                pier_timer_start(&c->timer, ms, 0);
                linger_read(c);
            }
        }
        if (!(c->flags & PIER__C_EOF))
            return;
    }
    finalize(c);
}

void pier__net_process_flush(pier_loop_t *loop) {
    while (!pier__queue_empty(&loop->flush_q)) {
        pier_conn_t *c = pier__container_of(pier__queue_head(&loop->flush_q), pier_conn_t, flush_q);
        pier__queue_remove(&c->flush_q);
        pier_conn_ref(c);
        flush_now(c);
        pier_conn_unref(c);
    }
}

void pier__net_process_close(pier_loop_t *loop) {
    while (!pier__queue_empty(&loop->close_q)) {
        pier_conn_t *c = pier__container_of(pier__queue_head(&loop->close_q), pier_conn_t, close_q);
        pier__queue_remove(&c->close_q);
        pier_conn_ref(c);
        close_step(c);
        pier_conn_unref(c);
    }
}

/* ---- the id-based calls ---- */

typedef struct id_task_s {
    pier__task_t task;
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
    t->task.fn = send_task;
    t->task.arg = t;
    t->task.owned = 0;
    t->id = id;
    t->fn = fn;
    t->arg = arg;
    t->len = len;
    if (len)
        memcpy(t->data, data, len);
    pier__loop_post_task(loop, &t->task);
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
