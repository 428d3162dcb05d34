#!/usr/bin/env python3
"""pier http against raw bytes: what RFC 9112/9110 say a server must accept, and what it
must refuse with the right status and a closed connection (no smuggling)."""
import os
import sys

from pierlib import HttpServer, Reader, check, exchange, finish

srv = HttpServer("--max-body", "1000")

OK = b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n"


def expect(raw, status, closes, what):
    resp, r = exchange(srv, raw)
    if not check(resp is not None, "%s: got a response" % what):
        return None
    check(resp.status == status, "%s: status %d, got %d" % (what, status, resp.status))
    if closes:
        check(resp.header("connection") == "close", "%s: says Connection: close" % what)
        check(r.closed(), "%s: connection closed after the error" % what)
    r.sock.close()
    return resp


# ---- accepted ----
resp = expect(OK, 200, False, "plain GET")
check(resp.body == b"Hello, World!", "plaintext body")
check(resp.header("content-type") == "text/plain", "plaintext type")
check(resp.header("server") == "pier", "Server header")
check(resp.header("date") is not None and resp.header("date").endswith(" GMT"), "Date header")
resp = expect(b"GET /json HTTP/1.1\r\nHost: a\r\n\r\n", 200, False, "json")
check(resp.body == b'{"message":"Hello, World!"}', "json body")
check(resp.header("content-type") == "application/json", "json type")
expect(b"\r\nGET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", 200, False, "leading empty line")
expect(b"GET http://example.com/plaintext HTTP/1.1\r\nHost: a\r\n\r\n", 200, False, "absolute-form")
expect(b"GET /plaintext?x=1 HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xc3\xa9\r\n\r\n", 200, False, "obs-text value")
resp = expect(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200, False, "home page")
check(b"<h1>pier http</h1>" in resp.body and resp.header("content-type").startswith("text/html"), "home is html")

# HEAD: same head as GET, no body
resp, r = exchange(srv, b"HEAD /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", head_request=True)
check(resp.status == 200 and resp.header("content-length") == "13" and resp.body == b"", "HEAD has length, no body")
r.sock.sendall(OK)
nxt = r.response()
check(nxt is not None and nxt.body == b"Hello, World!", "the connection goes on after HEAD (no stray body)")
r.sock.close()

