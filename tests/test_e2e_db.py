"""End to end, for real: Redis, PostgreSQL and MariaDB servers on loopback, the probe
attached with BPF, traffic from the servers' own tools (redis-benchmark, pgbench, the
mariadb CLI) and small clients, and the exact counts the probe prints.

Expected numbers never come from the probe: they come from the servers' own accounting of
what they executed (Redis ``INFO commandstats`` / ``errorstats`` before and after the run,
PostgreSQL's ``log_statement=all`` log, MariaDB's general log), cross-checked with what the
clients report (pgbench's transactions processed, run_prepared's executions).

One probe run per server kind (``l7probe.py -P 1 --proto <kind>``: only that protocol is
detected, so other traffic on the machine cannot fill the ring buffer under us) serves the
checks of that kind.  Each Redis scenario has a server of its own; the PostgreSQL and MariaDB
scenarios run one after the other and are told apart by log offsets.
"""
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.probe import ProbeRun, total
from tests.support.servers import PG_BIN, mariadb, parse_pgbench, postgres, redis_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

LOOP = "127.0.0.1"
BENCH_N = 20000
N_ERR = 100
N_MSG = 50
PG_TX = 300            # pgbench -t per client
PG_CLIENTS = 2
MY_QUERIES = 20
# result sets far longer than the head of a response turn the kernel delivers
# (DB_TURN_HEAD): their rows are skipped in the kernel, every statement still counted
MY_BIG = ["SELECT seq, REPEAT('x', 100) FROM seq_1_to_3000", "SELECT 1",
          "SELECT seq, REPEAT('y', 200) FROM seq_1_to_2000 WHERE seq % 2 = 0",
          "SELECT seq FROM seq_1_to_5000", "SELECT nosuchcol FROM seq_1_to_3000"]
PG_BIG = ["SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g", "SELECT 1",
          "SELECT g FROM generate_series(1, 5000) g", "SELECT nosuchcol FROM pg_class"]
MY_PREPARED = 50


# ------------------------------------------------------------------------ helpers

def _start_probe(proto):
    probe = ProbeRun(["-P", "1", "--proto", proto])
    time.sleep(0.5)
    return probe


def _port_rows(probe, table, port):
    return [r for r in probe.records(table) if r["server_port"] == str(port)]


def _apis(rows):
    """{api: [req, resp, err, client_err, server_err]} summed over l7_rpc_api rows."""
    out = {}
    for r in rows:
        a = out.setdefault(r["api"], [0, 0, 0, 0, 0])
        for i, f in enumerate(("req_count", "resp_count", "err_count", "client_err_count",
                               "server_err_count")):
            a[i] += int(r[f])
    return out


def _sel(rows, role, tgids=None):
    return [r for r in rows if r["l7_role"] == role and
            (tgids is None or int(r["tgid"]) in tgids)]


def _check_common(probe, proto, port):
    """Every row about this server port: right protocol, plaintext, loopback addresses,
    L4 role matching the L7 role; the probe left cleanly and logged no parser exception."""
    n = 0
    for table in ("l7_link", "l7_rpc", "l7_rpc_api", "l7_trace"):
        for r in _port_rows(probe, table, port):
            n += 1
            assert r["protocol"] == proto, (table, r)
            assert r["ssl"] == "no_ssl", (table, r)
            assert (r["client_ip"], r["server_ip"]) == (LOOP, LOOP), (table, r)
            assert (r["l4_role"], r["l7_role"]) in {("tcp_server", "server"),
                                                     ("tcp_client", "client")}, (table, r)
    assert n, "no rows at all for port %d" % port
    assert probe.proc.returncode == 0, probe.err_lines[-20:]
    bad = [l for l in probe.err_lines
           if "exception" in l.lower() or "traceback" in l.lower() or
           "ring buffer full" in l or "tail call failed" in l]
    assert not bad, bad


