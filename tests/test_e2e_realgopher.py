"""Under the REAL gala-gopher daemon: upstream's source (../shared/vendor/gala-gopher, built
once into a cache, tests/support/realgopher.py), the probe from ``make install``, real
servers on loopback, and an operator's view: REST ``PUT /l7`` with ``json=`` bodies, the
daemon's Prometheus endpoint, its log.

One daemon serves the module's tests in order: switched on, then changed at run time
(protocols, sub-probes, period, snoopers, support_ssl), then ``state: stopped``, then the
daemon stopped as a whole.  Counts are exact and come from the traffic the test makes: the
servers' own processes are watched (long-lived, so the daemon can build their ``comm``
label); clients are short-lived tools or this test process.  Snoopers name only this
test's servers (proc_id, or proc_name with a command-line part unique to them, such as the
port): a bare ``^nginx$`` would match every nginx on the host, and another test's load on
its own server could then fill the probe's per-period trace quota or the daemon's table.

The daemon's endpoint drains what it returns and hands lines to its ingest thread only when
a later line arrives (at most every 5 s), so every check accumulates scrapes until the
expected numbers are in, then keeps scraping for one more report period and ingest
hand-over, so that a count one too high fails too.
"""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from tests.support.install import installed_or_fail
from tests.support.mysql_prepared import connect as mysql_connect
from tests.support.realgopher import (RealGopher, build, parse_metrics, promtool_check,
                                      select, total)
from tests.support.servers import PG_BIN, mariadb, nginx, postgres, redis_server
from tests.test_e2e_db import MY_LINE
from tests.test_e2e_gopher import (PING, PONG, bpf_objects, bpftool_ids, probe_events,
                                   redis_pings)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

ALL_SUBPROBES = ["l7_bytes_metrics", "l7_rpc_metrics", "l7_rpc_trace"]
PERIOD = 5                       # the smallest report_period the daemon accepts
START_TIMEOUT = 120              # PUT -> probe started, BPF compiled and attached
SETTLE = PERIOD + 6              # one more report and one more ingest hand-over
STOP_LIMIT = 2.0                 # s: stopped -> no probe process, nothing attached


def proc_name(*comms):
    """A proc_name snooper per ``comm`` regex, or per ``(comm, cmdline substring)``."""
    return {"proc_name": [{"comm": c, "cmdline": "", "debugging_dir": ""} if isinstance(c, str)
                          else {"comm": c[0], "cmdline": c[1], "debugging_dir": ""}
                          for c in comms]}


def snoopers(*parts):
    """Snooper dicts merged (their lists joined)."""
    out = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def l7_config(snoop, protocols, subprobes=ALL_SUBPROBES, period=PERIOD, ssl=0):
    """The JSON of ``PUT /l7`` (after ``json=``)."""
    return {"cmd": {"probe": list(subprobes)}, "snoopers": snoop,
            "params": {"l7_protocol": list(protocols), "report_period": period,
                       "support_ssl": ssl},
            "state": "running"}


def curl(*urls, insecure=False):
    """One curl for all URLs: one connection, every response read."""
    args = ["curl", "-s", "-o", "/dev/null", "--max-time", "10"]
    if insecure:
        args.append("-k")
    for u in urls:
        args += [u, "-o", "/dev/null"]
    subprocess.run(args, check=True, timeout=60)


