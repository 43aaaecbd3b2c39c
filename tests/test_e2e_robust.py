"""Hostile traffic end to end: connections that look like each protocol at first and then
carry garbage, absurd lengths, truncated messages and a client killed mid-request, all on
loopback while the probe watches every protocol.  The probe must keep running, raise nothing,
and still report the well-formed traffic that follows exactly."""
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests.support.probe import ProbeRun, total
from tests.support.servers import nginx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

SEED = 20261122


def _be32(n):
    return struct.pack(">I", n)


def _mysql_pkt(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


# (name, server greeting or b"", client's first chunk, server's first reply).  Each first
# chunk passes include/l7.h's detection rule of its protocol; what follows is garbage.
SCENARIOS = [
    ("http", b"", b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
    ("http-absurd-lengths", b"",
     b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFFFF\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
    ("http-bad-status", b"", b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 2x0 \xff\xfe\r\n\r\n"),
    ("redis", b"", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$99999999999\r\n", b"*-5\r\n$-9\r\n:\r\n"),
    ("redis-deep-nesting", b"", b"*1\r\n$4\r\nPING\r\n", b"*1\r\n" * 5000),
    ("pgsql-startup", b"", _be32(8) + _be32(196608), b"R" + _be32(0xFFFFFFF0)),
    ("pgsql-query", b"", b"Q" + _be32(13) + b"SELECT 1;\x00",
     b"T\x00\x00\x00\x06\xff\xffD" + _be32(4) + b"C\x00\x00\x00\x03"),
    ("mysql", _mysql_pkt(0, b"\x0a5.5.5-10.11.6-MariaDB\x00" + b"\x01" * 40), b"", b""),
    ("mysql-query", b"", _mysql_pkt(0, b"\x03SELECT 1"), _mysql_pkt(1, b"\xff\x00")),
    ("mongo", b"", struct.pack("<iiii", 16, 1, 0, 2013), struct.pack("<iiii", 16, 2, 1, 1)),
    ("kafka", b"", _be32(10) + struct.pack(">hhih", 3, 9, 7, 0), _be32(0xFFFFFFF0)),
    ("rocketmq", b"", _be32(12) + b"\x00\x00\x00\x08" + b'{"code":1}'[:8], b""),
    ("garbage", b"", b"", b""),
]


class _Server(threading.Thread):
    """Accepts one connection: greets, then answers every read with the next reply."""

    def __init__(self, greeting, replies):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.greeting, self.replies = greeting, list(replies)

    def run(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            try:
                if self.greeting:
                    conn.sendall(self.greeting)
                while True:
                    if not conn.recv(65536):
                        break
                    if self.replies:
                        conn.sendall(self.replies.pop(0))
            except OSError:
                pass
        self.sock.close()


def _garbage(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n)) if n < 64 else rng.randbytes(n)


def _play(rng, greeting, first, reply):
    """One connection: the client sends `first` then garbage; the server greets, answers
    with `reply` then garbage.  Chunk sizes vary from 1 byte to 48 KiB."""
    def chunks():
        return [_garbage(rng, rng.choice((1, 7, 100, 1500, 16384, 49152)))
                for _ in range(rng.randint(1, 6))]
    replies = ([reply] if reply else []) + chunks()
    srv = _Server(greeting, replies)
    srv.start()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:
        if greeting:
            c.recv(65536)
        for chunk in ([first] if first else []) + chunks():
            c.sendall(chunk)
            c.settimeout(0.02)
            try:
                c.recv(65536)
            except OSError:
                pass
            c.settimeout(5)
    srv.join(10)


KILLED_CLIENT = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
print("sent", flush=True)
time.sleep(60)
"""


def _killed_mid_request():
    """A client that dies (SIGKILL) in the middle of its request body."""
    srv = _Server(b"", [])
    srv.start()
    client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(srv.port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "sent"
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    srv.join(10)


def test_hostile_traffic_leaves_the_probe_running_and_exact():
    rng = random.Random(SEED)
    with nginx() as ng, ProbeRun(["-P", "1"]) as p:
        time.sleep(0.5)
        t0 = time.monotonic()
        rounds = 0
        while rounds < 8 and time.monotonic() - t0 < 60:
            for _, greeting, first, reply in SCENARIOS:
                _play(rng, greeting, first, reply)
            rounds += 1
        _killed_mid_request()
        assert p.proc.poll() is None, p.err_lines[-20:]
        time.sleep(1.5)
        mark = len(p.lines)
        for path in ("/", "/status/404", "/status/500", "/"):
            subprocess.run(["curl", "-s", "-o", "/dev/null", ng.url(path)], timeout=30,
                           check=True)
        time.sleep(2.5)
        assert p.proc.poll() is None, p.err_lines[-20:]
        after = ProbeRun.__new__(ProbeRun)
        after.lines = p.lines[mark:]
        rows = [r for r in after.records("l7_rpc")
                if r["server_port"] == str(ng.port) and r["l7_role"] == "server"]
    assert rounds == 8
    assert p.proc.returncode == 0, p.err_lines[-20:]
    # the garbage was seen: connections of several protocols were reported
    protos = {r["protocol"] for r in p.records("l7_link")}
    assert {"http", "redis", "pgsql", "mysql"} <= protos, protos
    # nothing raised, nothing crashed, and the well-formed requests that followed are exact
    logs = [l for l in p.lines + p.err_lines if not l.startswith("|")]
    assert not [l for l in logs if "Traceback" in l or "exception" in l], logs[-30:]
    # ... and the garbage was said, per protocol, in one line a period (MySQL's framing is
    # a bare length prefix: its garbage reads as packets, skipped by length, not as errors)
    for proto in ("http", "redis", "pgsql"):
        assert [l for l in logs if "INFO: %s: " % proto in l and "unparseable" in l], \
            (proto, logs[-30:])
    assert total(rows, "req_count") == 4, rows
    assert total(rows, "resp_count") == 4, rows
    assert total(rows, "err_count") == 2, rows
