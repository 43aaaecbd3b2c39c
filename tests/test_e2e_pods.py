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


MEM = 64 << 20       # bytes the memory container allocates (and touches)
CPU_S = 1.0          # CPU seconds it then burns
DIO = 8 << 20        # bytes it writes and reads back with O_DIRECT

WORKER = r"""
import mmap, os, sys, time
d = sys.argv[1]
x = b"x" * %d
open(d + "/allocated", "w").close()
while not os.path.exists(d + "/go"):
    time.sleep(0.05)
t = time.process_time()
while time.process_time() - t < %r:
    pass
buf = mmap.mmap(-1, 1 << 20)
buf.write(b"y" * (1 << 20))
child = os.fork()            # the I/O in a child that ends (and is reaped) before the period
if child == 0:
    fd = os.open(d + "/dio", os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_DIRECT, 0o600)
    for _ in range(%d):
        os.write(fd, buf)
    os.fsync(fd); os.close(fd)
    fd = os.open(d + "/dio", os.O_RDONLY | os.O_DIRECT)
    while os.readv(fd, [buf]) > 0:
        pass
    os.close(fd)
    os._exit(0)
os.waitpid(child, 0)
open(d + "/done", "w").close()
time.sleep(30)
""" % (MEM, CPU_S, DIO >> 20)


def _cgroup_io(pod_path):
    """(read, written) storage bytes of the pod as the kernel counts them: v2 ``io.stat`` of
    its cgroup, else the sum of /proc/PID/io over the processes in its cgroup (v1's
    blkio.throttle counters count nothing on kernels like this one until a throttle rule is
    set)."""
    rd = wr = 0
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        p = root + pod_path + "/io.stat"
        if os.path.exists(p):
            for line in open(p):
                for kv in line.split()[1:]:
                    k, _, v = kv.partition("=")
                    rd += int(v) if k == "rbytes" else 0
                    wr += int(v) if k == "wbytes" else 0
            return rd, wr
    top = "/sys/fs/cgroup/memory" + pod_path
    assert os.path.isdir(top), top
    for d, _, files in os.walk(top):
        for pid in open(os.path.join(d, "cgroup.procs")).read().split():
            try:
                io = dict(l.split(": ") for l in open("/proc/%s/io" % pid).read().splitlines())
            except OSError:
                continue
            rd += int(io["read_bytes"])
            wr += int(io["write_bytes"])
    return rd, wr


def _netdev(pid):
    tx = rx = 0
    for line in open("/proc/%d/net/dev" % pid).read().splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        if name.strip() != "lo":
            rx += int(f[0])
            tx += int(f[8])
    return tx, rx


