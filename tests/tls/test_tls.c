/* TLS beneath pier_conn: a pier server and a pier client on one loop, and raw OpenSSL or
 * TCP peers driven by the test thread between loop iterations. Certificates are made at
 * run time (certs.h).
 *
 * Covered: echo byte-exact both ways (large units, files) with on_accept/on_connect
 * after the handshake and pier_conn_tls_info on both sides; the id calls from another
 * thread; water marks on queued plaintext; a wrong host name and an expired certificate
 * refused by the client; a clean end (close_notify) against a truncated one; the
 * server's close_notify on a graceful close; a stalled handshake dropped after its
 * timeout; garbage and plain text on the TLS port (with the plain reply), the server
 * serving on afterwards; ALPN; the context's counters; a socket full during the
 * handshake (a certificate chain larger than the socket takes) and when close_notify is
 * made (write and send say EAGAIN on that socket, as a full kernel buffer does), and the
 * output held meanwhile counted against the water marks, and a key update answered
 * through a full socket.
 *
 * pier-test: threads */
#include "support.h"
#include "certs.h"

#include <pier/net.h>
#include <pier/tls.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static test_certs_t certs;

/* ---- the server: echo, or what a test asks of on_accept ---- */

typedef struct {
    int accepts, closes, close_err, eofs, drains;
    pier_id_t id;
    pier_conn_t *c;
    pier_tls_info_t info;
    size_t got;
    int close_after_read;   /* graceful close once this many bytes were read */
    int no_echo;
} srv_seen_t;

static struct {
    pier_group_t *g;
    pier_loop_t *loop;
    pier_tls_ctx_t *sctx;
    pier_server_t *srv;
    uint16_t port;
    srv_seen_t s;
    void (*accept_hook)(pier_conn_t *c);
} fx;

static size_t srv_read(pier_conn_t *c, const char *data, size_t len) {
    fx.s.got += len;
    if (!fx.s.no_echo)
        assert_int_equal(pier_conn_write(c, data, len), 0);
    if (fx.s.close_after_read && fx.s.got >= (size_t)fx.s.close_after_read)
        pier_conn_close(c);
    return len;
}

static void srv_eof(pier_conn_t *c) {
    fx.s.eofs++;
    pier_conn_close(c);
}

static void srv_drain(pier_conn_t *c) { fx.s.drains++; }

static void srv_close(pier_conn_t *c, int err) {
    fx.s.closes++;
    fx.s.close_err = err;
    fx.s.c = NULL;
}

static const pier_conn_cbs_t srv_cbs = {
    .on_read = srv_read, .on_eof = srv_eof, .on_close = srv_close, .on_drain = srv_drain};

static void srv_accept(pier_server_t *srv, pier_conn_t *c) {
    fx.s.accepts++;
    fx.s.id = pier_conn_id(c);
    fx.s.c = c;
    assert_int_equal(pier_conn_tls_info(c, &fx.s.info), 0); /* the handshake is done */
    pier_conn_set_cbs(c, &srv_cbs, NULL);
    if (fx.accept_hook)
        fx.accept_hook(c);
}

static void start_server(const pier_tls_opts_t *extra) {
    memset(&fx, 0, sizeof fx);
    pier_tls_opts_t o = {.cert_file = certs.cert, .key_file = certs.key, .alpn = "h2,http/1.1"};
    if (extra)
        o = *extra;
    assert_int_equal(pier_tls_ctx_new_server(&fx.sctx, &o), 0);
    assert_int_equal(pier_group_new(&fx.g, 1), 0);
    fx.loop = pier_group_loop(fx.g, 0);
    pier_server_opts_t so = {.on_accept = srv_accept, .tls = fx.sctx};
    assert_int_equal(pier_server_new(&fx.srv, fx.g, &so), 0);
    fx.port = pier_server_port(fx.srv);
    pier_server_start(fx.srv);
    pier_loop_run_once(fx.loop, 0);
}

static void stop_server(void) {
    pier_server_stop(fx.srv);
    pier_server_abort_all(fx.srv);
    uint64_t end = pier_test_now_ms() + 5000;
    int rc;
    while ((rc = pier_server_free(fx.srv)) == -EBUSY && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 5);
    assert_int_equal(rc, 0);
    pier_tls_ctx_free(fx.sctx);
    for (int i = 0; i < 50 && pier_loop_handles(fx.loop) > 0; i++)
        pier_loop_run_once(fx.loop, 10);
    assert_int_equal(pier_loop_handles(fx.loop), 0);
    assert_int_equal(pier_group_free(fx.g), 0);
}

/* ---- a pier client ---- */

typedef struct {
    int connects, errors, err, closes, close_err, retry;
    int pause;              /* pause reading at once, before any data */
    pier_conn_t *c;
    pier_tls_info_t info;
    char *in;
    size_t nin, cap;
} cl_seen_t;

static cl_seen_t cs;

static size_t cl_read(pier_conn_t *c, const char *data, size_t len) {
    if (cs.nin + len <= cs.cap)
        memcpy(cs.in + cs.nin, data, len);
    cs.nin += len;
    return len;
}

static void cl_close(pier_conn_t *c, int err) {
    cs.closes++;
    cs.close_err = err;
    cs.c = NULL;
}

static const pier_conn_cbs_t cl_cbs = {.on_read = cl_read, .on_close = cl_close};

static void cl_connect(pier_client_t *cl, pier_conn_t *c) {
    cs.connects++;
    cs.c = c;
    assert_int_equal(pier_conn_tls_info(c, &cs.info), 0);
    pier_conn_set_cbs(c, &cl_cbs, NULL);
    if (cs.pause)
        pier_conn_pause(c);
}

