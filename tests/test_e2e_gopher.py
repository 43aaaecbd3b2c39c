"""Under gala-gopher, for real: the INSTALLED probe (``make install`` into a temporary
DESTDIR, tests/support/install.py) started the way gala-gopher starts an extend probe
(``/bin/sh -c <bin>``, no arguments, stdout a pipe, its IPC queue from a fake gala-gopher
that builds every message byte by byte, tests/support/gopher.py), real nginx and
redis-server on loopback, curl / redis-benchmark / Python clients as traffic.

One probe run serves the tests of this module in order; every phase sends its own full
configuration (as gala-gopher does: each message carries everything) and looks only at the
lines printed after the probe applied it.  The probe logs ``[INFO] ... watching ...`` when it
applies a configuration; since logs and records share stdout, everything after that line in
the stream was printed under the new configuration.  A second, short run checks SIGINT sent
to the ``sh`` wrapper (what gala-gopher signals when /bin/sh is dash).
"""
import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.gopher import FakeGopher, build_body, launch_probe, series_identity, tlv
from tests.support.install import installed_or_fail
from tests.support.probe import parse_line
from tests.support.servers import nginx, redis_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

PROTO_HTTP = 0x1
PROTO_REDIS = 0x4
RANGE_LINK, RANGE_RPC, RANGE_TRACE = 0x1, 0x2, 0x4
GOPHER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
START_TIMEOUT = 90          # first message -> BPF compiled and attached
# SIGINT (or pipe closed) -> exited, everything detached, as the issue asks.  Syscalls are
# hooked with two raw tracepoints and the other probes are closed in parallel: ~1 s here.
EXIT_LIMIT = 2.0
LOG_PREFIXES = ("[INFO] ", "[WARN] ", "[ERROR] ", "[DEBUG] ")
# BCC may print compiler/loader chatter on stderr, which gala-gopher never reads
BCC_STDERR_NOISE = re.compile(r"^(In file included from|\S+\.h:\d+:\d+: (warning|note)|"
                              r"\s|\d+ warnings? generated|cannot attach|libbpf: )")
PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"


# ---------------------------------------------------------------------------------------
# helpers

def is_record(line):
    return line.startswith("|")


def is_log(line):
    """A log line gala-gopher shows at its default level (not records, not [DEBUG])."""
    return line.startswith(("[INFO] ", "[WARN] ", "[ERROR] "))


def records(lines, table=None):
    out = []
    for line in lines:
        if is_record(line):
            t, rec = parse_line(line)
            if table is None or t == table:
                out.append(rec)
    return out


def tables_of(lines):
    return {parse_line(line)[0] for line in lines if is_record(line)}


def tgids_of(lines):
    return {int(parse_line(line)[1]["tgid"]) for line in lines if is_record(line)}


def curl(*urls):
    subprocess.run(["curl", "-s", "--max-time", "10", *urls], stdout=subprocess.DEVNULL,
                   check=True, timeout=30)


def redis_pings(port, n):
    """n PINGs on one connection: the server receives n*14 bytes and sends n*7."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(n):
            s.sendall(PING)
            got = b""
            while len(got) < len(PONG):
                got += _rx(s, 64)
            assert got == PONG


def _rx(s, n):
    d = s.recv(n)
    if not d:
        raise ConnectionError("connection closed by the server")
    return d


def bpf_objects(pid):
    """(prog ids, map ids, number of perf-event fds) held by process ``pid``."""
    progs, maps, perf = set(), set(), 0
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return progs, maps, perf
    for fd in fds:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            if target == "anon_inode:[perf_event]":
                perf += 1
            if not target.startswith("anon_inode:bpf"):
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                info = f.read()
        except OSError:
            continue
        m = re.search(r"^prog_id:\s*(\d+)", info, re.M)
        if m:
            progs.add(int(m.group(1)))
        m = re.search(r"^map_id:\s*(\d+)", info, re.M)
        if m:
            maps.add(int(m.group(1)))
    return progs, maps, perf


def has_bpf_fds(pid):
    """Any BPF program/map fd (fdinfo shows prog_type/map_type) or perf event."""
    try:
        fds = os.listdir("/proc/%d/fdinfo" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                info = f.read()
            if "prog_type:" in info or "map_type:" in info:
                return True
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("anon_inode:bpf"):
                return True
        except OSError:
            continue
    return False


def bpftool_ids(kind):
    cp = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True,
                        timeout=30, check=True)
    return {obj["id"] for obj in json.loads(cp.stdout or "[]")}


def pinned_objects():
    out = set()
    for dirpath, _dirs, files in os.walk("/sys/fs/bpf"):
        out.update(os.path.join(dirpath, f) for f in files)
    return out


def probe_events(pid):
    """uprobe/kprobe events created by process ``pid`` (BCC names them ..._bcc_<pid>)."""
    out = []
    for name in ("uprobe_events", "kprobe_events"):
        try:
            with open("/sys/kernel/tracing/" + name) as f:
                out += [line for line in f if line.rstrip().endswith("_bcc_%d" % pid)]
        except OSError:
            pass
    return out


def _mount_point(fstype, option=None):
    """Where a file system of ``fstype`` (with ``option`` among its super options) is
    mounted, from /proc/self/mountinfo; None if nowhere."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if fields[0] == fstype and (option is None or option in fields[2].split(",")):
                return left.split()[4]
    return None


