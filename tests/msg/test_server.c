/* The message server and client through the public API, with the group running on its
 * own thread and blocking sockets as peers.
 * pier-test: threads */
#include "msg_env.h"

#include <pier/msg.h>

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ID_ECHO 100
#define ID_SLOW 101
#define ID_BIG 102
#define ID_LATER 103
#define ID_TICK 104
#define ID_NAP 105
#define ID_GATE 106
#define ID_HUGE 107

/* Replies with the same body, on ID_ECHO. */
static void on_echo(const pier_msg_t *m, void *ud) {
    (void)ud;
    assert_int_equal(pier_msg_reply(m, ID_ECHO, m->body, m->len), 0);
}

static void on_slow(const pier_msg_t *m, void *ud) {
    (void)ud;
    usleep(100 * 1000);
    pier_msg_reply(m, ID_SLOW, "late", 4); /* the connection may be gone: no assert */
}

/* Replies with 2000 bytes, to fill a connection that does not read. */
static void on_big(const pier_msg_t *m, void *ud) {
    (void)ud;
    static const char big[2000];
    assert_int_equal(pier_msg_reply(m, ID_BIG, big, sizeof big), 0);
}

/* Answers twice: once now, once through the id after the handler (pier_msg_send). */
static void on_later(const pier_msg_t *m, void *ud) {
    (void)ud;
    assert_int_equal(pier_msg_reply(m, ID_LATER, "now", 3), 0);
    pier_id_t id = m->conn;
    pier_msg_server_t *srv = m->srv;
    assert_int_equal(pier_msg_send(srv, id, ID_LATER, "later", 5), 0);
}

/* Echoes after ~20 us of work, so queues fill up behind it. */
static void on_tick(const pier_msg_t *m, void *ud) {
    (void)ud;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 20000);
    assert_int_equal(pier_msg_reply(m, ID_TICK, m->body, m->len), 0);
}

/* Echoes after a 2 ms sleep: a handler that waits on something, as a database call would. */
static void on_nap(const pier_msg_t *m, void *ud) {
    (void)ud;
    usleep(2000);
    assert_int_equal(pier_msg_reply(m, ID_NAP, m->body, m->len), 0);
}

/* Waits until the test opens the gate. */
static sem_t gate;
static void on_gate(const pier_msg_t *m, void *ud) {
    (void)m;
    (void)ud;
    sem_wait(&gate);
}

/* Replies with 20,000 bytes: over the core's direct-write size, so it is sent at once. */
#define HUGE_LEN 20000
static void on_huge(const pier_msg_t *m, void *ud) {
    (void)ud;
    static const char huge[HUGE_LEN];
    assert_int_equal(pier_msg_reply(m, ID_HUGE, huge, sizeof huge), 0);
}

static void env_start(env_t *e, unsigned loops, const pier_msg_server_opts_t *o) {
    env_new(e, loops, o);
    assert_int_equal(pier_msg_on(e->srv, ID_ECHO, on_echo, NULL), 0);
    assert_int_equal(pier_msg_on(e->srv, ID_SLOW, on_slow, NULL), 0);
    assert_int_equal(pier_msg_on(e->srv, ID_BIG, on_big, NULL), 0);
    assert_int_equal(pier_msg_on(e->srv, ID_LATER, on_later, NULL), 0);
    assert_int_equal(pier_msg_on(e->srv, ID_TICK, on_tick, NULL), 0);
    assert_int_equal(pier_msg_on(e->srv, ID_NAP, on_nap, NULL), 0);
    assert_int_equal(pier_msg_on(e->srv, ID_GATE, on_gate, NULL), 0);
    assert_int_equal(pier_msg_on(e->srv, ID_HUGE, on_huge, NULL), 0);
    env_run(e);
}

static void send_frame(int fd, uint16_t id, const void *body, size_t len) {
    char buf[4 + 4096];
    ssize_t n = pier_msg_encode(NULL, id, body, len, buf, sizeof buf);
    assert_true(n > 0);
    assert_int_equal(write(fd, buf, (size_t)n), n);
}

