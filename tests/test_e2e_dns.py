"""DNS end to end: dnsmasq answering a zone the test writes (tests/support/servers.py),
queried by dig over UDP and TCP, by glibc's resolver (getent ahosts: A + AAAA with sendmmsg on
a connected UDP socket) and by dnspython (unconnected UDP, TCP); a forwarded zone answered
SERVFAIL by an upstream.  Truth: each client's own list of queries and dnsmasq's log; both
sides (the clients, dnsmasq as server and as the upstream's client, the upstream)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support.probe import ProbeRun, total
from tests.support.servers import dnsmasq

DIG_UDP = [("ok.test", "A")] * 3 + [("ok.test", "AAAA"), ("no.test", "A"), ("no.test", "A"),
                                     ("x.fail.example", "A"), ("y.fail.example", "A")]
DIG_TCP = [("ok.test", "A"), ("ok.test", "A"), ("no.test", "A")]
GETENT = ["ok.test", "no.test"]
RCODE = {"ok.test": "NOERROR", "two.test": "NOERROR"}

PYCLIENT = r"""
import dns.message, dns.query
for name, rdtype in (("two.test", "A"), ("two.test", "A"), ("gone.test", "MX")):
    dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", timeout=3)
dns.query.tcp(dns.message.make_query("ok.test", "AAAA"), "127.0.0.1", timeout=3)
print("done")
"""


@pytest.fixture(scope="module")
def dns_run():
    with dnsmasq(sys.executable) as d:
        probe = ProbeRun(["--proto", "dns", "-P", "60", "--no-ssl"], ready_timeout=240)
        res = {"dns": d, "probe": probe, "pids": {}, "log": {}}
        try:
            def phase(name, cmds):
                before = len(d.log_queries())
                pids = []
                for cmd in cmds:
                    p = subprocess.Popen(d.ns(cmd), stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
                    out, err = p.communicate(timeout=60)
                    assert p.returncode in (0, 2), (cmd, out, err)   # getent no.test: 2
                    pids.append(p.pid)
                time.sleep(0.3)
                res["pids"][name] = pids
                res["log"][name] = d.log_queries()[before:]
            phase("dig", [["dig", "@127.0.0.1", n, t, "+tries=1", "+time=3"]
                          for n, t in DIG_UDP])
            phase("dig+tcp", [["dig", "@127.0.0.1", n, t, "+tcp", "+tries=1", "+time=3"]
                              for n, t in DIG_TCP])
            phase("getent", [["getent", "ahosts", n] for n in GETENT])
            phase("dnspython", [[sys.executable, "-c", PYCLIENT]])
            time.sleep(1.5)
        finally:
            probe.stop()
        res["forwarded"] = d.log_lines(".fail.example to 127.0.0.1")
        res["servfail"] = d.log_lines("reply error is SERVFAIL")
        res["nxdomain"] = d.log_lines(" is NXDOMAIN")
        res["all_queries"] = d.log_queries()
        yield res


def rcode(name):
    """What dnsmasq answers for a name (any other name of the local zone: NXDOMAIN)."""
    if name.endswith(".fail.example"):
        return "SERVFAIL"
    return RCODE.get(name, "NXDOMAIN")


def rows(run, **where):
    return [r for r in run["probe"].records("l7_rpc_api")
            if all(str(r[k]) == str(v) for k, v in where.items())]


def per_api(rs):
    out = {}
    for r in rs:
        out[r["api"]] = out.get(r["api"], 0) + int(r["req_count"])
    return out


def client_rows(run, tool, l4):
    pids = {str(p) for p in run["pids"][tool]}
    return [r for r in rows(run, l4_role=l4, l7_role="client", server_port=53)
            if r["tgid"] in pids]


@pytest.mark.parametrize("tool,l4", [("dig", "udp"), ("dig+tcp", "tcp_client"),
                                     ("getent", "udp")])
def test_client_side_exact(dns_run, tool, l4):
    queries = dns_run["log"][tool]
    rs = client_rows(dns_run, tool, l4)
    assert total(rs, "req_count") == total(rs, "resp_count") == len(queries)
    want = {}
    for t, _ in queries:
        want[t] = want.get(t, 0) + 1
    assert per_api(rs) == want
    nx = sum(1 for _, n in queries if rcode(n) == "NXDOMAIN")
    sf = sum(1 for _, n in queries if rcode(n) == "SERVFAIL")
    assert total(rs, "client_err_count") == nx
    assert total(rs, "server_err_count") == sf


def test_dig_queries_are_the_ones_sent(dns_run):
    assert sorted(dns_run["log"]["dig"]) == sorted((t, n) for n, t in DIG_UDP)
    assert sorted(dns_run["log"]["dig+tcp"]) == sorted((t, n) for n, t in DIG_TCP)
    # glibc: A and AAAA for each name (sendmmsg), in one connected UDP socket per process
    assert sorted(dns_run["log"]["getent"])[:4] == sorted(
        [("A", "no.test"), ("AAAA", "no.test"), ("A", "ok.test"), ("AAAA", "ok.test")])


def test_dnspython_udp_and_tcp(dns_run):
    pid = str(dns_run["pids"]["dnspython"][0])
    udp = [r for r in rows(dns_run, tgid=pid, l4_role="udp", l7_role="client")]
    tcp = [r for r in rows(dns_run, tgid=pid, l4_role="tcp_client", l7_role="client")]
    assert per_api(udp) == {"A": 2, "MX": 1}
    assert total(udp, "resp_count") == 3 and total(udp, "client_err_count", api="MX") == 1
    assert per_api(tcp) == {"AAAA": 1} and total(tcp, "resp_count") == 1
    assert all(r["client_ip"] == "no_ip" and r["server_ip"] == "127.0.0.1" for r in udp)


def test_server_side_matches_dnsmasq_log(dns_run):
    pid = str(dns_run["dns"].pid)
    srv = [r for r in rows(dns_run, tgid=pid, l7_role="server")]
    assert {r["l4_role"] for r in srv} == {"udp", "tcp_server"}
    queries = dns_run["all_queries"]
    assert total(srv, "req_count") == total(srv, "resp_count") == len(queries)
    want = {}
    for t, _ in queries:
        want[t] = want.get(t, 0) + 1
    assert per_api(srv) == want
    assert total(srv, "client_err_count") == dns_run["nxdomain"]
    assert total(srv, "server_err_count") == dns_run["servfail"] == 2
    # UDP links: upstream's key, server = the peer (each client port), client no_ip
    assert all(r["client_ip"] == "no_ip" for r in srv if r["l4_role"] == "udp")


def test_forwarding_both_sides(dns_run):
    """dnsmasq forwards the two *.fail.example queries and relays the SERVFAIL.  The
    responder sat in recvfrom() when the probe attached: the socket tracepoints (the default
    hooks) see that syscall's datagram all the same, since they fire when the data arrives
    (syscall hooks would miss it: its entry came before the probe).  The responder's
    unconnected socket receives each query before the kernel could tell its sender: the
    answer's address and DNS id place it (pipeline/udp.py)."""
    up = str(dns_run["dns"].upstream_port)
    fwd = rows(dns_run, tgid=dns_run["dns"].pid, l7_role="client", server_port=up)
    assert total(fwd, "req_count") == total(fwd, "resp_count") == dns_run["forwarded"] == 2
    assert total(fwd, "server_err_count") == 2
    pid = dns_run["dns"].responder_pid
    resp = rows(dns_run, tgid=pid, l7_role="server")
    assert per_api(resp) == {"A": 2} and total(resp, "server_err_count") == 2
    rpc = [r for r in dns_run["probe"].records("l7_rpc")
           if r["tgid"] == str(pid) and r["l7_role"] == "server"]
    assert total(rpc, "resp_count") == 2 and total(rpc, "req_count") == 2
