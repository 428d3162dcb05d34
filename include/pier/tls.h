/* pier TLS (OpenSSL 3): a transport beneath pier_conn_t.
 *
 * A server or client gets TLS by setting one option, pier_server_opts_t.tls or
 * pier_client_opts_t.tls, to a context made here. Every protocol on pier_conn_* then
 * speaks TLS with no change to its read and write code:
 *  - on_accept / on_connect run after the handshake; on_read sees plaintext;
 *  - writes queue plaintext, which counts against the water marks as before, and is
 *    encrypted in queue order when the connection flushes (at most 64 KiB of ciphertext
 *    waits at a time, and it counts too, in pier_conn_queued(), until the socket takes
 *    it); a unit queued with
 *    pier_conn_writev stays whole; an encryption failure aborts the connection;
 *  - files queued with pier_conn_sendfile are read and encrypted in chunks of 16 KiB,
 *    never held whole in memory;
 *  - a graceful close sends close_notify once and never waits for the peer's;
 *  - on_close reports PIER_ETLS_TRUNCATED when the peer ended the TCP stream without a
 *    close_notify (what arrived may be cut short), -EPROTO for a TLS protocol error,
 *    and 0 / -ECONNRESET / ... as for plain TCP.
 * A handshake that fails or stalls (handshake_ms) costs the server one counted, rate-
 * limited log line; the application never sees the connection (for a client, it is an
 * on_connect_error: PIER_ETLS_REJECTED when the server's certificate was refused).
 *
 * Threads: a context may be shared by every loop of a group and by several servers and
 * clients; the calls below are thread-safe, pier_tls_ctx_reload included. Each
 * connection's TLS state is touched only by its loop's thread.
 *
 * Built only when the library was configured with PIER_TLS (OpenSSL 3 found); without
 * it the constructors answer -ENOTSUP.
 */
#ifndef PIER_TLS_H
#define PIER_TLS_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include "net.h"

