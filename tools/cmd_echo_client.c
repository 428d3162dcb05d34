/* pier echo-client: an interactive line client, or (with --conns/--size/--seconds) a
 * ping-pong load generator built on pier's own client that checks every echoed byte. */
#include "cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PATTERN_SPAN 256 /* message k starts at offset k % 256 of the pattern */

static const char client_help[] =
    "usage: pier echo-client [--host 127.0.0.1] [--port 10088] [--timeout SECONDS]\n"
    "       pier echo-client [--host H] [--port P] --conns C --size S --seconds T [--threads N]\n"
    "       (both also with --tls [--cafile F] [--servername N] [--insecure])\n"
    "\n"
    "Without --conns: reads lines from stdin, sends each to the echo server, reads back\n"
    "exactly as many bytes and prints them.\n"
    "With --conns: a ping-pong load generator. C connections each send an S-byte message,\n"
    "wait for all S bytes to come back, check every byte and send the next, for T seconds.\n"
    "It prints one line: the measured window in seconds, messages, messages/s, MB/s\n"
    "(echoed payload) and the number of errors, and\n"
    "exits 1 if any byte came back wrong or no connection could be made.\n"
    "\n"
    "  --host H        server address, default 127.0.0.1\n"
    "  --port P        server port, default 10088\n"
    "  --timeout S     connect and reply timeout in seconds, default 5\n"
    "  --conns C       connections (1..100000)\n"
    "  --size S        message size in bytes (1..16777216), default 64\n"
    "  --seconds T     how long to run, default 5\n"
    "  --threads N     client event loops, default 1\n"
    "  --tls           speak TLS; the server's certificate is checked against the system's\n"
    "                  CA store and the host name (or --servername)\n"
    "  --cafile F      trust the certificates in PEM file F instead\n"
    "  --servername N  the name sent as SNI and expected in the certificate\n"
    "  --insecure      accept any certificate (for tests only)\n";

/* ---- interactive mode ---- */

static int connect_blocking(const char *host, uint16_t port, int timeout_ms) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char ps[8];
    snprintf(ps, sizeof ps, "%u", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "pier echo-client: cannot resolve '%s': %s\n", host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? errno : 0;
    if (!err && connect(fd, res->ai_addr, res->ai_addrlen) < 0) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            socklen_t len = sizeof err;
            err = poll(&p, 1, timeout_ms) == 1 ? 0 : ETIMEDOUT;
            if (!err)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        }
    }
    freeaddrinfo(res);
    if (err) {
        fprintf(stderr, "pier echo-client: cannot connect to %s:%u: %s\n", host, port, strerror(err));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int wait_fd(int fd, short events, int timeout_ms) {
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, timeout_ms) == 1 ? 0 : -1;
}

static int interactive(const char *host, uint16_t port, int timeout_ms) {
    int fd = connect_blocking(host, port, timeout_ms);
    if (fd < 0)
        return 1;
    char *line = NULL, *back = NULL;
    size_t cap = 0, backcap = 0;
    ssize_t len;
    int code = 0;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        for (ssize_t off = 0; off < len;) {
            ssize_t n = send(fd, line + off, (size_t)(len - off), MSG_NOSIGNAL);
            if (n < 0 && errno == EAGAIN && wait_fd(fd, POLLOUT, timeout_ms) == 0)
                continue;
            if (n <= 0) {
                fprintf(stderr, "pier echo-client: send failed: %s\n", strerror(errno));
                code = 1;
                goto done;
            }
            off += n;
        }
        if ((size_t)len > backcap) {
            backcap = (size_t)len;
            back = realloc(back, backcap);
        }
        for (ssize_t got = 0; got < len;) {
            if (wait_fd(fd, POLLIN, timeout_ms) < 0) {
                fprintf(stderr, "pier echo-client: no reply within %d ms\n", timeout_ms);
                code = 1;
                goto done;
            }
            ssize_t n = recv(fd, back + got, (size_t)(len - got), 0);
            if (n < 0 && errno == EAGAIN)
                continue;
            if (n <= 0) {
                fprintf(stderr, "pier echo-client: server closed the connection\n");
                code = 1;
                goto done;
            }
            got += n;
        }
        fwrite(back, 1, (size_t)len, stdout);
        fflush(stdout);
    }
done:
    free(line);
    free(back);
    close(fd);
    return code;
}

/* Interactive over TLS: pier's own client, its loop driven on this thread between lines. */
typedef struct line_client_s {
    pier_conn_t *c;
    int failed, closed;
    size_t got;
} line_client_t;

static size_t line_read(pier_conn_t *c, const char *data, size_t len) {
    line_client_t *lc = pier_conn_data(c);
    fwrite(data, 1, len, stdout);
    fflush(stdout);
    lc->got += len;
    return len;
}

