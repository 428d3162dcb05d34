/* `pier msg-client`: a client that is either line-oriented (stdin to server, replies to
 * stdout) or a load generator that checks every reply. */
#include "cmd_msg.h"

#include <pier/msg.h>

#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char client_usage[] =
    "usage: pier msg-client [--host H] [--port 10089] [--heartbeat S]\n"
    "                       [--conns C --count N [--size B] [--window W] [--rate R]]\n"
    "                       [--timeout S] [--max-body BYTES] [--wide]\n"
    "                       [--tls [--cafile F] [--servername N] [--insecure]]\n"
    "\n"
    "Without --count: sends each line of stdin as an id-1001 JSON message and prints the\n"
    "data of each reply, one per line; exits 0 once stdin ends and every line is answered.\n"
    "With --count: a load generator. C connections each send N messages (at most W\n"
    "unanswered at a time), check every reply's content and order, and report msgs/s.\n"
    "Either way it reconnects with backoff when the server goes away, resends what was\n"
    "not answered, and carries on.\n"
    "\n"
    "  --host H        server address (default 127.0.0.1)\n"
    "  --port P        server port (default 10089)\n"
    "  --heartbeat S   ping after S idle seconds; reconnect after 3*S without a word\n"
    "  --conns C       connections for the load generator (default 1)\n"
    "  --count N       messages per connection (turns on the load generator)\n"
    "  --size B        bytes of data per message (default: just a sequence tag)\n"
    "  --window W      unanswered messages per connection (default 64)\n"
    "  --rate R        at most R messages per second in all (default: as fast as possible)\n"
    "  --timeout S     give up and exit 1 after S seconds (default: never)\n"
    "  --backoff-max S longest wait between reconnects (default 1)\n"
    "  --max-body B    largest frame body (default 2048)\n"
    "  --wide          u32 length field (6-byte header)\n"
    "  --raw           load generator: id-1002 echo, no JSON (the framework's own cost)\n"
    "  --quiet         log warnings and errors only\n"
    "  --tls           speak TLS; the server's certificate is checked against the system's\n"
    "                  CA store and the host name (a refused certificate exits 1 at once)\n"
    "  --cafile F      trust the CA certificates of PEM file F instead\n"
    "  --servername N  the name to check the certificate against and send as SNI\n"
    "                  (default: --host)\n"
    "  --insecure      accept any certificate (tests only)\n"
    "\n"
    "Exit: 0 all answered and correct; 1 wrong replies, timeout or a failure; 2 bad flags.\n";

typedef struct {
    const char *host;
    uint16_t port;
    uint64_t heartbeat_ms;
    uint64_t conns, count, size, window, rate;
    uint64_t timeout_ms;
    uint64_t backoff_max_ms;
    pier_msg_codec_t codec;
    int raw;
    int tls, insecure;
    const char *cafile, *servername;
} client_args_t;

