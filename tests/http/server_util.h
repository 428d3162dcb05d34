/* Making, starting and freeing an HTTP server in a unit test, on one loop of a one-loop
 * group, and running a client thread against it. */
#ifndef PIER_TEST_HTTP_SERVER_UTIL_H
#define PIER_TEST_HTTP_SERVER_UTIL_H

#include <errno.h>
#include <pthread.h>
#include <pier/http.h>

#include "support.h"

/* A one-loop group and an HTTP server on it, on a port of the kernel's choosing, not yet
 * started: the test adds its routes, then calls http_test_start. */
static inline void http_test_new(pier_group_t **group, pier_loop_t **loop, pier_http_server_t **srv) {
    assert_int_equal(pier_group_new(group, 1), 0);
    *loop = pier_group_loop(*group, 0);
    pier_http_opts_t o = {.port = 0};
    assert_int_equal(pier_http_server_new(srv, *group, &o), 0);
}

/* Starts srv and lets the loop open its listener; returns the port. */
static inline uint16_t http_test_start(pier_http_server_t *srv, pier_loop_t *loop) {
    assert_int_equal(pier_http_server_start(srv), 0);
    for (int i = 0; i < 10; i++)
        pier_loop_run_once(loop, 1);
    uint16_t port = pier_http_server_port(srv);
    assert_true(port > 0);
    return port;
}

/* Stops and frees srv once its connections have closed, then the group; fails the test
 * if a handle is left on the loop. */
static inline void http_test_free(pier_http_server_t *srv, pier_group_t *group) {
    pier_loop_t *loop = pier_group_loop(group, 0);
    pier_http_server_stop(srv);
    int rc = -EBUSY;
    for (int i = 0; i < 500 && rc == -EBUSY; i++) {
        pier_loop_run_once(loop, 2);
        rc = pier_http_server_free(srv);
    }
    assert_int_equal(rc, 0);
    for (int i = 0; i < 50 && pier_loop_handles(loop) > 0; i++)
        pier_loop_run_once(loop, 2);
    assert_int_equal(pier_loop_handles(loop), 0);
    assert_int_equal(pier_group_free(group), 0);
}

/* Runs fn(arg) on a thread of its own while running loop, until fn sets *done (ms at
 * most; fails the test if it does not), then joins the thread. */
static inline void http_test_talk(pier_loop_t *loop, void *(*fn)(void *), void *arg, volatile int *done, int ms) {
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fn, arg), 0);
    assert_true(pier_test_run_until(loop, done, ms));
    pthread_join(t, NULL);
}

#endif
