/* libFuzzer target for the chunked body decoder: no crash, the same body and the same
 * verdict whether the input comes whole or in pieces, and the in-place decoder agrees. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/parser.h"

struct result {
    ssize_t consumed;
    int status, done;
    size_t body_len;
    uint8_t body[1 << 16];
};

static struct result a, b;

static void run(const uint8_t *in, size_t len, size_t step, uint64_t max_body, struct result *r) {
    pier__chunked_t d;
    pier__chunked_init(&d, max_body);
    size_t off = 0;
    r->body_len = 0;
    r->status = 0;
    while (off < len && !d.done) {
        size_t piece = len - off < step ? len - off : step;
        const char *data;
        size_t dl;
        ssize_t n = pier__chunked_feed(&d, (const char *)in + off, piece, &data, &dl);
        if (n < 0) {
            r->status = d.status;
            r->consumed = -1;
            r->done = 0;
            return;
        }
        if ((size_t)n > piece || (dl && ((const uint8_t *)data < in + off || (const uint8_t *)data + dl > in + off + piece)))
            abort();
        if (r->body_len + dl <= sizeof r->body && dl)
            memcpy(r->body + r->body_len, data, dl);
        r->body_len += dl;
        if (n == 0 && !d.done)
            abort(); /* no progress on non-empty input */
        off += (size_t)n;
    }
    r->consumed = (ssize_t)off;
    r->done = d.done;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    size_t step = (size_t)(data[0] & 0x1f) + 1;
    uint64_t max_body = (data[0] & 0x80) ? 64 : 0;
    data++, size--;
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);

    run(buf, size, size ? size : 1, max_body, &a);
    run(buf, size, step, max_body, &b);
    if (a.consumed != b.consumed || a.status != b.status || a.done != b.done || a.body_len != b.body_len)
        abort();
    size_t cmp = a.body_len < sizeof a.body ? a.body_len : sizeof a.body;
    if (memcmp(a.body, b.body, cmp) != 0)
        abort();
    if (max_body && a.body_len > max_body)
        abort();

    pier__chunked_t d;
    pier__chunked_init(&d, max_body);
    size_t out;
    ssize_t used = pier__chunked_decode_inplace(&d, (char *)buf, size, &out);
    if (used != a.consumed || (used >= 0 && (out != a.body_len || memcmp(buf, a.body, cmp) != 0)))
        abort();
    free(buf);
    return 0;
}
