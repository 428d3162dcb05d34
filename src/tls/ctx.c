/* TLS contexts: one SSL_CTX each, configured once and then shared read-only by every
 * loop (OpenSSL makes SSL objects from one context safely on several threads).
 *
 * Policy, not options: TLS 1.2 at least; only AEAD suites with forward secrecy (ECDHE
 * for TLS 1.2; TLS 1.3's suites all are, and OpenSSL's TLS 1.3 resumption keeps (EC)DHE);
 * no compression; no renegotiation; OpenSSL's buffers released while a connection idles.
 * The server keeps no session cache: resumption goes by tickets, which cost the server
 * no memory per session. */
#include "tls_int.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <pthread.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CIPHERS_TLS12 "ECDHE+AESGCM:ECDHE+CHACHA20"
#define HANDSHAKE_MS 10000

static int ctx_attach(pier_tls_ctx_t *ctx, pier_conn_t *c, const char *servername) {
    return pier__tls_attach(ctx, c, servername);
}

const pier__tp_ops_t pier__tls_ops = {
    .attach = ctx_attach, .ref = pier__tls_ctx_ref, .unref = pier__tls_ctx_unref,
};

const char *pier__tls_reason(char *buf, size_t size) {
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(buf, size, "unknown reason");
    else
        ERR_error_string_n(e, buf, size);
    ERR_clear_error();
    return buf;
}

void pier__tls_ctx_ref(pier_tls_ctx_t *ctx) { atomic_fetch_add(&ctx->refs, 1); }

void pier__tls_ctx_unref(pier_tls_ctx_t *ctx) {
    if (atomic_fetch_sub(&ctx->refs, 1) != 1)
        return;
    SSL_CTX_free(ctx->ssl);
    free(ctx->plain_reply);
    free(ctx->alpn);
    for (size_t i = 0; i < sizeof ctx->strings / sizeof ctx->strings[0]; i++)
        free(ctx->strings[i]);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

void pier_tls_ctx_free(pier_tls_ctx_t *ctx) {
    if (ctx)
        pier__tls_ctx_unref(ctx);
}

void pier_tls_ctx_stats(const pier_tls_ctx_t *ctx, pier_tls_stats_t *out) {
    pier_tls_ctx_t *m = (pier_tls_ctx_t *)ctx; /* atomics are read, never changed */
    out->handshakes = atomic_load(&m->handshakes);
    out->failed = atomic_load(&m->failed);
}

/* "h2,http/1.1" in ALPN's wire format: each name prefixed by its length. */
static int alpn_wire(pier_tls_ctx_t *ctx, const char *list) {
    size_t n = strlen(list);
    unsigned char *w = malloc(n + 1);
    if (!w)
        return -ENOMEM;
    size_t len = 0;
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t k = end ? (size_t)(end - p) : strlen(p);
        if (k == 0 || k > 255) {
            free(w);
            return -EINVAL;
        }
        w[len++] = (unsigned char)k;
        memcpy(w + len, p, k);
        len += k;
        p += k + (end ? 1 : 0);
    }
    ctx->alpn = w;
    ctx->alpn_len = len;
    return len ? 0 : -EINVAL;
}

/* The server's ALPN choice: its own first preference that the client offers; no ALPN
 * (rather than a failed handshake) when there is none in common. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
    pier_tls_ctx_t *ctx = arg;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ctx->alpn, (unsigned)ctx->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int readable(const char *path) { return access(path, R_OK) == 0 ? 0 : -errno; }

static int load_cert(SSL_CTX *s, const pier_tls_opts_t *o) {
    if (!o->cert_file || !o->key_file)
        return -EINVAL;
    int err = readable(o->cert_file);
    if (err == 0)
        err = readable(o->key_file);
    if (err < 0) {
        pier_log(PIER_LOG_ERROR, "tls: cannot read %s: %s", readable(o->cert_file) ? o->cert_file : o->key_file,
                 pier_strerror(err));
        return err;
    }
    char why[256];
    if (SSL_CTX_use_certificate_chain_file(s, o->cert_file) != 1) {
        pier_log(PIER_LOG_ERROR, "tls: %s: %s", o->cert_file, pier__tls_reason(why, sizeof why));
        return -EINVAL;
    }
    if (SSL_CTX_use_PrivateKey_file(s, o->key_file, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(s) != 1) {
        pier_log(PIER_LOG_ERROR, "tls: %s: %s", o->key_file, pier__tls_reason(why, sizeof why));
        return -EINVAL;
    }
    return 0;
}

static int load_ca(SSL_CTX *s, const char *ca_file) {
    char why[256];
    int err = readable(ca_file);
    if (err < 0) {
        pier_log(PIER_LOG_ERROR, "tls: cannot read %s: %s", ca_file, pier_strerror(err));
        return err;
    }
    if (SSL_CTX_load_verify_locations(s, ca_file, NULL) != 1) {
        pier_log(PIER_LOG_ERROR, "tls: %s: %s", ca_file, pier__tls_reason(why, sizeof why));
        return -EINVAL;
    }
    return 0;
}

/* mTLS: clients must show a certificate from ca_file's CAs, which the server names in
 * its request so that a client with several can pick. */
static int require_client_certs(SSL_CTX *s, const char *ca_file) {
    int err = load_ca(s, ca_file);
    if (err < 0)
        return err;
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
    if (!names)
        return -EINVAL;
    SSL_CTX_set_client_CA_list(s, names);
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return 0;
}

