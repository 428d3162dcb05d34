/* The PROXY protocol parser and the source allow-list: pure functions, no I/O.
 *
 * Both versions of the header are bounded before anything is trusted: v1 must end in
 * CRLF within 107 bytes, v2 declares its length up front and pier takes no more than
 * PIER__PROXY_MAX of it. v2 TLVs are walked to check that each lies inside the declared
 * length, and a CRC32C one is verified, as the spec asks; pier uses none of them. */
#include "proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static int fail(pier__proxy_hdr_t *h, const char *why) {
    h->why = why;
    return -1;
}

/* ---- v1: "PROXY TCP4 1.2.3.4 5.6.7.8 1234 80\r\n" ---- */

/* The next space-separated field of line[*pos, end): its start and length; moves *pos
 * past the single space that ends it (or to end). */
static size_t next_field(const char *line, size_t end, size_t *pos, const char **field) {
    size_t start = *pos, i = start;
    while (i < end && line[i] != ' ')
        i++;
    *field = line + start;
    *pos = i < end ? i + 1 : i;
    return i - start;
}

static int v1_port(const char *s, size_t n, in_port_t *out) {
    unsigned v = 0;
    if (n == 0 || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = htons((uint16_t)v);
    return 0;
}

static int v1_addr(int family, const char *s, size_t n, pier__sockaddr_t *a) {
    char tmp[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    memset(a, 0, sizeof *a);
    a->sa.sa_family = (sa_family_t)family;
    void *dst = family == AF_INET ? (void *)&a->in.sin_addr : (void *)&a->in6.sin6_addr;
    return inet_pton(family, tmp, dst) == 1 ? 0 : -1;
}

static void set_port(pier__sockaddr_t *a, in_port_t port) {
    if (a->sa.sa_family == AF_INET)
        a->in.sin_port = port;
    else
        a->in6.sin6_port = port;
}

/* line[0, end) is the header without its CRLF, known to start with "PROXY ". */
static int v1_fields(const char *line, size_t end, pier__proxy_hdr_t *h) {
    size_t pos = 6;
    const char *f[4], *proto;
    size_t n[4], pn = next_field(line, end, &pos, &proto);
    if (pn == 7 && memcmp(proto, "UNKNOWN", 7) == 0) {
        h->local = 1; /* the spec: whatever follows is to be ignored */
        return 0;
    }
    int family = pn == 4 && memcmp(proto, "TCP4", 4) == 0 ? AF_INET
               : pn == 4 && memcmp(proto, "TCP6", 4) == 0 ? AF_INET6 : 0;
    if (!family)
        return fail(h, "v1: protocol is not TCP4, TCP6 or UNKNOWN");
    for (int i = 0; i < 4; i++)
        n[i] = next_field(line, end, &pos, &f[i]);
    if (pos != end || line[end - 1] == ' ')
        return fail(h, "v1: not four fields after the protocol");
    in_port_t sport, dport;
    if (v1_addr(family, f[0], n[0], &h->src) < 0 || v1_addr(family, f[1], n[1], &h->dst) < 0)
        return fail(h, "v1: bad address");
    if (v1_port(f[2], n[2], &sport) < 0 || v1_port(f[3], n[3], &dport) < 0)
        return fail(h, "v1: bad port");
    set_port(&h->src, sport);
    set_port(&h->dst, dport);
    return 0;
}

static int parse_v1(const char *buf, size_t len, pier__proxy_hdr_t *h, size_t *need) {
    static const char prefix[] = "PROXY ";
    size_t p = len < 6 ? len : 6;
    if (memcmp(buf, prefix, p) != 0)
        return fail(h, "no PROXY header");
    size_t lim = len < PIER__PROXY_V1_MAX ? len : PIER__PROXY_V1_MAX;
    size_t i = p;
    while (i < lim && buf[i] != '\r') {
        if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] > 0x7e)
            return fail(h, "v1: a control or non-ASCII byte in the header");
        i++;
    }
    if (i + 1 >= PIER__PROXY_V1_MAX)
        return fail(h, "v1: no CRLF within 107 bytes");
    if (i + 1 >= len)
        return -2; /* *need: one more byte */
    if (buf[i + 1] != '\n')
        return fail(h, "v1: CR not followed by LF");
    if (v1_fields(buf, i, h) < 0)
        return -1;
    return (int)(i + 2);
}

