"""DNS frames."""
from __future__ import annotations


class DnsRequest:
    __slots__ = ("ts", "qid", "qkey", "api", "path")

    def __init__(self, ts, qid, qkey, api, path):
        self.ts = ts
        self.qid = qid          # message id
        self.qkey = qkey        # (qtype, lower-case qname) of the first question, or None
        self.api = api          # query type: "A", "AAAA", "MX", ... ("QUERY" with no question)
        self.path = path        # query name without the final dot

    def __repr__(self):
        return "DnsRequest(%d %s %s)" % (self.qid, self.api, self.path)


class DnsResponse:
    __slots__ = ("ts", "qid", "qkey", "status", "err")

    def __init__(self, ts, qid, qkey, status, err):
        self.ts = ts
        self.qid = qid
        self.qkey = qkey
        self.status = status    # rcode name: "NOERROR", "NXDOMAIN", "SERVFAIL", ...
        self.err = err

    def __repr__(self):
        return "DnsResponse(%d %s)" % (self.qid, self.status)
