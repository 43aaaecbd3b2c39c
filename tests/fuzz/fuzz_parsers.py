"""Coverage-guided fuzzing (atheris / libFuzzer) of one parser through the probe's own
stream/stitch path: both directions, arbitrary chunking, capture gaps, and true lengths
beyond the captured bytes, as the kernel side delivers them.

    python tests/fuzz/fuzz_parsers.py PROTO SECONDS [CORPUS_DIR]

An input is a sequence of events, each ``kind`` (1 byte) + ``length`` (2 bytes LE) +
``length`` bytes; ``kind & 1``: direction (0 client to server), ``kind >> 1 & 3``:
0 data, 1 data whose true length is larger (2 more bytes LE: the uncaptured rest),
2 a gap of ``length`` uncaptured bytes (no data follows), 3 stitch now.  The seed corpus is
every captured stream of the protocol's fixtures (/work/shared/fixtures, loaded by
tests/support/feed.py) in this encoding, cut into inputs of at most MAX_LEN bytes.

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

MAX_LEN = 512      # -max_len: inputs of a few dozen events keep executions fast (10^6 per parser)
_KIND = struct.Struct("<BH")


def encode(chunks):
    """Fixture chunks (direction, ts, data[, true length]) -> one fuzz input."""
    out = bytearray()
    for d, _, data, *true_len in chunks:
        bit = 0 if d == "c2s" else 1
        rest = (true_len[0] if true_len else len(data)) - len(data)
        for i in range(0, len(data), 0xFFFF):
            piece = data[i:i + 0xFFFF]
            if rest > 0 and i + 0xFFFF >= len(data):
                out += _KIND.pack(bit | 2, len(piece)) + struct.pack("<H", min(rest, 0xFFFF))
                out += piece
            else:
                out += _KIND.pack(bit, len(piece)) + piece
    return bytes(out)


def windows(chunks, size=MAX_LEN):
    """One stream's fuzz input cut at event boundaries into inputs of at most ``size``
    bytes (each event cut to fit): the later ones start mid-stream, as a probe started
    late does."""
    out, cur = [], []
    n = 0
    for d, ts, data, *true_len in chunks:
        t = true_len[0] if true_len else len(data)
        room = size - 5 - n
        if room < 64 and cur:
            out.append(encode(cur))
            cur, n = [], 0
            room = size - 5
        if len(data) > room:
            data = data[:room]
        cur.append((d, ts, data, t))
        n += len(data) + 5
    if cur:
        out.append(encode(cur))
    return out


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


REPORT = "report"       # the reporter's output hygiene (pipeline/report.py), not a parser


def report_target(data):
    """Values from arbitrary bytes (any UTF-8, invalid sequences too) through the reporter's
    one sanitising rule and its label budget: every value printed is non-empty, holds none of
    the characters the rule replaces, and the values fit the room they were given."""
    from pipeline import report
    if len(data) < 2:
        return
    room = 64 + data[0] * 4
    parts = data[1:].split(b"\x00")[:8]
    names = ["l%d" % i for i in range(len(parts))]
    vals = {n: report.clean(p.decode("utf-8", "replace")) for n, p in zip(names, parts)}
    report.fit_labels(vals, names, room)
    used = 0
    for n in names:
        v = vals[n]
        if not v or report._BAD.search(v):
            raise AssertionError("value not clean: %r" % v)
        if v != "(null)":
            used += len(n) + 4 + len(v.encode("utf-8", "replace"))
    if used > max(room, 5 * len(names) + sum(len(n) for n in names)):
        raise AssertionError("labels take %d bytes, room %d" % (used, room))


def seed_corpus(name, directory):
    """Every captured stream of the parser's fixtures (tests/support/feed.py), in windows."""
    from tests.support.feed import fixture_streams
    os.makedirs(directory, exist_ok=True)
    k = 0
    for _, chunks in fixture_streams(name):
        for blob in windows(chunks):
            with open(os.path.join(directory, "seed-%04d" % k), "wb") as out:
                out.write(blob)
            k += 1
    return k


def main():
    name, seconds = sys.argv[1], int(sys.argv[2])
    corpus = sys.argv[3] if len(sys.argv) > 3 else None
    args = [sys.argv[0], "-max_total_time=%d" % seconds, "-timeout=20", "-rss_limit_mb=1536",
            "-max_len=%d" % MAX_LEN, "-print_final_stats=1"]
    if os.environ.get("FUZZ_RUNS"):           # stop after this many executions
        args.append("-runs=%d" % int(os.environ["FUZZ_RUNS"]))
    if name == REPORT:
        if corpus:
            args.append(corpus)
        atheris.Setup(args, report_target)
        atheris.Fuzz()
        return
    proto = protocol_for_id(BY_NAME[name].proto_id)
    if corpus:
        seed_corpus(name, corpus)
        args.append(corpus)
    atheris.Setup(args, make_target(proto))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