static int client_parse(int argc, char **argv, client_args_t *a) {
    static const struct option longs[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"heartbeat", required_argument, 0, 'b'}, {"conns", required_argument, 0, 'c'},
        {"count", required_argument, 0, 'n'},    {"size", required_argument, 0, 's'},
        {"window", required_argument, 0, 'w'},   {"rate", required_argument, 0, 'r'},
        {"timeout", required_argument, 0, 't'},  {"backoff-max", required_argument, 0, 'B'},
        {"max-body", required_argument, 0, 'm'}, {"wide", no_argument, 0, 'W'},
        {"quiet", no_argument, 0, 'q'},          {"help", no_argument, 0, 'H'},
        {"raw", no_argument, 0, 'R'},            {"tls", no_argument, 0, 'S'},
        {"cafile", required_argument, 0, 'A'},   {"servername", required_argument, 0, 'N'},
        {"insecure", no_argument, 0, 'I'},       {0, 0, 0, 0},
    };
    *a = (client_args_t){.host = "127.0.0.1", .port = PIER_MSG_DEFAULT_PORT, .conns = 1, .window = 64,
                         .backoff_max_ms = 1000};
    const char *cmd = "msg-client";
    uint64_t v;
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "+", longs, NULL)) != -1) {
        switch (ch) {
        case 'h': a->host = optarg; break;
        case 'p':
            if (pier_cli_u64(cmd, "--port", optarg, 1, 65535, &v) < 0) return 2;
            a->port = (uint16_t)v;
            break;
        case 'b': if (msg_parse_secs(cmd, "heartbeat", optarg, &a->heartbeat_ms)) return 2; break;
        case 'c': if (pier_cli_u64(cmd, "--conns", optarg, 1, 100000, &a->conns) < 0) return 2; break;
        case 'n': if (pier_cli_u64(cmd, "--count", optarg, 1, 1ull << 40, &a->count) < 0) return 2; break;
        case 's': if (pier_cli_u64(cmd, "--size", optarg, 0, 60000, &a->size) < 0) return 2; break;
        case 'w': if (pier_cli_u64(cmd, "--window", optarg, 1, 1u << 20, &a->window) < 0) return 2; break;
        case 'r': if (pier_cli_u64(cmd, "--rate", optarg, 0, 1ull << 32, &a->rate) < 0) return 2; break;
        case 't': if (msg_parse_secs(cmd, "timeout", optarg, &a->timeout_ms)) return 2; break;
        case 'B': if (msg_parse_secs(cmd, "backoff-max", optarg, &a->backoff_max_ms)) return 2; break;
        case 'm':
            if (pier_cli_u64(cmd, "--max-body", optarg, 1, UINT32_MAX, &v) < 0) return 2;
            a->codec.max_body = (uint32_t)v;
            break;
        case 'W': a->codec.wide = 1; break;
        case 'R': a->raw = 1; break;
        case 'S': a->tls = 1; break;
        case 'A': a->cafile = optarg; break;
        case 'N': a->servername = optarg; break;
        case 'I': a->insecure = 1; break;
        case 'q': pier_log_set_level(PIER_LOG_WARN); break;
        case 'H': fputs(client_usage, stdout); return 1;
        default: return pier_cli_usage_error(cmd, "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return pier_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (a->servername && !a->tls)
        return pier_cli_usage_error(cmd, "--servername needs --tls");
    pier_msg_codec_t chk;
    if (pier_msg_codec_check(&a->codec, &chk))
        return pier_cli_usage_error(cmd, "--max-body over 65535 needs --wide");
    return 0;
}

/* The JSON request for one piece of data. Returns a malloc'd body. */
static char *make_request(const char *data, size_t dlen, size_t *len) {
    json_t *o = json_pack("{s:i,s:s%}", "id", MSG_ID_JSON, "data", data, dlen);
    if (!o)
        return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s)
        *len = strlen(s);
    return s;
}

/* The data of a reply, checked to be the JSON the server promises. NULL if it is not. */
static json_t *parse_reply(const char *body, size_t len, const char **data, size_t *dlen) {
    json_t *o = json_loadb(body, len, 0, NULL);
    json_t *id = o ? json_object_get(o, "id") : NULL;
    json_t *d = o ? json_object_get(o, "data") : NULL;
    if (!json_is_integer(id) || json_integer_value(id) != MSG_ID_JSON || !json_is_string(d)) {
        json_decref(o);
        return NULL;
    }
    *data = json_string_value(d);
    *dlen = json_string_length(d);
    return o;
}

static uint64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---- the line client ---- */

#define LINES_MAX 4096 /* lines read ahead of the answers; stdin waits beyond that */

typedef struct line_s {
    struct line_s *next;
    size_t len;
    char *req; /* the JSON request */
} line_t;

typedef struct {
    pier_loop_t *loop;
    pier_msg_client_t *mc;
    line_t *head, *tail, *unsent; /* unanswered lines, oldest first; unsent points into them */
    sem_t slots;
    int eof;
    int failed;
    int stopping;
} lc_t;

typedef struct {
    lc_t *lc;
    line_t *line; /* NULL: end of stdin */
} line_task_t;

static void lc_send(lc_t *lc) {
    while (lc->unsent && pier_msg_client_up(lc->mc)) {
        if (pier_msg_client_send(lc->mc, MSG_ID_JSON, lc->unsent->req, lc->unsent->len) < 0)
            break;
        lc->unsent = lc->unsent->next;
    }
}

static void lc_finish(lc_t *lc) {
    if (lc->stopping)
        return;
    lc->stopping = 1;
    pier_msg_client_stop(lc->mc);
    pier_loop_stop(lc->loop);
}

static void lc_line_task(void *arg) {
    line_task_t *t = arg;
    lc_t *lc = t->lc;
    line_t *l = t->line;
    free(t);
    if (!l) {
        lc->eof = 1;
        if (!lc->head)
            lc_finish(lc);
        return;
    }
    if (lc->tail)
        lc->tail->next = l;
    else
        lc->head = l;
    lc->tail = l;
    if (!lc->unsent)
        lc->unsent = l;
    lc_send(lc);
}

static void *stdin_main(void *arg) {
    lc_t *lc = arg;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&buf, &cap, stdin)) >= 0) {
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
            n--;
        line_t *l = calloc(1, sizeof *l);
        if (!l || !(l->req = make_request(buf, (size_t)n, &l->len))) {
            free(l);
            continue;
        }
        line_task_t *t = malloc(sizeof *t);
        if (!t)
            break;
        *t = (line_task_t){lc, l};
        sem_wait(&lc->slots);
        if (pier_loop_post(lc->loop, lc_line_task, t) < 0)
            break;
    }
    free(buf);
    line_task_t *t = malloc(sizeof *t);
    if (t) {
        *t = (line_task_t){lc, NULL};
        if (pier_loop_post(lc->loop, lc_line_task, t) < 0)
            free(t);
    }
    return NULL;
}

