"""TLS end to end, for real: nginx HTTPS + curl (OpenSSL 3), Python's ssl module (the *_ex
functions), a Go HTTPS server and client (crypto/tls, plain and stripped builds), and
--no-ssl.  Exact request counts per role with ssl=ssl, and no no_ssl rows for encrypted
connections."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.support.goapps import build_go
from tests.support.probe import ProbeRun, total
from tests.support.servers import free_port, nginx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "tls_apps")
PYSSL = os.path.join(APPS, "pyssl.py")
# (path, status): one round of the mix
MIX = [("/", 200), ("/status/404", 404), ("/status/500", 500), ("/status/201", 201)]
ROUNDS = 3


def _rows(probe, table, port, role=None, ssl=None):
    return [r for r in probe.records(table)
            if r["server_port"] == str(port) and (role is None or r["l7_role"] == role)
            and (ssl is None or r["ssl"] == ssl)]


def _api_counts(rows):
    out = {}
    for r in rows:
        a = out.setdefault(r["api"], [0, 0])
        a[0] += int(r["req_count"])
        a[1] += int(r["err_count"])
    return {k: v for k, v in out.items() if v[0]}


def _expected_api(prefix_paths):
    out = {}
    for path, status in prefix_paths:
        a = out.setdefault("GET " + path, [0, 0])
        a[0] += ROUNDS
        a[1] += ROUNDS * (status >= 400)
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    subprocess.run([sys.executable, PYSSL, "cert", str(d)], check=True, timeout=60)
    return str(d / "server.crt"), str(d / "server.key")


@pytest.fixture(scope="module")
def go_bins(tmp_path_factory):
    d = tmp_path_factory.mktemp("go")
    return {
        "server": str(build_go(os.path.join(APPS, "goserver"), d / "goserver")),
        "client": str(build_go(os.path.join(APPS, "goclient"), d / "goclient")),
        "server_stripped": str(build_go(os.path.join(APPS, "goserver"),
                                        d / "goserver-s", strip=True)),
        "client_stripped": str(build_go(os.path.join(APPS, "goclient"),
                                        d / "goclient-s", strip=True)),
    }


def _start_server(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 20
    line = ""
    while time.time() < deadline:
        line = p.stdout.readline()
        if "listening" in line:
            return p
        if p.poll() is not None:
            break
    p.kill()
    raise RuntimeError("server did not start: %s" % line)


def _urls_file(tmp, base, port):
    f = tmp / ("urls-%d.txt" % port)
    f.write_text("".join("%s%s\n" % (base, p) for _ in range(ROUNDS) for p, _ in MIX))
    return str(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory, certs, go_bins):
    tmp = tmp_path_factory.mktemp("tls")
    crt, key = certs
    res = {}
    with nginx(tls=True) as ng:
        # servers first, so their libraries are found at start-up; a Go server started
        # after the probe is picked up from its exec record
        py_port = free_port()
        pysrv = _start_server([sys.executable, PYSSL, "server", "--addr",
                               "127.0.0.1:%d" % py_port, "--cert", crt, "--key", key])
        go_port = free_port()
        gosrv = _start_server([go_bins["server"], "-addr", "127.0.0.1:%d" % go_port,
                               "-cert", crt, "-key", key])
        probe = ProbeRun(["-P", "1"])
        try:
            gos_port = free_port()
            gosrv_s = _start_server([go_bins["server_stripped"], "-addr",
                                     "127.0.0.1:%d" % gos_port, "-cert", crt, "-key", key])
            time.sleep(2.5)            # exec record -> rescans attach the new binary
            # nginx + curl: one curl process for the whole mix, keep-alive
            cmd = ["curl", "-sk", "-o", "/dev/null"]
            first = True
            for _ in range(ROUNDS):
                for path, _ in MIX:
                    if not first:
                        cmd += ["--next", "-sk", "-o", "/dev/null"]
                    first = False
                    cmd.append("https://127.0.0.1:%d%s" % (ng.port, path))
            assert subprocess.run(cmd, timeout=60).returncode == 0
            # python ssl client -> python ssl server
            out = subprocess.run([sys.executable, PYSSL, "client", "--urls",
                                  _urls_file(tmp, "https://127.0.0.1:%d" % py_port, py_port)],
                                 capture_output=True, text=True, timeout=60)
            res["py_client_out"] = out.stdout
            # go client -> go server, and stripped client -> stripped server
            for name, port, client in (("go", go_port, go_bins["client"]),
                                       ("gos", gos_port, go_bins["client_stripped"])):
                # started after the probe: its binary is found from the exec record; the
                # client starts its requests once the probe says it attached to it (a
                # fixed delay was too short for the analysis under CI's load)
                p = subprocess.Popen([client, "-wait", "-urls",
                                      _urls_file(tmp, "https://127.0.0.1:%d" % port, port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
                res[name + "_attached"] = probe.wait_tls_attached(client, p.pid)
                out, err = p.communicate("go\n", timeout=60)
                res[name + "_client_out"] = out + err
                res[name + "_client_rc"] = p.returncode
            time.sleep(1.5)
        finally:
            res["rc"] = probe.stop()
            for p in (pysrv, gosrv, locals().get("gosrv_s")):
                if p is not None:
                    p.kill()
                    p.wait()
        res.update(probe=probe, nginx_port=ng.port, nginx_pids=set(ng.pids()),
                   py_port=py_port, go_port=go_port, gos_port=gos_port)
        yield res


def test_exit_status(run):
    assert run["rc"] == 0
    assert not any("Traceback" in l for l in run["probe"].err_lines)


def test_startup_log_lists_attachments(run):
    log = "\n".join(run["probe"].err_lines)
    assert "TLS: attached" in log and "libssl.so" in log
    assert "Go go1." in log


def test_tls_probes_sit_on_emulated_instructions(run):
    """Each attachment is logged with the instruction kind it sits on; none of the probes
    on libssl.so.3 or the Go binaries is on a single-stepped instruction (~16 us a hit
    here, against ~0.5 us: bench/uprobe_cost.py)."""
    sites = [l for l in run["probe"].err_lines if re.search(r"TLS: u(ret)?probe ", l)]
    ssl = [l for l in sites if "libssl.so" in l]
    go = [l for l in sites if "crypto/tls" in l]
    assert ssl and go, run["probe"].err_lines
    assert not [l for l in sites if "single-stepped" in l], sites
    assert [l for l in ssl if "uprobe SSL_read/SSL_read_ex -> " in l and "(push: emulated)" in l]
    assert [l for l in ssl if "uretprobe SSL_read/SSL_read_ex -> " in l]
    assert [l for l in ssl if "uprobe SSL_write/SSL_write_ex -> " in l and "(push: emulated)" in l]
    assert [l for l in go if "Read data -> " in l and "runtime.memmove" in l]
    assert len([l for l in go if "(jcc: emulated, skips the morestack hit)" in l]) >= 4


@pytest.mark.parametrize("role", ["server", "client"])
def test_nginx_curl_https(run, role):
    n = ROUNDS * len(MIX)
    errs = ROUNDS * sum(1 for _, s in MIX if s >= 400)
    p = run["probe"]
    rows = _rows(p, "l7_rpc", run["nginx_port"], role)
    assert rows and all(r["ssl"] == "ssl" and r["protocol"] == "http" for r in rows), rows
    assert total(rows, "req_count") == n
    assert total(rows, "resp_count") == n
    assert total(rows, "err_count") == errs
    if role == "server":
        assert {int(r["tgid"]) for r in rows} <= run["nginx_pids"]
    api = _api_counts(_rows(p, "l7_rpc_api", run["nginx_port"], role))
    assert api == _expected_api(MIX)


def test_encrypted_bytes_never_parsed(run):
    p = run["probe"]
    for port in (run["nginx_port"], run["py_port"], run["go_port"], run["gos_port"]):
        assert not _rows(p, "l7_link", port, ssl="no_ssl"), port
    assert not any("exception" in l for l in p.err_lines)


@pytest.mark.parametrize("role", ["server", "client"])
def test_python_ssl_ex_functions(run, role):
    assert "requests=%d errors=0" % (ROUNDS * len(MIX)) in run["py_client_out"]
    rows = _rows(run["probe"], "l7_rpc", run["py_port"], role, ssl="ssl")
    assert total(rows, "req_count") == ROUNDS * len(MIX)
    assert total(rows, "resp_count") == ROUNDS * len(MIX)
    assert total(rows, "err_count") == ROUNDS * 2
    api = _api_counts(_rows(run["probe"], "l7_rpc_api", run["py_port"], role))
    assert api == _expected_api(MIX)


@pytest.mark.parametrize("name", ["go", "gos"])
@pytest.mark.parametrize("role", ["server", "client"])
def test_go_crypto_tls(run, name, role):
    assert run[name + "_attached"], run["probe"].err_lines     # from its exec record
    assert run[name + "_client_rc"] == 0, run[name + "_client_out"]
    port = run[name + "_port"]
    rows = _rows(run["probe"], "l7_rpc", port, role, ssl="ssl")
    assert total(rows, "req_count") == ROUNDS * len(MIX), run["probe"].err_lines
    assert total(rows, "resp_count") == ROUNDS * len(MIX)
    assert total(rows, "err_count") == ROUNDS * 2
    api = _api_counts(_rows(run["probe"], "l7_rpc_api", port, role))
    assert api == _expected_api(MIX)


def test_symbol_sites_still_work(certs, go_bins, tmp_path):
    """L7PROBE_TLS_SYMBOLS=1 puts every probe back on its symbol, and Go's reads on each RET
    (bpf/tls.h's fallback programs): nginx + curl and the Go apps give the same exact
    records, and the log says the probes are single-stepped."""
    crt, key = certs
    env = dict(os.environ, L7PROBE_TLS_SYMBOLS="1")
    with nginx(tls=True) as ng:
        go_port = free_port()
        gosrv = _start_server([go_bins["server"], "-addr", "127.0.0.1:%d" % go_port,
                               "-cert", crt, "-key", key])
        try:
            with ProbeRun(["-P", "1"], env=env) as p:
                cmd = ["curl", "-sk", "-o", "/dev/null"]
                for i, (path, _) in enumerate(MIX * ROUNDS):
                    cmd += (["--next", "-sk", "-o", "/dev/null"] if i else []) + [
                        "https://127.0.0.1:%d%s" % (ng.port, path)]
                assert subprocess.run(cmd, timeout=60).returncode == 0
                out = subprocess.run([go_bins["client"], "-urls", _urls_file(
                    tmp_path, "https://127.0.0.1:%d" % go_port, go_port)],
                    capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, out.stderr
                time.sleep(1.5)
        finally:
            gosrv.kill()
            gosrv.wait()
    sites = [l for l in p.err_lines if re.search(r"TLS: u(ret)?probe ", l)]
    assert [l for l in sites if "uprobe SSL_read -> SSL_read+0 (sub: single-stepped)" in l]
    assert [l for l in sites if "RET(s) (ret: single-stepped; L7PROBE_TLS_SYMBOLS set)" in l]
    for port, role in ((ng.port, "server"), (go_port, "server")):
        rows = _rows(p, "l7_rpc", port, role, ssl="ssl")
        assert total(rows, "req_count") == ROUNDS * len(MIX), (port, p.err_lines)
        assert total(rows, "err_count") == ROUNDS * 2
        assert _api_counts(_rows(p, "l7_rpc_api", port, role)) == _expected_api(MIX)


def _perf_event_fds(pid):
    """BCC attaches uprobes and tracepoints as perf events (uprobe_events stays empty)."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "anon_inode:[perf_event]"
        except OSError:
            pass
    return n


def test_no_ssl_attaches_nothing(certs):
    with nginx(tls=True) as ng:
        with ProbeRun(["-P", "1"]) as p:          # the reference: the same probe with TLS
            with_tls = _perf_event_fds(p.proc.pid)
            at_start = list(p.err_lines)            # (later exec rescans may attach more)
        attached = [int(l.split("attached ", 1)[1].split()[0])
                    for l in at_start if "TLS: attached" in l]
        assert attached, p.err_lines
        with ProbeRun(["-P", "1", "--no-ssl"]) as p:
            for _ in range(3):
                subprocess.run(["curl", "-sk", "-o", "/dev/null",
                                "https://127.0.0.1:%d/" % ng.port], timeout=30)
            time.sleep(1.5)
            without = _perf_event_fds(p.proc.pid)
        # every perf event of the TLS run beyond the --no-ssl run is one of its uprobes
        assert without == with_tls - sum(attached), (without, with_tls, attached)
        assert not _rows(p, "l7_link", ng.port)       # ciphertext is never reported
        assert not any("TLS: attached" in l for l in p.err_lines)


def test_process_exit_and_library_replaced(tmp_path, certs):
    """A probed process that dies mid-connection, and a library file replaced on disk
    while attached: the probe keeps running and keeps reporting."""
    crt, key = certs
    lib = tmp_path / "lib"
    lib.mkdir()
    src = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    shutil.copy(src, lib / "libssl.so.3")
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib))
    port = free_port()
    srv = _start_server([sys.executable, PYSSL, "server", "--addr", "127.0.0.1:%d" % port,
                         "--cert", crt, "--key", key])
    try:
        with ProbeRun(["-P", "1"]) as p:
            client = subprocess.Popen([sys.executable, PYSSL, "client", "-n", "100000", "--url",
                                       "https://127.0.0.1:%d/" % port], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2.5)
            client.kill()                      # dies mid-connection
            client.wait()
            os.replace(src and str(lib / "libssl.so.3"), str(lib / "old.so"))
            shutil.copy(src, lib / "libssl.so.3")   # a new file where the old one was
            time.sleep(0.5)
            out = subprocess.run([sys.executable, PYSSL, "client", "-n", "5", "--url",
                                  "https://127.0.0.1:%d/status/404" % port], env=env,
                                 capture_output=True, text=True, timeout=60)
            assert "requests=5" in out.stdout
            time.sleep(2.5)
            assert p.proc.poll() is None       # still running
        assert p.proc.returncode == 0
        server_rows = _rows(p, "l7_rpc_api", port, "server")
        api = _api_counts(server_rows)
        assert api.get("GET /status/404") == [5, 5]
        assert api.get("GET /", [0])[0] > 0
    finally:
        srv.kill()
        srv.wait()