static void line_close(pier_conn_t *c, int err) {
    line_client_t *lc = pier_conn_data(c);
    lc->closed = 1;
    lc->c = NULL;
}

static const pier_conn_cbs_t line_cbs = {.on_read = line_read, .on_close = line_close};

static void line_connect(pier_client_t *cl, pier_conn_t *c) {
    line_client_t *lc = pier_client_data(cl);
    lc->c = c;
    pier_conn_set_cbs(c, &line_cbs, lc);
}

static void line_connect_error(pier_client_t *cl, int err, int will_retry) {
    line_client_t *lc = pier_client_data(cl);
    fprintf(stderr, "pier echo-client: cannot connect: %s\n", pier_strerror(err));
    lc->failed = 1;
}

/* Runs the loop until cond holds or timeout_ms passes; 1 if it holds. */
static int run_while(pier_loop_t *loop, line_client_t *lc, size_t want, int timeout_ms) {
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        if (lc->failed || lc->closed || (want ? lc->got >= want : lc->c != NULL))
            break;
        pier_loop_run_once(loop, 10);
    }
    return !lc->failed && !lc->closed && (want ? lc->got >= want : lc->c != NULL);
}

static int interactive_tls(const char *host, uint16_t port, int timeout_ms, pier_tls_ctx_t *tls,
                           const char *servername) {
    pier_loop_t *loop;
    if (pier_loop_new(&loop) < 0)
        return 1;
    line_client_t lc = {0};
    pier_client_opts_t co = {.host = host, .port = port, .connect_timeout_ms = (uint64_t)timeout_ms,
                             .tls = tls, .tls_servername = servername, .on_connect = line_connect,
                             .on_connect_error = line_connect_error, .data = &lc};
    pier_client_t *cl;
    int err = pier_client_new(&cl, loop, &co);
    if (err < 0) {
        fprintf(stderr, "pier echo-client: cannot connect to %s:%u: %s\n", host, port, pier_strerror(err));
        pier_loop_free(loop);
        return 1;
    }
    int code = run_while(loop, &lc, 0, timeout_ms * 2) ? 0 : 1;
    char *line = NULL;
    size_t cap = 0, want = 0;
    ssize_t len;
    while (code == 0 && (len = getline(&line, &cap, stdin)) > 0) {
        want += (size_t)len;
        if (pier_conn_write(lc.c, line, (size_t)len) < 0 || !run_while(loop, &lc, want, timeout_ms)) {
            fprintf(stderr, "pier echo-client: %s\n", lc.closed ? "server closed the connection" : "no reply in time");
            code = 1;
        }
    }
    free(line);
    pier_client_stop(cl);
    for (int i = 0; i < 500 && pier_client_free(cl) == -EBUSY; i++)
        pier_loop_run_once(loop, 10);
    pier_loop_free(loop);
    return code;
}

/* ---- load mode ---- */

typedef struct load_s load_t;

typedef struct load_loop_s {
    load_t *lg;
    pier_loop_t *loop;
    struct load_conn_s *conns;
    unsigned n, connected, closed;
    int running, done;
    uint64_t msgs, errors, t_start, t_end;
    pier_timer_t timer;
} load_loop_t;

typedef struct load_conn_s {
    load_loop_t *L;
    pier_client_t *cl;
    char *pattern;              /* size + PATTERN_SPAN bytes */
    size_t got;
    uint64_t seq;
} load_conn_t;

struct load_s {
    pier_group_t *group;
    const char *host;
    uint16_t port;
    pier_tls_ctx_t *tls;
    const char *servername;
    size_t size;
    uint64_t seconds;
    atomic_uint loops_done;
    atomic_int failed;
    load_loop_t *loops;
};

static void send_next(load_conn_t *lc, pier_conn_t *c) {
    if (pier_conn_write(c, lc->pattern + lc->seq % PATTERN_SPAN, lc->L->lg->size) < 0)
        lc->L->errors++;
}

static size_t load_read(pier_conn_t *c, const char *data, size_t len) {
    load_conn_t *lc = pier_conn_data(c);
    size_t size = lc->L->lg->size;
    for (size_t off = 0; off < len;) {
        size_t take = len - off < size - lc->got ? len - off : size - lc->got;
        if (memcmp(data + off, lc->pattern + lc->seq % PATTERN_SPAN + lc->got, take) != 0) {
            lc->L->errors++;
            pier_log(PIER_LOG_ERROR, "echo-client: wrong bytes in message %llu", (unsigned long long)lc->seq);
            pier_conn_abort(c);
            return len;
        }
        off += take;
        lc->got += take;
        if (lc->got == size) {
            lc->got = 0;
            lc->seq++;
            if (lc->L->running) {
                lc->L->msgs++;
                send_next(lc, c);
            }
        }
    }
    return len;
}

