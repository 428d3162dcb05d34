/* Minimal HTTP responder for bench/http: the reference for the limit, not a server.
 *
 * It does the least work that still looks like HTTP/1.1 to wrk: it counts request
 * ends ("\r\n\r\n", so requests with bodies are not supported) and answers each one
 * with the same 200 "Hello, World!" response, carrying a Date header refreshed once a
 * second. Pipelined requests found in one read are answered with one write. No
 * parsing, no routing, no limits: its requests/s shows how far the load can drive a
 * server on this machine, and its CPU per request the floor for any real server.
 *
 * One thread, level-triggered epoll; output the socket does not take is kept and
 * reading pauses until it drains.
 *
 * Usage: http_raw PORT   (listens on 127.0.0.1)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (64 * 1024)
#define MAX_EVENTS 256

struct conn {
    int fd;
    int match;       /* how much of "\r\n\r\n" the last bytes matched */
    char *out;       /* unsent response bytes */
    size_t out_off, out_len, out_cap;
};

static int ep;
static char rbuf[READ_SIZE];
static char resp[256];
static size_t resp_len;
static time_t resp_time;

static void refresh_response(void)
{
    time_t now = time(NULL);
    if (now == resp_time)
        return;
    resp_time = now;
    struct tm tm;
    gmtime_r(&now, &tm);
    char date[64];
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    resp_len = (size_t)snprintf(resp, sizeof resp,
                                "HTTP/1.1 200 OK\r\nServer: raw\r\nDate: %s\r\n"
                                "Content-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
                                "Hello, World!",
                                date);
}

static void conn_close(struct conn *c)
{
    close(c->fd);
    free(c->out);
    free(c);
}

static void set_events(struct conn *c, uint32_t ev)
{
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

/* Count complete request heads in buf, carrying a partial "\r\n\r\n" across reads. */
static size_t count_requests(struct conn *c, const char *buf, size_t n)
{
    static const char end[4] = { '\r', '\n', '\r', '\n' };
    size_t count = 0;
    int m = c->match;
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == end[m]) {
            if (++m == 4) {
                count++;
                m = 0;
            }
        } else {
            m = buf[i] == '\r' ? 1 : 0;
        }
    }
    c->match = m;
    return count;
}

/* Write pending output. 0: all out, 1: some left, -1: error. */
static int flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w > 0)
            c->out_off += (size_t)w;
        else if (w < 0 && errno == EINTR)
            continue;
        else if (w < 0 && errno == EAGAIN)
            return 1;
        else
            return -1;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static int on_readable(struct conn *c)
{
    for (;;) {
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        if (n == 0)
            return -1;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        size_t k = count_requests(c, rbuf, (size_t)n);
        if (k) {
            size_t need = k * resp_len;
            if (need > c->out_cap) {
                char *p = realloc(c->out, need);
                if (!p)
                    return -1;
                c->out = p;
                c->out_cap = need;
            }
            for (size_t i = 0; i < k; i++)
                memcpy(c->out + i * resp_len, resp, resp_len);
            c->out_off = 0;
            c->out_len = need;
            int rc = flush_out(c);
            if (rc < 0)
                return -1;
            if (rc > 0) {
                set_events(c, EPOLLOUT);
                return 0;
            }
        }
        if ((size_t)n < sizeof rbuf)
            return 0;
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
        perror("http_raw: bind/listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event le = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
    fprintf(stderr, "http_raw: listening on 127.0.0.1:%s\n", argv[1]);

    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        refresh_response();
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
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
            if (ev & EPOLLOUT) {
                int rc = flush_out(c);
                if (rc < 0) {
                    conn_close(c);
                    continue;
                }
                if (rc > 0)
                    continue;
                set_events(c, EPOLLIN | EPOLLRDHUP);
            }
            if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && on_readable(c) < 0)
                conn_close(c);
        }
    }
}
