/* An echo server in the net unit tests: the echo itself, a check that a client is echoed,
 * a listening socket made outside pier, a started server on a one-loop group, and
 * stopping and freeing a server with its group. */
#ifndef PIER_TEST_NET_ECHO_SERVER_H
#define PIER_TEST_NET_ECHO_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <pier/net.h>

#include "support.h"

/* An on_read that writes back all it is given. */
static inline size_t echo_server_read(pier_conn_t *c, const char *data, size_t len) {
    pier_conn_write(c, data, len);
    return len;
}

/* Sends "ping" on fd and fails the test unless it comes back within 5 s, running loop
 * (the one that serves fd) while it waits. */
static inline void echo_server_check(pier_loop_t *loop, int fd) {
    assert_int_equal(send(fd, "ping", 4, 0), 4);
    char buf[4];
    size_t got = 0;
    uint64_t end = pier_test_now_ms() + 5000;
    while (got < 4 && pier_test_now_ms() < end) {
        pier_loop_run_once(loop, 2);
        ssize_t n = recv(fd, buf + got, 4 - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
    }
    assert_int_equal(got, 4);
    assert_memory_equal(buf, "ping", 4);
}

/* A socket listening on 127.0.0.1:port (0: the kernel's choice), of socket type flags
 * (SOCK_NONBLOCK, SOCK_CLOEXEC) besides SOCK_STREAM; *bound is its port. */
static inline int echo_server_listener_flags(uint16_t port, int flags, uint16_t *bound) {
    int fd = socket(AF_INET, SOCK_STREAM | flags, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *bound = ntohs(sa.sin_port);
    return fd;
}

/* A blocking listening socket, as a service manager or a parent process would pass it. */
static inline int echo_server_listener(uint16_t port, uint16_t *bound) {
    return echo_server_listener_flags(port, 0, bound);
}

/* Stops srv, runs every loop of g until srv can be freed (5 s at most), and frees both;
 * fails the test if either refuses. */
static inline void echo_server_free(pier_server_t *srv, pier_group_t *g) {
    pier_server_stop(srv);
    uint64_t end = pier_test_now_ms() + 5000;
    int rc;
    while ((rc = pier_server_free(srv)) == -EBUSY && pier_test_now_ms() < end)
        for (unsigned i = 0; i < pier_group_size(g); i++)
            pier_loop_run_once(pier_group_loop(g, i), 2);
    assert_int_equal(rc, 0);
    assert_int_equal(pier_group_free(g), 0);
}

/* A server on a one-loop group, on the port o asks for. */
typedef struct {
    pier_group_t *g;
    pier_loop_t *loop;
    pier_server_t *srv;
    uint16_t port;
} echo_server_fx_t;

/* Makes a one-loop group and a server on it with o, starts it and runs the loop once;
 * fails the test if any step fails. */
static inline echo_server_fx_t echo_server_up(const pier_server_opts_t *o) {
    echo_server_fx_t f;
    assert_int_equal(pier_group_new(&f.g, 1), 0);
    f.loop = pier_group_loop(f.g, 0);
    assert_int_equal(pier_server_new(&f.srv, f.g, o), 0);
    f.port = pier_server_port(f.srv);
    assert_int_equal(pier_server_start(f.srv), 0);
    pier_loop_run_once(f.loop, 0);
    return f;
}

/* Stops f's server, closes its connections, runs the loop until every one has finished
 * closing and the server can be freed, and frees server and group (echo_server_free). */
static inline void echo_server_down(echo_server_fx_t *f) {
    pier_server_stop(f->srv);
    pier_server_close_all(f->srv);
    echo_server_free(f->srv, f->g);
}

#endif
