/* pier serve: what `make run` starts — every pier server on its default port, sharing
 * one loop group. Each server is a service (cli.h); a new server adds one line here. */
#include "cli.h"
#include "admin.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char serve_help[] =
    "usage: pier serve [--threads N] [--tls-dir DIR] [--admin HOST:PORT|off]\n"
    "\n"
    "Starts the demo: every pier server on its default port on 127.0.0.1\n"
    "(echo on 10088, HTTP on 8888, HTTPS on 8443, messages on 10089, and the admin\n"
    "port with /metrics, /healthz and /status on 9901). Ctrl-C stops it\n"
    "cleanly. HTTPS uses DIR/cert.pem and DIR/key.pem, a self-signed certificate for\n"
    "localhost made on the first run (curl -k, or --cacert DIR/cert.pem, trusts it).\n"
    "\n"
    "  --threads N   event loops, one thread each (default 1; 0: one per CPU)\n"
    "  --tls-dir DIR where the certificate is kept (default ~/.config/pier/tls)\n"
    "  --admin HOST:PORT  the admin port (default " PIER_ADMIN_DEFAULT "; off: none)\n";

/* mkdir -p, private to the user: the folder holds a private key. */
static int make_dirs(const char *dir) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    return mkdir(path, 0700) < 0 && errno != EEXIST ? -errno : 0;
}

/* The HTTPS context from dir, whose certificate is made on the first run. NULL (and a
 * warning: the demo runs on without HTTPS) when that cannot be done. */
static pier_tls_ctx_t *https_ctx(const char *dir) {
    char cert[PATH_MAX + 16], key[PATH_MAX + 16];
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    int err = 0;
    if (access(cert, F_OK) != 0 || access(key, F_OK) != 0) {
        err = make_dirs(dir);
        if (err == 0)
            err = pier_tls_make_selfsigned(cert, key, "localhost");
        if (err == 0)
            pier_log(PIER_LOG_INFO, "https: made a self-signed certificate for localhost in %s", dir);
    }
    pier_tls_ctx_t *ctx = NULL;
    pier_cli_tls_t tf = {.cert = {cert}, .key = {key}, .ncert = 1, .nkey = 1};
    if (err == 0 && pier_cli_tls_server("serve", &tf, pier_http_plain_reply, "http/1.1", &ctx) != 0)
        err = -EINVAL;
    if (err < 0 || !ctx) {
        pier_log(PIER_LOG_WARN, "https: not started, no certificate in %s: %s", dir, pier_strerror(err));
        return NULL;
    }
    pier_log(PIER_LOG_INFO, "https: certificate %s (self-signed: curl -k, or --cacert it)", cert);
    return ctx;
}

int pier_cmd_serve(int argc, char **argv) {
    uint64_t threads = 1;
    char dir[PATH_MAX];
    const char *home = getenv("HOME");
    snprintf(dir, sizeof dir, "%s/.config/pier/tls", home && *home ? home : "/tmp");
    pier_admin_cfg_t admin = {0};
    pier_admin_parse("serve", PIER_ADMIN_DEFAULT, &admin);
    static const struct option longopts[] = {{"threads", required_argument, 0, 't'},
                                             {"tls-dir", required_argument, 0, 'd'},
                                             {"admin", required_argument, 0, 'A'},
                                             {"help", no_argument, 0, 'H'},
                                             {0, 0, 0, 0}};
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 't':
            if (pier_cli_u64("serve", "--threads", optarg, 0, 256, &threads) < 0)
                return 2;
            break;
        case 'd': snprintf(dir, sizeof dir, "%s", optarg); break;
        case 'A': if (pier_admin_parse("serve", optarg, &admin)) return 2; break;
        case 'H': fputs(serve_help, stdout); return 0;
        default: return pier_cli_usage_error("serve", "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return pier_cli_usage_error("serve", "unexpected argument '%s'", argv[optind]);
    pier_tls_ctx_t *tls = https_ctx(dir);
    pier_service_run_t runs[5] = {
        {.svc = &pier_echo_service},
        {.svc = &pier_http_service},
        {.svc = &pier_msg_service},
        {.svc = &pier_https_service, .cfg = tls},
    };
    int n = tls ? 4 : 3;
    pier_admin_add(runs, &n, &admin);
    int code = pier_cli_run((unsigned)threads, runs, n, 10000);
    pier_tls_ctx_free(tls);
    return code;
}