def cgroup2_root():
    """Where cgroup v2 is mounted: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified
    (hybrid)."""
    return _mount_point("cgroup2")


def leave_cgroup(root, cgdir, pids):
    """Move ``pids`` back to the root cgroup and remove ``cgdir`` (once it is empty)."""
    for pid in pids:
        try:
            move_to_cgroup(root, pid)
        except OSError:
            pass
    for _ in range(50):
        try:
            os.rmdir(cgdir)
            break
        except OSError:
            time.sleep(0.1)


def move_to_cgroup(cgdir, pid):
    with open(os.path.join(cgdir, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def batches(timed, table="l7_link", gap=0.4):
    """Arrival time of each report batch: the first ``table`` line after a pause > gap."""
    starts = []
    last = None
    for t, line in timed:
        if line.startswith("|%s|" % table):
            if last is None or t - last > gap:
                starts.append(t)
            last = t
    return starts


class Run:
    """The running probe, its fake gala-gopher and the servers it watches."""

    def __init__(self, gopher, probe, bin_path):
        self.gopher = gopher
        self.probe = probe
        self.bin = bin_path

    def configure(self, timeout=10, **msg):
        """Send a message and return the lines printed up to the probe's applying it
        (the ``[INFO] ... watching ...`` line, excluded)."""
        self.gopher.send(**msg)
        before = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.probe.readline(max(0.0, deadline - time.monotonic()))
            assert line is not None, "configuration not applied; last lines: %r" % (
                self.probe.all_lines[-10:],)
            if line.startswith("[INFO] ") and " watching " in line:
                return before
            before.append(line)

    def lines(self, seconds):
        return self.probe.read_lines(seconds)

    def timed(self, seconds):
        n = len(self.probe.timed_lines)
        self.probe.read_lines(seconds)
        return self.probe.timed_lines[n:]

    def probe_pid(self):
        pids = self.probe.probe_pids()
        assert len(pids) == 1, pids
        return pids[0]


# ---------------------------------------------------------------------------------------
# the main run

@pytest.fixture(scope="module")
def env():
    inst = installed_or_fail()
    with nginx() as ng_a, nginx() as ng_b, nginx() as ng_c, redis_server() as redis, \
            FakeGopher() as gopher:
        pinned = pinned_objects()
        probe = launch_probe(inst.bin, dict(GOPHER_ENV, **gopher.env), cwd="/")
        try:
            run = Run(gopher, probe, inst.bin)
            run.pinned = pinned
            run.ng_a, run.ng_b, run.ng_c, run.redis = ng_a, ng_b, ng_c, redis
            # before the first message: silent, nothing loaded
            time.sleep(1.0)
            run.group_pids = [probe.pid] + probe.probe_pids()
            quiet = probe.read_lines(3.0)
            run.silent = {"stdout": quiet, "stderr": list(probe.stderr_lines),
                          "bpf": {p: has_bpf_fds(p) for p in run.group_pids},
                          "alive": probe.proc.poll() is None}
            # first message, as gala-gopher sends it when the probe starts: Redis only
            run.pid0 = run.probe_pid()
            run.first_pids = sorted(set(redis.pids()) | set(ng_a.pids()))
            run.configure(timeout=START_TIMEOUT, range_flags=RANGE_LINK, period=1,
                          proto_flags=PROTO_REDIS, pids=run.first_pids)
            run.started = probe.wait_for(lambda l: "started" in l, 10)
            yield run
        finally:
            probe.close()


def test_silent_and_unloaded_until_first_message(env):
    s = env.silent
    assert s["alive"], env.probe.stderr_text()
    assert s["stdout"] == []
    assert len(env.group_pids) == 2        # sh -c <bin>, and the probe (dash does not exec)
    assert s["bpf"] == {p: False for p in env.group_pids}
    assert s["stderr"] == []
    # after the first message: loaded and started
    assert env.started and env.started.startswith("[INFO] "), env.probe.all_lines
    assert bpf_objects(env.pid0)[0], "no BPF program loaded after the first message"


def test_gala_gopher_finds_the_probe(env):
    """``pgrep -g <pgid> -af "<bin>$"``: both sh and the probe end with the bin path."""
    found = env.probe.gopher_pids(env.bin)
    assert found == sorted(env.group_pids), found
    with open("/proc/%d/cmdline" % env.pid0, "rb") as f:
        assert f.read().rstrip(b"\0").endswith(env.bin.encode())


def test_only_flagged_protocol_then_http_added_at_run_time(env):
    redis, ng_a = env.redis, env.ng_a
    redis_pids = set(redis.pids())
    # exact bytes first (only this client talks to redis during these periods)
    env.lines(1.2)
    redis_pings(redis.port, 100)
    curl(ng_a.url("/"), ng_a.url("/status/404"))
    exact = env.lines(2.5)
    rows = [r for r in records(exact, "l7_link") if int(r["tgid"]) in redis_pids]
    assert rows, exact
    assert {(r["protocol"], r["l7_role"], r["l4_role"], r["server_port"]) for r in rows} == \
        {("redis", "server", "tcp_server", str(redis.port))}
    assert sum(int(r["bytes_recv"]) for r in rows) == 100 * len(PING)
    assert sum(int(r["bytes_sent"]) for r in rows) == 100 * len(PONG)
    assert not tgids_of(exact) & set(ng_a.pids()), "HTTP reported with only REDIS flagged"
    # redis-benchmark and redis-cli traffic
    subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis.port), "-n", "2000",
                    "-c", "1", "-P", "1", "-t", "ping_mbulk", "-q"], check=True,
                   capture_output=True, timeout=60)
    assert redis.cli("SET", "k", "v") == "OK"
    curl(ng_a.url("/"))
    lines = env.lines(2.5)
    rows = [r for r in records(lines, "l7_link") if int(r["tgid"]) in redis_pids]
    assert sum(int(r["bytes_recv"]) for r in rows) >= 2000 * len(PING)
    assert {r["protocol"] for r in records(lines)} == {"redis"}
    assert not tgids_of(lines) & set(ng_a.pids())
    # HTTP added by a new message: same probe process, HTTP rows appear
    env.configure(range_flags=RANGE_LINK, period=1, proto_flags=PROTO_REDIS | PROTO_HTTP,
                  pids=env.first_pids)
    curl(ng_a.url("/"), ng_a.url("/status/404"))
    lines = env.lines(2.5)
    http = [r for r in records(lines, "l7_link") if r["protocol"] == "http"]
    assert http, lines
    assert {int(r["tgid"]) for r in http} <= set(ng_a.pids())
    assert {(r["l7_role"], r["server_port"]) for r in http} == {("server", str(ng_a.port))}
    assert sum(int(r["bytes_recv"]) for r in http) > 0      # idle periods print zeros
    assert sum(int(r["bytes_sent"]) for r in http) > 0
    assert env.probe_pid() == env.pid0
    assert sum("started" in line for line in env.probe.all_lines) == 1


