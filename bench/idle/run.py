#!/usr/bin/env python3
"""bench/idle: memory per idle connection, pier echo, http and msg against h2o, nginx,
libuv and libevent in one run.

For each server (pinned to CPU 0, one thread or worker): a warm-up burst of 1,000
connections (three exchanges each, then closed) fills the per-loop caches; then 10,000
connections, spread over the source addresses 127.0.0.2-127.0.0.251, each do one exchange
(echo: 16 bytes; http: a keep-alive GET /plaintext; msg: a ping) and sit idle; then 5,000
more, to 15,000. At each count it records the server's RSS (all its processes: nginx's
master and worker), the kernel's TCP memory (/proc/net/sockstat) and the slab caches that
grow with sockets (/proc/slabinfo), and checks that every connection still answers.

Figures per connection:
  user   (RSS at 10,000 - RSS before) / 10,000, and the slope (RSS at 15,000 - RSS at
         10,000) / 5,000, which leaves out what does not grow with connections;
  kernel slab bytes of the socket caches per connection, both ends (client and server
         run on this machine, so each connection counts two sockets; the server's share
         is about half), and sockstat's TCP pages.
The projection to 1,000,000 connections multiplies the slope and the kernel's server-side
share. Latency: one more keep-alive client does 2,000 sequential exchanges, without idle
connections and with 15,000, and reports p50 and p99 in microseconds.

Other work on the machine shares the CPUs and the kernel's counters (sockstat and slab
are system-wide): the kernel figures are deltas taken around each step and noisy.

Usage: bench/idle/run.py [SERVER ...]   (default: all; pier-echo pier-http pier-msg h2o
nginx libuv libevent). Results: a table on stdout and bench/results/idle-*.txt.
"""
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIER = os.environ.get("BENCH_PIER", os.path.join(ROOT, "build", "pier"))
BUILD = os.path.join(ROOT, "bench", "build")
COUNTS = (10000, 15000)
WARM = 1000
LAT_N = 2000
SLABS = ("TCP", "tw_sock_TCP", "request_sock_TCP", "sock_inode_cache", "dentry", "filp", "eventpoll_epi",
         "eventpoll_pwq", "skbuff_head_cache", "kmalloc-64", "kmalloc-192", "kmalloc-256", "kmalloc-512",
         "kmalloc-1k", "kmalloc-2k", "kmalloc-4k", "kmalloc-8k", "selinux_file_security", "inode_cache")

HTTP_REQ = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def build_peer(name, src, libs):
    out = os.path.join(BUILD, name)
    src = os.path.join(ROOT, "bench", "peers", src)
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        os.makedirs(BUILD, exist_ok=True)
        subprocess.check_call(["gcc", "-O2", "-o", out, src] + libs)
    return out


def http_answer(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError("closed before a response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(body) < n:
        body += s.recv(n - len(body))
    if not head.startswith(b"HTTP/1.1 200"):
        sys.stderr.write("idle: unexpected answer: %r\n" % head[:200])
        return False
    return True


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed")
        b += c
    return b


ECHO = (b"0123456789abcdef", lambda s: recv_exact(s, 16) == b"0123456789abcdef")
HTTP = (HTTP_REQ, http_answer)
PING = (struct.pack(">HH", 1, 0), lambda s: recv_exact(s, 4) == struct.pack(">HH", 2, 0))


def server_cmd(name, port, tmp):
    """The command line and the exchange of each server."""
    if name == "pier-echo":
        return [PIER, "echo", "--port", str(port), "--threads", "1", "--quiet"], ECHO
    if name == "pier-http":
        return [PIER, "http", "--port", str(port), "--threads", "1", "--quiet", "--max-conns", "30000"], HTTP
    if name == "pier-msg":
        return [PIER, "msg", "--port", str(port), "--threads", "1", "--quiet", "--heartbeat", "60"], PING
    if name == "libuv":
        return [build_peer("uv_echo", "uv_echo.c", ["-luv"]), str(port)], ECHO
    if name == "libevent":
        return [build_peer("event_echo", "event_echo.c", ["-levent_core"]), str(port)], ECHO
    if name == "nginx":
        d = os.path.join(tmp, "nginx")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write("""worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    client_body_temp_path %(d)s/body; proxy_temp_path %(d)s/proxy; fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi; scgi_temp_path %(d)s/scgi;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:%(port)d backlog=4096;
        location = /plaintext { default_type text/plain; return 200 "Hello, World!"; }
    }
}
""" % {"d": d, "port": port})
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", d, "-c", d + "/nginx.conf", "-e",
                d + "/error.log"], HTTP
    if name == "h2o":
        d = os.path.join(tmp, "h2o")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "plaintext.txt"), "w") as f:
            f.write("Hello, World!")
        with open(os.path.join(d, "h2o.conf"), "w") as f:
            f.write("""num-threads: 1
max-connections: 30000
listen:
  host: 127.0.0.1
  port: %d
error-log: %s/error.log
hosts:
  default:
    paths:
      /plaintext:
        file.file: %s/plaintext.txt
""" % (port, d, d))
        return [shutil.which("h2o"), "-c", d + "/h2o.conf"], HTTP
    raise SystemExit("unknown server %s" % name)


