/* The TLS transport beneath a connection.
 *
 * Why a BIO of pier's own rather than OpenSSL's socket BIO or a pair of memory BIOs:
 *  - reads go straight from the socket into OpenSSL's record buffer (read_ahead), as the
 *    socket BIO would, so no ciphertext is copied and none is kept per connection between
 *    reads; a read that would block tells us the socket is drained, which is exactly
 *    what edge-triggered epoll needs to know. A memory BIO would need the ciphertext read
 *    into a buffer first and copied again, and it keeps its own buffer per connection;
 *  - writes append to the connection's ciphertext buffer (never blocking, so SSL_write
 *    takes a whole item or fails), and the flush sends it with one send() per batch, as
 *    plain connections send their queue with one sendmsg. The socket BIO would make one
 *    send() per record. Ciphertext the socket did not take waits there; the buffer is
 *    kept for the next batch while more output is queued and freed once it is all out,
 *    so an idle connection holds none.
 *
 * The plaintext queue (out[]) stays the connection's: it counts against the water marks
 * as on plain TCP, and items are encrypted in order only when the socket can take them,
 * until about BATCH bytes of ciphertext wait, files through the loop's 16 KiB chunks. The
 * ciphertext waiting in wbuf counts against the water marks as well (in c->queued, until
 * the socket takes it): encrypting moves bytes from one queue to the other, and neither
 * pier_conn_queued() nor on_drain may forget them in between. */
#include "tls_int.h"
#include "metrics/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define BATCH (64 * 1024) /* ciphertext made per round of a flush */
/* What a batch can hold beyond BATCH: the headers and tags of its records (at most 29
 * bytes each in TLS 1.2, 22 in 1.3), a record being at most 16 KiB of plaintext. */
#define BATCH_SLACK 1024
/* Reading can make output of its own (alerts, TLS 1.3 key updates). The flush adds at
 * most BATCH, and only once the socket took the last batch; more than this unsent is a
 * peer provoking replies it does not read, and its connection is closed. */
#define READ_OUT_MAX (4 * BATCH)

enum {
    T_READY = 1 << 0,    /* handshake done; the application has the connection */
    T_FATAL = 1 << 1,    /* OpenSSL failed: no more SSL calls but SSL_free */
    T_EOF = 1 << 2,      /* the socket read returned 0 */
    T_INPUT = 1 << 3,    /* the peer has sent at least one byte */
    T_NOT_TLS = 1 << 4,  /* the first bytes were text, not a TLS record */
    T_CLIENT = 1 << 5,
    T_SHORT = 1 << 6,    /* a socket read of this read step took less than asked: drained */
    T_SHUT = 1 << 7,     /* close_notify made */
    T_SOCKW = 1 << 8,    /* OpenSSL writes to the socket itself (socket write mode) */
    T_WBLOCK = 1 << 9,   /* socket write mode: OpenSSL holds a record the socket did not
                          * take; the call that made it (wop) must be made again */
    T_KTLS = 1 << 10,    /* the kernel encrypts what we send: files go by SSL_sendfile */
    T_TOLD = 1 << 11,    /* the owner's ready hook has run */
};

/* What a socket write mode connection retries once the socket takes more. */
enum { W_HS, W_DATA, W_SHUT };

typedef struct tls_conn_s {
    SSL *ssl;
    pier_tls_ctx_t *ctx;
    pier_conn_t *c;
    pier__buf_t wbuf;           /* ciphertext not yet on the socket, from woff */
    size_t woff;
    size_t counted;             /* bytes of it counted in c->queued */
    int sock_err;               /* what the socket said, for the error OpenSSL reports */
    int end;                    /* result kept for the next read, once data came with it */
    void **session;             /* a client's slot for its last session, or NULL */
    unsigned flags;
    int wop;                    /* with T_WBLOCK: the call to make again */
    size_t wtry;                /* with W_DATA: the length SSL_write was given */
    pier_timer_t *hs_timer;     /* the handshake deadline, freed once it is done: an
                                 * idle connection does not keep it */
} tls_conn_t;

static const pier__transport_t tls_transport;

#ifdef OPENSSL_NO_KTLS
#define ktls_sending(ssl) 0
#else
#define ktls_sending(ssl) BIO_get_ktls_send(SSL_get_wbio(ssl))
#endif

