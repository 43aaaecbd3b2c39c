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

MAX_STATEMENTS = 4096    # prepared statements / portals remembered per connection


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



def split_statements(text):
    """Statements of a query string, split at ';' outside quotes and comments."""
    out = []
    begin = 0
    for m in _RE_SPLIT.finditer(text):
        if m.group(0) == ";":
            out.append(text[begin:m.start()])
            begin = m.end()
    out.append(text[begin:])
    return [(sql_verb(s), sql_path(s)) for s in out if s.strip() and s.strip() != ";"
            and _RE_LEAD.match(s).end() < len(s)]
