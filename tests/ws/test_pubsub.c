/* Pub/sub through the public API, on a group of two loops running on their own threads,
 * with raw clients: a publish from another thread reaches every subscriber on both
 * loops exactly once and in order, unsubscribing stops it, a thousand topics on one
 * connection each get their own messages, slow subscribers are dropped or closed by the
 * endpoint's policy, subscribers that close while publishes are in flight (run under
 * ASan) leave nothing behind, and with permessage-deflate every subscriber gets the
 * message in the form it agreed to: plain, compressed alone (the same bytes for every
 * subscriber with the same window), or compressed with its own context.
 * pier-test: threads */
#include "support.h"
#include "raw_ws.h"
#include "threaded_server.h"
#include "ws/ws_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pier/ws.h>

#define LOOPS 2

static pier_group_t *group;
static pier_http_server_t *srv;
static pthread_t runner;
static uint16_t port;

/* what the server side saw, written on the loops */
static int opened, closed, closed_1008, on_loop[LOOPS];
static uint64_t dropped;

static int load(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static void bump(int *p) { __atomic_fetch_add(p, 1, __ATOMIC_SEQ_CST); }

static void on_open(pier_ws_t *ws) {
    assert_int_equal(pier_ws_subscribe(ws, "news"), 0);
    assert_int_equal(pier_ws_subscribe(ws, "news"), 0); /* still one subscription */
    for (int i = 0; i < LOOPS; i++)
        if (pier_conn_loop(pier_ws_conn(ws)) == pier_group_loop(group, (unsigned)i))
            bump(&on_loop[i]);
    bump(&opened);
}

/* "sub:T" and "unsub:T" change the subscriptions and are answered "ok"; "bye" asks the
 * server to close. */
static void on_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    char cmd[64];
    snprintf(cmd, sizeof cmd, "%.*s", (int)len, (const char *)data);
    int rc = -1;
    if (!strncmp(cmd, "sub:", 4))
        rc = pier_ws_subscribe(ws, cmd + 4);
    else if (!strncmp(cmd, "unsub:", 6))
        rc = pier_ws_unsubscribe(ws, cmd + 6);
    else if (!strcmp(cmd, "bye"))
        pier_ws_close(ws, PIER_WS_NORMAL, NULL);
    if (rc == 0)
        pier_ws_send(ws, PIER_WS_TEXT, "ok", 2);
}

static void on_close(pier_ws_t *ws, int code, const char *reason) {
    __atomic_fetch_add(&dropped, pier_ws_dropped(ws), __ATOMIC_SEQ_CST);
    if (code == PIER_WS_POLICY)
        bump(&closed_1008);
    bump(&closed);
}

static const pier_ws_cbs_t cbs = {.on_open = on_open, .on_message = on_message, .on_close = on_close};

static int setup(void **state) {
    (void)state;
    opened = closed = closed_1008 = 0;
    dropped = 0;
    memset(on_loop, 0, sizeof on_loop);
    threaded_server_new(&srv, &group, LOOPS);
    assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_TEXT, "x", 1), -ENOENT);
    assert_int_equal(pier_http_ws(srv, "/ws", &cbs, NULL), 0);
    pier_ws_opts_t strict = {.out_high = 65536, .slow_policy = PIER_WS_SLOW_CLOSE};
    assert_int_equal(pier_http_ws_opts(srv, "/ws-strict", &cbs, NULL, &strict), 0);
    pier_ws_opts_t lax = {.out_high = 65536, .slow_policy = PIER_WS_SLOW_DROP};
    assert_int_equal(pier_http_ws_opts(srv, "/ws-lax", &cbs, NULL, &lax), 0);
    pier_ws_opts_t z = {.deflate = 1}, zkeep = {.deflate = 1, .deflate_takeover = 1};
    assert_int_equal(pier_http_ws_opts(srv, "/ws-z", &cbs, NULL, &z), 0);
    assert_int_equal(pier_http_ws_opts(srv, "/ws-zkeep", &cbs, NULL, &zkeep), 0);
    port = threaded_server_start(srv, group, &runner);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    threaded_server_free(srv, group, runner);
    return 0;
}

/* ---- clients ---- */

/* A subscriber on path offering extensions (or NULL), once the server has run its
 * on_open. */
