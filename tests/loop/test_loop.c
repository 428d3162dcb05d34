/* The loop itself: creation and freeing, run/stop/run_once, posted tasks in FIFO order,
 * posting and stopping from other threads.
 *
 * pier-test: threads */
#include "support.h"

#include "loop/layer.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void noop_timer(pier_timer_t *t) { (void)t; }

static void test_new_free(void **state) {
    pier_loop_t *loop = NULL;
    assert_int_equal(pier_loop_new(&loop), 0);
    assert_non_null(loop);
    assert_int_equal(pier_loop_handles(loop), 0);
    int x;
    pier_loop_set_data(loop, &x);
    assert_ptr_equal(pier_loop_data(loop), &x);
    assert_int_equal(pier_loop_free(NULL), 0);
    pier_test_free_loop(loop);
}

static void test_free_busy(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    pier_timer_t t;
    pier_timer_init(loop, &t, noop_timer, NULL);
    pier_timer_start(&t, 60000, 0);
    assert_int_equal(pier_loop_handles(loop), 1);
    /* a live handle: nothing is freed, the loop stays usable */
    assert_int_equal(pier_loop_free(loop), -EBUSY);
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_true(pier_timer_active(&t));
    pier_timer_stop(&t);
    assert_int_equal(pier_loop_handles(loop), 0);
    pier_test_free_loop(loop);
}

/* ---- run / stop / run_once ---- */

static void stop_task(void *arg) { pier_loop_stop(arg); }

typedef struct {
    pier_loop_t *loop;
    int nested_run;
    int current;
    int ran;
} nest_t;

static void nest_task(void *arg) {
    nest_t *n = arg;
    n->nested_run = pier_loop_run(n->loop);
    n->current = pier_loop_is_current(n->loop);
    n->ran = 1;
    pier_loop_stop(n->loop);
}

static void test_run_stop(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    assert_false(pier_loop_is_current(loop));
    nest_t n = {.loop = loop};
    assert_int_equal(pier_loop_post(loop, nest_task, &n), 0);
    assert_int_equal(pier_loop_run(loop), 0);
    assert_true(n.ran);
    assert_int_equal(n.nested_run, -EBUSY);
    assert_true(n.current);
    assert_false(pier_loop_is_current(loop));
    /* the loop can run again after a stop */
    assert_int_equal(pier_loop_post(loop, stop_task, loop), 0);
    assert_int_equal(pier_loop_run(loop), 0);
    pier_test_free_loop(loop);
}

static void test_run_once_timeout(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    uint64_t t0 = pier_test_now_ms();
    assert_int_equal(pier_loop_run_once(loop, 50), 0);
    uint64_t dt = pier_test_now_ms() - t0;
    assert_true(dt >= 45);
    assert_true(dt < 2000);
    /* 0: never waits */
    t0 = pier_test_now_ms();
    for (int i = 0; i < 100; i++)
        assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_true(pier_test_now_ms() - t0 < 1000);
    /* the cached clock moves with iterations */
    uint64_t before = pier_loop_now(loop);
    usleep(20000);
    pier_loop_run_once(loop, 0);
    assert_true(pier_loop_now(loop) >= before + 15);
    pier_test_free_loop(loop);
}

/* A posted task wakes a loop blocked in run_once(-1). */
static void *post_later(void *arg) {
    usleep(50000);
    pier_loop_post(arg, stop_task, arg);
    return NULL;
}

static void test_post_wakes_blocked_wait(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, post_later, loop), 0);
    uint64_t t0 = pier_test_now_ms();
    assert_int_equal(pier_loop_run(loop), 0);
    assert_true(pier_test_now_ms() - t0 < 5000);
    pthread_join(th, NULL);
    pier_test_free_loop(loop);
}

/* ---- posted tasks ---- */

typedef struct {
    int order[64];
    int n;
    pier_loop_t *loop;
} fifo_t;

typedef struct {
    fifo_t *f;
    int v;
} fifo_arg_t;

