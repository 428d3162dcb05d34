/* pier echo: the echo server, and the service that `pier serve` runs. */
#include "cli.h"
#include "admin.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct echo_state_s {
    pier_server_t *srv;
} echo_state_t;

/* Full duplex: whatever arrives is queued for writing at once. The connection's water
 * marks pause reading while the peer is not reading what we send back, so memory stays
 * bounded by the high mark however fast the peer sends. */
static size_t echo_read(pier_conn_t *c, const char *data, size_t len) {
    if (pier_conn_write(c, data, len) < 0)
        pier_conn_abort(c);
    return len;
}

static const pier_conn_cbs_t echo_cbs = {.on_read = echo_read};

static void echo_accept(pier_server_t *srv, pier_conn_t *c) { pier_conn_set_cbs(c, &echo_cbs, NULL); }

static int echo_start(pier_group_t *g, void *cfgp, void **state) {
    const pier_echo_cfg_t defaults = {.host = "127.0.0.1", .port = 10088};
    const pier_echo_cfg_t *cfg = cfgp ? cfgp : &defaults;
    echo_state_t *st = calloc(1, sizeof *st);
    if (!st)
        return -1;
    pier_server_opts_t opts = {
        .host = cfg->host,
        .port = cfg->port,
        .max_conns = cfg->max_conns,
        .limits = {.idle_ms = cfg->idle_ms},
        .single_acceptor = cfg->single_acceptor,
        .on_accept = echo_accept,
        .tls = cfg->tls,
        .proxy = cfg->proxy,
    };
    int err = pier_server_new(&st->srv, g, &opts);
    if (err < 0) {
        fprintf(stderr, "pier echo: cannot listen on %s:%u: %s\n", cfg->host, cfg->port, pier_strerror(err));
        free(st);
        return err;
    }
    pier_server_start(st->srv);
    pier_log(PIER_LOG_INFO, "echo: listening on %s:%u%s (%u loops)", cfg->host, pier_server_port(st->srv),
             cfg->tls ? " with TLS" : "", pier_group_size(g));
    *state = st;
    return 0;
}

static void echo_drain(void *state) {
    echo_state_t *st = state;
    pier_server_stop(st->srv);
    pier_server_close_all(st->srv);
}

static unsigned echo_active(void *state) { return pier_server_conns(((echo_state_t *)state)->srv); }

static int echo_freed(void *state) {
    echo_state_t *st = state;
    if (st->srv && pier_server_free(st->srv) == 0)
        st->srv = NULL;
    return st->srv == NULL;
}

static pier_server_t *echo_net(void *state) { return ((echo_state_t *)state)->srv; }

const pier_service_t pier_echo_service = {
    .name = "echo", .start = echo_start, .drain = echo_drain, .active = echo_active,
    .net = echo_net, .freed = echo_freed, .finish = free,
};

static const char echo_help[] =
    "usage: pier echo [--host 127.0.0.1] [--port 10088] [--threads N] [--max-conns N]\n"
    "                 [--idle-timeout SECONDS] [--single-acceptor] [--quiet]\n"
    "                 [--tls-cert FILE --tls-key FILE]\n"
    "                 [--proxy-protocol [--proxy-from CIDR,...] [--proxy-timeout S]]\n"
    "\n"
    "Echoes every byte it receives back to its sender, full-duplex, on any number of\n"
    "connections. SIGINT or SIGTERM stops accepting, flushes what is pending, exits 0.\n"
    "\n"
    "  --host H            address to listen on (IPv4 or IPv6), default 127.0.0.1\n"
    "  --port P            port, default 10088 (0: any free port, logged)\n"
    "  --threads N         event loops, one thread each (default 1; 0: one per CPU)\n"
    "  --max-conns N       open connections at most (default 100000)\n"
    "  --idle-timeout S    close connections idle for S seconds (default 0: never)\n"
    "  --single-acceptor   one listener hands connections to the loops in turn, instead\n"
    "                      of one SO_REUSEPORT listener per loop (the default)\n"
    "  --quiet             log warnings and errors only\n"
    "  --admin HOST:PORT   /metrics, /healthz and /status on a port of their own (off: none)\n"
    "  --tls-cert FILE     certificate chain (PEM, leaf first): the port speaks only TLS\n"
    "  --tls-key FILE      its private key (PEM); SIGHUP reads both files again\n"
    "                      repeat both for more pairs: each client gets the first whose\n"
    "                      certificate names the host it asks for (SNI), else the first\n"
    "                      SIGUSR1 replaces the session ticket key now (it is anyway hourly)\n"
    PIER_CLI_PROXY_HELP;

int pier_cmd_echo(int argc, char **argv) {
    pier_echo_cfg_t cfg = {.host = "127.0.0.1", .port = 10088};
    uint64_t threads = 1, v;
    pier_cli_tls_t tf = {0};
    pier_admin_cfg_t admin = {0};
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},      {"port", required_argument, 0, 'p'},
        {"threads", required_argument, 0, 't'},   {"max-conns", required_argument, 0, 'm'},
        {"idle-timeout", required_argument, 0, 'i'}, {"quiet", no_argument, 0, 'q'},
        {"single-acceptor", no_argument, 0, 'a'}, {"tls-cert", required_argument, 0, 'C'},
        {"tls-key", required_argument, 0, 'K'},   PIER_CLI_PROXY_LONGOPTS,
        {"admin", required_argument, 0, 'A'},
        {"help", no_argument, 0, 'H'},            {0, 0, 0, 0},
    };
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': cfg.host = optarg; break;
        case 'p':
            if (pier_cli_port("echo", optarg, &cfg.port) < 0)
                return 2;
            break;
        case 't':
            if (pier_cli_u64("echo", "--threads", optarg, 0, 256, &threads) < 0)
                return 2;
            break;
        case 'm':
            if (pier_cli_u64("echo", "--max-conns", optarg, 1, 10000000, &v) < 0)
                return 2;
            cfg.max_conns = (unsigned)v;
            break;
        case 'i':
            if (pier_cli_u64("echo", "--idle-timeout", optarg, 0, 86400, &v) < 0)
                return 2;
            cfg.idle_ms = v * 1000;
            break;
        case 'q': pier_log_set_level(PIER_LOG_WARN); break;
        case 'a': cfg.single_acceptor = 1; break;
        case 'A': if (pier_admin_parse("echo", optarg, &admin)) return 2; break;
        case 'C': if (pier_cli_tls_add("echo", &tf, 0, optarg)) return 2; break;
        case 'K': if (pier_cli_tls_add("echo", &tf, 1, optarg)) return 2; break;
        case PIER_CLI_PROXY_ON: case PIER_CLI_PROXY_FROM: case PIER_CLI_PROXY_TIMEOUT:
            if (pier_cli_proxy_flag("echo", opt, optarg, &cfg.proxy))
                return 2;
            break;
        case 'H': fputs(echo_help, stdout); return 0;
        default:
            return pier_cli_usage_error("echo", "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return pier_cli_usage_error("echo", "unexpected argument '%s'", argv[optind]);
    if (pier_cli_proxy_check("echo", &cfg.proxy))
        return 2;
    int code = pier_cli_tls_server("echo", &tf, NULL, NULL, &cfg.tls);
    if (code)
        return code;
    admin.max_conns = cfg.max_conns; /* the admin port takes no more than the public one */
    pier_service_run_t runs[2] = {{.svc = &pier_echo_service, .cfg = &cfg}};
    int n = 1;
    pier_admin_add(runs, &n, &admin);
    code = pier_cli_run((unsigned)threads, runs, n, 10000);
    pier_tls_ctx_free(cfg.tls);
    return code;
}
