/* Cross-thread use of connection ids while connections come and go: a group of two
 * loops serves an echo server; client threads connect, exchange data and leave (some
 * with a reset); other threads meanwhile send to, close and borrow random ids, live and
 * stale, through pier_send, pier_close and pier_with_conn. Bounded to a few seconds.
 * At the end every connection has closed exactly once, every borrowed argument was
 * handed back exactly once, every id is stale, and the group frees cleanly. Run under
 * TSan in CI.
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

#define RUN_MS 2500
#define CLIENTS 3
#define SENDERS 3
#define IDS 4096

static _Atomic pier_id_t ids[IDS];
static atomic_uint nids;
static atomic_int accepted, closed, bad_rc, stop_all;
static atomic_int sends_ok, sends_stale, closes_ok, closes_stale;
static atomic_int with_posted, with_called, with_live;
static atomic_int exchanges, loops_seen[2];
static pier_group_t *group;

/* ---- server side ---- */

static size_t echo_read(pier_conn_t *c, const char *data, size_t len) {
    pier_conn_write(c, data, len);
    return len;
}

static void on_close(pier_conn_t *c, int err) {
    int *once = pier_conn_data(c);
    if (++*once != 1)
        atomic_fetch_add(&bad_rc, 1000); /* on_close twice */
    free(once);
    atomic_fetch_add(&closed, 1);
}

static const pier_conn_cbs_t cbs = {.on_read = echo_read, .on_close = on_close};

static void on_accept(pier_server_t *srv, pier_conn_t *c) {
    atomic_fetch_add(&accepted, 1);
    for (unsigned i = 0; i < 2; i++)
        if (pier_conn_loop(c) == pier_group_loop(group, i))
            atomic_fetch_add(&loops_seen[i], 1);
    unsigned k = atomic_fetch_add(&nids, 1);
    atomic_store(&ids[k % IDS], pier_conn_id(c));
    pier_conn_set_cbs(c, &cbs, calloc(1, sizeof(int)));
}

static void heartbeat(pier_timer_t *t) { (void)t; }

/* ---- clients ---- */

static uint16_t port;

static void *client_main(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    while (!atomic_load(&stop_all)) {
        int fd = pier_test_connect(port);
        if (fd < 0)
            continue;
        struct timeval tv = {.tv_usec = 300000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        int rounds = 1 + (int)(rand_r(&seed) % 4);
        for (int r = 0; r < rounds; r++) {
            if (send(fd, "ping", 4, MSG_NOSIGNAL) != 4)
                break;
            /* the echo, possibly mixed with bytes other threads sent, or an early close */
            char buf[256];
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n <= 0)
                break;
            atomic_fetch_add(&exchanges, 1);
        }
        if (rand_r(&seed) % 3 == 0) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(fd);
        usleep(1000 + rand_r(&seed) % 2000); /* churn, without using up ephemeral ports */
    }
    return NULL;
}

/* ---- threads acting through ids ---- */

static void with_fn(pier_conn_t *c, void *arg) {
    int *token = arg;
    if (*token != 0x5eed)
        atomic_fetch_add(&bad_rc, 1);
    *token = 0; /* a second call for the same arg would see this (and ASan the free) */
    free(token);
    atomic_fetch_add(&with_called, 1);
    if (c) {
        atomic_fetch_add(&with_live, 1);
        if (!pier_conn_is_open(c))
            atomic_fetch_add(&bad_rc, 1);
        pier_conn_write(c, "w", 1);
    }
}

static pier_id_t pick_id(unsigned *seed) {
    unsigned n = atomic_load(&nids);
    unsigned r = (unsigned)rand_r(seed);
    if (n == 0 || r % 10 == 0) {
        /* something that was never an id, or a made-up generation of a real slot */
        pier_id_t made = (pier_id_t)(unsigned)rand_r(seed) << 32 | (unsigned)(rand_r(seed) % 64);
        return r % 20 == 0 ? made : PIER_ID_NONE + (pier_id_t)(r % 2);
    }
    /* mostly recent ids (likely live), sometimes old ones (likely stale) */
    unsigned back = r % 4 ? r % 8 : r % (n < IDS ? n : IDS);
    return atomic_load(&ids[(n - 1 - (back % n)) % IDS]);
}

