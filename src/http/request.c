/* What a handler can ask of its request. Everything points into the connection's input
 * or the loop's per-request state, valid for the whole handler call. */
#include "http/http_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

unsigned pier_http_req_method(const pier_http_req_t *req) { return req->parsed->method; }

const char *pier_http_req_method_name(const pier_http_req_t *req) {
    const char *n = pier__http_method_name(req->parsed->method);
    return n ? n : "OTHER";
}

const char *pier_http_req_path(const pier_http_req_t *req) { return req->path; }

const char *pier_http_req_raw_path(const pier_http_req_t *req, size_t *len) {
    if (len)
        *len = req->parsed->path_len;
    return req->parsed->path;
}

const char *pier_http_req_query_string(const pier_http_req_t *req, size_t *len) {
    if (len)
        *len = req->parsed->query_len;
    return req->parsed->query;
}

const char *pier_http_req_header(const pier_http_req_t *req, const char *name, size_t *len) {
    const pier__http_field_t *f = pier__http_find_field(req->parsed, name, strlen(name));
    if (len)
        *len = f ? f->value_len : 0;
    return f ? f->value : NULL;
}

const char *pier_http_req_param(const pier_http_req_t *req, const char *name, size_t *len) {
    size_t nl = strlen(name);
    for (unsigned i = 0; i < req->match->nparams; i++) {
        const char *pn = req->match->params[i].name;
        int same = pn[0] == '*' ? (nl == 1 && name[0] == '*')
                                : (strncmp(pn, name, nl) == 0 && (pn[nl] == '/' || pn[nl] == '\0'));
        if (same) {
            if (len)
                *len = req->match->params[i].len;
            return req->match->params[i].value;
        }
    }
    return NULL;
}

/* Decodes the value v[0, vl) into buf of size bytes: its length, -ENOSPC or -EINVAL. */
static int decode_value(const char *v, size_t vl, char *buf, size_t size) {
    if (vl + 1 <= size) {
        ssize_t dv = pier__http_pct_decode(buf, v, vl, 1);
        return dv < 0 ? -EINVAL : (int)dv;
    }
    /* the decoded value may be shorter: decode into scratch to know */
    char *tmp = malloc(vl + 1);
    if (!tmp)
        return -ENOMEM;
    ssize_t dv = pier__http_pct_decode(tmp, v, vl, 1);
    int rc = dv < 0 ? -EINVAL : (size_t)dv + 1 > size ? -ENOSPC : (int)dv;
    if (rc >= 0)
        memcpy(buf, tmp, (size_t)dv + 1);
    free(tmp);
    return rc;
}

int pier_http_req_query(const pier_http_req_t *req, const char *key, char *buf, size_t size) {
    const char *q = req->parsed->query, *end = q ? q + req->parsed->query_len : NULL;
    size_t kl = strlen(key);
    char kbuf[256];
    while (q && q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        const char *ke = eq ? eq : pe;
        size_t raw = (size_t)(ke - q);
        if (raw < sizeof kbuf) {
            ssize_t dk = pier__http_pct_decode(kbuf, q, raw, 1);
            if (dk == (ssize_t)kl && memcmp(kbuf, key, kl) == 0) {
                const char *v = eq ? eq + 1 : pe;
                return decode_value(v, (size_t)(pe - v), buf, size);
            }
        }
        q = amp ? amp + 1 : end;
    }
    return -ENOENT;
}

const void *pier_http_req_body(const pier_http_req_t *req, size_t *len) {
    if (len)
        *len = req->body_len;
    return req->body;
}

int pier_http_req_minor(const pier_http_req_t *req) { return req->parsed->minor; }

pier_id_t pier_http_req_conn_id(const pier_http_req_t *req) { return req->id; }
