/* Connections against a real server on an ephemeral loopback port. The test thread
 * drives loop 0 of a one-loop group between its own blocking or non-blocking client
 * calls, so it is "the loop thread" whenever it touches a pier_conn_t.
 *
 * Covered: echo; partial consumption and re-delivery; coalesced writes; zero-copy writes
 * and their free callback; sendfile; water marks and on_drain; the read limit; the idle
 * timeout; graceful close and abort as the peer sees them; idempotent close and the
 * exactly-once on_close; references held past the close; the id calls from the loop
 * thread and from another thread; stale ids after fd reuse; pier_with_conn.
 *
 * pier-test: threads */
#include "support.h"
#include "echo_server.h"

#include <pier/net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ---- server-side state of each accepted connection ---- */

#define MAXC 16
#define INCAP (1 << 16)

typedef struct {
    pier_conn_t *c;
    pier_id_t id;
    int fd;
    int reads, closes, close_err, drains;
    int in_read;            /* inside on_read right now */
    int close_in_cb;        /* on_close ran while on_read was still on the stack */
    int read_after_close;
    int reads_while_paused;
    int ref_held;           /* on_accept took a user reference */
    char in[INCAP];         /* what on_read saw the last time */
    size_t nin;
    char all[INCAP];        /* every byte consumed, in order */
    size_t nall;
    int log[64];            /* 'r' read, 'd' drain, 'c' close */
    int nlog;
} sc_t;

static struct {
    echo_server_fx_t s; /* the group, its loop, the server and its port */
    const pier_conn_cbs_t *cbs; /* given to the next accepted connection */
    int take_ref;
    int nsc;
    sc_t sc[MAXC];
} fx;

static void note(sc_t *s, int ev) {
    if (s->nlog < 64)
        s->log[s->nlog++] = ev;
}

static void on_accept(pier_server_t *srv, pier_conn_t *c) {
    assert_true(fx.nsc < MAXC);
    sc_t *s = &fx.sc[fx.nsc++];
    memset(s, 0, sizeof *s);
    s->c = c;
    s->id = pier_conn_id(c);
    s->fd = pier_conn_fd(c);
    if (fx.take_ref) {
        pier_conn_ref(c);
        s->ref_held = 1;
    }
    pier_conn_set_cbs(c, fx.cbs, s);
}

static void fx_up(const pier_conn_cbs_t *cbs, const pier_conn_limits_t *lim) {
    memset(&fx, 0, sizeof fx);
    fx.cbs = cbs;
    pier_server_opts_t o = {.host = "127.0.0.1", .port = 0, .on_accept = on_accept};
    if (lim)
        o.limits = *lim;
    fx.s = echo_server_up(&o);
    assert_true(fx.s.port != 0);
}

/* Stops the server, lets every connection finish closing, frees server and group. */
static void fx_down(void) { echo_server_down(&fx.s); }

static void run_ms(int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    while (pier_test_now_ms() < end)
        pier_loop_run_once(fx.s.loop, 5);
}

static int run_until(const int *flag, int ms) { return pier_test_run_until(fx.s.loop, flag, ms); }

/* A blocking client, optionally with a small receive buffer so a server fills it fast. */
static int client(int rcvbuf) {
    int fd = pier_test_connect_rcvbuf(fx.s.port, rcvbuf);
    assert_true(fd >= 0);
    return fd;
}

/* Connects and drives the loop until the server has accepted it; returns the client fd. */
static int accept_client(int rcvbuf) {
    int before = fx.nsc;
    int fd = client(rcvbuf);
    uint64_t end = pier_test_now_ms() + 5000;
    while (fx.nsc == before && pier_test_now_ms() < end)
        pier_loop_run_once(fx.s.loop, 5);
    assert_int_equal(fx.nsc, before + 1);
    return fd;
}

static void send_all(int fd, const void *p, size_t n) {
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Drives the loop while the client sends out and reads into in until want bytes came,
 * or EOF/error, or timeout. *end: 0 still open, 1 EOF, a negative errno on error.
 * Returns the bytes read. */
static size_t pump(int fd, const void *out, size_t outlen, void *in, size_t want, int *end, int ms) {
    size_t sent = 0, got = 0;
    int e = 0;
    uint64_t deadline = pier_test_now_ms() + (uint64_t)ms;
    while (pier_test_now_ms() < deadline) {
        if (sent < outlen) {
            ssize_t n = send(fd, (const char *)out + sent, outlen - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
        }
        pier_loop_run_once(fx.s.loop, sent < outlen ? 0 : 2);
        for (;;) {
            if (got == want && want)
                break;
            char tmp[1];
            char *dst = want ? (char *)in + got : tmp;
            size_t room = want ? want - got : sizeof tmp;
            ssize_t n = recv(fd, dst, room, MSG_DONTWAIT);
            if (n > 0) {
                got += want ? (size_t)n : 0;
                continue;
            }
            if (n == 0)
                e = 1;
            else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                e = -errno;
            break;
        }
        if (e || (want && got == want && sent == outlen))
            break;
    }
    if (end)
        *end = e;
    return got;
}

/* Reads from the client until EOF or error while driving the loop; returns what
 * ended it (1 EOF, -errno) and counts the bytes. */
static int drain_to_end(int fd, size_t *bytes, int ms) {
    static char buf[1 << 16];
    size_t total = 0;
    uint64_t deadline = pier_test_now_ms() + (uint64_t)ms;
    while (pier_test_now_ms() < deadline) {
        pier_loop_run_once(fx.s.loop, 2);
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                total += (size_t)n;
                continue;
            }
            if (n == 0) {
                *bytes = total;
                return 1;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                *bytes = total;
                return -errno;
            }
            break;
        }
    }
    *bytes = total;
    return 0;
}

static void fill_pattern(char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + (seed + i * 7 + i / 251) % 26);
}

/* ---- common callbacks ---- */

static void record(sc_t *s, const char *data, size_t len) {
    size_t n = len < INCAP ? len : INCAP;
    memcpy(s->in, data, n);
    s->nin = n;
}

static void keep_all(sc_t *s, const char *data, size_t len) {
    size_t n = len < INCAP - s->nall ? len : INCAP - s->nall;
    memcpy(s->all + s->nall, data, n);
    s->nall += n;
}

static void on_close_count(pier_conn_t *c, int err) {
    sc_t *s = pier_conn_data(c);
    s->closes++;
    s->close_err = err;
    if (s->in_read)
        s->close_in_cb = 1;
    assert_false(pier_conn_is_open(c));
    note(s, 'c');
    if (s->ref_held) {
        s->ref_held = 0;
        pier_conn_unref(c); /* dropping the user's reference inside a callback is fine */
    }
}

static size_t echo_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    if (s->closes)
        s->read_after_close++;
    assert_int_equal(pier_conn_write(c, data, len), 0);
    return len;
}