static void lc_on_msg(pier_msg_client_t *mc, uint16_t id, const char *body, size_t len) {
    lc_t *lc = pier_msg_client_data(mc);
    if (id != MSG_ID_JSON)
        return;
    const char *data;
    size_t dlen;
    json_t *o = parse_reply(body, len, &data, &dlen);
    if (!o) {
        fprintf(stderr, "pier msg-client: reply is not the expected JSON: %.*s\n", (int)len, body);
        lc->failed = 1;
        return;
    }
    fwrite(data, 1, dlen, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    json_decref(o);
    line_t *l = lc->head;
    if (!l || l == lc->unsent)
        return; /* an answer to a line resent twice; it is the oldest anyway */
    lc->head = l->next;
    if (!lc->head)
        lc->tail = NULL;
    free(l->req);
    free(l);
    sem_post(&lc->slots);
    if (lc->eof && !lc->head)
        lc_finish(lc);
}

static void lc_on_up(pier_msg_client_t *mc) {
    lc_t *lc = pier_msg_client_data(mc);
    lc->unsent = lc->head; /* whatever the last connection did not answer goes again */
    lc_send(lc);
}

static void client_on_down(pier_msg_client_t *mc, int err) {
    (void)mc;
    if (err)
        pier_log(PIER_LOG_INFO, "msg-client: connection lost (%s), reconnecting", pier_strerror(err));
}

/* 1 when the failed connect is one that retrying cannot mend: the server's certificate
 * was refused (the reason is in the TLS log line before). */
static int connect_failed(int err, int will_retry) {
    if (err == PIER_ETLS_REJECTED) {
        fprintf(stderr, "pier msg-client: cannot connect: %s\n", pier_strerror(err));
        return 1;
    }
    pier_log(will_retry ? PIER_LOG_DEBUG : PIER_LOG_ERROR, "msg-client: connect failed: %s%s", pier_strerror(err),
             will_retry ? ", retrying" : "");
    return !will_retry;
}

static void lc_on_connect_error(pier_msg_client_t *mc, int err, int will_retry) {
    lc_t *lc = pier_msg_client_data(mc);
    if (connect_failed(err, will_retry)) {
        lc->failed = 1;
        lc_finish(lc);
    }
}

/* ---- the load generator ---- */

typedef struct load_s load_t;

typedef struct {
    load_t *L;
    unsigned idx;
    pier_msg_client_t *mc;
    uint64_t sent, acked;
} lconn_t;

struct load_s {
    client_args_t *a;
    pier_loop_t *loop;
    lconn_t *c;
    uint64_t done_conns;
    uint64_t errors;
    uint64_t budget; /* --rate: messages allowed now */
    pier_timer_t tick;
    pier_timer_t deadline;
    uint64_t t0, t1;
    int finished;
    int timed_out;
    int refused; /* the server's certificate was refused: no retry */
};

/* The data of message seq on connection idx: a tag, padded to --size. */
static size_t load_data(const load_t *L, unsigned idx, uint64_t seq, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "c%u-%" PRIu64 "-", idx, seq);
    size_t len = (size_t)n < cap ? (size_t)n : cap - 1;
    while (len < L->a->size && len < cap) {
        buf[len] = (char)('a' + (seq + len) % 26);
        len++;
    }
    return len;
}

