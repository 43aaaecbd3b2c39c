"""UDP sockets (DNS over UDP): one kernel connection per socket, one pairing and one link
per peer, as upstream keys UDP links (l4_role ``udp``, server = the remote address, client
``no_ip``; gala-gopher-compat §4.4).

Each data record of a UDP socket is one datagram behind a pseudo header (``bpf/udp.h``:
u16 family, u16 port, 16 address bytes).  The datagram goes to the peer's own streams framed
as DNS over TCP frames it (a 2-byte length), so the DNS parser serves both transports and a
datagram longer than the capture is skipped by its length.  Bytes and datagrams are counted
per peer here (the socket's kernel counters cover every peer at once and are not used).
"""
from __future__ import annotations

import struct

from pipeline.conntrack import Conn, ip_text

HDR = struct.Struct("<HH16s")
UDP_HDR = HDR.size
L4_UDP = 0
DIR_EGRESS = 0
MAX_PEERS = 4096          # peers followed per socket (a DNS server's clients); more: dropped
MAX_IDS = 4096            # recent DNS ids -> peer, per socket (see on_data)
MAX_UNPLACED = 256        # datagrams of an unknown peer awaiting their exchange's other half


def on_open(tracker, ev, name):
    """A UDP socket's first detected datagram: the parent connection (no streams)."""
    family = ev["family"]
    key = (ev["tgid"], "no_ip", ip_text(family, ev["server_ip"]), ev["server_port"], L4_UDP,
           ev["l7_role"], name, ev["ssl"])
    link = tracker.links.get(key, tracker.now)
    if link is None:
        return None
    old = tracker.conns.get(ev["conn_id"])
    if old is not None:
        tracker._finish(old)
    from protocol import registry
    conn = Conn(ev["conn_id"], ev["tgid"], ev["fd"], link, registry.protocol_for_id(ev["proto"]),
                ev["l7_role"])
    conn.peers = {}
    conn.state = ({}, {})   # the socket's DNS id -> peer, and datagrams awaiting a peer
    link.conns += 1
    tracker.conns[conn.conn_id] = conn
    return conn


def on_data(tracker, conn, direction, ts, data, true_len):
    if len(data) < UDP_HDR or conn.proto is None:
        return
    family, port, addr = HDR.unpack_from(data, 0)
    peer = (family, port, addr)
    msg_id = data[UDP_HDR:UDP_HDR + 2]
    if family == 0:
        # The kernel could not tell the peer (with the socket-tracepoint hooks, a datagram
        # received on an unconnected socket: recvfrom()/recvmsg() write the address only
        # after the tracepoint).  DNS names its exchanges: a response goes to the peer its
        # query went to; a query waits (bounded) for the response that names its peer.
        ids, unplaced = conn.state
        peer = ids.get(msg_id)
        if peer is None:
            if len(unplaced) >= MAX_UNPLACED:
                del unplaced[next(iter(unplaced))]
                tracker.udp_unplaced_dropped += 1
            unplaced[msg_id] = (direction, ts, data, true_len)
            return
    else:
        ids, unplaced = conn.state
        ids[msg_id] = peer
        if len(ids) > MAX_IDS:
            del ids[next(iter(ids))]
        if unplaced:
            held = unplaced.pop(msg_id, None)
            if held is not None:
                _feed(tracker, conn, peer, *held)
    _feed(tracker, conn, peer, direction, ts, data, true_len)


def _feed(tracker, conn, peer, direction, ts, data, true_len):
    family, port, addr = peer
    sub = conn.peers.get(peer)
    if sub is None:
        if len(conn.peers) >= MAX_PEERS:
            return
        link = conn.link
        key = (conn.tgid, "no_ip", ip_text(family, addr), port, L4_UDP, link.l7_role,
               link.protocol, link.ssl)
        plink = tracker.links.get(key, tracker.now)
        if plink is None:
            return
        l7_role = 1 if conn.req_dir == DIR_EGRESS else 2
        sub = conn.peers[peer] = Conn((conn.conn_id, peer), conn.tgid, conn.fd, plink,
                                      conn.proto, l7_role)
        plink.conns += 1
        tracker._make_streams(sub)
    n = true_len - UDP_HDR
    link = sub.link
    link.last_active = tracker.now
    if direction == DIR_EGRESS:
        link.bytes_sent += n
        link.segs_sent += 1
    else:
        link.bytes_recv += n
        link.segs_recv += 1
    stream = sub.req_stream if direction == sub.req_dir else sub.resp_stream
    frames = len(stream.frames)
    stream.append(struct.pack(">H", n & 0xFFFF) + data[UDP_HDR:], n + 2, ts)
    if len(stream.frames) != frames:
        tracker.dirty.add(sub)


def finish(tracker, conn):
    for sub in conn.peers.values():
        tracker._finish(sub)
    conn.peers = {}
