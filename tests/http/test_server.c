/* The HTTP server through its public API: deferred responses finished from another
 * thread (in order behind pipelined requests, and harmless when the client has gone),
 * streamed responses, query and route parameters, a handler that forgets to answer, and
 * a server that frees cleanly. pier-test: threads */
#include "support.h"
#include "server_util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pier/http.h>

static pier_group_t *group;
static pier_loop_t *loop;
static pier_http_server_t *srv;
static uint16_t port;

/* ---- a worker thread that finishes deferred responses ---- */

typedef struct job_s {
    pier_http_later_t *later;
    pier_id_t id;
    int kind; /* 0 send, 1 stream, 2 wait until the client is gone, then send, 3 flood */
    struct job_s *next;
} job_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static job_t *jobs;
static int worker_stop;
static int gone_result = 1; /* what later_send said for a vanished client */
static volatile int gone_done;
/* kind 3: what the writes to a client that does not read came to */
static int flood_rc, flood_retry_rc;
static size_t flood_total;
static volatile int flood_full, flood_reading;

static void flood(pier_http_later_t *l) {
    static char chunk[65536];
    size_t total = 0;
    int rc = 0;
    pier_http_later_begin(l, 200, "application/octet-stream");
    while (total < (64u << 20)) {
        rc = pier_http_later_write(l, chunk, sizeof chunk);
        if (rc < 0)
            break;
        total += sizeof chunk;
        usleep(500); /* let the loop queue it: the bound is on the connection's output */
    }
    __atomic_store_n(&flood_rc, rc, __ATOMIC_SEQ_CST);
    __atomic_store_n(&flood_total, total, __ATOMIC_SEQ_CST);
    __atomic_store_n(&flood_full, 1, __ATOMIC_SEQ_CST);
    /* once the client reads, the queue goes down and writes are taken again */
    for (int i = 0; i < 1000 && !__atomic_load_n(&flood_reading, __ATOMIC_SEQ_CST); i++)
        usleep(10000);
    for (int i = 0; i < 1000 && (rc = pier_http_later_write(l, chunk, sizeof chunk)) == -ENOBUFS; i++)
        usleep(10000);
    __atomic_store_n(&flood_retry_rc, rc, __ATOMIC_SEQ_CST);
    pier_http_later_end(l);
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (!jobs && !worker_stop)
            pthread_cond_wait(&cv, &mu);
        job_t *j = jobs;
        if (j)
            jobs = j->next;
        pthread_mutex_unlock(&mu);
        if (!j)
            return NULL;
        usleep(30000); /* the pipelined request behind it is already waiting */
        if (j->kind == 0) {
            pier_http_later_send(j->later, 200, "text/plain", "later", 5);
        } else if (j->kind == 1) {
            pier_http_later_begin(j->later, 200, "text/plain");
            pier_http_later_write(j->later, "ab", 2);
            pier_http_later_write(j->later, "", 0);
            pier_http_later_write(j->later, "cd", 2);
            pier_http_later_end(j->later);
        } else if (j->kind == 3) {
            flood(j->later);
        } else {
            for (int i = 0; i < 500 && pier_id_alive(j->id); i++)
                usleep(10000);
            __atomic_store_n(&gone_result, pier_http_later_send(j->later, 200, "text/plain", "too late", 8),
                             __ATOMIC_SEQ_CST);
            __atomic_store_n(&gone_done, 1, __ATOMIC_SEQ_CST);
        }
        free(j);
    }
}