/* Reads one frame; returns its body length, or -1 on EOF/reset. */
static int read_frame(int fd, uint16_t *id, char *body, size_t cap) {
    unsigned char h[4];
    *id = 0; /* gcc -O3 cannot see that callers read it only after a frame */
    if (pier_test_read_full(fd, h, 4) != 4)
        return -1;
    *id = (uint16_t)(h[0] << 8 | h[1]);
    size_t len = (size_t)(h[2] << 8 | h[3]);
    assert_true(len <= cap);
    if (pier_test_read_full(fd, body, len) != len)
        return -1;
    return (int)len;
}

/* True if the server closes fd within ~5 s (EOF or reset), after any frames. */
static int closed_by_server(int fd) {
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0)
            return 0; /* timeout (SO_RCVTIMEO) */
    }
}

/* ---- tests ---- */

typedef struct {
    uint16_t port;
    int idx;
    int bad;
    uint16_t id;  /* 0: ID_ECHO */
    int count;    /* 0: 2000 */
} order_arg_t;

/* 4 connections in parallel, each pipelining 2,000 messages to 3 workers: every reply in
 * order on its own connection. */
static void *order_client(void *arg) {
    order_arg_t *a = arg;
    int fd = pier_test_connect(a->port);
    if (fd < 0) {
        a->bad = 1;
        return NULL;
    }
    uint16_t mid = a->id ? a->id : ID_ECHO;
    int count = a->count ? a->count : 2000;
    char *out = malloc((size_t)count * 32);
    size_t off = 0;
    for (int i = 0; i < count; i++) {
        char body[24];
        int n = snprintf(body, sizeof body, "%d:%d", a->idx, i);
        off += (size_t)pier_msg_encode(NULL, mid, body, (size_t)n, out + off, 32);
    }
    if (write(fd, out, off) != (ssize_t)off)
        a->bad = 1;
    for (int i = 0; i < count && !a->bad; i++) {
        char want[24], got[64];
        uint16_t id;
        int n = snprintf(want, sizeof want, "%d:%d", a->idx, i);
        int len = read_frame(fd, &id, got, sizeof got);
        if (len != n || id != mid || memcmp(got, want, (size_t)n) != 0)
            a->bad = 1;
    }
    free(out);
    close(fd);
    return NULL;
}

/* Starts n order clients (8 at most) on port, each pipelining count messages (0: 2000) of
 * id (0: ID_ECHO). */
static void start_clients(pthread_t *th, order_arg_t *args, int n, uint16_t port, uint16_t id, int count) {
    for (int i = 0; i < n; i++) {
        args[i] = (order_arg_t){.port = port, .idx = i, .id = id, .count = count};
        assert_int_equal(pthread_create(&th[i], NULL, order_client, &args[i]), 0);
    }
}

/* Waits for the n clients; each must have had every reply, in order. */
static void join_clients(pthread_t *th, order_arg_t *args, int n) {
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].bad, 0);
    }
}

static void test_workers_keep_per_connection_order(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {.workers = 3};
    env_start(&e, 2, &o);
    uint16_t port = pier_msg_server_port(e.srv);
    pthread_t th[4];
    order_arg_t args[4];
    start_clients(th, args, 4, port, 0, 0);
    join_clients(th, args, 4);
    pier_msg_stats_t st;
    pier_msg_server_stats(e.srv, &st);
    assert_int_equal(st.handled, 8000);
    env_stop(&e);
}

/* Queues far smaller than the load: worker queues of 2, one message in flight per
 * connection, a slow handler and 8 connections pipelining 300 messages each. Frames wait
 * undecoded in the connections' input with reading paused, a full queue is retried by
 * timer, and still every reply arrives, in order. */
static void test_full_queues_keep_order_and_lose_nothing(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {.workers = 2, .queue_max = 2, .inflight_max = 1};
    env_start(&e, 1, &o);
    uint16_t port = pier_msg_server_port(e.srv);
    pthread_t th[8];
    order_arg_t args[8];
    start_clients(th, args, 8, port, ID_TICK, 300);
    join_clients(th, args, 8);
    pier_msg_stats_t st;
    pier_msg_server_stats(e.srv, &st);
    assert_int_equal(st.handled, 2400);
    assert_int_equal(st.replies_lost, 0);
    env_stop(&e);
}

