/* Reconnecting TCP clients against plain loopback listeners: connect, a refused port with
 * a retry budget, a server that comes up late, a server that hangs up (the client comes
 * back), and stop/free in each state. */
#include "echo_server.h"

#include <pier/net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* A non-blocking listening socket on 127.0.0.1:*port (0: any); returns the fd and sets
 * *port. */
static int listener(uint16_t *port) {
    return echo_server_listener_flags(*port, SOCK_CLOEXEC | SOCK_NONBLOCK, port);
}

/* A port nothing listens on (bound, read, released). */
static uint16_t closed_port(void) {
    uint16_t port = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Accepts one pending connection while driving the loop; returns its fd. */
static int accept_one(pier_loop_t *loop, int lfd) {
    uint64_t end = pier_test_now_ms() + 5000;
    while (pier_test_now_ms() < end) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            return fd;
        }
        pier_loop_run_once(loop, 5);
    }
    fail_msg("no connection to accept");
    return -1;
}

/* Reads n bytes (n > 0), or up to EOF (n == 0), from a non-blocking fd while driving the
 * loop. Returns the bytes read, or -1 if it neither got them nor saw EOF in time. */
static int read_n(pier_loop_t *loop, int fd, char *buf, int n) {
    int got = 0;
    char tmp[256];
    uint64_t end = pier_test_now_ms() + 5000;
    while (pier_test_now_ms() < end) {
        pier_loop_run_once(loop, 2);
        for (;;) {
            ssize_t r = n ? recv(fd, buf + got, (size_t)(n - got), 0) : recv(fd, tmp, sizeof tmp, 0);
            if (r > 0) {
                got += (int)r;
                if (n && got == n)
                    return got;
                continue;
            }
            if (r == 0)
                return n ? -1 : got;
            break;
        }
    }
    return -1;
}

/* ---- what the client saw ---- */

typedef struct {
    int connects;
    pier_conn_t *conn;
    int errs[16];
    int retry[16];
    uint64_t err_at[16];
    int nerr;
    int closes;
    int close_err;
    char in[64];
    int nin;
} seen_t;

static seen_t seen;

static size_t cl_read(pier_conn_t *c, const char *data, size_t len) {
    size_t room = sizeof seen.in - (size_t)seen.nin;
    size_t n = len < room ? len : room;
    memcpy(seen.in + seen.nin, data, n);
    seen.nin += (int)n;
    return len;
}

static void cl_close(pier_conn_t *c, int err) {
    seen.closes++;
    seen.close_err = err;
    seen.conn = NULL;
}

static const pier_conn_cbs_t cl_cbs = {.on_read = cl_read, .on_close = cl_close};

static void on_connect(pier_client_t *cl, pier_conn_t *c) {
    seen.connects++;
    seen.conn = c;
    assert_ptr_equal(pier_conn_client(c), cl);
    assert_null(pier_conn_server(c));
    assert_ptr_equal(pier_client_conn(cl), c);
    assert_ptr_equal(pier_client_data(cl), &seen);
    pier_conn_set_cbs(c, &cl_cbs, cl);
    pier_conn_write(c, "hi", 2);
}

static void on_connect_error(pier_client_t *cl, int err, int will_retry) {
    if (seen.nerr < 16) {
        seen.errs[seen.nerr] = err;
        seen.retry[seen.nerr] = will_retry;
        seen.err_at[seen.nerr] = pier_test_now_ms();
    }
    seen.nerr++;
}

static pier_client_opts_t opts(uint16_t port) {
    pier_client_opts_t o = {.host = "127.0.0.1", .port = port, .on_connect = on_connect,
                            .on_connect_error = on_connect_error, .data = &seen};
    return o;
}

static void run_until_int(pier_loop_t *loop, const int *v, int n, int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    while (*v < n && pier_test_now_ms() < end)
        pier_loop_run_once(loop, 5);
}

static void run_ms(pier_loop_t *loop, int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    while (pier_test_now_ms() < end)
        pier_loop_run_once(loop, 5);
}

/* Stops the client and drives the loop until it can be freed. */
static void stop_and_free(pier_loop_t *loop, pier_client_t *cl) {
    pier_client_stop(cl);
    uint64_t end = pier_test_now_ms() + 5000;
    int rc;
    while ((rc = pier_client_free(cl)) == -EBUSY && pier_test_now_ms() < end)
        pier_loop_run_once(loop, 5);
    assert_int_equal(rc, 0);
}

/* Each test starts with nothing seen and a loop of its own, which must end with no
 * handle left. */
static int setup(void **state) {
    memset(&seen, 0, sizeof seen);
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    *state = loop;
    return 0;
}

static int teardown(void **state) {
    pier_test_free_loop(*state);
    return 0;
}

