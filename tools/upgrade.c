#include "upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pier/net.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

enum { MAX_FDS = 256, READY_POLL_MS = 10, READY_TIMEOUT_MS = 15000 };

static const char *const server_cmds[] = {"serve", "echo", "http", "msg"};

static struct {
    char **argv;                 /* the whole command line, --pid-file included */
    char exe[PATH_MAX];
    const char *pid_file;
    int ready_fd;                /* the pipe to the process that started us, or -1 */
    /* an upgrade under way (child > 0) */
    pid_t child;
    int pipe_fd;                 /* until it says it listens, or closes */
    int exec_failed;
    uint64_t deadline;
    pier_timer_t poll;
    pier_loop_t *loop;
    void (*done)(void *arg, int ok);
    void *arg;
} up = {.ready_fd = -1, .pipe_fd = -1};

static int is_server_cmd(const char *cmd) {
    for (size_t i = 0; i < sizeof server_cmds / sizeof server_cmds[0]; i++)
        if (!strcmp(cmd, server_cmds[i]))
            return 1;
    return 0;
}

/* PIER_LISTEN_FDS="5,6,7": the sockets the old process left open for us. */
static void adopt_env(void) {
    const char *list = getenv("PIER_LISTEN_FDS"), *ready = getenv("PIER_UPGRADE_FD");
    for (const char *p = list; p && *p;) {
        char *end;
        long fd = strtol(p, &end, 10);
        int err = end == p || fd < 0 || fd > INT_MAX ? -EBADF : pier_net_inherit((int)fd);
        if (err < 0)
            pier_log(PIER_LOG_WARN, "PIER_LISTEN_FDS: '%s' is not a listening socket (%s): ignored", p,
                     pier_strerror(err));
        p = *end == ',' ? end + 1 : "";
    }
    char *end;
    long fd = ready ? strtol(ready, &end, 10) : -1;
    /* never 0 to 2: a garbled variable must not make us write to, or close, stdio */
    if (fd > 2 && fd <= INT_MAX && !*end && fcntl((int)fd, F_SETFD, FD_CLOEXEC) == 0)
        up.ready_fd = (int)fd;
    unsetenv("PIER_LISTEN_FDS");
    unsetenv("PIER_UPGRADE_FD");
    pier_net_inherit_systemd();
}

int pier_upgrade_init(int argc, char **argv) {
    if (argc < 2 || !is_server_cmd(argv[1]))
        return argc;
    up.argv = malloc(((size_t)argc + 1) * sizeof *up.argv);
    if (!up.argv) {
        fprintf(stderr, "pier: out of memory\n");
        return -1;
    }
    memcpy(up.argv, argv, ((size_t)argc + 1) * sizeof *argv);
    ssize_t n = readlink("/proc/self/exe", up.exe, sizeof up.exe - 1);
    up.exe[n > 0 ? n : 0] = 0;
    int out = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--pid-file") || !strncmp(argv[i], "--pid-file=", 11)) {
            up.pid_file = argv[i][10] ? argv[i] + 11 : argv[i + 1];
            if (!up.pid_file || !*up.pid_file) {
                fprintf(stderr, "pier %s: --pid-file wants a file name (see 'pier %s --help')\n", argv[1], argv[1]);
                return -1;
            }
            i += !argv[i][10];
            continue;
        }
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    adopt_env();
    return out;
}

/* Written beside the target and renamed over it, so a reader never sees it half-done. */
static int write_pid_file(void) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.%ld.tmp", up.pid_file, (long)getpid()) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    FILE *f = fopen(tmp, "we");
    if (!f)
        return -errno;
    int ok = fprintf(f, "%ld\n", (long)getpid()) > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, up.pid_file) < 0) {
        int err = ok ? -errno : -EIO;
        unlink(tmp);
        return err;
    }
    return 0;
}