# ---------------------------------------------------------------------- TLS inside a protocol
def _certs_for(certs, user):
    """A copy of the test certificate and key that the server's OS user can read."""
    d = tempfile.mkdtemp(prefix="l7probe-tls-%s-" % user)
    os.chmod(d, 0o755)
    crt, key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
    shutil.copy(certs[0], crt)
    shutil.copy(certs[1], key)
    for f in (d, crt, key):
        shutil.chown(f, user, user)
    os.chmod(key, 0o600)
    return d, crt, key


PG_TLS_QUERIES = 7


def test_postgres_tls_negotiated_in_the_protocol(certs):
    """PostgreSQL starts in the clear (SSLRequest, 'S') and continues in TLS (libpq and the
    backend link libssl): the probe follows the plaintext from the uprobes, parses the
    StartupMessage and the queries, and reports them with ssl=ssl on both roles."""
    from tests.support.servers import PG_BIN, postgres
    pgdir, crt, key = _certs_for(certs, "postgres")
    with postgres(settings=["ssl=on", "ssl_cert_file=%s" % crt, "ssl_key_file=%s" % key,
                            "log_statement=all"]) as pg:
        with ProbeRun(["-P", "1", "--proto", "pgsql"]) as p:
            time.sleep(1.0)
            log_start = os.path.getsize(pg.log_path)
            cmd = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t",
                   "host=127.0.0.1 port=%d dbname=%s user=%s sslmode=require"
                   % (pg.port, pg.dbname, pg.user)]
            for i in range(PG_TLS_QUERIES):
                cmd += ["-c", "SELECT %d" % i]
            cmd += ["-c", "SELECT * FROM no_such_table"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            time.sleep(2.5)
            with open(pg.log_path, errors="replace") as f:
                f.seek(log_start)
                logged = [l for l in f if "LOG:  statement: " in l]
        assert p.proc.returncode == 0, p.err_lines[-20:]
    shutil.rmtree(pgdir, ignore_errors=True)
    assert out.stdout.split() == [str(i) for i in range(PG_TLS_QUERIES)], out.stderr
    assert "no_such_table" in out.stderr
    assert len(logged) == PG_TLS_QUERIES + 1, logged          # what the server executed
    for role in ("server", "client"):
        rpc = _rows(p, "l7_rpc", pg.port, role, "ssl")
        assert total(rpc, "req_count") == PG_TLS_QUERIES + 1, (role, rpc)
        assert total(rpc, "resp_count") == PG_TLS_QUERIES + 1, (role, rpc)
        assert total(rpc, "err_count") == 1, (role, rpc)
        assert _api_counts(_rows(p, "l7_rpc_api", pg.port, role, "ssl")) == \
            {"SELECT": [PG_TLS_QUERIES + 1, 1]}, role
        # the clear-text start (SSLRequest) parses to nothing; no record without TLS
        assert total(_rows(p, "l7_rpc", pg.port, role, "no_ssl"), "req_count") == 0, role


MY_TLS_QUERIES = 6


def test_mariadb_tls_negotiated_in_the_protocol(certs):
    """MariaDB: greeting and SSLRequest in the clear, then TLS (the client and mariadbd link
    libssl): queries parsed from the plaintext, ssl=ssl on both roles, exact counts."""
    from tests.support.servers import mariadb
    tlsdir, crt, key = _certs_for(certs, "mysql")
    try:
        with mariadb(tls=(crt, key)) as db:
            with ProbeRun(["-P", "1", "--proto", "mysql"]) as p:
                time.sleep(1.0)
                sql = "; ".join(["SHOW STATUS LIKE 'Ssl_version'"] +
                                ["SELECT %d" % i for i in range(MY_TLS_QUERIES)] +
                                ["SELECT * FROM WHERE"])
                out = subprocess.run(
                    ["mariadb", "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1",
                     "-P", str(db.port), "-u", db.user, "-p%s" % db.password, "--batch",
                     "--skip-column-names", "--ssl", db.database, "-e", sql],
                    capture_output=True, text=True, timeout=60)
                time.sleep(2.5)
            assert p.proc.returncode == 0, p.err_lines[-20:]
    finally:
        shutil.rmtree(tlsdir, ignore_errors=True)
    lines = out.stdout.split("\n")
    assert lines[0].startswith("Ssl_version\tTLS"), out.stdout           # TLS it was
    assert lines[1:1 + MY_TLS_QUERIES] == [str(i) for i in range(MY_TLS_QUERIES)], out
    assert "ERROR 1064" in out.stderr, out.stderr
    for role in ("server", "client"):
        apis = _api_counts(_rows(p, "l7_rpc_api", db.port, role, "ssl"))
        assert apis == {"SHOW": [1, 0], "SELECT": [MY_TLS_QUERIES + 1, 1],
                        "QUIT": [1, 0]}, (role, apis)
        assert total(_rows(p, "l7_rpc", db.port, role, "no_ssl"), "req_count") == 0, role