static void loop_finished(load_loop_t *L) {
    if (L->done)
        return;
    L->done = 1;
    if (atomic_fetch_add(&L->lg->loops_done, 1) + 1 == pier_group_size(L->lg->group))
        pier_group_stop(L->lg->group);
}

static void load_close(pier_conn_t *c, int err) {
    load_conn_t *lc = pier_conn_data(c);
    load_loop_t *L = lc->L;
    if (L->running) {
        L->errors++;
        pier_log(PIER_LOG_ERROR, "echo-client: connection closed during the run: %s", pier_strerror(err));
    }
    if (++L->closed == L->n)
        loop_finished(L);
}

static const pier_conn_cbs_t load_cbs = {.on_read = load_read, .on_close = load_close};

static void end_cb(pier_timer_t *t) {
    load_loop_t *L = t->data;
    L->running = 0;
    L->t_end = pier_loop_now(L->loop);
    for (unsigned i = 0; i < L->n; i++)
        pier_client_stop(L->conns[i].cl);
    if (L->connected == 0)
        loop_finished(L);
}

static void load_connect(pier_client_t *cl, pier_conn_t *c) {
    load_conn_t *lc = pier_client_data(cl);
    load_loop_t *L = lc->L;
    pier_conn_set_cbs(c, &load_cbs, lc);
    if (++L->connected < L->n)
        return;
    /* every connection is up: the clock starts now, with one message on each */
    pier_loop_update_time(L->loop);
    L->t_start = pier_loop_now(L->loop);
    L->running = 1;
    for (unsigned i = 0; i < L->n; i++)
        send_next(&L->conns[i], pier_client_conn(L->conns[i].cl));
    pier_timer_start(&L->timer, L->lg->seconds * 1000, 0);
}

static void load_connect_error(pier_client_t *cl, int err, int will_retry) {
    load_conn_t *lc = pier_client_data(cl);
    load_t *lg = lc->L->lg;
    if (!atomic_exchange(&lg->failed, 1))
        fprintf(stderr, "pier echo-client: cannot connect to %s:%u: %s\n", lg->host, lg->port, pier_strerror(err));
    pier_group_stop(lc->L->lg->group);
}

static int all_clients_idle(void *arg) {
    load_t *lg = arg;
    for (unsigned i = 0; i < pier_group_size(lg->group); i++) {
        load_loop_t *L = &lg->loops[i];
        for (unsigned k = 0; k < L->n; k++)
            if (L->conns[k].cl && pier_client_free(L->conns[k].cl) == -EBUSY)
                return 0;
            else
                L->conns[k].cl = NULL;
    }
    return 1;
}

static int load(load_t *cfg, unsigned conns, unsigned threads, uint64_t timeout_ms) {
    load_t lg = {.size = cfg->size, .seconds = cfg->seconds, .host = cfg->host, .port = cfg->port,
                 .tls = cfg->tls, .servername = cfg->servername};
    const char *host = lg.host;
    uint16_t port = lg.port;
    size_t size = lg.size;
    if (threads > conns)
        threads = conns;
    int err = pier_group_new(&lg.group, threads);
    if (err < 0) {
        fprintf(stderr, "pier echo-client: %s\n", pier_strerror(err));
        return 1;
    }
    lg.loops = calloc(threads, sizeof *lg.loops);
    for (unsigned i = 0; i < threads; i++) {
        load_loop_t *L = &lg.loops[i];
        L->lg = &lg;
        L->loop = pier_group_loop(lg.group, i);
        L->n = conns / threads + (i < conns % threads);
        L->conns = calloc(L->n, sizeof *L->conns);
        pier_timer_init(L->loop, &L->timer, end_cb, L);
        for (unsigned k = 0; k < L->n; k++) {
            load_conn_t *lc = &L->conns[k];
            lc->L = L;
            lc->pattern = malloc(size + PATTERN_SPAN);
            for (size_t b = 0; b < size + PATTERN_SPAN; b++)
                lc->pattern[b] = (char)((b * 131 + (i * 7919 + k) * 17 + (b >> 8)) & 0xff);
            pier_client_opts_t co = {
                .host = host, .port = port, .connect_timeout_ms = timeout_ms,
                .tls = lg.tls, .tls_servername = lg.servername,
                .limits = {.out_high = size * 2 + 65536},
                .on_connect = load_connect, .on_connect_error = load_connect_error, .data = lc,
            };
            err = pier_client_new(&lc->cl, L->loop, &co);
            if (err < 0) {
                fprintf(stderr, "pier echo-client: cannot connect to %s:%u: %s\n", host, port, pier_strerror(err));
                atomic_store(&lg.failed, 1);
                break;
            }
        }
    }
    if (!atomic_load(&lg.failed))
        pier_group_run(lg.group);
    /* a failed run leaves clients connecting or connected: stop them all */
    for (unsigned i = 0; i < threads; i++) {
        pier_timer_stop(&lg.loops[i].timer);
        for (unsigned k = 0; k < lg.loops[i].n; k++)
            if (lg.loops[i].conns[k].cl)
                pier_client_stop(lg.loops[i].conns[k].cl);
    }
    pier_cli_settle(lg.group, all_clients_idle, &lg, 5000);
    uint64_t msgs = 0, errors = 0, window_ms = 0;
    double rate = 0;
    for (unsigned i = 0; i < threads; i++) {
        load_loop_t *L = &lg.loops[i];
        msgs += L->msgs;
        errors += L->errors;
        if (L->t_end > L->t_start) {
            rate += (double)L->msgs * 1000.0 / (double)(L->t_end - L->t_start);
            if (L->t_end - L->t_start > window_ms)
                window_ms = L->t_end - L->t_start;
        }
        for (unsigned k = 0; k < L->n; k++)
            free(L->conns[k].pattern);
        free(L->conns);
    }
    free(lg.loops);
    pier_group_free(lg.group);
    if (atomic_load(&lg.failed))
        return 1;
    printf("echo-client: conns=%u size=%zu seconds=%.2f messages=%llu msgs_per_sec=%.1f mb_per_sec=%.2f errors=%llu\n",
           conns, size, (double)window_ms / 1000.0, (unsigned long long)msgs, rate, rate * (double)size / 1e6,
           (unsigned long long)errors);
    return errors == 0 && msgs > 0 ? 0 : 1;
}

