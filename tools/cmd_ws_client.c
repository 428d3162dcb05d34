/* pier ws-client URL: an interactive WebSocket client. Lines from stdin go out as text
 * messages, and every message received is printed on its own line, as it came.
 * pier ws-client --url URL --conns C --size S --seconds T: a checked echo load. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <pier/ws.h>

static const char ws_client_help[] =
    "usage: pier ws-client [--timeout SECONDS] [--cafile F] [--insecure] [--no-deflate] URL\n"
    "       pier ws-client --url URL [--conns C] [--size S] [--seconds T] [--cafile F] [--insecure]\n"
    "                      [--no-deflate]\n"
    "\n"
    "Connects to URL (ws://host[:port]/path, or wss://... over TLS), sends each line read\n"
    "from stdin as a text message and prints each message received on a line of its own.\n"
    "At the end of stdin it closes the connection with 1000 and exits once the server has\n"
    "answered. Exits 1 if the server cannot be reached, refuses the handshake or ends the\n"
    "connection with another code, 2 for a usage error.\n"
    "\n"
    "With --conns, --size or --seconds it is a load against an echo endpoint (such as pier\n"
    "http's /ws/echo): C connections each send a binary message of S bytes, check that the\n"
    "same bytes come back, and send the next, for T seconds once all are open; then it\n"
    "prints one line, as pier echo-client does:\n"
    "  ws-client: conns=C size=S seconds=T messages=N msgs_per_sec=R mb_per_sec=M errors=E\n"
    "and exits 0 if there was no error, else 1.\n"
    "\n"
    "  --timeout S     connect timeout in seconds, default 5\n"
    "  --cafile F      wss://: trust the certificates in PEM file F instead of the system's\n"
    "  --insecure      wss://: accept any certificate (for tests only)\n"
    "  --url URL       the URL, for the load\n"
    "  --conns C       connections, default 10\n"
    "  --size S        bytes per message, 8 to 16777216, default 64\n"
    "  --seconds T     seconds of load, default 5\n"
    "  --no-deflate    do not offer permessage-deflate (offered by default)\n";

typedef struct {
    pier_loop_t *loop;
    pier_ws_client_t *cl;
    const char *url;
    int status;          /* the exit code so far */
    int reading;         /* the stdin thread runs */
    pthread_t reader;
    pthread_mutex_t mu;  /* the reader posts only while the loop lives */
    int loop_gone;
} ws_cli_t;

static ws_cli_t app = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- stdin, on a thread of its own: each line is posted to the loop ---- */

typedef struct {
    size_t len;
    int eof;
    char data[];
} line_t;

static void send_line(void *arg) {
    line_t *l = arg;
    /* no client: the loop runs what was left as it is freed */
    pier_ws_t *ws = app.cl ? pier_ws_client_ws(app.cl) : NULL;
    if (l->eof && app.cl)
        pier_ws_client_stop(app.cl);
    else if (ws && pier_ws_send(ws, PIER_WS_TEXT, l->data, l->len) == -ENOBUFS)
        fprintf(stderr, "pier ws-client: the server reads too slowly, a line was dropped\n");
    free(l);
}

static void post_line(const char *s, size_t n, int eof) {
    line_t *l = malloc(sizeof *l + n);
    if (!l)
        return;
    l->len = n;
    l->eof = eof;
    memcpy(l->data, s, n);
    pthread_mutex_lock(&app.mu);
    if (app.loop_gone || pier_loop_post(app.loop, send_line, l) < 0)
        free(l);
    pthread_mutex_unlock(&app.mu);
}

static void *read_stdin(void *arg) {
    (void)arg;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        post_line(line, (size_t)n, 0);
    }
    free(line);
    post_line("", 0, 1);
    return NULL;
}

/* ---- the connection ---- */

static void on_open(pier_ws_t *ws) {
    (void)ws;
    if (!app.reading && pthread_create(&app.reader, NULL, read_stdin, NULL) == 0) {
        pthread_detach(app.reader); /* it may sit in a read when the server ends first */
        app.reading = 1;
    }
}