static void fifo_task(void *arg) {
    fifo_arg_t *a = arg;
    a->f->order[a->f->n++] = a->v;
}

static void test_post_fifo(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    fifo_t f = {.loop = loop};
    fifo_arg_t args[50];
    for (int i = 0; i < 50; i++) {
        args[i] = (fifo_arg_t){&f, i};
        assert_int_equal(pier_loop_post(loop, fifo_task, &args[i]), 0);
    }
    assert_int_equal(f.n, 0); /* never run inline */
    assert_int_equal(pier_loop_run_once(loop, 1000), 0);
    assert_int_equal(f.n, 50);
    for (int i = 0; i < 50; i++)
        assert_int_equal(f.order[i], i);
    assert_int_equal(pier_loop_post(NULL, fifo_task, NULL), -EINVAL);
    assert_int_equal(pier_loop_post(loop, NULL, NULL), -EINVAL);
    pier_test_free_loop(loop);
}

/* A task that re-posts itself runs once per iteration: it cannot starve the loop. */
typedef struct {
    pier_loop_t *loop;
    int runs;
} repost_t;

static void repost_task(void *arg) {
    repost_t *r = arg;
    r->runs++;
    pier_loop_post(r->loop, repost_task, r);
}

static void late_task(void *arg) { (*(int *)arg)++; }

static void test_post_repost_and_drop(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    repost_t r = {.loop = loop};
    pier_loop_post(loop, repost_task, &r);
    for (int i = 0; i < 5; i++)
        assert_int_equal(pier_loop_run_once(loop, 1000), 0);
    assert_int_equal(r.runs, 5);
    /* tasks still queued at free run there, once each; the self-reposting one is cut
     * off after a bounded number of passes and freed (LeakSanitizer checks) */
    int late = 0;
    pier_loop_post(loop, late_task, &late);
    pier_loop_post(loop, late_task, &late);
    assert_int_equal(pier_loop_handles(loop), 0);
    assert_int_equal(pier_loop_free(loop), 0);
    assert_int_equal(late, 2);
}

/* Several threads post to a running loop: every task runs exactly once, and the tasks of
 * one thread run in the order that thread posted them. */
#define POSTERS 4
#define PER_POSTER 20000

/* Posts arrive every few microseconds while this runs, so the loop is given a long wait:
 * a wait that lasts anywhere near it means a post did not wake the loop (a wake-up lost
 * between draining the eventfd and clearing the pending flag). */
#define MT_WAIT_MS 2000

typedef struct {
    pier_loop_t *loop;
    int next[POSTERS];     /* touched only on the loop thread */
    int bad_order;
    int total;
    atomic_int go;
    atomic_int done;       /* posters finished */
} mt_t;

static mt_t mt;
static uint32_t mt_args[POSTERS][PER_POSTER];

static void mt_task(void *arg) {
    uint32_t v = *(uint32_t *)arg;
    unsigned th = v >> 24, seq = v & 0xffffff;
    if ((int)seq != mt.next[th])
        mt.bad_order++;
    mt.next[th] = (int)seq + 1;
    mt.total++;
}

static void *poster(void *arg) {
    unsigned th = (unsigned)(uintptr_t)arg;
    while (!atomic_load(&mt.go)) {
    }
    for (unsigned i = 0; i < PER_POSTER; i++) {
        mt_args[th][i] = th << 24 | i;
        while (pier_loop_post(mt.loop, mt_task, &mt_args[th][i]) == -ENOMEM)
            usleep(100);
        if (i % 1000 == 0)
            usleep(100); /* let the loop catch up and wait now and then */
    }
    atomic_fetch_add(&mt.done, 1);
    return NULL;
}