static int setup_server(pier_tls_ctx_t *ctx, SSL_CTX *s, const pier_tls_opts_t *o) {
    int err = load_cert(s, o);
    if (err < 0)
        return err;
    if (o->ca_file && (err = require_client_certs(s, o->ca_file)) < 0)
        return err;
    static const unsigned char sid[] = "pier";
    SSL_CTX_set_session_id_context(s, sid, sizeof sid - 1);
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
    if (ctx->alpn)
        SSL_CTX_set_alpn_select_cb(s, alpn_select, ctx);
    return 0;
}

static int setup_client(pier_tls_ctx_t *ctx, SSL_CTX *s, const pier_tls_opts_t *o) {
    char why[256];
    if (ctx->alpn && SSL_CTX_set_alpn_protos(s, ctx->alpn, (unsigned)ctx->alpn_len) != 0)
        return -ENOMEM;
    int err = o->cert_file || o->key_file ? load_cert(s, o) : 0;
    if (err < 0)
        return err;
    if (o->insecure) {
        SSL_CTX_set_verify(s, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
    if (o->ca_file)
        return load_ca(s, o->ca_file);
    if (SSL_CTX_set_default_verify_paths(s) != 1) {
        pier_log(PIER_LOG_ERROR, "tls: cannot use the system's CA store: %s", pier__tls_reason(why, sizeof why));
        return -EINVAL;
    }
    return 0;
}

static int policy(SSL_CTX *s, int min_version) {
    if (SSL_CTX_set_min_proto_version(s, min_version == PIER_TLS_1_3 ? TLS1_3_VERSION : TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(s, CIPHERS_TLS12) != 1)
        return -EINVAL;
    SSL_CTX_set_options(s, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* RELEASE_BUFFERS: an idle connection holds no OpenSSL read or write buffer.
     * read_ahead: one read() takes as much as OpenSSL's buffer holds, instead of a
     * record header and then its body. */
    SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(s, 1);
    return 0;
}

/* A configured SSL_CTX from the context's options, its files read now. */
static int build(pier_tls_ctx_t *ctx, SSL_CTX **out) {
    const pier_tls_opts_t *o = &ctx->opts;
    SSL_CTX *s = SSL_CTX_new(ctx->server ? TLS_server_method() : TLS_client_method());
    if (!s)
        return -ENOMEM;
    int err = policy(s, o->min_version);
    if (err == 0)
        err = ctx->server ? setup_server(ctx, s, o) : setup_client(ctx, s, o);
    ERR_clear_error();
    if (err < 0) {
        SSL_CTX_free(s);
        return err;
    }
    *out = s;
    return 0;
}

/* The options, with copies of their strings, kept for reloading. */
static int keep_opts(pier_tls_ctx_t *ctx, const pier_tls_opts_t *o) {
    ctx->opts = *o;
    const char **s[] = {&ctx->opts.cert_file, &ctx->opts.key_file, &ctx->opts.ca_file};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        if (*s[i] && !(ctx->strings[i] = strdup(*s[i])))
            return -ENOMEM;
        *s[i] = ctx->strings[i];
    }
    ctx->opts.alpn = ctx->opts.plain_reply = NULL; /* kept in their own form */
    if (o->plain_reply) {
        ctx->plain_len = strlen(o->plain_reply);
        if (!(ctx->plain_reply = strdup(o->plain_reply)))
            return -ENOMEM;
    }
    return o->alpn ? alpn_wire(ctx, o->alpn) : 0;
}

static int ctx_new(pier_tls_ctx_t **out, const pier_tls_opts_t *o, int server) {
    if (!out || !o || (o->min_version && o->min_version != PIER_TLS_1_2 && o->min_version != PIER_TLS_1_3))
        return -EINVAL;
    pier_tls_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return -ENOMEM;
    ctx->ops = &pier__tls_ops;
    ctx->server = server;
    atomic_init(&ctx->refs, 1);
    pthread_mutex_init(&ctx->lock, NULL);
    ctx->handshake_ms = o->handshake_ms ? o->handshake_ms : HANDSHAKE_MS;
    int err = keep_opts(ctx, o);
    if (err == 0)
        err = build(ctx, &ctx->ssl);
    if (err < 0) {
        pier__tls_ctx_unref(ctx);
        return err;
    }
    *out = ctx;
    return 0;
}

int pier_tls_ctx_new_server(pier_tls_ctx_t **out, const pier_tls_opts_t *opts) { return ctx_new(out, opts, 1); }
int pier_tls_ctx_new_client(pier_tls_ctx_t **out, const pier_tls_opts_t *opts) { return ctx_new(out, opts, 0); }

SSL_CTX *pier__tls_ctx_ssl(pier_tls_ctx_t *ctx) {
    pthread_mutex_lock(&ctx->lock);
    SSL_CTX *s = ctx->ssl;
    SSL_CTX_up_ref(s);
    pthread_mutex_unlock(&ctx->lock);
    return s;
}

/* The new SSL_CTX takes the old one's ticket keys, so that sessions issued before a
 * reload still resume after it. */
int pier_tls_ctx_reload(pier_tls_ctx_t *ctx) {
    SSL_CTX *s;
    int err = build(ctx, &s);
    if (err < 0)
        return err;
    pthread_mutex_lock(&ctx->lock);
    SSL_CTX *old = ctx->ssl;
    unsigned char keys[80];
    if (ctx->server && SSL_CTX_get_tlsext_ticket_keys(old, keys, sizeof keys) == 1)
        SSL_CTX_set_tlsext_ticket_keys(s, keys, sizeof keys);
    ctx->ssl = s;
    pthread_mutex_unlock(&ctx->lock);
    OPENSSL_cleanse(keys, sizeof keys);
    SSL_CTX_free(old); /* connections made with it hold their own references */
    return 0;
}
