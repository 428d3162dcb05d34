"""GET /status on the admin port: a page with live charts drawn in the browser from
/status.json, with nothing from outside (no script, style or font from another host).
Headless Chromium (Debian's) loads it while the public port serves traffic; the DOM must
then show the counters from the JSON and charts that hold points, and a screenshot is
kept in the build's test-output folder."""
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

import pierlib
from admin_util import admin_port, get, output_dir

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium(args, timeout=120):
    prof = tempfile.mkdtemp(prefix="pier-chromium-")
    try:
        # Every name but loopback fails to resolve: a page that needed another host
        # would show it (and the check of the HTML below says so first).
        argv = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--user-data-dir=" + prof, "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--window-size=1280,900", "--virtual-time-budget=6000"] + args
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(prof, ignore_errors=True)


def check_self_contained(aport):
    status, headers, body = get(aport, "/status")
    html = body.decode()
    pierlib.check(status == 200 and headers.get("content-type", "").startswith("text/html"), "/status is a page")
    outside = re.findall(r'(?:src|href)\s*=\s*["\']?(?:[a-z]+:)?//|@import|url\(|@font-face', html, re.I)
    pierlib.check(not outside, "the page loads nothing from outside (found %r)" % outside)
    pierlib.check("<canvas" in html and "/status.json" in html, "the page draws on canvases from /status.json")


def keep_busy(srv, stop, counts):
    s = srv.connect(10)
    reader = pierlib.Reader(s)
    while not stop.is_set():
        s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
        r = reader.response()
        counts["ok" if r is not None and r.status == 200 else "bad"] += 1
        time.sleep(0.001)  # traffic to draw, not a load test: the machine is shared
    s.close()


def main():
    if not os.access(CHROMIUM, os.X_OK):
        print("SKIP: chromium is not installed (Debian: chromium)")
        return
    srv = pierlib.HttpServer("--admin", "127.0.0.1:0")
    stop = threading.Event()
    counts = {"ok": 0, "bad": 0}
    busy = threading.Thread(target=keep_busy, args=(srv, stop, counts))
    try:
        aport = admin_port(srv)
        for _ in range(7):
            pierlib.check(pierlib.request(srv, "GET", "/plaintext").status == 200, "plaintext answers")
        check_self_contained(aport)
        busy.start()
        url = "http://127.0.0.1:%d/status" % aport
        p = chromium(["--dump-dom", url])
        dom = p.stdout
        drawn = re.search(r'<body[^>]*data-drawn="(\d+)"', dom)
        pierlib.check(drawn and int(drawn.group(1)) >= 3,
                      "the page drew at least 3 samples (got %r); stderr tail: %s" % (drawn and drawn.group(1),
                                                                                         p.stderr[-500:]))
        total = re.search(r'id="total-requests">(\d+)<', dom)
        pierlib.check(total and int(total.group(1)) >= 7,
                      "the page shows the requests answered from the JSON (got %r)" % (total and total.group(1)))
        for chart in ("c-req", "c-open", "c-lat", "c-bytes"):
            m = re.search(r'id="%s"[^>]*data-points="(\d+)"|data-points="(\d+)"[^>]*id="%s"' % (chart, chart), dom)
            n = int(m.group(1) or m.group(2)) if m else 0
            pierlib.check(n >= 2, "chart %s holds points (got %d)" % (chart, n))
        rate = re.search(r'id="req-rate">([^<]*)<', dom)
        pierlib.check(rate and rate.group(1) not in ("", "-"), "requests/s is shown (got %r)" % (rate and rate.group(1)))
        shot = os.path.join(output_dir(), "admin_status.png")
        if os.path.exists(shot):
            os.unlink(shot)
        p = chromium(["--screenshot=" + shot, url])
        size = os.path.getsize(shot) if os.path.exists(shot) else 0
        pierlib.check(size > 10000, "a screenshot is kept in %s (%d bytes)" % (shot, size))
        print("screenshot: %s" % shot)
    finally:
        stop.set()
        if busy.is_alive():
            busy.join(20)
        srv.stop()
    pierlib.check(counts["bad"] == 0, "the public port served every request meanwhile (%r)" % counts)
    pierlib.finish("test_admin_status")


if __name__ == "__main__":
    main()
