"""Real servers from Debian's packages, started on loopback as test fixtures.

Every server runs from a fresh temporary directory with a config written here:
never the system services, their default data directories or their default
ports.  Each factory is a context manager yielding an object with

* ``.port``   -- the main TCP port (on 127.0.0.1),
* ``.pids()`` -- the server's current process ids (tgids), for filtering the
  probe's records (nginx: master + workers; postgres: postmaster + all its
  children, i.e. backends forked for connections made so far),
* ``.tmpdir`` / ``.log_path`` and client helpers.

Clean-up (in ``finally``, so also on test failure): polite signal, wait, then
SIGKILL of the whole process group, and wait for exit; at most ~5 s.  An
``atexit`` hook stops whatever is still running when the interpreter exits.
Set ``L7PROBE_KEEP_SERVER_DIRS=1`` to keep the temporary directories.

Tools are found under /usr/sbin, /usr/bin and /usr/lib/postgresql/15/bin; the
Debian packages are listed in tests/support/APT-PACKAGES.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import psutil

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 15.0   # seconds; servers normally come up in < 2 s
STOP_TIMEOUT = 4.0     # polite-stop grace before SIGKILL (total stop <= ~5 s)
PG_BIN = os.environ.get("L7PROBE_PG_BIN", "/usr/lib/postgresql/15/bin")

#: status codes served by nginx at /status/<code>
NGINX_STATUS_CODES = (200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404,
                      405, 429, 500, 502, 503)
#: the known static index file served at / (and /index.html)
NGINX_INDEX_BODY = b"<html><body>l7probe test index</body></html>\n"
NGINX_BYTES_1M_SIZE = 1 << 20


# nginx's worker_connections (the RSS benchmark raises it for 10k connections)
NGINX_WORKER_CONNECTIONS = 1024


def nginx_status_body(code: int) -> bytes:
    """Body nginx sends for GET /status/<code> ('' for 204/304; nginx's own
    small HTML redirect page for 301/302)."""
    if code in (204, 304, 301, 302):
        return b""
    return f"status {code}\n".encode()


class ServerError(RuntimeError):
    """A server failed to start (message includes its log tail)."""


class CommandError(subprocess.CalledProcessError):
    """A helper command failed; str() includes its stderr/stdout."""

    def __str__(self) -> str:
        def dec(b):
            return (b or b"").decode(errors="replace").strip()[-2000:]
        return (f"{super().__str__()}\nstderr: {dec(self.stderr)}"
                f"\nstdout: {dec(self.output)}")


# --------------------------------------------------------------------------
# generic helpers


def free_port(host: str = LOOPBACK) -> int:
    """An unused TCP port on loopback (bound then released: small race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: str | None, n: int = 30) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(lines[-n:])


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _run(cmd: Sequence[str], *, timeout: float = 30, check: bool = True,
         input: str | bytes | None = None, cwd: str | None = None,
         env: dict | None = None) -> subprocess.CompletedProcess:
    cp = subprocess.run(list(cmd), capture_output=True, timeout=timeout,
                        input=input.encode() if isinstance(input, str) else input,
                        cwd=cwd or "/", env=env)
    if check and cp.returncode != 0:
        raise CommandError(cp.returncode, list(cmd), cp.stdout, cp.stderr)
    return cp


def _as_user(user: str, cmd: Sequence[str]) -> list[str]:
    """Prefix cmd to run as OS user ``user`` (we are root)."""
    if os.geteuid() != 0:
        return list(cmd)
    return ["runuser", "-u", user, "--", *cmd]


def _mkdtemp(name: str) -> str:
    d = tempfile.mkdtemp(prefix=f"l7probe-{name}-")
    os.chmod(d, 0o755)   # server users (nobody, postgres, mysql) must traverse it
    return d


