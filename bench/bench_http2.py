"""HTTP/2 parser throughput from recorded events: the http2/grpc fixtures' chunks fed
through the pipeline's DataStreams and stitcher (tests/support/feed.py), no BPF.

``streams_per_second(seconds)`` -> streams (records) parsed per second on one core;
bench/run.py calls it.  ``python3 bench/bench_http2.py [SECONDS]`` prints it."""
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


def _recorded():
    out = []
    for d in ("http2", "grpc"):
        for f in sorted(os.listdir(os.path.join(FIXTURES, d))):
            if f.endswith(("pcap", "pcapng")):
                out.extend(c.chunks for c in read_tcp_connections(os.path.join(FIXTURES, d, f)))
    return out


def streams_per_second(seconds=3.0):
    conns = _recorded()
    n = 0
    t0 = time.process_time()
    while True:
        for chunks in conns:
            n += len(feed.run(PROTOCOL, chunks).records)
        el = time.process_time() - t0
        if el >= seconds:
            return n / el


if __name__ == "__main__":
    print("HTTP/2 parser: %.0f streams/s per core" % streams_per_second(
        float(sys.argv[1]) if len(sys.argv) > 1 else 3.0))
