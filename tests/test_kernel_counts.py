"""User space's side of the counts the kernel keeps itself (map kacct, evt_data.lost_msgs,
EVF_CLEAN_GAP), without BPF: records built with the header's layouts go through
Tracker.feed, the probe's one hot path, and the kernel's counts through add_kernel_counts.
Each request and response must be counted exactly once, and each latency once."""
from bpf.layout import DEFINES, LAYOUTS
from pipeline.aggregate import Links
from pipeline.conntrack import ACCT_UNKNOWN_READS, Tracker

DATA = LAYOUTS["evt_data"]
OPEN = LAYOUTS["evt_open"]
CLOSE = LAYOUTS["evt_close"]
ACCT = LAYOUTS["conn_acct"]
EGRESS, INGRESS = DEFINES["DIR_EGRESS"], DEFINES["DIR_INGRESS"]
CID = 7


def open_rec(cid=CID):
    return OPEN.pack(type=DEFINES["EVT_OPEN"], tgid=10, conn_id=cid, ts=1, fd=3, family=2,
                     server_port=80, client_port=5000, l4_role=DEFINES["L4_SERVER"],
                     l7_role=DEFINES["L7_SERVER"], proto=1, ssl=0,
                     client_ip=b"\x7f\0\0\1" + b"\0" * 12, server_ip=b"\x7f\0\0\1" + b"\0" * 12)


def data(direction, ts, payload, lost=0, lost_msgs=0, flags=0, cid=CID):
    return DATA.pack(type=DEFINES["EVT_DATA"], tgid=10, conn_id=cid, ts=ts,
                     true_len=len(payload), cap_len=len(payload), lost=lost,
                     direction=direction, source=0, proto=1, l7_role=2,
                     lost_msgs=lost_msgs, flags=flags) + payload


def req(path):
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"


def resp(code):
    return b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % code


def acct(**kw):
    vals = dict.fromkeys(ACCT.fields, 0)
    vals.update(kw)
    return tuple(vals[f] for f in ACCT.fields)


def tracker():
    links = Links()
    return links, Tracker(links)


def the_link(links):
    (link,) = links.links.values()
    return link


def test_a_response_the_ring_refused_retires_its_request():
    links, tr = tracker()
    # request /a delivered; its response refused by the ring buffer (the kernel counts it
    # and its latency); the next delivered record carries lost_msgs=1
    tr.feed([open_rec(), data(INGRESS, 100, req(b"/a"))])
    tr.stitch_dirty()
    tr.feed([data(INGRESS, 300, req(b"/b"), lost_msgs=1),
             data(EGRESS, 400, resp(404), lost=len(resp(200)))])
    tr.stitch_dirty()
    tr.add_kernel_counts(CID, acct(resp=1, lat_n=1, lat_sum=100, lat_max=100, bucket_0=1))
    st = the_link(links).rpc
    assert (st.req, st.resp, st.lat_n, st.lat_sum) == (2, 2, 2, 100 + 100)
    assert st.client_err == 1                          # /b's 404, not attributed to /a
    apis = the_link(links).apis
    assert apis["GET /a"].req == 1 and apis["GET /a"].resp == 0
    assert apis["GET /b"].resp == 1 and apis["GET /b"].lat_sum == 100
    assert the_link(links).kernel_only == 0            # no request was the kernel's alone