def _which(name: str, *extra_dirs: str) -> str:
    path = os.pathsep.join([*extra_dirs, "/usr/sbin", "/usr/bin", "/sbin", "/bin",
                            os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if not found:
        raise ServerError(f"{name!r} not found; install the packages in "
                          "tests/support/APT-PACKAGES")
    return found


def _tree_pids(pid: int) -> list[int]:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for q in procs:
        try:
            if q.status() != psutil.STATUS_ZOMBIE:
                out.append(q.pid)
        except psutil.Error:
            pass
    return sorted(out)


_LIVE: set["_Proc"] = set()


@dataclass(eq=False)
class _Proc:
    """A server process we started in its own session/process group."""
    popen: subprocess.Popen
    log_path: str
    stop_signal: int = signal.SIGTERM
    name: str = "server"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        _LIVE.discard(self)
        pgid = self.popen.pid   # start_new_session=True: pgid == pid
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # whatever remains in the group (workers, backends, or the main
        # process itself if it ignored the polite signal) gets SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(2)
        # wait for reparented group members to vanish too (bounded)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.02)


@atexit.register
def _stop_all() -> None:
    for p in list(_LIVE):
        with contextlib.suppress(Exception):
            p.stop(timeout=2)


def _spawn(cmd: Sequence[str], log_path: str, *, cwd: str, name: str,
           stop_signal: int = signal.SIGTERM, **kw) -> _Proc:
    log = open(log_path, "ab")
    try:
        popen = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=cwd,
                                 start_new_session=True, **kw)
    finally:
        log.close()
    proc = _Proc(popen, log_path, stop_signal, name)
    _LIVE.add(proc)
    return proc


def _wait_ready(proc: _Proc, port: int, *, extra_logs: Sequence[str] = (),
                ready: Callable[[], bool] | None = None,
                timeout: float = START_TIMEOUT) -> None:
    """Wait until ``port`` accepts connections (and ``ready()`` is true)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            break
        if _port_open(port) and (ready is None or ready()):
            return
        time.sleep(0.05)
    rc = proc.popen.poll()
    state = f"exited with {rc}" if rc is not None else f"not ready after {timeout:.0f}s"
    logs = "\n".join(f"--- {p} ---\n{_tail(p)}" for p in (proc.log_path, *extra_logs))
    raise ServerError(f"{proc.name} (pid {proc.pid}) on {LOOPBACK}:{port} {state}\n{logs}")


@contextlib.contextmanager
def _tmpdir(name: str) -> Iterator[str]:
    d = _mkdtemp(name)
    try:
        yield d
    finally:
        if not os.environ.get("L7PROBE_KEEP_SERVER_DIRS"):
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------
# nginx


@dataclass
class Nginx:
    tmpdir: str
    port: int                 # main port: https_port if tls else http_port
    http_port: int            # plaintext HTTP/1.1, always present
    https_port: int | None    # TLS (ALPN h2 + http/1.1 when http2=True)
    h2c_port: int | None      # plaintext HTTP/2, prior knowledge only
    cert_path: str | None
    key_path: str | None
    conf_path: str
    log_path: str             # error_log
    _proc: _Proc = field(repr=False)

    @property
    def pid(self) -> int:
        """The master's pid."""
        return self._proc.pid

    def pids(self) -> list[int]:
        """Master + workers."""
        return _tree_pids(self._proc.pid)

    def worker_pids(self) -> list[int]:
        return [p for p in self.pids() if p != self._proc.pid]

    def url(self, path: str = "/", *, scheme: str | None = None) -> str:
        """URL on the main port (scheme 'http', 'https' or 'h2c' picks a port)."""
        if scheme is None:
            scheme = "https" if self.https_port and self.port == self.https_port else "http"
        port = {"http": self.http_port, "https": self.https_port,
                "h2c": self.h2c_port}[scheme]
        if port is None:
            raise ValueError(f"nginx not started with {scheme}")
        return f"{'https' if scheme == 'https' else 'http'}://{LOOPBACK}:{port}{path}"


def make_self_signed_cert(directory: str, cn: str = "localhost") -> tuple[str, str]:
    """(cert_path, key_path): RSA-2048 self-signed cert for localhost/127.0.0.1."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    _run([_which("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
          "-keyout", key, "-out", cert, "-days", "7", "-subj", f"/CN={cn}",
          "-addext", f"subjectAltName=DNS:{cn},IP:127.0.0.1"], timeout=30)
    os.chmod(key, 0o644)
    return cert, key


def _nginx_conf(d: str, *, http_port: int, https_port: int | None,
                h2c_port: int | None, http2: bool, workers: int,
                cert: str | None, key: str | None,
                extra_locations: str | None) -> str:
    status = "\n".join(
        f"        location = /status/{c} {{ return {c}; }}" if c in (204, 304) else
        f"        location = /status/{c} {{ return {c} /; }}" if c in (301, 302) else
        f'        location = /status/{c} {{ return {c} "status {c}\\n"; }}'
        for c in NGINX_STATUS_CODES)
    listens = [f"        listen {LOOPBACK}:{http_port};"]
    if https_port:
        listens.append(f"        listen {LOOPBACK}:{https_port} ssl{' http2' if http2 else ''};")
    if h2c_port:
        listens.append(f"        listen {LOOPBACK}:{h2c_port} http2;")
    tls = ""
    if cert:
        tls = f"""
        ssl_certificate     {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;"""
    return f"""# written by tests/support/servers.py
daemon off;
master_process on;
worker_processes {workers};
{"user nobody nogroup;" if os.geteuid() == 0 else ""}
pid {d}/nginx.pid;
error_log {d}/error.log notice;
worker_rlimit_nofile {NGINX_WORKER_CONNECTIONS * 2};
events {{ worker_connections {NGINX_WORKER_CONNECTIONS}; }}
http {{
    types {{ text/html html; text/plain txt; application/octet-stream bin; }}
    default_type text/plain;
    access_log off;
    sendfile on;
    tcp_nopush off;
    keepalive_timeout 65;
    keepalive_requests 100000;
    client_body_temp_path {d}/client_body_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    server_tokens off;
    server {{
{chr(10).join(listens)}
        server_name localhost;
        root {d}/html;{tls}
        location = / {{ index index.html; }}
        location = /index.html {{ }}
        location = /bytes/1m {{ default_type application/octet-stream; }}
        location = /echo {{
            # the body is read (and discarded) by nginx before responding
            return 201 "received $content_length\\n";
        }}
{status}
{extra_locations or ""}
    }}
}}
"""


@contextlib.contextmanager
def nginx(tls: bool = False, http2: bool = False, workers: int = 1,
          extra_locations: str | None = None) -> Iterator[Nginx]:
    """nginx (``daemon off; master_process on``) on 127.0.0.1.

    Locations: ``/`` (NGINX_INDEX_BODY), ``/status/<code>`` for
    NGINX_STATUS_CODES (body nginx_status_body(code)), ``/bytes/1m``
    (1 MiB static file, repeating b'0123456789abcdef'; sendfile on), ``/echo`` (POST:
    201 "received <content-length>\\n"), anything else 404.
    ``extra_locations`` is raw config text inserted into the server block.
    """
    with _tmpdir("nginx") as d:
        html = os.path.join(d, "html")
        os.makedirs(os.path.join(html, "bytes"))
        with open(os.path.join(html, "index.html"), "wb") as f:
            f.write(NGINX_INDEX_BODY)
        with open(os.path.join(html, "bytes", "1m"), "wb") as f:
            f.write((b"0123456789abcdef" * (NGINX_BYTES_1M_SIZE // 16)))
        for root, dirs, files in os.walk(html):
            for n in dirs:
                os.chmod(os.path.join(root, n), 0o755)
            for n in files:
                os.chmod(os.path.join(root, n), 0o644)
        http_port = free_port()
        https_port = free_port() if tls else None
        h2c_port = free_port() if http2 else None
        cert = key = None
        if tls:
            cert, key = make_self_signed_cert(d)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(_nginx_conf(d, http_port=http_port, https_port=https_port,
                                h2c_port=h2c_port, http2=http2, workers=workers,
                                cert=cert, key=key, extra_locations=extra_locations))
        err = os.path.join(d, "error.log")
        exe = _which("nginx")
        # -t first: a config error gives a clear message instead of a timeout
        cp = _run([exe, "-t", "-q", "-p", d + "/", "-e", err, "-c", conf], check=False)
        if cp.returncode != 0:
            raise ServerError(f"nginx config test failed:\n{cp.stderr.decode()}\n{_tail(err)}")
        proc = _spawn([exe, "-p", d + "/", "-e", err, "-c", conf],
                      os.path.join(d, "stderr.log"), cwd=d, name="nginx",
                      stop_signal=signal.SIGTERM)
        try:
            for p in filter(None, (http_port, https_port, h2c_port)):
                _wait_ready(proc, p, extra_logs=[err])
            # workers are forked after the listen sockets are bound
            deadline = time.monotonic() + START_TIMEOUT
            while len(_tree_pids(proc.pid)) < 1 + workers and time.monotonic() < deadline:
                time.sleep(0.02)
            yield Nginx(tmpdir=d, port=https_port or http_port, http_port=http_port,
                        https_port=https_port, h2c_port=h2c_port, cert_path=cert,
                        key_path=key, conf_path=conf, log_path=err, _proc=proc)
        finally:
            proc.stop()


# --------------------------------------------------------------------------
# redis


@dataclass
class Redis:
    tmpdir: str
    port: int
    conf_path: str
    log_path: str
    _proc: _Proc = field(repr=False)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def pids(self) -> list[int]:
        return _tree_pids(self._proc.pid)

    def cli(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run ``redis-cli -h 127.0.0.1 -p PORT *args``; return stdout stripped."""
        cp = _run([_which("redis-cli"), "-h", LOOPBACK, "-p", str(self.port), *args],
                  check=check, timeout=timeout)
        return cp.stdout.decode(errors="replace").strip()


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    with _tmpdir("redis") as d:
        port = free_port()
        conf = os.path.join(d, "redis.conf")
        log = os.path.join(d, "redis.log")
        with open(conf, "w") as f:
            f.write(f"""# written by tests/support/servers.py
bind {LOOPBACK}
port {port}
protected-mode yes
daemonize no
supervised no
pidfile {d}/redis.pid
logfile {log}
dir {d}
save ""
appendonly no
databases 16
""")
        proc = _spawn([_which("redis-server"), conf], os.path.join(d, "stdout.log"),
                      cwd=d, name="redis-server")
        try:
            _wait_ready(proc, port, extra_logs=[log])
            yield Redis(tmpdir=d, port=port, conf_path=conf, log_path=log, _proc=proc)
        finally:
            proc.stop()


# --------------------------------------------------------------------------
# postgres


@dataclass
class PgbenchResult:
    processed: int | None = None          # "actually processed: X/Y" -> X
    expected: int | None = None           # -> Y (None when run by time)
    failed: int | None = None             # "number of failed transactions"
    tps: float | None = None
    latency_avg_ms: float | None = None
    clients: int | None = None
    query_mode: str | None = None
    # with -r: one dict per script line: latency_ms, failures (PG15),
    # retries (when reported), command
    statements: list[dict] = field(default_factory=list)
    raw: str = ""


def parse_pgbench(out: str) -> PgbenchResult:
    r = PgbenchResult(raw=out)
    m = re.search(r"number of transactions actually processed:\s*(\d+)(?:/(\d+))?", out)
    if m:
        r.processed = int(m.group(1))
        r.expected = int(m.group(2)) if m.group(2) else None
    m = re.search(r"number of failed transactions:\s*(\d+)", out)
    if m:
        r.failed = int(m.group(1))
    m = re.search(r"^tps = ([\d.]+)", out, re.M)
    if m:
        r.tps = float(m.group(1))
    m = re.search(r"latency average = ([\d.]+) ms", out)
    if m:
        r.latency_avg_ms = float(m.group(1))
    m = re.search(r"number of clients:\s*(\d+)", out)
    if m:
        r.clients = int(m.group(1))
    m = re.search(r"query mode:\s*(\S+)", out)
    if m:
        r.query_mode = m.group(1)
    m = re.search(r"^statement latencies in milliseconds(.*?):\s*$", out, re.M)
    if m:
        header = m.group(1)
        cols = ["latency_ms"]
        if "failures" in header:
            cols.append("failures")
        if "retries" in header:
            cols.append("retries")
        pat = re.compile(r"^\s+([\d.]+)" + r"\s+(\d+)" * (len(cols) - 1) + r"\s+(\S.*)$")
        for line in out[m.end():].splitlines():
            lm = pat.match(line)
            if not lm:
                if line.strip():
                    break
                continue
            st = {"latency_ms": float(lm.group(1))}
            for i, c in enumerate(cols[1:], start=2):
                st[c] = int(lm.group(i))
            st["command"] = lm.group(len(cols) + 1).strip()
            r.statements.append(st)
    return r


@dataclass
class Postgres:
    tmpdir: str
    port: int
    datadir: str
    sockdir: str
    log_path: str
    dbname: str
    user: str
    _proc: _Proc = field(repr=False)

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        return self._proc.pid

    def pids(self) -> list[int]:
        """Postmaster + its current children (backends appear per connection)."""
        return _tree_pids(self._proc.pid)

    def _conn(self) -> list[str]:
        return ["-h", LOOPBACK, "-p", str(self.port), "-U", self.user]

    def psql(self, sql: str, *, db: str | None = None, check: bool = True,
             timeout: float = 60) -> str:
        """Run SQL with psql over TCP (unaligned, tuples only); return stdout."""
        cp = _run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t",
                   "-v", "ON_ERROR_STOP=1", *self._conn(), "-d", db or self.dbname,
                   "-c", sql], check=check, timeout=timeout)
        return cp.stdout.decode(errors="replace").strip()

    def pgbench_init(self, scale: int = 1, timeout: float = 120) -> None:
        _run([os.path.join(PG_BIN, "pgbench"), "-i", "-q", "-s", str(scale),
              *self._conn(), self.dbname], timeout=timeout)

    def pgbench(self, args: Sequence[str] = ("-t", "10"), *,
                timeout: float = 120, check: bool = True) -> PgbenchResult:
        """Run ``pgbench -h 127.0.0.1 -p PORT -U postgres ARGS DB``; parse summary.

        Keep runs bounded: pass ``-t N`` or ``-T SECS``."""
        cp = _run([os.path.join(PG_BIN, "pgbench"), *self._conn(), *args,
                   self.dbname], timeout=timeout, check=check)
        return parse_pgbench(cp.stdout.decode(errors="replace"))


