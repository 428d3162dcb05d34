/* Static files under a root directory: an ordinary route on the public API
 * (pier_http_route_ud, pier_http_req_*, pier_http_res_*), as an application's handler
 * would be.
 *
 * Containment: the decoded path is walked one component at a time with openat() from a
 * descriptor of the root, each with O_NOFOLLOW. A component that is empty, starts with a
 * dot (".", "..", dotfiles) or is a symbolic link is refused, so neither "../", nor its
 * percent-encoded forms (decoded before we get here), nor a link can lead outside. %00
 * never gets here: the decoder refuses it. An encoded slash (%2F) is refused too: it
 * names a file whose name holds a slash, which cannot exist, rather than a separator.
 * O_NONBLOCK keeps a FIFO from blocking the loop; only regular files are served.
 *
 * A directory serves its index.html, or else a listing of its visible files.
 *
 * Validators: ETag is size and mtime in nanoseconds; If-None-Match (a list of tags
 * compared weakly, or "*") wins over If-Modified-Since (RFC 9110 13.2.2).
 *
 * Ranges (RFC 9110 14): one satisfiable range is a 206 with the file sent by sendfile;
 * several are a 206 multipart/byteranges, read into memory. A client can turn a small
 * file into a large answer with many or overlapping ranges ("0-,0-,0-..."), so more than
 * MAX_RANGES ranges, overlapping ranges, or more than MULTI_MAX bytes of parts get the
 * whole file once instead, which RFC 9110 14.2 allows.
 */
#include "http/http_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_RANGES 16
#define MULTI_MAX (1u << 20)
#define MAX_LISTED 10000

typedef struct {
    int dirfd;
} static_t;

static void static_free(void *ud) {
    static_t *st = ud;
    close(st->dirfd);
    free(st);
}

static int errno_status(int err) {
    return err == EACCES || err == EPERM ? 403 : (err == EMFILE || err == ENFILE) ? 503 : 404;
}

static void answer(pier_http_res_t *res, int status) {
    char body[64];
    int n = snprintf(body, sizeof body, "%d %s\n", status, pier_http_reason(status));
    pier_http_res_send(res, status, "text/plain; charset=utf-8", body, (size_t)n);
}

/* Opens rel below dirfd, component by component. Returns an fd or -status; *name gets
 * the last component (for the Content-Type). */
static int walk(int dirfd, const char *rel, char *name, size_t name_size) {
    int dfd = dirfd;
    const char *p = rel;
    snprintf(name, name_size, "%s", "");
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0 && !e)
            break;
        if (len == 0 || p[0] == '.' || len >= name_size) {
            if (dfd != dirfd)
                close(dfd);
            return -404;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        int err = errno;
        if (dfd != dirfd)
            close(dfd);
        if (fd < 0)
            return -errno_status(err);
        dfd = fd;
        p = e ? e + 1 : p + len;
    }
    if (dfd == dirfd) {
        /* a new open file description: a dup() would share the root's read position,
         * which a listing moves to the end (and loops on other threads move too) */
        dfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
            return -errno_status(errno);
    }
    return dfd;
}

static int encoded_slash(const char *raw, size_t n) {
    for (size_t i = 0; i + 2 < n; i++)
        if (raw[i] == '%' && raw[i + 1] == '2' && (raw[i + 2] | 0x20) == 'f')
            return 1;
    return 0;
}

/* ---- conditional requests (RFC 9110 13.1) ---- */

