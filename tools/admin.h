/* The admin listener of the pier tool: a pier HTTP server of its own, on a loop and a
 * thread of its own, that serves the metrics of the public servers' loops.
 *
 *   GET /metrics      the Prometheus text format
 *   GET /healthz      200 "ok", or 503 "draining" once SIGTERM/SIGINT began the drain
 *   GET /status       a page with live charts (www/status.html), drawn from
 *   GET /status.json  the counters as JSON, read by the page once a second
 *   GET /             links to the above
 *
 * It is one more service for pier_cli_run (cli.h), listed after the public ones: its
 * drain only turns /healthz to 503, so a load balancer sees the drain while it runs; it
 * keeps serving until the runner frees it after the public servers. */
#ifndef PIER_TOOLS_ADMIN_H
#define PIER_TOOLS_ADMIN_H

#include <stdint.h>

#include "cli.h"

typedef struct pier_admin_cfg_s {
    char host[64];
    uint16_t port;
    int on;
    /* the public server's limits, so the admin port takes no more than it (0: pier's
     * defaults) */
    unsigned max_conns;
    uint64_t keepalive_ms, header_timeout_ms, body_timeout_ms;
} pier_admin_cfg_t;

#define PIER_ADMIN_DEFAULT "127.0.0.1:9901"

/* Parses --admin's HOST:PORT ([v6]:PORT too; "off" turns it off). 0, or 2 after one line
 * naming cmd. */
int pier_admin_parse(const char *cmd, const char *arg, pier_admin_cfg_t *out);

/* Appends the admin service to runs[*n] when cfg is on. */
void pier_admin_add(pier_service_run_t *runs, int *n, pier_admin_cfg_t *cfg);

extern const pier_service_t pier_admin_service;

#endif