def test_sampled_out_transactions_leave_a_clean_gap():
    links, tr = tracker()
    shed = len(req(b"/x")), len(resp(200))
    tr.feed([open_rec(), data(INGRESS, 100, req(b"/a")), data(EGRESS, 150, resp(200)),
             # /x and its answer were sampled out: the kernel counts them
             data(INGRESS, 300, req(b"/b"), lost=shed[0], flags=DEFINES["EVF_CLEAN_GAP"]),
             data(EGRESS, 350, resp(500), lost=shed[1], flags=DEFINES["EVF_CLEAN_GAP"])])
    tr.stitch_dirty()
    tr.add_kernel_counts(CID, acct(req=1, resp=1, lat_n=1, lat_sum=20, lat_max=20,
                                   bucket_0=1, sampled_out=1))
    link = the_link(links)
    st = link.rpc
    assert (st.req, st.resp, st.lat_n, st.lat_sum) == (3, 3, 3, 50 + 50 + 20)
    assert st.server_err == 1 and st.histo.counts[0] == 3
    assert link.kernel_only == 1 and tr.sampled_out == 1
    stats = tr.stream_stats["http"]
    assert (stats.gaps, stats.resyncs, stats.dropped_bytes, stats.invalid) == (0, 0, 0, 0)


def test_kernel_counts_are_read_as_deltas_and_kept_past_close():
    links, tr = tracker()
    tr.feed([open_rec()])
    assert not tr.add_kernel_counts(CID, acct(req=2, resp=2, lat_n=2, lat_sum=10))
    assert not tr.add_kernel_counts(CID, acct(req=5, resp=4, lat_n=4, lat_sum=30,
                                              err_server=1))
    st = the_link(links).rpc
    assert (st.req, st.resp, st.lat_n, st.lat_sum, st.server_err) == (5, 4, 4, 30, 1)
    # closed with counts still to read: the next read places them, then the entry goes
    tr.feed([CLOSE.pack(type=DEFINES["EVT_CLOSE"], tgid=10, conn_id=CID, ts=9, acct=1)])
    assert tr.add_kernel_counts(CID, acct(req=6, resp=6, lat_n=6, lat_sum=40, err_server=1))
    assert (st.req, st.resp, st.lat_n, st.lat_sum) == (6, 6, 6, 40)
    assert CID not in tr.acct_base


def test_counts_of_a_connection_not_announced_yet_wait_for_it():
    links, tr = tracker()
    for _ in range(ACCT_UNKNOWN_READS - 1):
        assert not tr.add_kernel_counts(CID, acct(req=3, resp=3))
    tr.feed([open_rec()])                # its open record arrives late
    assert not tr.add_kernel_counts(CID, acct(req=3, resp=3))
    assert the_link(links).rpc.req == 3
    # a connection that never gets announced: its counts are said lost, then deleted
    for i in range(ACCT_UNKNOWN_READS - 1):
        assert not tr.add_kernel_counts(99, acct(req=4))
    assert tr.add_kernel_counts(99, acct(req=4))
    assert tr.unplaced == 4


def _kernel_api_rule(line):
    """include/l7.h http_api_hash's byte rule, transcribed: the request line's bytes up to a
    CR or LF, or a blank or '?' after the method's blank, at most HTTP_API_LEN bytes."""
    out = bytearray()
    sp = False
    for c in line[:DEFINES["HTTP_API_LEN"]]:
        if c in b"\r\n" or (sp and c in b" ?"):
            break
        sp = sp or c == 0x20
        out.append(c)
    return bytes(out)


def test_the_kernel_api_rule_names_the_apis_the_parser_names():
    """The kernel counts per API by a hash of the name it cuts from the request line;
    user space must compute the same hash from the parser's API name, for any target."""
    import random
    from protocol.http.stitch import api_hash, api_name
    from protocol.http.types import HttpRequest  # noqa: F401  (the parser's frame)
    rng = random.Random(3)
    alphabet = b"abcz/._-~%09?=&#:@!$'()*+,;AZ" + bytes(range(0x80, 0x100, 17))
    for _ in range(3000):
        method = rng.choice([b"GET", b"POST", b"DELETE", b"OPTIONS", b"PROPFIND"])
        target = b"/" + bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 90)))
        line = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        name = api_name(method.decode("latin-1"), target.decode("latin-1"))
        assert _kernel_api_rule(line) == name.encode("latin-1"), line
        h = 14695981039346656037
        for c in _kernel_api_rule(line):
            h = ((h ^ c) * 1099511628211) % 2**64
        assert api_hash(name) == (h or 1)