@contextlib.contextmanager
def postgres(dbname: str = "test",
             settings: Sequence[str] = ()) -> Iterator[Postgres]:
    """PostgreSQL 15 (run as the ``postgres`` OS user), trust auth on 127.0.0.1.

    Connect as user ``postgres`` (superuser) to database ``dbname``.
    ``settings``: extra ``name=value`` server settings (``-c``), e.g.
    ``log_statement=all`` (the server log is ``.log_path``)."""
    user = "postgres"
    with _tmpdir("pg") as d:
        datadir, sockdir = os.path.join(d, "data"), os.path.join(d, "sock")
        os.mkdir(sockdir)
        log = os.path.join(d, "postgres.log")
        if os.geteuid() == 0:
            shutil.chown(d, user, user)
            shutil.chown(sockdir, user, user)
        port = free_port()
        cp = _run(_as_user(user, [os.path.join(PG_BIN, "initdb"), "-D", datadir,
                                  "-U", user, "-A", "trust", "-E", "UTF8",
                                  "--locale=C", "--no-sync", "--no-instructions"]),
                  cwd=d, check=False, timeout=60)
        if cp.returncode != 0:
            raise ServerError(f"initdb failed:\n{cp.stdout.decode()}{cp.stderr.decode()}")
        with open(os.path.join(datadir, "pg_hba.conf"), "w") as f:
            f.write("# written by tests/support/servers.py\n"
                    "local all all trust\n"
                    "host all all 127.0.0.1/32 trust\n"
                    "host all all ::1/128 trust\n")
        # postgres runs in the foreground as our child (in its own process
        # group), with the same options ``pg_ctl start -o "..."`` would pass.
        cmd = [os.path.join(PG_BIN, "postgres"), "-D", datadir,
               "-p", str(port), "-k", sockdir,
               "-c", f"listen_addresses={LOOPBACK}",
               "-c", "fsync=off", "-c", "synchronous_commit=off",
               "-c", "full_page_writes=off",
               "-c", "logging_collector=off",
               "-c", "max_connections=100",
               "-c", "shared_buffers=32MB"]
        for setting in settings:
            cmd += ["-c", setting]
        # exec'd directly as the postgres user (no runuser parent), so the
        # Popen pid *is* the postmaster and the process group is its own
        kw = dict(user=user, group=user, extra_groups=[]) if os.geteuid() == 0 else {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C",
               "HOME": d}
        # SIGINT = postgres "fast" shutdown
        proc = _spawn(cmd, log, cwd=d, name="postgres", stop_signal=signal.SIGINT,
                      env=env, **kw)
        try:
            isready = os.path.join(PG_BIN, "pg_isready")

            def ready() -> bool:
                return _run([isready, "-q", "-h", LOOPBACK, "-p", str(port)],
                            check=False, timeout=5).returncode == 0
            _wait_ready(proc, port, ready=ready)
            pg = Postgres(tmpdir=d, port=port, datadir=datadir, sockdir=sockdir,
                          log_path=log, dbname=dbname, user=user, _proc=proc)
            pg.psql(f'CREATE DATABASE "{dbname}"', db="postgres")
            yield pg
        finally:
            proc.stop()