/* Clients pipeline far more than the bounds allow while the test samples the counters:
 * messages read and not yet handled never exceed the bound, and every client (none may
 * be starved by the others) still gets every reply, in order. The stats read the read
 * count before the handled count, so the difference can only understate what is in
 * flight. */
static void bounded(const pier_msg_server_opts_t *o, unsigned bound, int nconns) {
    env_t e;
    env_start(&e, 1, o);
    uint16_t port = pier_msg_server_port(e.srv);
    pthread_t th[8];
    order_arg_t args[8];
    start_clients(th, args, nconns, port, ID_NAP, 100);
    pier_msg_stats_t st = {0};
    int64_t most = 0;
    while (st.handled < 100 * (uint64_t)nconns) {
        pier_msg_server_stats(e.srv, &st);
        int64_t inflight = (int64_t)(st.msgs - st.handled);
        assert_true(inflight <= (int64_t)bound);
        if (inflight > most)
            most = inflight;
        usleep(500);
    }
    assert_true(most > 0); /* the samples did see messages in flight */
    join_clients(th, args, nconns);
    env_stop(&e);
}

static void test_reading_stops_at_the_connection_bound(void **state) {
    pier_msg_server_opts_t o = {.workers = 2, .inflight_max = 3};
    bounded(&o, 3, 1);
}

static void test_reading_stops_at_the_server_bound_and_is_fair(void **state) {
    pier_msg_server_opts_t o = {.workers = 1, .inflight_max = 4, .inflight_total = 8};
    bounded(&o, 8, 6);
}

/* A handler still running on a worker when its connection goes: the reply is dropped
 * through the id, counted, and nothing else happens. */
static void test_reply_to_gone_connection(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {.workers = 1};
    env_start(&e, 1, &o);
    int fd = pier_test_connect(pier_msg_server_port(e.srv));
    assert_true(fd >= 0);
    send_frame(fd, ID_SLOW, "x", 1);
    usleep(20 * 1000);
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd); /* reset while the handler sleeps */
    pier_msg_stats_t st = {0};
    for (int i = 0; i < 100 && st.replies_lost == 0; i++) {
        usleep(10 * 1000);
        pier_msg_server_stats(e.srv, &st);
    }
    assert_int_equal(st.replies_lost, 1);
    env_stop(&e);
}

/* Replies whose write fails are counted as lost. The client sends a gate message and two
 * that get 20 KB replies, and closes once the server has read them. The gate opens, both
 * replies come back to the loop in one batch, and the first, sent at once, meets the
 * closed socket, whose reset makes the second one's write fail: that reply is lost and
 * must be counted (it was not). */
static void test_failed_reply_write_is_counted(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {.workers = 1, .codec = {.max_body = 30000}};
    sem_init(&gate, 0, 0);
    env_start(&e, 1, &o);
    int fd = pier_test_connect(pier_msg_server_port(e.srv));
    assert_true(fd >= 0);
    char buf[12];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pier_msg_encode(NULL, i ? ID_HUGE : ID_GATE, NULL, 0, buf + 4 * i, 4), 4);
    assert_int_equal(write(fd, buf, sizeof buf), (ssize_t)sizeof buf);
    pier_msg_stats_t st = {0};
    for (int i = 0; i < 500 && st.msgs < 3; i++) {
        usleep(2000);
        pier_msg_server_stats(e.srv, &st);
    }
    assert_int_equal(st.msgs, 3);
    close(fd); /* nothing unread: a FIN, and every later byte to it draws a reset */
    usleep(20 * 1000);
    sem_post(&gate);
    for (int i = 0; i < 500 && st.handled < 3; i++) {
        usleep(2000);
        pier_msg_server_stats(e.srv, &st);
    }
    assert_int_equal(st.handled, 3);
    for (int i = 0; i < 100 && st.replies_lost == 0; i++) {
        usleep(2000);
        pier_msg_server_stats(e.srv, &st);
    }
    assert_int_equal(st.replies_lost, 1);
    env_stop(&e);
    sem_destroy(&gate);
}

