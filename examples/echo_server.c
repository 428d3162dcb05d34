/* A complete echo server on pier's C API: build/examples/echo_server [PORT] */
#include <errno.h>
#include <pier/pier.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static size_t on_read(pier_conn_t *c, const char *data, size_t len) {
    pier_conn_write(c, data, len);      /* queued; flushed in one writev per loop pass */
    return len;                         /* everything consumed */
}

static const pier_conn_cbs_t cbs = {.on_read = on_read};

static void on_accept(pier_server_t *srv, pier_conn_t *c) { pier_conn_set_cbs(c, &cbs, NULL); }

static void on_signal(pier_loop_t *loop, int signo, void *group) { pier_group_stop(group); }

int main(int argc, char **argv) {
    pier_group_t *group;
    pier_server_t *srv;
    pier_server_opts_t opts = {.port = argc > 1 ? (uint16_t)atoi(argv[1]) : 10088, .on_accept = on_accept};
    pier_group_new(&group, 1);                                   /* one loop, this thread */
    pier_loop_signal(pier_group_loop(group, 0), SIGINT, on_signal, group);
    int err = pier_server_new(&srv, group, &opts);
    if (err < 0) {
        fprintf(stderr, "echo_server: %s\n", pier_strerror(err));
        return 1;
    }
    pier_server_start(srv);
    pier_group_run(group);                                       /* until Ctrl-C */
    pier_server_stop(srv);
    pier_server_abort_all(srv);
    pier_loop_signal_stop(pier_group_loop(group, 0), SIGINT);
    while (pier_server_free(srv) == -EBUSY)                      /* let the closes finish */
        pier_loop_run_once(pier_group_loop(group, 0), 10);
    return pier_group_free(group) == 0 ? 0 : 1;                  /* the group is ours to free */
}
