/* The pier tool's shared pieces: flag parsing and the service runner that every
 * server command (echo, msg, http, serve) uses for start-up and graceful stop. */
#ifndef PIER_TOOLS_CLI_H
#define PIER_TOOLS_CLI_H

#include <stdint.h>
#include <pier/loop.h>
#include <pier/net.h>
#include <pier/tls.h>

/* A server a command can run. start() creates and starts it on the group; drain() is
 * called on loop 0's thread at SIGINT/SIGTERM: stop accepting, close connections
 * gracefully; active() reports what is still open; finish() frees it after the group
 * has stopped. conns() (optional) counts only the open connections, for a service whose
 * active() counts other work too. */
typedef struct pier_service_s {
    const char *name;
    int (*start)(pier_group_t *g, void *cfg, void **state);
    void (*drain)(void *state);
    unsigned (*active)(void *state);
    unsigned (*conns)(void *state);
    /* The end, after the group has stopped, is the same for every service and is done by
     * the runner: stop accepting on net(state), reset what is still open, and run the
     * loops until freed(state) says the service's server has been freed (it tries to
     * free it, and must be idempotent). finish(state) then logs and frees the state. */
    pier_server_t *(*net)(void *state);
    int (*freed)(void *state);
    void (*finish)(void *state);
} pier_service_t;

typedef struct pier_service_run_s {
    const pier_service_t *svc;
    void *cfg;
    void *state;
} pier_service_run_t;

/* Starts every service on a group of `threads` loops, runs until SIGINT/SIGTERM, drains
 * for at most drain_ms, frees. Returns the process exit code. */
int pier_cli_run(unsigned threads, pier_service_run_t *runs, int n, uint64_t drain_ms);

/* After the group has stopped: runs its loops on the calling thread until done(arg)
 * says yes or max_ms passes. Services use it in finish() to let resets and on_close
 * callbacks happen before they free their servers. Returns done(arg). */
int pier_cli_settle(pier_group_t *g, int (*done)(void *arg), void *arg, int max_ms);

/* Parses an unsigned number in [min, max]; on error prints one line naming the command
 * and flag and returns -1. */
int pier_cli_u64(const char *cmd, const char *flag, const char *s, uint64_t min, uint64_t max, uint64_t *out);
int pier_cli_port(const char *cmd, const char *s, uint16_t *out);
/* "unknown flag", "missing value" and the like: one line and a hint. Returns 2. */
int pier_cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The --tls-cert/--tls-key flags of a server command, each repeatable: the i-th key
 * goes with the i-th certificate; the first pair is the default and the others are
 * chosen by the name the client asks for (SNI). */
#define PIER_CLI_TLS_PAIRS 16
typedef struct pier_cli_tls_s {
    const char *cert[PIER_CLI_TLS_PAIRS], *key[PIER_CLI_TLS_PAIRS];
    int ncert, nkey;
} pier_cli_tls_t;
/* Adds one flag's file (key: --tls-key, else --tls-cert). 0, or 2 after one line. */
int pier_cli_tls_add(const char *cmd, pier_cli_tls_t *f, int key, const char *file);

/* The pairs of f: as many keys as certificates, or none. *out is a server context (NULL
 * when none was given), the caller's to free after pier_cli_run, which reloads its files
 * on SIGHUP. plain_reply and alpn: see pier_tls_opts_t. Returns 0, or the exit code
 * after one line on stderr (2 for a usage error, 1 when the files cannot be used). */
int pier_cli_tls_server(const char *cmd, const pier_cli_tls_t *f, const char *plain_reply, const char *alpn,
                        pier_tls_ctx_t **out);

/* The --tls/--cafile/--insecure flags of a client command: *out is a client context
 * (NULL without --tls), the caller's to free. Returns 0 or an exit code, as above. */
int pier_cli_tls_client(const char *cmd, int tls, const char *cafile, int insecure, pier_tls_ctx_t **out);

/* The PROXY protocol flags of a server command (http, echo, msg): their getopt entries,
 * their --help lines, and a parser for one of them (opt: the entry's value). The flags'
 * interface is used by deployments (HAProxy in front): keep it stable. */
enum { PIER_CLI_PROXY_ON = 0x100, PIER_CLI_PROXY_FROM, PIER_CLI_PROXY_TIMEOUT };
#define PIER_CLI_PROXY_LONGOPTS                                                                                     \
    {"proxy-protocol", no_argument, 0, PIER_CLI_PROXY_ON},                                                          \
        {"proxy-from", required_argument, 0, PIER_CLI_PROXY_FROM},                                                  \
        {"proxy-timeout", required_argument, 0, PIER_CLI_PROXY_TIMEOUT}
#define PIER_CLI_PROXY_HELP                                                                                         \
    "  --proxy-protocol    every connection starts with a PROXY header (v1 or v2, as\n"                              \
    "                      HAProxy's send-proxy/send-proxy-v2 send): the client's address\n"                         \
    "                      is taken from it (and logged); one without a valid header is\n"                           \
    "                      closed\n"                                                                                  \
    "  --proxy-from CIDR,...  with --proxy-protocol: only these sources may connect\n"                              \
    "                      (IPv4 or IPv6 addresses or CIDRs, e.g. 10.0.0.0/8,::1)\n"                                 \
    "  --proxy-timeout S   the PROXY header must arrive within S seconds (default 3)\n"
/* 0, or 2 after one line on stderr. */
int pier_cli_proxy_flag(const char *cmd, int opt, const char *arg, pier_proxy_opts_t *p);
/* After all flags: --proxy-from and --proxy-timeout need --proxy-protocol. 0 or 2. */
int pier_cli_proxy_check(const char *cmd, const pier_proxy_opts_t *p);

/* Commands. Each takes argc/argv with argv[0] being the command name. */
int pier_cmd_echo(int argc, char **argv);
int pier_cmd_echo_client(int argc, char **argv);
int pier_cmd_serve(int argc, char **argv);
int pier_cmd_http(int argc, char **argv);       /* tools/cmd_http.c */
int pier_cmd_msg(int argc, char **argv);        /* tools/cmd_msg.c */
int pier_cmd_msg_client(int argc, char **argv); /* tools/cmd_msg_client.c */
int pier_cmd_ws_client(int argc, char **argv);  /* tools/cmd_ws_client.c */

/* The echo service (for serve). cfg is a pier_echo_cfg_t, or NULL for the defaults. */
typedef struct pier_echo_cfg_s {
    const char *host;
    uint16_t port;
    unsigned max_conns;
    uint64_t idle_ms;
    int single_acceptor;
    pier_tls_ctx_t *tls;        /* NULL: plain TCP */
    pier_proxy_opts_t proxy;
} pier_echo_cfg_t;
extern const pier_service_t pier_echo_service;
/* The HTTP (port 8888) and message (port 10089) services; cfg NULL means defaults. */
extern const pier_service_t pier_http_service;
/* HTTPS on 8443 (cfg: a pier_tls_ctx_t made with pier_http_plain_reply), and the 400
 * that a plain HTTP request to an HTTPS port gets. */
extern const pier_service_t pier_https_service;
extern const char pier_http_plain_reply[];
extern const pier_service_t pier_msg_service;

#endif
