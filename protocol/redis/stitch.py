"""Redis pairing: replies answer commands in order (pipelining included).

* A REPLY answers the oldest command still waiting; MULTI's commands are answered by their
  ``+QUEUED`` replies, EXEC by its array.
* Commands the server never answers (``CLIENT REPLY OFF``/``SKIP`` and what they silence,
  ``REPLCONF ACK``) become records without a response as soon as they reach the head.
* ``(P|S)(UN)SUBSCRIBE a b c`` is answered by one confirmation per channel: the first one
  makes the record, the others are absorbed (an UNSUBSCRIBE without channels absorbs every
  following confirmation of its kind).
* A PUSH (pub/sub message, RESP3 ``>`` push, a confirmation nobody asked for) has no
  command: it becomes a record with ``req_ts == 0`` and api ``"PUSH <kind>"`` (for example
  ``"PUSH message"``), so it is counted as a response and never shifts the pairing.
* A reply older than the oldest waiting command, or with no command waiting (capture
  started mid-stream), becomes a record with ``req_ts == 0`` and api None.
"""
from __future__ import annotations

from protocol.base import Protocol, Record
from protocol.redis.parse import RedisParser
from protocol.redis.types import PUSH, SUBCONF, RedisState


def _record(q, r):
    return Record(q.ts, r.ts, q.api, q.api, q.path, r.status, r.err)


def _push(r):
    api = "PUSH " + r.name
    return Record(0, r.ts, api, "PUSH", api, r.status, r.err)


class RedisProtocol(Protocol):
    name = "redis"
    parser_class = RedisParser

    def new_state(self):
        return RedisState()

    def stitch(self, reqs, resps, state):
        out = []
        while resps:
            r = resps[0]
            kind = r.kind
            if kind == PUSH:
                resps.popleft()
                out.append(_push(r))
                continue
            if kind == SUBCONF and state.sub_more and r.name == state.sub_name:
                resps.popleft()              # one more channel of the last (un)subscribe
                if state.sub_more > 0:
                    state.sub_more -= 1
                continue
            while reqs and reqs[0].noreply:
                out.append(self.unmatched_request(reqs.popleft()))
            if not reqs or r.ts < reqs[0].ts:
                resps.popleft()
                if kind == SUBCONF:
                    out.append(_push(r))
                else:
                    out.append(Record(0, r.ts, None, "", "", r.status, r.err))
                continue
            q = reqs[0]
            if kind == SUBCONF and not q.sub:
                resps.popleft()
                out.append(_push(r))
                continue
            reqs.popleft()
            resps.popleft()
            out.append(_record(q, r))
            if q.sub:
                state.sub_name = r.name
                state.sub_more = q.nargs - 1 if q.nargs > 0 else -1
            else:
                state.sub_more = 0
        while reqs and reqs[0].noreply:
            out.append(self.unmatched_request(reqs.popleft()))
        return out

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, frame.api, frame.api, frame.path)


PROTOCOL = RedisProtocol()
