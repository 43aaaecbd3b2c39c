"""The capture hooks, for real (nginx on loopback, the probe attached with BPF).

The default hooks are socket tracepoints only (bpf/probe.c sock_io): no syscall tracepoint may
be attached, since one would send every syscall of every task through the kernel's slow path.
What they must get right that syscall hooks got from the syscalls themselves:

* a socket's end without a close() seen: its fd given to another socket (dup2) while the
  old socket lives on elsewhere: two connections, each counted exactly;
* a receive with MSG_PEEK is not counted (its bytes are read again), with either hooks;
* the fallback (``L7PROBE_HOOKS=syscalls``) still works, and the start-up log says which.
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.support.probe import ProbeRun, total
from tests.support.servers import nginx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two keep-alive connections through the same fd number: the first socket's fd is given to
# the second with dup2 while a dup of the first keeps it alive (so no close, no destroy).
# The first socket's last request is answered but never read through that fd: were the second
# socket's bytes taken for the first connection's, that request would be paired with the
# second socket's first response.
DUP2_CLIENT = textwrap.dedent(r"""
    import os, socket, sys, time
    sys.path.insert(0, sys.argv[2])
    from tests.support.http_get import get
    port = int(sys.argv[1])
    a = socket.create_connection(("127.0.0.1", port))
    for _ in range(3):
        get(a, "/status/404")
    a.sendall(b"GET /status/404 HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.3)                           # answered into a's queue, never read
    keep = os.dup(a.fileno())                 # the first socket lives on as `keep`
    b = socket.create_connection(("127.0.0.1", port))
    os.dup2(b.fileno(), a.fileno())           # a's fd names b's socket now
    for _ in range(5):
        get(a, "/status/201")
    os.close(keep)
    print(os.getpid(), flush=True)
""")

# A client that peeks at every response before reading it.
PEEK_CLIENT = textwrap.dedent(r"""
    import os, socket, sys
    port = int(sys.argv[1])
    s = socket.create_connection(("127.0.0.1", port))
    got = 0
    for _ in range(4):
        s.sendall(b"GET /status/500 HTTP/1.1\r\nHost: t\r\n\r\n")
        while not s.recv(65536, socket.MSG_PEEK).endswith(b"status 500\n"):
            pass
        data = b""
        while not data.endswith(b"status 500\n"):
            data += s.recv(65536)
        got += len(data)
    print(os.getpid(), got, flush=True)
""")


def _client(script, port):
    out = subprocess.run([sys.executable, "-c", script, str(port), ROOT], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _attached_tracepoints(pid):
    """Tracepoint names of the BPF programs process `pid` attached (bpftool perf)."""
    out = subprocess.run(["bpftool", "perf", "show"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return [m.group(1) for m in re.finditer(r"pid %d .*tracepoint\s+(\S+)" % pid, out)]


@pytest.fixture(scope="module")
def run():
    with nginx() as ng:
        with ProbeRun(["--proto", "http", "-P", "1"]) as probe:
            tps = _attached_tracepoints(probe.proc.pid)
            dup2_pid = _client(DUP2_CLIENT, ng.port)[0]
            peek = _client(PEEK_CLIENT, ng.port)
            probe.stop()
        yield {"probe": probe, "tps": tps, "dup2": dup2_pid, "peek": peek}


def test_no_syscall_tracepoint_attached(run):
    tps = run["tps"]
    assert "sock_send_length" in tps and "sock_recv_length" in tps, tps
    assert "tcp_destroy_sock" in tps, tps
    assert not [t for t in tps if t.startswith(("sys_enter", "sys_exit"))], tps
    assert "socket tracepoints (no syscall hook)" in "\n".join(run["probe"].err_lines)


def _client_rows(records, pid, table="l7_rpc"):
    return [r for r in records(table) if r["l7_role"] == "client" and r["tgid"] == str(pid)]


def test_fd_given_to_another_socket_is_another_connection(run):
    api = {}
    for r in _client_rows(run["probe"].records, run["dup2"], "l7_rpc_api"):
        n = api.setdefault(r["api"], [0, 0, 0])
        n[0] += int(r["req_count"])
        n[1] += int(r["resp_count"])
        n[2] += int(r["client_err_count"])
    # the 4th /status/404 is never answered on its connection (its answer was never read)
    assert api == {"GET /status/404": [4, 3, 3], "GET /status/201": [5, 5, 0]}, api


def test_peeked_bytes_counted_once(run):
    pid, got = run["peek"]
    rows = _client_rows(run["probe"].records, pid)
    assert total(rows, "req_count") == total(rows, "resp_count") == 4
    assert total(rows, "err_count") == 4
    links = _client_rows(run["probe"].records, pid, "l7_link")
    assert links and total(links, "bytes_recv") == int(got)


def test_syscall_hooks_fallback():
    with nginx() as ng:
        env = dict(os.environ, L7PROBE_HOOKS="syscalls")
        with ProbeRun(["--proto", "http", "-P", "1"], env=env) as probe:
            tps = _attached_tracepoints(probe.proc.pid)
            pid = _client(PEEK_CLIENT, ng.port)[0]
            probe.stop()
    assert "sys_enter_read" in tps and "sys_exit_write" in tps, tps
    assert "capture: syscall tracepoints" in "\n".join(probe.err_lines)
    rows = _client_rows(probe.records, pid)
    assert total(rows, "req_count") == total(rows, "resp_count") == 4
    assert total(rows, "err_count") == 4


def test_sock_common_offset_matches_the_kernels_btf():
    """bpf/udp.h reads a connected IPv6 UDP socket's peer at a fixed offset of struct
    sock_common (its header costs seconds per compile): this kernel's BTF must agree."""
    with open(os.path.join(ROOT, "bpf", "udp.h")) as f:
        offset = int(re.search(r"#define SKC_V6_DADDR (\d+)", f.read()).group(1))
    out = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux",
                          "format", "raw"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    block = out[out.index("STRUCT 'sock_common' "):][:4000]
    bits = int(re.search(r"'skc_v6_daddr' type_id=\d+ bits_offset=(\d+)", block).group(1))
    assert bits == 8 * offset
