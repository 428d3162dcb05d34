/* The two failures pier exists to prevent (a session deleted twice;
 * a borrowed object freed by its borrower), as regression tests.
 *
 * 1. A session deleted twice: the peer resets while the server has a large write pending
 *    and a read completes around the same time. on_close must run exactly once, nothing
 *    may run after it, every zero-copy buffer is released exactly once, and ASan (CI runs
 *    this file under it) must see no double free or use after free. 200 connections one
 *    after another, each with a different interleaving, then 50 reset in one batch.
 * 2. A borrowed object freed by a borrower: after the first connection closes, later
 *    connections are still accepted and served, and the group (and its loops) are still
 *    the caller's to free: pier_group_free refuses while the server lives and succeeds
 *    once the caller has stopped and freed it.
 *
 * pier-test: threads */
#include "support.h"

#include <pier/net.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int client(uint16_t port, int rcvbuf) {
    int fd = pier_test_connect_rcvbuf(port, rcvbuf);
    assert_true(fd >= 0);
    return fd;
}

/* close() with SO_LINGER 0: the peer gets a reset, not a FIN */
static void reset_close(int fd) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* ================= 1. the peer resets under a pending write and a read ================= */

#define SEQ 200
#define BATCH 50
#define NS (SEQ + BATCH)

typedef struct {
    pier_conn_t *c;
    int reads, closes, close_err;
    int after_close;        /* any callback after on_close */
    int ref_frees;          /* the zero-copy buffer's release */
    int wrote_ref;
} rs_t;

static rs_t rs[NS];
static int nrs;
static char big[1 << 20]; /* handed out zero-copy to every connection at once */

static void ref_done(void *base, void *ud) {
    rs_t *s = ud;
    assert_ptr_equal(base, big);
    s->ref_frees++;
}

static size_t rs_read(pier_conn_t *c, const char *data, size_t len) {
    rs_t *s = pier_conn_data(c);
    s->reads++;
    if (s->closes)
        s->after_close++;
    if (!s->wrote_ref) {
        s->wrote_ref = 1;
        assert_int_equal(pier_conn_write_ref(c, big, sizeof big, ref_done, s), 0);
    }
    /* echo as well, so every read adds to the pending output */
    pier_conn_write(c, data, len);
    return len;
}

static void rs_drain(pier_conn_t *c) {
    rs_t *s = pier_conn_data(c);
    if (s->closes)
        s->after_close++;
}

static void rs_close(pier_conn_t *c, int err) {
    rs_t *s = pier_conn_data(c);
    if (s->closes)
        s->after_close++;
    s->closes++;
    s->close_err = err;
    /* what a session would do: tear down its own state, and try to close once more */
    pier_conn_close(c);
    pier_conn_abort(c);
}

static const pier_conn_cbs_t rs_cbs = {.on_read = rs_read, .on_drain = rs_drain, .on_close = rs_close};

