/* Servers: addresses and ports, the connection limit, connections left without callbacks,
 * close_all and abort_all, counting across the loops of a group, and freeing only once
 * everything has closed. */
#include "support.h"
#include "echo_server.h"

#include <pier/net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int accepted, closes, close_errs[64];

static void count_close(pier_conn_t *c, int err) {
    if (closes < 64)
        close_errs[closes] = err;
    closes++;
}

static const pier_conn_cbs_t echo_cbs = {.on_read = echo_server_read, .on_close = count_close};

static void on_accept(pier_server_t *srv, pier_conn_t *c) {
    accepted++;
    assert_ptr_equal(pier_conn_server(c), srv);
    assert_ptr_equal(pier_server_data(srv), &accepted);
    pier_conn_set_cbs(c, &echo_cbs, NULL);
}

static void on_accept_no_cbs(pier_server_t *srv, pier_conn_t *c) { accepted++; }

typedef echo_server_fx_t fx_t;

/* A started server on host whose data is &accepted; a second start is refused. */
static fx_t up(const char *host, void (*acc)(pier_server_t *, pier_conn_t *), unsigned max_conns) {
    accepted = closes = 0;
    pier_server_opts_t o = {.host = host, .on_accept = acc, .max_conns = max_conns, .data = &accepted};
    fx_t f = echo_server_up(&o);
    assert_int_equal(pier_server_start(f.srv), -EBUSY);
    return f;
}

static void down(fx_t *f) {
    pier_server_stop(f->srv); /* and again in echo_server_free: idempotent */
    echo_server_free(f->srv, f->g);
}

static void run_until_val(pier_loop_t *loop, const int *v, int n, int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    while (*v < n && pier_test_now_ms() < end)
        pier_loop_run_once(loop, 5);
}

/* run_until_val with every loop of g, a turn each. */
static void run_all_until_val(pier_group_t *g, const int *v, int n, int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    while (*v < n && pier_test_now_ms() < end)
        for (unsigned i = 0; i < pier_group_size(g); i++)
            pier_loop_run_once(pier_group_loop(g, i), 1);
}

/* Reads from fd while driving the loop until EOF/error; 1 for EOF, -errno, 0 on timeout. */
static int wait_end(pier_loop_t *loop, int fd, int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    char buf[4096];
    while (pier_test_now_ms() < end) {
        pier_loop_run_once(loop, 2);
        ssize_t n;
        while ((n = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        }
        if (n == 0)
            return 1;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
    }
    return 0;
}

static void test_ipv6(void **state) {
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 1), 0);
    pier_server_t *srv;
    pier_server_opts_t o = {.host = "::1", .on_accept = on_accept, .data = &accepted};
    int rc = pier_server_new(&srv, g, &o);
    if (rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT) {
        assert_int_equal(pier_group_free(g), 0);
        skip(); /* no IPv6 loopback here */
    }
    assert_int_equal(rc, 0);
    accepted = closes = 0;
    pier_loop_t *loop = pier_group_loop(g, 0);
    assert_int_equal(pier_server_start(srv), 0);
    pier_loop_run_once(loop, 0);
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons(pier_server_port(srv))};
    sa.sin6_addr = in6addr_loopback;
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    run_until_val(loop, &accepted, 1, 5000);
    assert_int_equal(accepted, 1);
    echo_server_check(loop, fd);
    close(fd);
    run_until_val(loop, &closes, 1, 5000);
    pier_server_stop(srv);
    pier_loop_run_once(loop, 0);
    assert_int_equal(pier_server_free(srv), 0);
    assert_int_equal(pier_group_free(g), 0);
}

static void test_bad_host_and_busy_port(void **state) {
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 1), 0);
    pier_server_t *srv;
    pier_server_opts_t o = {.host = "not-an-address", .on_accept = on_accept};
    assert_int_equal(pier_server_new(&srv, g, &o), -EINVAL);
    assert_int_equal(pier_server_new(&srv, NULL, &o), -EINVAL);
    assert_int_equal(pier_server_new(&srv, g, NULL), -EINVAL);

    /* a port held by an ordinary listener */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 4), 0);
    socklen_t len = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &len);
    o.host = "127.0.0.1";
    o.port = ntohs(sa.sin_port);
    assert_int_equal(pier_server_new(&srv, g, &o), -EADDRINUSE);
    close(lfd);
    assert_int_equal(pier_group_free(g), 0);
}

/* A second server on a port a first one is listening on must fail as a port in use
 * does, not share the port with it. */
static void test_port_in_use_by_another_server(void **state) {
    fx_t f = up("127.0.0.1", on_accept, 0);
    pier_server_t *second = NULL;
    pier_server_opts_t o = {.host = "127.0.0.1", .port = f.port, .on_accept = on_accept};
    int rc = pier_server_new(&second, f.g, &o);
    assert_int_equal(rc, -EADDRINUSE);
    down(&f);
}

