/* HTTP/1.1 request heads, parsed strictly (RFC 9112, RFC 9110).
 *
 * Shape: one pass over a complete head does all the work. When a head arrives in pieces,
 * a cheap incremental pre-scan (memchr for LF) looks only at the new bytes for the empty
 * line that ends the head, and the full pass runs once it is found. The very first call
 * tries the full pass directly, since most heads arrive whole.
 *
 * What is rejected and why (the status in req->status):
 *  400  malformed syntax; bare CR or bare LF (a line ends in CRLF only, so two parsers
 *       can never disagree about where a line ends); NUL and other control characters;
 *       whitespace between a field name and its colon (RFC 9112 5.1 MUST); obs-fold and
 *       whitespace before the first field (RFC 9112 5.2, 2.2); a missing or repeated
 *       Host in HTTP/1.1 or an invalid one (RFC 9112 3.2 MUST); Content-Length together
 *       with Transfer-Encoding, an invalid or conflicting Content-Length, chunked not
 *       last or repeated, Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1, 6.3: each is a
 *       request-smuggling vector); a fragment in the target.
 *  414  a request-target longer than max_target.
 *  417  an expectation other than 100-continue.
 *  431  a head longer than max_head, or more than max_fields field lines.
 *  501  a transfer coding other than chunked; CONNECT (not implemented here); a method
 *       longer than 32 characters.
 *  505  an HTTP major version other than 1.
 */
#include "http/parser.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define PIER_HAVE_SSE42_PATH 1
#endif

#define DEFAULT_MAX_HEAD 8192
#define DEFAULT_MAX_TARGET 4096
#define DEFAULT_MAX_FIELDS 64
#define MAX_EMPTY_LINES 4 /* before the request line */
#define MAX_METHOD 32     /* longer is answered 501 */

const uint8_t pier__http_tchar[256] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,1,0,1,1,1,1,1,0,0,1,1,0,1,1,0,1,1,1,1,1,1,1,1,1,1,0,0,0,0,0,0,
    0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,0,0,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,1,0,1,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
};

/* field-value octets: HTAB, SP, VCHAR and obs-text */
static inline int value_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }
/* request-target octets: VCHAR only */
static inline int target_char(unsigned char c) { return c > 0x20 && c < 0x7f; }
static inline int is_ws(char c) { return c == ' ' || c == '\t'; }
static inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c; }

static int ieq(const char *a, size_t alen, const char *lit, size_t llen) {
    if (alen != llen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (lower(a[i]) != lit[i])
            return 0;
    return 1;
}
#define IEQ(s, n, lit) ieq((s), (n), lit, sizeof(lit) - 1)

/* ---- scanners: return the first byte that is not allowed, or end ---- */

static const char *scan_value_scalar(const char *p, const char *end) {
    while (p < end && value_char((unsigned char)*p))
        p++;
    return p;
}

static const char *scan_target_scalar(const char *p, const char *end) {
    while (p < end && target_char((unsigned char)*p))
        p++;
    return p;
}

#ifdef PIER_HAVE_SSE42_PATH
/* PCMPESTRI in range mode with negative polarity finds the first byte outside all of up
 * to eight allowed ranges. (Valgrind implements this form, 0x14, but not every other.)
 * Loads never go past end: the guard-page tests check. */
__attribute__((target("sse4.2")))
static const char *scan_ranges_sse42(const char *p, const char *end, const char *ranges, int nranges) {
    __m128i r = _mm_loadu_si128((const __m128i *)ranges);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        int i = _mm_cmpestri(r, nranges, v, 16,
                             _SIDD_UBYTE_OPS | _SIDD_CMP_RANGES | _SIDD_NEGATIVE_POLARITY | _SIDD_LEAST_SIGNIFICANT);
        if (i != 16)
            return p + i;
        p += 16;
    }
    return p;
}

static const char value_allowed[16] = "\x09\x09\x20\x7e\x80\xff";
static const char target_allowed[16] = "\x21\x7e";

__attribute__((target("sse4.2")))
static const char *scan_value_sse42(const char *p, const char *end) {
    return scan_value_scalar(scan_ranges_sse42(p, end, value_allowed, 6), end);
}