static void load_send(lconn_t *lc) {
    load_t *L = lc->L;
    char data[1 << 16];
    while (lc->sent < L->a->count && lc->sent - lc->acked < L->a->window && pier_msg_client_up(lc->mc)) {
        if (L->a->rate) {
            if (!L->budget)
                return;
            L->budget--;
        }
        size_t dlen = load_data(L, lc->idx, lc->sent, data, sizeof data), rlen;
        int err;
        if (L->a->raw) {
            err = pier_msg_client_send(lc->mc, MSG_ID_ECHO, data, dlen);
        } else {
            char *req = make_request(data, dlen, &rlen);
            err = req ? pier_msg_client_send(lc->mc, MSG_ID_JSON, req, rlen) : -ENOMEM;
            free(req);
        }
        if (err < 0)
            return;
        lc->sent++;
    }
}

static void load_finish(load_t *L) {
    if (L->finished)
        return;
    L->finished = 1;
    L->t1 = mono_us();
    pier_timer_stop(&L->tick);
    pier_timer_stop(&L->deadline);
    for (unsigned i = 0; i < L->a->conns; i++)
        pier_msg_client_stop(L->c[i].mc);
    pier_loop_stop(L->loop);
}

static void load_on_msg(pier_msg_client_t *mc, uint16_t id, const char *body, size_t len) {
    lconn_t *lc = pier_msg_client_data(mc);
    load_t *L = lc->L;
    if (id != (L->a->raw ? MSG_ID_ECHO : MSG_ID_JSON) || lc->acked >= lc->sent)
        return;
    char want[1 << 16];
    size_t plen = L->a->raw ? 0 : sizeof REPLY_PREFIX - 1;
    memcpy(want, REPLY_PREFIX, plen);
    size_t wlen = plen + load_data(L, lc->idx, lc->acked, want + plen, sizeof want - plen);
    const char *data = body;
    size_t dlen = len;
    json_t *o = L->a->raw ? NULL : parse_reply(body, len, &data, &dlen);
    if ((!L->a->raw && !o) || dlen != wlen || memcmp(data, want, wlen) != 0) {
        if (L->errors++ < 5)
            fprintf(stderr, "pier msg-client: conn %u message %" PRIu64 ": wrong reply: %.*s\n", lc->idx, lc->acked,
                    (int)(len < 200 ? len : 200), body);
    }
    json_decref(o);
    lc->acked++;
    if (lc->acked == L->a->count) {
        if (++L->done_conns == L->a->conns)
            load_finish(L);
        return;
    }
    load_send(lc);
}

