"""Kafka framing and decoding: int32 size, then a request header (v0-v2: api_key,
api_version, correlation_id, client_id, tagged fields) or a response header (v0-v1:
correlation_id, tagged fields) and the body.

Requests: the API by name, the topic when the request names exactly one (Produce, Fetch
up to v12, Metadata), Produce's acks (acks=0: no response will come).  Responses: the
layout comes from the request with the same correlation id (``KafkaState.pending``, filled
by the request parser, which sees a request before its response); errors are the top-level
``error_code`` where the API has one, the partition codes of Produce and Fetch and the
topic/partition codes of Metadata; only the captured bytes are read (HEAD at most).
"""
from __future__ import annotations

import re
import struct

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType
from protocol.kafka.types import (API_NAMES, FLEX_FROM, MAX_API_KEY, MAX_API_VERSION,
                                  MAX_PENDING, RETRIABLE, KafkaRequest, KafkaResponse,
                                  error_name)
from protocol.lenprefix import BE16, BE32, Cut, LengthPrefixedParser, Reader, text

MAX_REQUEST = 100 * 1024 * 1024 + 4   # the broker's socket.request.max.bytes default
KEY_LIMIT = 127          # api keys accepted (named up to MAX_API_KEY, "ApiKey<n>" above)
_HH = struct.Struct(">hh")
RE_RESP_START = re.compile(rb"(?s)\x00(?=[\x00-\xff]{7})")
RE_REQ_START = re.compile(rb"(?s)\x00[\x00-\xff]{3}\x00[\x00-\x7f]\x00[\x00-\x14]")

# Offset of a top-level error_code in the response body: (from version, offset) pairs,
# highest version first.
_TOP_ERR = {
    10: ((4, None), (1, 4), (0, 0)),          # FindCoordinator (v4+: per coordinator)
    11: ((2, 4), (0, 0)),                     # JoinGroup
    12: ((1, 4), (0, 0)), 13: ((1, 4), (0, 0)), 14: ((1, 4), (0, 0)), 16: ((1, 4), (0, 0)),
    17: ((0, 0),), 18: ((0, 0),), 36: ((0, 0),),
    22: ((0, 4),), 25: ((0, 4),), 26: ((0, 4),), 60: ((0, 4),), 68: ((0, 4),),
}


def _is_flex(key, ver):
    f = FLEX_FROM[key] if key <= MAX_API_KEY else 0
    return f is not None and ver >= f


def _tags(r):
    for _ in range(r.uvarint()):
        r.uvarint()
        r.skip(r.uvarint())


def _string(r, flex):
    if flex:
        n = r.uvarint() - 1
    else:
        n = r.one(BE16)
    if n < 0:
        return None
    p = r.take(n)
    return r.buf[p:p + n]


def _skip_string(r, flex):
    n = r.uvarint() - 1 if flex else r.one(BE16)
    if n > 0:
        r.skip(n)


def _array_len(r, flex):
    return r.uvarint() - 1 if flex else r.one(BE32)


def _skip_int32_array(r, flex):
    n = _array_len(r, flex)
    if n > 0:
        r.skip(4 * n)


def _one_topic(r, flex, uuid=False):
    """A topic array whose elements start with the name: the name if it has one element."""
    n = _array_len(r, flex)
    if n != 1:
        return ""
    if uuid:
        r.skip(16)
    name = _string(r, flex)
    return text(name, 249) if name else ""


def _request_path(key, ver, flex, r):
    """(topic or "", acks=0) from the request body."""
    if key == 0:                                    # Produce
        if ver >= 3:
            _skip_string(r, flex)                   # transactional_id
        acks = r.one(BE16)
        r.skip(4)                                   # timeout_ms
        try:
            return _one_topic(r, flex), acks == 0
        except Cut:
            return "", acks == 0
    if key == 1:                                    # Fetch
        if ver <= 14:
            r.skip(4)                               # replica_id
        r.skip(8)                                   # max_wait_ms, min_bytes
        if ver >= 3:
            r.skip(4)
        if ver >= 4:
            r.skip(1)
        if ver >= 7:
            r.skip(8)
        return (_one_topic(r, flex) if ver <= 12 else ""), False
    if key == 3:                                    # Metadata
        return _one_topic(r, flex, uuid=ver >= 10), False
    return "", False


