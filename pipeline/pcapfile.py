"""A small pcap / pcapng reader that rebuilds TCP conversations (parser tests, --replay).

    conns = read_tcp_connections("fixtures/redis/pubsub.pcap")
    for c in conns:
        c.client, c.server        # ("10.0.0.1", 40000), ("10.0.0.2", 6379)
        c.chunks                  # [("c2s", ts_ns, b"..."), ("s2c", ts_ns, b"..."), ...]

Link types: Ethernet (1, with 802.1Q/QinQ tags), BSD null/loopback (0, 108), Linux cooked
SLL (113) and SLL2 (276), raw IP (101, 12, 14, 228, 229).  IPv4 (non-first fragments are
skipped) and IPv6 (hop-by-hop, routing, destination-options and fragment headers skipped).

Per direction, TCP payload is delivered in sequence order: duplicates and retransmitted
bytes are dropped (a retransmission that extends past what was delivered contributes only
its new tail), out-of-order segments wait until the hole before them is filled.  Holes that
are never filled are skipped at the end and counted in ``Connection.holes``.

The client is the side that sent a SYN without ACK; without a handshake, the side whose
port is in ``server_ports`` (if given) or else the higher port number.  Connections are
returned in the order their first packet appears; chunks in capture order.
"""
from __future__ import annotations

import socket
import struct

C2S = "c2s"
S2C = "s2c"

_LE_US, _LE_NS = 0xA1B2C3D4, 0xA1B23C4D


class Connection:
    __slots__ = ("client", "server", "chunks", "holes", "_dirs", "_first")

    def __init__(self):
        self.client = self.server = None
        self.chunks = []
        self.holes = 0
        self._dirs = {}
        self._first = None

    def payload(self, direction):
        return b"".join(d for (w, _, d) in self.chunks if w == direction)

    def __repr__(self):
        return "Connection(%r -> %r, %d chunks)" % (self.client, self.server, len(self.chunks))


class _Dir:
    __slots__ = ("next", "pending", "chunks")

    def __init__(self):
        self.next = None       # next expected relative sequence number (64-bit, unwrapped)
        self.pending = {}      # rel seq -> (ts, payload) of out-of-order segments
        self.chunks = []       # (ts, payload) delivered, in order


def _packets_pcap(data):
    magic_le = struct.unpack_from("<I", data, 0)[0]
    if magic_le in (_LE_US, _LE_NS):
        end = "<"
        nano = magic_le == _LE_NS
    else:
        end = ">"
        nano = struct.unpack_from(">I", data, 0)[0] == _LE_NS
    linktype = struct.unpack_from(end + "I", data, 20)[0] & 0x0FFFFFFF
    hdr = struct.Struct(end + "IIII")
    pos = 24
    n = len(data)
    while pos + 16 <= n:
        sec, frac, incl, _orig = hdr.unpack_from(data, pos)
        pos += 16
        pkt = data[pos:pos + incl]
        pos += incl
        ts = sec * 1_000_000_000 + (frac if nano else frac * 1000)
        yield ts, linktype, pkt


def _packets_pcapng(data):
    pos = 0
    n = len(data)
    end = "<"
    ifaces = []   # (linktype, ticks per second)
    while pos + 12 <= n:
        btype = struct.unpack_from(end + "I", data, pos)[0]
        if btype == 0x0A0D0D0A:
            bom = data[pos + 8:pos + 12]
            end = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
        blen = struct.unpack_from(end + "I", data, pos + 4)[0]
        if blen < 12 or pos + blen > n:
            break
        body = data[pos + 8:pos + blen - 4]
        if btype == 1:  # Interface Description Block
            linktype = struct.unpack_from(end + "H", body, 0)[0]
            tsres = 1_000_000
            opos = 8
            while opos + 4 <= len(body):
                code, olen = struct.unpack_from(end + "HH", body, opos)
                if code == 0:
                    break
                if code == 9 and olen >= 1:
                    v = body[opos + 4]
                    tsres = (2 ** (v & 0x7F)) if v & 0x80 else 10 ** v
                opos += 4 + ((olen + 3) & ~3)
            ifaces.append((linktype, tsres))
        elif btype == 6:  # Enhanced Packet Block
            iface, tsh, tsl, caplen, _orig = struct.unpack_from(end + "IIIII", body, 0)
            if iface < len(ifaces):
                linktype, tsres = ifaces[iface]
                ticks = (tsh << 32) | tsl
                yield ticks * 1_000_000_000 // tsres, linktype, body[20:20 + caplen]
        elif btype == 3:  # Simple Packet Block
            if ifaces:                   # (body[:4] is the original length)
                yield 0, ifaces[0][0], body[4:]
        pos += blen


def _ip_of_link(linktype, pkt):
    """-> (ethertype-ish version, ip bytes) or None."""
    if linktype == 1:  # Ethernet
        if len(pkt) < 14:
            return None
        etype = struct.unpack_from("!H", pkt, 12)[0]
        off = 14
        while etype in (0x8100, 0x88A8, 0x9100) and len(pkt) >= off + 4:
            etype = struct.unpack_from("!H", pkt, off + 2)[0]
            off += 4
        return etype, pkt[off:]
    if linktype in (0, 108):  # BSD loopback: 4-byte address family
        if len(pkt) < 4:
            return None
        v = pkt[4] >> 4 if len(pkt) > 4 else 0
        return (0x0800 if v == 4 else 0x86DD), pkt[4:]
    if linktype == 113:  # Linux cooked SLL
        if len(pkt) < 16:
            return None
        return struct.unpack_from("!H", pkt, 14)[0], pkt[16:]
    if linktype == 276:  # Linux cooked SLL2
        if len(pkt) < 20:
            return None
        return struct.unpack_from("!H", pkt, 0)[0], pkt[20:]
    if linktype in (101, 12, 14, 228, 229):  # raw IP
        if not pkt:
            return None
        return (0x0800 if pkt[0] >> 4 == 4 else 0x86DD), pkt
    return None


