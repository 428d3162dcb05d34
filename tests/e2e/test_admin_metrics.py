"""GET /metrics on the admin port: the Prometheus text format, passed by `promtool check
metrics`, counting what the public port served; and a real Prometheus (Debian's) scraping
it once a second, whose query API then shows pier's counters."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pierlib
from admin_util import admin_port, get, metric


def traffic(srv):
    for _ in range(5):
        r = pierlib.request(srv, "GET", "/plaintext")
        pierlib.check(r.status == 200, "plaintext answers")
    for _ in range(2):
        pierlib.check(pierlib.request(srv, "GET", "/nowhere").status == 404, "unknown path: 404")
    pierlib.check(pierlib.request(srv, "POST", "/echo", body=b"hello").status == 200, "echo answers")


def check_text(aport):
    status, headers, body = get(aport, "/metrics")
    text = body.decode()
    pierlib.check(status == 200, "/metrics answers 200 (got %d)" % status)
    pierlib.check(headers.get("content-type", "").startswith("text/plain; version=0.0.4"),
                  "/metrics is the text format 0.0.4: %r" % headers.get("content-type"))
    got = metric(text, 'pier_http_requests_total{method="GET",status="2xx"}')
    pierlib.check(got == 5, "5 GETs answered 2xx are counted (got %r)" % got)
    got = metric(text, 'pier_http_requests_total{method="GET",status="4xx"}')
    pierlib.check(got == 2, "2 GETs answered 404 are counted (got %r)" % got)
    got = metric(text, 'pier_http_requests_total{method="POST",status="2xx"}')
    pierlib.check(got == 1, "the POST is counted (got %r)" % got)
    got = metric(text, "pier_connections_accepted_total")
    pierlib.check(got == 8, "8 connections accepted (got %r)" % got)
    got = metric(text, "pier_http_request_duration_seconds_count")
    pierlib.check(got == 8, "8 durations in the histogram (got %r)" % got)
    pierlib.check(metric(text, "pier_bytes_received_total") > 0, "bytes in are counted")
    # the admin port's own requests are not the public servers' traffic
    status, _, body = get(aport, "/metrics")
    again = metric(body.decode(), 'pier_http_requests_total{method="GET",status="2xx"}')
    pierlib.check(again == 5, "scrapes do not count as public requests (got %r)" % again)
    return text


def promtool(text):
    if not shutil.which("promtool"):
        pierlib.check(False, "promtool is missing (Debian: prometheus)")
        return
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    pierlib.check(p.returncode == 0, "promtool check metrics passes: %s %s" % (p.stdout, p.stderr))


def query(port, expr):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
    with urllib.request.urlopen(url, timeout=10) as r:
        data = json.load(r)
    res = data.get("data", {}).get("result", [])
    return float(res[0]["value"][1]) if res else None


def prometheus(aport):
    exe = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(exe, os.X_OK):
        print("SKIP prometheus scrape: prometheus is not installed (Debian: prometheus)")
        return
    tmp = tempfile.mkdtemp(prefix="pier-prom-")
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: pier\n    static_configs:\n"
                "      - targets: ['127.0.0.1:%d']\n" % aport)
    pport = pierlib.free_port()
    log = open(os.path.join(tmp, "log"), "w+")
    proc = subprocess.Popen([exe, "--config.file=" + cfg, "--storage.tsdb.path=" + os.path.join(tmp, "data"),
                             "--web.listen-address=127.0.0.1:%d" % pport, "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        pierlib.check(pierlib.wait_port("127.0.0.1", pport, 60, proc), "prometheus starts")
        got = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                got["up"] = query(pport, 'up{job="pier"}')
                got["get2xx"] = query(pport, 'pier_http_requests_total{method="GET",status="2xx"}')
                got["accepted"] = query(pport, "pier_connections_accepted_total")
                got["count"] = query(pport, "pier_http_request_duration_seconds_count")
            except OSError:
                pass
            if got.get("up") == 1 and got.get("get2xx") == 5 and got.get("accepted") == 8:
                break
            time.sleep(0.5)
        pierlib.check(got.get("up") == 1, "prometheus scraped pier: up=1 (got %r)" % got)
        pierlib.check(got.get("get2xx") == 5, "prometheus has the GET 2xx count (got %r)" % got)
        pierlib.check(got.get("accepted") == 8, "prometheus has the accepted count (got %r)" % got)
        pierlib.check(got.get("count") == 8, "prometheus has the histogram (got %r)" % got)
    finally:
        pierlib.end_process(proc, 30)
        log.seek(0)
        if pierlib.failures:
            print("prometheus log:\n" + log.read()[-3000:])
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    srv = pierlib.HttpServer("--admin", "127.0.0.1:0")
    try:
        aport = admin_port(srv)
        traffic(srv)
        text = check_text(aport)
        promtool(text)
        prometheus(aport)
    finally:
        srv.stop()
    pierlib.finish("test_admin_metrics")


if __name__ == "__main__":
    main()
