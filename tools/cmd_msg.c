/* `pier msg`: the message server with its JSON id-1001 service (and the id-1002 echo),
 * and the service that `pier serve` runs. JSON lives here, in the tool, never in the
 * library. The client is cmd_msg_client.c. */
#include "cmd_msg.h"
#include "admin.h"

#include <pier/msg.h>

#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The msg service (for serve): cfg is a pier_msg_cfg_t, or NULL for the defaults. */
typedef struct pier_msg_cfg_s {
    pier_msg_server_opts_t opts;
    pier_cli_tls_t tls; /* --tls-cert/--tls-key, made into opts.tls */
} pier_msg_cfg_t;

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

static pier_admin_cfg_t msg_admin; /* --admin */

static const char msg_usage[] =
    "usage: pier msg [--host 127.0.0.1] [--port 10089] [--workers N] [--heartbeat S]\n"
    "                [--max-body BYTES] [--threads N] [--out-max BYTES] [--out-policy close|drop]\n"
    "                [--inflight N] [--inflight-total N] [--wide] [--quiet | --verbose]\n"
    "                [--tls-cert FILE --tls-key FILE]\n"
    "                [--proxy-protocol [--proxy-from CIDR,...] [--proxy-timeout S]]\n"
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
    "  --inflight N      with --workers: messages read and not yet handled, per\n"
    "                    connection (default 256); beyond it the connection is not read\n"
    "  --inflight-total N\n"
    "                    the same in all (default 256 per worker): how far the server\n"
    "                    reads ahead of its workers, and so how much a stop has to finish\n"
    "  --wide            u32 length field (6-byte header)\n"
    "  --delay-us N      each handler sleeps N microseconds first (a stand-in for a\n"
    "                    blocking call, to see what --workers buys)\n"
    "  --quiet           log warnings and errors only\n"
    "  --admin HOST:PORT /metrics, /healthz and /status on a port of their own (off: none)\n"
    "  --verbose         log every connection event\n"
    "  --tls-cert FILE   certificate chain (PEM, leaf first): the port speaks only TLS\n"
    "  --tls-key FILE    its private key (PEM); SIGHUP reads both files again\n"
    "                    repeat both for more pairs: each client gets the first whose\n"
    "                    certificate names the host it asks for (SNI), else the first\n"
    "                    SIGUSR1 replaces the session ticket key now (it is anyway hourly)\n"
    PIER_CLI_PROXY_HELP
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
        {"delay-us", required_argument, 0, 'D'},  {"inflight", required_argument, 0, 'i'},
        {"inflight-total", required_argument, 0, 'I'}, {"tls-cert", required_argument, 0, 'C'},
        {"tls-key", required_argument, 0, 'K'},   PIER_CLI_PROXY_LONGOPTS,
        {"admin", required_argument, 0, 'A'},
        {0, 0, 0, 0},
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
        case 'b': if (msg_parse_secs("msg", "heartbeat", optarg, &so->heartbeat_ms)) return 2; break;
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
        case 'i':
            if (pier_cli_u64("msg", "--inflight", optarg, 1, 1u << 20, &v) < 0) return 2;
            so->inflight_max = (unsigned)v;
            break;
        case 'I':
            if (pier_cli_u64("msg", "--inflight-total", optarg, 1, 1u << 24, &v) < 0) return 2;
            so->inflight_total = (unsigned)v;
            break;
        case 'W': so->codec.wide = 1; break;
        case 'A': if (pier_admin_parse("msg", optarg, &msg_admin)) return 2; break;
        case 'C': if (pier_cli_tls_add("msg", &cfg->tls, 0, optarg)) return 2; break;
        case 'K': if (pier_cli_tls_add("msg", &cfg->tls, 1, optarg)) return 2; break;
        case 'D':
            if (pier_cli_u64("msg", "--delay-us", optarg, 0, 1000000, &v) < 0) return 2;
            handler_delay_us = (unsigned)v;
            break;
        case 'v': pier_log_set_level(PIER_LOG_DEBUG); break;
        case 'q': pier_log_set_level(PIER_LOG_WARN); break;
        case 'H': fputs(msg_usage, stdout); return 1;
        case PIER_CLI_PROXY_ON: case PIER_CLI_PROXY_FROM: case PIER_CLI_PROXY_TIMEOUT:
            if (pier_cli_proxy_flag("msg", ch, optarg, &so->proxy))
                return 2;
            break;
        default: return pier_cli_usage_error("msg", "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return pier_cli_usage_error("msg", "unexpected argument '%s'", argv[optind]);
    if (!so->codec.wide && so->codec.max_body > 65535)
        return pier_cli_usage_error("msg", "--max-body over 65535 needs --wide");
    return pier_cli_proxy_check("msg", &so->proxy);
}