# --------------------------------------------------------------------------
# mariadb


@dataclass
class MariaDB:
    tmpdir: str
    port: int
    datadir: str
    socket_path: str
    log_path: str
    user: str
    password: str
    database: str
    _proc: _Proc = field(repr=False)
    general_log_path: str | None = None   # with mariadb(general_log=True)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def pids(self) -> list[int]:
        return _tree_pids(self._proc.pid)

    def query(self, sql: str, *, check: bool = True, timeout: float = 60) -> str:
        """Run SQL with the ``mariadb`` CLI over TCP as the test user
        (batch mode, no column names: tab-separated rows); return stdout."""
        cp = _run([_which("mariadb"), "--no-defaults", "--protocol=TCP",
                   "-h", LOOPBACK, "-P", str(self.port), "-u", self.user,
                   f"-p{self.password}", "--batch", "--skip-column-names",
                   "--skip-ssl", self.database, "-e", sql],
                  check=check, timeout=timeout)
        return cp.stdout.decode(errors="replace").strip()

    def root_query(self, sql: str) -> str:
        """Run SQL as root over the unix socket (not on TCP)."""
        cp = _run([_which("mariadb"), "--no-defaults", "-S", self.socket_path,
                   "-u", "root", "--batch", "--skip-column-names", "-e", sql])
        return cp.stdout.decode(errors="replace").strip()


