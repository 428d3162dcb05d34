/* Routes by method and decoded path: exact segments, ":name" segments and a final "*".
 *
 * Few routes are expected (tens), so matching is a scan that ranks the candidates: an
 * exact path beats one with parameters, which beats a wildcard, and a longer wildcard
 * prefix beats a shorter one. A path that some route knows but not for this method
 * collects those methods for the 405 Allow field. */
#include "http/http_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { SEG_LIT, SEG_PARAM, SEG_STAR };

typedef struct {
    int kind;
    const char *s; /* into pattern: the literal, or the name after ':' */
    size_t len;
} seg_t;

struct pier__http_route_s {
    unsigned methods;
    pier_http_handler_cb handler;
    void *ud;
    void (*ud_free)(void *ud);
    char *pattern;
    unsigned nseg;
    int rank;       /* 0 exact, 1 params, 2 wildcard */
    unsigned lits;  /* literal segments, to prefer the longest wildcard prefix */
    seg_t seg[];
};

static int split(const char *pattern, seg_t *out, unsigned max) {
    unsigned n = 0;
    const char *p = pattern + 1;
    for (;;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (n == max)
            return -1;
        seg_t *s = &out[n++];
        if (len == 1 && p[0] == '*') {
            if (e)
                return -1; /* "*" only at the end */
            *s = (seg_t){SEG_STAR, p, 1};
        } else if (len > 0 && p[0] == ':') {
            if (len == 1)
                return -1;
            *s = (seg_t){SEG_PARAM, p + 1, len - 1};
        } else {
            if (memchr(p, '*', len) || memchr(p, ':', len))
                return -1;
            *s = (seg_t){SEG_LIT, p, len};
        }
        if (!e)
            return (int)n;
        p = e + 1;
    }
}

int pier__http_router_add(pier__http_router_t *r, unsigned methods, const char *pattern,
                          pier_http_handler_cb handler, void *ud, void (*ud_free)(void *ud)) {
    seg_t segs[64];
    if (!pattern || pattern[0] != '/' || !handler || !methods || (methods & ~(unsigned)PIER_HTTP_ANY))
        return -EINVAL;
    int n = split(pattern, segs, 64);
    if (n < 0)
        return -EINVAL;
    unsigned params = 0;
    for (int i = 0; i < n; i++)
        params += segs[i].kind == SEG_PARAM;
    if (params > PIER__HTTP_MAX_PARAMS)
        return -EINVAL;
    for (unsigned i = 0; i < r->n; i++)
        if (!strcmp(r->routes[i]->pattern, pattern) && (r->routes[i]->methods & methods))
            return -EEXIST;
    if (r->n == r->cap) {
        unsigned cap = r->cap ? r->cap * 2 : 8;
        pier__http_route_t **nr = realloc(r->routes, cap * sizeof *nr);
        if (!nr)
            return -ENOMEM;
        r->routes = nr;
        r->cap = cap;
    }
    pier__http_route_t *rt = calloc(1, sizeof *rt + (size_t)n * sizeof(seg_t));
    char *copy = strdup(pattern);
    if (!rt || !copy) {
        free(rt);
        free(copy);
        return -ENOMEM;
    }
    n = split(copy, rt->seg, 64); /* again, so the segments point into our copy */
    rt->methods = methods;
    rt->handler = handler;
    rt->ud = ud;
    rt->ud_free = ud_free;
    rt->pattern = copy;
    rt->nseg = (unsigned)n;
    rt->rank = 0;
    for (int i = 0; i < n; i++) {
        if (rt->seg[i].kind == SEG_STAR)
            rt->rank = 2;
        else if (rt->seg[i].kind == SEG_PARAM && rt->rank < 1)
            rt->rank = 1;
        else if (rt->seg[i].kind == SEG_LIT)
            rt->lits++;
    }
    r->routes[r->n++] = rt;
    return 0;
}

/* Matches path against rt, filling m's params when m is not NULL. */
static int match_route(const pier__http_route_t *rt, const char *path, pier__http_match_t *m) {
    const char *p = path + 1;
    unsigned np = 0;
    for (unsigned i = 0; i < rt->nseg; i++) {
        const seg_t *s = &rt->seg[i];
        if (s->kind == SEG_STAR) {
            if (!p)
                return 0; /* "/files" is not under "/files/" */
            if (m) {
                m->params[np].name = "*";
                m->params[np].value = p;
                m->params[np].len = strlen(p);
                np++;
            }
            break;
        }
        if (!p)
            return 0; /* the path has fewer segments */
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (s->kind == SEG_LIT ? (len != s->len || memcmp(p, s->s, len) != 0) : len == 0)
            return 0;
        if (s->kind == SEG_PARAM && m) {
            m->params[np].name = s->s; /* not NUL-terminated: compared with its length */
            m->params[np].value = p;
            m->params[np].len = len;
            np++;
        }
        p = e ? e + 1 : NULL;
        if (i + 1 == rt->nseg && p)
            return 0; /* the path has more segments */
    }
    if (m)
        m->nparams = np;
    return 1;
}

static int better(const pier__http_route_t *a, const pier__http_route_t *b) {
    if (!b)
        return 1;
    if (a->rank != b->rank)
        return a->rank < b->rank;
    return a->lits > b->lits;
}

void pier__http_router_match(const pier__http_router_t *r, unsigned method, const char *path,
                             pier__http_match_t *m) {
    const pier__http_route_t *best = NULL;
    unsigned want = method == PIER_HTTP_HEAD ? (PIER_HTTP_HEAD | PIER_HTTP_GET) : method;
    m->route = NULL;
    m->allow = 0;
    m->nparams = 0;
    for (unsigned i = 0; i < r->n; i++) {
        const pier__http_route_t *rt = r->routes[i];
        if (!match_route(rt, path, NULL))
            continue;
        m->allow |= rt->methods;
        if ((rt->methods & want) && better(rt, best))
            best = rt;
    }
    if (m->allow & PIER_HTTP_GET)
        m->allow |= PIER_HTTP_HEAD;
    if (best) {
        m->route = best;
        match_route(best, path, m);
    }
}

pier_http_handler_cb pier__http_route_handler(const pier__http_route_t *rt, void **ud) {
    *ud = rt->ud;
    return rt->handler;
}

unsigned pier__http_router_methods(const pier__http_router_t *r) {
    unsigned m = 0;
    for (unsigned i = 0; i < r->n; i++)
        m |= r->routes[i]->methods;
    return m & PIER_HTTP_GET ? m | PIER_HTTP_HEAD : m;
}

void pier__http_router_free(pier__http_router_t *r) {
    for (unsigned i = 0; i < r->n; i++) {
        if (r->routes[i]->ud_free)
            r->routes[i]->ud_free(r->routes[i]->ud);
        free(r->routes[i]->pattern);
        free(r->routes[i]);
    }
    free(r->routes);
    r->routes = NULL;
    r->n = r->cap = 0;
}
