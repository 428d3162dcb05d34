/* Test certificates made at run time with the OpenSSL API, into a fresh temporary folder
 * (no private key is ever committed): a CA, a leaf for "localhost" and 127.0.0.1 signed
 * by it, and an expired leaf. Header-only: included by one test file each. */
#ifndef PIER_TEST_CERTS_H
#define PIER_TEST_CERTS_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct test_certs_s {
    char dir[64];
    char ca[128], cert[128], key[128], expired[128], expired_key[128];
} test_certs_t;

static EVP_PKEY *certs_key(void) { return EVP_EC_gen("P-256"); }

static void certs_ext(X509 *x, X509 *issuer, int nid, const char *value) {
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!e || X509_add_ext(x, e, -1) != 1)
        abort();
    X509_EXTENSION_free(e);
}

/* A certificate for cn, valid from `from` to `to` seconds from now, signed by issuer
 * (self-signed when issuer is NULL). */
static X509 *certs_make(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, long from, long to,
                        long serial) {
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), from);
    X509_gmtime_adj(X509_getm_notAfter(x), to);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    if (issuer) {
        certs_ext(x, issuer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
        certs_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE");
    } else {
        certs_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
        certs_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    }
    if (X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) <= 0)
        abort();
    return x;
}

static void certs_write(const char *path, X509 *x, EVP_PKEY *key) {
    FILE *f = fopen(path, "w");
    if (!f || (x && PEM_write_X509(f, x) != 1) ||
        (key && PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) != 1))
        abort();
    fclose(f);
}

static void certs_init(test_certs_t *t) {
    snprintf(t->dir, sizeof t->dir, "/tmp/pier-tls-XXXXXX");
    if (!mkdtemp(t->dir))
        abort();
    snprintf(t->ca, sizeof t->ca, "%s/ca.pem", t->dir);
    snprintf(t->cert, sizeof t->cert, "%s/cert.pem", t->dir);
    snprintf(t->key, sizeof t->key, "%s/key.pem", t->dir);
    snprintf(t->expired, sizeof t->expired, "%s/expired.pem", t->dir);
    snprintf(t->expired_key, sizeof t->expired_key, "%s/expired-key.pem", t->dir);
    EVP_PKEY *cak = certs_key(), *k = certs_key();
    X509 *ca = certs_make("pier test CA", cak, NULL, NULL, -3600, 86400, 1);
    X509 *leaf = certs_make("localhost", k, ca, cak, -3600, 86400, 2);
    X509 *old = certs_make("localhost", k, ca, cak, -7 * 86400, -86400, 3);
    certs_write(t->ca, ca, NULL);
    certs_write(t->cert, leaf, NULL);
    certs_write(t->key, NULL, k);
    certs_write(t->expired, old, NULL);
    certs_write(t->expired_key, NULL, k);
    X509_free(ca);
    X509_free(leaf);
    X509_free(old);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(k);
}

static void certs_cleanup(test_certs_t *t) {
    unlink(t->ca);
    unlink(t->cert);
    unlink(t->key);
    unlink(t->expired);
    unlink(t->expired_key);
    rmdir(t->dir);
}

#endif
