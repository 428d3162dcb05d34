#!/usr/bin/env python3
"""pier http static files: types, validators and 304 (every HTTP-date form, If-None-Match
lists), single ranges (206/416) and several (multipart/byteranges), index.html
or a listing, and traversal attempts (../ and its encodings, %00, symlinks, dotfiles) that must never
reach a file outside --root."""
import email.parser
import email.policy
import email.utils
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from pierlib import HttpServer, check, exchange, finish, request

base = tempfile.mkdtemp(prefix="pier-http-static-")
root = os.path.join(base, "root")
os.makedirs(os.path.join(root, "dir", "deeper"))
os.makedirs(os.path.join(root, "noindex"))
SECRET = b"TOP SECRET outside the root\n"
with open(os.path.join(base, "secret.txt"), "wb") as f:
    f.write(SECRET)
files = {
    "index.html": b"<p>root index</p>\n",
    "a.txt": b"0123456789abcdefghij",
    "style.css": b"body{}",
    "app.js": b"let x = 1;",
    "data.json": b"{}",
    "pic.png": b"\x89PNG....",
    "blob.unknownext": b"??",
    "dir/index.html": b"<p>dir index</p>\n",
    "dir/deeper/file with space.txt": b"spaced",
    ".hidden": b"dotfile",
    "empty.txt": b"",
}
for name, data in files.items():
    with open(os.path.join(root, name), "wb") as f:
        f.write(data)
for name, data in [("noindex/a <b>&.txt", b"listed"), ("noindex/.secret", b"x")]:
    with open(os.path.join(root, name), "wb") as f:
        f.write(data)
os.makedirs(os.path.join(root, "noindex", "sub"))
os.symlink(os.path.join(base, "secret.txt"), os.path.join(root, "noindex", "outlink"))
os.symlink(os.path.join(base, "secret.txt"), os.path.join(root, "link-out.txt"))
os.symlink(base, os.path.join(root, "linkdir"))
os.symlink("a.txt", os.path.join(root, "link-in.txt"))
os.mkfifo(os.path.join(root, "fifo"))

srv = HttpServer("--root", root)


def get(path, headers=None, method="GET"):
    return request(srv, method, path, headers)


# ---- types and bodies ----
for name, ctype in [("a.txt", "text/plain; charset=utf-8"), ("style.css", "text/css; charset=utf-8"),
                    ("app.js", "text/javascript; charset=utf-8"), ("data.json", "application/json"),
                    ("pic.png", "image/png"), ("blob.unknownext", "application/octet-stream"),
                    ("index.html", "text/html; charset=utf-8")]:
    r = get("/static/" + name)
    check(r.status == 200 and r.body == files[name], "%s served whole" % name)
    check(r.header("content-type") == ctype, "%s is %s (got %s)" % (name, ctype, r.header("content-type")))
r = get("/static/empty.txt")
check(r.status == 200 and r.body == b"" and r.header("content-length") == "0", "empty file")
r = get("/static/dir/deeper/file%20with%20space.txt")
check(r.status == 200 and r.body == b"spaced", "percent-encoded name")
r = get("/static/a.txt", method="HEAD")
check(r.status == 200 and r.body == b"" and r.header("content-length") == "20", "HEAD on a file")

# ---- directories ----
r = get("/static/")
check(r.status == 200 and r.body == files["index.html"], "root index.html")
r = get("/static/dir/")
check(r.status == 200 and r.body == files["dir/index.html"], "dir/index.html")
r = get("/static/dir")
check(r.status == 301 and r.header("location") == "/static/dir/", "directory without slash redirects")
r = get("/static")
check(r.status == 404, "the prefix without its slash is not under it (and does not crash)")
r = get("/static/noindex/")
check(r.status == 200 and r.header("content-type").startswith("text/html"), "directory without index.html is listed")
body = r.body.decode()
check('<a href="a%20%3Cb%3E%26.txt">a &lt;b&gt;&amp;.txt</a>' in body, "listed name escaped, link encoded: %s" % body)
check('<a href="sub/">sub/</a>' in body, "subdirectory listed with a slash")
check(".secret" not in body and "outlink" not in body, "dotfiles and symlinks not listed")
check(body.index("a%20") < body.index("sub/"), "listing sorted")
r = get("/static/noindex/a%20%3Cb%3E%26.txt")
check(r.status == 200 and r.body == b"listed", "a listed file is served by its link")
r = get("/static/nope.txt")
check(r.status == 404, "missing file is 404")

