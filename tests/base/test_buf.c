/* The growable buffer: appends and growth, printf past the current capacity, consume,
 * steal, and the sticky failure: once a growth fails nothing more is appended, so a
 * unit built in it can never go out with a hole in the middle. */
#include "support.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"

static void test_append_and_grow(void **state) {
    pier__buf_t b = {0};
    char big[5000];
    memset(big, 'x', sizeof big);
    assert_int_equal(pier__buf_append(&b, "ab", 2), 0);
    assert_int_equal(b.len, 2);
    assert_true(b.cap >= PIER__BUF_MIN);
    assert_int_equal(pier__buf_append(&b, big, sizeof big), 0);
    assert_int_equal(b.len, 2 + sizeof big);
    assert_memory_equal(b.p, "ab", 2);
    assert_memory_equal(b.p + 2, big, sizeof big);
    assert_int_equal(pier__buf_puts(&b, "end"), 0);
    assert_memory_equal(b.p + b.len - 3, "end", 3);
    pier__buf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
}

static void test_printf(void **state) {
    pier__buf_t b = {0};
    assert_int_equal(pier__buf_printf(&b, "%d-%s", 42, "x"), 0);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.p, "42-x", 4);
    /* longer than what is left: must grow and write it whole */
    char s[1000];
    memset(s, 'y', sizeof s - 1);
    s[sizeof s - 1] = 0;
    assert_int_equal(pier__buf_printf(&b, "[%s]", s), 0);
    assert_int_equal(b.len, 4 + 1 + 999 + 1);
    assert_int_equal(b.p[4], '[');
    assert_int_equal(b.p[b.len - 1], ']');
    assert_int_equal(b.p[500], 'y');
    pier__buf_free(&b);
}

static void test_consume_reset_steal(void **state) {
    pier__buf_t b = {0};
    pier__buf_puts(&b, "hello world");
    pier__buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.p, "world", 5);
    pier__buf_consume(&b, 99);
    assert_int_equal(b.len, 0);
    size_t cap = b.cap;
    pier__buf_puts(&b, "again");
    pier__buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap);
    pier__buf_puts(&b, "mine");
    size_t len = 0;
    char *p = pier__buf_steal(&b, &len);
    assert_non_null(p);
    assert_int_equal(len, 4);
    assert_memory_equal(p, "mine", 4);
    assert_null(b.p);
    assert_int_equal(b.cap, 0);
    free(p);
}

static void test_failure_is_sticky(void **state) {
    pier__buf_t b = {0};
    pier__buf_puts(&b, "head");
    /* a growth that cannot be satisfied */
    assert_int_equal(pier__buf_reserve(&b, SIZE_MAX - 8), -ENOMEM);
    assert_true(pier__buf_failed(&b));
    /* the contents are untouched and nothing more is appended */
    assert_int_equal(pier__buf_append(&b, "body", 4), -ENOMEM);
    assert_int_equal(pier__buf_printf(&b, "%d", 1), -ENOMEM);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.p, "head", 4);
    pier__buf_reset(&b);
    assert_false(pier__buf_failed(&b));
    assert_int_equal(pier__buf_puts(&b, "ok"), 0);
    pier__buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_grow),
        cmocka_unit_test(test_printf),
        cmocka_unit_test(test_consume_reset_steal),
        cmocka_unit_test(test_failure_is_sticky),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