static void rs_accept(pier_server_t *srv, pier_conn_t *c) {
    assert_true(nrs < NS);
    rs_t *s = &rs[nrs++];
    s->c = c;
    int small = 4096; /* so a megabyte cannot vanish into the kernel's send buffer */
    setsockopt(pier_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    pier_conn_set_cbs(c, &rs_cbs, s);
}

static void run_until_n(pier_loop_t *loop, const int *v, int n, int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    while (*v < n && pier_test_now_ms() < end)
        pier_loop_run_once(loop, 5);
}

static void test_reset_with_pending_write(void **state) {
    memset(rs, 0, sizeof rs);
    nrs = 0;
    memset(big, 'B', sizeof big);
    pier_group_t *g;
    pier_server_t *srv;
    assert_int_equal(pier_group_new(&g, 1), 0);
    pier_loop_t *loop = pier_group_loop(g, 0);
    pier_server_opts_t o = {.host = "127.0.0.1", .on_accept = rs_accept};
    assert_int_equal(pier_server_new(&srv, g, &o), 0);
    uint16_t port = pier_server_port(srv);
    assert_int_equal(pier_server_start(srv), 0);
    pier_loop_run_once(loop, 0);

    static char junk[256 * 1024];
    memset(junk, 'j', sizeof junk);
    for (int i = 0; i < SEQ; i++) {
        int fd = client(port, 4096);
        int want = nrs + 1;
        run_until_n(loop, &nrs, want, 5000);
        assert_int_equal(nrs, want);
        rs_t *s = &rs[i];
        send(fd, "hello", 5, MSG_NOSIGNAL);
        run_until_n(loop, &s->reads, 1, 5000);
        assert_int_equal(s->reads, 1);
        assert_true(pier_conn_queued(s->c) > 0); /* the peer reads nothing: it stays pending */

        switch (i % 5) {
        case 0: /* data and the reset land together: one event with IN and ERR */
            send(fd, "more", 4, MSG_NOSIGNAL);
            reset_close(fd);
            break;
        case 1: /* more than one read's worth: a full read, the rest left for the again pass */
            send(fd, junk, sizeof junk, MSG_NOSIGNAL | MSG_DONTWAIT);
            reset_close(fd);
            break;
        case 2: /* the read is in progress (one iteration in) when the reset comes */
            send(fd, junk, sizeof junk, MSG_NOSIGNAL | MSG_DONTWAIT);
            pier_loop_run_once(loop, 0);
            reset_close(fd);
            break;
        case 3: /* the server has just queued an echo, unflushed, when the reset comes */
            send(fd, "echo", 4, MSG_NOSIGNAL);
            usleep(1000);
            reset_close(fd);
            pier_loop_run_once(loop, 0);
            break;
        default: /* a bare reset */
            reset_close(fd);
            break;
        }
        run_until_n(loop, &s->closes, 1, 5000);
        pier_loop_run_once(loop, 0);
        if (s->closes != 1 || s->after_close || s->ref_frees != 1 || s->close_err >= 0)
            fail_msg("connection %d (case %d): closes %d, after close %d, frees %d, err %d", i, i % 5,
                     s->closes, s->after_close, s->ref_frees, s->close_err);
    }
    assert_int_equal(pier_server_conns(srv), 0);

    /* many at once: every connection has its write pending, and all reset in one batch */
    int fds[BATCH];
    for (int i = 0; i < BATCH; i++) {
        fds[i] = client(port, 4096);
        send(fds[i], "hi", 2, MSG_NOSIGNAL);
    }
    run_until_n(loop, &nrs, NS, 5000);
    assert_int_equal(nrs, NS);
    uint64_t end = pier_test_now_ms() + 5000;
    for (int i = SEQ; i < NS; i++)
        while (rs[i].reads == 0 && pier_test_now_ms() < end)
            pier_loop_run_once(loop, 5);
    for (int i = 0; i < BATCH; i++) {
        send(fds[i], "bye", 3, MSG_NOSIGNAL);
        reset_close(fds[i]);
    }
    end = pier_test_now_ms() + 5000;
    while (pier_server_conns(srv) > 0 && pier_test_now_ms() < end)
        pier_loop_run_once(loop, 5);
    pier_loop_run_once(loop, 0);
    for (int i = SEQ; i < NS; i++) {
        rs_t *s = &rs[i];
        if (s->closes != 1 || s->after_close || s->ref_frees != 1)
            fail_msg("batch connection %d: closes %d, after close %d, frees %d", i, s->closes, s->after_close,
                     s->ref_frees);
    }
    assert_int_equal(pier_server_conns(srv), 0);

    pier_server_stop(srv);
    pier_loop_run_once(loop, 0);
    assert_int_equal(pier_server_free(srv), 0);
    assert_int_equal(pier_group_free(g), 0);
}

/* ============ 2. the first close must not take the loop (or anything else) with it ============ */

static atomic_int closed2, accepted2;

static size_t echo2_read(pier_conn_t *c, const char *data, size_t len) {
    pier_conn_write(c, data, len);
    return len;
}

static void count2_close(pier_conn_t *c, int err) { atomic_fetch_add(&closed2, 1); }

static const pier_conn_cbs_t echo2_cbs = {.on_read = echo2_read, .on_close = count2_close};

static void accept2(pier_server_t *srv, pier_conn_t *c) {
    atomic_fetch_add(&accepted2, 1);
    pier_conn_set_cbs(c, &echo2_cbs, NULL);
}

static void heartbeat(pier_timer_t *t) { (void)t; }

static void *run_group(void *arg) {
    assert_int_equal(pier_group_run(arg), 0);
    return NULL;
}

static void echo_once(uint16_t port, const char *msg) {
    int fd = pier_test_connect(port);
    assert_true(fd >= 0);
    size_t n = strlen(msg);
    assert_int_equal(write(fd, msg, n), (ssize_t)n);
    char buf[64];
    assert_int_equal(pier_test_read_full(fd, buf, n), n);
    assert_memory_equal(buf, msg, n);
    close(fd);
}

static void wait_closed(int n) {
    uint64_t end = pier_test_now_ms() + 5000;
    while (atomic_load(&closed2) < n && pier_test_now_ms() < end)
        usleep(1000);
    assert_int_equal(atomic_load(&closed2), n);
}

static void test_first_close_keeps_loop(void **state) {
    atomic_store(&closed2, 0);
    atomic_store(&accepted2, 0);
    pier_group_t *g;
    pier_server_t *srv;
    assert_int_equal(pier_group_new(&g, 1), 0);
    pier_loop_t *loop = pier_group_loop(g, 0);
    pier_server_opts_t o = {.host = "127.0.0.1", .on_accept = accept2};
    assert_int_equal(pier_server_new(&srv, g, &o), 0);
    uint16_t port = pier_server_port(srv);
    assert_int_equal(pier_server_start(srv), 0);
    /* keeps the loop from sleeping for long, so the stop below cannot be missed */
    pier_timer_t hb;
    pier_timer_init(loop, &hb, heartbeat, NULL);
    pier_timer_start(&hb, 20, 20);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_group, g), 0);

    /* the first connection comes and goes */
    echo_once(port, "first");
    wait_closed(1);
    /* then more, one at a time and several at once: all accepted and served */
    echo_once(port, "second");
    wait_closed(2);
    int fds[20];
    for (int i = 0; i < 20; i++) {
        fds[i] = pier_test_connect(port);
        assert_true(fds[i] >= 0);
    }
    for (int i = 0; i < 20; i++)
        assert_int_equal(write(fds[i], "many", 4), 4);
    for (int i = 0; i < 20; i++) {
        char buf[4];
        assert_int_equal(pier_test_read_full(fds[i], buf, 4), 4);
        assert_memory_equal(buf, "many", 4);
        if (i % 2)
            reset_close(fds[i]); /* some leave rudely */
        else
            close(fds[i]);
    }
    wait_closed(22);
    echo_once(port, "after all of them");
    wait_closed(23);
    assert_int_equal(atomic_load(&accepted2), 23);

    pier_group_stop(g);
    pthread_join(th, NULL);
    pier_timer_stop(&hb);

    /* the loop is still ours, alive, and still holds the server's listener */
    assert_int_equal(pier_server_conns(srv), 0);
    assert_int_equal(pier_loop_handles(loop), 1);
    assert_int_equal(pier_server_free(srv), -EBUSY); /* started: the caller must stop it */
    assert_int_equal(pier_group_free(g), -EBUSY);     /* the listener is a live handle */
    assert_int_equal(pier_loop_run_once(loop, 0), 0);

    pier_server_stop(srv);
    pier_loop_run_once(loop, 0); /* the listener closes on its loop */
    assert_int_equal(pier_loop_handles(loop), 0);
    assert_int_equal(pier_server_free(srv), 0);
    assert_int_equal(pier_group_free(g), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reset_with_pending_write),
        cmocka_unit_test(test_first_close_keeps_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
