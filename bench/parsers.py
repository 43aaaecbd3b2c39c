"""Parser throughput from recorded events, no BPF.

HTTP: ring-buffer records (open/data/close, exactly as the kernel side emits them) of a
keep-alive connection between a client and a server, built once, then replayed through the
probe's own record handler (decode, connection tracking, reassembly, parsing, pairing,
aggregation) on one core.  The rate counts HTTP messages (requests + responses).
"""
import os
import sys
import time

# BENCH_CODE_ROOT: measure another checkout's pipeline and parsers with these records (bench/
# run.py does, for BENCH_REF's revision; it needs Tracker.feed, i.e. 25892e2 or later)
ROOT = (os.environ.get("BENCH_CODE_ROOT")
        or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bpf.layout import DEFINES, LAYOUTS  # noqa: E402
from pipeline.aggregate import Links  # noqa: E402
from pipeline.conntrack import Tracker  # noqa: E402

REQ = (b"GET /api/v1/items?id=%d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
       b"Accept: */*\r\n\r\n")
RESP = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 01:00:00 GMT\r\n"
        b"Content-Type: text/html\r\nContent-Length: 615\r\nLast-Modified: Mon, 01 Jan 2024 "
        b"00:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"1-267\"\r\nAccept-Ranges: bytes"
        b"\r\n\r\n" + b"x" * 615)


# every head distinct: a request id in each request's headers, a Date and an ETag of its own
# in each response (the parser's memo of the last head never answers)
REQ_DISTINCT = REQ.replace(b"Accept: ", b"X-Request-Id: %d\r\nAccept: ")
RESP_DISTINCT = RESP.replace(b"2026 01:00:00 GMT", b"2026 01:%02d:%02d GMT").replace(
    b'"1-267"', b'"%d-267"')
# the two kinds of stream, as the figures name them
HEADS = {False: "heads repeat (keep-alive)", True: "every head distinct"}


def http_records(n_conns=20, per_conn=500, distinct=False):
    """Records of n_conns server-side keep-alive connections, interleaved like a ring;
    ``distinct``: no head repeats."""
    op, data = LAYOUTS["evt_open"], LAYOUTS["evt_data"]
    recs = []
    ts = 1_000_000
    for c in range(n_conns):
        recs.append(op.pack(type=DEFINES["EVT_OPEN"], tgid=100, conn_id=c + 1, ts=ts, fd=10 + c,
                            family=2, server_port=8080, client_port=40000 + c,
                            l4_role=DEFINES["L4_SERVER"], l7_role=DEFINES["L7_SERVER"],
                            proto=1, ssl=0, pad=b"", client_ip=b"\x7f\0\0\1" + b"\0" * 12,
                            server_ip=b"\x7f\0\0\1" + b"\0" * 12))
    for i in range(per_conn):
        for c in range(n_conns):
            ts += 1000
            n = i * n_conns + c
            req = REQ_DISTINCT % (i, n) if distinct else REQ % i
            resp = (RESP_DISTINCT % (n // 60 % 60, n % 60, n)) if distinct else RESP
            recs.append(data.pack(type=DEFINES["EVT_DATA"], tgid=100, conn_id=c + 1, ts=ts,
                                  true_len=len(req), cap_len=len(req), lost=0,
                                  direction=DEFINES["DIR_INGRESS"], source=0, proto=1,
                                  l7_role=2) + req)
            ts += 50_000
            recs.append(data.pack(type=DEFINES["EVT_DATA"], tgid=100, conn_id=c + 1, ts=ts,
                                  true_len=len(resp), cap_len=len(resp), lost=0,
                                  direction=DEFINES["DIR_EGRESS"], source=0, proto=1,
                                  l7_role=2) + resp)
    return recs, 2 * n_conns * per_conn


class _Sink:
    """The part of l7probe.Probe that handles records, without BPF: a Tracker."""

    def __init__(self):
        self.links = Links()
        self.tracker = Tracker(self.links)


def batches_of(recs):
    """As the main loop does: drained batches of records (live batches hold ~1000 records at
    13k req/s; 64 is on the safe side)."""
    return [recs[i:i + 64] for i in range(0, len(recs), 64)]


def feed_all(tracker, batches):
    """Each batch through Tracker.feed, then pairing."""
    for batch in batches:
        tracker.feed(batch)
        tracker.stitch_dirty()


def bench_http(distinct=False, quiet=False):
    """Messages per second (best of 3) through the record handler; ``distinct``: every head
    different (the parser's memo of the last head never answers)."""
    recs, messages = http_records(distinct=distinct)
    batches = batches_of(recs)
    best = 0.0
    for _ in range(3):
        sink = _Sink()
        t0 = time.process_time()
        feed_all(sink.tracker, batches)
        dt = time.process_time() - t0
        st = next(iter(sink.links.links.values())).rpc
        assert st.req == st.resp == messages // 2, (st.req, st.resp)
        best = max(best, messages / dt)
    if not quiet:
        print("http pipeline parse rate, %s: %.0f messages/s (%.0f requests/s) per core, "
              "from recorded events (target >= 400k messages/s)"
              % (HEADS[distinct], best, best / 2))
    return best


def bench_db():
    """The other parsers' rates (bench/bench_parsers_db.py), if present."""
    try:
        from bench import bench_parsers_db
    except ImportError:
        return
    bench_parsers_db.main()


def main():
    print("== parsers (one core, no BPF)")
    bench_http()
    bench_http(distinct=True)
    bench_db()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http-rate"]:      # one figure, for bench/run.py
        print("%.0f" % bench_http(distinct=sys.argv[2:3] == ["distinct"], quiet=True))
    else:
        main()