static void load_on_up(pier_msg_client_t *mc) {
    lconn_t *lc = pier_msg_client_data(mc);
    lc->sent = lc->acked; /* resend what the last connection did not answer */
    load_send(lc);
}

static void load_on_connect_error(pier_msg_client_t *mc, int err, int will_retry) {
    lconn_t *lc = pier_msg_client_data(mc);
    if (connect_failed(err, will_retry)) {
        lc->L->refused = 1;
        load_finish(lc->L);
    }
}

static void load_tick(pier_timer_t *t) {
    load_t *L = t->data;
    /* refill 10 ms worth, with no more than 100 ms of backlog */
    uint64_t add = L->a->rate / 100 ? L->a->rate / 100 : 1;
    L->budget = L->budget + add > L->a->rate / 10 + 1 ? L->a->rate / 10 + 1 : L->budget + add;
    for (unsigned i = 0; i < L->a->conns && L->budget; i++)
        load_send(&L->c[i]);
}

static void on_deadline(pier_timer_t *t) {
    load_t *L = t->data;
    L->timed_out = 1;
    load_finish(L);
}

static void lc_on_deadline(pier_timer_t *t) {
    lc_t *lc = t->data;
    lc->failed = 1;
    fprintf(stderr, "pier msg-client: timed out with lines unanswered\n");
    lc_finish(lc);
}

static void on_client_signal(pier_loop_t *loop, int signo, void *arg) {
    (void)signo;
    (void)arg;
    pier_loop_stop(loop);
}

/* Runs the loop until stopped, then lets the closes finish and frees what is free-able. */
static int settle(pier_loop_t *loop, pier_msg_client_t **mcs, unsigned n) {
    unsigned left = n;
    for (int i = 0; i < 300 && left; i++) {
        pier_loop_run_once(loop, 10);
        left = 0;
        for (unsigned k = 0; k < n; k++) {
            if (mcs[k] && pier_msg_client_free(mcs[k]) == 0)
                mcs[k] = NULL;
            left += mcs[k] != NULL;
        }
    }
    return left ? -EBUSY : 0;
}

static int run_load(client_args_t *a, pier_loop_t *loop, pier_msg_client_opts_t *co) {
    load_t L = {.a = a, .loop = loop};
    L.c = calloc(a->conns, sizeof *L.c);
    pier_msg_client_t **mcs = calloc(a->conns, sizeof *mcs);
    if (!L.c || !mcs)
        return 1;
    co->on_msg = load_on_msg;
    co->on_up = load_on_up;
    co->on_connect_error = load_on_connect_error;
    pier_timer_init(loop, &L.tick, load_tick, &L);
    pier_timer_init(loop, &L.deadline, on_deadline, &L);
    if (a->rate)
        pier_timer_start(&L.tick, 10, 10);
    if (a->timeout_ms)
        pier_timer_start(&L.deadline, a->timeout_ms, 0);
    L.t0 = mono_us();
    int err = 0;
    for (unsigned i = 0; i < a->conns && !err; i++) {
        L.c[i] = (lconn_t){.L = &L, .idx = i};
        co->data = &L.c[i];
        err = pier_msg_client_new(&L.c[i].mc, loop, co);
        mcs[i] = L.c[i].mc;
    }
    if (err) {
        fprintf(stderr, "pier msg-client: cannot start: %s\n", pier_strerror(err));
        L.errors++;
    } else {
        pier_loop_run(loop);
    }
    if (!L.finished)
        load_finish(&L);
    uint64_t acked = 0, reconnects = 0;
    for (unsigned i = 0; i < a->conns; i++) {
        acked += L.c[i].acked;
        if (L.c[i].mc) {
            unsigned k = pier_msg_client_connects(L.c[i].mc);
            reconnects += k > 1 ? k - 1 : 0;
        }
    }
    double secs = (double)(L.t1 - L.t0) / 1e6;
    uint64_t want = (uint64_t)a->conns * a->count;
    printf("msg-client: %" PRIu64 " conns x %" PRIu64 " msgs: %" PRIu64 " of %" PRIu64 " replies in %.3f s = %.0f msgs/s, "
           "%" PRIu64 " wrong, %" PRIu64 " reconnects%s\n",
           a->conns, a->count, acked, want, secs, secs > 0 ? (double)acked / secs : 0.0, L.errors, reconnects,
           L.timed_out ? ", TIMED OUT" : "");
    fflush(stdout);
    settle(loop, mcs, a->conns);
    free(mcs);
    free(L.c);
    return L.errors || L.refused || acked != want ? 1 : 0;
}

