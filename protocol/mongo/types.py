"""MongoDB frames and per-connection state."""
from __future__ import annotations


class MongoRequest:
    __slots__ = ("ts", "rid", "api", "path", "noreply")

    def __init__(self, ts, rid, api, path, noreply):
        self.ts = ts
        self.rid = rid            # requestID
        self.api = api            # command name ("find", "insert", "hello"), legacy op name
        self.path = path          # "db.collection" where there is one, else the db or ""
        self.noreply = noreply    # moreToCome set, or a legacy write: no reply will come

    def __repr__(self):
        return "MongoRequest(%d %s %s)" % (self.rid, self.api, self.path)


class MongoResponse:
    __slots__ = ("ts", "rid", "resp_to", "status", "err", "more")

    def __init__(self, ts, rid, resp_to, status, err, more):
        self.ts = ts
        self.rid = rid
        self.resp_to = resp_to    # the requestID it answers
        self.status = status      # "ok", the codeName / code of an error, "compressed"
        self.err = err
        self.more = more          # moreToCome: an exhaust stream, more replies follow

    def __repr__(self):
        return "MongoResponse(%d->%d %s)" % (self.rid, self.resp_to, self.status)


class MongoState:
    __slots__ = ("exhaust", "undecoded")

    def __init__(self):
        self.exhaust = {}         # requestID of an exhaust reply -> the request's requestID
        self.undecoded = 0        # compressed messages whose compressor is not available
