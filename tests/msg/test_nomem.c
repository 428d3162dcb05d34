/* The message client and server when memory runs out in the middle of a write. The core
 * promises (net.h) that -ENOMEM from a write with the connection still open means nothing
 * of the unit was queued and the stream is intact; msg must then go on, not abort: the
 * client reports the error and stays up, the server counts the reply as lost. Every
 * frame that was queued must arrive whole and in order.
 *
 * To make allocations fail on one thread only, this program replaces malloc and friends
 * (glibc allows that) with wrappers around glibc's own allocator that fail while the
 * calling thread's flag is set. Sanitizer builds bring their own allocator, so there the
 * tests are skipped.
 * pier-test: threads */
#include "msg_env.h"

#include <pier/msg.h>

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ID_ECHO 100
#define ID_WHO 101
#define BODY 1000
#define SENDS 64

/* ---- allocations that fail on demand, per thread ---- */

static _Thread_local int fail_here;

#ifndef PIER_SANITIZED
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

void *malloc(size_t n) {
    if (fail_here) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size) {
    if (fail_here) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n) {
    if (fail_here) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_realloc(p, n);
}

void free(void *p) {
    __libc_free(p);
}
#define SKIP_UNDER_SANITIZERS() ((void)0)
#else
#define SKIP_UNDER_SANITIZERS() skip()
#endif

/* ---- helpers ---- */

static void fill_body(char *b, int seq) {
    memset(b, 'a' + seq % 26, BODY);
    memcpy(b, &seq, sizeof seq);
}

static int body_seq(const char *b, size_t len) {
    int seq;
    memcpy(&seq, b, sizeof seq);
    for (size_t i = sizeof seq; i < len; i++)
        if (b[i] != 'a' + seq % 26)
            return -1;
    return len == BODY ? seq : -1;
}

static void on_echo(const pier_msg_t *m, void *ud) {
    (void)ud;
    pier_msg_reply(m, ID_ECHO, m->body, m->len);
}

static _Atomic pier_id_t who;
static void on_who(const pier_msg_t *m, void *ud) {
    (void)ud;
    atomic_store(&who, m->conn);
    pier_msg_reply(m, ID_WHO, NULL, 0);
}

static void env_start(env_t *e) {
    pier_msg_server_opts_t o = {0};
    env_new(e, 1, &o);
    assert_int_equal(pier_msg_on(e->srv, ID_ECHO, on_echo, NULL), 0);
    assert_int_equal(pier_msg_on(e->srv, ID_WHO, on_who, NULL), 0);
    env_run(e);
}

/* ---- the client ---- */

typedef struct {
    int up, downs, got, bad, last;
    int want;
    int done;
} cl_t;

static void cl_up(pier_msg_client_t *mc) {
    ((cl_t *)pier_msg_client_data(mc))->up = 1;
}

static void cl_down(pier_msg_client_t *mc, int err) {
    (void)err;
    ((cl_t *)pier_msg_client_data(mc))->downs++;
}

/* Replies must be whole frames of the sequence, in order. */
static void cl_msg(pier_msg_client_t *mc, uint16_t id, const char *body, size_t len) {
    cl_t *s = pier_msg_client_data(mc);
    int seq = id == ID_ECHO ? body_seq(body, len) : -1;
    if (seq <= s->last)
        s->bad++;
    s->last = seq;
    if (++s->got == s->want)
        s->done = 1;
}

static void test_client_send_out_of_memory_keeps_the_connection(void **state) {
    SKIP_UNDER_SANITIZERS();
    env_t e;
    env_start(&e);
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    cl_t s = {.last = -1};
    pier_msg_client_opts_t co = {
        .port = pier_msg_server_port(e.srv), .on_up = cl_up, .on_down = cl_down, .on_msg = cl_msg, .data = &s};
    pier_msg_client_t *mc;
    assert_int_equal(pier_msg_client_new(&mc, loop, &co), 0);
    assert_true(pier_test_run_until(loop, &s.up, 5000));

    /* without running the loop nothing is flushed, so the output queue must grow: with
     * allocations failing, a send soon answers -ENOMEM */
    char body[BODY];
    int seq = 0, err = 0;
    fail_here = 1;
    for (; seq < 200; seq++) {
        fill_body(body, seq);
        if ((err = pier_msg_client_send(mc, ID_ECHO, body, BODY)) < 0)
            break;
    }
    fail_here = 0;
    assert_int_equal(err, -ENOMEM);
    assert_true(pier_msg_client_up(mc)); /* not aborted */
    /* the frame that failed goes again, and more after it, on the same connection */
    int sent = seq;
    for (int i = 0; i < 10; i++, sent++) {
        fill_body(body, sent);
        assert_int_equal(pier_msg_client_send(mc, ID_ECHO, body, BODY), 0);
    }
    s.want = sent;
    assert_true(pier_test_run_until(loop, &s.done, 5000));
    assert_int_equal(s.bad, 0);
    assert_int_equal(s.last, sent - 1);
    assert_int_equal(s.downs, 0);
    assert_int_equal(pier_msg_client_connects(mc), 1);

    env_client_free(loop, mc);
    pier_test_free_loop(loop);
    env_stop(&e);
}