def _wait_file(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "timed out waiting for %s" % path
        time.sleep(0.05)


def test_pod_table(pods):
    """The pod table's counters move as the pods' own counters move: a 4 MiB download from
    pod A's nginx (network_tx), a container in pod B that allocates 64 MiB (rss, vm), burns
    1 CPU second (cpu) and does 8 MiB of direct I/O (bytes_read/bytes_write follow the pod
    cgroup's own I/O counters)."""
    import subprocess
    from tests.support.podman import BLOB
    env = pods
    pm = env.pm
    a_pid = pm.pid_of(pm.prefix + "-a-nginx")
    b_path = json.loads(pm.run("pod", "inspect", env.b))["CgroupPath"]
    host_dir, inside = pm.tmp("work")
    os.makedirs(host_dir, exist_ok=True)
    os.chmod(host_dir, 0o777)
    with open(os.path.join(host_dir, "worker.py"), "w") as f:
        f.write(WORKER)
    with ProbeRun(["--format", "json", "-P", "1", "--range", "l7_pod_metrics",
                   "--no-ssl"]) as p:
        time.sleep(1.5)
        mark0 = len(p.lines)
        net0 = _netdev(a_pid)
        io0 = _cgroup_io(b_path)
        subprocess.run(["curl", "-s", "-o", "/dev/null", "http://%s:%d/blob" % (env.a_ip, PORT)],
                       check=True, timeout=30)
        pm.start("b-work", ["python3", inside + "/worker.py", inside], pod=env.b)
        _wait_file(os.path.join(host_dir, "allocated"))
        time.sleep(2.5)
        mark1 = len(p.lines)
        open(os.path.join(host_dir, "go"), "w").close()
        _wait_file(os.path.join(host_dir, "done"))
        time.sleep(2.5)
        net1 = _netdev(a_pid)
        io1 = _cgroup_io(b_path)
        time.sleep(1.2)         # one more period: it reports up to now
    rows = [json.loads(l) for l in p.lines if l.startswith("{")]
    assert {r["table"] for r in rows} == {"pod"}, "only the pod table was asked for"
    a = [r for r in rows if r["pod_name"] == env.a]
    b = [r for r in rows if r["pod_name"] == env.b]
    assert a and b, rows[:5]
    assert {(r["pod_ip"], r["container_cnt"]) for r in a} == {(env.a_ip, 1)}
    assert {r["pod_ip"] for r in b} == {env.b_ip}
    # network: pod A sent the 4 MiB blob (plus headers and framing, < 10 %); the sum of its
    # rows is what its namespace's counters moved by (the test's readings bracket the
    # download; other traffic there: none but stray ARP/ND, < 64 KiB)
    tx = sum(r["network_tx"] for r in a)
    assert BLOB <= tx <= BLOB * 1.1, tx
    assert abs(tx - (net1[0] - net0[0])) <= 64 << 10, (tx, net1[0] - net0[0])
    assert sum(r["network_rx"] for r in a) < 256 << 10
    assert sum(r["network_tx"] for r in b) < 64 << 10
    # memory: pod B's rss and vm rise by the 64 MiB (python itself: < 40 MiB more)
    def b_rows(lines):
        return [r for r in (json.loads(l) for l in lines if l.startswith("{"))
                if r["pod_name"] == env.b]
    b_before = b_rows(p.lines[:mark0])
    b_alloc = b_rows(p.lines[mark0:mark1])
    assert b_before and b_alloc, "no pod B rows before / while the worker held its memory"
    base_rss = b_before[-1]["rss"]
    rss = b_alloc[-1]["rss"]
    assert MEM <= rss - base_rss <= MEM + (40 << 20), (rss, base_rss)
    assert max(r["vm"] for r in b) - min(r["vm"] for r in b) >= MEM
    assert max(r["container_cnt"] for r in b) == 2     # nginx + the worker (not infra)
    # cpu: percent of one CPU per ~1 s period: the sum is about the CPU seconds used
    cpu_s = sum(float(r["cpu"]) for r in b) / 100
    assert CPU_S * 0.9 <= cpu_s <= CPU_S + 0.8, cpu_s
    print("pod table: tx %d (netns moved %d), rss +%d, cpu %.2f s, io r/w %d/%d "
          "(cgroup moved %d/%d)" % (tx, net1[0] - net0[0], rss - base_rss, cpu_s,
                                    sum(r["bytes_read"] for r in b),
                                    sum(r["bytes_write"] for r in b),
                                    io1[0] - io0[0], io1[1] - io0[1]))
    # I/O: the 8 MiB written and read back with O_DIRECT (plus metadata and journal
    # writes, < 2 MiB), as the pod cgroup's own counters moved
    rd = sum(r["bytes_read"] for r in b)
    wr = sum(r["bytes_write"] for r in b)
    assert abs(rd - (io1[0] - io0[0])) <= 1 << 20 and abs(wr - (io1[1] - io0[1])) <= 1 << 20, \
        (rd, wr, io0, io1)
    assert DIO <= rd <= DIO + (2 << 20) and DIO <= wr <= DIO + (2 << 20), (rd, wr)
