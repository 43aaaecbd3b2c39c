"""PostgreSQL (protocol 3.0) frames, per-connection state, and SQL text helpers."""
from __future__ import annotations

import re

from protocol.sqltext import PATH_MAX, sql_path, verb_finder  # noqa: F401

# Request kinds
QUERY = 0      # 'Q' simple query: one record per statement result (C / I / E) before its Z
EXEC = 1       # 'E' Execute: one record, answered by C / I / s / E
SYNC = 2       # 'S' Sync: answered by Z; no record unless an error came before any Execute
FUNC = 3       # 'F' function call: answered by V or E

# Response kinds
COMPLETE = 0   # 'C' CommandComplete, 'I' EmptyQueryResponse, 's' PortalSuspended, 'V'
ERROR = 1      # 'E' ErrorResponse
READY = 2      # 'Z' ReadyForQuery
CUT = 3        # not a message: the kernel cut the response turn here (Parser.turn_cut); the
               # requests sent before it are answered, unseen

MAX_STATEMENTS = 4096    # prepared statements / portals remembered per connection
MAX_QUERY_STATEMENTS = 8  # statements of one simple-query string named from its text
NAME_KEEP = 64           # characters of a statement / portal name kept as they are


def name_key(name):
    """The key a statement or portal name is remembered by: the name itself when short,
    else a bounded form of it (its head, length and hash), so that a long name costs no
    more memory than a short one."""
    if len(name) <= NAME_KEEP:
        return name
    return "%s\x00%d:%x" % (name[:NAME_KEEP], len(name), hash(name) & 0xFFFFFFFFFFFF)


class PgRequest:
    __slots__ = ("ts", "kind", "api", "path", "stmts", "done")

    def __init__(self, ts, kind, api, path, stmts=None):
        self.ts = ts
        self.kind = kind        # QUERY / EXEC / SYNC / FUNC
        self.api = api          # SQL verb ("SELECT"), None for a Sync with no failed Parse
        self.path = path        # statement text, cleaned, <= 128 characters
        self.stmts = stmts      # QUERY: [(verb, path)] per statement of the query string
        self.done = 0           # QUERY: results paired so far

    def __repr__(self):
        return "PgRequest(%d, %r)" % (self.kind, self.path)


class PgResponse:
    __slots__ = ("ts", "kind", "status", "err")

    def __init__(self, ts, kind, status, err):
        self.ts = ts
        self.kind = kind        # COMPLETE / ERROR / READY
        self.status = status    # CommandComplete tag ("INSERT 0 1"), SQLSTATE, "EMPTY", ...
        self.err = err

    def __repr__(self):
        return "PgResponse(%d, %r)" % (self.kind, self.status)


class PgState:
    __slots__ = ("stmts", "portals", "startup", "answer_pending", "skip_reason")

    def __init__(self):
        self.stmts = {}             # prepared statement name -> (verb, path), from Parse
        self.portals = {}           # portal name -> (verb, path), from Bind
        self.startup = False        # StartupMessage seen, ReadyForQuery not yet
        self.answer_pending = b""   # SSLRequest / GSSENCRequest sent: the 1-byte answers
        self.skip_reason = None     # set when the rest of the connection cannot be parsed


# -- SQL text ----------------------------------------------------------------------------
_RE_LEAD = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?(?:\*/|\Z)|\()*", re.S)
_RE_SPLIT = re.compile(r"'(?:[^']|'')*(?:'|\Z)|\"[^\"]*(?:\"|\Z)|--[^\n]*|/\*.*?(?:\*/|\Z)"
                       r"|\$([A-Za-z_]*)\$.*?(?:\$\1\$|\Z)|;", re.S)


sql_verb = verb_finder(_RE_LEAD)



def split_statements(text, limit=MAX_QUERY_STATEMENTS):
    """Statements of a query string, split at ';' outside quotes and comments: at most
    ``limit`` (verb, path) pairs; the results of the statements after those are named by
    their CommandComplete tag (see stitch)."""
    out = []
    begin = 0
    for m in _RE_SPLIT.finditer(text):
        if m.group(0) == ";":
            st = text[begin:m.start()]
            begin = m.end()
            if st.strip() and _RE_LEAD.match(st).end() < len(st):
                out.append((sql_verb(st), sql_path(st)))
                if len(out) >= limit:
                    return out
    st = text[begin:]
    if st.strip() and st.strip() != ";" and _RE_LEAD.match(st).end() < len(st):
        out.append((sql_verb(st), sql_path(st)))
    return out
