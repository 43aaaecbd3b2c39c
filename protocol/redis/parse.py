"""RESP2/RESP3 framing: requests (arrays of bulk strings, or inline lines) and replies.

A frame is reported as soon as what the record needs is known: the command name and first
key of a request, the type (and the pub/sub shape) of a reply.  What is left of a big value
is walked on later calls without buffering it (``Parser.cont`` holds the counts still to
read), and a bulk string whose body was not captured is skipped with ``end > len(buf)``
wherever it sits, even deep in an array.  So a reply cut by the capture prefix still counts
once, and the stream stays in sync after it.
"""
from __future__ import annotations

import re

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType, ParseState, Parser
from protocol.redis.types import (PUSH, REPLY, REPLY_OFF, REPLY_ON, REPLY_SKIP, SUBCONF,
                                  RedisRequest, RedisResponse)

SUCCESS = ParseState.SUCCESS
NEEDS_MORE_DATA = ParseState.NEEDS_MORE_DATA
INVALID = ParseState.INVALID
IGNORE = ParseState.IGNORE

MAX_BULK = 512 * 1024 * 1024     # proto-max-bulk-len default
MAX_ARGS = 1024 * 1024 * 1024
MAX_LINE = 64 * 1024             # simple strings, errors, inline commands
HEAD_WAIT = 64                   # wait for a head element this short rather than cut it
PATH_MAX = 64
KEEP = 128                       # bytes kept of a collected argument / reply element
MAX_DEPTH = 512                  # nesting levels of a reply followed (one int each)
HEAD_WAIT_BYTES = 256            # a reply whose head is not complete within this is
                                 # reported without waiting for it (no re-walk per piece)

RE_ARRAY = re.compile(rb"\*(-?[0-9]{1,10})\r\n")
RE_BULK = re.compile(rb"\$([0-9]{1,10})\r\n")
RE_LEN = re.compile(rb"(-?[0-9]{1,10}|\?)\r\n")         # after a length-prefixed type byte
RE_INT = re.compile(rb"-?[0-9]{1,20}\r\n")
RE_PARTIAL_LEN = re.compile(rb"[-0-9?]{0,11}\r?\Z")     # ... not yet complete
RE_BULK_RUN = re.compile(rb"(?:\$[0-9]{1,9}\r\n[^\r\n]*\r\n)+")
RE_BULK_DIGITS = re.compile(rb"\$([0-9]{1,9})\r\n[^\r\n]*\r\n")
RE_CMD = re.compile(rb"[A-Za-z][A-Za-z0-9_.:-]{0,31}\Z")
RE_SPACE = re.compile(rb"[ \t]+")

# Resynchronisation: a request is an array of bulk strings at a line start; a reply is a
# type byte with a well-formed first line.
RE_REQ_START = re.compile(rb"\*[1-9][0-9]{0,9}\r\n\$[0-9]{1,10}\r\n")
RE_REQ_AFTER_LINE = re.compile(rb"\n(?=\*[1-9][0-9]{0,9}\r\n\$[0-9]{1,10}\r\n)")
_RESP_HDR = (rb"(?:[*%~>|$=!](?:-1|[0-9]{1,10}|\?)|[+\-][^\r\n]{0,512}|:-?[0-9]{1,20}|_"
             rb"|#[tf]|,[^\r\n]{1,64}|\(-?[0-9]{1,512})\r\n")
RE_RESP_START = re.compile(_RESP_HDR)
RE_RESP_AFTER_LINE = re.compile(rb"\n(?=" + _RESP_HDR + rb")")

# Commands whose first argument is a subcommand that is part of the API name.
CONTAINERS = frozenset(
    "ACL CLIENT CLUSTER COMMAND CONFIG DEBUG FUNCTION LATENCY MEMORY MODULE OBJECT PUBSUB "
    "SCRIPT SLOWLOG XINFO XGROUP SENTINEL".split())
# Commands whose arguments are never shown (credentials).
SECRET = frozenset(("AUTH",))
SUB_COMMANDS = frozenset("SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE "
                         "SUNSUBSCRIBE".split())
