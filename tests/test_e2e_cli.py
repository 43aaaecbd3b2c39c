"""Standalone options end to end: --format json, --range, --proto, --pid, --duration (the
partial last period is reported), SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.probe import ProbeRun, total
from tests.support.servers import nginx, redis_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")


def _curl(ng, path, n=1):
    for _ in range(n):
        subprocess.run(["curl", "-s", "-o", "/dev/null", ng.url(path)], timeout=30, check=True)


def test_json_format_range_and_duration():
    with nginx() as ng:
        p = ProbeRun(["--format", "json", "--range", "l7_rpc_metrics", "--proto", "http",
                      "-P", "60", "--duration", "8"])
        started = time.time()
        _curl(ng, "/status/404", 3)
        assert p.proc.wait(60) == 0, p.err_lines
        assert time.time() - started < 15
        p.stop()
        recs = [json.loads(l) for l in p.lines if l.strip()]
        # a 60 s period never elapsed: everything comes from the final partial report
        assert recs, p.err_lines
        assert {r["table"] for r in recs} <= {"l7_rpc", "l7_rpc_api"}
        server = [r for r in recs if r["table"] == "l7_rpc_api" and r["l7_role"] == "server"
                  and r["server_port"] == ng.port]
        assert sum(r["req_count"] for r in server) == 3
        assert {r["api"] for r in server} == {"GET /status/404"}
        assert all(r["comm"] == "nginx" for r in server)
        assert all("container_id" in r for r in server)


def test_pid_filter_and_proto_filter():
    with nginx() as a, nginx() as b, redis_server() as rs:
        with ProbeRun(["-P", "1", "--proto", "http", "-p", ",".join(map(str, a.pids()))]) as p:
            time.sleep(0.5)
            _curl(a, "/", 2)
            _curl(b, "/", 2)
            rs.cli("SET", "k", "v")
            time.sleep(1.5)
        tgids = {int(r["tgid"]) for r in p.records("l7_rpc")}
        assert tgids and tgids <= set(a.pids())
        rows = [r for r in p.records("l7_rpc") if r["server_port"] == str(a.port)]
        assert total(rows, "req_count") == 2
        assert not [r for r in p.records("l7_link") if r["protocol"] != "http"]


def test_sigterm_reports_and_exits_zero():
    with nginx() as ng:
        p = ProbeRun(["-P", "60"])
        _curl(ng, "/", 2)
        time.sleep(0.5)
        t = time.time()
        rc = p.stop(signal.SIGTERM)
        assert rc == 0
        assert time.time() - t < 5
        rows = [r for r in p.records("l7_rpc") if r["server_port"] == str(ng.port)
                and r["l7_role"] == "server"]
        assert total(rows, "req_count") == 2


@pytest.mark.parametrize("env_extra, said, requests, errors", [
    # kernels without socket tracepoints or bpf_task_pt_regs: one tracepoint per syscall
    ({"L7PROBE_HOOKS": "syscalls"}, "capture: syscall tracepoints", [("/status/500", 3)], 3),
    # the raw_syscalls pair
    ({"L7PROBE_HOOKS": "raw"}, "capture: raw_syscalls tracepoints", [("/status/404", 2)], 2),
    # kernels before 5.8 have no ring buffer: records go through a perf buffer
    ({"L7PROBE_PERF_BUFFER": "1"}, "output: perf buffer", [("/status/404", 4), ("/", 2)], 4),
], ids=["per-syscall-tracepoints", "raw-syscalls", "perf-buffer"])
def test_capture_fallbacks(env_extra, said, requests, errors):
    """The fallbacks of older kernels, forced by their variables, report exactly."""
    env = dict(os.environ, **env_extra)
    with nginx() as ng:
        with ProbeRun(["-P", "1", "--proto", "http"], env=env) as p:
            for path, n in requests:
                _curl(ng, path, n)
            time.sleep(1.5)
        assert any(said in l for l in p.err_lines)
        rows = [r for r in p.records("l7_rpc") if r["server_port"] == str(ng.port)
                and r["l7_role"] == "server"]
        assert total(rows, "req_count") == sum(n for _, n in requests)
    assert total(rows, "err_count") == errors


@pytest.mark.parametrize("hooks", ["sock", "syscalls"])
def test_kernel_map_forgets_processes_that_exit_without_close(hooks, monkeypatch):
    """A process that exits with its sockets open makes no close() syscall.  The socket
    hooks see its sockets end all the same (tcp:tcp_destroy_sock); with syscall hooks its
    entries in the kernel's connection map stay until they are swept (Capture.sweep_dead,
    run every 30 s by the probe), so the map cannot fill up over a long run."""
    from bpf.loader import Capture
    monkeypatch.setenv("L7PROBE_HOOKS", hooks)
    cap = Capture()
    cap.load()
    try:
        assert cap.features["hooks"] == hooks
        cap.set_config(0xffff, None, True)
        with nginx() as ng:
            code = ("import socket, os, sys; s = socket.create_connection(('127.0.0.1', %d)); "
                    "s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); s.recv(100); "
                    "print(os.getpid(), flush=True); sys.stdin.read(); os._exit(0)" % ng.port)
            child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
            pid = int(child.stdout.readline())
            assert pid in {k.tgid for k in cap.conns.keys()}, "its connection is tracked"
            child.stdin.close()
            assert child.wait(30) == 0
            time.sleep(0.5)
        tgids = {k.tgid for k in cap.conns.keys()}
        if hooks == "sock":
            assert pid not in tgids, "the exited client's socket ended: its entry goes"
            return
        dead = {t for t in tgids if not os.path.exists("/proc/%d" % t)}
        assert pid in dead, "the exited client's connection should still be in the map"
        n = cap.sweep_dead(lambda t: os.path.exists("/proc/%d" % t))
        assert n >= len(dead)
        assert not {k.tgid for k in cap.conns.keys()} & dead
    finally:
        cap.close()


def test_compiler_freed_once_loaded():
    """Capture.load frees BCC's compiled module (bpf/loader.py _drop_compiler): every TLS
    uprobe program is loaded beforehand, the maps work on fds of their own, and close()
    closes those fds (tests/test_e2e_tls.py attaches TLS libraries after it, as the probe
    does when a TLS process appears)."""
    from bpf.loader import Capture
    from bpf.tls_attach import PROGRAMS
    cap = Capture()
    cap.load()
    try:
        assert cap.bpf.module is None
        assert {fn.encode() for fn in PROGRAMS} <= set(cap.bpf.funcs)
        cap.set_config(0xffff, None, True)
        assert cap.config[0].proto_flags == 0xffff
        fds = list(cap._map_fds)
        assert fds and all(os.fstat(fd) for fd in fds)
    finally:
        cap.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_no_kernel_symbol_cache_after_load():
    """Capture.load decides on raw tracepoints without BCC's kernel symbol cache
    (BPF.support_raw_tracepoint reads all of /proc/kallsyms into it and keeps it: +26 MB
    of RSS for the probe's whole life), and gives the same answer as BCC."""
    import subprocess
    import sys
    from bcc import BPF
    from bpf.loader import Capture, _support_raw_tracepoint
    cap = Capture()
    cap.load()
    try:
        assert -1 not in BPF._sym_caches      # pid -1: the kernel's symbols
    finally:
        cap.close()
    bcc = subprocess.run([sys.executable, "-c", "from bcc import BPF; "
                          "print(BPF.support_raw_tracepoint())"],
                         capture_output=True, text=True, check=True).stdout.split()[-1]
    kver = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    assert str(_support_raw_tracepoint(kver)) == bcc == "True"
    assert _support_raw_tracepoint((4, 14)) is True     # the kallsyms scan, this kernel


def test_container_option_covers_processes_started_later():
    """--container: the container's processes (found through their cgroup), also those
    that join it after the start.  A container here is a cgroup named like docker's."""
    import secrets
    from tests.test_e2e_gopher import CLIENT, cgroup2_root, move_to_cgroup
    root = cgroup2_root()
    assert root, "no cgroup v2 hierarchy mounted"
    cid = secrets.token_hex(32)
    cgdir = os.path.join(root, "docker-%s.scope" % cid)
    os.mkdir(cgdir)
    client = None
    try:
        with nginx() as inside, nginx() as outside:
            for pid in inside.pids():
                move_to_cgroup(cgdir, pid)
            with ProbeRun(["-P", "1", "--proto", "http", "--container", cid[:12]]) as p:
                _curl(inside, "/", 2)
                _curl(outside, "/", 2)
                client = subprocess.Popen([sys.executable, "-c", CLIENT, str(outside.port)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True)
                assert client.stdout.readline().strip() == "ready"
                move_to_cgroup(cgdir, client.pid)
                time.sleep(2.5)            # re-scanned every second
                client.stdin.write("go\n")
                client.stdin.flush()
                assert client.stdout.readline().strip() == "done"
                time.sleep(1.5)
            tgids = {int(r["tgid"]) for r in p.records("l7_rpc")}
            assert tgids == set(inside.worker_pids()) | {client.pid}, tgids
            mine = [r for r in p.records("l7_rpc") if int(r["tgid"]) == client.pid]
            assert total(mine, "req_count") == 2
            srv = [r for r in p.records("l7_rpc") if int(r["tgid"]) in inside.pids()]
            assert total(srv, "req_count") == 2
    finally:
        if client is not None:
            client.kill()
            client.wait()
        os.rmdir(cgdir)
