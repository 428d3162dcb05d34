#!/usr/bin/env python3
"""pier http lists the --root folder itself on every request, not only the first: the
root's descriptor is opened once, and a listing that read through a copy sharing its
read position (a dup) found nothing left the next time. Two server threads share that
descriptor too (pier-test: threads)."""
import os
import shutil
import tempfile

from pierlib import HttpServer, check, finish, request

root = tempfile.mkdtemp(prefix="pier-http-listing-")
names = ["a.txt", "b.txt", "c.txt"]
for name in names:
    with open(os.path.join(root, name), "wb") as f:
        f.write(name.encode())
os.makedirs(os.path.join(root, "sub"))
with open(os.path.join(root, "sub", "inner.txt"), "wb") as f:
    f.write(b"inner")

srv = HttpServer("--root", root, "--threads", "2")
for i in range(8):
    for path, want in [("/static/", names + ["sub/"]), ("/static/sub/", ["inner.txt"])]:
        r = request(srv, "GET", path)
        body = r.body.decode() if r is not None else ""
        missing = [n for n in want if ('href="%s"' % n) not in body]
        check(r is not None and r.status == 200 and not missing,
              "request %d for %s lists everything (missing %r)" % (i + 1, path, missing))
srv.stop()
shutil.rmtree(root, ignore_errors=True)
finish("test_http_listing")