int pier_upgrade_ready(void) {
    pier_net_inherit_close_unused();
    if (up.pid_file) {
        int err = write_pid_file();
        if (err < 0) {
            pier_log(PIER_LOG_ERROR, "cannot write pid file %s: %s", up.pid_file, pier_strerror(err));
            return -1;
        }
    }
    if (up.ready_fd >= 0) {
        /* if this fails the old process sees the pipe close and keeps serving, while
         * we serve too on the same sockets: both are then correct, so carry on */
        if (write(up.ready_fd, "R", 1) != 1)
            pier_log(PIER_LOG_WARN, "cannot tell the old process we listen: %s", pier_strerror(-errno));
        close(up.ready_fd);
        up.ready_fd = -1;
    }
    return 0;
}

/* The environment of the new copy: ours, with the two variables that carry the sockets
 * and the pipe. Made before fork, since the child may only make async-signal-safe calls. */
static char **child_env(const int *fds, unsigned nfds, int pipe_w) {
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = malloc((n + 3) * sizeof *env);
    char *listen = malloc(32 + (size_t)nfds * 12), *ready = malloc(32);
    if (!env || !listen || !ready) {
        free(env);
        free(listen);
        free(ready);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "PIER_LISTEN_FDS=", 16) && strncmp(environ[i], "PIER_UPGRADE_FD=", 16))
            env[k++] = environ[i];
    int len = sprintf(listen, "PIER_LISTEN_FDS=");
    for (unsigned i = 0; i < nfds; i++)
        len += sprintf(listen + len, "%s%d", i ? "," : "", fds[i]);
    sprintf(ready, "PIER_UPGRADE_FD=%d", pipe_w);
    env[k++] = listen;
    env[k++] = ready;
    env[k] = NULL;
    return env;
}

static void free_env(char **env) {
    size_t n = 0;
    while (env[n])
        n++;
    free(env[n - 1]);
    free(env[n - 2]);
    free(env);
}

/* The child between fork and exec: async-signal-safe calls only. The loops block the
 * signals they watch, and a blocked mask survives exec: the new copy starts clean. */
static void exec_child(const int *fds, unsigned nfds, int pipe_w, char **env) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (unsigned i = 0; i < nfds; i++)
        fcntl(fds[i], F_SETFD, 0);
    fcntl(pipe_w, F_SETFD, 0);
    execve(up.exe, up.argv, env);
    char msg[1 + sizeof(int)] = {'X'};
    int err = errno;
    memcpy(msg + 1, &err, sizeof err);
    if (write(pipe_w, msg, sizeof msg) < 0)
        _exit(126);
    _exit(127);
}

