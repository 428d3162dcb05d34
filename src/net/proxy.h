/* The PROXY protocol (v1 text and v2 binary) that a load balancer puts in front of a
 * connection to pass the client's address, and the stage in which a server reads it.
 *
 * The parser and the source allow-list are pure functions (no I/O, no allocation), tested
 * on their own and fuzzed. The stage (proxy_wait.c) holds an accepted socket until its
 * header is in, within a deadline, and consumes exactly the header: the bytes after it
 * stay in the socket for the protocol (or for TLS, whose handshake follows the header). */
#ifndef PIER_NET_PROXY_H
#define PIER_NET_PROXY_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/socket.h>

#include <pier/net.h>
#include "loop/layer.h"

#define PIER__PROXY_V1_MAX 107          /* the spec's bound, CRLF included */
#define PIER__PROXY_V2_FIXED 16         /* signature, version/command, family, length */
/* Enough for any v1 header and for a v2 header with the largest address block (unix,
 * 216 bytes): the first look at a socket copies no more than this. */
#define PIER__PROXY_PEEK (PIER__PROXY_V2_FIXED + 216)
/* The largest v2 header pier takes (TLVs included): the loop's read buffer. */
#define PIER__PROXY_MAX PIER__READ_BUF

typedef union pier__sockaddr_u {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} pier__sockaddr_t;

typedef struct pier__proxy_hdr_s {
    int version;            /* 1 or 2 */
    /* 1: no address to use (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC or a family/protocol pier
     * does not carry, such as unix or UDP): the socket's own peer stays the address */
    int local;
    pier__sockaddr_t src, dst;
    const char *why;        /* after -1: what was wrong, for the log */
} pier__proxy_hdr_t;

/* Parses the PROXY header at the start of buf[0, len). Returns its whole length (v2:
 * TLVs included) once all of it is in buf and valid; -2 while it is incomplete, with
 * *need the length worth waiting for (the whole header when known, else len + 1); -1
 * when it is malformed (h->why says how). Never reads past len. */
int pier__proxy_parse(const char *buf, size_t len, pier__proxy_hdr_t *h, size_t *need);

/* CRC-32C (Castagnoli) of data, continuing from crc (0 to start). */
uint32_t pier__crc32c(const void *data, size_t len, uint32_t crc);

/* ---- source allow-list ---- */

typedef struct pier__cidr_s {
    sa_family_t family;
    unsigned char bits;
    unsigned char addr[16];     /* network order, host bits cleared */
} pier__cidr_t;

/* Parses "10.0.0.0/8,192.168.1.7,::1,fd00::/8" (spaces around items allowed) into
 * out[0, max). Returns the number of items, or -EINVAL with *bad_off the offset of the
 * item that is not a CIDR (or -E2BIG past max items). out may be NULL to count. */
int pier__cidr_parse(const char *list, pier__cidr_t *out, size_t max, size_t *bad_off);
/* 1 if sa (AF_INET, AF_INET6; an IPv4-mapped IPv6 address counts as IPv4) is in one of
 * cidrs[0, n). */
int pier__cidr_match(const pier__cidr_t *cidrs, size_t n, const struct sockaddr *sa);

/* ---- the stage ---- */

enum { PIER__PROXY_OK, PIER__PROXY_LOCAL, PIER__PROXY_BAD, PIER__PROXY_TIMEOUT, PIER__PROXY_REFUSED,
       PIER__PROXY_ABORTED, PIER__PROXY_NSTATS };

/* One server's settings, shared by its loops' stages (read-only once made, but for the
 * log keys, which are atomics). */
typedef struct pier__proxy_cfg_s {
    uint64_t timeout_ms;
    pier__cidr_t *from;         /* NULL: any source */
    size_t nfrom;
    atomic_uint_fast64_t log_key[PIER__PROXY_NSTATS];
} pier__proxy_cfg_t;

/* One loop's stage of one server. The owner embeds it and learns the outcome of each
 * socket it hands in through done() (header read) or dropped() (socket closed). */
typedef struct pier__proxy_wait_s pier__proxy_wait_t;
struct pier__proxy_wait_s {
    pier_loop_t *loop;
    pier__proxy_cfg_t *cfg;     /* the server's (its log keys are written) */
    pier__queue_t waiting;      /* oldest first, so deadlines are in order */
    pier_timer_t timer;         /* the oldest one's deadline */
    /* The header is consumed; client is the address it carried (the caller's to keep,
     * malloc'd), or NULL to keep the socket's peer. fd is the owner's from here. */
    void (*done)(pier__proxy_wait_t *w, int fd, pier__sockaddr_t *client);
    void (*dropped)(pier__proxy_wait_t *w);
    atomic_uint_fast64_t stats[PIER__PROXY_NSTATS]; /* this loop's, summed when read */
};

/* Makes cfg from the public options: 0, -EINVAL for a bad allow-list, -ENOMEM. */
int pier__proxy_cfg_init(pier__proxy_cfg_t *cfg, const pier_proxy_opts_t *o);
void pier__proxy_cfg_free(pier__proxy_cfg_t *cfg);

void pier__proxy_wait_init(pier__proxy_wait_t *w, pier_loop_t *loop, pier__proxy_cfg_t *cfg);
/* Loop thread. Takes an accepted non-blocking socket: done() or dropped() follows,
 * possibly before this returns. */
void pier__proxy_wait_add(pier__proxy_wait_t *w, int fd);
/* Loop thread. Closes every socket still waiting (dropped() for each), uncounted: the
 * server is closing all its connections. */
void pier__proxy_wait_drop_all(pier__proxy_wait_t *w);
/* Any thread: adds this stage's counters to out. */
void pier__proxy_wait_stats(pier__proxy_wait_t *w, pier_proxy_stats_t *out);

#endif
