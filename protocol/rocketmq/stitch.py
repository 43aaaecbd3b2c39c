"""RocketMQ pairing by opaque.

* A response answers the waiting request with the same opaque; requests may be answered
  out of order (pipelined pulls), so the others keep waiting, up to MAX_WAITING.
* Oneway requests (flag bit 1) get no response: a record without response at once.
* A response whose opaque no waiting request has is a record with ``req_ts == 0``.
"""
from __future__ import annotations

from protocol.base import Protocol, Record
from protocol.rocketmq.parse import RmqParser

MAX_WAITING = 1024


class RmqProtocol(Protocol):
    name = "rocketmq"
    parser_class = RmqParser

    def stitch(self, reqs, resps, state):
        out = []
        while resps:
            r = resps.popleft()
            idx = -1
            for i, q in enumerate(reqs):
                if q.opaque == r.opaque and not q.oneway:
                    idx = i
                    break
            if idx < 0:
                out.append(Record(0, r.ts, None, "", "", r.status, r.err))
                continue
            q = reqs[idx]
            del reqs[idx]
            out.append(Record(q.ts, r.ts, q.api, q.api, q.path, r.status, r.err))
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

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, frame.api, frame.api, frame.path)


PROTOCOL = RmqProtocol()