static void report(int st, int killed) {
    long pid = (long)up.child;
    if (killed)
        pier_log(PIER_LOG_ERROR, "SIGUSR2: the new process %ld did not listen in time: killed; this one keeps "
                                 "serving", pid);
    else if (up.exec_failed)
        return; /* said when its errno came */
    else if (WIFEXITED(st))
        pier_log(PIER_LOG_ERROR, "SIGUSR2: the new process %ld exited with status %d before it listened "
                                 "(its stderr says why); this one keeps serving", pid, WEXITSTATUS(st));
    else
        pier_log(PIER_LOG_ERROR, "SIGUSR2: the new process %ld died of signal %d before it listened; this one "
                                 "keeps serving", pid, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void end_upgrade(int ok) {
    pier_timer_stop(&up.poll);
    if (up.pipe_fd >= 0)
        close(up.pipe_fd);
    up.pipe_fd = -1;
    up.child = 0;
    up.exec_failed = 0;
    up.done(up.arg, ok);
}

/* -EAGAIN: nothing yet; 1: the new process listens; 0: the pipe closed without that
 * (the exec failed, logged here, or the process is on its way out). */
static int read_pipe(void) {
    char buf[1 + sizeof(int)];
    ssize_t n = read(up.pipe_fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return -EAGAIN;
    if (n > 0 && buf[0] == 'R')
        return 1;
    if (n == (ssize_t)sizeof buf && buf[0] == 'X') {
        int err;
        memcpy(&err, buf + 1, sizeof err);
        pier_log(PIER_LOG_ERROR, "SIGUSR2: cannot run %s: %s; this one keeps serving", up.exe,
                 pier_strerror(-err));
        up.exec_failed = 1;
    }
    return 0;
}

/* Never a blocking wait for a process that may still run: a closed pipe usually means
 * it is exiting, which the next ticks see, and the deadline kills whatever still runs. */
static void poll_cb(pier_timer_t *t) {
    int late = pier_loop_now(up.loop) >= up.deadline, st = 0;
    if (up.pipe_fd >= 0) {
        int r = read_pipe();
        if (r == 1) {
            pier_log(PIER_LOG_INFO, "SIGUSR2: the new process %ld listens", (long)up.child);
            end_upgrade(1);
            return;
        }
        if (r < 0 && !late)
            return;
        close(up.pipe_fd);
        up.pipe_fd = -1;
    }
    pid_t got = waitpid(up.child, &st, WNOHANG);
    if (got == 0 && !late)
        return;
    if (got == 0) {
        kill(up.child, SIGKILL);
        while (waitpid(up.child, &st, 0) < 0 && errno == EINTR)
            ;
    }
    report(st, got == 0);
    end_upgrade(0);
}

static int spawn(const int *fds, unsigned nfds, int pipe_w) {
    char **env = child_env(fds, nfds, pipe_w);
    if (!env)
        return -ENOMEM;
    pid_t pid = fork();
    if (pid == 0)
        exec_child(fds, nfds, pipe_w, env);
    int err = pid < 0 ? -errno : 0;
    free_env(env);
    up.child = pid > 0 ? pid : 0;
    return err;
}

int pier_upgrade_start(pier_loop_t *loop, const int *fds, unsigned nfds, void (*done)(void *arg, int ok),
                       void *arg) {
    if (up.child > 0)
        return -EBUSY;
    int p[2] = {-1, -1}, err = 0;
    if (!up.argv || !up.exe[0])
        err = -ENOENT;
    else if (nfds > MAX_FDS)
        err = -E2BIG;
    else if (pipe2(p, O_CLOEXEC) < 0)
        err = -errno;
    else
        err = spawn(fds, nfds, p[1]);
    if (p[1] >= 0)
        close(p[1]); /* the child's copy is the only writer: its exit reads as EOF */
    if (err < 0) {
        if (p[0] >= 0)
            close(p[0]);
        pier_log(PIER_LOG_ERROR, "SIGUSR2: cannot start a new process: %s; this one keeps serving",
                 pier_strerror(err));
        return err;
    }
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    up.pipe_fd = p[0];
    up.loop = loop;
    up.done = done;
    up.arg = arg;
    up.deadline = pier_loop_now(loop) + READY_TIMEOUT_MS;
    pier_timer_init(loop, &up.poll, poll_cb, NULL);
    pier_timer_start(&up.poll, READY_POLL_MS, READY_POLL_MS);
    pier_log(PIER_LOG_INFO, "SIGUSR2: started %s as process %ld on %u listening sockets", up.exe, (long)up.child,
             nfds);
    return 0;
}

static int pid_file_is_mine(void) {
    char buf[32] = {0};
    FILE *f = fopen(up.pid_file, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    return n > 0 && strtol(buf, NULL, 10) == (long)getpid();
}

void pier_upgrade_finish(void) {
    if (up.child > 0) {
        pier_log(PIER_LOG_WARN, "SIGUSR2: the new process %ld was still starting when this one stopped: killed",
                 (long)up.child);
        kill(up.child, SIGKILL);
        while (waitpid(up.child, NULL, 0) < 0 && errno == EINTR)
            ;
        pier_timer_stop(&up.poll);
        if (up.pipe_fd >= 0)
            close(up.pipe_fd);
        up.pipe_fd = -1;
        up.child = 0;
    }
    if (up.pid_file && pid_file_is_mine())
        unlink(up.pid_file);
}
