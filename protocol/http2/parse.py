"""HTTP/2 framing (RFC 9113), sans-IO: frames in, stream events out.

Every frame type is read: DATA (END_STREAM, padding; the payload is skipped by length, also
past the captured prefix), HEADERS / PUSH_PROMISE (+ CONTINUATION: padding and priority
stripped, the fragments joined, bounded), RST_STREAM, GOAWAY; SETTINGS, PING, PRIORITY,
WINDOW_UPDATE and unknown extension frames are validated and skipped.  Header blocks are
decoded in order with the direction's HPACK decoder (``hpackdec.py``), so the dynamic
table stays in step even for blocks the stitcher does not need.
"""
from __future__ import annotations

import re
import struct

from protocol.base import MessageType, Parser, ParseState
from protocol.http2.types import EV_END, EV_GOAWAY, EV_HEADERS, EV_PUSH, EV_RST, H2Event

SUCCESS = ParseState.SUCCESS
NEEDS_MORE_DATA = ParseState.NEEDS_MORE_DATA
INVALID = ParseState.INVALID
IGNORE = ParseState.IGNORE

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_BLOCK = 65536          # bytes of one header block (HEADERS + CONTINUATION) decoded

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
F_END_STREAM, F_ACK, F_END_HEADERS, F_PADDED, F_PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20

_HDR = struct.Struct(">HBBBI")
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
# frame header candidates for resynchronisation: length < 16385, a known type
_CAND = re.compile(rb"\x00[\x00-\x40].[\x00-\x09]", re.S)
# flags a frame type may carry (others are ignored by receivers, but real senders never set
# them, which makes a good test when looking for a frame boundary in garbage)
_FLAGS = (0x09, 0x2D, 0, 0, 0x01, 0x0C, 0x01, 0, 0, 0x04)


def _valid(length, ftype, flags, sid):
    """The frame header obeys RFC 9113's per-type rules (sizes, stream 0 or not)."""
    if ftype == DATA or ftype == HEADERS or ftype == CONTINUATION:
        return sid != 0
    if ftype == SETTINGS:
        return sid == 0 and length % 6 == 0 and not (flags & F_ACK and length)
    if ftype == PING:
        return sid == 0 and length == 8
    if ftype == GOAWAY:
        return sid == 0 and length >= 8
    if ftype == RST_STREAM:
        return sid != 0 and length == 4
    if ftype == WINDOW_UPDATE:
        return length == 4
    if ftype == PRIORITY:
        return sid != 0 and length == 5
    if ftype == PUSH_PROMISE:
        return sid != 0 and length >= 4
    return True                    # extension frame types: skipped


