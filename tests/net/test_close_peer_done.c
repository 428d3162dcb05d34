/* A graceful close told that the peer is done (pier__conn_close_peer_done, which HTTP
 * uses for a whole request that asked to close) closes the socket at once after the
 * output, instead of half-closing and waiting for the peer's FIN; with input unread it
 * still lingers, since closing over unread input resets the connection. And a peer's
 * reset reaches on_close as -ECONNRESET, also while a close lingers.
 *
 * The test thread drives the loop between its own non-blocking client calls, so "the
 * server has finished the connection when the client sees its FIN" is an order of
 * events, not a timing. */
#include "support.h"
#include "echo_server.h"

#include "net/conn.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BIG (1 << 20)

typedef struct {
    pier_conn_t *c;
    int reads, closes, close_err;
    size_t take;   /* on_read consumes at most this much (0: all) */
    int pause;     /* on_read pauses reading instead of answering */
} sc_t;

static struct {
    echo_server_fx_t s; /* the group, its loop, the server and its port */
    size_t answer;  /* bytes each answer has */
    sc_t sc;
} fx;

static char answer_buf[BIG];

static void on_close(pier_conn_t *c, int err) {
    sc_t *s = pier_conn_data(c);
    s->closes++;
    s->close_err = err;
}

/* The protocol: the first input is the peer's last word; answer it and close. */
static size_t last_word_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    if (s->pause) {
        pier_conn_pause(c);
        return len;
    }
    assert_int_equal(pier_conn_write(c, answer_buf, fx.answer), 0);
    pier__conn_close_peer_done(c);
    return s->take && s->take < len ? s->take : len;
}

static const pier_conn_cbs_t cbs = {.on_read = last_word_read, .on_close = on_close};

static void on_accept(pier_server_t *srv, pier_conn_t *c) {
    (void)srv;
    fx.sc.c = c;
    pier_conn_set_cbs(c, &cbs, &fx.sc);
}

static void fx_up(size_t answer) {
    memset(&fx, 0, sizeof fx);
    fx.answer = answer;
    for (size_t i = 0; i < answer; i++)
        answer_buf[i] = (char)('a' + i % 26);
    pier_server_opts_t o = {.host = "127.0.0.1", .port = 0, .on_accept = on_accept};
    fx.s = echo_server_up(&o);
}

static void fx_down(void) { echo_server_down(&fx.s); }

/* A client with a small receive buffer (so a large answer takes several flushes),
 * accepted by the server. */
static int accept_client(void) {
    int fd = pier_test_connect_rcvbuf(fx.s.port, 16384);
    assert_true(fd >= 0);
    uint64_t end = pier_test_now_ms() + 5000;
    while (!fx.sc.c && pier_test_now_ms() < end)
        pier_loop_run_once(fx.s.loop, 5);
    assert_non_null(fx.sc.c);
    return fd;
}

/* Drives the loop and reads until the server's FIN or an error: 1 at EOF, or -errno.
 * The bytes read are checked against the answer and counted in *got. */
static int read_to_end(int fd, size_t *got) {
    static char buf[1 << 16];
    uint64_t deadline = pier_test_now_ms() + 10000;
    *got = 0;
    while (pier_test_now_ms() < deadline) {
        pier_loop_run_once(fx.s.loop, 2);
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                assert_true(*got + (size_t)n <= fx.answer);
                assert_memory_equal(buf, answer_buf + *got, (size_t)n);
                *got += (size_t)n;
                continue;
            }
            if (n == 0)
                return 1;
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return -errno;
            break;
        }
    }
    fail_msg("no end of the stream in 10 s");
    return 0;
}

