/* libFuzzer target for the message frame codec: no crash or over-read; the same frames
 * and the same verdict whether the stream comes whole or split at any point; and every
 * decoded frame encodes back to exactly the bytes it came from. The first input byte
 * picks the codec (narrow or wide, a small or the default body limit, an id range). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <pier/msg.h>

#define MAX_FRAMES 4096

typedef struct {
    size_t n;
    ssize_t err;
    size_t consumed;
    uint32_t sum; /* over ids, lengths and bodies, in order */
} trace_t;

typedef struct {
    trace_t *t;
    const pier_msg_codec_t *codec;
} ctx_t;

static int on_frame(const pier_msg_frame_t *f, void *ud) {
    ctx_t *x = ud;
    uint8_t buf[PIER_MSG_HDR_WIDE + 65536];
    ssize_t n = pier_msg_encode(x->codec, f->id, f->body, f->len, buf, sizeof buf);
    size_t hdr = pier_msg_hdr_size(x->codec);
    if (f->len <= 65536 && (n < 0 || (size_t)n != hdr + f->len || memcmp(buf + hdr, f->body, f->len) != 0 ||
                            memcmp(buf, f->body - hdr, hdr) != 0))
        abort(); /* decoded a frame the encoder would not produce */
    x->t->sum = x->t->sum * 31u + f->id;
    x->t->sum = x->t->sum * 31u + f->len;
    for (uint32_t i = 0; i < f->len; i++)
        x->t->sum = x->t->sum * 31u + (uint8_t)f->body[i];
    return ++x->t->n >= MAX_FRAMES;
}

/* Feeds data in two pieces, as a connection's reads would: what the first decode_all
 * leaves unconsumed is handed again with the rest appended. */
static void feed(const pier_msg_codec_t *codec, const uint8_t *data, size_t len, size_t split, trace_t *t) {
    ctx_t x = {t, codec};
    memset(t, 0, sizeof *t);
    size_t used = 0;
    ssize_t r = pier_msg_decode_all(codec, data, split, &used, on_frame, &x);
    t->consumed = used;
    if (r < 0 || t->n >= MAX_FRAMES) {
        t->err = r < 0 ? r : 0;
        return;
    }
    size_t more = 0;
    r = pier_msg_decode_all(codec, data + used, len - used, &more, on_frame, &x);
    t->consumed += more;
    t->err = r < 0 ? r : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    pier_msg_codec_t want = {0}, codec;
    want.wide = data[0] & 1;
    want.max_body = (data[0] & 2) ? 64 : 0;
    want.id_min = (data[0] & 4) ? 1000 : 0;
    want.id_max = (data[0] & 8) ? 2000 : 0;
    if (pier_msg_codec_check(&want, &codec) < 0)
        return 0;
    const uint8_t *in = data + 2;
    size_t len = size - 2;
    /* the stream in its own allocation, so ASan sees any read past its end */
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, in, len);
    trace_t whole, split;
    feed(&codec, copy, len, len, &whole);
    feed(&codec, copy, len, len ? data[1] % (len + 1) : 0, &split);
    if (whole.n < MAX_FRAMES && split.n < MAX_FRAMES &&
        (whole.n != split.n || whole.err != split.err || whole.sum != split.sum || whole.consumed != split.consumed))
        abort(); /* the verdict depends on how the stream was split */
    free(copy);
    return 0;
}
