/* Restarts that drop nothing: the pid file, sockets inherited at start-up (systemd
 * socket activation, or the process that upgraded to this one), and SIGUSR2, which
 * starts a new copy of the binary on the same listening sockets.
 *
 * The hand-over: the old process forks and execs its binary (the path it was started
 * from, so an installed new version runs) with the same arguments, the listening
 * sockets left open and named in PIER_LISTEN_FDS, and the write end of a pipe named in
 * PIER_UPGRADE_FD. The new process builds its servers on those sockets (matched by
 * address), takes over the pid file and writes one byte on the pipe. Only then does
 * the old one stop accepting and drain; the sockets never close, so no connection
 * waiting in a backlog is lost. A pipe that closes without the byte (the new copy
 * failed, or could not be run) leaves the old one serving. */
#ifndef PIER_TOOLS_UPGRADE_H
#define PIER_TOOLS_UPGRADE_H

#include <pier/loop.h>

/* From main, before a command parses its flags (argv[1] is the command). For a server
 * command: removes --pid-file FILE (or --pid-file=FILE) from argv, remembers the whole
 * command line and the binary's path for SIGUSR2, and hands the inherited listening
 * sockets to the library (pier_net_inherit). Returns the new argc, or -1 after one line
 * on stderr. Other commands are returned unchanged. */
int pier_upgrade_init(int argc, char **argv);

/* Once every server exists: closes inherited sockets no server took, writes the pid
 * file (atomically), and tells the process that started this one that it listens.
 * 0, or -1 after logging why (the command should then exit non-zero). */
int pier_upgrade_ready(void);

/* Starts a new copy on the nfds listening sockets, from loop's thread. done(arg, 1)
 * runs on that loop once the new copy listens, done(arg, 0) if it failed (logged; the
 * caller keeps serving). 0 once started, -EBUSY while one is under way, or a negative
 * errno (logged) when it could not even be started. */
int pier_upgrade_start(pier_loop_t *loop, const int *fds, unsigned nfds, void (*done)(void *arg, int ok),
                       void *arg);

/* Before the loops are freed: gives up an upgrade still under way (the new copy is
 * killed: this process is stopping, and two must not serve on after it), and removes
 * the pid file if it still names this process. */
void pier_upgrade_finish(void);

#endif
