/* The router (exact, ":name", "*", ranking, 404 and 405 sets) and the small helpers it
 * relies on: the one percent-decoder, HTTP dates, MIME types. */
#include "support.h"

#include <errno.h>
#include <string.h>

#include "http/http_int.h"

static int tag_a, tag_b, tag_c, tag_d, tag_e;
static void h(pier_http_req_t *req, pier_http_res_t *res, void *ud) { (void)req, (void)res, (void)ud; }

static pier__http_router_t r;
static pier__http_match_t m;

static void *matched(unsigned method, const char *path) {
    pier__http_router_match(&r, method, path, &m);
    if (!m.route)
        return NULL;
    void *ud;
    pier__http_route_handler(m.route, &ud);
    return ud;
}

static const char *param(const char *name, size_t *len) {
    size_t nl = strlen(name);
    for (unsigned i = 0; i < m.nparams; i++) {
        const char *pn = m.params[i].name;
        if (strncmp(pn, name, nl) == 0 && (pn[nl] == '\0' || pn[nl] == '/')) {
            *len = m.params[i].len;
            return m.params[i].value;
        }
    }
    return NULL;
}

static int setup(void **state) {
    (void)state;
    memset(&r, 0, sizeof r);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "/users", h, &tag_a, NULL), 0);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET | PIER_HTTP_PUT, "/users/:id", h, &tag_b, NULL), 0);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "/users/me", h, &tag_c, NULL), 0);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "/files/*", h, &tag_d, NULL), 0);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_DELETE, "/files/private/*", h, &tag_e, NULL), 0);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_POST, "/users/:id/posts/:post", h, &tag_a, NULL), 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    pier__http_router_free(&r);
    return 0;
}

static void test_exact_and_params(void **state) {
    (void)state;
    size_t len;
    assert_ptr_equal(matched(PIER_HTTP_GET, "/users"), &tag_a);
    assert_ptr_equal(matched(PIER_HTTP_GET, "/users/42"), &tag_b);
    const char *id = param("id", &len);
    assert_non_null(id);
    assert_int_equal(len, 2);
    assert_memory_equal(id, "42", 2);
    /* an exact segment beats a parameter, whatever the order of registration */
    assert_ptr_equal(matched(PIER_HTTP_GET, "/users/me"), &tag_c);
    assert_ptr_equal(matched(PIER_HTTP_POST, "/users/7/posts/99"), &tag_a);
    assert_memory_equal(param("id", &len), "7", 1);
    assert_memory_equal(param("post", &len), "99", 2);
    assert_int_equal(len, 2);
    /* a parameter is one non-empty segment */
    assert_null(matched(PIER_HTTP_GET, "/users/"));
    assert_null(matched(PIER_HTTP_GET, "/users/42/extra"));
    assert_null(matched(PIER_HTTP_GET, "/user"));
    assert_null(matched(PIER_HTTP_GET, "/usersx"));
    assert_null(matched(PIER_HTTP_GET, "/"));
}

static void test_wildcards(void **state) {
    (void)state;
    size_t len;
    assert_ptr_equal(matched(PIER_HTTP_GET, "/files/a/b/c.txt"), &tag_d);
    assert_string_equal(param("*", &len), "a/b/c.txt");
    assert_ptr_equal(matched(PIER_HTTP_GET, "/files/"), &tag_d);
    assert_string_equal(param("*", &len), "");
    assert_null(matched(PIER_HTTP_GET, "/files"));
    /* the longer wildcard prefix wins for its method */
    assert_ptr_equal(matched(PIER_HTTP_DELETE, "/files/private/x"), &tag_e);
    assert_string_equal(param("*", &len), "x");
    assert_ptr_equal(matched(PIER_HTTP_GET, "/files/private/x"), &tag_d);
}

static void test_methods_404_405(void **state) {
    (void)state;
    assert_ptr_equal(matched(PIER_HTTP_HEAD, "/users"), &tag_a); /* GET routes answer HEAD */
    assert_null(matched(PIER_HTTP_POST, "/users"));
    assert_int_equal(m.allow, PIER_HTTP_GET | PIER_HTTP_HEAD);
    assert_null(matched(PIER_HTTP_DELETE, "/users/42"));
    assert_int_equal(m.allow, PIER_HTTP_GET | PIER_HTTP_HEAD | PIER_HTTP_PUT);
    assert_ptr_equal(matched(PIER_HTTP_PUT, "/users/42"), &tag_b);
    assert_null(matched(PIER_HTTP_GET, "/nothing"));
    assert_int_equal(m.allow, 0);
    assert_null(matched(0, "/users")); /* an unknown method never matches */
}

static void test_bad_patterns(void **state) {
    (void)state;
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "users", h, NULL, NULL), -EINVAL);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "/a/*/b", h, NULL, NULL), -EINVAL);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "/a/:", h, NULL, NULL), -EINVAL);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "/a/x*", h, NULL, NULL), -EINVAL);
    assert_int_equal(pier__http_router_add(&r, 0, "/a", h, NULL, NULL), -EINVAL);
    assert_int_equal(pier__http_router_add(&r, 1u << 12, "/a", h, NULL, NULL), -EINVAL);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "/a", NULL, NULL, NULL), -EINVAL);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_GET, "/users", h, NULL, NULL), -EEXIST);
    assert_int_equal(pier__http_router_add(&r, PIER_HTTP_POST, "/users", h, NULL, NULL), 0); /* other method */
}

