"""MongoDB framing: int32 messageLength (little-endian, itself included), requestID,
responseTo, opCode, then the opcode's body.

* OP_MSG (2013): flag bits (checksumPresent, moreToCome, exhaustAllowed), section kind 0
  (the command document) and kind 1 (document sequences, skipped).
* OP_QUERY (2004) / OP_REPLY (1), OP_COMMAND (2010) / OP_COMMANDREPLY (2011), OP_GET_MORE
  (2005) and the legacy writes OP_UPDATE/OP_INSERT/OP_DELETE/OP_KILL_CURSORS (no reply).
* OP_COMPRESSED (2012): snappy, zlib and zstd are decompressed (zlib from the standard
  library, snappy and zstd through ``cramjam`` when it is installed) and the inner message is
  decoded; otherwise it is counted with api/status ``compressed`` (``MongoState.undecoded``).

Documents are read with pymongo's ``bson`` (``RawBSONDocument``: only the top level is
decoded, lazily); the command name is the first key, read directly.  Only the captured bytes
are decoded: a document cut by the capture gives what its first key says.
"""
from __future__ import annotations

import re
import struct
import zlib

from bson.raw_bson import RawBSONDocument

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType
from protocol.lenprefix import HEAD_MIN, LengthPrefixedParser, text
from protocol.mongo.types import MongoRequest, MongoResponse

try:
    import cramjam
except ImportError:       # pragma: no cover - optional
    cramjam = None

HDR = struct.Struct("<iiiI")
LE32 = struct.Struct("<i")
REPLY = struct.Struct("<iqii")
COMPRESSED = struct.Struct("<iiB")

OP_REPLY, OP_UPDATE, OP_INSERT, OP_QUERY, OP_GET_MORE, OP_DELETE, OP_KILL_CURSORS = (
    1, 2001, 2002, 2004, 2005, 2006, 2007)
OP_COMMAND, OP_COMMANDREPLY, OP_COMPRESSED, OP_MSG = 2010, 2011, 2012, 2013
REQUEST_OPS = frozenset((OP_UPDATE, OP_INSERT, OP_QUERY, OP_GET_MORE, OP_DELETE,
                         OP_KILL_CURSORS, OP_COMMAND, OP_COMPRESSED, OP_MSG))
RESPONSE_OPS = frozenset((OP_REPLY, OP_COMMANDREPLY, OP_COMPRESSED, OP_MSG))
LEGACY_NAMES = {OP_UPDATE: "update", OP_INSERT: "insert", OP_DELETE: "delete",
                OP_KILL_CURSORS: "killCursors", OP_GET_MORE: "getMore"}
CHECKSUM, MORE_TO_COME = 1, 2
MAX_DECOMPRESSED = 16 * 1024 * 1024

# Server-side conditions (replica set state, shutdown, network, timeouts); any other error
# code is the request's fault (client error).  Errors labelled RetryableWriteError or
# TransientTransactionError are server errors too.
SERVER_CODES = frozenset((1, 6, 7, 8, 50, 63, 64, 89, 91, 112, 133, 150, 189, 202, 234, 262,
                          9001, 10107, 11600, 11602, 13388, 13435, 13436))

RE_OPCODE = re.compile(rb"(?s)(?=.{12}(?:\xdd\x07|\xd4\x07|\xdc\x07|\xda\x07|\xd1\x07|\xd2\x07"
                       rb"|\xd5\x07|\xd6\x07|\xd7\x07|\x01\x00|\xdb\x07)\x00\x00)")


def first_key(buf, p, end):
    """(first key, its type byte, position of its value) of the BSON document at p."""
    if p + 6 > end:
        return "", 0, 0
    t = buf[p + 4]
    z = buf.find(b"\0", p + 5, min(end, p + 5 + 128))
    if t == 0 or z < 0:
        return "", t, 0
    return text(buf[p + 5:z], 64), t, z + 1


def string_value(buf, p, end):
    """A BSON string value at p (int32 length incl. NUL, bytes), or ""."""
    if p + 4 > end:
        return ""
    n = LE32.unpack_from(buf, p)[0]
    if n <= 1 or p + 4 + n > end:
        return ""
    return text(buf[p + 4:p + 3 + n], 200)