/* OpenSSL's error queue must be empty before a call whose failure SSL_get_error reads.
 * Every failure path here empties it, so it is almost always empty already, and
 * ERR_clear_error costs far more than a look (it was 11% of a keep-alive request). */
static void err_clean(void) {
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* ---- the BIO ---- */

static int bio_read(BIO *b, char *out, int len) {
    tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n;
    do
        n = read(t->c->io.fd, out, (size_t)len);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        t->flags = n < len ? t->flags | T_SHORT : t->flags & ~T_SHORT;
        pier__conn_active(t->c);
        /* A TLS connection starts with a handshake record (22). Text is someone speaking
         * plain HTTP (or another line protocol) to the TLS port. */
        if (!(t->flags & (T_INPUT | T_CLIENT)) && out[0] >= 'A' && out[0] <= 'Z') {
            t->flags |= T_INPUT | T_NOT_TLS;
            return -1;
        }
        t->flags |= T_INPUT;
        return (int)n;
    }
    if (n == 0) {
        t->flags |= T_EOF;
        return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        BIO_set_retry_read(b);
        return -1;
    }
    t->sock_err = -errno;
    return -1;
}

static int bio_write(BIO *b, const char *in, int len) {
    tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (pier__buf_append(&t->wbuf, in, (size_t)len) < 0) {
        t->sock_err = -ENOMEM;
        return -1;
    }
    t->counted += (size_t)len;
    t->c->x->queued += (size_t)len; /* a transport's connection always has its busy part */
    return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* flushing is ours, after each OpenSSL call */
}

static int bio_create(BIO *b) {
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pier");
    if (m && BIO_meth_set_read(m, bio_read) == 1 && BIO_meth_set_write(m, bio_write) == 1 &&
        BIO_meth_set_ctrl(m, bio_ctrl) == 1 && BIO_meth_set_create(m, bio_create) == 1) {
        bio_method = m;
        return;
    }
    BIO_meth_free(m);
}

/* ---- sending ciphertext ---- */

/* n bytes of wbuf reached the socket. An abort may have zeroed c->queued already. */
static void uncount(tls_conn_t *t, size_t n) {
    pier_conn_t *c = t->c;
    if (n > t->counted)
        n = t->counted;
    t->counted -= n;
    c->x->queued -= n < c->x->queued ? n : c->x->queued;
}

/* Sends what waits in wbuf: 0 when all is out (the buffer is then freed), 1 when the
 * socket is full (EPOLLOUT brings the flush back), or a negative errno. */
static int send_pending(tls_conn_t *t) {
    pier_conn_t *c = t->c;
    while (t->woff < t->wbuf.len) {
        ssize_t n = send(c->io.fd, t->wbuf.p + t->woff, t->wbuf.len - t->woff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -errno;
        }
        t->woff += (size_t)n;
        uncount(t, (size_t)n);
        pier__conn_sent(c);
    }
    /* A ready connection with more queued encrypts the next batch into the same memory
     * at once (tls_flush); anything else may go idle now and keeps none. */
    if ((t->flags & T_READY) && pier__conn_out_head(c))
        pier__buf_reset(&t->wbuf);
    else
        pier__buf_free(&t->wbuf);
    t->woff = 0;
    return 0;
}

/* After an OpenSSL call that may have produced output (handshake messages, alerts,
 * tickets): send it now, or leave the rest to the flush pass. */
static int push_out(tls_conn_t *t) {
    int r = send_pending(t);
    if (r == 1)
        pier__conn_want_flush(t->c);
    return r < 0 ? r : 0;
}

/* ---- handshake ---- */

/* A client keeps the last session a server gave it (TLS 1.3 tickets come after the
 * handshake, TLS 1.2's during it) and offers it on its next connection. */
int pier__tls_new_session(SSL *ssl, SSL_SESSION *sess) {
    tls_conn_t *t = SSL_get_app_data(ssl);
    if (!t || !t->session || !SSL_SESSION_is_resumable(sess))
        return 0; /* not kept: OpenSSL frees it */
    SSL_SESSION_free(*t->session);
    *t->session = sess;
    return 1;
}

static void forget_session(tls_conn_t *t) {
    if (!t->session)
        return;
    SSL_SESSION_free(*t->session);
    *t->session = NULL;
}