__attribute__((target("sse4.2")))
static const char *scan_target_sse42(const char *p, const char *end) {
    return scan_target_scalar(scan_ranges_sse42(p, end, target_allowed, 2), end);
}
#endif

static const char *(*scan_value)(const char *, const char *) = scan_value_scalar;
static const char *(*scan_target)(const char *, const char *) = scan_target_scalar;

int pier__http_parser_use_simd(int mode) {
    int on = 0;
#ifdef PIER_HAVE_SSE42_PATH
    if (mode != 0) {
        __builtin_cpu_init();
        on = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    }
    scan_value = on ? scan_value_sse42 : scan_value_scalar;
    scan_target = on ? scan_target_sse42 : scan_target_scalar;
#else
    (void)mode;
#endif
    return on;
}

/* Chosen once when the library loads, before any thread can parse. */
__attribute__((constructor)) static void choose_scanners(void) { pier__http_parser_use_simd(-1); }

/* ---- methods ---- */

static const struct {
    const char *name;
    unsigned len;
    unsigned bit;
} methods[] = {
    {"GET", 3, PIER_HTTP_GET},         {"HEAD", 4, PIER_HTTP_HEAD},
    {"POST", 4, PIER_HTTP_POST},       {"PUT", 3, PIER_HTTP_PUT},
    {"DELETE", 6, PIER_HTTP_DELETE},   {"PATCH", 5, PIER_HTTP_PATCH},
    {"OPTIONS", 7, PIER_HTTP_OPTIONS}, {"CONNECT", 7, PIER__HTTP_CONNECT},
    {"TRACE", 5, PIER__HTTP_TRACE},
};

unsigned pier__http_method_from(const char *s, size_t len) {
    /* methods are case-sensitive (RFC 9110 9.1) */
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (methods[i].len == len && memcmp(methods[i].name, s, len) == 0)
            return methods[i].bit;
    return PIER__HTTP_OTHER;
}

const char *pier__http_method_name(unsigned method) {
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (methods[i].bit == method)
            return methods[i].name;
    return NULL;
}

/* ---- the full pass ---- */

typedef struct {
    const pier__http_limits_t *lim;
    pier__http_request_t *req;
    int hosts;
    int te_seen, te_chunked, te_unknown, te_chunked_not_last;
    int conn_close, conn_keep_alive;
} pass_t;

#define FAIL(st)               \
    do {                       \
        req->status = (st);    \
        return -1;             \
    } while (0)

/* Host = uri-host [ ":" port ]; empty is allowed (RFC 9112 3.2). */
static int valid_authority(const char *s, size_t n) {
    size_t i = 0;
    if (n > 0 && s[0] == '[') {
        for (i = 1; i < n && s[i] != ']'; i++)
            if (!(pier__http_tchar[(unsigned char)s[i]] || s[i] == ':') || s[i] == '%')
                return 0;
        if (i == n || i == 1)
            return 0;
        i++;
    } else {
        static const char sub[] = "-._~!$&'()*+,;=%";
        for (; i < n && s[i] != ':'; i++) {
            unsigned char c = (unsigned char)s[i];
            int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
            if (!alnum && !memchr(sub, c, sizeof sub - 1))
                return 0;
        }
    }
    if (i == n)
        return 1;
    if (s[i] != ':')
        return 0;
    for (i++; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* Calls fn on each element of a comma-separated list, skipping empty ones
 * (RFC 9110 5.6.1). Stops at the first non-zero return. */
static int each_element(const char *v, size_t n, int (*fn)(pass_t *, const char *, size_t), pass_t *ps) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && is_ws(v[a]))
            a++;
        while (b > a && is_ws(v[b - 1]))
            b--;
        if (b > a) {
            int rc = fn(ps, v + a, b - a);
            if (rc)
                return rc;
        }
        i = j + 1;
    }
    return 0;
}

static int content_length_element(pass_t *ps, const char *s, size_t n) {
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (INT64_MAX - 9) / 10)
            return 400;
        v = v * 10 + (s[i] - '0');
    }
    if (ps->req->content_length >= 0 && ps->req->content_length != v)
        return 400;
    ps->req->content_length = v;
    return 0;
}