def test_period_is_honoured_and_changed_at_run_time(env):
    # links exist from the previous test; every live link is printed every period
    env.configure(range_flags=RANGE_LINK, period=1, proto_flags=PROTO_REDIS | PROTO_HTTP,
                  pids=env.first_pids)
    starts = batches(env.timed(5.5))[1:]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(gaps) >= 3, starts
    assert all(0.75 <= g <= 1.35 for g in gaps), gaps
    env.configure(range_flags=RANGE_LINK, period=2, proto_flags=PROTO_REDIS | PROTO_HTTP,
                  pids=env.first_pids)
    starts = batches(env.timed(8.5))[1:]   # the first one may come early (old period)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(gaps) >= 2, starts
    assert all(1.75 <= g <= 2.35 for g in gaps), gaps
    # records arrive while the probe runs, batch after batch, a whole line at a time
    assert env.probe.proc.poll() is None
    assert all(is_record(line) for _t, line in env.probe.timed_lines[-3:])


@pytest.mark.parametrize("range_flags,tables", [
    (RANGE_LINK, {"l7_link"}),
    (RANGE_RPC, {"l7_rpc", "l7_rpc_api"}),
    (RANGE_TRACE, {"l7_trace"}),
    (RANGE_LINK | RANGE_RPC | RANGE_TRACE, {"l7_link", "l7_rpc", "l7_rpc_api", "l7_trace"}),
])
def test_sub_probe_flags_select_tables(env, range_flags, tables):
    ng_a = env.ng_a
    env.configure(range_flags=range_flags, period=1, proto_flags=PROTO_HTTP,
                  pids=ng_a.pids())
    env.lines(1.2)          # let the period running at the change end
    curl(ng_a.url("/"), ng_a.url("/status/404"), ng_a.url("/"))
    lines = env.lines(2.5)
    assert tables_of(lines) == tables, lines
    assert tgids_of(lines) <= set(ng_a.pids())
    if "l7_rpc" in tables:
        rpc = [r for r in records(lines, "l7_rpc") if r["l7_role"] == "server"]
        assert sum(int(r["req_count"]) for r in rpc) == 3
        assert sum(int(r["err_count"]) for r in rpc) == 1
        api = {}
        for r in records(lines, "l7_rpc_api"):
            api[r["api"]] = api.get(r["api"], 0) + int(r["req_count"])
        assert api == {"GET /": 2, "GET /status/404": 1}
    if "l7_trace" in tables:
        tr = sorted((r["req_method"], r["req_path"], r["resp_code"])
                    for r in records(lines, "l7_trace"))
        assert tr == [("GET", "/", "200"), ("GET", "/", "200"), ("GET", "/status/404", "404")]
        # every row its own series once gala-gopher renders it (the two GET / may share
        # their millisecond)
        ids = [series_identity("l7_trace", r) for r in records(lines, "l7_trace")]
        assert len(set(ids)) == len(ids), ids