static const pier_conn_cbs_t echo_cbs = {.on_read = echo_read, .on_close = on_close_count};

/* ---- echo ---- */

static void test_echo(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    assert_true(pier_id_alive(s->id));
    assert_ptr_equal(pier_conn_loop(s->c), fx.s.loop);
    assert_ptr_equal(pier_conn_server(s->c), fx.s.srv);
    assert_null(pier_conn_client(s->c));
    assert_true(pier_conn_is_open(s->c));
    char peer[64];
    assert_int_equal(strncmp(pier_conn_peer(s->c, peer, sizeof peer), "127.0.0.1:", 10), 0);
    assert_int_equal(pier_server_conns(fx.s.srv), 1);

    char buf[16] = {0};
    int end;
    assert_int_equal(pump(fd, "hello", 5, buf, 5, &end, 5000), 5);
    assert_memory_equal(buf, "hello", 5);

    /* 1 MiB both ways at once, byte-exact */
    size_t n = 1 << 20;
    char *out = malloc(n), *in = malloc(n);
    fill_pattern(out, n, 3);
    assert_int_equal(pump(fd, out, n, in, n, &end, 10000), n);
    assert_int_equal(end, 0);
    assert_memory_equal(in, out, n);
    free(out);
    free(in);

    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(s->close_err, 0);
    assert_false(pier_id_alive(s->id));
    assert_int_equal(pier_server_conns(fx.s.srv), 0);
    fx_down();
}

/* ---- partial consumption: whole lines only ---- */

static size_t line_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    record(s, data, len);
    size_t used = 0;
    for (size_t i = 0; i < len; i++)
        if (data[i] == '\n')
            used = i + 1;
    keep_all(s, data, used);
    return used;
}

static const pier_conn_cbs_t line_cbs = {.on_read = line_read, .on_close = on_close_count};

static void wait_reads(sc_t *s, int n) {
    uint64_t end = pier_test_now_ms() + 5000;
    while (s->reads < n && pier_test_now_ms() < end)
        pier_loop_run_once(fx.s.loop, 5);
    assert_int_equal(s->reads, n);
}

static void test_partial_consume(void **state) {
    fx_up(&line_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];

    send_all(fd, "ab", 2);
    wait_reads(s, 1);
    assert_int_equal(s->nin, 2);
    assert_memory_equal(s->in, "ab", 2);
    assert_int_equal(s->nall, 0);

    /* the kept "ab" comes first, then the new bytes */
    send_all(fd, "c\nde", 4);
    wait_reads(s, 2);
    assert_int_equal(s->nin, 6);
    assert_memory_equal(s->in, "abc\nde", 6);
    assert_int_equal(s->nall, 4);
    assert_memory_equal(s->all, "abc\n", 4);

    /* nothing new: nothing is delivered again */
    run_ms(50);
    assert_int_equal(s->reads, 2);

    send_all(fd, "f\ng\nh", 5);
    wait_reads(s, 3);
    assert_int_equal(s->nin, 7);
    assert_memory_equal(s->in, "def\ng\nh", 7);
    assert_int_equal(s->nall, 10);
    assert_memory_equal(s->all, "abc\ndef\ng\n", 10);

    /* a long line arriving in many pieces is kept whole until its end */
    char big[20000];
    fill_pattern(big, sizeof big, 1);
    send_all(fd, "\n", 1); /* finishes "h" */
    wait_reads(s, 4);
    for (size_t off = 0; off < sizeof big; off += 1000) {
        send_all(fd, big + off, 1000);
        run_ms(3);
    }
    send_all(fd, "\n", 1);
    uint64_t end = pier_test_now_ms() + 5000;
    while (s->nall < 12 + sizeof big + 1 && pier_test_now_ms() < end)
        pier_loop_run_once(fx.s.loop, 5);
    assert_int_equal(s->nall, 12 + sizeof big + 1);
    assert_memory_equal(s->all + 10, "h\n", 2);
    assert_memory_equal(s->all + 12, big, sizeof big);

    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    fx_down();
}

/* ---- coalescing: writes queued in one callback go out together after it ---- */

static int cfd; /* the client socket, looked at from inside the callback */
static int sent_early;

static size_t many_writes_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    char piece[8];
    for (int i = 0; i < 200; i++) {
        snprintf(piece, sizeof piece, "%03d,", i);
        assert_int_equal(pier_conn_write(c, piece, 4), 0);
    }
    assert_int_equal(pier_conn_queued(c), 800);
    /* nothing has left yet: the client has nothing to read while we queue */
    char b;
    if (recv(cfd, &b, 1, MSG_DONTWAIT | MSG_PEEK) > 0)
        sent_early = 1;
    return len;
}

static const pier_conn_cbs_t many_writes_cbs = {.on_read = many_writes_read, .on_close = on_close_count};

static void test_write_coalescing(void **state) {
    fx_up(&many_writes_cbs, NULL);
    cfd = accept_client(0);
    sc_t *s = &fx.sc[0];
    sent_early = 0;
    send_all(cfd, "x", 1);
    char buf[800];
    int end;
    assert_int_equal(pump(cfd, NULL, 0, buf, 800, &end, 5000), 800);
    assert_int_equal(sent_early, 0);
    for (int i = 0; i < 200; i++) {
        char want[8];
        snprintf(want, sizeof want, "%03d,", i);
        assert_memory_equal(buf + i * 4, want, 4);
    }
    assert_int_equal(pier_conn_queued(s->c), 0);
    close(cfd);
    run_until(&s->closes, 5000);
    fx_down();
}

/* ---- zero-copy writes ---- */

static int frees;
static void *freed_base;
static void count_free(void *base, void *ud) {
    frees++;
    freed_base = base;
    assert_ptr_equal(ud, &frees);
    free(base);
}

static void test_write_ref(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];

    /* sent, then released once */
    frees = 0;
    size_t n = 200000;
    char *buf = malloc(n);
    fill_pattern(buf, n, 5);
    char *copy = malloc(n), *in = malloc(n + 2);
    memcpy(copy, buf, n);
    assert_int_equal(pier_conn_write(s->c, "<", 1), 0); /* queued ahead of it: order kept */
    assert_int_equal(pier_conn_write_ref(s->c, buf, n, count_free, &frees), 0);
    assert_int_equal(pier_conn_write(s->c, ">", 1), 0);
    int end;
    assert_int_equal(pump(fd, NULL, 0, in, n + 2, &end, 5000), n + 2);
    assert_int_equal(in[0], '<');
    assert_memory_equal(in + 1, copy, n);
    assert_int_equal(in[n + 1], '>');
    run_ms(10);
    assert_int_equal(frees, 1);
    assert_ptr_equal(freed_base, buf);

    /* a small one, and a NULL free callback */
    static const char lit[] = "literal";
    assert_int_equal(pier_conn_write_ref(s->c, lit, 7, NULL, NULL), 0);
    assert_int_equal(pump(fd, NULL, 0, in, 7, &end, 5000), 7);
    assert_memory_equal(in, "literal", 7);

    free(copy);
    free(in);
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(frees, 1);
    fx_down();
}