static void count_failure(tls_conn_t *t, const char *why) {
    pier_tls_ctx_t *ctx = t->ctx;
    char peer[64];
    atomic_fetch_add(&ctx->failed, 1);
    pier__mx_inc(pier__loop_metrics(t->c->loop), PIER__MX(tls_handshakes_failed));
    pier__log_every(&ctx->log_fail, pier_loop_now(t->c->loop), PIER_LOG_WARN,
                    "tls: handshake with %s failed: %s (%llu failed so far; logged at most once a second)",
                    pier_conn_peer(t->c, peer, sizeof peer), why, (unsigned long long)atomic_load(&ctx->failed));
}

static void hs_done(tls_conn_t *t) {
    if (!t->hs_timer)
        return;
    pier_timer_stop(t->hs_timer);
    free(t->hs_timer);
    t->hs_timer = NULL;
}

static void hs_timeout(pier_timer_t *timer) {
    tls_conn_t *t = timer->data;
    t->flags |= T_FATAL;
    count_failure(t, "timed out");
    pier__conn_fail(t->c, -ETIMEDOUT);
}

/* A peer that spoke text to the TLS port: the context's plain reply goes out raw, then
 * a graceful close (its FIN after the reply, and the rest of the request read away so
 * no reset destroys the reply). */
static int reply_plain(tls_conn_t *t) {
    count_failure(t, "not TLS (plain text)");
    t->flags |= T_FATAL;
    if (!t->ctx->plain_reply)
        return -EPROTO;
    if (pier__buf_append(&t->wbuf, t->ctx->plain_reply, t->ctx->plain_len) < 0)
        return -ENOMEM;
    hs_done(t);
    pier_conn_close(t->c);
    return push_out(t) < 0 ? -EPIPE : -EAGAIN;
}

static int hs_failed(tls_conn_t *t, int ssl_err) {
    char why[256];
    t->flags |= T_FATAL;
    forget_session(t); /* a server that refused us once may refuse its session too */
    if (t->flags & T_NOT_TLS)
        return reply_plain(t);
    push_out(t); /* the alert, if OpenSSL made one; best effort */
    if (!(t->flags & T_INPUT) && (t->flags & T_EOF) && !(t->flags & T_CLIENT))
        return 0; /* closed before saying anything (a port probe): not a handshake */
    long verify = SSL_get_verify_result(t->ssl); /* the server's, or with mTLS the client's */
    if (verify != X509_V_OK) {
        ERR_clear_error();
        snprintf(why, sizeof why, "certificate rejected: %s", X509_verify_cert_error_string(verify));
        count_failure(t, why);
        return PIER_ETLS_REJECTED;
    }
    if (ssl_err == SSL_ERROR_SSL)
        pier__tls_reason(why, sizeof why);
    else
        snprintf(why, sizeof why, "%s", t->sock_err ? pier_strerror(t->sock_err) : "connection closed");
    ERR_clear_error();
    count_failure(t, why);
    return t->sock_err ? t->sock_err : (t->flags & T_EOF) && ssl_err != SSL_ERROR_SSL ? -ECONNRESET : -EPROTO;
}

/* Socket write mode: an OpenSSL call that could not write all it made (e) is made
 * again by the flush once the socket has room; any other result clears the mark. Calls
 * outside the flush pass ask for it (it then waits for EPOLLOUT, as tls_pending says). */
static void blocked(tls_conn_t *t, int e, int op) {
    if (!(t->flags & T_SOCKW))
        return;
    if (e != SSL_ERROR_WANT_WRITE) {
        t->flags &= ~T_WBLOCK;
        return;
    }
    t->flags |= T_WBLOCK;
    t->wop = op;
}

/* One handshake step: 0 once done, -EAGAIN to wait for the peer, 0 at a silent end,
 * or a negative errno. */
static int handshake(tls_conn_t *t) {
    err_clean();
    int r = SSL_do_handshake(t->ssl);
    int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r);
    blocked(t, e, W_HS);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return push_out(t) < 0 ? -EPIPE : -EAGAIN;
    if (e != SSL_ERROR_NONE)
        return hs_failed(t, e);
    hs_done(t);
    t->flags |= T_READY;
    if ((t->flags & T_SOCKW) && ktls_sending(t->ssl))
        t->flags |= T_KTLS;
    atomic_fetch_add(&t->ctx->handshakes, 1);
    pier__metrics_t *m = pier__loop_metrics(t->c->loop);
    pier__mx_inc(m, PIER__MX(tls_handshakes_ok));
    if (SSL_session_reused(t->ssl))
        pier__mx_inc(m, PIER__MX(tls_handshakes_resumed));
    return push_out(t);
}

