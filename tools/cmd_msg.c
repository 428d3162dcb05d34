/* `pier msg` and `pier msg-client`: the message server with its JSON id-1001 service, and
 * a client that is either line-oriented (stdin to server, replies to stdout) or a load
 * generator that checks every reply. JSON lives here, in the tool, never in the library. */
#include "cli.h"

#include <pier/msg.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Entry points for main.c and cmd_serve.c. cli.h is the core's, so they are declared
 * here, and main.c declares the two commands it dispatches to. */
int pier_cmd_msg(int argc, char **argv);
int pier_cmd_msg_client(int argc, char **argv);

#define PIER_MSG_DEFAULT_PORT 10089

/* The msg service (for serve): cfg is a pier_msg_cfg_t, or NULL for the defaults. */
typedef struct pier_msg_cfg_s {
    pier_msg_server_opts_t opts;
    const char *tls_cert, *tls_key; /* --tls-cert/--tls-key, made into opts.tls */
} pier_msg_cfg_t;
extern const pier_service_t pier_msg_service;

#define MSG_ID_JSON 1001
#define MSG_ID_ECHO 1002 /* body back as is: the framework's cost without JSON */
#define REPLY_PREFIX "server has received msg, "

/* ---- shared flag parsing ---- */

/* Seconds, fractions allowed ("0.5"), to milliseconds; must be > 0. */
static int parse_secs(const char *cmd, const char *flag, const char *s, uint64_t *ms) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !*s || !(v > 0) || v > 86400) {
        pier_cli_usage_error(cmd, "--%s wants seconds above 0 (fractions allowed), not '%s'", flag, s);
        return -1;
    }
    *ms = (uint64_t)(v * 1000 + 0.5);
    if (*ms == 0)
        *ms = 1;
    return 0;
}

/* ---- the server: JSON service for id 1001 ---- */

static _Atomic uint64_t bad_json, too_big;

/* --delay-us: every handler first sleeps this long, standing in for a blocking call (a
 * database, a file): what the worker pool is for. */
static unsigned handler_delay_us;

static void handler_delay(void) {
    if (handler_delay_us)
        usleep(handler_delay_us);
}

static void on_echo(const pier_msg_t *m, void *ud) {
    (void)ud;
    handler_delay();
    pier_msg_reply(m, MSG_ID_ECHO, m->body, m->len);
}

/* Answers {"id":1001,"data":D} with {"id":1001,"data":"server has received msg, " D}. */
static void on_json(const pier_msg_t *m, void *ud) {
    (void)ud;
    handler_delay();
    json_error_t jerr;
    json_t *in = json_loadb(m->body, m->len, 0, &jerr);
    json_t *data = in ? json_object_get(in, "data") : NULL;
    if (!json_is_string(data)) {
        if (atomic_fetch_add(&bad_json, 1) == 0)
            pier_log(PIER_LOG_WARN, "msg: id %u body is not {\"data\": string} JSON (%s); ignored, and "
                     "further ones only counted", m->id, in ? "no data string" : jerr.text);
        json_decref(in);
        return;
    }
    size_t dlen = json_string_length(data), plen = sizeof REPLY_PREFIX - 1;
    char stack[2048];
    char *text = plen + dlen <= sizeof stack ? stack : malloc(plen + dlen);
    if (!text) {
        json_decref(in);
        return;
    }
    memcpy(text, REPLY_PREFIX, plen);
    memcpy(text + plen, json_string_value(data), dlen);
    json_t *out = json_pack("{s:i,s:s%}", "id", MSG_ID_JSON, "data", text, plen + dlen);
    if (text != stack)
        free(text);
    json_decref(in);
    if (!out)
        return;
    char obuf[4096];
    size_t n = json_dumpb(out, obuf, sizeof obuf, JSON_COMPACT);
    char *body = obuf;
    if (n > sizeof obuf) {
        body = malloc(n);
        if (body)
            json_dumpb(out, body, n, JSON_COMPACT);
    }
    json_decref(out);
    if (!body)
        return;
    int err = pier_msg_reply(m, MSG_ID_JSON, body, n);
    if (err == -EMSGSIZE && atomic_fetch_add(&too_big, 1) == 0)
        pier_log(PIER_LOG_WARN, "msg: a reply of %zu bytes is over --max-body and was not sent (further ones "
                 "only counted)", n);
    if (body != obuf)
        free(body);
}

