"""MongoDB pairing by requestID / responseTo.

* A reply answers the waiting request whose requestID is its responseTo; requests queued
  before it stay waiting (a driver may multiplex, replies can come in any order), up to
  MAX_WAITING, beyond which the oldest become records without a response.
* A request with moreToCome (OP_MSG) or a legacy write (OP_INSERT/UPDATE/DELETE,
  OP_KILL_CURSORS) expects no reply: a record without response at once.
* Exhaust cursors: a reply with moreToCome is followed by replies whose responseTo is the
  previous reply's requestID; they belong to the same request and make no records of
  their own (one record per request).
* A reply that answers no waiting request is a record with ``req_ts == 0``.
"""
from __future__ import annotations

from protocol.base import MessageType
from protocol.lenprefix import IdProtocol, answer
from protocol.mongo.parse import HDR, REQUEST_OPS, RESPONSE_OPS, MongoParser
from protocol.mongo.types import MongoState

MAX_WAITING = 256


class MongoProtocol(IdProtocol):
    name = "mongo"
    parser_class = MongoParser

    def new_state(self):
        return MongoState()

    def detect(self, data, msg_type):
        """The kernel's rule (detect_mongo) on a segment's start: a whole header with a
        length the segment holds and an opcode of this direction."""
        if len(data) < 16:
            return False
        n, _, _, op = HDR.unpack_from(data, 0)
        ops = REQUEST_OPS if msg_type == MessageType.REQUEST else RESPONSE_OPS
        return 16 <= n <= len(data) and op in ops

    def stitch(self, reqs, resps, state):
        out = []
        while reqs and reqs[0].noreply:
            out.append(self.unmatched_request(reqs.popleft()))
        exhaust = state.exhaust
        while resps:
            r = resps.popleft()
            if r.resp_to in exhaust:
                exhaust.pop(r.resp_to)
                if r.more:
                    exhaust[r.rid] = 1
                continue
            to = r.resp_to
            if answer(reqs, r, lambda q: q.rid == to and not q.noreply, out) is None:
                continue
            if r.more:
                if len(exhaust) > MAX_WAITING:
                    exhaust.clear()
                exhaust[r.rid] = 1
        while reqs and reqs[0].noreply:
            out.append(self.unmatched_request(reqs.popleft()))
        waiting = [q for q in reqs if not q.noreply]
        while len(waiting) > MAX_WAITING:
            q = waiting.pop(0)
            reqs.remove(q)
            out.append(self.unmatched_request(q))
        return out



PROTOCOL = MongoProtocol()