static void defer(pier_http_req_t *req, pier_http_res_t *res, int kind) {
    job_t *j = calloc(1, sizeof *j);
    assert_non_null(j);
    assert_int_equal(pier_http_res_header(res, "X-Deferred", "yes"), 0);
    j->later = pier_http_res_later(res);
    assert_non_null(j->later);
    j->id = pier_http_req_conn_id(req);
    j->kind = kind;
    pthread_mutex_lock(&mu);
    job_t **tail = &jobs;
    while (*tail)
        tail = &(*tail)->next;
    *tail = j;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

/* ---- handlers ---- */

static void h_later(pier_http_req_t *req, pier_http_res_t *res, void *ud) { defer(req, res, 0); }
static void h_stream_later(pier_http_req_t *req, pier_http_res_t *res, void *ud) { defer(req, res, 1); }
static volatile int gone_deferred;
static void h_gone(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    defer(req, res, 2);
    __atomic_store_n(&gone_deferred, 1, __ATOMIC_SEQ_CST);
}

static void h_flood(pier_http_req_t *req, pier_http_res_t *res, void *ud) { defer(req, res, 3); }

static void h_now(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 200, "text/plain", "now", 3);
}

static void h_stream(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    assert_int_equal(pier_http_res_begin(res, 200, "text/plain"), 0);
    assert_int_equal(pier_http_res_header(res, "X-Late", "1"), -EALREADY);
    pier_http_res_write(res, "hello ", 6);
    pier_http_res_write(res, "stream", 6);
    pier_http_res_end(res);
    assert_int_equal(pier_http_res_send(res, 200, NULL, "x", 1), -EALREADY);
}

/* 64 KiB per answer, counted: a pipelining client that does not read must not make the
 * server build every answer at once. */
static int big_calls;
static void h_big(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    static char big[65536];
    __atomic_fetch_add(&big_calls, 1, __ATOMIC_SEQ_CST);
    pier_http_res_send(res, 200, "application/octet-stream", big, sizeof big);
}

static void h_silent(pier_http_req_t *req, pier_http_res_t *res, void *ud) {}

static void h_query(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    char a[16], b[32], tiny[4], out[128];
    int na = pier_http_req_query(req, "a", a, sizeof a);
    int nb = pier_http_req_query(req, "b c", b, sizeof b);
    int nmissing = pier_http_req_query(req, "zz", a, sizeof a);
    int ntiny = pier_http_req_query(req, "b c", tiny, sizeof tiny);
    int nbad = pier_http_req_query(req, "bad", a, sizeof a);
    size_t idlen;
    const char *id = pier_http_req_param(req, "id", &idlen);
    int n = snprintf(out, sizeof out, "a=%s(%d) b=%s(%d) missing=%d tiny=%d bad=%d id=%.*s path=%s", a, na, b, nb,
                     nmissing, ntiny, nbad, (int)idlen, id, pier_http_req_path(req));
    pier_http_res_send(res, 200, "text/plain", out, (size_t)n);
}

/* Answers first, then reads the body: the request stays valid for the whole call. */
static uint64_t late_body_sum;
static size_t late_body_len;
static void h_answer_then_read(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 200, "text/plain", "ok", 2);
    size_t n;
    const unsigned char *b = pier_http_req_body(req, &n);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum = sum * 31 + b[i];
    late_body_sum = sum;
    late_body_len = n;
}

static void h_bad_header(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    int e1 = pier_http_res_header(res, "X-Split", "a\r\nInjected: 1");
    int e2 = pier_http_res_header(res, "Bad Name", "v");
    char out[64];
    int n = snprintf(out, sizeof out, "%d %d", e1, e2);
    pier_http_res_send(res, 200, "text/plain", out, (size_t)n);
}

/* ---- a client thread that sends bytes and reads until the server closes ---- */

typedef struct {
    const char *send;
    char got[8192];
    size_t len;
    int close_early; /* 1: reset right after sending; 2: half-close (shutdown) after sending */
    volatile int done;
} client_t;

