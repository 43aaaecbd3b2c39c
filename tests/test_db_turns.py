"""User space's side of the kernel's capture policy for MySQL and PostgreSQL response turns
(bpf/probe.c db_capture, EVF_TURN / EVF_TURN_CUT in include/l7_events.h), without BPF:
records built with the header's layouts, shaped as the kernel sends them (the first
DB_TURN_HEAD bytes of a response turn, the rest skipped and carried in the next turn's
`lost`), go through Tracker.feed.  Every statement must be counted once, with its status
where the head holds it, and nothing reported lost.  The kernel's side is checked for real
by tests/test_e2e_db.py (big results) and tests/test_e2e_loadtools.py (sysbench)."""
import struct

from bpf.layout import DEFINES, LAYOUTS
from pipeline.aggregate import Links
from pipeline.conntrack import Tracker
from protocol import registry

DATA = LAYOUTS["evt_data"]
OPEN = LAYOUTS["evt_open"]
EGRESS, INGRESS = DEFINES["DIR_EGRESS"], DEFINES["DIR_INGRESS"]
TURN, CUT = DEFINES["EVF_TURN"], DEFINES["EVF_TURN_CUT"]
HEAD = DEFINES["DB_TURN_HEAD"]
CID = 9


def open_rec(proto):
    return OPEN.pack(type=DEFINES["EVT_OPEN"], tgid=10, conn_id=CID, ts=1, fd=3, family=2,
                     server_port=3306, client_port=5000, l4_role=DEFINES["L4_SERVER"],
                     l7_role=DEFINES["L7_SERVER"], proto=registry.BY_NAME[proto].proto_id,
                     ssl=0, client_ip=b"\x7f\0\0\1" + b"\0" * 12,
                     server_ip=b"\x7f\0\0\1" + b"\0" * 12)


def rec(direction, ts, payload, true_len=None, lost=0, flags=0, proto="mysql"):
    return DATA.pack(type=DEFINES["EVT_DATA"], tgid=10, conn_id=CID, ts=ts,
                     true_len=len(payload) if true_len is None else true_len,
                     cap_len=len(payload), lost=lost, direction=direction, source=0,
                     proto=registry.BY_NAME[proto].proto_id, l7_role=DEFINES["L7_SERVER"],
                     lost_msgs=0, flags=flags) + payload


class Turns:
    """The server side of one connection, its response turns cut as db_capture does (one
    syscall per response turn here, or the pieces given)."""

    def __init__(self, proto):
        self.proto = proto
        self.links = Links()
        self.tr = Tracker(self.links)
        self.tr.feed([open_rec(proto)])
        self.ts = 100
        self.skipped = 0          # bytes of a cut turn not delivered, for the next turn

    def request(self, payload):
        self.ts += 10
        self.tr.feed([rec(INGRESS, self.ts, payload, proto=self.proto)])

    def response(self, *pieces):
        seen = 0
        out = []
        for i, p in enumerate(pieces):
            self.ts += 10
            if seen >= HEAD:
                self.skipped += len(p)
                continue
            flags = TURN if i == 0 else 0
            if seen + len(p) >= HEAD:
                flags |= CUT
            cap = p[:HEAD - seen]
            lost = 0
            if flags & TURN:
                lost, self.skipped = self.skipped, 0
            out.append(rec(EGRESS, self.ts, cap, len(p), lost, flags, self.proto))
            seen += len(p)
        self.tr.feed(out)

    def link(self):
        self.tr.stitch_dirty()
        (link,) = self.links.links.values()
        return link


