/* Metrics: the increments, the sum over loops read from another thread while the loops
 * write (pier-test: threads, so TSan sees it), the Prometheus text, and what a real
 * HTTP exchange counts. */
#include "support.h"
#include "../http/server_util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pier/http.h>
#include <pier/metrics.h>

#include "loop/layer.h"
#include "metrics/metrics.h"

/* ---- units ---- */

static void test_close_reasons(void **state) {
    assert_int_equal(pier__mx_close_reason(0), PIER_CLOSE_CLEAN);
    assert_int_equal(pier__mx_close_reason(-ECONNRESET), PIER_CLOSE_RESET);
    assert_int_equal(pier__mx_close_reason(-EPIPE), PIER_CLOSE_RESET);
    assert_int_equal(pier__mx_close_reason(-ETIMEDOUT), PIER_CLOSE_TIMEOUT);
    assert_int_equal(pier__mx_close_reason(-ENOMEM), PIER_CLOSE_ERROR);
    assert_int_equal(pier__mx_close_reason(-EPROTO), PIER_CLOSE_ERROR);
}

static void test_http_buckets_and_classes(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    pier__metrics_t *m = pier__loop_metrics(loop);
    pier__mx_http(m, PIER_METRICS_GET, 200, 0);     /* le 1 ms */
    pier__mx_http(m, PIER_METRICS_GET, 204, 1);     /* le 1 ms: bounds are inclusive */
    pier__mx_http(m, PIER_METRICS_POST, 404, 3);    /* le 5 ms */
    pier__mx_http(m, PIER_METRICS_OTHER, 501, 10000);
    pier__mx_http(m, PIER_METRICS_PUT, 999, 20000); /* past the last bound; 9xx counts as 5xx */
    pier__mx_http(m, 42, 101, 2);                   /* an index out of range is "other" */
    pier_metrics_t s;
    assert_int_equal(pier_metrics_snapshot(&loop, 1, &s), 0);
    assert_int_equal(s.http_requests[PIER_METRICS_GET][1], 2);
    assert_int_equal(s.http_requests[PIER_METRICS_POST][3], 1);
    assert_int_equal(s.http_requests[PIER_METRICS_OTHER][4], 1);
    assert_int_equal(s.http_requests[PIER_METRICS_PUT][4], 1);
    assert_int_equal(s.http_requests[PIER_METRICS_OTHER][0], 1);
    assert_int_equal(pier_metrics_http_total(&s), 6);
    assert_int_equal(s.http_duration[0], 2);
    assert_int_equal(s.http_duration[1], 1); /* 2 ms */
    assert_int_equal(s.http_duration[2], 1); /* 3 ms */
    assert_int_equal(s.http_duration[12], 1); /* 10 s */
    assert_int_equal(s.http_duration[PIER_METRICS_BUCKETS - 1], 1);
    assert_int_equal(s.http_duration_ms_sum, 0 + 1 + 3 + 10000 + 20000 + 2);
    pier_test_free_loop(loop);
}

static void test_snapshot_sums_loops(void **state) {
    pier_loop_t *loops[2];
    assert_int_equal(pier_loop_new(&loops[0]), 0);
    assert_int_equal(pier_loop_new(&loops[1]), 0);
    pier__mx_add(pier__loop_metrics(loops[0]), PIER__MX(bytes_in), 5);
    pier__mx_add(pier__loop_metrics(loops[1]), PIER__MX(bytes_in), 7);
    pier__mx_add(pier__loop_metrics(loops[0]), PIER__MX(conns_opened), 3);
    pier__mx_inc(pier__loop_metrics(loops[1]), PIER__MX(conns_closed) + PIER_CLOSE_RESET);
    pier__mx_add(pier__loop_metrics(loops[1]), PIER__MX(msg_jobs_queued), 4);
    pier__mx_inc(pier__loop_metrics(loops[0]), PIER__MX(msg_jobs_done));
    pier_metrics_t s;
    memset(&s, 0xff, sizeof s); /* the snapshot starts from zero, not from what was there */
    assert_int_equal(pier_metrics_snapshot(loops, 2, &s), 0);
    assert_int_equal(s.bytes_in, 12);
    assert_int_equal(pier_metrics_open(&s), 2);
    assert_int_equal(pier_metrics_msg_queue_depth(&s), 3);
    assert_int_equal(s.bytes_out, 0);
    assert_int_equal(pier_metrics_snapshot(loops, 2, NULL), -EINVAL);
    pier_loop_t *bad[1] = {NULL};
    assert_int_equal(pier_metrics_snapshot(bad, 1, &s), -EINVAL);
    pier_test_free_loop(loops[0]);
    pier_test_free_loop(loops[1]);
}

