"""MySQL / MariaDB client/server protocol framing (uncompressed, plain text).

A packet is ``3-byte LE payload length + 1-byte sequence number + payload``.  A command
starts a new sequence at 0, so its response starts at 1.  The request parser records each
command it sees in ``state.pending`` (with an id); the response parser takes the oldest one
when a response starts and walks that response (OK / ERR / result sets / prepare replies)
to its end, so that row packets are never mistaken for new responses.  The response frame
is reported at the first packet of the response and carries the command's id; the rest of
the response (column definitions, rows, further result sets) is consumed with IGNORE, long
rows skipped with ``end > len(buf)``.

The handshake and authentication are consumed without frames.  A connection that turns to
TLS or to the compressed protocol, or becomes a replication stream, cannot be parsed: the
parsers set ``state.skip_reason`` and IGNORE everything after.
"""
from __future__ import annotations

import re

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType, ParseState, Parser
from protocol.mysql.types import (CLIENT_COMPRESS, CLIENT_PROTOCOL_41, CLIENT_SSL,
                                  CLIENT_ZSTD_COMPRESSION, MAX_PENDING, MAX_STATEMENTS, R_AUTH,
                                  R_FIELDS, R_ONE, R_PREPARE, R_RESULT, R_SIMPLE,
                                  SERVER_MORE_RESULTS_EXISTS, MyRequest, MyResponse, Pending,
                                  sql_path, sql_verb)

SUCCESS = ParseState.SUCCESS
NEEDS_MORE_DATA = ParseState.NEEDS_MORE_DATA
INVALID = ParseState.INVALID
IGNORE = ParseState.IGNORE

MAX_PACKET = 0xFFFFFF
HEAD = 160            # payload bytes wanted before a query's frame is built
FIELDS = 48           # payload bytes wanted of a response packet (status fields)

# command byte -> (name, response kind or None for no response)
COMMANDS = {
    0x01: ("QUIT", None), 0x02: ("INIT_DB", R_SIMPLE), 0x03: ("QUERY", R_RESULT),
    0x04: ("FIELD_LIST", R_FIELDS), 0x05: ("CREATE_DB", R_SIMPLE),
    0x06: ("DROP_DB", R_SIMPLE), 0x07: ("REFRESH", R_SIMPLE), 0x08: ("SHUTDOWN", R_SIMPLE),
    0x09: ("STATISTICS", R_ONE), 0x0A: ("PROCESS_INFO", R_RESULT),
    0x0C: ("PROCESS_KILL", R_SIMPLE), 0x0D: ("DEBUG", R_SIMPLE), 0x0E: ("PING", R_SIMPLE),
    0x11: ("CHANGE_USER", R_AUTH), 0x16: ("STMT_PREPARE", R_PREPARE),
    0x17: ("STMT_EXECUTE", R_RESULT), 0x18: ("STMT_SEND_LONG_DATA", None),
    0x19: ("STMT_CLOSE", None), 0x1A: ("STMT_RESET", R_SIMPLE),
    0x1B: ("SET_OPTION", R_SIMPLE), 0x1C: ("STMT_FETCH", R_RESULT),
    0x1F: ("RESET_CONNECTION", R_SIMPLE),
}
REPLICATION = frozenset((0x12, 0x15, 0x1E))   # BINLOG_DUMP, REGISTER_SLAVE, BINLOG_DUMP_GTID
MIN_PAYLOAD = {0x17: 10, 0x18: 7, 0x19: 5, 0x1A: 5, 0x1C: 9, 0x0C: 5, 0x1B: 3}

RE_REQ_CAND = re.compile(rb"\x00[\x01-\x04\x09\x0e\x16\x17\x19\x1a\x1f]")
RE_RESP_CAND = re.compile(rb"\x01[\x00-\xfb\xff]")

# Response walking stages
_START, _COLS, _AFTER_COLS, _ROWS, _DEFS, _UNTIL_OK, _UNTIL_EOF = range(7)