static int te_element(pass_t *ps, const char *s, size_t n) {
    if (ps->te_chunked)
        ps->te_chunked_not_last = 1; /* anything after chunked, even chunked again */
    if (IEQ(s, n, "chunked"))
        ps->te_chunked = 1;
    else
        ps->te_unknown = 1;
    return 0;
}

static int connection_element(pass_t *ps, const char *s, size_t n) {
    if (IEQ(s, n, "close"))
        ps->conn_close = 1;
    else if (IEQ(s, n, "keep-alive"))
        ps->conn_keep_alive = 1;
    return 0;
}

static int count_element(pass_t *ps, const char *s, size_t n) {
    (void)ps, (void)s, (void)n;
    return 1;
}

/* The fields whose meaning changes the framing or the answer. */
static int field_semantics(pass_t *ps, const pier__http_field_t *f) {
    const char *n = f->name, *v = f->value;
    size_t nl = f->name_len, vl = f->value_len;
    switch (nl) {
    case 4:
        if (IEQ(n, nl, "host")) {
            if (++ps->hosts > 1 || !valid_authority(v, vl))
                return 400;
            ps->req->authority = v;
            ps->req->authority_len = vl;
        }
        break;
    case 6:
        if (IEQ(n, nl, "expect")) {
            if (!IEQ(v, vl, "100-continue"))
                return 417;
            ps->req->expect_continue = 1;
        }
        break;
    case 10:
        if (IEQ(n, nl, "connection"))
            return each_element(v, vl, connection_element, ps);
        break;
    case 14:
        if (IEQ(n, nl, "content-length")) {
            if (!each_element(v, vl, count_element, ps))
                return 400; /* empty */
            return each_element(v, vl, content_length_element, ps);
        }
        break;
    case 17:
        if (IEQ(n, nl, "transfer-encoding")) {
            ps->te_seen = 1;
            if (!each_element(v, vl, count_element, ps))
                return 400;
            return each_element(v, vl, te_element, ps);
        }
        break;
    }
    return 0;
}

/* Splits the target into path and query and checks its form (RFC 9112 3.2). */
static int target_form(pier__http_request_t *req) {
    const char *t = req->target, *end = t + req->target_len;
    if (memchr(t, '#', req->target_len))
        return 400;
    if (req->target_len == 1 && t[0] == '*')
        return req->method == PIER_HTTP_OPTIONS ? (req->path = t, req->path_len = 1, 0) : 400;
    if (t[0] != '/') {
        /* absolute-form: "http" or "https" "://" authority [path-abempty] ["?" query] */
        size_t skip;
        if (req->target_len > 7 && IEQ(t, 7, "http://"))
            skip = 7;
        else if (req->target_len > 8 && IEQ(t, 8, "https://"))
            skip = 8;
        else
            return 400;
        const char *a = t + skip, *p = a;
        while (p < end && *p != '/' && *p != '?')
            p++;
        if (p == a || memchr(a, '@', (size_t)(p - a)) || !valid_authority(a, (size_t)(p - a)))
            return 400;
        /* the target's authority wins over Host (RFC 9112 3.2.2) */
        req->authority = a;
        req->authority_len = (size_t)(p - a);
        t = p;
    }
    const char *q = memchr(t, '?', (size_t)(end - t));
    const char *pend = q ? q : end;
    if (pend == t) {
        req->path = "/";
        req->path_len = 1;
    } else {
        req->path = t;
        req->path_len = (size_t)(pend - t);
    }
    if (q) {
        req->query = q + 1;
        req->query_len = (size_t)(end - q - 1);
    }
    return 0;
}

static int finish(pass_t *ps) {
    pier__http_request_t *req = ps->req;
    if (req->method == PIER__HTTP_CONNECT)
        return 501;
    if (req->minor == 1 && ps->hosts == 0)
        return 400;
    if (ps->te_seen) {
        if (req->minor == 0 || req->content_length >= 0 || ps->te_chunked_not_last)
            return 400;
        if (ps->te_unknown)
            return 501;
        req->chunked = 1;
    }
    if (req->minor == 1)
        req->keep_alive = !ps->conn_close;
    else
        req->keep_alive = ps->conn_keep_alive && !ps->conn_close;
    return target_form(req);
}