static const char *skip_ows(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* etagc = "!" / %x23-7E / obs-text */
static int etagc(unsigned char c) { return c == 0x21 || (c >= 0x23 && c != 0x7f); }

/* If-None-Match = "*" / #entity-tag, entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; tags
 * compared weakly (a W/ prefix does not matter). A malformed field matches nothing. */
static int none_match(const char *v, size_t n, const char *etag) {
    const char *p = skip_ows(v, v + n), *end = v + n;
    if (p < end && *p == '*')
        return skip_ows(p + 1, end) == end;
    size_t el = strlen(etag);
    int match = 0;
    while (p < end) {
        if (*p == ',') { /* empty list elements are allowed */
            p = skip_ows(p + 1, end);
            continue;
        }
        if (end - p >= 2 && p[0] == 'W' && p[1] == '/')
            p += 2;
        if (p == end || *p != '"')
            return 0;
        const char *q = p + 1;
        while (q < end && etagc((unsigned char)*q))
            q++;
        if (q == end || *q != '"')
            return 0;
        match |= (size_t)(q + 1 - p) == el && memcmp(p, etag, el) == 0;
        p = skip_ows(q + 1, end);
        if (p < end && *p != ',')
            return 0;
    }
    return match;
}

static int not_modified(const pier_http_req_t *req, const struct stat *sb, const char *etag) {
    size_t n;
    const char *inm = pier_http_req_header(req, "If-None-Match", &n);
    if (inm)
        return none_match(inm, n, etag);
    const char *ims = pier_http_req_header(req, "If-Modified-Since", &n);
    if (ims) {
        time_t t = pier__http_parse_date(ims, n);
        return t != (time_t)-1 && sb->st_mtime <= t; /* an invalid date is ignored */
    }
    return 0;
}

static int if_range_ok(const pier_http_req_t *req, const char *etag, const char *lastmod) {
    size_t n;
    const char *v = pier_http_req_header(req, "If-Range", &n);
    if (!v)
        return 1;
    /* strong comparison for an entity tag, exact match for a date */
    if (n && v[0] == '"')
        return n == strlen(etag) && memcmp(v, etag, n) == 0;
    return n == strlen(lastmod) && memcmp(v, lastmod, n) == 0;
}

/* ---- ranges (RFC 9110 14.1.2) ---- */

typedef struct {
    uint64_t from, to;
} span_t;

static const char *digits(const char *p, const char *end, uint64_t *v, int *have) {
    for (*v = 0, *have = 0; p < end && *p >= '0' && *p <= '9'; p++, *have = 1) {
        if (*v > UINT64_MAX / 10 - 10)
            return NULL;
        *v = *v * 10 + (uint64_t)(*p - '0');
    }
    return p;
}

/* "a-b", "a-" or "-n" against size: 1 with *s set, 0 if unsatisfiable, -1 if invalid. */
static int range_spec(const char *p, const char *end, uint64_t size, span_t *s) {
    uint64_t a, b;
    int have_a, have_b;
    if (!(p = digits(p, end, &a, &have_a)) || p == end || *p != '-')
        return -1;
    if (!(p = digits(p + 1, end, &b, &have_b)) || p != end || (!have_a && !have_b))
        return -1;
    if (!have_a) { /* suffix: the last b bytes */
        if (b == 0 || size == 0)
            return 0;
        *s = (span_t){b >= size ? 0 : size - b, size - 1};
        return 1;
    }
    if (have_b && b < a)
        return -1;
    if (a >= size)
        return 0;
    *s = (span_t){a, (!have_b || b >= size) ? size - 1 : b};
    return 1;
}

/* Parses "bytes=" range-set against size into out (at most MAX_RANGES), in request order.
 * Returns how many ranges are satisfiable; 0 to ignore the field (absent, malformed,
 * another unit, too many ranges, overlapping ranges); -1 if none is satisfiable. */
static int parse_ranges(const char *v, size_t n, uint64_t size, span_t *out) {
    int k = 0, specs = 0;
    if (n < 6 || strncasecmp(v, "bytes=", 6) != 0)
        return 0;
    const char *p = v + 6, *end = v + n;
    while (p < end) {
        const char *e = memchr(p, ',', (size_t)(end - p));
        const char *a = skip_ows(p, e ? e : end), *b = e ? e : end;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        p = e ? e + 1 : end;
        if (a == b)
            continue; /* an empty list element */
        span_t s;
        int r = ++specs > MAX_RANGES ? -1 : range_spec(a, b, size, &s);
        if (r < 0)
            return 0;
        for (int j = 0; r > 0 && j < k; j++)
            if (s.from <= out[j].to && out[j].from <= s.to)
                return 0;
        if (r > 0)
            out[k++] = s;
    }
    return k ? k : specs ? -1 : 0;
}

/* A boundary that occurs nowhere in the parts' data, so the client cannot be misled. */
static void pick_boundary(const pier__buf_t *data, uint64_t seed, char *out, size_t size) {
    for (uint64_t i = 0;; i++) {
        uint64_t x = (seed + i) * 0x9e3779b97f4a7c15u;
        snprintf(out, size, "pier-%016" PRIx64, x ^ (x >> 31));
        if (!memmem(data->p ? data->p : "", data->len, out, strlen(out)))
            return;
    }
}

/* Reads the spans of fd one after the other into data. 0, or -1 (short read, error). */
static int read_spans(int fd, const span_t *sp, int k, pier__buf_t *data) {
    for (int i = 0; i < k; i++) {
        size_t want = (size_t)(sp[i].to - sp[i].from + 1);
        if (pier__buf_reserve(data, want) < 0)
            return -1;
        for (size_t got = 0; got < want;) {
            ssize_t r = pread(fd, data->p + data->len, want - got, (off_t)(sp[i].from + got));
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return -1; /* the file shrank under us, or cannot be read */
            got += (size_t)r;
            data->len += (size_t)r;
        }
    }
    return 0;
}

/* Answers several ranges with a multipart/byteranges body (RFC 9110 14.6). -1 when their
 * parts would be too large: the caller sends the whole file instead. */
static int send_parts(pier_http_res_t *res, int fd, const span_t *sp, int k, uint64_t size, const char *mime,
                      uint64_t seed) {
    uint64_t total = 0;
    for (int i = 0; i < k; i++)
        total += sp[i].to - sp[i].from + 1;
    if (total > MULTI_MAX)
        return -1;
    pier__buf_t data = {0}, body = {0};
    char boundary[32];
    if (read_spans(fd, sp, k, &data) == 0) {
        pick_boundary(&data, seed, boundary, sizeof boundary);
        const char *d = data.p;
        for (int i = 0; i < k; i++) {
            size_t len = (size_t)(sp[i].to - sp[i].from + 1);
            pier__buf_printf(&body, "--%s\r\nContent-Type: %s\r\nContent-Range: bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64
                             "\r\n\r\n", boundary, mime, sp[i].from, sp[i].to, size);
            pier__buf_append(&body, d, len);
            pier__buf_puts(&body, "\r\n");
            d += len;
        }
        pier__buf_printf(&body, "--%s--\r\n", boundary);
    }
    if (data.len != total || pier__buf_failed(&body)) {
        answer(res, 500);
    } else {
        char ctype[64];
        snprintf(ctype, sizeof ctype, "multipart/byteranges; boundary=%s", boundary);
        pier_http_res_send(res, 206, ctype, body.p, body.len);
    }
    pier__buf_free(&data);
    pier__buf_free(&body);
    close(fd);
    return 0;
}

/* ---- files ---- */

static void serve_file(const pier_http_req_t *req, pier_http_res_t *res, int fd, const struct stat *sb,
                       const char *name) {
    char etag[64], lastmod[30], cr[96];
    uint64_t stamp = (uint64_t)sb->st_mtim.tv_sec * 1000000000u + (uint64_t)sb->st_mtim.tv_nsec;
    uint64_t size = (uint64_t)sb->st_size;
    snprintf(etag, sizeof etag, "\"%" PRIx64 "-%" PRIx64 "\"", size, stamp);
    pier__http_date(sb->st_mtime, lastmod);
    pier_http_res_header(res, "ETag", etag);
    pier_http_res_header(res, "Last-Modified", lastmod);
    pier_http_res_header(res, "Accept-Ranges", "bytes");
    const char *mime = pier__http_mime(name);
    if (not_modified(req, sb, etag)) {
        close(fd);
        pier_http_res_send(res, 304, NULL, NULL, 0);
        return;
    }
    span_t sp[MAX_RANGES];
    size_t rn;
    const char *range = pier_http_req_header(req, "Range", &rn);
    int k = range && if_range_ok(req, etag, lastmod) ? parse_ranges(range, rn, size, sp) : 0;
    if (k < 0) {
        close(fd);
        snprintf(cr, sizeof cr, "bytes */%" PRIu64, size);
        pier_http_res_header(res, "Content-Range", cr);
        answer(res, 416);
        return;
    }
    if (k == 1) {
        snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, sp[0].from, sp[0].to, size);
        pier_http_res_header(res, "Content-Range", cr);
        pier_http_res_sendfile(res, 206, mime, fd, (off_t)sp[0].from, (size_t)(sp[0].to - sp[0].from + 1));
        return;
    }
    if (k > 1 && send_parts(res, fd, sp, k, size, mime, stamp ^ size) == 0)
        return;
    pier_http_res_sendfile(res, 200, mime, fd, 0, (size_t)size);
}

