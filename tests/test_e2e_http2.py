"""HTTP/2 end to end, for real, with the probe attached (BPF): the http2/grpc fixtures
played over loopback sockets (tests/support/replayer.py) equal tshark's decoding, on the
server side and on the client side of each connection."""
import os
import re

import pytest

from tests.support.probe import ProbeRun
from tests.support.replayer import finish_replay, start_replay
from tests.support.tshark import FIXTURES
from tests.test_proto_http2 import FILES, expected

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")


@pytest.fixture(scope="module")
def run():
    replayer = start_replay([os.path.join(FIXTURES, p) for p in FILES])
    with ProbeRun(["--proto", "http,http2", "-P", "600", "--trace-limit", "100000",
                   "--capture-bytes", "32768"]) as p:
        replay_out = finish_replay(replayer)
        p.stop()
    ports = {}
    for line in replay_out.splitlines():
        name, _, rest = line.partition(" ")
        ports[os.path.basename(name)] = {int(sp) for _, sp in
                                         re.findall(r"\((\d+), (\d+)\)", rest)}
    yield {"probe": p, "ports": ports}


# Captures whose loopback replay the probe reports exactly as tshark decodes them.  Not
# yet (work left, see protocol/http2/README.md "Known gaps"): h2c_ascii and http2-multi
# (seen from their middle: the kernel rule sees the first HEADERS past its 32 bytes or a
# request it cannot class), dns_over_https (the client's RST_STREAM and the server's
# response cross), http2-keywords (large multi-frame reads).
LOOPBACK_EXACT = [p for p in FILES if os.path.basename(p) not in (
    "h2c_ascii.pcap", "http2-multi.pcap", "dns_over_https.pcap", "http2-keywords__input.pcap")]


@pytest.mark.parametrize("path", LOOPBACK_EXACT, ids=os.path.basename)
@pytest.mark.parametrize("role", ["server", "client"])
def test_fixture_over_loopback_equals_tshark(run, path, role):
    want = expected(os.path.join(FIXTURES, path))
    ports = run["ports"][os.path.basename(path)]
    got = sorted((r["req_method"], r["req_path"], "RST" if r["resp_code"].startswith("RST_")
                  else r["resp_code"])
                 for r in run["probe"].records("l7_trace")
                 if r["l7_role"] == role and int(r["server_port"]) in ports)
    assert got == want
