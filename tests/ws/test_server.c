/* The WebSocket server through its public API, with raw clients: sends by id from other
 * threads (and -ENOTCONN once the connection has gone), the output bound with -ENOBUFS and
 * on_drain, a dead peer dropped after an unanswered ping, the close handshake started by
 * the server (answered, and unanswered), and the choice of a subprotocol.
 * pier-test: threads */
#include "support.h"
#include "../http/server_util.h"
#include "raw_ws.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pier/ws.h>

static pier_group_t *group;
static pier_loop_t *loop;
static pier_http_server_t *srv;
static uint16_t port;

/* Whether reads run the loop while they wait: they must when the client shares the
 * loop's thread, since only the loop flushes the server's output; a client thread of its
 * own reads blocking. */
static int pump = 1;

/* what the server side saw */
static volatile int opened, closed, drained, close_code;
static pier_id_t last_id;
static char close_reason[128];
static size_t max_queued;
static int enobufs;

static void on_open(pier_ws_t *ws) {
    last_id = pier_ws_id(ws);
    opened++;
}

static void flood(pier_ws_t *ws) {
    static char chunk[16384];
    int rc;
    while ((rc = pier_ws_send(ws, PIER_WS_BINARY, chunk, sizeof chunk)) == 0) {
        size_t q = pier_conn_queued(pier_ws_conn(ws));
        if (q > max_queued)
            max_queued = q;
    }
    enobufs += rc == -ENOBUFS;
}

static void on_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    if (len == 5 && !memcmp(data, "flood", 5))
        flood(ws);
    else if (len == 3 && !memcmp(data, "bye", 3))
        pier_ws_close(ws, 4000, "later");
    else
        pier_ws_send(ws, opcode, data, len);
}

static void on_close(pier_ws_t *ws, int code, const char *reason) {
    close_code = code;
    snprintf(close_reason, sizeof close_reason, "%s", reason);
    closed++;
}

static void on_drain(pier_ws_t *ws) {
    drained++;
    pier_ws_send(ws, PIER_WS_TEXT, "drained", 7);
}

static const pier_ws_cbs_t cbs = {.on_open = on_open, .on_message = on_message, .on_close = on_close,
                                  .on_drain = on_drain};

static int setup(void **state) {
    (void)state;
    pump = 1;
    opened = closed = drained = close_code = 0;
    max_queued = 0;
    enobufs = 0;
    assert_int_equal(pier_group_new(&group, 1), 0);
    loop = pier_group_loop(group, 0);
    pier_http_opts_t o = {.port = 0};
    assert_int_equal(pier_http_server_new(&srv, group, &o), 0);
    static const char *const protos[] = {"chat.v2", "chat.v1", NULL};
    pier_ws_opts_t wo = {.close_ms = 200, .out_high = 65536, .protocols = protos};
    assert_int_equal(pier_http_ws_opts(srv, "/ws", &cbs, NULL, &wo), 0);
    /* a ping soon, and a pong deadline long enough for a slow (sanitized) run */
    pier_ws_opts_t live = {.ping_ms = 100, .pong_ms = 1000};
    assert_int_equal(pier_http_ws_opts(srv, "/ws-live", &cbs, NULL, &live), 0);
    port = http_test_start(srv, loop);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    http_test_free(srv, group);
    return 0;
}

/* ---- a raw client ---- */

/* Connects to path and completes a handshake offering protocols (NULL: none); the
 * response head goes to head. Returns the socket. */
static int ws_connect_to(const char *path, const char *protocols, char *head, size_t size) {
    int fd = pier_test_connect(port);
    raw_ws_request(fd, path, protocols);
    size_t got = 0;
    char *end = NULL;
    while (!end && got < size - 1) {
        pier_loop_run_once(loop, 1);
        ssize_t r = recv(fd, head + got, size - 1 - got, MSG_DONTWAIT | MSG_PEEK);
        if (r > 0) {
            head[got + (size_t)r] = '\0';
            end = strstr(head, "\r\n\r\n");
        }
    }
    assert_non_null(end);
    got = (size_t)(end + 4 - head);
    assert_int_equal(pier_test_read_full(fd, head, got), got); /* the head only: frames stay */
    head[got] = '\0';
    assert_non_null(strstr(head, "HTTP/1.1 101 "));
    return fd;
}

static int ws_connect(const char *protocols, char *head, size_t size) {
    return ws_connect_to("/ws", protocols, head, size);
}