class H2Parser(Parser):
    __slots__ = ("d", "started", "block", "block_sid", "block_len", "block_kind",
                 "block_end", "block_ts", "block_bad")

    def __init__(self, msg_type, state):
        super().__init__(msg_type, state)
        self.d = 0 if msg_type == MessageType.REQUEST else 1
        self.started = False
        self.block = None          # fragments of a header block awaiting CONTINUATION
        self.block_sid = 0
        self.block_len = 0
        self.block_kind = EV_HEADERS
        self.block_end = False
        self.block_ts = 0
        self.block_bad = False     # part of the block was not captured: not decodable

    # -- resynchronisation ---------------------------------------------------------------
    def find_boundary(self, buf, start):
        """Bytes were lost (or garbage met): the HPACK table of this direction is no
        longer known; look for two consecutive plausible frame headers (or one that ends
        the buffer)."""
        self.state.dec[self.d].forget()
        self.block = None
        n = len(buf)
        m = _CAND.search(buf, start)
        while m is not None:
            i = m.start()
            if n - i >= 9 and self._plausible(buf, i):
                nxt = i + 9 + ((buf[i + 1] << 8) | buf[i + 2])
                if nxt + 9 > n or self._plausible(buf, nxt):
                    return i
            m = _CAND.search(buf, i + 1)
        return -1

    @staticmethod
    def _plausible(buf, i):
        hi, lo, ftype, flags, sid = _HDR.unpack_from(buf, i)
        length = (hi << 8) | lo
        if sid & 0x80000000 or length > 16384:
            return False
        if ftype <= CONTINUATION and flags & ~_FLAGS[ftype] & 0xFF:
            return False
        return _valid(length, ftype, flags, sid)

    # -- frames --------------------------------------------------------------------------
    def parse(self, buf, start, ts):
        n = len(buf)
        state = self.state
        if not self.started:
            if self.d == 0:
                head = buf[start:start + 24]
                if head == PREFACE:
                    self.started = True
                    if not state.preface:
                        state.preface = True
                        for dec in state.dec:
                            if not dec.known:
                                dec.complete = True
                    return IGNORE, None, start + 24
                if len(head) < 24 and PREFACE.startswith(head):
                    return NEEDS_MORE_DATA, None, start + 24
            self.started = True
        if n - start < 9:
            return NEEDS_MORE_DATA, None, start + 9
        hi, lo, ftype, flags, sid = _HDR.unpack_from(buf, start)
        length = (hi << 8) | lo
        sid &= 0x7FFFFFFF
        if not _valid(length, ftype, flags, sid):
            return INVALID, None, start
        end = start + 9 + length
        if self.block is not None and ftype != CONTINUATION:
            self._drop_block()          # a protocol error: the block is lost
        if ftype == DATA:
            if flags & F_END_STREAM:
                return SUCCESS, H2Event(ts, EV_END, sid, end=True), end
            return IGNORE, None, end
        if ftype == HEADERS or ftype == PUSH_PROMISE:
            return self._headers(buf, start, end, n, ts, ftype, flags, sid, length)
        if ftype == CONTINUATION:
            return self._continuation(buf, start, end, n, flags, sid, length)
        if ftype == RST_STREAM:
            if end > n:
                return NEEDS_MORE_DATA, None, end
            return SUCCESS, H2Event(ts, EV_RST, sid, code=_U32.unpack_from(buf, start + 9)[0]), \
                end
        if ftype == GOAWAY:
            if start + 17 > n:
                return NEEDS_MORE_DATA, None, start + 17
            last, code = _U32X2.unpack_from(buf, start + 9)
            return SUCCESS, H2Event(ts, EV_GOAWAY, last & 0x7FFFFFFF, code=code), end
        return IGNORE, None, end        # SETTINGS PING PRIORITY WINDOW_UPDATE, extensions

    def _headers(self, buf, start, end, n, ts, ftype, flags, sid, length):
        dec = self.state.dec[self.d]
        kind = EV_HEADERS if ftype == HEADERS else EV_PUSH
        if end > n:
            if length <= MAX_BLOCK:
                return NEEDS_MORE_DATA, None, end
            # not capturable: skip it; the table may have changed under us
            dec.forget()
            return SUCCESS, H2Event(ts, kind, sid, {}, 1, bool(flags & F_END_STREAM)), end
        pos = start + 9
        pad = 0
        if flags & F_PADDED:
            if pos >= end:                  # no room for the pad length (fuzz finding)
                return INVALID, None, start
            pad = buf[pos]
            pos += 1
        if ftype == HEADERS:
            if flags & F_PRIORITY:
                pos += 5
        else:
            if pos + 4 > end:
                return INVALID, None, start
            sid = _U32.unpack_from(buf, pos)[0] & 0x7FFFFFFF     # the promised stream
            pos += 4
        bend = end - pad
        if bend < pos:
            return INVALID, None, start
        if flags & F_END_HEADERS:
            res = dec.decode(buf, pos, bend)
            if res is None:
                dec.forget()
                res = ({}, 1)
            return SUCCESS, H2Event(ts, kind, sid, res[0], res[1],
                                    bool(flags & F_END_STREAM)), end
        self.block = [bytes(buf[pos:bend])]
        self.block_len = bend - pos
        self.block_sid = sid
        self.block_kind = kind
        self.block_end = bool(flags & F_END_STREAM)
        self.block_ts = ts
        self.block_bad = False
        return IGNORE, None, end

    def _continuation(self, buf, start, end, n, flags, sid, length):
        if self.block is None or sid != self.block_sid:
            self._drop_block()
            return IGNORE, None, end
        if end > n:
            if length <= MAX_BLOCK:
                return NEEDS_MORE_DATA, None, end
            self.block_bad = True
        elif not self.block_bad:
            self.block_len += length
            if self.block_len > MAX_BLOCK:
                self.block_bad = True       # a CONTINUATION flood: stop collecting
                self.block = [b""]
            else:
                self.block.append(bytes(buf[start + 9:end]))
        if not flags & F_END_HEADERS:
            return IGNORE, None, end
        dec = self.state.dec[self.d]
        res = None
        if not self.block_bad:
            data = b"".join(self.block)
            res = dec.decode(data, 0, len(data))
        if res is None:
            dec.forget()
            res = ({}, 1)
        ev = H2Event(self.block_ts, self.block_kind, self.block_sid, res[0], res[1],
                     self.block_end)
        self.block = None
        return SUCCESS, ev, end

    def _drop_block(self):
        self.block = None
        self.state.dec[self.d].forget()