/* Replies made during the handler and one sent later by id arrive, in that order. */
static void test_send_by_id_after_handler(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {.workers = 2};
    env_start(&e, 1, &o);
    int fd = pier_test_connect(pier_msg_server_port(e.srv));
    send_frame(fd, ID_LATER, NULL, 0);
    char body[16];
    uint16_t id;
    assert_int_equal(read_frame(fd, &id, body, sizeof body), 3);
    assert_memory_equal(body, "now", 3);
    assert_int_equal(read_frame(fd, &id, body, sizeof body), 5);
    assert_memory_equal(body, "later", 5);
    close(fd);
    env_stop(&e);
}

/* A frame sent by id to a connection that starts closing before the frame's task runs
 * (here: a bad frame right behind the message, on the loop) is lost, and counted so. */
static void test_send_to_closing_connection_is_counted(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {0};
    env_start(&e, 1, &o);
    int fd = pier_test_connect(pier_msg_server_port(e.srv));
    assert_true(fd >= 0);
    char buf[8];
    assert_int_equal(pier_msg_encode(NULL, ID_LATER, NULL, 0, buf, sizeof buf), 4);
    memset(buf + 4, 0, 4); /* id 0: a bad frame, so the server closes after "now" */
    assert_int_equal(write(fd, buf, 8), 8);
    char body[16];
    uint16_t id;
    assert_int_equal(read_frame(fd, &id, body, sizeof body), 3);
    assert_memory_equal(body, "now", 3);
    assert_true(closed_by_server(fd));
    pier_msg_stats_t st = {0};
    for (int i = 0; i < 100 && st.replies_lost == 0; i++) {
        usleep(10 * 1000);
        pier_msg_server_stats(e.srv, &st);
    }
    assert_int_equal(st.replies_lost, 1);
    assert_int_equal(st.bad_frames, 1);
    close(fd);
    env_stop(&e);
}

/* A peer that sends but never reads: with DROP its replies are dropped and counted and it
 * stays connected; with CLOSE it is closed. Memory stays bounded either way. */
static void out_limit(int policy, int workers) {
    env_t e;
    pier_msg_server_opts_t o = {.workers = (unsigned)workers, .out_max = 64 * 1024, .out_policy = policy};
    env_start(&e, 1, &o);
    int fd = pier_test_connect(pier_msg_server_port(e.srv));
    /* 8 MB of replies: far over any socket buffer. With CLOSE the server may reset us
     * while we are still sending, which is the point. */
    static const unsigned char big_req[4] = {0, ID_BIG, 0, 0};
    for (int i = 0; i < 4000; i++)
        if (write(fd, big_req, 4) != 4) {
            assert_int_equal(policy, PIER_MSG_OUT_CLOSE);
            break;
        }
    pier_msg_stats_t st = {0};
    for (int i = 0; i < 300 && st.out_dropped + st.out_closed == 0; i++) {
        usleep(10 * 1000);
        pier_msg_server_stats(e.srv, &st);
    }
    if (policy == PIER_MSG_OUT_DROP) {
        assert_true(st.out_dropped > 0);
        assert_int_equal(st.out_closed, 0);
        /* still served: read what was kept, then a fresh echo comes back */
        char *body = malloc(4096);
        uint16_t id = 0;
        send_frame(fd, ID_ECHO, "alive", 5);
        int len;
        while ((len = read_frame(fd, &id, body, 4096)) >= 0 && id != ID_ECHO) {
        }
        assert_int_equal(len, 5);
        free(body);
    } else {
        assert_int_equal(st.out_closed, 1);
        assert_true(closed_by_server(fd));
    }
    close(fd);
    env_stop(&e);
}

static void test_out_limit_drop_on_loop(void **state) {
    out_limit(PIER_MSG_OUT_DROP, 0);
}
static void test_out_limit_close_on_loop(void **state) {
    out_limit(PIER_MSG_OUT_CLOSE, 0);
}
static void test_out_limit_drop_on_workers(void **state) {
    out_limit(PIER_MSG_OUT_DROP, 2);
}
static void test_out_limit_close_on_workers(void **state) {
    out_limit(PIER_MSG_OUT_CLOSE, 2);
}

