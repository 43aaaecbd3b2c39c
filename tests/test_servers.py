"""Smoke tests of the real-server harness (tests/support/servers.py).

Each starts a real server from Debian's packages on loopback, talks to it
with a real client, and checks that it is gone (processes and temp dir)
after the context manager exits.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import psutil
import pytest

from tests.support import servers as S

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="server harness needs root")


def need(*tools: str) -> None:
    for t in tools:
        if not (shutil.which(t) or shutil.which(t, path="/usr/sbin:/usr/bin:" + S.PG_BIN)):
            pytest.skip(f"{t} not installed (see tests/support/APT-PACKAGES)")


def curl(*args: str) -> tuple[int, str, bytes]:
    """(status, http_version, body) of one bounded curl request."""
    cp = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "-",
                         "-w", "\n%{http_code} %{http_version}", *args],
                        capture_output=True, timeout=20, check=True)
    body, _, tail = cp.stdout.rpartition(b"\n")
    code, ver = tail.decode().split()
    return int(code), ver, body


def assert_gone(pids: list[int], tmpdir: str) -> None:
    for p in pids:
        assert not psutil.pid_exists(p) or \
            psutil.Process(p).status() == psutil.STATUS_ZOMBIE, f"pid {p} still alive"
    assert not os.path.exists(tmpdir)


def test_free_port_is_bindable():
    import socket
    port = S.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_nginx_plain():
    need("nginx", "curl")
    with S.nginx(workers=2) as n:
        pids, d = n.pids(), n.tmpdir
        assert n.port == n.http_port and n.https_port is None and n.h2c_port is None
        assert len(pids) == 3 and n.pid in pids and len(n.worker_pids()) == 2
        assert curl(n.url("/")) == (200, "1.1", S.NGINX_INDEX_BODY)
        for code in (200, 201, 404, 500, 503):
            assert curl(n.url(f"/status/{code}")) == (code, "1.1", S.nginx_status_body(code))
        assert curl(n.url("/status/204"))[:2] == (204, "1.1")
        code, _, _ = curl(n.url("/status/301"))
        assert code == 301
        assert curl(n.url("/no/such/path"))[0] == 404
        # HEAD
        code, _, body = curl("-I", n.url("/status/500"))
        assert code == 500 and b"HTTP/1.1 500" in body
        code, _, body = curl("-I", n.url("/bytes/1m"))
        assert code == 200 and b"Content-Length: 1048576" in body
        code, _, body = curl(n.url("/bytes/1m"))
        assert code == 200 and len(body) == S.NGINX_BYTES_1M_SIZE
        # POST body is read
        code, _, body = curl("-X", "POST", "--data-binary", "x" * 100000, n.url("/echo"))
        assert (code, body) == (201, b"received 100000\n")
    assert_gone(pids, d)


def test_nginx_tls_h2():
    need("nginx", "curl", "openssl")
    with S.nginx(tls=True, http2=True) as n:
        pids, d = n.pids(), n.tmpdir
        assert n.port == n.https_port and os.path.exists(n.cert_path)
        assert curl("-k", "--http1.1", n.url("/status/404")) == \
            (404, "1.1", S.nginx_status_body(404))
        assert curl("-k", "--http2", n.url("/status/500")) == \
            (500, "2", S.nginx_status_body(500))
        assert curl("--cacert", n.cert_path, "--http2", n.url("/")) == \
            (200, "2", S.NGINX_INDEX_BODY)
        # plaintext h2c (prior knowledge) and plain HTTP/1.1 ports
        assert curl("--http2-prior-knowledge", n.url("/status/200", scheme="h2c")) == \
            (200, "2", S.nginx_status_body(200))
        assert curl(n.url("/status/201", scheme="http")) == \
            (201, "1.1", S.nginx_status_body(201))
    assert_gone(pids, d)


def test_nginx_bad_config_fails_clearly():
    need("nginx")
    with pytest.raises(S.ServerError, match="config test failed"):
        with S.nginx(extra_locations="location /x { bogus_directive on; }"):
            pass


def test_redis_ping():
    need("redis-server", "redis-cli")
    with S.redis_server() as r:
        pids, d = r.pids(), r.tmpdir
        assert pids == [r.pid]
        assert r.cli("PING") == "PONG"
        assert r.cli("SET", "k", "v") == "OK" and r.cli("GET", "k") == "v"
    assert_gone(pids, d)


def test_postgres_select_and_pgbench():
    need("initdb", "postgres", "psql", "pgbench")
    with S.postgres() as pg:
        d = pg.tmpdir
        assert pg.psql("SELECT 1") == "1"
        pg.pgbench_init(scale=1)
        res = pg.pgbench(["-t", "10", "-r"])
        assert (res.processed, res.expected, res.failed) == (10, 10, 0), res.raw
        assert res.tps and res.tps > 0
        sql = [s for s in res.statements if not s["command"].startswith("\\")]
        assert len(sql) == 7 and sql[0]["command"] == "BEGIN;", res.raw
        pids = pg.pids()
        assert pg.pid in pids and len(pids) >= 3   # postmaster + aux processes
    assert_gone(pids, d)


def test_parse_pgbench_by_time():
    out = ("number of transactions actually processed: 1234\n"
           "number of failed transactions: 2 (0.162%)\n"
           "tps = 411.3 (without initial connection time)\n")
    r = S.parse_pgbench(out)
    assert (r.processed, r.expected, r.failed, r.tps) == (1234, None, 2, 411.3)


def test_mariadb_select_and_prepared():
    need("mariadbd", "mariadb-install-db", "mariadb")
    from tests.support.mysql_prepared import run_prepared
    with S.mariadb() as m:
        pids, d = m.pids(), m.tmpdir
        assert pids == [m.pid]
        assert m.query("SELECT 1") == "1"
        assert m.query("SELECT CURRENT_USER()") == "test@%"
        assert run_prepared(m.port, m.user, m.password, 5) == 5
        stats = dict(line.split("\t") for line in m.query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN "
            "('Com_stmt_prepare', 'Com_stmt_execute')").splitlines())
        assert stats == {"Com_stmt_prepare": "1", "Com_stmt_execute": "5"}
    assert_gone(pids, d)
