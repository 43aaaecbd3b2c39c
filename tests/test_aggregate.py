"""Aggregation without BPF: the latency sketch (stated relative error, bounded memory),
per-period counters, ratios, throughput over partial periods, completeness per link."""
from __future__ import annotations

import math
import random

import pytest

from pipeline import sketch
from pipeline.aggregate import BOUNDS, PERCENTILES, Link, Links, RpcStats, add_to
from pipeline.conntrack import Tracker
from pipeline.report import completeness, rpc_values
from protocol import registry
from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, Record


def exact(values, q):
    """Nearest rank: the value of rank ceil(q * n) in sorted order."""
    s = sorted(values)
    return s[max(1, math.ceil(q * len(s) - 1e-9)) - 1]


def within(est, true, alpha=sketch.ALPHA):
    return abs(est - true) <= alpha * true + 1e-6


@pytest.mark.parametrize("seed, dist", [
    (1, "lognormal"), (2, "uniform"), (3, "fixed-mix"), (4, "heavy-tail"), (5, "tiny")])
def test_sketch_quantiles_within_stated_error(seed, dist):
    rnd = random.Random(seed)
    if dist == "lognormal":
        vals = [int(rnd.lognormvariate(13, 1.5)) + 1 for _ in range(20000)]
    elif dist == "uniform":
        vals = [rnd.randint(1, 10_000_000) for _ in range(20000)]
    elif dist == "fixed-mix":      # the acceptance test's shape: 1, 5, 20 ms plus jitter
        vals = [d * 1_000_000 + rnd.randint(0, 300_000)
                for d in rnd.choices((1, 5, 20), (60, 35, 5), k=5000)]
    elif dist == "heavy-tail":
        vals = [int(1000 * rnd.paretovariate(0.7)) for _ in range(20000)]
    else:
        vals = [rnd.randint(1, 20) for _ in range(500)]
    sk = sketch.Sketch()
    for v in vals:
        sk.add(v)
    qs = (0.0001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0)
    for q, est in zip(qs, sk.quantiles(qs)):
        true = exact(vals, q)
        if true >= sketch.MAX_NS:
            assert est == pytest.approx(sketch.value_of(sketch.MAX_KEY))
        else:
            assert within(est, true), (q, est, true)
    assert sk.max == max(vals)


def test_sketch_memory_is_bounded():
    sk = sketch.Sketch()
    v = 1.0
    while v < 10 * sketch.MAX_NS:        # every bucket from 1 ns to past the top, and more
        sk.add(int(v))
        v *= 1.001
    for x in (0, 0, -5, 10 ** 15):
        sk.add(x)
    assert len(sk.buckets) <= sketch.MAX_BUCKETS
    assert sketch.MAX_BUCKETS < 1300          # 1 ns .. 100 s at 1 %


def test_sketch_edges():
    assert sketch.quantiles({}, (0.5, 0.99)) == [0, 0]
    sk = sketch.Sketch()
    sk.add(0)
    assert sk.quantiles((0.5,)) == [0]
    sk = sketch.Sketch()
    sk.add(1)
    assert within(sk.quantiles((0.5,))[0], 1)
    for k in range(-1, 50):
        lo = sketch.GAMMA ** (k - 1)
        hi = sketch.GAMMA ** k
        if k >= 0:
            assert within(sketch.value_of(k), lo * 1.0000001) and within(sketch.value_of(k), hi)


def rec(lat, api="GET /", err=ERR_NONE, req=True, resp=True):
    return Record(1000 if req else 0, (1000 + lat) if resp else 0, api, err=err)


def test_add_to_counts_link_and_api_in_one_pass():
    link_st, api_st = RpcStats(), RpcStats()
    lats = [1_000_000, 5_000_000, 20_000_000, 0, 7]
    for lat in lats:
        add_to((link_st, api_st), rec(lat))
    add_to((link_st, api_st), rec(0, err=ERR_CLIENT, resp=False))      # unanswered
    add_to((link_st, api_st), rec(0, err=ERR_SERVER, req=False))       # no request seen
    for st in (link_st, api_st):
        assert (st.req, st.resp, st.err, st.client_err, st.server_err) == (6, 6, 2, 1, 1)
        assert st.lat_n == 5 and st.lat_sum == sum(lats) and st.lat_max == 20_000_000
        p50, p90, p99 = st.percentiles()
        for got, q in zip((p50, p90, p99), PERCENTILES):
            assert within(got, exact(lats, q)), (q, got)
        # upstream histogram: 0 counts in no bucket
        assert sum(st.histo.counts) == 4


