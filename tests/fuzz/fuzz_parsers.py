"""Coverage-guided fuzzing (atheris / libFuzzer) of one parser through the probe's own
stream/stitch path: both directions, arbitrary chunking, capture gaps, and true lengths
beyond the captured bytes, as the kernel side delivers them.

    python tests/fuzz/fuzz_parsers.py PROTO SECONDS [CORPUS_DIR]

An input is a sequence of events, each ``kind`` (1 byte) + ``length`` (2 bytes LE) +
``length`` bytes; ``kind & 1``: direction (0 client to server), ``kind >> 1 & 3``:
0 data, 1 data whose true length is larger (2 more bytes LE: the uncaptured rest),
2 a gap of ``length`` uncaptured bytes (no data follows), 3 stitch now.  The seed corpus is
every connection of the protocol's fixtures (/work/shared/fixtures) in this encoding.

A finding is an exception from a parser or stitcher (the stream would swallow and count
it: the harness re-raises it), a buffer or queue past its bound, or a hang (-timeout).
libFuzzer then writes the input as crash-*/timeout-* and exits non-zero.
"""
from __future__ import annotations

import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import atheris  # noqa: E402

with atheris.instrument_imports(include=["protocol", "pipeline.stream"]):
    from pipeline import stream as stream_mod  # noqa: E402
    from pipeline.stream import DataStream, StreamStats  # noqa: E402
    from protocol.base import MessageType  # noqa: E402
    from protocol.registry import BY_NAME, protocol_for_id  # noqa: E402

FIXTURE_DIRS = {"http": "http", "redis": "redis", "pgsql": "postgresql", "mysql": "mysql"}
SERVER_PORTS = (80, 8080, 5000, 3000, 6379, 6380, 5432, 8000, 3306, 30130)
_KIND = struct.Struct("<BH")


def encode(chunks):
    """Fixture chunks (direction, ts, data) -> one fuzz input."""
    out = bytearray()
    for d, _, data in chunks:
        bit = 0 if d == "c2s" else 1
        for i in range(0, len(data), 0xFFFF):
            piece = data[i:i + 0xFFFF]
            out += _KIND.pack(bit, len(piece)) + piece
    return bytes(out)


def events(data):
    pos, n = 0, len(data)
    while pos + 3 <= n:
        kind, length = _KIND.unpack_from(data, pos)
        pos += 3
        d = kind & 1
        op = (kind >> 1) & 3
        if op == 2:
            yield d, op, b"", length
            continue
        if op == 3:
            yield d, op, b"", 0
            continue
        extra = 0
        if op == 1:
            if pos + 2 > n:
                return
            extra = struct.unpack_from("<H", data, pos)[0]
            pos += 2
        chunk = data[pos:pos + length]
        pos += length
        yield d, op, chunk, len(chunk) + extra


def make_target(proto):
    max_buf, max_frames = stream_mod.MAX_BUFFERED, stream_mod.MAX_FRAMES

    def check(st):
        if st.exceptions:
            raise st.last_error

    def target(data):
        state = proto.new_state()
        st = StreamStats()
        streams = (DataStream(proto.new_parser(MessageType.REQUEST, state), st),
                   DataStream(proto.new_parser(MessageType.RESPONSE, state), st))
        ts = 1000
        for d, op, chunk, true_len in events(data):
            ts += 7
            s = streams[d]
            if op == 2:
                s.gap(true_len)
            elif op == 3:
                proto.stitch(streams[0].frames, streams[1].frames, state)
            else:
                s.append(chunk, true_len, ts)
            check(st)
            if len(s.buf) > max_buf or len(s.frames) > max_frames:
                raise AssertionError("stream state past its bound: %d bytes, %d frames"
                                     % (len(s.buf), len(s.frames)))
        proto.stitch(streams[0].frames, streams[1].frames, state)
        proto.flush(streams[0].frames, streams[1].frames, state)
        check(st)

    return target


def seed_corpus(name, directory):
    from tests.support.pcap import read_tcp_connections
    fdir = os.path.join(os.environ.get("L7PROBE_FIXTURES", "/work/shared/fixtures"),
                        FIXTURE_DIRS[name])
    os.makedirs(directory, exist_ok=True)
    k = 0
    for f in sorted(os.listdir(fdir)):
        if not (f.endswith(".pcap") or f.endswith(".pcapng")):
            continue
        for c in read_tcp_connections(os.path.join(fdir, f), server_ports=SERVER_PORTS):
            blob = encode(c.chunks)
            if blob:
                with open(os.path.join(directory, "seed-%04d" % k), "wb") as out:
                    out.write(blob[:65536])      # = -max_len: fast executions
                k += 1
    return k


def main():
    name, seconds = sys.argv[1], int(sys.argv[2])
    corpus = sys.argv[3] if len(sys.argv) > 3 else None
    proto = protocol_for_id(BY_NAME[name].proto_id)
    args = [sys.argv[0], "-max_total_time=%d" % seconds, "-timeout=20", "-rss_limit_mb=1536",
            "-max_len=65536", "-print_final_stats=1"]
    if corpus:
        seed_corpus(name, corpus)
        args.append(corpus)
    atheris.Setup(args, make_target(proto))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