static void ws_send(int fd, int opcode, const void *data, size_t len) { raw_ws_send(fd, opcode, data, len); }

static size_t read_full(int fd, void *buf, size_t len) {
    if (!pump)
        return pier_test_read_full(fd, buf, len);
    size_t got = 0;
    uint64_t t0 = pier_test_now_ms();
    while (got < len && pier_test_now_ms() - t0 < 10000) {
        ssize_t n = recv(fd, (char *)buf + got, len - got, MSG_DONTWAIT);
        if (n == 0)
            break;
        if (n > 0)
            got += (size_t)n;
        else
            pier_loop_run_once(loop, 1);
    }
    return got;
}

static size_t ws_recv(int fd, int *opcode, void *buf, size_t cap) {
    return raw_ws_recv(fd, opcode, buf, cap, read_full);
}

/* ---- sends by id from other threads ---- */

#define SENDERS 4
#define PER_SENDER 200

typedef struct {
    pier_id_t id;
    int n;
    int errors;
} sender_t;

static void *sender(void *arg) {
    sender_t *s = arg;
    char msg[32];
    for (int i = 0; i < PER_SENDER; i++) {
        int len = snprintf(msg, sizeof msg, "%d:%d", s->n, i);
        if (pier_ws_send_id(s->id, PIER_WS_TEXT, msg, (size_t)len) < 0)
            s->errors++;
    }
    return NULL;
}

typedef struct {
    int fd;
    int got, in_order;
    volatile int done;
} reader_t;