static void reset_request(pier__http_request_t *req) {
    req->method = PIER__HTTP_OTHER;
    req->method_str = req->target = req->path = req->query = req->authority = NULL;
    req->method_len = req->target_len = req->path_len = req->query_len = req->authority_len = 0;
    req->minor = 1;
    req->keep_alive = req->expect_continue = req->chunked = 0;
    req->content_length = -1;
    req->status = 0;
    req->nfields = 0;
}

/* HTTP-version = "HTTP/" DIGIT "." DIGIT, then CRLF. Returns bytes used, -2, or -1. */
static int parse_version(const char *p, const char *end, pier__http_request_t *req) {
    static const char lit[] = "HTTP/";
    size_t avail = (size_t)(end - p);
    for (size_t i = 0; i < 5; i++) {
        if (i == avail)
            return -2;
        if (p[i] != lit[i])
            FAIL(400);
    }
    for (size_t i = 5; i < 10; i++) {
        if (i == avail)
            return -2;
        char c = p[i];
        int ok = (i == 5 || i == 7) ? (c >= '0' && c <= '9') : i == 6 ? c == '.' : i == 8 ? c == '\r' : c == '\n';
        if (!ok)
            FAIL(400);
    }
    if (p[5] != '1')
        FAIL(505);
    req->minor = p[7] == '0' ? 0 : 1;
    return 10;
}

static int parse_request_line(const char **pp, const char *end, pass_t *ps) {
    pier__http_request_t *req = ps->req;
    const char *p = *pp, *start;
    /* at most a few empty lines before the request line (RFC 9112 2.2 SHOULD) */
    for (int n = 0; p < end && (*p == '\r' || *p == '\n'); n++) {
        if (n == MAX_EMPTY_LINES || *p != '\r')
            FAIL(400);
        if (p + 1 == end)
            return -2;
        if (p[1] != '\n')
            FAIL(400);
        p += 2;
    }
    for (start = p; p < end && pier__http_tchar[(unsigned char)*p]; p++)
        if (p - start == MAX_METHOD)
            FAIL(501);
    if (p == end)
        return -2;
    if (*p != ' ' || p == start)
        FAIL(400);
    req->method_str = start;
    req->method_len = (size_t)(p - start);
    req->method = pier__http_method_from(start, req->method_len);
    start = ++p;
    p = scan_target(p, end);
    if ((size_t)(p - start) > ps->lim->max_target)
        FAIL(414);
    if (p == end)
        return -2;
    if (*p != ' ' || p == start)
        FAIL(400);
    req->target = start;
    req->target_len = (size_t)(p - start);
    int n = parse_version(++p, end, req);
    if (n < 0)
        return n;
    *pp = p + n;
    return 0;
}

static int parse_field(const char **pp, const char *end, pass_t *ps) {
    pier__http_request_t *req = ps->req;
    const char *p = *pp, *name = p;
    while (p < end && pier__http_tchar[(unsigned char)*p])
        p++;
    if (p == end)
        return -2;
    if (*p != ':' || p == name)
        FAIL(400); /* includes whitespace before the colon and obs-fold */
    if (req->nfields == ps->lim->max_fields)
        FAIL(431);
    pier__http_field_t *f = &req->fields[req->nfields];
    f->name = name;
    f->name_len = (size_t)(p - name);
    for (p++; p < end && is_ws(*p); p++)
        ;
    const char *value = p;
    p = scan_value(p, end);
    if (p == end)
        return -2;
    if (*p != '\r')
        FAIL(400);
    if (p + 1 == end)
        return -2;
    if (p[1] != '\n')
        FAIL(400);
    const char *vend = p;
    while (vend > value && is_ws(vend[-1]))
        vend--;
    f->value = value;
    f->value_len = (size_t)(vend - value);
    req->nfields++;
    int st = field_semantics(ps, f);
    if (st)
        FAIL(st);
    *pp = p + 2;
    return 0;
}

static int parse_head(const char *buf, size_t len, const pier__http_limits_t *lim, pier__http_request_t *req) {
    pass_t ps = {.lim = lim, .req = req};
    const char *p = buf, *end = buf + len;
    reset_request(req);
    int rc = parse_request_line(&p, end, &ps);
    if (rc)
        return rc;
    if (p < end && is_ws(*p))
        FAIL(400); /* whitespace before the first field line */
    for (;;) {
        if (p == end)
            return -2;
        if (*p == '\r') {
            if (p + 1 == end)
                return -2;
            if (p[1] != '\n')
                FAIL(400);
            p += 2;
            break;
        }
        if (is_ws(*p))
            FAIL(400); /* obs-fold */
        rc = parse_field(&p, end, &ps);
        if (rc)
            return rc;
    }
    if ((size_t)(p - buf) > lim->max_head)
        FAIL(431);
    int st = finish(&ps);
    if (st)
        FAIL(st);
    return (int)(p - buf);
}

