"""MySQL pairing by command id.

Each command frame carries the order in which it was sent; the response parser tags each
response with the id of the command it walked it for.  So a response answers exactly its
command: commands whose responses were lost in a capture gap become records without a
response (instead of shifting every later pair), and commands that get no response at all
(STMT_CLOSE, STMT_SEND_LONG_DATA, QUIT) become records without a response as soon as the
commands before them are settled.  A response whose command was not seen (capture started
mid-stream) is a record with ``req_ts == 0``.  A command whose timestamp is later than
its response's is not paired with it (both are counted, unpaired): a latency is never
negative.
"""
from __future__ import annotations

from protocol.base import Protocol, Record
from protocol.mysql.parse import MySQLParser
from protocol.mysql.types import MyState


class MySQLProtocol(Protocol):
    name = "mysql"
    parser_class = MySQLParser

    def new_state(self):
        return MyState()

    def stitch(self, reqs, resps, state):
        out = []
        while resps:
            r = resps.popleft()
            rid = r.id
            if rid is None:
                out.append(Record(0, r.ts, None, "", "", r.status, r.err))
                continue
            while reqs and reqs[0].id < rid:
                out.append(self.unmatched_request(reqs.popleft()))
            if reqs and reqs[0].id == rid:
                q = reqs.popleft()
                if q.ts > r.ts:
                    # seen after its "response": the events came out of order, or the
                    # response parser took a lost command's answer for this one; both
                    # counted, neither paired (no negative latency)
                    out.append(self.unmatched_request(q))
                    out.append(Record(0, r.ts, None, "", "", r.status, r.err))
                else:
                    out.append(Record(q.ts, r.ts, q.api, q.api, q.path, r.status, r.err))
            else:
                out.append(Record(0, r.ts, None, "", "", r.status, r.err))
        while reqs and reqs[0].noresp:
            out.append(self.unmatched_request(reqs.popleft()))
        return out

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, frame.api, frame.api, frame.path)


PROTOCOL = MySQLProtocol()
