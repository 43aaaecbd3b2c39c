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


def _kafka_req(cid, key=3, ver=0, client=b"c"):
    hdr = struct.pack(">hhih", key, ver, cid, len(client)) + client
    return struct.pack(">i", len(hdr)) + hdr


def _kafka_reqs(n, start=0):
    unit = len(_kafka_req(0))
    return b"".join(_kafka_req(start + i) for i in range(max(1, n // unit)))


def _kafka_resps(n, start):
    return b"".join(struct.pack(">ii", 4, start + i) for i in range(max(1, n // 8)))


def _mongo_msg(rid, resp_to=0, op=2013, body=b"\0\0\0\0\0\x05\0\0\0\0"):
    return struct.pack("<iiii", 16 + len(body), rid, resp_to, op) + body


def _mongo_run(n, resp_to=None):
    unit = len(_mongo_msg(0))
    return b"".join(_mongo_msg(i + 1, 0 if resp_to is None else resp_to + i)
                    for i in range(max(1, n // unit)))


def _rmq(code, opaque, flag):
    hb = b'{"code":%d,"flag":%d,"language":"JAVA","opaque":%d,"version":1}' % (
        code, flag, opaque)
    return struct.pack(">ii", 4 + len(hb), len(hb)) + hb


def _rmq_run(n, code, flag, start=0):
    unit = len(_rmq(code, start, flag))
    return b"".join(_rmq(code, start + i, flag) for i in range(max(1, n // unit)))


def _dns(qid, flags=0x0100, name=b"\x01a\x00"):
    msg = struct.pack(">HHHHHH", qid & 0xFFFF, flags, 1, 0, 0, 0) + name + b"\0\1\0\1"
    return struct.pack(">H", len(msg)) + msg


def _dns_run(n, flags=0x0100, start=0, name=b"\x01a\x00"):
    unit = len(_dns(0, flags, name))
    return b"".join(_dns(start + i, flags, name) for i in range(max(1, n // unit)))


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _h2(t, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes((t, flags)) + sid.to_bytes(4, "big") + \
        payload


def _h2_headers_run(n):
    """HEADERS of new streams never answered (an indexed :method GET, :path /)."""
    unit = len(_h2(1, 5, 1, b"\x82\x84\x86"))
    return _H2_PREFACE + b"".join(_h2(1, 5, 2 * i + 1, b"\x82\x84\x86")
                                  for i in range(max(1, n // unit)))


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
    "kafka": {
        "unanswered pipeline, 1-byte chunks":
            lambda n: pieces(C2S, _kafka_reqs(n), 1),
        "unanswered pipeline":
            lambda n: pieces(C2S, _kafka_reqs(n), 4096),
        "responses to no request, behind a full queue":
            lambda n: [(C2S, _kafka_reqs(4096 * 15))]
            + pieces(S2C, _kafka_resps(n, 1 << 20), 64),
        "tiny responses, 1-byte chunks":
            lambda n: pieces(S2C, _kafka_resps(n, 0), 1),
        "garbage without a frame start":
            lambda n: pieces(C2S, b"\xff" * n, 4096),
        "response resync over zeros, behind a full queue":
            lambda n: [(C2S, _kafka_reqs(4096 * 15))]
            + pieces(S2C, b"\0\0\0\1" + b"\0" * n, 4096),
    },
    "mongo": {
        "unanswered pipeline, 1-byte chunks":
            lambda n: pieces(C2S, _mongo_run(n), 1),
        "replies to no request, behind a full queue":
            lambda n: [(C2S, _mongo_run(256 * 26))]
            + pieces(S2C, _mongo_run(n, resp_to=1 << 20), 64),
        "exhaust replies, 1-byte chunks":
            lambda n: pieces(S2C, b"".join(_mongo_msg(i + 2, i + 1, body=b"\2\0\0\0\0\x05"
                                                      b"\0\0\0\0") for i in range(
                max(1, n // 26))), 1),
    },
    "rocketmq": {
        "unanswered pipeline, 1-byte chunks":
            lambda n: pieces(C2S, _rmq_run(n, 11, 0), 1),
        "unanswered pipeline, one frame per read":
            lambda n: [(C2S, _rmq(11, i, 0)) for i in range(max(1, n // 72))],
        "responses to no request, behind a full queue":
            lambda n: [(C2S, _rmq_run(1024 * 72, 11, 0))]
            + pieces(S2C, _rmq_run(n, 0, 1, start=1 << 20), 64),
        "header cut without its end":
            lambda n: pieces(C2S, struct.pack(">ii", n + 4, n) + b'{"code":' + b"1" * n, 512),
    },
    "dns": {
        "unanswered queries, 1-byte chunks":
            lambda n: pieces(C2S, _dns_run(n), 1),
        "responses to no query, behind a full queue":
            lambda n: [(C2S, _dns_run(256 * 23))]
            + pieces(S2C, _dns_run(n, flags=0x8180, start=30000), 64),
        "names compressed into a loop":
            lambda n: pieces(C2S, _dns_run(n, name=b"\x3f" + b"a" * 63 + b"\xc0\x0c"), 4096),
    },
    "http2": {
        "tiny frames, 1-byte chunks":
            lambda n: [(C2S, _H2_PREFACE)]
            + pieces(C2S, repeat_to(_h2(6, 0, 0, b"\0" * 8), n), 1),
        "unanswered streams":
            lambda n: pieces(C2S, _h2_headers_run(n), 4096),
        "CONTINUATION flood":
            lambda n: [(C2S, _H2_PREFACE + _h2(1, 0, 1, b"\x82"))]
            + pieces(C2S, repeat_to(_h2(9, 0, 1, b"\x84"), n), 64),
        "responses to no stream":
            lambda n: pieces(S2C, repeat_to(_h2(1, 4, 7, b"\x88"), n), 4096),
    },
}

# Smallest size at which tests/test_parser_limits.py compares a shape's cost per byte with
# 8 times the size (default 12 kB): shapes whose fixed prefix (1024 queued RocketMQ requests,
# 72 kB) outweighs the part that grows at 12 kB.
LINEAR_TEST_SIZE = {("rocketmq", "responses to no request, behind a full queue"): 96_000}


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
