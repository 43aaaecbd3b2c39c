"""A real gRPC server and client (grpcio from PyPI, tests/support/grpcapp.py) with the probe
attached (BPF), in the clear: unary, server-streaming, client-streaming and bidi calls, some
with non-OK statuses, one call at a time and from several threads sharing one channel (gRPC's
C core then batches many streams' frames into one sendmsg of dozens of iovecs, more than the
kernel's first copy walks: bpf/probe.c gather_body).  Both sides (both are grpcio) exact per
method: calls, responses, and the error split by the gRPC code table."""
import collections
import os
import subprocess
import sys
import time

import pytest

from tests.support import grpcapp
from tests.support.probe import ProbeRun
from tests.support.servers import make_self_signed_cert

START_TIMEOUT = 240       # s: BPF compile and load on a busy 2-core machine
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CYGRPC = os.path.realpath(grpcapp.grpc._cython.cygrpc.__file__)
PORTS = range(47310, 47400)    # loopback ports tried in turn (others' TIME_WAITs hold some)
CLIENT_CODES = {"NOT_FOUND", "INVALID_ARGUMENT"}
# client runs: (rounds of CALLS, threads on one channel)
RUNS = [(2, 1), (3, 4)]


def expected():
    """api -> [calls, client errors, server errors] of every client run."""
    want = collections.defaultdict(lambda: [0, 0, 0])
    times = sum(rounds * threads for rounds, threads in RUNS)
    for method, _, _, code in grpcapp.CALLS:
        w = want["/%s/%s" % (grpcapp.SERVICE, method)]
        w[0] += times
        if code != "OK":
            w[1 if code in CLIENT_CODES else 2] += times
    return dict(want)


def start_server(cert=None, key=None):
    """(process, port): the grpc server on the first free port of PORTS."""
    for port in PORTS:
        args = [sys.executable, "-m", "tests.support.grpcapp", "server", str(port)]
        if cert:
            args += [cert, key]
        srv = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        line = srv.stdout.readline()
        if line.strip() == str(port):
            return srv, port
        srv.kill()
        srv.wait()
    raise RuntimeError("no free port for the grpc server in %s" % PORTS)


def run_clients(port, cert="-"):
    outs = []
    for rounds, threads in RUNS:
        c = subprocess.run([sys.executable, "-m", "tests.support.grpcapp", "client",
                            str(port), cert, str(rounds), str(threads)],
                           capture_output=True, text=True, timeout=180, cwd=ROOT)
        outs.append((c.returncode, c.stdout + c.stderr))
    return outs


def per_api(probe, port, role):
    got = collections.defaultdict(lambda: [0, 0, 0])
    for r in probe.records("l7_rpc_api"):
        if r["server_port"] == str(port) and r["l7_role"] == role:
            assert r["protocol"] == "http2"
            assert r["req_count"] == r["resp_count"], r
            g = got[r["api"]]
            g[0] += int(r["req_count"])
            g[1] += int(r["client_err_count"])
            g[2] += int(r["server_err_count"])
    return dict(got)


def link_counts(probe, port, role):
    rpc = [r for r in probe.records("l7_rpc") if r["server_port"] == str(port) and
           r["l7_role"] == role]
    return ({r["ssl"] for r in rpc}, sum(int(r["req_count"]) for r in rpc),
            sum(int(r["resp_count"]) for r in rpc), sum(int(r["err_count"]) for r in rpc))


@pytest.fixture(scope="module")
def clear():
    srv, port = start_server()
    try:
        with ProbeRun(["--proto", "http2", "-P", "600", "--trace-limit", "0"],
                      ready_timeout=START_TIMEOUT) as probe:
            outs = run_clients(port)
            time.sleep(1)
            probe.stop()
    finally:
        srv.communicate("", timeout=30)
    yield {"probe": probe, "outs": outs, "port": port}


@pytest.mark.parametrize("role", ["server", "client"])
def test_grpcio_in_the_clear_exact_per_method(clear, role):
    for rc, out in clear["outs"]:
        assert rc == 0 and "done" in out, out
    probe, port = clear["probe"], clear["port"]
    want = expected()
    assert per_api(probe, port, role) == want, probe.err_lines[-20:]
    calls = sum(w[0] for w in want.values())
    errors = sum(w[1] + w[2] for w in want.values())
    assert link_counts(probe, port, role) == ({"no_ssl"}, calls, calls, errors)


# ---- over TLS: grpcio's BoringSSL cannot be traced (README "TLS"): said once, nothing wrong

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpctls")
    crt, key = make_self_signed_cert(str(d))
    srv, port = start_server(crt, key)
    try:
        with ProbeRun(["--proto", "http2", "-P", "600", "--trace-limit", "0"],
                      ready_timeout=START_TIMEOUT) as probe:
            outs = run_clients(port, crt)
            time.sleep(1)
            probe.stop()
    finally:
        srv.communicate("", timeout=30)
    yield {"probe": probe, "outs": outs, "port": port}


def test_grpcio_over_tls_said_once_never_wrong(tls):
    for rc, out in tls["outs"]:
        assert rc == 0 and "done" in out, out
    probe, port = tls["probe"], str(tls["port"])
    # once for the file (the server was there before the probe, the clients came after)
    said = [line for line in probe.err_lines
            if "TLS: skipping %s " % CYGRPC in line]
    assert len(said) == 1, probe.err_lines
    assert "BoringSSL is linked in statically without symbols" in said[0]
    assert "PyInit_cygrpc" in said[0] and "no .symtab" in said[0]
    # the ciphertext is never taken for a protocol, and no plaintext is attributed to it
    assert not [r for t in ("l7_rpc", "l7_rpc_api", "l7_link", "l7_trace")
                for r in probe.records(t) if r.get("server_port") == port]