def error_class(code):
    if code == 0:
        return ERR_NONE
    return ERR_SERVER if code in RETRIABLE else ERR_CLIENT


class _Errors:
    """The first non-zero error code met while walking a response."""

    __slots__ = ("code",)

    def __init__(self):
        self.code = 0

    def add(self, code):
        if code and not self.code:
            self.code = code


def _produce_errors(r, ver, flex, errs):
    for _ in range(_array_len(r, flex)):
        _skip_string(r, flex)
        for _ in range(_array_len(r, flex)):
            r.skip(4)
            errs.add(r.one(BE16))
            r.skip(8)
            if ver >= 2:
                r.skip(8)
            if ver >= 5:
                r.skip(8)
            if ver >= 8:
                for _ in range(_array_len(r, flex)):
                    r.skip(4)
                    _skip_string(r, flex)
                    if flex:
                        _tags(r)
                _skip_string(r, flex)
            if flex:
                _tags(r)
        if flex:
            _tags(r)


def _fetch_errors(r, ver, flex, errs):
    if ver >= 1:
        r.skip(4)
    if ver >= 7:
        errs.add(r.one(BE16))
        r.skip(4)
    for _ in range(_array_len(r, flex)):
        if ver >= 13:
            r.skip(16)
        else:
            _skip_string(r, flex)
        for _ in range(_array_len(r, flex)):
            r.skip(4)
            errs.add(r.one(BE16))
            if errs.code:
                return                # the first error is all the record needs
            r.skip(8)
            if ver >= 4:
                r.skip(8)
            if ver >= 5:
                r.skip(8)
            if ver >= 4:
                n = _array_len(r, flex)
                for _ in range(n if n > 0 else 0):
                    r.skip(16)
                    if flex:
                        _tags(r)
            if ver >= 11:
                r.skip(4)
            n = r.uvarint() - 1 if flex else r.one(BE32)
            if n > 0:
                r.skip(n)
            if flex:
                _tags(r)
        if flex:
            _tags(r)


def _metadata_errors(r, ver, flex, errs):
    if ver >= 3:
        r.skip(4)
    for _ in range(_array_len(r, flex)):
        r.skip(4)
        _skip_string(r, flex)
        r.skip(4)
        if ver >= 1:
            _skip_string(r, flex)
        if flex:
            _tags(r)
    if ver >= 2:
        _skip_string(r, flex)
    if ver >= 1:
        r.skip(4)
    for _ in range(_array_len(r, flex)):
        errs.add(r.one(BE16))
        if errs.code:
            return
        _skip_string(r, flex)
        if ver >= 10:
            r.skip(16)
        if ver >= 1:
            r.skip(1)
        for _ in range(_array_len(r, flex)):
            errs.add(r.one(BE16))
            if errs.code:
                return
            r.skip(8)
            if ver >= 7:
                r.skip(4)
            _skip_int32_array(r, flex)
            _skip_int32_array(r, flex)
            if ver >= 5:
                _skip_int32_array(r, flex)
            if flex:
                _tags(r)
        if ver >= 8:
            r.skip(4)
        if flex:
            _tags(r)


_BODY_ERRORS = {0: _produce_errors, 1: _fetch_errors, 3: _metadata_errors}