static void test_write_ref_abort_queued(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(4096);
    sc_t *s = &fx.sc[0];
    int small = 4096;
    setsockopt(pier_conn_fd(s->c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    frees = 0;
    size_t n = 8 << 20;
    char *buf = malloc(n);
    memset(buf, 'q', n);
    assert_int_equal(pier_conn_write_ref(s->c, buf, n, count_free, &frees), 0);
    run_ms(20);
    /* the peer reads nothing: most of it is still queued and still ours to keep */
    assert_true(pier_conn_queued(s->c) > 0);
    assert_int_equal(frees, 0);
    pier_conn_abort(s->c);
    assert_int_equal(frees, 1); /* dropped with the queue */
    pier_conn_abort(s->c);
    pier_conn_close(s->c);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(frees, 1);

    /* on a closed connection: refused, and released at once */
    frees = 0;
    fx.take_ref = 1;
    int fd2 = accept_client(0);
    sc_t *s2 = &fx.sc[1];
    pier_conn_close(s2->c);
    char *b2 = malloc(10);
    assert_int_equal(pier_conn_write_ref(s2->c, b2, 10, count_free, &frees), -ENOTCONN);
    assert_int_equal(frees, 1);
    close(fd2);
    close(fd);
    run_until(&s2->closes, 5000);
    assert_int_equal(s2->closes, 1);
    fx_down();
}

/* ---- sendfile ---- */

static void test_sendfile(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    char path[] = "/tmp/pier-test-sendfile-XXXXXX";
    int ffd = mkstemp(path);
    assert_true(ffd >= 0);
    unlink(path);
    size_t fsize = 300000;
    char *content = malloc(fsize);
    fill_pattern(content, fsize, 9);
    assert_int_equal(write(ffd, content, fsize), (ssize_t)fsize);

    off_t off = 1000;
    size_t len = 250000;
    assert_int_equal(pier_conn_write(s->c, "HEAD", 4), 0);
    assert_int_equal(pier_conn_sendfile(s->c, ffd, off, len), 0);
    assert_int_equal(pier_conn_write(s->c, "TAIL", 4), 0);
    assert_int_equal(pier_conn_queued(s->c), len + 8);
    char *in = malloc(len + 8);
    int end;
    assert_int_equal(pump(fd, NULL, 0, in, len + 8, &end, 10000), len + 8);
    assert_memory_equal(in, "HEAD", 4);
    assert_memory_equal(in + 4, content + off, len);
    assert_memory_equal(in + 4 + len, "TAIL", 4);
    run_ms(5);
    /* pier took the descriptor and closed it once sent */
    assert_int_equal(fcntl(ffd, F_GETFD), -1);
    assert_int_equal(errno, EBADF);

    /* on a closing connection the descriptor is closed and the call refused */
    int ffd2 = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pier_conn_close(s->c);
    assert_int_equal(pier_conn_sendfile(s->c, ffd2, 0, 10), -ENOTCONN);
    assert_int_equal(fcntl(ffd2, F_GETFD), -1);

    free(content);
    free(in);
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    fx_down();
}

/* ---- vectored units ---- */

/* Units of several buffers, small and large, mixed with plain writes: every unit arrives
 * whole and in order, and the queue counts each byte once. */
static void test_writev_units(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    size_t big = 100000;
    char *body = malloc(big);
    fill_pattern(body, big, 3);
    struct iovec small[3] = {{"head:", 5}, {"mid:", 4}, {"tail\n", 5}};
    assert_int_equal(pier_conn_writev(s->c, small, 3), 0);
    assert_int_equal(pier_conn_queued(s->c), 14);
    /* a large unit behind queued bytes is copied whole behind them */
    struct iovec large[2] = {{"BIG:", 4}, {body, big}};
    assert_int_equal(pier_conn_writev(s->c, large, 2), 0);
    assert_int_equal(pier_conn_write(s->c, "end", 3), 0);
    assert_int_equal(pier_conn_queued(s->c), 14 + 4 + big + 3);
    /* empty units are fine and queue nothing */
    assert_int_equal(pier_conn_writev(s->c, NULL, 0), 0);
    assert_int_equal(pier_conn_writev(s->c, small, -1), -EINVAL);
    size_t want = 14 + 4 + big + 3;
    char *in = malloc(want);
    int end;
    assert_int_equal(pump(fd, NULL, 0, in, want, &end, 10000), want);
    assert_memory_equal(in, "head:mid:tail\n", 14);
    assert_memory_equal(in + 14, "BIG:", 4);
    assert_memory_equal(in + 18, body, big);
    assert_memory_equal(in + 18 + big, "end", 3);
    run_ms(5);
    assert_int_equal(pier_conn_queued(s->c), 0);
    /* an empty write with nothing queued (no tail chunk to copy into) */
    assert_int_equal(pier_conn_write(s->c, "", 0), 0);
    assert_int_equal(pier_conn_queued(s->c), 0);

    /* with nothing queued a large unit goes straight to the socket; what the socket
     * does not take is queued, and the bytes still arrive in order */
    struct iovec direct[3] = {{"A", 1}, {body, big}, {"Z", 1}};
    assert_int_equal(pier_conn_writev(s->c, direct, 3), 0);
    assert_int_equal(pier_conn_write(s->c, "!", 1), 0);
    char *in2 = malloc(big + 3);
    assert_int_equal(pump(fd, NULL, 0, in2, big + 3, &end, 10000), big + 3);
    assert_int_equal(in2[0], 'A');
    assert_memory_equal(in2 + 1, body, big);
    assert_memory_equal(in2 + 1 + big, "Z!", 2);

    /* a closing connection refuses a unit */
    pier_conn_close(s->c);
    assert_int_equal(pier_conn_writev(s->c, small, 3), -ENOTCONN);
    free(body);
    free(in);
    free(in2);
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    fx_down();
}

/* A head and a file in one unit: the file follows its head, and pier owns the fd. */
static void test_writev_file(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    char path[] = "/tmp/pier-test-writev-file-XXXXXX";
    int ffd = mkstemp(path);
    assert_true(ffd >= 0);
    unlink(path);
    size_t fsize = 70000;
    char *content = malloc(fsize);
    fill_pattern(content, fsize, 5);
    assert_int_equal(write(ffd, content, fsize), (ssize_t)fsize);
    assert_int_equal(pier_conn_write(s->c, "before|", 7), 0);
    struct iovec head[2] = {{"HTTP-ish ", 9}, {"head\n", 5}};
    assert_int_equal(pier_conn_writev_file(s->c, head, 2, ffd, 10, fsize - 20), 0);
    assert_int_equal(pier_conn_write(s->c, "|after", 6), 0);
    size_t want = 7 + 14 + (fsize - 20) + 6;
    assert_int_equal(pier_conn_queued(s->c), want);
    char *in = malloc(want);
    int end;
    assert_int_equal(pump(fd, NULL, 0, in, want, &end, 10000), want);
    assert_memory_equal(in, "before|HTTP-ish head\n", 21);
    assert_memory_equal(in + 21, content + 10, fsize - 20);
    assert_memory_equal(in + 21 + fsize - 20, "|after", 6);
    run_ms(5);
    assert_int_equal(fcntl(ffd, F_GETFD), -1); /* closed once sent */

    /* a file of length 0 sends the head alone and still takes the fd */
    int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_int_equal(pier_conn_writev_file(s->c, head, 1, nul, 0, 0), 0);
    assert_int_equal(fcntl(nul, F_GETFD), -1);
    char h[9];
    assert_int_equal(pump(fd, NULL, 0, h, 9, &end, 5000), 9);
    assert_memory_equal(h, "HTTP-ish ", 9);
    /* refused on a closing connection, and the fd is closed all the same */
    int nul2 = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pier_conn_close(s->c);
    assert_int_equal(pier_conn_writev_file(s->c, head, 2, nul2, 0, 1), -ENOTCONN);
    assert_int_equal(fcntl(nul2, F_GETFD), -1);
    free(content);
    free(in);
    close(fd);
    run_until(&s->closes, 5000);
    fx_down();
}

/* The loop-thread lookup by id: the live connection on its own loop, NULL once it closes,
 * NULL for another loop and for an id that was never handed out. */
static void test_conn_from_id(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    assert_ptr_equal(pier_conn_from_id(fx.s.loop, s->id), s->c);
    pier_loop_t *other;
    assert_int_equal(pier_loop_new(&other), 0);
    assert_null(pier_conn_from_id(other, s->id));
    assert_int_equal(pier_loop_free(other), 0);
    assert_null(pier_conn_from_id(fx.s.loop, PIER_ID_NONE));
    assert_null(pier_conn_from_id(fx.s.loop, s->id + (1ull << 32))); /* a later generation */
    pier_conn_close(s->c);
    assert_null(pier_conn_from_id(fx.s.loop, s->id)); /* closing: already gone for lookups */
    close(fd);
    run_until(&s->closes, 5000);
    assert_null(pier_conn_from_id(fx.s.loop, s->id));
    fx_down();
}

/* ---- water marks ---- */

static size_t pause_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    note(s, 'r');
    keep_all(s, data, len);
    if (s->reads == 1) {
        /* the first message asks for much more than the peer will read for now */
        static char big[1 << 20];
        memset(big, 'w', sizeof big);
        assert_int_equal(pier_conn_write(c, big, sizeof big), 0);
    } else if (s->drains == 0) {
        s->reads_while_paused++;
    }
    return len;
}

static void count_drain(pier_conn_t *c) {
    sc_t *s = pier_conn_data(c);
    s->drains++;
    note(s, 'd');
    assert_true(pier_conn_queued(c) <= 16 * 1024);
}

static const pier_conn_cbs_t pause_cbs = {.on_read = pause_read, .on_drain = count_drain, .on_close = on_close_count};

static void test_water_marks(void **state) {
    pier_conn_limits_t lim = {.out_high = 64 * 1024, .out_low = 16 * 1024};
    fx_up(&pause_cbs, &lim);
    int fd = accept_client(8192);
    sc_t *s = &fx.sc[0];
    int small = 8192;
    setsockopt(pier_conn_fd(s->c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);

    send_all(fd, "go", 2);
    wait_reads(s, 1);
    run_ms(20);
    assert_true(pier_conn_queued(s->c) > lim.out_high);
    assert_int_equal(s->drains, 0);

    /* above the high mark the server reads nothing more */
    send_all(fd, "more", 4);
    run_ms(100);
    assert_int_equal(s->reads, 1);
    assert_int_equal(s->nall, 2);

    /* the peer reads: the queue drains, on_drain fires once, and "more" arrives after it */
    size_t total = 0;
    static char buf[1 << 20];
    int end;
    total = pump(fd, NULL, 0, buf, sizeof buf, &end, 10000);
    assert_int_equal(total, sizeof buf);
    for (size_t i = 0; i < total; i++)
        if (buf[i] != 'w')
            fail_msg("byte %zu is %d", i, buf[i]);
    uint64_t until = pier_test_now_ms() + 5000;
    while (s->reads < 2 && pier_test_now_ms() < until)
        pier_loop_run_once(fx.s.loop, 5);
    assert_int_equal(s->drains, 1);
    assert_int_equal(s->reads_while_paused, 0);
    assert_int_equal(s->nall, 6);
    assert_memory_equal(s->all, "gomore", 6);
    assert_int_equal(s->log[0], 'r');
    assert_int_equal(s->log[1], 'd');
    assert_int_equal(s->log[2], 'r');
    assert_int_equal(pier_conn_queued(s->c), 0);

    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    fx_down();
}

/* ---- read limit ---- */

/* A protocol that answers one request per call and stops taking input once its queue is
 * over the high mark ("a b c" arrive together; each letter is a request with a 256 KiB
 * answer): the requests it left unconsumed are handed back when the queue drains, without
 * the peer sending anything more. */
static size_t one_request_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    note(s, 'r');
    if (pier_conn_queued(c) > 64 * 1024)
        return 0; /* busy: leave the rest for later */
    keep_all(s, data, 1);
    static char big[256 * 1024];
    memset(big, data[0], sizeof big);
    assert_int_equal(pier_conn_write(c, big, sizeof big), 0);
    return 1;
}

static const pier_conn_cbs_t one_request_cbs = {.on_read = one_request_read, .on_drain = count_drain,
                                                .on_close = on_close_count};

static void test_drain_redelivers_kept_input(void **state) {
    pier_conn_limits_t lim = {.out_high = 64 * 1024, .out_low = 16 * 1024};
    fx_up(&one_request_cbs, &lim);
    int fd = accept_client(8192);
    sc_t *s = &fx.sc[0];
    int small = 8192; /* so that each answer stays queued above the high mark */
    setsockopt(pier_conn_fd(s->c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    send_all(fd, "abc", 3);
    wait_reads(s, 1);
    run_ms(50);
    assert_int_equal(s->nall, 1); /* only "a" taken so far */
    /* the peer reads all three answers and sends nothing more */
    static char buf[3 * 256 * 1024];
    int end;
    size_t total = pump(fd, NULL, 0, buf, sizeof buf, &end, 10000);
    assert_int_equal(total, sizeof buf);
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < 256 * 1024; i++)
            if (buf[(size_t)k * 256 * 1024 + i] != "abc"[k])
                fail_msg("answer %d byte %zu is %d", k, i, buf[(size_t)k * 256 * 1024 + i]);
    assert_int_equal(s->nall, 3);
    assert_memory_equal(s->all, "abc", 3);
    assert_true(s->drains >= 2);
    close(fd);
    run_until(&s->closes, 5000);
    fx_down();
}

static size_t keep_everything(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    return 0;
}

static const pier_conn_cbs_t hoard_cbs = {.on_read = keep_everything, .on_close = on_close_count};

static void test_read_max(void **state) {
    pier_conn_limits_t lim = {.read_max = 4096};
    fx_up(&hoard_cbs, &lim);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    char junk[1000];
    memset(junk, 'j', sizeof junk);
    /* below the limit it is kept */
    send_all(fd, junk, sizeof junk);
    send_all(fd, junk, sizeof junk);
    run_ms(30);
    assert_int_equal(s->closes, 0);
    for (int i = 0; i < 8 && !s->closes; i++) {
        send(fd, junk, sizeof junk, MSG_NOSIGNAL);
        run_ms(5);
    }
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(s->close_err, -EMSGSIZE);
    /* the peer is reset */
    size_t bytes;
    int how = drain_to_end(fd, &bytes, 5000);
    assert_true(how == -ECONNRESET || how == 1);
    close(fd);
    fx_down();
}

/* ---- idle timeout ---- */

static void test_idle_timeout(void **state) {
    pier_conn_limits_t lim = {.idle_ms = 150, .close_ms = 1000};
    fx_up(&echo_cbs, &lim);
    uint64_t t0 = pier_test_now_ms();
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];

    /* traffic keeps it alive well past the timeout */
    char buf[4];
    int end;
    uint64_t t1 = 0;
    for (int i = 0; i < 8; i++) {
        assert_int_equal(pump(fd, "ping", 4, buf, 4, &end, 2000), 4);
        t1 = pier_test_now_ms();
        run_ms(50);
    }
    assert_int_equal(s->closes, 0);
    assert_true(pier_test_now_ms() - t0 >= 400);

    /* silence: closed with -ETIMEDOUT, and the peer sees an orderly end */
    size_t bytes;
    assert_int_equal(drain_to_end(fd, &bytes, 5000), 1);
    assert_true(pier_test_now_ms() - t1 >= 140);
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(s->close_err, -ETIMEDOUT);
    assert_true(pier_test_now_ms() - t1 < 3000);
    fx_down();
}

/* ---- graceful close and abort ---- */

static size_t send_then_close(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    static char big[3 << 20];
    memset(big, 'g', sizeof big);
    assert_int_equal(pier_conn_write(c, big, sizeof big), 0);
    assert_int_equal(pier_conn_write(c, "END", 3), 0);
    pier_conn_close(c);
    assert_false(pier_conn_is_open(c));
    assert_int_equal(pier_conn_write(c, "late", 4), -ENOTCONN);
    return len;
}

static const pier_conn_cbs_t graceful_cbs = {.on_read = send_then_close, .on_close = on_close_count};

static void test_graceful_close_flushes(void **state) {
    fx_up(&graceful_cbs, NULL);
    int fd = accept_client(16384);
    sc_t *s = &fx.sc[0];
    send_all(fd, "go", 2);
    size_t want = (3 << 20) + 3;
    char *in = malloc(want + 16);
    int end;
    assert_int_equal(pump(fd, NULL, 0, in, want, &end, 10000), want);
    assert_memory_equal(in + want - 3, "END", 3);
    for (size_t i = 0; i < want - 3; i++)
        if (in[i] != 'g')
            fail_msg("byte %zu is %d", i, in[i]);
    /* then an orderly EOF, not a reset */
    size_t extra;
    assert_int_equal(drain_to_end(fd, &extra, 5000), 1);
    assert_int_equal(extra, 0);
    assert_int_equal(s->closes, 0); /* waits for our FIN */
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(s->close_err, 0);
    assert_int_equal(s->reads, 1);
    free(in);
    fx_down();
}

static size_t abort_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    static char big[1 << 20];
    assert_int_equal(pier_conn_write(c, big, sizeof big), 0);
    pier_conn_abort(c);
    assert_int_equal(pier_conn_queued(c), 0);
    pier_conn_close(c); /* no downgrade to graceful */
    return len;
}

