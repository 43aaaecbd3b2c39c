"""Framing shared by the length-prefixed binary protocols (Kafka, MongoDB, RocketMQ, DNS
over TCP): a fixed-size length field, then the message.

A subclass says where the length is and what it counts (``size_of``), and decodes one
message from the bytes it has (``decode``).  ``parse`` then:

* waits (``NEEDS_MORE_DATA``) until the whole message, or its first ``HEAD`` bytes, are
  buffered, or at least ``HEAD_MIN`` bytes when the message is longer (what follows them
  may never be captured);
* decodes from what is there, and returns ``end`` = the message's true end, which may lie
  beyond the buffer: the stream skips the rest (an uncaptured body) without losing sync;
* says ``INVALID`` for an implausible length, so the stream resynchronises with the
  subclass's ``find_boundary``.

Decoders read with ``struct`` and ``bytes.find`` on at most ``HEAD`` bytes; a message cut by
the capture is decoded as far as it goes (``Cut`` is raised by the readers and caught here).
"""
from __future__ import annotations

import struct

from protocol.base import MessageType, ParseState, Parser, Protocol, Record

SUCCESS = ParseState.SUCCESS
NEEDS_MORE_DATA = ParseState.NEEDS_MORE_DATA
INVALID = ParseState.INVALID
IGNORE = ParseState.IGNORE
REQUEST = MessageType.REQUEST

HEAD = 16384          # bytes of a message decoded at most (the rest is skipped)
HEAD_MIN = 512        # bytes of a message decoded at least when it is not all there


class Cut(Exception):
    """The bytes a decoder needs were not captured."""


class Reader:
    """Big- or little-endian reads over ``buf[pos:limit]``; raises Cut past the limit."""

    __slots__ = ("buf", "pos", "limit")

    def __init__(self, buf, pos, limit):
        self.buf = buf
        self.pos = pos
        self.limit = limit

    def take(self, n):
        p = self.pos
        if n < 0 or p + n > self.limit:
            raise Cut()
        self.pos = p + n
        return p

    def skip(self, n):
        self.take(n)

    def unpack(self, st):
        p = self.take(st.size)
        return st.unpack_from(self.buf, p)

    def one(self, st):
        p = self.take(st.size)
        return st.unpack_from(self.buf, p)[0]

    def bytes(self, n):
        p = self.take(n)
        return bytes(self.buf[p:p + n])

    def uvarint(self):
        """Unsigned LEB128 (Kafka's compact lengths and tag counts), at most 5 bytes."""
        buf = self.buf
        shift = value = 0
        for _ in range(5):
            p = self.take(1)
            b = buf[p]
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
        raise Cut()


U8 = struct.Struct("B")
BE16 = struct.Struct(">h")
BEU16 = struct.Struct(">H")
BE32 = struct.Struct(">i")
BEU32 = struct.Struct(">I")
BE64 = struct.Struct(">q")
LE32 = struct.Struct("<i")
LEU32 = struct.Struct("<I")


def text(b, limit=256):
    """Bytes -> str of at most ``limit`` characters (the reporter sanitises values, in one
    place: pipeline/report.py)."""
    return b[:limit] if isinstance(b, str) else bytes(b[:limit]).decode("utf-8", "replace")


class LengthPrefixedParser(Parser):
    """Subclasses set LEN_SIZE (bytes of the length field), MIN_LEN / MAX_LEN (plausible
    whole-message sizes, length field included) and implement ``size_of(buf, start)`` (the
    whole message's size, length field included, or -1 if implausible) and
    ``decode(buf, start, avail_end, msg_end, ts)`` -> frame or None (None: INVALID)."""

    __slots__ = ()
    LEN_SIZE = 4
    MIN_LEN = 4
    MAX_LEN = 100 * 1024 * 1024

    def size_of(self, buf, start):  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, buf, start, avail, end, ts):  # pragma: no cover - interface
        raise NotImplementedError

    def plausible(self, buf, start, size):
        """False if the first bytes buffered already show this is no message (checked
        before waiting for the rest, so garbage with a large "length" is not awaited)."""
        return True

    def lone_length(self, buf, start):
        """After lost bytes, a read holding exactly a plausible length field (or a part of
        one) starts the next message: servers that read the length, then the message (the
        Kafka broker, DNS servers over TCP; dnsmasq a byte at a time) make such reads, and the search for a message start wants
        more bytes than they hold (one lost read would cost the rest of the connection)."""
        if start or len(buf) > self.LEN_SIZE:
            return False
        if len(buf) < self.LEN_SIZE:     # dnsmasq reads the length a byte at a time
            return True
        size = self.size_of(buf, 0)
        return self.MIN_LEN <= size <= self.MAX_LEN

    def min_decode(self, buf, start, size):
        """Bytes of a message (longer than what is buffered) needed before decoding it."""
        return HEAD_MIN

    def parse(self, buf, start, ts):
        n = len(buf)
        hdr = start + self.LEN_SIZE
        if hdr > n:
            return NEEDS_MORE_DATA, None, hdr
        size = self.size_of(buf, start)
        if size < self.MIN_LEN or size > self.MAX_LEN:
            return INVALID, None, start
        if not self.plausible(buf, start, size):
            return INVALID, None, start
        end = start + size
        want = start + (size if size < HEAD else HEAD)
        if want > n:
            # Not all there: wait for the whole message (or HEAD of it), unless HEAD_MIN
            # bytes are buffered already.  Those are decoded now, because the rest may never
            # be captured (a body sent with sendfile, a capture prefix shorter than the
            # message): the stream then skips it by ``end``.
            least = self.min_decode(buf, start, size)
            if n - start < least:
                return NEEDS_MORE_DATA, None, min(want, start + least)
            want = n
        try:
            frame = self.decode(buf, start, want, end, ts)
        except Cut:
            frame = None
        if frame is None:
            return INVALID, None, start
        if frame is True:               # valid, but nothing to report
            return IGNORE, None, end
        return SUCCESS, frame, end


def answer(reqs, r, match, out):
    """Pair response ``r`` with the first waiting request ``match(q)`` accepts (removed from
    ``reqs``), appending the record to ``out``; a response nothing waits for is a record
    with ``req_ts == 0``.  Returns the request, or None.  (Protocols that pair by an id.)"""
    for i, q in enumerate(reqs):
        if match(q):
            del reqs[i]
            out.append(Record(q.ts, r.ts, q.api, q.api, q.path, r.status, r.err))
            return q
    out.append(Record(0, r.ts, None, "", "", r.status, r.err))
    return None


class IdProtocol(Protocol):
    """A protocol pairing by an id (Kafka, MongoDB, RocketMQ, DNS): a request left without
    response keeps its api and path."""

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, frame.api, frame.api, frame.path)