static void test_handler_table_rules(void **state) {
    pier_group_t *g;
    pier_msg_server_t *srv;
    assert_int_equal(pier_group_new(&g, 1), 0);
    assert_int_equal(pier_msg_server_new(&srv, g, NULL), 0);
    assert_int_equal(pier_msg_on(srv, 0, on_echo, NULL), -EINVAL);
    assert_int_equal(pier_msg_on(srv, PIER_MSG_PING, on_echo, NULL), -EINVAL);
    assert_int_equal(pier_msg_on(srv, PIER_MSG_PONG, on_echo, NULL), -EINVAL);
    assert_int_equal(pier_msg_on(srv, 7, on_echo, NULL), 0);
    assert_int_equal(pier_msg_server_start(srv), 0);
    assert_int_equal(pier_msg_on(srv, 8, on_echo, NULL), -EBUSY);
    pier_msg_server_shutdown(srv);
    assert_int_equal(pier_group_run(g), 0);
    assert_int_equal(pier_msg_server_free(srv), 0);
    assert_int_equal(pier_group_free(g), 0);

    pier_msg_server_opts_t bad = {.codec = {.max_body = 70000}};
    assert_int_equal(pier_group_new(&g, 1), 0);
    assert_int_equal(pier_msg_server_new(&srv, g, &bad), -EINVAL);
    assert_int_equal(pier_group_free(g), 0);
}

/* ---- the client library against the server ---- */

typedef struct {
    pier_msg_client_t *mc;
    int ups, downs, got;
    int done;
} cl_state_t;

static void cl_up(pier_msg_client_t *mc) {
    cl_state_t *s = pier_msg_client_data(mc);
    s->ups++;
    for (int i = 0; i < 100; i++) {
        char b[16];
        int n = snprintf(b, sizeof b, "%d", i);
        assert_int_equal(pier_msg_client_send(mc, ID_ECHO, b, (size_t)n), 0);
    }
}

static void cl_msg(pier_msg_client_t *mc, uint16_t id, const char *body, size_t len) {
    cl_state_t *s = pier_msg_client_data(mc);
    char want[16];
    int n = snprintf(want, sizeof want, "%d", s->got);
    assert_int_equal(id, ID_ECHO);
    assert_int_equal(len, (size_t)n);
    assert_memory_equal(body, want, len);
    if (++s->got == 100)
        s->done = 1;
}

static void cl_down(pier_msg_client_t *mc, int err) {
    cl_state_t *s = pier_msg_client_data(mc);
    s->downs++;
}

static void test_client_sends_and_heartbeats(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {.workers = 1, .heartbeat_ms = 100};
    env_start(&e, 1, &o);
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    cl_state_t s = {0};
    pier_msg_client_opts_t co = {
        .port = pier_msg_server_port(e.srv),
        .heartbeat_ms = 100,
        .on_up = cl_up,
        .on_msg = cl_msg,
        .on_down = cl_down,
        .data = &s,
    };
    assert_int_equal(pier_msg_client_new(&s.mc, loop, &co), 0);
    assert_true(pier_test_run_until(loop, &s.done, 5000));
    /* idle for 6 heartbeats: the client's pings keep the server from closing it */
    volatile int never = 0;
    pier_test_run_until(loop, &never, 600);
    assert_int_equal(s.ups, 1);
    assert_int_equal(s.downs, 0);
    assert_true(pier_msg_client_up(s.mc));
    pier_msg_stats_t st;
    pier_msg_server_stats(e.srv, &st);
    assert_int_equal(st.timeouts, 0);
    assert_true(st.msgs > 100); /* pings were counted */
    env_client_free(loop, s.mc);
    assert_int_equal(s.downs, 1);
    pier_test_free_loop(loop);
    env_stop(&e);
}

/* Frames over the client's 1 KiB stack buffer, mixed with small ones, arrive whole and in
 * order: each is queued as one write, so no header can be left without its body. */
typedef struct {
    int got, done, bad;
} big_state_t;

static size_t big_len(int i) {
    return i % 2 ? (size_t)i : 1000 + (size_t)i * 20; /* up to 2040, with i = 52 */
}