static int subscriber_ext(const char *path, int rcvbuf, const char *extensions) {
    int before = load(&opened);
    int fd = pier_test_connect_rcvbuf(port, rcvbuf);
    assert_true(fd >= 0);
    /* a frame's header and payload are two writes: without this, each waits for an ACK */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    raw_ws_request_ext(fd, path, NULL, extensions);
    raw_ws_read_101(fd);
    threaded_wait_for(&opened, before + 1);
    return fd;
}

static int subscriber(const char *path, int rcvbuf) { return subscriber_ext(path, rcvbuf, NULL); }

static size_t recv_text(int fd, char *buf, size_t cap) {
    int op;
    size_t n = raw_ws_recv(fd, &op, buf, cap - 1, pier_test_read_full);
    assert_int_equal(op, PIER_WS_TEXT);
    buf[n] = '\0';
    return n;
}

static void expect_text(int fd, const char *want) {
    char buf[256];
    recv_text(fd, buf, sizeof buf);
    assert_string_equal(buf, want);
}

/* ---- delivery ---- */

#define MAX_SUBS 64
#define MESSAGES 300

typedef struct {
    const char *topic;
    int n, errors;
} publisher_t;

static void *publisher(void *arg) {
    publisher_t *p = arg;
    char msg[32];
    for (int i = 0; i < p->n; i++) {
        int len = snprintf(msg, sizeof msg, "%d", i);
        p->errors += pier_ws_publish(srv, p->topic, PIER_WS_TEXT, msg, (size_t)len) != 0;
        /* a topic nobody has is no error, and must reach nobody */
        p->errors += pier_ws_publish(srv, "nobody", PIER_WS_TEXT, "no", 2) != 0;
    }
    return NULL;
}

static void publish_reaches_every_subscriber_once_in_order(void **state) {
    (void)state;
    int fds[MAX_SUBS], n = 0;
    /* the kernel spreads connections over the loops by their ports: connect until both
     * loops have subscribers (at least 4 in all) */
    while (n < MAX_SUBS && (n < 4 || !load(&on_loop[0]) || !load(&on_loop[1])))
        fds[n++] = subscriber("/ws", 0);
    assert_true(load(&on_loop[0]) > 0 && load(&on_loop[1]) > 0);
    pthread_t th;
    publisher_t p = {.topic = "news", .n = MESSAGES};
    assert_int_equal(pthread_create(&th, NULL, publisher, &p), 0);
    pthread_join(th, NULL);
    assert_int_equal(p.errors, 0);
    assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_TEXT, "end", 3), 0);
    for (int i = 0; i < n; i++) {
        char buf[64], want[32];
        for (int m = 0; m < MESSAGES; m++) {
            snprintf(want, sizeof want, "%d", m);
            recv_text(fds[i], buf, sizeof buf);
            assert_string_equal(buf, want);
        }
        expect_text(fds[i], "end"); /* nothing twice, nothing of another topic */
        close(fds[i]);
    }
    threaded_wait_for(&closed, n);
}

static void unsubscribe_stops_delivery(void **state) {
    (void)state;
    int a = subscriber("/ws", 0), b = subscriber("/ws-lax", 0);
    raw_ws_send(a, PIER_WS_TEXT, "sub:other", 9);
    expect_text(a, "ok");
    raw_ws_send(a, PIER_WS_TEXT, "unsub:news", 10);
    expect_text(a, "ok");
    raw_ws_send(a, PIER_WS_TEXT, "unsub:news", 10); /* -ENOENT: no answer */
    /* one thread's publishes reach each loop in order: "other" after "news" */
    assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_TEXT, "n1", 2), 0);
    assert_int_equal(pier_ws_publish(srv, "other", PIER_WS_TEXT, "o1", 2), 0);
    expect_text(a, "o1");
    expect_text(b, "n1"); /* topics span the endpoints */
    close(a);
    close(b);
    threaded_wait_for(&closed, 2);
}

static void a_thousand_topics(void **state) {
    (void)state;
    int fd = subscriber("/ws", 0);
    char cmd[32], want[32];
    for (int i = 0; i < 1000; i++) { /* the table grows a few times under the connection */
        int n = snprintf(cmd, sizeof cmd, "sub:t%d", i);
        raw_ws_send(fd, PIER_WS_TEXT, cmd, (size_t)n);
        expect_text(fd, "ok");
    }
    for (int i = 0; i < 1000; i += 7) {
        snprintf(cmd, sizeof cmd, "t%d", i);
        snprintf(want, sizeof want, "to t%d", i);
        assert_int_equal(pier_ws_publish(srv, cmd, PIER_WS_TEXT, want, strlen(want)), 0);
        expect_text(fd, want);
    }
    for (int i = 0; i < 1000; i += 2) { /* half of them go, the other half still work */
        int n = snprintf(cmd, sizeof cmd, "unsub:t%d", i);
        raw_ws_send(fd, PIER_WS_TEXT, cmd, (size_t)n);
        expect_text(fd, "ok");
    }
    assert_int_equal(pier_ws_publish(srv, "t500", PIER_WS_TEXT, "gone", 4), 0);
    assert_int_equal(pier_ws_publish(srv, "t501", PIER_WS_TEXT, "kept", 4), 0);
    expect_text(fd, "kept");
    close(fd);
    threaded_wait_for(&closed, 1);
}