def test_pid_whitelist_changed_at_run_time(env):
    a, b = env.ng_a, env.ng_b
    env.configure(range_flags=RANGE_LINK | RANGE_RPC, period=1, proto_flags=PROTO_HTTP,
                  pids=a.pids())
    env.lines(1.2)
    curl(a.url("/"), a.url("/"))
    curl(b.url("/"), b.url("/"))
    lines = env.lines(2.5)
    assert tgids_of(lines) and tgids_of(lines) <= set(a.pids()), lines
    assert sum(int(r["req_count"]) for r in records(lines, "l7_rpc")) == 2
    # the other server instead
    env.configure(range_flags=RANGE_LINK | RANGE_RPC, period=1, proto_flags=PROTO_HTTP,
                  pids=b.pids())
    curl(a.url("/"), a.url("/"))
    curl(b.url("/"), b.url("/"), b.url("/"))
    lines = env.lines(2.5)
    assert tgids_of(lines) and tgids_of(lines) <= set(b.pids()), lines
    assert sum(int(r["req_count"]) for r in records(lines, "l7_rpc")) == 3


CLIENT = textwrap.dedent(r"""
    import socket, sys
    def _rx(s, n):
        d = s.recv(n)
        if not d:
            raise SystemExit("connection closed by the server")
        return d
    port = int(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    s = socket.create_connection(("127.0.0.1", port))
    for path in ("/", "/status/404"):
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: c\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += _rx(s, 65536)
        head, _, body = data.partition(b"\r\n\r\n")
        n = int([l.split(b":")[1] for l in head.split(b"\r\n")
                 if l.lower().startswith(b"content-length")][0])
        while len(body) < n:
            body += _rx(s, 65536)
    s.close()
    print("done", flush=True)
""")


