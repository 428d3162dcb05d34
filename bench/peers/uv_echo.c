/* libuv echo server for bench/echo.
 *
 * One thread, one uv loop. Each connection reads into its own buffer and tries
 * to write the data straight back with uv_try_write. Whatever the socket does
 * not take is copied into a write request and queued with uv_write; reading
 * stops until that write completes, so a peer that does not read cannot make
 * the server buffer without bound.
 *
 * Usage: uv_echo PORT   (listens on 127.0.0.1)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define READ_SIZE (64 * 1024)

struct conn {
    uv_tcp_t tcp; /* first member: the handle pointer is the conn pointer */
    char buf[READ_SIZE];
};

struct pending_write {
    uv_write_t req;
    struct conn *c;
    char data[];
};

static uv_loop_t *loop;

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out)
{
    (void)hint;
    struct conn *c = (struct conn *)h;
    *out = uv_buf_init(c->buf, sizeof c->buf);
}

static void on_closed(uv_handle_t *h)
{
    free(h);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void on_written(uv_write_t *req, int status)
{
    struct pending_write *pw = (struct pending_write *)req;
    struct conn *c = pw->c;
    free(pw);
    if (status < 0) {
        if (!uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)s;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_closed);
        return;
    }
    if (n == 0)
        return;
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)n);
    int w = uv_try_write(s, &b, 1);
    if (w == UV_EAGAIN)
        w = 0;
    if (w < 0) {
        uv_close((uv_handle_t *)s, on_closed);
        return;
    }
    if (w == n)
        return;
    /* The socket is full: queue the rest and pause reading until it is written. */
    size_t rest = (size_t)n - (size_t)w;
    struct pending_write *pw = malloc(sizeof *pw + rest);
    if (!pw) {
        uv_close((uv_handle_t *)s, on_closed);
        return;
    }
    pw->c = c;
    memcpy(pw->data, buf->base + w, rest);
    uv_buf_t rb = uv_buf_init(pw->data, (unsigned)rest);
    uv_read_stop(s);
    if (uv_write(&pw->req, s, &rb, 1, on_written) < 0) {
        free(pw);
        uv_close((uv_handle_t *)s, on_closed);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    struct conn *c = malloc(sizeof *c);
    if (!c)
        return;
    uv_tcp_init(loop, &c->tcp);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* libuv writes with write(2): a reset peer would raise it */
    loop = uv_default_loop();
    uv_tcp_t server;
    uv_tcp_init(loop, &server);
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&server, 4096, on_connection);
    if (rc != 0) {
        fprintf(stderr, "uv_echo: %s\n", uv_strerror(rc));
        return 1;
    }
    fprintf(stderr, "uv_echo: listening on 127.0.0.1:%s\n", argv[1]);
    return uv_run(loop, UV_RUN_DEFAULT);
}