static void test_msg_ids_bounded(void **state) {
    pier_loop_t *loop;
    assert_int_equal(pier_loop_new(&loop), 0);
    pier__metrics_t *m = pier__loop_metrics(loop);
    for (unsigned id = 5000; id < 5020; id++) /* more ids than slots */
        pier__mx_msg_track((uint16_t)id);
    pier__mx_msg_track(5000); /* again: keeps its slot */
    pier__mx_msg_frame(m, 5000);
    pier__mx_msg_frame(m, 5000);
    pier__mx_msg_frame(m, 5015);
    pier__mx_msg_frame(m, 5016); /* no slot left for it */
    pier__mx_msg_frame(m, 7);    /* never registered */
    pier_metrics_t s;
    assert_int_equal(pier_metrics_snapshot(&loop, 1, &s), 0);
    assert_int_equal(s.msg_frame_ids[0], 5000);
    assert_int_equal(s.msg_frames[0], 2);
    assert_int_equal(s.msg_frame_ids[15], 5015);
    assert_int_equal(s.msg_frames[15], 1);
    assert_int_equal(s.msg_frames[PIER_METRICS_MSG_IDS - 1], 2);
    pier_test_free_loop(loop);
}

/* ---- the text format ---- */

static int has_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return 1;
    return 0;
}

static void test_prometheus_text(void **state) {
    pier_metrics_t m = {0};
    m.conns_accepted = 10;
    m.conns_opened = 12;
    m.conns_closed[PIER_CLOSE_CLEAN] = 7;
    m.conns_closed[PIER_CLOSE_TIMEOUT] = 1;
    m.http_requests[PIER_METRICS_GET][1] = 41;
    m.http_requests[PIER_METRICS_DELETE][3] = 2;
    m.http_duration[0] = 40;
    m.http_duration[3] = 2;
    m.http_duration[PIER_METRICS_BUCKETS - 1] = 1;
    m.http_duration_ms_sum = 12345;
    for (int i = 0; i < PIER_METRICS_MSG_IDS - 1; i++)
        m.msg_frame_ids[i] = UINT64_MAX;
    m.msg_frame_ids[1] = 1001;
    m.msg_frames[1] = 9;
    m.msg_frames[PIER_METRICS_MSG_IDS - 1] = 4;
    m.tls_handshakes_resumed = 3;
    char buf[32768];
    size_t n = pier_metrics_prometheus(&m, buf, sizeof buf);
    assert_true(n > 0 && n < sizeof buf);
    assert_int_equal(strlen(buf), n);
    assert_true(has_line(buf, "# TYPE pier_connections_accepted_total counter"));
    assert_true(has_line(buf, "pier_connections_accepted_total 10"));
    assert_true(has_line(buf, "pier_connections_open 4"));
    assert_true(has_line(buf, "pier_connections_closed_total{reason=\"timeout\"} 1"));
    assert_true(has_line(buf, "pier_http_requests_total{method=\"GET\",status=\"2xx\"} 41"));
    assert_true(has_line(buf, "pier_http_requests_total{method=\"DELETE\",status=\"4xx\"} 2"));
    assert_true(has_line(buf, "# TYPE pier_http_request_duration_seconds histogram"));
    /* buckets are cumulative, and +Inf equals _count */
    assert_true(has_line(buf, "pier_http_request_duration_seconds_bucket{le=\"0.001\"} 40"));
    assert_true(has_line(buf, "pier_http_request_duration_seconds_bucket{le=\"0.005\"} 40"));
    assert_true(has_line(buf, "pier_http_request_duration_seconds_bucket{le=\"0.01\"} 42"));
    assert_true(has_line(buf, "pier_http_request_duration_seconds_bucket{le=\"10\"} 42"));
    assert_true(has_line(buf, "pier_http_request_duration_seconds_bucket{le=\"+Inf\"} 43"));
    assert_true(has_line(buf, "pier_http_request_duration_seconds_count 43"));
    assert_true(has_line(buf, "pier_http_request_duration_seconds_sum 12.345"));
    assert_true(has_line(buf, "pier_msg_frames_total{id=\"1001\"} 9"));
    assert_false(strstr(buf, "pier_msg_frames_total{id=\"0\"}")); /* unused slots are left out */
    assert_true(has_line(buf, "pier_msg_frames_total{id=\"other\"} 4"));
    assert_true(has_line(buf, "pier_tls_handshakes_total{result=\"resumed\"} 3"));
    assert_int_equal(buf[n - 1], '\n');

    /* too small a buffer: snprintf's contract, the same text cut short */
    char small[100];
    assert_int_equal(pier_metrics_prometheus(&m, small, sizeof small), n);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, buf, sizeof small - 1);
    assert_int_equal(pier_metrics_prometheus(&m, NULL, 0), n);
}

/* ---- many loop threads write while another thread reads ---- */

#define BUMPS 200000