static void cl_error(pier_client_t *cl, int err, int will_retry) {
    cs.errors++;
    cs.err = err;
    cs.retry = will_retry;
}

static pier_client_t *client(pier_tls_ctx_t *ctx, const char *servername, size_t cap) {
    memset(&cs, 0, sizeof cs);
    cs.cap = cap;
    cs.in = cap ? malloc(cap) : NULL;
    pier_client_opts_t o = {.port = fx.port, .tls = ctx, .tls_servername = servername,
                            .on_connect = cl_connect, .on_connect_error = cl_error};
    pier_client_t *cl;
    assert_int_equal(pier_client_new(&cl, fx.loop, &o), 0);
    return cl;
}

static void client_free(pier_client_t *cl) {
    pier_client_stop(cl);
    uint64_t end = pier_test_now_ms() + 5000;
    int rc;
    while ((rc = pier_client_free(cl)) == -EBUSY && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 5);
    assert_int_equal(rc, 0);
    free(cs.in);
    cs.in = NULL;
}

static pier_tls_ctx_t *client_ctx(const char *ca, int insecure) {
    pier_tls_opts_t o = {.ca_file = ca, .insecure = insecure, .alpn = "http/1.1"};
    pier_tls_ctx_t *ctx;
    assert_int_equal(pier_tls_ctx_new_client(&ctx, &o), 0);
    return ctx;
}

static void run_until_size(const size_t *v, size_t n, int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    while (*v < n && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 5);
}

static void run_until_int(const int *v, int n, int ms) {
    uint64_t end = pier_test_now_ms() + (uint64_t)ms;
    while (*v < n && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 5);
}

static void fill(char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        p[i] = (char)((i * 131 + seed + (i >> 9)) & 0xff);
}

/* ---- tests ---- */

static void test_echo_large(void **state) {
    start_server(NULL);
    pier_tls_ctx_t *cctx = client_ctx(certs.ca, 0);
    enum { N = 3 * 1024 * 1024 + 17 };
    pier_client_t *cl = client(cctx, "localhost", N);
    run_until_int(&cs.connects, 1, 5000);
    run_until_int(&fx.s.accepts, 1, 5000); /* in TLS 1.3 the client is done first */
    assert_int_equal(cs.connects, 1);
    assert_int_equal(fx.s.accepts, 1);
    /* what each side learned of the other */
    assert_string_equal(cs.info.version, "TLSv1.3");
    assert_string_equal(cs.info.alpn, "http/1.1");
    assert_non_null(strstr(cs.info.peer_subject, "CN=localhost"));
    assert_string_equal(fx.s.info.sni, "localhost");
    assert_string_equal(fx.s.info.alpn, "http/1.1");
    assert_int_equal(fx.s.info.resumed, 0);

    /* one large unit and many small ones, echoed byte-exact */
    char *out = malloc(N);
    fill(out, N, 7);
    struct iovec iov[2] = {{out, 1000}, {out + 1000, 2 * 1024 * 1024}};
    assert_int_equal(pier_conn_writev(cs.c, iov, 2), 0);
    for (size_t off = 1000 + 2 * 1024 * 1024; off < N; off += 4099) {
        size_t n = N - off < 4099 ? N - off : 4099;
        assert_int_equal(pier_conn_write(cs.c, out + off, n), 0);
    }
    run_until_size(&cs.nin, N, 20000);
    assert_int_equal(cs.nin, N);
    assert_memory_equal(cs.in, out, N);
    free(out);

    client_free(cl);
    run_until_int(&fx.s.closes, 1, 5000);
    assert_int_equal(fx.s.closes, 1);
    assert_int_equal(fx.s.close_err, 0); /* the client's close_notify: a clean end */
    pier_tls_stats_t st;
    pier_tls_ctx_stats(fx.sctx, &st);
    assert_int_equal(st.handshakes, 1);
    assert_int_equal(st.failed, 0);
    pier_tls_ctx_free(cctx);
    stop_server();
}

/* A head and a file in one unit, over TLS: read and encrypted in chunks. */
static void file_accept(pier_conn_t *c) {
    char path[] = "/tmp/pier-tls-file-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    char *data = malloc(1 << 20);
    fill(data, 1 << 20, 3);
    assert_int_equal(write(fd, data, 1 << 20), 1 << 20);
    free(data);
    struct iovec head = {"HEAD", 4};
    assert_int_equal(pier_conn_writev_file(c, &head, 1, fd, 100, (1 << 20) - 100), 0);
    pier_conn_close(c);
}

/* The write mode a context picks with write_mode AUTO: OpenSSL writes to the socket where
 * PIER_TLS_WRITE=socket says so (ctest's _socket runs) or the kernel has kTLS. */
static int socket_write_expected(void) {
    const char *env = getenv("PIER_TLS_WRITE");
    if (env && strcmp(env, "socket") == 0)
        return 1;
    if (env && strcmp(env, "buffered") == 0)
        return 0;
    return pier_tls_ktls_check() == 0;
}

static void file_round_trip(void) {
    fx.accept_hook = file_accept;
    pier_tls_ctx_t *cctx = client_ctx(certs.ca, 0);
    size_t want = 4 + (1 << 20) - 100;
    pier_client_t *cl = client(cctx, "localhost", want);
    run_until_int(&cs.closes, 1, 10000);
    assert_int_equal(cs.nin, want);
    assert_int_equal(cs.close_err, 0); /* the server's close_notify came after the file */
    assert_memory_equal(cs.in, "HEAD", 4);
    char *data = malloc(1 << 20);
    fill(data, 1 << 20, 3);
    assert_memory_equal(cs.in + 4, data + 100, want - 4);
    free(data);
    client_free(cl);
    pier_tls_ctx_free(cctx);
}