def _add_one_by_one(stats, r):
    """The per-record rule add_all sums (the reference of the test below)."""
    lat = -1
    if r.req_ts and r.resp_ts:
        lat = max(0, r.resp_ts - r.req_ts)
    for st in stats:
        st.req += 1 if r.req_ts else 0
        st.resp += 1 if r.resp_ts else 0
        if lat >= 0:
            st.lat_sum += lat
            st.lat_n += 1
            k = sketch.key_of(lat)
            st.sketch[k] = st.sketch.get(k, 0) + 1
            st.lat_max = max(st.lat_max, lat)
            st.histo.add(lat)
        if r.err:
            st.err += 1
            st.client_err += r.err == ERR_CLIENT
            st.server_err += r.err == ERR_SERVER


def _stats_row(st):
    return (st.req, st.resp, st.err, st.client_err, st.server_err, st.lat_sum, st.lat_n,
            st.lat_max, dict(sorted(st.sketch.items())), st.histo.counts, st.histo.sum,
            st.histo.max)


def test_add_records_in_batches_equals_one_by_one(monkeypatch):
    """Link.add_records sums a batch before adding it (add_all): the same figures, APIs
    and API order as each record added in turn, whatever the batches; with latencies
    negative, 0, at the bucket bounds, past 10 s and past the sketch's top, errors of each
    class, records without an API, APIs past MAX_APIS_PER_LINK, kernel counts between."""
    from pipeline.aggregate import add_kernel_acct
    monkeypatch.setattr(Links, "MAX_APIS_PER_LINK", 6)
    lats = [-5, 0, 1, 7, 999_999, 10_000_000, 10_000_001, 10_000_000_000, 10_000_000_001,
            sketch.MAX_NS - 1, sketch.MAX_NS, 3 * sketch.MAX_NS] + list(BOUNDS)
    for seed in range(40):
        rnd = random.Random(seed)
        recs = []
        # odd seeds: latencies in (0, 10 s] only, as most batches are (add_all's C loops)
        pool = lats if seed % 2 == 0 else [1, 10_000_000, 10_000_001, 10_000_000_000]
        for _ in range(rnd.randrange(1, 400)):
            req_ts = rnd.choice([0, 1, 1, 1, 1000, 5_000_000])
            lat = rnd.choice(pool + [rnd.randrange(1, 10 ** 9)] * 8)
            resp_ts = rnd.choice([0] + [max(1, req_ts + lat)] * 6) if req_ts else \
                rnd.choice([0, 1, 42])
            api = rnd.choice([None, "GET /a", "GET /b"] + ["GET /%d" % i for i in range(10)])
            recs.append(Record(req_ts, resp_ts, api, err=rnd.choice([0, 0, 0, 1, 2, 3])))
        got = Link((1, "a", "b", 80, 2, 2, "http", 0), 0.0)
        want = Link((1, "a", "b", 80, 2, 2, "http", 0), 0.0)
        i = 0
        while i < len(recs):
            n = rnd.choice([1, 2, 5, 64, 1000])
            got.add_records(recs[i:i + n])
            for r in recs[i:i + n]:
                st = want.apis.get(r.api) if r.api is not None else None
                if r.api is not None and st is None and len(want.apis) < 6:
                    st = want.apis[r.api] = RpcStats()
                _add_one_by_one((want.rpc,) if st is None else (want.rpc, st), r)
            if rnd.random() < 0.2:           # the kernel's counts between batches
                vals = [rnd.randrange(3) for _ in range(8)] + [rnd.randrange(2)] * 7
                vals[7] = rnd.choice([0, 5, 20_000_000_000])
                add_kernel_acct(got.rpc, vals, vals)
                add_kernel_acct(want.rpc, vals, vals)
            i += n
        assert _stats_row(got.rpc) == _stats_row(want.rpc)
        assert list(got.apis) == list(want.apis)
        for api, st in want.apis.items():
            assert _stats_row(got.apis[api]) == _stats_row(st), api