/* A failed handshake ends with a graceful close, not a reset: the alert that says why
 * (an unknown CA, a missing client certificate) reaches the peer before our FIN, where a
 * reset could destroy it unread. The connection then lingers as any closing one does. */
static ssize_t refuse(tls_conn_t *t, int err) {
    if (!t->c->err)
        t->c->err = err;
    hs_done(t);
    pier_conn_close(t->c);
    return -EAGAIN;
}

/* ---- the transport ---- */

/* Why a read ended without data: 0 for the peer's close_notify, PIER_ETLS_TRUNCATED for
 * a TCP end without one, the socket's error, or -EPROTO. */
static int read_end(tls_conn_t *t, int e) {
    t->flags |= T_FATAL;
    if (e == SSL_ERROR_ZERO_RETURN) {
        t->flags &= ~T_FATAL; /* a clean end: our close_notify may still go out */
        return 0;
    }
    int err = t->sock_err ? t->sock_err : (t->flags & T_EOF) ? PIER_ETLS_TRUNCATED : -EPROTO;
    if (err == -EPROTO) {
        char why[256];
        pier_log(PIER_LOG_DEBUG, "tls: connection %llu: %s", (unsigned long long)pier_conn_id(t->c),
                 pier__tls_reason(why, sizeof why));
    }
    ERR_clear_error();
    return err;
}

/* got bytes read and the socket drained: any output the records made (a key update's
 * answer) goes now, and a failure to send it is the next read's result. */
static ssize_t drained(tls_conn_t *t, size_t got, int *more) {
    int err = t->woff < t->wbuf.len ? push_out(t) : 0;
    if (err < 0) {
        t->end = err;
        *more = 1;
    }
    return (ssize_t)got;
}

static ssize_t tls_read_step(tls_conn_t *t, char *buf, size_t len, int *more);

static ssize_t tls_read(pier_conn_t *c, char *buf, size_t len, int *more) {
    tls_conn_t *t = pier__conn_tp_state(c);
    ssize_t r = tls_read_step(t, buf, len, more);
    if (t->flags & T_WBLOCK)
        pier__conn_want_flush(c);
    return r;
}

static ssize_t tls_read_step(tls_conn_t *t, char *buf, size_t len, int *more) {
    pier_conn_t *c = t->c;
    if (t->end != 1)
        return t->end; /* kept from the last read, which returned data */
    if (t->wbuf.len - t->woff > READ_OUT_MAX)
        return -ENOBUFS;
    if (!(t->flags & T_TOLD)) {
        int err = (t->flags & T_READY) ? 0 : handshake(t);
        if (err < 0 && err != -EAGAIN)
            return refuse(t, err);
        if (err < 0 || !(t->flags & T_READY))
            return err < 0 ? err : 0;
        t->flags |= T_TOLD;
        pier__conn_ready(c);
        /* the application has had on_accept/on_connect, and may have paused or closed:
         * the read pass comes back for the first bytes of data */
        *more = 1;
        return -EAGAIN;
    }
    /* T_SHORT says a socket read of this step found the socket drained; one from an
     * earlier step says nothing of bytes that came since, whose edge may be the one that
     * brought us here, while OpenSSL answers from what it buffered before */
    t->flags &= ~T_SHORT;
    size_t got = 0;
    while (got < len) {
        size_t n = 0;
        err_clean();
        if (SSL_read_ex(t->ssl, buf + got, len - got, &n) == 1) {
            got += n;
            /* A short socket read drained it; with nothing buffered in OpenSSL either,
             * asking again would only cost a read() that says EAGAIN. */
            if ((t->flags & T_SHORT) && !SSL_has_pending(t->ssl))
                return drained(t, got, more);
            continue;
        }
        int e = SSL_get_error(t->ssl, 0);
        int err = push_out(t);
        if (e == SSL_ERROR_WANT_WRITE && (t->flags & T_SOCKW)) {
            /* a post-handshake message (a key update's answer) waits for room; the
             * state machine that made it finishes it from the flush */
            blocked(t, e, W_HS);
            return got ? (ssize_t)got : -EAGAIN;
        }
        if (e == SSL_ERROR_WANT_READ && err == 0) {
            /* The socket is drained. OpenSSL has just set up its 16 KiB read buffer for
             * this read, and SSL_MODE_RELEASE_BUFFERS frees it only after a record: an
             * idle connection would keep it. Unless a record cut short waits in it
             * (SSL_free_buffers then keeps it), it goes now. */
            SSL_free_buffers(t->ssl);
            return got ? (ssize_t)got : -EAGAIN;
        }
        err = err < 0 ? err : read_end(t, e);
        if (got == 0)
            return err;
        t->end = err;
        *more = 1;
        return (ssize_t)got;
    }
    *more = 1; /* the buffer is full: OpenSSL or the socket may hold more */
    return (ssize_t)got;
}