static void test_file(void **state) {
    start_server(NULL);
    file_round_trip();
    /* the mode that carried it is the one asked for; with kTLS the kernel encrypted */
    assert_int_equal(fx.s.info.socket_write, socket_write_expected());
    assert_int_equal(fx.s.info.ktls_send, fx.s.info.socket_write && pier_tls_ktls_check() == 0);
    stop_server();
}

/* A context that asks for the socket write mode gets it whatever the kernel has; where
 * the kernel has kTLS, the kernel encrypts and the file goes by SSL_sendfile. */
static void test_ktls_file(void **state) {
    pier_tls_opts_t o = {.cert_file = certs.cert, .key_file = certs.key, .write_mode = PIER_TLS_WRITE_SOCKET};
    start_server(&o);
    file_round_trip();
    assert_int_equal(fx.s.info.socket_write, 1);
    int k = pier_tls_ktls_check();
    if (k != 0) {
        stop_server();
        printf("this kernel has no kTLS: setsockopt TCP_ULP \"tls\": %s; the file went through "
               "OpenSSL's socket BIO, read and encrypted in user space\n", strerror(-k));
        skip();
    }
    assert_int_equal(fx.s.info.ktls_send, 1);
    stop_server();
}

/* pier_send from another thread reaches a TLS connection through its id. */
static void *sender(void *arg) {
    pier_id_t id = *(pier_id_t *)arg;
    for (int i = 0; i < 100; i++)
        assert_int_equal(pier_send(id, "0123456789", 10), 0);
    return NULL;
}

static void test_send_from_thread(void **state) {
    start_server(NULL);
    fx.s.no_echo = 1;
    pier_tls_ctx_t *cctx = client_ctx(certs.ca, 0);
    pier_client_t *cl = client(cctx, "localhost", 1000);
    run_until_int(&fx.s.accepts, 1, 5000);
    run_until_int(&cs.connects, 1, 5000);
    pthread_t th;
    pier_id_t id = fx.s.id;
    assert_int_equal(pthread_create(&th, NULL, sender, &id), 0);
    run_until_size(&cs.nin, 1000, 10000);
    pthread_join(th, NULL);
    assert_int_equal(cs.nin, 1000);
    for (int i = 0; i < 100; i++)
        assert_memory_equal(cs.in + i * 10, "0123456789", 10);
    client_free(cl);
    pier_tls_ctx_free(cctx);
    stop_server();
}

/* Queued plaintext counts against the water marks, and on_drain comes once it is sent. */
static void flood_accept(pier_conn_t *c) {
    pier_conn_limits_t lim = {.out_high = 64 * 1024, .out_low = 16 * 1024};
    pier_conn_set_limits(c, &lim);
    char buf[16 * 1024];
    fill(buf, sizeof buf, 1);
    for (int i = 0; i < 64; i++)
        assert_int_equal(pier_conn_write(c, buf, sizeof buf), 0);
    assert_true(pier_conn_queued(c) > 64 * 1024); /* nothing is encrypted before the flush */
}

static void test_water_marks(void **state) {
    start_server(NULL);
    fx.accept_hook = flood_accept;
    pier_tls_ctx_t *cctx = client_ctx(certs.ca, 0);
    pier_client_t *cl = client(cctx, "localhost", 64 * 16 * 1024);
    run_until_size(&cs.nin, 64 * 16 * 1024, 10000);
    assert_int_equal(cs.nin, 64 * 16 * 1024);
    run_until_int(&fx.s.drains, 1, 5000);
    assert_int_equal(fx.s.drains, 1);
    client_free(cl);
    pier_tls_ctx_free(cctx);
    stop_server();
}

/* Ciphertext the transport holds counts against the water marks too: everything written
 * is either still counted by pier_conn_queued() or in the kernel (our send queue, the
 * peer's receive queue), never in between. The client does not read, so the sockets
 * fill and the transport keeps what they do not take. */