static const pier_conn_cbs_t abort_cbs = {.on_read = abort_read, .on_close = on_close_count};

static void test_abort_resets(void **state) {
    fx_up(&abort_cbs, NULL);
    int fd = accept_client(8192);
    sc_t *s = &fx.sc[0];
    send_all(fd, "go", 2);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(s->close_err, 0); /* a local abort */
    size_t bytes;
    assert_int_equal(drain_to_end(fd, &bytes, 5000), -ECONNRESET);
    close(fd);
    fx_down();
}

/* ---- close twice, close inside on_read, unref from callbacks ---- */

static size_t close_in_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->in_read = 1;
    s->reads++;
    if (s->closes)
        s->read_after_close++;
    pier_conn_close(c);
    pier_conn_close(c);
    pier_conn_ref(c);
    pier_conn_unref(c);
    pier_conn_abort(c); /* an abort after the close is allowed too */
    pier_conn_close(c);
    assert_int_equal(s->closes, 0); /* not from inside this callback */
    s->in_read = 0;
    return len;
}

static void close_again_in_on_close(pier_conn_t *c, int err) {
    on_close_count(c, err);
    pier_conn_close(c);
    pier_conn_abort(c);
}

static const pier_conn_cbs_t close_twice_cbs = {.on_read = close_in_read, .on_close = close_again_in_on_close};

