/* libFuzzer target for what the server does with a parsed request before a handler runs:
 * the percent-decoder, the router (exact, ":name", "*", 405 sets) and the HTTP-date
 * parser. Checks that decoding never grows the input nor lets a NUL through, that route
 * parameters lie inside the decoded path, and that dates survive a round trip. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_int.h"

static pier__http_router_t router;
static int ready;

static void h(pier_http_req_t *req, pier_http_res_t *res, void *ud) { (void)req, (void)res, (void)ud; }

static void setup(void) {
    static const struct {
        unsigned m;
        const char *p;
    } routes[] = {
        {PIER_HTTP_GET, "/"},           {PIER_HTTP_GET, "/plaintext"},         {PIER_HTTP_POST, "/echo"},
        {PIER_HTTP_GET, "/users/:id"},  {PIER_HTTP_PUT, "/users/:id/x/:y"},    {PIER_HTTP_GET, "/static/*"},
        {PIER_HTTP_DELETE, "/static/private/*"}, {PIER_HTTP_GET, "/users/me"}, {PIER_HTTP_ANY, "/any/:a/*"},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (pier__http_router_add(&router, routes[i].m, routes[i].p, h, NULL, NULL) != 0)
            abort();
    ready = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ready)
        setup();
    if (size < 1)
        return 0;
    unsigned method = 1u << (data[0] % 8); /* bit 7 is not a route method: never matches */
    data++, size--;
    char *path = malloc(size + 2);
    path[0] = '/';
    int plus = size ? data[0] & 1 : 0;
    ssize_t n = pier__http_pct_decode(path + 1, (const char *)data, size, plus);
    if (n >= 0) {
        if ((size_t)n > size || strlen(path + 1) != (size_t)n)
            abort(); /* never longer, and no NUL inside */
        pier__http_match_t m;
        pier__http_router_match(&router, method, path, &m);
        if (m.route && !(m.allow & method) && !(method == PIER_HTTP_HEAD && (m.allow & PIER_HTTP_GET)))
            abort(); /* a match is for an allowed method */
        for (unsigned i = 0; m.route && i < m.nparams; i++)
            if (m.params[i].value < path || m.params[i].value + m.params[i].len > path + 1 + n)
                abort();
    }
    time_t t = pier__http_parse_date((const char *)data, size);
    if (t != (time_t)-1) {
        char again[30];
        pier__http_date(t, again);
        if (pier__http_parse_date(again, 29) != t)
            abort();
    }
    free(path);
    return 0;
}
