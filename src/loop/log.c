/* One-line logs to stderr and names for pier's negative errno values. */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int log_level = PIER_LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void pier_log_set_level(int level) { atomic_store(&log_level, level); }
int pier_log_level(void) { return atomic_load(&log_level); }

static void vlog(int level, const char *fmt, va_list ap) {
    if (level > atomic_load(&log_level))
        return;
    char line[1024];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld pier %s: ", tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level < 0 ? 0 : level > 3 ? 3 : level]);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* one write per line, so lines from several loop threads never interleave */
    fwrite(line, 1, (size_t)n, stderr);
}

void pier_log(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void pier__log_every(atomic_uint_fast64_t *last_ms, uint64_t now, int level, const char *fmt, ...) {
    uint64_t last = atomic_load(last_ms);
    if (last != 0 && now < last + 1000)
        return;
    if (!atomic_compare_exchange_strong(last_ms, &last, now ? now : 1))
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

const char *pier_strerror(int err) {
    switch (err) {
    case 0: return "success";
    case -ENOTCONN: return "connection is gone";
    case -EBUSY: return "still has live handles or is running";
    case -EMSGSIZE: return "message or input over its limit";
    case -ETIMEDOUT: return "timed out";
    case -ECONNRESET: return "connection reset by peer";
    case -ECONNREFUSED: return "connection refused";
    case -EADDRINUSE: return "address already in use";
    case -ECONNABORTED: return "peer ended the stream without a TLS close_notify (may be truncated)";
    case -EKEYREJECTED: return "peer's TLS certificate was rejected";
    default: break;
    }
    const char *s = err < 0 ? strerrordesc_np(-err) : NULL; /* thread-safe, unlike strerror */
    return s ? s : "unknown error";
}
