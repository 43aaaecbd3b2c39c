"""Real Podman pods (tests/support/podman.py): who is who in JSON records, addresses as seen
inside the pods, --pod and --container scoping, containers started after the probe, a
keep-alive connection opened in a pod before the probe started, and the pod table.

Two pods, each with nginx and (started while the probe runs) a curl container; a curl on
the host (outside any container) talks to pod A's nginx through the pod network.
"""
import json
import os
import time

import pytest

from tests.support.podman import Podman
from tests.support.probe import ProbeRun

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, podman)")

PORT = 8080          # the same port in both pods: their network namespaces are distinct
N_A, N_B, N_HOST = 4, 6, 3


class Pods:
    pass


@pytest.fixture(scope="module")
def pods():
    pm = Podman()
    try:
        env = Pods()
        env.pm = pm
        env.a, env.a_id = pm.pod("a")
        env.b, env.b_id = pm.pod("b")
        env.a_nginx = pm.nginx("a-nginx", env.a, PORT)
        env.b_nginx = pm.nginx("b-nginx", env.b, PORT)
        env.a_ip = pm.pod_ip(env.a)
        env.b_ip = pm.pod_ip(env.b)
        yield env
    finally:
        pm.close()


def _curl_cmd(ip, n, delay=0.0):
    """curl with n requests on one keep-alive connection, 4 a second (so that it lives
    long enough to be looked up), after ``delay`` seconds (exec: same process)."""
    url = "http://%s:%d/" % (ip, PORT)
    cmd = "exec curl -s -o /dev/null --rate 4/s %s" % " ".join([url] * n)
    if delay:
        cmd = "sleep %s; %s" % (delay, cmd)
    return ["sh", "-c", cmd]


def _traffic(env, tag, delay=0.0):
    """One curl container per pod (started now) plus a curl on the host; returns the
    names of the two containers."""
    import subprocess
    a = "a-curl-%s" % tag
    b = "b-curl-%s" % tag
    env.pm.start(a, _curl_cmd(env.a_ip, N_A, delay), pod=env.a)
    env.pm.start(b, _curl_cmd(env.b_ip, N_B, delay), pod=env.b)
    subprocess.run(_curl_cmd(env.a_ip, N_HOST, delay), check=True, timeout=30)
    for name in (a, b):
        env.pm.run("wait", env.pm.prefix + "-" + name, timeout=60)
    return env.pm.prefix + "-" + a, env.pm.prefix + "-" + b


def _json(p, table="l7_rpc"):
    out = []
    for line in p.lines:
        if line.startswith("{"):
            rec = json.loads(line)
            if rec["table"] == table:
                out.append(rec)
    return out


def _probe(*extra):
    return ProbeRun(["--format", "json", "-P", "1", "--proto", "http", "--range",
                     "l7_rpc_metrics", "--no-ssl"] + list(extra))


def _reqs(recs, **where):
    return sum(int(r["req_count"]) for r in recs
               if all(r[k] == v for k, v in where.items()))


def test_pod_labels_and_addresses(pods):
    env = pods
    a_worker = env.pm.pid_of(env.pm.prefix + "-a-nginx")
    with _probe() as p:
        a_curl, b_curl = _traffic(env, "lab")
        time.sleep(2.5)
    recs = [r for r in _json(p) if r["req_count"] != 0]
    mine = [r for r in recs if r["pod"] in (env.a, env.b) or
            (r["comm"] == "curl" and r["server_ip"] == env.a_ip)]
    by = {}
    for r in mine:
        by.setdefault((r["container_name"], r["comm"], r["client_ip"], r["server_ip"],
                       r["l4_role"]), []).append(r)
    # the in-pod clients: labels of their container and pod, addresses of the pod
    for name, pod, pod_id, ip, n in ((a_curl, env.a, env.a_id, env.a_ip, N_A),
                                     (b_curl, env.b, env.b_id, env.b_ip, N_B)):
        rs = [r for r in mine if r["container_name"] == name]
        assert rs, "no records of %s: %s" % (name, mine)
        assert {(r["comm"], r["pod"], r["pod_id"], r["pod_namespace"], r["client_ip"],
                 r["server_ip"], r["server_port"], r["l4_role"]) for r in rs} == \
            {("curl", pod, pod_id, "", ip, ip, PORT, "tcp_client")}, rs
        assert all(len(r["container_id"]) == 64 for r in rs)
        assert _reqs(rs) == n
    # the servers: nginx in each pod, clients from inside the pod and (A) from the host
    for nginx_cid, name, pod, ip, n_in, n_out in (
            (env.a_nginx, env.pm.prefix + "-a-nginx", env.a, env.a_ip, N_A, N_HOST),
            (env.b_nginx, env.pm.prefix + "-b-nginx", env.b, env.b_ip, N_B, 0)):
        rs = [r for r in mine if r["container_name"] == name]
        assert {(r["comm"], r["container_id"], r["pod"], r["server_ip"], r["server_port"],
                 r["l4_role"]) for r in rs} == \
            {("nginx", nginx_cid, pod, ip, PORT, "tcp_server")}, rs
        assert _reqs(rs, client_ip=ip) == n_in
        assert _reqs([r for r in rs if r["client_ip"] != ip]) == n_out
    # the host's curl: no container, no pod; it reaches pod A's address
    host = [r for r in mine if r["comm"] == "curl" and r["container_id"] == ""]
    assert host and {(r["pod"], r["container_name"], r["server_ip"], r["l4_role"])
                     for r in host} == {("", "", env.a_ip, "tcp_client")}
    assert _reqs(host) == N_HOST
    assert a_worker  # (the nginx master's pid: its worker is its child)


