"""Worst-case cost per byte of each parser, through the probe's own stream/stitch path.

Inputs shaped to be slow (many tiny frames, 1-byte chunks, heads and lines without their
terminator, long pipelines of unanswered requests, values with CRLF in them, deep nesting,
long names) at 10 kB, 100 kB and 1 MB; prints CPU microseconds per byte and the peak
memory the parser state held.  Linear parsers show the same cost per byte at every size.

    .venv/bin/python bench/parser_worstcase.py [--sizes 10000,100000,1000000] [--proto http]

``SHAPES`` is also used by tests/test_parser_cost.py (at smaller sizes).
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pipeline.stream import DataStream, StreamStats  # noqa: E402
from protocol.base import Fifo, MessageType  # noqa: E402
from protocol.registry import BY_NAME, protocol_for_id  # noqa: E402

C2S, S2C = "c2s", "s2c"


def drive(proto, chunks, stitch_every=64):
    """Feed (direction, data) chunks through one DataStream per direction and the stitcher,
    as pipeline/conntrack.py does; returns (records, stats of both streams)."""
    state = proto.new_state()
    stats = StreamStats()
    req = DataStream(proto.new_parser(MessageType.REQUEST, state), stats)
    resp = DataStream(proto.new_parser(MessageType.RESPONSE, state), stats)
    nrec = 0
    ts = 1000
    for i, (d, data) in enumerate(chunks):
        ts += 1
        (req if d == C2S else resp).append(data, len(data), ts)
        if i % stitch_every == 0:
            nrec += len(proto.stitch(req.frames, resp.frames, state))
    nrec += len(proto.flush(req.frames, resp.frames, state))
    return nrec, stats


def pieces(d, data, size):
    return [(d, data[i:i + size]) for i in range(0, len(data), size)]


def repeat_to(unit, size):
    return unit * max(1, size // len(unit))


# -- shapes: name -> function(size) -> chunks -------------------------------------------
def _pg(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body


def _my(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


SHAPES = {
    "http": {
        "head without end, 1-byte chunks":
            lambda n: pieces(C2S, b"GET /" + b"a" * n, 1),
        "long target, 16-byte chunks":
            lambda n: pieces(C2S, b"GET /" + b"a" * n + b" HTTP/1.1\r\nHost: x\r\n\r\n", 16),
        "request starts without terminators":
            lambda n: pieces(C2S, repeat_to(b"GET / HTTP/1.1\r\n", n), 4096),
        "unanswered pipeline, 1-byte chunks":
            lambda n: pieces(C2S, repeat_to(b"GET / HTTP/1.1\r\n\r\n", n), 1),
        "refused request line of spaces":
            lambda n: pieces(C2S, b"GET " + b" " * n + b"x  HTTP/9.9 \r\n\r\n", 4096),
        "chunked trailer without end, 1-byte chunks":
            lambda n: [(C2S, b"GET / HTTP/1.1\r\n\r\n")]
            + pieces(S2C, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"1\r\nx\r\n0\r\nX-T: " + b"a" * n, 1),
        "tiny responses":
            lambda n: pieces(S2C, repeat_to(b"HTTP/1.1 200 OK\r\n\r\n", n), 1500),
    },
    "redis": {
        "array reply, bulks with CRLF":
            lambda n: [(C2S, b"*2\r\n$6\r\nLRANGE\r\n$1\r\nk\r\n")]
            + pieces(S2C, b"*%d\r\n" % (n // 18) + b"$1\r\nx\r\n" * (n // 36)
                     + b"$4\r\na\r\nb\r\n" * (n // 36), 65536),
        "nested reply, 7-byte chunks":
            lambda n: [(C2S, b"*1\r\n$4\r\nKEYS\r\n")]
            + pieces(S2C, b"*3\r\n*%d\r\n" % (n // 7) + b"$1\r\nx\r\n" * (n // 7), 7),
        "deep nesting":
            lambda n: pieces(S2C, b"*1\r\n" * (n // 4), 64),
        "deep nesting, one read":
            lambda n: [(S2C, b"*1\r\n" * (n // 4))],
        "status line without end, 1-byte chunks":
            lambda n: pieces(S2C, b"+" + b"a" * n, 1),
        "inline command without end, 1-byte chunks":
            lambda n: pieces(C2S, b"SET " + b"a" * n, 1),
        "unanswered pipeline":
            lambda n: pieces(C2S, repeat_to(b"*1\r\n$4\r\nPING\r\n", n), 1),
    },
    "pgsql": {
        "unanswered multi-statement queries":
            lambda n: pieces(C2S, repeat_to(_pg(b"Q", b"SELECT 1;" * 400 + b"\0"), n), 4096),
        "tiny messages, 1-byte chunks":
            lambda n: pieces(C2S, repeat_to(_pg(b"S", b""), n), 1),
        "long statement names":
            lambda n: pieces(C2S, repeat_to(_pg(b"P", b"s" * 30000 + b"\0SELECT 1\0\0\0")
                                            + _pg(b"B", b"p" * 30000 + b"\0" + b"s" * 30000
                                                  + b"\0\0\0\0\0\0\0"), n), 4096),
        "tiny rows":
            lambda n: [(C2S, _pg(b"Q", b"SELECT x FROM t\0"))]
            + pieces(S2C, repeat_to(_pg(b"D", b"\0\1\0\0\0\1x"), n), 1),
    },
    "mysql": {
        "tiny commands, 1-byte chunks":
            lambda n: pieces(C2S, repeat_to(_my(0, b"\x0e"), n), 1),
        "header and payload reads, unanswered":
            lambda n: [c for _ in range(max(1, n // 30)) for c in
                       ((C2S, _my(0, b"\x03SELECT 1 FROM t WHERE a=1")[:4]),
                        (C2S, b"\x03SELECT 1 FROM t WHERE a=1"))],
        "tiny rows, 1-byte chunks":
            lambda n: [(C2S, _my(0, b"\x03SELECT x FROM t"))]
            + pieces(S2C, _my(1, b"\x01") + _my(2, b"\x03def\0\0\0\1x\0\x0c\x21\0\1\0\0\0\xfd"
                                                  b"\0\0\0\0\0") + _my(3, b"\xfe\0\0\2\0")
                     + repeat_to(_my(4, b"\x01x"), n), 1),
    },
}


def protocol(name):
    return protocol_for_id(BY_NAME[name].proto_id)


def measure(proto_name, shape, size, memory=False):
    """(cpu seconds, bytes fed, records, peak traced bytes or None)."""
    proto = protocol(proto_name)
    chunks = SHAPES[proto_name][shape](size)
    nbytes = sum(len(d) for _, d in chunks)
    if memory:
        tracemalloc.start()
    t0 = time.process_time()
    nrec, stats = drive(proto, chunks)
    cpu = time.process_time() - t0
    peak = None
    if memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert stats.exceptions == 0, (proto_name, shape, stats.last_error)
    return cpu, nbytes, nrec, peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--proto", action="append")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")]
    print("Parser worst cases: CPU microseconds per input byte (and records out)")
    print("%-7s %-42s" % ("proto", "shape") + "".join("%16s" % ("%d B" % s) for s in sizes))
    worst = {}
    for name in a.proto or sorted(SHAPES):
        for shape in SHAPES[name]:
            cells = []
            for size in sizes:
                cpu, nbytes, nrec, _ = measure(name, shape, size)
                per = cpu * 1e6 / max(nbytes, 1)
                worst[name] = max(worst.get(name, 0), per)
                cells.append("%8.2f (%5d)" % (per, min(nrec, 99999)))
            print("%-7s %-42s" % (name, shape) + "".join("%16s" % c for c in cells),
                  flush=True)
    print("worst cost per byte: " + ", ".join("%s %.2f us" % kv for kv in sorted(worst.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