static const char msg_usage[] =
    "usage: pier msg [--host 127.0.0.1] [--port 10089] [--workers N] [--heartbeat S]\n"
    "                [--max-body BYTES] [--threads N] [--out-max BYTES] [--out-policy close|drop]\n"
    "                [--wide] [--quiet | --verbose] [--tls-cert FILE --tls-key FILE]\n"
    "\n"
    "Message server. Frames are [id u16 BE][length u16 BE][body] (--wide: u32 length).\n"
    "Id 1001 carries JSON {\"id\":1001,\"data\":\"...\"} and is answered on id 1001 with\n"
    "data = \"server has received msg, \" + data. Id 1002 is echoed back as it is.\n"
    "Ping (id 1) is answered with pong (id 2).\n"
    "A bad frame (length over the maximum, id 0) closes only its own connection.\n"
    "\n"
    "  --host H          address to listen on (default 127.0.0.1)\n"
    "  --port P          port (default 10089; 0: any free port, logged)\n"
    "  --workers N       run handlers on N worker threads (default 0: on the loops)\n"
    "  --heartbeat S     close connections silent for 3*S seconds (default: never)\n"
    "  --max-body BYTES  largest frame body accepted (default 2048)\n"
    "  --threads N       event loops, one thread each (default 1; 0: one per CPU)\n"
    "  --out-max BYTES   queued output allowed per connection (default 1048576)\n"
    "  --out-policy P    over --out-max: close the connection (default) or drop replies\n"
    "  --wide            u32 length field (6-byte header)\n"
    "  --delay-us N      each handler sleeps N microseconds first (a stand-in for a\n"
    "                    blocking call, to see what --workers buys)\n"
    "  --quiet           log warnings and errors only\n"
    "  --verbose         log every connection event\n"
    "  --tls-cert FILE   certificate chain (PEM, leaf first): the port speaks only TLS\n"
    "  --tls-key FILE    its private key (PEM)\n"
    "\n"
    "SIGINT/SIGTERM: stop accepting, finish queued messages, flush replies, exit 0.\n";