static void redirect_to_dir(const pier_http_req_t *req, pier_http_res_t *res) {
    size_t n;
    const char *raw = pier_http_req_raw_path(req, &n);
    char loc[1024];
    if (n + 2 > sizeof loc) {
        answer(res, 404);
        return;
    }
    snprintf(loc, sizeof loc, "%.*s/", (int)n, raw);
    pier_http_res_header(res, "Location", loc);
    answer(res, 301);
}

/* ---- directory listings, for a directory without index.html ---- */

static void put_html(pier__buf_t *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': pier__buf_puts(b, "&lt;"); break;
        case '>': pier__buf_puts(b, "&gt;"); break;
        case '&': pier__buf_puts(b, "&amp;"); break;
        case '"': pier__buf_puts(b, "&quot;"); break;
        case '\'': pier__buf_puts(b, "&#39;"); break;
        default: pier__buf_append(b, s, 1);
        }
    }
}

static void put_href(pier__buf_t *b, const char *s) {
    static const char hexd[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= '0' && *p <= '9') || ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z') || strchr("-._~/", *p)) {
            pier__buf_append(b, p, 1);
        } else {
            char e[3] = {'%', hexd[*p >> 4], hexd[*p & 15]};
            pier__buf_append(b, e, 3);
        }
    }
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

typedef struct {
    char **names;
    size_t n, cap;
    int truncated;
} names_t;

