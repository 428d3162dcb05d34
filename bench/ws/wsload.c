/* wsload: the load generator of bench/ws. One thread, level-triggered epoll, checked.
 *
 * Echo (default): C connections, each with M messages of S bytes in flight; every message
 * that comes back (checked: its sequence number and every byte) sends the next. With
 * --proto ws it speaks WebSocket to PATH (binary messages, each frame masked with its own
 * key, as a client must); with --proto tcp the same messages go over plain TCP to an echo
 * server, so that both protocols see the same load.
 *
 *   wsload: proto=ws conns=100 size=64 window=16 seconds=5.00 messages=... msgs_per_sec=...
 *           mb_per_sec=... errors=0 load_cpu_s=... server_cpu_s=...
 *
 * Fan-out (--fanout N): N subscribers on PATH, connecting from source addresses
 * 127.0.0.2 ... 127.0.0.(1+K) (--sources K), and one publisher on the same PATH, a room
 * where every message goes to every member. The publisher keeps at most M messages in
 * flight per subscriber (a message counts until every subscriber has it); each subscriber
 * checks that sequence numbers only grow, and counts gaps as dropped.
 *
 *   wsload: fanout subs=10000 size=64 window=4 seconds=5.00 published=... delivered=...
 *           deliveries_per_sec=... dropped=0 errors=0 load_cpu_s=... server_cpu_s=...
 *
 * Idle (--idle N): opens N WebSocket connections, prints "wsload: idle conns=N deflate=D
 * open" once every handshake is done (D: how many the server accepted permessage-deflate
 * on, offered with --deflate), and holds them until SIGTERM or SIGINT. With --warm each
 * connection first sends one message ("Hello", compressed where deflate was agreed) and
 * waits for its echo, so that state made at the first message is counted too.
 *
 * --messages N (echo): exactly N messages in all, then stop, whatever the time; for
 * counting instructions per message (callgrind), where the count must not depend on speed.
 *
 * The timed window starts once every handshake is done, so connection set-up is not in
 * the numbers. --pid PID reads that process's CPU time (utime+stime, all threads) at the
 * start and the end of the window: server_cpu_s; load_cpu_s is wsload's own.
 *
 * Usage: wsload [--host 127.0.0.1] [--port P] [--proto ws|tcp] [--path /ws/echo]
 *               [--conns 100] [--size 64] [--window 16] [--seconds 5] [--pid PID]
 *               [--messages N] [--fanout N [--sources 8]] [--idle N [--deflate] [--warm]]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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

enum { CONNECTING, OPEN };

typedef struct {
    char *p;
    size_t len, off, cap;
} buf_t;

typedef struct {
    int fd, state, want_out, publisher, deflate;
    buf_t in, out;
    uint64_t next_out, next_in; /* sequence numbers: the next to send, the next expected */
    uint32_t rng;
} conn_t;

static struct {
    const char *host, *path;
    int port, ws, conns, window, fanout, sources, idle, warm, pid, deflate;
    size_t size;
    double seconds;
    uint64_t count; /* --messages: echo exactly this many, then stop (0: run for seconds) */
} cfg = {"127.0.0.1", "/ws/echo", 8080, 1, 100, 16, 0, 8, 0, 0, 0, 0, 64, 5, 0};

