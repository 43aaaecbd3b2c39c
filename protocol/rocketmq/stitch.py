"""RocketMQ pairing by opaque.

* A response answers the waiting request with the same opaque; requests may be answered
  out of order (pipelined pulls), so the others keep waiting, up to MAX_WAITING.
* Oneway requests (flag bit 1) get no response: a record without response at once.
* A response whose opaque no waiting request has is a record with ``req_ts == 0``.
"""
from __future__ import annotations

import struct

from protocol.lenprefix import IdProtocol, answer
from protocol.rocketmq.parse import RmqParser

_HEAD = struct.Struct(">iI")

MAX_WAITING = 1024


class RmqProtocol(IdProtocol):
    name = "rocketmq"
    parser_class = RmqParser

    def detect(self, data, msg_type):
        """A remoting frame at a segment's start: its length in the segment, serialize type
        JSON with a header starting '{"code"' (the kernel's detect_rocketmq) or ROCKETMQ."""
        if len(data) < 16:
            return False
        n, word = _HEAD.unpack_from(data, 0)
        hlen = word & 0xFFFFFF
        if n + 4 > len(data) or hlen + 4 > n:
            return False
        if word >> 24 == 0:
            return data[8:15] == b'{"code"'
        return word >> 24 == 1 and hlen >= 17

    def stitch(self, reqs, resps, state):
        out = []
        while resps:
            r = resps.popleft()
            opaque = r.opaque
            answer(reqs, r, lambda q: q.opaque == opaque and not q.oneway, out)
        if reqs:
            keep = []
            for q in list(reqs):
                if q.oneway:
                    out.append(self.unmatched_request(q))
                else:
                    keep.append(q)
            while len(keep) > MAX_WAITING:
                out.append(self.unmatched_request(keep.pop(0)))
            reqs.clear()
            reqs.extend(keep)
        return out



PROTOCOL = RmqProtocol()