def test_container_object_covers_its_processes(env):
    root = cgroup2_root()
    assert root, "no cgroup v2 hierarchy mounted"
    cid = secrets.token_hex(32)
    cgdir = os.path.join(root, "docker-%s.scope" % cid)
    c, a = env.ng_c, env.ng_a
    os.mkdir(cgdir)
    client = None
    try:
        for pid in c.pids():
            move_to_cgroup(cgdir, pid)
        for pid in c.pids():
            with open("/proc/%d/cgroup" % pid) as f:
                assert "docker-%s.scope" % cid in f.read()
        inode = os.stat(cgdir).st_ino & 0xFFFFFFFF
        # the container object alone (no proc objects): the probe finds its processes
        env.configure(range_flags=RANGE_LINK | RANGE_RPC, period=1, proto_flags=PROTO_HTTP,
                      containers=[(inode, cid)])
        env.lines(1.2)
        curl(c.url("/"), c.url("/status/404"))
        curl(a.url("/"))
        lines = env.lines(2.5)
        assert tgids_of(lines) and tgids_of(lines) <= set(c.pids()), lines
        assert sum(int(r["req_count"]) for r in records(lines, "l7_rpc")) == 2
        # a process that enters the container later is covered too (its client side)
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(a.port)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "ready"
        move_to_cgroup(cgdir, client.pid)
        env.lines(2.5)              # the probe re-scans the container every second
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
        lines = env.lines(2.5)
        mine = [r for r in records(lines, "l7_rpc") if int(r["tgid"]) == client.pid]
        assert mine, lines
        assert {(r["l7_role"], r["server_port"]) for r in mine} == {("client", str(a.port))}
        assert sum(int(r["req_count"]) for r in mine) == 2
        assert sum(int(r["err_count"]) for r in mine) == 1
        assert not tgids_of(lines) & set(a.pids())
    finally:
        if client is not None:
            client.kill()
            client.wait()
        leave_cgroup(root, cgdir, c.pids())


def _inode_cgroup_root():
    """The hierarchy whose directory inodes gala-gopher sends as ``cpucg_inode``: cpuset v1
    where it is mounted, else cgroup v2 (as ipc/config.py's _cgroup_dir reads them)."""
    v1 = _mount_point("cgroup", "cpuset")
    return (v1, True) if v1 else (cgroup2_root(), False)


def test_container_object_by_cgroup_inode_only(env):
    """A container object that carries only its cpuset cgroup's inode (upstream rejects
    it, compat §3.2): the processes in that cgroup, whatever its name, are watched."""
    root, v1 = _inode_cgroup_root()
    assert root, "no cpuset v1 or cgroup v2 hierarchy mounted"
    cgdir = os.path.join(root, "l7probe-test-%s" % secrets.token_hex(4))
    c, a = env.ng_c, env.ng_a
    os.mkdir(cgdir)
    try:
        if v1:      # a cpuset cgroup takes no task before it has cpus and mems
            for knob in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(root, knob)) as f, \
                        open(os.path.join(cgdir, knob), "w") as g:
                    g.write(f.read().strip())
        for pid in c.pids():
            move_to_cgroup(cgdir, pid)
        inode = os.stat(cgdir).st_ino & 0xFFFFFFFF
        env.configure(range_flags=RANGE_LINK | RANGE_RPC, period=1, proto_flags=PROTO_HTTP,
                      containers=[(inode,)])
        env.lines(1.2)
        curl(c.url("/"), c.url("/"), c.url("/status/404"))
        curl(a.url("/"))
        lines = env.lines(2.5)
        assert tgids_of(lines) and tgids_of(lines) <= set(c.pids()), lines
        rpc = records(lines, "l7_rpc")
        assert sum(int(r["req_count"]) for r in rpc) == 3
        assert sum(int(r["err_count"]) for r in rpc) == 1
    finally:
        leave_cgroup(root, cgdir, c.pids())


def _malformed_bodies(pids):
    good = build_body(range_flags=RANGE_TRACE, period=2, proto_flags=0xFFFF, pids=pids)
    hdr = struct.Struct("=HHI")
    flag, state, _ = hdr.unpack_from(good)
    tlvs = good[hdr.size:]

    def with_tlvs(t):
        return hdr.pack(flag, state, len(t)) + t
    out = {
        # params TLV cut short, msg_len consistent with what is sent
        "truncated TLV": with_tlvs(tlvs[:8 + 4 + 600]),
        # msg_len says 4 more bytes than were sent
        "wrong msg_len": hdr.pack(flag, state, len(tlvs) + 4) + tlvs,
        # the range TLV with 3 value bytes
        "wrong TLV length": with_tlvs(tlv(100, b"\x04\0\0") + tlvs[8:]),
        # a proc object of 5 bytes
        "wrong object length": with_tlvs(tlvs + tlv(0, b"\1\0\0\0\0")),
        # 2 stray bytes after the last TLV (half a TLV header)
        "truncated TLV header": with_tlvs(tlvs + b"\0\0"),
        # shorter than the 8-byte header
        "short header": good[:6],
    }
    return out


