/* Small HTTP helpers: the one percent-decoder, HTTP dates, reason phrases, MIME types. */
#include "http/http_int.h"

#include <string.h>
#include <strings.h>

ssize_t pier__http_pct_decode(char *dst, const char *src, size_t n, int plus_space) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = pier__http_hexval((unsigned char)src[i + 1]), lo = pier__http_hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1; /* a bad escape, or %00 which no path or key may hold */
            c = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        } else if (c == '\0') {
            return -1;
        }
        dst[o++] = c;
    }
    dst[o] = '\0';
    return (ssize_t)o;
}

static const char wdays[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

void pier__http_date(time_t t, char *out) {
    struct tm tm;
    gmtime_r(&t, &tm);
    /* strftime would follow the locale; HTTP dates are always English */
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%s, %02d %s %04d %02d:%02d:%02d GMT", wdays[tm.tm_wday % 7], tm.tm_mday % 32,
             months[tm.tm_mon % 12], (tm.tm_year + 1900) % 10000, tm.tm_hour % 24, tm.tm_min % 60, tm.tm_sec % 61);
    memcpy(out, tmp, 29);
    out[29] = '\0';
}

/* ---- HTTP-date, RFC 9110 5.6.7 ----
 *
 *   IMF-fixdate  = day-name "," SP 2DIGIT SP month SP 4DIGIT SP time-of-day SP "GMT"
 *   rfc850-date  = day-name-l "," SP 2DIGIT "-" month "-" 2DIGIT SP time-of-day SP "GMT"
 *   asctime-date = day-name SP month SP ( 2DIGIT / ( SP DIGIT ) ) SP time-of-day SP 4DIGIT
 *
 * Each form has one exact layout, so each is checked position by position. Names are
 * case-sensitive. The day-name is not checked against the date (a recipient only needs
 * the time). */

