/* Races between threads and closes, on a group of two loops on their own thread, with raw
 * clients; run under TSan (threads) and ASan (the whole suite):
 * - sends by id from several threads while the same connections are closed by their
 *   peers and by id from yet another thread: every send answers 0 or -ENOTCONN, every
 *   connection reaches on_close once, and ids stay dead afterwards;
 * - publishes from a thread while a server callback closes its own connection around a
 *   publish of its own, and while another thread closes subscribers by id and then aborts
 *   every connection: the subscribers left get every message whole, and nothing is
 *   touched after it is freed.
 * pier-test: threads */
#include "support.h"
#include "raw_ws.h"
#include "threaded_server.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pier/ws.h>

#define LOOPS 2
#define CONNS 32

static pier_group_t *group;
static pier_http_server_t *srv;
static pthread_t runner;
static uint16_t port;

/* written on the loops */
static int opened, closed, double_close;
static pier_id_t ids[CONNS + 1]; /* in the order the connections opened */
static int closed_by_id[CONNS];

static int load(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

static void on_open(pier_ws_t *ws) {
    int i = __atomic_fetch_add(&opened, 1, __ATOMIC_SEQ_CST);
    if (i <= CONNS)
        __atomic_store_n(&ids[i], pier_ws_id(ws), __ATOMIC_SEQ_CST);
    assert_int_equal(pier_ws_subscribe(ws, "news"), 0);
}

/* "pub-close": publish to the room, then close this connection; "close-pub": the other
 * way round. Either way the publish is on its way while the connection closes. */
static void on_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    (void)opcode;
    if (len == 9 && !memcmp(data, "pub-close", 9)) {
        assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_TEXT, "from a callback", 15), 0);
        assert_int_equal(pier_ws_close(ws, PIER_WS_NORMAL, NULL), 0);
    } else if (len == 9 && !memcmp(data, "close-pub", 9)) {
        assert_int_equal(pier_ws_close(ws, PIER_WS_NORMAL, NULL), 0);
        assert_int_equal(pier_ws_publish(srv, "news", PIER_WS_TEXT, "from a callback", 15), 0);
    }
}

static void on_close(pier_ws_t *ws, int code, const char *reason) {
    (void)code;
    (void)reason;
    if (pier_ws_data(ws))
        __atomic_fetch_add(&double_close, 1, __ATOMIC_SEQ_CST);
    pier_ws_set_data(ws, ws);
    __atomic_fetch_add(&closed, 1, __ATOMIC_SEQ_CST);
}

static const pier_ws_cbs_t cbs = {.on_open = on_open, .on_message = on_message, .on_close = on_close};

static int setup(void **state) {
    (void)state;
    opened = closed = double_close = 0;
    memset(ids, 0, sizeof ids);
    memset(closed_by_id, 0, sizeof closed_by_id);
    threaded_server_new(&srv, &group, LOOPS);
    /* small water marks, so that unread output meets the bound while the races run */
    pier_ws_opts_t wo = {.out_high = 16384, .out_low = 4096, .close_ms = 200};
    assert_int_equal(pier_http_ws_opts(srv, "/ws", &cbs, NULL, &wo), 0);
    port = threaded_server_start(srv, group, &runner);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    threaded_server_free(srv, group, runner);
    return 0;
}

/* A client past the handshake, once the server has run its on_open. */
static int client(void) {
    int before = load(&opened);
    int fd = pier_test_connect(port);
    assert_true(fd >= 0);
    raw_ws_request(fd, "/ws", NULL);
    raw_ws_read_101(fd);
    threaded_wait_for(&opened, before + 1);
    return fd;
}

static void open_clients(int *fds) {
    for (int i = 0; i < CONNS; i++)
        fds[i] = client();
}

/* ---- sends by id against closes ---- */

#define SENDERS 4

typedef struct {
    int rounds;
    int sent, gone, bad;
} sender_t;

static void *sender(void *arg) {
    sender_t *s = arg;
    for (int r = 0; r < s->rounds; r++)
        for (int i = 0; i < CONNS; i++) {
            int rc = pier_ws_send_id(__atomic_load_n(&ids[i], __ATOMIC_SEQ_CST), PIER_WS_BINARY, "0123456789abcdef",
                                     16);
            if (rc == 0)
                s->sent++;
            else if (rc == -ENOTCONN)
                s->gone++;
            else
                s->bad++;
        }
    return NULL;
}

/* Closes every other connection by id, in the middle of the sends. */
static void *closer(void *arg) {
    (void)arg;
    for (int i = 0; i < CONNS; i += 2) {
        int rc = pier_ws_close_id(__atomic_load_n(&ids[i], __ATOMIC_SEQ_CST), 4000 + i, "by id");
        closed_by_id[i] = rc == 0 ? 1 : rc;
        usleep(100);
    }
    return NULL;
}

