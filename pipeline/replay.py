"""Replay a capture (pcap / pcapng) through the probe's own pipeline, without BPF.

``l7probe.py --replay FILE`` reads the capture's TCP conversations
(``pipeline/pcapfile.py``: both directions, in sequence order, with the capture's
timestamps), turns each into the records the kernel side would send (open, data per TCP
segment, close, packed in ``include/l7_events.h``'s layouts), and feeds them to the same
``pipeline.conntrack.Tracker.feed`` hot path, parsers,
stitchers, ``pipeline.aggregate.Links`` and ``pipeline.report`` as a live run, so it prints
the same tables.  Differences from a live run, by design:

* one report at the end of the capture; its period (for throughputs) is the capture's
  duration from first to last segment, at least 1 s;
* ``tgid`` is 0, ``ssl`` is ``no_ssl`` (a capture holds no plaintext of TLS);
* the side: by default the server's view (``l7_role`` server, ``l4_role`` tcp_server); with
  ``side="client"`` the client's, with ``side="both"`` both (as if both ends were traced on
  one host).  The client is the end that sent the SYN, else the higher port
  (``pcapfile.read_tcp_connections``);
* the protocol of a connection: the one named if ``protos`` holds one name, else the first
  protocol (registry order, within ``protos``) whose parser takes one of the connection's
  first segments as a frame (:func:`guess_protocol`).  This replaces the kernel's detection
  rules, so a protocol needs nothing more than its parser to be replayable.
* l7_link counts every payload byte and TCP segment with data.

Another protocol uses it as is: once its parser is registered (``protocol/registry.py``),
``replay_file("x.pcap", out, protos=["kafka"])`` (or ``--replay x.pcap --proto kafka``)
prints its records; :func:`replay_records` returns ``(link, Record)`` pairs for tests.
"""
from __future__ import annotations

import logging
import socket
import sys

from bpf.layout import DEFINES, LAYOUTS
from pipeline.aggregate import Links
from pipeline.conntrack import AF_INET, AF_INET6, Tracker
from pipeline.pcapfile import C2S, read_tcp_connections
from pipeline.report import TraceWriter, Writer, report_links
from protocol import registry
from protocol.base import MessageType, ParseState

log = logging.getLogger("l7probe")

DIR_EGRESS, DIR_INGRESS = 0, 1
L4_CLIENT, L4_SERVER = 1, 2
L7_CLIENT, L7_SERVER = 1, 2
GUESS_SEGMENTS = 4          # segments per direction tried by guess_protocol
_OPEN, _DATA, _CLOSE = LAYOUTS["evt_open"], LAYOUTS["evt_data"], LAYOUTS["evt_close"]


def _ip(addr):
    if addr is None:
        return AF_INET, b"\0" * 16
    ip = addr[0]
    if ":" in ip:
        return AF_INET6, socket.inet_pton(socket.AF_INET6, ip)
    return AF_INET, socket.inet_pton(socket.AF_INET, ip) + b"\0" * 12


def guess_protocol(chunks, protos):
    """The first ``ProtoInfo`` of ``protos`` whose parser parses a frame (SUCCESS) at the
    start of one of the first GUESS_SEGMENTS segments of either direction, or None."""
    firsts = {C2S: [], "s2c": []}
    for d, _, data in chunks:
        lst = firsts[d]
        if len(lst) < GUESS_SEGMENTS:
            lst.append(data)
        if len(firsts[C2S]) >= GUESS_SEGMENTS and len(firsts["s2c"]) >= GUESS_SEGMENTS:
            break
    for info in protos:
        proto = registry.protocol_for_id(info.proto_id)
        if proto is None:
            continue
        for d, datas in firsts.items():
            mt = MessageType.REQUEST if d == C2S else MessageType.RESPONSE
            for data in datas:
                if _takes(proto, mt, data):
                    return info
    return None


def _takes(proto, mt, data):
    """The protocol's ``detect(data, msg_type)`` if it has one, else: its parser reads a
    frame from data's start (after at most 8 frames it ignores)."""
    detect = getattr(proto, "detect", None)
    if detect is not None:          # the protocol's own test, stricter than its parser
        try:
            return bool(detect(data, mt))
        except Exception:
            return False
    try:
        parser = proto.new_parser(mt, proto.new_state())
        pos = 0
        for _ in range(8):
            st, frame, end = parser.parse(data, pos, 0)
            if st is ParseState.SUCCESS and frame is not None:
                return True
            if st is not ParseState.IGNORE or end <= pos or end >= len(data):
                return False
            pos = end
    except Exception:       # a parser bug is not a match
        return False
    return False


