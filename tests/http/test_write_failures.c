/* A response whose write fails (out of memory, nothing of it queued) must not leave the
 * stream half-written, nor the connection answering later pipelined requests in the
 * wrong places: the head and body of a response, a chunk's size, data and CRLF, and a
 * head and its file each go out whole or not at all, and a failure resets the
 * connection. The layer's writes are pointed at a wrapper that fails any write that
 * carries the marker FAILME (or a file of FAIL_FILE bytes), as the core does when memory
 * runs out: nothing queued, an error returned. The client runs on a thread of its own
 * (pier-test: threads). */
#include "support.h"
#include "server_util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pier/http.h>

#include "http/http_int.h"

#define MARK "FAILME"
static const char small_body[] = "small " MARK;
static const char stream_body[] = "abc" MARK "def";
#define FAIL_FILE 7777
#define BIG 65536

static pier_group_t *group;
static pier_loop_t *loop;
static pier_http_server_t *srv;
static uint16_t port;
static char root[64];
static char big_body[BIG];

static int (*real_writev)(pier_conn_t *, const struct iovec *, int);
static int (*real_writev_file)(pier_conn_t *, const struct iovec *, int, int, off_t, size_t);
static int failed_writes;

static int failing_writev(pier_conn_t *c, const struct iovec *iov, int iovcnt) {
    for (int i = 0; i < iovcnt; i++)
        if (memmem(iov[i].iov_base, iov[i].iov_len, MARK, strlen(MARK))) {
            failed_writes++;
            return -ENOMEM;
        }
    return real_writev(c, iov, iovcnt);
}

static int failing_writev_file(pier_conn_t *c, const struct iovec *iov, int iovcnt, int fd, off_t off,
                               size_t len) {
    if (len == FAIL_FILE) {
        failed_writes++;
        close(fd);
        return -ENOMEM;
    }
    for (int i = 0; i < iovcnt; i++)
        if (memmem(iov[i].iov_base, iov[i].iov_len, MARK, strlen(MARK))) {
            failed_writes++;
            close(fd);
            return -ENOMEM;
        }
    return real_writev_file(c, iov, iovcnt, fd, off, len);
}

/* ---- handlers ---- */

static void h_n(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    size_t n;
    const char *v = pier_http_req_param(req, "n", &n);
    char body[32];
    int len = snprintf(body, sizeof body, "n=%.*s", (int)n, v);
    pier_http_res_send(res, 200, "text/plain", body, (size_t)len);
}

static void h_fail(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 200, "text/plain", small_body, strlen(small_body));
}

static void h_bigfail(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 200, "application/octet-stream", big_body, sizeof big_body);
}

static void h_streamfail(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_begin(res, 200, "text/plain");
    pier_http_res_write(res, "abc", 3);
    pier_http_res_write(res, MARK, strlen(MARK));
    pier_http_res_write(res, "def", 3);
    pier_http_res_end(res);
}

/* ---- a client that pipelines requests and reads until the connection ends ---- */

typedef struct {
    const char *send;
    char got[262144];
    size_t len;
    int timed_out;
    volatile int done;
} client_t;

