"""Latency percentiles end to end: a server that answers after fixed delays of 1, 5 and
20 ms in known proportions, the probe watching the client (BPF), in both output formats at
once; p50/p90/p99 per link and per API within the sketch's stated error of the exact
percentiles of the same requests (their l7_trace rows), and every gopher line within
gala-gopher's ingest rules with the extended meta."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.sketch import ALPHA
from tests.support.ingest import check_line
from tests.support.probe import ROOT, ProbeRun, parse_line

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

DELAYS = {1: 180, 5: 105, 20: 15}       # ms -> requests: 60 %, 35 %, 5 %
MS = 1_000_000

CLIENT = textwrap.dedent(r"""
    import random, socket, sys
    port = int(sys.argv[1])
    paths = [p for p in sys.argv[2:]]
    random.Random(7).shuffle(paths)
    s = socket.create_connection(("127.0.0.1", port))
    print("ready", flush=True)
    sys.stdin.readline()
    for p in paths:
        s.sendall(b"GET " + p.encode() + b" HTTP/1.1\r\nHost: d\r\n\r\n")
        d = b""
        while not d.endswith(b"ok"):
            x = s.recv(4096)
            if not x:
                sys.exit("closed")
            d += x
    print("done", flush=True)
    sys.stdin.readline()
""")


def nearest_rank(values, q):
    s = sorted(values)
    return s[max(1, math.ceil(q * len(s) - 1e-9)) - 1]


@pytest.fixture(scope="module")
def run():
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "support",
                                                            "delay_server.py")],
                              stdout=subprocess.PIPE, text=True)
    client = None
    probes = []
    try:
        port = int(server.stdout.readline())
        paths = ["/d/%d" % d for d, n in DELAYS.items() for _ in range(n)]
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)] + paths,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "ready"
        args = ["-p", str(client.pid), "--proto", "http", "-P", "300",
                "--trace-limit", "100000"]
        probes = [ProbeRun(args, ready_timeout=240),
                  ProbeRun(args + ["--format", "json"], ready_timeout=240)]
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
        for p in probes:
            assert p.stop() == 0, p.err_lines[-10:]
        yield {"port": port, "gopher": probes[0], "json": probes[1]}
    finally:
        for p in probes:
            p.stop()
        for proc in (client, server):
            if proc is not None:
                proc.kill()
                proc.wait()


def records(run, fmt):
    """{table: [rec]} of the client's link to the delay server, values as strings."""
    out = {}
    for line in run[fmt].lines:
        if fmt == "gopher":
            if not line.startswith("|"):
                continue
            table, rec = parse_line(line)
        else:
            if not line.startswith("{"):
                continue
            rec = {k: str(v) for k, v in json.loads(line).items()}
            table = rec.pop("table")
        if rec["server_port"] == str(run["port"]) and rec["l7_role"] == "client":
            out.setdefault(table, []).append(rec)
    return out


def check_percentiles(row, lats):
    for q, name in ((0.5, "latency_p50"), (0.9, "latency_p90"), (0.99, "latency_p99")):
        exact = nearest_rank(lats, q)
        got = int(row[name])
        assert abs(got - exact) <= ALPHA * exact + 1, (name, got, exact)
    assert int(row["max_latency"]) == max(lats)


@pytest.mark.parametrize("fmt", ["gopher", "json"])
def test_percentiles_per_link(run, fmt):
    recs = records(run, fmt)
    traces = recs["l7_trace"]
    total = sum(DELAYS.values())
    assert len(traces) == total
    lats = [int(t["latency"]) for t in traces]
    # the traffic is what it should be: exact p50 among the 1 ms, p90 among the 5 ms, p99
    # among the 20 ms answers
    assert MS <= nearest_rank(lats, 0.5) < 5 * MS
    assert 5 * MS <= nearest_rank(lats, 0.9) < 20 * MS
    assert 20 * MS <= nearest_rank(lats, 0.99)
    (row,) = recs["l7_rpc"]           # one period: everything in the final report
    assert int(row["req_count"]) == total and int(row["resp_count"]) == total
    check_percentiles(row, lats)


@pytest.mark.parametrize("fmt", ["gopher", "json"])
def test_percentiles_per_api(run, fmt):
    recs = records(run, fmt)
    by_api = {}
    for t in recs["l7_trace"]:
        by_api.setdefault(t["req_path"], []).append(int(t["latency"]))
    rows = {r["api"]: r for r in recs["l7_rpc_api"]}
    assert set(rows) == {"GET /d/%d" % d for d in DELAYS}
    for d, n in DELAYS.items():
        row = rows["GET /d/%d" % d]
        lats = by_api["/d/%d" % d]
        assert int(row["req_count"]) == n == len(lats)
        assert int(row["latency_p50"]) >= d * MS * (1 - ALPHA)
        check_percentiles(row, lats)


def test_every_gopher_line_passes_ingest_rules(run):
    lines = [l for l in run["gopher"].lines if l.startswith("|")]
    assert len(lines) >= sum(DELAYS.values())
    tables = {check_line(l)[0] for l in lines}
    assert {"l7_link", "l7_rpc", "l7_rpc_api", "l7_trace"} <= tables


def test_clean_traffic_has_zero_completeness_fields(run):
    for fmt in ("gopher", "json"):
        (link,) = records(run, fmt)["l7_link"]
        assert (link["bytes_lost"], link["msgs_unparsed"], link["msgs_dropped"]) == \
            ("0", "0", "0")
