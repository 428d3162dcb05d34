/* pier ws-client URL: an interactive WebSocket client. Lines from stdin go out as text
 * messages, and every message received is printed on its own line, as it came. */
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
    "\n"
    "Connects to URL (ws://host[:port]/path, or wss://... over TLS), sends each line read\n"
    "from stdin as a text message and prints each message received on a line of its own.\n"
    "At the end of stdin it closes the connection with 1000 and exits once the server has\n"
    "answered. Exits 1 if the server cannot be reached, refuses the handshake or ends the\n"
    "connection with another code, 2 for a usage error.\n"
    "\n"
    "  --timeout S     connect timeout in seconds, default 5\n"
    "  --cafile F      wss://: trust the certificates in PEM file F instead of the system's\n"
    "  --insecure      wss://: accept any certificate (for tests only)\n"
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

/* ---- the command ---- */

static int parse_args(int argc, char **argv, pier_ws_client_opts_t *o, const char **cafile, int *insecure) {
    static const struct option longopts[] = {
        {"timeout", required_argument, 0, 't'}, {"cafile", required_argument, 0, 'A'},
        {"insecure", no_argument, 0, 'I'},      {"help", no_argument, 0, 'h'},
        {"no-deflate", no_argument, 0, 'Z'},    {0, 0, 0, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 't': o->connect_timeout_ms = (uint64_t)(strtod(optarg, NULL) * 1000); break;
        case 'A': *cafile = optarg; break;
        case 'I': *insecure = 1; break;
        case 'Z': o->ws.deflate = 0; break;
        case 'h': fputs(ws_client_help, stdout); return -1;
        default: return pier_cli_usage_error("ws-client", "unknown flag");
        }
    }
    if (optind != argc - 1)
        return pier_cli_usage_error("ws-client", "one URL expected");
    o->url = app.url = argv[optind];
    return 0;
}

static int start(pier_ws_client_opts_t *o, const char *cafile, int insecure, pier_tls_ctx_t **tls) {
    int secure = !strncasecmp(o->url, "wss://", 6);
    int code = pier_cli_tls_client("ws-client", secure, secure ? cafile : NULL, secure && insecure, tls);
    if (code)
        return code;
    o->tls = *tls;
    int err = pier_loop_new(&app.loop);
    err = err ? err : pier_ws_client_new(&app.cl, app.loop, o, &cbs, NULL);
    if (err == -EINVAL) {
        fprintf(stderr, "pier ws-client: bad URL '%s': expected ws://host[:port][/path] or wss://...\n", o->url);
        return 2;
    }
    if (err < 0) {
        fprintf(stderr, "pier ws-client: cannot start: %s\n", pier_strerror(err));
        return 1;
    }
    return 0;
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
    int insecure = 0;
    int code = parse_args(argc, argv, &o, &cafile, &insecure);
    if (code)
        return code < 0 ? 0 : code;
    pier_tls_ctx_t *tls = NULL;
    code = start(&o, cafile, insecure, &tls);
    if (!code) {
        pier_loop_run(app.loop);
        code = app.status;
    }
    finish(tls);
    return code;
}