static conn_t *conns;
static int nconns, epfd, opened, running, measuring, deflated, warmed;
static uint64_t messages, errors, published, delivered, dropped, sent;
static char pattern[1 << 16];
static volatile sig_atomic_t stop_now;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double proc_cpu_s(int pid) {
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    char *p = strrchr(line, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void die(const char *what) {
    fprintf(stderr, "wsload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void reserve(buf_t *b, size_t more) {
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + more <= b->cap)
        return;
    if (b->off) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + more <= b->cap)
            return;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    if (!(b->p = realloc(b->p, cap)))
        die("realloc");
    b->cap = cap;
}

static uint32_t xorshift(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* One message: its sequence number in the first 8 bytes, then the pattern. */
static void put_message(conn_t *c) {
    size_t n = cfg.size, hl = 0;
    unsigned char h[14];
    if (cfg.ws) {
        h[0] = 0x82;
        if (n < 126) {
            h[1] = (unsigned char)(0x80 | n);
            hl = 2;
        } else if (n < 65536) {
            h[1] = 0x80 | 126;
            h[2] = (unsigned char)(n >> 8);
            h[3] = (unsigned char)n;
            hl = 4;
        } else {
            h[1] = 0x80 | 127;
            for (int i = 0; i < 8; i++)
                h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
            hl = 10;
        }
        uint32_t key = xorshift(&c->rng);
        memcpy(h + hl, &key, 4);
        hl += 4;
    }
    reserve(&c->out, hl + n);
    unsigned char *p = (unsigned char *)c->out.p + c->out.len;
    memcpy(p, h, hl);
    uint64_t seq = c->next_out++;
    sent += measuring;
    memcpy(p + hl, pattern, n);
    memcpy(p + hl, &seq, n < 8 ? n : 8);
    if (cfg.ws)
        for (size_t i = 0; i < n; i++)
            p[hl + i] ^= h[hl - 4 + (i & 3)];
    c->out.len += hl + n;
}

static void want_out(conn_t *c, int on) {
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->want_out = on;
}

static void flush(conn_t *c) {
    while (c->out.off < c->out.len) {
        ssize_t w = write(c->fd, c->out.p + c->out.off, c->out.len - c->out.off);
        if (w < 0 && errno == EAGAIN)
            break;
        if (w < 0) {
            errors++;
            running = 0;
            return;
        }
        c->out.off += (size_t)w;
    }
    want_out(c, c->out.off < c->out.len);
}

/* "Hello" as one masked frame: compressed (RFC 7692 7.2.3.1, RSV1 set) where deflate was
 * agreed, so that the server's inflate and deflate both come into use, else plain. */
static void put_hello(conn_t *c) {
    static const unsigned char z[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
    const unsigned char *p = c->deflate ? z : (const unsigned char *)"Hello";
    size_t n = c->deflate ? sizeof z : 5;
    unsigned char f[2 + 4 + sizeof z] = {c->deflate ? 0xc1 : 0x81, (unsigned char)(0x80 | n)};
    uint32_t key = xorshift(&c->rng);
    memcpy(f + 2, &key, 4);
    for (size_t i = 0; i < n; i++)
        f[6 + i] = p[i] ^ f[2 + (i & 3)];
    reserve(&c->out, 6 + n);
    memcpy(c->out.p + c->out.len, f, 6 + n);
    c->out.len += 6 + n;
    flush(c);
}

/* A message's payload arrived: check it, count it, and in echo mode send the next. */
static void got_message(conn_t *c, const unsigned char *p, size_t n) {
    uint64_t seq = 0;
    if (cfg.idle) {
        warmed++; /* the answer to put_hello */
        return;
    }
    memcpy(&seq, p, n < 8 ? n : 8);
    if (n != cfg.size || (n > 8 && memcmp(p + 8, pattern + 8, n - 8) != 0)) {
        errors++;
        return;
    }
    if (cfg.fanout) {
        if (c->publisher)
            return;
        if (seq < c->next_in)
            errors++;
        else if (measuring)
            dropped += seq - c->next_in;
        c->next_in = seq + 1;
        delivered += measuring;
        return;
    }
    if (seq != c->next_in++)
        errors++;
    messages += measuring;
    if (running && (!cfg.count || sent < cfg.count))
        put_message(c);
}

/* Parses whole messages out of c->in; returns 0, or -1 for a broken stream. */
static int parse(conn_t *c) {
    const unsigned char *p = (const unsigned char *)c->in.p;
    size_t i = c->in.off, end = c->in.len;
    while (i < end) {
        size_t hl = 2, n;
        if (!cfg.ws) {
            n = cfg.size;
            hl = 0;
        } else {
            if (end - i < 2)
                break;
            if ((p[i] & 0x0F) == 0x8 || (p[i + 1] & 0x80))
                return -1; /* a close, or a masked frame from a server */
            n = p[i + 1] & 0x7F;
            if (n == 126) {
                if (end - i < 4)
                    break;
                n = (size_t)p[i + 2] << 8 | p[i + 3];
                hl = 4;
            } else if (n == 127) {
                if (end - i < 10)
                    break;
                n = 0;
                for (int k = 0; k < 8; k++)
                    n = n << 8 | p[i + 2 + k];
                hl = 10;
            }
        }
        if (end - i < hl + n)
            break;
        if (!cfg.ws || (p[i] & 0x0F) == 0x2 || (p[i] & 0x0F) == 0x1)
            got_message(c, p + i + hl, n);
        i += hl + n;
    }
    c->in.off = i;
    return 0;
}

static void handshake_done(conn_t *c) {
    char *e = memmem(c->in.p + c->in.off, c->in.len - c->in.off, "\r\n\r\n", 4);
    if (!e)
        return;
    if (strncmp(c->in.p + c->in.off, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "wsload: handshake refused: %.40s\n", c->in.p + c->in.off);
        exit(1);
    }
    if (memmem(c->in.p + c->in.off, (size_t)(e - c->in.p) - c->in.off, "permessage-deflate", 18)) {
        c->deflate = 1;
        deflated++;
    }
    c->in.off = (size_t)(e + 4 - c->in.p);
    c->state = OPEN;
    opened++;
    if (cfg.warm)
        put_hello(c);
}

static void on_readable(conn_t *c) {
    reserve(&c->in, 65536);
    ssize_t r = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
    if (r < 0 && errno == EAGAIN)
        return;
    if (r <= 0) {
        if (!stop_now)
            fprintf(stderr, "wsload: the server closed a connection (%s)\n", r ? strerror(errno) : "EOF");
        errors++;
        running = 0;
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        return;
    }
    c->in.len += (size_t)r;
    if (c->state == CONNECTING)
        handshake_done(c);
    if (c->state == OPEN && parse(c) < 0) {
        errors++;
        running = 0;
    }
}

static void open_conn(conn_t *c, int i, const struct sockaddr_in *to) {
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cfg.fanout && !c->publisher) {
        struct sockaddr_in from = {.sin_family = AF_INET};
        from.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(i % cfg.sources));
        setsockopt(c->fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (const struct sockaddr *)&from, sizeof from) < 0)
            die("bind to a 127.0.0.x source");
    }
    if (connect(c->fd, (const struct sockaddr *)to, sizeof *to) < 0)
        die("connect");
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    c->rng = 2463534242u + (uint32_t)i * 2654435761u;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl");
    if (!cfg.ws) {
        c->state = OPEN;
        opened++;
        return;
    }
    reserve(&c->out, 512);
    c->out.len += (size_t)snprintf(c->out.p + c->out.len, 512,
                                   "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                                   cfg.path, cfg.host, cfg.port,
                                   cfg.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
    flush(c);
}

static int poll_once(int timeout_ms) {
    static struct epoll_event evs[1024];
    int n = epoll_wait(epfd, evs, 1024, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait");
    for (int i = 0; i < n; i++) {
        conn_t *c = evs[i].data.ptr;
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            on_readable(c);
        if (c->out.off < c->out.len)
            flush(c);
    }
    return n;
}

/* The publisher sends while fewer than window messages per subscriber are on their way. */
static void publish_more(conn_t *pub) {
    uint64_t subs = (uint64_t)cfg.fanout;
    uint64_t done = delivered + dropped;
    while (running && (pub->next_out * subs) < done + (uint64_t)cfg.window * subs) {
        put_message(pub);
        published += measuring;
    }
    if (pub->out.off < pub->out.len)
        flush(pub);
}

static void on_signal(int sig) {
    (void)sig;
    stop_now = 1;
}

static void usage(void) {
    fprintf(stderr, "usage: wsload [--host H] [--port P] [--proto ws|tcp] [--path PATH] [--conns C] [--size S]\n"
                    "              [--window M] [--seconds T] [--messages N] [--pid PID] [--fanout N [--sources K]] [--idle N [--deflate] [--warm]]\n");
    exit(2);
}

static void parse_args(int argc, char **argv) {
    static const struct option o[] = {
        {"host", 1, 0, 'h'},    {"port", 1, 0, 'p'},   {"proto", 1, 0, 'P'},   {"path", 1, 0, 'u'},
        {"conns", 1, 0, 'c'},   {"size", 1, 0, 's'},   {"window", 1, 0, 'w'},  {"seconds", 1, 0, 't'},
        {"pid", 1, 0, 'i'},     {"fanout", 1, 0, 'f'}, {"sources", 1, 0, 'k'}, {"idle", 1, 0, 'I'},
        {"deflate", 0, 0, 'D'}, {"warm", 0, 0, 'W'}, {"messages", 1, 0, 'n'}, {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (ch) {
        case 'h': cfg.host = optarg; break;
        case 'p': cfg.port = atoi(optarg); break;
        case 'P': cfg.ws = strcmp(optarg, "tcp") != 0; break;
        case 'u': cfg.path = optarg; break;
        case 'c': cfg.conns = atoi(optarg); break;
        case 's': cfg.size = (size_t)atol(optarg); break;
        case 'w': cfg.window = atoi(optarg); break;
        case 't': cfg.seconds = atof(optarg); break;
        case 'i': cfg.pid = atoi(optarg); break;
        case 'f': cfg.fanout = atoi(optarg); break;
        case 'k': cfg.sources = atoi(optarg); break;
        case 'I': cfg.idle = atoi(optarg); break;
        case 'D': cfg.deflate = 1; break;
        case 'W': cfg.warm = 1; break;
        case 'n': cfg.count = strtoull(optarg, NULL, 10); break;
        default: usage();
        }
    }
    if (cfg.conns < 1 || cfg.window < 1 || cfg.size < 8 || cfg.size > sizeof pattern || cfg.seconds <= 0 ||
        cfg.sources < 1 || cfg.sources > 250 || (cfg.fanout && !cfg.ws))
        usage();
}

static void report(double secs, double cpu, double self) {
    char srv[96];
    int n = snprintf(srv, sizeof srv, " load_cpu_s=%.3f", self);
    if (cpu >= 0)
        snprintf(srv + n, sizeof srv - (size_t)n, " server_cpu_s=%.3f", cpu);
    if (cfg.fanout)
        printf("wsload: fanout subs=%d size=%zu window=%d seconds=%.2f published=%llu delivered=%llu "
               "deliveries_per_sec=%.1f dropped=%llu errors=%llu%s\n",
               cfg.fanout, cfg.size, cfg.window, secs, (unsigned long long)published, (unsigned long long)delivered,
               delivered / secs, (unsigned long long)dropped, (unsigned long long)errors, srv);
    else
        printf("wsload: proto=%s conns=%d size=%zu window=%d seconds=%.2f messages=%llu msgs_per_sec=%.1f "
               "mb_per_sec=%.2f errors=%llu%s\n",
               cfg.ws ? "ws" : "tcp", cfg.conns, cfg.size, cfg.window, secs, (unsigned long long)messages,
               messages / secs, messages * (double)cfg.size / secs / 1e6, (unsigned long long)errors, srv);
    fflush(stdout);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (char)('a' + i % 26);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    nconns = cfg.idle ? cfg.idle : cfg.fanout ? cfg.fanout + 1 : cfg.conns;
    conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns || (epfd = epoll_create1(0)) < 0)
        die("start");
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.port)};
    if (inet_pton(AF_INET, cfg.host, &to.sin_addr) != 1)
        usage();
    running = 1;
    for (int i = 0; i < nconns; i++) {
        conns[i].publisher = cfg.fanout && i == nconns - 1;
        open_conn(&conns[i], i, &to);
        if (i % 64 == 63)
            poll_once(0); /* take handshake answers as they come */
    }
    double deadline = now_s() + 60;
    while ((opened < nconns || (cfg.warm && warmed < nconns)) && running && !stop_now && now_s() < deadline)
        poll_once(100);
    if (opened < nconns) {
        fprintf(stderr, "wsload: only %d of %d connections opened\n", opened, nconns);
        return 1;
    }
    if (cfg.idle) {
        printf("wsload: idle conns=%d deflate=%d warm=%d open\n", nconns, deflated, warmed);
        fflush(stdout);
        while (!stop_now && running)
            poll_once(200);
        return errors ? 1 : 0;
    }
    double cpu0 = cfg.pid ? proc_cpu_s(cfg.pid) : -1, self0 = self_cpu_s(), t0 = now_s(), end = t0 + cfg.seconds;
    measuring = 1;
    conn_t *pub = cfg.fanout ? &conns[nconns - 1] : NULL;
    for (int i = 0; !cfg.fanout && i < nconns; i++) {
        for (int k = 0; k < cfg.window && (!cfg.count || sent < cfg.count); k++)
            put_message(&conns[i]);
        flush(&conns[i]);
    }
    while (running && !stop_now) {
        if (pub)
            publish_more(pub);
        poll_once(10);
        if (cfg.count ? messages >= cfg.count : now_s() >= end)
            break;
    }
    double t1 = now_s(), cpu1 = cfg.pid ? proc_cpu_s(cfg.pid) : -1;
    report(t1 - t0, cfg.pid && cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1, self_cpu_s() - self0);
    return errors ? 1 : 0;
}
