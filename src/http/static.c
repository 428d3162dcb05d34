/* Static files under a root directory.
 *
 * Containment: the decoded path is walked one component at a time with openat() from a
 * descriptor of the root, each with O_NOFOLLOW. A component that is empty, starts with a
 * dot (".", "..", dotfiles) or is a symbolic link is refused, so neither "../", nor its
 * percent-encoded forms (decoded before we get here), nor a link can lead outside. %00
 * never gets here: the decoder refuses it. O_NONBLOCK keeps a FIFO from blocking the loop;
 * only regular files are served.
 *
 * A directory serves its index.html, or else a listing of its visible files.
 *
 * Validators: ETag is size and mtime in nanoseconds; If-None-Match wins over
 * If-Modified-Since (RFC 9110 13.2.2). Ranges: one byte range, honoured through If-Range;
 * several ranges are answered with the whole file, which RFC 9110 14.2 allows.
 */
#include "http/http_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct pier__http_static_s {
    int dirfd;
};

int pier__http_static_new(pier__http_static_t **out, const char *root_dir) {
    pier__http_static_t *st = malloc(sizeof *st);
    if (!st)
        return -ENOMEM;
    st->dirfd = open(root_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->dirfd < 0) {
        int err = -errno;
        free(st);
        return err;
    }
    *out = st;
    return 0;
}

void pier__http_static_free(pier__http_static_t *st) {
    if (st) {
        close(st->dirfd);
        free(st);
    }
}

static int errno_status(int err) { return err == EACCES || err == EPERM ? 403 : (err == EMFILE || err == ENFILE) ? 503 : 404; }

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

static int etag_matches(const char *list, size_t n, const char *etag) {
    /* weak comparison (RFC 9110 13.1.2): "W/" prefixes do not matter */
    size_t el = strlen(etag);
    const char *p = list, *end = list + n;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        if (p < end && *p == '*')
            return 1;
        if (end - p >= 2 && p[0] == 'W' && p[1] == '/')
            p += 2;
        if ((size_t)(end - p) >= el && memcmp(p, etag, el) == 0)
            return 1;
        while (p < end && *p != ',')
            p++;
    }
    return 0;
}

static int not_modified(const pier_http_req_t *req, const struct stat *sb, const char *etag) {
    size_t n;
    const char *inm = pier_http_req_header(req, "If-None-Match", &n);
    if (inm)
        return etag_matches(inm, n, etag);
    const char *ims = pier_http_req_header(req, "If-Modified-Since", &n);
    if (ims) {
        time_t t = pier__http_parse_date(ims, n);
        return t != (time_t)-1 && sb->st_mtime <= t;
    }
    return 0;
}

/* Parses "bytes=a-b", "bytes=a-" or "bytes=-n" against size. Returns 1 with [*from, *to]
 * set, 0 to ignore the field (absent, invalid, several ranges), -1 if unsatisfiable. */
static int parse_range(const char *v, size_t n, uint64_t size, uint64_t *from, uint64_t *to) {
    if (n < 7 || memcmp(v, "bytes=", 6) != 0 || memchr(v, ',', n))
        return 0;
    const char *p = v + 6, *end = v + n;
    uint64_t a = 0, b = 0;
    int have_a = 0, have_b = 0;
    for (; p < end && *p >= '0' && *p <= '9'; p++, have_a = 1) {
        if (a > UINT64_MAX / 10 - 10)
            return 0;
        a = a * 10 + (uint64_t)(*p - '0');
    }
    if (p == end || *p != '-')
        return 0;
    for (p++; p < end && *p >= '0' && *p <= '9'; p++, have_b = 1) {
        if (b > UINT64_MAX / 10 - 10)
            return 0;
        b = b * 10 + (uint64_t)(*p - '0');
    }
    if (p != end || (!have_a && !have_b))
        return 0;
    if (!have_a) { /* suffix: the last b bytes */
        if (b == 0 || size == 0)
            return -1;
        *from = b >= size ? 0 : size - b;
        *to = size - 1;
        return 1;
    }
    if (have_b && b < a)
        return 0;
    if (a >= size)
        return -1;
    *from = a;
    *to = (!have_b || b >= size) ? size - 1 : b;
    return 1;
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

static void redirect_to_dir(const pier_http_req_t *req, pier_http_res_t *res) {
    const pier__http_request_t *r = req->parsed;
    char loc[1024];
    if (r->path_len + 2 > sizeof loc) {
        answer(res, 404);
        return;
    }
    snprintf(loc, sizeof loc, "%.*s/", (int)r->path_len, r->path);
    pier_http_res_header(res, "Location", loc);
    answer(res, 301);
}

/* ---- directory listings, for a directory without index.html ---- */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_str(sbuf_t *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_html(sbuf_t *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': sb_str(b, "&lt;"); break;
        case '>': sb_str(b, "&gt;"); break;
        case '&': sb_str(b, "&amp;"); break;
        case '"': sb_str(b, "&quot;"); break;
        case '\'': sb_str(b, "&#39;"); break;
        default: sb_add(b, s, 1);
        }
    }
}