@contextlib.contextmanager
def mariadb(user: str = "test", password: str = "test",
            database: str = "test", general_log: bool = False,
            tls: tuple[str, str] | None = None) -> Iterator[MariaDB]:
    """MariaDB (mariadbd, run as OS user ``mysql``) on 127.0.0.1 with a user
    ``user``/``password`` (mysql_native_password, all privileges, any host)
    and database ``database``.  ``general_log``: log every command the server
    receives to ``.general_log_path`` (``--general-log``).  ``tls``: (certificate,
    key) files the ``mysql`` user can read: TLS offered to clients (else ``--skip-ssl``)."""
    with _tmpdir("mariadb") as d:
        datadir = os.path.join(d, "data")
        tmp = os.path.join(d, "tmp")
        os.mkdir(tmp)
        os.chmod(tmp, 0o1777)
        run = os.path.join(d, "run")   # socket, pid file, error log: owned by mysql
        os.mkdir(run)
        if os.geteuid() == 0:
            shutil.chown(run, "mysql", "mysql")
        sock = os.path.join(run, "mysqld.sock")
        log = os.path.join(run, "mariadb.log")
        port = free_port()
        common = ["--no-defaults"]
        run_as = ["--user=mysql"] if os.geteuid() == 0 else []
        server_opts = ["--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M"]
        glog = os.path.join(run, "general.log")
        glog_opts = ["--general-log", f"--general-log-file={glog}"] if general_log else []
        cp = _run([_which("mariadb-install-db"), *common, *run_as,
                   f"--datadir={datadir}", "--auth-root-authentication-method=normal",
                   "--skip-test-db", "--skip-name-resolve", *server_opts],
                  cwd=d, check=False, timeout=60)
        if cp.returncode != 0:
            raise ServerError(f"mariadb-install-db failed:\n{cp.stdout.decode()}"
                              f"{cp.stderr.decode()}")
        proc = _spawn([_which("mariadbd"), *common, *run_as, f"--datadir={datadir}",
                       f"--socket={sock}", f"--port={port}",
                       f"--bind-address={LOOPBACK}", f"--pid-file={run}/mariadbd.pid",
                       f"--tmpdir={tmp}", f"--log-error={log}", "--skip-log-bin",
                       "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0",
                       "--innodb-doublewrite=0", "--performance-schema=OFF",
                       *([f"--ssl-cert={tls[0]}", f"--ssl-key={tls[1]}"] if tls
                         else ["--skip-ssl"]), *server_opts, *glog_opts],
                      os.path.join(d, "stdout.log"), cwd=d, name="mariadbd")
        try:
            # the unix socket appears just after the TCP listener
            _wait_ready(proc, port, extra_logs=[log],
                        ready=lambda: os.path.exists(sock))
            db = MariaDB(tmpdir=d, port=port, datadir=datadir, socket_path=sock,
                         log_path=log, user=user, password=password,
                         database=database, _proc=proc,
                         general_log_path=glog if general_log else None)
            db.root_query(
                "DELETE FROM mysql.global_priv WHERE User='';"
                f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';"
                f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%';"
                f"CREATE DATABASE IF NOT EXISTS `{database}`;"
                "FLUSH PRIVILEGES;")
            yield db
        finally:
            proc.stop()