#ifdef __cplusplus
extern "C" {
#endif

/* on_close error of a TLS connection whose peer closed TCP without close_notify. */
#define PIER_ETLS_TRUNCATED (-ECONNABORTED)
/* A handshake failed because the peer's certificate was not accepted (untrusted, expired,
 * or, for a client checking its server, not for the expected host name). */
#define PIER_ETLS_REJECTED (-EKEYREJECTED)

enum { PIER_TLS_1_2 = 0x0303, PIER_TLS_1_3 = 0x0304 };

/* A certificate chain (PEM, leaf first) and its private key (PEM). */
typedef struct pier_tls_pair_s {
    const char *cert_file;
    const char *key_file;
} pier_tls_pair_t;

typedef struct pier_tls_opts_s {
    /* The certificate chain (PEM, leaf first) and its private key (PEM): required for a
     * server; for a client, optional, the certificate it shows a server that asks (mTLS). */
    const char *cert_file;
    const char *key_file;
    /* Client: trust the certificates of this PEM file instead of the system store.
     * Server: require every client to show a certificate that chains to one of them
     * (mTLS); a client without one fails its handshake. NULL: no client certificates. */
    const char *ca_file;
    /* Client: accept any certificate and any host name. For tests only. */
    int insecure;
    /* Lowest protocol version accepted: PIER_TLS_1_2 (default, also for 0) or
     * PIER_TLS_1_3. TLS 1.0 and 1.1 are never accepted. */
    int min_version;
    /* ALPN protocols in order of preference, comma-separated ("h2,http/1.1"); NULL:
     * none. A server picks the first of its own that the client offers, and goes on
     * without ALPN if there is none in common. */
    const char *alpn;
    /* A handshake not finished this long after the TCP connection is dropped (10 s). */
    uint64_t handshake_ms;
    /* Server: bytes sent as they are, without TLS, to a peer whose first bytes are not a
     * TLS record but look like text (an HTTP request sent to an HTTPS port); then the
     * connection is closed. NULL: such a peer is just dropped. */
    const char *plain_reply;
    /* Server: more certificate/key pairs (at most PIER_TLS_SNI_MAX), chosen by the name
     * a client asks for (SNI): the first whose certificate names it (DNS names, wildcards
     * included), trying cert_file's first, then these in order; cert_file's pair when
     * none does or the client sends no name. All are read again by pier_tls_ctx_reload. */
    const pier_tls_pair_t *sni;
    size_t sni_count;
    /* Server: session tickets are sealed with a key made at random and replaced this
     * often (1 hour); a ticket sealed with the key before the current one still resumes
     * (and is replaced by a new one), older ones get a full handshake. The keys are the
     * context's, so every loop and server using it shares them, across reloads too. */
    uint64_t ticket_rotate_ms;
} pier_tls_opts_t;

#define PIER_TLS_SNI_MAX 64

/* A server context: loads cert_file and key_file now and checks that they match. *out is
 * the caller's to free with pier_tls_ctx_free(). -EINVAL for missing files in opts, a
 * bad option or unusable PEM (the reason is logged), -ENOENT/-EACCES for files that
 * cannot be opened, -ENOMEM, -ENOTSUP without TLS support. */
PIER_EXTERN int pier_tls_ctx_new_server(pier_tls_ctx_t **out, const pier_tls_opts_t *opts);
/* A client context: verifies servers against ca_file or, by default, the system's CA
 * store, and checks the host name (pier_client_opts_t.tls_servername, else the host).
 * Errors as above. */
PIER_EXTERN int pier_tls_ctx_new_client(pier_tls_ctx_t **out, const pier_tls_opts_t *opts);
/* Drops the caller's reference. Connections and servers still using the context keep it
 * alive until they are done with it, so it may be freed as soon as the servers and
 * clients that use it have been created. NULL is a no-op. */
PIER_EXTERN void pier_tls_ctx_free(pier_tls_ctx_t *ctx);

/* Reads the context's certificate, key and CA files again (any thread): connections
 * made from then on use the new ones; established connections carry on untouched, and
 * sessions issued before still resume. On error (logged) the old files stay in use:
 * -ENOENT/-EACCES, -EINVAL for unusable PEM or a key that does not match, -ENOMEM. */
PIER_EXTERN int pier_tls_ctx_reload(pier_tls_ctx_t *ctx);

/* Replaces a server context's ticket key now (any thread), as the timer of
 * ticket_rotate_ms would: tickets of the key before stop resuming. -EINVAL for a client
 * context, -ENOMEM when no random key could be made (the keys stay as they were). */
PIER_EXTERN int pier_tls_ctx_rotate_tickets(pier_tls_ctx_t *ctx);

/* Writes a new ECDSA P-256 key (mode 0600) and a self-signed certificate for name,
 * localhost, 127.0.0.1 and ::1, valid for a year, as PEM files: for demos and tests,
 * which clients must then trust explicitly (or skip verifying). 0, -EINVAL, -ENOMEM, or
 * the errno of a file that cannot be written. */
PIER_EXTERN int pier_tls_make_selfsigned(const char *cert_file, const char *key_file, const char *name);

/* Whether this kernel offers TLS offload (kTLS): 0 if it does, else the negative errno
 * of the probe (-ENOENT: no "tls" module in this kernel or container), -ENOTSUP without
 * TLS support. Any thread; probed once per process. pier does not turn kTLS on yet:
 * files queued over TLS are read and encrypted in 16 KiB chunks whatever this says. */
PIER_EXTERN int pier_tls_ktls_check(void);

typedef struct pier_tls_stats_s {
    uint64_t handshakes;        /* completed */
    uint64_t failed;            /* failed, timed out, or not TLS at all */
} pier_tls_stats_t;
/* Counters of every connection made with ctx so far (any thread). */
PIER_EXTERN void pier_tls_ctx_stats(const pier_tls_ctx_t *ctx, pier_tls_stats_t *out);

typedef struct pier_tls_info_s {
    const char *version;        /* "TLSv1.3" */
    const char *cipher;         /* "TLS_AES_256_GCM_SHA384" */
    char alpn[64];              /* the protocol agreed on, "" for none */
    char sni[256];              /* the server name the client asked for, "" for none */
    char peer_subject[256];     /* the peer certificate's subject, "" for none (a server
                                 * sees one only with mTLS) */
    int resumed;                /* 1 if the session was resumed (no full handshake): a
                                 * pier client offers the last session its previous
                                 * connection was given when it reconnects */
} pier_tls_info_t;

/* Loop thread only. Fills *out for a TLS connection whose handshake is done; the strings
 * stay valid while the connection lives. -EINVAL for a connection without TLS,
 * -ENOTCONN once it has closed. */
PIER_EXTERN int pier_conn_tls_info(const pier_conn_t *c, pier_tls_info_t *out);

#ifdef __cplusplus
}
#endif
#endif