static void test_post_threads(void **state) {
    memset(&mt, 0, sizeof mt);
    assert_int_equal(pier_loop_new(&mt.loop), 0);
    pthread_t th[POSTERS];
    for (uintptr_t i = 0; i < POSTERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, poster, (void *)i), 0);
    atomic_store(&mt.go, 1);
    uint64_t end = pier_test_now_ms() + 60000, slowest = 0;
    while (mt.total < POSTERS * PER_POSTER && pier_test_now_ms() < end) {
        int posting = atomic_load(&mt.done) < POSTERS;
        uint64_t t0 = pier_test_now_ms();
        pier_loop_run_once(mt.loop, MT_WAIT_MS);
        if (posting && pier_test_now_ms() - t0 > slowest)
            slowest = pier_test_now_ms() - t0;
    }
    for (int i = 0; i < POSTERS; i++)
        pthread_join(th[i], NULL);
    pier_loop_run_once(mt.loop, 20); /* nothing more arrives after the last one */
    assert_int_equal(mt.total, POSTERS * PER_POSTER);
    assert_int_equal(mt.bad_order, 0);
    for (int i = 0; i < POSTERS; i++)
        assert_int_equal(mt.next[i], PER_POSTER);
    assert_true(slowest < MT_WAIT_MS / 2);
    pier_test_free_loop(mt.loop);
}

/* A loop blocked with no timeout is woken by every post from another thread, however the
 * posts interleave with the loop draining its wake-up. */
static atomic_int wk_stop, wk_ran;

static void wk_task(void *arg) { atomic_fetch_add(&wk_ran, 1); }

static void *wk_poster(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    while (!atomic_load(&wk_stop)) {
        pier_loop_post(arg, wk_task, NULL);
        usleep(rand_r(&seed) % 50);
    }
    return NULL;
}

static void test_post_wakeup_not_lost(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, wk_poster, loop), 0);
    uint64_t end = pier_test_now_ms() + 3000, slowest = 0;
    while (pier_test_now_ms() < end) {
        uint64_t t0 = pier_test_now_ms();
        pier_loop_run_once(loop, 1000);
        if (pier_test_now_ms() - t0 > slowest)
            slowest = pier_test_now_ms() - t0;
        if (slowest >= 500)
            break;
    }
    atomic_store(&wk_stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    pier_loop_run_once(loop, 0);
    assert_true(atomic_load(&wk_ran) > 0);
    assert_true(slowest < 500); /* posts came every ~50 us: a long sleep is a lost wake-up */
    pier_test_free_loop(loop);
}

/* ---- stop from another thread ---- */

typedef struct {
    pier_loop_t *loop;
    atomic_int running;
    int busy_once;
} stopper_t;

static void mark_running(void *arg) { atomic_store(&((stopper_t *)arg)->running, 1); }

static void *stopper(void *arg) {
    stopper_t *s = arg;
    while (!atomic_load(&s->running))
        usleep(1000);
    usleep(30000);
    /* the loop runs on another thread: run_once here must refuse */
    s->busy_once = pier_loop_run_once(s->loop, 0);
    pier_loop_stop(s->loop);
    pier_loop_stop(s->loop); /* idempotent */
    return NULL;
}

/* ---- re-entering the loop ---- */

/* pier_loop_run_once from inside one of the loop's own callbacks must not run a nested
 * iteration: that would run the close pass, and so on_close, under a callback that is
 * still on the stack. It answers -EBUSY and runs nothing. */
typedef struct {
    pier_loop_t *loop;
    int nested_rc;
    int other_ran_inside;
    int other_runs;
} reenter_t;

static void other_task(void *arg) { ((reenter_t *)arg)->other_runs++; }

static void nesting_task(void *arg) {
    reenter_t *n = arg;
    pier_loop_post(n->loop, other_task, n);
    n->nested_rc = pier_loop_run_once(n->loop, 0);
    n->other_ran_inside = n->other_runs;
}

static void nesting_timer(pier_timer_t *t) {
    reenter_t *n = t->data;
    n->nested_rc = pier_loop_run_once(n->loop, 0);
}

