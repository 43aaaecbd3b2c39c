"""HPACK (RFC 7541) decoding that knows what it does not know.

The static table and the Huffman code are the ``hpack`` package's (python-hyper); the field
loop is ours because it must keep decoding when the dynamic table is only partly known, as
on a connection opened before the probe started or after lost bytes:

* the entries added since decoding began (or since the last loss) are known exactly, and
  they are always the *newest* ones: index 62 + i (i < len(known)) is known entry i.  The
  encoder never references an evicted entry, so a reference to a known index is right even
  though we cannot tell when older, unknown entries were evicted;
* an index past the known entries, while older entries may exist (``complete`` False), is
  an unknown field: its name and value are ``None``;
* the table becomes complete again after a dynamic table size update to 0 (it empties the
  table), or when the known entries alone exceed a table size we saw (then no older entry
  can have survived).

Memory is bounded: the table keeps at most ``MAX_TABLE`` bytes (RFC sizes), a header block
at most ``MAX_BLOCK`` bytes is decoded, and only the fields the stitcher needs are kept.
Never raises: malformed input returns ``None`` (the caller then treats the table as
unknown).
"""
from __future__ import annotations

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC = HeaderTable.STATIC_TABLE            # 61 (name, value) pairs, 1-based in RFC
NSTATIC = len(STATIC)
DEFAULT_TABLE = 4096
MAX_TABLE = 65536          # bytes of dynamic table kept per direction (RFC entry sizes)
MAX_STRING = 16384         # a longer name/value is read, kept only if wanted, cut to this
MAX_FIELDS = 512           # fields per block; a block with more is not trusted
WANTED = frozenset((b":method", b":path", b":status", b"content-type", b"grpc-status",
                    b":authority", b"grpc-message"))
_HUFF_CACHE_MAX = 4096
# Huffman-coded strings seen again and again (the same headers on every connection of a
# client): a bounded memo of a pure function, shared like protocol/http's API cache
_HUFF = {}


class HpackDecoder:
    __slots__ = ("known", "size", "max_size", "size_seen", "complete", "unknown_fields")

    def __init__(self, complete=False):
        self.known = []            # newest first: (name, value, size)
        self.size = 0              # bytes of the known entries
        self.max_size = DEFAULT_TABLE
        self.size_seen = False     # max_size learnt from a size update in this stream
        self.complete = complete   # no entry older than the known ones can exist
        self.unknown_fields = 0    # fields not decodable because of an unknown entry

    def forget(self):
        """Bytes were lost: whatever was added meanwhile shifted every index."""
        self.known = []
        self.size = 0
        self.complete = False

    def _add(self, name, value):
        sz = len(name) + len(value) + 32
        known = self.known
        known.insert(0, (name, value, sz))
        self.size += sz
        limit = min(self.max_size, MAX_TABLE)
        while self.size > limit and known:
            self.size -= known.pop()[2]
        if self.max_size > MAX_TABLE and self.size + sz > MAX_TABLE:
            self.complete = False           # entries we dropped may still be referenced
        if not self.complete and self.size_seen and self.size + 32 > self.max_size:
            # no older (unknown) entry of >= 32 bytes can still fit beside the known ones
            self.complete = True

    def _resize(self, new):
        self.max_size = new
        self.size_seen = True
        if new == 0:
            self.known = []
            self.size = 0
            self.complete = True
            return
        known = self.known
        while self.size > min(new, MAX_TABLE) and known:
            self.size -= known.pop()[2]

    def _string(self, b, pos, end):
        """-> (bytes, new pos) or (None, -1)."""
        if pos >= end:
            return None, -1
        first = b[pos]
        n, pos = _int(b, pos, end, 7)
        if pos < 0 or pos + n > end:
            return None, -1
        raw = b[pos:pos + n]
        pos += n
        if first & 0x80:
            cache = _HUFF
            s = cache.get(raw)
            if s is None:
                try:
                    s = decode_huffman(raw)
                except Exception:
                    return None, -1
                if len(cache) >= _HUFF_CACHE_MAX:
                    cache.clear()
                cache[bytes(raw)] = s
            return s, pos
        return bytes(raw), pos

    def _entry(self, idx):
        """(name, value) of index idx, (None, None) if unknown, or False if invalid."""
        if idx <= 0:
            return False
        if idx <= NSTATIC:
            return STATIC[idx - 1]
        i = idx - NSTATIC - 1
        known = self.known
        if i < len(known):
            e = known[i]
            return e[0], e[1]
        if self.complete:
            return False
        return None, None

    def decode(self, b, pos, end):
        """Decode the block b[pos:end] -> (fields, unknown) or None if malformed.

        ``fields``: {name: value} of the WANTED names that were decoded; ``unknown``: how
        many fields could not be decoded (their name may be any of WANTED)."""
        fields = {}
        unknown = 0
        count = 0
        wanted = WANTED
        while pos < end:
            count += 1
            if count > MAX_FIELDS:
                return None
            c = b[pos]
            if c & 0x80:                      # indexed field
                if c != 0xFF:                 # one-byte index: the common case, inline
                    pos += 1
                    idx = c & 0x7F
                    if 0 < idx <= NSTATIC:
                        e = STATIC[idx - 1]
                        if e[0] in wanted:
                            fields[e[0]] = e[1]
                        continue
                else:
                    idx, pos = _int(b, pos, end, 7)
                    if pos < 0:
                        return None
                e = self._entry(idx)
                if e is False:
                    return None
                if e[0] is None:
                    unknown += 1
                elif e[0] in wanted:
                    fields[e[0]] = e[1]
                continue
            if c & 0xE0 == 0x20:              # dynamic table size update
                new, pos = _int(b, pos, end, 5)
                if pos < 0 or new > 1 << 24:
                    return None
                self._resize(new)
                continue
            if c & 0x40:                      # literal with incremental indexing
                prefix, add = 6, True
            else:                             # without indexing / never indexed
                prefix, add = 4, False
            idx, pos = _int(b, pos, end, prefix)
            if pos < 0:
                return None
            if idx:
                e = self._entry(idx)
                if e is False:
                    return None
                name = e[0]
            else:
                name, pos = self._string(b, pos, end)
                if pos < 0:
                    return None
            value, pos = self._string(b, pos, end)
            if pos < 0:
                return None
            if name is None:
                unknown += 1
                if add:
                    # an entry of unknown name: a placeholder keeps the indices right; its
                    # true size is unknown (32 is its least), which only delays `complete`
                    self.known.insert(0, (None, None, 32))
                    self.size += 32
                continue
            if add:
                self._add(name, value)
            if name in wanted:
                fields[name] = value[:MAX_STRING]
        self.unknown_fields += unknown
        return fields, unknown


def _int(b, pos, end, prefix):
    """HPACK prefix integer at b[pos] -> (value, new pos) or (0, -1)."""
    mask = (1 << prefix) - 1
    v = b[pos] & mask
    pos += 1
    if v < mask:
        return v, pos
    shift = 0
    while pos < end:
        c = b[pos]
        pos += 1
        v += (c & 0x7F) << shift
        if not c & 0x80:
            return v, pos
        shift += 7
        if shift > 28:
            return 0, -1
    return 0, -1