static void big_up(pier_msg_client_t *mc) {
    char *b = malloc(PIER_MSG_MAX_BODY);
    for (int i = 0; i < 53; i++) {
        memset(b, 'a' + i % 26, big_len(i));
        assert_int_equal(pier_msg_client_send(mc, ID_ECHO, b, big_len(i)), 0);
    }
    free(b);
}

static void big_msg(pier_msg_client_t *mc, uint16_t id, const char *body, size_t len) {
    big_state_t *s = pier_msg_client_data(mc);
    int i = s->got++;
    if (id != ID_ECHO || len != big_len(i) || (len && (body[0] != 'a' + i % 26 || body[len - 1] != body[0])))
        s->bad++;
    if (s->got == 53)
        s->done = 1;
}

static void test_client_large_frames_arrive_whole(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {0};
    env_start(&e, 1, &o);
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    big_state_t s = {0};
    pier_msg_client_t *mc;
    pier_msg_client_opts_t co = {
        .port = pier_msg_server_port(e.srv), .on_up = big_up, .on_msg = big_msg, .data = &s};
    assert_int_equal(pier_msg_client_new(&mc, loop, &co), 0);
    assert_true(pier_test_run_until(loop, &s.done, 5000));
    assert_int_equal(s.bad, 0);
    assert_int_equal(pier_msg_client_connects(mc), 1);
    env_client_free(loop, mc);
    pier_test_free_loop(loop);
    env_stop(&e);
}

/* The group stops (a signal, say) while a worker still runs a handler. Freeing the server
 * must wait (-EBUSY, nothing freed) until that message is finished on its loop: the
 * worker posts the finished job to the loop, and the job points at the server, so a free
 * that succeeded earlier left the loop a task reading freed memory when it ran (at the
 * latest in pier_group_free). */
static void test_free_waits_for_worker_jobs(void **state) {
    env_t e;
    pier_msg_server_opts_t o = {.workers = 1};
    env_start(&e, 1, &o);
    int fd = pier_test_connect(pier_msg_server_port(e.srv));
    assert_true(fd >= 0);
    send_frame(fd, ID_SLOW, "x", 1);
    usleep(20 * 1000); /* the worker is in on_slow now */
    pier_group_stop(e.g);
    pthread_join(e.th, NULL);
    pier_server_abort_all(pier_msg_server_net(e.srv));
    pier_loop_t *loop = pier_group_loop(e.g, 0);
    int rc = -EBUSY, busy = 0;
    /* bounded by time, not by a count of iterations, which may each return at once */
    uint64_t end = pier_test_now_ms() + 10000;
    while (rc == -EBUSY && pier_test_now_ms() < end) {
        pier_loop_run_once(loop, 1);
        rc = pier_msg_server_free(e.srv);
        busy += rc == -EBUSY;
    }
    assert_int_equal(rc, 0);
    assert_true(busy > 0); /* the handler sleeps 100 ms: the first tries must wait */
    assert_int_equal(pier_group_free(e.g), 0);
    close(fd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workers_keep_per_connection_order),
        cmocka_unit_test(test_full_queues_keep_order_and_lose_nothing),
        cmocka_unit_test(test_reading_stops_at_the_connection_bound),
        cmocka_unit_test(test_reading_stops_at_the_server_bound_and_is_fair),
        cmocka_unit_test(test_reply_to_gone_connection),
        cmocka_unit_test(test_failed_reply_write_is_counted),
        cmocka_unit_test(test_send_by_id_after_handler),
        cmocka_unit_test(test_send_to_closing_connection_is_counted),
        cmocka_unit_test(test_out_limit_drop_on_loop),
        cmocka_unit_test(test_out_limit_close_on_loop),
        cmocka_unit_test(test_out_limit_drop_on_workers),
        cmocka_unit_test(test_out_limit_close_on_workers),
        cmocka_unit_test(test_handler_table_rules),
        cmocka_unit_test(test_client_sends_and_heartbeats),
        cmocka_unit_test(test_client_large_frames_arrive_whole),
        cmocka_unit_test(test_free_waits_for_worker_jobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