# Errors that are the server's fault (resources, shutdown, lost connection, deadlock and
# lock timeout, crashed or full tables, engine errors); other codes (syntax 1064, unknown
# table 1146, access denied 1045, duplicate key 1062, ...) are the client's.
SERVER_CODES = frozenset((
    1021, 1030, 1034, 1035, 1037, 1038, 1040, 1041, 1053, 1078, 1114, 1135, 1152, 1153,
    1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161, 1180, 1181, 1194, 1195, 1203, 1205,
    1213, 1290, 1317, 1836, 2006, 2013, 3024))
SERVER_CLASSES = frozenset(("08", "53", "57", "58", "XX"))


def error_class(code, sqlstate):
    if code in SERVER_CODES or sqlstate[:2] in SERVER_CLASSES:
        return ERR_SERVER
    return ERR_CLIENT


def _lenenc(buf, pos, limit):
    """(value, next position) of a length-encoded integer, or (None, pos) if cut/invalid."""
    if pos >= limit:
        return None, pos
    b = buf[pos]
    if b < 0xFB:
        return b, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(b)
    if size is None or pos + 1 + size > limit:
        return None, pos
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def _ok_status(buf, pos, limit):
    """Server status flags of an OK packet whose header byte is at pos (0 if cut)."""
    rows, p = _lenenc(buf, pos + 1, limit)
    if rows is None:
        return 0
    last_id, p = _lenenc(buf, p, limit)
    if last_id is None or p + 2 > limit:
        return 0
    return buf[p] | buf[p + 1] << 8


class _Walk:
    """The response being consumed."""
    __slots__ = ("kind", "stage", "left")

    def __init__(self, kind, stage, left=0):
        self.kind = kind
        self.stage = stage
        self.left = left


