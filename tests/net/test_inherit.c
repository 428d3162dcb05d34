/* Listening sockets made outside the server (systemd socket activation, a binary
 * upgrade): pier_net_inherit, matching by address, sharing one socket between loops,
 * closing the ones nobody takes; the drain's pier_server_close_if; and a connection's
 * socket that has a second reference (a child between fork and exec) when the
 * connection closes. */
#include "support.h"
#include "echo_server.h"

#include <pier/net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int accepted, closes;
static pier_conn_t *last;

static void count_close(pier_conn_t *c, int err) { closes++; }

static const pier_conn_cbs_t echo_cbs = {.on_read = echo_server_read, .on_close = count_close};

static void on_accept(pier_server_t *srv, pier_conn_t *c) {
    accepted++;
    last = c;
    pier_conn_set_cbs(c, &echo_cbs, NULL);
}

static uint16_t port_of(int fd) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    return ntohs(sa.sin_port);
}

/* A server for 127.0.0.1:port (0: any port), not started, on a new group of loops. */
static pier_server_t *server_on(pier_group_t **g, unsigned loops, uint16_t port) {
    assert_int_equal(pier_group_new(g, loops), 0);
    pier_server_t *srv;
    pier_server_opts_t o = {.host = "127.0.0.1", .port = port, .on_accept = on_accept};
    assert_int_equal(pier_server_new(&srv, *g, &o), 0);
    return srv;
}

/* A started server on 127.0.0.1, on a port of the kernel's choosing, on a one-loop
 * group. */
static pier_server_t *serve(pier_group_t **g) {
    pier_server_t *srv = server_on(g, 1, 0);
    assert_int_equal(pier_server_start(srv), 0);
    accepted = closes = 0;
    return srv;
}

/* A connection queued on the socket before the server existed is served: the server
 * uses that socket, it does not bind a new one. */
static void test_server_takes_inherited_socket(void **state) {
    uint16_t port;
    int lfd = echo_server_listener(0, &port);
    int early = pier_test_connect(port);
    assert_int_equal(pier_net_inherit(lfd), 0);
    pier_group_t *g;
    pier_server_t *srv = server_on(&g, 1, port);
    assert_int_equal(pier_server_port(srv), port);
    int fds[4];
    assert_int_equal(pier_server_listen_fds(srv, fds, 4), 1);
    assert_int_equal(fds[0], lfd);
    assert_int_equal(pier_net_inherit_close_unused(), 0);
    assert_int_equal(pier_server_start(srv), 0);
    accepted = closes = 0;
    echo_server_check(pier_group_loop(g, 0), early);
    assert_int_equal(accepted, 1);
    close(early);
    pier_test_run_until(pier_group_loop(g, 0), &closes, 5000);
    echo_server_free(srv, g);
}

/* Two loops, one inherited socket: each loop watches it (a dup), and a port 0 server
 * takes the socket of its host whatever its port. */
static void test_loops_share_one_socket(void **state) {
    uint16_t port;
    int lfd = echo_server_listener(0, &port);
    assert_int_equal(pier_net_inherit(lfd), 0);
    pier_group_t *g;
    pier_server_t *srv = server_on(&g, 2, 0);
    assert_int_equal(pier_server_port(srv), port);
    int fds[4];
    assert_int_equal(pier_server_listen_fds(srv, fds, 4), 2);
    assert_int_not_equal(fds[0], fds[1]);
    assert_int_equal(port_of(fds[1]), port);
    echo_server_free(srv, g);
}

/* A socket for another port is not taken: the server binds its own, and the unused one
 * is closed (connecting to it then fails). */
static void test_unused_socket_closed(void **state) {
    uint16_t other, port;
    int ofd = echo_server_listener(0, &other);
    int tmp = echo_server_listener(0, &port);
    close(tmp); /* a free port, most likely */
    assert_int_equal(pier_net_inherit(ofd), 0);
    pier_group_t *g;
    pier_server_t *srv = server_on(&g, 1, port);
    int fds[1];
    assert_int_equal(pier_server_listen_fds(srv, fds, 1), 1);
    assert_int_not_equal(fds[0], ofd);
    assert_int_equal(pier_net_inherit_close_unused(), 1);
    assert_int_equal(pier_test_connect(other), -ECONNREFUSED);
    echo_server_free(srv, g);
}