static int add_name(names_t *l, const char *name, int is_dir) {
    if (l->n == MAX_LISTED) {
        l->truncated = 1;
        return -1;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        char **nn = realloc(l->names, cap * sizeof *nn);
        if (!nn)
            return -1;
        l->names = nn;
        l->cap = cap;
    }
    size_t len = strlen(name);
    if (!(l->names[l->n] = malloc(len + 2)))
        return -1;
    memcpy(l->names[l->n], name, len + 1);
    if (is_dir)
        memcpy(l->names[l->n] + len, "/", 2);
    l->n++;
    return 0;
}

/* The visible entries: regular files and directories, no dotfiles, no symlinks (they
 * would not be served anyway). Takes fd. */
static int read_names(int fd, names_t *l) {
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat sb;
        if (e->d_name[0] == '.' || fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
            !(S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)))
            continue;
        if (add_name(l, e->d_name, S_ISDIR(sb.st_mode)) < 0)
            break;
    }
    closedir(d);
    if (l->n)
        qsort(l->names, l->n, sizeof *l->names, cmp_names);
    return 0;
}

static void list_dir(const pier_http_req_t *req, pier_http_res_t *res, int fd) {
    names_t l = {0};
    if (read_names(fd, &l) < 0) {
        answer(res, 500);
        return;
    }
    const char *path = pier_http_req_path(req);
    pier__buf_t b = {0};
    pier__buf_puts(&b, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Index of ");
    put_html(&b, path);
    pier__buf_puts(&b, "</title></head>\n<body>\n<h1>Index of ");
    put_html(&b, path);
    pier__buf_puts(&b, "</h1>\n<ul>\n<li><a href=\"../\">../</a></li>\n");
    for (size_t i = 0; i < l.n; i++) {
        pier__buf_puts(&b, "<li><a href=\"");
        put_href(&b, l.names[i]);
        pier__buf_puts(&b, "\">");
        put_html(&b, l.names[i]);
        pier__buf_puts(&b, "</a></li>\n");
        free(l.names[i]);
    }
    free(l.names);
    pier__buf_puts(&b, l.truncated ? "</ul>\n<p>(listing truncated)</p>\n</body></html>\n" : "</ul>\n</body></html>\n");
    if (pier__buf_failed(&b))
        answer(res, 500);
    else
        pier_http_res_send(res, 200, "text/html; charset=utf-8", b.p, b.len);
    pier__buf_free(&b);
}

/* ---- the route ---- */

/* A directory: its index.html (returned, with name set), a redirect or a listing (then
 * answered here, -1). Takes fd. */
static int open_index(const pier_http_req_t *req, pier_http_res_t *res, int fd, char *name, size_t size) {
    const char *path = pier_http_req_path(req);
    if (path[strlen(path) - 1] != '/') {
        close(fd);
        redirect_to_dir(req, res);
        return -1;
    }
    int ifd = openat(fd, "index.html", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    int err = errno;
    if (ifd < 0 && err == ENOENT) {
        list_dir(req, res, fd); /* takes fd */
        return -1;
    }
    close(fd);
    if (ifd < 0) {
        answer(res, errno_status(err));
        return -1;
    }
    snprintf(name, size, "index.html");
    return ifd;
}

static void handler(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    const static_t *st = ud;
    size_t rl;
    const char *raw = pier_http_req_raw_path(req, &rl);
    const char *rel = pier_http_req_param(req, "*", NULL);
    char name[256];
    int fd = encoded_slash(raw, rl) ? -404 : walk(st->dirfd, rel ? rel : "", name, sizeof name);
    if (fd < 0) {
        answer(res, -fd);
        return;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        sb.st_mode = 0;
    if (S_ISDIR(sb.st_mode)) {
        if ((fd = open_index(req, res, fd, name, sizeof name)) < 0)
            return;
        if (fstat(fd, &sb) != 0)
            sb.st_mode = 0;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        answer(res, 404);
        return;
    }
    serve_file(req, res, fd, &sb, name);
}

int pier_http_static(pier_http_server_t *srv, const char *prefix, const char *root_dir) {
    size_t pl = prefix ? strlen(prefix) : 0;
    if (!pl || prefix[0] != '/' || prefix[pl - 1] != '/' || pl > 1000 || !root_dir)
        return -EINVAL;
    static_t *st = malloc(sizeof *st);
    if (!st)
        return -ENOMEM;
    st->dirfd = open(root_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->dirfd < 0) {
        int err = -errno;
        free(st);
        return err;
    }
    char pattern[1024];
    snprintf(pattern, sizeof pattern, "%s*", prefix);
    /* on error the route has already freed st */
    return pier_http_route_ud(srv, PIER_HTTP_GET | PIER_HTTP_HEAD, pattern, handler, st, static_free);
}