SUBSCRIBE_ON = frozenset(("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"))
SUBCONF_NAMES = frozenset(c.lower() for c in SUB_COMMANDS)
MESSAGE_SHAPES = {b"message": 3, b"smessage": 3, b"pmessage": 4}
# Inline commands (plain text lines) are accepted only for these names, so that text in the
# middle of a value is not taken for a command when a connection is picked up mid-stream.
INLINE_COMMANDS = frozenset(
    "APPEND AUTH BGREWRITEAOF BGSAVE BITCOUNT BLPOP BRPOP CLIENT CLUSTER COMMAND CONFIG "
    "DBSIZE DECR DECRBY DEL DISCARD DUMP ECHO EVAL EVALSHA EXEC EXISTS EXPIRE FLUSHALL "
    "FLUSHDB GET GETSET HDEL HELLO HEXISTS HGET HGETALL HINCRBY HKEYS HLEN HMGET HMSET HSET "
    "HVALS INCR INCRBY INFO KEYS LASTSAVE LINDEX LLEN LPOP LPUSH LRANGE LREM LSET LTRIM MGET "
    "MONITOR MSET MULTI OBJECT PERSIST PEXPIRE PING PSUBSCRIBE PTTL PUBLISH QUIT RANDOMKEY "
    "RENAME RESET RPOP RPUSH SADD SAVE SCAN SCARD SELECT SET SETEX SETNX SHUTDOWN SINTER "
    "SISMEMBER SLOWLOG SMEMBERS SPOP SREM SUBSCRIBE TIME TTL TYPE UNSUBSCRIBE UNWATCH WATCH "
    "XADD XLEN XRANGE ZADD ZCARD ZCOUNT ZINCRBY ZRANGE ZRANK ZREM ZSCORE".split())

# Error prefixes that mean "the client asked for something wrong"; any other prefix (OOM,
# BUSY, LOADING, MASTERDOWN, MISCONF, READONLY, TRYAGAIN, CLUSTERDOWN, NOREPLICAS, ...) is a
# server-side condition.
CLIENT_ERRORS = frozenset(
    "ERR WRONGTYPE NOAUTH WRONGPASS NOPERM NOSCRIPT NOGROUP BUSYGROUP BUSYKEY EXECABORT "
    "NOPROTO MOVED ASK CROSSSLOT UNKILLABLE NOTBUSY".split())

_LINE_T = frozenset(b"+-:_,#(")
_BLOB_T = frozenset(b"$!=")
_AGG_MULT = {42: 1, 126: 1, 62: 1, 37: 2, 124: 2}    # * ~ > % |

# Walker results
_DONE, _MORE, _BODY, _BAD = 0, 1, 2, 3
# Stack entries: n > 0 elements left; _STREAM_AGG / _STREAM_STR for RESP3 streamed types;
# <= _ATTR_BASE for an attribute map (-(_ATTR_BASE) - n: n elements left, not an element of
# its parent).
_STREAM_AGG, _STREAM_STR, _ATTR_BASE = -1, -2, -10


def error_class(code):
    return ERR_CLIENT if code in CLIENT_ERRORS else ERR_SERVER


def _text(b):
    """Bytes -> str (the reporter sanitises what it prints: pipeline/report.py clean)."""
    return bytes(b).decode("utf-8", "replace")


def _consume(stack):
    """One element of the innermost level was read; close finished levels."""
    while stack:
        c = stack[-1]
        if c > 1:
            stack[-1] = c - 1
            return
        if c == 1:
            stack.pop()
            continue              # the finished aggregate is one element of its parent
        if c <= _ATTR_BASE:
            if c < _ATTR_BASE - 1:
                stack[-1] = c + 1
            else:
                stack.pop()       # an attribute is not an element of its parent
            return
        return                    # streamed levels count nothing


def _partial(buf, pos, n):
    """Is buf[pos:] the beginning of a length line ("$12", "*3\\r")?"""
    if n - pos <= 13 and RE_PARTIAL_LEN.match(buf, pos + 1) is not None:
        return _MORE
    return _BAD


