"""HTTP/1.x frame boundaries and parsing (RFC 9112), sans-IO.

Headers are located with one ``bytes.find`` and read with compiled regexes; bodies are
never copied: a frame ends at ``end`` which may lie beyond the captured bytes (the stream
skips the rest).  Chunked bodies are walked chunk by chunk in a continuation state, so a
chunked body far larger than the capture keeps the stream in sync.
"""
from __future__ import annotations

import re

from protocol.base import MessageType, Parser, ParseState
from protocol.http.types import MAX_PENDING, HttpRequest, HttpResponse

SUCCESS = ParseState.SUCCESS
NEEDS_MORE_DATA = ParseState.NEEDS_MORE_DATA
INVALID = ParseState.INVALID
IGNORE = ParseState.IGNORE

# A request or response head may be this long (request line and headers).  nginx accepts
# 1 kB + large_client_header_buffers (default 4 x 8 kB, often raised to 32 kB or more),
# Apache 8 kB per line, Node.js 16 kB: 256 kB is far above all of them, and the same bound
# as the bytes a stream buffers for one frame (pipeline.stream.MAX_BUFFERED).
MAX_HEADER = 256 * 1024

# heads that differ from the parser's memo before it takes a new one (HttpParser.memo_wait)
MEMO_WAIT = 8
# the memo before the first head that takes one (never compared: memo_wait >= 0 until then)
_NO_MEMO = None

METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH", b"OPTIONS", b"CONNECT",
           b"TRACE")
# A request target has no length limit of its own here: the head's bound (MAX_HEADER) is it.
_REQ_LINE = re.compile(rb"([A-Z]{3,16}) ([^ \r\n]+) HTTP/1\.([01])\r\n")
# A request line the server will refuse (nginx answers 400 / 414 / 505) but answers all the
# same: a method-like token, then anything up to the end of the line.  It is a request, so
# that its answer is paired with it and req_count == resp_count.
_REQ_LOOSE = re.compile(rb"([A-Z_-]{1,32}) ([^\r\n]*)\r?\n")     # no backtracking: linear
_LOOSE_VERSION = re.compile(rb" HTTP/(\d)\.\d+$")
_RESP_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9]\d\d)(?:[ \t][^\r\n]*)?\r\n")
_CONTENT_LENGTH = re.compile(rb"\ncontent-length[ \t]*:[ \t]*([^\r\n]*)", re.I)
_CHUNKED = re.compile(rb"\ntransfer-encoding[ \t]*:[^\r\n]*chunked", re.I)
_REQ_START = re.compile(rb"(?:GET|POST|PUT|DELETE|HEAD|PATCH|OPTIONS|CONNECT|TRACE) [/*a-zA-Z]")
_RESP_START = re.compile(rb"HTTP/1\.[01] [1-9]\d\d")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,15})[ \t]*(?:;[^\r\n]*)?\r\n")
_PREFIXES_REQ = tuple(m + b" " for m in METHODS)
_LOOSE_START = re.compile(rb"[A-Z_-]{1,8}(?: |\Z)")
# the first of either header (_CONTENT_LENGTH's pattern in group 2), and any TE header
_BODY_HDR = re.compile(rb"\n(?:(content-length)|transfer-encoding)[ \t]*:[ \t]*([^\r\n]*)",
                       re.I)
_UPGRADE_H2C = re.compile(rb"\nupgrade[ \t]*:[ \t]*h2c", re.I)
_TE_HDR = re.compile(rb"\ntransfer-encoding[ \t]*:", re.I)
# request method and status code texts seen over and over: decode / convert once
_METHOD_TEXT = {m: m.decode("latin-1") for m in METHODS}
_STATUS_INT = {b"%d" % i: i for i in range(100, 600)}
_new = object.__new__


def _body_end(buf, hstart, hend):
    """(end, chunked) for a message whose headers are buf[hstart:hend+4]; end -1: invalid.

    One scan finds the first Content-Length or Transfer-Encoding header; only a message
    with a Transfer-Encoding header takes the general rules of _body_end_re (the same
    result, in two scans)."""
    m = _BODY_HDR.search(buf, hstart, hend + 2)
    if m is None:
        return hend + 4, False
    return _body_end_from(buf, m, hstart, hend)


def _body_end_from(buf, m, hstart, hend):
    """_body_end, given the (not None) result of its _BODY_HDR search."""
    if m.group(1) is None or _TE_HDR.search(buf, m.end(), hend + 2) is not None:
        return _body_end_re(buf, hstart, hend)
    v = m.group(2).strip()
    if not v.isdigit() or len(v) > 15:
        return -1, False
    return hend + 4 + int(v), False


