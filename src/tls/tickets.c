/* Session ticket keys: the context's own, not OpenSSL's per-SSL_CTX ones, so that every
 * loop and every SSL_CTX of a context (SNI pairs, reloads) seals and opens tickets with
 * the same keys, and so that they can be replaced on a schedule.
 *
 * Two keys are kept: the current one seals every new ticket; the one before still opens
 * tickets (and has OpenSSL issue a fresh one), so a rotation never costs clients that
 * resumed recently a full handshake. A ticket from two rotations ago names a key that is
 * gone and gets a full handshake. Rotation is checked when a ticket is sealed: no timer,
 * and an idle server does no work. */
#include "tls_int.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>
#include <time.h>

#define ROTATE_MS (3600 * 1000ull)

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Lock held. The old key before the previous one is wiped. */
static int rotate(pier_tls_ctx_t *ctx) {
    pier__ticket_key_t k = {.set = 1};
    if (RAND_bytes(k.name, sizeof k.name) != 1 || RAND_bytes(k.aes, sizeof k.aes) != 1 ||
        RAND_bytes(k.hmac, sizeof k.hmac) != 1) {
        OPENSSL_cleanse(&k, sizeof k);
        return -ENOMEM;
    }
    OPENSSL_cleanse(&ctx->tickets[1], sizeof ctx->tickets[1]);
    ctx->tickets[1] = ctx->tickets[0];
    ctx->tickets[0] = k;
    OPENSSL_cleanse(&k, sizeof k);
    ctx->ticket_born_ms = now_ms();
    return 0;
}

int pier__tls_tickets_init(pier_tls_ctx_t *ctx, uint64_t rotate_ms) {
    ctx->ticket_rotate_ms = rotate_ms ? rotate_ms : ROTATE_MS;
    return ctx->server ? rotate(ctx) : 0;
}

int pier_tls_ctx_rotate_tickets(pier_tls_ctx_t *ctx) {
    if (!ctx || !ctx->server)
        return -EINVAL;
    pthread_mutex_lock(&ctx->lock);
    int err = rotate(ctx);
    pthread_mutex_unlock(&ctx->lock);
    return err;
}

/* The key to seal with (rotated first when due), or the one whose name a ticket bears:
 * 1 for the current key, 2 for the one before, 0 for none. Copied under the lock. */
static int pick(pier_tls_ctx_t *ctx, const unsigned char *name, pier__ticket_key_t *out) {
    int r = 0;
    pthread_mutex_lock(&ctx->lock);
    if (!name && now_ms() - ctx->ticket_born_ms >= ctx->ticket_rotate_ms)
        (void)rotate(ctx); /* no fresh randomness: the current key serves on */
    for (int i = 0; i < 2 && !r; i++)
        if (ctx->tickets[i].set && (!name || memcmp(name, ctx->tickets[i].name, sizeof out->name) == 0)) {
            *out = ctx->tickets[i];
            r = i + 1;
        }
    pthread_mutex_unlock(&ctx->lock);
    return r;
}

static int mac_key(EVP_MAC_CTX *hctx, unsigned char *key, size_t len) {
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, len),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    return EVP_MAC_CTX_set_params(hctx, params) == 1 ? 0 : -1;
}

/* OpenSSL's ticket callback: enc 1 seals a new ticket, enc 0 opens one. Returns 1 (use
 * the key), 2 (opened with an old key: issue a new ticket), 0 (no such key: full
 * handshake) or -1 (failure). */
static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx,
                     int enc) {
    pier_tls_ctx_t *ctx = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    pier__ticket_key_t k;
    int r = pick(ctx, enc ? NULL : name, &k);
    if (r == 0)
        return enc ? -1 : 0;
    if (enc) {
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1)
            r = -1;
        else
            memcpy(name, k.name, sizeof k.name);
    }
    if (r > 0 && (EVP_CipherInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv, enc) != 1 ||
                  mac_key(hctx, k.hmac, sizeof k.hmac) < 0))
        r = -1;
    OPENSSL_cleanse(&k, sizeof k);
    /* A TLS 1.3 client uses a ticket once (RFC 8446 C.4); without a new one its next
     * connection would be a full handshake again. */
    if (r == 1 && !enc && SSL_version(ssl) == TLS1_3_VERSION)
        r = 2;
    return r;
}

void pier__tls_tickets_use(pier_tls_ctx_t *ctx, SSL_CTX *s) {
    SSL_CTX_set_app_data(s, ctx);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(s, ticket_cb);
}