# HTTP/1.0: closes unless keep-alive was asked for
resp, r = exchange(srv, b"GET /plaintext HTTP/1.0\r\n\r\n")
check(resp.status == 200 and resp.header("connection") == "close" and r.closed(), "1.0 closes by default")
r.sock.close()
resp, r = exchange(srv, b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
check(resp.header("connection") == "keep-alive" and not r.closed(0.3), "1.0 keep-alive stays open")
r.sock.close()
resp, r = exchange(srv, b"GET /plaintext HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
check(resp.status == 200 and r.closed(), "1.1 Connection: close closes")
r.sock.close()

# bodies
resp = expect(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: text/x-t\r\nContent-Length: 5\r\n\r\nhello",
              200, False, "POST with Content-Length")
check(resp.body == b"hello" and resp.header("content-type") == "text/x-t", "echo body and type")
resp = expect(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", 200, False, "chunked body")
check(resp.body == b"hello world", "chunked body decoded: %r" % resp.body)
resp = expect(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 200, False, "empty body")
check(resp.body == b"", "empty echo")

# Expect: 100-continue: the interim answer comes before the body is sent
s = srv.connect()
s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
r = Reader(s)
cont = r.response()
check(cont is not None and cont.status == 100, "100 Continue before the body")
s.sendall(b"data")
resp = r.response()
check(resp is not None and resp.status == 200 and resp.body == b"data", "body after 100")
s.close()
resp = expect(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
              413, True, "too large with Expect: refused before the body")

# ---- refused: 400 ----
bad400 = [
    (b"GET /plaintext HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
    (b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", "bare CR in a value"),
    (b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", "NUL in a value"),
    (b"GET /plain\x00text HTTP/1.1\r\nHost: a\r\n\r\n", "NUL in the target"),
    (b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", "control character"),
    (b"GET /plaintext HTTP/1.1\r\nHost : a\r\n\r\n", "space before colon"),
    (b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", "obs-fold"),
    (b"GET /plaintext HTTP/1.1\r\n Host: a\r\n\r\n", "space before the first field"),
    (b"GET /plaintext HTTP/1.1\r\n\r\n", "missing Host"),
    (b"GET /plaintext HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two Hosts"),
    (b"GET /plaintext HTTP/1.1\r\nHost: a b\r\n\r\n", "bad Host"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "CL and TE"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc", "invalid CL"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "conflicting CL"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", "negative CL"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "chunked not last"),
    (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "TE in HTTP/1.0"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcde\r\n0\r\n\r\n", "chunk overrun"),
    (b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", "bad percent escape"),
    (b"GET /plaintext%00 HTTP/1.1\r\nHost: a\r\n\r\n", "encoded NUL"),
    (b"GET plaintext HTTP/1.1\r\nHost: a\r\n\r\n", "relative target"),
    (b"GET  /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", "two spaces"),
    (b"GET /plaintext http/1.1\r\nHost: a\r\n\r\n", "lower-case version"),
]
for raw, what in bad400:
    expect(raw, 400, True, what)

# ---- other refusals ----
expect(b"GET /plaintext HTTP/2.0\r\nHost: a\r\n\r\n", 505, True, "HTTP/2.0")
expect(b"GET /plaintext HTTP/0.9\r\n\r\n", 505, True, "HTTP/0.9")
expect(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, True, "unknown coding")
expect(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, True, "long target")
expect(b"GET /plaintext HTTP/1.1\r\nHost: a\r\nBig: " + b"b" * 9000 + b"\r\n\r\n", 431, True, "big head")
expect(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001, 413, True, "big body")
expect(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" + b"x" * 1001 + b"\r\n0\r\n\r\n",
       413, True, "big chunked body")
expect(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417, True, "bad expectation")

# routing: 404, 405 with Allow, 501 for an unknown method; these keep the connection
resp = expect(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", 404, False, "unknown path")
resp = expect(b"DELETE /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", 405, False, "wrong method")
check(resp is not None and resp.header("allow") == "GET, HEAD", "Allow lists GET, HEAD: %r" % (resp and resp.header("allow")))
resp = expect(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n", 405, False, "GET on a POST route")
check(resp is not None and resp.header("allow") == "POST", "Allow: POST")
expect(b"BREW /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", 501, False, "unknown method")

# OPTIONS * asks about the server itself (RFC 9110 9.3.7): 200, the methods it serves, no body
resp, r = exchange(srv, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
allow = [m.strip() for m in (resp.header("allow") or "").split(",")] if resp else []
check(resp is not None and resp.status == 200, "OPTIONS *: 200 (%r)" % resp)
check(resp is not None and resp.header("content-length") == "0" and resp.body == b"", "OPTIONS *: Content-Length: 0")
check(all(m in allow for m in ("GET", "HEAD", "POST", "OPTIONS")), "OPTIONS *: Allow lists the methods (%r)" % allow)
check(not set(allow) & {"TRACE", "CONNECT", ""}, "OPTIONS *: Allow names no method it refuses (%r)" % allow)
r.sock.sendall(OK)
nxt = r.response()
check(nxt is not None and nxt.body == b"Hello, World!", "the connection goes on after OPTIONS *")
r.sock.close()
expect(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, True, "* with another method")

# ---- smuggling: a second request hidden in a body must never be answered ----
for raw, what in [
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /json HTTP/1.1\r\nHost: a\r\n\r\n", "CL.TE"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
     b"0\r\n\r\nGET /json HTTP/1.1\r\nHost: a\r\n\r\n", "TE.TE"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n"
     b"0\r\n\r\nGET /json HTTP/1.1\r\nHost: a\r\n\r\n", "TE with space"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 36\r\n\r\n"
     b"helloGET /json HTTP/1.1\r\nHost: a\r\n\r\n", "CL.CL"),
]:
    resp, r = exchange(srv, raw)
    check(resp is not None and resp.status in (400, 501), "%s refused (%r)" % (what, resp))
    check(r.closed(), "%s: closed" % what)
    check(r.response() is None, "%s: no second response" % what)
    r.sock.close()

check(srv.alive(), "server still running")
srv.stop()
finish("test_http_rules")