static void test_pct_decode(void **state) {
    (void)state;
    char out[64];
    assert_int_equal(pier__http_pct_decode(out, "/a%20b%2Fc", 10, 0), 6);
    assert_string_equal(out, "/a b/c");
    assert_int_equal(pier__http_pct_decode(out, "a+b%2b", 6, 1), 4);
    assert_string_equal(out, "a b+");
    assert_int_equal(pier__http_pct_decode(out, "a+b", 3, 0), 3);
    assert_string_equal(out, "a+b");
    assert_int_equal(pier__http_pct_decode(out, "%2e%2E", 6, 0), 2);
    assert_string_equal(out, "..");
    assert_int_equal(pier__http_pct_decode(out, "%00", 3, 0), -1);
    assert_int_equal(pier__http_pct_decode(out, "%zz", 3, 0), -1);
    assert_int_equal(pier__http_pct_decode(out, "ab%", 3, 0), -1);
    assert_int_equal(pier__http_pct_decode(out, "ab%4", 4, 0), -1);
    /* in place */
    char inplace[] = "x%41y";
    assert_int_equal(pier__http_pct_decode(inplace, inplace, 5, 0), 3);
    assert_string_equal(inplace, "xAy");
}

static void test_dates_and_mime(void **state) {
    (void)state;
    char d[30];
    pier__http_date(784111777, d);
    assert_string_equal(d, "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_int_equal(pier__http_parse_date(d, strlen(d)), 784111777);
    assert_int_equal(pier__http_parse_date("Sun, 06 Nov 1994 08:49:37 UTC", 29), -1);
    assert_int_equal(pier__http_parse_date("Sun, 06 Foo 1994 08:49:37 GMT", 29), -1);
    assert_string_equal(pier__http_mime("a/b/c.HTML"), "text/html; charset=utf-8");
    assert_string_equal(pier__http_mime("x.tar.gz"), "application/gzip");
    assert_string_equal(pier__http_mime("dir.d/noext"), "application/octet-stream");
    assert_string_equal(pier__http_mime("pic.png"), "image/png");
    assert_string_equal(pier_http_reason(416), "Range Not Satisfiable");
    assert_string_equal(pier_http_reason(799), "Unknown");
}

static time_t date(const char *s) { return pier__http_parse_date(s, strlen(s)); }

/* The three forms of RFC 9110 5.6.7, and what is not a date. */
static void test_date_forms(void **state) {
    (void)state;
    assert_int_equal(date("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
    assert_int_equal(date("Sunday, 06-Nov-94 08:49:37 GMT"), 784111777);
    assert_int_equal(date("Sun Nov  6 08:49:37 1994"), 784111777);
    assert_int_equal(date("Sun Nov 16 08:49:37 1994"), 784111777 + 10 * 86400);
    assert_int_equal(date("Wednesday, 01-Jan-31 00:00:00 GMT"), 1924992000); /* 2031, not 1931 */
    assert_int_equal(date("Sat, 29 Feb 2020 12:00:00 GMT"), 1582977600);
    assert_int_equal(date("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
    /* a two-digit year more than 50 years ahead is the latest past year with its digits */
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    int ahead = (tm.tm_year + 1900 + 60) % 100;
    char buf[64];
    snprintf(buf, sizeof buf, "Monday, 01-Jan-%02d 00:00:00 GMT", ahead);
    time_t t = date(buf);
    assert_true(t != -1 && t < now);
    const char *bad[] = {
        "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMTx",
        " Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37  GMT", "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 31 Feb 2099 00:00:00 GMT", "Sun, 29 Feb 2021 00:00:00 GMT", "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT", "Sun, 06 Nov 1994 08:60:00 GMT", "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 1994 08:49:3x GMT", "Fun, 06 Nov 1994 08:49:37 GMT", "sun, 06 nov 1994 08:49:37 gmt",
        "Sun, 06 Nov 94 08:49:37 GMT", "Sun, 06 Nov 1994 8:49:37 GMT", "Sun,06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT", "Sundy, 06-Nov-94 08:49:37 GMT", "Sun, 06-Nov-94 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMTjunk", "Sunday, 06 Nov 94 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37",
        "Sun Nov 6 08:49:37 1994", "Sun Nov  6 08:49:37 94", "Sun Nov  6 08:49:37 1994 ", "Sun Nov 06 08:49:37 1994x",
        "Sun Nov  6 08:49:37 1994 GMT", "Sun, Nov  6 08:49:37 1994", "", "garbage", "Sun",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (date(bad[i]) != -1)
            fail_msg("\"%s\" taken for a date", bad[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exact_and_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wildcards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_methods_404_405, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_patterns, setup, teardown),
        cmocka_unit_test(test_pct_decode),
        cmocka_unit_test(test_dates_and_mime),
        cmocka_unit_test(test_date_forms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
