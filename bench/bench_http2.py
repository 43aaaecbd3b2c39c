"""HTTP/2 parser throughput from recorded events, no BPF: chunks fed through the
pipeline's DataStreams and the HTTP/2 stitcher (tests/support/feed.py).

``streams_per_second(seconds)`` -> streams (records) per second on one core for a recorded
multiplexed session (HPACK-encoded by the ``hpack`` package like a browser's requests: 8
streams per write, dynamic table in use, responses with headers and a DATA frame), the
figure bench/run.py prints; ``fixture_streams_per_second`` the same over the http2/grpc
fixtures (few streams, large bodies).  ``python3 bench/bench_http2.py [SECONDS]``."""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pipeline.pcapfile import read_tcp_connections  # noqa: E402
from protocol.http2 import PROTOCOL  # noqa: E402
from tests.support import feed  # noqa: E402
from tests.support.tshark import FIXTURES  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(t, flags, sid, payload):
    return len(payload).to_bytes(3, "big") + bytes((t, flags)) + sid.to_bytes(4, "big") + \
        payload


def session(streams=4000, batch=8):
    """(direction, ts, bytes) chunks of one connection carrying ``streams`` streams."""
    from hpack import Encoder
    req, resp = Encoder(), Encoder()
    chunks = [("c2s", 1, PREFACE + _frame(4, 0, 0, b"")), ("s2c", 2, _frame(4, 0, 0, b""))]
    ts = 10
    for first in range(0, streams, batch):
        c, s = [], []
        for i in range(first, min(streams, first + batch)):
            sid = 2 * i + 1
            c.append(_frame(1, 5, sid, req.encode([
                (":method", "GET"), (":scheme", "https"), (":authority", "example.com"),
                (":path", "/api/v1/items/%d?x=%d" % (i % 200, i)),
                ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
                ("accept", "application/json"), ("cookie", "session=abcdef%d" % (i % 7))])))
            s.append(_frame(1, 4, sid, resp.encode([
                (":status", "200" if i % 10 else "404"), ("content-type", "application/json"),
                ("content-length", "42"), ("server", "bench")])) +
                _frame(0, 1, sid, b"x" * 42))
        chunks.append(("c2s", ts, b"".join(c)))
        chunks.append(("s2c", ts + 5, b"".join(s)))
        ts += 10
    return chunks


def _rate(conns, seconds):
    n = 0
    t0 = time.process_time()
    while True:
        for chunks in conns:
            n += len(feed.run(PROTOCOL, chunks).records)
        el = time.process_time() - t0
        if el >= seconds:
            return n / el


def streams_per_second(seconds=3.0):
    return _rate([session()], seconds)


def fixture_streams_per_second(seconds=3.0):
    conns = []
    for d in ("http2", "grpc"):
        for f in sorted(os.listdir(os.path.join(FIXTURES, d))):
            if f.endswith(("pcap", "pcapng")):
                conns.extend(c.chunks for c in read_tcp_connections(os.path.join(FIXTURES, d, f)))
    return _rate(conns, seconds)


if __name__ == "__main__":
    sec = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    print("HTTP/2 parser: %.0f streams/s per core (multiplexed session), %.0f (fixtures)"
          % (streams_per_second(sec), fixture_streams_per_second(sec)))