def response_error(key, ver, flex, r):
    """The first error code of a response body (0: none found in the captured bytes)."""
    errs = _Errors()
    try:
        top = _TOP_ERR.get(key)
        if top is not None:
            for since, off in top:
                if ver >= since:
                    if off is not None:
                        r.skip(off)
                        errs.add(r.one(BE16))
                    break
        else:
            fn = _BODY_ERRORS.get(key)
            if fn is not None:
                fn(r, ver, flex, errs)
    except Cut:
        pass
    return errs.code


class KafkaParser(LengthPrefixedParser):
    __slots__ = ()
    LEN_SIZE = 4
    MIN_LEN = 8            # size + correlation id (a response with an empty body)
    MAX_LEN = 256 * 1024 * 1024

    def size_of(self, buf, start):
        return BE32.unpack_from(buf, start)[0] + 4

    def plausible(self, buf, start, size):
        if self.msg_type != MessageType.REQUEST:
            return True
        if len(buf) - start < 8:
            return size <= MAX_REQUEST
        key, ver = _HH.unpack_from(buf, start + 4)
        return size <= MAX_REQUEST and 0 <= key <= KEY_LIMIT and 0 <= ver <= MAX_API_VERSION

    def decode(self, buf, start, avail, end, ts):
        r = Reader(buf, start + 4, avail)
        if self.msg_type == MessageType.REQUEST:
            return self._request(r, ts)
        return self._response(r, ts)

    def _request(self, r, ts):
        key, ver = r.unpack(_HH)
        cid = r.one(BE32)
        if not (0 <= key <= KEY_LIMIT and 0 <= ver <= MAX_API_VERSION):
            return None
        n = r.one(BE16)                               # client_id (nullable string)
        if n < -1:
            return None
        if n > 0:
            r.skip(n)
        flex = _is_flex(key, ver)
        path, noreply = "", False
        try:
            if flex:
                _tags(r)
            path, noreply = _request_path(key, ver, flex, r)
        except Cut:
            pass
        api = API_NAMES[key] if key <= MAX_API_KEY else "ApiKey%d" % key
        if not noreply:
            pending = self.state.pending
            if len(pending) >= MAX_PENDING:
                del pending[next(iter(pending))]
            pending[cid] = (key, ver)
        return KafkaRequest(ts, key, ver, cid, api, path, noreply)

    def _response(self, r, ts):
        cid = r.one(BE32)
        asked = self.state.pending.get(cid)
        if asked is None:
            return KafkaResponse(ts, cid, "", ERR_NONE)
        key, ver = asked
        flex = _is_flex(key, ver)
        code = 0
        try:
            if flex and key != 18:        # ApiVersions responses keep header v0
                _tags(r)
            code = response_error(key, ver, flex, r)
        except Cut:
            pass
        return KafkaResponse(ts, cid, error_name(code) if code else "NONE",
                             error_class(code))

    def find_boundary(self, buf, start):
        if self.lone_length(buf, start) and buf[0] == 0:
            return 0
        if self.msg_type == MessageType.REQUEST:
            # a request header whose client id length, when captured, is the kernel
            # rule's (-1 to 255, include/l7.h detect_kafka): inside a request's payload,
            # the bytes 4 on from its start (a lost 4-byte size read) look like a request
            # of a megabyte, and waiting for it cost the rest of the connection
            n = len(buf)
            for m in RE_REQ_START.finditer(buf, start):
                i = m.start()
                if i + 14 > n:
                    return i
                cn = BE16.unpack_from(buf, i + 12)[0]
                if -1 <= cn <= 255 and 10 + cn <= BE32.unpack_from(buf, i)[0]:
                    return i
            return -1
        # a response: a size under 16 MB, then the correlation id of a request still
        # waiting; one pass over the candidates (a search per waiting id cost the buffer
        # times the 4096 ids that may wait)
        pending = self.state.pending
        if not pending:
            return -1
        unpack = BE32.unpack_from
        for m in RE_RESP_START.finditer(buf, start):
            i = m.start()
            if unpack(buf, i + 4)[0] in pending:
                return i
        return -1
