"""Kafka pairing by correlation id, per connection.

* A response answers the waiting request with its correlation id.  A broker answers the
  requests of one connection in order, so requests queued before the answered one that
  are still unanswered never will be: they become records without a response.
* Produce with ``acks=0`` gets no response: a record without response as soon as it is at
  the head of the queue (never a pending one).
* A response whose correlation id is not in ``KafkaState.pending`` (the ids of the requests
  waiting, kept by the request parser) answers nothing: the queue is not searched for it.
* A response whose correlation id no waiting request has (capture started mid-stream, or
  lost bytes) is a record with ``req_ts == 0`` and api None.
"""
from __future__ import annotations

import struct

from protocol.base import MessageType, Record
from protocol.kafka.parse import KafkaParser
from protocol.lenprefix import IdProtocol
from protocol.kafka.types import MAX_API_KEY, KafkaState

_HEAD = struct.Struct(">ihhih")


class KafkaProtocol(IdProtocol):
    name = "kafka"
    parser_class = KafkaParser

    def new_state(self):
        return KafkaState()

    def detect(self, data, msg_type):
        """The kernel's rule (include/l7.h detect_kafka) on a segment's start: a request
        header with a plausible API key, version and client id (responses: no)."""
        if msg_type != MessageType.REQUEST or len(data) < 14:
            return False
        size, key, ver, cid, n = _HEAD.unpack_from(data, 0)
        return (size + 4 <= len(data) and 8 <= size and 0 <= key <= MAX_API_KEY
                and 0 <= ver <= 20 and cid >= 0 and -1 <= n <= 255 and 14 + max(n, 0) <= len(data))

    def stitch(self, reqs, resps, state):
        out = []
        pending = state.pending
        while resps:
            r = resps.popleft()
            idx = -1
            if r.cid in pending:         # else no request waits for it: no scan
                for i, q in enumerate(reqs):
                    if q.cid == r.cid and not q.noreply:
                        idx = i
                        break
            if idx < 0:
                out.append(Record(0, r.ts, None, "", "", r.status, r.err))
                continue
            for _ in range(idx):
                q = reqs.popleft()
                if not q.noreply:
                    pending.pop(q.cid, None)
                out.append(self.unmatched_request(q))
            q = reqs.popleft()
            pending.pop(q.cid, None)
            out.append(Record(q.ts, r.ts, q.api, q.api, q.path, r.status, r.err))
        while reqs and reqs[0].noreply:
            out.append(self.unmatched_request(reqs.popleft()))
        return out



PROTOCOL = KafkaProtocol()