static void sends_by_id_race_closes(void **state) {
    (void)state;
    int fds[CONNS];
    open_clients(fds);
    pthread_t th[SENDERS], cl;
    sender_t s[SENDERS];
    for (int i = 0; i < SENDERS; i++) {
        s[i] = (sender_t){.rounds = 300};
        assert_int_equal(pthread_create(&th[i], NULL, sender, &s[i]), 0);
    }
    assert_int_equal(pthread_create(&cl, NULL, closer, NULL), 0);
    for (int i = 1; i < CONNS; i += 2) { /* the peers of the others go away */
        close(fds[i]);
        usleep(100);
    }
    pthread_join(cl, NULL);
    for (int i = 0; i < SENDERS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(s[i].bad, 0);
        assert_int_equal(s[i].sent + s[i].gone, 300 * CONNS);
    }
    for (int i = 0; i < CONNS; i += 2) {
        assert_int_equal(closed_by_id[i], 1); /* each was open when its close was asked */
        close(fds[i]);
    }
    threaded_wait_for(&closed, CONNS);
    assert_int_equal(load(&double_close), 0);
    for (int i = 0; i < CONNS; i++) {
        assert_int_equal(pier_ws_send_id(ids[i], PIER_WS_TEXT, "x", 1), -ENOTCONN);
        assert_int_equal(pier_ws_close_id(ids[i], 1000, NULL), -ENOTCONN);
    }
    /* the server still serves: a new connection gets a send by id */
    int fd = client();
    assert_int_equal(pier_ws_send_id(__atomic_load_n(&ids[CONNS], __ATOMIC_SEQ_CST), PIER_WS_TEXT, "still here", 10), 0);
    char buf[16];
    int op;
    assert_int_equal(raw_ws_recv(fd, &op, buf, sizeof buf, pier_test_read_full), 10);
    assert_memory_equal(buf, "still here", 10);
    close(fd);
    threaded_wait_for(&closed, CONNS + 1);
}

/* ---- closes during publishes ---- */

typedef struct {
    int stop;
    int published, errors;
} publisher_t;

static void *publisher(void *arg) {
    publisher_t *p = arg;
    static char big[3000];
    memset(big, 'b', sizeof big);
    while (!__atomic_load_n(&p->stop, __ATOMIC_SEQ_CST)) {
        int n = p->published++;
        int rc = n % 2 ? pier_ws_publish(srv, "news", PIER_WS_TEXT, "tick", 4)
                       : pier_ws_publish(srv, "news", PIER_WS_BINARY, big, sizeof big);
        p->errors += rc != 0;
        if (n % 64 == 0)
            usleep(200); /* let the loops keep up, so the queues stay small */
    }
    return NULL;
}

/* Reads frames until the close frame or the end: each data frame must be one of those
 * published, whole. Returns the data frames seen. */
static int drain_whole(int fd) {
    static char buf[4096];
    int frames = 0;
    for (;;) {
        unsigned char h[4];
        if (pier_test_read_full(fd, h, 2) != 2)
            return frames;
        size_t len = h[1] & 0x7F;
        if (len == 126) {
            assert_int_equal(pier_test_read_full(fd, h + 2, 2), 2);
            len = (size_t)h[2] << 8 | h[3];
        }
        assert_true(len <= sizeof buf);
        if (pier_test_read_full(fd, buf, len) != len)
            return frames;
        int op = h[0] & 0xF;
        if (op == PIER_WS_CLOSE)
            return frames;
        assert_true((op == PIER_WS_TEXT && (len == 4 || len == 15)) || (op == PIER_WS_BINARY && len == 3000));
        frames++;
    }
}

static void closes_during_publishes(void **state) {
    (void)state;
    int fds[CONNS];
    open_clients(fds);
    pthread_t th;
    publisher_t p = {0};
    assert_int_equal(pthread_create(&th, NULL, publisher, &p), 0);
    /* the first quarter: the server closes each from its own callback around a publish */
    for (int i = 0; i < CONNS / 4; i++)
        raw_ws_send(fds[i], PIER_WS_TEXT, i % 2 ? "pub-close" : "close-pub", 9);
    /* the second quarter: closed by id from this thread */
    for (int i = CONNS / 4; i < CONNS / 2; i++)
        assert_int_equal(pier_ws_close_id(__atomic_load_n(&ids[i], __ATOMIC_SEQ_CST), 1001, NULL), 0);
    for (int i = 0; i < CONNS / 2; i++) {
        drain_whole(fds[i]);
        close(fds[i]);
    }
    threaded_wait_for(&closed, CONNS / 2);
    /* the rest are still subscribed and get whole messages; then every connection is
     * reset at once, with publishes still queued for them */
    for (int i = CONNS / 2; i < CONNS; i++) {
        static char buf[4096];
        int op;
        size_t n;
        do
            n = raw_ws_recv(fds[i], &op, buf, sizeof buf, pier_test_read_full);
        while (op != PIER_WS_TEXT || n != 4); /* skip to a tick: a frame boundary */
        assert_memory_equal(buf, "tick", 4);
    }
    pier_http_server_abort_all(srv);
    for (int i = CONNS / 2; i < CONNS; i++) {
        drain_whole(fds[i]);
        close(fds[i]);
    }
    threaded_wait_for(&closed, CONNS);
    __atomic_store_n(&p.stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(th, NULL);
    assert_int_equal(p.errors, 0);
    assert_true(p.published > 0);
    assert_int_equal(load(&double_close), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(sends_by_id_race_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(closes_during_publishes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
