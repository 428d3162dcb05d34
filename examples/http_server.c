/* A complete program embedding pier's HTTP server.
 *
 *   build/examples/http_server [PORT] [DIR]
 *   curl localhost:8080/hello/world?greeting=Hi
 *   curl localhost:8080/slow            (answered 200 ms later by a worker thread)
 *   curl localhost:8080/count?to=5      (a streamed, chunked response)
 *   curl localhost:8080/files/          (DIR, default ".")
 *
 * Ctrl-C stops it: the server stops accepting, open connections close, and everything
 * is freed in the reverse order of creation (whoever creates a thing frees it).
 */
#include <pier/http.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* GET /hello/:name?greeting=... : route parameters and the query string */
static void hello(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    (void)ud;
    size_t len;
    const char *name = pier_http_req_param(req, "name", &len);
    char greeting[64];
    if (pier_http_req_query(req, "greeting", greeting, sizeof greeting) < 0)
        snprintf(greeting, sizeof greeting, "Hello");
    char body[256];
    int n = snprintf(body, sizeof body, "%s, %.*s!\n", greeting, (int)len, name);
    pier_http_res_send(res, 200, "text/plain; charset=utf-8", body, (size_t)n);
}

/* GET /slow : the handler hands the response to a thread, which finishes it later through
 * the handle. If the client has gone by then, the send just says -ENOTCONN. */
static void *slow_worker(void *arg) {
    pier_http_later_t *later = arg;
    usleep(200 * 1000);
    static const char msg[] = "finished by a worker thread\n";
    int err = pier_http_later_send(later, 200, "text/plain", msg, sizeof msg - 1);
    if (err < 0)
        fprintf(stderr, "slow: client gone (%s)\n", pier_strerror(err));
    return NULL;
}

static void slow(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    (void)req, (void)ud;
    pier_http_later_t *later = pier_http_res_later(res);
    pthread_t t;
    if (!later)
        return; /* out of memory: pier answers 500 */
    if (pthread_create(&t, NULL, slow_worker, later) != 0) {
        pier_http_later_send(later, 503, "text/plain", "busy\n", 5);
        return;
    }
    pthread_detach(t);
}

/* GET /count?to=N : a body streamed in chunks */
static void count(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    (void)ud;
    char to[16];
    long n = pier_http_req_query(req, "to", to, sizeof to) > 0 ? strtol(to, NULL, 10) : 10;
    if (n < 0 || n > 100000) {
        pier_http_res_send(res, 400, "text/plain", "to: 0..100000\n", 14);
        return;
    }
    pier_http_res_begin(res, 200, "text/plain");
    for (long i = 1; i <= n; i++) {
        char line[32];
        int len = snprintf(line, sizeof line, "%ld\n", i);
        pier_http_res_write(res, line, (size_t)len);
    }
    pier_http_res_end(res);
}

static pier_group_t *group;

static void on_signal(pier_loop_t *loop, int signo, void *arg) {
    (void)loop, (void)signo;
    pier_http_server_stop(arg);
    pier_group_stop(group);
}

int main(int argc, char **argv) {
    uint16_t port = argc > 1 ? (uint16_t)atoi(argv[1]) : 8080;
    const char *dir = argc > 2 ? argv[2] : ".";
    pier_http_server_t *srv = NULL;
    int err = pier_group_new(&group, 2);
    if (err < 0) {
        fprintf(stderr, "http_server: %s\n", pier_strerror(err));
        return 1;
    }
    pier_http_opts_t opts = {.host = "127.0.0.1", .port = port, .max_body = 64 * 1024};
    err = pier_http_server_new(&srv, group, &opts);
    if (err < 0) {
        fprintf(stderr, "http_server: cannot listen on 127.0.0.1:%u: %s\n", port, pier_strerror(err));
        pier_group_free(group);
        return 1;
    }
    int rc = 0;
    rc = rc ? rc : pier_http_route(srv, PIER_HTTP_GET, "/hello/:name", hello, NULL);
    rc = rc ? rc : pier_http_route(srv, PIER_HTTP_GET, "/slow", slow, NULL);
    rc = rc ? rc : pier_http_route(srv, PIER_HTTP_GET, "/count", count, NULL);
    rc = rc ? rc : pier_http_static(srv, "/files/", dir);
    if (rc < 0) {
        fprintf(stderr, "http_server: setting up routes: %s\n", pier_strerror(rc));
        pier_http_server_stop(srv);
    } else {
        /* signals are blocked here, before the group starts its threads, so they inherit it */
        pier_loop_signal(pier_group_loop(group, 0), SIGINT, on_signal, srv);
        pier_loop_signal(pier_group_loop(group, 0), SIGTERM, on_signal, srv);
        pier_http_server_start(srv);
        printf("http_server: http://127.0.0.1:%u/hello/world (Ctrl-C stops)\n", pier_http_server_port(srv));
        fflush(stdout);
        pier_group_run(group);
    }
    pier_loop_signal_stop(pier_group_loop(group, 0), SIGINT);
    pier_loop_signal_stop(pier_group_loop(group, 0), SIGTERM);
    /* let the closes finish, then free in reverse order */
    for (int i = 0; i < 1000 && pier_http_server_free(srv) == -EBUSY; i++)
        for (unsigned l = 0; l < pier_group_size(group); l++)
            pier_loop_run_once(pier_group_loop(group, l), l == 0 ? 5 : 0);
    err = pier_group_free(group);
    if (err < 0)
        fprintf(stderr, "http_server: group still busy: %s\n", pier_strerror(err));
    return rc < 0 || err < 0 ? 1 : 0;
}
