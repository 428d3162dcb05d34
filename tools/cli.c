#include "cli.h"
#include "upgrade.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pier_cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "pier %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see 'pier %s --help')\n", cmd);
    return 2;
}

int pier_cli_u64(const char *cmd, const char *flag, const char *s, uint64_t min, uint64_t max, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = s && *s != '-' ? strtoull(s, &end, 10) : 0;
    if (!s || !*s || *s == '-' || errno || *end || v < min || v > max) {
        pier_cli_usage_error(cmd, "%s wants a whole number from %llu to %llu, not '%s'", flag,
                             (unsigned long long)min, (unsigned long long)max, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

int pier_cli_port(const char *cmd, const char *s, uint16_t *out) {
    uint64_t v;
    if (pier_cli_u64(cmd, "--port", s, 0, 65535, &v) < 0)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

int pier_cli_proxy_flag(const char *cmd, int opt, const char *arg, pier_proxy_opts_t *p) {
    uint64_t v;
    size_t bad;
    switch (opt) {
    case PIER_CLI_PROXY_ON: p->on = 1; return 0;
    case PIER_CLI_PROXY_TIMEOUT:
        if (pier_cli_u64(cmd, "--proxy-timeout", arg, 1, 3600, &v) < 0)
            return 2;
        p->timeout_ms = v * 1000;
        return 0;
    default:
        if (pier_proxy_from_check(arg, &bad) < 0)
            return pier_cli_usage_error(cmd, "--proxy-from wants IPv4 or IPv6 addresses or CIDRs separated by "
                                        "commas; '%.*s' is not one", (int)strcspn(arg + bad, ","), arg + bad);
        p->from = arg;
        return 0;
    }
}

int pier_cli_proxy_check(const char *cmd, const pier_proxy_opts_t *p) {
    if (!p->on && (p->from || p->timeout_ms))
        return pier_cli_usage_error(cmd, "--proxy-from and --proxy-timeout need --proxy-protocol");
    return 0;
}

/* Server contexts made from flags, reloaded on SIGHUP while pier_cli_run runs. */
static pier_tls_ctx_t *reloadable[4];
static int nreloadable;

static void on_hup(pier_loop_t *loop, int signo, void *arg) {
    for (int i = 0; i < nreloadable; i++) {
        int err = pier_tls_ctx_reload(reloadable[i]);
        if (err < 0)
            pier_log(PIER_LOG_ERROR, "SIGHUP: certificate not reloaded, the old one stays in use: %s",
                     pier_strerror(err));
        else
            pier_log(PIER_LOG_INFO, "SIGHUP: certificate and key reloaded; open connections carry on");
    }
}

/* Operators replace the session ticket keys at once (tickets of the key before the last
 * one stop resuming), say after a leak; the hourly rotation goes on regardless. */
static void on_usr1(pier_loop_t *loop, int signo, void *arg) {
    for (int i = 0; i < nreloadable; i++) {
        int err = pier_tls_ctx_rotate_tickets(reloadable[i]);
        if (err < 0)
            pier_log(PIER_LOG_ERROR, "SIGUSR1: ticket key not rotated: %s", pier_strerror(err));
        else
            pier_log(PIER_LOG_INFO, "SIGUSR1: new session ticket key; the one before still resumes");
    }
}

int pier_cli_tls_add(const char *cmd, pier_cli_tls_t *f, int key, const char *file) {
    int *n = key ? &f->nkey : &f->ncert;
    if (*n == PIER_CLI_TLS_PAIRS)
        return pier_cli_usage_error(cmd, "at most %d --tls-cert/--tls-key pairs", PIER_CLI_TLS_PAIRS);
    (key ? f->key : f->cert)[(*n)++] = file;
    return 0;
}

int pier_cli_tls_server(const char *cmd, const pier_cli_tls_t *f, const char *plain_reply, const char *alpn,
                        pier_tls_ctx_t **out) {
    *out = NULL;
    if (f->ncert == 0 && f->nkey == 0)
        return 0;
    if (f->ncert != f->nkey) {
        return pier_cli_usage_error(cmd, "--tls-cert and --tls-key go together");
    }
    pier_tls_pair_t sni[PIER_CLI_TLS_PAIRS];
    for (int i = 1; i < f->ncert; i++)
        sni[i - 1] = (pier_tls_pair_t){f->cert[i], f->key[i]};
    pier_tls_opts_t o = {.cert_file = f->cert[0], .key_file = f->key[0], .plain_reply = plain_reply, .alpn = alpn,
                         .sni = sni, .sni_count = (size_t)f->ncert - 1};
    int err = pier_tls_ctx_new_server(out, &o);
    if (err < 0) {
        fprintf(stderr, "pier %s: cannot use certificate %s with key %s%s: %s\n", cmd, f->cert[0], f->key[0],
                f->ncert > 1 ? " (or another pair)" : "",
                err == -ENOTSUP ? "this pier was built without TLS" : pier_strerror(err));
        return 1;
    }
    if (nreloadable < (int)(sizeof reloadable / sizeof reloadable[0]))
        reloadable[nreloadable++] = *out;
    int ktls = pier_tls_ktls_check();
    if (ktls == 0)
        pier_log(PIER_LOG_INFO, "tls: the kernel offers kTLS, which pier does not use yet: files over TLS are "
                                "read and encrypted in user space");
    else
        pier_log(PIER_LOG_INFO, "tls: no kTLS in this kernel (setsockopt TCP_ULP \"tls\": %s): files over TLS are "
                                "read and encrypted in user space", pier_strerror(ktls));
    return 0;
}

int pier_cli_tls_client(const char *cmd, int tls, const char *cafile, int insecure, pier_tls_ctx_t **out) {
    *out = NULL;
    if (!tls && (cafile || insecure)) {
        return pier_cli_usage_error(cmd, "--cafile and --insecure need --tls");
    }
    if (!tls)
        return 0;
    pier_tls_opts_t o = {.ca_file = cafile, .insecure = insecure};
    int err = pier_tls_ctx_new_client(out, &o);
    if (err < 0) {
        fprintf(stderr, "pier %s: cannot set up TLS: %s\n", cmd,
                err == -ENOTSUP ? "this pier was built without TLS" : pier_strerror(err));
        return 1;
    }
    return 0;
}

int pier_cli_settle(pier_group_t *g, int (*done)(void *arg), void *arg, int max_ms) {
    for (int waited = 0; !done(arg) && waited < max_ms; waited += 5)
        for (unsigned i = 0; i < pier_group_size(g); i++)
            pier_loop_run_once(pier_group_loop(g, i), i == 0 ? 5 : 0);
    return done(arg);
}

/* ---- the service runner ---- */

typedef struct runner_s {
    pier_group_t *group;
    pier_service_run_t *runs;
    int n;
    uint64_t drain_ms, drain_start;
    int draining;
    pier_timer_t poll;
} runner_t;

static unsigned still_active(runner_t *r) {
    unsigned open = 0;
    for (int i = 0; i < r->n; i++)
        if (r->runs[i].state && r->runs[i].svc->active)
            open += r->runs[i].svc->active(r->runs[i].state);
    return open;
}

/* Connections only, for the log: a service's active() may count other work too. */
static unsigned still_open(runner_t *r) {
    unsigned open = 0;
    for (int i = 0; i < r->n; i++) {
        const pier_service_t *svc = r->runs[i].svc;
        if (r->runs[i].state && (svc->conns || svc->active))
            open += (svc->conns ? svc->conns : svc->active)(r->runs[i].state);
    }
    return open;
}

static void poll_cb(pier_timer_t *t) {
    runner_t *r = t->data;
    pier_loop_t *loop = pier_group_loop(r->group, 0);
    unsigned open = still_active(r);
    if (open == 0 || pier_loop_now(loop) - r->drain_start >= r->drain_ms) {
        if (open)
            pier_log(PIER_LOG_WARN, "stopping with %u connections still open after %llu ms", still_open(r),
                     (unsigned long long)r->drain_ms);
        pier_timer_stop(t);
        pier_group_stop(r->group);
    }
}

static void start_drain(runner_t *r, const char *why) {
    r->draining = 1;
    r->drain_start = pier_loop_now(pier_group_loop(r->group, 0));
    pier_log(PIER_LOG_INFO, "%s: no longer accepting; flushing open connections", why);
    for (int i = 0; i < r->n; i++)
        if (r->runs[i].state)
            r->runs[i].svc->drain(r->runs[i].state);
    pier_timer_start(&r->poll, 20, 20);
}

static void on_signal(pier_loop_t *loop, int signo, void *arg) {
    runner_t *r = arg;
    if (r->draining) {
        pier_log(PIER_LOG_WARN, "second %s: stopping now", signo == SIGINT ? "SIGINT" : "SIGTERM");
        pier_group_stop(r->group);
        return;
    }
    start_drain(r, signo == SIGINT ? "SIGINT" : "SIGTERM");
}

/* The new process listens on our sockets: this one drains as for SIGTERM and exits 0.
 * Closing our copies of the sockets loses nothing, since the new process holds them. */
static void upgrade_done(void *arg, int ok) {
    runner_t *r = arg;
    if (ok && !r->draining)
        start_drain(r, "SIGUSR2");
}

static void on_usr2(pier_loop_t *loop, int signo, void *arg) {
    enum { MAX = 256 };
    runner_t *r = arg;
    int fds[MAX];
    unsigned n = 0;
    if (r->draining) {
        pier_log(PIER_LOG_WARN, "SIGUSR2 ignored: this process is already stopping");
        return;
    }
    /* n counts them all, so that pier_upgrade_start refuses rather than hands on a part */
    for (int i = 0; i < r->n; i++)
        if (r->runs[i].state)
            n += pier_server_listen_fds(r->runs[i].svc->net(r->runs[i].state), fds + (n < MAX ? n : MAX),
                                        n < MAX ? MAX - n : 0);
    if (pier_upgrade_start(loop, fds, n, upgrade_done, r) == -EBUSY)
        pier_log(PIER_LOG_WARN, "SIGUSR2 ignored: an upgrade is already under way");
}

static int run_freed(void *arg) {
    pier_service_run_t *run = arg;
    return run->svc->freed(run->state);
}

/* What became of the PROXY headers, once at exit (nothing when the server took none). */
static void proxy_report(const char *name, const pier_server_t *net) {
    pier_proxy_stats_t s;
    pier_server_proxy_stats(net, &s);
    if (s.ok + s.local + s.bad + s.timeout + s.refused + s.aborted)
        pier_log(PIER_LOG_INFO, "%s: PROXY headers: %llu ok, %llu local; closed: %llu bad, %llu timeout, "
                 "%llu refused, %llu aborted", name, (unsigned long long)s.ok, (unsigned long long)s.local,
                 (unsigned long long)s.bad, (unsigned long long)s.timeout, (unsigned long long)s.refused,
                 (unsigned long long)s.aborted);
}

/* Resets left over after the drain are finished (their on_close runs) before the
 * server is freed, so every loop can be freed after it. */
static void stop_and_free(pier_group_t *g, pier_service_run_t *run) {
    const pier_service_t *svc = run->svc;
    pier_server_t *net = svc->net(run->state);
    proxy_report(svc->name, net);
    pier_server_stop(net);
    pier_server_abort_all(net);
    if (!pier_cli_settle(g, run_freed, run, 5000))
        pier_log(PIER_LOG_ERROR, "%s: server could not be freed", svc->name);
    svc->finish(run->state);
    run->state = NULL;
}

int pier_cli_run(unsigned threads, pier_service_run_t *runs, int n, uint64_t drain_ms) {
    runner_t r = {.runs = runs, .n = n, .drain_ms = drain_ms};
    int err = pier_group_new(&r.group, threads);
    if (err < 0) {
        fprintf(stderr, "pier: cannot create %u loops: %s\n", threads, pier_strerror(err));
        return 1;
    }
    pier_loop_t *loop0 = pier_group_loop(r.group, 0);
    /* signals are blocked here, before the loop threads start, so they inherit the mask
     * and only loop 0's signalfd ever sees SIGINT/SIGTERM */
    if ((err = pier_loop_signal(loop0, SIGINT, on_signal, &r)) < 0 ||
        (err = pier_loop_signal(loop0, SIGTERM, on_signal, &r)) < 0 ||
        (err = pier_loop_signal(loop0, SIGUSR2, on_usr2, &r)) < 0 ||
        (nreloadable && ((err = pier_loop_signal(loop0, SIGHUP, on_hup, NULL)) < 0 ||
                         (err = pier_loop_signal(loop0, SIGUSR1, on_usr1, NULL)) < 0))) {
        /* without them the servers could not be stopped (or reloaded) as documented */
        fprintf(stderr, "pier: cannot watch SIGINT, SIGTERM, SIGUSR2 and SIGHUP: %s\n", pier_strerror(err));
        pier_loop_signal_stop(loop0, SIGINT);
        pier_loop_signal_stop(loop0, SIGTERM);
        pier_loop_signal_stop(loop0, SIGUSR2);
        pier_loop_signal_stop(loop0, SIGHUP);
        nreloadable = 0;
        pier_group_free(r.group);
        return 1;
    }
    pier_timer_init(loop0, &r.poll, poll_cb, &r);
    int code = 0;
    int started = 0;
    for (; started < n; started++) {
        err = runs[started].svc->start(r.group, runs[started].cfg, &runs[started].state);
        if (err < 0) {
            code = 1;
            break;
        }
    }
    if (code == 0 && pier_upgrade_ready() < 0)
        code = 1;
    if (code == 0 && pier_group_run(r.group) < 0)
        code = 1; /* a loop thread could not start (logged): the services did not run */
    else if (code != 0)
        for (int i = 0; i < started; i++)
            runs[i].svc->drain(runs[i].state);
    pier_timer_stop(&r.poll);
    pier_upgrade_finish();
    pier_loop_signal_stop(loop0, SIGINT);
    pier_loop_signal_stop(loop0, SIGTERM);
    pier_loop_signal_stop(loop0, SIGUSR2);
    if (nreloadable) {
        pier_loop_signal_stop(loop0, SIGHUP);
        pier_loop_signal_stop(loop0, SIGUSR1);
    }
    nreloadable = 0; /* the contexts are their commands' to free after this returns */
    /* connections still open after the drain deadline are reset, so every loop can be
     * freed; their on_close runs in pier_group_free's last iterations */
    for (int i = 0; i < started; i++)
        stop_and_free(r.group, &runs[i]);
    err = pier_group_free(r.group);
    if (err < 0) {
        pier_log(PIER_LOG_ERROR, "loops still have live handles at exit: %s", pier_strerror(err));
        return 1;
    }
    if (code == 0)
        pier_log(PIER_LOG_INFO, "stopped cleanly");
    return code;
}