static int msg_parse(int argc, char **argv, pier_msg_cfg_t *cfg, uint64_t *threads) {
    static const struct option longs[] = {
        {"host", required_argument, 0, 'h'},      {"port", required_argument, 0, 'p'},
        {"workers", required_argument, 0, 'w'},   {"heartbeat", required_argument, 0, 'b'},
        {"max-body", required_argument, 0, 'm'},  {"threads", required_argument, 0, 't'},
        {"out-max", required_argument, 0, 'o'},   {"out-policy", required_argument, 0, 'P'},
        {"wide", no_argument, 0, 'W'},            {"verbose", no_argument, 0, 'v'},
        {"quiet", no_argument, 0, 'q'},           {"help", no_argument, 0, 'H'},
        {"delay-us", required_argument, 0, 'D'},  {"tls-cert", required_argument, 0, 'C'},
        {"tls-key", required_argument, 0, 'K'},   {0, 0, 0, 0},
    };
    pier_msg_server_opts_t *so = &cfg->opts;
    uint64_t v;
    int ch;
    optind = 0;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "+", longs, NULL)) != -1) {
        switch (ch) {
        case 'h': so->host = optarg; break;
        case 'p': if (pier_cli_port("msg", optarg, &so->port) < 0) return 2; break;
        case 'w':
            if (pier_cli_u64("msg", "--workers", optarg, 0, 256, &v) < 0) return 2;
            so->workers = (unsigned)v;
            break;
        case 'b': if (parse_secs("msg", "heartbeat", optarg, &so->heartbeat_ms)) return 2; break;
        case 'm':
            if (pier_cli_u64("msg", "--max-body", optarg, 1, UINT32_MAX, &v) < 0) return 2;
            so->codec.max_body = (uint32_t)v;
            break;
        case 't': if (pier_cli_u64("msg", "--threads", optarg, 0, 256, threads) < 0) return 2; break;
        case 'o':
            if (pier_cli_u64("msg", "--out-max", optarg, 1, SIZE_MAX, &v) < 0) return 2;
            so->out_max = v;
            break;
        case 'P':
            if (strcmp(optarg, "close") == 0)
                so->out_policy = PIER_MSG_OUT_CLOSE;
            else if (strcmp(optarg, "drop") == 0)
                so->out_policy = PIER_MSG_OUT_DROP;
            else
                return pier_cli_usage_error("msg", "--out-policy wants close or drop, not '%s'", optarg);
            break;
        case 'W': so->codec.wide = 1; break;
        case 'C': cfg->tls_cert = optarg; break;
        case 'K': cfg->tls_key = optarg; break;
        case 'D':
            if (pier_cli_u64("msg", "--delay-us", optarg, 0, 1000000, &v) < 0) return 2;
            handler_delay_us = (unsigned)v;
            break;
        case 'v': pier_log_set_level(PIER_LOG_DEBUG); break;
        case 'q': pier_log_set_level(PIER_LOG_WARN); break;
        case 'H': fputs(msg_usage, stdout); return 1;
        default: return pier_cli_usage_error("msg", "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return pier_cli_usage_error("msg", "unexpected argument '%s'", argv[optind]);
    if (!so->codec.wide && so->codec.max_body > 65535)
        return pier_cli_usage_error("msg", "--max-body over 65535 needs --wide");
    return 0;
}

/* ---- the msg service, for `pier msg` and `pier serve` ---- */

typedef struct {
    pier_group_t *group;
    pier_msg_server_t *srv;
} msg_state_t;

static int msg_start(pier_group_t *g, void *cfgp, void **state) {
    pier_msg_cfg_t defaults = {.opts = {.host = "127.0.0.1", .port = PIER_MSG_DEFAULT_PORT}};
    const pier_msg_cfg_t *cfg = cfgp ? cfgp : &defaults;
    const pier_msg_server_opts_t *so = &cfg->opts;
    msg_state_t *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    json_object_seed(0); /* before any worker thread parses JSON */
    int err = pier_msg_server_new(&st->srv, g, so);
    if (err == 0 && ((err = pier_msg_on(st->srv, MSG_ID_JSON, on_json, NULL)) < 0 ||
                     (err = pier_msg_on(st->srv, MSG_ID_ECHO, on_echo, NULL)) < 0))
        pier_msg_server_free(st->srv);
    if (err < 0) {
        if (err == -EADDRINUSE)
            fprintf(stderr, "pier msg: port %u on %s is already in use\n", so->port, so->host);
        else
            fprintf(stderr, "pier msg: cannot listen on %s:%u: %s\n", so->host, so->port, pier_strerror(err));
        free(st);
        return err;
    }
    st->group = g;
    pier_msg_server_start(st->srv);
    pier_log(PIER_LOG_INFO, "msg: listening on %s:%u (%u loops, %u workers, heartbeat %.3g s, max body %u)",
             so->host, pier_msg_server_port(st->srv), pier_group_size(g), so->workers,
             (double)so->heartbeat_ms / 1000.0, so->codec.max_body ? so->codec.max_body : PIER_MSG_MAX_BODY);
    *state = st;
    return 0;
}

static void msg_drain(void *state) {
    pier_msg_server_drain(((msg_state_t *)state)->srv);
}

static unsigned msg_active(void *state) {
    return pier_msg_server_active(((msg_state_t *)state)->srv);
}

static int msg_freed(void *state) {
    msg_state_t *st = state;
    if (st->srv && pier_msg_server_free(st->srv) == 0)
        st->srv = NULL;
    return st->srv == NULL;
}

static void msg_finish(void *state) {
    msg_state_t *st = state;
    pier_msg_stats_t s;
    pier_msg_server_stats(st->srv, &s);
    pier_log(PIER_LOG_INFO,
             "msg: %" PRIu64 " connections, %" PRIu64 " messages, %" PRIu64 " handled, %" PRIu64 " unknown ids, %" PRIu64
             " bad frames, %" PRIu64 " heartbeat timeouts, %" PRIu64 " replies dropped, %" PRIu64
             " closed over output limit, %" PRIu64 " replies to gone connections, %" PRIu64 " bad JSON, %" PRIu64
             " replies over --max-body",
             s.conns, s.msgs, s.handled, s.unknown, s.bad_frames, s.timeouts, s.out_dropped, s.out_closed,
             s.replies_lost, (uint64_t)atomic_load(&bad_json), (uint64_t)atomic_load(&too_big));
    pier_server_stop(pier_msg_server_net(st->srv));
    pier_server_abort_all(pier_msg_server_net(st->srv));
    if (!pier_cli_settle(st->group, msg_freed, st, 5000))
        pier_log(PIER_LOG_ERROR, "msg: server could not be freed");
    free(st);
}

const pier_service_t pier_msg_service = {
    .name = "msg", .start = msg_start, .drain = msg_drain, .active = msg_active, .finish = msg_finish,
};

int pier_cmd_msg(int argc, char **argv) {
    pier_msg_cfg_t cfg = {.opts = {.host = "127.0.0.1", .port = PIER_MSG_DEFAULT_PORT}};
    uint64_t threads = 1;
    int r = msg_parse(argc, argv, &cfg, &threads);
    if (r)
        return r == 1 ? 0 : r;
    r = pier_cli_tls_server("msg", cfg.tls_cert, cfg.tls_key, NULL, NULL, &cfg.opts.tls);
    if (r)
        return r;
    pier_service_run_t run = {.svc = &pier_msg_service, .cfg = &cfg};
    r = pier_cli_run((unsigned)threads, &run, 1, 20000);
    pier_tls_ctx_free(cfg.opts.tls);
    return r;
}

/* ---- the client ---- */

static const char client_usage[] =
    "usage: pier msg-client [--host H] [--port 10089] [--heartbeat S]\n"
    "                       [--conns C --count N [--size B] [--window W] [--rate R]]\n"
    "                       [--timeout S] [--max-body BYTES] [--wide]\n"
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
        {"raw", no_argument, 0, 'R'},            {0, 0, 0, 0},
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
        case 'b': if (parse_secs(cmd, "heartbeat", optarg, &a->heartbeat_ms)) return 2; break;
        case 'c': if (pier_cli_u64(cmd, "--conns", optarg, 1, 100000, &a->conns) < 0) return 2; break;
        case 'n': if (pier_cli_u64(cmd, "--count", optarg, 1, 1ull << 40, &a->count) < 0) return 2; break;
        case 's': if (pier_cli_u64(cmd, "--size", optarg, 0, 60000, &a->size) < 0) return 2; break;
        case 'w': if (pier_cli_u64(cmd, "--window", optarg, 1, 1u << 20, &a->window) < 0) return 2; break;
        case 'r': if (pier_cli_u64(cmd, "--rate", optarg, 0, 1ull << 32, &a->rate) < 0) return 2; break;
        case 't': if (parse_secs(cmd, "timeout", optarg, &a->timeout_ms)) return 2; break;
        case 'B': if (parse_secs(cmd, "backoff-max", optarg, &a->backoff_max_ms)) return 2; break;
        case 'm':
            if (pier_cli_u64(cmd, "--max-body", optarg, 1, UINT32_MAX, &v) < 0) return 2;
            a->codec.max_body = (uint32_t)v;
            break;
        case 'W': a->codec.wide = 1; break;
        case 'R': a->raw = 1; break;
        case 'q': pier_log_set_level(PIER_LOG_WARN); break;
        case 'H': fputs(client_usage, stdout); return 1;
        default: return pier_cli_usage_error(cmd, "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return pier_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
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

static void client_on_connect_error(pier_msg_client_t *mc, int err, int will_retry) {
    (void)mc;
    pier_log(will_retry ? PIER_LOG_DEBUG : PIER_LOG_ERROR, "msg-client: connect failed: %s%s", pier_strerror(err),
             will_retry ? ", retrying" : "");
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
    return L.errors || acked != want ? 1 : 0;
}

static int run_lines(client_args_t *a, pier_loop_t *loop, pier_msg_client_opts_t *co) {
    lc_t lc = {.loop = loop};
    sem_init(&lc.slots, 0, LINES_MAX);
    co->on_msg = lc_on_msg;
    co->on_up = lc_on_up;
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
    if (lc.eof)
        pthread_join(th, NULL);
    else
        exit(failed ? 1 : 0); /* the reader still blocks on stdin; the loop must outlive it */
    return failed;
}

int pier_cmd_msg_client(int argc, char **argv) {
    client_args_t a;
    int r = client_parse(argc, argv, &a);
    if (r)
        return r == 1 ? 0 : 2;
    pier_loop_t *loop;
    int err = pier_loop_new(&loop);
    if (err) {
        fprintf(stderr, "pier msg-client: cannot start a loop: %s\n", pier_strerror(err));
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
        .on_down = client_on_down,
        .on_connect_error = client_on_connect_error,
    };
    r = a.count ? run_load(&a, loop, &co) : run_lines(&a, loop, &co);
    pier_loop_signal_stop(loop, SIGINT);
    pier_loop_signal_stop(loop, SIGTERM);
    if (pier_loop_free(loop) < 0)
        pier_log(PIER_LOG_DEBUG, "msg-client: loop still busy at exit");
    return r;
}
