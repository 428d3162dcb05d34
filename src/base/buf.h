/* The one growable byte buffer of the library.
 *
 * Every layer that accumulates bytes (a response being built, kept input, a request
 * body, a listing, reply frames) uses this type, so there is one growth policy and one
 * behaviour when memory runs out:
 *  - growth doubles the capacity (at least PIER__BUF_MIN), or jumps straight to what a
 *    single append needs;
 *  - a failed growth sets the sticky err (-ENOMEM) and leaves the contents as they were;
 *    every later append is then a no-op that answers -ENOMEM too, so a caller may append
 *    a whole unit and check once (pier__buf_failed) before using it, and can never send
 *    a unit with a hole in the middle.
 *
 * A zeroed pier__buf_t is an empty buffer with no memory. Not thread-safe (one owner).
 * Internal to the library: not installed. */
#ifndef PIER_BASE_BUF_H
#define PIER_BASE_BUF_H

#include <stdarg.h>
#include <stddef.h>

#define PIER__BUF_MIN 256

typedef struct pier__buf_s {
    char *p;
    size_t len, cap;
    int err; /* 0, or -ENOMEM once a growth has failed (sticky until reset/free) */
} pier__buf_t;

/* Makes room for extra more bytes. 0, or -ENOMEM (and err set). */
int pier__buf_reserve(pier__buf_t *b, size_t extra);
/* Appends n bytes. 0 or -ENOMEM; after a failure nothing more is appended. */
int pier__buf_append(pier__buf_t *b, const void *data, size_t n);
static inline int pier__buf_puts(pier__buf_t *b, const char *s);
/* Appends printf-formatted text (without a terminating NUL). 0 or -ENOMEM. */
int pier__buf_printf(pier__buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (n <= len), keeping the memory. */
void pier__buf_consume(pier__buf_t *b, size_t n);
/* Empties the buffer and clears err; keeps the memory for reuse. */
void pier__buf_reset(pier__buf_t *b);
/* Frees the memory; the buffer is empty and usable again. */
void pier__buf_free(pier__buf_t *b);
/* Hands the memory to the caller (who frees it with free()); the buffer is left empty.
 * *len receives the length. NULL if the buffer holds no memory. */
char *pier__buf_steal(pier__buf_t *b, size_t *len);
/* 1 if an append has failed since the last reset. */
static inline int pier__buf_failed(const pier__buf_t *b) { return b->err != 0; }

#include <string.h>
static inline int pier__buf_puts(pier__buf_t *b, const char *s) { return pier__buf_append(b, s, strlen(s)); }

#endif
