"""--replay: a capture through the live pipeline (pipeline/replay.py), generic for all
protocols; compared with tshark's decoding beside the fixtures."""
import os
import subprocess
import sys

from pipeline.replay import guess_protocol, replay_records
from pipeline.pcapfile import read_tcp_connections
from tests.support.tshark import fixture, read_tsv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_replay_records_http_match_tshark():
    path = fixture("http", "pipelined-requests.pcap")
    recs = replay_records(path)
    rows = read_tsv(path)
    uris = [r["http.request.uri"] for r in rows if r.get("http.request.uri")]
    codes = [r["http.response.code"] for r in rows if r.get("http.response.code")]
    assert [r.path for _, r in recs] == uris
    assert [r.status for _, r in recs] == codes
    assert all(link.protocol == "http" and link.l7_role == 2 for link, _ in recs)


def test_replay_both_sides():
    path = fixture("http", "get.pcap")
    recs = replay_records(path, side="both")
    assert sorted(link.l7_role for link, _ in recs) == [1, 2]


def test_guess_protocol_picks_the_parser_that_takes_the_bytes():
    from protocol import registry
    protos = [p for p in registry.PROTOCOLS if p.module]
    for d, name in (("http", "get.pcap"), ("redis", None), ("postgresql", None)):
        files = sorted(f for f in os.listdir(fixture(d, "")) if f.endswith(("pcap", "pcapng")))
        c = read_tcp_connections(fixture(d, name or files[0]))[0]
        got = guess_protocol(c.chunks, protos)
        assert got is not None and got.name == {"postgresql": "pgsql"}.get(d, d)


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "l7probe.py")] + list(args),
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, L7PROBE_NO_VENV="1"))


def test_cli_replay_prints_the_tables():
    p = _cli("--replay", fixture("http", "get.pcap"), "--proto", "http")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(ln.startswith("|l7_link|0|141.142.228.5|192.150.187.43|80|tcp_server|server|"
                             "http|no_ssl|") for ln in lines)
    rpc = [ln.split("|") for ln in lines if ln.startswith("|l7_rpc|")]
    assert len(rpc) == 1 and rpc[0][12:14] == ["1", "1"]
    tr = [ln.split("|") for ln in lines if ln.startswith("|l7_trace|")]
    assert [(t[10], t[11], t[12]) for t in tr] == [("GET", "/download/CHANGES.bro-aux.txt",
                                                    "200")]


def test_cli_replay_missing_file_is_one_line():
    p = _cli("--replay", "/nonexistent.pcap")
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