static void test_close_idempotent(void **state) {
    fx_up(&close_twice_cbs, NULL);
    fx.take_ref = 1; /* and on_close drops it */
    int fds[4];
    for (int i = 0; i < 4; i++)
        fds[i] = accept_client(0);
    for (int i = 0; i < 4; i++)
        send_all(fds[i], "x", 1);
    run_ms(100);
    for (int i = 0; i < 4; i++)
        send(fds[i], "more", 4, MSG_NOSIGNAL); /* after the close: never delivered */
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    run_ms(200);
    for (int i = 0; i < 4; i++) {
        sc_t *s = &fx.sc[i];
        assert_int_equal(s->closes, 1);
        assert_int_equal(s->reads, 1);
        assert_int_equal(s->read_after_close, 0);
        assert_int_equal(s->close_in_cb, 0);
        assert_int_equal(s->ref_held, 0);
    }
    /* the loop, called for idle connections again, must not find them */
    run_ms(50);
    for (int i = 0; i < 4; i++)
        assert_int_equal(fx.sc[i].closes, 1);
    fx_down();
}

/* Closed from the outside (the test, on the loop thread) twice, and by the peer. */
static void test_close_twice_outside(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    pier_conn_close(s->c);
    pier_conn_close(s->c);
    close(fd); /* and the peer leaves at the same time */
    run_ms(200);
    assert_int_equal(s->closes, 1);
    fx_down();
}

