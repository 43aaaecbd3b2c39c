"""Completeness fields of l7_link end to end (BPF): after a forced ring-buffer overflow
(L7PROBE_RINGBUF_PAGES=1: a 4 KiB ring, which no record of a large read fits: the
kernel counts what it refused, per connection) and after
garbage on a watched connection, non-zero on exactly the affected links; zero on the
others (a clean link in the same run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.support.ingest import check_line
from tests.support.probe import ROOT, ProbeRun
from tests.support.servers import nginx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

# One client = one process = one link (client side: tgid, server ip:port).
CLIENT = textwrap.dedent(r"""
    import socket, sys, time
    sys.path.insert(0, "@ROOT@")
    from tests.support import http_get
    port, kind = int(sys.argv[1]), sys.argv[2]
    s = socket.create_connection(("127.0.0.1", port))
    def get(path):
        http_get.get(s, path)
    print("ready", flush=True)
    sys.stdin.readline()
    if kind == "big":            # 1 MiB answers in 64 KiB reads: records the ring never fits
        for _ in range(3):
            get("/bytes/1m")
            get("/")
    elif kind == "garbage":      # a request, then bytes no HTTP parser accepts
        get("/")
        time.sleep(0.2)
        s.sendall(b"\x16\x03\x01\x00\x05junk junk\r\n\r\n")
        time.sleep(0.3)
    else:                        # small and slow: its records always fit the ring
        for _ in range(5):
            get("/")
            time.sleep(0.1)
    print("done", flush=True)
    sys.stdin.readline()
""").replace("@ROOT@", ROOT)


@pytest.fixture(scope="module")
def run():
    clients = {}
    probe = None
    with nginx() as ng:
        try:
            for kind in ("big", "garbage", "clean"):
                c = subprocess.Popen([sys.executable, "-c", CLIENT, str(ng.port), kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                clients[kind] = c
                assert c.stdout.readline().strip() == "ready"
            env = dict(os.environ, L7PROBE_RINGBUF_PAGES="1")
            pids = ",".join(str(c.pid) for c in clients.values())
            probe = ProbeRun(["-p", pids, "--proto", "http", "-P", "300", "--format", "json"],
                             env=env, ready_timeout=240)
            # one after the other: the clean link's records never meet a full ring
            for kind in ("big", "garbage", "clean"):
                c = clients[kind]
                c.stdin.write("go\n")
                c.stdin.flush()
                assert c.stdout.readline().strip() == "done", kind
            assert probe.stop() == 0, probe.err_lines[-10:]
            links = {}
            for line in probe.lines:
                if line.startswith("{"):
                    rec = json.loads(line)
                    if rec["table"] == "l7_link" and rec["server_port"] == ng.port:
                        links.setdefault(rec["tgid"], []).append(rec)
            yield {"links": links, "pids": {k: c.pid for k, c in clients.items()},
                   "probe": probe}
        finally:
            if probe is not None:
                probe.stop()
            for c in clients.values():
                c.kill()
                c.wait()


def fields(run, kind):
    (rec,) = run["links"][run["pids"][kind]]
    return rec["bytes_lost"], rec["msgs_unparsed"], rec["msgs_dropped"]


def test_ring_buffer_overflow_shows_on_its_link(run):
    lost, unparsed, dropped = fields(run, "big")
    # the three 1 MiB answers were refused: the kernel counted them (or, for bytes inside
    # a message, the next record carried their length)
    assert dropped >= 3, (lost, unparsed, dropped)
    assert unparsed == 0
    assert any("ring buffer full" in l for l in run["probe"].err_lines)


def test_garbage_shows_on_its_link(run):
    lost, unparsed, dropped = fields(run, "garbage")
    assert unparsed >= 1 and lost == 0 and dropped == 0


def test_clean_link_stays_zero(run):
    assert fields(run, "clean") == (0, 0, 0)


def test_gopher_lines_of_the_extended_l7_link_pass_ingest_rules(run):
    from pipeline.meta import FIELDS
    for recs in run["links"].values():
        for rec in recs:
            line = "|l7_link|" + "|".join(str(rec[f]) for f in FIELDS["l7_link"]) + "|"
            check_line(line)
