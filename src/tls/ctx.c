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

static int ctx_attach(pier_tls_ctx_t *ctx, pier_conn_t *c, const char *servername, void **session) {
    return pier__tls_attach(ctx, c, servername, session);
}

static void session_free(void *session) { SSL_SESSION_free(session); }

const pier__tp_ops_t pier__tls_ops = {
    .attach = ctx_attach, .ref = pier__tls_ctx_ref, .unref = pier__tls_ctx_unref, .session_free = session_free,
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
    for (size_t i = 0; ctx->sni && i < ctx->opts.sni_count; i++) {
        free((char *)ctx->sni[i].cert_file);
        free((char *)ctx->sni[i].key_file);
    }
    free(ctx->sni);
    OPENSSL_cleanse(ctx->tickets, sizeof ctx->tickets);
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

static int load_cert(SSL_CTX *s, const char *cert, const char *key) {
    if (!cert || !key)
        return -EINVAL;
    int err = readable(cert);
    if (err == 0)
        err = readable(key);
    if (err < 0) {
        pier_log(PIER_LOG_ERROR, "tls: cannot read %s: %s", readable(cert) ? cert : key, pier_strerror(err));
        return err;
    }
    char why[256];
    if (SSL_CTX_use_certificate_chain_file(s, cert) != 1) {
        pier_log(PIER_LOG_ERROR, "tls: %s: %s", cert, pier__tls_reason(why, sizeof why));
        return -EINVAL;
    }
    if (SSL_CTX_use_PrivateKey_file(s, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(s) != 1) {
        pier_log(PIER_LOG_ERROR, "tls: %s: %s", key, pier__tls_reason(why, sizeof why));
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

static int setup_server(pier_tls_ctx_t *ctx, SSL_CTX *s, const pier_tls_opts_t *o, const pier_tls_pair_t *pair) {
    int err = load_cert(s, pair->cert_file, pair->key_file);
    if (err < 0)
        return err;
    if (o->ca_file && (err = require_client_certs(s, o->ca_file)) < 0)
        return err;
    static const unsigned char sid[] = "pier";
    SSL_CTX_set_session_id_context(s, sid, sizeof sid - 1);
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
    /* One TLS 1.3 ticket per handshake, not OpenSSL's two: a client resumes with its
     * last one, and each resumption brings it the next (tickets.c). */
    SSL_CTX_set_num_tickets(s, 1);
    pier__tls_tickets_use(ctx, s);
    if (ctx->alpn)
        SSL_CTX_set_alpn_select_cb(s, alpn_select, ctx);
    return 0;
}

static int setup_client(pier_tls_ctx_t *ctx, SSL_CTX *s, const pier_tls_opts_t *o) {
    char why[256];
    if (ctx->alpn && SSL_CTX_set_alpn_protos(s, ctx->alpn, (unsigned)ctx->alpn_len) != 0)
        return -ENOMEM;
    int err = o->cert_file || o->key_file ? load_cert(s, o->cert_file, o->key_file) : 0;
    if (err < 0)
        return err;
    /* sessions go to the connection's client (its slot), not to a cache of OpenSSL's */
    SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(s, pier__tls_new_session);
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

/* One configured SSL_CTX, its files read now; pair: a server's certificate and key. */
static int build_one(pier_tls_ctx_t *ctx, const pier_tls_pair_t *pair, SSL_CTX **out) {
    const pier_tls_opts_t *o = &ctx->opts;
    SSL_CTX *s = SSL_CTX_new(ctx->server ? TLS_server_method() : TLS_client_method());
    if (!s)
        return -ENOMEM;
    int err = policy(s, o->min_version);
    if (err == 0)
        err = ctx->server ? setup_server(ctx, s, o, pair) : setup_client(ctx, s, o);
    ERR_clear_error();
    if (err < 0) {
        SSL_CTX_free(s);
        return err;
    }
    *out = s;
    return 0;
}

/* ---- SNI: the other pairs hang off the default SSL_CTX, so that they live exactly as
 * long as the connections that may switch to them (each SSL holds its first SSL_CTX) and
 * a reload swaps them all at once. ---- */

typedef struct {
    size_t n;
    SSL_CTX *alt[];
} sni_set_t;

static int sni_index = -1;
static pthread_once_t sni_once = PTHREAD_ONCE_INIT;

static void sni_set_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
    sni_set_t *set = ptr;
    for (size_t i = 0; set && i < set->n; i++)
        SSL_CTX_free(set->alt[i]);
    free(set);
}

static void sni_index_init(void) { sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_set_free); }

static int names(SSL_CTX *s, const char *name) {
    X509 *x = SSL_CTX_get0_certificate(s);
    return x && X509_check_host(x, name, strlen(name), 0, NULL) == 1;
}

/* Runs on the connection's loop during the handshake, before the certificate is chosen;
 * the default pair stays unless another names the host. The session (ticket) context is
 * still the default SSL_CTX's, so tickets do not depend on the pair. */
static int sni_select(SSL *ssl, int *alert, void *arg) {
    const sni_set_t *set = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || names(SSL_get_SSL_CTX(ssl), name))
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < set->n; i++)
        if (names(set->alt[i], name)) {
            SSL_set_SSL_CTX(ssl, set->alt[i]);
            break;
        }
    return SSL_TLSEXT_ERR_OK;
}

static int build_sni(pier_tls_ctx_t *ctx, SSL_CTX *def) {
    size_t n = ctx->opts.sni_count;
    if (pthread_once(&sni_once, sni_index_init) != 0 || sni_index < 0)
        return -ENOMEM;
    sni_set_t *set = calloc(1, sizeof *set + n * sizeof set->alt[0]);
    if (!set)
        return -ENOMEM;
    int err = 0;
    for (; set->n < n && err == 0; set->n++)
        err = build_one(ctx, &ctx->sni[set->n], &set->alt[set->n]);
    if (err < 0)
        set->n--; /* the failed one made nothing */
    if (SSL_CTX_set_ex_data(def, sni_index, set) != 1) {
        sni_set_free(NULL, set, NULL, 0, 0, NULL);
        return -ENOMEM;
    }
    if (err < 0)
        return err;
    SSL_CTX_set_tlsext_servername_callback(def, sni_select);
    SSL_CTX_set_tlsext_servername_arg(def, set);
    return 0;
}

/* The context's SSL_CTX from its options, every file read now; the SNI pairs with it. */
static int build(pier_tls_ctx_t *ctx, SSL_CTX **out) {
    pier_tls_pair_t pair = {ctx->opts.cert_file, ctx->opts.key_file};
    SSL_CTX *s = NULL;
    int err = build_one(ctx, &pair, &s);
    if (err == 0 && ctx->server && ctx->opts.sni_count > 0 && (err = build_sni(ctx, s)) < 0)
        SSL_CTX_free(s);
    if (err == 0)
        *out = s;
    return err;
}

static int keep_sni(pier_tls_ctx_t *ctx, const pier_tls_opts_t *o) {
    if (o->sni_count == 0)
        return 0;
    if (!o->sni || o->sni_count > PIER_TLS_SNI_MAX)
        return -EINVAL;
    ctx->sni = calloc(o->sni_count, sizeof *ctx->sni);
    if (!ctx->sni)
        return -ENOMEM;
    for (size_t i = 0; i < o->sni_count; i++) {
        const pier_tls_pair_t *p = &o->sni[i];
        if (!p->cert_file || !p->key_file)
            return -EINVAL;
        if (!(ctx->sni[i].cert_file = strdup(p->cert_file)) || !(ctx->sni[i].key_file = strdup(p->key_file)))
            return -ENOMEM;
    }
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
    ctx->opts.sni = NULL;
    int err = keep_sni(ctx, o);
    if (err < 0)
        return err;
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
        err = pier__tls_tickets_init(ctx, o->ticket_rotate_ms);
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

/* Sessions issued before a reload still resume after it: the ticket keys are the
 * context's, not the SSL_CTX's. */
int pier_tls_ctx_reload(pier_tls_ctx_t *ctx) {
    SSL_CTX *s = NULL;
    int err = build(ctx, &s);
    if (err < 0)
        return err;
    pthread_mutex_lock(&ctx->lock);
    SSL_CTX *old = ctx->ssl;
    ctx->ssl = s;
    pthread_mutex_unlock(&ctx->lock);
    SSL_CTX_free(old); /* connections made with it hold their own references */
    return 0;
}