def test_malformed_messages_change_nothing(env):
    a = env.ng_a
    env.configure(range_flags=RANGE_LINK, period=1, proto_flags=PROTO_HTTP, pids=a.pids())
    for what, body in _malformed_bodies(env.ng_b.pids()).items():
        env.gopher.send_raw(body)
        assert env.gopher.wait_consumed(5), what
        err = env.probe.wait_for(is_log, timeout=5)
        assert err is not None and err.startswith("[ERROR] "), (what, err)
        assert "malformed" in err, err
    # same configuration as before: l7_link only, nginx A only, period 1
    curl(a.url("/"), env.ng_b.url("/"))
    timed = env.timed(3.5)
    lines = [line for _t, line in timed]
    assert not [line for line in lines if is_log(line)], lines     # nothing re-applied
    assert tables_of(lines) == {"l7_link"}
    assert tgids_of(lines) <= set(a.pids()) and tgids_of(lines)
    starts = batches(timed)
    gaps = [y - x for x, y in zip(starts, starts[1:])]
    assert gaps and all(0.75 <= g <= 1.35 for g in gaps), gaps


def test_queue_removed_then_recreated(env):
    a = env.ng_a
    env.configure(range_flags=RANGE_LINK, period=1, proto_flags=PROTO_HTTP, pids=a.pids())
    env.gopher.remove_queue()
    warn = env.probe.wait_for(is_log, timeout=5)
    assert warn is not None and warn.startswith("[WARN] ") and "removed" in warn, warn
    # keeps running with its configuration
    curl(a.url("/"))
    lines = env.lines(3.0)
    assert env.probe.proc.poll() is None
    assert not [line for line in lines if is_log(line)], lines     # no log flood meanwhile
    assert tables_of(lines) == {"l7_link"} and tgids_of(lines) <= set(a.pids())
    assert len(batches(env.probe.timed_lines[-len(lines):])) >= 2
    # gala-gopher is back: the probe reopens the queue and follows new messages
    env.gopher.recreate_queue()
    before = env.configure(range_flags=RANGE_RPC, period=1, proto_flags=PROTO_HTTP,
                           pids=a.pids())
    assert any(line.startswith("[INFO] ") and "back" in line for line in before), before
    env.lines(1.2)
    curl(a.url("/"), a.url("/"))
    lines = env.lines(2.5)
    assert tables_of(lines) == {"l7_rpc", "l7_rpc_api"}
    assert sum(int(r["req_count"]) for r in records(lines, "l7_rpc")) == 2
    assert env.probe_pid() == env.pid0


def test_stdout_holds_records_and_tagged_logs_only(env):
    env.probe.read_lines(0.1)
    for line in env.probe.all_lines:
        if is_record(line):
            parse_line(line)                # the meta's field count
        else:
            assert line.startswith(LOG_PREFIXES), line
    noise = [line for line in env.probe.stderr_lines if not BCC_STDERR_NOISE.match(line)]
    assert noise == [], env.probe.stderr_lines


def test_sigint_to_the_probe_ends_it_cleanly(env):
    probe = env.probe
    a = env.ng_a
    # a long period: whatever is reported after SIGINT comes from the final report
    env.configure(range_flags=RANGE_LINK, period=30, proto_flags=PROTO_HTTP, pids=a.pids())
    curl(a.url("/"), a.url("/"))
    time.sleep(0.3)
    probe.read_lines(0.1)
    n = len(probe.all_lines)
    pid = env.probe_pid()
    found = probe.gopher_pids(env.bin)
    assert pid in found
    progs, maps, perf = bpf_objects(pid)
    assert progs and maps and perf
    assert progs <= bpftool_ids("prog")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGINT)                          # what gala-gopher does
    rc = probe.wait(10)
    elapsed = time.monotonic() - t0
    assert rc == 0, (rc, probe.all_lines[-5:], probe.stderr_text())
    assert elapsed < EXIT_LIMIT, "took %.2f s to exit" % elapsed
    _assert_nothing_left(pid, progs, maps, env.pinned)
    # the last, partial period was reported before exit
    final = records(probe.all_lines[n:], "l7_link")
    assert sum(int(r["bytes_recv"]) for r in final if int(r["tgid"]) in a.pids()) > 0, \
        probe.all_lines[n:]


