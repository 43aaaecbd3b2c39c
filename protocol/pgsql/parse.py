"""PostgreSQL protocol 3.0 framing.

Every message after the startup phase is ``tag (1 byte) + int32 length (itself included) +
body``; startup-phase messages from the client have no tag (``int32 length + int32 code``:
StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).  Only the messages a record
needs become frames (Q, E, S, F from the client; C, I, s, V, E, Z from the server); the
rest (Parse/Bind bookkeeping, row descriptions, data rows, COPY data, auth) is consumed
with IGNORE, and a body longer than what was captured is skipped with ``end > len(buf)``.
"""
from __future__ import annotations

import re
import struct

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType, ParseState, Parser
from protocol.pgsql.types import (COMPLETE, CUT, ERROR, EXEC, FUNC, MAX_STATEMENTS, QUERY, READY,
                                  MAX_QUERY_STATEMENTS, SYNC, PgRequest, PgResponse, name_key,
                                  sql_path, sql_verb, split_statements)

SUCCESS = ParseState.SUCCESS
NEEDS_MORE_DATA = ParseState.NEEDS_MORE_DATA
INVALID = ParseState.INVALID
IGNORE = ParseState.IGNORE

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_MSG = 256 * 1024 * 1024
HEAD = 160        # body bytes wanted before a frame is built from a long message
TEXT_MAX = 64 * 1024
CHAIN = 8         # well-formed messages in a row that make a resynchronisation point sure

_U32 = struct.Struct(">I")
_U32_U32 = struct.Struct(">II")

# tag -> minimum length field
REQ_MIN = {ord(c): m for c, m in (("Q", 5), ("P", 8), ("B", 12), ("E", 9), ("D", 6),
                                    ("C", 6), ("S", 4), ("H", 4), ("X", 4), ("p", 4),
                                    ("F", 12), ("d", 4), ("c", 4), ("f", 5))}
RESP_MIN = {ord(c): m for c, m in (("C", 5), ("E", 5), ("Z", 5), ("I", 4), ("s", 4),
                                     ("V", 8), ("1", 4), ("2", 4), ("3", 4), ("n", 4),
                                     ("t", 6), ("T", 6), ("D", 6), ("S", 6), ("K", 12),
                                     ("R", 8), ("N", 5), ("A", 10), ("G", 7), ("H", 7),
                                     ("W", 7), ("d", 4), ("c", 4), ("v", 12))}
# exact lengths where the protocol fixes them
FIXED = {ord("S"): 4, ord("H"): 4, ord("X"): 4, ord("c"): 4}
RESP_FIXED = {ord("Z"): 5, ord("I"): 4, ord("s"): 4, ord("1"): 4, ord("2"): 4, ord("3"): 4,
              ord("n"): 4, ord("c"): 4, ord("K"): 12}

RE_REQ_TAG = re.compile(rb"[QPBEDCSHXpFdcf]\x00")
RE_RESP_TAG = re.compile(rb"[CEZIsV123ntTDSKRNAGHWdcv]\x00")

# SQLSTATE classes that are the server's fault (connection exception, insufficient
# resources, operator intervention, system error, internal error); others are the client's.
SERVER_CLASSES = frozenset(("08", "53", "57", "58", "XX"))


def sqlstate_err(code):
    return ERR_SERVER if code[:2] in SERVER_CLASSES else ERR_CLIENT


def _cstr(buf, pos, limit):
    """(text, position after the NUL) of a C string at pos, or (text, limit) if cut."""
    z = buf.find(b"\x00", pos, limit)
    if z < 0:
        return bytes(buf[pos:limit]).decode("utf-8", "replace"), limit
    return bytes(buf[pos:z]).decode("utf-8", "replace"), z + 1


