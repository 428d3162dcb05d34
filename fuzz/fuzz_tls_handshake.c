/* libFuzzer target for the server side of a TLS handshake under pier's policy: arbitrary
 * bytes from a client, fed through memory BIOs to an SSL made from a pier server context
 * (the same SSL_CTX the transport uses), in pieces whose size the first byte picks. No
 * crash, no leak, and no handshake completes with a protocol version below TLS 1.2.
 * The certificate is made at start-up (tests/tls/certs.h); no key is committed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls/tls_int.h"
#include "../tests/tls/certs.h"

static pier_tls_ctx_t *ctx;
static test_certs_t certs;

static void cleanup(void) {
    pier_tls_ctx_free(ctx);
    certs_cleanup(&certs);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    certs_init(&certs);
    pier_tls_opts_t o = {.cert_file = certs.cert, .key_file = certs.key, .alpn = "h2,http/1.1"};
    if (pier_tls_ctx_new_server(&ctx, &o) != 0)
        abort();
    atexit(cleanup);
    return 0;
}

/* Runs the handshake as far as the input takes it; then reads what data it can. */
static void step(SSL *ssl) {
    char buf[4096];
    if (!SSL_is_init_finished(ssl) && SSL_do_handshake(ssl) != 1)
        return;
    if (SSL_version(ssl) < TLS1_2_VERSION)
        abort();
    while (SSL_read(ssl, buf, sizeof buf) > 0)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    size_t piece = data[0] ? data[0] : size;
    data++;
    size--;
    SSL *ssl = SSL_new(ctx->ssl);
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    if (!ssl || !in || !out)
        abort();
    SSL_set_bio(ssl, in, out);
    SSL_set_accept_state(ssl);
    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        BIO_write(in, data + off, (int)n);
        step(ssl);
        (void)BIO_reset(out); /* what the server would send: dropped */
    }
    BIO_set_mem_eof_return(in, 0); /* then the client's stream ends */
    step(ssl);
    SSL_free(ssl);
    ERR_clear_error();
    return 0;
}
