/* The pool of inherited listening sockets.
 *
 * Why a process-wide pool matched by address rather than an fd in the server options:
 * the sockets arrive at start-up (systemd, or the process that ran an upgrade) before
 * any server exists, and the code that creates the servers need not change at all:
 * pier_server_new looks here before it binds. A socket nobody claims is closed by
 * pier_net_inherit_close_unused, so that the kernel stops queueing connections on it. */
#include "inherit.h"

#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_INHERITED = 256 };

typedef struct inherited_s {
    int fd;
    struct sockaddr_storage addr;
} inherited_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static inherited_t pool[MAX_INHERITED];
static unsigned npool;

static uint16_t port_of(const struct sockaddr_storage *ss) {
    return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
                                           : ((const struct sockaddr_in *)ss)->sin_port);
}

static int is_wildcard(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)ss)->sin6_addr, &in6addr_any, sizeof in6addr_any);
    return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
}

static int same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                       sizeof(struct in6_addr));
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
}

/* A unit file that says ListenStream=8080 gets a dual-stack [::]:8080, while the
 * command line says --host 0.0.0.0: both mean every address, so they match. */
static int matches(const struct sockaddr_storage *want, const struct sockaddr_storage *have) {
    if (port_of(want) && port_of(want) != port_of(have))
        return 0;
    return same_host(want, have) || (is_wildcard(want) && is_wildcard(have));
}

static void describe(const struct sockaddr_storage *ss, char *out, size_t size) {
    char host[INET6_ADDRSTRLEN] = "?";
    const void *a = ss->ss_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr
                                              : (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
    inet_ntop(ss->ss_family, a, host, sizeof host);
    snprintf(out, size, ss->ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port_of(ss));
}

int pier_net_inherit(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int listening = 0, type = 0;
    socklen_t ilen = sizeof listening;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ilen) < 0)
        return -errno;
    ilen = sizeof type;
    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &ilen);
    if (!listening || type != SOCK_STREAM || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return -ENOTSOCK;
    /* the accept path wants a non-blocking socket, and a later exec must not leak it */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -errno;
    int err = -ENOSPC;
    pthread_mutex_lock(&lock);
    if (npool < MAX_INHERITED) {
        pool[npool++] = (inherited_t){.fd = fd, .addr = ss};
        err = 0;
    }
    pthread_mutex_unlock(&lock);
    return err;
}

static unsigned take(const struct sockaddr_storage *want, int *fds, unsigned max) {
    unsigned n = 0;
    pthread_mutex_lock(&lock);
    for (unsigned i = 0; i < npool && n < max;) {
        if (matches(want, &pool[i].addr)) {
            fds[n++] = pool[i].fd;
            pool[i] = pool[--npool];
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&lock);
    return n;
}

/* Put back rather than closed on failure: closing would lose the connections queued on
 * them, while in the pool the next try (or pier_net_inherit_close_unused) decides. */
static void give_back(int *fds, unsigned n) {
    pthread_mutex_lock(&lock);
    for (unsigned i = 0; i < n; i++) {
        socklen_t len = sizeof pool[npool].addr;
        if (npool < MAX_INHERITED && getsockname(fds[i], (struct sockaddr *)&pool[npool].addr, &len) == 0)
            pool[npool++].fd = fds[i];
        else
            close(fds[i]);
    }
    pthread_mutex_unlock(&lock);
}

int pier__inherit_fds(const struct sockaddr_storage *want, int *fds, unsigned n) {
    unsigned got = take(want, fds, n);
    for (unsigned i = got; got && i < n; i++) {
        fds[i] = fcntl(fds[i % got], F_DUPFD_CLOEXEC, 0);
        if (fds[i] < 0) {
            int err = -errno;
            for (unsigned j = got; j < i; j++)
                close(fds[j]);
            give_back(fds, got);
            return err;
        }
    }
    return got ? (int)n : 0;
}

unsigned pier_net_inherit_close_unused(void) {
    pthread_mutex_lock(&lock);
    unsigned n = npool;
    for (unsigned i = 0; i < npool; i++) {
        char name[INET6_ADDRSTRLEN + 16];
        describe(&pool[i].addr, name, sizeof name);
        pier_log(PIER_LOG_WARN, "inherited listening socket %s (fd %d) matches no server: closed", name,
                 pool[i].fd);
        close(pool[i].fd);
    }
    npool = 0;
    pthread_mutex_unlock(&lock);
    return n;
}

/* systemd's convention: LISTEN_PID names us, LISTEN_FDS counts the sockets, which
 * start at fd 3. The variables are removed so that no child of ours takes them too. */
int pier_net_inherit_systemd(void) {
    const char *pid = getenv("LISTEN_PID"), *count = getenv("LISTEN_FDS");
    if (!pid || !count)
        return 0;
    char *end;
    long p = strtol(pid, &end, 10), n = *end ? -1 : strtol(count, &end, 10);
    int mine = p == (long)getpid() && !*end && n >= 0 && n <= MAX_INHERITED;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    if (!mine)
        return 0;
    int got = 0;
    for (int fd = 3; fd < 3 + (int)n; fd++) {
        int err = pier_net_inherit(fd);
        if (err < 0) {
            pier_log(PIER_LOG_WARN, "LISTEN_FDS: fd %d is not a listening TCP socket (%s): ignored", fd,
                     pier_strerror(err));
            continue;
        }
        got++;
    }
    return got;
}
