/* TLS internals shared by the context (ctx.c) and the transport (transport.c), and by
 * the fuzz target, which drives a server context's handshake through memory BIOs. */
#ifndef PIER_TLS_INT_H
#define PIER_TLS_INT_H

#include <pier/tls.h>
#include <openssl/ssl.h>
#include <stdatomic.h>

#include "base/buf.h"
#include "net/conn.h"

struct pier_tls_ctx_s {
    const pier__tp_ops_t *ops;  /* first: how net reaches it (net/conn.h) */
    SSL_CTX *ssl;
    int server;
    atomic_uint refs;           /* the creator's, plus one per server, client, connection */
    uint64_t handshake_ms;
    char *plain_reply;
    size_t plain_len;
    unsigned char *alpn;        /* ALPN preference list in wire format (length-prefixed) */
    size_t alpn_len;
    atomic_uint_fast64_t handshakes, failed;
    atomic_uint_fast64_t log_fail; /* rate limit of the failure log */
};

extern const pier__tp_ops_t pier__tls_ops;

void pier__tls_ctx_ref(pier_tls_ctx_t *ctx);
void pier__tls_ctx_unref(pier_tls_ctx_t *ctx);
/* transport.c: wraps a connection (pier__tp_ops_t.attach). */
int pier__tls_attach(pier_tls_ctx_t *ctx, pier_conn_t *c, const char *servername);
/* The first OpenSSL error queued on this thread, as text (and clears the queue). */
const char *pier__tls_reason(char *buf, size_t size);

#endif