# ---- validators ----
r = get("/static/a.txt")
etag, lastmod = r.header("etag"), r.header("last-modified")
check(etag is not None and etag.startswith('"'), "ETag present")
check(lastmod is not None and lastmod.endswith("GMT"), "Last-Modified present")
check(r.header("accept-ranges") == "bytes", "Accept-Ranges: bytes")
r = get("/static/a.txt", {"If-None-Match": etag})
check(r.status == 304 and r.body == b"" and r.header("etag") == etag, "If-None-Match match: 304")
r = get("/static/a.txt", {"If-None-Match": '"other", W/' + etag})
check(r.status == 304, "If-None-Match list with a weak match: 304")
r = get("/static/a.txt", {"If-None-Match": "*"})
check(r.status == 304, "If-None-Match *: 304")
r = get("/static/a.txt", {"If-None-Match": '"nope"'})
check(r.status == 200 and r.body == files["a.txt"], "If-None-Match mismatch: 200")
r = get("/static/a.txt", {"If-Modified-Since": lastmod})
check(r.status == 304, "If-Modified-Since equal: 304")
r = get("/static/a.txt", {"If-Modified-Since": "Mon, 01 Jan 1990 00:00:00 GMT"})
check(r.status == 200, "If-Modified-Since old: 200")
r = get("/static/a.txt", {"If-Modified-Since": "garbage"})
check(r.status == 200, "If-Modified-Since invalid: ignored")
r = get("/static/a.txt", {"If-None-Match": '"nope"', "If-Modified-Since": lastmod})
check(r.status == 200, "If-None-Match wins over If-Modified-Since")
# a change of the file changes the ETag
time.sleep(0.01)
with open(os.path.join(root, "a.txt"), "ab") as f:
    f.write(b"!")
files["a.txt"] += b"!"
r = get("/static/a.txt", {"If-None-Match": etag})
check(r.status == 200 and r.header("etag") != etag and r.body == files["a.txt"], "modified file: new ETag, 200")
etag = r.header("etag")
lastmod = r.header("last-modified")

# If-None-Match is a list of entity-tags compared weakly, or "*" alone (RFC 9110 13.1.2):
# a tag that only starts the field, or a malformed list, is no match
for value, status, what in [
        (etag, 304, "the tag itself"),
        (etag + "junk", 200, "the tag followed by junk"),
        (etag + "," + etag[:-1], 200, "the tag, then an unterminated one"),
        (etag[:-1] + 'x"', 200, "a longer tag that starts the same"),
        ('"x",' + etag, 304, "second in a list"),
        ('"x" , W/' + etag + " ,", 304, "spaces, a weak prefix and an empty element"),
        ("w/" + etag, 200, "a lower-case w/ is no weak prefix"),
        ('"x", *', 200, "* inside a list"),
        ('"a,b", ' + etag, 304, "a comma inside a tag")]:
    r = get("/static/a.txt", {"If-None-Match": value})
    check(r.status == status, "If-None-Match %s (%r): %d, got %d" % (what, value, status, r.status))

# If-Modified-Since in all three HTTP-date forms (RFC 9110 5.6.7); invalid dates ignored
t = email.utils.parsedate_to_datetime(lastmod)
rfc850 = t.strftime("%A, %d-%b-%y %H:%M:%S GMT")
asctime = t.strftime("%a %b ") + ("%2d" % t.day) + t.strftime(" %H:%M:%S %Y")
for value, status, what in [
        (lastmod, 304, "IMF-fixdate"),
        (rfc850, 304, "rfc850-date"),
        (asctime, 304, "asctime-date"),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 200, "an old rfc850-date"),
        ("Sun Nov  6 08:49:37 1994", 200, "an old asctime-date"),
        ("Sat, 31 Feb 2099 00:00:00 GMT", 200, "February 31st (invalid, ignored)"),
        ("Sat, 01 Jan 2099 24:00:00 GMT", 200, "hour 24 (invalid, ignored)"),
        ("Thu, 01 Jan 2099 00:00:00 GMTx", 200, "trailing junk (invalid, ignored)"),
        ("Thu, 01 Jan 2099 00:00:00 UTC", 200, "not GMT (invalid, ignored)"),
        ("Thu Jan  1 00:00:00 2099 junk", 200, "asctime with junk (invalid, ignored)"),
        ("Thursday, 01-Jan-99 00:00:00 GMTjunk", 200, "rfc850 with junk (invalid, ignored)")]:
    r = get("/static/a.txt", {"If-Modified-Since": value})
    check(r.status == status, "If-Modified-Since %s (%r): %d, got %d" % (what, value, status, r.status))