def _tcp_of_ip(etype, ip):
    """-> (src, dst, tcp segment bytes) or None."""
    if etype == 0x0800 and len(ip) >= 20 and ip[0] >> 4 == 4:
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        frag = struct.unpack_from("!H", ip, 6)[0]
        if ip[9] != 6 or frag & 0x1FFF:
            return None
        if total >= ihl:
            ip = ip[:total]
        return _ipv4(ip[12:16]), _ipv4(ip[16:20]), ip[ihl:]
    if etype == 0x86DD and len(ip) >= 40 and ip[0] >> 4 == 6:
        plen = struct.unpack_from("!H", ip, 4)[0]
        nxt = ip[6]
        src, dst = _ipv6(ip[8:24]), _ipv6(ip[24:40])
        rest = ip[40:40 + plen] if plen else ip[40:]
        while nxt in (0, 43, 60, 44) and len(rest) >= 8:
            if nxt == 44:
                if struct.unpack_from("!H", rest, 2)[0] & 0xFFF8:
                    return None
                nxt, rest = rest[0], rest[8:]
            else:
                nxt, rest = rest[0], rest[(rest[1] + 1) * 8:]
        if nxt != 6:
            return None
        return src, dst, rest
    return None


def _ipv4(b):
    return socket.inet_ntop(socket.AF_INET, bytes(b))


def _ipv6(b):
    return socket.inet_ntop(socket.AF_INET6, bytes(b))


def read_packets(path):
    """Yield (ts_ns, src, sport, dst, dport, seq, flags, payload) for every TCP segment."""
    with open(path, "rb") as f:
        data = f.read()
    gen = _packets_pcapng(data) if data[:4] == b"\x0a\x0d\x0d\x0a" else _packets_pcap(data)
    for ts, linktype, pkt in gen:
        ipx = _ip_of_link(linktype, pkt)
        if ipx is None:
            continue
        seg = _tcp_of_ip(*ipx)
        if seg is None:
            continue
        src, dst, tcp = seg
        if len(tcp) < 20:
            continue
        sport, dport, seq, _ack, off, flags = struct.unpack_from("!HHIIBB", tcp, 0)
        doff = (off >> 4) * 4
        yield ts, src, sport, dst, dport, seq, flags, bytes(tcp[doff:])


def read_tcp_connections(path, server_ports=()):
    conns = {}
    order = []
    for ts, src, sport, dst, dport, seq, flags, payload in read_packets(path):
        a, b = (src, sport), (dst, dport)
        key = (a, b) if a <= b else (b, a)
        c = conns.get(key)
        syn, ack = flags & 2, flags & 16
        if c is None or (syn and not ack and c.chunks):
            # a new connection, or the 4-tuple reused by a fresh SYN after data was seen
            c = conns[key] = Connection()
            c._first = a
            order.append(c)
        if syn and not ack:
            c.client, c.server = a, b
        d = c._dirs.get(a)
        if d is None:
            d = c._dirs[a] = _Dir()
        if syn:
            d.next = seq + 1
            continue
        if not payload:
            continue
        if d.next is None:
            d.next = seq
        _deliver(c, a, d, seq, ts, payload)
    out = []
    for c in order:
        if c.client is None:
            ends = list(c._dirs) or [c._first]
            if len(ends) == 1:
                ends.append(None)
            p, q = ends[0], ends[1]
            if q is None:
                c.client, c.server = p, None
            elif p[1] in server_ports or (q[1] not in server_ports and p[1] < q[1]):
                c.client, c.server = q, p
            else:
                c.client, c.server = p, q
        for ep, d in c._dirs.items():
            if d.pending:
                c.holes += 1
                for rel in sorted(d.pending):
                    ts, data = d.pending[rel]
                    c.chunks.append((ep, ts, data))
                d.pending.clear()
        c.chunks = [(C2S if ep == c.client else S2C, ts, data) for (ep, ts, data) in c.chunks]
        if c.chunks:
            out.append(c)
    return out


def _deliver(c, ep, d, seq, ts, payload):
    # Unwrap the 32-bit sequence number around the next expected one.
    rel = d.next + ((seq - d.next + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    if rel < d.next:
        skip = d.next - rel
        if skip >= len(payload):
            return                      # pure retransmission / duplicate
        payload = payload[skip:]
        rel = d.next
    if rel > d.next:
        old = d.pending.get(rel)
        if old is None or len(old[1]) < len(payload):
            d.pending[rel] = (ts, payload)
        return
    c.chunks.append((ep, ts, payload))
    d.next = rel + len(payload)
    while d.pending:
        ready = [k for k in d.pending if k <= d.next]
        if not ready:
            break
        for k in sorted(ready):
            pts, pdata = d.pending.pop(k)
            if k + len(pdata) > d.next:
                pdata = pdata[d.next - k:]
                c.chunks.append((ep, pts, pdata))
                d.next += len(pdata)