static void on_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    (void)ws;
    (void)opcode;
    fwrite(data, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

static void on_close(pier_ws_t *ws, int code, const char *reason) {
    (void)ws;
    if (code != PIER_WS_NORMAL) {
        fprintf(stderr, "pier ws-client: connection closed (%d%s%s)\n", code, *reason ? " " : "", reason);
        app.status = 1;
    }
    pier_ws_client_stop(app.cl);
    pier_loop_stop(app.loop);
}

static void on_connect_error(pier_ws_client_t *cl, int err, int will_retry) {
    (void)will_retry;
    int st = pier_ws_client_status(cl);
    if (err == -EPROTO && st && st != 101)
        fprintf(stderr, "pier ws-client: cannot connect to %s: the server refused the WebSocket handshake with %d\n",
                app.url, st);
    else
        fprintf(stderr, "pier ws-client: cannot connect to %s: %s\n", app.url,
                err == -EPROTO ? "the server refused the WebSocket handshake" : pier_strerror(err));
    app.status = 1;
    pier_loop_stop(app.loop);
}

static const pier_ws_cbs_t cbs = {.on_open = on_open, .on_message = on_message, .on_close = on_close};

/* The exit code for an error of pier_ws_client_new, said once. */
static int start_error(const char *url, int err) {
    if (err == -EINVAL) {
        fprintf(stderr, "pier ws-client: bad URL '%s': expected ws://host[:port][/path] or wss://...\n", url);
        return 2;
    }
    fprintf(stderr, "pier ws-client: cannot start: %s\n", pier_strerror(err));
    return 1;
}

/* ---- the load: every connection keeps one message in flight ---- */

typedef struct {
    pier_ws_client_t *cl;
    uint64_t next_out, next_in; /* sequence numbers, in a message's first 8 bytes */
} load_conn_t;

static struct {
    unsigned conns, open, closed;
    uint64_t size, seconds;
    load_conn_t *c;
    char *msg;                  /* the message being sent: a sequence number, then a pattern */
    uint64_t messages, errors, t0, t1;
    int running, failed;
    pier_timer_t timer;
} lg = {.conns = 10, .size = 64, .seconds = 5};

static void load_send(pier_ws_t *ws, load_conn_t *c) {
    uint64_t seq = c->next_out++;
    memcpy(lg.msg, &seq, sizeof seq);
    if (pier_ws_send(ws, PIER_WS_BINARY, lg.msg, lg.size) < 0)
        lg.errors++; /* one message in flight never meets the water mark: the connection went */
}

static void load_end(pier_timer_t *t) {
    (void)t;
    lg.running = 0;
    lg.t1 = pier_loop_now(app.loop);
    for (unsigned i = 0; i < lg.conns; i++)
        pier_ws_client_stop(lg.c[i].cl);
}

static void load_open(pier_ws_t *ws) {
    (void)ws;
    if (++lg.open < lg.conns)
        return;
    lg.running = 1; /* every connection is open: the window starts */
    lg.t0 = pier_loop_now(app.loop);
    pier_timer_start(&lg.timer, lg.seconds * 1000, 0);
    for (unsigned i = 0; i < lg.conns; i++)
        load_send(pier_ws_client_ws(lg.c[i].cl), &lg.c[i]);
}

static void load_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    load_conn_t *c = pier_ws_endpoint_ud(ws);
    uint64_t seq = 0;
    memcpy(&seq, data, len < sizeof seq ? len : sizeof seq);
    if (opcode != PIER_WS_BINARY || len != lg.size || seq != c->next_in++ ||
        memcmp((const char *)data + 8, lg.msg + 8, lg.size - 8) != 0) {
        lg.errors++;
        return;
    }
    if (!lg.running)
        return;
    lg.messages++;
    load_send(ws, c);
}

static void load_close(pier_ws_t *ws, int code, const char *reason) {
    (void)ws;
    if (lg.running) {
        fprintf(stderr, "pier ws-client: the server closed a connection (%d%s%s)\n", code, *reason ? " " : "", reason);
        lg.errors++;
    }
    if (++lg.closed == lg.conns)
        pier_loop_stop(app.loop);
}

static void load_connect_error(pier_ws_client_t *cl, int err, int will_retry) {
    (void)cl;
    (void)will_retry;
    if (!lg.failed)
        fprintf(stderr, "pier ws-client: cannot connect to %s: %s\n", app.url,
                err == -EPROTO ? "the server refused the WebSocket handshake" : pier_strerror(err));
    lg.failed = 1;
    pier_loop_stop(app.loop);
}

static const pier_ws_cbs_t load_cbs = {.on_open = load_open, .on_message = load_message, .on_close = load_close};

static void load_free(void) {
    for (unsigned i = 0; i < lg.conns; i++) {
        if (!lg.c[i].cl)
            continue;
        pier_ws_client_stop(lg.c[i].cl);
        for (int k = 0; k < 1000 && pier_ws_client_free(lg.c[i].cl) == -EBUSY; k++)
            pier_loop_run_once(app.loop, 5);
    }
    pier_timer_stop(&lg.timer);
    free(lg.c);
    free(lg.msg);
}

static int run_load(pier_ws_client_opts_t *o) {
    o->on_connect_error = load_connect_error;
    lg.c = calloc(lg.conns, sizeof *lg.c);
    lg.msg = malloc(lg.size);
    if (!lg.c || !lg.msg) {
        fprintf(stderr, "pier ws-client: out of memory\n");
        return 1;
    }
    for (uint64_t i = 0; i < lg.size; i++)
        lg.msg[i] = (char)('a' + i % 26);
    pier_timer_init(app.loop, &lg.timer, load_end, NULL);
    int err = 0;
    for (unsigned i = 0; i < lg.conns && !err; i++)
        err = pier_ws_client_new(&lg.c[i].cl, app.loop, o, &load_cbs, &lg.c[i]);
    if (!err)
        pier_loop_run(app.loop);
    if (lg.t0 && !lg.t1) /* every connection closed before the end */
        lg.t1 = pier_loop_now(app.loop);
    load_free();
    if (err < 0)
        return start_error(o->url, err);
    if (lg.failed)
        return 1;
    double secs = (double)(lg.t1 - lg.t0) / 1000.0, rate = secs > 0 ? (double)lg.messages / secs : 0;
    printf("ws-client: conns=%u size=%llu seconds=%.2f messages=%llu msgs_per_sec=%.1f mb_per_sec=%.2f errors=%llu\n",
           lg.conns, (unsigned long long)lg.size, secs, (unsigned long long)lg.messages, rate,
           rate * (double)lg.size / 1e6, (unsigned long long)lg.errors);
    return lg.errors == 0 && lg.messages > 0 ? 0 : 1;
}