def raw_doc(buf, p, end):
    """The whole BSON document at p as a RawBSONDocument, or None if cut or malformed."""
    if p + 5 > end:
        return None
    n = LE32.unpack_from(buf, p)[0]
    if n < 5 or p + n > end or buf[p + n - 1] != 0:
        return None
    return RawBSONDocument(bytes(buf[p:p + n]))


def doc_get(doc, key):
    try:
        return doc.get(key) if doc is not None else None
    except Exception:         # bson.errors.InvalidBSON and friends: a malformed document
        return None


def command_of(buf, p, end):
    """(api, path) of a command document at p; path = "db.collection" with the db given."""
    key, t, v = first_key(buf, p, end)
    if key in ("$query", "query") and t == 3:
        key, t, v = first_key(buf, v, end)
    coll = string_value(buf, v, end) if t == 2 else ""
    return key or "unknown", coll


def error_of(doc):
    """(status, err) of a reply document."""
    if doc is None:
        return "ok", ERR_NONE
    ok = doc_get(doc, "ok")
    if ok is not None and not ok:
        code = doc_get(doc, "code")
        name = doc_get(doc, "codeName")
        labels = doc_get(doc, "errorLabels") or ()
        status = text(str(name), 64) if name else ("code %s" % code if code is not None
                                                    else "error")
        server = (code in SERVER_CODES or "RetryableWriteError" in labels
                  or "TransientTransactionError" in labels)
        return status, ERR_SERVER if server else ERR_CLIENT
    if doc_get(doc, "writeErrors"):
        return "writeErrors", ERR_CLIENT
    if doc_get(doc, "writeConcernError"):
        return "writeConcernError", ERR_SERVER
    if doc_get(doc, "$err"):
        return "error", ERR_CLIENT
    return "ok", ERR_NONE


def decompress(cid, data, size):
    if size < 0 or size > MAX_DECOMPRESSED:
        return None
    try:
        if cid == 0:
            return data
        if cid == 2:
            return zlib.decompress(data)
        if cramjam is None:
            return None
        if cid == 1:
            return bytes(cramjam.snappy.decompress_raw(data))
        if cid == 3:
            return bytes(cramjam.zstd.decompress(data))
    except Exception:         # corrupt data: counted, not decoded
        return None
    return None


