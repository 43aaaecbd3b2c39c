"""DNS pairing by message id (and question), per connection; for UDP the connection is one
socket and one peer address (``pipeline/conntrack.py``), so the id is paired per 5-tuple.

* A response answers the oldest waiting query with its id and, when the response carries
  a question, the same question; answers may come in any order (glibc sends A and AAAA
  together).
* A query still unanswered when a frame 10 s younger arrives, or beyond MAX_WAITING
  waiting queries, is a record without response (a lost datagram, a retransmission that
  was answered once).
* A response that answers no waiting query is a record with ``req_ts == 0``.
"""
from __future__ import annotations

import struct

from protocol.base import MessageType
from protocol.lenprefix import IdProtocol, answer
from protocol.dns.parse import DnsParser

_HEAD = struct.Struct(">HHHHHH")

MAX_WAITING = 256
TIMEOUT_NS = 10 * 1000 * 1000 * 1000


class DnsProtocol(IdProtocol):
    name = "dns"
    parser_class = DnsParser

    def detect(self, data, msg_type):
        """The kernel's rule (detect_dns_msg) on a DNS/TCP segment's start: the length, one
        question, flags of a query (no answers, rcode 0) or of a response by direction."""
        if len(data) < 19:
            return False
        n, _, f, qd, an, ns = _HEAD.unpack_from(data, 0)
        opcode = (f >> 11) & 0xF
        if n + 2 > len(data) or n < 17 or opcode > 5 or opcode == 3 or f & 0x40 or qd != 1:
            return False
        if msg_type == MessageType.REQUEST:
            return not f & 0x8000 and not an and not ns and not f & 0xF
        return bool(f & 0x8000)

    def stitch(self, reqs, resps, state):
        out = []
        newest = 0
        while resps:
            r = resps.popleft()
            newest = r.ts
            qid, qkey = r.qid, r.qkey
            answer(reqs, r, lambda q: q.qid == qid and (qkey is None or q.qkey is None
                                                         or q.qkey == qkey), out)
        if reqs:
            newest = max(newest, reqs[-1].ts)
            while reqs and (len(reqs) > MAX_WAITING or reqs[0].ts + TIMEOUT_NS < newest):
                out.append(self.unmatched_request(reqs.popleft()))
        return out



PROTOCOL = DnsProtocol()
