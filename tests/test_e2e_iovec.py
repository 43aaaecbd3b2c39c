"""Syscalls with many iovecs, for real (BPF): HTTP/1.1 requests and responses written with
sendmsg/writev of up to 1024 iovecs (UIO_MAXIOV), most of them one byte long.  The kernel's
first copy walks 8 iovecs; the rest are gathered by tail calls (bpf/probe.c gather_body)
into the same record, so the parser sees every header and body byte: each request's path
and status, both sides, exact."""
import collections
import os
import socket
import threading
import time

import pytest

from tests.support.probe import ProbeRun

START_TIMEOUT = 240
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

PORTS = range(47400, 47500)
# iovecs per message: within one gather run (36), several runs, the kernel's maximum
IOVS = (20, 37, 300, 1024)
PER = 3         # requests per iovec count
BODY = b"hello"


def pieces(first, rest, n):
    """`first` as one iovec, then `rest` cut so the message has n iovecs in all (one byte
    each, the last one the remainder)."""
    k = n - 1
    assert len(rest) >= k
    return [first] + [rest[i:i + 1] for i in range(k - 1)] + [rest[k - 1:]]


def request(path, n):
    rest = b"Host: iovec\r\nX-Pad: " + b"p" * 1100 + b"\r\n\r\n"
    return pieces(b"GET %s HTTP/1.1\r\n" % path.encode(), rest, n)


def response(n):
    rest = (b"Content-Length: %d\r\nX-Pad: " % len(BODY)) + b"q" * 1100 + b"\r\n\r\n" + BODY
    return pieces(b"HTTP/1.1 200 OK\r\n", rest, n)


def send_all(sock, iovs, use_writev):
    total = sum(len(x) for x in iovs)
    if use_writev:
        sent = os.writev(sock.fileno(), iovs)
    else:
        sent = sock.sendmsg(iovs)
    assert sent == total     # loopback, small messages: one syscall takes all


def recv_message(sock, buf):
    """One HTTP/1.1 message (headers, then Content-Length bytes) from sock."""
    while b"\r\n\r\n" not in buf:
        x = sock.recv(65536)
        if not x:
            return None, buf
        buf += x
    head, _, rest = buf.partition(b"\r\n\r\n")
    clen = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            clen = int(value)
    while len(rest) < clen:
        rest += sock.recv(65536)
    return head, rest[clen:]


def serve(ls):
    c, _ = ls.accept()
    with c:
        buf = b""
        i = 0
        while True:
            head, buf = recv_message(c, buf)
            if head is None:
                return
            n = int(head.split(b" ")[1].split(b"/")[2])
            send_all(c, response(n), use_writev=i % 2 == 1)
            i += 1


def listen():
    for port in PORTS:
        ls = socket.socket()
        try:
            ls.bind(("127.0.0.1", port))
        except OSError:
            ls.close()
            continue
        ls.listen(4)
        return ls, port
    raise RuntimeError("no free port in %s" % PORTS)


@pytest.fixture(scope="module")
def run():
    ls, port = listen()
    paths = []
    with ProbeRun(["--proto", "http", "-P", "600", "--trace-limit", "100000",
                   "--sample", "0"], ready_timeout=START_TIMEOUT) as probe:
        t = threading.Thread(target=serve, args=(ls,), daemon=True)
        t.start()
        with socket.create_connection(("127.0.0.1", port)) as s:
            buf = b""
            i = 0
            for n in IOVS:
                for j in range(PER):
                    path = "/iov/%d/%d" % (n, j)
                    send_all(s, request(path, n), use_writev=i % 2 == 0)
                    head, buf = recv_message(s, buf)
                    assert head.startswith(b"HTTP/1.1 200")
                    paths.append(path)
                    i += 1
        t.join(10)
        ls.close()
        time.sleep(1)
        probe.stop()
    yield {"probe": probe, "port": port, "paths": paths}


@pytest.mark.parametrize("role", ["server", "client"])
def test_many_iovecs_every_byte_parsed(run, role):
    probe, port = run["probe"], str(run["port"])
    got = collections.Counter(
        (r["req_path"], r["resp_code"]) for r in probe.records("l7_trace")
        if r["server_port"] == port and r["l7_role"] == role)
    assert got == collections.Counter((p, "200") for p in run["paths"]), \
        probe.err_lines[-20:]
    rpc = [r for r in probe.records("l7_rpc") if r["server_port"] == port and
           r["l7_role"] == role]
    n = len(run["paths"])
    assert (sum(int(r["req_count"]) for r in rpc), sum(int(r["resp_count"]) for r in rpc),
            sum(int(r["err_count"]) for r in rpc)) == (n, n, 0)