def test_negative_latency_counts_as_zero():
    st = RpcStats()
    st.add(Record(5000, 4000, "X"))
    assert st.lat_n == 1 and st.lat_sum == 0 and st.percentiles() == [0, 0, 0]


def test_histogram_serialization_upstream_buckets():
    st = RpcStats()
    for lat in (1, 10_000_000, 10_000_001, 600_000_000, 20_000_000_000):
        st.add(rec(lat))
    parts = st.histo.serialize().split()
    assert parts[0] == "7" and [int(b) for b in parts[1:15:2]] == list(BOUNDS)
    assert [int(c) for c in parts[2:15:2]] == [2, 3, 3, 3, 4, 4, 4]


@pytest.mark.parametrize("period, want", [(5.0, "2.00"), (2.5, "4.00"), (0.37, "27.03"),
                                          (0.0, "10.00")])
def test_throughput_over_partial_periods(period, want):
    """A final report after 0.37 s divides by 0.37 s, not by the configured period."""
    st = RpcStats()
    for _ in range(10):
        st.add(rec(1000))
    v = rpc_values(st, period)
    assert v["throughput_req"] == want and v["throughput_resp"] == want
    assert v["req_count"] == 10


def test_ratios():
    st = RpcStats()
    for i in range(8):
        st.add(rec(1000, err=ERR_CLIENT if i < 2 else ERR_SERVER if i < 3 else ERR_NONE))
    v = rpc_values(st, 1.0)
    assert v["err_ratio"] == "0.38" and v["err_count"] == 3     # 3/8 through a C float
    assert rpc_values(RpcStats(), 1.0)["err_ratio"] == "0.00"


def test_percentile_fields_and_reset():
    links = Links()
    link = links.get((1, "127.0.0.1", "127.0.0.1", 80, 2, 2, "http", 0), 0.0)
    link.add_records([rec(d * 1_000_000, api="GET /d/%d" % d) for d in (1, 1, 1, 5, 20)])
    v = rpc_values(link.rpc, 1.0)
    assert within(v["latency_p50"], 1_000_000) and within(v["latency_p90"], 20_000_000)
    assert v["max_latency"] == 20_000_000
    assert v["latency_p99"] <= v["max_latency"]
    api = rpc_values(link.apis["GET /d/5"], 1.0)
    assert within(api["latency_p50"], 5_000_000) and api["latency_p99"] == 5_000_000
    link.reset()
    v = rpc_values(link.rpc, 1.0)
    assert (v["latency_p50"], v["max_latency"], v["req_count"]) == (0, 0, 0)


# -- completeness, per link ---------------------------------------------------------------

from bpf.layout import DEFINES, LAYOUTS  # noqa: E402

DATA, OPEN = LAYOUTS["evt_data"], LAYOUTS["evt_open"]
HTTP = registry.BY_NAME["http"].proto_id


def _open(tracker, conn_id, client_port, server_port):
    tracker.feed([OPEN.pack(
        type=DEFINES["EVT_OPEN"], tgid=4242, conn_id=conn_id, ts=0, fd=conn_id, family=2,
        server_port=server_port, client_port=client_port, l4_role=DEFINES["L4_SERVER"],
        l7_role=DEFINES["L7_SERVER"], proto=HTTP, ssl=0,
        client_ip=bytes([127, 0, 0, client_port % 250 + 1]) + bytes(12),
        server_ip=bytes([127, 0, 0, 1]) + bytes(12))])
    return tracker.conns[conn_id]


def _data(tracker, conn, direction, ts, payload, lost=0, lost_msgs=0):
    tracker.feed([DATA.pack(type=DEFINES["EVT_DATA"], tgid=4242, conn_id=conn.conn_id, ts=ts,
                            true_len=len(payload), cap_len=len(payload), lost=lost,
                            direction=direction, source=0, proto=HTTP, l7_role=2,
                            lost_msgs=lost_msgs, flags=0) + payload])


