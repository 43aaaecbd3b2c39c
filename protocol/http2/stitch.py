"""HTTP/2 and gRPC pairing: one record per stream, by stream id.

A stream opens with the request's HEADERS (``req_ts``) and ends with END_STREAM from the
server (on DATA or trailers: ``resp_ts``), or with RST_STREAM from either side, or with a
GOAWAY whose last stream id is below it (refused).  gRPC (content-type application/grpc*):
the api is the method path, the status grpc-status (trailers or trailers-only response).
See README.md beside this file for the error classes.
"""
from __future__ import annotations

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, Protocol, Record
from protocol.http.stitch import API_MAX, api_name as http_api_name
from protocol.http2.parse import PREFACE, H2Parser
from protocol.http2.types import (EV_END, EV_GOAWAY, EV_HEADERS, EV_PUSH, EV_RST, MAX_STREAMS,
                                  H2State, H2Stream)

UNKNOWN = "<unknown>"
# gRPC status codes that are the client's fault (Google AIP-193 / grpc's HTTP mapping: the
# codes mapped to 4xx); every other non-zero code is the server's
GRPC_CLIENT = frozenset((1, 3, 5, 6, 7, 8, 9, 10, 11, 16))
RST_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
             4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR",
             7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR",
             11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}
_NOTE = ("http2: HPACK state of a connection not seen from its start (opened before the "
         "probe, or bytes lost): header fields that refer to it are not decodable; paths "
         "and statuses not recovered are reported as <unknown>")


def _text(b):
    return b.decode("latin-1") if b is not None else None


def api_name(method, path, grpc):
    """HTTP/1.x's rule (``METHOD path``, no query, <= 63 characters); gRPC: the path."""
    if grpc:
        return path[:API_MAX]
    return http_api_name(method, path)


