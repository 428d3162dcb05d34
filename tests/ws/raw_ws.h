/* A raw WebSocket client for the server tests: frames written and read by hand, so the
 * tests see exactly what goes over the wire. */
#ifndef PIER_TEST_RAW_WS_H
#define PIER_TEST_RAW_WS_H

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "support.h"

/* Sends one final, masked frame (a zero mask leaves the payload as it is). */
static inline void raw_ws_send(int fd, int opcode, const void *data, size_t len) {
    unsigned char h[14] = {(unsigned char)(0x80 | opcode)};
    size_t hl = 2;
    assert_true(len < 65536);
    if (len < 126) {
        h[1] = (unsigned char)(0x80 | len);
    } else {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        hl = 4;
    }
    memset(h + hl, 0, 4);
    assert_int_equal(write(fd, h, hl + 4), (ssize_t)(hl + 4));
    if (len)
        assert_int_equal(write(fd, data, len), (ssize_t)len);
}

/* Reads one frame into buf with read_fn; returns its payload length, *opcode its
 * opcode, with PIER__WS_RSV1 (0x40) added if its RSV1 bit is set. */
static inline size_t raw_ws_recv(int fd, int *opcode, void *buf, size_t cap,
                                 size_t (*read_fn)(int fd, void *buf, size_t len)) {
    unsigned char h[10];
    assert_int_equal(read_fn(fd, h, 2), 2);
    *opcode = h[0] & 0x4F;
    assert_false(h[1] & 0x80); /* a server never masks */
    size_t len = h[1] & 0x7F;
    if (len == 126) {
        assert_int_equal(read_fn(fd, h + 2, 2), 2);
        len = (size_t)h[2] << 8 | h[3];
    } else if (len == 127) {
        assert_int_equal(read_fn(fd, h + 2, 8), 8);
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
    }
    assert_true(len <= cap);
    assert_int_equal(read_fn(fd, buf, len), len);
    return len;
}

/* Sends the opening handshake for path, offering protocols and extensions (either may be
 * NULL). */
static inline void raw_ws_request_ext(int fd, const char *path, const char *protocols, const char *extensions) {
    char req[768];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s%s%s%s%s%s\r\n",
                     path, protocols ? "Sec-WebSocket-Protocol: " : "", protocols ? protocols : "", protocols ? "\r\n" : "",
                     extensions ? "Sec-WebSocket-Extensions: " : "", extensions ? extensions : "", extensions ? "\r\n" : "");
    assert_int_equal(write(fd, req, (size_t)n), n);
}

static inline void raw_ws_request(int fd, const char *path, const char *protocols) {
    raw_ws_request_ext(fd, path, protocols, NULL);
}

/* Reads the answer to the handshake a byte at a time, so that the frames behind it stay
 * unread, and fails the test unless it is a 101. */
static inline void raw_ws_read_101(int fd) {
    char head[512];
    size_t got = 0;
    while (got < 4 || memcmp(head + got - 4, "\r\n\r\n", 4) != 0) {
        assert_true(got < sizeof head);
        assert_int_equal(pier_test_read_full(fd, head + got, 1), 1);
        got++;
    }
    assert_memory_equal(head, "HTTP/1.1 101 ", 13);
}

#endif