def test_completeness_is_attributed_to_the_affected_link_only():
    links = Links()
    tr = Tracker(links)
    clean = _open(tr, 1, 1000, 80)
    garbage = _open(tr, 2, 1001, 80)
    lossy = _open(tr, 3, 1002, 80)
    refused = _open(tr, 4, 1003, 80)
    conns = (clean, garbage, lossy, refused)
    assert len({c.link.key for c in conns}) == 4
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ts = 10
    for conn in conns:
        for _ in range(3):
            _data(tr, conn, 1, ts, req)
            _data(tr, conn, 0, ts + 5, resp)
            ts += 10
    _data(tr, garbage, 1, ts, b"\x16\x03\x01garbage\r\n\r\n")
    _data(tr, garbage, 1, ts + 1, req)
    _data(tr, garbage, 0, ts + 2, resp)
    # a stretch inside a message was never delivered: the next record of that direction
    # carries its length in `lost` (no clean gap)
    _data(tr, lossy, 1, ts, req)
    _data(tr, lossy, 0, ts + 1, resp[:20])
    _data(tr, lossy, 0, ts + 2, resp, lost=1000)
    # the ring buffer refused a response: the next record says so (lost_msgs), and the
    # kernel counted a whole transaction whose request record it refused (the response of
    # such a transaction is not even offered): 2 refused records, conn_acct.refused
    _data(tr, refused, 1, ts, req)
    _data(tr, refused, 1, ts + 1, req, lost_msgs=1)
    tr.add_kernel_counts(refused.conn_id, tuple(
        {"req": 1, "resp": 2, "refused": 2}.get(f, 0) for f in LAYOUTS["conn_acct"].fields))
    tr.stitch_dirty()
    zero = {"bytes_lost": 0, "msgs_unparsed": 0, "msgs_dropped": 0}
    assert completeness(clean.link) == zero
    g = completeness(garbage.link)
    assert g["msgs_unparsed"] >= 1 and g["bytes_lost"] == 0 and g["msgs_dropped"] == 0
    lo = completeness(lossy.link)
    assert lo["bytes_lost"] == 1000 and lo["msgs_unparsed"] == 0
    assert completeness(refused.link) == {"bytes_lost": 0, "msgs_unparsed": 0,
                                          "msgs_dropped": 2}
    # the per-protocol log totals are the sum of the links'
    total = tr.protocol_stats()["http"]
    assert total.lost_bytes == 1000 and total.invalid == g["msgs_unparsed"]
    for conn in conns:
        conn.link.reset()
        assert completeness(conn.link) == zero


def test_link_class_is_per_period():
    link = Link((1, "a", "b", 1, 1, 1, "http", 0), 0.0)
    link.stream_stats.dropped_frames = 3
    assert completeness(link)["msgs_dropped"] == 3
    link.reset()
    assert completeness(link)["msgs_dropped"] == 0


def test_stitcher_failure_on_one_connection_spares_the_others(monkeypatch):
    """Tracker._stitch pairs all dirty connections in one call and counts each link's
    records once at the end: a stitcher that raises on one connection drops that one's
    frames and counts the exception, the other connections (same link, other link) are
    paired and counted all the same, the records of a link once each."""
    from protocol.http.stitch import HttpProtocol
    tr = Tracker(Links())
    bad = _open(tr, 1, 1000, 80)
    good = _open(tr, 2, 1000, 80)         # bad's link
    other = _open(tr, 3, 1001, 80)
    assert bad.link is good.link and other.link is not good.link
    real = HttpProtocol.stitch

    def stitch(self, reqs, resps, state):
        if state is bad.state:
            raise RuntimeError("stitcher bug")
        return real(self, reqs, resps, state)

    monkeypatch.setattr(HttpProtocol, "stitch", stitch)
    req = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    for conn in (bad, good, other) * 2:
        _data(tr, conn, 1, 10, req)
        _data(tr, conn, 0, 20, resp)
    tr.stitch_dirty()
    assert (good.link.rpc.req, good.link.rpc.resp, good.link.rpc.lat_n) == (2, 2, 2)
    assert good.link.apis["GET /x"].req == 2
    assert (other.link.rpc.req, other.link.apis["GET /x"].resp) == (2, 2)
    st = good.link.stream_stats
    assert st.exceptions == 1 and st.dropped_frames == 4
    assert not bad.req_stream.frames and not bad.resp_stream.frames