static void stall_accept(pier_conn_t *c) {
    pier_conn_limits_t lim = {.out_high = 1 << 20, .out_low = 1 << 20};
    pier_conn_set_limits(c, &lim);
    int small = 4096;
    setsockopt(pier_conn_fd(c), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    char buf[16 * 1024];
    fill(buf, sizeof buf, 2);
    for (int i = 0; i < 32; i++)
        assert_int_equal(pier_conn_write(c, buf, sizeof buf), 0);
}

static void test_water_marks_ciphertext(void **state) {
    start_server(NULL);
    fx.accept_hook = stall_accept;
    fx.s.no_echo = 1;
    pier_tls_ctx_t *cctx = client_ctx(certs.ca, 0);
    pier_client_t *cl = client(cctx, "localhost", 0);
    cs.pause = 1; /* the client reads nothing */
    run_until_int(&cs.connects, 1, 5000);
    run_until_int(&fx.s.accepts, 1, 5000);
    assert_int_equal(fx.s.accepts, 1);
    for (int i = 0; i < 100; i++)
        pier_loop_run_once(fx.loop, 2);
    int unsent = 0, unread = 0;
    assert_int_equal(ioctl(pier_conn_fd(fx.s.c), SIOCOUTQ, &unsent), 0);
    assert_int_equal(ioctl(pier_conn_fd(cs.c), FIONREAD, &unread), 0);
    size_t accounted = pier_conn_queued(fx.s.c) + (size_t)unsent + (size_t)unread;
    assert_true(pier_conn_queued(fx.s.c) > 0); /* the sockets are full */
    assert_true(accounted >= 32 * 16 * 1024);
    client_free(cl);
    pier_tls_ctx_free(cctx);
    stop_server();
}

/* A reconnecting client offers the session its last connection was given: the second
 * connection resumes, and both sides say so; a client of a new context starts afresh. */
static void test_client_resumes(void **state) {
    start_server(NULL);
    pier_tls_ctx_t *cctx = client_ctx(certs.ca, 0);
    memset(&cs, 0, sizeof cs);
    pier_client_opts_t o = {.port = fx.port, .tls = cctx, .tls_servername = "localhost", .reconnect = 1,
                            .backoff_min_ms = 1, .backoff_max_ms = 2,
                            .on_connect = cl_connect, .on_connect_error = cl_error};
    pier_client_t *cl;
    assert_int_equal(pier_client_new(&cl, fx.loop, &o), 0);
    for (int i = 1; i <= 3; i++) {
        run_until_int(&cs.connects, i, 5000);
        run_until_int(&fx.s.accepts, i, 5000);
        assert_int_equal(cs.connects, i);
        assert_int_equal(cs.info.resumed, i > 1);
        assert_int_equal(fx.s.info.resumed, i > 1);
        pier_conn_close(fx.s.c); /* the server ends it; the client comes back */
    }
    client_free(cl);
    pier_tls_ctx_free(cctx);
    stop_server();
}

static void refused(const char *ca, const char *servername) {
    pier_tls_ctx_t *cctx = client_ctx(ca, 0);
    pier_client_t *cl = client(cctx, servername, 0);
    run_until_int(&cs.errors, 1, 5000);
    assert_int_equal(cs.errors, 1);
    assert_int_equal(cs.err, PIER_ETLS_REJECTED);
    assert_int_equal(cs.connects, 0);
    client_free(cl);
    pier_tls_ctx_free(cctx);
}

static void test_wrong_name(void **state) {
    start_server(NULL);
    refused(certs.ca, "wrong.example");
    refused(NULL, "localhost"); /* the system store does not know the test CA */
    assert_int_equal(fx.s.accepts, 0);
    /* the right name on the same server works */
    pier_tls_ctx_t *cctx = client_ctx(certs.ca, 0);
    pier_client_t *cl = client(cctx, NULL, 0); /* default: the host, 127.0.0.1, in the SAN */
    run_until_int(&cs.connects, 1, 5000);
    assert_int_equal(cs.connects, 1);
    client_free(cl);
    pier_tls_ctx_free(cctx);
    stop_server();
}

static void test_expired(void **state) {
    pier_tls_opts_t o = {.cert_file = certs.expired, .key_file = certs.expired_key};
    start_server(&o);
    refused(certs.ca, "localhost");
    /* an insecure client takes it: only for tests */
    pier_tls_ctx_t *cctx = client_ctx(NULL, 1);
    pier_client_t *cl = client(cctx, "localhost", 0);
    run_until_int(&cs.connects, 1, 5000);
    assert_int_equal(cs.connects, 1);
    client_free(cl);
    pier_tls_ctx_free(cctx);
    stop_server();
}

/* mTLS: a server with ca_file takes a client with a certificate from that CA, and sees
 * its subject; a client without one never reaches on_accept. */
static void test_mtls(void **state) {
    pier_tls_opts_t o = {.cert_file = certs.cert, .key_file = certs.key, .ca_file = certs.ca};
    start_server(&o);
    pier_tls_opts_t co = {.ca_file = certs.ca, .cert_file = certs.cert, .key_file = certs.key};
    pier_tls_ctx_t *cctx;
    assert_int_equal(pier_tls_ctx_new_client(&cctx, &co), 0);
    pier_client_t *cl = client(cctx, "localhost", 0);
    run_until_int(&fx.s.accepts, 1, 5000);
    assert_int_equal(fx.s.accepts, 1);
    assert_non_null(strstr(fx.s.info.peer_subject, "CN=localhost"));
    client_free(cl);
    pier_tls_ctx_free(cctx);

    cctx = client_ctx(certs.ca, 0); /* no certificate of its own */
    cl = client(cctx, "localhost", 0);
    pier_tls_stats_t st = {0};
    uint64_t end = pier_test_now_ms() + 5000;
    while (st.failed == 0 && pier_test_now_ms() < end) {
        pier_loop_run_once(fx.loop, 5);
        pier_tls_ctx_stats(fx.sctx, &st);
    }
    assert_int_equal(st.failed, 1);
    /* in TLS 1.3 the client is done before the server checks it: it then hears the
     * server's alert as a protocol error */
    run_until_int(&cs.closes, 1, 5000);
    assert_true(cs.errors == 1 || (cs.closes == 1 && cs.close_err == -EPROTO));
    assert_int_equal(fx.s.accepts, 1);
    client_free(cl);
    pier_tls_ctx_free(cctx);
    stop_server();
}

/* ---- raw peers ---- */

static int raw_connect(void) {
    int fd = pier_test_connect(fx.port);
    assert_true(fd >= 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

/* An OpenSSL client on a non-blocking socket, its handshake driven between loop runs. */
static SSL *raw_tls(SSL_CTX **sctx, int *fdp) {
    *sctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(*sctx, SSL_VERIFY_NONE, NULL);
    int fd = raw_connect();
    SSL *ssl = SSL_new(*sctx);
    SSL_set_fd(ssl, fd);
    uint64_t end = pier_test_now_ms() + 5000;
    int r;
    while ((r = SSL_connect(ssl)) != 1 && pier_test_now_ms() < end) {
        int e = SSL_get_error(ssl, r);
        assert_true(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE);
        pier_loop_run_once(fx.loop, 5);
    }
    assert_int_equal(r, 1);
    *fdp = fd;
    return ssl;
}

static void raw_write(SSL *ssl, const char *s) {
    assert_int_equal(SSL_write(ssl, s, (int)strlen(s)), (int)strlen(s));
}

/* Reads from ssl, driving the loop, until the server's close_notify (returns 1) or the
 * TCP end without one (0); *n gets the data bytes. */
static int raw_read_to_end(SSL *ssl, size_t *n) {
    char buf[4096];
    uint64_t end = pier_test_now_ms() + 5000;
    *n = 0;
    while (pier_test_now_ms() < end) {
        int r = SSL_read(ssl, buf, sizeof buf);
        if (r > 0) {
            *n += (size_t)r;
            continue;
        }
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 1;
        if (e != SSL_ERROR_WANT_READ)
            return 0;
        pier_loop_run_once(fx.loop, 5);
    }
    fail_msg("no end from the server");
    return -1;
}

static void raw_free(SSL *ssl, SSL_CTX *ctx, int fd) {
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    ERR_clear_error();
}

static void copy_file(const char *from, const char *to) {
    char buf[8192];
    FILE *in = fopen(from, "r"), *out = fopen(to, "w");
    assert_non_null(in);
    assert_non_null(out);
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

static void *reloader(void *arg) {
    assert_int_equal(pier_tls_ctx_reload(arg), 0);
    return NULL;
}

/* Reloading the files (from another thread, while the loop runs): new connections get
 * the new certificate, an established one carries on, and bad files keep the old. */
static void test_reload(void **state) {
    char cert[160], key[160];
    snprintf(cert, sizeof cert, "%s/live-cert.pem", certs.dir);
    snprintf(key, sizeof key, "%s/live-key.pem", certs.dir);
    copy_file(certs.expired, cert);
    copy_file(certs.expired_key, key);
    pier_tls_opts_t o = {.cert_file = cert, .key_file = key};
    start_server(&o);
    refused(certs.ca, "localhost");
    SSL_CTX *rctx;
    int fd;
    SSL *old = raw_tls(&rctx, &fd); /* established before the reload */

    copy_file(certs.cert, cert);
    copy_file(certs.key, key);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reloader, fx.sctx), 0);
    for (int i = 0; i < 20; i++)
        pier_loop_run_once(fx.loop, 1);
    pthread_join(th, NULL);
    pier_tls_ctx_t *cctx = client_ctx(certs.ca, 0);
    pier_client_t *cl = client(cctx, "localhost", 0);
    run_until_int(&cs.connects, 1, 5000);
    assert_int_equal(cs.connects, 1);
    client_free(cl);

    raw_write(old, "still"); /* the old connection echoes on */
    char buf[8];
    uint64_t end = pier_test_now_ms() + 5000;
    int r;
    while ((r = SSL_read(old, buf, sizeof buf)) <= 0 && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 5);
    assert_int_equal(r, 5);
    raw_free(old, rctx, fd);

    FILE *f = fopen(cert, "w");
    fputs("not a certificate\n", f);
    fclose(f);
    assert_int_equal(pier_tls_ctx_reload(fx.sctx), -EINVAL);
    cl = client(cctx, "localhost", 0); /* the last good files stay in use */
    run_until_int(&cs.connects, 1, 5000);
    assert_int_equal(cs.connects, 1);
    client_free(cl);
    pier_tls_ctx_free(cctx);
    unlink(cert);
    unlink(key);
    stop_server();
}

static void test_truncation(void **state) {
    start_server(NULL);
    fx.s.no_echo = 1;
    SSL_CTX *ctx;
    int fd;
    SSL *ssl = raw_tls(&ctx, &fd);
    raw_write(ssl, "half a message");
    run_until_size(&fx.s.got, 14, 5000);
    shutdown(fd, SHUT_WR); /* a TCP end without close_notify */
    run_until_int(&fx.s.closes, 1, 5000);
    assert_int_equal(fx.s.closes, 1);
    assert_int_equal(fx.s.close_err, PIER_ETLS_TRUNCATED);
    assert_int_equal(fx.s.eofs, 0);
    raw_free(ssl, ctx, fd);

    /* the same with close_notify first: a clean end, through on_eof */
    memset(&fx.s, 0, sizeof fx.s);
    fx.s.no_echo = 1;
    ssl = raw_tls(&ctx, &fd);
    raw_write(ssl, "a whole message");
    run_until_size(&fx.s.got, 15, 5000);
    assert_int_equal(SSL_shutdown(ssl), 0);
    shutdown(fd, SHUT_WR);
    run_until_int(&fx.s.closes, 1, 5000);
    assert_int_equal(fx.s.eofs, 1);
    assert_int_equal(fx.s.close_err, 0);
    raw_free(ssl, ctx, fd);
    stop_server();
}

static void test_close_notify(void **state) {
    start_server(NULL);
    fx.s.close_after_read = 5;
    SSL_CTX *ctx;
    int fd;
    SSL *ssl = raw_tls(&ctx, &fd);
    raw_write(ssl, "hello");
    size_t n;
    assert_int_equal(raw_read_to_end(ssl, &n), 1); /* echoed, then close_notify */
    assert_int_equal(n, 5);
    run_until_int(&fx.s.closes, 1, 5000);
    assert_int_equal(fx.s.close_err, 0);
    raw_free(ssl, ctx, fd);
    stop_server();
}

/* ---- a full socket during the handshake and during close_notify ----
 *
 * The client's receive buffer is made as small as the kernel allows before it connects,
 * and it reads nothing for a while: what the server sends beyond that waits in the
 * server's send queue until that is full, and the server must come back to the rest
 * (buffered mode: ciphertext waiting in the transport; socket mode: the record OpenSSL
 * holds, and the call that made it made again) once the client reads. */

static int window_connect(int rcvbuf) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(fx.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

/* The server's sockets get a send buffer as small as the kernel allows, from the
 * listener (accepted sockets inherit it): the handshake is already subject to it. */
static void small_send_buffers(void) {
    int lfd, small = 1;
    assert_int_equal(pier_server_listen_fds(fx.srv, &lfd, 1), 1);
    assert_int_equal(setsockopt(lfd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
}

/* Runs the server's loop a while without the client reading: the socket stays full. */
static void server_alone(void) {
    for (int i = 0; i < 50; i++)
        pier_loop_run_once(fx.loop, 2);
}

/* A certificate file whose chain makes the server's first flight far larger than the
 * client's window and the server's send buffer together: the leaf, then the CA again
 * and again (extra chain certificates the client may ignore). */
#define FAT_COPIES 150
static void fat_chain(char *path, size_t size) {
    snprintf(path, size, "%s/fat.pem", certs.dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    char buf[8192];
    FILE *in = fopen(certs.cert, "r");
    size_t n = fread(buf, 1, sizeof buf, in);
    fwrite(buf, 1, n, out);
    fclose(in);
    in = fopen(certs.ca, "r");
    n = fread(buf, 1, sizeof buf, in);
    fclose(in);
    for (int i = 0; i < FAT_COPIES; i++)
        fwrite(buf, 1, n, out);
    fclose(out);
}

static void test_handshake_socket_full(void **state) {
    char fat[160];
    fat_chain(fat, sizeof fat);
    pier_tls_opts_t o = {.cert_file = fat, .key_file = certs.key};
    start_server(&o);
    small_send_buffers();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    int fd = window_connect(1);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    assert_int_equal(SSL_get_error(ssl, SSL_connect(ssl)), SSL_ERROR_WANT_READ); /* ClientHello out */
    server_alone();
    /* the server has begun its flight and is stuck in it (each copy of the CA is over
     * 300 bytes) */
    int unread = 0;
    assert_int_equal(ioctl(fd, FIONREAD, &unread), 0);
    assert_true(unread > 0 && unread < FAT_COPIES * 300);
    assert_int_equal(fx.s.accepts, 0);
    uint64_t end = pier_test_now_ms() + 5000;
    int r;
    while ((r = SSL_connect(ssl)) != 1 && pier_test_now_ms() < end) {
        int e = SSL_get_error(ssl, r);
        assert_true(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE);
        pier_loop_run_once(fx.loop, 2);
    }
    assert_int_equal(r, 1);
    run_until_int(&fx.s.accepts, 1, 5000);
    assert_int_equal(fx.s.accepts, 1);
    raw_write(ssl, "echo?");
    char buf[8];
    while ((r = SSL_read(ssl, buf, sizeof buf)) <= 0 && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 2);
    assert_int_equal(r, 5);
    assert_memory_equal(buf, "echo?", 5);
    raw_free(ssl, ctx, fd);
    unlink(fat);
    stop_server();
}

/* A socket that says it is full when the test wants it to: write (OpenSSL's socket BIO,
 * the socket write mode) and send (pier's BIO, the buffered mode) on full_fd answer
 * EAGAIN, as the kernel does when the send buffer is full. Defined here, they take the
 * place of libc's for the whole test program; the others go straight to the kernel. */
static _Atomic int full_fd = -1;

__attribute__((visibility("default"))) ssize_t write(int fd, const void *buf, size_t n) {
    if (fd == full_fd) {
        errno = EAGAIN;
        return -1;
    }
    return syscall(SYS_write, fd, buf, n);
}

__attribute__((visibility("default"))) ssize_t send(int fd, const void *buf, size_t n, int flags) {
    if (fd == full_fd) {
        errno = EAGAIN;
        return -1;
    }
    return syscall(SYS_sendto, fd, buf, n, flags, NULL, 0);
}

/* The socket drains: writes go through again, and the kernel's EPOLLOUT edge comes (a
 * send buffer that grows wakes the writers, as room made by the peer's reading does). */
static void socket_drains(int fd) {
    full_fd = -1;
    int room = 256 * 1024;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &room, sizeof room), 0);
}

/* A graceful close whose close_notify finds the socket full: the server waits for room
 * (not closing without it, not failing), and the client gets the data, then the
 * close_notify once the socket drains; on_close reports a clean end. */
static void test_close_notify_socket_full(void **state) {
    start_server(NULL);
    fx.s.no_echo = 1;
    SSL_CTX *ctx;
    int fd;
    SSL *ssl = raw_tls(&ctx, &fd);
    run_until_int(&fx.s.accepts, 1, 5000);
    assert_int_equal(pier_conn_write(fx.s.c, "bye", 3), 0);
    char buf[8];
    uint64_t end = pier_test_now_ms() + 5000;
    int r;
    while ((r = SSL_read(ssl, buf, sizeof buf)) <= 0 && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 2);
    assert_int_equal(r, 3);
    int sfd = pier_conn_fd(fx.s.c);
    full_fd = sfd;
    pier_conn_close(fx.s.c);
    server_alone();
    assert_int_equal(fx.s.closes, 0); /* waiting to send its close_notify */
    assert_int_equal(SSL_get_error(ssl, SSL_read(ssl, buf, sizeof buf)), SSL_ERROR_WANT_READ); /* none yet */
    socket_drains(sfd);
    size_t n;
    assert_int_equal(raw_read_to_end(ssl, &n), 1); /* close_notify came */
    assert_int_equal(n, 0);
    run_until_int(&fx.s.closes, 1, 5000);
    assert_int_equal(fx.s.closes, 1);
    assert_int_equal(fx.s.close_err, 0);
    raw_free(ssl, ctx, fd);
    stop_server();
}

/* Output held while the socket is full counts against the water marks in both modes:
 * buffered, as ciphertext waiting in the transport; socket mode, as the plaintext of
 * the record OpenSSL made and holds (the queue item stays until SSL_write takes it), so
 * pier_conn_queued() never drops below what the peer has yet to get, and on_drain
 * comes only once it is out. */
static void test_water_marks_held_record(void **state) {
    start_server(NULL);
    fx.s.no_echo = 1;
    SSL_CTX *ctx;
    int fd;
    SSL *ssl = raw_tls(&ctx, &fd);
    run_until_int(&fx.s.accepts, 1, 5000);
    pier_conn_limits_t lim = {.out_high = 32 * 1024, .out_low = 8 * 1024};
    pier_conn_set_limits(fx.s.c, &lim);
    int sfd = pier_conn_fd(fx.s.c);
    full_fd = sfd;
    enum { UNITS = 3, UNIT = 16 * 1024 };
    char unit[UNIT];
    fill(unit, sizeof unit, 4);
    for (int i = 0; i < UNITS; i++)
        assert_int_equal(pier_conn_write(fx.s.c, unit, sizeof unit), 0);
    server_alone();
    int unsent = 0;
    assert_int_equal(ioctl(sfd, SIOCOUTQ, &unsent), 0);
    assert_int_equal(unsent, 0); /* nothing reached the kernel */
    assert_true(pier_conn_queued(fx.s.c) >= UNITS * UNIT);
    assert_int_equal(fx.s.drains, 0);
    socket_drains(sfd);
    size_t got = 0;
    char buf[4096];
    uint64_t end = pier_test_now_ms() + 5000;
    while (got < UNITS * UNIT && pier_test_now_ms() < end) {
        int r = SSL_read(ssl, buf, sizeof buf);
        if (r > 0)
            got += (size_t)r;
        else
            pier_loop_run_once(fx.loop, 2);
    }
    assert_int_equal(got, UNITS * UNIT);
    run_until_int(&fx.s.drains, 1, 5000);
    assert_int_equal(fx.s.drains, 1);
    assert_int_equal(pier_conn_queued(fx.s.c), 0);
    raw_free(ssl, ctx, fd);
    stop_server();
}

/* A key update the client asks the server to answer, while the server's socket is full:
 * the data after it reaches on_read at once, and OpenSSL makes the answer with the
 * server's next write (it does not write from SSL_read), so the answer and the reply
 * wait together for room and reach the client once the socket drains. */
static void test_key_update_socket_full(void **state) {
    start_server(NULL);
    fx.s.no_echo = 1;
    SSL_CTX *ctx;
    int fd;
    SSL *ssl = raw_tls(&ctx, &fd);
    run_until_int(&fx.s.accepts, 1, 5000);
    int sfd = pier_conn_fd(fx.s.c);
    full_fd = sfd;
    assert_int_equal(SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED), 1);
    raw_write(ssl, "after"); /* the key update goes first */
    run_until_size(&fx.s.got, 5, 5000);
    assert_int_equal(fx.s.got, 5);
    assert_int_equal(pier_conn_write(fx.s.c, "reply", 5), 0);
    server_alone();
    char buf[8];
    assert_int_equal(SSL_get_error(ssl, SSL_read(ssl, buf, sizeof buf)), SSL_ERROR_WANT_READ); /* nothing yet */
    socket_drains(sfd);
    uint64_t end = pier_test_now_ms() + 5000;
    int r;
    while ((r = SSL_read(ssl, buf, sizeof buf)) <= 0 && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 2);
    assert_int_equal(r, 5);
    assert_memory_equal(buf, "reply", 5);
    raw_free(ssl, ctx, fd);
    stop_server();
}

/* Reads raw bytes until EOF or reset, driving the loop. Returns the count. */
static size_t raw_drain(int fd, char *buf, size_t cap) {
    size_t got = 0;
    uint64_t end = pier_test_now_ms() + 5000;
    while (pier_test_now_ms() < end) {
        ssize_t n = read(fd, buf + got, cap - got);
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            return got;
        pier_loop_run_once(fx.loop, 5);
    }
    fail_msg("the server did not close");
    return got;
}

static void test_handshake_timeout(void **state) {
    pier_tls_opts_t o = {.cert_file = certs.cert, .key_file = certs.key, .handshake_ms = 200};
    start_server(&o);
    int fd = raw_connect();
    assert_int_equal(write(fd, "\x16\x03\x01", 3), 3); /* the start of a record, then nothing */
    char buf[64];
    raw_drain(fd, buf, sizeof buf);
    close(fd);
    pier_tls_stats_t st;
    pier_tls_ctx_stats(fx.sctx, &st);
    assert_int_equal(st.failed, 1);
    assert_int_equal(fx.s.accepts, 0);
    assert_int_equal(pier_server_conns(fx.srv), 0);
    stop_server();
}

static void still_serves(void) {
    SSL_CTX *ctx;
    int fd;
    SSL *ssl = raw_tls(&ctx, &fd);
    raw_write(ssl, "ok?");
    char buf[8];
    uint64_t end = pier_test_now_ms() + 5000;
    int r;
    while ((r = SSL_read(ssl, buf, sizeof buf)) <= 0 && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 5);
    assert_int_equal(r, 3);
    assert_memory_equal(buf, "ok?", 3);
    raw_free(ssl, ctx, fd);
}

static void test_garbage(void **state) {
    start_server(NULL);
    int fd = raw_connect();
    char junk[512];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(0x16 + i * 7);
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    char buf[256];
    raw_drain(fd, buf, sizeof buf);
    close(fd);
    pier_tls_stats_t st;
    pier_tls_ctx_stats(fx.sctx, &st);
    assert_int_equal(st.failed, 1);
    still_serves();
    stop_server();
}

static void test_plain_reply(void **state) {
    static const char reply[] = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nplain HTTP to a TLS port\n";
    pier_tls_opts_t o = {.cert_file = certs.cert, .key_file = certs.key, .plain_reply = reply};
    start_server(&o);
    int fd = raw_connect();
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)sizeof req - 1);
    char buf[256];
    size_t n = raw_drain(fd, buf, sizeof buf);
    close(fd);
    assert_int_equal(n, sizeof reply - 1);
    assert_memory_equal(buf, reply, n);
    assert_int_equal(fx.s.accepts, 0);
    still_serves();
    stop_server();
}

/* A port probe (connect, close) is not a failed handshake. */
static void test_probe_not_counted(void **state) {
    start_server(NULL);
    int fd = raw_connect();
    close(fd);
    uint64_t end = pier_test_now_ms() + 5000;
    while (pier_server_conns(fx.srv) == 0 && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 5);
    while (pier_server_conns(fx.srv) > 0 && pier_test_now_ms() < end)
        pier_loop_run_once(fx.loop, 5);
    pier_tls_stats_t st;
    pier_tls_ctx_stats(fx.sctx, &st);
    assert_int_equal(st.failed, 0);
    stop_server();
}

static void test_ctx_errors(void **state) {
    pier_tls_ctx_t *ctx;
    pier_tls_opts_t o = {.cert_file = certs.cert};
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -EINVAL); /* no key */
    o.key_file = "/nonexistent/key.pem";
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -ENOENT);
    o.key_file = certs.ca; /* a certificate, not a key */
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -EINVAL);
    o.key_file = certs.key;
    o.min_version = 0x0301; /* TLS 1.0 is never allowed */
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -EINVAL);
    o.min_version = PIER_TLS_1_3;
    o.alpn = "h2,,x";
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -EINVAL);
    o.alpn = NULL;
    o.write_mode = PIER_TLS_WRITE_SOCKET + 1;
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -EINVAL);
    o.write_mode = PIER_TLS_WRITE_AUTO;
    o.sni_count = 1; /* SNI pairs: none given, a missing key, a missing file */
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -EINVAL);
    pier_tls_pair_t pair = {.cert_file = certs.cert};
    o.sni = &pair;
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -EINVAL);
    pair.key_file = "/nonexistent/key.pem";
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), -ENOENT);
    pair.key_file = certs.key;
    assert_int_equal(pier_tls_ctx_new_server(&ctx, &o), 0);
    assert_int_equal(pier_tls_ctx_rotate_tickets(ctx), 0);
    pier_tls_ctx_free(ctx);
    pier_tls_opts_t c = {.ca_file = "/nonexistent/ca.pem"};
    assert_int_equal(pier_tls_ctx_new_client(&ctx, &c), -ENOENT);
    c.ca_file = certs.ca;
    assert_int_equal(pier_tls_ctx_new_client(&ctx, &c), 0);
    assert_int_equal(pier_tls_ctx_rotate_tickets(ctx), -EINVAL); /* tickets are a server's */
    pier_tls_ctx_free(ctx);
}