class MongoParser(LengthPrefixedParser):
    __slots__ = ()
    LEN_SIZE = 4
    MIN_LEN = 16
    MAX_LEN = 48 * 1000 * 1000

    def size_of(self, buf, start):
        return LE32.unpack_from(buf, start)[0]

    def plausible(self, buf, start, size):
        if len(buf) - start < 16:
            return True
        op = HDR.unpack_from(buf, start)[3]
        return op in (REQUEST_OPS if self.msg_type == MessageType.REQUEST else RESPONSE_OPS)

    def min_decode(self, buf, start, size):
        if len(buf) - start >= 16 and HDR.unpack_from(buf, start)[3] == OP_COMPRESSED:
            return size                 # decompression needs all of it
        return HEAD_MIN

    def decode(self, buf, start, avail, end, ts):
        if start + 16 > avail:
            return None
        _, rid, resp_to, op = HDR.unpack_from(buf, start)
        if self.msg_type == MessageType.REQUEST:
            if op not in REQUEST_OPS:
                return None
            return self._request(buf, start + 16, avail, end, ts, rid, op)
        if op not in RESPONSE_OPS:
            return None
        return self._response(buf, start + 16, avail, end, ts, rid, resp_to, op)

    def _inner(self, buf, p, avail, end):
        """OP_COMPRESSED -> (original opcode, decompressed body, its length) or None."""
        if p + 9 > avail:
            return None
        op, size, cid = COMPRESSED.unpack_from(buf, p)
        body = decompress(cid, bytes(buf[p + 9:end]), size) if end <= avail else None
        if body is None:
            self.state.undecoded += 1
            return None
        return op, body, len(body)

    def _request(self, buf, p, avail, end, ts, rid, op):
        if op == OP_COMPRESSED:
            inner = self._inner(buf, p, avail, end)
            if inner is None:
                return MongoRequest(ts, rid, "compressed", "", False)
            op, buf, avail = inner
            end = avail
            p = 0
            if op not in REQUEST_OPS or op == OP_COMPRESSED:
                return None
        noreply = False
        if op == OP_MSG:
            if p + 5 > avail:
                return None
            flags = struct.unpack_from("<I", buf, p)[0]
            noreply = bool(flags & MORE_TO_COME)
            p += 4
            if buf[p] != 0:              # the command is the kind 0 section, normally first
                return MongoRequest(ts, rid, "unknown", "", noreply)
            api, coll = command_of(buf, p + 1, avail)
            db = doc_get(raw_doc(buf, p + 1, avail), "$db")
            db = text(db, 64) if isinstance(db, str) else ""
            path = "%s.%s" % (db, coll) if db and coll else db
            return MongoRequest(ts, rid, api, path, noreply)
        if op == OP_QUERY or op == OP_COMMAND:
            # OP_QUERY: flags, fullCollectionName, numberToSkip, numberToReturn, query;
            # OP_COMMAND: database, commandName, metadata, commandArgs.
            q = p + 4 if op == OP_QUERY else p
            z = buf.find(b"\0", q, min(avail, q + 256))
            if z < 0:
                return None
            ns = text(buf[q:z], 128)
            if op == OP_COMMAND:
                z2 = buf.find(b"\0", z + 1, min(avail, z + 129))
                if z2 < 0:
                    return None
                api = text(buf[z + 1:z2], 64) or "unknown"
                _, coll = command_of(buf, z2 + 1, avail)
                return MongoRequest(ts, rid, api, "%s.%s" % (ns, coll) if coll else ns, False)
            if ns.endswith(".$cmd"):
                api, coll = command_of(buf, z + 9, avail)
                db = ns[:-5]
                return MongoRequest(ts, rid, api, "%s.%s" % (db, coll) if coll else db, False)
            return MongoRequest(ts, rid, "find", ns, False)
        # legacy: int32 ZERO or flags, then the namespace (OP_KILL_CURSORS has none)
        name = LEGACY_NAMES.get(op, "unknown")
        ns = ""
        if op != OP_KILL_CURSORS:
            z = buf.find(b"\0", p + 4, min(avail, p + 260))
            if z >= 0:
                ns = text(buf[p + 4:z], 128)
        return MongoRequest(ts, rid, name, ns, op != OP_GET_MORE)

    def _response(self, buf, p, avail, end, ts, rid, resp_to, op):
        if op == OP_COMPRESSED:
            inner = self._inner(buf, p, avail, end)
            if inner is None:
                return MongoResponse(ts, rid, resp_to, "compressed", ERR_NONE, False)
            op, buf, avail = inner
            end = avail
            p = 0
            if op not in RESPONSE_OPS or op == OP_COMPRESSED:
                return None
        if op == OP_MSG:
            if p + 5 > avail:
                return None
            flags = struct.unpack_from("<I", buf, p)[0]
            more = bool(flags & MORE_TO_COME)
            doc = raw_doc(buf, p + 5, avail) if buf[p + 4] == 0 else None
            status, err = error_of(doc)
            return MongoResponse(ts, rid, resp_to, status, err, more)
        if op == OP_REPLY:
            if p + 20 > avail:
                return None
            rflags, _cursor, _start, nret = REPLY.unpack_from(buf, p)
            doc = raw_doc(buf, p + 20, avail) if nret > 0 else None
            if rflags & 2:                   # QueryFailure
                st, err = error_of(doc)
                return MongoResponse(ts, rid, resp_to, st if err else "QueryFailure",
                                     err or ERR_CLIENT, False)
            if rflags & 1:                   # CursorNotFound
                return MongoResponse(ts, rid, resp_to, "CursorNotFound", ERR_CLIENT, False)
            status, err = error_of(doc)
            return MongoResponse(ts, rid, resp_to, status, err, False)
        # OP_COMMANDREPLY: commandReply, metadata, outputDocs
        status, err = error_of(raw_doc(buf, p, avail))
        return MongoResponse(ts, rid, resp_to, status, err, False)

    def find_boundary(self, buf, start):
        ops = REQUEST_OPS if self.msg_type == MessageType.REQUEST else RESPONSE_OPS
        for m in RE_OPCODE.finditer(buf, start):
            i = m.start()
            n = LE32.unpack_from(buf, i)[0]
            if self.MIN_LEN <= n <= self.MAX_LEN and HDR.unpack_from(buf, i)[3] in ops:
                return i
        return -1
