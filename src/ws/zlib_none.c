/* permessage-deflate without zlib: never negotiated (pier__ws_zlib is 0), so none of
 * these is reached with a compressed message. */
#include "ws/ws_int.h"

const int pier__ws_zlib = 0;
atomic_ulong pier__ws_deflate_count;

void pier__ws_zloop_free(pier__ws_zloop_t *zl) { (void)zl; }
void pier__ws_pmd_free(pier__ws_pmd_t *pmd) { (void)pmd; }
void pier__ws_zloop_trim_tx(pier__ws_zloop_t *zl) { (void)zl; }
void pier__ws_zloop_trim_rx(pier__ws_zloop_t *zl) { (void)zl; }
size_t pier__ws_zloop_inflate_cap(const pier__ws_zloop_t *zl) { (void)zl; return 0; }

int pier__ws_deflate(pier__ws_zloop_t **zl, pier__ws_pmd_t *pmd, const void *in, size_t n, const uint8_t **out,
                     size_t *outlen) {
    (void)zl, (void)pmd, (void)in, (void)n, (void)out, (void)outlen;
    return 1;
}

int pier__ws_inflate(pier__ws_zloop_t **zl, pier__ws_pmd_t *pmd, const uint8_t *in, size_t n, uint64_t max,
                     const uint8_t **out, size_t *outlen) {
    (void)zl, (void)pmd, (void)in, (void)n, (void)max, (void)out, (void)outlen;
    return PIER_WS_INTERNAL;
}