/* ---- a reference held by the user outlives the close ---- */

static void test_ref_after_close(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    pier_conn_t *c = s->c;
    pier_conn_ref(c); /* ours, for "replying later" */
    pier_id_t id = pier_conn_id(c);
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    run_ms(20);

    /* after on_close, before our unref: every call is safe and says "closed" */
    assert_ptr_equal(pier_conn_data(c), s);
    assert_int_equal(pier_conn_id(c), id);
    assert_false(pier_conn_is_open(c));
    assert_int_equal(pier_conn_fd(c), -1);
    assert_int_equal(pier_conn_queued(c), 0);
    assert_int_equal(pier_conn_write(c, "x", 1), -ENOTCONN);
    char peer[64];
    pier_conn_peer(c, peer, sizeof peer);
    pier_conn_close(c);
    pier_conn_abort(c);
    pier_conn_pause(c);
    pier_conn_resume(c);
    pier_conn_touch(c);
    assert_false(pier_id_alive(id));
    assert_int_equal(pier_send(id, "x", 1), -ENOTCONN);
    run_ms(20);
    assert_int_equal(s->closes, 1);
    assert_int_equal(pier_loop_handles(fx.s.loop), 1); /* the listener only */
    pier_conn_unref(c); /* the memory goes here (LeakSanitizer checks it does) */
    fx_down();
}

/* The loop's reference alone (no user reference) is dropped after on_close: no leak,
 * and with the user's reference taken and dropped inside callbacks, also no leak. */
static size_t ref_juggle_read(pier_conn_t *c, const char *data, size_t len) {
    pier_conn_ref(c);
    pier_conn_ref(c);
    pier_conn_unref(c);
    pier_conn_close(c);
    pier_conn_unref(c);
    return len;
}

static const pier_conn_cbs_t juggle_cbs = {.on_read = ref_juggle_read, .on_close = on_close_count};

static void test_ref_juggle_in_callbacks(void **state) {
    fx_up(&juggle_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    send_all(fd, "x", 1);
    size_t bytes;
    assert_int_equal(drain_to_end(fd, &bytes, 5000), 1);
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    fx_down();
}

/* ---- the id calls ---- */

static size_t id_calls_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    pier_id_t id = pier_conn_id(c);
    if (len >= 5 && memcmp(data, "close", 5) == 0) {
        assert_int_equal(pier_close(id), 0);
        assert_false(pier_conn_is_open(c)); /* on the loop thread it acts at once */
        assert_int_equal(pier_send(id, "x", 1), -ENOTCONN);
        return len;
    }
    size_t before = pier_conn_queued(c);
    assert_int_equal(pier_send(id, "sent:", 5), 0);
    assert_int_equal(pier_conn_queued(c), before + 5); /* queued at once, not posted */
    assert_int_equal(pier_send(id, data, len), 0);
    return len;
}

static const pier_conn_cbs_t id_cbs = {.on_read = id_calls_read, .on_close = on_close_count};

static void test_id_calls_loop_thread(void **state) {
    fx_up(&id_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    char buf[16];
    int end;
    assert_int_equal(pump(fd, "abc", 3, buf, 8, &end, 5000), 8);
    assert_memory_equal(buf, "sent:abc", 8);
    send_all(fd, "close", 5);
    size_t bytes;
    assert_int_equal(drain_to_end(fd, &bytes, 5000), 1);
    assert_int_equal(bytes, 0);
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(pier_close(s->id), -ENOTCONN);
    fx_down();
}

typedef struct {
    pier_id_t id;
    int send_rc[3], close_rc;
    atomic_int phase; /* 1: send, 2: close, 3: done */
} remote_t;

static void *remote_thread(void *arg) {
    remote_t *r = arg;
    r->send_rc[0] = pier_send(r->id, "from ", 5);
    r->send_rc[1] = pier_send(r->id, "another ", 8);
    r->send_rc[2] = pier_send(r->id, "thread", 6);
    atomic_store(&r->phase, 2);
    while (atomic_load(&r->phase) != 3)
        usleep(1000);
    r->close_rc = pier_close(r->id);
    atomic_store(&r->phase, 4);
    return NULL;
}

static void test_id_calls_other_thread(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    remote_t r = {.id = s->id};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, remote_thread, &r), 0);
    char buf[32];
    int end;
    /* the loop keeps running while the thread sends: bytes in the order it sent them */
    assert_int_equal(pump(fd, NULL, 0, buf, 19, &end, 5000), 19);
    assert_memory_equal(buf, "from another thread", 19);
    while (atomic_load(&r.phase) != 2)
        usleep(1000);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r.send_rc[i], 0);
    atomic_store(&r.phase, 3);
    size_t bytes;
    assert_int_equal(drain_to_end(fd, &bytes, 5000), 1); /* closed gracefully */
    pthread_join(th, NULL);
    assert_int_equal(r.close_rc, 0);
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(s->close_err, 0);
    /* and now the id is gone for that thread too */
    assert_int_equal(pier_send(r.id, "x", 1), -ENOTCONN);
    assert_int_equal(pier_close(r.id), -ENOTCONN);
    fx_down();
}

/* A stale id stays stale after its fd number has gone to a new connection. */
static void test_stale_id_fd_reuse(void **state) {
    fx_up(&echo_cbs, NULL);
    int fda = accept_client(0);
    sc_t *a = &fx.sc[0];
    pier_id_t old = a->id;
    int oldfd = a->fd;
    close(fda);
    run_until(&a->closes, 5000);
    assert_int_equal(a->closes, 1);

    /* hold every lower free descriptor, so the next server-side accept gets oldfd */
    int hold[64], nhold = 0, ph = -1;
    while (nhold < 64) {
        int d = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(d >= 0);
        if (d == oldfd) {
            ph = d;
            break;
        }
        hold[nhold++] = d;
    }
    assert_int_equal(ph, oldfd);
    int cfd2 = client(0);
    close(ph);
    int before = fx.nsc;
    uint64_t end = pier_test_now_ms() + 5000;
    while (fx.nsc == before && pier_test_now_ms() < end)
        pier_loop_run_once(fx.s.loop, 5);
    assert_int_equal(fx.nsc, 2);
    sc_t *b = &fx.sc[1];
    assert_int_equal(b->fd, oldfd); /* same fd number, new connection */
    assert_true(b->id != old);

    assert_false(pier_id_alive(old));
    assert_int_equal(pier_send(old, "bad", 3), -ENOTCONN);
    assert_int_equal(pier_close(old), -ENOTCONN);
    /* the same from another thread's point of view: the loop is not running now */
    run_ms(30);
    assert_true(pier_conn_is_open(b->c));
    assert_int_equal(b->closes, 0);

    char buf[8];
    int e;
    assert_int_equal(pump(cfd2, "new", 3, buf, 3, &e, 5000), 3);
    assert_memory_equal(buf, "new", 3);
    assert_int_equal(b->reads, 1); /* "bad" never reached it */
    close(cfd2);
    for (int i = 0; i < nhold; i++)
        close(hold[i]);
    run_until(&b->closes, 5000);
    fx_down();
}

