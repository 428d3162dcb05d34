/* An HTTP server with WebSocket endpoints on a group of loops that run on a thread of
 * their own, for the ws tests that race threads against the loops: starting it, waiting
 * for what the loops count, and freeing it once its connections have gone. */
#ifndef PIER_TEST_WS_THREADED_SERVER_H
#define PIER_TEST_WS_THREADED_SERVER_H

#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include <pier/http.h>

#include "support.h"

static inline void *threaded_server_run(void *group) {
    pier_group_run(group);
    return NULL;
}

/* A group of loops and an HTTP server on a port of the kernel's choosing, not started:
 * the test adds its endpoints first. */
static inline void threaded_server_new(pier_http_server_t **srv, pier_group_t **group, unsigned loops) {
    assert_int_equal(pier_group_new(group, loops), 0);
    pier_http_opts_t o = {.port = 0};
    assert_int_equal(pier_http_server_new(srv, *group, &o), 0);
}

/* Starts srv, runs group on *runner, and waits until the listener is open; returns the
 * port. */
static inline uint16_t threaded_server_start(pier_http_server_t *srv, pier_group_t *group, pthread_t *runner) {
    assert_int_equal(pier_http_server_start(srv), 0);
    assert_int_equal(pthread_create(runner, NULL, threaded_server_run, group), 0);
    uint16_t port = 0;
    for (int i = 0; i < 1000 && !(port = pier_http_server_port(srv)); i++)
        usleep(1000);
    assert_true(port > 0);
    return port;
}

/* Runs each loop of group once on this thread, after the group's own thread is gone. */
static inline void threaded_server_turn(pier_group_t *group) {
    for (unsigned l = 0; l < pier_group_size(group); l++)
        pier_loop_run_once(pier_group_loop(group, l), 1);
}

/* Stops srv and lets its connections close on the loops' thread, joins that thread, then
 * frees srv (which must succeed) and the group, running the loops here for what is
 * left. */
static inline void threaded_server_free(pier_http_server_t *srv, pier_group_t *group, pthread_t runner) {
    pier_http_server_stop(srv);
    for (int i = 0; i < 5000 && pier_http_server_conns(srv) > 0; i++)
        usleep(1000);
    pier_group_stop(group);
    pthread_join(runner, NULL);
    int rc = -EBUSY;
    for (int i = 0; i < 500 && rc == -EBUSY; i++) {
        threaded_server_turn(group);
        rc = pier_http_server_free(srv);
    }
    assert_int_equal(rc, 0);
    for (int i = 0; i < 100 && pier_group_free(group) == -EBUSY; i++)
        threaded_server_turn(group);
}

/* Waits until *counter, which the loops raise, reaches n, and fails the test unless it is
 * then exactly n. */
static inline void threaded_wait_for(int *counter, int n) {
    for (int i = 0; i < 10000 && __atomic_load_n(counter, __ATOMIC_SEQ_CST) < n; i++)
        usleep(1000);
    assert_int_equal(__atomic_load_n(counter, __ATOMIC_SEQ_CST), n);
}

#endif
