/* Fault injection: makes the library's failure paths run (build option PIER_FAULTS).
 *
 * With -DPIER_FAULTS=ON this header is force-included (-include) into every object of
 * the library, and nowhere else: the tool, the tests and the application keep the real
 * calls. It first includes the system headers that declare the calls, then renames each
 * call to a wrapper of src/fault/fault.c, which is compiled without the macros
 * (PIER_FAULT_IMPL) and calls the real function unless it decides to fail it. The macros
 * are object-like (read, not read(...)): a struct member of the same name, such as a
 * transport's read, is then renamed alike in every library object, and still works.
 * With the option off, nothing of this is compiled and the library is the same, byte for
 * byte.
 *
 * Run time (environment, read once at start-up; nothing is injected without the rate):
 *   PIER_FAULT_RATE   probability that one call fails, 0..1 (e.g. 0.02)
 *   PIER_FAULT_SEED   seed of the random choices (default 1); each thread draws from its
 *                     own generator, seeded from this and the order in which threads
 *                     first made a call, so a run is repeatable as far as the threads'
 *                     interleaving is
 *   PIER_FAULT_MS     inject only during the first N ms of the process
 *   PIER_FAULT_START  a path: inject only once this file exists (so a server can start
 *                     up without faults)
 *   PIER_FAULT_STOP   a path: stop injecting for good once this file exists (so that
 *                     recovery can be checked in the same process): every fault looks
 *                     for it first, so none follows its creation. The start file is
 *                     looked for at most every 10 ms. Signals are left to the program.
 *   PIER_FAULT_CALLS  a comma-separated list of call names to fail (default: all)
 *   PIER_FAULT_SKIP   let the first N calls that could fail through (with CALLS and a
 *                     rate of 1, this fails the N+1th call of a kind and all after it)
 * At exit one line goes to stderr:
 *   pier-faults: N faults injected (seed S, rate R): malloc=... read=...
 *
 * What fails, and how. Each call fails only with errors it can really return, and only
 * in ways after which the program's own waiting is still right:
 *  - malloc, calloc, realloc, strdup, strndup: NULL with ENOMEM (realloc keeps the old
 *    block). free never fails.
 *  - read, recv on a socket: EINTR, ECONNRESET, ENOMEM, EAGAIN, or a short read (fewer
 *    bytes than asked for, possibly fewer than are there).
 *  - write, send, sendmsg, writev, sendfile to a socket: EINTR, EPIPE, ECONNRESET,
 *    ENOMEM (sendfile also EIO), EAGAIN, or a short write (part of the bytes go out).
 *  - accept, accept4: EINTR, EAGAIN, ECONNABORTED, EMFILE, ENFILE, ENOBUFS, ENOMEM
 *    (the pending connection stays queued; the listener is level-triggered).
 *  - socket, epoll_create1, eventfd, signalfd (a new one): EMFILE, ENFILE, ENOMEM (and
 *    ENOBUFS for socket, ENODEV for eventfd and signalfd).
 *  - connect: ECONNREFUSED, EADDRNOTAVAIL, ENETUNREACH, without connecting.
 *  - open, openat: EMFILE, ENFILE, ENOMEM.  fstat: ENOMEM.
 *  - epoll_ctl: ADD fails with ENOMEM or ENOSPC; MOD and DEL never (they allocate
 *    nothing, and a DEL that failed would leave a registration the kernel never leaves).
 *  - epoll_wait: EINTR, at once.
 *  - pthread_create: EAGAIN (the loops' threads, the msg workers).
 *  - Reads and writes on eventfds, signalfds and files, and close, never fail: on a
 *    non-blocking eventfd or signalfd the kernel cannot fail them, and a lost wake-up
 *    would be a fault of the injector, not of pier.
 *
 * Edge-triggered epoll. pier reads and writes until the kernel says EAGAIN or a transfer
 * comes up short, and then waits for the next edge. A fake EAGAIN or a fake short
 * transfer would leave a socket that is still readable (writable) with no edge to come,
 * and the program would wait forever for something the kernel never does. So after
 * each of them the wrapper re-arms the socket in its epoll set (EPOLL_CTL_MOD with the
 * events it was registered with, remembered from epoll_ctl), which reports it again at
 * once if it is ready: the same as the rest of the data arriving, or room in the send
 * buffer appearing, a moment later. That is a state the kernel really produces, and
 * pier must handle it (a spurious or early event included).
 *
 * EINTR on a non-blocking socket cannot really happen (it never sleeps); it is injected
 * anyway since pier has EINTR paths, which retry at once and so cannot hang.
 */
