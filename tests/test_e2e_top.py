"""``--top`` in a real terminal (tmux: send-keys, capture-pane) while traffic runs (BPF):
the expected rows and numbers, sort keys, the API view, resizing, q and SIGINT exit 0
and leave the terminal as it was; without a terminal, plain lines."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from tests.support.probe import ROOT, PROBE
from tests.support.servers import nginx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

# fast: GET / every 10 ms, no errors; slow: every 100 ms, half of them 404.
# Bounded: at most 300 s and 30000 requests; the module stops them before.
CLIENT = textwrap.dedent(r"""
    import socket, sys, time
    sys.path.insert(0, "@ROOT@")
    from tests.support import http_get
    port, kind = int(sys.argv[1]), sys.argv[2]
    s = socket.create_connection(("127.0.0.1", port))
    def get(path):
        http_get.get(s, path)
    end = time.time() + 300
    i = 0
    while time.time() < end and i < 30000:
        if kind == "fast":
            get("/")
            time.sleep(0.01)
        else:
            get("/status/404" if i % 2 else "/")
            time.sleep(0.1)
        i += 1
""").replace("@ROOT@", ROOT)


def tmux(*args, check=True):
    return subprocess.run(["tmux"] + list(args), capture_output=True, text=True, timeout=20,
                          check=check)


class Pane:
    def __init__(self, command, width=200, height=40):
        self.name = "l7top%d" % os.getpid()
        self.dir = tempfile.mkdtemp(prefix="l7top")
        self.rc = os.path.join(self.dir, "rc")
        self.stty = os.path.join(self.dir, "stty")
        self.stty_before = os.path.join(self.dir, "stty0")
        script = ("stty -g > {b}; {cmd}; echo $? > {rc}; stty -g > {s}; echo AFTER-EXIT; "
                  "exec sleep 120").format(b=shlex.quote(self.stty_before), cmd=command,
                                           rc=shlex.quote(self.rc), s=shlex.quote(self.stty))
        tmux("kill-session", "-t", self.name, check=False)
        tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
             "bash", "--norc", "--noprofile", "-c", script)

    def screen(self):
        return tmux("capture-pane", "-p", "-t", self.name).stdout.splitlines()

    def keys(self, *keys):
        tmux("send-keys", "-t", self.name, *keys)

    def wait_for(self, pred, timeout=90):
        deadline = time.time() + timeout
        lines = []
        while time.time() < deadline:
            lines = self.screen()
            if pred(lines):
                return lines
            time.sleep(0.2)
        raise AssertionError("screen never matched:\n" + "\n".join(lines))

    def exit_code(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(self.stty):
                with open(self.rc) as f:
                    return int(f.read())
            time.sleep(0.2)
        raise AssertionError("the probe did not exit:\n" + "\n".join(self.screen()))

    def close(self):
        tmux("kill-session", "-t", self.name, check=False)


def rows(lines, pid):
    return [l.split() for l in lines if l.split()[:1] == [str(pid)]]


def title(lines):
    return next((l for l in lines if l.startswith("l7probe top")), "")


@pytest.fixture(scope="module")
def traffic():
    with nginx() as ng:
        procs = {k: subprocess.Popen([sys.executable, "-c", CLIENT, str(ng.port), k])
                 for k in ("fast", "slow")}
        try:
            yield {"port": ng.port, "fast": procs["fast"].pid, "slow": procs["slow"].pid}
        finally:
            for p in procs.values():
                p.kill()
                p.wait()


def probe_cmd(traffic, period=2):
    return "%s %s --top -P %d --proto http -p %d,%d" % (
        shlex.quote(sys.executable), shlex.quote(PROBE), period, traffic["fast"],
        traffic["slow"])


def both_rows(traffic):
    return lambda lines: rows(lines, traffic["fast"]) and rows(lines, traffic["slow"])


def order(lines, traffic):
    pids = [l.split()[0] for l in lines if l.split()[:1] in (
        [str(traffic["fast"])], [str(traffic["slow"])])]
    return ["fast" if p == str(traffic["fast"]) else "slow" for p in pids]


def test_top_in_a_terminal(traffic):
    pane = Pane(probe_cmd(traffic))
    try:
        lines = pane.wait_for(both_rows(traffic))
        head = next(l for l in lines if l.startswith("PID"))
        assert head.split() == ["PID", "COMM", "CONTAINER", "PROTO", "ROLE",
                                "CLIENT>SERVER:PORT", "REQ/S", "ERR%", "P50ms", "P99ms",
                                "BYTES"]
        # numbers of a full period: fast ~ up to 100 req/s without errors, slow <= 10
        # req/s with half of them errors
        lines = pane.wait_for(lambda ls: both_rows(traffic)(ls) and
                              float(rows(ls, traffic["slow"])[0][6]) > 0)
        fast, slow = rows(lines, traffic["fast"])[0], rows(lines, traffic["slow"])[0]
        for r, kind in ((fast, "fast"), (slow, "slow")):
            with open("/proc/%d/comm" % traffic[kind]) as f:
                comm = f.read().strip()
            assert r[1] == comm and r[2] == "-" and r[3] == "http" and r[4] == "client"
            assert r[5].endswith(":%d" % traffic["port"])
            assert float(r[8]) > 0 and float(r[9]) >= float(r[8])      # p50 <= p99, ms
            assert r[10][-1] in "BKMG"
        assert float(fast[6]) > float(slow[6]) > 0 and float(fast[7]) == 0.0
        assert float(slow[6]) <= 11
        assert 25.0 <= float(slow[7]) <= 75.0
        assert "sorted by req/s" in title(lines) and order(lines, traffic) == ["fast", "slow"]
        # sort keys
        pane.keys("e")
        lines = pane.wait_for(lambda ls: "sorted by err%" in title(ls), timeout=5)
        assert order(lines, traffic) == ["slow", "fast"]
        pane.keys("r")
        lines = pane.wait_for(lambda ls: "sorted by req/s" in title(ls), timeout=5)
        assert order(lines, traffic) == ["fast", "slow"]
        pane.keys("p")
        lines = pane.wait_for(lambda ls: "sorted by pid" in title(ls), timeout=5)
        want = sorted(("fast", "slow"), key=lambda k: traffic[k])
        assert order(lines, traffic) == want
        # the API view
        pane.keys("r", "v")
        lines = pane.wait_for(lambda ls: "APIs" in title(ls).split("[")[0], timeout=5)
        apis = {(r[0], r[7]) for r in (l.split() for l in lines) if len(r) > 8}
        assert ("%d" % traffic["fast"], "/") in apis
        assert ("%d" % traffic["slow"], "/status/404") in apis
        pane.keys("v")
        pane.wait_for(lambda ls: "links" in title(ls).split("[")[0], timeout=5)
        # resizing re-draws at the new size at once (not at the next period)
        tmux("resize-window", "-t", pane.name, "-x", "90", "-y", "15")
        lines = pane.wait_for(lambda ls: len(ls) == 15 and len(title(ls)) == 89, timeout=5)
        assert all(len(l) <= 89 for l in lines)
        tmux("resize-window", "-t", pane.name, "-x", "200", "-y", "40")
        pane.wait_for(lambda ls: len(title(ls)) > 89 and len(ls) == 40, timeout=5)
        # q leaves with 0 and the terminal as it was
        pane.keys("q")
        assert pane.exit_code() == 0
        lines = pane.wait_for(lambda ls: any("AFTER-EXIT" in l for l in ls), timeout=10)
        assert not any(l.startswith("l7probe top") for l in lines)   # screen given back
        with open(pane.stty_before) as a, open(pane.stty) as b:
            assert a.read() == b.read()
    finally:
        pane.close()


def test_top_exits_0_on_sigint(traffic):
    pane = Pane(probe_cmd(traffic, period=1))
    try:
        pane.wait_for(both_rows(traffic))
        pane.keys("C-c")
        assert pane.exit_code() == 0
        pane.wait_for(lambda ls: any("AFTER-EXIT" in l for l in ls), timeout=10)
        with open(pane.stty_before) as a, open(pane.stty) as b:
            assert a.read() == b.read()
    finally:
        pane.close()


def test_top_without_a_terminal_prints_plain_lines(traffic):
    out = subprocess.run([sys.executable, PROBE, "--top", "-P", "1", "--duration", "4",
                          "--proto", "http", "-p", "%d,%d" % (traffic["fast"], traffic["slow"])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\x1b" not in out.stdout                    # no terminal control sequences
    blocks = [b.splitlines() for b in out.stdout.split("\n\n") if b.strip()]
    assert len(blocks) >= 3
    for b in blocks:
        assert b[0].startswith("l7probe top") and b[1].startswith("PID")
    last = blocks[-2]           # the last full period
    pids = {r.split()[0] for r in last[2:]}
    assert pids == {str(traffic["fast"]), str(traffic["slow"])}
    assert re.search(r"\d+ links", last[0])