/* ---- v2: 16 fixed bytes, the address block, TLVs ---- */

static size_t v2_addr_len(unsigned family) {
    static const size_t lens[4] = {0, 12, 36, 216}; /* unspec, inet, inet6, unix */
    return lens[family];
}

uint32_t pier__crc32c(const void *data, size_t len, uint32_t crc) {
    const unsigned char *p = data;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

#define PP2_TYPE_CRC32C 0x03

/* The spec's check of a CRC32C TLV: over the whole header with the checksum's own four
 * bytes taken as zeros. */
static int v2_crc_ok(const unsigned char *hdr, size_t total, size_t value_off) {
    static const unsigned char zeros[4] = {0};
    uint32_t want = (uint32_t)hdr[value_off] << 24 | (uint32_t)hdr[value_off + 1] << 16 |
                    (uint32_t)hdr[value_off + 2] << 8 | hdr[value_off + 3];
    uint32_t crc = pier__crc32c(hdr, value_off, 0);
    crc = pier__crc32c(zeros, 4, crc);
    crc = pier__crc32c(hdr + value_off + 4, total - value_off - 4, crc);
    return crc == want;
}

/* The TLVs are hdr[off, total): each must lie inside it; a CRC32C one must match. */
static int v2_tlvs(const unsigned char *hdr, size_t off, size_t total, pier__proxy_hdr_t *h) {
    while (off < total) {
        if (total - off < 3)
            return fail(h, "v2: truncated TLV");
        size_t vlen = (size_t)hdr[off + 1] << 8 | hdr[off + 2];
        if (vlen > total - off - 3)
            return fail(h, "v2: TLV runs past the header's length");
        if (hdr[off] == PP2_TYPE_CRC32C && (vlen != 4 || !v2_crc_ok(hdr, total, off + 3)))
            return fail(h, "v2: CRC32C does not match");
        off += 3 + vlen;
    }
    return 0;
}

static void v2_inet(const unsigned char *a, pier__proxy_hdr_t *h) {
    memset(&h->src, 0, sizeof h->src);
    memset(&h->dst, 0, sizeof h->dst);
    h->src.in.sin_family = h->dst.in.sin_family = AF_INET;
    memcpy(&h->src.in.sin_addr, a, 4);
    memcpy(&h->dst.in.sin_addr, a + 4, 4);
    memcpy(&h->src.in.sin_port, a + 8, 2);
    memcpy(&h->dst.in.sin_port, a + 10, 2);
}

static void v2_inet6(const unsigned char *a, pier__proxy_hdr_t *h) {
    memset(&h->src, 0, sizeof h->src);
    memset(&h->dst, 0, sizeof h->dst);
    h->src.in6.sin6_family = h->dst.in6.sin6_family = AF_INET6;
    memcpy(&h->src.in6.sin6_addr, a, 16);
    memcpy(&h->dst.in6.sin6_addr, a + 16, 16);
    memcpy(&h->src.in6.sin6_port, a + 32, 2);
    memcpy(&h->dst.in6.sin6_port, a + 34, 2);
}

static int parse_v2(const unsigned char *b, size_t len, pier__proxy_hdr_t *h, size_t *need) {
    if (memcmp(b, v2_sig, len < 12 ? len : 12) != 0)
        return fail(h, "no PROXY header");
    if (len < PIER__PROXY_V2_FIXED) {
        *need = PIER__PROXY_V2_FIXED;
        return -2;
    }
    unsigned ver = b[12] >> 4, cmd = b[12] & 0xF, fam = b[13] >> 4, proto = b[13] & 0xF;
    size_t total = PIER__PROXY_V2_FIXED + ((size_t)b[14] << 8 | b[15]);
    if (ver != 2)
        return fail(h, "v2: version is not 2");
    if (cmd > 1)
        return fail(h, "v2: command is neither LOCAL nor PROXY");
    if (total > PIER__PROXY_MAX)
        return fail(h, "v2: header longer than pier takes (64 KiB)");
    /* LOCAL (a balancer's own health check): the spec has the family and the addresses
     * ignored, whatever they say */
    if (cmd == 1 && (fam > 3 || proto > 2))
        return fail(h, "v2: unknown address family or protocol");
    size_t alen = cmd == 1 ? v2_addr_len(fam) : 0;
    if (total - PIER__PROXY_V2_FIXED < alen)
        return fail(h, "v2: length shorter than its address block");
    if (len < total) {
        *need = total;
        return -2;
    }
    const unsigned char *a = b + PIER__PROXY_V2_FIXED;
    if (cmd == 0) {
        h->local = 1;
        return (int)total;
    }
    if (v2_tlvs(b, PIER__PROXY_V2_FIXED + alen, total, h) < 0)
        return -1;
    /* only TCP over IPv4 or IPv6 carries an address a connection can have; the rest
     * (UNSPEC, unix, UDP) falls back to the socket's own, as the spec asks */
    if (fam == 1 && proto == 1)
        v2_inet(a, h);
    else if (fam == 2 && proto == 1)
        v2_inet6(a, h);
    else
        h->local = 1;
    return (int)total;
}

int pier__proxy_parse(const char *buf, size_t len, pier__proxy_hdr_t *h, size_t *need) {
    memset(h, 0, sizeof *h);
    *need = len + 1;
    if (len == 0)
        return -2;
    if (buf[0] == 'P') {
        h->version = 1;
        return parse_v1(buf, len, h, need);
    }
    if (buf[0] == '\r') {
        h->version = 2;
        return parse_v2((const unsigned char *)buf, len, h, need);
    }
    return fail(h, "no PROXY header");
}

/* ---- the allow-list ---- */

static int cidr_item(const char *s, size_t n, pier__cidr_t *c) {
    char tmp[INET6_ADDRSTRLEN + 8];
    while (n && *s == ' ')
        s++, n--;
    while (n && s[n - 1] == ' ')
        n--;
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *slash = strchr(tmp, '/');
    long bits = -1;
    if (slash) {
        *slash = '\0';
        char *p = slash + 1;
        if (!*p || strlen(p) > 3)
            return -1;
        bits = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return -1;
            bits = bits * 10 + (*p - '0');
        }
    }
    memset(c, 0, sizeof *c);
    if (inet_pton(AF_INET, tmp, c->addr) == 1)
        c->family = AF_INET;
    else if (inet_pton(AF_INET6, tmp, c->addr) == 1)
        c->family = AF_INET6;
    else
        return -1;
    long max = c->family == AF_INET ? 32 : 128;
    if (bits > max)
        return -1;
    c->bits = (unsigned char)(bits < 0 ? max : bits);
    for (unsigned i = c->bits; i < (unsigned)max; i++) /* clear the host bits */
        c->addr[i / 8] &= (unsigned char)~(0x80u >> (i % 8));
    return 0;
}

