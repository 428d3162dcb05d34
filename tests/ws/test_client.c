/* The WebSocket client against pier's own server on the same loop: messages both ways
 * with the same callbacks, the subprotocol offered and chosen, the close handshake on
 * stop, reconnecting with backoff after the server closes, a handshake refused for good
 * (4xx) not tried again while a 503 is, permessage-deflate negotiated with pier's server
 * (and not with an endpoint without it), and a bad URL refused. */
#include "support.h"
#include "../http/server_util.h"
#include "ws/ws_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <pier/ws.h>

static pier_group_t *group;
static pier_loop_t *loop;
static pier_http_server_t *srv;
static uint16_t port;

/* the server: /echo echoes, /kick closes each connection with 4000 as it opens */
static void echo(pier_ws_t *ws, int opcode, const void *data, size_t len) { pier_ws_send(ws, opcode, data, len); }
static void kick(pier_ws_t *ws) { pier_ws_close(ws, 4000, "again"); }

/* the client's view */
static int opened, closed, messages, last_code, errors;
static char got[256];
static int got_op;

static void c_open(pier_ws_t *ws) {
    opened++;
    pier_ws_send(ws, PIER_WS_TEXT, "héllo", 6);
    pier_ws_send(ws, PIER_WS_BINARY, "\0\1\2", 3);
}

static void c_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    size_t at = strlen(got);
    if (opcode == PIER_WS_TEXT)
        snprintf(got + at, sizeof got - at, "%s%.*s", messages ? "|" : "", (int)len, (const char *)data);
    else
        snprintf(got + at, sizeof got - at, "%s<bin %zu>", messages ? "|" : "", len);
    got_op = opcode;
    messages++;
}

static void c_close(pier_ws_t *ws, int code, const char *reason) {
    last_code = code;
    closed++;
}

static int last_will_retry, last_status;
static void c_error(pier_ws_client_t *cl, int err, int will_retry) {
    errors++;
    last_will_retry = will_retry;
    last_status = pier_ws_client_status(cl);
}

static void busy(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier_http_res_send(res, 503, "text/plain", "busy\n", 5);
}

static const pier_ws_cbs_t client_cbs = {.on_open = c_open, .on_message = c_message, .on_close = c_close};

static int setup(void **state) {
    (void)state;
    opened = closed = messages = last_code = errors = last_will_retry = last_status = 0;
    got[0] = '\0';
    assert_int_equal(pier_group_new(&group, 1), 0);
    loop = pier_group_loop(group, 0);
    pier_http_opts_t o = {.port = 0};
    assert_int_equal(pier_http_server_new(&srv, group, &o), 0);
    static const pier_ws_cbs_t echo_cbs = {.on_message = echo}, kick_cbs = {.on_open = kick};
    static const char *const protos[] = {"v2", "v1", NULL};
    pier_ws_opts_t wo = {.protocols = protos};
    assert_int_equal(pier_http_ws_opts(srv, "/echo", &echo_cbs, NULL, &wo), 0);
    assert_int_equal(pier_http_ws(srv, "/kick", &kick_cbs, NULL), 0);
    pier_ws_opts_t zo = {.deflate = 1};
    assert_int_equal(pier_http_ws_opts(srv, "/zecho", &echo_cbs, NULL, &zo), 0);
    assert_int_equal(pier_http_route(srv, PIER_HTTP_GET, "/busy", busy, NULL), 0);
    port = http_test_start(srv, loop);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    http_test_free(srv, group);
    return 0;
}

static pier_ws_client_t *start(const char *path, pier_ws_client_opts_t *o) {
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u%s", port, path);
    o->url = url;
    o->on_connect_error = c_error;
    pier_ws_client_t *cl = NULL;
    assert_int_equal(pier_ws_client_new(&cl, loop, o, &client_cbs, NULL), 0);
    return cl;
}

static void stop_and_free(pier_ws_client_t *cl) {
    pier_ws_client_stop(cl);
    int rc = -EBUSY;
    for (int i = 0; i < 2000 && rc == -EBUSY; i++) {
        pier_loop_run_once(loop, 2);
        rc = pier_ws_client_free(cl);
    }
    assert_int_equal(rc, 0);
}

static void messages_both_ways_and_close_on_stop(void **state) {
    (void)state;
    static const char *const offer[] = {"v1", "v2", NULL};
    pier_ws_client_opts_t o = {.ws = {.protocols = offer}};
    pier_ws_client_t *cl = start("/echo?x=1", &o);
    assert_null(pier_ws_client_ws(cl));
    pier_test_run_until(loop, &opened, 5000);
    for (int i = 0; i < 2000 && messages < 2; i++)
        pier_loop_run_once(loop, 2);
    assert_string_equal(got, "héllo|<bin 3>");
    assert_int_equal(got_op, PIER_WS_BINARY);
    assert_string_equal(pier_ws_protocol(pier_ws_client_ws(cl)), "v2"); /* the server's choice */
    stop_and_free(cl);
    assert_int_equal(closed, 1);
    assert_int_equal(last_code, PIER_WS_NORMAL); /* the server answered our close */
    assert_int_equal(errors, 0);
}

