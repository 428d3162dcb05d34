/* Timers: one-shot and repeating, order by due time with FIFO among equals, cancel,
 * re-arm, callbacks that stop, restart or free their own timer, heap order over 10,000
 * random timers; and signals delivered through the loop. */
#include "support.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pier_loop_t *new_loop(void) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    return loop;
}

/* Runs the loop until it has no live handles or timeout_ms passes. */
static void run_idle(pier_loop_t *loop, int timeout_ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)timeout_ms;
    while (pier_loop_handles(loop) > 0 && pier_test_now_ms() < end)
        pier_loop_run_once(loop, 50);
}

/* A log of fired timers, by the number each was given. */
typedef struct {
    int fired[64];
    uint64_t at[64];
    int n;
} log_t;

static log_t lg;

static void log_cb(pier_timer_t *t) {
    assert_true(lg.n < 64);
    lg.at[lg.n] = pier_loop_now(t->loop);
    lg.fired[lg.n++] = (int)(intptr_t)t->data;
}

static void test_one_shot(void **state) {
    pier_loop_t *loop = new_loop();
    memset(&lg, 0, sizeof lg);
    pier_timer_t t;
    pier_timer_init(loop, &t, log_cb, (void *)1);
    assert_false(pier_timer_active(&t));
    pier_loop_update_time(loop);
    uint64_t t0 = pier_test_now_ms();
    pier_timer_start(&t, 50, 0);
    assert_true(pier_timer_active(&t));
    assert_int_equal(pier_loop_handles(loop), 1);
    run_idle(loop, 2000);
    uint64_t dt = pier_test_now_ms() - t0;
    assert_int_equal(lg.n, 1);
    assert_true(dt >= 49);
    assert_true(dt < 1000);
    assert_false(pier_timer_active(&t));
    assert_int_equal(pier_loop_handles(loop), 0);
    /* it stays fired */
    pier_loop_run_once(loop, 100);
    assert_int_equal(lg.n, 1);
    pier_test_free_loop(loop);
}

/* A timer started between iterations (before the loop first runs, say) counts from when
 * it was started: the loop's cached time is from its last look at the clock, here its
 * creation, and a timeout counted from that would fire early (a client's connect
 * timeout, armed by pier_client_new well after pier_loop_new, did). */
static void test_start_outside_loop_counts_from_now(void **state) {
    (void)state;
    pier_loop_t *loop = new_loop();
    memset(&lg, 0, sizeof lg);
    pier_timer_t t;
    pier_timer_init(loop, &t, log_cb, (void *)1);
    usleep(150 * 1000);
    uint64_t t0 = pier_test_now_ms();
    pier_timer_start(&t, 200, 0);
    run_idle(loop, 5000);
    assert_int_equal(lg.n, 1);
    assert_true(pier_test_now_ms() - t0 >= 199);
    pier_test_free_loop(loop);
}

static void test_zero_timeout(void **state) {
    pier_loop_t *loop = new_loop();
    memset(&lg, 0, sizeof lg);
    pier_timer_t t;
    pier_timer_init(loop, &t, log_cb, (void *)1);
    pier_loop_update_time(loop);
    pier_timer_start(&t, 0, 0);
    /* due now: the next iteration fires it without waiting */
    uint64_t t0 = pier_test_now_ms();
    pier_loop_run_once(loop, 5000);
    assert_int_equal(lg.n, 1);
    assert_true(pier_test_now_ms() - t0 < 1000);
    pier_test_free_loop(loop);
}

static int rep_count;
static void rep_cb(pier_timer_t *t) {
    rep_count++;
    if (rep_count == 5)
        pier_timer_stop(t); /* stopping itself from its callback */
}

static void test_repeat(void **state) {
    pier_loop_t *loop = new_loop();
    rep_count = 0;
    pier_timer_t t;
    pier_timer_init(loop, &t, rep_cb, NULL);
    pier_loop_update_time(loop);
    uint64_t t0 = pier_test_now_ms();
    pier_timer_start(&t, 10, 20);
    run_idle(loop, 3000);
    uint64_t dt = pier_test_now_ms() - t0;
    assert_int_equal(rep_count, 5);
    assert_true(dt >= 10 + 4 * 20 - 2);
    assert_false(pier_timer_active(&t));
    pier_loop_run_once(loop, 60);
    assert_int_equal(rep_count, 5);
    pier_test_free_loop(loop);
}

