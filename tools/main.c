/* pier: the command-line tool. One subcommand per server or client. */
#include "cli.h"
#include "upgrade.h"

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

typedef struct command_s {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} command_t;

static const command_t commands[] = {
    {"serve", pier_cmd_serve, "the demo: every pier server on its default port"},
    {"echo", pier_cmd_echo, "echo server (port 10088)"},
    {"echo-client", pier_cmd_echo_client, "echo client and ping-pong load generator"},
    {"http", pier_cmd_http, "HTTP/1.1 server with static files (port 8888)"},
    {"msg", pier_cmd_msg, "message server: frames, dispatch by id, heartbeat (port 10089)"},
    {"msg-client", pier_cmd_msg_client, "message client and checked load generator"},
    {"ws-client", pier_cmd_ws_client, "WebSocket client: stdin lines out, messages printed"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: pier COMMAND [FLAGS]   (pier COMMAND --help for its flags)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].what);
    fprintf(out, "\nserver commands (serve, echo, http, msg) also take --pid-file FILE, upgrade in place\n"
                 "on SIGUSR2 and use the listening sockets of systemd socket activation\n");
}

/* Servers hold one descriptor per connection: take the whole hard limit. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (!strcmp(argv[1], commands[i].name)) {
            raise_fd_limit();
            setvbuf(stdout, NULL, _IOLBF, 0);
            if ((argc = pier_upgrade_init(argc, argv)) < 0)
                return 2;
            return commands[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "pier: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