class PgParser(Parser):
    __slots__ = ("parsed_since_sync",)

    def __init__(self, msg_type, state):
        super().__init__(msg_type, state)
        self.parsed_since_sync = None   # requests: (verb, path) of a Parse not yet executed

    def turn_cut(self, ts):
        """The rest of this response turn was not delivered (the kernel keeps its head):
        a CUT frame, on which the stitcher answers the requests sent before it (a client
        waits for the ReadyForQuery of its last Sync or Query before it sends more).  The
        turn that ends the startup phase (ParameterStatus messages, then ReadyForQuery) can
        be the one cut: its ReadyForQuery ended the startup all the same."""
        self.state.startup = False
        return (PgResponse(ts, CUT, "", ERR_NONE),)

    # -- boundaries --------------------------------------------------------------------
    def find_boundary(self, buf, start):
        """The first candidate whose chain of following messages is well-formed up to the
        end of the buffer (or for CHAIN messages); failing that, the first candidate whose
        message runs past the buffer.  A candidate that merely runs past the buffer is taken
        last: its length would make the stream skip bytes, and a wrong one skips requests."""
        req = self.msg_type == MessageType.REQUEST
        rx, mins, fixed = ((RE_REQ_TAG, REQ_MIN, FIXED) if req
                           else (RE_RESP_TAG, RESP_MIN, RESP_FIXED))
        n = len(buf)
        far = -1
        unpack = _U32.unpack_from
        for m in rx.finditer(buf, start):
            pos = m.start()
            if pos + 5 > n:
                break
            p = pos
            steps = 0
            while True:
                length = unpack(buf, p + 1)[0]
                tag = buf[p]
                lo = mins.get(tag)
                if (lo is None or length < lo or length > MAX_MSG
                        or fixed.get(tag, length) != length):
                    break
                nxt = p + 1 + length
                if nxt == n or steps >= CHAIN:
                    return pos
                if nxt > n:
                    if far < 0 and (steps or length < 65536):
                        if steps:
                            return pos
                        far = pos
                    break
                if nxt + 5 > n:
                    if buf[nxt] in mins and (nxt + 1 >= n or buf[nxt + 1] == 0):
                        return pos
                    break
                p = nxt
                steps += 1
        return far

    def parse(self, buf, start, ts):
        state = self.state
        if state.skip_reason is not None:
            return IGNORE, None, len(buf)
        if self.msg_type == MessageType.REQUEST:
            return self._request(buf, start, ts)
        return self._response(buf, start, ts)

    # -- client -> server --------------------------------------------------------------
    def _request(self, buf, start, ts):
        state = self.state
        n = len(buf)
        tag = buf[start]
        if tag == 0:
            return self._untagged(buf, start)
        if tag == 0x16:   # a TLS record where a message should be: encrypted from here on
            if n - start < 3:
                return NEEDS_MORE_DATA, None, start + 3
            if buf[start + 1] == 3:
                state.skip_reason = "pgsql: TLS handshake in the clear stream"
                return IGNORE, None, n
            return INVALID, None, 0
        lo = REQ_MIN.get(tag)
        if lo is None:
            return INVALID, None, 0
        if n - start < 5:
            return NEEDS_MORE_DATA, None, start + 5
        length = _U32.unpack_from(buf, start + 1)[0]
        if length < lo or length > MAX_MSG or FIXED.get(tag, length) != length:
            return INVALID, None, 0
        end = start + 1 + length
        if tag in b"QPBEF":
            want = min(end, start + 5 + HEAD)
            if n < want:
                return NEEDS_MORE_DATA, None, want
            limit = min(end - 1, n, start + 5 + TEXT_MAX)
            body = start + 5
            if tag == 0x51:       # Q
                text, _ = _cstr(buf, body, limit)
                stmts = split_statements(text, MAX_QUERY_STATEMENTS + 1)
                if len(stmts) > MAX_QUERY_STATEMENTS:
                    del stmts[MAX_QUERY_STATEMENTS:]
                    self.count_truncated()
                first = stmts[0] if stmts else ("EMPTY", "")
                return SUCCESS, PgRequest(ts, QUERY, first[0], first[1], stmts), end
            if tag == 0x50:       # P
                name, p = _cstr(buf, body, limit)
                name = name_key(name)
                text, _ = _cstr(buf, p, limit)
                info = (sql_verb(text), sql_path(text))
                stmts = state.stmts
                if len(stmts) >= MAX_STATEMENTS and name not in stmts:
                    stmts.clear()
                    self.count_truncated()
                stmts[name] = info
                self.parsed_since_sync = info
                return IGNORE, None, end
            if tag == 0x42:       # B
                portal, p = _cstr(buf, body, limit)
                portal = name_key(portal)
                name, _ = _cstr(buf, p, limit)
                info = state.stmts.get(name_key(name))
                if info is None:
                    info = ("EXECUTE", sql_path("EXECUTE " + name[:128]) if name else "EXECUTE")
                portals = state.portals
                if len(portals) >= MAX_STATEMENTS and portal not in portals:
                    portals.clear()
                    self.count_truncated()
                portals[portal] = info
                return IGNORE, None, end
            if tag == 0x45:       # E
                portal, _ = _cstr(buf, body, limit)
                info = state.portals.get(name_key(portal)) or ("EXECUTE", "EXECUTE")
                self.parsed_since_sync = None
                return SUCCESS, PgRequest(ts, EXEC, info[0], info[1]), end
            return SUCCESS, PgRequest(ts, FUNC, "FUNCTION CALL", "FUNCTION CALL"), end
        if tag == 0x53:           # S
            info = self.parsed_since_sync
            self.parsed_since_sync = None
            if info is None:
                return SUCCESS, PgRequest(ts, SYNC, None, ""), end
            return SUCCESS, PgRequest(ts, SYNC, info[0], info[1]), end
        if tag == 0x43 and n - start >= 7:   # Close: forget a closed statement
            kind = buf[start + 5]
            name, _ = _cstr(buf, start + 6, min(end - 1, n))
            if kind == 0x53:
                state.stmts.pop(name_key(name), None)
        return IGNORE, None, end

    def _untagged(self, buf, start):
        state = self.state
        if len(buf) - start < 8:
            return NEEDS_MORE_DATA, None, start + 8
        length, code = _U32_U32.unpack_from(buf, start)
        if length == 8 and code == SSL_REQUEST:
            state.answer_pending = b"SN"
        elif length == 8 and code == GSSENC_REQUEST:
            state.answer_pending = b"GN"
        elif length == 16 and code == CANCEL_REQUEST:
            pass
        elif code >> 16 == 3 and 8 < length <= 10000:
            state.startup = True
        else:
            return INVALID, None, 0
        return IGNORE, None, start + length

    # -- server -> client --------------------------------------------------------------
    def _response(self, buf, start, ts):
        state = self.state
        n = len(buf)
        tag = buf[start]
        if state.answer_pending:
            answers = state.answer_pending
            state.answer_pending = b""
            if tag in answers:
                if tag != 0x4E:   # 'S' / 'G': TLS or GSSAPI encryption follows
                    state.skip_reason = ("pgsql: SSLRequest accepted (TLS)" if tag == 0x53
                                         else "pgsql: GSSENCRequest accepted (GSSAPI)")
                    return IGNORE, None, n
                return IGNORE, None, start + 1
        lo = RESP_MIN.get(tag)
        if lo is None:
            return INVALID, None, 0
        if n - start < 5:
            return NEEDS_MORE_DATA, None, start + 5
        length = _U32.unpack_from(buf, start + 1)[0]
        if length < lo or length > MAX_MSG or RESP_FIXED.get(tag, length) != length:
            return INVALID, None, 0
        end = start + 1 + length
        if tag == 0x5A:           # Z
            if n < end:
                return NEEDS_MORE_DATA, None, end
            if buf[start + 5] not in b"ITE":
                return INVALID, None, 0
            if state.startup:
                state.startup = False
                return IGNORE, None, end
            return SUCCESS, PgResponse(ts, READY, "", ERR_NONE), end
        if tag == 0x43:           # C
            want = min(end, start + 5 + 64)
            if n < want:
                return NEEDS_MORE_DATA, None, want
            text, _ = _cstr(buf, start + 5, min(end, n))
            return SUCCESS, PgResponse(ts, COMPLETE, sql_path(text[:64]), ERR_NONE), end
        if tag == 0x45:           # E
            want = min(end, start + 5 + HEAD)
            if n < want:
                return NEEDS_MORE_DATA, None, want
            code = _sqlstate(buf, start + 5, min(end, n))
            if state.startup:     # authentication failed: not a query
                return IGNORE, None, end
            return SUCCESS, PgResponse(ts, ERROR, code, sqlstate_err(code)), end
        if tag == 0x49:           # I
            return SUCCESS, PgResponse(ts, COMPLETE, "EMPTY", ERR_NONE), end
        if tag == 0x73:           # s
            return SUCCESS, PgResponse(ts, COMPLETE, "SUSPENDED", ERR_NONE), end
        if tag == 0x56:           # V
            return SUCCESS, PgResponse(ts, COMPLETE, "OK", ERR_NONE), end
        return IGNORE, None, end


def _sqlstate(buf, pos, limit):
    """The 'C' field of an ErrorResponse body ("" if not captured)."""
    while pos < limit:
        field = buf[pos]
        if field == 0:
            break
        z = buf.find(b"\x00", pos + 1, limit)
        if z < 0:
            break
        if field == 0x43:
            code = bytes(buf[pos + 1:z])
            if len(code) == 5 and code.isalnum():
                return code.decode("ascii")
            break
        pos = z + 1
    return "ERROR"