static void sb_href(sbuf_t *b, const char *s) {
    static const char hexd[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= '0' && *p <= '9') || ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z') || strchr("-._~/", *p)) {
            sb_add(b, (const char *)p, 1);
        } else {
            char e[3] = {'%', hexd[*p >> 4], hexd[*p & 15]};
            sb_add(b, e, 3);
        }
    }
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

#define MAX_LISTED 10000

/* Lists the visible entries: regular files and directories, no dotfiles, no symlinks
 * (they would not be served anyway). */
static void list_dir(const pier_http_req_t *req, pier_http_res_t *res, int fd) {
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        answer(res, 500);
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int truncated = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat sb;
        if (e->d_name[0] == '.' || fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
            !(S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)))
            continue;
        if (n == MAX_LISTED) {
            truncated = 1;
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn)
                break;
            names = nn;
        }
        size_t l = strlen(e->d_name);
        if (!(names[n] = malloc(l + 2)))
            break;
        memcpy(names[n], e->d_name, l + 1);
        if (S_ISDIR(sb.st_mode))
            memcpy(names[n] + l, "/", 2);
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_names);
    const char *path = pier_http_req_path(req);
    sbuf_t b = {0};
    sb_str(&b, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Index of ");
    sb_html(&b, path);
    sb_str(&b, "</title></head>\n<body>\n<h1>Index of ");
    sb_html(&b, path);
    sb_str(&b, "</h1>\n<ul>\n<li><a href=\"../\">../</a></li>\n");
    for (size_t i = 0; i < n; i++) {
        sb_str(&b, "<li><a href=\"");
        sb_href(&b, names[i]);
        sb_str(&b, "\">");
        sb_html(&b, names[i]);
        sb_str(&b, "</a></li>\n");
        free(names[i]);
    }
    free(names);
    sb_str(&b, truncated ? "</ul>\n<p>(listing truncated)</p>\n</body></html>\n" : "</ul>\n</body></html>\n");
    if (b.failed)
        answer(res, 500);
    else
        pier_http_res_send(res, 200, "text/html; charset=utf-8", b.p, b.len);
    free(b.p);
}

void pier__http_static_handler(pier_http_req_t *req, pier_http_res_t *res, void *ud) {
    pier__http_static_t *st = ud;
    const char *rel = pier_http_req_param(req, "*", NULL);
    char name[256];
    int fd = walk(st->dirfd, rel ? rel : "", name, sizeof name);
    if (fd < 0) {
        answer(res, -fd);
        return;
    }
    struct stat sb;
    if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        const char *path = pier_http_req_path(req);
        if (path[strlen(path) - 1] != '/') {
            close(fd);
            redirect_to_dir(req, res);
            return;
        }
        int ifd = openat(fd, "index.html", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        int err = errno;
        if (ifd < 0 && err == ENOENT) {
            list_dir(req, res, fd); /* takes fd */
            return;
        }
        close(fd);
        if (ifd < 0) {
            answer(res, errno_status(err));
            return;
        }
        fd = ifd;
        snprintf(name, sizeof name, "index.html");
        if (fstat(fd, &sb) != 0)
            sb.st_mode = 0;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        answer(res, 404);
        return;
    }
    char etag[64], lastmod[30];
    snprintf(etag, sizeof etag, "\"%" PRIx64 "-%" PRIx64 "\"", (uint64_t)sb.st_size,
             (uint64_t)sb.st_mtim.tv_sec * 1000000000u + (uint64_t)sb.st_mtim.tv_nsec);
    pier__http_date(sb.st_mtime, lastmod);
    pier_http_res_header(res, "ETag", etag);
    pier_http_res_header(res, "Last-Modified", lastmod);
    pier_http_res_header(res, "Accept-Ranges", "bytes");
    const char *mime = pier__http_mime(name);
    if (not_modified(req, &sb, etag)) {
        close(fd);
        pier_http_res_send(res, 304, NULL, NULL, 0);
        return;
    }
    uint64_t size = (uint64_t)sb.st_size, from = 0, to = 0;
    size_t rn;
    const char *range = pier_http_req_header(req, "Range", &rn);
    int r = range && if_range_ok(req, etag, lastmod) ? parse_range(range, rn, size, &from, &to) : 0;
    char cr[96];
    if (r < 0) {
        close(fd);
        snprintf(cr, sizeof cr, "bytes */%" PRIu64, size);
        pier_http_res_header(res, "Content-Range", cr);
        answer(res, 416);
        return;
    }
    if (r > 0) {
        snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, from, to, size);
        pier_http_res_header(res, "Content-Range", cr);
        pier__http_res_sendfile(res, 206, mime, fd, (off_t)from, (size_t)(to - from + 1));
        return;
    }
    pier__http_res_sendfile(res, 200, mime, fd, 0, (size_t)size);
}