/* ---- the msg service, for `pier msg` and `pier serve` ---- */

typedef struct {
    pier_msg_server_t *srv;
    pier_msg_stats_t last;
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

/* Busy while connections are open or messages are still being handled, also those of
 * clients that have gone: the drain waits for both. */
static unsigned msg_active(void *state) {
    return pier_msg_server_active(((msg_state_t *)state)->srv);
}

static unsigned msg_conns(void *state) {
    return pier_server_conns(pier_msg_server_net(((msg_state_t *)state)->srv));
}

static int msg_freed(void *state) {
    msg_state_t *st = state;
    if (st->srv) {
        pier_msg_server_stats(st->srv, &st->last); /* final once the free succeeds */
        if (pier_msg_server_free(st->srv) == 0)
            st->srv = NULL;
    }
    return st->srv == NULL;
}

static void log_stats(const pier_msg_stats_t *s) {
    pier_log(PIER_LOG_INFO,
             "msg: %" PRIu64 " connections, %" PRIu64 " messages, %" PRIu64 " handled, %" PRIu64 " unknown ids, %" PRIu64
             " bad frames, %" PRIu64 " heartbeat timeouts, %" PRIu64 " replies dropped, %" PRIu64
             " closed over output limit, %" PRIu64 " replies to gone connections, %" PRIu64 " dropped unhandled, %" PRIu64
             " bad JSON, %" PRIu64 " replies over --max-body",
             s->conns, s->msgs, s->handled, s->unknown, s->bad_frames, s->timeouts, s->out_dropped, s->out_closed,
             s->replies_lost, s->abandoned, (uint64_t)atomic_load(&bad_json), (uint64_t)atomic_load(&too_big));
}

/* The counters are logged once the server is freed, when no handler can still change them
 * (messages of clients that went away are handled during the settle too). */
static pier_server_t *msg_net(void *state) { return pier_msg_server_net(((msg_state_t *)state)->srv); }

static void msg_finish(void *state) {
    msg_state_t *st = state;
    if (st->srv)
        pier_log(PIER_LOG_ERROR, "msg: %u connections or messages still active", pier_msg_server_active(st->srv));
    log_stats(&st->last);
    free(st);
}

const pier_service_t pier_msg_service = {
    .name = "msg", .start = msg_start, .drain = msg_drain, .active = msg_active, .conns = msg_conns,
    .net = msg_net, .freed = msg_freed, .finish = msg_finish,
};

int pier_cmd_msg(int argc, char **argv) {
    pier_msg_cfg_t cfg = {.opts = {.host = "127.0.0.1", .port = PIER_MSG_DEFAULT_PORT}};
    uint64_t threads = 1;
    int r = msg_parse(argc, argv, &cfg, &threads);
    if (r)
        return r == 1 ? 0 : r;
    r = pier_cli_tls_server("msg", &cfg.tls, NULL, NULL, &cfg.opts.tls);
    if (r)
        return r;
    pier_service_run_t runs[2] = {{.svc = &pier_msg_service, .cfg = &cfg}};
    int n = 1;
    pier_admin_add(runs, &n, &msg_admin);
    r = pier_cli_run((unsigned)threads, runs, n, 20000);
    pier_tls_ctx_free(cfg.opts.tls);
    return r;
}
