"""The real gala-gopher daemon (upstream source vendored in ../shared/vendor/gala-gopher),
built once into a cache directory and run on loopback for end-to-end tests.

    with RealGopher(installed_or_fail()) as g:
        g.put({"cmd": {...}, "snoopers": {...}, "params": {...}, "state": "running"})
        g.wait_log(lambda l: " watching " in l)
        text = g.scrape()             # drains what it returns: keep every scrape
        ...

The daemon's paths are compiled in (/opt/gala-gopher/{extend_probes,meta,machine_id},
/var/run/gala_gopher/, the IPC key file /usr/bin/gala-gopher).  So that a test run changes
nothing on the host and cannot clash with another run, the daemon runs in a mount and IPC
namespace of its own (``unshare -m -i``): /opt, /usr/bin and /run are overlays there, whose
upper layers live in a temporary directory; the ``make install`` tree (a temporary DESTDIR,
tests/support/install.py) is bind-mounted where the daemon looks for the probe, and the
daemon's System V queue lives in the namespace's own IPC table.  Network, PIDs, BPF and
cgroups are the host's, as in production.  Ports are free ones on 127.0.0.1.

The build: ``build.sh`` of the vendored tree with PREFIX=$L7PROBE_GOPHER_CACHE (default
/var/cache/l7probe/gala-gopher) and NO_APT=1 (its Debian packages are in
tests/support/APT-PACKAGES, installed by ``make deps``); it returns at once while its stamp
matches.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Callable, List, Optional, Tuple

from tests.support.servers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENDOR = os.environ.get("L7PROBE_GOPHER_VENDOR",
                        os.path.join(os.path.dirname(ROOT), "shared", "vendor", "gala-gopher"))
CACHE = os.environ.get("L7PROBE_GOPHER_CACHE", "/var/cache/l7probe/gala-gopher")
BIN = "/opt/gala-gopher/extend_probes/l7probe"     # compiled into the daemon
LOOP = "127.0.0.1"

# What the daemon logs when it cannot use a line a probe printed (README of the vendored
# tree, src/ingress/ingress.c, src/lib/imdb/imdb.c) ...
INGEST_ERRORS = re.compile(
    r"failed to find tablename|Raw ingress data|exceeds max length|Can not add new record|"
    r"Key can't be null|Set metrics value failed|deserialize histogram|Historm")
# ... and when it drops a record at rendering because its process labels cannot be built
# (debug level; followed by a "build label fail" line that names no process)
RENDER_DROP = re.compile(r"Failed to append process-level labels\(tgid=(\d+)")


def vendor_dir() -> str:
    return VENDOR


def build(timeout: float = 600) -> str:
    """Build (or find cached) the daemon; returns its bin directory.  Raises with the
    build's output on failure."""
    script = os.path.join(VENDOR, "build.sh")
    if not os.path.isfile(script):
        raise RuntimeError("no vendored gala-gopher at %s (set L7PROBE_GOPHER_VENDOR)" % VENDOR)
    os.makedirs(CACHE, exist_ok=True)
    env = dict(os.environ, NO_APT="1", PREFIX=CACHE)
    cp = subprocess.run(["bash", script, CACHE], env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if cp.returncode != 0:
        raise RuntimeError("gala-gopher build failed:\n" + cp.stdout[-4000:])
    return os.path.join(CACHE, "bin")


def render_config(template: str, log_dir: str, web_port: int, rest_port: int,
                  log_level: str = "debug") -> str:
    """The vendored template with our ports, log directory and log level."""
    text = template.replace("@LOG_DIR@", log_dir)
    text = re.sub(r"port = 8888;", "port = %d;" % web_port, text)
    text = re.sub(r"port = 9999;", "port = %d;" % rest_port, text)
    text = re.sub(r'log_level = "\w+";', 'log_level = "%s";' % log_level, text)
    assert "port = %d;" % web_port in text and "port = %d;" % rest_port in text
    for addr in re.findall(r'bind_addr = "([^"]*)"', text):
        assert addr == LOOP, addr
    return text


_NS_SCRIPT = r"""
set -eu
i=0
for d in /opt /usr/bin /run; do
    i=$((i + 1))
    mkdir -p "$W/up$i" "$W/work$i"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$W/up$i,workdir=$W/work$i" "$d"
done
mkdir -p /opt/gala-gopher
mount --bind "$OPT" /opt/gala-gopher
mount --bind "$EXT" /opt/gala-gopher/extend_probes
rm -f /usr/bin/gala-gopher
ln -s "$GOPHER" /usr/bin/gala-gopher
cd "$RUN"
exec "$GOPHER" -c "$CONF"
"""


class RealGopher:
    """One daemon in its own mount + IPC namespace.  ``inst`` is an install.Installed."""

    def __init__(self, inst, bin_dir: Optional[str] = None, log_level: str = "debug",
                 directory: Optional[str] = None):
        self.inst = inst
        self.bin_dir = bin_dir or build()
        self.gopher_bin = os.path.join(self.bin_dir, "gala-gopher")
        self.dir = tempfile.mkdtemp(prefix="realgopher-", dir=directory)
        self.run_dir = os.path.join(self.dir, "run")
        self.log_dir = os.path.join(self.run_dir, "log")
        self.opt = os.path.join(self.dir, "opt")
        os.makedirs(self.log_dir)
        os.makedirs(os.path.join(self.opt, "meta"))
        os.makedirs(os.path.join(self.opt, "extend_probes"))
        shutil.copy(inst.meta, os.path.join(self.opt, "meta", "l7probe.meta"))
        with open("/proc/sys/kernel/random/uuid") as f:
            self.machine_id = f.read().strip()
        with open(os.path.join(self.opt, "machine_id"), "w") as f:
            f.write(self.machine_id + "\n")
        self.web_port = free_port()
        self.rest_port = free_port()
        while self.rest_port == self.web_port:
            self.rest_port = free_port()
        with open(os.path.join(VENDOR, "gala-gopher.conf")) as f:
            conf = render_config(f.read(), self.log_dir, self.web_port, self.rest_port,
                                 log_level)
        self.conf = os.path.join(self.run_dir, "gala-gopher.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.out_path = os.path.join(self.log_dir, "gala-gopher.out")
        self.log_path = os.path.join(self.log_dir, "debug", "gopher.log")
        self.proc: Optional[subprocess.Popen] = None
        self.scrapes: List[str] = []      # every /metrics body, in order
        self._log_pos = 0

    # -- life cycle ----------------------------------------------------------------------
    def start(self, timeout: float = 30) -> "RealGopher":
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "W": os.path.join(self.dir, "ns"), "OPT": self.opt,
               "EXT": os.path.join(self.inst.prefix_dir, "extend_probes"),
               "GOPHER": self.gopher_bin, "RUN": self.run_dir, "CONF": self.conf}
        out = open(self.out_path, "ab")
        # start_new_session: the daemon finds its probes with `pgrep -g <its pid>`, so it
        # must lead its process group; unshare and sh exec, so the pid is the daemon's.
        self.proc = subprocess.Popen(
            ["unshare", "-m", "-i", "--propagation", "private", "/bin/sh", "-c", _NS_SCRIPT],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.dir)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gala-gopher exited (%s):\n%s" % (
                    self.proc.returncode, self.output()[-3000:]))
            if self._port_open(self.rest_port) and self._port_open(self.web_port):
                return self
            time.sleep(0.2)
        raise RuntimeError("gala-gopher not listening after %ss:\n%s" % (
            timeout, self.output()[-3000:]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 20) -> Optional[int]:
        """SIGTERM, as ``systemctl stop``; returns the exit status (None: had to SIGKILL)."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is None:
            return
        for pid in self.group_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        self.kill()
        # a probe that outlived the daemon (should not happen; the tests check it)
        for pid in self.probe_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        keep = os.environ.get("L7PROBE_GOPHER_KEEP_LOGS")   # a directory to copy logs to
        if keep:
            shutil.copytree(self.log_dir, os.path.join(keep, os.path.basename(self.dir)),
                            dirs_exist_ok=True, ignore=shutil.ignore_patterns("metrics"))
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- processes -------------------------------------------------------------------------
    def group_pids(self) -> List[int]:
        """Members of the daemon's process group (the daemon, sh -c <bin>, the probe)."""
        if self.proc is None:
            return []
        out = []
        for pid, data in _proc_files("stat"):
            try:
                if int(data.rsplit(b")", 1)[1].split()[2]) == self.proc.pid:
                    out.append(pid)
            except (IndexError, ValueError):
                continue
        return out

    def probe_pids(self) -> List[int]:
        """Processes running the installed probe (whatever their group), excluding the
        ``sh -c`` wrapper: python3 .../l7probe, in the daemon's namespaces."""
        out = []
        for pid, data in _proc_files("cmdline"):
            argv = data.split(b"\0")
            if argv[0] in (b"/bin/sh", b"sh"):
                continue
            if BIN.encode() in argv and self._in_our_ns(pid):
                out.append(pid)
        return out

    def _in_our_ns(self, pid: int) -> bool:
        try:
            return os.readlink("/proc/%d/ns/ipc" % pid) == os.readlink(
                "/proc/%d/ns/ipc" % self.proc.pid)
        except OSError:
            return False

    # -- REST --------------------------------------------------------------------------------
    def rest(self, method: str, path: str = "/l7", body: Optional[str] = None,
             timeout: float = 60) -> Tuple[int, str]:
        conn = http.client.HTTPConnection(LOOP, self.rest_port, timeout=timeout)
        try:
            conn.request(method, path, body=body.encode() if body is not None else None)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def put(self, cfg: dict, probe: str = "l7", timeout: float = 60) -> Tuple[int, str]:
        """``PUT /<probe>`` with the literal ``json=`` body, as curl -d sends it."""
        return self.rest("PUT", "/" + probe, "json=" + json.dumps(cfg, separators=(",", ":")),
                         timeout=timeout)

    def get(self, probe: str = "l7") -> dict:
        status, text = self.rest("GET", "/" + probe)
        assert status == 200, (status, text)
        return json.loads(text)

    # -- metrics -----------------------------------------------------------------------------
    def scrape(self) -> str:
        conn = http.client.HTTPConnection(LOOP, self.web_port, timeout=30)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            # 204 No Content: nothing to render since the last scrape
            assert resp.status in (200, 204), (resp.status, text[:500])
        finally:
            conn.close()
        self.scrapes.append(text)
        return text

    # -- logs --------------------------------------------------------------------------------
    def log_text(self) -> str:
        """The daemon's log (its own lines and its probes' log lines)."""
        return _read_text(self.log_path)

    def log_lines(self) -> List[str]:
        return self.log_text().splitlines()

    def mark(self) -> int:
        """A position in the log: wait_log(after=mark) looks only at what follows."""
        return len(self.log_text())

    def wait_log(self, predicate: Callable[[str], bool], timeout: float = 60,
                 after: int = 0) -> Optional[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text()[after:].splitlines():
                if predicate(line):
                    return line
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def output(self) -> str:
        """The daemon's stdout and stderr (also its probes' stderr)."""
        return _read_text(self.out_path)

    def drops(self, tgids=()) -> List[str]:
        """Log lines saying the daemon rejected a line a probe printed, or dropped at
        rendering a record of one of ``tgids`` (records of other processes a proc_name
        snooper matched may be dropped when those exit: not ours to check)."""
        mine = {str(t) for t in tgids}
        out = []
        for line in self.log_lines():
            m = RENDER_DROP.search(line)
            if INGEST_ERRORS.search(line) or (m and m.group(1) in mine):
                out.append(line)
        return out

    @staticmethod
    def _port_open(port: int) -> bool:
        import socket
        try:
            with socket.create_connection((LOOP, port), timeout=0.5):
                return True
        except OSError:
            return False


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _proc_files(name):
    """(pid, contents of /proc/<pid>/<name>) of every process, in pid order."""
    pids = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
    for pid in pids:
        try:
            with open("/proc/%d/%s" % (pid, name), "rb") as f:
                yield pid, f.read()
        except OSError:
            continue


# ---------------------------------------------------------------------------------------
# Prometheus text

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+(\S+))?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Sample:
    __slots__ = ("name", "labels", "value", "ts", "line")

    def __init__(self, name, labels, value, ts, line):
        self.name, self.labels, self.value, self.ts, self.line = name, labels, value, ts, line

    def __repr__(self):
        return self.line


def parse_metrics(text: str) -> List[Sample]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        labels = {k: re.sub(r"\\(.)", r"\1", v) for k, v in _LABEL.findall(m.group(2) or "")}
        out.append(Sample(m.group(1), labels, float(m.group(3)), m.group(4), line))
    return out


def select(samples, name: str, **labels) -> List[Sample]:
    return [s for s in samples if s.name == name
            and all(s.labels.get(k) == str(v) for k, v in labels.items())]


def total(samples, name: str, **labels) -> float:
    return sum(s.value for s in select(samples, name, **labels))


def promtool_check(text: str, timeout: float = 60) -> Tuple[int, List[str]]:
    """``promtool check metrics`` on one scrape: (exit status, its problem lines)."""
    cp = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                        text=True, timeout=timeout)
    lines = [l for l in (cp.stdout + cp.stderr).splitlines() if l.strip()]
    return cp.returncode, lines