class MySQLParser(Parser):
    __slots__ = ("more", "cur", "lost")

    def __init__(self, msg_type, state):
        super().__init__(msg_type, state)
        self.more = False   # requests: the last packet was 0xffffff bytes, a continuation follows
        self.cur = None     # responses: _Walk of the response in progress
        self.lost = False   # responses: bytes were lost since the last response started

    def turn_cut(self, ts):
        """The rest of this response turn was not delivered (the kernel keeps its head):
        the response walked so far ends in it, and so does the answer to every command
        still waiting (a client waits for its answers before its next command; one that
        pipelines gets those of the commands it sent before the turn), counted here with
        an unknown status."""
        self.cur = None
        self.lost = False
        pending = self.state.pending
        out = [MyResponse(ts, p.id, "", ERR_NONE) for p in pending]
        if out:
            pending.clear()
            self.count_presumed(len(out))
        return out

    # -- boundaries --------------------------------------------------------------------
    def find_boundary(self, buf, start):
        n = len(buf)
        self.more = False
        if self.msg_type == MessageType.RESPONSE:
            self.cur = None
            self.lost = True
            rx = RE_RESP_CAND
        else:
            rx = RE_REQ_CAND
        if self._plausible(buf, start, n, start):
            return start
        for i, m in enumerate(rx.finditer(buf, start + 3)):
            if i >= 256:
                break
            pos = m.start() - 3
            if self._plausible(buf, pos, n, start):
                return pos
        # A lone packet header at the end: mariadbd reads the 4-byte header and the payload
        # in separate syscalls, so after lost bytes a header read is where the next packet
        # starts (the search above wants a byte of payload, a header read never has it).
        pos = n - 4
        if pos >= start and self._header_only(buf, pos):
            return pos
        return -1

    def _header_only(self, buf, pos):
        length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
        if length == 0:
            return False
        seq = buf[pos + 3]
        if self.msg_type == MessageType.REQUEST:
            return seq == 0
        return seq == 1

    def _plausible(self, buf, pos, n, start):
        """A packet header at pos whose successor (if in the buffer) continues the
        sequence, or that ends exactly at the end of the buffer."""
        if pos < start or pos + 5 > n:
            return False
        length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
        seq = buf[pos + 3]
        if length == 0:
            return False
        if self.msg_type == MessageType.REQUEST:
            if seq != 0 or buf[pos + 4] not in COMMANDS:
                return False
        elif seq != 1:
            return False
        nxt = pos + 4 + length
        if nxt == n:
            return True
        if nxt + 4 <= n:
            return buf[nxt + 3] == (seq + 1) & 0xFF or buf[nxt + 3] == 0
        return nxt > n and length < 65536

    def parse(self, buf, start, ts):
        state = self.state
        if state.skip_reason is not None:
            return IGNORE, None, len(buf)
        n = len(buf)
        if n - start < 4:
            return NEEDS_MORE_DATA, None, start + 4
        if self.msg_type == MessageType.REQUEST:
            return self._request(buf, start, n, ts)
        return self._response(buf, start, n, ts)

    # -- client -> server --------------------------------------------------------------
    def _request(self, buf, start, n, ts):
        state = self.state
        length = buf[start] | buf[start + 1] << 8 | buf[start + 2] << 16
        seq = buf[start + 3]
        end = start + 4 + length
        if self.more:                          # continuation of a >= 16 MiB packet
            self.more = length == MAX_PACKET
            if state.pending:
                state.pending[-1].seq = (seq + 1) & 0xFF
            return IGNORE, None, end
        if seq != 0:
            if seq == 1 and length >= 4:       # handshake response / SSLRequest
                want = min(end, start + 8)
                if n < want:
                    return NEEDS_MORE_DATA, None, want
                caps = int.from_bytes(buf[start + 4:start + 8], "little")
                if caps & CLIENT_PROTOCOL_41 and not state.in_auth:
                    if caps & CLIENT_SSL:
                        state.skip_reason = "mysql: TLS requested (SSLRequest)"
                    elif caps & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION) and (
                            state.server_caps is None or state.server_caps & caps
                            & (CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION)):
                        state.skip_reason = "mysql: compressed protocol"
                    else:
                        state.client_caps = caps
                        state.in_auth = True
                        state.pending.clear()
            return IGNORE, None, end           # authentication data, LOCAL INFILE contents
        if length == 0:
            return INVALID, None, 0
        if n - start < 5:
            return NEEDS_MORE_DATA, None, start + 5
        if state.in_auth:
            # a command (sequence 0) comes only after the authentication's final OK: that
            # OK was lost (a gap), authentication is over all the same
            state.in_auth = False
        cmd = buf[start + 4]
        if cmd in REPLICATION:
            state.skip_reason = "mysql: replication stream"
            return IGNORE, None, n
        spec = COMMANDS.get(cmd)
        if spec is None or length < MIN_PAYLOAD.get(cmd, 1) or length > MAX_PACKET:
            return INVALID, None, 0
        want = min(end, start + 5 + HEAD)
        if n < want:
            return NEEDS_MORE_DATA, None, want
        self.more = length == MAX_PACKET
        name, kind = spec
        limit = min(end, n)
        info = None
        if cmd == 0x03 or cmd == 0x16:
            text = self._query_text(buf, start + 5, limit)
            verb, path = sql_verb(text), sql_path(text)
            if cmd == 0x03:
                api = verb
            else:
                api, info = name, (verb, path)
        elif cmd == 0x17:
            stmt = int.from_bytes(buf[start + 5:start + 9], "little")
            verb, path = state.stmts.get(stmt) or (name, "%s %d" % (name, stmt))
            api = verb
        elif cmd == 0x19:
            stmt = int.from_bytes(buf[start + 5:start + 9], "little")
            api, path = name, "%s %d" % (name, stmt)
            state.stmts.pop(stmt, None)
        elif cmd == 0x02 or cmd == 0x04:
            arg = bytes(buf[start + 5:min(limit, start + 5 + 64)]).split(b"\x00", 1)[0]
            api, path = name, sql_path(name + " " + arg.decode("utf-8", "replace"))
        else:
            api = path = name
        id_ = state.next_id
        state.next_id = id_ + 1
        if kind is not None:
            pending = state.pending
            if len(pending) >= MAX_PENDING:
                pending.popleft()
            pending.append(Pending(id_, kind, info))
        return SUCCESS, MyRequest(ts, id_, api, path, kind is None), end

    def _query_text(self, buf, pos, limit):
        state = self.state
        caps = state.client_caps
        if caps is not None and state.server_caps is not None:
            attrs = caps & state.server_caps & 0x08000000
        else:   # unknown (mid-stream): "\x00\x01" is an empty attribute block
            attrs = buf[pos:pos + 2] == b"\x00\x01"
        if attrs:
            count, p = _lenenc(buf, pos, limit)
            if count == 0:
                _, p = _lenenc(buf, p, limit)
                pos = p
            # with attributes present, their bytes precede the text: keep it as is
        return bytes(buf[pos:limit]).decode("utf-8", "replace")

    # -- server -> client --------------------------------------------------------------
    def _response(self, buf, start, n, ts):
        state = self.state
        length = buf[start] | buf[start + 1] << 8 | buf[start + 2] << 16
        seq = buf[start + 3]
        end = start + 4 + length
        cur = self.cur
        if cur is not None and cur.stage == _ROWS and length:
            # the bulk of a result set: walk row packets in a loop
            pos = start
            while True:
                if pos + 5 > n:
                    break
                length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
                first = buf[pos + 4] if length else 0
                if first == 0xFE and length < MAX_PACKET or first == 0xFF:
                    break
                pos += 4 + length
                if pos >= n:
                    return IGNORE, None, pos
            if pos > start:
                return IGNORE, None, pos
            length = buf[start] | buf[start + 1] << 8 | buf[start + 2] << 16
        want = min(end, start + 4 + FIELDS)
        if n < want:
            return NEEDS_MORE_DATA, None, want
        first = buf[start + 4] if length else -1
        limit = min(end, n)
        if cur is not None:
            return self._continue(cur, buf, start, end, length, first, limit)
        # not inside a response
        if state.in_auth or (seq == 0 and first == 0x0A and state.client_caps is None):
            if seq == 0 and first == 0x0A:        # server greeting
                state.server_caps = _greeting_caps(buf, start + 4, limit)
                state.in_auth = False
            elif first == 0x00 or first == 0xFF:  # authentication finished
                state.in_auth = False
            return IGNORE, None, end
        pending = state.pending
        if pending and seq == pending[0].seq:
            if self.lost:
                del pending[:-1]                  # answers lost with the bytes
                self.lost = False
            p = pending.popleft()
            return self._start(p, buf, start, end, length, first, limit, ts)
        if seq == 1 and not self.lost and (first == 0x00 or first == 0xFF):
            # an answer to a command sent before the capture started
            status, err = _status(buf, start, first, limit)
            return SUCCESS, MyResponse(ts, None, status, err), end
        if self.lost and end > n:
            return INVALID, None, 0               # do not trust a length while lost
        return IGNORE, None, end

    def _start(self, p, buf, start, end, length, first, limit, ts):
        status, err = _status(buf, start, first, limit)
        frame = MyResponse(ts, p.id, status, err)
        kind = p.kind
        if first == 0xFF or kind == R_SIMPLE or kind == R_ONE:
            return SUCCESS, frame, end
        if kind == R_AUTH:
            if first != 0x00:
                self.cur = _Walk(kind, _UNTIL_OK)
                return IGNORE, None, end        # the frame comes with the final OK/ERR
            return SUCCESS, frame, end
        if kind == R_PREPARE:
            if first == 0x00 and length >= 9:
                stmt = int.from_bytes(buf[start + 5:start + 9], "little")
                ncols = buf[start + 9] | buf[start + 10] << 8
                nparams = buf[start + 11] | buf[start + 12] << 8
                stmts = self.state.stmts
                if len(stmts) >= MAX_STATEMENTS:
                    stmts.clear()
                if p.info is not None:
                    stmts[stmt] = p.info
                if ncols + nparams:
                    self.cur = _Walk(kind, _DEFS, ncols + nparams)
            return SUCCESS, frame, end
        if kind == R_FIELDS:
            if first != 0xFE:
                self.cur = _Walk(kind, _UNTIL_EOF)
            return SUCCESS, frame, end
        # R_RESULT
        self._result_start(first, buf, start, limit)
        return SUCCESS, frame, end

    def _result_start(self, first, buf, start, limit):
        """First packet of one result of a QUERY / STMT_EXECUTE / STMT_FETCH."""
        if first == 0x00:
            if _ok_status(buf, start + 4, limit) & SERVER_MORE_RESULTS_EXISTS:
                self.cur = _Walk(R_RESULT, _START)
            else:
                self.cur = None
        elif first == 0xFF:
            self.cur = None
        elif first == 0xFB:                      # LOCAL INFILE: the client sends the file
            self.cur = _Walk(R_RESULT, _UNTIL_OK)
        elif first == 0xFE:                      # EOF (STMT_FETCH with no rows left)
            self.cur = None
        else:
            count, _ = _lenenc(buf, start + 4, limit)
            self.cur = _Walk(R_RESULT, _COLS, count or 0) if count else None

    def _continue(self, cur, buf, start, end, length, first, limit):
        stage = cur.stage
        if stage == _START:
            self._result_start(first, buf, start, limit)
        elif stage == _COLS:
            if first == 0xFF:
                self.cur = None
            else:
                cur.left -= 1
                if cur.left <= 0:
                    cur.stage = _AFTER_COLS
        elif stage == _AFTER_COLS or stage == _ROWS:
            if first == 0xFE and length < MAX_PACKET:
                if stage == _AFTER_COLS and length <= 5:
                    cur.stage = _ROWS            # the EOF between definitions and rows
                else:
                    self._end_of_result(buf, start, length, limit)
            elif first == 0xFF:
                self.cur = None
            else:
                cur.stage = _ROWS
        elif stage == _DEFS:
            if not (first == 0xFE and length < 9):
                cur.left -= 1
                if cur.left <= 0:
                    self.cur = None
        elif stage == _UNTIL_OK:
            if first == 0x00 or first == 0xFF:
                if first == 0x00 and cur.kind == R_RESULT and (
                        _ok_status(buf, start + 4, limit) & SERVER_MORE_RESULTS_EXISTS):
                    cur.stage = _START
                else:
                    self.cur = None
        elif stage == _UNTIL_EOF:
            if (first == 0xFE and length < 9) or first == 0xFF:
                self.cur = None
        return IGNORE, None, end

    def _end_of_result(self, buf, start, length, limit):
        if length <= 5:    # EOF packet: 0xfe, warnings (2), status (2)
            status = buf[start + 7] | buf[start + 8] << 8 if length >= 5 else 0
        else:              # OK packet with a 0xfe header (CLIENT_DEPRECATE_EOF)
            status = _ok_status(buf, start + 4, limit)
        if status & SERVER_MORE_RESULTS_EXISTS:
            self.cur = _Walk(R_RESULT, _START)
        else:
            self.cur = None


def _status(buf, start, first, limit):
    if first != 0xFF:
        return "OK", ERR_NONE
    code = buf[start + 5] | buf[start + 6] << 8 if start + 7 <= limit else 0
    sqlstate = ""
    if start + 13 <= limit and buf[start + 7] == 0x23:    # '#' + 5-character SQL state
        sqlstate = bytes(buf[start + 8:start + 13]).decode("ascii", "replace")
    return str(code), error_class(code, sqlstate)


def _greeting_caps(buf, pos, limit):
    """Capability flags of a protocol-10 server greeting (None if cut)."""
    z = buf.find(b"\x00", pos + 1, limit)
    if z < 0:
        return None
    p = z + 1 + 4 + 8 + 1      # thread id, auth data part 1, filler
    if p + 2 > limit:
        return None
    caps = buf[p] | buf[p + 1] << 8
    if p + 7 <= limit:
        caps |= (buf[p + 5] | buf[p + 6] << 8) << 16
    return caps
