"""Drive a protocol over recorded chunks the way the pipeline does.

One ``pipeline.stream.DataStream`` per direction, one parser per direction sharing one
``PROTOCOL.new_state()``, ``stitch`` after every chunk, ``flush`` at the end.  Chunks are
``(direction, ts_ns, payload)`` with direction ``"c2s"`` (client to server: REQUEST) or
``"s2c"`` (RESPONSE), as returned by ``tests.support.pcap``.

Ways of cutting the same traffic:

* ``run(proto, chunks)``                    every chunk as it was captured;
* ``run(proto, split_at(chunks, k))``       every chunk split in two at offset k;
* ``run(proto, byte_chunks(chunks))``       one byte at a time;
* ``run(proto, chunks, prefix=64)``         each chunk cut to its first 64 bytes, its true
                                            length kept (a capture gap for the rest).

A chunk may carry a fourth item, its true length (a capture shorter than the syscall).
``fixture_streams(name)`` gives every real captured stream of a parser.
"""
from __future__ import annotations

import os
import struct

from pipeline.stream import DataStream, StreamStats
from protocol.base import Fifo, MessageType


class FeedResult:
    __slots__ = ("records", "req_stats", "resp_stats", "state", "req_frames", "resp_frames")

    def __init__(self):
        self.records = []
        self.req_stats = StreamStats()
        self.resp_stats = StreamStats()
        self.state = None
        self.req_frames = 0
        self.resp_frames = 0

    @property
    def exceptions(self):
        return self.req_stats.exceptions + self.resp_stats.exceptions

    def apis(self):
        return [r.api for r in self.records]

    def paired(self):
        return [r for r in self.records if r.req_ts and r.resp_ts]


class Feeder:
    """Incremental form of :func:`run` (feed chunk by chunk, inspect in between)."""

    def __init__(self, proto):
        self.proto = proto
        self.result = FeedResult()
        state = self.result.state = proto.new_state()
        self.req = DataStream(proto.new_parser(MessageType.REQUEST, state), self.result.req_stats)
        self.resp = DataStream(proto.new_parser(MessageType.RESPONSE, state),
                               self.result.resp_stats)
        self.reqs = Fifo()          # the pipeline's queue type (a stream's frames)
        self.resps = Fifo()

    def feed(self, direction, ts, data, true_len=None):
        stream = self.req if direction == "c2s" else self.resp
        stream.append(data, len(data) if true_len is None else true_len, ts)
        self._collect()
        self.result.records.extend(self.proto.stitch(self.reqs, self.resps, self.result.state))

    def _collect(self):
        for stream, queue, attr in ((self.req, self.reqs, "req_frames"),
                                    (self.resp, self.resps, "resp_frames")):
            if stream.frames:
                setattr(self.result, attr, getattr(self.result, attr) + len(stream.frames))
                queue.extend(stream.frames)
                stream.frames.clear()

    def close(self):
        self._collect()
        self.result.records.extend(self.proto.flush(self.reqs, self.resps, self.result.state))
        return self.result


def run(proto, chunks, prefix=None):
    """Feed ``chunks``; with ``prefix``, only the first ``prefix`` bytes of each chunk are
    delivered, with its true length (what a bounded capture produces)."""
    f = Feeder(proto)
    for direction, ts, data, *true_len in chunks:
        n = true_len[0] if true_len else len(data)
        if prefix is not None and len(data) > prefix:
            f.feed(direction, ts, data[:prefix], n)
        else:
            f.feed(direction, ts, data, n)
    return f.close()


def chunks_of(*pairs, t0=1000):
    """(direction, data) pairs as chunks with made-up increasing timestamps."""
    return [(d, t0 + i * 10, data) for i, (d, data) in enumerate(pairs)]


def run_pairs(proto, *pairs, **kw):
    """Feed (direction, data) pairs (see chunks_of); no parser exception allowed."""
    res = run(proto, chunks_of(*pairs), **kw)
    assert res.exceptions == 0
    return res


def records(res):
    """(api, path, status, err, req seen, resp seen) of each record."""
    return [(r.api, r.path, r.status, r.err, bool(r.req_ts), bool(r.resp_ts))
            for r in res.records]


def split_at(chunks, k):
    """Every chunk longer than k split into [:k] and [k:] (same timestamp)."""
    out = []
    for d, ts, data in chunks:
        if 0 < k < len(data):
            out.append((d, ts, data[:k]))
            out.append((d, ts, data[k:]))
        else:
            out.append((d, ts, data))
    return out


def byte_chunks(chunks):
    out = []
    for d, ts, data in chunks:
        out.extend((d, ts, data[i:i + 1]) for i in range(len(data)))
    return out


def merge_directions(chunks):
    """Consecutive chunks of the same direction merged into one (a big read/write)."""
    out = []
    for d, ts, data in chunks:
        if out and out[-1][0] == d:
            out[-1] = (d, out[-1][1], out[-1][2] + data)
        else:
            out.append((d, ts, data))
    return out


def summary(records):
    """(api, req seen, resp seen, status, err) tuples, for compact assertions."""
    return [(r.api, bool(r.req_ts), bool(r.resp_ts), r.status, r.err) for r in records]


def assert_cut_every_way(proto, chunks, byte_limit, splits):
    """The records of ``chunks`` do not depend on how the bytes were cut: byte by byte
    (when shorter than ``byte_limit``), split at each offset in ``splits``, and with each
    direction's consecutive chunks merged; no parser exception in any of them."""
    whole = summary(run(proto, chunks).records)
    variants = [split_at(chunks, k) for k in splits] + [merge_directions(chunks)]
    if total_len(chunks) < byte_limit:
        variants.append(byte_chunks(chunks))
    for v in variants:
        res = run(proto, v)
        assert res.exceptions == 0
        assert summary(res.records) == whole


