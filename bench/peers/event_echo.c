/* libevent echo server for bench/echo, built on bufferevents.
 *
 * One thread, one event base, an evconnlistener for accepts. On read the whole
 * input buffer is moved to the output buffer (no copy: evbuffer chains move);
 * libevent writes it when the socket is writable and keeps what the socket does
 * not take. When the output grows past OUT_HIGH, reading is disabled until the
 * output drains completely (write low watermark 0 fires the write callback on
 * empty), so a peer that does not read cannot grow the server's memory.
 *
 * Note for reading the results: libevent 2.1 (Debian 12) reads at most 4 KiB per
 * readv into an evbuffer whatever the bufferevent's max single read is (a setting
 * for it, evbuffer_set_max_read, only arrived in 2.2), so a 16 KiB message takes
 * four trips through the loop. That is stock libevent 2.1 behaviour and is left as is.
 *
 * Usage: event_echo PORT   (listens on 127.0.0.1)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define OUT_HIGH (256 * 1024)

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add_buffer(out, bufferevent_get_input(bev));
    if (evbuffer_get_length(out) > OUT_HIGH)
        bufferevent_disable(bev, EV_READ);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    (void)arg;
    /* Called when the output is empty (write low watermark 0). */
    if (!(bufferevent_get_enabled(bev) & EV_READ))
        bufferevent_enable(bev, EV_READ);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        bufferevent_free(bev);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)sa;
    (void)salen;
    (void)arg;
    struct event_base *base = evconnlistener_get_base(l);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        return;
    }
    bufferevent_setcb(bev, on_read, on_write, on_event, NULL);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct event_config *cfg = event_config_new();
    event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
    struct event_base *base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!base) {
        fprintf(stderr, "event_echo: cannot create event base\n");
        return 1;
    }
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)atoi(argv[1]));
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *l = evconnlistener_new_bind(
        base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 4096,
        (struct sockaddr *)&sin, sizeof sin);
    if (!l) {
        perror("event_echo: bind/listen");
        return 1;
    }
    fprintf(stderr, "event_echo: listening on 127.0.0.1:%s\n", argv[1]);
    event_base_dispatch(base);
    evconnlistener_free(l);
    event_base_free(base);
    return 0;
}