/* ---- permessage-deflate ---- */

/* The next frame of fd, inflated with rx if it came compressed; its opcode (with
 * PIER__WS_RSV1 if it was compressed) and payload into out. */
static size_t recv_message(int fd, int *op, char *out, size_t cap, pier__ws_pmd_t *rx, pier__ws_zloop_t **zl,
                           char *wire, size_t *wire_len) {
    size_t n = raw_ws_recv(fd, op, wire, cap, pier_test_read_full);
    *wire_len = n;
    if (!(*op & PIER__WS_RSV1)) {
        memcpy(out, wire, n);
        return n;
    }
    const uint8_t *p;
    assert_int_equal(pier__ws_inflate(zl, rx, (const uint8_t *)wire, n, cap, &p, &n), 0);
    memcpy(out, p, n);
    return n;
}

static void deflate_subscribers_get_their_form(void **state) {
    (void)state;
    if (!pier__ws_zlib)
        skip(); /* built without zlib: never negotiated */
    static const struct {
        const char *path, *offer;
        int compressed, bits, keep;
    } subs[] = {
        {"/ws", "permessage-deflate", 0, 15, 0},     /* an endpoint without it */
        {"/ws-z", NULL, 0, 15, 0},                   /* a client without it */
        {"/ws-z", "permessage-deflate", 1, 15, 0},
        {"/ws-z", "permessage-deflate; client_max_window_bits", 1, 15, 0},
        {"/ws-z", "permessage-deflate; server_max_window_bits=10", 1, 10, 0},
        {"/ws-zkeep", "permessage-deflate", 1, 15, 1}, /* its own context */
    };
    enum { N = sizeof subs / sizeof subs[0], SIZE = 12000 };
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = subscriber_ext(subs[i].path, 0, subs[i].offer);
    static char msg[3][SIZE], out[SIZE], wire[N][SIZE];
    size_t wire_len[N];
    for (int m = 0; m < 3; m++) {
        for (int i = 0; i < SIZE; i++)
            msg[m][i] = "abcdefgh pier "[(i * (m + 1)) % 14];
        assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_TEXT, msg[m], SIZE), 0);
    }
    assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_TEXT, "small", 5), 0);
    for (int i = 0; i < N; i++) {
        pier__ws_pmd_t rx = {.rx_bits = 15, .rx_reset = !subs[i].keep};
        pier__ws_zloop_t *zl = NULL;
        for (int m = 0; m < 3; m++) {
            int op;
            size_t n = recv_message(fds[i], &op, out, sizeof out, &rx, &zl, wire[i], &wire_len[i]);
            assert_int_equal(op, PIER_WS_TEXT | (subs[i].compressed ? PIER__WS_RSV1 : 0));
            assert_int_equal(n, SIZE);
            assert_memory_equal(out, msg[m], SIZE);
            if (subs[i].compressed)
                assert_true(wire_len[i] < SIZE / 4);
        }
        int op;
        static char last[SIZE];
        size_t last_len, n = recv_message(fds[i], &op, out, sizeof out, &rx, &zl, last, &last_len);
        assert_true(op == PIER_WS_TEXT && n == 5 && !memcmp(out, "small", 5)); /* too small to pay */
        pier__ws_pmd_free(&rx);
        pier__ws_zloop_free(zl);
    }
    /* the same window and no context: the same compressed frame */
    assert_int_equal(wire_len[2], wire_len[3]);
    assert_memory_equal(wire[2], wire[3], wire_len[2]);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    threaded_wait_for(&closed, N);
}