static void test_max_conns(void **state) {
    fx_t f = up("127.0.0.1", on_accept, 2);
    int a = pier_test_connect(f.port), b = pier_test_connect(f.port);
    run_until_val(f.loop, &accepted, 2, 5000);
    assert_int_equal(accepted, 2);
    assert_int_equal(pier_server_conns(f.srv), 2);
    /* the third is taken off the queue and closed at once, without reaching on_accept */
    int c = pier_test_connect(f.port);
    assert_true(c >= 0);
    assert_int_equal(wait_end(f.loop, c, 5000), 1);
    assert_int_equal(accepted, 2);
    close(c);
    echo_server_check(f.loop, a);
    echo_server_check(f.loop, b);
    /* below the limit again: accepted */
    close(a);
    run_until_val(f.loop, &closes, 1, 5000);
    int d = pier_test_connect(f.port);
    run_until_val(f.loop, &accepted, 3, 5000);
    assert_int_equal(accepted, 3);
    echo_server_check(f.loop, d);
    close(b);
    close(d);
    run_until_val(f.loop, &closes, 3, 5000);
    down(&f);
}

static void test_no_callbacks_closes(void **state) {
    fx_t f = up("127.0.0.1", on_accept_no_cbs, 0);
    int fd = pier_test_connect(f.port);
    run_until_val(f.loop, &accepted, 1, 5000);
    assert_int_equal(accepted, 1);
    assert_int_equal(wait_end(f.loop, fd, 5000), 1);
    close(fd);
    uint64_t end = pier_test_now_ms() + 5000;
    while (pier_server_conns(f.srv) > 0 && pier_test_now_ms() < end)
        pier_loop_run_once(f.loop, 5);
    assert_int_equal(pier_server_conns(f.srv), 0);
    down(&f);
}

static void test_stop_then_close_all(void **state) {
    fx_t f = up("127.0.0.1", on_accept, 0);
    int fds[6];
    for (int i = 0; i < 6; i++)
        fds[i] = pier_test_connect(f.port);
    run_until_val(f.loop, &accepted, 6, 5000);
    assert_int_equal(pier_server_conns(f.srv), 6);

    /* stopping the server leaves its connections open */
    pier_server_stop(f.srv);
    pier_loop_run_once(f.loop, 0);
    assert_int_equal(pier_server_free(f.srv), -EBUSY);
    echo_server_check(f.loop, fds[0]);
    int late = pier_test_connect(f.port);
    assert_true(late < 0); /* nobody listens any more */

    /* close_all: every peer sees an orderly end, and the server can then be freed */
    pier_server_close_all(f.srv);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(wait_end(f.loop, fds[i], 5000), 1);
        close(fds[i]);
    }
    run_until_val(f.loop, &closes, 6, 5000);
    assert_int_equal(closes, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(close_errs[i], 0);
    assert_int_equal(pier_server_free(f.srv), 0);
    assert_int_equal(pier_group_free(f.g), 0);
}

static void test_abort_all(void **state) {
    fx_t f = up("127.0.0.1", on_accept, 0);
    int fds[4];
    for (int i = 0; i < 4; i++)
        fds[i] = pier_test_connect(f.port);
    run_until_val(f.loop, &accepted, 4, 5000);
    pier_server_abort_all(f.srv);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(wait_end(f.loop, fds[i], 5000), -ECONNRESET);
        close(fds[i]);
    }
    run_until_val(f.loop, &closes, 4, 5000);
    assert_int_equal(closes, 4);
    assert_int_equal(pier_server_conns(f.srv), 0);
    down(&f);
}

/* Two loops: connections spread over both, counted together, and the server frees only
 * after both listeners and every connection are gone. */
static void test_two_loops(void **state) {
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 2), 0);
    accepted = closes = 0;
    pier_server_t *srv;
    pier_server_opts_t o = {.host = "127.0.0.1", .on_accept = on_accept, .data = &accepted};
    assert_int_equal(pier_server_new(&srv, g, &o), 0);
    assert_int_equal(pier_server_start(srv), 0);
    pier_loop_t *l0 = pier_group_loop(g, 0), *l1 = pier_group_loop(g, 1);
    pier_loop_run_once(l0, 0);
    pier_loop_run_once(l1, 0);
    int fds[16];
    for (int i = 0; i < 16; i++)
        fds[i] = pier_test_connect(pier_server_port(srv));
    run_all_until_val(g, &accepted, 16, 5000);
    assert_int_equal(accepted, 16);
    assert_int_equal(pier_server_conns(srv), 16);
    assert_true(pier_loop_handles(l0) > 1);
    assert_true(pier_loop_handles(l1) > 1);
    for (int i = 0; i < 16; i++)
        close(fds[i]);
    echo_server_free(srv, g);
    assert_int_equal(closes, 16);
}

/* Single-acceptor mode: loop 0 accepts and deals connections to the loops in turn. */
static int accepted_on[2];
static pier_group_t *sa_group;

static void on_accept_where(pier_server_t *srv, pier_conn_t *c) {
    accepted++;
    for (unsigned i = 0; i < 2; i++)
        if (pier_conn_loop(c) == pier_group_loop(sa_group, i))
            accepted_on[i]++;
    pier_conn_set_cbs(c, &echo_cbs, NULL);
}