static void send_all(int fd, const void *p, size_t n) {
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* The client still holds its socket; the server lingers until its FIN. */
static void finish_lingering(int fd) {
    assert_int_equal(fx.sc.closes, 0);
    close(fd);
    pier_test_run_until(fx.s.loop, &fx.sc.closes, 5000);
    assert_int_equal(fx.sc.closes, 1);
    assert_int_equal(fx.sc.close_err, 0);
}

static void run_at_once(size_t answer) {
    fx_up(answer);
    int fd = accept_client();
    send_all(fd, "bye", 3);
    size_t got;
    assert_int_equal(read_to_end(fd, &got), 1); /* a FIN, not a reset */
    assert_int_equal(got, answer);
    /* the connection was finished (fd closed, on_close run) by the time its FIN came,
     * while the client still holds its socket and has sent no FIN */
    assert_int_equal(fx.sc.closes, 1);
    assert_int_equal(fx.sc.close_err, 0);
    assert_int_equal(pier_server_conns(fx.s.srv), 0);
    close(fd);
    fx_down();
}

static void test_closes_at_once(void **state) {
    (void)state;
    run_at_once(100);
}

/* The close waits for a large answer to flush (several EPOLLOUT rounds) first. */
static void test_closes_at_once_after_a_long_flush(void **state) {
    (void)state;
    run_at_once(BIG);
}

/* Bytes after the last word, handed to the protocol but not consumed: the peer was not
 * done, so the close lingers (the client gets everything and a FIN, no reset). */
static void test_bytes_beyond_linger(void **state) {
    (void)state;
    fx_up(100);
    int fd = accept_client();
    fx.sc.take = 3;
    send_all(fd, "byeMORE", 7);
    size_t got;
    assert_int_equal(read_to_end(fd, &got), 1);
    assert_int_equal(got, 100);
    send_all(fd, "late", 4); /* read and dropped by the linger: no reset */
    finish_lingering(fd);
    fx_down();
}

/* Input in the socket that the loop has seen but not read (reading was paused) when the
 * protocol says the peer is done: closing at once would reset the connection. */
static void test_unread_input_lingers(void **state) {
    (void)state;
    fx_up(100);
    int fd = accept_client();
    fx.sc.pause = 1;
    send_all(fd, "bye", 3);
    pier_test_run_until(fx.s.loop, &fx.sc.reads, 5000);
    assert_int_equal(fx.sc.reads, 1);
    send_all(fd, "more", 4);
    /* until epoll has reported the new bytes */
    for (int i = 0; i < 50; i++)
        pier_loop_run_once(fx.s.loop, 2);
    assert_int_equal(fx.sc.reads, 1);
    assert_int_equal(pier_conn_write(fx.sc.c, answer_buf, fx.answer), 0);
    pier__conn_close_peer_done(fx.sc.c);
    size_t got;
    assert_int_equal(read_to_end(fd, &got), 1); /* no reset */
    assert_int_equal(got, 100);
    finish_lingering(fd);
    fx_down();
}

/* Input the protocol kept from an earlier read and then took whole with the rest: all
 * of it was read, and the close is at once. */
static size_t take_when_whole(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    if (len < 6)
        return 0; /* kept by the core until the rest comes */
    return last_word_read(c, data, len);
}

static const pier_conn_cbs_t kept_cbs = {.on_read = take_when_whole, .on_close = on_close};

static void test_kept_input_taken_whole(void **state) {
    (void)state;
    fx_up(100);
    int fd = accept_client();
    pier_conn_set_cbs(fx.sc.c, &kept_cbs, &fx.sc);
    send_all(fd, "by", 2);
    pier_test_run_until(fx.s.loop, &fx.sc.reads, 5000);
    send_all(fd, "e now", 5);
    size_t got;
    assert_int_equal(read_to_end(fd, &got), 1);
    assert_int_equal(got, 100);
    assert_int_equal(fx.sc.closes, 1);
    close(fd);
    fx_down();
}

/* A plain graceful close still half-closes and waits for the client's FIN. */
static size_t close_read(pier_conn_t *c, const char *data, size_t len) {
    sc_t *s = pier_conn_data(c);
    s->reads++;
    assert_int_equal(pier_conn_write(c, answer_buf, fx.answer), 0);
    pier_conn_close(c);
    (void)data;
    return len;
}

static const pier_conn_cbs_t close_cbs = {.on_read = close_read, .on_close = on_close};

static void test_plain_close_lingers(void **state) {
    (void)state;
    fx_up(100);
    int fd = accept_client();
    pier_conn_set_cbs(fx.sc.c, &close_cbs, &fx.sc);
    send_all(fd, "bye", 3);
    size_t got;
    assert_int_equal(read_to_end(fd, &got), 1);
    assert_int_equal(got, 100);
    finish_lingering(fd);
    fx_down();
}

/* The client resets instead of sending its FIN while the close lingers: the close ends,
 * and on_close hears of the reset. */
static void test_reset_while_lingering(void **state) {
    (void)state;
    fx_up(100);
    int fd = accept_client();
    pier_conn_set_cbs(fx.sc.c, &close_cbs, &fx.sc);
    send_all(fd, "bye", 3);
    size_t got;
    assert_int_equal(read_to_end(fd, &got), 1);
    assert_int_equal(fx.sc.closes, 0);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd); /* RST */
    pier_test_run_until(fx.s.loop, &fx.sc.closes, 5000);
    assert_int_equal(fx.sc.closes, 1);
    assert_int_equal(fx.sc.close_err, -ECONNRESET);
    fx_down();
}

/* A reset on an open connection with output waiting: on_close hears of it. */
static void test_reset_while_open(void **state) {
    (void)state;
    fx_up(100);
    int fd = accept_client();
    fx.sc.pause = 1;
    send_all(fd, "x", 1);
    pier_test_run_until(fx.s.loop, &fx.sc.reads, 5000);
    static char big[BIG];
    assert_int_equal(pier_conn_write(fx.sc.c, big, sizeof big), 0); /* the client never reads it */
    for (int i = 0; i < 20; i++)
        pier_loop_run_once(fx.s.loop, 2);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd);
    pier_test_run_until(fx.s.loop, &fx.sc.closes, 5000);
    assert_int_equal(fx.sc.closes, 1);
    assert_int_equal(fx.sc.close_err, -ECONNRESET);
    fx_down();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_closes_at_once),
        cmocka_unit_test(test_closes_at_once_after_a_long_flush),
        cmocka_unit_test(test_bytes_beyond_linger),
        cmocka_unit_test(test_unread_input_lingers),
        cmocka_unit_test(test_kept_input_taken_whole),
        cmocka_unit_test(test_plain_close_lingers),
        cmocka_unit_test(test_reset_while_lingering),
        cmocka_unit_test(test_reset_while_open),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