/* ---- the server ---- */

static sem_t entered, hold;

static void block_task(void *arg) {
    (void)arg;
    sem_post(&entered);
    sem_wait(&hold);
}

static void fail_on_task(void *arg) {
    (void)arg;
    fail_here = 1;
}

static void fail_off_task(void *arg) {
    (void)arg;
    fail_here = 0;
}

/* pier_msg_send frames whose write fails for lack of memory are lost and counted; the
 * connection stays open and the frames around them arrive whole and in order. All the
 * sends run in one task pass of the loop (it is held while they are posted), so their
 * writes pile up in the output queue, which cannot grow while allocations fail. */
static void test_server_send_out_of_memory_keeps_the_connection(void **state) {
    SKIP_UNDER_SANITIZERS();
    env_t e;
    env_start(&e);
    pier_loop_t *loop = pier_group_loop(e.g, 0);
    int fd = pier_test_connect(pier_msg_server_port(e.srv));
    assert_true(fd >= 0);
    char buf[4 + BODY];
    assert_int_equal(pier_msg_encode(NULL, ID_WHO, NULL, 0, buf, sizeof buf), 4);
    assert_int_equal(write(fd, buf, 4), 4);
    assert_int_equal(pier_test_read_full(fd, buf, 4), 4);
    pier_id_t id = atomic_load(&who);

    sem_init(&entered, 0, 0);
    sem_init(&hold, 0, 0);
    assert_int_equal(pier_loop_post(loop, block_task, NULL), 0);
    sem_wait(&entered);
    assert_int_equal(pier_loop_post(loop, fail_on_task, NULL), 0);
    char body[BODY];
    for (int i = 0; i < SENDS; i++) {
        fill_body(body, i);
        assert_int_equal(pier_msg_send(e.srv, id, ID_ECHO, body, BODY), 0);
    }
    assert_int_equal(pier_loop_post(loop, fail_off_task, NULL), 0);
    sem_post(&hold);

    /* then one more, with memory back: the connection must still carry it */
    fill_body(body, SENDS);
    pier_msg_stats_t st = {0};
    for (int i = 0; i < 500 && st.replies_lost == 0; i++) {
        usleep(2000);
        pier_msg_server_stats(e.srv, &st);
    }
    assert_true(st.replies_lost > 0);
    assert_int_equal(pier_msg_send(e.srv, id, ID_ECHO, body, BODY), 0);
    int got = 0, last = -1;
    while (last < SENDS) {
        uint16_t fid;
        assert_int_equal(pier_test_read_full(fd, buf, 4), 4);
        fid = (uint16_t)((unsigned char)buf[0] << 8 | (unsigned char)buf[1]);
        assert_int_equal(fid, ID_ECHO);
        assert_int_equal((unsigned char)buf[2] << 8 | (unsigned char)buf[3], BODY);
        assert_int_equal(pier_test_read_full(fd, buf + 4, BODY), BODY);
        int seq = body_seq(buf + 4, BODY);
        assert_true(seq > last);
        last = seq;
        got++;
    }
    pier_msg_server_stats(e.srv, &st);
    assert_int_equal(got + (int)st.replies_lost, SENDS + 1);
    close(fd);
    env_stop(&e);
    sem_destroy(&entered);
    sem_destroy(&hold);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_send_out_of_memory_keeps_the_connection),
        cmocka_unit_test(test_server_send_out_of_memory_keeps_the_connection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
