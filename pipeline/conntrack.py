"""Connections: open / data / close records in, protocol records into link statistics out.

Each connection (one ``conn_id`` from the kernel) owns two DataStreams, requests and
responses, whose parsers share one protocol state, and the stitcher that pairs them.
"""
from __future__ import annotations

import logging
import socket
import struct

from bpf.layout import DEFINES, LAYOUTS
from pipeline.aggregate import Links, RpcStats, add_kernel_acct as _add_acct
from pipeline.stream import MAX_FRAMES, DataStream, StreamStats
from protocol import registry
from protocol.base import MessageType, ParseState

log = logging.getLogger("l7probe")

DIR_EGRESS = 0
L4_UDP = 0
L7_CLIENT = 1
AF_INET = 2
AF_INET6 = 10
STITCH_BACKLOG = 1024     # frames queued on one stream that trigger pairing at once
# reads of map kacct (one per period) that keep the counts of a connection not announced
ACCT_UNKNOWN_READS = 3
MAX_KNOWN_APIS = 65536    # the kernel's apis_known holds as many
# HTTP/1.x: clean request records (one whole request, parsed in sync) a connection shows
# before the kernel may shed its transactions (map shed_ok, bpf/probe.c http_bytes)
SHED_OK_AFTER = 4
MAX_SHED_OK_QUEUE = 16384  # conn_ids waiting for map shed_ok (the map holds as many)
EVT_OPEN = DEFINES["EVT_OPEN"]
EVT_DATA = DEFINES["EVT_DATA"]
EVT_CLOSE = DEFINES["EVT_CLOSE"]
EVF_CLEAN_GAP = DEFINES["EVF_CLEAN_GAP"]
SUCCESS = ParseState.SUCCESS
IGNORE = ParseState.IGNORE
EVF_TURN_CUT = DEFINES["EVF_TURN_CUT"]
_DATA = LAYOUTS["evt_data"]
_DATA_SIZE = _DATA.size
# Tracker.feed's decoder of evt_data: the fields it reads, the four u8 after ``lost`` as one
# u32 (direction in its low byte) and lost_msgs with flags as one u64 (flags high)
_DATA_VIEW = _DATA.view("conn_id", "ts", "true_len", "cap_len", "lost",
                        ("direction", "source", "proto", "l7_role"), ("lost_msgs", "flags"))
_OFF = _DATA.offsets()
_SOURCE = 0xFF << 8 * (_OFF["source"][0] - _OFF["direction"][0])
_LOST_MSGS = (1 << 8 * _OFF["lost_msgs"][1]) - 1
_FLAGS_SHIFT = 8 * (_OFF["flags"][0] - _OFF["lost_msgs"][0])
_CLEAN_GAP = EVF_CLEAN_GAP << _FLAGS_SHIFT
_TURN_CUT = EVF_TURN_CUT << _FLAGS_SHIFT
# feed tells records apart by their type's first byte
assert all(v < 256 for k, v in DEFINES.items() if k.startswith("EVT_"))
_OPEN = LAYOUTS["evt_open"]
_CLOSE = LAYOUTS["evt_close"]
_TYPE = struct.Struct("<I")
_ACCT_FIELDS = LAYOUTS["conn_acct"].fields
# the last counts read of each connection (and API) are kept packed as the kernel's struct:
# 113 bytes instead of ~240 for a tuple of 18 ints (two entries per HTTP connection)
_ACCT_PACK = LAYOUTS["conn_acct"].struct.pack
_ACCT_UNPACK = LAYOUTS["conn_acct"].struct.unpack
REFUSED = _ACCT_FIELDS.index("refused")    # conn_acct's count of refused records


def ip_text(family, raw):
    """Upstream's rendering: dotted IPv4 (also for v4-mapped IPv6), inet_ntop, or no_ip."""
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == AF_INET6:
        if raw[:12] == b"\0" * 10 + b"\xff\xff":
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return "no_ip"


