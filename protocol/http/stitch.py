"""HTTP/1.x pairing: responses answer requests in order (RFC 9112 §9.3.2), so pipelined
requests are matched one by one, unlike upstream which keeps only the latest request."""
from __future__ import annotations

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, Protocol, Record
from protocol.http.parse import HttpParser
from protocol.http.types import HttpState

API_MAX = 63


def api_name(method, target):
    """``"METHOD path"`` without the query, at most 63 characters (upstream's rule)."""
    q = target.find("?")
    if q >= 0:
        target = target[:q]
    s = method + " " + target
    return s if len(s) <= API_MAX else s[:API_MAX]


class HttpProtocol(Protocol):
    name = "http"
    parser_class = HttpParser

    def new_state(self):
        return HttpState()

    def stitch(self, reqs, resps, state):
        out = []
        while resps:
            resp = resps.popleft()
            status = resp.status
            if status < 200 and status != 101:
                continue          # interim response (100 Continue, 103): not an answer
            # requests sent after this response cannot be what it answers
            if not reqs or reqs[0].ts > resp.ts:
                out.append(Record(0, resp.ts, None, "", "", str(status), _err(status)))
                continue
            req = reqs.popleft()
            out.append(Record(req.ts, resp.ts, api_name(req.method, req.target), req.method,
                              req.target, str(status), _err(status)))
        return out

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, api_name(frame.method, frame.target), frame.method,
                      frame.target)


def _err(status):
    if status >= 500:
        return ERR_SERVER
    if status >= 400:
        return ERR_CLIENT
    return ERR_NONE


PROTOCOL = HttpProtocol()
