"""PostgreSQL pairing: one record per statement the server ran.

* Simple query ``Q``: each CommandComplete / EmptyQueryResponse / ErrorResponse before its
  ReadyForQuery is one record (a multi-statement string gives several); api and path are
  those of the n-th statement of the string (the CommandComplete tag's verb if the string
  has fewer statements than results).
* Extended query: each Execute is one record, answered by CommandComplete /
  EmptyQueryResponse / PortalSuspended / ErrorResponse; api is the verb of the statement
  text remembered at Parse time (by statement name, through the Bind's portal).  After an
  error the server skips to the next Sync: Executes it skipped become records without a
  response when the ReadyForQuery arrives.  An error before any Execute of a Sync group
  (a failed Parse or Bind) is a record of its own, on the Sync.
* Parse/Bind/Close completions, row data and ReadyForQuery are not records.
* A response turn the kernel cut after its head (``CUT``, see README "Cost of watching")
  answers every request sent before it that is not answered yet: one record per statement
  result still expected, with no status (the CommandComplete was not delivered).
* A result with no request waiting (capture started mid-stream) is a record with
  ``req_ts == 0``; a ReadyForQuery with nothing waiting is dropped.
"""
from __future__ import annotations

from protocol.base import Protocol, Record
from protocol.pgsql.parse import PgParser
from protocol.pgsql.types import CUT, ERROR, QUERY, READY, SYNC, PgState


class PgProtocol(Protocol):
    name = "pgsql"
    parser_class = PgParser

    def new_state(self):
        return PgState()

    def stitch(self, reqs, resps, state):
        out = []
        while resps:
            r = resps[0]
            if r.kind == READY:
                resps.popleft()
                while reqs and reqs[0].kind != QUERY and reqs[0].kind != SYNC:
                    out.append(self.unmatched_request(reqs.popleft()))   # skipped Execute
                if reqs and r.ts >= reqs[0].ts:
                    q = reqs.popleft()
                    if q.kind == QUERY and not q.done:
                        out.append(Record(q.ts, r.ts, q.api, q.api, q.path, "", 0))
                continue
            if r.kind == CUT:
                resps.popleft()
                out.extend(self._cut(reqs, r.ts))
                continue
            if not reqs or r.ts < reqs[0].ts:
                resps.popleft()
                out.append(Record(0, r.ts, None, "", "", r.status, r.err))
                continue
            q = reqs[0]
            resps.popleft()
            if q.kind == QUERY:
                i = q.done
                q.done = i + 1
                if i < len(q.stmts):
                    api, path = q.stmts[i]
                elif r.kind == ERROR or not r.status:
                    api, path = q.api, q.path
                else:
                    api = r.status.split(" ", 1)[0]
                    path = q.path
                out.append(Record(q.ts, r.ts, api, api, path, r.status, r.err))
                continue
            if q.kind == SYNC:
                if r.kind == ERROR:
                    out.append(Record(q.ts, r.ts, q.api, q.api or "", q.path, r.status, r.err))
                else:
                    out.append(Record(0, r.ts, None, "", "", r.status, r.err))
                continue
            reqs.popleft()
            out.append(Record(q.ts, r.ts, q.api, q.api, q.path, r.status, r.err))
        return out

    def _cut(self, reqs, ts):
        out = []
        while reqs and reqs[0].ts <= ts:
            q = reqs.popleft()
            if q.kind == QUERY:
                rest = q.stmts[q.done:] if q.done < len(q.stmts) else (
                    () if q.done else ((q.api, q.path),))
                for api, path in rest:
                    out.append(Record(q.ts, ts, api, api, path, "", 0))
            elif q.kind != SYNC:
                out.append(Record(q.ts, ts, q.api, q.api, q.path, "", 0))
        return out

    def flush(self, reqs, resps, state):
        out = self.stitch(reqs, resps, state)
        while reqs:
            q = reqs.popleft()
            if q.kind == SYNC or (q.kind == QUERY and q.done):
                continue          # nothing of its own to report
            out.append(self.unmatched_request(q))
        while resps:
            out.append(self.unmatched_response(resps.popleft()))
        return out

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, frame.api, frame.api or "", frame.path)

    def unmatched_response(self, frame):
        return Record(0, frame.ts, None, "", "", frame.status, frame.err)


PROTOCOL = PgProtocol()
