/* The library's one growable byte buffer; see buf.h for the policy. */
#include "buf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pier__buf_reserve(pier__buf_t *b, size_t extra) {
    if (b->err)
        return b->err;
    if (b->cap - b->len >= extra)
        return 0;
    if (extra > (size_t)-1 / 2 - b->len) {
        b->err = -ENOMEM;
        return b->err;
    }
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap * 2 : PIER__BUF_MIN;
    if (cap < need)
        cap = need;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->err = -ENOMEM;
        return b->err;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

int pier__buf_append(pier__buf_t *b, const void *data, size_t n) {
    if (n == 0)
        return b->err;
    int err = pier__buf_reserve(b, n);
    if (err)
        return err;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

int pier__buf_printf(pier__buf_t *b, const char *fmt, ...) {
    if (b->err)
        return b->err;
    va_list ap;
    va_start(ap, fmt);
    char *dst = b->cap > b->len ? b->p + b->len : NULL;
    int n = vsnprintf(dst, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < b->cap - b->len) {
        b->len += (size_t)n;
        return 0;
    }
    /* room for the NUL vsnprintf writes, which is not counted in len */
    int err = pier__buf_reserve(b, (size_t)n + 1);
    if (err)
        return err;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void pier__buf_consume(pier__buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void pier__buf_reset(pier__buf_t *b) {
    b->len = 0;
    b->err = 0;
}

void pier__buf_free(pier__buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->err = 0;
}

char *pier__buf_steal(pier__buf_t *b, size_t *len) {
    char *p = b->p;
    if (len)
        *len = b->len;
    b->p = NULL;
    b->len = b->cap = 0;
    b->err = 0;
    return p;
}
