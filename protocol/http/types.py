"""HTTP/1.x frames."""
from protocol.base import Fifo

MAX_PENDING = 4096      # requests awaiting their response per connection; the oldest go first


class HttpRequest:
    __slots__ = ("ts", "method", "target", "version")

    def __init__(self, ts, method, target, version):
        self.ts = ts
        self.method = method      # str, e.g. "GET"
        self.target = target      # str, the request target as sent
        self.version = version    # 0 or 1 (HTTP/1.x minor)

    def __repr__(self):
        return "HttpRequest(%r %r)" % (self.method, self.target)


class HttpResponse:
    __slots__ = ("ts", "status", "version")

    def __init__(self, ts, status, version):
        self.ts = ts
        self.status = status      # int
        self.version = version

    def __repr__(self):
        return "HttpResponse(%r)" % (self.status,)


class HttpState:
    """Per connection: what the response parser must know about the requests."""

    __slots__ = ("methods", "upgraded", "switch_to", "upgrade_req")

    def __init__(self):
        self.methods = Fifo()   # methods of parsed requests, not yet answered (<= MAX_PENDING)
        self.upgraded = False               # 101 Switching Protocols seen: stop parsing
        self.switch_to = None    # "http2" after a 101 to Upgrade: h2c (pipeline/conntrack)
        self.upgrade_req = None  # (ts, method, target) of the upgraded request