# ---- ranges ----
size = len(files["a.txt"])
for spec, lo, hi in [("bytes=0-4", 0, 4), ("bytes=5-", 5, size - 1), ("bytes=-3", size - 3, size - 1),
                     ("bytes=10-1000", 10, size - 1), ("bytes=-1000", 0, size - 1)]:
    r = get("/static/a.txt", {"Range": spec})
    check(r.status == 206 and r.body == files["a.txt"][lo:hi + 1], "%s: 206 with the right bytes (%r)" % (spec, r))
    check(r.header("content-range") == "bytes %d-%d/%d" % (lo, hi, size), "%s: Content-Range" % spec)
for spec in ["bytes=%d-" % size, "bytes=1000-2000", "bytes=-0"]:
    r = get("/static/a.txt", {"Range": spec})
    check(r.status == 416 and r.header("content-range") == "bytes */%d" % size, "%s: 416" % spec)
for spec in ["items=0-1", "bytes=5-2", "bytes=x-y", "bytes=0-1,,x", "bytes=0-1;3-4"]:
    r = get("/static/a.txt", {"Range": spec})
    check(r.status == 200 and r.body == files["a.txt"], "%s: ignored, whole file" % spec)
r = get("/static/a.txt", {"Range": "bytes=0-1", "If-Range": etag})
check(r.status == 206 and r.body == files["a.txt"][:2], "If-Range with the current ETag: 206")
r = get("/static/a.txt", {"Range": "bytes=0-1", "If-Range": '"stale"'})
check(r.status == 200 and r.body == files["a.txt"], "If-Range with an old ETag: whole file")

# ---- several ranges: 206 multipart/byteranges (RFC 9110 14.6), parts in request order ----
data = files["a.txt"]
size = len(data)


def parts_of(r):
    """[(content-range, bytes)] of a multipart/byteranges response, checked on the way."""
    ctype = r.header("content-type") or ""
    m = re.match(r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})$", ctype)
    if not check(m is not None, "multipart content type (%r)" % ctype):
        return []
    check(int(r.header("content-length")) == len(r.body), "Content-Length is the body's length")
    delim = b"--" + m.group(1).encode()
    body = r.body
    check(body.startswith(delim + b"\r\n") and body.endswith(b"\r\n" + delim + b"--\r\n"), "framing %r" % body[:80])
    out = []
    for chunk in body[len(delim) + 2:-(len(delim) + 6)].split(b"\r\n" + delim + b"\r\n"):
        head, _, payload = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        check(fields.get(b"Content-Type") == b"text/plain; charset=utf-8", "part type %r" % fields)
        out.append((fields.get(b"Content-Range", b"").decode(), payload))
    return out


def want(*spans):
    return [("bytes %d-%d/%d" % (a, b, size), data[a:b + 1]) for a, b in spans]


for spec, spans in [("bytes=0-1,5-6", [(0, 1), (5, 6)]),
                    ("bytes=5-6, 0-1", [(5, 6), (0, 1)]),
                    ("bytes=0-1,3-", [(0, 1), (3, size - 1)]),
                    ("bytes=-2,0-0", [(size - 2, size - 1), (0, 0)]),
                    ("bytes=0-1,2-3", [(0, 1), (2, 3)]),
                    ("bytes=0-0,100-200,4-4", [(0, 0), (4, 4)]),
                    ("bytes=" + ",".join("%d-%d" % (i, i) for i in range(16)), [(i, i) for i in range(16)])]:
    r = get("/static/a.txt", {"Range": spec})
    check(r.status == 206, "%s: 206 (got %d)" % (spec, r.status))
    got = parts_of(r) if r.status == 206 else []
    check(got == want(*spans), "%s: the parts (%r)" % (spec, got[:3]))
r = get("/static/a.txt", {"Range": "bytes=0-1,100-200"})
check(r.status == 206 and r.body == data[0:2] and r.header("content-range") == "bytes 0-1/%d" % size,
      "one satisfiable range of two: a single-part 206 (%r)" % r)