static void a_published_message_is_compressed_once(void **state) {
    (void)state;
    if (!pier__ws_zlib)
        skip();
    enum { SUBS = 20, MESSAGES_Z = 3, SIZE = 12000 };
    int fds[SUBS];
    for (int i = 0; i < SUBS; i++)
        fds[i] = subscriber_ext("/ws-z", 0, "permessage-deflate");
    unsigned long before = atomic_load(&pier__ws_deflate_count);
    static char msg[SIZE], out[SIZE], wire[SIZE];
    for (int i = 0; i < SIZE; i++)
        msg[i] = "one for all "[i % 12];
    for (int m = 0; m < MESSAGES_Z; m++)
        assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_BINARY, msg, SIZE), 0);
    pier__ws_pmd_t rx = {.rx_bits = 15, .rx_reset = 1};
    pier__ws_zloop_t *zl = NULL;
    for (int i = 0; i < SUBS; i++) {
        for (int m = 0; m < MESSAGES_Z; m++) {
            int op;
            size_t wl, n = recv_message(fds[i], &op, out, sizeof out, &rx, &zl, wire, &wl);
            assert_int_equal(op, PIER_WS_BINARY | PIER__WS_RSV1);
            assert_true(n == SIZE && !memcmp(out, msg, SIZE));
        }
        close(fds[i]);
    }
    /* once per message, or once per loop when two loops race for it; never per subscriber */
    unsigned long done = atomic_load(&pier__ws_deflate_count) - before;
    assert_true(done >= MESSAGES_Z && done <= MESSAGES_Z * LOOPS);
    pier__ws_pmd_free(&rx);
    pier__ws_zloop_free(zl);
    threaded_wait_for(&closed, SUBS);
}

/* ---- slow subscribers ---- */

#define BIG (64 * 1024)

/* Publishes far more than the kernel's buffers and out_high hold to a subscriber that
 * never reads. */
static void flood_news(void) {
    char *big = calloc(1, BIG);
    for (int i = 0; i < 400; i++)
        assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_BINARY, big, BIG), 0);
    free(big);
}

static void slow_subscriber_is_closed_with_1008(void **state) {
    (void)state;
    int fd = subscriber("/ws-strict", 4096);
    flood_news();
    /* what was queued before the policy struck, then the close frame that says why */
    static char buf[BIG];
    int op;
    size_t n;
    while ((n = raw_ws_recv(fd, &op, buf, sizeof buf, pier_test_read_full)), op == PIER_WS_BINARY)
        assert_int_equal(n, BIG);
    assert_int_equal(op, PIER_WS_CLOSE);
    assert_true(n == 2 && ((unsigned char)buf[0] << 8 | (unsigned char)buf[1]) == 1008);
    close(fd);
    threaded_wait_for(&closed_1008, 1);
}

static void slow_subscriber_misses_messages(void **state) {
    (void)state;
    int fd = subscriber("/ws-lax", 4096);
    flood_news();
    close(fd);
    threaded_wait_for(&closed, 1);
    assert_true(__atomic_load_n(&dropped, __ATOMIC_SEQ_CST) > 0);
    assert_int_equal(closed_1008, 0);
}

/* ---- closing while publishes are in flight ---- */

static void subscribers_closing_during_publishes(void **state) {
    (void)state;
    enum { SUBS = 40 };
    int fds[SUBS];
    for (int i = 0; i < SUBS; i++)
        fds[i] = subscriber(i % 2 ? "/ws" : "/ws-lax", 0);
    pthread_t th;
    publisher_t p = {.topic = "news", .n = 3000};
    assert_int_equal(pthread_create(&th, NULL, publisher, &p), 0);
    for (int i = 0; i < SUBS; i++) {
        if (i % 3 == 0)
            raw_ws_send(fds[i], PIER_WS_TEXT, "bye", 3); /* the server closes */
        else if (i % 3 == 1)
            shutdown(fds[i], SHUT_RDWR);
        close(fds[i]);
        usleep(200);
    }
    pthread_join(th, NULL);
    assert_int_equal(p.errors, 0);
    threaded_wait_for(&closed, SUBS);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(publish_reaches_every_subscriber_once_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(unsubscribe_stops_delivery, setup, teardown),
        cmocka_unit_test_setup_teardown(a_thousand_topics, setup, teardown),
        cmocka_unit_test_setup_teardown(deflate_subscribers_get_their_form, setup, teardown),
        cmocka_unit_test_setup_teardown(a_published_message_is_compressed_once, setup, teardown),
        cmocka_unit_test_setup_teardown(slow_subscriber_is_closed_with_1008, setup, teardown),
        cmocka_unit_test_setup_teardown(slow_subscriber_misses_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(subscribers_closing_during_publishes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
