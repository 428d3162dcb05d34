/* A self-signed certificate for demos and first runs: an ECDSA P-256 key and a
 * certificate for a name, localhost and the loopback addresses, written as PEM. */
#include "tls_int.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define DAYS 365

static int add_ext(X509 *x, int nid, const char *value) {
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    int ok = e && X509_add_ext(x, e, -1) == 1;
    X509_EXTENSION_free(e);
    return ok ? 0 : -EINVAL;
}

static X509 *make_cert(EVP_PKEY *key, const char *name) {
    X509 *x = X509_new();
    char san[512];
    snprintf(san, sizeof san, "DNS:%s,DNS:localhost,IP:127.0.0.1,IP:::1", name);
    int ok = x && X509_set_version(x, 2) == 1 && ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL)) == 1 &&
             X509_gmtime_adj(X509_getm_notBefore(x), -3600) && X509_gmtime_adj(X509_getm_notAfter(x), 86400L * DAYS) &&
             X509_set_pubkey(x, key) == 1 &&
             X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8, (const unsigned char *)name,
                                        -1, -1, 0) == 1 &&
             X509_set_issuer_name(x, X509_get_subject_name(x)) == 1 && add_ext(x, NID_subject_alt_name, san) == 0 &&
             add_ext(x, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
             X509_sign(x, key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* Writes with fopen's errors as errno values; the key file is created 0600, never
 * readable by others even for a moment. */
static int write_pem(const char *path, int private, X509 *x, EVP_PKEY *key) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, private ? 0600 : 0644);
    if (fd < 0)
        return -errno;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        int err = -errno;
        close(fd);
        return err;
    }
    int ok = private ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1 : PEM_write_X509(f, x) == 1;
    if (fclose(f) != 0 || !ok)
        return -EIO;
    return 0;
}

int pier_tls_make_selfsigned(const char *cert_file, const char *key_file, const char *name) {
    if (!cert_file || !key_file || !name || !*name)
        return -EINVAL;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = key ? make_cert(key, name) : NULL;
    int err = x ? write_pem(key_file, 1, x, key) : -ENOMEM;
    if (err == 0)
        err = write_pem(cert_file, 0, x, key);
    X509_free(x);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return err;
}
