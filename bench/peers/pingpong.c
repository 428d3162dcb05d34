/* Ping-pong load generator for echo servers, an alternative to `pier echo-client`.
 *
 * Opens C connections; each sends one S-byte message, waits until all S bytes
 * have come back (checking every byte), and sends the next. Runs for T seconds,
 * one thread, level-triggered epoll, and prints one line in the same form as
 * pier's echo-client:
 *
 *   pingpong: conns=100 size=64 seconds=5.00 messages=123456 msgs_per_sec=24691.2 mb_per_sec=1.58 errors=0
 *
 * mb_per_sec counts message bytes in one direction, in 10^6 bytes.
 *
 * Usage: pingpong [--host 127.0.0.1] [--port 10088] [--conns 100] [--size 64] [--seconds 5]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PATTERN_SPAN 251 /* prime, so message k of connection c starts at a varying offset */

struct conn {
    int fd;
    int want_out;     /* EPOLLOUT registered */
    size_t sent;      /* bytes of the current message written */
    size_t got;       /* bytes of the current message read back */
    unsigned off;     /* pattern offset of the current message */
};

static unsigned char *pattern;
static size_t msg_size;
static unsigned char rbuf[256 * 1024];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: pingpong [--host H] [--port P] [--conns C] [--size S] [--seconds T]\n");
    exit(2);
}

/* Write as much of the current message as the socket takes. -1 on error. */
static int pump_out(int ep, struct conn *c)
{
    while (c->sent < msg_size) {
        ssize_t n = write(c->fd, pattern + c->off + c->sent, msg_size - c->sent);
        if (n > 0) {
            c->sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            break;
        } else {
            return -1;
        }
    }
    int need = c->sent < msg_size;
    if (need != c->want_out) {
        struct epoll_event e = { .events = EPOLLIN | (need ? EPOLLOUT : 0), .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
        c->want_out = need;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 10088, nconns = 100;
    double seconds = 5;
    msg_size = 64;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *v = argv[i + 1];
        if (!strcmp(argv[i], "--host"))
            host = v;
        else if (!strcmp(argv[i], "--port"))
            port = atoi(v);
        else if (!strcmp(argv[i], "--conns"))
            nconns = atoi(v);
        else if (!strcmp(argv[i], "--size"))
            msg_size = (size_t)atol(v);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atof(v);
        else
            usage();
        i++;
    }
    if (port <= 0 || nconns <= 0 || msg_size == 0 || seconds <= 0)
        usage();
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nconns + 16) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    pattern = malloc(msg_size + PATTERN_SPAN);
    for (size_t i = 0; i < msg_size + PATTERN_SPAN; i++)
        pattern[i] = (unsigned char)(i * 131u + (i >> 8));

    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "pingpong: bad host %s (IPv4 address expected)\n", host);
        return 2;
    }

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    int one = 1;
    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            fprintf(stderr, "pingpong: connect %s:%d (connection %d): %s\n", host, port, i + 1,
                    strerror(errno));
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        conns[i].fd = fd;
        conns[i].off = (unsigned)i % PATTERN_SPAN;
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = &conns[i] };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    }

    long long messages = 0, errors = 0;
    int live = nconns;
    double start = now(), end = start + seconds;
    for (int i = 0; i < nconns; i++)
        if (pump_out(ep, &conns[i]) < 0) {
            errors++;
            close(conns[i].fd);
            conns[i].fd = -1;
            live--;
        }

    struct epoll_event evs[512];
    double t = start;
    while (live > 0 && t < end) {
        int ms = (int)((end - t) * 1000) + 1;
        int n = epoll_wait(ep, evs, 512, ms);
        if (n < 0 && errno != EINTR) {
            perror("pingpong: epoll_wait");
            return 1;
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->fd < 0)
                continue;
            int bad = 0;
            if (evs[k].events & EPOLLOUT)
                bad = pump_out(ep, c) < 0;
            if (!bad && (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                for (;;) {
                    ssize_t r = read(c->fd, rbuf, sizeof rbuf);
                    if (r < 0 && errno == EINTR)
                        continue;
                    if (r < 0 && errno == EAGAIN)
                        break;
                    if (r <= 0 || c->got + (size_t)r > c->sent) {
                        bad = 1; /* closed, failed, or more bytes than were sent */
                        break;
                    }
                    if (memcmp(rbuf, pattern + c->off + c->got, (size_t)r) != 0) {
                        bad = 1;
                        break;
                    }
                    c->got += (size_t)r;
                    if (c->got == msg_size) {
                        messages++;
                        c->got = c->sent = 0;
                        c->off = (c->off + 1) % PATTERN_SPAN;
                        if (pump_out(ep, c) < 0)
                            bad = 1;
                        break; /* the reply is at least a round trip away */
                    }
                    if ((size_t)r < sizeof rbuf)
                        break;
                }
            }
            if (bad) {
                errors++;
                close(c->fd);
                c->fd = -1;
                live--;
            }
        }
        t = now();
    }
    double elapsed = t - start;
    if (elapsed <= 0)
        elapsed = seconds;
    printf("pingpong: conns=%d size=%zu seconds=%.2f messages=%lld msgs_per_sec=%.1f "
           "mb_per_sec=%.2f errors=%lld\n",
           nconns, msg_size, elapsed, messages, (double)messages / elapsed,
           (double)messages * (double)msg_size / elapsed / 1e6, errors);
    return errors ? 1 : 0;
}
