"""RocketMQ remoting framing: int32 length (what follows), int32 serialize type (high byte:
0 JSON, 1 ROCKETMQ binary) << 24 | header length, the header, the body.

The header gives code, flag (bit 0: response, bit 1: oneway), opaque (pairing), remark and
extFields.  JSON headers are read with the standard ``json`` module; binary headers with
``struct``.  A frame is a request or a response by its flag bit, whatever the direction it
was seen in: the parser of a direction drops (IGNORE) frames of the other kind, such as a
broker's requests to a client (CHECK_TRANSACTION_STATE, NOTIFY_CONSUMER_IDS_CHANGED).
"""
from __future__ import annotations

import json
import re
import struct

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType
from protocol.lenprefix import BE32, HEAD_MIN, LengthPrefixedParser, text
from protocol.rocketmq.types import (REQUEST_CODES, RESPONSE_CODES, SERVER_ERRORS,
                                     RmqRequest, RmqResponse)

BIN_HDR = struct.Struct(">hBhii")       # code, language, version, opaque, flag
RE_JSON_START = re.compile(rb'(?s)(?=.{4}\x00.{3}\{")')
RE_BIN_START = re.compile(rb"(?s)(?=.{4}\x01.{3}[\x00-\xff]{2}[\x00-\x0f])")
RE_JSON_INT = re.compile(rb'"(code|flag|opaque)": ?(-?[0-9]{1,10}) ?[,}]')
RE_JSON_TOPIC = re.compile(rb'"(?:topic|b)": ?"([^"\\]{1,128})"')
FLAG_RESPONSE, FLAG_ONEWAY = 1, 2
MAX_HEADER = 4 * 1024 * 1024


def _bin_header(buf, p, end):
    """(code, opaque, flag, remark, extFields) of a ROCKETMQ-serialized header."""
    if p + 17 > end:
        return None
    code, _lang, _ver, opaque, flag = BIN_HDR.unpack_from(buf, p)
    p += 13
    n = BE32.unpack_from(buf, p)[0]
    p += 4
    remark = ""
    if n > 0:
        if p + n > end:
            return code, opaque, flag, "", {}
        remark = text(buf[p:p + n], 128)
        p += n
    ext = {}
    if p + 4 <= end:
        m = BE32.unpack_from(buf, p)[0]
        p += 4
        stop = min(end, p + m) if m > 0 else p
        while p + 2 <= stop and len(ext) < 64:
            kl = struct.unpack_from(">H", buf, p)[0]
            p += 2
            if p + kl + 4 > stop:
                break
            k = bytes(buf[p:p + kl])
            p += kl
            vl = BE32.unpack_from(buf, p)[0]
            p += 4
            if vl < 0 or p + vl > stop:
                break
            ext[k.decode("utf-8", "replace")] = bytes(buf[p:p + vl]).decode("utf-8", "replace")
            p += vl
    return code, opaque, flag, remark, ext


def _json_header(buf, p, end):
    try:
        h = json.loads(bytes(buf[p:end]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(h, dict):
        return None
    code, opaque, flag = h.get("code"), h.get("opaque"), h.get("flag", 0)
    if not isinstance(code, int) or not isinstance(opaque, int) or not isinstance(flag, int):
        return None
    remark = h.get("remark")
    ext = h.get("extFields")
    return (code, opaque, flag, text(remark, 128) if isinstance(remark, str) else "",
            ext if isinstance(ext, dict) else {})


def _cut_json(buf, p, end):
    """A JSON header cut by the capture: code, flag and opaque found by their keys (the top
    level's, outside extFields, which comes between them in Java's alphabetical order)."""
    head = bytes(buf[p:end])
    vals = {}
    for m in RE_JSON_INT.finditer(head):
        vals.setdefault(m.group(1), int(m.group(2)))
    if b"code" not in vals or b"opaque" not in vals:
        return None
    topic = RE_JSON_TOPIC.search(head)
    ext = {"topic": topic.group(1).decode("utf-8", "replace")} if topic else {}
    return vals[b"code"], vals[b"opaque"], vals.get(b"flag", 0), "", ext


def _path(ext):
    for k in ("topic", "b", "consumerGroup", "group"):     # "b": topic in SEND_MESSAGE_V2
        v = ext.get(k)
        if isinstance(v, str) and v:
            return text(v, 128)
    return ""


class RmqParser(LengthPrefixedParser):
    __slots__ = ()
    LEN_SIZE = 4
    MIN_LEN = 8
    MAX_LEN = 128 * 1024 * 1024

    def size_of(self, buf, start):
        return BE32.unpack_from(buf, start)[0] + 4

    def plausible(self, buf, start, size):
        if len(buf) - start < 8:
            return True
        word = BE32.unpack_from(buf, start + 4)[0]
        return (word >> 24) & 0xFF in (0, 1) and (word & 0xFFFFFF) + 8 <= size

    def min_decode(self, buf, start, size):
        """The whole header: its opaque may follow a long extFields."""
        if len(buf) - start < 8:
            return 8
        return max(HEAD_MIN, 8 + (BE32.unpack_from(buf, start + 4)[0] & 0xFFFFFF))

    def decode(self, buf, start, avail, end, ts):
        if start + 8 > avail:
            return None
        word = BE32.unpack_from(buf, start + 4)[0]
        kind, hlen = (word >> 24) & 0xFF, word & 0xFFFFFF
        if hlen > MAX_HEADER or start + 8 + hlen > end:
            return None
        p = start + 8
        stop = min(avail, p + hlen)
        if kind == 0:
            h = _json_header(buf, p, stop) if p + hlen <= avail else _cut_json(buf, p, stop)
        elif kind == 1:
            h = _bin_header(buf, p, stop)
        else:
            return None
        if h is None:
            return None
        code, opaque, flag, remark, ext = h
        if flag & FLAG_RESPONSE:
            if self.msg_type == MessageType.REQUEST:
                return True        # a response in the request direction: not ours to count
            name = RESPONSE_CODES.get(code) or "CODE_%d" % code
            if code == 0:
                return RmqResponse(ts, opaque, name, ERR_NONE)
            err = ERR_SERVER if code in SERVER_ERRORS else ERR_CLIENT
            return RmqResponse(ts, opaque, name + (" " + remark if remark else ""), err)
        if self.msg_type == MessageType.RESPONSE:
            return True            # a request from the server (broker -> client): ignored
        api = REQUEST_CODES.get(code) or "CODE_%d" % code
        return RmqRequest(ts, opaque, api, _path(ext), bool(flag & FLAG_ONEWAY))

    def find_boundary(self, buf, start):
        a = RE_JSON_START.search(buf, start)
        b = RE_BIN_START.search(buf, start)
        if a and b:
            return min(a.start(), b.start())
        m = a or b
        return m.start() if m else -1
