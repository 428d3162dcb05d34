/* TLS internals shared by the context (ctx.c) and the transport (transport.c), and by
 * the fuzz target, which drives a server context's handshake through memory BIOs. */
#ifndef PIER_TLS_INT_H
#define PIER_TLS_INT_H

#include <pier/tls.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>

#include "base/buf.h"
#include "net/conn.h"

typedef struct pier__ticket_key_s {
    unsigned char name[16], aes[32], hmac[32];
    int set;
} pier__ticket_key_t;

struct pier_tls_ctx_s {
    const pier__tp_ops_t *ops;  /* first: how net reaches it (net/conn.h) */
    pthread_mutex_t lock;       /* guards ssl, which a reload replaces, and the ticket keys */
    SSL_CTX *ssl;
    int server;
    pier_tls_opts_t opts;       /* as given, for reloading; strings point into strings[] */
    char *strings[3];
    pier_tls_pair_t *sni;       /* opts.sni, copied; its strings are the context's too */
    atomic_uint refs;           /* the creator's, plus one per server, client, connection */
    uint64_t handshake_ms;
    char *plain_reply;
    size_t plain_len;
    unsigned char *alpn;        /* ALPN preference list in wire format (length-prefixed) */
    size_t alpn_len;
    atomic_uint_fast64_t handshakes, failed;
    atomic_uint_fast64_t log_fail; /* rate limit of the failure log */
    pier__ticket_key_t tickets[2]; /* the current key, then the one before (if any) */
    uint64_t ticket_rotate_ms, ticket_born_ms;
};

extern const pier__tp_ops_t pier__tls_ops;

void pier__tls_ctx_ref(pier_tls_ctx_t *ctx);
/* The current SSL_CTX, with a reference the caller drops with SSL_CTX_free (a reload may
 * replace it at any time on another thread). */
SSL_CTX *pier__tls_ctx_ssl(pier_tls_ctx_t *ctx);
void pier__tls_ctx_unref(pier_tls_ctx_t *ctx);
/* transport.c: wraps a connection (pier__tp_ops_t.attach); and a client SSL_CTX's
 * new-session callback, which keeps the session in the connection's slot. */
int pier__tls_attach(pier_tls_ctx_t *ctx, pier_conn_t *c, const char *servername, void **session);
int pier__tls_new_session(SSL *ssl, SSL_SESSION *sess);
/* tickets.c: the first ticket key and the rotation period (0: 1 hour); and the ticket
 * callback for one of the context's server SSL_CTXs. */
int pier__tls_tickets_init(pier_tls_ctx_t *ctx, uint64_t rotate_ms);
void pier__tls_tickets_use(pier_tls_ctx_t *ctx, SSL_CTX *s);
/* The first OpenSSL error queued on this thread, as text (and clears the queue). */
const char *pier__tls_reason(char *buf, size_t size);

#endif