/* A connection without TLS answers -EINVAL to pier_conn_tls_info. */
static void plain_accept(pier_server_t *srv, pier_conn_t *c) {
    pier_tls_info_t info;
    assert_int_equal(pier_conn_tls_info(c, &info), -EINVAL);
    fx.s.accepts++;
    pier_conn_close(c);
}

static void test_info_plain(void **state) {
    memset(&fx, 0, sizeof fx);
    assert_int_equal(pier_group_new(&fx.g, 1), 0);
    fx.loop = pier_group_loop(fx.g, 0);
    pier_server_opts_t so = {.on_accept = plain_accept};
    assert_int_equal(pier_server_new(&fx.srv, fx.g, &so), 0);
    fx.port = pier_server_port(fx.srv);
    pier_server_start(fx.srv);
    int fd = raw_connect();
    run_until_int(&fx.s.accepts, 1, 5000);
    assert_int_equal(fx.s.accepts, 1);
    close(fd);
    stop_server();
}

int main(void) {
    certs_init(&certs);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_large),      cmocka_unit_test(test_file),
        cmocka_unit_test(test_send_from_thread), cmocka_unit_test(test_water_marks),
        cmocka_unit_test(test_water_marks_ciphertext), cmocka_unit_test(test_client_resumes),
        cmocka_unit_test(test_wrong_name),      cmocka_unit_test(test_expired),
        cmocka_unit_test(test_mtls),            cmocka_unit_test(test_reload),
        cmocka_unit_test(test_truncation),      cmocka_unit_test(test_close_notify),
        cmocka_unit_test(test_handshake_timeout), cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_plain_reply),     cmocka_unit_test(test_probe_not_counted),
        cmocka_unit_test(test_ctx_errors),      cmocka_unit_test(test_info_plain),
        cmocka_unit_test(test_ktls_file),       cmocka_unit_test(test_handshake_socket_full),
        cmocka_unit_test(test_close_notify_socket_full), cmocka_unit_test(test_water_marks_held_record),
        cmocka_unit_test(test_key_update_socket_full),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    certs_cleanup(&certs);
    return rc;
}
