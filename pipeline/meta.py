"""The output schema, read from l7probe.meta: the one place the tables and their column
order are defined (gala-gopher reads the same file).

A small reader for the libconfig subset meta files use (settings, groups, lists, strings,
numbers, comments); the tests check the file with the real libconfig library.
"""
from __future__ import annotations

import os
import re

META_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "l7probe.meta")

_TOKEN = re.compile(r'''\s*(?:
    (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/) |
    (?P<string>"(?:[^"\\]|\\.)*") |
    (?P<number>[-+]?[0-9][0-9a-fA-FxX.]*L?) |
    (?P<name>[A-Za-z*][-A-Za-z0-9_*]*) |
    (?P<punct>[=:;,{}()\[\]])
)''', re.S | re.X)


def _tokens(text):
    pos, n = 0, len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if not m:
            if text[pos:].strip() == "":
                return
            raise ValueError("meta: unexpected text at offset %d: %r" % (pos, text[pos:pos + 20]))
        pos = m.end()
        kind = m.lastgroup
        if kind == "comment":
            continue
        val = m.group(kind)
        if kind == "string":
            val = bytes(val[1:-1], "utf-8").decode("unicode_escape")
        yield kind, val


class _Reader:
    def __init__(self, text):
        self.toks = list(_tokens(text))
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if tok[0] is None or (value is not None and tok[1] != value):
            raise ValueError("meta: expected %r, got %r" % (value, tok[1]))
        self.i += 1
        return tok

    def settings(self, closer):
        out = {}
        while self.peek()[1] != closer:
            kind, name = self.take()
            if kind != "name":
                raise ValueError("meta: expected a setting name, got %r" % name)
            if self.peek()[1] in ("=", ":"):
                self.take()
            out[name] = self.value()
            if self.peek()[1] in (";", ","):
                self.take()
        return out

    def value(self):
        kind, val = self.take()
        if kind == "string":
            while self.peek()[0] == "string":       # adjacent strings concatenate
                val += self.take()[1]
            return val
        if kind == "number":
            return float(val) if "." in val else int(val.rstrip("L"), 0)
        if val == "{":
            g = self.settings("}")
            self.take("}")
            return g
        if val in ("(", "["):
            closer = ")" if val == "(" else "]"
            items = []
            while self.peek()[1] != closer:
                items.append(self.value())
                if self.peek()[1] == ",":
                    self.take()
            self.take(closer)
            return items
        if kind == "name" and val.lower() in ("true", "false"):
            return val.lower() == "true"
        raise ValueError("meta: unexpected %r" % val)


def load(path=META_PATH):
    """{table_name: [(field_name, type), ...]} in file order."""
    with open(path) as f:
        cfg = _Reader(f.read()).settings(None)
    tables = {}
    for m in cfg["measurements"]:
        tables[m["table_name"]] = [(fl["name"], fl["type"]) for fl in m["fields"]]
    return tables


TABLES = load()
FIELDS = {t: tuple(name for name, _ in fields) for t, fields in TABLES.items()}