static void lines_free(line_t *l) {
    while (l) {
        line_t *next = l->next;
        free(l->req);
        free(l);
        l = next;
    }
}

static int run_lines(client_args_t *a, pier_loop_t *loop, pier_msg_client_opts_t *co) {
    lc_t lc = {.loop = loop};
    sem_init(&lc.slots, 0, LINES_MAX);
    co->on_msg = lc_on_msg;
    co->on_up = lc_on_up;
    co->on_connect_error = lc_on_connect_error;
    co->data = &lc;
    pier_timer_t deadline;
    pier_timer_init(loop, &deadline, lc_on_deadline, &lc);
    int err = pier_msg_client_new(&lc.mc, loop, co);
    if (err) {
        fprintf(stderr, "pier msg-client: cannot start: %s\n", pier_strerror(err));
        return 1;
    }
    if (a->timeout_ms)
        pier_timer_start(&deadline, a->timeout_ms, 0);
    pthread_t th;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = -pthread_create(&th, NULL, stdin_main, &lc);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        fprintf(stderr, "pier msg-client: cannot start the stdin reader: %s\n", pier_strerror(err));
        return 1;
    }
    pier_loop_run(loop);
    pier_timer_stop(&deadline);
    int failed = lc.failed || !lc.eof || lc.head;
    lc_finish(&lc);
    pier_msg_client_t *mcs[1] = {lc.mc};
    settle(loop, mcs, 1);
    if (lc.eof) {
        pthread_join(th, NULL);
        lines_free(lc.head); /* unanswered: a timeout or a refused certificate */
    }
    else
        exit(failed ? 1 : 0); /* the reader still blocks on stdin; the loop must outlive it */
    return failed;
}

int pier_cmd_msg_client(int argc, char **argv) {
    client_args_t a;
    int r = client_parse(argc, argv, &a);
    if (r)
        return r == 1 ? 0 : 2;
    pier_tls_ctx_t *tls = NULL;
    r = pier_cli_tls_client("msg-client", a.tls, a.cafile, a.insecure, &tls);
    if (r)
        return r;
    pier_loop_t *loop;
    int err = pier_loop_new(&loop);
    if (err) {
        fprintf(stderr, "pier msg-client: cannot start a loop: %s\n", pier_strerror(err));
        pier_tls_ctx_free(tls);
        return 1;
    }
    pier_loop_signal(loop, SIGINT, on_client_signal, NULL);
    pier_loop_signal(loop, SIGTERM, on_client_signal, NULL);
    pier_msg_client_opts_t co = {
        .host = a.host,
        .port = a.port,
        .codec = a.codec,
        .heartbeat_ms = a.heartbeat_ms,
        .backoff_max_ms = a.backoff_max_ms,
        .tls = tls,
        .tls_servername = a.servername,
        .on_down = client_on_down,
    };
    r = a.count ? run_load(&a, loop, &co) : run_lines(&a, loop, &co);
    pier_tls_ctx_free(tls); /* each client keeps its own reference */
    pier_loop_signal_stop(loop, SIGINT);
    pier_loop_signal_stop(loop, SIGTERM);
    if (pier_loop_free(loop) < 0)
        pier_log(PIER_LOG_DEBUG, "msg-client: loop still busy at exit");
    return r;
}