# -- robustness ------------------------------------------------------------------------
def total_len(chunks):
    return sum(len(d) for _, _, d in chunks)


def truncated(chunks, k):
    """The first k bytes of the conversation (chunks in order), the last one cut."""
    out = []
    for d, ts, data in chunks:
        if k <= 0:
            break
        out.append((d, ts, data[:k]))
        k -= len(data)
    return out


def flipped(chunks, rng, flips):
    """A copy with ``flips`` random bytes replaced by random values."""
    out = [bytearray(data) for _, _, data in chunks]
    sizes = [len(b) for b in out]
    total = sum(sizes)
    if total:
        for _ in range(flips):
            i = rng.randrange(total)
            for j, size in enumerate(sizes):
                if i < size:
                    out[j][i] = rng.randrange(256)
                    break
                i -= size
    return [(d, ts, bytes(b)) for (d, ts, _), b in zip(chunks, out)]


def robustness_runs(proto, chunks, rng, max_runs=120):
    """Feed many damaged variants of ``chunks``; return the total parser exceptions."""
    exceptions = 0
    total = total_len(chunks)
    stride = max(1, total // max_runs)
    for k in range(1, total, stride):
        exceptions += run(proto, truncated(chunks, k)).exceptions
    for k in (1, 2, 3, 5, 7, 11, 13, 31, 64, 100):
        exceptions += run(proto, split_at(chunks, k)).exceptions
    for prefix in (1, 4, 9, 33, 200):
        exceptions += run(proto, chunks, prefix=prefix).exceptions
    for flips in (1, 2, 8, 64):
        for _ in range(4):
            exceptions += run(proto, flipped(chunks, rng, flips)).exceptions
    for _ in range(8):
        noise = [(rng.choice(("c2s", "s2c")), i, bytes(rng.randrange(256) for _ in range(
            rng.randrange(1, 300)))) for i in range(6)]
        exceptions += run(proto, noise).exceptions
    return exceptions


# -- real captures of each parser's protocol ----------------------------------------------
# parser name -> (fixtures directory, server ports orienting its connections); the fuzz
# seeds (tests/fuzz/), the resync tests (tests/test_parser_limits.py) and the protocols'
# own tests load the captures from here.
FIXTURE_SETS = {
    "http": ("http", (80, 8080, 5000, 3000)),
    "redis": ("redis", (6379, 6380)),
    "pgsql": ("postgresql", (5432, 8000)),
    "mysql": ("mysql", (3306, 30130)),
    "kafka": ("kafka", (9092, 36333)),
    "mongo": ("mongodb", (27017, 3717)),
    "rocketmq": ("rocketmq", (10911, 10909, 9876)),
    "dns": ("dns", (53,)),
    "http2": (("http2", "grpc"), ()),
}


def _fixture_dirs(proto_name):
    from tests.support.tshark import fixture
    dirs = FIXTURE_SETS[proto_name][0]
    return [os.path.dirname(fixture(d, "x")) for d in ((dirs,) if isinstance(dirs, str)
                                                       else dirs)]


def fixture_files(proto_name):
    """Paths of the captures of ``proto_name`` (sorted)."""
    return [os.path.join(d, f) for d in _fixture_dirs(proto_name) for f in sorted(os.listdir(d))
            if f.endswith((".pcap", ".pcapng"))]


def file_conns(proto_name, path):
    """TCP connections of one capture (``path``: a path or a name in the protocol's fixture
    directory), oriented by the protocol's server ports."""
    from tests.support.pcap import read_tcp_connections
    if not os.path.isabs(path):
        path = os.path.join(_fixture_dirs(proto_name)[0], path)
    return read_tcp_connections(path, server_ports=FIXTURE_SETS[proto_name][1])


def dns_flows(path):
    """{(transport, client ip, client port): [(direction, ts, framed bytes, true length)]}
    of one DNS capture: UDP datagrams framed as the pipeline frames them (pipeline/udp.py:
    a 2-byte length), and TCP connections."""
    from tests.support.pcap import read_tcp_connections, read_udp_datagrams
    out = {}
    for ts, src, sport, dst, dport, payload, true_len in read_udp_datagrams(path):
        if sport == 53 and dport != 53:
            key, d = ("udp", dst, dport), "s2c"
        else:
            key, d = ("udp", src, sport), "c2s"
        out.setdefault(key, []).append((d, ts, struct.pack(">H", true_len & 0xFFFF) + payload,
                                        true_len + 2))
    for c in read_tcp_connections(path, server_ports=(53,)):
        if c.client[1] == 53:          # only the server's side was captured
            chunks = [("s2c", ts, d) for _, ts, d in c.chunks]
            key = ("tcp", "?", -1)     # its client port is not known: merged
        else:
            chunks, key = c.chunks, ("tcp",) + c.client
        out.setdefault(key, []).extend((d, ts, b, len(b)) for d, ts, b in chunks)
    return out


def fixture_streams(proto_name):
    """Every captured stream of ``proto_name``: [(file name, chunks)], chunks as
    ``(direction, ts, data, true length)`` in capture order.  DNS streams are named
    ``"<file> (udp)"`` or ``"<file> (tcp)"``."""
    out = []
    for path in fixture_files(proto_name):
        name = os.path.basename(path)
        if proto_name == "dns":
            out.extend(("%s (%s)" % (name, key[0]), ch) for key, ch in dns_flows(path).items())
            continue
        for c in file_conns(proto_name, path):
            out.append((name, [(d, ts, data, len(data)) for d, ts, data in c.chunks]))
    return out