static void test_connect(void **state) {
    pier_loop_t *loop = *state;
    uint16_t port = 0;
    int lfd = listener(&port);
    pier_client_t *cl;
    pier_client_opts_t o = opts(port);
    assert_int_equal(pier_client_new(&cl, loop, &o), 0);
    assert_true(pier_loop_handles(loop) >= 1); /* connecting counts as live */
    int sfd = accept_one(loop, lfd);
    run_until_int(loop, &seen.connects, 1, 5000);
    assert_int_equal(seen.connects, 1);
    assert_int_equal(pier_client_connects(cl), 1);
    assert_int_equal(seen.nerr, 0);
    assert_non_null(pier_client_conn(cl));

    /* both ways */
    char buf[8];
    assert_int_equal(read_n(loop, sfd, buf, 2), 2);
    assert_memory_equal(buf, "hi", 2);
    assert_int_equal(write(sfd, "there", 5), 5);
    run_until_int(loop, &seen.nin, 5, 5000);
    assert_int_equal(seen.nin, 5);
    assert_memory_equal(seen.in, "there", 5);

    /* stopping closes gracefully; the client cannot be freed until it has */
    pier_client_stop(cl);
    assert_int_equal(pier_client_free(cl), -EBUSY);
    assert_int_equal(read_n(loop, sfd, buf, 0), 0); /* an orderly EOF, nothing more */
    close(sfd);
    stop_and_free(loop, cl);
    assert_int_equal(seen.closes, 1);
    assert_int_equal(seen.connects, 1);
    close(lfd);
}

static void test_refused_with_retries(void **state) {
    pier_loop_t *loop = *state;
    pier_client_t *cl;
    pier_client_opts_t o = opts(closed_port());
    o.reconnect = 1;
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 1000;
    o.max_retries = 4;
    uint64_t t0 = pier_test_now_ms();
    assert_int_equal(pier_client_new(&cl, loop, &o), 0);
    run_until_int(loop, &seen.nerr, 4, 5000);
    assert_int_equal(seen.nerr, 4);
    const int want[4] = {1, 1, 1, 0};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(seen.errs[i], -ECONNREFUSED);
        assert_int_equal(seen.retry[i], want[i]);
    }
    /* backoff: at least half of 20, 40, 80 ms between the attempts (jitter adds up to as
     * much again) */
    assert_true(seen.err_at[1] - seen.err_at[0] >= 9);
    assert_true(seen.err_at[2] - seen.err_at[1] >= 19);
    assert_true(seen.err_at[3] - seen.err_at[2] >= 39);
    assert_true(pier_test_now_ms() - t0 < 3000);
    /* it has given up: no more attempts, and nothing left live on the loop */
    run_ms(loop, 300);
    assert_int_equal(seen.nerr, 4);
    assert_int_equal(seen.connects, 0);
    assert_int_equal(pier_client_connects(cl), 0);
    assert_null(pier_client_conn(cl));
    /* a client that has given up holds no handle: its connect-timeout timer is stopped
     * by the failure too (it once stayed armed for connect_timeout_ms) */
    assert_int_equal(pier_loop_handles(loop), 0);
    stop_and_free(loop, cl);
}

static void test_refused_no_reconnect(void **state) {
    pier_loop_t *loop = *state;
    pier_client_t *cl;
    pier_client_opts_t o = opts(closed_port());
    assert_int_equal(pier_client_new(&cl, loop, &o), 0);
    run_until_int(loop, &seen.nerr, 1, 5000);
    run_ms(loop, 100);
    assert_int_equal(seen.nerr, 1);
    assert_int_equal(seen.retry[0], 0);
    assert_int_equal(pier_loop_handles(loop), 0);
    assert_int_equal(pier_client_free(cl), 0);
}

/* A server whose accept queue is full drops new SYNs, so the connect neither succeeds nor
 * fails: the connect timeout must end it, with -ETIMEDOUT, and (no reconnect) the client
 * then holds no handle. */
static void test_connect_timeout(void **state) {
    memset(&seen, 0, sizeof seen);
    uint16_t port = 0;
    int lfd = listener(&port);
    assert_int_equal(listen(lfd, 0), 0); /* an accept queue of one */
    int fill[4];
    for (int i = 0; i < 4; i++) { /* fill it, and never accept */
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connect(fill[i], (struct sockaddr *)&sa, sizeof sa);
    }
    usleep(100 * 1000);
    /* the loop is made after the wait, not in setup: until it first runs, a loop's time
     * is the time it was made, and the timeout would start 100 ms early */
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    pier_client_t *cl;
    pier_client_opts_t o = opts(port);
    o.connect_timeout_ms = 300;
    uint64_t t0 = pier_test_now_ms();
    assert_int_equal(pier_client_new(&cl, loop, &o), 0);
    run_until_int(loop, &seen.nerr, 1, 10000);
    uint64_t took = pier_test_now_ms() - t0;
    assert_int_equal(seen.nerr, 1);
    assert_int_equal(seen.errs[0], -ETIMEDOUT);
    assert_int_equal(seen.retry[0], 0);
    assert_int_equal(seen.connects, 0);
    assert_true(took >= 250); /* not before its time */
    assert_int_equal(pier_loop_handles(loop), 0);
    assert_int_equal(pier_client_free(cl), 0);
    pier_test_free_loop(loop);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
}