/* ---- pier_with_conn ---- */

typedef struct {
    int calls;
    pier_conn_t *got;
    pier_id_t got_id;
    int on_loop;
} wc_t;

static void wc_fn(pier_conn_t *c, void *arg) {
    wc_t *w = arg;
    w->calls++;
    w->got = c;
    w->got_id = c ? pier_conn_id(c) : 0;
    w->on_loop = pier_loop_is_current(fx.s.loop);
    if (c)
        pier_conn_write(c, "with", 4);
}

static wc_t wc_gone;

static size_t with_then_close(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    /* queued now, runs after this callback, by when the connection is closing */
    assert_int_equal(pier_with_conn(pier_conn_id(c), wc_fn, &wc_gone), 0);
    assert_int_equal(wc_gone.calls, 0);
    pier_conn_close(c);
    return len;
}

static const pier_conn_cbs_t with_close_cbs = {.on_read = with_then_close, .on_close = on_close_count};

static void test_with_conn(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    wc_t w = {0};
    assert_int_equal(pier_with_conn(s->id, wc_fn, &w), 0);
    assert_int_equal(pier_with_conn(s->id, NULL, &w), -EINVAL);
    char buf[8];
    int end;
    assert_int_equal(pump(fd, NULL, 0, buf, 4, &end, 5000), 4);
    assert_memory_equal(buf, "with", 4);
    assert_int_equal(w.calls, 1);
    assert_ptr_equal(w.got, s->c);
    assert_int_equal(w.got_id, s->id);
    assert_true(w.on_loop);

    /* gone before the call: refused, fn never runs, arg stays the caller's */
    close(fd);
    run_until(&s->closes, 5000);
    wc_t w2 = {0};
    assert_int_equal(pier_with_conn(s->id, wc_fn, &w2), -ENOTCONN);
    run_ms(20);
    assert_int_equal(w2.calls, 0);

    /* gone by the time it runs: fn(NULL, arg), exactly once */
    fx.cbs = &with_close_cbs;
    memset(&wc_gone, 0, sizeof wc_gone);
    int fd2 = accept_client(0);
    sc_t *s2 = &fx.sc[1];
    send_all(fd2, "x", 1);
    uint64_t until = pier_test_now_ms() + 5000;
    while (wc_gone.calls == 0 && pier_test_now_ms() < until)
        pier_loop_run_once(fx.s.loop, 5);
    assert_int_equal(wc_gone.calls, 1);
    assert_null(wc_gone.got);
    assert_true(wc_gone.on_loop);
    close(fd2);
    run_until(&s2->closes, 5000);
    run_ms(20);
    assert_int_equal(wc_gone.calls, 1);
    fx_down();
}

/* The header promises -ENOTCONN from pier_send for a connection that is closing, not
 * only for one that is gone: on the loop thread and from another thread alike (the id
 * answers as stale from the moment the close starts, while it lingers). */
static void *send_from_thread(void *arg) {
    pier_id_t id = *(pier_id_t *)arg;
    *(int *)arg = pier_send(id, "x", 1);
    return NULL;
}

static void test_send_to_closing(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    pier_conn_close(s->c);
    run_ms(20); /* closing: our FIN is out, waiting for the peer's */
    assert_int_equal(s->closes, 0);
    assert_int_equal(pier_conn_write(s->c, "x", 1), -ENOTCONN);
    union {
        pier_id_t id;
        int rc;
    } u = {.id = s->id};
    pthread_t th;
    pthread_create(&th, NULL, send_from_thread, &u);
    pthread_join(th, NULL);
    assert_int_equal(u.rc, -ENOTCONN);
    close(fd);
    run_until(&s->closes, 5000);
    fx_down();
}

/* ---- the peer's half-close: what is pending is flushed, then the connection closes ---- */

