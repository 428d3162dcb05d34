/* Shared helpers for pier's unit tests (cmocka). */
#ifndef PIER_TEST_SUPPORT_H
#define PIER_TEST_SUPPORT_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pier/loop.h>

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t pier_test_now_ms(void);

/* Runs loop iterations until *flag is non-zero or timeout_ms passes; returns *flag. */
int pier_test_run_until(pier_loop_t *loop, const volatile int *flag, int timeout_ms);

/* A blocking TCP socket connected to 127.0.0.1:port, with 10 s send/receive timeouts. */
int pier_test_connect(uint16_t port);
/* The same with a receive buffer of rcvbuf bytes (0: the default), set before connect
 * so that a server fills it fast. */
int pier_test_connect_rcvbuf(uint16_t port, int rcvbuf);

/* Reads exactly len bytes (blocking); returns bytes read before EOF/error. */
size_t pier_test_read_full(int fd, void *buf, size_t len);

/* Frees the loop and fails the test if it still has live handles: every test ends here,
 * so a leaked connection, timer or listener fails. */
void pier_test_free_loop(pier_loop_t *loop);

#endif