static const char *const long_days[7] = {"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                         "Saturday"};

/* n digits at s (spaces first allowed when lead_space): the value, or -1. */
static int num(const char *s, int n, int lead_space) {
    int v = 0, i = 0;
    while (lead_space && i < n - 1 && s[i] == ' ')
        i++;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int month_at(const char *s) {
    for (int i = 0; i < 12; i++)
        if (memcmp(s, months[i], 3) == 0)
            return i;
    return -1;
}

static int short_day_at(const char *s) {
    for (int i = 0; i < 7; i++)
        if (memcmp(s, wdays[i], 3) == 0)
            return 1;
    return 0;
}

typedef struct {
    int year, mon, day, hour, min, sec;
} civil_t;

/* "HH:MM:SS" */
static int time_at(const char *s, civil_t *c) {
    if (s[2] != ':' || s[5] != ':')
        return 0;
    c->hour = num(s, 2, 0);
    c->min = num(s + 3, 2, 0);
    c->sec = num(s + 6, 2, 0);
    return c->hour >= 0 && c->min >= 0 && c->sec >= 0;
}

/* A real time, as seconds since the epoch; -1 if none. */
static time_t civil_time(const civil_t *c) {
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (c->year % 4 == 0 && c->year % 100 != 0) || c->year % 400 == 0;
    if (c->year < 0 || c->mon < 0 || c->day < 1 || c->day > mdays[c->mon] + (c->mon == 1 && leap) ||
        c->hour > 23 || c->min > 59 || c->sec > 60)
        return -1;
    /* a leap second counts as the second before it, so that every date parsed here
     * formats back to itself */
    struct tm tm = {.tm_year = c->year - 1900, .tm_mon = c->mon, .tm_mday = c->day, .tm_hour = c->hour,
                    .tm_min = c->min, .tm_sec = c->sec == 60 ? 59 : c->sec};
    return timegm(&tm);
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
static time_t imf_fixdate(const char *s, size_t n) {
    civil_t c;
    if (n != 29 || !short_day_at(s) || memcmp(s + 3, ", ", 2) != 0 || s[7] != ' ' || s[11] != ' ' ||
        s[16] != ' ' || memcmp(s + 25, " GMT", 4) != 0 || !time_at(s + 17, &c))
        return -1;
    c.day = num(s + 5, 2, 0);
    c.mon = month_at(s + 8);
    c.year = num(s + 12, 4, 0);
    return civil_time(&c);
}

/* Two-digit years: one that would be more than 50 years ahead is the latest past year
 * with those digits (RFC 9110 5.6.7). */
static int full_year(int yy) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    int this_year = tm.tm_year + 1900;
    int y = this_year - this_year % 100 + yy;
    return y > this_year + 50 ? y - 100 : y;
}

/* "Sunday, 06-Nov-94 08:49:37 GMT" */
static time_t rfc850_date(const char *s, size_t n) {
    const char *comma = memchr(s, ',', n);
    size_t dl = comma ? (size_t)(comma - s) : 0;
    int known = 0;
    for (int i = 0; i < 7 && comma; i++)
        known |= strlen(long_days[i]) == dl && memcmp(s, long_days[i], dl) == 0;
    if (!known || n != dl + 24)
        return -1;
    const char *p = comma + 1; /* " 06-Nov-94 08:49:37 GMT" */
    civil_t c;
    if (p[0] != ' ' || p[3] != '-' || p[7] != '-' || p[10] != ' ' || memcmp(p + 19, " GMT", 4) != 0 ||
        !time_at(p + 11, &c))
        return -1;
    c.day = num(p + 1, 2, 0);
    c.mon = month_at(p + 4);
    int yy = num(p + 8, 2, 0);
    if (yy < 0)
        return -1;
    c.year = full_year(yy);
    return civil_time(&c);
}

/* "Sun Nov  6 08:49:37 1994" */
static time_t asctime_date(const char *s, size_t n) {
    civil_t c;
    if (n != 24 || !short_day_at(s) || s[3] != ' ' || s[7] != ' ' || s[10] != ' ' || s[19] != ' ' ||
        !time_at(s + 11, &c))
        return -1;
    c.mon = month_at(s + 4);
    c.day = num(s + 8, 2, 1);
    c.year = num(s + 20, 4, 0);
    return civil_time(&c);
}

time_t pier__http_parse_date(const char *s, size_t n) {
    if (n >= 4 && s[3] == ',')
        return imf_fixdate(s, n);
    if (n >= 4 && s[3] == ' ')
        return asctime_date(s, n);
    return rfc850_date(s, n);
}

const char *pier__http_mime(const char *name) {
    static const struct {
        const char *ext, *type;
    } types[] = {
        {"html", "text/html; charset=utf-8"},
        {"htm", "text/html; charset=utf-8"},
        {"css", "text/css; charset=utf-8"},
        {"js", "text/javascript; charset=utf-8"},
        {"mjs", "text/javascript; charset=utf-8"},
        {"json", "application/json"},
        {"txt", "text/plain; charset=utf-8"},
        {"md", "text/markdown; charset=utf-8"},
        {"c", "text/plain; charset=utf-8"},
        {"h", "text/plain; charset=utf-8"},
        {"py", "text/plain; charset=utf-8"},
        {"sh", "text/plain; charset=utf-8"},
        {"lua", "text/plain; charset=utf-8"},
        {"cmake", "text/plain; charset=utf-8"},
        {"in", "text/plain; charset=utf-8"},
        {"log", "text/plain; charset=utf-8"},
        {"csv", "text/csv; charset=utf-8"},
        {"yml", "text/plain; charset=utf-8"},
        {"yaml", "text/plain; charset=utf-8"},
        {"toml", "text/plain; charset=utf-8"},
        {"xml", "application/xml"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},
        {"gif", "image/gif"},
        {"webp", "image/webp"},
        {"ico", "image/x-icon"},
        {"wasm", "application/wasm"},
        {"pdf", "application/pdf"},
        {"zip", "application/zip"},
        {"gz", "application/gzip"},
        {"woff", "font/woff"},
        {"woff2", "font/woff2"},
        {"mp4", "video/mp4"},
        {"webm", "video/webm"},
        {"mp3", "audio/mpeg"},
    };
    const char *dot = strrchr(name, '.');
    const char *slash = strrchr(name, '/');
    if (dot && (!slash || dot > slash)) {
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (!strcasecmp(dot + 1, types[i].ext))
                return types[i].type;
    }
    return "application/octet-stream";
}

const char *pier_http_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
