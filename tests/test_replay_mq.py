"""Kafka, MongoDB, RocketMQ and DNS captures through --replay (pipeline/replay.py, the live
Tracker and report) and through real loopback sockets with the probe attached
(tests/support/replayer.py): the same records as the parsers give on the captures'
connections, which tests/test_proto_{kafka,mongo,rocketmq,dns}.py compare with the oracles."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.pcapfile import read_tcp_connections
from pipeline.replay import orient, replay_records
from protocol import registry
from tests.support import feed
from tests.support.tshark import fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRS = {"kafka": "kafka", "mongo": "mongodb", "rocketmq": "rocketmq", "dns": "dns"}
# DNS: the captures with DNS over TCP (--replay and the replayer play TCP only); and of
# them, connections whose client side was captured (a server-only connection is, without
# its handshake, oriented by its ports: its responses go the requests' way and are not
# counted, by the parser as by --replay)
DNS_TCP = ["dns-edns-tcp-keepalive.pcap", "dns-tcp-multi.pcap", "dns.pcap", "nxdomain.pcap",
           "dns_fragmented.pcap"]


def files(name):
    d = fixture(DIRS[name], "")
    if name == "dns":
        return DNS_TCP
    return sorted(f for f in os.listdir(d) if f.endswith((".pcap", ".pcapng")))


CASES = [(n, f) for n in DIRS for f in files(n)]


def parsed(name, path, kernel=False):
    """(api, req seen, resp seen, status, err) of every record of the parser on the
    capture's connections, as --replay orients them.  ``kernel``: as the probe sees them,
    from the first client chunk on (the kernel detects a connection on a request and
    delivers nothing of what came before: kafka.pcapng's second connection starts with two
    responses of requests sent before the capture)."""
    proto = registry.protocol_for_id(registry.BY_NAME[name].proto_id)
    out = []
    for c in read_tcp_connections(path):
        orient(c, proto)
        chunks = c.chunks
        if kernel:
            first = next((i for i, ch in enumerate(chunks) if ch[0] == "c2s"), len(chunks))
            chunks = chunks[first:]
        out.extend(feed.summary(feed.run(proto, chunks).records))
    return sorted(out, key=repr)


@pytest.mark.parametrize("name,f", CASES)
def test_replay_equals_the_parser(name, f):
    path = fixture(DIRS[name], f)
    want = parsed(name, path)
    assert want and any(w[1] for w in want)
    for side, role in (("server", 2), ("client", 1)):
        recs = replay_records(path, protos=[name], side=side)
        assert all(link.protocol == name and link.l7_role == role for link, _ in recs)
        got = sorted(((r.api, bool(r.req_ts), bool(r.resp_ts), r.status, r.err)
                      for _, r in recs), key=repr)
        assert got == want


@pytest.mark.parametrize("name", list(DIRS))
def test_cli_replay_tables(name):
    """l7probe.py --replay prints l7_rpc / l7_rpc_api rows whose counts add up to the
    parser's records over every fixture of the protocol."""
    paths = [fixture(DIRS[name], f) for f in files(name)]
    want = [w for p in paths for w in parsed(name, p)]
    reqs = sum(1 for w in want if w[1])
    resps = sum(1 for w in want if w[2])
    got_req = got_resp = 0
    for p in paths:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "l7probe.py"), "--replay", p,
                              "--proto", name], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, L7PROBE_NO_VENV="1"))
        assert out.returncode == 0, out.stderr
        for ln in out.stdout.splitlines():
            v = ln.split("|")
            if ln.startswith("|l7_rpc|"):
                assert v[8] == name
                got_req += int(v[12])
                got_resp += int(v[13])
    assert (got_req, got_resp) == (reqs, resps)


# -- over loopback sockets, the probe attached ---------------------------------------------
@pytest.fixture(scope="module")
def loopback_run():
    import ast

    from tests.support.probe import ProbeRun
    from tests.support.replayer import finish_replay, start_replay
    paths = [(n, fixture(DIRS[n], f)) for n, f in CASES]
    proc = start_replay([p for _, p in paths])
    try:
        probe = ProbeRun(["--pid", str(proc.pid), "--proto", ",".join(DIRS), "--no-ssl",
                          "-P", "120"], ready_timeout=240)
        try:
            out = finish_replay(proc)
            import time
            time.sleep(2)
        finally:
            probe.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
    ports = {}                       # server port -> (protocol, file)
    for line in out.splitlines():
        path, pairs = line.split(" ", 1)
        name = next(n for n, p in paths if p == path)
        for _, sport in ast.literal_eval(pairs):
            ports[str(sport)] = (name, path)
    return probe, ports


def _loopback_counts(probe, ports, side):
    """{(protocol, file): (per-api request counts, responses)} of one side's rows."""
    l4 = "tcp_server" if side == "server" else "tcp_client"
    out = {}
    for r in probe.records("l7_rpc_api"):
        if r["l4_role"] == l4 and r["server_port"] in ports:
            key = ports[r["server_port"]]
            apis, _ = out.setdefault(key, ({}, 0))
            apis[r["api"]] = apis.get(r["api"], 0) + int(r["req_count"])
    res = {}
    for r in probe.records("l7_rpc"):
        if r["l4_role"] == l4 and r["server_port"] in ports:
            key = ports[r["server_port"]]
            apis, resp = out.get(key, ({}, 0))
            res[key] = resp + int(r["resp_count"])
            out[key] = (apis, res[key])
    return out


@pytest.mark.parametrize("side", ["server", "client"])
def test_loopback_replay_with_the_probe(loopback_run, side):
    probe, ports = loopback_run
    got = _loopback_counts(probe, ports, side)
    bad = []
    for name, f in CASES:
        path = fixture(DIRS[name], f)
        want_apis = {}
        recs = parsed(name, path, kernel=True)
        for api, req, resp, _, _ in recs:
            if req and api is not None:
                want_apis[api] = want_apis.get(api, 0) + 1
        want_resp = sum(1 for w in recs if w[2])
        if got.get((name, path), ({}, 0)) != (want_apis, want_resp):
            bad.append((name, f, got.get((name, path)), (want_apis, want_resp)))
    assert bad == [], "\n".join(map(repr, bad))