class Env:
    def __init__(self, gopher):
        self.g = gopher
        self.samples = []            # every sample of every scrape so far

    def apply(self, cfg, timeout=START_TIMEOUT):
        """PUT the configuration and wait until the probe says it applied it (its
        ``[INFO] ... watching`` line in the daemon's log)."""
        mark = self.g.mark()
        status, text = self.g.put(cfg)
        assert status == 200 and '"success"' in text, (status, text)
        line = self.g.wait_log(lambda l: "l7probe: watching " in l, timeout, after=mark)
        assert line, "probe did not apply %r:\n%s" % (cfg, self.g.log_text()[mark:][-3000:])
        return line

    def drain(self, seconds=SETTLE):
        """Scrape for ``seconds``: what the probe printed before is consumed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.scrape()
            time.sleep(1.0)

    def pids(self):
        return {p for srv in self.servers for p in srv.pids()}

    def scrape(self):
        """This scrape's samples of our servers' processes (the promtool check takes
        whole scrapes)."""
        got = parse_metrics(self.g.scrape())
        self.samples += got
        mine = {str(p) for p in self.pids()}
        return [x for x in got if x.labels.get("tgid") in mine]

    def collect(self, done, timeout=40):
        """Samples scraped until ``done(samples)`` holds, plus SETTLE seconds more."""
        got = []
        deadline = time.monotonic() + timeout
        while not done(got):
            assert time.monotonic() < deadline, "expected numbers not reached; got %s" % (
                sorted({(s.name, s.labels.get("server_port"), s.value) for s in got
                        if s.value})[:60],)
            got += self.scrape()
            time.sleep(1.0)
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:
            got += self.scrape()
            time.sleep(1.0)
        return got


@pytest.fixture(scope="module")
def env():
    inst = installed_or_fail()
    bin_dir = build()
    with nginx() as ng, nginx(tls=True) as ngs, redis_server() as redis, \
            mariadb(general_log=True) as my, postgres() as pg, RealGopher(inst, bin_dir) as g:
        e = Env(g)
        e.ng, e.ngs, e.redis, e.my, e.pg = ng, ngs, redis, my, pg
        e.servers = (ng, ngs, redis, my, pg)
        # our nginx by pid; redis and mariadbd by name and their port in the command line
        e.nginx = {"proc_id": sorted(ng.pids() + ngs.pids())}
        e.redis_name = proc_name(("^redis-server$", "127.0.0.1:%d " % redis.port))
        e.my_name = proc_name(("^mariadbd$", "--port=%d " % my.port))
        yield e


def _port(port):
    return {"server_port": str(port), "l7_role": "server"}


def test_rest_rejects_what_the_daemon_does_not_accept(env):
    g = env.g
    for bad in (l7_config(proc_name("^nginx$"), ["http"], period=4),
                l7_config(proc_name("^nginx$"), ["http"], period=601),
                l7_config({}, ["http"]),
                l7_config(proc_name("^nginx$"), ["http2"])):
        status, text = g.put(bad)
        assert '"success"' not in text, (bad, status, text)
    assert g.get()["state"] != "running"
    assert g.probe_pids() == []


def test_http_and_redis_exact_counts_with_daemon_labels(env):
    g, ng, redis = env.g, env.ng, env.redis
    env.apply(l7_config(snoopers(env.nginx, env.redis_name), ["http", "redis"]))
    env.pid0 = g.probe_pids()
    assert len(env.pid0) == 1, env.pid0
    curl(*[ng.url("/")] * 5, ng.url("/status/404"), ng.url("/status/404"))
    redis_pings(redis.port, 40)

    def done(s):
        return (total(s, "gala_gopher_l7_req_count", **_port(ng.port)) >= 7 and
                total(s, "gala_gopher_l7_req_count", **_port(redis.port)) >= 40 and
                len(select(s, "gala_gopher_l7_trace_latency", **_port(ng.port))) >= 7)
    s = env.collect(done)
    # HTTP, server side of nginx
    assert total(s, "gala_gopher_l7_req_count", **_port(ng.port)) == 7
    assert total(s, "gala_gopher_l7_resp_count", **_port(ng.port)) == 7
    assert total(s, "gala_gopher_l7_err_count", **_port(ng.port)) == 2
    assert total(s, "gala_gopher_l7_api_req_count", api="GET /", **_port(ng.port)) == 5
    assert total(s, "gala_gopher_l7_api_req_count", api="GET /status/404",
                 **_port(ng.port)) == 2
    assert total(s, "gala_gopher_l7_api_client_err_count", **_port(ng.port)) == 2
    traces = select(s, "gala_gopher_l7_trace_latency", **_port(ng.port))
    assert sorted((t.labels["req_path"], t.labels["resp_code"]) for t in traces) == \
        [("/", "200")] * 5 + [("/status/404", "404")] * 2
    # each trace row its own series (five GET / can share a millisecond)
    assert len({t.line.rsplit("}", 1)[0] for t in traces}) == 7, traces
    # Redis: exact bytes too (40 PINGs of 14 bytes, 40 PONGs of 7)
    assert total(s, "gala_gopher_l7_req_count", **_port(redis.port)) == 40
    assert total(s, "gala_gopher_l7_bytes_recv", **_port(redis.port)) == 40 * len(PING)
    assert total(s, "gala_gopher_l7_bytes_sent", **_port(redis.port)) == 40 * len(PONG)
    # the labels the daemon adds: comm of the watched process, machine_id
    comm = {p: "nginx" for n in (ng, env.ngs) for p in n.pids()}
    comm.update((p, "redis-server") for p in redis.pids())
    for smp in s:
        assert smp.labels.get("comm") == comm.get(int(smp.labels["tgid"])), smp
        assert smp.labels["machine_id"].startswith(g.machine_id + "-"), smp
    assert {smp.labels["comm"] for smp in s} == {"nginx", "redis-server"}
    assert g.drops(env.pids()) == []


def test_tls_switched_on_at_run_time(env):
    g, ngs = env.g, env.ngs
    env.apply(l7_config(env.nginx, ["http"], ["l7_rpc_metrics"], ssl=1))
    assert g.probe_pids() == env.pid0            # the same probe, reconfigured
    curl(*[ngs.url("/")] * 4, insecure=True)
    port = _port(ngs.port)
    s = env.collect(lambda s: total(s, "gala_gopher_l7_req_count", ssl="ssl", **port) >= 4)
    assert total(s, "gala_gopher_l7_req_count", ssl="ssl", **port) == 4
    assert total(s, "gala_gopher_l7_req_count", ssl="no_ssl", **port) == 0
    assert {x.labels["comm"] for x in select(s, "gala_gopher_l7_req_count", **port)} == \
        {"nginx"}
    assert g.drops(env.pids()) == []


def _my_commands(path, thread_id):
    """Commands of one session in MariaDB's general log (its connect and quit aside)."""
    n = 0
    with open(path, errors="replace") as f:
        for line in f:
            m = MY_LINE.match(line.rstrip("\n"))
            if m and int(m.group(1)) == thread_id and m.group(2) not in ("Connect", "Quit"):
                n += 1
    return n