def _body_end_re(buf, hstart, hend):
    body = hend + 4
    if _CHUNKED.search(buf, hstart, hend + 2):
        return body, True
    m = _CONTENT_LENGTH.search(buf, hstart, hend + 2)
    if m:
        v = m.group(1).strip()
        if not v.isdigit() or len(v) > 15:
            return -1, False
        return body + int(v), False
    return body, False


class HttpParser(Parser):
    __slots__ = ("chunked", "is_request", "scanned", "skip_to", "memo", "memo_wait")

    def __init__(self, msg_type, state):
        super().__init__(msg_type, state)
        self.chunked = False     # inside a chunked body: parse chunk framing next
        self.is_request = msg_type == MessageType.REQUEST
        # Bytes from the start of the head in progress already searched for its end (minus
        # 3, the terminator may straddle): a head arriving in small pieces is searched once,
        # not once per piece.  Only valid while parse() keeps answering NEEDS_MORE_DATA for
        # the same frame; reset by any other answer and by find_boundary.
        self.scanned = 0
        # After a head with no end within MAX_HEADER: the buffer index up to which no head
        # can end, so that the next find_boundary does not restart inside that stretch
        # (one search per stretch, not one per request start in it).
        self.skip_to = -1
        # The last head's bytes and what they decided (see parse): on a keep-alive stream
        # heads come again byte for byte (the same headers behind each request line; the
        # same response within a second), so an equal head is not scanned again.
        # Requests: (len, the bytes from the request line's CRLF to the head's end, its
        # terminator included, body length, chunked); responses: (len, the whole head with
        # its terminator, status, minor, body length, chunked); _NO_MEMO before the first.
        # A cache: at_rest ignores it.
        # ``memo_wait``: -2 while the memo answers (a head that differs then replaces it),
        # -1 just after it was taken; if the next head differs too, the MEMO_WAIT - 1 after
        # it are neither compared nor copied (a countdown: where every head differs, a
        # request id or a Date per response, each costs that, not a comparison and a copy);
        # at 0 the next head is taken (without a comparison).  Only a negative memo_wait
        # compares.  The first head takes none (1): a connection of one request keeps no
        # copy (10k of them: 8 MB of RSS otherwise, bench_rss); nor does the first request
        # after Tracker.rest_idle dropped a resting connection's parsers.
        self.memo = _NO_MEMO
        self.memo_wait = 1

    def at_rest(self):
        return not self.chunked and not self.scanned and self.skip_to < 0

    # -- boundary -----------------------------------------------------------------------
    def find_boundary(self, buf, start):
        self.scanned = 0
        if self.skip_to > start:
            start = self.skip_to
        self.skip_to = -1
        if self.state.upgraded:
            return -1
        self.chunked = False
        pat = _REQ_START if self.msg_type == MessageType.REQUEST else _RESP_START
        m = pat.search(buf, start)
        while m is not None:
            i = m.start()
            if i == 0 or buf[i - 1] == 0x0A:      # at a line start
                return i
            m = pat.search(buf, i + 1)
        return -1

    # -- frames -------------------------------------------------------------------------
    def parse(self, buf, start, ts):
        # Requests, and the common responses (a final status to a request whose method
        # lets the headers decide the body), are handled here; _parse_response takes the
        # other responses (1xx, 204, 304, HEAD, CONNECT, no request seen).
        state = self.state
        if state.upgraded:
            if state.switch_to:     # keep the bytes for the protocol that takes over
                return NEEDS_MORE_DATA, None, 0
            return IGNORE, None, len(buf)
        if self.chunked:
            return self._parse_chunks(buf, start)
        w = self.memo_wait
        # the memo is tried (w < 0) before the head's end is searched: a head equal to it
        # is a head that ends where its terminator does (the memo's bytes hold one
        # terminator, at their end, and a request line holds no CR or LF before its CRLF).
        # Not while a head arrives in pieces (``scanned``): each piece would match the
        # request line again.
        if self.is_request:
            m = None
            hend = -1
            if w < 0 and not self.scanned:
                # a request line ends at its CRLF, before the head's end if the head is whole
                m = _REQ_LINE.match(buf, start, start + MAX_HEADER)
                if m is not None:
                    hs = m.end() - 2
                    memo = self.memo
                    if buf.startswith(memo[1], hs):
                        hend = hs + memo[0] - 4    # the same headers as the last request
                        end = hend + 4 + memo[2]
                        chunked = memo[3]
                        if w == -1:
                            self.memo_wait = -2
            if hend < 0:
                hend = buf.find(b"\r\n\r\n", start + self.scanned, start + MAX_HEADER)
                if hend < 0:
                    return self._incomplete(buf, start)
                self.scanned = 0
                if m is None:
                    m = _REQ_LINE.match(buf, start, hend + 2)
                    if m is None:
                        return self._loose_request(buf, start, hend, ts)
                    hs = m.end() - 2
                b = _BODY_HDR.search(buf, hs, hend + 2)
                if b is None:
                    end = hend + 4
                    chunked = False
                else:
                    end, chunked = _body_end_from(buf, b, hs, hend)
                    if end < 0:
                        return INVALID, None, start
                if w > 0:
                    self.memo_wait = w - 1
                elif w == -1:
                    self.memo_wait = MEMO_WAIT - 1     # a fresh memo that did not answer
                else:
                    self.memo = (hend + 4 - hs, buf[hs:hend + 4], end - hend - 4, chunked)
                    self.memo_wait = -1
            mb, target, minor = m.groups()
            method = _METHOD_TEXT.get(mb)
            if method is None:
                method = mb.decode("latin-1")
            methods = state.methods
            methods.append(method)
            if len(methods) > MAX_PENDING:
                del methods[0]
                self.count_truncated()
            self.chunked = chunked
            # HttpRequest(ts, method, target, version) without its __init__'s call (a third
            # of the cost of a frame; tests/test_http_parser.py test_frames_made_inline)
            frame = _new(HttpRequest)
            frame.ts = ts
            frame.method = method
            frame.target = target.decode("latin-1")
            frame.version = minor[0] - 48
            return SUCCESS, frame, end
        if w < 0 and not self.scanned:
            memo = self.memo
            if buf.startswith(memo[1], start):
                # the same head as the last response that took this path: the same
                # answer, if the request it answers lets the headers decide the body
                methods = state.methods
                if methods:
                    method = methods[0]
                    if method != "HEAD" and method != "CONNECT":
                        del methods[0]
                        self.chunked = memo[5]
                        if w == -1:
                            self.memo_wait = -2
                        frame = _new(HttpResponse)      # HttpResponse(ts, status, minor)
                        frame.ts = ts
                        frame.status = memo[2]
                        frame.version = memo[3]
                        return SUCCESS, frame, start + memo[0] + memo[4]
        hend = buf.find(b"\r\n\r\n", start + self.scanned, start + MAX_HEADER)
        if hend < 0:
            return self._incomplete(buf, start)
        self.scanned = 0
        m = _RESP_LINE.match(buf, start, hend + 2)
        if m is None:
            return INVALID, None, start
        minor, sb = m.groups()
        status = _STATUS_INT.get(sb) or int(sb)
        if status < 200 or status == 204 or status == 304:
            return self._parse_response(buf, start, hend, ts)
        methods = state.methods
        if not methods:
            return self._parse_response(buf, start, hend, ts)
        method = methods[0]
        if method == "HEAD" or method == "CONNECT":
            return self._parse_response(buf, start, hend, ts)
        del methods[0]
        he = hend + 2
        b = _BODY_HDR.search(buf, m.end() - 2, he)
        if b is None:
            end = hend + 4
            chunked = False
        else:
            cl, v = b.groups()
            if cl is not None and _TE_HDR.search(buf, b.end(), he) is None:
                # Content-Length alone (_body_end_from, inline: the common response)
                v = v.strip()
                if not v.isdigit() or len(v) > 15:
                    return INVALID, None, start
                end = hend + 4 + int(v)
                chunked = False
            else:
                end, chunked = _body_end_re(buf, m.end() - 2, hend)
                if end < 0:
                    return INVALID, None, start
                self.chunked = chunked
        minor = minor[0] - 48
        if w > 0:
            self.memo_wait = w - 1
        elif w == -1:
            self.memo_wait = MEMO_WAIT - 1         # a fresh memo that did not answer
        else:
            self.memo = (hend + 4 - start, buf[start:hend + 4], status, minor, end - hend - 4,
                         chunked)
            self.memo_wait = -1
        frame = _new(HttpResponse)                      # HttpResponse(ts, status, minor)
        frame.ts = ts
        frame.status = status
        frame.version = minor
        return SUCCESS, frame, end

    def _incomplete(self, buf, start):
        n = len(buf) - start
        if n >= MAX_HEADER:
            self.scanned = 0
            self.skip_to = start + MAX_HEADER - 3
            return INVALID, None, start
        if self.scanned == 0:
            head = bytes(buf[start:start + 8])
            if self.msg_type == MessageType.REQUEST:
                ok = (any(p.startswith(head[:len(p)]) or head.startswith(p)
                          for p in _PREFIXES_REQ)
                      or _LOOSE_START.match(head) is not None)
            else:
                ok = b"HTTP/1."[:len(head)] == head[:7]
            if not ok:
                return INVALID, None, 0
        self.scanned = n - 3 if n > 3 else 0
        return NEEDS_MORE_DATA, None, 0

    def _loose_request(self, buf, start, hend, ts):
        """A head that ends but whose request line is not well-formed HTTP/1.0 or 1.1
        (a target with spaces, another version, a method nginx does not know): the server
        answers it (400, 405, 414, 505), so it is a request all the same."""
        m = _REQ_LOOSE.match(buf, start, hend + 2)
        if m is None:
            return INVALID, None, start
        mb, target = m.groups()
        target = target.rstrip(b"\r").strip(b" ")
        major = None
        v = _LOOSE_VERSION.search(target)
        if v is not None:
            major = v.group(1)
            target = target[:v.start()].rstrip(b" ")
        method = _METHOD_TEXT.get(mb) or mb.decode("latin-1")
        methods = self.state.methods
        methods.append(method)
        if len(methods) > MAX_PENDING:
            del methods[0]
            self.count_truncated()
        # a refused request's body is not read by the server as a body: none is assumed
        return SUCCESS, HttpRequest(ts, method, target.decode("latin-1"),
                                    1 if major is None else major[0] - 48), hend + 4

    def _parse_response(self, buf, start, hend, ts):
        m = _RESP_LINE.match(buf, start, hend + 2)
        if m is None:
            return INVALID, None, start
        status = int(m.group(2))
        frame = HttpResponse(ts, status, m.group(1)[0] - 48)
        body = hend + 4
        methods = self.state.methods
        if status < 200:
            if status == 101:
                self.state.upgraded = True
                if _UPGRADE_H2C.search(buf, start, hend + 2):
                    self.state.switch_to = "http2"      # pipeline/conntrack.py switches
                if methods:
                    methods.popleft()
            return SUCCESS, frame, body
        method = methods.popleft() if methods else None
        if status == 204 or status == 304 or method == "HEAD":
            return SUCCESS, frame, body
        if method == "CONNECT" and status < 300:
            self.state.upgraded = True
            return SUCCESS, frame, body
        end, chunked = _body_end(buf, m.end() - 2, hend)
        if end < 0:
            return INVALID, None, start
        if method is None and end > body and buf.startswith(b"HTTP/1.", body):
            end = body     # request unseen: a HEAD response is followed by the next response
        self.chunked = chunked
        return SUCCESS, frame, end

    def _parse_chunks(self, buf, pos):
        """Consume chunk framing from pos; IGNORE with the end of what was consumed."""
        n = len(buf)
        start = pos
        scanned = self.scanned      # how far a trailer section at `start` was searched
        self.scanned = 0
        match = _CHUNK_SIZE.match
        while True:
            m = match(buf, pos)
            if m is None:
                if n - pos < 20 and buf.find(b"\n", pos) < 0:
                    # a size line not complete yet
                    if pos > start:
                        return IGNORE, None, pos
                    return NEEDS_MORE_DATA, None, 0
                self.chunked = False
                return INVALID, None, pos
            size = int(m.group(1), 16)
            pos = m.end()
            if size == 0:
                # trailer section: empty line, or header lines then an empty line
                if buf.startswith(b"\r\n", pos):
                    self.chunked = False
                    return IGNORE, None, pos + 2
                t = buf.find(b"\r\n\r\n", start + scanned if m.start() == start and scanned
                             else pos)
                if t < 0:
                    if n - pos > MAX_HEADER:
                        self.chunked = False
                        return INVALID, None, pos
                    # keep the size line so we come back here
                    if m.start() > start:
                        return IGNORE, None, m.start()
                    self.scanned = n - start - 3 if n - start > 3 else 0
                    return NEEDS_MORE_DATA, None, 0
                self.chunked = False
                return IGNORE, None, t + 4
            pos += size + 2          # data and its CRLF; may lie beyond the buffer
            if pos >= n:
                return IGNORE, None, pos