static void *client_main(void *arg) {
    client_t *cl = arg;
    int fd = pier_test_connect(port);
    if (fd >= 0) {
        size_t n = strlen(cl->send);
        if (write(fd, cl->send, n) == (ssize_t)n && cl->close_early != 1) {
            if (cl->close_early == 2)
                shutdown(fd, SHUT_WR);
            cl->len = pier_test_read_full(fd, cl->got, sizeof cl->got - 1);
        }
        if (cl->close_early == 1) {
            /* vanish only once the handler has taken the response for later */
            for (int i = 0; i < 1000 && !__atomic_load_n(&gone_deferred, __ATOMIC_SEQ_CST); i++)
                usleep(1000);
            struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close() resets */
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(fd);
    }
    cl->got[cl->len] = '\0';
    __atomic_store_n(&cl->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void talk(client_t *cl) { http_test_talk(loop, client_main, cl, &cl->done, 10000); }

/* ---- setup ---- */

static pthread_t worker_thread;

static int setup(void **state) {
    http_test_new(&group, &loop, &srv);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/later", h_later, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/stream-later", h_stream_later, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/gone", h_gone, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/now", h_now, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/flood", h_flood, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/stream", h_stream, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/silent", h_silent, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/big", h_big, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/q/:id", h_query, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/bad-header", h_bad_header, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_POST, "/answer-then-read", h_answer_then_read, NULL), 0);
    port = http_test_start(srv, loop);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/too-late", h_now, NULL), -EBUSY);
    worker_stop = 0;
    assert_int_equal(pthread_create(&worker_thread, NULL, worker, NULL), 0);
    return 0;
}

static int teardown(void **state) {
    pthread_mutex_lock(&mu);
    worker_stop = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(worker_thread, NULL);
    http_test_free(srv, group);
    return 0;
}

/* ---- tests ---- */

static void test_deferred_in_order(void **state) {
    client_t cl = {.send = "GET /later HTTP/1.1\r\nHost: a\r\n\r\n"
                           "GET /now HTTP/1.1\r\nHost: a\r\n\r\n"
                           "GET /stream-later HTTP/1.1\r\nHost: a\r\n\r\n"
                           "GET /now HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"};
    talk(&cl);
    const char *later = strstr(cl.got, "\r\n\r\nlater");
    const char *now = strstr(cl.got, "\r\n\r\nnow");
    const char *chunks = strstr(cl.got, "\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n");
    const char *now2 = now ? strstr(now + 1, "\r\n\r\nnow") : NULL;
    if (!later || !now || !chunks || !now2 || !(later < now && now < chunks && chunks < now2))
        fail_msg("responses out of order or missing:\n%s", cl.got);
    assert_non_null(strstr(cl.got, "X-Deferred: yes\r\n"));
    assert_non_null(strstr(cl.got, "Transfer-Encoding: chunked\r\n"));
}

static void test_deferred_client_gone(void **state) {
    gone_done = 0;
    gone_deferred = 0;
    client_t cl = {.send = "GET /gone HTTP/1.1\r\nHost: a\r\n\r\n", .close_early = 1};
    talk(&cl);
    assert_true(pier_test_run_until(loop, &gone_done, 10000));
    assert_int_equal(__atomic_load_n(&gone_result, __ATOMIC_SEQ_CST), -ENOTCONN);
    /* the server goes on serving */
    client_t again = {.send = "GET /now HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"};
    talk(&again);
    assert_non_null(strstr(again.got, "\r\n\r\nnow"));
}

/* A client that half-closes after its request still gets the deferred answer (the
 * default on EOF would be to close at once), and then the connection closes although
 * the request asked for keep-alive. */
static void test_deferred_after_half_close(void **state) {
    client_t cl = {.send = "GET /later HTTP/1.1\r\nHost: a\r\n\r\n", .close_early = 2};
    talk(&cl);
    assert_non_null(strstr(cl.got, "\r\n\r\nlater"));
    assert_non_null(strstr(cl.got, "Connection: close\r\n"));
}

/* A client that pipelines a request behind a deferred one and then half-closes gets both
 * answers, as it does when no response is deferred: the EOF arrives while the second
 * request waits behind the first, and must not drop it. */
static void test_pipelined_behind_deferred_then_half_close(void **state) {
    client_t cl = {.send = "GET /later HTTP/1.1\r\nHost: a\r\n\r\n"
                           "GET /now HTTP/1.1\r\nHost: a\r\n\r\n",
                   .close_early = 2};
    talk(&cl);
    const char *later = strstr(cl.got, "\r\n\r\nlater");
    const char *now = strstr(cl.got, "\r\n\r\nnow");
    if (!later || !now || later > now)
        fail_msg("responses missing or out of order:\n%s", cl.got);
}

/* 200 pipelined requests for 64 KiB each arrive in one read (7 KB), from a client that
 * reads nothing for a while: the server used to run all 200 handlers at once and queue
 * 12.8 MB for that one connection (any amplification multiplies it: no bound). It now
 * stops between requests once a connection's output is over its high water mark, and
 * goes on as the client reads: every answer still arrives, in order. */
typedef struct {
    int calls_while_not_reading;
    size_t answers;
    volatile int done;
} big_client_t;

static void *big_client_main(void *arg) {
    big_client_t *bc = arg;
    int fd = pier_test_connect_rcvbuf(port, 4096); /* reads time out after 10 s */
    if (fd >= 0) {
        static const char one[] = "GET /big HTTP/1.1\r\nHost: a\r\n\r\n";
        static const char last[] = "GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        char req[200 * sizeof last];
        size_t n = 0;
        for (int i = 0; i < 199; i++) {
            memcpy(req + n, one, sizeof one - 1);
            n += sizeof one - 1;
        }
        memcpy(req + n, last, sizeof last - 1);
        n += sizeof last - 1;
        if (write(fd, req, n) == (ssize_t)n) {
            usleep(300 * 1000);
            bc->calls_while_not_reading = __atomic_load_n(&big_calls, __ATOMIC_SEQ_CST);
            size_t total = 0;
            char buf[65536];
            ssize_t r;
            while ((r = read(fd, buf, sizeof buf)) > 0)
                total += (size_t)r;
            bc->answers = total;
        }
        close(fd);
    }
    __atomic_store_n(&bc->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void test_pipelined_answers_wait_for_a_slow_reader(void **state) {
    big_calls = 0;
    big_client_t bc = {0};
    http_test_talk(loop, big_client_main, &bc, &bc.done, 20000);
    if (bc.calls_while_not_reading >= 100)
        fail_msg("%d of 200 answers built for a client that read nothing", bc.calls_while_not_reading);
    assert_int_equal(__atomic_load_n(&big_calls, __ATOMIC_SEQ_CST), 200);
    assert_true(bc.answers > 200 * 65536u && bc.answers < 200 * (65536u + 300));
}

/* A deferred response streamed to a client that reads nothing: pier_http_later_write used
 * to take everything (64 MiB here) and queue it on the connection. It now answers
 * -ENOBUFS once about 1 MiB waits, and takes writes again once the client has read. */
typedef struct {
    size_t got;
    volatile int done;
} flood_client_t;

static void *flood_client_main(void *arg) {
    flood_client_t *fc = arg;
    int fd = pier_test_connect_rcvbuf(port, 4096); /* reads time out after 10 s */
    static const char req[] = "GET /flood HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    if (fd >= 0 && write(fd, req, sizeof req - 1) == sizeof req - 1) {
        for (int i = 0; i < 2000 && !__atomic_load_n(&flood_full, __ATOMIC_SEQ_CST); i++)
            usleep(10000);
        __atomic_store_n(&flood_reading, 1, __ATOMIC_SEQ_CST);
        char buf[65536];
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0)
            fc->got += (size_t)r;
    }
    if (fd >= 0)
        close(fd);
    __atomic_store_n(&fc->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void test_later_write_bounded_for_a_client_that_does_not_read(void **state) {
    flood_rc = flood_retry_rc = 1;
    flood_total = 0;
    flood_full = flood_reading = 0;
    flood_client_t fc = {0};
    http_test_talk(loop, flood_client_main, &fc, &fc.done, 40000);
    size_t total = __atomic_load_n(&flood_total, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&flood_rc, __ATOMIC_SEQ_CST) != -ENOBUFS)
        fail_msg("later_write took %zu bytes for a client that read nothing (rc %d)", total,
                 __atomic_load_n(&flood_rc, __ATOMIC_SEQ_CST));
    /* the bound, plus what the socket buffers took */
    if (total > (16u << 20))
        fail_msg("%zu bytes taken before -ENOBUFS", total);
    assert_int_equal(__atomic_load_n(&flood_retry_rc, __ATOMIC_SEQ_CST), 0);
    /* everything taken arrives: the chunks and their framing */
    assert_true(fc.got > total + 65536 && fc.got < total + 65536 + 4096 + (total / 65536 + 1) * 16);
}

static void test_streaming(void **state) {
    client_t cl = {.send = "GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"};
    talk(&cl);
    assert_non_null(strstr(cl.got, "Transfer-Encoding: chunked\r\n"));
    assert_non_null(strstr(cl.got, "\r\n\r\n6\r\nhello \r\n6\r\nstream\r\n0\r\n\r\n"));
    /* HTTP/1.0 has no chunks: the body ends with the connection */
    client_t old = {.send = "GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"};
    talk(&old);
    assert_null(strstr(old.got, "Transfer-Encoding"));
    assert_non_null(strstr(old.got, "Connection: close\r\n"));
    const char *body = strstr(old.got, "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "hello stream");
}

static void test_silent_handler_gets_500(void **state) {
    client_t cl = {.send = "GET /silent HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"};
    talk(&cl);
    assert_memory_equal(cl.got, "HTTP/1.1 500 ", 13);
}

static void test_query_and_params(void **state) {
    client_t cl = {.send = "GET /q/x%20y?a=1&b+c=hello%20world&bad=%zz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"};
    talk(&cl);
    const char *body = strstr(cl.got, "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "a=1(1) b=hello world(11) missing=-2 tiny=-28 bad=-22 id=x y path=/q/x y");
    /* the path is decoded once, then routed: %2F is a separator like '/' */
    client_t slash = {.send = "GET /q/x%2Fy HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"};
    talk(&slash);
    assert_memory_equal(slash.got, "HTTP/1.1 404 ", 13);
}

static void test_response_fields_are_checked(void **state) {
    client_t cl = {.send = "GET /bad-header HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"};
    talk(&cl);
    assert_null(strstr(cl.got, "Injected"));
    const char *body = strstr(cl.got, "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "-22 -22");
}

/* A chunked body over 64 KiB, read by a handler after it has answered: the answer used to
 * give the body's buffer back (trimming it, as for an idle connection) while the handler
 * still ran, so the handler read freed memory. */
static void test_body_valid_after_answer(void **state) {
    static char req[200000];
    enum { BODY = 100000, CHUNK = 4096 };
    size_t n = (size_t)snprintf(req, sizeof req, "POST /answer-then-read HTTP/1.1\r\nHost: a\r\n"
                                                 "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    uint64_t want = 0;
    for (size_t off = 0; off < BODY; off += CHUNK) {
        size_t len = BODY - off < CHUNK ? BODY - off : CHUNK;
        n += (size_t)snprintf(req + n, sizeof req - n, "%zx\r\n", len);
        for (size_t i = 0; i < len; i++) {
            char c = (char)('a' + (off + i) % 26);
            req[n++] = c;
            want = want * 31 + (unsigned char)c;
        }
        n += (size_t)snprintf(req + n, sizeof req - n, "\r\n");
    }
    snprintf(req + n, sizeof req - n, "0\r\n\r\n");
    late_body_len = 0;
    late_body_sum = 0;
    client_t cl = {.send = req};
    talk(&cl);
    assert_memory_equal(cl.got, "HTTP/1.1 200 ", 13);
    assert_int_equal(late_body_len, BODY);
    assert_true(late_body_sum == want);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_deferred_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_client_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_after_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_behind_deferred_then_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_answers_wait_for_a_slow_reader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_later_write_bounded_for_a_client_that_does_not_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streaming, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_handler_gets_500, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_and_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_fields_are_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_valid_after_answer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