static int write_failed(tls_conn_t *t) {
    char why[256];
    t->flags |= T_FATAL;
    if (t->sock_err)
        return t->sock_err;
    pier_log(PIER_LOG_DEBUG, "tls: connection %llu: cannot encrypt: %s", (unsigned long long)pier_conn_id(t->c),
             pier__tls_reason(why, sizeof why));
    return -EPROTO;
}

static int encrypt(tls_conn_t *t, const void *p, size_t n) {
    size_t w;
    err_clean();
    return SSL_write_ex(t->ssl, p, n, &w) == 1 ? 0 : write_failed(t);
}

#define FILE_CHUNKS (BATCH / PIER__CHUNK) /* one preadv fills a batch */

/* A file item: up to a batch read with one preadv into the loop's cached chunks, then
 * encrypted chunk by chunk. */
static int encrypt_file(tls_conn_t *t, pier__out_t *o) {
    pier_conn_t *c = t->c;
    size_t want = o->len - o->off, room = BATCH - (t->wbuf.len - t->woff);
    struct iovec iov[FILE_CHUNKS];
    int k = 0, err = 0;
    if (want > room)
        want = room;
    for (size_t left = want; left > 0 && k < FILE_CHUNKS; k++) {
        iov[k].iov_len = left < PIER__CHUNK ? left : PIER__CHUNK;
        left -= iov[k].iov_len;
        if (!(iov[k].iov_base = pier__chunk_get(c->loop))) {
            err = -ENOMEM;
            break;
        }
    }
    ssize_t n = 0;
    if (err == 0) {
        do
            n = preadv(o->fd, iov, k, o->foff);
        while (n < 0 && errno == EINTR);
        err = n < 0 ? -errno : n == 0 ? -EIO /* the file shrank under us */ : 0;
    }
    for (size_t done = 0, i = 0; err == 0 && done < (size_t)n; i++) {
        size_t len = (size_t)n - done < iov[i].iov_len ? (size_t)n - done : iov[i].iov_len;
        err = encrypt(t, iov[i].iov_base, len);
        done += len;
    }
    while (k > 0)
        pier__chunk_put(c->loop, iov[--k].iov_base);
    if (err < 0)
        return err;
    o->foff += n;
    pier__conn_consume(c, (size_t)n);
    return 0;
}

/* Encrypts queued items, in order, until about BATCH bytes of ciphertext wait. */
static int encrypt_some(tls_conn_t *t) {
    pier_conn_t *c = t->c;
    pier__out_t *o;
    /* More than a record to make: the whole batch's room at once, since growing by
     * doubling would copy what it holds (a small response grows to its size only). */
    if (c->x->queued - t->counted > PIER__CHUNK && pier__buf_reserve(&t->wbuf, BATCH + BATCH_SLACK) < 0)
        return -ENOMEM;
    while ((o = pier__conn_out_head(c)) && t->wbuf.len - t->woff < BATCH) {
        if (o->kind == PIER__OUT_FILE) {
            int err = encrypt_file(t, o);
            if (err < 0)
                return err;
            continue;
        }
        size_t room = BATCH - (t->wbuf.len - t->woff);
        size_t n = o->len - o->off < room ? o->len - o->off : room;
        int err = encrypt(t, o->base + o->off, n);
        if (err < 0)
            return err;
        pier__conn_consume(c, n);
    }
    return 0;
}

/* Sends close_notify (again, in socket write mode, when the socket was full). Never
 * waits for the peer's: a failure only means the peer will not get ours. */
