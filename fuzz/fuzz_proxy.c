/* libFuzzer target for the PROXY header parser and the allow-list parser: no crash or
 * over-read (the input sits in its own allocation), and one verdict whatever the split:
 * a header's length does not depend on the bytes after it, every shorter prefix of a
 * valid header is incomplete, an error stays an error as bytes arrive, and an incomplete
 * prefix asks for more than it has. The first byte picks the split point; the same input
 * is also read as a --proxy-from list. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/conn.h"
#include "net/proxy.h"

static int parse(const uint8_t *data, size_t len, pier__proxy_hdr_t *h, size_t *need) {
    char *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    int r = pier__proxy_parse(copy, len, h, need);
    free(copy);
    return r;
}

static void check_header(const uint8_t *in, size_t len, size_t k) {
    pier__proxy_hdr_t h, hk;
    size_t need, needk;
    int r = parse(in, len, &h, &need);
    int rk = parse(in, k, &hk, &needk);
    if (r > 0 && ((size_t)r > len || (size_t)r > PIER__PROXY_MAX))
        abort();
    if (r == -2 && need <= len)
        abort(); /* incomplete, yet asks for no more than it has */
    if (rk == -1 && r != -1)
        abort(); /* more bytes turned an error into something else */
    if (rk > 0 && r != rk)
        abort(); /* the header's length depends on what follows it */
    if (r > 0 && k < (size_t)r && rk != -2)
        abort(); /* a prefix of a valid header is not incomplete */
    if (r > 0 && !h.local) {
        char buf[64];
        if (h.src.sa.sa_family != AF_INET && h.src.sa.sa_family != AF_INET6)
            abort();
        pier__addr_str(&h.src, buf, sizeof buf);
    }
}

static void check_cidrs(const uint8_t *in, size_t len) {
    char *s = malloc(len + 1);
    memcpy(s, in, len);
    s[len] = '\0';
    pier__cidr_t c[8];
    size_t off;
    int n = pier__cidr_parse(s, c, 8, &off);
    if (n < 0 && off > len)
        abort();
    if (n > 0) {
        pier__sockaddr_t a = {0};
        a.sa.sa_family = AF_INET6;
        pier__cidr_match(c, (size_t)n, &a.sa);
    }
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    check_header(in, len, len ? data[0] % (len + 1) : 0);
    check_cidrs(in, len);
    return 0;
}
