#!/usr/bin/env python3
"""A fixed load for instruction counts: CONNS connections, ROUNDS rounds; in each round
it sends one exchange on every connection and then reads every answer, so the server's
work depends only on the counts, not on how fast the machine is.
  fixed_load.py echo|http PORT CONNS ROUNDS"""
import re
import socket
import sys
import time


def main():
    mode, port, conns, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    deadline = time.monotonic() + 60
    while True:  # the server may still be starting under valgrind
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("fixed_load: nothing listens on port %d" % port)
            time.sleep(0.1)
    ss = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(conns)]
    for s in ss:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"x" * 64 if mode == "echo" else b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(rounds):
        for s in ss:
            s.sendall(req)
        for s in ss:
            read_answer(s, mode)
    for s in ss:
        s.close()


def read_answer(s, mode):
    if mode == "echo":
        got = 0
        while got < 64:
            n = len(s.recv(64 - got))
            if n == 0:
                sys.exit("fixed_load: the server closed a connection")
            got += n
        return
    d = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("fixed_load: the server closed a connection")
        d += chunk
        i = d.find(b"\r\n\r\n")
        if i >= 0:
            m = re.search(rb"(?i)content-length: *(\d+)", d[:i])
            if len(d) >= i + 4 + int(m.group(1)):
                return


if __name__ == "__main__":
    main()
