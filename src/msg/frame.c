/* The frame codec: [id u16 BE][len u16 or u32 BE][body]. Stateless and allocation-free:
 * the caller's bytes are parsed in place, so a connection's on_read can hand over its
 * slice and return what was consumed. A frame that arrives a byte at a time costs one
 * header check per call and never re-scans its body. */
#include <pier/msg.h>

#include <errno.h>
#include <string.h>

int pier_msg_codec_check(const pier_msg_codec_t *in, pier_msg_codec_t *out) {
    pier_msg_codec_t c = in ? *in : (pier_msg_codec_t){0};
    if (c.max_body == 0)
        c.max_body = PIER_MSG_MAX_BODY;
    if (c.id_min == 0)
        c.id_min = 1;
    if (c.id_max == 0)
        c.id_max = UINT16_MAX;
    c.wide = c.wide ? 1 : 0;
    if (!c.wide && c.max_body > UINT16_MAX)
        return -EINVAL;
    if (c.id_min > c.id_max)
        return -EINVAL;
    *out = c;
    return 0;
}

size_t pier_msg_hdr_size(const pier_msg_codec_t *codec) {
    return codec && codec->wide ? PIER_MSG_HDR_WIDE : PIER_MSG_HDR;
}

/* A zero field means "default", so the checks below read through these. */
static uint32_t max_body_of(const pier_msg_codec_t *c) {
    return c && c->max_body ? c->max_body : PIER_MSG_MAX_BODY;
}

static int id_ok(const pier_msg_codec_t *c, uint32_t id) {
    uint32_t lo = c && c->id_min ? c->id_min : 1;
    uint32_t hi = c && c->id_max ? c->id_max : UINT16_MAX;
    return id >= lo && id <= hi;
}

ssize_t pier_msg_decode(const pier_msg_codec_t *codec, const void *data, size_t len,
                        pier_msg_frame_t *f) {
    const unsigned char *p = data;
    size_t hdr = pier_msg_hdr_size(codec);
    if (len < hdr)
        return 0;
    uint32_t id = (uint32_t)p[0] << 8 | p[1];
    uint32_t blen = hdr == PIER_MSG_HDR_WIDE
                        ? (uint32_t)p[2] << 24 | (uint32_t)p[3] << 16 | (uint32_t)p[4] << 8 | p[5]
                        : (uint32_t)p[2] << 8 | p[3];
    /* refuse on the header alone: a peer announcing a huge body must not make us wait
     * for (and buffer) it */
    if (!id_ok(codec, id))
        return -EBADMSG;
    if (blen > max_body_of(codec))
        return -EMSGSIZE;
    if (len - hdr < blen)
        return 0;
    f->id = (uint16_t)id;
    f->len = blen;
    f->body = (const char *)p + hdr;
    return (ssize_t)(hdr + blen);
}

ssize_t pier_msg_decode_all(const pier_msg_codec_t *codec, const void *data, size_t len,
                            size_t *consumed, pier_msg_frame_cb cb, void *ud) {
    const char *p = data;
    size_t off = 0;
    ssize_t n = 0;
    for (;;) {
        pier_msg_frame_t f;
        ssize_t r = pier_msg_decode(codec, p + off, len - off, &f);
        if (r <= 0) {
            *consumed = off;
            return r < 0 ? r : n;
        }
        int stop = cb(&f, ud);
        if (stop < 0)
            break;
        off += (size_t)r;
        n++;
        if (stop > 0)
            break;
    }
    *consumed = off;
    return n;
}

ssize_t pier_msg_encode_hdr(const pier_msg_codec_t *codec, uint16_t id, size_t body_len, void *hdr) {
    unsigned char *p = hdr;
    if (!id_ok(codec, id))
        return -EBADMSG;
    if (body_len > max_body_of(codec))
        return -EMSGSIZE;
    p[0] = (unsigned char)(id >> 8);
    p[1] = (unsigned char)id;
    if (pier_msg_hdr_size(codec) == PIER_MSG_HDR_WIDE) {
        uint32_t l = (uint32_t)body_len;
        p[2] = (unsigned char)(l >> 24);
        p[3] = (unsigned char)(l >> 16);
        p[4] = (unsigned char)(l >> 8);
        p[5] = (unsigned char)l;
        return PIER_MSG_HDR_WIDE;
    }
    if (body_len > UINT16_MAX) /* a narrow codec with a bad max_body that skipped check */
        return -EMSGSIZE;
    p[2] = (unsigned char)(body_len >> 8);
    p[3] = (unsigned char)body_len;
    return PIER_MSG_HDR;
}

ssize_t pier_msg_encode(const pier_msg_codec_t *codec, uint16_t id, const void *body, size_t body_len,
                        void *out, size_t size) {
    unsigned char hdr[PIER_MSG_HDR_WIDE];
    ssize_t h = pier_msg_encode_hdr(codec, id, body_len, hdr);
    if (h < 0)
        return h;
    if (size < (size_t)h + body_len)
        return -ENOBUFS;
    memcpy(out, hdr, (size_t)h);
    if (body_len)
        memcpy((char *)out + h, body, body_len);
    return h + (ssize_t)body_len;
}
