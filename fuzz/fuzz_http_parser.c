/* libFuzzer target for the HTTP request parser.
 *
 * Besides crashing (ASan, UBSan), it checks that the parser gives the same answer
 * whichever way the input arrives: whole, in pieces split where the input says, with the
 * scalar and the SSE4.2 scanners, and that every slice it returns lies inside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/parser.h"

static pier__http_request_t req, req2;

static void check_slice(const char *s, size_t n, const uint8_t *buf, size_t len) {
    if (!s)
        return;
    if (n == 1 && s[0] == '/' && (const uint8_t *)s != buf)
        return; /* the path of "http://host" is a constant "/" */
    if ((const uint8_t *)s < buf || (const uint8_t *)s + n > buf + len)
        abort();
}

static int parse_in_pieces(const uint8_t *buf, size_t len, size_t step, pier__http_request_t *r) {
    pier__http_parser_t p;
    pier__http_parser_init(&p);
    int rc = -2;
    for (size_t k = step < len ? step : len; rc == -2; k += step) {
        if (k > len)
            k = len;
        rc = pier__http_parse_request(&p, NULL, (const char *)buf, k, r);
        if (k == len)
            break;
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* the first byte chooses the split and the scanner; the rest is the request */
    if (size < 1)
        return 0;
    size_t step = (size_t)(data[0] & 0x3f) + 1;
    int simd = data[0] >> 7;
    data++, size--;
    /* a private copy, so ASan catches reads past its end */
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);

    pier__http_parser_use_simd(simd);
    pier__http_parser_t p;
    pier__http_parser_init(&p);
    int whole = pier__http_parse_request(&p, NULL, (const char *)buf, size, &req);
    if (whole > (int)size || whole < -2 || whole == 0)
        abort();
    if (whole == -1 && !(req.status == 400 || req.status == 414 || req.status == 417 || req.status == 431 ||
                         req.status == 501 || req.status == 505))
        abort();
    if (whole > 0) {
        check_slice(req.method_str, req.method_len, buf, size);
        check_slice(req.target, req.target_len, buf, size);
        check_slice(req.path, req.path_len, buf, size);
        check_slice(req.query, req.query_len, buf, size);
        check_slice(req.authority, req.authority_len, buf, size);
        for (unsigned i = 0; i < req.nfields; i++) {
            check_slice(req.fields[i].name, req.fields[i].name_len, buf, size);
            check_slice(req.fields[i].value, req.fields[i].value_len, buf, size);
        }
        if (req.chunked && req.content_length >= 0)
            abort(); /* never both framings */
    }

    pier__http_parser_use_simd(!simd);
    /* A head that arrives whole may be refused before its end is seen (the full pass
     * stops at the first error); in pieces only the end, a bare LF or a limit triggers
     * the full pass. Otherwise the verdicts must be identical. */
    int pieces = parse_in_pieces(buf, size, step, &req2);
    if (!(pieces == -2 && whole == -1) && (pieces != whole || (whole == -1 && req2.status != req.status)))
        abort();
    if (whole > 0 && (req2.content_length != req.content_length || req2.chunked != req.chunked ||
                      req2.keep_alive != req.keep_alive || req2.nfields != req.nfields))
        abort();
    free(buf);
    return 0;
}
