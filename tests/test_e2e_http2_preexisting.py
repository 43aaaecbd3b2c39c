"""An h2c connection to nginx opened (and its HPACK tables filled) before the probe
started: its later streams are counted exactly on both sides; paths that refer to table
entries made before the probe are <unknown>, never wrong; paths sent as new literals
after the start are decoded, also when they are referenced again."""
import collections
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.probe import ProbeRun
from tests.support.servers import nginx

START_TIMEOUT = 240       # s: BPF compile and load on a busy 2-core machine
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

BEFORE = ["/", "/status/404", "/status/201"]                    # fill the tables
STATIC = {"/", "/index.html"}      # :path values in HPACK's static table: always known
AFTER = ["/status/404", "/", "/new/1", "/new/1", "/status/201", "/new/2", "/status/404",
         "/new/2"]

CLIENT = textwrap.dedent(r"""
    import socket, sys
    from hpack import Encoder
    port = int(sys.argv[1])
    before, after = sys.argv[2].split(","), sys.argv[3].split(",")
    s = socket.create_connection(("127.0.0.1", port))
    enc = Encoder()
    def frame(t, flags, sid, payload):
        return len(payload).to_bytes(3, "big") + bytes((t, flags)) + sid.to_bytes(4, "big") + payload
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
    buf = b""
    sid = [1]
    def request(path):
        block = enc.encode([(":method", "GET"), (":path", path), (":scheme", "http"),
                            (":authority", "127.0.0.1")])
        s.sendall(frame(1, 5, sid[0], block))      # END_STREAM | END_HEADERS
        want = sid[0]
        sid[0] += 2
        global buf
        while True:
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                d = s.recv(65536)
                if not d:
                    sys.exit("closed")
                buf += d
            n = int.from_bytes(buf[:3], "big")
            t, fl, fsid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
            buf = buf[9 + n:]
            if t == 4 and not fl & 1:
                s.sendall(frame(4, 1, 0, b""))        # SETTINGS ack
            if t in (0, 1) and fl & 1 and fsid == want:
                return
    for p in before:
        request(p)
    print("ready", flush=True)
    sys.stdin.readline()
    for p in after:
        request(p)
    print("done", flush=True)
    sys.stdin.readline()
""")


@pytest.fixture(scope="module")
def run():
    with nginx(http2=True) as ng:
        cl = subprocess.Popen([sys.executable, "-c", CLIENT, str(ng.h2c_port), ",".join(BEFORE),
                               ",".join(AFTER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
        try:
            assert cl.stdout.readline().strip() == "ready"
            with ProbeRun(["--proto", "http2", "-P", "600", "-p",
                           ",".join(str(p) for p in ng.pids() + [cl.pid])],
                          ready_timeout=START_TIMEOUT) as p:
                cl.stdin.write("go\n")
                cl.stdin.flush()
                assert cl.stdout.readline().strip() == "done"
                time.sleep(0.5)
                p.stop()
        finally:
            cl.kill()
            cl.wait()
        yield {"probe": p, "port": str(ng.h2c_port)}


@pytest.mark.parametrize("role", ["server", "client"])
def test_preexisting_connection_counted_exactly_paths_never_wrong(run, role):
    probe, port = run["probe"], run["port"]
    rpc = [r for r in probe.records("l7_rpc") if r["server_port"] == port and
           r["l7_role"] == role]
    assert rpc and all(r["protocol"] == "http2" for r in rpc), probe.err_lines[-20:]
    assert sum(int(r["req_count"]) for r in rpc) == len(AFTER)
    assert sum(int(r["resp_count"]) for r in rpc) == len(AFTER)
    # /status/404 and /new/* (no such location) are 404s
    assert sum(int(r["err_count"]) for r in rpc) == sum(
        p == "/status/404" or p.startswith("/new") for p in AFTER)
    api = collections.Counter()
    for r in probe.records("l7_rpc_api"):
        if r["server_port"] == port and r["l7_role"] == role:
            api[r["api"]] += int(r["req_count"])
    new = [p for p in AFTER if p not in BEFORE or p in STATIC]
    assert api == collections.Counter(["GET " + p for p in new] +
                                      ["GET <unknown>"] * (len(AFTER) - len(new)))
    traces = [r for r in probe.records("l7_trace") if r["server_port"] == port and
              r["l7_role"] == role]
    got = sorted((r["req_path"], r["resp_code"]) for r in traces)
    want = sorted((p if p not in BEFORE or p in STATIC else "<unknown>",
                   "404" if p == "/status/404" else "201" if p == "/status/201" else
                   "404" if p.startswith("/new") else "200") for p in AFTER)
    assert got == want
    assert any("HPACK state of a connection not seen from its start" in ln
               for ln in probe.err_lines)