/* ---- the command ---- */

/* 0, or the exit code of a usage error. */
static int parse_load_flag(int ch, const char *arg) {
    uint64_t v = lg.conns;
    int err;
    switch (ch) {
    case 'c':
        err = pier_cli_u64("ws-client", "--conns", arg, 1, 100000, &v);
        lg.conns = (unsigned)v;
        break;
    case 's': err = pier_cli_u64("ws-client", "--size", arg, 8, 16 << 20, &lg.size); break;
    default: err = pier_cli_u64("ws-client", "--seconds", arg, 1, 86400, &lg.seconds); break;
    }
    return err < 0 ? 2 : 0;
}

/* 0, -1 after --help, or an exit code; *load: the load was asked for. */
static int parse_args(int argc, char **argv, pier_ws_client_opts_t *o, const char **cafile, int *insecure,
                      int *load) {
    static const struct option longopts[] = {
        {"timeout", required_argument, 0, 't'}, {"cafile", required_argument, 0, 'A'},
        {"insecure", no_argument, 0, 'I'},      {"help", no_argument, 0, 'h'},
        {"url", required_argument, 0, 'u'},     {"conns", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},    {"seconds", required_argument, 0, 'T'},
        {"no-deflate", no_argument, 0, 'Z'},    {0, 0, 0, 0},
    };
    int ch, code;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 't': o->connect_timeout_ms = (uint64_t)(strtod(optarg, NULL) * 1000); break;
        case 'A': *cafile = optarg; break;
        case 'I': *insecure = 1; break;
        case 'u': o->url = optarg; break;
        case 'c':
        case 's':
        case 'T':
            *load = 1;
            if ((code = parse_load_flag(ch, optarg)) != 0)
                return code;
            break;
        case 'Z': o->ws.deflate = 0; break;
        case 'h': fputs(ws_client_help, stdout); return -1;
        default: return pier_cli_usage_error("ws-client", "unknown flag");
        }
    }
    int positional = argc - optind;
    if (positional > 1 || (positional == 1) == (o->url != NULL))
        return pier_cli_usage_error("ws-client", "one URL expected");
    if (!o->url)
        o->url = argv[optind];
    app.url = o->url;
    return 0;
}

static int start(pier_ws_client_opts_t *o, const char *cafile, int insecure, int load, pier_tls_ctx_t **tls) {
    int secure = !strncasecmp(o->url, "wss://", 6);
    int code = pier_cli_tls_client("ws-client", secure, secure ? cafile : NULL, secure && insecure, tls);
    if (code)
        return code;
    o->tls = *tls;
    int err = pier_loop_new(&app.loop);
    err = err || load ? err : pier_ws_client_new(&app.cl, app.loop, o, &cbs, NULL);
    return err < 0 ? start_error(o->url, err) : 0;
}

/* A reader thread blocked on stdin is left to the end of the process, but it posts no
 * more once the loop is marked gone. */
static void finish(pier_tls_ctx_t *tls) {
    if (app.cl) {
        pier_ws_client_stop(app.cl);
        for (int i = 0; i < 1000 && pier_ws_client_free(app.cl) == -EBUSY; i++)
            pier_loop_run_once(app.loop, 5);
        app.cl = NULL;
    }
    pthread_mutex_lock(&app.mu);
    app.loop_gone = 1;
    pthread_mutex_unlock(&app.mu);
    if (app.loop)
        pier_loop_free(app.loop);
    if (tls)
        pier_tls_ctx_free(tls);
    fflush(stdout);
}

int pier_cmd_ws_client(int argc, char **argv) {
    pier_ws_client_opts_t o = {.connect_timeout_ms = 5000, .on_connect_error = on_connect_error,
                               .ws = {.deflate = 1}};
    const char *cafile = NULL;
    int insecure = 0, load = 0;
    int code = parse_args(argc, argv, &o, &cafile, &insecure, &load);
    if (code)
        return code < 0 ? 0 : code;
    pier_tls_ctx_t *tls = NULL;
    code = start(&o, cafile, insecure, load, &tls);
    if (!code && load) {
        code = run_load(&o);
    } else if (!code) {
        pier_loop_run(app.loop);
        code = app.status;
    }
    finish(tls);
    return code;
}