/* A repeating timer stays active and counted as one handle between firings. */
static void count_cb(pier_timer_t *t) { (*(int *)t->data)++; }

static void test_repeat_stays_active(void **state) {
    pier_loop_t *loop = new_loop();
    int n = 0;
    pier_timer_t t;
    pier_timer_init(loop, &t, count_cb, &n);
    pier_loop_update_time(loop);
    pier_timer_start(&t, 5, 5);
    uint64_t end = pier_test_now_ms() + 3000;
    while (n < 3 && pier_test_now_ms() < end)
        pier_loop_run_once(loop, 50);
    assert_int_equal(n, 3);
    assert_true(pier_timer_active(&t));
    assert_int_equal(pier_loop_handles(loop), 1);
    pier_timer_stop(&t);
    assert_int_equal(pier_loop_handles(loop), 0);
    pier_test_free_loop(loop);
}

static void test_order(void **state) {
    pier_loop_t *loop = new_loop();
    memset(&lg, 0, sizeof lg);
    pier_timer_t t[6];
    /* due: 40, 10, 30, 10, 20, 10 -> 2,4,6 (FIFO among the three at 10), 5, 3, 1 */
    const uint64_t due[6] = {40, 10, 30, 10, 20, 10};
    pier_loop_update_time(loop);
    for (int i = 0; i < 6; i++) {
        pier_timer_init(loop, &t[i], log_cb, (void *)(intptr_t)(i + 1));
        pier_timer_start(&t[i], due[i], 0);
    }
    assert_int_equal(pier_loop_handles(loop), 6);
    run_idle(loop, 2000);
    const int want[6] = {2, 4, 6, 5, 3, 1};
    assert_int_equal(lg.n, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(lg.fired[i], want[i]);
    for (int i = 1; i < 6; i++)
        assert_true(lg.at[i] >= lg.at[i - 1]);
    pier_test_free_loop(loop);
}

static void test_cancel(void **state) {
    pier_loop_t *loop = new_loop();
    memset(&lg, 0, sizeof lg);
    pier_timer_t a, b, c;
    pier_loop_update_time(loop);
    pier_timer_init(loop, &a, log_cb, (void *)1);
    pier_timer_init(loop, &b, log_cb, (void *)2);
    pier_timer_init(loop, &c, log_cb, (void *)3);
    pier_timer_start(&a, 10, 0);
    pier_timer_start(&b, 20, 0);
    pier_timer_start(&c, 30, 0);
    pier_timer_stop(&b);
    pier_timer_stop(&b); /* a no-op on an inactive timer */
    assert_false(pier_timer_active(&b));
    assert_int_equal(pier_loop_handles(loop), 2);
    pier_timer_t never;
    pier_timer_init(loop, &never, log_cb, (void *)9);
    pier_timer_stop(&never);
    assert_int_equal(pier_loop_handles(loop), 2);
    run_idle(loop, 2000);
    assert_int_equal(lg.n, 2);
    assert_int_equal(lg.fired[0], 1);
    assert_int_equal(lg.fired[1], 3);
    pier_test_free_loop(loop);
}

static void test_rearm(void **state) {
    pier_loop_t *loop = new_loop();
    memset(&lg, 0, sizeof lg);
    pier_timer_t a, b;
    pier_loop_update_time(loop);
    pier_timer_init(loop, &a, log_cb, (void *)1);
    pier_timer_init(loop, &b, log_cb, (void *)2);
    pier_timer_start(&a, 20, 0);
    pier_timer_start(&b, 60, 0);
    /* restarting moves a behind b, and it is still one handle */
    pier_timer_start(&a, 120, 0);
    assert_int_equal(pier_loop_handles(loop), 2);
    uint64_t t0 = pier_test_now_ms();
    run_idle(loop, 3000);
    assert_int_equal(lg.n, 2);
    assert_int_equal(lg.fired[0], 2);
    assert_int_equal(lg.fired[1], 1);
    assert_true(pier_test_now_ms() - t0 >= 115);
    /* and moving a timer earlier works too */
    memset(&lg, 0, sizeof lg);
    pier_loop_update_time(loop);
    pier_timer_start(&a, 5000, 0);
    pier_timer_start(&b, 40, 0);
    pier_timer_start(&a, 10, 0);
    t0 = pier_test_now_ms();
    run_idle(loop, 3000);
    assert_true(pier_test_now_ms() - t0 < 2000);
    assert_int_equal(lg.n, 2);
    assert_int_equal(lg.fired[0], 1);
    assert_int_equal(lg.fired[1], 2);
    pier_test_free_loop(loop);
}

/* ---- callbacks acting on their own timer ---- */

static int restarts;
static void restart_cb(pier_timer_t *t) {
    if (++restarts < 4)
        pier_timer_start(t, 5, 0);
}

static void test_restart_from_cb(void **state) {
    pier_loop_t *loop = new_loop();
    restarts = 0;
    pier_timer_t t;
    pier_timer_init(loop, &t, restart_cb, NULL);
    pier_loop_update_time(loop);
    pier_timer_start(&t, 5, 0);
    run_idle(loop, 2000);
    assert_int_equal(restarts, 4);
    assert_false(pier_timer_active(&t));
    pier_test_free_loop(loop);
}

/* A repeating timer restarted from its callback takes the new schedule. */
static int resched;
static void resched_cb(pier_timer_t *t) {
    if (++resched == 1)
        pier_timer_start(t, 100000, 0);
}

static void test_repeat_restarted_from_cb(void **state) {
    pier_loop_t *loop = new_loop();
    resched = 0;
    pier_timer_t t;
    pier_timer_init(loop, &t, resched_cb, NULL);
    pier_loop_update_time(loop);
    pier_timer_start(&t, 5, 5);
    for (int i = 0; i < 20; i++)
        pier_loop_run_once(loop, 10);
    assert_int_equal(resched, 1);
    assert_true(pier_timer_active(&t));
    assert_int_equal(t.repeat, 0);
    assert_int_equal(pier_loop_handles(loop), 1);
    pier_timer_stop(&t);
    pier_test_free_loop(loop);
}

static int freed;
static void free_self_cb(pier_timer_t *t) {
    freed++;
    free(t); /* ASan reports any later touch */
}

static void free_repeating_cb(pier_timer_t *t) {
    freed++;
    pier_timer_stop(t);
    free(t);
}

static void test_free_from_cb(void **state) {
    pier_loop_t *loop = new_loop();
    freed = 0;
    pier_loop_update_time(loop);
    for (int i = 0; i < 8; i++) {
        pier_timer_t *t = malloc(sizeof *t);
        pier_timer_init(loop, t, i % 2 ? free_self_cb : free_repeating_cb, NULL);
        pier_timer_start(t, (uint64_t)(i % 3) * 5, i % 2 ? 0 : 7);
    }
    run_idle(loop, 2000);
    assert_int_equal(freed, 8);
    pier_test_free_loop(loop);
}

/* A callback that stops another timer due in the same iteration: that one never fires. */
static pier_timer_t *victim;
static void stop_other_cb(pier_timer_t *t) {
    log_cb(t);
    pier_timer_stop(victim);
}

static void test_stop_other_from_cb(void **state) {
    pier_loop_t *loop = new_loop();
    memset(&lg, 0, sizeof lg);
    pier_timer_t a, b;
    pier_loop_update_time(loop);
    pier_timer_init(loop, &a, stop_other_cb, (void *)1);
    pier_timer_init(loop, &b, log_cb, (void *)2);
    victim = &b;
    pier_timer_start(&a, 10, 0);
    pier_timer_start(&b, 10, 0);
    usleep(20000); /* both are due when the loop next looks */
    run_idle(loop, 2000);
    assert_int_equal(lg.n, 1);
    assert_int_equal(lg.fired[0], 1);
    pier_test_free_loop(loop);
}

/* A timer re-armed for 0 from its callback fires once per iteration, not forever in one. */
static int spins;
static void spin_cb(pier_timer_t *t) {
    spins++;
    pier_timer_start(t, 0, 0);
}

static void test_zero_rearm_does_not_spin(void **state) {
    pier_loop_t *loop = new_loop();
    spins = 0;
    pier_timer_t t;
    pier_timer_init(loop, &t, spin_cb, NULL);
    pier_loop_update_time(loop);
    pier_timer_start(&t, 0, 0);
    for (int i = 0; i < 3; i++)
        pier_loop_run_once(loop, 0);
    assert_int_equal(spins, 3);
    pier_timer_stop(&t);
    pier_test_free_loop(loop);
}

/* ---- 10,000 random timers: the heap hands them out in (due, start order) ---- */

#define NT 10000
typedef struct {
    pier_timer_t t;
    uint64_t due;
    int idx;
    int fired;
    int stopped;
} rt_t;

static rt_t *rts;
static int nfired, misorder, fired_stopped;
static uint64_t last_due;
static int last_idx;

static void rt_cb(pier_timer_t *t) {
    rt_t *r = t->data;
    if (r->stopped)
        fired_stopped++;
    r->fired++;
    /* equal due: FIFO by start order (idx), since every one was started once in order */
    if (r->due < last_due || (r->due == last_due && r->idx < last_idx))
        misorder++;
    last_due = r->due;
    last_idx = r->idx;
    nfired++;
}

static void test_many_random(void **state) {
    pier_loop_t *loop = new_loop();
    rts = calloc(NT, sizeof *rts);
    nfired = misorder = fired_stopped = 0;
    last_due = 0;
    last_idx = -1;
    unsigned seed = 12345;
    pier_loop_update_time(loop);
    uint64_t base = pier_loop_now(loop);
    for (int i = 0; i < NT; i++) {
        rts[i].idx = i;
        pier_timer_init(loop, &rts[i].t, rt_cb, &rts[i]);
        uint64_t ms = (uint64_t)(rand_r(&seed) % 300);
        pier_timer_start(&rts[i].t, ms, 0);
        /* started outside the loop: counted from the clock at the start, never before */
        assert_true(rts[i].t.due >= base + ms && rts[i].t.due <= pier_test_now_ms() + ms);
        rts[i].due = rts[i].t.due;
    }
    assert_int_equal(pier_loop_handles(loop), NT);
    /* stop a random third: removal from the middle of the heap must keep it ordered */
    int nstopped = 0;
    for (int i = 0; i < NT; i++) {
        if (rand_r(&seed) % 3 == 0) {
            pier_timer_stop(&rts[i].t);
            rts[i].stopped = 1;
            nstopped++;
        }
    }
    assert_int_equal(pier_loop_handles(loop), NT - nstopped);
    run_idle(loop, 5000);
    assert_int_equal(nfired, NT - nstopped);
    assert_int_equal(misorder, 0);
    assert_int_equal(fired_stopped, 0);
    for (int i = 0; i < NT; i++)
        assert_int_equal(rts[i].fired, rts[i].stopped ? 0 : 1);
    free(rts);
    pier_test_free_loop(loop);
}

/* Restarts churn the middle of the heap: each timer is re-armed several times at random
 * (an active timer is removed and inserted again), and stopped ones are restarted. What
 * fires is exactly the last arming of each, in (due, last start) order. */
static void test_restart_churn(void **state) {
    pier_loop_t *loop = new_loop();
    enum { N = 3000 };
    rts = calloc(N, sizeof *rts);
    nfired = misorder = fired_stopped = 0;
    last_due = 0;
    last_idx = -1;
    unsigned seed = 777;
    pier_loop_update_time(loop);
    uint64_t base = pier_loop_now(loop);
    /* idx records the order of each timer's last start */
    int order = 0;
    for (int i = 0; i < N; i++) {
        uint64_t ms = (uint64_t)(rand_r(&seed) % 200);
        pier_timer_init(loop, &rts[i].t, rt_cb, &rts[i]);
        pier_timer_start(&rts[i].t, ms, 0);
        assert_true(rts[i].t.due >= base + ms);
        rts[i].due = rts[i].t.due;
        rts[i].idx = order++;
    }
    for (int i = 0; i < N; i++)
        if (rand_r(&seed) % 4 == 0)
            pier_timer_stop(&rts[i].t);
    /* re-arm in a random order */
    for (int round = 0; round < 3; round++) {
        for (int k = 0; k < N; k++) {
            int i = rand_r(&seed) % N;
            uint64_t ms = (uint64_t)(rand_r(&seed) % 200);
            pier_timer_start(&rts[i].t, ms, 0);
            assert_true(rts[i].t.due >= base + ms);
            rts[i].due = rts[i].t.due;
            rts[i].idx = order++;
            rts[i].stopped = 0;
        }
    }
    int live = 0;
    for (int i = 0; i < N; i++) {
        if (!pier_timer_active(&rts[i].t))
            rts[i].stopped = 1;
        else
            live++;
    }
    assert_int_equal(pier_loop_handles(loop), live);
    run_idle(loop, 5000);
    assert_int_equal(nfired, live);
    assert_int_equal(misorder, 0);
    assert_int_equal(fired_stopped, 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(rts[i].fired, rts[i].stopped ? 0 : 1);
    free(rts);
    pier_test_free_loop(loop);
}

/* ---- signals ---- */

typedef struct {
    int n;
    int signo;
    pier_loop_t *loop;
    int stop;
} sig_t_;

static void sig_cb(pier_loop_t *loop, int signo, void *arg) {
    sig_t_ *s = arg;
    assert_true(pier_loop_is_current(loop));
    s->n++;
    s->signo = signo;
    s->loop = loop;
    if (s->stop)
        pier_loop_stop(loop);
}

static void test_signal(void **state) {
    pier_loop_t *loop = new_loop();
    sig_t_ s = {0};
    assert_int_equal(pier_loop_signal(loop, SIGUSR1, sig_cb, &s), 0);
    assert_int_equal(pier_loop_handles(loop), 1);
    assert_int_equal(pier_loop_signal(loop, SIGUSR1, sig_cb, &s), -EEXIST);
    assert_int_equal(pier_loop_signal(loop, SIGKILL, sig_cb, &s), -EINVAL);
    assert_int_equal(pier_loop_signal(loop, 0, sig_cb, &s), -EINVAL);
    assert_int_equal(pier_loop_signal(loop, 65, sig_cb, &s), -EINVAL);
    assert_int_equal(pier_loop_signal(loop, SIGUSR2, NULL, &s), -EINVAL);
    /* the signal would kill the process if the loop did not take it */
    assert_int_equal(raise(SIGUSR1), 0);
    assert_int_equal(s.n, 0); /* delivered on the loop, not in a handler */
    for (int i = 0; i < 100 && s.n == 0; i++)
        pier_loop_run_once(loop, 10);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.signo, SIGUSR1);
    assert_ptr_equal(s.loop, loop);

    /* a signal callback may stop pier_loop_run */
    s.stop = 1;
    assert_int_equal(pier_loop_signal(loop, SIGUSR2, sig_cb, &s), 0);
    assert_int_equal(pier_loop_handles(loop), 2);
    raise(SIGUSR2);
    assert_int_equal(pier_loop_run(loop), 0);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.signo, SIGUSR2);

    pier_loop_signal_stop(loop, SIGUSR1);
    pier_loop_signal_stop(loop, SIGUSR1); /* no-op */
    assert_int_equal(pier_loop_handles(loop), 1);
    pier_loop_signal_stop(loop, SIGUSR2);
    assert_int_equal(pier_loop_handles(loop), 0);
    /* watching again after a stop works */
    s.stop = 0;
    assert_int_equal(pier_loop_signal(loop, SIGUSR1, sig_cb, &s), 0);
    raise(SIGUSR1);
    for (int i = 0; i < 100 && s.n < 3; i++)
        pier_loop_run_once(loop, 10);
    assert_int_equal(s.n, 3);
    pier_loop_signal_stop(loop, SIGUSR1);
    pier_test_free_loop(loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_shot),
        cmocka_unit_test(test_zero_timeout),
        cmocka_unit_test(test_start_outside_loop_counts_from_now),
        cmocka_unit_test(test_repeat),
        cmocka_unit_test(test_repeat_stays_active),
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_rearm),
        cmocka_unit_test(test_restart_from_cb),
        cmocka_unit_test(test_repeat_restarted_from_cb),
        cmocka_unit_test(test_free_from_cb),
        cmocka_unit_test(test_stop_other_from_cb),
        cmocka_unit_test(test_zero_rearm_does_not_spin),
        cmocka_unit_test(test_many_random),
        cmocka_unit_test(test_restart_churn),
        cmocka_unit_test(test_signal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