def _assert_nothing_left(pid, progs, maps, pinned):
    deadline = time.monotonic() + 3
    while True:                      # maps are freed a little after the last fd closes
        left_p = progs & bpftool_ids("prog")
        left_m = maps & bpftool_ids("map")
        if not (left_p or left_m) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left_p, "BPF programs still loaded: %s" % sorted(left_p)
    assert not left_m, "BPF maps still present: %s" % sorted(left_m)
    assert probe_events(pid) == []
    assert pinned_objects() - pinned == set()


# ---------------------------------------------------------------------------------------
# The `sh -c` wrapper.  pgrep lists sh first, so sh is the pid gala-gopher signals; dash
# catches SIGINT in -c mode and only acts on it after its child has exited, so the probe
# never receives that SIGINT.  The kernel side reports it (signal:signal_generate on the
# probe's parent); the rest of gala-gopher's stop (its reader returns from fgets with the
# next line, sees the stop flag and pcloses the pipe) is the second way out.

PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on):
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0


def _start(inst, gopher, pids):
    probe = launch_probe(inst.bin, dict(GOPHER_ENV, **gopher.env), cwd="/")
    gopher.send(range_flags=RANGE_LINK, period=1, proto_flags=PROTO_HTTP, pids=pids)
    assert probe.wait_for(lambda l: "started" in l, START_TIMEOUT), probe.stderr_text()
    found = probe.gopher_pids(inst.bin)
    assert len(found) == 2 and found[0] == probe.pid, found
    return probe, found[1]


@contextlib.contextmanager
def _installed_probe_watching_us():
    """The installed probe under a fake gala-gopher, watching this (idle) test process:
    yields (install, probe, probe pid, check that it left nothing behind)."""
    inst = installed_or_fail()
    with FakeGopher() as gopher:
        pinned = pinned_objects()
        probe, pid = _start(inst, gopher, [os.getpid()])
        try:
            progs, maps, _ = bpf_objects(pid)
            assert progs and maps
            yield inst, probe, pid, lambda: _assert_nothing_left(pid, progs, maps, pinned)
        finally:
            probe.close()


def test_gala_gopher_stop_sequence_on_an_idle_probe():
    """Nothing to report (the watched process has no traffic): the probe still prints a
    line per period, so gala-gopher's reader gets to its stop check; once the pipe is
    closed the probe detaches, exits, and sh with it."""
    with _installed_probe_watching_us() as (inst, probe, pid, nothing_left):
        idle = probe.read_lines(2.5)
        assert idle and all(line.startswith("[DEBUG] ") for line in idle), idle
        signalled = probe.stop_like_gopher(inst.bin, line_timeout=3)
        assert signalled == probe.pid            # the sh wrapper
        t0 = time.monotonic()
        rc = probe.wait_closed(10)
        # sh ends either by the SIGINT it was sent or with the probe's own status 0,
        # depending on whether dash acts on the signal before or after it reaps the
        # probe (seen both ways in CI); if sh went first the probe follows it
        # (pipe closed, PDEATHSIG)
        while os.path.exists("/proc/%d" % pid) and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        assert rc in (0, -signal.SIGINT), rc
        assert not os.path.exists("/proc/%d" % pid)
        assert elapsed < EXIT_LIMIT, "took %.2f s to exit" % elapsed
        assert not [l for l in probe.stderr_lines if not BCC_STDERR_NOISE.match(l)], \
            probe.stderr_lines
        nothing_left()


def test_sigint_to_the_sh_wrapper_alone_stops_the_probe():
    """The SIGINT gala-gopher sends lands on dash, which holds it until its child exits;
    the probe learns of it from the kernel (signal:signal_generate on its parent) and stops
    within the limit while its stdout pipe is still open; dash then dies of the SIGINT."""
    with _installed_probe_watching_us() as (inst, probe, pid, nothing_left):
        assert probe.gopher_pids(inst.bin)[0] == probe.pid      # sh, what gopher signals
        t0 = time.monotonic()
        os.kill(probe.pid, signal.SIGINT)
        rc = probe.wait_closed(10)          # the pipe stays open: no help from EPIPE
        elapsed = time.monotonic() - t0
        assert rc == -signal.SIGINT, rc
        assert not os.path.exists("/proc/%d" % pid)
        assert elapsed < EXIT_LIMIT, "took %.2f s to exit" % elapsed
        assert [l for l in probe.all_lines if "was sent a stop signal" in l], \
            probe.all_lines[-10:]
        nothing_left()


