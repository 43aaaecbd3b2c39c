"""Which HTTP/1.x connections the kernel's sampler may shed (map shed_ok, bpf/probe.c
http_bytes), decided in user space without BPF: records built with the header's layouts go
through Tracker.feed, and Tracker.new_shed_ok is what the main loop writes into the map.

The kernel sees one message start per syscall, at its first bytes; a connection whose
syscalls hold one request each may be shed, one that writes two requests in one syscall
(h2load --h1 -m 2's writev) never.  tests/test_e2e_loadtools.py checks it for real."""
import pytest

from bpf.layout import DEFINES, LAYOUTS
from pipeline.aggregate import Links
from pipeline.conntrack import SHED_OK_AFTER, Tracker
from protocol import registry

DATA, OPEN = LAYOUTS["evt_data"], LAYOUTS["evt_open"]
EGRESS, INGRESS = DEFINES["DIR_EGRESS"], DEFINES["DIR_INGRESS"]
HTTP = registry.BY_NAME["http"].proto_id
REQ = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Conn:
    """One connection of a client (requests egress) or a server (requests ingress)."""

    def __init__(self, tr, conn_id, role="client", proto=HTTP):
        self.tr, self.conn_id, self.ts = tr, conn_id, 100
        self.l7_role = DEFINES["L7_CLIENT"] if role == "client" else DEFINES["L7_SERVER"]
        self.req_dir = EGRESS if role == "client" else INGRESS
        tr.feed([OPEN.pack(type=DEFINES["EVT_OPEN"], tgid=7, conn_id=conn_id, ts=1,
                           fd=conn_id, family=2, server_port=80, client_port=4000 + conn_id,
                           l4_role=DEFINES["L4_CLIENT"] if role == "client"
                           else DEFINES["L4_SERVER"], l7_role=self.l7_role, proto=proto,
                           ssl=0, client_ip=b"\x7f\0\0\1" + b"\0" * 12,
                           server_ip=b"\x7f\0\0\1" + b"\0" * 12)])

    def send(self, is_req, payload, true_len=None):
        self.ts += 10
        direction = self.req_dir if is_req else 1 - self.req_dir
        self.tr.feed([DATA.pack(
            type=DEFINES["EVT_DATA"], tgid=7, conn_id=self.conn_id, ts=self.ts,
            true_len=len(payload) if true_len is None else true_len, cap_len=len(payload),
            lost=0, direction=direction, source=0, proto=HTTP, l7_role=self.l7_role,
            lost_msgs=0, flags=0) + payload])
        self.tr.stitch_dirty()

    def exchange(self, req=REQ, resp=RESP):
        self.send(True, req)
        self.send(False, resp)


def _tracker():
    return Tracker(Links())


@pytest.mark.parametrize("role", ["client", "server"])
def test_one_request_per_syscall_clears_the_connection_once(role):
    tr = _tracker()
    c = Conn(tr, 1, role)
    for _ in range(SHED_OK_AFTER - 1):
        c.exchange()
    assert tr.new_shed_ok == []
    c.exchange(POST)                 # a request with its body in the same syscall: one
    assert tr.new_shed_ok == [1]
    for _ in range(10):
        c.exchange()
    assert tr.new_shed_ok == [1]     # queued once
    rec = tr.conns[1].link.rpc
    assert (rec.req, rec.resp) == (SHED_OK_AFTER + 10, SHED_OK_AFTER + 10)


@pytest.mark.parametrize("role", ["client", "server"])
def test_two_requests_in_one_syscall_never_clear(role):
    """h2load --h1 -m 2: both requests in one writev, both answers in one read."""
    tr = _tracker()
    c = Conn(tr, 2, role)
    c.exchange()
    c.send(True, REQ + REQ)
    c.send(False, RESP + RESP)
    for _ in range(SHED_OK_AFTER * 5):
        c.exchange()
    assert tr.new_shed_ok == []
    assert tr.conns[2].shed_wait == -1


def test_two_answers_in_one_syscall_never_clear():
    tr = _tracker()
    c = Conn(tr, 3)
    c.send(True, REQ)
    c.send(True, REQ)
    c.send(False, RESP + RESP)
    for _ in range(SHED_OK_AFTER * 5):
        c.exchange()
    assert tr.new_shed_ok == []


def test_a_request_and_the_next_ones_start_never_clear():
    """The second request's head ends in the next syscall: the kernel would see neither
    start of the second one."""
    tr = _tracker()
    c = Conn(tr, 4)
    c.send(True, REQ + REQ[:10])
    c.send(True, REQ[10:])
    c.send(False, RESP + RESP)
    for _ in range(SHED_OK_AFTER * 5):
        c.exchange()
    assert tr.new_shed_ok == []


def test_a_request_not_whole_in_its_own_syscall_starts_the_count_again():
    """A request whose body's end and the next request share a syscall (that one starts
    with body bytes: no start for the kernel) is not clean: the count starts again."""
    tr = _tracker()
    c = Conn(tr, 5)
    body = POST.index(b"0123")
    for _ in range(SHED_OK_AFTER * 3):
        c.send(True, POST[:body + 4])                  # head and part of the body: clean
        c.send(True, POST[body + 4:] + REQ)            # the rest of it, and another request
        c.send(False, RESP + RESP)
    assert tr.new_shed_ok == [] and tr.conns[5].shed_wait == -1
    tr = _tracker()
    c = Conn(tr, 6)
    for _ in range(SHED_OK_AFTER * 3):
        c.send(True, REQ[:10])                         # a head in two syscalls
        c.send(True, REQ[10:])
        c.send(False, RESP)
    assert tr.new_shed_ok == [] and tr.conns[6].shed_wait == SHED_OK_AFTER
    for _ in range(SHED_OK_AFTER):
        c.exchange()
    assert tr.new_shed_ok == [6]


def test_other_protocols_are_never_queued():
    tr = _tracker()
    c = Conn(tr, 7, proto=registry.BY_NAME["redis"].proto_id)
    for _ in range(SHED_OK_AFTER * 2):
        c.send(True, b"*1\r\n$4\r\nPING\r\n")
        c.send(False, b"+PONG\r\n")
    assert tr.new_shed_ok == []
