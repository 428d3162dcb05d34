/* The wrappers behind fault.h: each decides whether to fail its call and how, then calls
 * the real function (this file is compiled without fault.h's macros). What fails and why
 * it is realistic is written in fault.h. Compiled to nothing unless PIER_FAULTS is on. */
#ifdef PIER_FAULTS

#include "fault.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* ---- the calls, their names and counters ---- */

enum {
    F_MALLOC, F_CALLOC, F_REALLOC, F_STRDUP, F_STRNDUP, F_READ, F_RECV, F_WRITE, F_SEND, F_SENDMSG,
    F_WRITEV, F_SENDFILE, F_ACCEPT, F_ACCEPT4, F_SOCKET, F_CONNECT, F_EPOLL_CREATE1, F_EPOLL_CTL,
    F_EPOLL_WAIT, F_EVENTFD, F_SIGNALFD, F_OPEN, F_OPENAT, F_FSTAT, F_PTHREAD_CREATE, F_NCALLS
};

static const char *const call_names[F_NCALLS] = {
    "malloc", "calloc", "realloc", "strdup", "strndup", "read", "recv", "write", "send", "sendmsg",
    "writev", "sendfile", "accept", "accept4", "socket", "connect", "epoll_create1", "epoll_ctl",
    "epoll_wait", "eventfd", "signalfd", "open", "openat", "fstat", "pthread_create",
};

#define SHORT (-1) /* not an errno: a short transfer */

static const int io_read_errs[] = {EINTR, ECONNRESET, ENOMEM, EAGAIN, SHORT, SHORT};
static const int io_write_errs[] = {EINTR, EPIPE, ECONNRESET, ENOMEM, EAGAIN, SHORT, SHORT};
static const int sendfile_errs[] = {EINTR, EPIPE, ECONNRESET, ENOMEM, EIO, EAGAIN, SHORT, SHORT};
static const int accept_errs[] = {EINTR, EAGAIN, ECONNABORTED, EMFILE, ENFILE, ENOBUFS, ENOMEM};
static const int socket_errs[] = {EMFILE, ENFILE, ENOBUFS, ENOMEM};
static const int newfd_errs[] = {EMFILE, ENFILE, ENOMEM};
static const int eventfd_errs[] = {EMFILE, ENFILE, ENOMEM, ENODEV};
static const int connect_errs[] = {ECONNREFUSED, EADDRNOTAVAIL, ENETUNREACH};
static const int epoll_add_errs[] = {ENOMEM, ENOSPC};

#define NERRS(a) (sizeof(a) / sizeof((a)[0]))

static struct {
    int on;                   /* a rate was given */
    double rate;
    uint64_t threshold;       /* a draw below this fails the call */
    uint64_t seed;
    uint64_t until_ms;        /* 0: no time limit */
    char *start_file, *stop_file;
    uint32_t calls;           /* bit per call that may fail */
    uint64_t skip;            /* so many calls that may fail are let through first */
    uint64_t t0;
} cfg;

enum { ST_WAITING, ST_ACTIVE, ST_OVER };
static atomic_int state;
static atomic_uint_fast64_t last_look;   /* when the start/stop files were last looked for */
static atomic_uint thread_seq;
static atomic_uint_fast64_t counts[F_NCALLS];
static atomic_uint_fast64_t candidates;  /* calls that could have failed, for PIER_FAULT_SKIP */
static pthread_once_t once = PTHREAD_ONCE_INIT;

