/* pier serve: what `make run` starts — every pier server on its default port, sharing
 * one loop group. Each server is a service (cli.h); a new server adds one line here. */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static const char serve_help[] =
    "usage: pier serve [--threads N]\n"
    "\n"
    "Starts the demo: every pier server on its default port on 127.0.0.1\n"
    "(echo on 10088, HTTP on 8888, messages on 10089). Ctrl-C stops it cleanly.\n"
    "\n"
    "  --threads N   event loops, one thread each (default 1; 0: one per CPU)\n";

int pier_cmd_serve(int argc, char **argv) {
    uint64_t threads = 1;
    static const struct option longopts[] = {
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'H'}, {0, 0, 0, 0}};
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 't':
            if (pier_cli_u64("serve", "--threads", optarg, 0, 256, &threads) < 0)
                return 2;
            break;
        case 'H': fputs(serve_help, stdout); return 0;
        default: return pier_cli_usage_error("serve", "unknown or incomplete flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return pier_cli_usage_error("serve", "unexpected argument '%s'", argv[optind]);
    pier_service_run_t runs[] = {
        {.svc = &pier_echo_service},
        {.svc = &pier_http_service},
        {.svc = &pier_msg_service},
    };
    return pier_cli_run((unsigned)threads, runs, (int)(sizeof runs / sizeof runs[0]), 10000);
}