def walk(buf, pos, n, stack, info, scan=0):
    """Read RESP elements from ``pos`` while ``stack`` has levels open.

    Returns (code, pos): _DONE (stack empty), _MORE (out of data at ``pos``, an element
    boundary), _BODY (``pos`` is past the end of a bulk body beyond the buffer), _BAD.
    ``info``, if a list, receives (type, value) of the first scalars of level 1.
    ``scan``: bytes of a line element at ``pos`` already searched for its end."""
    find = buf.find
    first = pos
    while stack:
        if pos >= n:
            return _MORE, pos
        t = buf[pos]
        if t == 36 and stack[-1] > 1 and (info is None or len(info) >= 4 or len(stack) != 2):
            # Fast path: a run of short bulk strings (array replies, LRANGE, MGET, ...)
            # consumed with two regex passes instead of one Python iteration each.
            left = stack[-1]
            m = RE_BULK_RUN.match(buf, pos, min(n, pos + left * 1024))
            if m is not None:
                e = m.end()
                digits = RE_BULK_DIGITS.findall(buf, pos, e)
                k = len(digits)
                # a body is read up to the first CR/LF, so it can only come out shorter
                # than declared: the lengths all agree iff their sums do
                hdr = sum(map(len, digits))
                if sum(map(int, digits)) == e - pos - 5 * k - hdr:
                    if k > left:
                        digits = digits[:left]
                        k = left
                        e = pos + sum(map(int, digits)) + sum(map(len, digits)) + 5 * k
                    pos = e
                    stack[-1] = left - k + 1
                    _consume(stack)
                    continue
                # A body with CR or LF in it (a value with newlines): the elements before
                # it are still good.  Take them now, so that the run is not searched again
                # from here for each element after (quadratic in the array's length).
                k = 0
                e = pos
                for mm in RE_BULK_DIGITS.finditer(buf, pos, m.end()):
                    g = mm.group(1)
                    if mm.start() != e or mm.end() - e != len(g) + 5 + int(g) or k >= left:
                        break
                    e = mm.end()
                    k += 1
                if k:
                    pos = e
                    stack[-1] = left - k + 1
                    _consume(stack)
                    continue
        if t == 36 or t in _BLOB_T:                      # $ ! =
            m = RE_LEN.match(buf, pos + 1)
            if m is None:
                return _partial(buf, pos, n), pos
            s = m.group(1)
            body = m.end()
            if s == b"?":
                if t != 36:
                    return _BAD, pos
                stack.append(_STREAM_STR)
                pos = body
                continue
            size = int(s)
            if size < 0:
                if size != -1:
                    return _BAD, pos
                pos = body
            else:
                if size > MAX_BULK:
                    return _BAD, pos
                end = body + size + 2
                if info is not None and len(stack) == 2 and len(info) < 4:
                    if end > n and size <= HEAD_WAIT:
                        return _MORE, pos         # a short head element: wait for it
                    info.append((t, bytes(buf[body:min(body + size, body + KEEP, n)])))
                if end > n:
                    _consume(stack)
                    return _BODY, end
                if buf[end - 2] != 13 or buf[end - 1] != 10:
                    return _BAD, pos
                pos = end
        elif t in _LINE_T:
            e = find(b"\r\n", pos + 1 + scan if pos == first else pos + 1)
            if e < 0:
                return (_MORE if n - pos <= MAX_LINE else _BAD), pos
            if e - pos > MAX_LINE:
                return _BAD, pos
            if info is not None and len(stack) == 2 and len(info) < 4:
                info.append((t, bytes(buf[pos + 1:min(e, pos + 1 + KEEP)])))
            pos = e + 2
        elif t in _AGG_MULT:                              # * ~ > % |
            m = RE_LEN.match(buf, pos + 1)
            if m is None:
                return _partial(buf, pos, n), pos
            s = m.group(1)
            pos = m.end()
            if s == b"?":
                if t == 124:
                    return _BAD, pos
                stack.append(_STREAM_AGG)
                continue
            count = int(s)
            if count < 0:
                if count != -1:
                    return _BAD, pos
            elif count > 0:
                count *= _AGG_MULT[t]
                if count > MAX_ARGS:
                    return _BAD, pos
                if len(stack) >= MAX_DEPTH:
                    return _BAD, pos          # deeper than any server nests: not followed
                stack.append(_ATTR_BASE - count if t == 124 else count)
                continue
            elif t == 124:
                continue
        elif t == 46 and stack[-1] == _STREAM_AGG:        # '.' ends a streamed aggregate
            if buf[pos + 1:pos + 3] != b"\r\n":
                return (_MORE if n - pos < 3 else _BAD), pos
            stack.pop()
            pos += 3
        elif t == 59 and stack[-1] == _STREAM_STR:        # ';' a streamed string chunk
            m = RE_LEN.match(buf, pos + 1)
            if m is None:
                return _partial(buf, pos, n), pos
            s = m.group(1)
            if s == b"?" or s[0] == 45:
                return _BAD, pos
            size = int(s)
            pos = m.end()
            if size:
                end = pos + size + 2
                if end > n:
                    return _BODY, end
                pos = end
                continue
            stack.pop()
        else:
            return _BAD, pos
        _consume(stack)
    return _DONE, pos