def _py(script, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# ------------------------------------------------------------------------ Redis

# shared head of the small socket clients below (run as separate python3 processes)
_CLIENT_PRELUDE = textwrap.dedent(r"""
    import socket, sys
    def _rx(s, n):
        d = s.recv(n)
        if not d:
            raise SystemExit("connection closed by the server")
        return d
""")

REDIS_ERR_CLIENT = _CLIENT_PRELUDE + textwrap.dedent(r"""
    port, n = int(sys.argv[1]), int(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"*3\r\n$3\r\nSET\r\n$6\r\nstrkey\r\n$3\r\nabc\r\n")
    data = b""
    while not data.endswith(b"\r\n"):
        data += _rx(s, 4096)
    assert data == b"+OK\r\n", data
    s.sendall(b"*2\r\n$4\r\nINCR\r\n$6\r\nstrkey\r\n" * n)     # one write, n commands
    data = b""
    while data.count(b"\r\n") < n:
        data += _rx(s, 65536)
    print(sum(1 for l in data.split(b"\r\n") if l.startswith(b"-ERR")), flush=True)
    s.close()
""")

REDIS_SUBSCRIBER = _CLIENT_PRELUDE + textwrap.dedent(r"""
    port, n = int(sys.argv[1]), int(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n")
    data = b""
    while not data.endswith(b":1\r\n"):
        data += _rx(s, 4096)
    assert data == b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n", data
    print("ready", flush=True)
    data = b""
    while data.count(b"$7\r\nmessage\r\n") < n or not data.endswith(b"\r\n"):
        data += _rx(s, 65536)
    print(data.count(b"$7\r\nmessage\r\n"), flush=True)
    sys.stdin.readline()
    s.close()
""")

REDIS_PUBLISHER = _CLIENT_PRELUDE + textwrap.dedent(r"""
    port, n = int(sys.argv[1]), int(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port))
    receivers = 0
    for i in range(n):
        msg = b"m%03d" % i
        s.sendall(b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nnews\r\n$%d\r\n%s\r\n" % (len(msg), msg))
        data = b""
        while not data.endswith(b"\r\n"):
            data += _rx(s, 4096)
        receivers += int(data[1:-2])
    print(receivers, flush=True)
    s.close()
""")


def _redis_stats(r):
    """{api: [calls, failed_calls]} from INFO commandstats, and {error code: count}."""
    cmds, errs = {}, {}
    for line in r.cli("INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+),.*failed_calls=(\d+)", line.strip())
        if m:
            cmds[m.group(1).replace("|", " ").upper()] = [int(m.group(2)), int(m.group(3))]
    for line in r.cli("INFO", "errorstats").splitlines():
        m = re.match(r"errorstat_([^:]+):count=(\d+)", line.strip())
        if m:
            errs[m.group(1)] = int(m.group(2))
    return cmds, errs


def _delta(before, after):
    out = {}
    for k, v in after.items():
        b = before.get(k, [0] * len(v)) if isinstance(v, list) else before.get(k, 0)
        d = [x - y for x, y in zip(v, b)] if isinstance(v, list) else v - b
        if d != 0 and d != [0] * len(v if isinstance(v, list) else ()):
            out[k] = d
    return out


def _redis_executed(before, after):
    """Commands the server executed between two _redis_stats snapshots: ({api: [calls,
    failed]}, {error: count}); the INFO calls of the 'before' snapshot itself (made
    before the probe started) are taken out."""
    cmds = _delta(before[0], after[0])
    info = cmds.get("INFO")
    if info:
        info[0] -= 2                # INFO commandstats + INFO errorstats of `before`
        if info == [0, 0]:
            del cmds["INFO"]
    return cmds, _delta(before[1], after[1])


@pytest.fixture(scope="module")
def redis_run():
    with redis_server() as bench, redis_server() as errs, redis_server() as pubsub:
        servers = {"bench": bench, "errs": errs, "pubsub": pubsub}
        before = {k: _redis_stats(s) for k, s in servers.items()}
        res = {"servers": servers}
        probe = _start_probe("redis")
        try:
            b = subprocess.Popen(["redis-benchmark", "-h", LOOP, "-p", str(bench.port),
                                  "-n", str(BENCH_N), "-c", "4", "-P", "16",
                                  "-t", "set,get", "-q"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = b.communicate(timeout=120)
            assert b.returncode == 0, err
            res["bench_pid"] = b.pid

            e = _py(REDIS_ERR_CLIENT, errs.port, N_ERR)
            out, err = e.communicate(timeout=30)
            assert e.returncode == 0, err
            res["err_replies"] = int(out)
            res["err_pid"] = e.pid

            sub = _py(REDIS_SUBSCRIBER, pubsub.port, N_MSG)
            try:
                assert sub.stdout.readline().strip() == "ready"
                pub = _py(REDIS_PUBLISHER, pubsub.port, N_MSG)
                out, err = pub.communicate(timeout=30)
                assert pub.returncode == 0, err
                res["receivers"] = int(out)
                res["received"] = int(sub.stdout.readline())
                sub.stdin.write("bye\n")
                sub.stdin.flush()
                sub.wait(10)
            finally:
                if sub.poll() is None:
                    sub.kill()
            res["sub_pid"], res["pub_pid"] = sub.pid, pub.pid
            res["server_pids"] = {k: set(s.pids()) for k, s in servers.items()}
            time.sleep(1.5)
        finally:
            probe.stop()
        res["probe"] = probe
        res["executed"] = {k: _redis_executed(before[k], _redis_stats(s))
                           for k, s in servers.items()}
        yield res


def test_redis_rows_sane(redis_run):
    for s in redis_run["servers"].values():
        _check_common(redis_run["probe"], "redis", s.port)


def test_redis_benchmark_exact(redis_run):
    port = redis_run["servers"]["bench"].port
    cmds, errs = redis_run["executed"]["bench"]
    assert cmds["SET"] == [BENCH_N, 0] and cmds["GET"] == [BENCH_N, 0], cmds
    assert not errs
    n = sum(c for c, _ in cmds.values())       # 40000 + redis-benchmark's CONFIG GETs
    expected = {api: [c, c, 0, 0, 0] for api, (c, _) in cmds.items()}
    rpc = _port_rows(redis_run["probe"], "l7_rpc", port)
    api = _port_rows(redis_run["probe"], "l7_rpc_api", port)
    server = _sel(rpc, "server")
    assert {int(r["tgid"]) for r in server} <= redis_run["server_pids"]["bench"]
    assert (total(server, "req_count"), total(server, "resp_count"),
            total(server, "err_count")) == (n, n, 0)
    assert _apis(_sel(api, "server")) == expected
    client = _sel(rpc, "client")
    assert {int(r["tgid"]) for r in client} == {redis_run["bench_pid"]}
    assert (total(client, "req_count"), total(client, "resp_count"),
            total(client, "err_count")) == (n, n, 0)
    assert _apis(_sel(api, "client")) == expected


def test_redis_error_replies(redis_run):
    port = redis_run["servers"]["errs"].port
    cmds, errs = redis_run["executed"]["errs"]
    assert redis_run["err_replies"] == N_ERR
    assert cmds == {"SET": [1, 0], "INCR": [N_ERR, N_ERR]}
    assert errs == {"ERR": N_ERR}
    expected = {"SET": [1, 1, 0, 0, 0], "INCR": [N_ERR, N_ERR, N_ERR, N_ERR, 0]}
    rpc = _port_rows(redis_run["probe"], "l7_rpc", port)
    api = _port_rows(redis_run["probe"], "l7_rpc_api", port)
    for role, tgids in (("server", redis_run["server_pids"]["errs"]),
                        ("client", {redis_run["err_pid"]})):
        rows = _sel(rpc, role)
        assert {int(r["tgid"]) for r in rows} <= tgids and rows
        assert (total(rows, "req_count"), total(rows, "resp_count"),
                total(rows, "err_count")) == (N_ERR + 1, N_ERR + 1, N_ERR)
        assert _apis(_sel(api, role)) == expected


def test_redis_pubsub(redis_run):
    port = redis_run["servers"]["pubsub"].port
    cmds, errs = redis_run["executed"]["pubsub"]
    assert redis_run["receivers"] == N_MSG and redis_run["received"] == N_MSG
    assert cmds == {"SUBSCRIBE": [1, 0], "PUBLISH": [N_MSG, 0]} and not errs
    rpc = _port_rows(redis_run["probe"], "l7_rpc", port)
    api = _port_rows(redis_run["probe"], "l7_rpc_api", port)
    # subscriber: its SUBSCRIBE paired with the confirmation; 50 pushes, responses only
    sub = _sel(rpc, "client", {redis_run["sub_pid"]})
    assert (total(sub, "req_count"), total(sub, "resp_count"),
            total(sub, "err_count")) == (1, 1 + N_MSG, 0)
    assert _apis(_sel(api, "client", {redis_run["sub_pid"]})) == {
        "SUBSCRIBE": [1, 1, 0, 0, 0], "PUSH message": [0, N_MSG, 0, 0, 0]}
    # publisher: every PUBLISH paired
    pub = _sel(rpc, "client", {redis_run["pub_pid"]})
    assert (total(pub, "req_count"), total(pub, "resp_count")) == (N_MSG, N_MSG)
    assert _apis(_sel(api, "client", {redis_run["pub_pid"]})) == {
        "PUBLISH": [N_MSG, N_MSG, 0, 0, 0]}
    assert {int(r["tgid"]) for r in _sel(rpc, "client")} == \
        {redis_run["sub_pid"], redis_run["pub_pid"]}
    # server: both connections
    server = _sel(rpc, "server")
    assert {int(r["tgid"]) for r in server} <= redis_run["server_pids"]["pubsub"]
    assert (total(server, "req_count"), total(server, "resp_count")) == \
        (1 + N_MSG, 1 + 2 * N_MSG)
    assert _apis(_sel(api, "server")) == {
        "SUBSCRIBE": [1, 1, 0, 0, 0], "PUBLISH": [N_MSG, N_MSG, 0, 0, 0],
        "PUSH message": [0, N_MSG, 0, 0, 0]}


# ------------------------------------------------------------------------ PostgreSQL

PG_LOG = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] LOG:  (?:statement|execute [^:]+): (\S+)")
PG_CONN = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] LOG:  connection authorized: ")


def _pg_segment(path, start, end):
    """(backend pids that connected, {pid: {verb: statements executed}}) from the server
    log between two offsets (log_statement=all: one line per simple query string, one per
    extended-protocol Execute)."""
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    backends, done = set(), {}
    for line in text.splitlines():
        m = PG_CONN.match(line)
        if m:
            backends.add(int(m.group(1)))
        m = PG_LOG.match(line)
        if m:
            d = done.setdefault(int(m.group(1)), {})
            verb = m.group(2).upper()
            d[verb] = d.get(verb, 0) + 1
    return backends, done


def _sum_verbs(done, pids=None):
    out = {}
    for pid, d in done.items():
        if pids is None or pid in pids:
            for v, n in d.items():
                out[v] = out.get(v, 0) + n
    return out


@pytest.fixture(scope="module")
def pg_run():
    with postgres(settings=["log_statement=all", "log_connections=on"]) as pg:
        pg.pgbench_init()
        res = {"pg": pg, "segments": {}}
        probe = _start_probe("pgsql")
        try:
            for mode in ("simple", "prepared"):
                start = os.path.getsize(pg.log_path)
                p = subprocess.Popen([os.path.join(PG_BIN, "pgbench"), "-h", LOOP,
                                      "-p", str(pg.port), "-U", pg.user, "-S",
                                      "-t", str(PG_TX), "-c", str(PG_CLIENTS),
                                      "-M", mode, pg.dbname],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
                time.sleep(0.3)       # the log is written by the backends: let it settle
                res["segments"][mode] = (p.pid, parse_pgbench(out), start,
                                         os.path.getsize(pg.log_path))
            start = os.path.getsize(pg.log_path)
            q = subprocess.Popen([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t",
                                  "-h", LOOP, "-p", str(pg.port), "-U", pg.user,
                                  "-d", pg.dbname, "-c", "SELECT * FROM no_such_table"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = q.communicate(timeout=30)
            assert q.returncode != 0 and "does not exist" in err, err
            time.sleep(0.3)
            res["segments"]["error"] = (q.pid, None, start, os.path.getsize(pg.log_path))
            start = os.path.getsize(pg.log_path)
            q = subprocess.Popen([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t",
                                  "-h", LOOP, "-p", str(pg.port), "-U", pg.user,
                                  "-d", pg.dbname] + [a for c in PG_BIG for a in ("-c", c)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = q.communicate(timeout=30)
            assert q.returncode != 0 and len(out.splitlines()) == 3000 + 1 + 5000, err
            time.sleep(0.3)
            res["segments"]["big"] = (q.pid, None, start, os.path.getsize(pg.log_path))
            time.sleep(1.5)
        finally:
            probe.stop()
        res["probe"] = probe
        yield res


def test_pgsql_rows_sane(pg_run):
    _check_common(pg_run["probe"], "pgsql", pg_run["pg"].port)


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench_statements_exact(pg_run, mode):
    pg = pg_run["pg"]
    pid, bench, start, end = pg_run["segments"][mode]
    assert bench.processed == PG_TX * PG_CLIENTS and not bench.failed
    assert bench.query_mode == mode
    backends, done = _pg_segment(pg.log_path, start, end)
    assert len(backends) == PG_CLIENTS + 1          # the clients + pgbench's setup session
    verbs = _sum_verbs(done)
    # -S: one SELECT per transaction, plus pgbench's own setup statements (scale and
    # partition queries, vacuum, truncate), all counted from the server's log
    per_tx = [b for b in done.values() if b.get("SELECT", 0) == PG_TX]
    assert len(per_tx) == PG_CLIENTS and all(b == {"SELECT": PG_TX} for b in per_tx), done
    n = sum(verbs.values())
    rpc = _port_rows(pg_run["probe"], "l7_rpc", pg.port)
    api = _port_rows(pg_run["probe"], "l7_rpc_api", pg.port)
    expected = {v: [c, c, 0, 0, 0] for v, c in verbs.items()}
    server = _sel(rpc, "server", backends)
    assert {int(r["tgid"]) for r in server} == backends
    assert (total(server, "req_count"), total(server, "resp_count"),
            total(server, "err_count")) == (n, n, 0)
    assert _apis(_sel(api, "server", backends)) == expected
    for b in backends:      # and per backend, statement for statement
        rows = _sel(api, "server", {b})
        assert {a: v[0] for a, v in _apis(rows).items()} == done.get(b, {}), b
    client = _sel(rpc, "client", {pid})
    assert (total(client, "req_count"), total(client, "resp_count"),
            total(client, "err_count")) == (n, n, 0)
    assert _apis(_sel(api, "client", {pid})) == expected


def test_pgsql_failing_query(pg_run):
    pg = pg_run["pg"]
    pid, _, start, end = pg_run["segments"]["error"]
    backends, done = _pg_segment(pg.log_path, start, end)
    assert len(backends) == 1 and _sum_verbs(done) == {"SELECT": 1}
    api = _port_rows(pg_run["probe"], "l7_rpc_api", pg.port)
    assert _apis(_sel(api, "server", backends)) == {"SELECT": [1, 1, 1, 1, 0]}
    assert _apis(_sel(api, "client", {pid})) == {"SELECT": [1, 1, 1, 1, 0]}


def test_pgsql_big_results_rows_skipped_statements_exact(pg_run):
    """Result rows are not delivered (the kernel cuts each response turn after its head);
    every statement is counted, errors before the rows too."""
    pg = pg_run["pg"]
    pid, _, start, end = pg_run["segments"]["big"]
    backends, done = _pg_segment(pg.log_path, start, end)
    assert len(backends) == 1 and _sum_verbs(done) == {"SELECT": len(PG_BIG)}
    exp = {"SELECT": [len(PG_BIG), len(PG_BIG), 1, 1, 0]}
    api = _port_rows(pg_run["probe"], "l7_rpc_api", pg.port)
    assert _apis(_sel(api, "server", backends)) == exp
    assert _apis(_sel(api, "client", {pid})) == exp
    for role, pids in (("server", backends), ("client", {pid})):
        link = _sel(_port_rows(pg_run["probe"], "l7_link", pg.port), role, pids)
        assert (total(link, "bytes_lost"), total(link, "msgs_unparsed"),
                total(link, "msgs_dropped")) == (0, 0, 0), role
    assert any("pgsql: " in l and "response turn(s) this period delivered by the kernel "
               "up to their first" in l for l in pg_run["probe"].err_lines)


def test_pgsql_no_stray_rows(pg_run):
    """Every row of the port belongs to a scenario's pgbench/psql or its backends."""
    pg = pg_run["pg"]
    clients, backends = set(), set()
    for pid, _, start, end in pg_run["segments"].values():
        clients.add(pid)
        backends |= _pg_segment(pg.log_path, start, end)[0]
    rpc = _port_rows(pg_run["probe"], "l7_rpc", pg.port)
    assert {int(r["tgid"]) for r in _sel(rpc, "client")} == clients
    assert {int(r["tgid"]) for r in _sel(rpc, "server")} == backends


# ------------------------------------------------------------------------ MariaDB

MY_PREPARED_CLIENT = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, sys.argv[1])
    import mysql.connector.connection as c
    from tests.support.mysql_prepared import run_prepared
    pings = [0]
    orig = c.MySQLConnection.cmd_ping
    def cmd_ping(self, *a, **kw):
        pings[0] += 1
        return orig(self, *a, **kw)
    c.MySQLConnection.cmd_ping = cmd_ping
    done = run_prepared(int(sys.argv[2]), "test", "test", int(sys.argv[3]))
    print(done, pings[0], flush=True)
""")

MY_LINE = re.compile(r"^(?:\d{6}\s+[\d:]+)?\s+(\d+) (\w+(?: stmt| DB)?)\t(.*)$")
# general log command -> (probe api or None for the SQL verb, has a response)
MY_COMMANDS = {"Query": (None, True), "Execute": (None, True),
               "Prepare": ("STMT_PREPARE", True), "Reset stmt": ("STMT_RESET", True),
               "Close stmt": ("STMT_CLOSE", False), "Quit": ("QUIT", False),
               "Init DB": ("INIT_DB", True)}


def _my_segment(path, start, end):
    """{api: [commands, responses]} of the TCP sessions that connected between two offsets
    of the general log, and the number of such sessions."""
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    tcp, out = set(), {}
    for line in text.splitlines():
        m = MY_LINE.match(line)
        if not m:
            continue
        tid, cmd, arg = int(m.group(1)), m.group(2), m.group(3)
        if cmd == "Connect":
            if "using TCP/IP" in arg:
                tcp.add(tid)
            continue
        if tid not in tcp:
            continue            # a session of the unix socket, or from before
        assert cmd in MY_COMMANDS, line
        api, has_resp = MY_COMMANDS[cmd]
        api = api or arg.split(None, 1)[0].upper()
        a = out.setdefault(api, [0, 0])
        a[0] += 1
        a[1] += int(has_resp)
    return out, len(tcp)


@pytest.fixture(scope="module")
def my_run():
    with mariadb(general_log=True) as db:
        res = {"db": db, "segments": {}}
        cli = ["mariadb", "--no-defaults", "--protocol=TCP", "-h", LOOP, "-P", str(db.port),
               "-u", db.user, f"-p{db.password}", "--batch", "--skip-column-names",
               "--skip-ssl", db.database, "-e"]
        glog = db.general_log_path
        probe = _start_probe("mysql")
        try:
            def segment(name, cmd):
                start = os.path.getsize(glog)
                p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
                out, err = p.communicate(timeout=60)
                time.sleep(0.3)
                res["segments"][name] = (p.pid, p.returncode, out, err, start,
                                         os.path.getsize(glog))
            segment("queries", cli + ["; ".join("SELECT %d" % i
                                                for i in range(MY_QUERIES))])
            segment("syntax", cli + ["SELECT * FROM WHERE"])
            segment("prepared", [sys.executable, "-c", MY_PREPARED_CLIENT,
                                 os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 str(db.port), str(MY_PREPARED)])
            segment("compressed", cli[:-1] + ["--compress", "-e", "SELECT 42"])
            segment("big", cli + ["; ".join(MY_BIG)])   # the last one fails
            res["server_pids"] = set(db.pids())
            time.sleep(1.5)
        finally:
            probe.stop()
        res["probe"] = probe
        yield res


def _my_expect(my_run, name, extra=None, errors=None):
    _, _, _, _, start, end = my_run["segments"][name]
    cmds, sessions = _my_segment(my_run["db"].general_log_path, start, end)
    assert sessions == 1
    exp = {api: [n, r, 0, 0, 0] for api, (n, r) in cmds.items()}
    for api, n in (extra or {}).items():
        e = exp.setdefault(api, [0, 0, 0, 0, 0])
        e[0] += n
        e[1] += n
    for api, n in (errors or {}).items():
        exp[api][2] += n
        exp[api][3] += n
    return cmds, exp


def _my_check_client(my_run, name, exp):
    pid = my_run["segments"][name][0]
    port = my_run["db"].port
    rpc = _sel(_port_rows(my_run["probe"], "l7_rpc", port), "client", {pid})
    api = _sel(_port_rows(my_run["probe"], "l7_rpc_api", port), "client", {pid})
    assert (total(rpc, "req_count"), total(rpc, "resp_count"), total(rpc, "err_count")) == \
        tuple(sum(v[i] for v in exp.values()) for i in range(3))
    assert _apis(api) == exp


def test_mysql_big_results_rows_skipped_statements_exact(my_run):
    """Result rows are not delivered (the kernel cuts each response turn after its head);
    every statement is counted, with its error where the head holds it."""
    _, rc, out, err, _, _ = my_run["segments"]["big"]
    assert len(out.splitlines()) == 3000 + 1 + 1000 + 5000, err
    cmds, exp = _my_expect(my_run, "big", errors={"SELECT": 1})
    assert cmds["SELECT"] == [len(MY_BIG), len(MY_BIG)]
    _my_check_client(my_run, "big", exp)
    pid = my_run["segments"]["big"][0]
    link = _sel(_port_rows(my_run["probe"], "l7_link", my_run["db"].port), "client", {pid})
    assert total(link, "bytes_recv") > 3000 * 100 + 1000 * 200
    assert (total(link, "bytes_lost"), total(link, "msgs_unparsed"),
            total(link, "msgs_dropped")) == (0, 0, 0)
    assert any("mysql: " in l and "response turn(s) this period delivered by the kernel "
               "up to their first" in l for l in my_run["probe"].err_lines)


def test_mysql_rows_sane(my_run):
    _check_common(my_run["probe"], "mysql", my_run["db"].port)


def test_mysql_cli_queries(my_run):
    _, rc, out, err, _, _ = my_run["segments"]["queries"]
    assert rc == 0 and out.split() == [str(i) for i in range(MY_QUERIES)], err
    cmds, exp = _my_expect(my_run, "queries")
    assert cmds["SELECT"] == [MY_QUERIES, MY_QUERIES]
    assert exp == {"SELECT": [MY_QUERIES, MY_QUERIES, 0, 0, 0], "QUIT": [1, 0, 0, 0, 0]}
    _my_check_client(my_run, "queries", exp)


def test_mysql_syntax_error(my_run):
    _, rc, _, err, _, _ = my_run["segments"]["syntax"]
    assert rc != 0 and err.count("ERROR 1064") == 1, err
    _, exp = _my_expect(my_run, "syntax", errors={"SELECT": 1})
    assert exp == {"SELECT": [1, 1, 1, 1, 0], "QUIT": [1, 0, 0, 0, 0]}
    _my_check_client(my_run, "syntax", exp)


def test_mysql_prepared(my_run):
    _, rc, out, err, _, _ = my_run["segments"]["prepared"]
    assert rc == 0, err
    done, pings = map(int, out.split())
    assert done == MY_PREPARED
    # COM_PING (mysql-connector's is_connected()) is not in the general log: counted by
    # the client itself
    cmds, exp = _my_expect(my_run, "prepared", extra={"PING": pings} if pings else None)
    assert cmds["STMT_PREPARE"] == [1, 1] and cmds["STMT_CLOSE"] == [1, 0]
    # the statement's verb for every COM_STMT_EXECUTE (SELECT), plus the connector's setup
    # queries (SET NAMES, SET autocommit), all from the log
    assert cmds["SELECT"] == [MY_PREPARED, MY_PREPARED]
    _my_check_client(my_run, "prepared", exp)


def test_mysql_compressed_session_is_said_and_not_parsed(my_run):
    """The compressed protocol cannot be parsed: one log line per connection says so, no
    record is invented from compressed bytes, and the bytes are still in l7_link."""
    pid, rc, out, err, _, _ = my_run["segments"]["compressed"]
    assert rc == 0 and out.split() == ["42"], err
    probe, port = my_run["probe"], my_run["db"].port
    said = [l for l in probe.lines + probe.err_lines
            if "mysql: compressed protocol; not parsed from then on" in l]
    assert [l for l in said if "pid %d " % pid in l], said          # the client's side
    assert [l for l in said if "pid %d " % pid not in l], said      # and the server's
    rpc = _sel(_port_rows(probe, "l7_rpc", port), "client", {pid})
    assert total(rpc, "req_count") == 0 and total(rpc, "resp_count") == 0, rpc
    links = [r for r in probe.records("l7_link") if int(r["tgid"]) == pid]
    assert total(links, "bytes_sent") > 0 and total(links, "bytes_recv") > 0, links


def test_mysql_server_side_all_sessions(my_run):
    """mariadbd is one process: its rows hold every scenario; they sum exactly."""
    exp = {}
    for name, extra, errors in (("queries", None, None), ("syntax", None, {"SELECT": 1}),
                                ("prepared", "pings", None), ("big", None, {"SELECT": 1})):
        if extra == "pings":
            pings = int(my_run["segments"]["prepared"][2].split()[1])
            extra = {"PING": pings} if pings else None
        for api, v in _my_expect(my_run, name, extra, errors)[1].items():
            e = exp.setdefault(api, [0] * 5)
            for i in range(5):
                e[i] += v[i]
    port = my_run["db"].port
    rpc = _sel(_port_rows(my_run["probe"], "l7_rpc", port), "server")
    assert {int(r["tgid"]) for r in rpc} <= my_run["server_pids"] and rpc
    assert (total(rpc, "req_count"), total(rpc, "resp_count"), total(rpc, "err_count")) == \
        tuple(sum(v[i] for v in exp.values()) for i in range(3))
    assert _apis(_sel(_port_rows(my_run["probe"], "l7_rpc_api", port), "server")) == exp
