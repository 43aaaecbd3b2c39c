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
"""
from __future__ import annotations

from collections import deque

from pipeline.stream import DataStream, StreamStats
from protocol.base import MessageType


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
        self.reqs = deque()
        self.resps = deque()

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
    for direction, ts, data in chunks:
        if prefix is not None and len(data) > prefix:
            f.feed(direction, ts, data[:prefix], len(data))
        else:
            f.feed(direction, ts, data)
    return f.close()


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