#undef FAIL

/* ---- the incremental pre-scan ---- */

/* Looks for the empty line ending the head in bytes not scanned before. Returns 0 if not
 * found yet, 1 when found, or a status when the head is surely bad: a bare LF, too many
 * empty lines before it, or a limit passed. Only offsets are kept, so the buffer may move
 * between calls. */
static int prescan(pier__http_parser_t *p, const pier__http_limits_t *lim, const char *buf, size_t len) {
    size_t i = p->scanned;
    for (;;) {
        const char *lf = i < len ? memchr(buf + i, '\n', len - i) : NULL;
        if (!lf)
            break;
        size_t at = (size_t)(lf - buf);
        if (at == 0 || buf[at - 1] != '\r')
            return 400; /* bare LF */
        /* an empty line ends the head, unless it comes before the request line */
        int empty = at == 1 || buf[at - 2] == '\n';
        if (empty && p->first_line_end)
            return 1;
        if (!empty)
            p->first_line_end = 1;
        else if (++p->empty_lines > MAX_EMPTY_LINES)
            return 400;
        i = at + 1;
    }
    /* an LF is judged by the bytes before it, which stay in the buffer, so the next call
     * can start exactly here even when CRLFCRLF straddles two calls */
    p->scanned = len;
    if (!p->first_line_end && len > lim->max_target + MAX_METHOD + 12)
        return 414;
    if (len > lim->max_head)
        return 431;
    return 0;
}

static const pier__http_limits_t default_limits = {DEFAULT_MAX_HEAD, DEFAULT_MAX_TARGET, DEFAULT_MAX_FIELDS};

/* The full pass never looks past max_head, so that where a head is judged does not depend
 * on how much more arrived after it. */
static int parse_bounded(const char *buf, size_t len, const pier__http_limits_t *lim, pier__http_request_t *req) {
    int rc = parse_head(buf, len > lim->max_head ? lim->max_head : len, lim, req);
    if (rc == -2 && len > lim->max_head) {
        reset_request(req);
        req->status = 431;
        return -1;
    }
    return rc;
}

int pier__http_parse_request(pier__http_parser_t *p, const pier__http_limits_t *lim_in, const char *buf,
                             size_t len, pier__http_request_t *req) {
    pier__http_limits_t lim = lim_in ? *lim_in : default_limits;
    if (!lim.max_head)
        lim.max_head = DEFAULT_MAX_HEAD;
    if (!lim.max_target)
        lim.max_target = DEFAULT_MAX_TARGET;
    if (!lim.max_fields || lim.max_fields > PIER__HTTP_MAX_FIELDS)
        lim.max_fields = lim.max_fields ? PIER__HTTP_MAX_FIELDS : DEFAULT_MAX_FIELDS;

    if (p->scanned == 0) {
        int rc = parse_bounded(buf, len, &lim, req);
        if (rc != -2)
            return rc;
    }
    int st = prescan(p, &lim, buf, len);
    if (st == 0)
        return -2;
    /* Found the end, or the head is bad: either way the full pass gives the verdict, and
     * gives the same one as when the head arrives whole (the first error wins). */
    int rc = parse_bounded(buf, len, &lim, req);
    if (rc == -2) {
        reset_request(req);
        req->status = st > 1 ? st : 400;
        return -1;
    }
    return rc;
}

const pier__http_field_t *pier__http_find_field(const pier__http_request_t *req, const char *name,
                                                size_t name_len) {
    for (unsigned i = 0; i < req->nfields; i++) {
        const pier__http_field_t *f = &req->fields[i];
        if (f->name_len != name_len)
            continue;
        size_t j = 0;
        while (j < name_len && lower(f->name[j]) == lower(name[j]))
            j++;
        if (j == name_len)
            return f;
    }
    return NULL;
}