class H2Protocol(Protocol):
    name = "http2"
    parser_class = H2Parser

    def new_state(self):
        return H2State()

    def detect(self, data, msg_type):
        """For choosing a capture's protocol (pipeline/replay.py): the client preface, or
        a segment made only of frames that obey RFC 9113's rules, one of them HEADERS or
        SETTINGS (any 9 bytes look like some frame: this is stricter)."""
        if data[:24] == PREFACE:
            return True
        pos, n, seen = 0, len(data), False
        while pos + 9 <= n:
            if not H2Parser._plausible(data, pos):
                return False
            seen = seen or data[pos + 3] in (1, 4)
            pos += 9 + ((data[pos + 1] << 8) | data[pos + 2])
        return seen and pos >= n

    def state_after_upgrade(self, req):
        """State of a connection that became HTTP/2 by an HTTP/1.1 ``Upgrade: h2c``
        (RFC 7540 §3.2): both HPACK tables start empty, and ``req`` (ts, method, target),
        the upgraded request, is stream 1, half-closed by the client."""
        state = H2State(fresh=True)
        if req is not None:
            ts, method, target = req
            state.streams[1] = H2Stream(ts, method, target, False)
            state.max_sid = 1
        return state

    def stitch(self, reqs, resps, state):
        if not reqs and not resps:
            return []
        # both queues are in time order; merge them (requests first at equal times)
        evs = [(e.ts, 0, i, e) for i, e in enumerate(reqs)]
        evs += [(e.ts, 1, i, e) for i, e in enumerate(resps)]
        reqs.clear()
        resps.clear()
        if len(evs) > 1:
            evs.sort(key=lambda t: (t[0], t[1], t[2]))
        out = []
        streams = state.streams
        for _, d, _, ev in evs:
            kind = ev.kind
            sid = ev.sid
            if kind == EV_HEADERS:
                if ev.unknown and state.note is None:
                    state.note = _NOTE
                if d == 0:
                    st = streams.get(sid)
                    if st is None:
                        self._open(state, sid, ev, out)
                    continue
                st = streams.get(sid)
                if st is None:
                    if sid <= state.max_sid:
                        continue            # a stream already closed (reset): late frames
                    st = H2Stream(0, None, None, False)
                    self._add(streams, sid, st, out)
                self._response(st, ev)
                if ev.end:
                    out.append(self._record(streams.pop(sid), ev.ts))
            elif kind == EV_END:
                if d == 1:
                    st = streams.pop(sid, None)
                    if st is not None:
                        out.append(self._record(st, ev.ts))
            elif kind == EV_RST:
                st = streams.pop(sid, None)
                if st is not None:
                    out.append(self._record(st, ev.ts, rst=(d, ev.code)))
            elif kind == EV_PUSH:
                if d == 1 and sid not in streams:
                    self._open(state, sid, ev, out)
            elif kind == EV_GOAWAY:
                # streams the sender of GOAWAY will not process: refused by it
                for s in [s for s in streams if s > sid and (s & 1) == (1 - d)]:
                    out.append(self._record(streams.pop(s), ev.ts, rst=(d, 7)))
        return out

    def _open(self, state, sid, ev, out):
        streams = state.streams
        if sid > state.max_sid:
            state.max_sid = sid
        f = ev.fields
        method = _text(f.get(b":method"))
        path = _text(f.get(b":path"))
        ct = f.get(b"content-type")
        grpc = ct is not None and ct.startswith(b"application/grpc")
        if method is None:
            method = UNKNOWN if ev.unknown else "-"
        if path is None:
            path = UNKNOWN if ev.unknown else "-"
        self._add(streams, sid, H2Stream(ev.ts, method, path, grpc), out)

    def _add(self, streams, sid, st, out):
        if len(streams) >= MAX_STREAMS:
            old = next(iter(streams))
            out.append(self._record(streams.pop(old), 0))
        streams[sid] = st

    @staticmethod
    def _response(st, ev):
        f = ev.fields
        st.resp_seen = True
        st.resp_ts = ev.ts
        s = f.get(b":status")
        if s is not None:
            if s[:1] == b"1" and not ev.end:
                return                       # interim response (100, 103)
            st.status = _text(s)
            ct = f.get(b"content-type")
            if ct is not None and ct.startswith(b"application/grpc"):
                st.grpc = True
        elif st.status is None and ev.unknown and not ev.end:
            st.status = UNKNOWN
        g = f.get(b"grpc-status")
        if g is not None:
            st.grpc_status = _text(g)
        elif ev.end and ev.unknown and st.grpc_status is None and st.grpc:
            st.grpc_status = UNKNOWN

    def _record(self, st, ts, rst=None):
        method = st.method or UNKNOWN
        path = st.path or UNKNOWN
        grpc = st.grpc
        err = ERR_NONE
        if grpc:
            status = st.grpc_status
            if status is None:
                status = st.status or ""
            if status and status != UNKNOWN:
                if status.isdigit():
                    code = int(status)
                    if st.grpc_status is not None and code:
                        err = ERR_CLIENT if code in GRPC_CLIENT else ERR_SERVER
                    elif st.grpc_status is None:
                        err = _http_err(code)
        else:
            status = st.status or ""
            if status.isdigit():
                err = _http_err(int(status))
        if rst is not None:
            d, code = rst
            if not status or code:
                status = status or "RST_" + RST_NAMES.get(code, str(code))
                if err == ERR_NONE and (code or not st.resp_seen):
                    # reset by the client: the client gave up; by the server: it failed
                    err = ERR_CLIENT if d == 0 else ERR_SERVER
        api = None if st.req_ts == 0 else api_name(method, path, grpc)
        return Record(st.req_ts, ts, api, method if st.req_ts else "", path if st.req_ts
                      else "", status, err)

    def retire(self, reqs, state, n):
        """The kernel's own request/response accounting (lost_msgs) is HTTP/1.x's; an
        HTTP/2 connection never gets any: nothing to retire."""
        return [], 0

    def flush(self, reqs, resps, state):
        out = self.stitch(reqs, resps, state)
        streams = state.streams
        for sid in list(streams):
            st = streams.pop(sid)
            out.append(self._record(st, st.resp_ts if st.resp_seen else 0))
        return out


def _http_err(code):
    if code >= 500:
        return ERR_SERVER
    if code >= 400:
        return ERR_CLIENT
    return ERR_NONE


PROTOCOL = H2Protocol()