class Conn:
    __slots__ = ("conn_id", "tgid", "fd", "link", "proto", "state", "req_stream",
                 "resp_stream", "req_dir", "sent_base", "recv_base", "ssent_base",
                 "srecv_base", "warned", "skip_said", "ssl", "retire", "peers", "shed_wait")

    def __init__(self, conn_id, tgid, fd, link, proto, l7_role):
        self.conn_id = conn_id
        self.tgid = tgid
        self.fd = fd
        self.link = link
        self.proto = proto                 # a protocol.base.Protocol, or None
        self.state = None
        self.req_stream = self.resp_stream = None
        # requests travel egress from a client, ingress to a server
        self.req_dir = DIR_EGRESS if l7_role == L7_CLIENT else 1 - DIR_EGRESS
        self.sent_base = self.recv_base = self.ssent_base = self.srecv_base = 0
        self.warned = False
        self.skip_said = False             # the reason its parsing stopped was logged
        # its bytes come from the TLS uprobes; kept apart from link.ssl, which stays 0 when
        # the switch finds the link table full (see switch_to_tls)
        self.ssl = link.ssl
        self.retire = 0                    # requests answered by responses the kernel counted
        self.peers = None                  # UDP socket: peer -> Conn (pipeline/udp.py)
        # HTTP/1.x: clean request records still to see before the kernel may shed this
        # connection's transactions (see Tracker.feed); 0: cleared (or not HTTP/1.x),
        # -1: never (a record held two requests)
        self.shed_wait = SHED_OK_AFTER if proto is not None and proto.kernel_sampled else 0