static void test_run_once_refuses_to_nest(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    reenter_t n = {.loop = loop, .nested_rc = 1};
    assert_int_equal(pier_loop_post(loop, nesting_task, &n), 0);
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_int_equal(n.nested_rc, -EBUSY);
    assert_int_equal(n.other_ran_inside, 0);
    /* the outer loop carries on normally */
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_int_equal(n.other_runs, 1);
    /* from a timer callback under pier_loop_run too */
    pier_timer_t t;
    pier_timer_init(loop, &t, nesting_timer, &n);
    n.nested_rc = 1;
    pier_timer_start(&t, 0, 0);
    assert_int_equal(pier_loop_run_once(loop, 100), 0);
    if (n.nested_rc == 1) /* the clock may not have moved yet */
        assert_int_equal(pier_loop_run_once(loop, 100), 0);
    assert_int_equal(n.nested_rc, -EBUSY);
    pier_test_free_loop(loop);
}

/* ---- embedded tasks ---- */

typedef struct {
    pier_task_t task;
    pier_loop_t *loop;
    int runs;
    int repost_rc;
    int again;
} etask_t;

static void etask_run(void *arg) {
    etask_t *e = arg;
    e->runs++;
    if (e->again) {
        e->again--;
        e->repost_rc = pier_loop_post_task(e->loop, &e->task); /* the task may post itself */
    }
}