static void *sender_main(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u;
    while (!atomic_load(&stop_all)) {
        pier_id_t id = pick_id(&seed);
        unsigned what = (unsigned)rand_r(&seed) % 10;
        int rc;
        if (what < 6) {
            rc = pier_send(id, "xx", 2);
            atomic_fetch_add(rc == 0 ? &sends_ok : &sends_stale, 1);
        } else if (what < 8) {
            int *token = malloc(sizeof *token);
            *token = 0x5eed;
            rc = pier_with_conn(id, with_fn, token);
            if (rc == 0)
                atomic_fetch_add(&with_posted, 1);
            else
                free(token); /* refused: the argument is still ours */
        } else {
            rc = pier_close(id);
            atomic_fetch_add(rc == 0 ? &closes_ok : &closes_stale, 1);
        }
        if (rc != 0 && rc != -ENOTCONN)
            atomic_fetch_add(&bad_rc, 1);
        if (rand_r(&seed) % 16 == 0)
            usleep(100);
    }
    return NULL;
}

static void *run_group(void *arg) {
    pier_group_run(arg);
    return NULL;
}

static void test_ids_across_threads(void **state) {
    assert_int_equal(pier_group_new(&group, 2), 0);
    pier_server_t *srv;
    pier_server_opts_t o = {.host = "127.0.0.1", .on_accept = on_accept};
    o.limits.close_ms = 1000;
    assert_int_equal(pier_server_new(&srv, group, &o), 0);
    port = pier_server_port(srv);
    assert_int_equal(pier_server_start(srv), 0);
    /* short waits on both loops, so a missed wake-up costs 20 ms instead of a hang */
    pier_timer_t hb[2];
    for (unsigned i = 0; i < 2; i++) {
        pier_timer_init(pier_group_loop(group, i), &hb[i], heartbeat, NULL);
        pier_timer_start(&hb[i], 20, 20);
    }
    pthread_t gt, ct[CLIENTS], st[SENDERS];
    assert_int_equal(pthread_create(&gt, NULL, run_group, group), 0);
    for (uintptr_t i = 0; i < CLIENTS; i++)
        assert_int_equal(pthread_create(&ct[i], NULL, client_main, (void *)(i + 1)), 0);
    for (uintptr_t i = 0; i < SENDERS; i++)
        assert_int_equal(pthread_create(&st[i], NULL, sender_main, (void *)(i + 1)), 0);

    usleep(RUN_MS * 1000);
    atomic_store(&stop_all, 1);
    for (int i = 0; i < SENDERS; i++)
        pthread_join(st[i], NULL);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(ct[i], NULL);

    /* every client socket is closed: every server connection finishes closing */
    uint64_t end = pier_test_now_ms() + 10000;
    while (pier_server_conns(srv) > 0 && pier_test_now_ms() < end)
        usleep(5000);
    assert_int_equal(pier_server_conns(srv), 0);
    pier_server_stop(srv);
    usleep(50000);
    pier_group_stop(group);
    pthread_join(gt, NULL);
    for (unsigned i = 0; i < 2; i++) {
        pier_timer_stop(&hb[i]);
        pier_loop_run_once(pier_group_loop(group, i), 0); /* tasks still queued run now */
    }

    print_message("accepted %d, exchanges %d, sends %d ok / %d stale, closes %d ok / %d stale, "
                  "with_conn %d posted / %d called / %d live, loops %d/%d\n",
                  accepted, exchanges, sends_ok, sends_stale, closes_ok, closes_stale, with_posted,
                  with_called, with_live, loops_seen[0], loops_seen[1]);
    assert_int_equal(atomic_load(&bad_rc), 0);
    assert_true(atomic_load(&accepted) > 20);
    assert_int_equal(atomic_load(&closed), atomic_load(&accepted));
    assert_true(atomic_load(&exchanges) > 0);
    assert_true(atomic_load(&sends_ok) > 0);
    assert_true(atomic_load(&sends_stale) > 0);
    assert_true(atomic_load(&closes_ok) > 0);
    assert_int_equal(atomic_load(&with_called), atomic_load(&with_posted));
    /* the kernel spread the connections over both loops */
    assert_true(atomic_load(&loops_seen[0]) > 0);
    assert_true(atomic_load(&loops_seen[1]) > 0);
    unsigned n = atomic_load(&nids);
    for (unsigned i = 0; i < (n < IDS ? n : IDS); i++) {
        pier_id_t id = atomic_load(&ids[i]);
        assert_false(pier_id_alive(id));
        assert_int_equal(pier_send(id, "x", 1), -ENOTCONN);
        assert_int_equal(pier_close(id), -ENOTCONN);
    }
    assert_int_equal(pier_server_free(srv), 0);
    assert_int_equal(pier_group_free(group), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_across_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
