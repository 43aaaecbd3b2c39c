"""End to end with third-party load generators (issue 14): redis-benchmark (pipelined,
several clients, many command kinds), pgbench TPC-B (simple and prepared protocol),
sysbench oltp_read_write against MariaDB (whose mariadbd reads packet headers and payloads
in separate syscalls), ab -k and h2load --h1 against nginx; and requests nginx refuses.

The expected counts are the servers' own statistics: Redis INFO commandstats, the
PostgreSQL statement log, the MariaDB general log, nginx's access log.  Request counts and
rates are moderate (a few thousand requests per tool; 10000 for HTTP, where the sampler
needs time to act): exact at full speed needs exact counting when the ring buffer
saturates (issue 8).

Counting rules met here (README "Counting rules"): a command that gets no response
(MySQL COM_STMT_CLOSE, COM_QUIT) is a request without a response; PostgreSQL's "END" is
counted under its text's verb END; nginx's access log counts what the location served.

Each protocol group has a probe of its own, watching only that protocol and, where the
servers are single processes, only the servers and the tools (started held: their pids are
known before they run); at a raised priority.  On this VM, shared by many sessions' loads, a
probe watching everything lost requests now and then without a ring-buffer warning (seen
with redis-benchmark: ~1000 of 4000 GETs on both sides, with the code before this change as
well): the counts are exact only while the probe keeps up (issue 8).
"""
import os
import re
import socket
import subprocess
import time

import pytest

from tests.support.probe import ProbeRun, total
from tests.support.servers import PG_BIN, mariadb, nginx, postgres, redis_server
from tests.test_e2e_db import (_apis, _check_common, _my_segment, _pg_segment, _port_rows,
                               _redis_executed, _redis_stats, _sel)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

LOOP = "127.0.0.1"
REDIS_N = 2000
REDIS_TESTS = "ping_inline,ping_mbulk,set,get,incr,lpush,mset"
LRANGE_N = 400          # LRANGE 100 replies (array replies of 100 bulk strings)
PG_TX = 60
PG_CLIENTS = 2
SB_EVENTS = 150
HTTP_N = 10000          # long enough (~0.5 s for ab) for the sampler to shed once user space
                        # has learnt the API and cleared the connections
HTTP_SAMPLE = 200       # --sample for HTTP: well below the tools' rates, so that it sheds


def _access_log_location(path):
    return ('        location = /lt { access_log %s; default_type text/plain; '
            'return 200 "ok\\n"; }\n' % path)


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def _refused(port, payload):
    """Send one raw request, read the answer until nginx closes the connection."""
    s = socket.create_connection((LOOP, port))
    s.sendall(payload)
    data = b""
    s.settimeout(10)
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return data


def _run(cmd, timeout=180):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, (cmd, out[-2000:], err[-2000:])
    return p.pid, out