/* ListenStream=8080 in a socket unit is a dual-stack [::]:8080, while the command line
 * says --host 0.0.0.0: both mean every address, and the server takes it. */
static void test_wildcards_match(void **state) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    int zero = 0;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = in6addr_any};
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        skip(); /* no IPv6 here */
    }
    assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    uint16_t port = ntohs(sa.sin6_port);
    assert_int_equal(pier_net_inherit(fd), 0);
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 1), 0);
    pier_server_t *srv;
    pier_server_opts_t o = {.host = "127.0.0.2", .port = port, .on_accept = on_accept};
    assert_int_equal(pier_server_new(&srv, g, &o), -EADDRINUSE); /* not a wildcard: no match */
    o.host = "0.0.0.0";
    assert_int_equal(pier_server_new(&srv, g, &o), 0);
    int fds[1];
    assert_int_equal(pier_server_listen_fds(srv, fds, 1), 1);
    assert_int_equal(fds[0], fd);
    assert_int_equal(pier_server_start(srv), 0);
    accepted = closes = 0;
    int c = pier_test_connect(port); /* IPv4 loopback, into the dual-stack socket */
    echo_server_check(pier_group_loop(g, 0), c);
    close(c);
    pier_test_run_until(pier_group_loop(g, 0), &closes, 5000);
    echo_server_free(srv, g);
}

/* pier_server_close_if closes only the connections its filter names; the others stay
 * open and served. */
static pier_conn_t *keep;
static int close_unless_kept(pier_conn_t *c) { return c != keep; }

static void test_close_if(void **state) {
    pier_group_t *g;
    pier_server_t *srv = serve(&g);
    pier_loop_t *loop = pier_group_loop(g, 0);
    int a = pier_test_connect(pier_server_port(srv));
    echo_server_check(loop, a);
    keep = last;
    int b = pier_test_connect(pier_server_port(srv));
    echo_server_check(loop, b);
    pier_server_close_if(srv, close_unless_kept);
    pier_test_run_until(loop, &closes, 5000);
    assert_int_equal(closes, 1);
    char byte;
    assert_int_equal(recv(b, &byte, 1, 0), 0); /* closed gracefully: EOF */
    echo_server_check(loop, a);                         /* still served */
    assert_int_equal(pier_server_conns(srv), 1);
    close(a);
    close(b);
    pier_test_run_until(loop, &closes, 5000);
    echo_server_free(srv, g);
}

static void test_refuses_what_is_not_a_listener(void **state) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(pier_net_inherit(s), -ENOTSOCK); /* not listening */
    close(s);
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pier_net_inherit(p[0]), -ENOTSOCK);
    close(p[0]);
    close(p[1]);
    assert_int_equal(pier_net_inherit(p[0]), -EBADF);
    assert_int_equal(pier_net_inherit_close_unused(), 0);
}

/* An upgrade forks: until the child execs, it holds a second reference to every
 * socket. A connection that closes then must leave epoll, or the peer's next bytes
 * wake the loop for a connection that has been freed (ASan: use after free). */
static void test_close_with_a_second_reference(void **state) {
    pier_group_t *g;
    pier_server_t *srv = serve(&g);
    pier_loop_t *loop = pier_group_loop(g, 0);
    int fd = pier_test_connect(pier_server_port(srv));
    echo_server_check(loop, fd);
    int second = dup(pier_conn_fd(last));
    pier_server_abort_all(srv);
    pier_test_run_until(loop, &closes, 5000);
    assert_int_equal(closes, 1);
    /* the reset went nowhere (the socket lives on in `second`): the peer can still
     * write, and each write makes the socket readable */
    for (int i = 0; i < 10; i++) {
        assert_int_equal(send(fd, "late", 4, MSG_NOSIGNAL), 4);
        pier_loop_run_once(loop, 2);
    }
    close(second);
    close(fd);
    echo_server_free(srv, g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_takes_inherited_socket),
        cmocka_unit_test(test_loops_share_one_socket),
        cmocka_unit_test(test_unused_socket_closed),
        cmocka_unit_test(test_wildcards_match),
        cmocka_unit_test(test_close_if),
        cmocka_unit_test(test_refuses_what_is_not_a_listener),
        cmocka_unit_test(test_close_with_a_second_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
