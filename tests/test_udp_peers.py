"""DNS over UDP in user space (pipeline/udp.py), without BPF: records built with the header's
layouts go through Tracker.feed.  With the socket-tracepoint hooks the kernel cannot tell the
sender of a datagram received on an unconnected socket (recvfrom writes it after the
tracepoint): the pseudo header says family 0, and the DNS id places the datagram with the
peer of the other half of its exchange."""
import struct

import dns.message
import dns.rcode

from bpf.layout import DEFINES, LAYOUTS
from pipeline import udp
from pipeline.aggregate import Links
from pipeline.conntrack import Tracker
from protocol import registry

DATA = LAYOUTS["evt_data"]
OPEN = LAYOUTS["evt_open"]
EGRESS, INGRESS = DEFINES["DIR_EGRESS"], DEFINES["DIR_INGRESS"]
DNS = registry.c_defines()["PROTO_DNS"]
CID = 9
UNKNOWN = struct.pack("<HH16s", 0, 0, b"")


def peer(last_octet, port):
    return struct.pack("<HH16s", 2, port, bytes([127, 0, 0, last_octet]))


def open_rec(l7_role):
    return OPEN.pack(type=DEFINES["EVT_OPEN"], tgid=10, conn_id=CID, ts=1, fd=3, family=0,
                     server_port=0, client_port=0, l4_role=DEFINES["L4_UDP"],
                     l7_role=l7_role, proto=DNS, ssl=0, client_ip=b"\0" * 16,
                     server_ip=b"\0" * 16)


def dgram(direction, ts, hdr, msg):
    payload = hdr + msg
    return DATA.pack(type=DEFINES["EVT_DATA"], tgid=10, conn_id=CID, ts=ts,
                     true_len=len(payload), cap_len=len(payload), lost=0,
                     direction=direction, source=0, proto=DNS, l7_role=0, lost_msgs=0,
                     flags=0) + payload


def query(qid, name="a.test"):
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q


def answer(q, rcode=dns.rcode.NOERROR):
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    return r.to_wire()


def per_peer(links):
    out = {}
    for key, link in links.links.items():
        if link.rpc.req or link.rpc.resp:
            out[(key[2], key[3])] = (link.rpc.req, link.rpc.resp, link.rpc.server_err)
    return out


def run(records):
    links = Links()
    tr = Tracker(links)
    tr.feed(records)
    tr.stitch_dirty()
    return links, tr


def test_server_queries_wait_for_the_answer_that_names_their_client():
    q1, q2, q3 = query(1), query(2), query(3)
    links, tr = run([
        open_rec(DEFINES["L7_SERVER"]),
        dgram(INGRESS, 100, UNKNOWN, q1.to_wire()),      # from client .2:5001
        dgram(INGRESS, 110, UNKNOWN, q2.to_wire()),      # from client .3:5002
        dgram(EGRESS, 200, peer(3, 5002), answer(q2, dns.rcode.SERVFAIL)),
        dgram(EGRESS, 210, peer(2, 5001), answer(q1)),
        dgram(INGRESS, 300, UNKNOWN, q3.to_wire()),      # never answered: never placed
    ])
    assert per_peer(links) == {("127.0.0.2", 5001): (1, 1, 0),
                               ("127.0.0.3", 5002): (1, 1, 1)}
    assert tr.udp_unplaced_dropped == 0


def test_client_answers_go_to_the_server_their_query_went_to():
    q1, q2 = query(7), query(8)
    links, tr = run([
        open_rec(DEFINES["L7_CLIENT"]),
        dgram(EGRESS, 100, peer(53, 53), q1.to_wire()),
        dgram(EGRESS, 110, peer(54, 5353), q2.to_wire()),
        dgram(INGRESS, 200, UNKNOWN, answer(q2, dns.rcode.SERVFAIL)),
        dgram(INGRESS, 210, UNKNOWN, answer(q1)),
    ])
    assert per_peer(links) == {("127.0.0.53", 53): (1, 1, 0),
                               ("127.0.0.54", 5353): (1, 1, 1)}


def test_unplaced_datagrams_are_bounded_and_counted():
    recs = [open_rec(DEFINES["L7_SERVER"])]
    n = udp.MAX_UNPLACED + 10
    recs += [dgram(INGRESS, 100 + i, UNKNOWN, query(i).to_wire()) for i in range(n)]
    links, tr = run(recs)
    (conn,) = [c for c in tr.conns.values() if c.peers is not None]
    assert len(conn.state[1]) == udp.MAX_UNPLACED
    assert tr.udp_unplaced_dropped == 10
