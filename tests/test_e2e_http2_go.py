"""HTTP/2 over TLS from Go, for real: a Go net/http HTTPS server and client (the standard
library's h2 over ALPN, concurrent streams on one connection), plain and stripped builds,
through the Go crypto/tls uprobes: exact counts per side with ssl=ssl, per path, errors.
gRPC over TLS: a real grpcio client (its BoringSSL is not visible to uprobes: no symbols)
calling the Go server's gRPC wire format (goh2 grpcserver): the server side exact per
method, grpc statuses and the error split."""
import collections
import os
import subprocess
import sys
import time

import pytest

from tests.support import grpcapp
from tests.support.goapps import TLS_APPS, build_go
from tests.support.probe import ProbeRun
from tests.support.servers import free_port, make_self_signed_cert

START_TIMEOUT = 240       # s: BPF compile and load on a busy 2-core machine
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

PATHS = ["/", "/a/b", "/status/404", "/status/500", "/status/201"]
ROUNDS = 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("goh2")
    crt, key = make_self_signed_cert(str(d))
    bins = {"go": build_go(TLS_APPS / "goh2", d / "goh2"),
            "gos": build_go(TLS_APPS / "goh2", d / "goh2-s", strip=True)}
    servers, ports, outs = [], {}, {}
    try:
        for name, exe in bins.items():
            ports[name] = free_port()
            p = subprocess.Popen([str(exe), "server", "-addr", "127.0.0.1:%d" % ports[name],
                                  "-cert", crt, "-key", key], stdout=subprocess.PIPE,
                                 text=True)
            assert p.stdout.readline().startswith("listening")
            servers.append(p)
        ports["grpc"] = free_port()
        p = subprocess.Popen([str(bins["go"]), "grpcserver", "-addr",
                              "127.0.0.1:%d" % ports["grpc"], "-cert", crt, "-key", key],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("listening")
        servers.append(p)
        with ProbeRun(["--proto", "http2", "-P", "600", "--trace-limit", "0"],
                      ready_timeout=START_TIMEOUT) as probe:
            for name, exe in bins.items():
                urls = ["https://127.0.0.1:%d%s" % (ports[name], path)
                        for _ in range(ROUNDS) for path in PATHS]
                # started after the probe: found from its exec record within the delay
                c = subprocess.run([str(exe), "client", "-c", "4", "-delay", "2s"] + urls,
                                   capture_output=True, text=True, timeout=120)
                outs[name] = (c.returncode, c.stdout + c.stderr)
            g = subprocess.run([sys.executable, "-m", "tests.support.grpcapp", "client",
                                str(ports["grpc"]), crt], capture_output=True, text=True,
                               timeout=120, cwd=ROOT)
            outs["grpc"] = (g.returncode, g.stdout + g.stderr)
            time.sleep(1)
            probe.stop()
    finally:
        for p in servers:
            p.kill()
            p.wait()
    yield {"probe": probe, "ports": ports, "outs": outs}


@pytest.mark.parametrize("name", ["go", "gos"])
@pytest.mark.parametrize("role", ["server", "client"])
def test_go_h2_over_tls_exact(run, name, role):
    rc, out = run["outs"][name]
    assert rc == 0 and "proto=HTTP/2.0" in out, out
    port = str(run["ports"][name])
    probe = run["probe"]
    n = ROUNDS * len(PATHS)
    rpc = [r for r in probe.records("l7_rpc") if r["server_port"] == port and
           r["l7_role"] == role]
    assert rpc and all(r["ssl"] == "ssl" and r["protocol"] == "http2" for r in rpc), \
        probe.err_lines[-30:]
    assert sum(int(r["req_count"]) for r in rpc) == n
    assert sum(int(r["resp_count"]) for r in rpc) == n
    assert sum(int(r["err_count"]) for r in rpc) == 2 * ROUNDS
    api = collections.Counter()
    split = [0, 0]
    for r in probe.records("l7_rpc_api"):
        if r["server_port"] == port and r["l7_role"] == role:
            api[r["api"]] += int(r["req_count"])
            split[0] += int(r["client_err_count"])
            split[1] += int(r["server_err_count"])
    assert api == collections.Counter({"GET " + p: ROUNDS for p in PATHS})
    assert split == [ROUNDS, ROUNDS]


def test_grpc_over_tls_server_side_exact(run):
    rc, out = run["outs"]["grpc"]
    assert rc == 0 and "done" in out, out
    port = str(run["ports"]["grpc"])
    probe = run["probe"]
    client_codes = {"NOT_FOUND", "INVALID_ARGUMENT"}
    want = collections.defaultdict(lambda: [0, 0, 0])
    for method, _, _, code in grpcapp.CALLS:
        w = want["/%s/%s" % (grpcapp.SERVICE, method)]
        w[0] += 1
        if code != "OK":
            w[1 if code in client_codes else 2] += 1
    got = collections.defaultdict(lambda: [0, 0, 0])
    for r in probe.records("l7_rpc_api"):
        if r["server_port"] == port:
            assert (r["l7_role"], r["ssl"], r["protocol"]) == ("server", "ssl", "http2")
            assert r["req_count"] == r["resp_count"]
            g = got[r["api"]]
            g[0] += int(r["req_count"])
            g[1] += int(r["client_err_count"])
            g[2] += int(r["server_err_count"])
    assert dict(got) == dict(want)
