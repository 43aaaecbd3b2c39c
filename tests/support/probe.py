"""Run l7probe as a user would (a subprocess of the checkout's l7probe.py) and collect the
records it prints, parsed by the meta file's column order."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from pipeline.meta import FIELDS  # noqa: E402

PROBE = os.path.join(ROOT, "l7probe.py")


def parse_line(line):
    """'|table|v1|...|' -> (table, {field: value}); raises ValueError if malformed."""
    if not line.startswith("|") or not line.endswith("|"):
        raise ValueError("not a record: %r" % line)
    parts = line[1:-1].split("|")
    table, vals = parts[0], parts[1:]
    fields = FIELDS[table]
    if len(vals) != len(fields):
        raise ValueError("%s: %d values for %d fields: %r" % (table, len(vals), len(fields), line))
    return table, dict(zip(fields, vals))


class ProbeRun:
    def __init__(self, args, env=None, ready_timeout=60, probe=PROBE):
        self.args = list(args)
        self.lines = []
        self.err_lines = []
        self.proc = subprocess.Popen([sys.executable, probe] + self.args,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True)
        self._ready = threading.Event()
        self._t_out = threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                                       daemon=True)
        self._t_err = threading.Thread(target=self._read, args=(self.proc.stderr,
                                                                 self.err_lines), daemon=True)
        self._t_out.start()
        self._t_err.start()
        deadline = time.time() + ready_timeout
        while time.time() < deadline and not self._ready.is_set():
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not self._ready.is_set():
            self.stop()
            raise RuntimeError("probe did not start: %s" % "\n".join(self.err_lines[-20:]))

    def _read(self, f, sink):
        for line in f:
            line = line.rstrip("\n")
            sink.append(line)
            if "started: capturing" in line:
                self._ready.set()

    def wait_tls_attached(self, path, pid, timeout=60):
        """Wait for the probe's "TLS: attached ... to <path> ... for pid <pid>" line (a
        process started after the probe, found from its exec record); True if it came
        within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        path = str(path)
        while time.monotonic() < deadline:
            for line in list(self.err_lines):
                if "TLS: attached" in line and path in line and " for pid " in line:
                    if str(pid) in line.rsplit(" for pid ", 1)[1].split(","):
                        return True
            time.sleep(0.1)
        return False

    def stop(self, sig=signal.SIGINT, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._t_out.join(5)
        self._t_err.join(5)
        return self.proc.returncode

    def records(self, table=None):
        out = []
        for line in self.lines:
            if line.startswith("|"):
                t, rec = parse_line(line)
                if table is None or t == table:
                    out.append(rec if table else (t, rec))
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def total(records, field, **where):
    """Sum of an integer field over records matching every where-condition (str compare)."""
    return sum(int(r[field]) for r in records
               if all(str(r[k]) == str(v) for k, v in where.items()))