def pids_of(pid):
    """The process and its children (nginx's worker)."""
    out = [pid]
    try:
        kids = open("/proc/%d/task/%d/children" % (pid, pid)).read().split()
    except OSError:
        kids = []
    for k in kids:
        out += pids_of(int(k))
    return out


def rss(pid):
    total = 0
    for p in pids_of(pid):
        try:
            for line in open("/proc/%d/status" % p):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def kernel():
    """(TCP pages from sockstat, bytes in the socket-related slab caches)."""
    pages = 0
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            m = re.search(r"mem (\d+)", line)
            pages = int(m.group(1)) if m else 0
    slab = 0
    for line in open("/proc/slabinfo"):
        f = line.split()
        if f and f[0] in SLABS:
            slab += int(f[1]) * int(f[3])
    return pages, slab


def wait_listening(port, proc, timeout=20):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit("server exited: %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server not listening")


def connect(port, i):
    s = socket.socket()
    s.bind(("127.0.0.%d" % (2 + i % 250), 0))
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def exchange_all(socks, ex):
    req, answer = ex
    for s in socks:
        s.sendall(req)
    for k, s in enumerate(socks):
        if not answer(s):
            raise SystemExit("connection %d: wrong answer" % k)


def latency(port, ex, n=LAT_N):
    req, answer = ex
    s = connect(port, 251)
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(req)
        answer(s)
        t.append(time.perf_counter() - t0)
    s.close()
    t.sort()
    return t[len(t) // 2] * 1e6, t[int(len(t) * 0.99)] * 1e6


def run_one(name, tmp):
    port = free_port()
    argv, ex = server_cmd(name, port, tmp)
    proc = subprocess.Popen(["taskset", "-c", "0"] + argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, name + ".log"), "w"))
    try:
        wait_listening(port, proc)
        warm = [connect(port, i) for i in range(WARM)]
        for _ in range(3):
            exchange_all(warm, ex)
        for s in warm:
            s.close()
        time.sleep(1.0)
        lat0 = latency(port, ex)
        r = {"name": name, "rss0": rss(proc.pid), "k0": kernel(), "lat0": lat0}
        socks = []
        for count in COUNTS:
            more = [connect(port, len(socks) + i) for i in range(count - len(socks))]
            exchange_all(more, ex)
            socks += more
            time.sleep(1.5)
            r[count] = (rss(proc.pid), kernel())
        r["lat1"] = latency(port, ex)
        exchange_all(socks, ex)  # every one still answers
        for s in socks:
            s.close()
        return r
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(results):
    lines = []
    hdr = ("%-10s %9s %9s %9s %11s %11s %9s %9s %9s %9s %12s" %
           ("server", "user/conn", "slope", "RSS@15k", "kslab/conn", "ktcp/conn", "p50 idle0", "p99 idle0",
            "p50 15k", "p99 15k", "1M: user MB"))
    lines.append(hdr)
    for r in results:
        n1, n2 = COUNTS
        user = (r[n1][0] - r["rss0"]) / n1
        slope = (r[n2][0] - r[n1][0]) / (n2 - n1)
        kslab = (r[n2][1][1] - r["k0"][1]) / n2
        ktcp = (r[n2][1][0] - r["k0"][0]) * 4096 / n2
        lines.append("%-10s %9.0f %9.0f %8.1fM %11.0f %11.0f %9.0f %9.0f %9.0f %9.0f %12.0f" %
                     (r["name"], user, slope, r[n2][0] / 2**20, kslab, ktcp, r["lat0"][0], r["lat0"][1],
                      r["lat1"][0], r["lat1"][1], max(user, slope) * 1e6 / 2**20))
    lines.append("user/conn: RSS growth over the first 10,000 / 10,000; slope: (RSS@15k - RSS@10k) / 5,000; "
                 "kslab: socket slab caches, both ends, per connection; ktcp: sockstat TCP pages; latency in us")
    lines.append("1,000,000 connections: user MB = max(user, slope) x 1e6; kernel (server side, about half of "
                 "kslab) is in the README")
    return "\n".join(lines)


def main():
    names = sys.argv[1:] or ["pier-echo", "pier-http", "pier-msg", "h2o", "nginx", "libuv", "libevent"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < COUNTS[-1] + 100:
        raise SystemExit("needs %d descriptors (hard limit %d)" % (COUNTS[-1] + 100, hard))
    tmp = tempfile.mkdtemp(prefix="pier-idle-")
    os.chmod(tmp, 0o755)  # h2o started as root serves files as nobody
    results = []
    try:
        for n in names:
            sys.stderr.write("idle: %s...\n" % n)
            results.append(run_one(n, tmp))
            time.sleep(2)  # let the closed sockets' memory go back before the next one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(results)
    print(text)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "idle-%d.txt" % int(time.time())), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