static _Thread_local uint64_t rng;
static _Thread_local int rng_ready;

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* splitmix64: small, fast, good enough to decide which calls fail */
static uint64_t draw(void) {
    if (!rng_ready) {
        rng = cfg.seed * 0x9E3779B97F4A7C15ull + (uint64_t)atomic_fetch_add(&thread_seq, 1) * 0xBF58476D1CE4E5B9ull;
        rng_ready = 1;
    }
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void report(void) {
    uint64_t total = 0;
    for (int i = 0; i < F_NCALLS; i++)
        total += atomic_load(&counts[i]);
    char line[2048];
    int n = snprintf(line, sizeof line, "pier-faults: %llu faults injected (seed %llu, rate %g):",
                     (unsigned long long)total, (unsigned long long)cfg.seed, cfg.rate);
    for (int i = 0; i < F_NCALLS && n > 0 && (size_t)n < sizeof line; i++) {
        uint64_t c = atomic_load(&counts[i]);
        if (c)
            n += snprintf(line + n, sizeof line - (size_t)n, " %s=%llu", call_names[i], (unsigned long long)c);
    }
    fprintf(stderr, "%s\n", line);
}

static uint32_t parse_calls(const char *list) {
    if (!list || !*list)
        return UINT32_MAX;
    uint32_t mask = 0;
    for (int i = 0; i < F_NCALLS; i++) {
        size_t len = strlen(call_names[i]);
        for (const char *p = list; (p = strstr(p, call_names[i])) != NULL; p += len)
            if ((p == list || p[-1] == ',') && (p[len] == ',' || p[len] == '\0'))
                mask |= 1u << i;
    }
    return mask;
}

static void init(void) {
    cfg.t0 = now_ms();
    const char *rate = getenv("PIER_FAULT_RATE");
    if (!rate || !*rate)
        return;
    cfg.on = 1;
    cfg.rate = strtod(rate, NULL);
    cfg.rate = cfg.rate < 0 ? 0 : cfg.rate > 1 ? 1 : cfg.rate;
    cfg.threshold = cfg.rate >= 1 ? UINT64_MAX : (uint64_t)(cfg.rate * 18446744073709551616.0);
    const char *s = getenv("PIER_FAULT_SEED");
    cfg.seed = s && *s ? strtoull(s, NULL, 10) : 1;
    s = getenv("PIER_FAULT_MS");
    cfg.until_ms = s && *s ? strtoull(s, NULL, 10) : 0;
    s = getenv("PIER_FAULT_START");
    cfg.start_file = s && *s ? strdup(s) : NULL;
    s = getenv("PIER_FAULT_STOP");
    cfg.stop_file = s && *s ? strdup(s) : NULL;
    cfg.calls = parse_calls(getenv("PIER_FAULT_CALLS"));
    s = getenv("PIER_FAULT_SKIP");
    cfg.skip = s && *s ? strtoull(s, NULL, 10) : 0;
    atomic_store(&state, cfg.start_file ? ST_WAITING : ST_ACTIVE);
    atomic_store(&last_look, 0); /* the files are looked for at the first call */
    atexit(report);
}

__attribute__((constructor)) static void init_early(void) { pthread_once(&once, init); }

/* Whether injection is on now: after the start file, before the stop file and the
 * time limit. The files are looked for by one thread at a time, every 10 ms at most. */
static int active(void) {
    int st = atomic_load_explicit(&state, memory_order_relaxed);
    if (st == ST_OVER)
        return 0;
    uint64_t now = now_ms();
    if (cfg.until_ms && now - cfg.t0 >= cfg.until_ms) {
        atomic_store(&state, ST_OVER);
        return 0;
    }
    uint64_t last = atomic_load(&last_look);
    if ((cfg.start_file || cfg.stop_file) && now - last >= 10 &&
        atomic_compare_exchange_strong(&last_look, &last, now)) {
        if (cfg.stop_file && access(cfg.stop_file, F_OK) == 0) {
            atomic_store(&state, ST_OVER);
            return 0;
        }
        if (st == ST_WAITING && access(cfg.start_file, F_OK) == 0)
            atomic_store(&state, st = ST_ACTIVE);
    }
    return st == ST_ACTIVE;
}

/* Whether this call of kind `call` fails. Counted here: the caller then fails it. */
static int inject(int call) {
    pthread_once(&once, init);
    if (!cfg.on || !(cfg.calls & (1u << call)) || !active())
        return 0;
    if (cfg.skip && atomic_fetch_add_explicit(&candidates, 1, memory_order_relaxed) < cfg.skip)
        return 0;
    if (draw() >= cfg.threshold)
        return 0;
    /* looked for again before each fault: another thread may be between its look at the
     * file and its store of ST_OVER, and no fault may follow the file's creation */
    if (cfg.stop_file && access(cfg.stop_file, F_OK) == 0) {
        atomic_store(&state, ST_OVER);
        return 0;
    }
    atomic_fetch_add_explicit(&counts[call], 1, memory_order_relaxed);
    return 1;
}

static int pick(const int *errs, size_t n) { return errs[draw() % n]; }

/* 1..n-1 bytes of n (n >= 2) */
static size_t shorter(size_t n) { return 1 + (size_t)(draw() % (n - 1)); }

/* ---- what each descriptor is, and where it is registered ---- */

enum { FD_UNKNOWN, FD_SOCKET, FD_OTHER };

#define FD_TRACKED 65536

static struct {
    int kind;
    int epfd;            /* 0: not registered (an epoll fd is never 0 in pier) */
    struct epoll_event ev;
} fds[FD_TRACKED];
static pthread_mutex_t fds_mu = PTHREAD_MUTEX_INITIALIZER;

static void fd_set_kind(int fd, int kind) {
    if (fd < 0 || fd >= FD_TRACKED)
        return;
    pthread_mutex_lock(&fds_mu);
    fds[fd].kind = kind;
    fds[fd].epfd = 0;
    pthread_mutex_unlock(&fds_mu);
}

static int is_socket(int fd) {
    if (fd < 0 || fd >= FD_TRACKED)
        return 0;
    pthread_mutex_lock(&fds_mu);
    int k = fds[fd].kind;
    pthread_mutex_unlock(&fds_mu);
    return k == FD_SOCKET;
}

static void fd_registered(int epfd, int op, int fd, const struct epoll_event *ev) {
    if (fd < 0 || fd >= FD_TRACKED)
        return;
    pthread_mutex_lock(&fds_mu);
    if (op == EPOLL_CTL_DEL) {
        fds[fd].epfd = 0;
    } else if (ev) {
        fds[fd].epfd = epfd;
        fds[fd].ev = *ev;
    }
    pthread_mutex_unlock(&fds_mu);
}

/* Reports the socket again if it is ready: see "Edge-triggered epoll" in fault.h. */
static void rearm(int fd) {
    if (fd < 0 || fd >= FD_TRACKED)
        return;
    pthread_mutex_lock(&fds_mu);
    int epfd = fds[fd].epfd;
    struct epoll_event ev = fds[fd].ev;
    pthread_mutex_unlock(&fds_mu);
    if (epfd > 0)
        epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
}

/* Decides how a transfer of n bytes on a socket fails: -1 with errno set (a fake EAGAIN
 * re-arms the socket first), or a shorter length to transfer instead. */
static ssize_t fault_len(int fd, size_t n, const int *errs, size_t nerrs) {
    int e = pick(errs, nerrs);
    if (e == SHORT && n >= 2)
        return (ssize_t)shorter(n);
    if (e == SHORT)
        e = EINTR;
    if (e == EAGAIN)
        rearm(fd);
    errno = e;
    return -1;
}

/* The result of a short transfer of m bytes: if it got all m, the rest may be ready at
 * once, and must be reported again. */
static ssize_t after_short(int fd, ssize_t r, ssize_t m) {
    if (r == m)
        rearm(fd);
    return r;
}

/* ---- memory ---- */

void *pier__fault_malloc(size_t n) {
    if (inject(F_MALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return malloc(n);
}

void *pier__fault_calloc(size_t n, size_t size) {
    if (inject(F_CALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return calloc(n, size);
}

void *pier__fault_realloc(void *p, size_t n) {
    if (inject(F_REALLOC)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n);
}

char *pier__fault_strdup(const char *s) {
    if (inject(F_STRDUP)) {
        errno = ENOMEM;
        return NULL;
    }
    return strdup(s);
}

char *pier__fault_strndup(const char *s, size_t n) {
    if (inject(F_STRNDUP)) {
        errno = ENOMEM;
        return NULL;
    }
    return strndup(s, n);
}

/* ---- reading and writing ---- */

ssize_t pier__fault_recv(int fd, void *buf, size_t n, int flags) {
    if (!is_socket(fd) || !inject(F_RECV))
        return recv(fd, buf, n, flags);
    ssize_t m = fault_len(fd, n, io_read_errs, NERRS(io_read_errs));
    return m < 0 ? -1 : after_short(fd, recv(fd, buf, (size_t)m, flags), m);
}

ssize_t pier__fault_read(int fd, void *buf, size_t n) {
    if (!is_socket(fd) || !inject(F_READ))
        return read(fd, buf, n);
    ssize_t m = fault_len(fd, n, io_read_errs, NERRS(io_read_errs));
    return m < 0 ? -1 : after_short(fd, read(fd, buf, (size_t)m), m);
}

ssize_t pier__fault_write(int fd, const void *buf, size_t n) {
    if (!is_socket(fd) || !inject(F_WRITE))
        return write(fd, buf, n);
    ssize_t m = fault_len(fd, n, io_write_errs, NERRS(io_write_errs));
    return m < 0 ? -1 : after_short(fd, write(fd, buf, (size_t)m), m);
}

ssize_t pier__fault_send(int fd, const void *buf, size_t n, int flags) {
    if (!is_socket(fd) || !inject(F_SEND))
        return send(fd, buf, n, flags);
    ssize_t m = fault_len(fd, n, io_write_errs, NERRS(io_write_errs));
    return m < 0 ? -1 : after_short(fd, send(fd, buf, (size_t)m, flags), m);
}

#define IOV_COPY 1024

/* Copies iov cut down to m bytes in all; returns the new count. */
static int iov_cut(const struct iovec *iov, int cnt, size_t m, struct iovec *out) {
    int k = 0;
    for (int i = 0; i < cnt && k < IOV_COPY && m > 0; i++) {
        out[k] = iov[i];
        if (out[k].iov_len > m)
            out[k].iov_len = m;
        m -= out[k].iov_len;
        k++;
    }
    return k;
}

static size_t iov_total(const struct iovec *iov, int cnt) {
    size_t t = 0;
    for (int i = 0; i < cnt; i++)
        t += iov[i].iov_len;
    return t;
}

ssize_t pier__fault_sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (!is_socket(fd) || !inject(F_SENDMSG))
        return sendmsg(fd, msg, flags);
    ssize_t m = fault_len(fd, iov_total(msg->msg_iov, (int)msg->msg_iovlen), io_write_errs, NERRS(io_write_errs));
    if (m < 0)
        return -1;
    struct iovec cut[IOV_COPY];
    struct msghdr copy = *msg;
    copy.msg_iov = cut;
    copy.msg_iovlen = (size_t)iov_cut(msg->msg_iov, (int)msg->msg_iovlen, (size_t)m, cut);
    return after_short(fd, sendmsg(fd, &copy, flags), m);
}

ssize_t pier__fault_writev(int fd, const struct iovec *iov, int iovcnt) {
    if (!is_socket(fd) || !inject(F_WRITEV))
        return writev(fd, iov, iovcnt);
    ssize_t m = fault_len(fd, iov_total(iov, iovcnt), io_write_errs, NERRS(io_write_errs));
    if (m < 0)
        return -1;
    struct iovec cut[IOV_COPY];
    return after_short(fd, writev(fd, cut, iov_cut(iov, iovcnt, (size_t)m, cut)), m);
}

ssize_t pier__fault_sendfile(int out_fd, int in_fd, off_t *offset, size_t count) {
    if (!is_socket(out_fd) || !inject(F_SENDFILE))
        return sendfile(out_fd, in_fd, offset, count);
    ssize_t m = fault_len(out_fd, count, sendfile_errs, NERRS(sendfile_errs));
    return m < 0 ? -1 : after_short(out_fd, sendfile(out_fd, in_fd, offset, (size_t)m), m);
}

/* ---- descriptors ---- */

static int fail_fd(const int *errs, size_t n) {
    errno = pick(errs, n);
    return -1;
}

int pier__fault_accept(int fd, struct sockaddr *addr, socklen_t *len) {
    if (inject(F_ACCEPT))
        return fail_fd(accept_errs, NERRS(accept_errs));
    int r = accept(fd, addr, len);
    fd_set_kind(r, FD_SOCKET);
    return r;
}

int pier__fault_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    if (inject(F_ACCEPT4))
        return fail_fd(accept_errs, NERRS(accept_errs));
    int r = accept4(fd, addr, len, flags);
    fd_set_kind(r, FD_SOCKET);
    return r;
}

int pier__fault_socket(int domain, int type, int protocol) {
    if (inject(F_SOCKET))
        return fail_fd(socket_errs, NERRS(socket_errs));
    int r = socket(domain, type, protocol);
    fd_set_kind(r, FD_SOCKET);
    return r;
}

int pier__fault_connect(int fd, const struct sockaddr *addr, socklen_t len) {
    if (inject(F_CONNECT))
        return fail_fd(connect_errs, NERRS(connect_errs));
    return connect(fd, addr, len);
}

int pier__fault_epoll_create1(int flags) {
    if (inject(F_EPOLL_CREATE1))
        return fail_fd(newfd_errs, NERRS(newfd_errs));
    int r = epoll_create1(flags);
    fd_set_kind(r, FD_OTHER);
    return r;
}

int pier__fault_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    if (op == EPOLL_CTL_ADD && inject(F_EPOLL_CTL))
        return fail_fd(epoll_add_errs, NERRS(epoll_add_errs));
    int r = epoll_ctl(epfd, op, fd, ev);
    if (r == 0)
        fd_registered(epfd, op, fd, ev);
    return r;
}

int pier__fault_epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout) {
    if (inject(F_EPOLL_WAIT)) {
        errno = EINTR;
        return -1;
    }
    return epoll_wait(epfd, evs, max, timeout);
}

int pier__fault_eventfd(unsigned int initval, int flags) {
    if (inject(F_EVENTFD))
        return fail_fd(eventfd_errs, NERRS(eventfd_errs));
    int r = eventfd(initval, flags);
    fd_set_kind(r, FD_OTHER);
    return r;
}

int pier__fault_signalfd(int fd, const sigset_t *mask, int flags) {
    if (fd == -1 && inject(F_SIGNALFD))
        return fail_fd(eventfd_errs, NERRS(eventfd_errs));
    int r = signalfd(fd, mask, flags);
    if (fd == -1)
        fd_set_kind(r, FD_OTHER);
    return r;
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int pier__fault_open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (inject(F_OPEN))
        return fail_fd(newfd_errs, NERRS(newfd_errs));
    int r = open(path, flags, mode);
    fd_set_kind(r, FD_OTHER);
    return r;
}

int pier__fault_openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (inject(F_OPENAT))
        return fail_fd(newfd_errs, NERRS(newfd_errs));
    int r = openat(dirfd, path, flags, mode);
    fd_set_kind(r, FD_OTHER);
    return r;
}

int pier__fault_fstat(int fd, struct stat *sb) {
    if (inject(F_FSTAT)) {
        errno = ENOMEM;
        return -1;
    }
    return fstat(fd, sb);
}

int pier__fault_pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) {
    if (inject(F_PTHREAD_CREATE))
        return EAGAIN; /* as pthread_create reports it: returned, not in errno */
    return pthread_create(th, attr, fn, arg);
}

int pier__fault_close(int fd) {
    fd_set_kind(fd, FD_UNKNOWN); /* first: the number may be reused at once by another thread */
    return close(fd);
}

#else
typedef int pier__fault_off_t; /* an empty translation unit is not ISO C */
#endif