def test_pod_and_container_scope(pods):
    """--pod A and --container <B's nginx> (short id), both started before the curl
    containers: exactly those processes, the new containers of pod A included."""
    env = pods
    with _probe("--pod", env.a) as pa, _probe("--container", env.b_nginx[:12]) as pb:
        a_curl, b_curl = _traffic(env, "scope", delay=2.5)
        time.sleep(2.5)
    ra = [r for r in _json(pa) if r["req_count"] != 0]
    rb = [r for r in _json(pb) if r["req_count"] != 0]
    assert {r["container_name"] for r in ra} == {env.pm.prefix + "-a-nginx", a_curl}, ra
    assert {r["pod"] for r in ra} == {env.a}
    assert _reqs(ra, container_name=a_curl) == N_A
    # pod A's nginx served its pod's curl; the host's curl is not in the pod, but the
    # server's side of that connection is
    assert _reqs(ra, container_name=env.pm.prefix + "-a-nginx") == N_A + N_HOST
    assert {r["container_id"] for r in rb} == {env.b_nginx}, rb
    assert _reqs(rb) == N_B


KEEP_CLIENT = r"""
import http.client, os, sys, time
c = http.client.HTTPConnection(sys.argv[1], %d, timeout=30)
c.request("GET", "/before"); c.getresponse().read()
open("%%s/opened" %% sys.argv[2], "w").close()
deadline = time.time() + 60
while not os.path.exists("%%s/go" %% sys.argv[2]) and time.time() < deadline:
    time.sleep(0.1)
for i in range(int(sys.argv[3])):
    c.request("GET", "/after/%%d" %% i); c.getresponse().read()
time.sleep(3)
""" % PORT


def test_keepalive_opened_in_pod_before_probe(pods):
    """A connection opened inside pod A before the probe starts (sock_diag inside the
    pod's network namespace) is reported with the pod-side addresses, both ends."""
    env = pods
    n = 5
    host_dir, inside = env.pm.tmp("keep")
    os.makedirs(host_dir, exist_ok=True)
    os.chmod(host_dir, 0o777)
    with open(os.path.join(host_dir, "client.py"), "w") as f:
        f.write(KEEP_CLIENT)
    name = env.pm.prefix + "-a-keep"
    env.pm.start("a-keep", ["python3", inside + "/client.py", env.a_ip, inside, str(n)],
                 pod=env.a)
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(host_dir, "opened")):
        assert time.monotonic() < deadline, "the client in the pod did not connect"
        time.sleep(0.1)
    client_pid = env.pm.pid_of(name)
    with _probe() as p:
        open(os.path.join(host_dir, "go"), "w").close()
        env.pm.run("wait", name, timeout=60)
        time.sleep(1.5)
    recs = [r for r in _json(p) if r["req_count"] != 0 and r["pod"] == env.a]
    cl = [r for r in recs if r["tgid"] == client_pid]
    assert {(r["container_name"], r["client_ip"], r["server_ip"], r["server_port"],
             r["l4_role"]) for r in cl} == {(name, env.a_ip, env.a_ip, PORT, "tcp_client")}, recs
    assert _reqs(cl) == n
    srv = [r for r in recs if r["container_id"] == env.a_nginx]
    assert {(r["client_ip"], r["server_ip"], r["l4_role"]) for r in srv} == \
        {(env.a_ip, env.a_ip, "tcp_server")}, recs
    assert _reqs(srv) == n
