"""DNS messages, framed as over TCP: a 2-byte length, then the message (RFC 1035 4.2.2).
UDP datagrams reach this parser framed the same way (``pipeline/conntrack.py`` prefixes
each datagram with its length), so one parser serves both transports.

The header is read with ``struct``; the question name with dnspython (``dns.name.from_wire``,
which follows compression pointers and rejects malformed names); the query type and rcode
get dnspython's names.  Only the first question counts (every resolver sends one).
"""
from __future__ import annotations

import re
import struct

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType
from protocol.dns.types import DnsRequest, DnsResponse
from protocol.lenprefix import BEU16, LengthPrefixedParser, text

HEADER = struct.Struct(">HHHHHH")
RE_START = re.compile(rb"(?s)(?=..[\x00-\xff]{2}[\x00-\xff]{2}\x00[\x01-\x04])")

# rcode -> error class: the query's fault (FORMERR, NXDOMAIN, REFUSED, YXDOMAIN, YXRRSET,
# NXRRSET, NOTAUTH, NOTZONE) or the server's (SERVFAIL, NOTIMP).
SERVER_RCODES = frozenset((2, 4))

_TYPE_NAMES = {}
_RCODE_NAMES = {}


def type_name(t):
    s = _TYPE_NAMES.get(t)
    if s is None:
        s = dns.rdatatype.to_text(t) if len(_TYPE_NAMES) < 1024 else "TYPE%d" % t
        _TYPE_NAMES[t] = s
    return s


def rcode_name(c):
    s = _RCODE_NAMES.get(c)
    if s is None:
        s = _RCODE_NAMES[c] = dns.rcode.to_text(c)
    return s


def question(msg):
    """(qtype, name text) of the first question of ``msg`` (the message bytes), or None."""
    try:
        name, used = dns.name.from_wire(msg, 12)
    except (dns.exception.DNSException, ValueError, IndexError):
        return None
    p = 12 + used
    if p + 4 > len(msg):
        return None
    qtype = BEU16.unpack_from(msg, p)[0]
    t = name.to_text(omit_final_dot=True) or "."
    return qtype, text(t, 255)


class DnsParser(LengthPrefixedParser):
    __slots__ = ()
    LEN_SIZE = 2
    MIN_LEN = 14
    MAX_LEN = 65537

    def size_of(self, buf, start):
        return BEU16.unpack_from(buf, start)[0] + 2

    def decode(self, buf, start, avail, end, ts):
        p = start + 2
        if p + 12 > avail:
            return None
        qid, flags, qd, _an, _ns, _ar = HEADER.unpack_from(buf, p)
        if (flags >> 11) & 0xF > 6:          # opcodes 0-6 only
            return None
        qr = flags >> 15
        q = question(bytes(buf[p:avail])) if qd else None
        if qd and q is None and avail >= end:
            return None                      # a whole message with a broken question
        if self.msg_type == MessageType.REQUEST:
            if qr:
                return True                  # a response where queries go: not counted
            if q is None:
                return DnsRequest(ts, qid, None, "QUERY", "")
            return DnsRequest(ts, qid, q, type_name(q[0]), q[1])
        if not qr:
            return True
        rcode = flags & 0xF
        err = ERR_NONE if rcode == 0 else (ERR_SERVER if rcode in SERVER_RCODES else ERR_CLIENT)
        return DnsResponse(ts, qid, q, rcode_name(rcode), err)

    def plausible(self, buf, start, size):
        """The header as far as buffered: a known opcode, the Z bit clear, at most 4
        questions (else a length byte read alone after lost bytes, dnsmasq's way, made
        the message's first byte part of a length of kilobytes, awaited for 512 bytes)."""
        n = len(buf)
        if start + 6 > n:
            return True
        flags = BEU16.unpack_from(buf, start + 4)[0]
        if (flags >> 11) & 0xF > 6 or flags & 0x40:
            return False
        return start + 8 > n or BEU16.unpack_from(buf, start + 6)[0] <= 4

    def find_boundary(self, buf, start):
        if self.lone_length(buf, start):
            return 0
        # a length, then a header with a known opcode and the Z bit clear, then labels of
        # at most 63 bytes as far as captured; one that starts too near the end to show its
        # header and a name byte (15 bytes) only at the buffer's start: else the "one
        # question" of a name's class (00 01) near the end of a read, or inside a query,
        # was awaited for 512 bytes, swallowing the next messages
        n = len(buf)
        for m in RE_START.finditer(buf, start):
            i = m.start()
            if BEU16.unpack_from(buf, i)[0] + 2 < self.MIN_LEN:
                continue
            flags = BEU16.unpack_from(buf, i + 4)[0]
            if (flags >> 11) & 0xF > 6 or flags & 0x40:
                continue
            if i + 15 > n:
                if i != start:
                    continue
            elif not _labels_ok(buf, i + 14, min(n, i + 2 + BEU16.unpack_from(buf, i)[0])):
                continue
            return i
        return -1


def _labels_ok(buf, p, n):
    """The name at ``buf[p:]`` has labels of at most 63 bytes as far as ``n`` (a
    compression pointer or the root label ends it), looking at 8 labels at most."""
    for _ in range(8):
        if p >= n:
            return True
        b = buf[p]
        if b == 0 or b >= 0xC0:
            return True
        if b > 63:
            return False
        p += b + 1
    return True