# -- MySQL ---------------------------------------------------------------------------------
def pkt(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def query(text):
    return pkt(0, b"\x03" + text.encode())


def ok(seq=1):
    return pkt(seq, b"\x00\x01\x00\x02\x00\x00\x00")


def err(code=1064, seq=1):
    return pkt(seq, b"\xff" + struct.pack("<H", code) + b"#42000syntax")


def result(nrows, seq=1):
    """A text result set of one column, nrows rows of 100 bytes, with EOF packets."""
    coldef = b"\x03def\x00\x01t\x01t\x01c\x01c\x0c\x21\x00\x64\x00\x00\x00\xfd\x00\x00\x00\x00\x00"
    eof = b"\xfe\x00\x00\x02\x00"
    out = [pkt(seq, b"\x01"), pkt(seq + 1, coldef), pkt(seq + 2, eof)]
    s = seq + 3
    for _ in range(nrows):
        out.append(pkt(s, b"\x64" + b"x" * 100))
        s += 1
    out.append(pkt(s, eof))
    return b"".join(out)


def test_mysql_result_rows_are_skipped_and_every_statement_counted():
    t = Turns("mysql")
    big = result(200)
    assert len(big) > 5 * HEAD
    t.request(query("SELECT c FROM t"))
    t.response(big)                                   # one write, cut after its head
    t.request(query("UPDATE t SET c = 1"))
    t.response(ok())                                  # carries the cut bytes in `lost`
    t.request(query("SELECT c FROM t WHERE id < 100"))
    t.response(big[:600], big[600:3000], big[3000:])  # cut in its second piece
    t.request(query("SELEC oops"))
    t.response(err())
    link = t.link()
    st = link.rpc
    assert (st.req, st.resp, st.err, st.client_err) == (4, 4, 1, 1)
    assert {a: (s.req, s.resp) for a, s in link.apis.items()} == {
        "SELECT": (2, 2), "UPDATE": (1, 1), "SELEC": (1, 1)}
    stats = t.tr.stream_stats["mysql"]
    assert (stats.gaps, stats.lost_bytes, stats.resyncs, stats.invalid) == (0, 0, 0, 0)
    assert (stats.cut_turns, stats.presumed) == (2, 0)


def test_mysql_pipelined_commands_in_a_cut_turn_are_answered():
    t = Turns("mysql")
    t.request(query("SELECT c FROM t") + query("SELECT c FROM t WHERE id > 3"))
    t.response(result(50) + result(50))               # the second answer is in the cut part
    t.request(query("DELETE FROM t"))
    t.response(ok())
    st = t.link().rpc
    assert (st.req, st.resp, st.err, st.lat_n) == (3, 3, 0, 3)
    stats = t.tr.stream_stats["mysql"]
    assert (stats.gaps, stats.lost_bytes, stats.cut_turns, stats.presumed) == (0, 0, 1, 1)


def test_mysql_short_turns_are_whole():
    t = Turns("mysql")
    for i in range(5):
        t.request(query("SELECT %d" % i))
        t.response(result(2))
    st = t.link().rpc
    assert (st.req, st.resp) == (5, 5)
    assert t.tr.stream_stats["mysql"].cut_turns == 0


# -- PostgreSQL ----------------------------------------------------------------------------
def msg(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body


def pg_query(text):
    return msg(b"Q", text.encode() + b"\0")


def pg_result(nrows, tag=b"SELECT"):
    out = [msg(b"T", b"\x00\x01c\x00" + b"\0" * 18)]
    out += [msg(b"D", b"\x00\x01\x00\x00\x00\x64" + b"x" * 100)] * nrows
    out += [msg(b"C", tag + b" %d\0" % nrows), msg(b"Z", b"I")]
    return b"".join(out)


def startup():
    body = struct.pack(">I", 196608) + b"user\0u\0database\0d\0\0"
    return struct.pack(">I", len(body) + 4) + body


def startup_answer():
    params = b"".join(msg(b"S", b"param_%02d\0%s\0" % (i, b"v" * 60)) for i in range(20))
    return (msg(b"R", b"\0\0\0\0") + params + msg(b"K", b"\0\0\0\1\0\0\0\2")
            + msg(b"Z", b"I"))


def test_pgsql_result_rows_are_skipped_and_every_statement_counted():
    t = Turns("pgsql")
    t.request(startup())
    t.response(startup_answer())                      # cut too: longer than the head
    t.request(pg_query("SELECT c FROM t"))
    t.response(pg_result(100))
    t.request(pg_query("UPDATE t SET c = 1; SELECT c FROM t"))
    t.response(msg(b"C", b"UPDATE 1\0") + pg_result(100))   # cut after the UPDATE's answer
    t.request(pg_query("DELETE FROM t"))
    t.response(msg(b"C", b"DELETE 3\0") + msg(b"Z", b"I"))
    t.request(pg_query("SELEC oops"))
    t.response(msg(b"E", b"SERROR\0C42601\0Msyntax\0\0") + msg(b"Z", b"I"))
    link = t.link()
    st = link.rpc
    assert (st.req, st.resp, st.err, st.client_err) == (5, 5, 1, 1)
    assert {a: (s.req, s.resp) for a, s in link.apis.items()} == {
        "SELECT": (2, 2), "UPDATE": (1, 1), "DELETE": (1, 1), "SELEC": (1, 1)}
    stats = t.tr.stream_stats["pgsql"]
    assert (stats.gaps, stats.lost_bytes, stats.resyncs, stats.invalid) == (0, 0, 0, 0)
    assert stats.cut_turns == 3


def _pieces(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


# response syscalls of these sizes: the head ends anywhere in a packet, in a header, at a
# syscall's end, in the first syscall or a later one
SIZES = (1, 3, 4, 5, 17, 100, 333, 1000, HEAD - 1, HEAD, HEAD + 1, 4096)


def _nine_exact(t, proto, size):
    """Three rounds of SELECT / INSERT / a syntax error: 9 pairs, 3 errors, by API, with no
    gap, lost byte or exception in the stream."""
    link = t.link()
    st = link.rpc
    assert (st.req, st.resp, st.err) == (9, 9, 3), size
    assert {a: s.req for a, s in link.apis.items()} == {
        "SELECT": 3, "INSERT": 3, "SELEC": 3}, size
    stats = t.tr.stream_stats[proto]
    assert (stats.gaps, stats.lost_bytes, stats.exceptions) == (0, 0, 0), size


def test_mysql_cut_anywhere_counts_stay_exact():
    for size in SIZES:
        t = Turns("mysql")
        for i in range(3):
            t.request(query("SELECT c FROM t"))
            t.response(*_pieces(result(30 + i), size))
            t.request(query("INSERT INTO t VALUES (1)"))
            t.response(*_pieces(ok(), size))
            t.request(query("SELEC oops"))
            t.response(*_pieces(err(), size))
        _nine_exact(t, "mysql", size)


def test_pgsql_cut_anywhere_counts_stay_exact():
    for size in SIZES:
        t = Turns("pgsql")
        t.request(startup())
        t.response(*_pieces(startup_answer(), size))
        for i in range(3):
            t.request(pg_query("SELECT c FROM t"))
            t.response(*_pieces(pg_result(30 + i), size))
            t.request(pg_query("INSERT INTO t VALUES (1)"))
            t.response(*_pieces(msg(b"C", b"INSERT 0 1\0") + msg(b"Z", b"I"), size))
            t.request(pg_query("SELEC oops"))
            t.response(*_pieces(msg(b"E", b"SERROR\0C42601\0Msyntax\0\0") + msg(b"Z", b"I"),
                                size))
        _nine_exact(t, "pgsql", size)
