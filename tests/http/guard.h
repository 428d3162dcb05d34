/* Places test input right before a PROT_NONE page, so a parser that reads one byte past
 * the end of its input crashes instead of passing by luck. */
#ifndef PIER_TEST_GUARD_H
#define PIER_TEST_GUARD_H

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUARD_AREA (64 * 1024)

static char *guard_base;

/* Copies s[0, n) to end exactly at the guard page; valid until the next call. */
static inline char *guarded(const char *s, size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (!guard_base) {
        guard_base = mmap(NULL, GUARD_AREA + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (guard_base == MAP_FAILED || mprotect(guard_base + GUARD_AREA, page, PROT_NONE) != 0)
            abort();
    }
    if (n > GUARD_AREA)
        abort();
    char *at = guard_base + GUARD_AREA - n;
    memmove(at, s, n);
    return at;
}

#endif