class Tracker:
    def __init__(self, links: Links, record_sink=None, control_sink=None):
        self.links = links
        self.control_sink = control_sink   # callable(type, raw) for exec / signal records
        self.conns = {}
        self.dirty = set()
        self.record_sink = record_sink     # callable(link, record) for l7_trace
        self.unknown_data = 0
        self.now = 0.0                     # wall seconds, set by the main loop
        self.acct_base = {}                # conn_id -> the kernel's counts last read (kacct),
                                           # packed (_ACCT_PACK)
        self.acct_closed = {}              # conn_id -> link, closed with kernel counts
        self.acct_unknown = {}             # conn_id -> reads of kacct that did not know it
        self.unplaced = 0                  # requests of connections never announced (period)
        self.udp_unplaced_dropped = 0      # datagrams whose peer never showed (pipeline/udp.py)
        self.api_hashes = {}               # HTTP API name -> the kernel's hash of it
        self.api_names = {}                # the reverse
        self.new_apis = []                 # hashes to write into the kernel's apis_known
        self.new_shed_ok = []              # conn_ids to write into the kernel's shed_ok
        self.api_unnamed = 0               # kernel-counted requests of APIs never seen (period)
        self.kernel_only = 0               # requests counted by the kernel alone (period)
        self.sampled_out = 0               # of them, by the sampler's choice

    # -- records from the kernel --------------------------------------------------------
    def on_open(self, ev):
        """ev: dict from layout evt_open."""
        proto_id = ev["proto"]
        name = registry.NAME_OF_ID.get(proto_id, "unknown")
        if ev["l4_role"] == L4_UDP:
            return udp.on_open(self, ev, name)
        family = ev["family"]
        key = (ev["tgid"], ip_text(family, ev["client_ip"]), ip_text(family, ev["server_ip"]),
               ev["server_port"], ev["l4_role"], ev["l7_role"], name, ev["ssl"])
        link = self.links.get(key, self.now)
        if link is None:
            return None
        old = self.conns.get(ev["conn_id"])
        if old is not None:
            self._finish(old)
        link.conns += 1
        link.last_active = self.now
        conn = Conn(ev["conn_id"], ev["tgid"], ev["fd"], link,
                    registry.protocol_for_id(proto_id), ev["l7_role"])
        self.conns[conn.conn_id] = conn
        return conn

    def feed(self, batch):
        """The hot path: a batch of raw ring-buffer records, in order.  Data records go to
        their connection's streams; open and close records are handled here; any other
        record goes to ``control_sink(type, raw)``."""
        unpack = _DATA_VIEW.unpack_from
        get_conn = self.conns.get
        mark_dirty = self.dirty.add
        h = _DATA_SIZE
        for raw in batch:
            # the type is a little-endian u32 and every EVT_* is below 256 (checked at
            # import): its first byte tells the records apart
            if raw[0] != EVT_DATA:
                self._control(raw)
                continue
            # ``roles``: direction, source, proto, l7_role in one u32; ``more``: lost_msgs
            # and flags in one u64 (_DATA_VIEW), zero in the common case
            conn_id, ts, true_len, cap_len, lost, roles, more = unpack(raw)
            conn = get_conn(conn_id)
            if conn is None:
                self.unknown_data += 1
                continue
            is_req = roles & 255 == conn.req_dir
            stream = conn.req_stream if is_req else conn.resp_stream
            if lost or more or stream is None or (roles & _SOURCE and not conn.ssl):
                # the rarer records: bytes lost before them, messages lost, flags, the
                # first plaintext of TLS negotiated inside the protocol, a connection
                # without a parser or without streams yet
                if roles & _SOURCE and not conn.ssl:
                    self.switch_to_tls(conn)     # TLS negotiated inside the protocol
                if conn.proto is None:
                    continue                     # byte-counted only (no parser yet)
                if conn.peers is not None:       # a UDP socket: per peer (pipeline/udp.py)
                    udp.on_data(self, conn, roles & 255, ts, raw[h:h + cap_len], true_len)
                    continue
                if more & _LOST_MSGS:
                    self._retire(conn, more & _LOST_MSGS)
                if conn.req_stream is None:
                    self._make_streams(conn)
                stream = conn.req_stream if is_req else conn.resp_stream
                # sampled-out messages before this record (the common case under load):
                # skipped first, so that a stream in sync again takes the in-place parse
                if more & _CLEAN_GAP:
                    stream.clean_gap(lost)
                    lost = 0
            frames = stream.frames
            if (lost or more & _TURN_CUT or not cap_len or stream.cut or stream.buf
                    or stream.skip or stream.resync):
                n = len(frames)
                if stream.cut and not more & _CLEAN_GAP:
                    lost = stream.turn_start(more >> _FLAGS_SHIFT, lost)
                if more & _TURN_CUT:            # the rest of this response turn is skipped
                    stream.append(raw[h:h + cap_len], cap_len, ts, lost)
                    stream.cut_turn(ts)
                elif not cap_len:
                    stream.gap(lost + true_len)
                else:
                    stream.append(raw[h:h + cap_len], true_len, ts, lost)
                m = len(frames)
                if m == n:
                    continue
                new, clean = m - n, False
            else:
                # In sync (nothing buffered, nothing to skip): parse the new bytes in place,
                # DataStream.append's outcome without its buffering (the common case; tests/
                # test_http_parser.py test_feed_fast_path_equals_stream_append).
                data = raw[h:h + cap_len]
                try:
                    state, frame, end = stream.parser.parse(data, 0, ts)
                except Exception as exc:  # a parser bug must not take the probe down
                    stream.parse_failed(exc)
                    if true_len > cap_len:
                        stream._gap(true_len - cap_len)
                    continue
                if (state is SUCCESS or state is IGNORE) and end >= cap_len:
                    if end != cap_len:
                        stream.skip = end - cap_len
                    if true_len > cap_len:
                        stream._gap(true_len - cap_len)
                    if frame is None:
                        continue
                    m = len(frames)
                    if m >= MAX_FRAMES:         # full: the oldest goes (length unchanged)
                        frames.popleft()
                        stream.stats.dropped_frames += 1
                        frames.append(frame)
                        continue
                    frames.append(frame)
                    m += 1
                    new, clean = 1, True   # one whole message began and ended here
                else:
                    n = len(frames)
                    stream.buf = data
                    stream.base_ts = ts
                    stream._parse(ts, (state, frame, end))
                    if true_len > cap_len:
                        stream._gap(true_len - cap_len)
                    m = len(frames)
                    if m == n:
                        continue
                    new, clean = m - n, False
            mark_dirty(conn)
            if conn.shed_wait > 0:      # HTTP/1.x, not cleared for the sampler yet
                self._shed_check(conn, is_req, clean, new, stream)
            if m >= STITCH_BACKLOG:
                # A busy pipelined connection can queue thousands of frames within one
                # ring-buffer batch; pair them now rather than let the stream's
                # MAX_FRAMES bound drop the oldest.  Events arrive in order, so pairing
                # at any point is as valid as pairing at the end of the batch.
                self._stitch((conn,))

    def _shed_check(self, conn, is_req, clean, new, stream):
        """HTTP/1.x, a record that completed ``new`` frames on a connection not cleared for
        the sampler yet.  The kernel sees one message start per syscall, at its first
        bytes: it may shed a connection's transactions only if each syscall holds one
        message.  A record of two messages (or of one and the start of the next) means
        never; a request completed any other way than whole in its own record starts the
        count again; after SHED_OK_AFTER clean requests in a row the connection is queued
        for the kernel's map shed_ok (written by the main loop)."""
        if new > 1 or (is_req and stream.buf):
            conn.shed_wait = -1
        elif not is_req:
            return
        elif not clean:
            conn.shed_wait = SHED_OK_AFTER
        else:
            conn.shed_wait -= 1
            if not conn.shed_wait and len(self.new_shed_ok) < MAX_SHED_OK_QUEUE:
                self.new_shed_ok.append(conn.conn_id)

    def _control(self, raw):
        t = _TYPE.unpack_from(raw)[0]
        if t == EVT_OPEN:
            self.on_open(_OPEN.unpack(raw))
        elif t == EVT_CLOSE:
            self.on_close(_CLOSE.unpack(raw))
        elif self.control_sink is not None:
            self.control_sink(t, raw)

    def _retire(self, conn, n):
        """The kernel counted ``n`` responses whose requests user space has (the ring
        buffer refused the responses): their requests are answered, by messages this side
        will never see.  Pair what is queued, then retire the ``n`` oldest requests as
        requests without a response here (the kernel counted the response and the
        latency); requests not parsed yet are retired when they are."""
        conn.retire += n
        if conn.req_stream is not None:
            self._stitch((conn,))

    def switch_to_tls(self, conn):
        """The first plaintext from the TLS uprobes on a connection that began in the clear
        (PostgreSQL's SSLRequest, MySQL's CLIENT_SSL handshake: TLS negotiated in the
        protocol).  What was parsed before stays counted; the connection moves to the
        link with ssl=1 and its parsers start afresh on the plaintext, the way the
        protocol continues after the handshake."""
        if conn.req_stream is not None:
            self._stitch((conn,))
        conn.ssl = True
        key = conn.link.key[:-1] + (1,)
        link = self.links.get(key, self.now)
        if link is not None:
            conn.link.conns -= 1
            conn.link.last_active = self.now
            link.conns += 1
            link.last_active = self.now
            conn.link = link
        if conn.proto is not None:
            conn.req_stream = conn.resp_stream = None
            conn.state = None
            conn.skip_said = False
        log.debug("%s connection of pid %d fd %d continues in TLS",
                  conn.proto.name if conn.proto else "unknown", conn.tgid, conn.fd)

    def _switch_protocol(self, conn):
        """The protocol changed mid-connection (HTTP/1.1 101 to ``Upgrade: h2c``): the
        new protocol's parsers take the bytes the old ones kept, on a link of its name."""
        old = conn.state
        info = registry.BY_NAME.get(old.switch_to)
        old.switch_to = None
        proto = registry.protocol_for_id(info.proto_id) if info is not None else None
        if proto is None or not hasattr(proto, "state_after_upgrade"):
            return
        rest = [(s.buf, s.base_ts) for s in (conn.req_stream, conn.resp_stream)]
        conn.proto = proto
        self._make_streams(conn)
        conn.state = proto.state_after_upgrade(old.upgrade_req)
        conn.req_stream.parser.state = conn.resp_stream.parser.state = conn.state
        key = conn.link.key[:6] + (proto.name,) + conn.link.key[7:]
        link = self.links.get(key, self.now)
        if link is not None:
            conn.link.conns -= 1
            link.conns += 1
            link.last_active = self.now
            conn.link = link
        for stream, (buf, ts) in zip((conn.req_stream, conn.resp_stream), rest):
            if buf:
                stream.append(buf, len(buf), ts)
        if conn.req_stream.frames or conn.resp_stream.frames:
            self.dirty.add(conn)

    def stitch_now(self, conn):
        """Pair what a connection has queued now (a stream holds STITCH_BACKLOG frames)."""
        self._stitch((conn,))

    def on_close(self, ev):
        conn = self.conns.pop(ev["conn_id"], None)
        if conn is None:
            return
        self.add_counters(conn, ev["bytes_sent"], ev["bytes_recv"], ev["segs_sent"],
                          ev["segs_recv"])
        if ev["acct"]:
            self.acct_closed[conn.conn_id] = conn.link   # its last kernel counts come later
        self._finish(conn)

    # -- stitching ----------------------------------------------------------------------
    def _make_streams(self, conn):
        proto = conn.proto
        conn.state = proto.new_state()
        stats = conn.link.stream_stats       # counted per link (l7_link completeness)
        conn.req_stream = DataStream(proto.new_parser(MessageType.REQUEST, conn.state), stats)
        conn.resp_stream = DataStream(proto.new_parser(MessageType.RESPONSE, conn.state), stats)

    def protocol_stats(self):
        """{protocol name: StreamStats}: this period's per-link stream counts summed per
        protocol (for the log; call before the report resets the links)."""
        out = {}
        for link in self.links.links.values():
            total = out.get(link.protocol)
            if total is None:
                total = out[link.protocol] = StreamStats()
            link.stream_stats.add_into(total)
        return out

    stream_stats = property(protocol_stats)

    def stitch_dirty(self):
        if not self.dirty:
            return
        dirty, self.dirty = self.dirty, set()
        self._stitch(dirty)

    def _stitch(self, conns, flush=False):
        """Pair what each connection of ``conns`` has queued (``flush``: the connection
        closed, everything left goes), and count the records on its link."""
        now = self.now
        sink = self.record_sink
        # link -> its records, counted once per link at the end, in the order they came
        # (Link.add_records of all at once counts as of each in turn)
        counted = {}
        try:
            for conn in conns:
                rs, ps = conn.req_stream, conn.resp_stream
                if conn.retire:
                    recs = self._retire_now(conn)
                    if recs:
                        counted.setdefault(conn.link, []).extend(recs)
                proto = conn.proto
                state = conn.state
                try:
                    if flush:
                        recs = proto.flush(rs.frames, ps.frames, state)
                    else:
                        recs = proto.stitch(rs.frames, ps.frames, state)
                except Exception as exc:   # a stitcher bug must not stop the probe
                    st = conn.link.stream_stats
                    st.exceptions += 1
                    st.last_error = exc
                    if not conn.warned:
                        conn.warned = True
                        log.warning("%s stitcher failed on a connection of pid %d: %r",
                                    proto.name, conn.tgid, exc)
                    st.dropped_frames += len(rs.frames) + len(ps.frames)
                    rs.frames.clear()
                    ps.frames.clear()
                    continue
                if getattr(state, "switch_to", None):
                    self._switch_protocol(conn)
                if recs:
                    link = conn.link
                    link.last_active = now
                    counted.setdefault(link, []).extend(recs)
                    if sink is not None:
                        for rec in recs:
                            sink(link, rec)
        finally:
            learn = self.learn_api
            for link, recs in counted.items():
                # the kernel's name of each HTTP API new to the link (learn_api)
                link.add_records(recs, learn if link.api_hash is not None else None)

    def _retire_now(self, conn):
        """Pair what can be paired, then take the oldest requests that the kernel's
        responses answered (see _retire)."""
        rs, ps = conn.req_stream, conn.resp_stream
        proto = conn.proto
        recs = []
        try:
            if ps.frames:
                recs = proto.stitch(rs.frames, ps.frames, conn.state)
            if rs.frames:
                more, conn.retire = proto.retire(rs.frames, conn.state, conn.retire)
                recs += more
        except Exception as exc:     # a stitcher bug must not stop the probe
            conn.retire = 0
            st = conn.link.stream_stats
            st.exceptions += 1
            st.last_error = exc
            return None
        # counted (by _stitch), but not traced: half of these pairs is known only to the
        # kernel
        return recs

    # -- the kernel's own counts (maps kacct and kapi) ------------------------------------
    def add_kernel_counts(self, conn_id, vals):
        """``vals``: the cumulative conn_acct of one connection (map kacct), as a tuple in
        the header's field order.  Adds what is new since the last read to the connection's
        link (l7_rpc).  Returns True if the entry can be deleted from the map (its connection
        is gone).  Read kapi first (add_kernel_api_counts): this forgets closed links."""
        conn = self.conns.get(conn_id)
        if conn is not None:
            link = conn.link
            gone = False
        else:
            link = self.acct_closed.pop(conn_id, None)
            gone = True
            if link is None:
                # Not announced yet (its open record may still be in the ring buffer): keep
                # the counts for a few reads; then the connection closed unannounced.
                n = self.acct_unknown.get(conn_id, 0) + 1
                if n < ACCT_UNKNOWN_READS:
                    self.acct_unknown[conn_id] = n
                    return False
                self.acct_unknown.pop(conn_id, None)
                self.acct_base.pop(conn_id, None)
                self.unplaced += vals[0]
                return True
        self.acct_unknown.pop(conn_id, None)
        delta = self._delta(conn_id, vals, gone)
        if delta is None:
            return gone
        _add_acct(link.rpc, delta, vals)
        link.last_active = self.now
        link.kernel_only += delta[0]
        link.refused += delta[REFUSED]     # records the ring buffer refused (msgs_dropped)
        self.kernel_only += delta[0]
        self.sampled_out += delta[5]
        return gone

    def add_kernel_api_counts(self, conn_id, api, vals):
        """The same per API (map kapi, key (conn_id, http_api_hash)) into l7_rpc_api: the
        name comes from a request of that API the parsers saw (learn_apis).  Returns True if
        the entry can be deleted."""
        conn = self.conns.get(conn_id)
        link = conn.link if conn is not None else self.acct_closed.get(conn_id)
        if link is None:
            # not announced yet (kept, see add_kernel_counts), or gone for good
            return conn_id not in self.acct_unknown and conn_id not in self.acct_base
        gone = conn is None
        delta = self._delta((conn_id, api), vals, gone)
        name = self.api_names.get(api)
        if delta is None:
            return gone
        if name is None:
            self.api_unnamed += delta[0]
            return gone
        st = link.apis.get(name)
        if st is None:
            if len(link.apis) >= Links.MAX_APIS_PER_LINK:
                return gone
            st = link.apis[name] = RpcStats()
        _add_acct(st, delta, vals)
        return gone

    def _delta(self, key, vals, gone):
        """What is new in the cumulative ``vals`` of ``key`` since the last read, or None if
        nothing is."""
        base = self.acct_base.get(key)
        if base is not None:
            base = _ACCT_UNPACK(base)
        if base is not None and all(v >= b for v, b in zip(vals, base)):
            delta = [v - b for v, b in zip(vals, base)]
        else:
            delta = list(vals)           # first read, or the LRU map re-created the entry
        if gone:
            self.acct_base.pop(key, None)
        else:
            self.acct_base[key] = _ACCT_PACK(*vals)
        if not any(delta):
            return None
        return delta

    def learn_api(self, api, api_hash):
        """The kernel knows an HTTP API by its hash (``api_hash``, the protocol's): remember
        a new API name's, and queue it for the kernel's map apis_known (the kernel marks an
        API it sent the first request of as asked, and samples its next requests; see
        bpf/probe.c http_bytes).  Called by Link.add_records for each API new to a link."""
        known = self.api_hashes
        if api not in known and len(known) < MAX_KNOWN_APIS:
            h = known[api] = api_hash(api)
            self.api_names[h] = api
            self.new_apis.append(h)

    def _finish(self, conn):
        if conn.peers:
            udp.finish(self, conn)
        conn.link.conns -= 1
        conn.link.last_active = self.now
        if conn.req_stream is not None:
            self._stitch((conn,), True)
            if not conn.skip_said:
                self._say_skipped(conn)

    def rest_idle(self):
        """Once per report period: drop the parsers and buffers of connections that hold
        nothing a new one would not (both streams and the protocol state at rest; see
        Parser.at_rest); their next bytes make them anew.  A keep-alive connection between
        requests then holds its Conn alone (~180 bytes of Python objects, not ~900): what
        idle connections held is reused for busy ones.  (The RSS peak does not shrink: the
        freed objects sit in arenas among live ones; bench_rss shows the same peak with and
        without this.)  Returns how many were dropped."""
        n = 0
        dirty = self.dirty
        for conn in self.conns.values():
            rs = conn.req_stream
            if (rs is None or conn.retire or conn.peers is not None or conn in dirty
                    or not conn.proto.state_at_rest(conn.state)
                    or not rs.at_rest() or not conn.resp_stream.at_rest()):
                continue
            conn.req_stream = conn.resp_stream = None
            conn.state = None
            n += 1
        return n

    def report_skipped(self):
        """Once per connection: say why a parser stopped following it (TLS negotiated in
        the protocol, compression, a replication stream, ...); its bytes are still counted
        in l7_link.  Called once per report period."""
        for conn in self.conns.values():
            if not conn.skip_said and conn.state is not None:
                self._say_skipped(conn)

    @staticmethod
    def _say_skipped(conn):
        st = conn.state
        note = getattr(st, "note", None)
        if note and not st.note_said:       # once per connection (HTTP/2's unknown HPACK)
            st.note_said = True
            ln = conn.link
            log.info("%s: pid %d fd %d, %s -> %s:%d", note, conn.tgid, conn.fd, ln.client_ip,
                     ln.server_ip, ln.server_port)
        reason = getattr(conn.state, "skip_reason", None)
        if reason:
            conn.skip_said = True
            ln = conn.link
            log.info("%s; not parsed from then on, bytes still counted: pid %d fd %d, "
                     "%s -> %s:%d", reason, conn.tgid, conn.fd, ln.client_ip, ln.server_ip,
                     ln.server_port)

    # -- counters -----------------------------------------------------------------------
    def add_counters(self, conn, sent, recv, ssent, srecv):
        """Cumulative kernel counters -> this period's deltas on the link."""
        if conn.peers is not None:
            return                          # UDP: counted per peer (pipeline/udp.py)
        link = conn.link
        if sent > conn.sent_base or recv > conn.recv_base:
            link.last_active = self.now
        link.bytes_sent += max(0, sent - conn.sent_base)
        link.bytes_recv += max(0, recv - conn.recv_base)
        link.segs_sent += max(0, ssent - conn.ssent_base)
        link.segs_recv += max(0, srecv - conn.srecv_base)
        conn.sent_base, conn.recv_base = sent, recv
        conn.ssent_base, conn.srecv_base = ssent, srecv

    def drop_where(self, pred):
        """Forget connections for which pred(conn) is true (process gone, not watched)."""
        for conn in [c for c in self.conns.values() if pred(c)]:
            del self.conns[conn.conn_id]
            self._finish(conn)


from pipeline import udp  # noqa: E402  (it imports Conn from here)