class RedisParser(Parser):
    __slots__ = ("cont", "cont_args", "resynced", "scanned", "skip_to")

    def __init__(self, msg_type, state):
        super().__init__(msg_type, state)
        # bytes of the line at the frame start (a status line, an inline command, a line
        # element where a reply was cut) already searched for its end: a long line arriving
        # in small pieces is searched once.  Set with NEEDS_MORE_DATA, reset otherwise.
        self.scanned = 0
        # after a reply that went bad deep inside (garbage, nesting past MAX_DEPTH): the
        # buffer index where it went bad; the next find_boundary starts there, so that the
        # well-formed part before it is not walked again from each of its element starts
        self.skip_to = -1
        self.cont = None        # replies: open levels of the value being walked
        self.cont_args = 0      # requests: bulk strings still to skip
        self.resynced = False   # replies: bytes were lost; distrust replies nobody waits for

    # -- boundaries --------------------------------------------------------------------
    def find_boundary(self, buf, start):
        self.scanned = 0
        if self.skip_to > start:
            start = self.skip_to
        self.skip_to = -1
        self.cont = None
        self.cont_args = 0
        self.resynced = True
        if self.msg_type == MessageType.REQUEST:
            first, after = RE_REQ_START, RE_REQ_AFTER_LINE
        else:
            first, after = RE_RESP_START, RE_RESP_AFTER_LINE
        if start < len(buf) and first.match(buf, start) is not None:
            return start
        m = after.search(buf, start)
        return -1 if m is None else m.end()

    def parse(self, buf, start, ts):
        if self.msg_type == MessageType.REQUEST:
            if self.cont_args:
                return self._skip_args(buf, start)
            if buf[start] == 42:
                return self._parse_array_request(buf, start, ts)
            return self._parse_inline(buf, start, ts)
        if self.cont:
            return self._continue_reply(buf, start)
        return self._parse_reply(buf, start, ts)

    # -- requests ----------------------------------------------------------------------
    def _parse_array_request(self, buf, start, ts):
        n = len(buf)
        m = RE_ARRAY.match(buf, start)
        if m is None:
            return (NEEDS_MORE_DATA if _partial(buf, start, n) == _MORE else INVALID), None, 0
        count = int(m.group(1))
        if count <= 0:           # "*0" / "*-1": the server ignores it
            return (IGNORE if count >= -1 else INVALID), None, m.end()
        if count > MAX_ARGS:
            return INVALID, None, 0
        pos = m.end()
        args = []
        left = count
        match = RE_BULK.match
        while left:
            if pos >= n:
                break
            mb = match(buf, pos)
            if mb is None:
                if buf[pos] == 36 and _partial(buf, pos, n) == _MORE:
                    break
                return INVALID, None, 0
            size = int(mb.group(1))
            if size > MAX_BULK:
                return INVALID, None, 0
            body = mb.end()
            end = body + size + 2
            if end > n:
                if len(args) < 3:
                    if size <= HEAD_WAIT:
                        return NEEDS_MORE_DATA, None, end
                    args.append(buf[body:body + KEEP])
                left -= 1
                pos = end
                break
            if buf[end - 2] != 13 or buf[end - 1] != 10:
                return INVALID, None, 0
            if len(args) < 3:
                args.append(buf[body:body + min(size, KEEP)])
            left -= 1
            pos = end
        if len(args) < min(count, 3):
            return NEEDS_MORE_DATA, None, 0
        self.cont_args = left
        return SUCCESS, self._request(args, count - 1, ts), pos

    def _skip_args(self, buf, start):
        n = len(buf)
        pos = start
        left = self.cont_args
        match = RE_BULK.match
        while left and pos < n:
            mb = match(buf, pos)
            if mb is None:
                if buf[pos] == 36 and _partial(buf, pos, n) == _MORE:
                    break
                self.cont_args = 0
                return INVALID, None, 0
            end = mb.end() + int(mb.group(1)) + 2
            left -= 1
            pos = end
        self.cont_args = left
        if pos == start:
            return NEEDS_MORE_DATA, None, 0
        return IGNORE, None, pos

    def _parse_inline(self, buf, start, ts):
        n = len(buf)
        e = buf.find(b"\n", start + self.scanned, start + MAX_LINE)
        if e < 0:
            if n - start >= MAX_LINE:
                self.scanned = 0
                return INVALID, None, 0
            if self.scanned:
                self.scanned = n - start
                return NEEDS_MORE_DATA, None, 0
            # a partial line must already look like a known command
            part = bytes(buf[start:start + 40]).lstrip()
            words = RE_SPACE.split(part, 1)
            if len(words) > 1 or len(part) >= 20:
                if words[0].upper().decode("ascii", "replace") not in INLINE_COMMANDS:
                    return INVALID, None, 0
            elif part and RE_CMD.match(part.rstrip(b"\r")) is None:
                return INVALID, None, 0
            self.scanned = n - start
            return NEEDS_MORE_DATA, None, 0
        self.scanned = 0
        line = bytes(buf[start:e]).rstrip(b"\r")
        if not line.strip():
            return IGNORE, None, e + 1        # empty lines are skipped by the server
        args = RE_SPACE.split(line.strip(), 3)[:3]
        if args[0].upper().decode("ascii", "replace") not in INLINE_COMMANDS:
            return INVALID, None, 0
        nargs = len(RE_SPACE.split(line.strip())) - 1
        return SUCCESS, self._request(args, nargs, ts), e + 1

    def _request(self, args, nargs, ts):
        state = self.state
        raw = bytes(args[0])
        if RE_CMD.match(raw) is None:
            name = "UNKNOWN"
        else:
            name = raw.decode("ascii").upper()
        key_at = 1
        api = name
        if name in CONTAINERS and len(args) > 1 and RE_CMD.match(bytes(args[1])) is not None:
            api = name + " " + bytes(args[1]).decode("ascii").upper()
            key_at = 2
        if name in SECRET or name == "UNKNOWN" or len(args) <= key_at:
            path = api
        else:
            path = (api + " " + _text(args[key_at]))[:PATH_MAX]
        sub = name in SUB_COMMANDS
        if sub and name in SUBSCRIBE_ON:
            state.subscribed = True
        elif name == "HELLO" and len(args) > 1:
            state.resp3 = bytes(args[1]) == b"3"
        noreply = False
        mode = state.reply_mode
        if mode == REPLY_SKIP:
            noreply = True
            state.reply_mode = REPLY_ON
        elif mode == REPLY_OFF:
            noreply = True
        if api == "CLIENT REPLY":
            word = bytes(args[2]).upper() if len(args) > 2 else b""
            if word == b"ON":
                state.reply_mode = REPLY_ON
                noreply = mode == REPLY_SKIP
            elif word == b"OFF":
                state.reply_mode = REPLY_OFF
                noreply = True
            elif word == b"SKIP":
                noreply = True
                state.reply_mode = REPLY_OFF if mode == REPLY_OFF else REPLY_SKIP
        elif name == "REPLCONF" and len(args) > 1 and bytes(args[1]).upper() == b"ACK":
            noreply = True
        if not noreply:
            state.requests += max(nargs, 1) if sub else 1
        return RedisRequest(ts, api, path, nargs, sub, noreply)

    # -- replies -----------------------------------------------------------------------
    def _parse_reply(self, buf, start, ts):
        n = len(buf)
        t = buf[start]
        if t in _LINE_T:
            e = buf.find(b"\r\n", start + 1 + self.scanned)
            if e < 0:
                if n - start > MAX_LINE:
                    self.scanned = 0
                    return INVALID, None, 0
                self.scanned = n - start - 2 if n - start > 2 else 0
                return NEEDS_MORE_DATA, None, 0
            self.scanned = 0
            text = buf[start + 1:min(e, start + 1 + KEEP)]
            if t == 45:
                return self._emit(self._error(text, ts), e + 2)
            if t == 43:
                status = _text(text[:32]) or "OK"
                if status == "RESET":
                    self.state.subscribed = False
            elif t == 58:
                if RE_INT.match(buf, start + 1) is None:
                    return INVALID, None, 0
                status = "OK"
            else:
                status = "OK"
            return self._emit(self._reply(ts, status), e + 2)
        if t in _BLOB_T:
            m = RE_LEN.match(buf, start + 1)
            if m is None:
                return (NEEDS_MORE_DATA if _partial(buf, start, n) == _MORE else INVALID), None, 0
            s = m.group(1)
            if s == b"?":
                stack = [1]
                code, pos = walk(buf, start, n, stack, None)
                if code == _BAD:
                    return INVALID, None, 0
                self.cont = stack or None
                return self._emit(self._reply(ts, "OK"), pos)
            size = int(s)
            if size < -1 or size > MAX_BULK:
                return INVALID, None, 0
            body = m.end()
            end = body + size + 2 if size >= 0 else body
            if t == 33:     # '!' blob error: the code is at the start of the body
                if end > n and n - body < min(size, 32):
                    return NEEDS_MORE_DATA, None, min(end, body + 32)
                return self._emit(self._error(buf[body:body + min(size, KEEP)], ts), end)
            if end <= n and size >= 0 and buf[end - 2:end] != b"\r\n":
                return INVALID, None, 0
            return self._emit(self._reply(ts, "OK"), end)
        if t in _AGG_MULT or t == 95:
            stack = [1]
            info = []
            code, pos = walk(buf, start, n, stack, info)
            if code == _BAD:
                self.skip_to = pos
                return INVALID, None, 0
            count = 0
            if t == 42 or t == 62:
                m = RE_LEN.match(buf, start + 1)
                s = m.group(1) if m is not None else b"0"
                count = int(s) if s != b"?" else 0
            if code == _MORE:
                # report the value once its head is known (the pub/sub shape needs the
                # first three elements of a 3- or 4-element array)
                need = 0
                if t == 62:
                    need = min(count, 3)
                elif t == 42 and count in (3, 4):
                    need = 3
                got = count - stack[1] if len(stack) > 1 and stack[1] > 0 else 0
                if pos == start or (need and got < need and len(stack) == 2
                                    and n - start <= HEAD_WAIT_BYTES):
                    # (bounded: a head that is long or nested cannot be a pub/sub message;
                    # waiting for it would walk the reply again on every piece)
                    return NEEDS_MORE_DATA, None, 0
            self.cont = stack or None
            return self._emit(self._classify(t, count, info, ts), pos)
        return INVALID, None, 0

    def _continue_reply(self, buf, start):
        stack = self.cont
        n = len(buf)
        code, pos = walk(buf, start, n, stack, None, self.scanned)
        self.scanned = 0
        if code == _BAD:
            self.cont = None
            return INVALID, None, 0
        self.cont = stack or None
        if code == _MORE and pos < n and buf[pos] in _LINE_T:
            # cut inside a line element: consume up to it, remember how far it was searched
            if pos == start:
                self.scanned = n - pos - 2 if n - pos > 2 else 0
                return NEEDS_MORE_DATA, None, 0
        if pos == start:
            return NEEDS_MORE_DATA, None, 0
        return IGNORE, None, pos

    def _emit(self, frame, end):
        """Count a reply against the commands waiting; after lost bytes, a reply that no
        command waits for is most likely the inside of a value that was cut: drop it."""
        if frame.kind != PUSH:
            state = self.state
            if state.replies < state.requests:
                state.replies += 1
                self.resynced = False
            elif self.resynced:
                return IGNORE, None, end
        return SUCCESS, frame, end

    @staticmethod
    def _reply(ts, status):
        return RedisResponse(ts, REPLY, status, ERR_NONE)

    @staticmethod
    def _error(text, ts):
        code = bytes(text).split(b" ", 1)[0][:32]
        code = _text(code) or "ERR"
        return RedisResponse(ts, REPLY, code, error_class(code))

    def _classify(self, t, count, info, ts):
        state = self.state
        first = info[0][1].lower() if info and info[0][0] in (36, 43) else b""
        if first and (t == 62 or t == 42):
            name = first.decode("ascii", "replace")
            if (count == 3 and name in SUBCONF_NAMES and len(info) >= 3
                    and info[2][0] == 58):
                left = info[2][1]
                if name.startswith("un") or name.startswith("pun") or name.startswith("sun"):
                    if left == b"0":
                        state.subscribed = False
                else:
                    state.subscribed = True
                return RedisResponse(ts, SUBCONF, "OK", ERR_NONE, name)
            if t == 62:
                return RedisResponse(ts, PUSH, "OK", ERR_NONE, _text(first[:32]))
            shape = MESSAGE_SHAPES.get(first)
            if shape == count and ((state.subscribed and not state.resp3)
                                   or state.replies >= state.requests):
                return RedisResponse(ts, PUSH, "OK", ERR_NONE, name)
        elif t == 62:
            return RedisResponse(ts, PUSH, "OK", ERR_NONE, "push")
        return RedisResponse(ts, REPLY, "OK", ERR_NONE)