class _Replay:
    def __init__(self, protos, side, sink):
        self.links = Links()
        self.tracker = Tracker(self.links, sink)
        self.protos = protos
        self.sides = ("server", "client") if side == "both" else (side,)
        self.next_id = 1
        self.first_ts = self.last_ts = None

    def run(self, path):
        conns = read_tcp_connections(path)
        events = []          # (ts, order, kind, payload)
        order = 0
        for c in conns:
            if len(self.protos) == 1:
                info = self.protos[0]
            else:
                info = guess_protocol(c.chunks, self.protos)
            if info is None:
                log.info("replay: %s -> %s: no protocol of %s recognised, skipped",
                         c.client, c.server, ",".join(p.name for p in self.protos))
                continue
            for side in self.sides:
                cid = self.next_id
                self.next_id += 1
                t0 = c.chunks[0][1]
                events.append((t0, order, "open", (cid, c, info, side)))
                order += 1
                for d, ts, data in c.chunks:
                    events.append((ts, order, "data", (cid, c, side, d, data)))
                    order += 1
                events.append((c.chunks[-1][1], order, "close", (cid, c, side)))
                order += 1
        events.sort(key=lambda e: (e[0], e[1]))
        # the records the kernel side would send, in its layouts, into the live hot path
        tr = self.tracker
        for ts, _, kind, p in events:
            if self.first_ts is None:
                self.first_ts = ts
            self.last_ts = ts
            tr.now = ts / 1e9
            if kind == "open":
                raw = self._open(ts, *p)
            elif kind == "data":
                cid, c, side, d, data = p
                egress = (d == C2S) == (side == "client")
                raw = _DATA.pack(type=DEFINES["EVT_DATA"], conn_id=cid, ts=ts,
                                 true_len=len(data), cap_len=len(data),
                                 direction=DIR_EGRESS if egress else DIR_INGRESS) + data
            else:
                cid, c, side = p
                sent = recv = ssent = srecv = 0
                for d, _, data in c.chunks:
                    if (d == C2S) == (side == "client"):
                        sent += len(data)
                        ssent += 1
                    else:
                        recv += len(data)
                        srecv += 1
                raw = _CLOSE.pack(type=DEFINES["EVT_CLOSE"], conn_id=cid, ts=ts,
                                  bytes_sent=sent, bytes_recv=recv, segs_sent=ssent,
                                  segs_recv=srecv)
            tr.feed((raw,))
            tr.stitch_dirty()

    def _open(self, ts, cid, c, info, side):
        fam, cip = _ip(c.client)
        _, sip = _ip(c.server)
        client = side == "client"
        return _OPEN.pack(
            type=DEFINES["EVT_OPEN"], conn_id=cid, ts=ts, tgid=0, fd=cid, proto=info.proto_id,
            family=fam, client_ip=cip, server_ip=sip,
            server_port=c.server[1] if c.server else 0,
            client_port=c.client[1] if c.client else 0,
            l4_role=L4_CLIENT if client else L4_SERVER,
            l7_role=L7_CLIENT if client else L7_SERVER, ssl=0)

    @property
    def period(self):
        if self.first_ts is None:
            return 1.0
        return max(1.0, (self.last_ts - self.first_ts) / 1e9)


def _protos(names):
    if not names:
        return [p for p in registry.PROTOCOLS if p.module]
    return [registry.BY_NAME[n] for n in names]


def replay_records(path, protos=None, side="server"):
    """``[(link, Record), ...]`` of a capture, in the order they were made (for tests)."""
    out = []
    r = _Replay(_protos(protos), side, lambda link, rec: out.append((link, rec)))
    r.run(path)
    return out


def replay_file(path, out=None, protos=None, side="server", tables=None, fmt="gopher",
                trace_limit=1000000):
    """Replay ``path`` and print its tables to ``out`` (stdout) in one report."""
    from ipc.config import ALL_TABLES
    tables = ALL_TABLES if tables is None else tables
    writer = Writer(out or sys.stdout, fmt)
    traces = TraceWriter(writer, trace_limit, lambda ts: ts)
    r = _Replay(_protos(protos), side, traces.add if "l7_trace" in tables else None)
    r.run(path)
    traces.flush()
    report_links(writer, r.links, tables, r.period)
    dropped = traces.new_period()
    if dropped:
        log.warning("l7_trace: %d row(s) over the limit of %d not printed", dropped,
                    trace_limit)
    for name, st in sorted(r.tracker.stream_stats.items()):
        st.report(name)
    return writer.lines
