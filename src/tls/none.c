/* The TLS calls of a library built without OpenSSL (PIER_TLS=OFF): they exist, so that
 * programs link and can say what is missing, and answer -ENOTSUP. Built instead of the
 * rest of src/tls/. */
#include <pier/tls.h>

#include <errno.h>

int pier_tls_ctx_new_server(pier_tls_ctx_t **out, const pier_tls_opts_t *opts) { return -ENOTSUP; }
int pier_tls_ctx_new_client(pier_tls_ctx_t **out, const pier_tls_opts_t *opts) { return -ENOTSUP; }
void pier_tls_ctx_free(pier_tls_ctx_t *ctx) {}
void pier_tls_ctx_stats(const pier_tls_ctx_t *ctx, pier_tls_stats_t *out) { *out = (pier_tls_stats_t){0}; }
int pier_conn_tls_info(const pier_conn_t *c, pier_tls_info_t *out) { return -EINVAL; }
int pier_tls_ctx_reload(pier_tls_ctx_t *ctx) { return -ENOTSUP; }
int pier_tls_make_selfsigned(const char *cert_file, const char *key_file, const char *name) { return -ENOTSUP; }
int pier_tls_ctx_rotate_tickets(pier_tls_ctx_t *ctx) { return -ENOTSUP; }
int pier_tls_ktls_check(void) { return -ENOTSUP; }