r = get("/static/a.txt", {"Range": "bytes=100-200,300-"})
check(r.status == 416 and r.header("content-range") == "bytes */%d" % size, "no satisfiable range: 416")
# amplification: overlapping ranges, or more than 16, get the file once
for spec, what in [("bytes=0-5,3-8", "overlapping ranges"), ("bytes=" + ",".join(["0-"] * 50), "50 times the whole file"),
                   ("bytes=-5,10-", "a suffix overlapping an open range"),
                   ("bytes=" + ",".join("%d-%d" % (i, i) for i in range(17)), "17 ranges")]:
    r = get("/static/a.txt", {"Range": spec})
    check(r.status == 200 and r.body == data, "%s: the whole file once (got %d)" % (what, r.status))
r = get("/static/a.txt", {"Range": "bytes=0-1,5-6"}, method="HEAD")
check(r.status == 206 and r.body == b"" and r.header("content-type").startswith("multipart/byteranges"),
      "HEAD with ranges: 206, no body")
conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
conn.request("GET", "/static/a.txt", headers={"Range": "bytes=0-1,5-6"})
resp = conn.getresponse()
raw = resp.read()
msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
    b"Content-Type: " + resp.getheader("Content-Type").encode() + b"\r\n\r\n" + raw)
got = [(p["Content-Range"], p.get_payload(decode=True)) for p in msg.iter_parts()] if msg.is_multipart() else []
check(resp.status == 206 and got == want((0, 1), (5, 6)), "http.client and the email parser read the parts (%r)" % got)
conn.close()

# ---- an encoded slash is no separator in a file path ----
for path in ["/static/dir%2Findex.html", "/static/dir%2findex.html", "/static/dir/deeper%2Ffile%20with%20space.txt"]:
    r = get(path)
    check(r.status == 404, "%s: 404 (got %d)" % (path, r.status))

# ---- traversal: nothing outside the root, ever ----
attempts = [
    "/static/../secret.txt", "/static/..%2fsecret.txt", "/static/%2e%2e/secret.txt",
    "/static/%2e%2e%2fsecret.txt", "/static/%2E%2E%2Fsecret.txt", "/static/dir/../../secret.txt",
    "/static/dir/%2e%2e/%2e%2e/secret.txt", "/static/./a.txt", "/static/%2e/a.txt",
    "/static/..%5csecret.txt", "/static/a.txt%00.png", "/static/%00", "/static/link-out.txt",
    "/static/linkdir/secret.txt", "/static/link-in.txt", "/static/.hidden", "/static/%2ehidden",
    "/static//etc/passwd", "/static/dir//index.html", "/static/fifo",
    "http://127.0.0.1/static/../secret.txt",
]
for path in attempts:
    resp, rd = exchange(srv, ("GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path).encode())
    rd.sock.close()
    check(resp is not None and resp.status in (400, 403, 404), "%s refused (got %s)" % (path, resp and resp.status))
    check(resp is None or SECRET not in resp.body, "%s does not leak the secret" % path)
# the server is still answering (the FIFO open did not block the loop)
check(get("/static/a.txt").status == 200, "still serving after traversal attempts")

# ---- real clients ----
conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
for _ in range(3):  # keep-alive with a real client
    conn.request("GET", "/static/dir/deeper/file%20with%20space.txt")
    resp = conn.getresponse()
    check(resp.status == 200 and resp.read() == b"spaced", "http.client keep-alive GET")
conn.close()
if shutil.which("curl"):
    out = subprocess.run(["curl", "-s", "-r", "2-4", "http://127.0.0.1:%d/static/a.txt" % srv.port],
                         capture_output=True, timeout=10).stdout
    check(out == files["a.txt"][2:5], "curl range request (%r)" % out)
    out = subprocess.run(["curl", "-s", "--path-as-is", "http://127.0.0.1:%d/static/../secret.txt" % srv.port],
                         capture_output=True, timeout=10).stdout
    check(SECRET not in out, "curl --path-as-is traversal refused")
    out = subprocess.run(["curl", "-s", "-i", "-r", "0-1,5-6", "http://127.0.0.1:%d/static/a.txt" % srv.port],
                         capture_output=True, timeout=10).stdout
    check(out.startswith(b"HTTP/1.1 206 ") and b"multipart/byteranges" in out and
          b"\r\n\r\n" + data[0:2] + b"\r\n--" in out and b"\r\n\r\n" + data[5:7] + b"\r\n--" in out,
          "curl -r 0-1,5-6 gets both parts (%r)" % out[-200:])

check(srv.alive(), "server still running")
srv.stop()
shutil.rmtree(base, ignore_errors=True)
finish("test_http_static")