static void test_server_starts_later(void **state) {
    pier_loop_t *loop = *state;
    uint16_t port = closed_port();
    pier_client_t *cl;
    pier_client_opts_t o = opts(port);
    o.reconnect = 1;
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 60;
    o.max_retries = 0; /* forever */
    assert_int_equal(pier_client_new(&cl, loop, &o), 0);
    run_until_int(loop, &seen.nerr, 3, 5000);
    assert_true(seen.nerr >= 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(seen.retry[i], 1);
    assert_int_equal(seen.connects, 0);

    int lfd = listener(&port);
    int sfd = accept_one(loop, lfd);
    run_until_int(loop, &seen.connects, 1, 5000);
    assert_int_equal(seen.connects, 1);
    assert_int_equal(pier_client_connects(cl), 1);
    char buf[2];
    assert_int_equal(read_n(loop, sfd, buf, 2), 2);
    int errs = seen.nerr;
    close(sfd);
    stop_and_free(loop, cl);
    /* no reconnect after a stop, even though the server hung up */
    run_ms(loop, 100);
    assert_int_equal(seen.connects, 1);
    assert_int_equal(seen.nerr, errs);
    close(lfd);
}

static void test_reconnect_after_close(void **state) {
    pier_loop_t *loop = *state;
    uint16_t port = 0;
    int lfd = listener(&port);
    pier_client_t *cl;
    pier_client_opts_t o = opts(port);
    o.reconnect = 1;
    o.backoff_min_ms = 20;
    assert_int_equal(pier_client_new(&cl, loop, &o), 0);
    int sfd = accept_one(loop, lfd);
    run_until_int(loop, &seen.connects, 1, 5000);
    assert_int_equal(pier_client_connects(cl), 1);

    for (int round = 2; round <= 4; round++) {
        /* the server hangs up: the client's connection closes, and it comes back */
        if (round == 3) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* once with a reset */
            setsockopt(sfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(sfd);
        run_until_int(loop, &seen.closes, round - 1, 5000);
        assert_int_equal(seen.closes, round - 1);
        sfd = accept_one(loop, lfd);
        run_until_int(loop, &seen.connects, round, 5000);
        assert_int_equal(seen.connects, round);
        assert_int_equal(pier_client_connects(cl), (unsigned)round);
        char buf[2];
        assert_int_equal(read_n(loop, sfd, buf, 2), 2);
        assert_memory_equal(buf, "hi", 2);
    }
    assert_int_equal(seen.nerr, 0);

    /* stop with the connection up: closed once, not reconnected */
    pier_client_stop(cl);
    char b;
    assert_int_equal(read_n(loop, sfd, &b, 0), 0);
    close(sfd);
    stop_and_free(loop, cl);
    assert_int_equal(seen.closes, 4);
    run_ms(loop, 100);
    assert_int_equal(seen.connects, 4);
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    assert_int_equal(fd, -1); /* nobody came back */
    close(lfd);
}

/* Stopped while waiting for the next attempt: it stops at once and frees. */
static void test_stop_while_waiting(void **state) {
    pier_loop_t *loop = *state;
    pier_client_t *cl;
    pier_client_opts_t o = opts(closed_port());
    o.reconnect = 1;
    o.backoff_min_ms = 200;
    assert_int_equal(pier_client_new(&cl, loop, &o), 0);
    run_until_int(loop, &seen.nerr, 1, 5000);
    assert_int_equal(seen.retry[0], 1);
    pier_client_stop(cl);
    assert_int_equal(pier_loop_handles(loop), 0);
    assert_int_equal(pier_client_free(cl), 0);
    run_ms(loop, 300);
    assert_int_equal(seen.nerr, 1);
}

static void test_bad_args(void **state) {
    pier_loop_t *loop = *state;
    pier_client_t *cl;
    pier_client_opts_t o = opts(0);
    assert_int_equal(pier_client_new(&cl, loop, &o), -EINVAL); /* no port */
    o = opts(1);
    assert_int_equal(pier_client_new(&cl, NULL, &o), -EINVAL);
    assert_int_equal(pier_client_new(&cl, loop, NULL), -EINVAL);
    assert_int_equal(pier_client_free(NULL), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_with_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_no_reconnect, setup, teardown),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test_setup_teardown(test_server_starts_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_after_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_while_waiting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
