/* A message server embedded in a program: frames [id u16][len u16][body], one handler
 * that answers id 10 with the body upper-cased, run on 2 worker threads, a 5 s heartbeat,
 * and a clean drain on Ctrl-C.
 *
 *   build/examples/msg_server 10090
 *   printf '\x00\x0a\x00\x05hello' | nc -q1 127.0.0.1 10090 | xxd   # -> 00 0a 00 05 HELLO
 */
#include <pier/msg.h>

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#define ID_UPPER 10

/* Runs on a worker thread: it may take its time without holding up the loop. m and its
 * body are valid only during the call; the reply is copied. */
static void on_upper(const pier_msg_t *m, void *ud) {
    (void)ud;
    char out[PIER_MSG_MAX_BODY];
    for (uint32_t i = 0; i < m->len; i++)
        out[i] = (char)toupper((unsigned char)m->body[i]);
    pier_msg_reply(m, ID_UPPER, out, m->len); /* -ENOTCONN if the client has gone: fine */
}

static void on_signal(pier_loop_t *loop, int signo, void *arg) {
    (void)loop;
    (void)signo;
    pier_msg_server_shutdown(arg); /* stop accepting, finish, flush, then stop the group */
}

int main(int argc, char **argv) {
    pier_msg_server_opts_t o = {
        .port = (uint16_t)(argc > 1 ? atoi(argv[1]) : 10090),
        .workers = 2,
        .heartbeat_ms = 5000,
    };
    pier_group_t *g;
    pier_msg_server_t *srv;
    int err = pier_group_new(&g, 1);
    if (err == 0 && (err = pier_msg_server_new(&srv, g, &o)) < 0)
        pier_group_free(g);
    if (err < 0) {
        fprintf(stderr, "msg_server: %s\n", pier_strerror(err));
        return 1;
    }
    pier_loop_t *loop0 = pier_group_loop(g, 0);
    pier_loop_signal(loop0, SIGINT, on_signal, srv);
    pier_loop_signal(loop0, SIGTERM, on_signal, srv);
    pier_msg_on(srv, ID_UPPER, on_upper, NULL);
    pier_msg_server_start(srv);
    printf("msg_server: listening on 127.0.0.1:%u\n", pier_msg_server_port(srv));
    fflush(stdout);
    pier_group_run(g); /* returns once the drain is done */

    pier_msg_stats_t st;
    pier_msg_server_stats(srv, &st);
    printf("msg_server: %llu messages, %llu handled, %llu unknown ids\n", (unsigned long long)st.msgs,
           (unsigned long long)st.handled, (unsigned long long)st.unknown);
    pier_loop_signal_stop(loop0, SIGINT);
    pier_loop_signal_stop(loop0, SIGTERM);
    if ((err = pier_msg_server_free(srv)) < 0 || (err = pier_group_free(g)) < 0) {
        fprintf(stderr, "msg_server: not everything closed: %s\n", pier_strerror(err));
        return 1;
    }
    return 0;
}