def test_mysql_and_pgsql_exact_counts(env):
    g, my, pg = env.g, env.my, env.pg
    n = 12
    # A long-lived psql session opened before the servers are watched: the daemon resolves
    # ^postgres$ to its backend too (a backend forked later would be watched only once the
    # daemon has seen the fork and resent its list: its first queries would be missed).
    # MySQL's connection is opened once mariadbd is watched: mariadbd reads a packet's
    # 4-byte header and its body in two calls, so a connection seen only from a later
    # command on is not recognised; its greeting is (include/l7.h detect_mysql).
    conn = None
    psql = subprocess.Popen([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-h",
                             "127.0.0.1", "-p", str(pg.port), "-U", pg.user, pg.dbname],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        psql.stdin.write("SELECT 0;\n")
        psql.stdin.flush()
        assert psql.stdout.readline().strip() == "0"
        # the backend's title holds the client's address: "postgres: ... 127.0.0.1(PORT)"
        psql.stdin.write("SELECT inet_client_port();\n")
        psql.stdin.flush()
        backend = proc_name(("^postgres$", "127.0.0.1(%s)" % psql.stdout.readline().strip()))
        env.apply(l7_config(snoopers(env.my_name, backend), ["mysql", "pgsql"],
                            ALL_SUBPROBES[:2]))
        conn = mysql_connect(my.port, my.user, my.password, database=my.database)
        cur = conn.cursor()
        for i in range(n):
            cur.execute("SELECT %d" % i)
            assert cur.fetchall() == [(i,)]
            psql.stdin.write("SELECT %d;\n" % (i + 1))
            psql.stdin.flush()
            assert psql.stdout.readline().strip() == str(i + 1)
        cur.close()
        # what the connector sent besides our n queries (session set-up at connect),
        # from the server's own general log
        my_n = _my_commands(my.general_log_path, conn.connection_id)
        assert my_n >= n

        def done(s):
            return (total(s, "gala_gopher_l7_api_req_count", api="SELECT",
                          **_port(my.port)) >= n and
                    total(s, "gala_gopher_l7_req_count", **_port(pg.port)) >= n)
        s = env.collect(done)
    finally:
        psql.stdin.close()
        psql.wait(10)
        if conn is not None:
            conn.close()
    # MariaDB's general log leaves out COM_PING (the connector sends one at connect)
    my_req = total(s, "gala_gopher_l7_req_count", **_port(my.port))
    pings = total(s, "gala_gopher_l7_api_req_count", api="PING", **_port(my.port))
    assert my_req - pings == my_n
    assert total(s, "gala_gopher_l7_resp_count", **_port(my.port)) == my_req
    assert total(s, "gala_gopher_l7_api_req_count", api="SELECT", **_port(my.port)) == n
    assert total(s, "gala_gopher_l7_req_count", **_port(pg.port)) == n
    assert total(s, "gala_gopher_l7_resp_count", **_port(pg.port)) == n
    assert {x.labels["comm"] for x in select(s, "gala_gopher_l7_req_count",
                                             **_port(my.port))} == {"mariadbd"}
    assert {x.labels["comm"] for x in select(s, "gala_gopher_l7_req_count",
                                             **_port(pg.port))} == {"postgres"}
    assert {x.labels["protocol"] for x in select(s, "gala_gopher_l7_req_count",
                                                 **_port(my.port))} == {"mysql"}
    assert {x.labels["protocol"] for x in select(s, "gala_gopher_l7_req_count",
                                                 **_port(pg.port))} == {"pgsql"}
    assert g.drops(env.pids()) == []


def test_run_time_changes(env):
    g, ng, ngs, redis = env.g, env.ng, env.ngs, env.redis
    both = snoopers(env.nginx, env.redis_name)
    # 1. protocols: Redis only, HTTP traffic not reported
    # (Every earlier check ended with a settled collect: no request of before is still on
    # its way, so counts need no drain; idle rows printed before a change may still come.)
    env.apply(l7_config(both, ["redis"], ssl=0))
    curl(ng.url("/"), ng.url("/"), ng.url("/"))
    redis_pings(redis.port, 10)
    s = env.collect(lambda s: total(s, "gala_gopher_l7_req_count", **_port(redis.port)) >= 10)
    assert total(s, "gala_gopher_l7_req_count", **_port(redis.port)) == 10
    assert total(s, "gala_gopher_l7_req_count", **_port(ng.port)) == 0, "HTTP not asked for"
    # 2. sub-probes (l7_rpc only) and period (10 s: throughput = requests / 10); the drain
    #    lets the rows of all tables printed before the change go by
    env.apply(l7_config(both, ["http", "redis"], ["l7_rpc_metrics"], period=10))
    env.drain()
    curl(*[ng.url("/")] * 6)
    s = env.collect(lambda s: total(s, "gala_gopher_l7_req_count", **_port(ng.port)) >= 6,
                    timeout=60)
    assert total(s, "gala_gopher_l7_req_count", **_port(ng.port)) == 6
    # gala-gopher stamps a sample with its scrape's second, and a scrape holds every row
    # ingested since the one before (two periods' rows of a link when a scrape came late):
    # per scrape, the throughputs are the request counts / 10, row for row
    reqs = select(s, "gala_gopher_l7_req_count", **_port(ng.port))
    tps = select(s, "gala_gopher_l7_throughput_req", **_port(ng.port))
    assert any(x.value for x in reqs)
    for ts in {x.ts for x in reqs} | {t.ts for t in tps}:
        want = sorted("%.2f" % (x.value / 10) for x in reqs if x.ts == ts)
        assert sorted("%.2f" % t.value for t in tps if t.ts == ts) == want, (ts, reqs, tps)
    names = {x.name for x in s}
    # l7_rpc_metrics is the l7_rpc and l7_rpc_api tables; nothing of l7_link or l7_trace
    assert total(s, "gala_gopher_l7_api_req_count", api="GET /", **_port(ng.port)) == 6
    assert not {n for n in names if n.startswith(("gala_gopher_l7_bytes", "gala_gopher_l7_segs",
                                                  "gala_gopher_l7_trace"))}, names
    # 3. snoopers: proc_id of redis-server only; nginx is no longer watched
    env.apply(l7_config({"proc_id": [redis.pid]}, ["http", "redis"]))
    curl(ng.url("/"), ng.url("/"))
    redis_pings(redis.port, 5)
    s = env.collect(lambda s: total(s, "gala_gopher_l7_req_count", **_port(redis.port)) >= 5)
    assert total(s, "gala_gopher_l7_req_count", **_port(redis.port)) == 5
    assert total(s, "gala_gopher_l7_req_count", **_port(ng.port)) == 0
    # 4. support_ssl 1 -> 0 (it was switched on by test_tls_switched_on_at_run_time and
    #    off in step 1): HTTPS to nginx is not reported as TLS any more
    env.apply(l7_config(env.nginx, ["http"], ["l7_rpc_metrics"], ssl=0))
    curl(*[ngs.url("/")] * 3, insecure=True)
    curl(ng.url("/"))
    s = env.collect(lambda s: total(s, "gala_gopher_l7_req_count", **_port(ng.port)) >= 1)
    assert total(s, "gala_gopher_l7_req_count", ssl="ssl") == 0
    assert total(s, "gala_gopher_l7_req_count", **_port(ng.port)) == 1
    assert g.probe_pids() == env.pid0            # all of it without a restart
    assert g.drops(env.pids()) == []


def test_promtool_finds_nothing_but_upstream_help_text(env):
    texts = [t for t in env.g.scrapes if t.strip()]
    assert texts
    problems = set()
    for t in texts:
        rc, lines = promtool_check(t)
        for line in lines:
            # upstream renders no HELP/TYPE lines: one "no help text" per metric
            if not line.endswith(" no help text"):
                problems.add(line)
        assert rc in (0, 3), (rc, lines)           # 3: lint findings only, parsed fine
    assert problems == set()
    # every trace row of the whole run is its own series
    traces = [s.line.rsplit("}", 1)[0] for s in env.samples
              if s.name == "gala_gopher_l7_trace_latency"]
    assert traces and len(set(traces)) == len(traces)


def perf_attachments():
    """Every BPF program attached through a perf event (tracepoints, uprobes), from
    ``bpftool perf``: [{pid, fd, prog_id, fd_type, ...}]."""
    cp = subprocess.run(["bpftool", "-j", "perf", "show"], capture_output=True, text=True,
                        timeout=30, check=True)
    return json.loads(cp.stdout or "[]")


def test_state_stopped_leaves_nothing_behind(env):
    g = env.g
    # TLS on, so that there are uprobes to detach too
    env.apply(l7_config(env.nginx, ["http"], ALL_SUBPROBES, ssl=1))
    [pid] = g.probe_pids()
    progs, maps, perf = bpf_objects(pid)
    assert progs and maps and perf
    mine = [a for a in perf_attachments() if a["pid"] == pid]
    assert {a["fd_type"] for a in mine} >= {"uprobe", "uretprobe", "tracepoint"}, mine
    t0 = time.monotonic()
    status, text = g.put({"state": "stopped"})
    assert status == 200 and '"success"' in text, (status, text)
    while g.probe_pids() and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    assert g.probe_pids() == []
    assert elapsed < STOP_LIMIT, "probe took %.2f s to stop" % elapsed
    while (progs & bpftool_ids("prog")) and time.monotonic() - t0 < STOP_LIMIT:
        time.sleep(0.05)
    assert not progs & bpftool_ids("prog"), "BPF programs left after %.2f s" % (
        time.monotonic() - t0)
    assert probe_events(pid) == []
    left = [a for a in perf_attachments() if a["pid"] == pid or a["prog_id"] in progs]
    assert left == []
    assert g.get()["state"] == "stopped"
    assert g.alive()
    assert g.drops(env.pids()) == []


def test_daemon_stopped_as_a_whole(env):
    g, ng = env.g, env.ng
    # A container snooper too.  Upstream's daemon resolves a container with the docker,
    # iSulad or crictl CLI and its cgroup v1 cpu,cpuacct directory; with neither on the test
    # machines it logs that and sends no container object: the probe starts all the same.
    fake = "0123456789ab"
    mark = g.mark()
    env.apply(l7_config(dict(env.nginx, container_id=[fake]), ["http"]))
    assert g.get()["snoopers"]["container_id"] == [fake]
    assert g.wait_log(lambda l: "Fail to get info of container " + fake in l, 10, after=mark)
    [pid] = g.probe_pids()
    progs, maps, perf = bpf_objects(pid)
    assert progs and maps
    curl(ng.url("/"))
    t0 = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)           # what `systemctl stop gala-gopher` does
    while g.probe_pids() and time.monotonic() - t0 < 20:
        time.sleep(0.02)
    probe_s = time.monotonic() - t0
    rc = g.terminate(timeout=20)
    daemon_s = time.monotonic() - t0
    assert g.probe_pids() == []
    assert probe_s < STOP_LIMIT, "probe took %.2f s to stop" % probe_s
    assert rc == 0, rc
    # the kernel frees a program a little after the last fd of it closed
    while (progs & bpftool_ids("prog")) and time.monotonic() - t0 < STOP_LIMIT:
        time.sleep(0.05)
    assert not progs & bpftool_ids("prog"), "BPF programs left after %.2f s" % (
        time.monotonic() - t0)
    assert probe_events(pid) == []
    assert [a for a in perf_attachments() if a["pid"] == pid or a["prog_id"] in progs] == []
    assert daemon_s < 10, "daemon took %.1f s to stop" % daemon_s
    out = g.log_text()
    assert "was sent a stop signal" in out or "stopping" in out, out[-2000:]
    assert g.drops(env.pids()) == []
