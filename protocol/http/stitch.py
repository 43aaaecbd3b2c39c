"""HTTP/1.x pairing: responses answer requests in order (RFC 9112 §9.3.2), so pipelined
requests are matched one by one, unlike upstream which keeps only the latest request."""
from __future__ import annotations

from bpf.layout import DEFINES
from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, Protocol, Record
from protocol.base import MessageType
from protocol.http.parse import _PREFIXES_REQ, HttpParser
from protocol.http.types import HttpState

API_MAX = DEFINES["HTTP_API_LEN"]      # the kernel cuts API names at the same length
_API_CACHE = {}            # (method, target) -> api_name(): the same URLs come again and again
_API_CACHE_MAX = 4096


def api_name(method, target):
    """``"METHOD path"`` without the query, at most 63 characters (upstream's rule)."""
    q = target.find("?")
    if q >= 0:
        target = target[:q]
    s = method + " " + target
    return s if len(s) <= API_MAX else s[:API_MAX]


_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1


def api_hash(api):
    """The kernel's name for an API (include/l7.h http_api_hash): 64-bit FNV-1a of its
    bytes as sent (the parser decodes them as latin-1), never 0.  Computed once per new API
    name (the probe keeps a table), not per request."""
    h = _FNV_OFFSET
    for c in api.encode("latin-1", "replace"):
        h = ((h ^ c) * _FNV_PRIME) & _MASK64
    return h or 1


class HttpProtocol(Protocol):
    name = "http"
    parser_class = HttpParser
    api_hash = staticmethod(api_hash)
    kernel_sampled = True

    def detect(self, data, msg_type):
        """The kernel's rule (include/l7.h detect_http): a known method and a blank, or a
        status line; never HTTP/2's preface ("PRI * HTTP/2.0"), which HTTP/1.x parsing
        would take for a request it refuses (used by --replay to guess the protocol)."""
        if msg_type == MessageType.REQUEST:
            return data.startswith(_PREFIXES_REQ)
        return data.startswith(b"HTTP/1.")

    def new_state(self):
        return HttpState()

    def state_at_rest(self, state):
        return not state.methods and not state.upgraded and state.switch_to is None

    def stitch(self, reqs, resps, state):
        # every response is consumed, requests as they are answered: walked by index and
        # taken out once at the end (what a bug's exception interrupts stays queued)
        out = []
        append = out.append
        cache = _API_CACHE
        status_info = _STATUS_INFO
        new = object.__new__
        nreq = len(reqs)
        ri = 0                    # requests answered so far
        k = 0                     # responses consumed so far
        try:
            for resp in resps:
                k += 1
                status = resp.status
                if status < 200:
                    if status != 101:
                        continue      # interim response (100 Continue, 103): not an answer
                    if state.switch_to:
                        # h2c upgrade: the request is answered on the new protocol's stream 1
                        if ri < nreq and reqs[ri].ts <= resp.ts:
                            req = reqs[ri]
                            ri += 1
                            state.upgrade_req = (req.ts, req.method, req.target)
                        continue
                info = status_info.get(status)
                if info is None:
                    info = (str(status), _err(status))
                text, err = info
                resp_ts = resp.ts
                if ri < nreq:
                    req = reqs[ri]
                    # requests sent after this response cannot be what it answers
                    if req.ts <= resp_ts:
                        ri += 1
                        method = req.method
                        target = req.target
                        key = (method, target)
                        api = cache.get(key)
                        if api is None:
                            if len(cache) >= _API_CACHE_MAX:
                                cache.clear()
                            api = cache[key] = api_name(method, target)
                        # Record(req.ts, resp_ts, api, method, target, text, err), without
                        # its __init__'s call (tests/test_http_parser.py
                        # test_frames_made_inline)
                        rec = new(Record)
                        rec.req_ts = req.ts
                        rec.resp_ts = resp_ts
                        rec.api = api
                        rec.method = method
                        rec.path = target
                        rec.status = text
                        rec.err = err
                        append(rec)
                        continue
                append(Record(0, resp_ts, None, "", "", text, err))
        finally:
            del resps[:k]
            del reqs[:ri]
        return out

    def retire(self, reqs, state, n):
        out, left = Protocol.retire(self, reqs, state, n)
        methods = state.methods
        for _ in range(min(n - left, len(methods))):
            methods.popleft()        # the response parser will not see their answers
        return out, left

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, api_name(frame.method, frame.target), frame.method,
                      frame.target)


def _err(status):
    if status >= 500:
        return ERR_SERVER
    if status >= 400:
        return ERR_CLIENT
    return ERR_NONE


# status -> (its text, its error class): the statuses seen over and over, converted once
_STATUS_INFO = {i: (str(i), _err(i)) for i in range(100, 600)}

PROTOCOL = HttpProtocol()
