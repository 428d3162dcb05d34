/* A message server in the msg unit tests: its group running on a thread of its own,
 * started after the test has set its handlers, and drained and freed at the end; and a
 * client stopped and freed on the test's loop. */
#ifndef PIER_TEST_MSG_ENV_H
#define PIER_TEST_MSG_ENV_H

#include <pthread.h>

#include <pier/msg.h>

#include "support.h"

typedef struct {
    pier_group_t *g;
    pier_msg_server_t *srv;
    pthread_t th;
} env_t;

static inline void *env_run_group(void *arg) {
    pier_group_run(arg);
    return NULL;
}

/* A group of loops and a message server with o on it, not yet started: the test adds
 * its handlers, then calls env_run. */
static inline void env_new(env_t *e, unsigned loops, const pier_msg_server_opts_t *o) {
    assert_int_equal(pier_group_new(&e->g, loops), 0);
    assert_int_equal(pier_msg_server_new(&e->srv, e->g, o), 0);
}

/* Starts the server and runs its group on a thread of its own. */
static inline void env_run(env_t *e) {
    assert_int_equal(pier_msg_server_start(e->srv), 0);
    assert_int_equal(pthread_create(&e->th, NULL, env_run_group, e->g), 0);
}

/* Drains through the public call and checks that everything can be freed. */
static inline void env_stop(env_t *e) {
    pier_msg_server_shutdown(e->srv);
    pthread_join(e->th, NULL);
    assert_int_equal(pier_msg_server_free(e->srv), 0);
    assert_int_equal(pier_group_free(e->g), 0);
}

/* Stops mc and runs loop until mc can be freed (200 turns at most); fails the test if it
 * cannot. */
static inline void env_client_free(pier_loop_t *loop, pier_msg_client_t *mc) {
    pier_msg_client_stop(mc);
    int freed = 0;
    for (int i = 0; i < 200 && !freed; i++) {
        pier_loop_run_once(loop, 10);
        freed = pier_msg_client_free(mc) == 0;
    }
    assert_true(freed);
}

#endif
