/* Listening sockets handed to the process (systemd socket activation, a binary upgrade),
 * waiting for the server whose address they are bound to. */
#ifndef PIER_NET_INHERIT_H
#define PIER_NET_INHERIT_H

#include <sys/socket.h>

/* Fills fds[0..n-1] with listening sockets for want from the inherited ones bound to it:
 * the same family, address and port, or for a wildcard want (0.0.0.0 or ::) a wildcard
 * socket of either family on the same port; a want with port 0 takes the first sockets
 * of its address. With fewer than n, the rest are dups of those (loops then share a
 * socket). The fds become the caller's. Returns n, 0 when none was inherited (fds
 * untouched: bind as usual), or a negative errno (nothing taken). */
int pier__inherit_fds(const struct sockaddr_storage *want, int *fds, unsigned n);

#endif
