"""HTTP/2 events (what the parsers hand to the stitcher) and the per-connection state."""
from protocol.http2.hpackdec import HpackDecoder

MAX_STREAMS = 4096      # open streams kept per connection; the oldest are given up first

EV_HEADERS = 1          # a complete header block (HEADERS [+ CONTINUATION]), decoded
EV_END = 2              # END_STREAM on a DATA frame
EV_RST = 3              # RST_STREAM
EV_GOAWAY = 4           # GOAWAY (sid = last stream id)
EV_PUSH = 5             # PUSH_PROMISE (sid = promised stream, fields its request)


class H2Event:
    __slots__ = ("ts", "kind", "sid", "fields", "unknown", "end", "code")

    def __init__(self, ts, kind, sid, fields=None, unknown=0, end=False, code=0):
        self.ts = ts
        self.kind = kind
        self.sid = sid
        self.fields = fields        # {name: value} of the wanted names (bytes)
        self.unknown = unknown      # fields not decodable (HPACK state unknown)
        self.end = end              # END_STREAM
        self.code = code            # RST_STREAM / GOAWAY error code

    def __repr__(self):
        return "H2Event(%d, sid=%d, %r, end=%r, code=%r)" % (self.kind, self.sid, self.fields,
                                                              self.end, self.code)


class H2Stream:
    __slots__ = ("req_ts", "method", "path", "grpc", "status", "grpc_status", "resp_ts",
                 "resp_seen")

    def __init__(self, req_ts, method, path, grpc):
        self.req_ts = req_ts
        self.method = method
        self.path = path
        self.grpc = grpc
        self.status = None          # :status text
        self.grpc_status = None     # grpc-status text
        self.resp_ts = 0            # last response frame seen
        self.resp_seen = False


class H2State:
    """Per connection: one HPACK decoder per direction, the open streams."""

    __slots__ = ("dec", "streams", "preface", "skip_reason", "note", "note_said",
                 "upgrade_req", "max_sid")

    def __init__(self, fresh=False):
        # dec[0]: client -> server header blocks; dec[1]: server -> client
        self.dec = (HpackDecoder(fresh), HpackDecoder(fresh))
        self.streams = {}           # sid -> H2Stream, insertion order = age
        self.preface = fresh        # the connection start was seen
        self.skip_reason = None
        self.note = None            # one log line for the connection (pipeline/conntrack)
        self.note_said = False
        self.max_sid = 0            # highest stream id opened by a request seen
        self.upgrade_req = None     # (ts, method, target) of an HTTP/1.1 Upgrade: h2c request