static void *reader(void *arg) {
    reader_t *r = arg;
    int next[SENDERS] = {0};
    char buf[64];
    r->in_order = 1;
    while (r->got < SENDERS * PER_SENDER) {
        int op;
        size_t n = ws_recv(r->fd, &op, buf, sizeof buf - 1);
        buf[n] = '\0';
        int s, i;
        if (op != PIER_WS_TEXT || sscanf(buf, "%d:%d", &s, &i) != 2 || s < 0 || s >= SENDERS || i != next[s]++)
            r->in_order = 0;
        r->got++;
    }
    __atomic_store_n(&r->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void sends_by_id_from_threads(void **state) {
    (void)state;
    char head[1024];
    int fd = ws_connect(NULL, head, sizeof head);
    assert_true(pier_test_run_until(loop, &opened, 5000));
    pthread_t th[SENDERS], rd;
    sender_t s[SENDERS];
    reader_t r = {.fd = fd};
    pump = 0;
    pthread_create(&rd, NULL, reader, &r);
    for (int i = 0; i < SENDERS; i++) {
        s[i] = (sender_t){.id = last_id, .n = i};
        pthread_create(&th[i], NULL, sender, &s[i]);
    }
    pier_test_run_until(loop, &r.done, 20000);
    for (int i = 0; i < SENDERS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(s[i].errors, 0);
    }
    pthread_join(rd, NULL);
    assert_int_equal(r.got, SENDERS * PER_SENDER);
    assert_true(r.in_order); /* each thread's messages in the order it sent them */
    close(fd);
    assert_true(pier_test_run_until(loop, &closed, 5000));
    assert_int_equal(close_code, PIER_WS_ABNORMAL); /* gone without a close frame */
    assert_int_equal(pier_ws_send_id(last_id, PIER_WS_TEXT, "x", 1), -ENOTCONN);
    assert_int_equal(pier_ws_close_id(last_id, 1000, NULL), -ENOTCONN);
    assert_int_equal(pier_ws_send_id(last_id, 7, "x", 1), -EINVAL);
}

/* ---- backpressure ---- */

static void output_is_bounded_and_drains(void **state) {
    (void)state;
    char head[1024];
    int fd = ws_connect(NULL, head, sizeof head);
    assert_true(pier_test_run_until(loop, &opened, 5000));
    ws_send(fd, PIER_WS_TEXT, "flood", 5);
    for (int i = 0; i < 50 && !enobufs; i++)
        pier_loop_run_once(loop, 5);
    assert_int_equal(enobufs, 1);
    /* the bound: the high water mark and the one frame that crossed it */
    assert_true(max_queued <= 65536 + 16384 + 14);
    /* the client reads everything; on_drain comes, and its send is taken */
    static char buf[1 << 20];
    int op;
    size_t total = 0;
    do {
        total += ws_recv(fd, &op, buf, sizeof buf);
    } while (op != PIER_WS_TEXT); /* the send of on_drain: after everything flooded */
    assert_true(drained >= 1);
    assert_true(total > 65536);
    close(fd);
    assert_true(pier_test_run_until(loop, &closed, 5000));
}

/* ---- liveness ---- */

static void a_silent_peer_is_dropped(void **state) {
    (void)state;
    char head[1024];
    int fd = ws_connect_to("/ws-live", NULL, head, sizeof head);
    assert_true(pier_test_run_until(loop, &opened, 5000));
    /* the client neither reads nor answers: the ping goes unanswered */
    assert_true(pier_test_run_until(loop, &closed, 10000));
    assert_int_equal(close_code, PIER_WS_ABNORMAL);
    int op;
    char buf[200];
    ws_recv(fd, &op, buf, sizeof buf);
    assert_int_equal(op, PIER_WS_PING); /* it was asked first */
    close(fd);
}

static void a_peer_that_answers_pings_stays(void **state) {
    (void)state;
    char head[1024];
    int fd = ws_connect_to("/ws-live", NULL, head, sizeof head);
    assert_true(pier_test_run_until(loop, &opened, 5000));
    /* three pings in a row answered: the connection outlives several pong deadlines */
    for (int pings = 0; pings < 3;) {
        pier_loop_run_once(loop, 5);
        unsigned char h[2];
        if (recv(fd, h, 2, MSG_DONTWAIT | MSG_PEEK) == 2) {
            int op;
            char buf[200];
            size_t n = ws_recv(fd, &op, buf, sizeof buf);
            assert_int_equal(op, PIER_WS_PING);
            ws_send(fd, PIER_WS_PONG, buf, n);
            pings++;
        }
        assert_int_equal(closed, 0);
    }
    close(fd);
    assert_true(pier_test_run_until(loop, &closed, 5000));
}

/* ---- closing from the server ---- */

static void server_close_answered(void **state) {
    (void)state;
    char head[1024], buf[200];
    int fd = ws_connect(NULL, head, sizeof head);
    assert_true(pier_test_run_until(loop, &opened, 5000));
    ws_send(fd, PIER_WS_TEXT, "bye", 3);
    int op = 0;
    for (int i = 0; i < 20; i++)
        pier_loop_run_once(loop, 5);
    size_t n = ws_recv(fd, &op, buf, sizeof buf);
    assert_int_equal(op, PIER_WS_CLOSE);
    assert_true(n == 7 && buf[0] == (char)(4000 >> 8) && buf[1] == (char)(4000 & 0xff) && !memcmp(buf + 2, "later", 5));
    ws_send(fd, PIER_WS_CLOSE, buf, 2); /* the answer */
    assert_true(pier_test_run_until(loop, &closed, 5000));
    assert_int_equal(close_code, 4000);
    assert_int_equal(read_full(fd, buf, 1), 0); /* the server ended the TCP connection */
    close(fd);
}

static void server_close_unanswered(void **state) {
    (void)state;
    char head[1024];
    int fd = ws_connect(NULL, head, sizeof head);
    assert_true(pier_test_run_until(loop, &opened, 5000));
    ws_send(fd, PIER_WS_TEXT, "bye", 3);
    assert_true(pier_test_run_until(loop, &closed, 10000)); /* after close_ms */
    assert_int_equal(close_code, 4000);
    assert_string_equal(close_reason, "later");
    close(fd);
}

/* ---- subprotocols ---- */

static void subprotocol_by_server_preference(void **state) {
    (void)state;
    char head[1024];
    int fd = ws_connect("chat.v1, chat.v2", head, sizeof head);
    assert_non_null(strstr(head, "Sec-WebSocket-Protocol: chat.v2\r\n"));
    close(fd);
    fd = ws_connect("chat.v1", head, sizeof head);
    assert_non_null(strstr(head, "Sec-WebSocket-Protocol: chat.v1\r\n"));
    close(fd);
    fd = ws_connect("other", head, sizeof head);
    assert_null(strstr(head, "Sec-WebSocket-Protocol"));
    close(fd);
    for (int i = 0; i < 50 && closed < 3; i++)
        pier_loop_run_once(loop, 5);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(sends_by_id_from_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(output_is_bounded_and_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(a_silent_peer_is_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(a_peer_that_answers_pings_stays, setup, teardown),
        cmocka_unit_test_setup_teardown(server_close_answered, setup, teardown),
        cmocka_unit_test_setup_teardown(server_close_unanswered, setup, teardown),
        cmocka_unit_test_setup_teardown(subprotocol_by_server_preference, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