class _Held:
    """A command whose pid is known before it runs (a shell that waits for a line on its
    stdin, then execs the command in the same process): the probe can be told to watch it."""

    def __init__(self, cmd):
        self.cmd = cmd
        self.p = subprocess.Popen(["sh", "-c", 'read _ && exec "$@"', "sh"] + list(cmd),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.pid = self.p.pid

    def go(self, timeout=180):
        out, err = self.p.communicate("go\n", timeout=timeout)
        assert self.p.returncode == 0, (self.cmd, out[-2000:], err[-2000:])
        return out


def _probe(proto, pids=None):
    """One probe per protocol group, watching only that protocol (and, where the servers
    are single processes, only the servers and the tools): other sessions' load on this
    machine then never reaches our ring buffer.

    HTTP runs with the kernel's sampler on, at HTTP_SAMPLE transactions per second (the
    default, 2000, sheds nothing when this VM is slow): ab's transactions are shed, counted
    in the kernel.  h2load --h1 -m 2 writes its two requests in one writev and gets both
    answers in one read, which the kernel, seeing one message start per syscall, cannot
    tell from one transaction: user space never clears such a connection for shedding (map
    shed_ok, README "Counting rules"), so its counts stay exact."""
    args = ["-P", "1", "--proto", proto, "--no-ssl"] + (["--sample", str(HTTP_SAMPLE)]
                                                        if proto == "http" else [])
    if pids:
        args += ["-p", ",".join(str(p) for p in sorted(pids))]
    # a 32 MiB ring buffer: Redis, PostgreSQL and MySQL are not counted in the kernel when
    # the ring refuses their records (README; MySQL's result rows no longer reach the ring
    # buffer, "Result rows are not copied", but this VM's load starves the probe at times)
    probe = ProbeRun(args, env=dict(os.environ, L7PROBE_RINGBUF_PAGES="8192"))
    # This VM runs many sessions' loads at once: a probe starved of CPU fills its ring
    # buffer, and at saturation counts are not exact yet (issue 8).  A higher priority
    # keeps the moderate loads here within what the probe keeps up with.
    os.setpriority(os.PRIO_PROCESS, probe.proc.pid, -10)
    time.sleep(0.5)
    return probe


def _finish(probe, res):
    time.sleep(1.5)
    probe.stop()
    res["probe"] = probe
    with open(os.environ.get("LOADTOOLS_PROBE_LOG", os.devnull), "a") as f:
        f.write("\n".join(probe.err_lines) + "\n")


SHED_WARM, SHED_N = 8, 2000


def _sheddable_client(port):
    """One keep-alive connection from this process, a request per syscall, each answer read
    before the next: SHED_WARM requests, a pause in which user space clears the connection
    for the sampler (pipeline/conntrack.py _shed_check) and names the API, then SHED_N more,
    far above HTTP_SAMPLE per second: most of them are shed and counted by the kernel."""
    s = socket.create_connection((LOOP, port))
    try:
        for i in range(SHED_WARM + SHED_N):
            if i == SHED_WARM:
                time.sleep(1.0)
            s.sendall(b"GET /lt HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while not (b"\r\n\r\n" in got and got.endswith(b"ok\n")):
                d = s.recv(65536)
                assert d, "nginx closed the connection"
                got += d
    finally:
        s.close()


@pytest.fixture(scope="module")
def http_load(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    os.chmod(str(tmp), 0o777)
    ab_log, h2_log = str(tmp / "ab.log"), str(tmp / "h2.log")
    shed_log = str(tmp / "shed.log")
    with nginx(extra_locations=_access_log_location(ab_log)) as ng_ab, \
            nginx(extra_locations=_access_log_location(h2_log)) as ng_h2, nginx() as ng_bad, \
            nginx(extra_locations=_access_log_location(shed_log)) as ng_shed:
        ab = _Held(["ab", "-q", "-k", "-n", str(HTTP_N), "-c", "4",
                    "http://%s:%d/lt" % (LOOP, ng_ab.port)])
        h2 = _Held(["h2load", "--h1", "-n", str(HTTP_N), "-c", "4", "-m", "2",
                    "http://%s:%d/lt" % (LOOP, ng_h2.port)])
        res = {"ng_ab": ng_ab, "ng_h2": ng_h2, "ng_bad": ng_bad, "ab_log": ab_log,
               "h2_log": h2_log, "ab_pid": ab.pid, "h2_pid": h2.pid, "ng_shed": ng_shed,
               "shed_log": shed_log}
        servers = (set(ng_ab.pids()) | set(ng_h2.pids()) | set(ng_bad.pids())
                   | set(ng_shed.pids()))
        probe = _probe("http", servers | {ab.pid, h2.pid, os.getpid()})
        try:
            ab.go()
            h2.go()
            _sheddable_client(ng_shed.port)
            res["bad"] = [_refused(ng_bad.port, b"GET abc HTTP/1.1\r\nHost: x\r\n\r\n"),
                          _refused(ng_bad.port, b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n"),
                          _refused(ng_bad.port, b"hello world\r\n\r\n")]
        finally:
            _finish(probe, res)
        yield res


@pytest.fixture(scope="module")
def redis_load():
    with redis_server() as rd:
        runs = [_Held(["redis-benchmark", "-h", LOOP, "-p", str(rd.port), "-n", str(REDIS_N),
                       "-c", "4", "-P", "8", "-t", t, "-q"]) for t in REDIS_TESTS.split(",")]
        runs.append(_Held(["redis-benchmark", "-h", LOOP, "-p", str(rd.port),
                           "-n", str(LRANGE_N), "-c", "2", "-P", "4", "-t", "lrange_100",
                           "-q"]))
        res = {"rd": rd, "redis_pids": {r.pid for r in runs}, "server_pids": set(rd.pids())}
        before = _redis_stats(rd)
        probe = _probe("redis", res["server_pids"] | res["redis_pids"])
        try:
            for r in runs:      # one redis-benchmark process per test kind
                r.go()
        finally:
            _finish(probe, res)
        res["redis_exec"] = _redis_executed(before, _redis_stats(rd))
        yield res


@pytest.fixture(scope="module")
def pg_load():
    with postgres(settings=["log_statement=all", "log_connections=on"]) as pg:
        pg.pgbench_init()
        res = {"pg": pg, "seg": {}}
        probe = _probe("pgsql")      # the backends are forked per connection: no pid list
        try:
            for mode in ("simple", "prepared"):
                start = os.path.getsize(pg.log_path)
                pid, out = _run([os.path.join(PG_BIN, "pgbench"), "-h", LOOP,
                                 "-p", str(pg.port), "-U", pg.user, "-t", str(PG_TX),
                                 "-c", str(PG_CLIENTS), "-M", mode, pg.dbname])
                time.sleep(0.3)
                res["seg"][mode] = (pid, out, start, os.path.getsize(pg.log_path))
        finally:
            _finish(probe, res)
        yield res


@pytest.fixture(scope="module")
def my_load():
    with mariadb(general_log=True) as db:
        sb = ["sysbench", "oltp_read_write", "--db-driver=mysql", "--mysql-host=" + LOOP,
              "--mysql-port=%d" % db.port, "--mysql-user=" + db.user,
              "--mysql-password=" + db.password, "--mysql-db=" + db.database,
              "--mysql-ssl=off", "--tables=2", "--table-size=1000"]
        _run(sb + ["prepare"])
        run = _Held(sb + ["--threads=2", "--events=%d" % SB_EVENTS, "--time=0", "run"])
        res = {"db": db, "server_pids": set(db.pids()), "sb_pid": run.pid}
        probe = _probe("mysql", res["server_pids"] | {run.pid})
        try:
            start = os.path.getsize(db.general_log_path)
            out = run.go()
            time.sleep(0.3)
            res["seg"] = (run.pid, out, start, os.path.getsize(db.general_log_path))
        finally:
            _finish(probe, res)
        yield res


@pytest.mark.parametrize("group,keys,proto", [
    ("http_load", ("ng_ab", "ng_h2"), "http"), ("redis_load", ("rd",), "redis"),
    ("pg_load", ("pg",), "pgsql"), ("my_load", ("db",), "mysql")])
def test_rows_sane(request, group, keys, proto):
    load = request.getfixturevalue(group)
    for key in keys:
        _check_common(load["probe"], proto, load[key].port)


def test_redis_benchmark_pipelined_exact(redis_load):
    load = redis_load
    port = load["rd"].port
    cmds, errs = load["redis_exec"]
    assert not errs
    assert cmds["SET"][0] >= REDIS_N and cmds["LRANGE"][0] == LRANGE_N, cmds
    expected = {api: [c, c, 0, 0, 0] for api, (c, _) in cmds.items()}
    n = sum(c for c, _ in cmds.values())
    for role, pids in (("server", load["server_pids"]), ("client", load["redis_pids"])):
        rpc = _sel(_port_rows(load["probe"], "l7_rpc", port), role, pids)
        api = _sel(_port_rows(load["probe"], "l7_rpc_api", port), role, pids)
        assert _apis(api) == expected, role
        assert (total(rpc, "req_count"), total(rpc, "resp_count"),
                total(rpc, "err_count")) == (n, n, 0), role


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench_tpcb_exact(pg_load, mode):
    load = pg_load
    pg = load["pg"]
    pid, out, start, end = load["seg"][mode]
    assert "actually processed: %d/%d" % (PG_TX * PG_CLIENTS, PG_TX * PG_CLIENTS) in out
    backends, done = _pg_segment(pg.log_path, start, end)
    verbs = {}
    for d in done.values():
        for v, c in d.items():
            v = v.rstrip(";")
            verbs[v] = verbs.get(v, 0) + c
    # TPC-B: BEGIN, 3 UPDATEs, SELECT, INSERT, END per transaction (plus pgbench's setup)
    assert verbs["UPDATE"] >= 3 * PG_TX * PG_CLIENTS and verbs["END"] >= PG_TX * PG_CLIENTS
    n = sum(verbs.values())
    expected = {v: [c, c, 0, 0, 0] for v, c in verbs.items()}
    rpc = _port_rows(load["probe"], "l7_rpc", pg.port)
    api = _port_rows(load["probe"], "l7_rpc_api", pg.port)
    for role, pids in (("server", backends), ("client", {pid})):
        assert _apis(_sel(api, role, pids)) == expected, role
        assert (total(_sel(rpc, role, pids), "req_count"),
                total(_sel(rpc, role, pids), "resp_count"),
                total(_sel(rpc, role, pids), "err_count")) == (n, n, 0), role
        assert _apis(_sel(api, role, pids)) == expected, role


def test_sysbench_oltp_read_write_exact(my_load):
    load = my_load
    db = load["db"]
    pid, out, start, end = load["seg"]
    assert "total number of events:              %d" % SB_EVENTS in out, out
    cmds, sessions = _my_segment(db.general_log_path, start, end)
    assert sessions >= 2
    exp = {api: [c, r, 0, 0, 0] for api, (c, r) in cmds.items()}
    rpc = _port_rows(load["probe"], "l7_rpc", db.port)
    api = _port_rows(load["probe"], "l7_rpc_api", db.port)
    for role, pids in (("server", load["server_pids"]), ("client", {pid})):
        r = _sel(rpc, role, pids)
        got = _apis(_sel(api, role, pids))
        # sysbench's errors (a duplicate key it ignores) are answered, so counted: compare
        # request and response counts, and errors with the error total
        assert (total(r, "req_count"), total(r, "resp_count")) == (
            sum(v[0] for v in exp.values()), sum(v[1] for v in exp.values())), role
        assert {a: v[:2] for a, v in got.items()} == {a: v[:2] for a, v in exp.items()}, role


@pytest.mark.parametrize("tool", ["ab", "h2"])
def test_http_load_tool_exact(http_load, tool):
    load = http_load
    ng = load["ng_ab" if tool == "ab" else "ng_h2"]
    served = _lines(load["ab_log" if tool == "ab" else "h2_log"])
    assert len(served) == HTTP_N
    assert all('"GET /lt HTTP/1.' in line and '" 200 ' in line for line in served)
    pid = load["ab_pid" if tool == "ab" else "h2_pid"]
    rpc = _port_rows(load["probe"], "l7_rpc", ng.port)
    api = _port_rows(load["probe"], "l7_rpc_api", ng.port)
    for role, pids in (("server", None), ("client", {pid})):
        assert (total(_sel(rpc, role, pids), "req_count"),
                total(_sel(rpc, role, pids), "resp_count"),
                total(_sel(rpc, role, pids), "err_count")) == (HTTP_N, HTTP_N, 0), role
        assert _apis(_sel(api, role, pids)) == {"GET /lt": [HTTP_N, HTTP_N, 0, 0, 0]}, role


def test_http_sampler_shed(http_load):
    """The sampler shed, and what it shed is counted: _sheddable_client's connection,
    cleared for the sampler after its first requests, sheds most of the rest, and both
    ends are exact per link and per API against nginx's access log.  (ab's connections,
    above, are shed too when user space clears them before ab is done.)"""
    lines = http_load["probe"].err_lines
    shed = sum(int(m.group(1)) for m in (re.search(r"\((\d+) sampled out by --sample", ln)
                                         for ln in lines) if m)
    # the client of _sheddable_client alone: most of its SHED_N requests
    assert shed >= SHED_N // 2, shed
    ng = http_load["ng_shed"]
    assert len(_lines(http_load["shed_log"])) == SHED_WARM + SHED_N
    rpc = _port_rows(http_load["probe"], "l7_rpc", ng.port)
    api = _port_rows(http_load["probe"], "l7_rpc_api", ng.port)
    n = SHED_WARM + SHED_N
    for role, pids in (("server", None), ("client", {os.getpid()})):
        assert (total(_sel(rpc, role, pids), "req_count"),
                total(_sel(rpc, role, pids), "resp_count"),
                total(_sel(rpc, role, pids), "err_count")) == (n, n, 0), role
        assert _apis(_sel(api, role, pids)) == {"GET /lt": [n, n, 0, 0, 0]}, role


def test_refused_requests_counted_both_ways(http_load):
    load = http_load
    """nginx answers a malformed target with 400: request and response are both counted
    (the kernel rule lets the request through); a request too garbled to be detected is not
    counted, and neither is its 400 (detect_pairable)."""
    assert all(b.startswith(b"HTTP/1.1 400 ") for b in load["bad"]), load["bad"]
    rpc = _port_rows(load["probe"], "l7_rpc", load["ng_bad"].port)
    for role in ("server", "client"):
        rows = _sel(rpc, role)
        assert (total(rows, "req_count"), total(rows, "resp_count"),
                total(rows, "err_count")) == (2, 2, 2), role
