/* Signals delivered through a signalfd, so a handler runs as an ordinary loop callback
 * and may do anything a callback may do (stop the loop, close servers, log). */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

static void sig_cb(pier_loop_t *loop, pier__io_t *io, uint32_t events) {
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        int signo = (int)si.ssi_signo;
        if (signo > 0 && signo <= 64 && loop->sigs[signo].cb)
            loop->sigs[signo].cb(loop, signo, loop->sigs[signo].arg);
    }
}

int pier_loop_signal(pier_loop_t *loop, int signo, pier_signal_cb cb, void *arg) {
    if (signo <= 0 || signo > 64 || !cb || signo == SIGKILL || signo == SIGSTOP)
        return -EINVAL;
    if (loop->sigs[signo].cb)
        return -EEXIST;
    sigset_t one, old;
    sigemptyset(&one);
    sigaddset(&one, signo);
    int err = pthread_sigmask(SIG_BLOCK, &one, &old);
    if (err)
        return -err;
    sigaddset(&loop->sigmask, signo);
    int fd = signalfd(loop->sig.fd, &loop->sigmask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) {
        err = -errno;
        goto fail;
    }
    if (loop->sig.fd < 0) {
        loop->sig.fd = fd;
        loop->sig.cb = sig_cb;
        if ((err = pier__io_add(loop, &loop->sig, EPOLLIN)) < 0) {
            close(fd);
            loop->sig.fd = -1;
            goto fail;
        }
    }
    loop->sigs[signo].cb = cb;
    loop->sigs[signo].arg = arg;
    loop->handles++;
    return 0;
fail:
    /* nobody will read it: blocked, the signal would be lost for good (a SIGTERM could
     * no longer stop the process), so it gets back the disposition it had */
    sigdelset(&loop->sigmask, signo);
    if (!sigismember(&old, signo))
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    return err;
}

void pier_loop_signal_stop(pier_loop_t *loop, int signo) {
    if (signo <= 0 || signo > 64 || !loop->sigs[signo].cb)
        return;
    loop->sigs[signo].cb = NULL;
    loop->handles--;
    sigdelset(&loop->sigmask, signo);
    /* the signal stays blocked: unblocking could let a pending one kill the process */
    signalfd(loop->sig.fd, &loop->sigmask, SFD_CLOEXEC | SFD_NONBLOCK);
}
