#include "support.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

uint64_t pier_test_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int pier_test_run_until(pier_loop_t *loop, const volatile int *flag, int timeout_ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)timeout_ms;
    /* atomic loads: the flag may be set by another thread */
    while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE) && pier_test_now_ms() < end)
        pier_loop_run_once(loop, 10);
    return __atomic_load_n(flag, __ATOMIC_ACQUIRE);
}

int pier_test_connect(uint16_t port) { return pier_test_connect_rcvbuf(port, 0); }

int pier_test_connect_rcvbuf(uint16_t port, int rcvbuf) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (rcvbuf)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

size_t pier_test_read_full(int fd, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

void pier_test_free_loop(pier_loop_t *loop) {
    /* let pending closes finish before checking */
    for (int i = 0; i < 50 && pier_loop_handles(loop) > 0; i++)
        pier_loop_run_once(loop, 10);
    assert_int_equal(pier_loop_handles(loop), 0);
    assert_int_equal(pier_loop_free(loop), 0);
}
