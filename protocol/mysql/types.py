"""MySQL / MariaDB frames, per-connection state, and SQL text helpers."""
from __future__ import annotations

import re

from protocol.sqltext import PATH_MAX, sql_path, verb_finder  # noqa: F401
from protocol.base import Fifo

# What a command's response looks like (the response parser walks it accordingly)
R_SIMPLE = 0     # one OK / ERR / EOF packet (PING, INIT_DB, STMT_RESET, ...)
R_ONE = 1        # one packet of any kind (STATISTICS)
R_RESULT = 2     # OK / ERR / LOCAL INFILE / result set(s): QUERY, STMT_EXECUTE, STMT_FETCH
R_PREPARE = 3    # STMT_PREPARE: OK + parameter and column definitions, or ERR
R_FIELDS = 4     # FIELD_LIST: column definitions until EOF, or ERR
R_AUTH = 5       # CHANGE_USER: an authentication exchange ending with OK or ERR

# Capability flags
CLIENT_COMPRESS = 0x00000020
CLIENT_PROTOCOL_41 = 0x00000200
CLIENT_SSL = 0x00000800
CLIENT_DEPRECATE_EOF = 0x01000000
CLIENT_ZSTD_COMPRESSION = 0x04000000
CLIENT_QUERY_ATTRIBUTES = 0x08000000
SERVER_MORE_RESULTS_EXISTS = 0x0008

MAX_STATEMENTS = 4096
MAX_PENDING = 1024


class MyRequest:
    __slots__ = ("ts", "id", "api", "path", "noresp")

    def __init__(self, ts, id_, api, path, noresp=False):
        self.ts = ts
        self.id = id_            # order of the command on the connection
        self.api = api           # SQL verb, or the command name ("PING", "STMT_PREPARE")
        self.path = path         # statement text (cleaned, <= 128 chars) or command [+ arg]
        self.noresp = noresp     # STMT_CLOSE, STMT_SEND_LONG_DATA, QUIT: no response

    def __repr__(self):
        return "MyRequest(%d, %r)" % (self.id, self.path)


class MyResponse:
    __slots__ = ("ts", "id", "status", "err")

    def __init__(self, ts, id_, status, err):
        self.ts = ts
        self.id = id_            # id of the command it answers, None if unknown
        self.status = status     # "OK", or the error code ("1064")
        self.err = err

    def __repr__(self):
        return "MyResponse(%r, %r)" % (self.id, self.status)


class Pending:
    """A command the response parser expects an answer to."""

    __slots__ = ("id", "kind", "info", "seq")

    def __init__(self, id_, kind, info, seq=1):
        self.id = id_
        self.kind = kind
        self.info = info         # STMT_PREPARE: (verb, path) of the statement
        self.seq = seq           # sequence number of the first response packet


class MyState:
    __slots__ = ("pending", "next_id", "stmts", "server_caps", "client_caps", "in_auth",
                 "skip_reason")

    def __init__(self):
        self.pending = Fifo()    # Pending, oldest first (filled by the request parser)
        self.next_id = 1
        self.stmts = {}          # statement id -> (verb, path), from STMT_PREPARE responses
        self.server_caps = None  # from the server greeting, if seen
        self.client_caps = None  # from the handshake response, if seen
        self.in_auth = False     # between the handshake response and the final OK / ERR
        self.skip_reason = None  # TLS / compression / replication: stop parsing


# -- SQL text ----------------------------------------------------------------------------
_RE_LEAD = re.compile(r"(?:\s+|(?:--\s|#)[^\n]*(?:\n|\Z)|/\*(?!!).*?(?:\*/|\Z)|/\*!\d*|\()*",
                      re.S)


sql_verb = verb_finder(_RE_LEAD)