def _apply(probe, gopher, timeout=30, **msg):
    """Send a message; return the lines up to and including the probe's `watching` line."""
    gopher.send(**msg)
    lines = []
    deadline = time.monotonic() + timeout
    while True:
        line = probe.readline(max(0.0, deadline - time.monotonic()))
        assert line is not None, "configuration not applied: %r" % (probe.all_lines[-10:],)
        lines.append(line)
        if line.startswith("[INFO] ") and " watching " in line:
            return lines


def _https_gets(ng, n):
    for _ in range(n):
        subprocess.run(["curl", "-sk", "-o", "/dev/null", "--max-time", "10",
                        "https://127.0.0.1:%d/" % ng.port], check=True, timeout=30)


def test_support_ssl_toggles_tls_uprobes_at_run_time(tmp_path):
    """support_ssl 0 -> 1 -> 0 on a running probe: uprobes appear (on the libssl nginx maps
    and on the libssl path a container object names) and HTTPS requests are reported with
    ssl=ssl; then they are all detached and nothing more is reported."""
    inst = installed_or_fail()
    lib = tmp_path / "libssl.so.3"        # a container's libssl, as gala-gopher names it
    shutil.copy("/usr/lib/x86_64-linux-gnu/libssl.so.3", lib)
    with nginx(tls=True) as ng, FakeGopher() as gopher:
        pids = ng.pids()
        probe, pid = _start(inst, gopher, pids)
        try:
            base = dict(range_flags=RANGE_LINK | RANGE_RPC, period=1, proto_flags=PROTO_HTTP,
                        pids=pids)
            _https_gets(ng, 2)
            off = probe.read_lines(2.5)
            assert not [r for r in records(off, "l7_rpc") if r["ssl"] == "ssl"], off
            # BCC attaches uprobes as perf events (not in uprobe_events): count the probe's
            perf_off = bpf_objects(pid)[2]

            on = _apply(probe, gopher, support_ssl=1, containers=[(0, "f" * 64, str(lib))],
                        **base)
            attached = [l for l in on if "TLS: attached" in l]
            assert [l for l in attached if str(lib) in l], on
            assert [l for l in attached if "/libssl.so.3 " in l and str(lib) not in l], on
            n_on = sum(int(re.search(r"attached (\d+) probe", l).group(1)) for l in attached)
            assert bpf_objects(pid)[2] == perf_off + n_on, (perf_off, n_on, attached)
            probe.read_lines(1.2)
            _https_gets(ng, 3)
            lines = probe.read_lines(2.5)
            rpc = [r for r in records(lines, "l7_rpc") if r["server_port"] == str(ng.port)]
            assert sum(int(r["req_count"]) for r in rpc if r["ssl"] == "ssl") == 3, lines
            assert not [r for r in rpc if r["ssl"] == "no_ssl"], rpc

            again = _apply(probe, gopher, support_ssl=0, **base)
            assert [l for l in again if "TLS: detached %d probe(s)" % n_on in l], again
            assert bpf_objects(pid)[2] == perf_off
            probe.read_lines(1.2)
            _https_gets(ng, 2)
            lines = probe.read_lines(2.5)
            assert not [r for r in records(lines, "l7_rpc") if int(r["req_count"])], lines
        finally:
            probe.close()


def test_probe_leaves_with_the_wrapper_shell():
    """sh killed (SIGKILL, e.g. gala-gopher's process group torn down): PR_SET_PDEATHSIG
    ends the probe cleanly; it is reparented to us (subreaper) to read its own status."""
    inst = installed_or_fail()
    with nginx() as ng, FakeGopher() as gopher:
        pinned = pinned_objects()
        probe, pid = _start(inst, gopher, ng.pids())
        try:
            curl(ng.url("/"))
            assert probe.wait_for(lambda l: l.startswith("|l7_link|"), 5)
            progs, maps, _ = bpf_objects(pid)
            assert progs and maps
            _subreaper(True)
            try:
                t0 = time.monotonic()
                os.kill(probe.pid, signal.SIGKILL)
                status = None
                while time.monotonic() - t0 < 10:
                    probe._pump(0.02)
                    if probe.proc.poll() is None:
                        continue
                    done, st = os.waitpid(pid, os.WNOHANG)
                    if done:
                        status = st
                        break
                elapsed = time.monotonic() - t0
            finally:
                _subreaper(False)
            assert status is not None, "probe %d still running after sh died" % pid
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            assert elapsed < EXIT_LIMIT, "took %.2f s to exit" % elapsed
            _assert_nothing_left(pid, progs, maps, pinned)
        finally:
            probe.close()
