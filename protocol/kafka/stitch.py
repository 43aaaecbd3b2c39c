"""Kafka pairing by correlation id, per connection.

* A response answers the waiting request with its correlation id.  A broker answers the
  requests of one connection in order, so requests queued before the answered one that
  are still unanswered never will be: they become records without a response.
* Produce with ``acks=0`` gets no response: a record without response as soon as it is at
  the head of the queue (never a pending one).
* A response whose correlation id no waiting request has (capture started mid-stream, or
  lost bytes) is a record with ``req_ts == 0`` and api None.
"""
from __future__ import annotations

from protocol.base import Protocol, Record
from protocol.kafka.parse import KafkaParser
from protocol.kafka.types import KafkaState


class KafkaProtocol(Protocol):
    name = "kafka"
    parser_class = KafkaParser

    def new_state(self):
        return KafkaState()

    def stitch(self, reqs, resps, state):
        out = []
        pending = state.pending
        while resps:
            r = resps.popleft()
            idx = -1
            for i, q in enumerate(reqs):
                if q.cid == r.cid and not q.noreply:
                    idx = i
                    break
            if idx < 0:
                out.append(Record(0, r.ts, None, "", "", r.status, r.err))
                continue
            for _ in range(idx):
                out.append(self.unmatched_request(reqs.popleft()))
            q = reqs.popleft()
            pending.pop(q.cid, None)
            out.append(Record(q.ts, r.ts, q.api, q.api, q.path, r.status, r.err))
        while reqs and reqs[0].noreply:
            out.append(self.unmatched_request(reqs.popleft()))
        return out

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, frame.api, frame.api, frame.path)


PROTOCOL = KafkaProtocol()