static void shutdown_step(tls_conn_t *t) {
    err_clean();
    int r = SSL_shutdown(t->ssl);
    int e = r < 0 ? SSL_get_error(t->ssl, r) : SSL_ERROR_NONE;
    blocked(t, e, W_SHUT);
    if (r < 0 && e != SSL_ERROR_WANT_WRITE)
        ERR_clear_error();
}

/* close_notify, once, without waiting for the peer's: the connection's linger after its
 * FIN reads away whatever the peer still sends, its close_notify included. */
static void close_notify(tls_conn_t *t) {
    if ((t->flags & (T_READY | T_FATAL | T_SHUT)) != T_READY)
        return;
    t->flags |= T_SHUT;
    shutdown_step(t);
}

/* ---- socket write mode: OpenSSL writes to the socket (and the kernel may encrypt) ----
 *
 * Plaintext stays in out[] until SSL_write took it, so it counts against the water marks
 * until then; OpenSSL holds at most the one record the socket did not take. */

/* A failed socket-mode write: the socket's errno when OpenSSL saw one. */
static int sock_failed(tls_conn_t *t, int e, int sys_errno) {
    if (e == SSL_ERROR_SYSCALL && sys_errno) {
        t->flags |= T_FATAL;
        ERR_clear_error();
        return -sys_errno;
    }
    return write_failed(t);
}

/* 0 when OpenSSL took all n bytes, 1 when the socket is full (the same n bytes must be
 * offered again), or a negative errno. */
static int sock_write(tls_conn_t *t, const void *p, size_t n) {
    size_t w;
    err_clean();
    int ok = SSL_write_ex(t->ssl, p, n, &w);
    int sys_errno = errno;
    int e = ok == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, 0);
    blocked(t, e, W_DATA);
    if (ok == 1) {
        t->wtry = 0;
        pier__conn_sent(t->c);
        return 0;
    }
    if (e != SSL_ERROR_WANT_WRITE)
        return sock_failed(t, e, sys_errno);
    t->wtry = n;
    return 1;
}

/* A file without kTLS: 16 KiB read and encrypted at a time, as in the buffered mode. */
static int sock_write_file(tls_conn_t *t, pier__out_t *o) {
    char *chunk = pier__chunk_get(t->c->loop);
    if (!chunk)
        return -ENOMEM;
    size_t want = t->wtry ? t->wtry : o->len - o->off < PIER__CHUNK ? o->len - o->off : PIER__CHUNK;
    ssize_t n;
    do
        n = pread(o->fd, chunk, want, o->foff);
    while (n < 0 && errno == EINTR);
    int r = n < 0 ? -errno : n == 0 || (t->wtry && (size_t)n != want) ? -EIO : sock_write(t, chunk, (size_t)n);
    pier__chunk_put(t->c->loop, chunk);
    if (r == 0) {
        o->foff += n;
        pier__conn_consume(t->c, (size_t)n);
    }
    return r;
}

/* A file with kTLS: the kernel reads, encrypts and sends it; no byte passes through us. */
static int sock_sendfile(tls_conn_t *t, pier__out_t *o) {
#ifdef OPENSSL_NO_KTLS
    return sock_write_file(t, o);
#else
    err_clean();
    ossl_ssize_t n = SSL_sendfile(t->ssl, o->fd, o->foff, o->len - o->off, 0);
    int sys_errno = errno;
    if (n > 0) {
        o->foff += n;
        pier__conn_sent(t->c);
        pier__conn_consume(t->c, (size_t)n);
        return 0;
    }
    if (n == 0)
        return -EIO; /* the file shrank under us */
    int e = SSL_get_error(t->ssl, (int)n);
    return e == SSL_ERROR_WANT_WRITE ? 1 : sock_failed(t, e, sys_errno);
#endif
}

static int sock_write_head(tls_conn_t *t) {
    pier_conn_t *c = t->c;
    pier__out_t *o = pier__conn_out_head(c);
    if (o->kind == PIER__OUT_FILE)
        return (t->flags & T_KTLS) ? sock_sendfile(t, o) : sock_write_file(t, o);
    size_t n = t->wtry ? t->wtry : o->len - o->off < BATCH ? o->len - o->off : BATCH;
    int r = sock_write(t, o->base + o->off, n);
    if (r == 0)
        pier__conn_consume(c, n);
    return r;
}

/* Makes again a handshake step or close_notify that found the socket full: 0 when it
 * went out, 1 when the socket is still full, or a negative errno. */