int pier_cmd_echo_client(int argc, char **argv) {
    const char *host = "127.0.0.1", *cafile = NULL, *servername = NULL;
    uint16_t port = 10088;
    uint64_t conns = 0, size = 64, seconds = 5, threads = 1, timeout = 5;
    int tls = 0, insecure = 0;
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},    {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'c'},   {"size", required_argument, 0, 's'},
        {"seconds", required_argument, 0, 'T'}, {"threads", required_argument, 0, 't'},
        {"timeout", required_argument, 0, 'o'}, {"help", no_argument, 0, 'H'},
        {"tls", no_argument, 0, 'S'},           {"cafile", required_argument, 0, 'A'},
        {"insecure", no_argument, 0, 'I'},      {"servername", required_argument, 0, 'N'},
        {0, 0, 0, 0},
    };
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int bad = 0;
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': bad = pier_cli_port("echo-client", optarg, &port); break;
        case 'c': bad = pier_cli_u64("echo-client", "--conns", optarg, 1, 100000, &conns); break;
        case 's': bad = pier_cli_u64("echo-client", "--size", optarg, 1, 16u << 20, &size); break;
        case 'T': bad = pier_cli_u64("echo-client", "--seconds", optarg, 1, 3600, &seconds); break;
        case 't': bad = pier_cli_u64("echo-client", "--threads", optarg, 1, 256, &threads); break;
        case 'o': bad = pier_cli_u64("echo-client", "--timeout", optarg, 1, 3600, &timeout); break;
        case 'H': fputs(client_help, stdout); return 0;
        case 'S': tls = 1; break;
        case 'A': cafile = optarg; break;
        case 'I': insecure = 1; break;
        case 'N': servername = optarg; break;
        default:
            return pier_cli_usage_error("echo-client", "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
        if (bad)
            return 2;
    }
    if (optind < argc)
        return pier_cli_usage_error("echo-client", "unexpected argument '%s'", argv[optind]);
    if (port == 0)
        return pier_cli_usage_error("echo-client", "--port must not be 0");
    if (servername && !tls)
        return pier_cli_usage_error("echo-client", "--servername needs --tls");
    load_t cfg = {.host = host, .port = port, .size = (size_t)size, .seconds = seconds, .servername = servername};
    int code = pier_cli_tls_client("echo-client", tls, cafile, insecure, &cfg.tls);
    if (code)
        return code;
    if (conns == 0 && cfg.tls) {
        code = interactive_tls(host, port, (int)timeout * 1000, cfg.tls, servername);
    } else if (conns == 0) {
        code = interactive(host, port, (int)timeout * 1000);
    } else {
        pier_log_set_level(PIER_LOG_WARN);
        code = load(&cfg, (unsigned)conns, (unsigned)threads, timeout * 1000);
    }
    pier_tls_ctx_free(cfg.tls);
    return code;
}