static void *client_main(void *arg) {
    client_t *cl = arg;
    int fd = pier_test_connect(port);
    if (fd >= 0) {
        size_t n = strlen(cl->send);
        if (write(fd, cl->send, n) == (ssize_t)n) {
            for (;;) {
                ssize_t r = read(fd, cl->got + cl->len, sizeof cl->got - cl->len);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    cl->timed_out = 1;
                if (r <= 0)
                    break;
                cl->len += (size_t)r;
            }
        }
        close(fd);
    }
    __atomic_store_n(&cl->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static void talk(client_t *cl) { http_test_talk(loop, client_main, cl, &cl->done, 20000); }

/* ---- checking what arrived ---- */

static int bad(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return -1;
}

/* Bodies decoded from buf: each complete response must carry exactly its expected body,
 * a response cut off by the reset must carry a prefix of it, and the framing must never
 * be broken. Returns the number of complete responses, or -1 (with a message) on a
 * wrong body or broken framing. */
static int check_responses(const char *buf, size_t len, const char *const *want, const size_t *want_len,
                           int nwant) {
    size_t off = 0;
    int complete = 0;
    static char body[BIG * 2];
    while (off < len) {
        if (complete == nwant)
            return bad("a response more than the %d requests", nwant);
        const char *end = memmem(buf + off, len - off, "\r\n\r\n", 4);
        if (!end)
            return complete; /* cut off in the head */
        const char *head = buf + off;
        size_t hl = (size_t)(end + 4 - head);
        if (memcmp(head, "HTTP/1.1 ", 9) != 0)
            return bad("response %d does not start with a status line", complete);
        const char *cl = memmem(head, hl, "Content-Length: ", 16);
        int chunked = memmem(head, hl, "Transfer-Encoding: chunked", 26) != NULL;
        size_t bl = 0, p = off + hl;
        int whole = 0;
        if (cl) {
            size_t n = strtoul(cl + 16, NULL, 10);
            size_t have = len - p < n ? len - p : n;
            memcpy(body, buf + p, have);
            bl = have;
            whole = have == n;
            p += have;
        } else if (chunked) {
            for (;;) {
                const char *le = memmem(buf + p, len - p, "\r\n", 2);
                if (!le)
                    break;
                char *e;
                size_t n = strtoul(buf + p, &e, 16);
                if (e != le || e == buf + p)
                    return bad("response %d: a broken chunk size line", complete);
                p = (size_t)(le + 2 - buf);
                if (n == 0) {
                    whole = len - p >= 2;
                    if (whole && memcmp(buf + p, "\r\n", 2) != 0)
                        return bad("response %d: no CRLF after the last chunk", complete);
                    p += whole ? 2 : len - p;
                    break;
                }
                size_t have = len - p < n ? len - p : n;
                if (bl + have > sizeof body)
                    return bad("response %d: too long", complete);
                memcpy(body + bl, buf + p, have);
                bl += have;
                p += have;
                if (have < n)
                    break;
                if (len - p < 2) {
                    p = len;
                    break;
                }
                if (memcmp(buf + p, "\r\n", 2) != 0)
                    return bad("response %d: chunk data not followed by CRLF", complete);
                p += 2;
            }
        } else {
            return bad("response %d has no length", complete);
        }
        if (bl > want_len[complete] || memcmp(body, want[complete], bl) != 0)
            return bad("response %d carries another body (%.*s)", complete, (int)(bl < 40 ? bl : 40), body);
        if (!whole)
            return complete; /* cut off in the body */
        if (bl != want_len[complete])
            return bad("response %d is short", complete);
        complete++;
        off = p;
    }
    return complete;
}

/* Sends reqs (the last asks to close) and checks that the response to request fail_at
 * never arrives whole, nor any after it, and that what arrived is correct. */
static void expect_reset_at(const char *reqs, int fail_at, const char *const *want, const size_t *want_len, int n) {
    static client_t cl;
    memset(&cl, 0, sizeof cl);
    cl.send = reqs;
    failed_writes = 0;
    talk(&cl);
    assert_true(failed_writes > 0);
    assert_false(cl.timed_out);
    int complete = check_responses(cl.got, cl.len, want, want_len, n);
    if (complete < 0 || complete > fail_at)
        fail_msg("%d complete responses; the write of response %d failed:\n%.*s", complete, fail_at,
                 (int)(cl.len < 2000 ? cl.len : 2000), cl.got);
    /* and the server goes on serving others */
    static client_t ok;
    memset(&ok, 0, sizeof ok);
    ok.send = "GET /n/9 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    talk(&ok);
    const char *nine[] = {"n=9"};
    size_t nine_len[] = {3};
    assert_int_equal(check_responses(ok.got, ok.len, nine, nine_len, 1), 1);
}

/* ---- setup ---- */

static int setup(void **state) {
    memset(big_body, 'B', sizeof big_body);
    memcpy(big_body + sizeof big_body / 2, MARK, strlen(MARK));
    snprintf(root, sizeof root, "/tmp/pier-wf-XXXXXX");
    assert_non_null(mkdtemp(root));
    char path[128];
    snprintf(path, sizeof path, "%s/fail.bin", root);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    static char file[FAIL_FILE];
    memset(file, 'F', sizeof file);
    assert_int_equal(write(fd, file, sizeof file), (ssize_t)sizeof file);
    close(fd);

    real_writev = pier__http_writev;
    real_writev_file = pier__http_writev_file;
    pier__http_writev = failing_writev;
    pier__http_writev_file = failing_writev_file;
    http_test_new(&group, &loop, &srv);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/n/:n", h_n, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/fail", h_fail, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/bigfail", h_bigfail, NULL), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/streamfail", h_streamfail, NULL), 0);
    assert_int_equal(pier_http_static(srv, "/files/", root), 0);
    port = http_test_start(srv, loop);
    return 0;
}

static int teardown(void **state) {
    http_test_free(srv, group);
    pier__http_writev = real_writev;
    pier__http_writev_file = real_writev_file;
    char path[128];
    snprintf(path, sizeof path, "%s/fail.bin", root);
    unlink(path);
    rmdir(root);
    return 0;
}

/* ---- tests ---- */

#define REQ(path) "GET " path " HTTP/1.1\r\nHost: a\r\n\r\n"
#define LAST(path) "GET " path " HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

static void test_small_response(void **state) {
    const char *want[] = {"n=1", small_body, "n=3"};
    size_t len[] = {3, strlen(want[1]), 3};
    expect_reset_at(REQ("/n/1") REQ("/fail") LAST("/n/3"), 1, want, len, 3);
    expect_reset_at(REQ("/fail") LAST("/n/2"), 0, want + 1, len + 1, 2);
}

static void test_large_response(void **state) {
    const char *want[] = {"n=1", big_body, "n=3"};
    size_t len[] = {3, sizeof big_body, 3};
    expect_reset_at(REQ("/n/1") REQ("/bigfail") LAST("/n/3"), 1, want, len, 3);
    expect_reset_at(REQ("/bigfail") LAST("/n/3"), 0, want + 1, len + 1, 2);
}

static void test_chunk(void **state) {
    const char *want[] = {"n=1", stream_body, "n=3"};
    size_t len[] = {3, strlen(want[1]), 3};
    expect_reset_at(REQ("/n/1") REQ("/streamfail") LAST("/n/3"), 1, want, len, 3);
}

static void test_file(void **state) {
    static char file[FAIL_FILE];
    memset(file, 'F', sizeof file);
    const char *want[] = {"n=1", file, "n=3"};
    size_t len[] = {3, sizeof file, 3};
    expect_reset_at(REQ("/n/1") REQ("/files/fail.bin") LAST("/n/3"), 1, want, len, 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_small_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