static int sock_retry(tls_conn_t *t) {
    if (t->wop == W_SHUT) {
        shutdown_step(t);
        return (t->flags & T_WBLOCK) != 0;
    }
    if (t->flags & T_READY) { /* a post-handshake message */
        err_clean();
        int r = SSL_do_handshake(t->ssl);
        blocked(t, r == 1 ? SSL_ERROR_NONE : SSL_get_error(t->ssl, r), W_HS);
        ERR_clear_error();
        return (t->flags & T_WBLOCK) != 0;
    }
    int err = handshake(t);
    if (err < 0 && err != -EAGAIN)
        return err;
    return (t->flags & T_WBLOCK) != 0;
}

static int sock_flush(tls_conn_t *t) {
    pier_conn_t *c = t->c;
    int r = send_pending(t); /* a plain reply; nothing else waits in wbuf in this mode */
    if (r == 0 && (t->flags & T_WBLOCK) && t->wop != W_DATA && !(t->flags & T_FATAL))
        r = sock_retry(t);
    if (r != 0 || !(t->flags & T_READY) || (t->flags & T_FATAL))
        return r < 0 ? r : 0;
    if (!(t->flags & T_TOLD)) {
        /* The handshake ended outside a read: a client's attach read the server's whole
         * flight at once (OpenSSL wrote the ClientHello itself and went on reading), or
         * the last flight went out here. No read edge may follow to tell the owner. */
        t->flags |= T_TOLD;
        pier__conn_ready(c);
    }
    for (;;) {
        if (!pier__conn_out_head(c) && (c->flags & (PIER__C_CLOSING | PIER__C_ABORT)) == PIER__C_CLOSING)
            close_notify(t);
        if (!pier__conn_out_head(c)) {
            if (!(t->flags & T_WBLOCK))
                SSL_free_buffers(t->ssl); /* idle: no 16 KiB write buffer kept */
            return 0;
        }
        if ((r = sock_write_head(t)) != 0)
            return r < 0 ? r : 0;
    }
}

static int tls_flush(pier_conn_t *c) {
    tls_conn_t *t = pier__conn_tp_state(c);
    if (t->flags & T_SOCKW)
        return sock_flush(t);
    for (;;) {
        /* A closing connection's last bytes and its close_notify leave in one send (and
         * reach the peer together, so it reads both) */
        if (!pier__conn_out_head(c) && (c->flags & (PIER__C_CLOSING | PIER__C_ABORT)) == PIER__C_CLOSING)
            close_notify(t);
        int r = send_pending(t);
        if (r != 0)
            return r < 0 ? r : 0;
        if (!(t->flags & T_READY) || (t->flags & T_FATAL))
            return 0;
        if (!pier__conn_out_head(c)) {
            /* All out. SSL_MODE_RELEASE_BUFFERS does not free OpenSSL 3.0's 16 KiB write
             * buffer after a write (massif: 16.5 KB per idle connection), so it goes
             * here, where the connection may go idle. */
            SSL_free_buffers(t->ssl);
            return 0;
        }
        if ((r = encrypt_some(t)) < 0)
            return r;
    }
}

static int tls_pending(const pier_conn_t *c) {
    const tls_conn_t *t = pier__conn_tp_state(c);
    return t->woff < t->wbuf.len || (t->flags & T_WBLOCK);
}

static void tls_shutdown(pier_conn_t *c) { close_notify(pier__conn_tp_state(c)); }

static void tls_free(pier_conn_t *c) {
    tls_conn_t *t = pier__conn_tp_state(c);
    uncount(t, t->counted);
    hs_done(t);
    SSL_free(t->ssl);
    pier__buf_free(&t->wbuf);
    pier__tls_ctx_unref(t->ctx);
    free(t);
}

static const pier__transport_t tls_transport = {
    .read = tls_read, .flush = tls_flush, .pending = tls_pending, .shutdown = tls_shutdown, .free = tls_free,
};

/* A client checks the name it connects to: a host name against the certificate's
 * names (and sends it as SNI), an IP literal against its addresses. */
static int expect_name(SSL *ssl, const char *name) {
    unsigned char ip[16];
    if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 ? 0 : -EINVAL;
    if (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1)
        return -EINVAL;
    return 0;
}