# --------------------------------------------------------------------------
# dnsmasq (DNS), in a network + mount namespace of its own


SERVFAIL_RESPONDER = r"""
import socket, sys
import dns.message, dns.rcode
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    try:
        r = dns.message.make_response(dns.message.from_wire(data))
    except Exception:
        continue
    r.set_rcode(dns.rcode.SERVFAIL)
    s.sendto(r.to_wire(), peer)
"""


@dataclass
class Dnsmasq:
    """dnsmasq on 127.0.0.1:53 of a network namespace the fixture made (so that glibc's
    resolver, which only knows port 53, reaches it), with /etc/resolv.conf bound to
    ``nameserver 127.0.0.1`` in that namespace's mount namespace.  Names: ``ok.test`` (A and
    AAAA), ``two.test`` (A); any other ``*.test`` is NXDOMAIN (``--local=/test/``);
    ``*.fail.example`` is forwarded to a responder that answers SERVFAIL."""
    tmpdir: str
    log_path: str
    holder_pid: int           # a process in the namespaces: nsenter -t it
    pid: int                  # dnsmasq's
    responder_pid: int
    upstream_port: int
    _procs: list = field(repr=False, default_factory=list)

    def ns(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside the namespaces."""
        return ["nsenter", "-t", str(self.holder_pid), "-n", "-m", *cmd]

    def log_queries(self) -> list[tuple[str, str]]:
        """(type, name) of each query dnsmasq logged receiving."""
        out = []
        with open(self.log_path) as f:
            for line in f:
                m = re.search(r" query\[(\w+)\] (\S+) from ", line)
                if m:
                    out.append((m.group(1), m.group(2)))
        return out

    def log_lines(self, needle: str) -> int:
        with open(self.log_path) as f:
            return sum(1 for line in f if needle in line)


@contextlib.contextmanager
def dnsmasq(python: str) -> Iterator[Dnsmasq]:
    with _tmpdir("dnsmasq") as d:
        hosts = os.path.join(d, "hosts")
        with open(hosts, "w") as f:
            f.write("127.0.0.9 ok.test\n::9 ok.test\n127.0.0.10 two.test\n")
        resolv = os.path.join(d, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
        log = os.path.join(d, "dnsmasq.log")
        upstream = 5300
        holder = _spawn(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                         f"ip link set lo up && mount --bind {resolv} /etc/resolv.conf && "
                         "exec sleep 3600"], os.path.join(d, "holder.log"), cwd=d,
                        name="netns holder")
        procs = [holder]
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    with open(f"/proc/{holder.pid}/cmdline", "rb") as f:
                        if f.read().startswith(b"sleep"):
                            break
                except OSError:
                    pass
                time.sleep(0.05)
            ns = ["nsenter", "-t", str(holder.pid), "-n", "-m"]
            resp = _spawn(ns + [python, "-c", SERVFAIL_RESPONDER, str(upstream)],
                          os.path.join(d, "responder.log"), cwd=d, name="SERVFAIL responder")
            procs.append(resp)
            dm = _spawn(ns + [_which("dnsmasq", "/usr/sbin"), "--no-daemon",
                              "--conf-file=/dev/null", "--port=53",
                              "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                              "--no-hosts", f"--addn-hosts={hosts}", "--local=/test/",
                              f"--server=/fail.example/127.0.0.1#{upstream}", "--log-queries",
                              f"--log-facility={log}", "--user=root", "--pid-file="],
                        os.path.join(d, "stdout.log"), cwd=d, name="dnsmasq")
            procs.append(dm)
            while time.monotonic() < deadline:
                if os.path.exists(log) and "read " + hosts in open(log).read():
                    break
                if not dm.alive():
                    raise ServerError("dnsmasq exited:\n" + _tail(os.path.join(d, "stdout.log"))
                                      + _tail(log))
                time.sleep(0.05)
            time.sleep(0.3)
            dpid = next((p for p in _tree_pids(dm.pid)
                         if psutil.Process(p).name() == "dnsmasq"), dm.pid)
            rpid = next((p for p in _tree_pids(resp.pid)
                         if psutil.Process(p).name().startswith("python")), resp.pid)
            yield Dnsmasq(tmpdir=d, log_path=log, holder_pid=holder.pid, pid=dpid,
                          responder_pid=rpid, upstream_port=upstream, _procs=procs)
        finally:
            for p in reversed(procs):
                p.stop()