static void test_single_acceptor(void **state) {
    assert_int_equal(pier_group_new(&sa_group, 2), 0);
    accepted = closes = 0;
    accepted_on[0] = accepted_on[1] = 0;
    pier_server_t *srv;
    pier_server_opts_t o = {.host = "127.0.0.1", .on_accept = on_accept_where, .single_acceptor = 1};
    assert_int_equal(pier_server_new(&srv, sa_group, &o), 0);
    assert_int_equal(pier_server_start(srv), 0);
    pier_loop_t *l0 = pier_group_loop(sa_group, 0), *l1 = pier_group_loop(sa_group, 1);
    pier_loop_run_once(l0, 0);
    pier_loop_run_once(l1, 0);
    int fds[10];
    for (int i = 0; i < 10; i++)
        fds[i] = pier_test_connect(pier_server_port(srv));
    run_all_until_val(sa_group, &accepted, 10, 5000);
    assert_int_equal(accepted, 10);
    assert_int_equal(accepted_on[0], 5); /* dealt out evenly */
    assert_int_equal(accepted_on[1], 5);
    for (int i = 0; i < 10; i++)
        close(fds[i]);
    run_all_until_val(sa_group, &closes, 10, 5000);
    assert_int_equal(closes, 10);

    /* A connection dealt to loop 1 and not yet picked up there when the caller stops and
     * frees the server: the free must wait for it (or the hand-off must not need the
     * server any more). */
    int a = pier_test_connect(pier_server_port(srv)); /* dealt to loop 0 */
    int b = pier_test_connect(pier_server_port(srv)); /* dealt to loop 1 */
    uint64_t end = pier_test_now_ms() + 5000;
    while (accepted < 11 && pier_test_now_ms() < end)
        pier_loop_run_once(l0, 1);
    for (int i = 0; i < 5; i++)
        pier_loop_run_once(l0, 1); /* b is accepted and handed to loop 1, which sleeps */
    assert_int_equal(accepted, 11);
    close(a);
    end = pier_test_now_ms() + 5000;
    while (closes < 11 && pier_test_now_ms() < end)
        pier_loop_run_once(l0, 1);
    pier_server_stop(srv);
    pier_loop_run_once(l0, 0);
    int rc = pier_server_free(srv);
    if (rc == 0) {
        /* freed: loop 1 now runs the queued hand-off, which must not touch the server */
        pier_loop_run_once(l1, 0);
    } else {
        assert_int_equal(rc, -EBUSY);
        end = pier_test_now_ms() + 5000;
        while ((rc = pier_server_free(srv)) == -EBUSY && pier_test_now_ms() < end) {
            pier_loop_run_once(l0, 1);
            pier_loop_run_once(l1, 1);
        }
        assert_int_equal(rc, 0);
    }
    /* a connection dealt out after the stop is closed, not served */
    char c1;
    assert_int_equal(recv(b, &c1, 1, 0), 0);
    close(b);
    end = pier_test_now_ms() + 5000;
    while (pier_loop_handles(l1) > 0 && pier_test_now_ms() < end)
        pier_loop_run_once(l1, 1);
    assert_int_equal(pier_group_free(sa_group), 0);
}

/* Out of descriptors: a pending connection is taken and closed (the peer sees the end)
 * instead of leaving the listener readable and the loop spinning; once descriptors are
 * back, connections are served again. */
static void test_emfile(void **state) {
    fx_t f = up("127.0.0.1", on_accept, 0);
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    int probe = open("/dev/null", O_RDONLY | O_CLOEXEC);
    close(probe);
    struct rlimit low = {.rlim_cur = (rlim_t)probe + 40, .rlim_max = old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    int hold[64], nhold = 0;
    for (;;) {
        int d = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (d < 0)
            break;
        assert_true(nhold < 64);
        hold[nhold++] = d;
    }
    close(hold[--nhold]); /* exactly one left: for the client's socket */
    int fd = pier_test_connect(f.port);
    assert_true(fd >= 0);
    assert_int_equal(wait_end(f.loop, fd, 5000), 1);
    assert_int_equal(accepted, 0);
    /* nothing pending now: the loop waits instead of spinning */
    uint64_t t0 = pier_test_now_ms();
    pier_loop_run_once(f.loop, 60);
    assert_true(pier_test_now_ms() - t0 >= 40);
    close(fd);
    for (int i = 0; i < nhold; i++)
        close(hold[i]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    int ok = pier_test_connect(f.port);
    run_until_val(f.loop, &accepted, 1, 5000);
    assert_int_equal(accepted, 1);
    echo_server_check(f.loop, ok);
    close(ok);
    run_until_val(f.loop, &closes, 1, 5000);
    down(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_bad_host_and_busy_port),
        cmocka_unit_test(test_port_in_use_by_another_server),
        cmocka_unit_test(test_max_conns),
        cmocka_unit_test(test_no_callbacks_closes),
        cmocka_unit_test(test_stop_then_close_all),
        cmocka_unit_test(test_abort_all),
        cmocka_unit_test(test_two_loops),
        cmocka_unit_test(test_single_acceptor),
        cmocka_unit_test(test_emfile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
