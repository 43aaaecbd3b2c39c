"""Python views of the structs in include/l7_events.h, derived from the header itself.

The header is the single definition of the records shared by the BPF programs and user
space; this module reads it and builds ``struct.Struct`` objects and ``#define`` values, so
the two sides cannot drift apart.
"""
from __future__ import annotations

import os
import re
import struct
from typing import NamedTuple

HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "include", "l7_events.h")

_TYPES = {"u8": ("B", 1), "u16": ("H", 2), "u32": ("I", 4), "s32": ("i", 4),
          "u64": ("Q", 8), "s64": ("q", 8)}
_STRUCT_RE = re.compile(r"struct\s+(\w+)\s*\{(.*?)\};", re.S)
_FIELD_RE = re.compile(r"^\s*(u8|u16|u32|s32|u64|s64)\s+(\w+)(?:\[(\d+)\])?\s*;")
_DEFINE_RE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(\d+)\b", re.M)


class Layout(NamedTuple):
    name: str
    fields: tuple          # field names; arrays of u8 are one `bytes` field
    struct: struct.Struct  # little-endian, no implicit padding ("<")

    @property
    def size(self):
        return self.struct.size

    def unpack(self, data, offset=0):
        return dict(zip(self.fields, self.struct.unpack_from(data, offset)))

    def pack(self, **values):
        return self.struct.pack(*(values.get(f, 0 if not self._is_bytes(f) else b"")
                                  for f in self.fields))

    def _is_bytes(self, field):
        return field in _BYTES_FIELDS.get(self.name, ())

    def codes(self):
        """{field: its struct code ("I", "16s", ...)}, from the struct's format."""
        return dict(zip(self.fields, ("".join(c) for c in
                                      re.findall(r"(\d*)([BHIiQqs])", self.struct.format))))

    def offsets(self):
        """{field: (offset, size)}, from the struct's format."""
        out = {}
        offset = 0
        for name, code in self.codes().items():
            size = struct.calcsize("<" + code)
            out[name] = (offset, size)
            offset += size
        return out

    def view(self, *items):
        """A narrower decoder of this struct for a hot path: a ``struct.Struct`` whose values
        are ``items`` in order, the fields left out skipped.  An item is a field name, or a
        tuple of adjacent integer fields read as one little-endian unsigned integer (the
        first field in its lowest bytes; 2, 4 or 8 bytes in all): fewer values to make and
        test where the fields are zero in the common case.  The shift of each field of a
        tuple within its integer is ``8 * (offset - first offset)`` (see ``offsets``)."""
        offs = self.offsets()
        codes = self.codes()
        fmt, pos = "<", 0
        for item in items:
            group = (item,) if isinstance(item, str) else tuple(item)
            start = offs[group[0]][0]
            end = start
            for f in group:
                off, size = offs[f]
                if off != end:
                    raise ValueError("%s: %s are not adjacent" % (self.name, group))
                end = off + size
            if start < pos:
                raise ValueError("%s: %s out of order" % (self.name, group))
            if len(group) == 1:
                code = codes[group[0]]           # the field's own (signed or bytes)
            else:
                code = {2: "H", 4: "I", 8: "Q"}.get(end - start)
                if code is None or any(self._is_bytes(f) for f in group):
                    raise ValueError("%s: %s: not 2, 4 or 8 bytes of integers"
                                     % (self.name, group))
            if start > pos:
                fmt += "%dx" % (start - pos)
            fmt += code
            pos = end
        return struct.Struct(fmt)


_BYTES_FIELDS = {}


def _strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_header(path=HEADER):
    with open(path) as f:
        text = _strip_comments(f.read())
    defines = {m.group(1): int(m.group(2)) for m in _DEFINE_RE.finditer(text)}
    layouts = {}
    for m in _STRUCT_RE.finditer(text):
        name, body = m.group(1), m.group(2)
        fmt, names, offset = "<", [], 0
        for line in body.splitlines():
            if not line.strip():
                continue
            fm = _FIELD_RE.match(line)
            if not fm:
                raise ValueError("%s: struct %s: unsupported line %r" % (path, name, line))
            ctype, fname, count = fm.group(1), fm.group(2), fm.group(3)
            code, size = _TYPES[ctype]
            if offset % size:
                raise ValueError("%s: struct %s: field %s is not naturally aligned"
                                 % (path, name, fname))
            if count:
                n = int(count)
                if ctype == "u8":
                    fmt += "%ds" % n
                    _BYTES_FIELDS.setdefault(name, set()).add(fname)
                    names.append(fname)
                else:
                    fmt += code * n
                    names.extend("%s_%d" % (fname, i) for i in range(n))
                offset += size * n
            else:
                fmt += code
                names.append(fname)
                offset += size
        if offset % 8:
            raise ValueError("%s: struct %s: size %d is not a multiple of 8"
                             % (path, name, offset))
        layouts[name] = Layout(name, tuple(names), struct.Struct(fmt))
    return layouts, defines


LAYOUTS, DEFINES = parse_header()