static int setup_ssl(tls_conn_t *t, const char *servername) {
    if (pthread_once(&bio_once, bio_method_init) != 0 || !bio_method)
        return -ENOMEM;
    SSL_CTX *sctx = pier__tls_ctx_ssl(t->ctx);
    t->ssl = SSL_new(sctx);
    SSL_CTX_free(sctx); /* the SSL holds its own reference */
    BIO *b = t->ssl ? BIO_new(bio_method) : NULL;
    if (!b)
        return -ENOMEM;
    BIO_set_data(b, t);
    /* Reads always go through pier's BIO (it tells a drained socket, an end, and plain
     * text on the TLS port). Writes go through OpenSSL's socket BIO in socket write mode:
     * OpenSSL enables kTLS only on that BIO. */
    BIO *w = t->ctx->socket_write ? BIO_new_socket(t->c->io.fd, BIO_NOCLOSE) : b;
    if (!w) {
        BIO_free(b);
        return -ENOMEM;
    }
    if (w != b) {
        t->flags |= T_SOCKW;
        SSL_set_options(t->ssl, SSL_OP_ENABLE_KTLS);
        /* a write the socket did not take is made again from the same queue item, but a
         * file's bytes come back in whichever chunk the loop hands out */
        SSL_set_mode(t->ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    SSL_set_bio(t->ssl, b, w);
    if (t->ctx->server) {
        SSL_set_accept_state(t->ssl);
        return 0;
    }
    SSL_set_connect_state(t->ssl);
    t->flags |= T_CLIENT;
    SSL_set_app_data(t->ssl, t); /* for pier__tls_new_session; a server needs none */
    if (t->session && *t->session && SSL_set_session(t->ssl, *t->session) != 1)
        forget_session(t);
    return servername && *servername ? expect_name(t->ssl, servername) : 0;
}

int pier__tls_attach(pier_tls_ctx_t *ctx, pier_conn_t *c, const char *servername, void **session) {
    tls_conn_t *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->ctx = ctx;
    t->c = c;
    t->session = ctx->server ? NULL : session;
    t->end = 1;
    pier__tls_ctx_ref(ctx);
    t->hs_timer = malloc(sizeof *t->hs_timer);
    int err = t->hs_timer ? setup_ssl(t, servername) : -ENOMEM;
    if (err < 0) {
        ERR_clear_error();
        SSL_free(t->ssl);
        pier__tls_ctx_unref(ctx);
        free(t->hs_timer);
        free(t);
        return err;
    }
    if ((err = pier__conn_set_transport(c, &tls_transport, t)) < 0) {
        SSL_free(t->ssl);
        pier__tls_ctx_unref(ctx);
        free(t->hs_timer);
        free(t);
        return err;
    }
    pier_timer_init(c->loop, t->hs_timer, hs_timeout, t);
    pier_timer_start(t->hs_timer, ctx->handshake_ms, 0);
    if (t->flags & T_CLIENT) {
        err = handshake(t); /* the ClientHello goes out now */
        if (err < 0 && err != -EAGAIN)
            return err;
        if (t->flags & (T_WBLOCK | T_READY))
            pier__conn_want_flush(c);
    }
    return 0;
}

/* ---- information ---- */

int pier_conn_tls_info(const pier_conn_t *c, pier_tls_info_t *out) {
    if (c->flags & PIER__C_CLOSED)
        return -ENOTCONN;
    if (pier__conn_tp(c) != &tls_transport)
        return -EINVAL;
    const tls_conn_t *t = pier__conn_tp_state(c);
    memset(out, 0, sizeof *out);
    out->version = SSL_get_version(t->ssl);
    out->cipher = SSL_get_cipher_name(t->ssl);
    const unsigned char *alpn;
    unsigned alen;
    SSL_get0_alpn_selected(t->ssl, &alpn, &alen);
    if (alpn && alen < sizeof out->alpn)
        memcpy(out->alpn, alpn, alen);
    const char *sni = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    snprintf(out->sni, sizeof out->sni, "%s", sni ? sni : "");
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    if (peer)
        X509_NAME_oneline(X509_get_subject_name(peer), out->peer_subject, sizeof out->peer_subject);
    out->resumed = SSL_session_reused(t->ssl);
    out->socket_write = (t->flags & T_SOCKW) != 0;
    out->ktls_send = (t->flags & T_KTLS) != 0;
    return 0;
}
