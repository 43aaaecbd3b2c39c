"""Redis frames and per-connection state."""
from __future__ import annotations

# Response kinds
REPLY = 0      # an answer to the oldest unanswered command
PUSH = 1       # out-of-band data: pub/sub message, RESP3 push (invalidate, ...), no request
SUBCONF = 2    # (p|s)(un)subscribe confirmation: one per channel of the command

# Reply modes set by CLIENT REPLY
REPLY_ON, REPLY_OFF, REPLY_SKIP = 0, 1, 2


class RedisRequest:
    __slots__ = ("ts", "api", "path", "nargs", "sub", "noreply")

    def __init__(self, ts, api, path, nargs, sub=False, noreply=False):
        self.ts = ts
        self.api = api          # "GET", "CLIENT SETNAME", "UNKNOWN" for a non-command name
        self.path = path        # api + first key, at most 64 characters
        self.nargs = nargs      # number of arguments after the command name
        self.sub = sub          # a (P|S)(UN)SUBSCRIBE command (answered per channel)
        self.noreply = noreply  # the server sends no reply (CLIENT REPLY OFF/SKIP, REPLCONF ACK)

    def __repr__(self):
        return "RedisRequest(%r)" % (self.path,)


class RedisResponse:
    __slots__ = ("ts", "kind", "status", "err", "name")

    def __init__(self, ts, kind, status, err, name=""):
        self.ts = ts
        self.kind = kind        # REPLY / PUSH / SUBCONF
        self.status = status    # "OK", the simple-string text ("PONG", "QUEUED"), the error code
        self.err = err          # ERR_NONE / ERR_CLIENT / ERR_SERVER
        self.name = name        # PUSH / SUBCONF: "message", "pmessage", "subscribe", ...

    def __repr__(self):
        return "RedisResponse(%d, %r, %r)" % (self.kind, self.status, self.name)


class RedisState:
    """Shared by both parsers and the stitcher of one connection."""

    __slots__ = ("subscribed", "resp3", "reply_mode", "requests", "replies",
                 "sub_name", "sub_more")

    def __init__(self):
        self.subscribed = False   # RESP2 subscribed mode: "message" arrays are pushes
        self.resp3 = False        # HELLO 3 seen: pushes are always '>'
        self.reply_mode = REPLY_ON
        self.requests = 0         # request frames parsed expecting a reply
        self.replies = 0          # REPLY/SUBCONF frames parsed
        self.sub_name = ""        # stitcher: the last (un)subscribe paired ...
        self.sub_more = 0         # ... and how many more confirmations belong to it (-1: any)
