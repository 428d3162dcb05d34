/* Bare epoll echo server: the reference limit for bench/echo.
 *
 * One thread, level-triggered epoll, non-blocking sockets, no framework.
 * On readable: read into a shared buffer and write it straight back. Bytes the
 * kernel would not take (EAGAIN or a short write) are kept in a per-connection
 * buffer; the connection then waits for EPOLLOUT and stops reading until that
 * buffer is empty, so memory stays bounded by one read's worth per connection.
 *
 * Usage: epoll_echo PORT   (listens on 127.0.0.1)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE (64 * 1024)
#define MAX_EVENTS 256

struct conn {
    int fd;
    char *pend;       /* bytes still to write, or NULL */
    size_t pend_off;  /* first unsent byte in pend */
    size_t pend_len;  /* end of data in pend */
};

static int ep;
static char rbuf[READ_SIZE];

static void conn_close(struct conn *c)
{
    close(c->fd); /* also removes it from the epoll set */
    free(c->pend);
    free(c);
}

static void set_events(struct conn *c, uint32_t ev)
{
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

/* Write what is pending. Returns 0 when all is out, 1 when some remains, -1 on error. */
static int flush_pending(struct conn *c)
{
    while (c->pend_off < c->pend_len) {
        ssize_t n = write(c->fd, c->pend + c->pend_off, c->pend_len - c->pend_off);
        if (n > 0) {
            c->pend_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return 1;
        } else {
            return -1;
        }
    }
    c->pend_off = c->pend_len = 0;
    return 0;
}

/* Echo what can be read. Returns -1 when the connection should close. */
static int on_readable(struct conn *c)
{
    for (;;) {
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return 0;
            return -1;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            ssize_t w = write(c->fd, rbuf + off, (size_t)n - off);
            if (w > 0) {
                off += (size_t)w;
            } else if (w < 0 && errno == EINTR) {
                continue;
            } else if (w < 0 && errno == EAGAIN) {
                break;
            } else {
                return -1;
            }
        }
        if (off < (size_t)n) {
            /* Keep the rest, wait for the socket to drain, stop reading meanwhile. */
            size_t rest = (size_t)n - off;
            if (!c->pend && !(c->pend = malloc(READ_SIZE)))
                return -1;
            memcpy(c->pend, rbuf + off, rest);
            c->pend_off = 0;
            c->pend_len = rest;
            set_events(c, EPOLLOUT);
            return 0;
        }
        if ((size_t)n < sizeof rbuf)
            return 0; /* drained the socket; avoid a read that would just say EAGAIN */
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        perror("epoll_echo: bind/listen");
        return 1;
    }

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event le = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
    fprintf(stderr, "epoll_echo: listening on 127.0.0.1:%s\n", argv[1]);

    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break; /* EAGAIN, or EMFILE: level-triggered, retried next round */
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event e = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            uint32_t ev = evs[i].events;
            int rc = 0;
            if (ev & EPOLLOUT) {
                rc = flush_pending(c);
                if (rc == 0)
                    set_events(c, EPOLLIN | EPOLLRDHUP);
                if (rc != 0) {
                    if (rc < 0)
                        conn_close(c);
                    continue;
                }
            }
            if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                if (on_readable(c) < 0)
                    conn_close(c);
            }
        }
    }
}