static void test_embedded_task(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    etask_t e = {.loop = loop, .again = 1};
    pier_task_init(&e.task, etask_run, &e);
    assert_int_equal(pier_loop_post_task(loop, &e.task), 0);
    /* queued twice is a caller bug: refused, and the task still runs once */
    assert_int_equal(pier_loop_post_task(loop, &e.task), -EALREADY);
    assert_int_equal(pier_loop_post_task(loop, NULL), -EINVAL);
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_int_equal(e.runs, 1);
    assert_int_equal(e.repost_rc, 0);
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_int_equal(e.runs, 2);
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_int_equal(e.runs, 2);

    /* FIFO with allocated posts */
    fifo_t f = {.loop = loop};
    fifo_arg_t a0 = {&f, 0}, a2 = {&f, 2};
    pier_task_t t1;
    fifo_arg_t a1 = {&f, 1};
    pier_task_init(&t1, fifo_task, &a1);
    assert_int_equal(pier_loop_post(loop, fifo_task, &a0), 0);
    assert_int_equal(pier_loop_post_task(loop, &t1), 0);
    assert_int_equal(pier_loop_post(loop, fifo_task, &a2), 0);
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_int_equal(f.n, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(f.order[i], i);
    /* a task still queued when the loop is freed runs there, and can be posted again
     * afterwards to another loop */
    assert_int_equal(pier_loop_post_task(loop, &t1), 0);
    pier_test_free_loop(loop);
    assert_int_equal(f.n, 4);
    assert_int_equal(pier_loop_new(&loop), 0);
    assert_int_equal(pier_loop_post_task(loop, &t1), 0);
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_int_equal(f.n, 5);
    pier_test_free_loop(loop);
}

/* An embedded task posted from many threads at once: each thread owns its task and
 * posts it again only after it has run, so every post is counted exactly once. */
typedef struct {
    pier_task_t task;
    pier_loop_t *loop;
    atomic_int ran;
    int posts;
} ptask_t;

static void ptask_run(void *arg) { atomic_fetch_add(&((ptask_t *)arg)->ran, 1); }

static void *ptask_thread(void *arg) {
    ptask_t *p = arg;
    for (int i = 0; i < p->posts; i++) {
        while (atomic_load(&p->ran) < i)
            sched_yield();
        assert_int_equal(pier_loop_post_task(p->loop, &p->task), 0);
    }
    return NULL;
}

static void test_embedded_task_threads(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    enum { NTH = 4, POSTS = 500 };
    ptask_t p[NTH];
    pthread_t th[NTH];
    for (int i = 0; i < NTH; i++) {
        p[i].loop = loop;
        p[i].posts = POSTS;
        atomic_init(&p[i].ran, 0);
        pier_task_init(&p[i].task, ptask_run, &p[i]);
        assert_int_equal(pthread_create(&th[i], NULL, ptask_thread, &p[i]), 0);
    }
    int done = 0;
    for (int k = 0; k < 100000 && !done; k++) {
        pier_loop_run_once(loop, 10);
        done = 1;
        for (int i = 0; i < NTH; i++)
            done &= atomic_load(&p[i].ran) == POSTS;
    }
    for (int i = 0; i < NTH; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(atomic_load(&p[i].ran), POSTS);
    }
    pier_test_free_loop(loop);
}

/* ---- deferred passes (loop/layer.h) ---- */

typedef struct {
    pier__pending_t node;
    pier_loop_t *loop;
    int pass;
    int requeue;  /* queue itself again this many times */
    char tag;
} pnode_t;

static char pass_log[64];
static int pass_n;

static void pnode_cb(pier__pending_t *p) {
    pnode_t *n = pier__container_of(p, pnode_t, node);
    pass_log[pass_n++] = n->tag;
    if (n->requeue > 0) {
        n->requeue--;
        pier__pending_add(n->loop, n->pass, &n->node);
    }
}

static void queue_flush_task(void *arg) {
    pnode_t *n = arg;
    pass_log[pass_n++] = 'T';
    pier__pending_add(n->loop, n->pass, &n->node);
}

/* The passes run in their fixed order (READ, timers, tasks, FLUSH, CLOSE); a READ node
 * queued again waits for the next iteration, FLUSH and CLOSE run until empty, and the
 * loop does not sleep while a node waits (run_once(-1) would otherwise hang here). */
static void test_passes(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    pass_n = 0;
    pnode_t r = {.loop = loop, .pass = PIER__PASS_READ, .requeue = 2, .tag = 'r'};
    pnode_t f = {.loop = loop, .pass = PIER__PASS_FLUSH, .requeue = 1, .tag = 'f'};
    pnode_t c = {.loop = loop, .pass = PIER__PASS_CLOSE, .tag = 'c'};
    pier__pending_init(&r.node, pnode_cb);
    pier__pending_init(&f.node, pnode_cb);
    pier__pending_init(&c.node, pnode_cb);
    pier__pending_add(loop, PIER__PASS_CLOSE, &c.node);
    pier__pending_add(loop, PIER__PASS_READ, &r.node);
    pier__pending_add(loop, PIER__PASS_READ, &r.node); /* already queued: once */
    assert_int_equal(pier_loop_post(loop, queue_flush_task, &f), 0);
    assert_int_equal(pier_loop_run_once(loop, -1), 0);
    pass_log[pass_n] = 0;
    assert_string_equal(pass_log, "rTffc");
    assert_int_equal(pier_loop_run_once(loop, -1), 0);
    assert_int_equal(pier_loop_run_once(loop, -1), 0);
    pass_log[pass_n] = 0;
    assert_string_equal(pass_log, "rTffcrr");
    assert_false(pier__pending_queued(&r.node));
    /* a cancelled node does not run */
    pier__pending_add(loop, PIER__PASS_CLOSE, &c.node);
    assert_true(pier__pending_queued(&c.node));
    pier__pending_cancel(&c.node);
    pier__pending_cancel(&c.node);
    assert_int_equal(pier_loop_run_once(loop, 0), 0);
    assert_int_equal(pass_n, 7);
    pier_test_free_loop(loop);
}

static void test_stop_from_thread(void **state) {
    stopper_t s = {0};
    assert_int_equal(pier_loop_new(&s.loop), 0);
    pthread_t th;
    pier_loop_post(s.loop, mark_running, &s);
    assert_int_equal(pthread_create(&th, NULL, stopper, &s), 0);
    uint64_t t0 = pier_test_now_ms();
    /* nothing else to do: without the stop this would block forever */
    assert_int_equal(pier_loop_run(s.loop), 0);
    assert_true(pier_test_now_ms() - t0 < 5000);
    pthread_join(th, NULL);
    assert_int_equal(s.busy_once, -EBUSY);
    pier_test_free_loop(s.loop);
}

/* ---- groups ---- */

static void test_group(void **state) {
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 3), 0);
    assert_int_equal(pier_group_size(g), 3);
    assert_non_null(pier_group_loop(g, 2));
    assert_null(pier_group_loop(g, 3));
    assert_ptr_not_equal(pier_group_loop(g, 0), pier_group_loop(g, 1));
    /* a live handle on one loop keeps the group from being freed */
    pier_timer_t t;
    pier_timer_init(pier_group_loop(g, 1), &t, noop_timer, NULL);
    pier_timer_start(&t, 60000, 0);
    assert_int_equal(pier_group_free(g), -EBUSY);
    pier_timer_stop(&t);
    assert_int_equal(pier_group_free(g), 0);
}