static void reconnects_after_the_server_closes(void **state) {
    (void)state;
    pier_ws_client_opts_t o = {.reconnect = 1, .backoff_min_ms = 5, .backoff_max_ms = 20};
    pier_ws_client_t *cl = start("/kick", &o);
    for (int i = 0; i < 5000 && closed < 3; i++)
        pier_loop_run_once(loop, 2);
    assert_true(closed >= 3 && opened >= 3);
    assert_int_equal(last_code, 4000);
    stop_and_free(cl);
}

static void refused_handshake_is_reported(void **state) {
    (void)state;
    pier_ws_client_opts_t o = {0};
    pier_ws_client_t *cl = start("/nothing-here", &o);
    for (int i = 0; i < 2000 && !errors; i++)
        pier_loop_run_once(loop, 2);
    assert_int_equal(errors, 1);
    assert_int_equal(opened, 0);
    stop_and_free(cl);
}

static void a_definitive_refusal_is_not_retried(void **state) {
    (void)state;
    pier_ws_client_opts_t o = {.reconnect = 1, .backoff_min_ms = 1, .backoff_max_ms = 2};
    pier_ws_client_t *cl = start("/nothing-here", &o);
    /* time for dozens of attempts, had the client kept trying */
    for (int i = 0; i < 300; i++)
        pier_loop_run_once(loop, 1);
    assert_int_equal(errors, 1);
    assert_int_equal(last_will_retry, 0);
    assert_int_equal(last_status, 404);
    assert_int_equal(opened, 0);
    stop_and_free(cl);
}

static void a_503_is_retried_up_to_max_retries(void **state) {
    (void)state;
    pier_ws_client_opts_t o = {.reconnect = 1, .backoff_min_ms = 1, .backoff_max_ms = 2};
    pier_ws_client_t *cl = start("/busy", &o);
    for (int i = 0; i < 5000 && errors < 3; i++)
        pier_loop_run_once(loop, 1);
    assert_true(errors >= 3);
    assert_int_equal(last_will_retry, 1);
    assert_int_equal(last_status, 503);
    stop_and_free(cl);
    errors = 0;
    o.max_retries = 2;
    cl = start("/busy", &o);
    for (int i = 0; i < 300; i++)
        pier_loop_run_once(loop, 1);
    assert_int_equal(errors, 2);
    assert_int_equal(last_will_retry, 0);
    stop_and_free(cl);
}

/* the client's view of a large message */
static int big_ok;
static char big[20000];

static void z_open(pier_ws_t *ws) {
    opened++;
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = "pier deflate "[i % 13];
    pier_ws_send(ws, PIER_WS_TEXT, big, sizeof big);
}

static void z_message(pier_ws_t *ws, int opcode, const void *data, size_t len) {
    big_ok = opcode == PIER_WS_TEXT && len == sizeof big && !memcmp(data, big, len);
    messages++;
}

static void deflate_with_pier_server(void **state) {
    (void)state;
    static const pier_ws_cbs_t zcbs = {.on_open = z_open, .on_message = z_message, .on_close = c_close};
    static const char *const paths[] = {"/zecho", "/echo"};
    for (int i = 0; i < 2; i++) {
        char url[128];
        snprintf(url, sizeof url, "ws://127.0.0.1:%u%s", port, paths[i]);
        pier_ws_client_opts_t o = {.url = url, .ws = {.deflate = 1, .deflate_window_bits = 12}};
        pier_ws_client_t *cl = NULL;
        messages = big_ok = 0;
        assert_int_equal(pier_ws_client_new(&cl, loop, &o, &zcbs, NULL), 0);
        for (int k = 0; k < 5000 && !messages; k++)
            pier_loop_run_once(loop, 2);
        assert_int_equal(messages, 1);
        assert_true(big_ok);
        pier_ws_t *ws = pier_ws_client_ws(cl);
        assert_non_null(ws);
        /* compressed only where the endpoint speaks it; the window the client asked for */
        assert_int_equal(ws->deflate, i == 0 && pier__ws_zlib); /* never without zlib */
        if (ws->deflate)
            assert_true(ws->pmd.rx_bits == 12 && ws->pmd.tx_bits == 12 && ws->pmd.tx_reset);
        stop_and_free(cl);
    }
}

static void bad_urls_are_refused(void **state) {
    (void)state;
    static const char *const bad[] = {"http://x/", "ws://", "ws://:80/", "ws://h:0/", "ws://h:65536/",
                                      "ws://h/a b", "ws://h/#frag", "ws://[::1/", "wss://h/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pier_ws_client_opts_t o = {.url = bad[i]};
        pier_ws_client_t *cl = NULL;
        assert_int_equal(pier_ws_client_new(&cl, loop, &o, &client_cbs, NULL), -EINVAL);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(messages_both_ways_and_close_on_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(reconnects_after_the_server_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(refused_handshake_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(a_definitive_refusal_is_not_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(a_503_is_retried_up_to_max_retries, setup, teardown),
        cmocka_unit_test_setup_teardown(deflate_with_pier_server, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_urls_are_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