int pier__cidr_parse(const char *list, pier__cidr_t *out, size_t max, size_t *bad_off) {
    size_t count = 0, off = 0;
    *bad_off = 0;
    if (!list)
        return -EINVAL;
    for (;;) {
        const char *comma = strchr(list + off, ',');
        size_t n = comma ? (size_t)(comma - (list + off)) : strlen(list + off);
        pier__cidr_t tmp;
        if (cidr_item(list + off, n, &tmp) < 0) {
            *bad_off = off;
            return -EINVAL;
        }
        if (out && count == max) {
            *bad_off = off;
            return -E2BIG;
        }
        if (out)
            out[count] = tmp;
        count++;
        if (!comma)
            return (int)count;
        off += n + 1;
    }
}

static int prefix_match(const unsigned char *a, const unsigned char *net, unsigned bits) {
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, net, whole) != 0)
        return 0;
    if (!rest)
        return 1;
    unsigned char mask = (unsigned char)(0xFFu << (8 - rest));
    return (a[whole] & mask) == net[whole];
}

int pier__cidr_match(const pier__cidr_t *cidrs, size_t n, const struct sockaddr *sa) {
    const unsigned char *a;
    sa_family_t fam = sa->sa_family;
    if (fam == AF_INET) {
        a = (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    } else if (fam == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        a = a6->s6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            fam = AF_INET;
            a += 12;
        }
    } else {
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        if (cidrs[i].family == fam && prefix_match(a, cidrs[i].addr, cidrs[i].bits))
            return 1;
    return 0;
}

int pier_proxy_from_check(const char *list, size_t *bad_off) {
    size_t off;
    int n = pier__cidr_parse(list, NULL, 0, &off);
    if (bad_off)
        *bad_off = off;
    return n < 0 ? n : 0;
}