#ifndef PIER_FAULT_H
#define PIER_FAULT_H

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

void *pier__fault_malloc(size_t n);
void *pier__fault_calloc(size_t n, size_t size);
void *pier__fault_realloc(void *p, size_t n);
char *pier__fault_strdup(const char *s);
char *pier__fault_strndup(const char *s, size_t n);
ssize_t pier__fault_read(int fd, void *buf, size_t n);
ssize_t pier__fault_recv(int fd, void *buf, size_t n, int flags);
ssize_t pier__fault_write(int fd, const void *buf, size_t n);
ssize_t pier__fault_send(int fd, const void *buf, size_t n, int flags);
ssize_t pier__fault_sendmsg(int fd, const struct msghdr *msg, int flags);
ssize_t pier__fault_writev(int fd, const struct iovec *iov, int iovcnt);
ssize_t pier__fault_sendfile(int out_fd, int in_fd, off_t *offset, size_t count);
int pier__fault_accept(int fd, struct sockaddr *addr, socklen_t *len);
int pier__fault_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
int pier__fault_socket(int domain, int type, int protocol);
int pier__fault_connect(int fd, const struct sockaddr *addr, socklen_t len);
int pier__fault_epoll_create1(int flags);
int pier__fault_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev);
int pier__fault_epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout);
int pier__fault_eventfd(unsigned int initval, int flags);
int pier__fault_signalfd(int fd, const sigset_t *mask, int flags);
int pier__fault_open(const char *path, int flags, ...);
int pier__fault_openat(int dirfd, const char *path, int flags, ...);
int pier__fault_fstat(int fd, struct stat *sb);
int pier__fault_close(int fd);
int pier__fault_pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg);

#ifndef PIER_FAULT_IMPL
#undef malloc
#undef calloc
#undef realloc
#undef strdup
#undef strndup
#undef read
#undef recv
#undef write
#undef send
#undef sendmsg
#undef writev
#undef sendfile
#undef accept
#undef accept4
#undef socket
#undef connect
#undef epoll_create1
#undef epoll_ctl
#undef epoll_wait
#undef eventfd
#undef signalfd
#undef open
#undef openat
#undef fstat
#undef close
#undef pthread_create
#define malloc pier__fault_malloc
#define calloc pier__fault_calloc
#define realloc pier__fault_realloc
#define strdup pier__fault_strdup
#define strndup pier__fault_strndup
#define read pier__fault_read
#define recv pier__fault_recv
#define write pier__fault_write
#define send pier__fault_send
#define sendmsg pier__fault_sendmsg
#define writev pier__fault_writev
#define sendfile pier__fault_sendfile
#define accept pier__fault_accept
#define accept4 pier__fault_accept4
#define socket pier__fault_socket
#define connect pier__fault_connect
#define epoll_create1 pier__fault_epoll_create1
#define epoll_ctl pier__fault_epoll_ctl
#define epoll_wait pier__fault_epoll_wait
#define eventfd pier__fault_eventfd
#define signalfd pier__fault_signalfd
#define open pier__fault_open
#define openat pier__fault_openat
#define fstat pier__fault_fstat
#define close pier__fault_close
#define pthread_create pier__fault_pthread_create
#endif

#endif