static void *group_stopper(void *arg) {
    usleep(50000);
    pier_group_stop(arg);
    return NULL;
}

static void test_group_run_stop(void **state) {
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 2), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, group_stopper, g), 0);
    assert_int_equal(pier_group_run(g), 0);
    pthread_join(th, NULL);
    assert_int_equal(pier_group_free(g), 0);
}

/* After pier_group_run returns, its loops are ordinary stopped loops again: run_once
 * waits as asked (pier_group_free and drain loops rely on that to give closes time), and
 * the group can run a second time. (pier_group_run once left the stop flags set after
 * its final pier_group_stop, so run_once never waited and a re-run returned at once.) */
/* Stops loop 0 only: pier_group_run stops the others itself. A thread that stopped every
 * loop could reach loop 1 after pier_group_run had returned and cleared its flags, and
 * leave a stop pending that the checks below would see (a stop asked for while a loop
 * is not running is kept for its next run). */
static void *loop0_stopper(void *arg) {
    usleep(50000);
    pier_loop_stop(pier_group_loop(arg, 0));
    return NULL;
}

static void *group_stopper_slow(void *arg) {
    usleep(150000);
    pier_group_stop(arg);
    return NULL;
}

static void test_group_rerun(void **state) {
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 2), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, loop0_stopper, g), 0);
    assert_int_equal(pier_group_run(g), 0);
    pthread_join(th, NULL);
    for (unsigned i = 0; i < 2; i++) {
        /* the stop's wake-up may still be pending for a loop that had returned: one
         * iteration takes it, the next must wait its full timeout */
        pier_loop_run_once(pier_group_loop(g, i), 0);
        uint64_t t0 = pier_test_now_ms();
        pier_loop_run_once(pier_group_loop(g, i), 50);
        assert_true(pier_test_now_ms() - t0 >= 40);
    }
    uint64_t t0 = pier_test_now_ms();
    assert_int_equal(pthread_create(&th, NULL, group_stopper_slow, g), 0);
    assert_int_equal(pier_group_run(g), 0);
    assert_true(pier_test_now_ms() - t0 >= 140);
    pthread_join(th, NULL);
    assert_int_equal(pier_group_free(g), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_free),
        cmocka_unit_test(test_free_busy),
        cmocka_unit_test(test_run_stop),
        cmocka_unit_test(test_run_once_timeout),
        cmocka_unit_test(test_post_wakes_blocked_wait),
        cmocka_unit_test(test_post_fifo),
        cmocka_unit_test(test_post_repost_and_drop),
        cmocka_unit_test(test_post_threads),
        cmocka_unit_test(test_post_wakeup_not_lost),
        cmocka_unit_test(test_run_once_refuses_to_nest),
        cmocka_unit_test(test_embedded_task),
        cmocka_unit_test(test_embedded_task_threads),
        cmocka_unit_test(test_passes),
        cmocka_unit_test(test_stop_from_thread),
        cmocka_unit_test(test_group),
        cmocka_unit_test(test_group_run_stop),
        cmocka_unit_test(test_group_rerun),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