static void test_peer_half_close(void **state) {
    fx_up(&echo_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    size_t n = 300000;
    char *out = malloc(n), *in = malloc(n);
    fill_pattern(out, n, 11);
    /* everything, then our FIN, possibly in the same edge as the last bytes */
    int end;
    size_t sent = 0;
    uint64_t until = pier_test_now_ms() + 10000;
    size_t got = 0;
    while ((sent < n || got < n) && pier_test_now_ms() < until) {
        if (sent < n) {
            ssize_t k = send(fd, out + sent, n - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (k > 0)
                sent += (size_t)k;
            if (sent == n)
                shutdown(fd, SHUT_WR);
        }
        pier_loop_run_once(fx.s.loop, 1);
        ssize_t k;
        while (got < n && (k = recv(fd, in + got, n - got, MSG_DONTWAIT)) > 0)
            got += (size_t)k;
    }
    assert_int_equal(got, n);
    assert_memory_equal(in, out, n);
    size_t extra;
    assert_int_equal(drain_to_end(fd, &extra, 5000), 1); /* then the server's FIN */
    assert_int_equal(extra, 0);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(s->close_err, 0);
    (void)end;
    free(out);
    free(in);
    close(fd);
    fx_down();
}

/* ---- pause and resume: kept input comes back on resume, without new bytes ---- */

static size_t pausing_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    record(s, data, len);
    if (s->reads == 1) {
        pier_conn_pause(c); /* not ready for this yet: keep it all */
        return 0;
    }
    keep_all(s, data, len);
    return len;
}

static const pier_conn_cbs_t pausing_cbs = {.on_read = pausing_read, .on_close = on_close_count};

static void test_pause_resume_redelivers(void **state) {
    fx_up(&pausing_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    send_all(fd, "abc", 3);
    wait_reads(s, 1);
    send_all(fd, "def", 3); /* arrives while paused: not delivered */
    run_ms(50);
    assert_int_equal(s->reads, 1);
    pier_conn_resume(s->c);
    uint64_t until = pier_test_now_ms() + 5000;
    while (s->nall < 6 && pier_test_now_ms() < until)
        pier_loop_run_once(fx.s.loop, 5);
    assert_int_equal(s->nall, 6);
    assert_memory_equal(s->all, "abcdef", 6);
    /* and with nothing new on the socket, the kept bytes alone come back on resume */
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);

    fx.cbs = &pausing_cbs;
    int fd2 = accept_client(0);
    sc_t *s2 = &fx.sc[1];
    send_all(fd2, "xyz", 3);
    wait_reads(s2, 1);
    run_ms(20);
    pier_conn_resume(s2->c);
    wait_reads(s2, 2);
    assert_int_equal(s2->nin, 3);
    assert_memory_equal(s2->in, "xyz", 3);
    assert_int_equal(s2->nall, 3);
    close(fd2);
    run_until(&s2->closes, 5000);
    fx_down();
}

/* ---- a graceful close bounded by close_ms ---- */

static void test_close_cannot_flush(void **state) {
    pier_conn_limits_t lim = {.close_ms = 200};
    fx_up(&echo_cbs, &lim);
    int fd = accept_client(4096);
    sc_t *s = &fx.sc[0];
    int small = 4096;
    setsockopt(pier_conn_fd(s->c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    static char big[4 << 20];
    assert_int_equal(pier_conn_write(s->c, big, sizeof big), 0);
    /* the deadline counts from the loop's cached clock (as every timer does), which may
     * be older than the wall clock after the large copy above */
    uint64_t t0 = pier_loop_now(fx.s.loop);
    pier_conn_close(s->c);
    /* the peer never reads: the close gives up after close_ms and resets */
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(s->close_err, -ETIMEDOUT);
    assert_true(pier_test_now_ms() - t0 >= 150);
    assert_true(pier_test_now_ms() - t0 < 2000);
    size_t bytes;
    assert_int_equal(drain_to_end(fd, &bytes, 5000), -ECONNRESET);
    close(fd);
    fx_down();
}

/* A graceful close whose peer never sends its FIN still ends, within close_ms. */
static void test_close_peer_never_answers(void **state) {
    pier_conn_limits_t lim = {.close_ms = 300};
    fx_up(&echo_cbs, &lim);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    uint64_t t0 = pier_loop_now(fx.s.loop); /* timers count from the loop's clock */
    pier_conn_close(s->c);
    char b;
    int end;
    assert_int_equal(pump(fd, NULL, 0, &b, 1, &end, 2000), 0);
    assert_int_equal(end, 1); /* our FIN arrived; we keep the socket open and silent */
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_true(pier_test_now_ms() - t0 >= 250);
    assert_true(pier_test_now_ms() - t0 < 2500);
    close(fd);
    fx_down();
}

/* ---- writing from on_close, and a connection left without callbacks ---- */

static int write_in_close_rc;
static void write_in_close(pier_conn_t *c, int err) {
    on_close_count(c, err);
    write_in_close_rc = pier_conn_write(c, "x", 1);
}

static const pier_conn_cbs_t write_in_close_cbs = {.on_read = echo_read, .on_close = write_in_close};

static void test_write_in_on_close(void **state) {
    fx_up(&write_in_close_cbs, NULL);
    int fd = accept_client(0);
    sc_t *s = &fx.sc[0];
    write_in_close_rc = 0;
    close(fd);
    run_until(&s->closes, 5000);
    assert_int_equal(s->closes, 1);
    assert_int_equal(write_in_close_rc, -ENOTCONN);
    fx_down();
}

/* pier_with_conn posted from one on_close to a connection that finishes closing in the
 * same pass, as the last thing on the loop: fn(NULL, arg) must still run (so arg can be
 * released) before the group is gone. */
static pier_id_t notify_id;
static pier_conn_t *notify_conn;
static wc_t wc_last;

/* a's on_close posts to b while b is still open, then resets b, which finishes closing
 * in the same close pass: the loop is left with no handle and one queued task */
static void close_notifies_other(pier_conn_t *c, int err) {
    on_close_count(c, err);
    if (notify_id && pier_conn_id(c) != notify_id) {
        assert_int_equal(pier_with_conn(notify_id, wc_fn, &wc_last), 0);
        notify_id = 0;
        pier_conn_abort(notify_conn);
    }
}

static const pier_conn_cbs_t notify_cbs = {.on_read = echo_read, .on_close = close_notifies_other};

static void test_with_conn_at_teardown(void **state) {
    fx_up(&notify_cbs, NULL);
    memset(&wc_last, 0, sizeof wc_last);
    int fa = accept_client(0), fb = accept_client(0);
    sc_t *a = &fx.sc[0], *b = &fx.sc[1];
    notify_id = b->id;
    notify_conn = b->c;
    pier_server_stop(fx.s.srv);
    pier_loop_run_once(fx.s.loop, 0);
    pier_conn_abort(a->c);
    pier_loop_run_once(fx.s.loop, 0);
    assert_int_equal(a->closes, 1);
    assert_int_equal(b->closes, 1);
    assert_int_equal(pier_loop_handles(fx.s.loop), 0);
    assert_int_equal(pier_server_free(fx.s.srv), 0);
    /* freeing runs the task still queued: fn(NULL, arg) is called, nothing leaks */
    assert_int_equal(wc_last.calls, 0);
    assert_int_equal(pier_group_free(fx.s.g), 0);
    assert_int_equal(wc_last.calls, 1);
    assert_null(wc_last.got);
    close(fa);
    close(fb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo),
        cmocka_unit_test(test_partial_consume),
        cmocka_unit_test(test_write_coalescing),
        cmocka_unit_test(test_write_ref),
        cmocka_unit_test(test_write_ref_abort_queued),
        cmocka_unit_test(test_sendfile),
        cmocka_unit_test(test_writev_units),
        cmocka_unit_test(test_writev_file),
        cmocka_unit_test(test_conn_from_id),
        cmocka_unit_test(test_water_marks),
        cmocka_unit_test(test_drain_redelivers_kept_input),
        cmocka_unit_test(test_read_max),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_graceful_close_flushes),
        cmocka_unit_test(test_abort_resets),
        cmocka_unit_test(test_close_idempotent),
        cmocka_unit_test(test_close_twice_outside),
        cmocka_unit_test(test_ref_after_close),
        cmocka_unit_test(test_ref_juggle_in_callbacks),
        cmocka_unit_test(test_id_calls_loop_thread),
        cmocka_unit_test(test_id_calls_other_thread),
        cmocka_unit_test(test_stale_id_fd_reuse),
        cmocka_unit_test(test_with_conn),
        cmocka_unit_test(test_send_to_closing),
        cmocka_unit_test(test_peer_half_close),
        cmocka_unit_test(test_pause_resume_redelivers),
        cmocka_unit_test(test_close_cannot_flush),
        cmocka_unit_test(test_close_peer_never_answers),
        cmocka_unit_test(test_write_in_on_close),
        cmocka_unit_test(test_with_conn_at_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