typedef struct {
    pier_loop_t *loop;
    pier_task_t task;
    volatile int done;
} bumper_t;

static void bump(void *arg) {
    bumper_t *b = arg;
    pier__metrics_t *m = pier__loop_metrics(b->loop);
    for (int i = 0; i < BUMPS; i++) {
        pier__mx_inc(m, PIER__MX(ws_messages_in));
        pier__mx_add(m, PIER__MX(bytes_out), 2);
    }
    __atomic_store_n(&b->done, 1, __ATOMIC_RELEASE);
}

static void *run_group(void *arg) {
    pier_group_run(arg);
    return NULL;
}

static void test_read_while_loops_write(void **state) {
    pier_group_t *g;
    assert_int_equal(pier_group_new(&g, 2), 0);
    bumper_t b[2];
    for (int i = 0; i < 2; i++) {
        b[i] = (bumper_t){.loop = pier_group_loop(g, i)};
        pier_task_init(&b[i].task, bump, &b[i]);
        assert_int_equal(pier_loop_post_task(b[i].loop, &b[i].task), 0);
    }
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_group, g), 0);
    uint64_t prev = 0;
    uint64_t deadline = pier_test_now_ms() + 60000;
    for (;;) {
        int both = __atomic_load_n(&b[0].done, __ATOMIC_ACQUIRE) && __atomic_load_n(&b[1].done, __ATOMIC_ACQUIRE);
        pier_metrics_t s;
        assert_int_equal(pier_metrics_snapshot_group(g, &s), 0);
        assert_true(s.ws_messages_in >= prev); /* a counter never goes back */
        assert_true(s.ws_messages_in <= 2 * BUMPS);
        prev = s.ws_messages_in;
        if (both) {
            assert_int_equal(s.ws_messages_in, 2 * BUMPS);
            assert_int_equal(s.bytes_out, 4 * BUMPS);
            break;
        }
        assert_true(pier_test_now_ms() < deadline);
    }
    pier_group_stop(g);
    pthread_join(th, NULL);
    assert_int_equal(pier_group_free(g), 0);
}

/* ---- what an HTTP exchange counts ---- */

static void ok(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 200, "text/plain", "ok", 2);
}

static void test_http_exchange_counted(void **state) {
    pier_group_t *g;
    pier_loop_t *loop;
    pier_http_server_t *srv;
    http_test_new(&g, &loop, &srv);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/ok", ok, NULL), 0);
    assert_int_equal(pier_http_server_start(srv), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_group, g), 0);
    uint16_t port = 0;
    for (int i = 0; i < 1000 && !(port = pier_http_server_port(srv)); i++)
        usleep(1000);
    int fd = pier_test_connect(port);
    static const char reqs[] = "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
                               "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
                               "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                               "HEAD /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_int_equal(write(fd, reqs, sizeof reqs - 1), (ssize_t)(sizeof reqs - 1));
    char buf[8192];
    size_t got = 0;
    ssize_t n;
    while ((n = read(fd, buf + got, sizeof buf - got)) > 0)
        got += (size_t)n;
    close(fd);
    pier_metrics_t s;
    uint64_t deadline = pier_test_now_ms() + 10000;
    do {
        assert_int_equal(pier_metrics_snapshot_group(g, &s), 0);
        usleep(1000);
    } while (s.conns_closed[PIER_CLOSE_CLEAN] + s.conns_closed[PIER_CLOSE_RESET] < 1 && pier_test_now_ms() < deadline);
    assert_int_equal(s.conns_accepted, 1);
    assert_int_equal(pier_metrics_open(&s), 0);
    assert_int_equal(s.http_requests[PIER_METRICS_GET][1], 1);
    assert_int_equal(s.http_requests[PIER_METRICS_GET][3], 1);  /* 404 */
    assert_int_equal(s.http_requests[PIER_METRICS_POST][3], 1); /* 405 */
    assert_int_equal(s.http_requests[PIER_METRICS_HEAD][1], 1);
    assert_int_equal(pier_metrics_http_total(&s), 4);
    uint64_t in_buckets = 0;
    for (int b = 0; b < PIER_METRICS_BUCKETS; b++)
        in_buckets += s.http_duration[b];
    assert_int_equal(in_buckets, 4);
    assert_int_equal(s.bytes_in, sizeof reqs - 1);
    assert_int_equal(s.bytes_out, got);
    pier_group_stop(g);
    pthread_join(th, NULL);
    http_test_free(srv, g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_reasons),
        cmocka_unit_test(test_http_buckets_and_classes),
        cmocka_unit_test(test_snapshot_sums_loops),
        cmocka_unit_test(test_msg_ids_bounded),
        cmocka_unit_test(test_prometheus_text),
        cmocka_unit_test(test_read_while_loops_write),
        cmocka_unit_test(test_http_exchange_counted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