def test_refused_records_count_on_their_link_only():
    """conn_acct.refused (any data record the ring buffer refused, bodies too) is the
    link's msgs_dropped, even when nothing else of the connection was counted."""
    links, tr = tracker()
    tr.feed([open_rec(), open_rec(cid=8)])
    tr.add_kernel_counts(CID, acct(refused=3))
    tr.add_kernel_counts(CID, acct(refused=5))
    assert [l.refused for l in links.links.values()] == [5]


def test_feed_decoder_reads_the_header_fields():
    """Tracker.feed decodes evt_data with a narrower view of the header's layout (fields
    grouped into integers): every field it reads comes out as the full layout packs it."""
    import random

    import pytest

    from pipeline import conntrack as C

    rng = random.Random(3)
    sizes = {f: s for f, (_, s) in DATA.offsets().items()}
    for _ in range(200):
        vals = {f: rng.choice([0, 1, (1 << 8 * sizes[f]) - 1, rng.getrandbits(8 * sizes[f])])
                for f in DATA.fields}
        raw = DATA.pack(**vals)
        conn_id, ts, true_len, cap_len, lost, roles, more = C._DATA_VIEW.unpack_from(raw)
        assert (conn_id, ts, true_len, cap_len, lost) == (
            vals["conn_id"], vals["ts"], vals["true_len"], vals["cap_len"], vals["lost"])
        assert roles & 255 == vals["direction"]
        assert bool(roles & C._SOURCE) == bool(vals["source"])
        assert more & C._LOST_MSGS == vals["lost_msgs"]
        assert more >> C._FLAGS_SHIFT == vals["flags"]
        assert bool(more & C._CLEAN_GAP) == bool(vals["flags"] & DEFINES["EVF_CLEAN_GAP"])
        assert bool(more & C._TURN_CUT) == bool(vals["flags"] & DEFINES["EVF_TURN_CUT"])
    with pytest.raises(ValueError):
        DATA.view(("ts", "lost"))             # not adjacent
    with pytest.raises(ValueError):
        DATA.view("lost", "ts")               # out of order


def test_http_apis_learned_once_each():
    """Each HTTP API name the parsers see is handed to the kernel once (its hash queued in
    new_apis, the name kept for the kernel's per-API counts), whichever link shows it first;
    a link whose API table is full still learns the names of its records."""
    from pipeline.aggregate import Links as L
    from protocol.http.stitch import api_hash

    tr = Tracker(Links())
    recs = [open_rec(7), open_rec(8)]
    # conn 8: another link (another server port)
    recs[1] = OPEN.pack(type=DEFINES["EVT_OPEN"], tgid=10, conn_id=8, ts=1, fd=4, family=2,
                        server_port=81, client_port=5001, l4_role=DEFINES["L4_SERVER"],
                        l7_role=DEFINES["L7_SERVER"], proto=1, ssl=0,
                        client_ip=b"\x7f\0\0\1" + b"\0" * 12,
                        server_ip=b"\x7f\0\0\1" + b"\0" * 12)
    ts = 10
    for path in (b"/a", b"/b", b"/a?x=1", b"/c"):
        for cid in (7, 8):
            recs += [data(INGRESS, ts, req(path), cid=cid),
                     data(EGRESS, ts + 1, resp(200), cid=cid)]
            ts += 2
    old = L.MAX_APIS_PER_LINK
    L.MAX_APIS_PER_LINK = 2          # /c goes past both links' tables
    try:
        tr.feed(recs)
        tr.stitch_dirty()
    finally:
        L.MAX_APIS_PER_LINK = old
    names = ["GET /a", "GET /b", "GET /c"]
    assert sorted(tr.new_apis) == sorted(api_hash(n) for n in names)
    assert {tr.api_names[h] for h in tr.new_apis} == set(names)
    assert all(len(link.apis) == 2 for link in tr.links.links.values())
    assert [l.rpc.req for l in tr.links.links.values()] == [4, 4]
