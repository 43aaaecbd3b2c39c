#!/usr/bin/env python3
"""`make bench`: the performance figures of the brief, measured side by side in one run.

1. Parser: HTTP messages/s through the user-space pipeline (ring-buffer records recorded
   from real nginx traffic, replayed without BPF), and each database parser's rate.
2. Fixed rate (~15k req/s, wrk with a 1 ms delay per request, keep-alive) against nginx,
   plain and HTTPS: nginx CPU without and with the probe, probe CPU, added CPU per request
   (us), and the share of wrk's requests the probe reported.
3. Saturation (wrk -t1 -c8 without delay): throughput kept, share reported.
4. Untraced processes: ns per syscall without and with the probe.
5. Probe RSS with 10k connections.
With BENCH_REF=<git revision>, that revision's probe is measured beside this one.
Figures only: no thresholds here (the brief's targets are printed beside them).
"""
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.probe import ProbeRun, total  # noqa: E402
from tests.support.servers import nginx  # noqa: E402

DURATION = int(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "3")))
CONNS = 20
SAT_CONNS = 8
DELAY_LUA = "function delay()\n  return 1\nend\n"
# the probe as the user ran it: standalone, `--proto http`, the default period (5 s:
# l7_trace prints at most --trace-limit rows per period, so a shorter period prints more)
LOAD_ARGS = ["--proto", "http"]


def cpu_seconds(pids):
    t = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                parts = f.read().rsplit(")", 1)[1].split()
            t += (int(parts[11]) + int(parts[12])) / tick
        except (OSError, IndexError):
            pass
    return t


def wrk(url, seconds, delay, threads=2, conns=CONNS):
    cmd = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % seconds, url]
    lua = None
    if delay:
        lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        lua.write(DELAY_LUA)
        lua.close()
        cmd[1:1] = ["-s", lua.name]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    if lua:
        os.unlink(lua.name)
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    if not m:
        raise RuntimeError("wrk output not understood: %s" % out)
    return int(m.group(1)), float(m.group(2))


SSLSNIFF_LIKE = r"""
import sys
from bcc import BPF
b = BPF(text='''
BPF_ARRAY(hits, u64, 1);
int hit(struct pt_regs *ctx) { int k = 0; u64 *v = hits.lookup(&k); if (v) *v += 1; return 0; }
''')
lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
for sym in ("SSL_read", "SSL_write"):
    b.attach_uprobe(name=lib, sym=sym, fn_name="hit")
    b.attach_uretprobe(name=lib, sym=sym, fn_name="hit")
print("started: capturing", file=sys.stderr, flush=True)
sys.stdin.read()
"""


class _Reference:
    """A process with sslsniff's probe pattern (uprobe + uretprobe on SSL_read and
    SSL_write) and empty BPF programs: the floor any OpenSSL plaintext tracer pays."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SSLSNIFF_LIKE],
                                     stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if "started" in line:
                break

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(30)

    def records(self, table):
        return []


# BENCH_REF=<git revision>: measure that revision's probe beside this one, in the same run
# (this VM's speed moves by ~40 % between days: before/after figures need one run)
REF = os.environ.get("BENCH_REF")
FIG = []          # (figure, value, target) for the summary at the end


def probes():
    """[(label, path of l7probe.py)]: this checkout's, and BENCH_REF's if asked for."""
    out = [("this", os.path.join(ROOT, "l7probe.py"))]
    if REF:
        d = os.path.join(tempfile.gettempdir(), "l7probe-ref-" + REF.replace("/", "_"))
        if not os.path.exists(os.path.join(d, "l7probe.py")):
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-f", d, REF],
                           check=True, capture_output=True)
        out.append(("ref " + REF, os.path.join(d, "l7probe.py")))
    return out


def rpc_rows(probe):
    """l7_rpc rows of this or of BENCH_REF's probe: upstream's fields keep their order, and
    extensions come after them, so the fields known to both are read by position."""
    from pipeline.meta import FIELDS
    names = FIELDS["l7_rpc"]
    out = []
    for line in getattr(probe, "lines", ()):       # _Reference prints no records
        if line.startswith("|l7_rpc|"):
            vals = line[1:-1].split("|")[1:]
            out.append(dict(zip(names, vals)))
    return out


def settle(pid, most=20.0):
    """Wait until the probe's start-up work is done (after "started: capturing" it still
    scans the processes for TLS libraries and attaches its uprobes): until it used less
    than 2 % of a CPU over half a second, at most ``most`` seconds.  The figures are then
    those of a probe that runs, not of its first seconds (which would otherwise be spread
    over the few seconds of a run)."""
    end = time.monotonic() + most
    last = cpu_seconds([pid])
    while time.monotonic() < end:
        time.sleep(0.5)
        now = cpu_seconds([pid])
        if now - last < 0.01:
            return
        last = now


def run_load(ng, delay, probe_args, probe_path=None, threads=2, conns=CONNS, port=None,
             env=None):
    """(requests, wall s, nginx cpu s, probe cpu s or None, reported server requests)."""
    if probe_args == "reference":
        probe = _Reference()
    elif probe_args is not None:
        probe = ProbeRun(probe_args, probe=probe_path,
                         env=dict(os.environ, **env) if env else None)
    else:
        probe = None
    try:
        if probe is not None and probe_args != "reference":
            settle(probe.proc.pid)
        else:
            time.sleep(0.5)
        pids = ng.pids()
        c0 = cpu_seconds(pids)
        p0 = cpu_seconds([probe.proc.pid]) if probe else 0.0
        reqs, secs = wrk(ng.url("/"), DURATION, delay, threads=threads, conns=conns)
        c1 = cpu_seconds(pids)
        p1 = cpu_seconds([probe.proc.pid]) if probe else 0.0
    finally:
        if probe:
            time.sleep(0.3)
            probe.stop()
    reported = None
    if probe and probe_args != "reference":
        rows = [r for r in rpc_rows(probe)
                if r["server_port"] == str(port or ng.port) and r["l7_role"] == "server"]
        reported = total(rows, "req_count")
    return reqs, secs, c1 - c0, (p1 - p0) if probe else None, reported


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _spread(xs, fmt="%.2f"):
    return "median " + fmt % _median(xs) + " (" + ", ".join(fmt % x for x in xs) + ")"


def bench_load(tls=False):
    """ROUNDS rounds, each of: a run without the probe, then one run per probe variant.
    Every figure is computed against the run without the probe of its own round, and the
    median over the rounds is printed with each round's value: this VM's speed drifts by
    tens of percent within minutes, more than the differences measured here."""
    name = "HTTPS" if tls else "HTTP"
    target = 12 if tls else 5
    with nginx(workers=1, tls=tls) as ng:
        # warm up
        wrk(ng.url("/"), 2, True)
        print("== %s fixed rate: wrk -c%d with 1 ms delay per request, %d s, keep-alive, "
              "nginx 1 worker; probe %s; %d rounds" % (name, CONNS, DURATION, " ".join(LOAD_ARGS),
                                                     ROUNDS))
        variants = [(who, path, None) for who, path in probes()]
        variants.insert(1, ("this (L7PROBE_HOOKS=syscalls)", variants[0][1],
                            {"L7PROBE_HOOKS": "syscalls"}))
        runs = []
        for who, path, env in variants:
            for label, args in (("all processes", LOAD_ARGS),
                                ("--pid nginx", LOAD_ARGS + ["-p", None])):
                runs.append((who, label, path, env, args))
        if tls:
            runs.append(("empty sslsniff-style uprobes on SSL_read and SSL_write (for scale)",
                         "", None, None, "reference"))
        got = {}            # (who, label) -> [(served share, added us, nginx us, probe us, reported)]
        bases = []
        for _ in range(ROUNDS):
            base = run_load(ng, True, None)
            bases.append(base)
            base_per_req = base[2] / base[0]
            for who, label, path, env, args in runs:
                if isinstance(args, list):
                    args = [",".join(map(str, ng.pids())) if a is None else a for a in args]
                r = run_load(ng, True, args, path, env=env)
                probe_cpu = r[3] or 0.0
                added = (probe_cpu + r[2] - base_per_req * r[0]) / r[0]
                got.setdefault((who, label), []).append(
                    ((r[0] / r[1]) / (base[0] / base[1]), 1e6 * added, 1e6 * r[2] / r[0],
                     1e6 * probe_cpu / r[0], (r[4] / r[0]) if r[4] is not None else None))
        print("  without probe: %s req/s, nginx CPU %s us/req"
              % (_spread([b[0] / b[1] for b in bases], "%.0f"),
                 _spread([1e6 * b[2] / b[0] for b in bases])))
        for (who, label), rows in got.items():
            served = [x[0] for x in rows]
            added = [x[1] for x in rows]
            rep = [x[4] for x in rows if x[4] is not None]
            print("  %s%s: added CPU %s us/req (target <= %d); nginx CPU %s us/req, probe "
                  "CPU %s us/req; rate served %s%s"
                  % (who, (", " + label) if label else "", _spread(added, "%.1f"), target,
                     _spread([x[2] for x in rows], "%.1f"), _spread([x[3] for x in rows], "%.1f"),
                     _spread(served), ("; reported " + _spread(rep, "%.3f")) if rep else ""))
            if label == "all processes":
                FIG.append(("%s fixed rate: added CPU per request (%s)" % (name, who),
                            "%.1f us; %.0f %% served; %.3f reported"
                            % (_median(added), 100 * _median(served), _median(rep)),
                            "<= %d us, served, 1.00" % target))
            elif not label:
                FIG.append(("HTTPS fixed rate: empty sslsniff-style uprobes alone",
                            "%.1f us" % _median(added), ""))
        if tls:
            return
        print("== saturation: wrk -t1 -c%d without delay, %d s; probe %s; %d rounds"
              % (SAT_CONNS, DURATION, " ".join(LOAD_ARGS), ROUNDS))
        sat = {}
        s0s = []
        for _ in range(ROUNDS):
            s0 = run_load(ng, False, None, threads=1, conns=SAT_CONNS)
            s0s.append(s0[0] / s0[1])
            for who, path in probes():
                s1 = run_load(ng, False, LOAD_ARGS, path, threads=1,
                              conns=SAT_CONNS)
                sat.setdefault(who, []).append(((s1[0] / s1[1]) / (s0[0] / s0[1]),
                                                s1[4] / s1[0]))
        print("  without probe: %s req/s" % _spread(s0s, "%.0f"))
        for who, rows in sat.items():
            kept = [x[0] for x in rows]
            rep = [x[1] for x in rows]
            print("  %s probe: throughput kept %s (target >= 0.85); reported %s (target >= "
                  "0.99)" % (who, _spread(kept), _spread(rep, "%.3f")))
            FIG.append(("saturation: throughput kept / requests reported (%s)" % who,
                        "%.2f / %.3f" % (_median(kept), _median(rep)), ">= 0.85 / >= 0.99"))


MANY_CLIENT = r"""
import resource, selectors, socket, sys, time
def _rx(s, n):
    d = s.recv(n)
    if not d:
        raise SystemExit("connection closed by the server")
    return d
port, n = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1000, n + 1000))
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: many\r\n\r\n")
    socks.append(s)
for s in socks:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _rx(s, 65536)
print("ready", flush=True)
sys.stdin.readline()
"""


def bench_rss(n=10000):
    import psutil
    from tests.support import servers
    servers.NGINX_WORKER_CONNECTIONS = n + 2000
    with nginx(workers=1) as ng:
        probe = ProbeRun(["-P", "2"])
        try:
            rss0 = psutil.Process(probe.proc.pid).memory_info().rss
            client = subprocess.Popen([sys.executable, "-c", MANY_CLIENT, str(ng.port), str(n)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert client.stdout.readline().strip() == "ready"
            time.sleep(4.5)            # two report periods with every connection alive
            rss1 = psutil.Process(probe.proc.pid).memory_info().rss
            parts = _rss_parts(probe.proc.pid)
            client.stdin.write("bye\n")
            client.stdin.close()
            client.wait(60)
        finally:
            probe.stop()
        rows = [r for r in probe.records("l7_rpc") if r["server_port"] == str(ng.port)
                and r["l7_role"] == "server"]
        print("== memory: probe RSS %.0f MB idle, %.0f MB with %d keep-alive connections "
              "open, traced on both ends (%d sockets) (target <= 100 MB at 10k connections); "
              "%d of %d requests reported"
              % (rss0 / 2**20, rss1 / 2**20, n, 2 * n, total(rows, "req_count"), n))
        print("  of it: %s" % ", ".join("%s %.1f MB" % (k, v / 2**20) for k, v in parts))
        FIG.append(("probe RSS at 10k connections", "%.0f MB" % (rss1 / 2**20), "<= 100 MB"))


def _rss_parts(pid):
    """[(what, bytes)] of a process's RSS: anonymous memory (the Python heap), file pages
    (code of python, libbcc, ...), and the BPF maps mapped in (the ring buffer), from
    /proc/PID/smaps."""
    anon = files = bpf = 0
    name = ""
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            parts = line.split()
            if not parts[0].endswith(":"):          # a mapping: "start-end perms ... [path]"
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:":
                n = int(parts[1]) * 1024
                if "bpf" in name:
                    bpf += n
                elif name.startswith("/"):
                    files += n
                else:
                    anon += n
    return [("anonymous", anon), ("files", files), ("BPF maps (ring buffer)", bpf)]


def parse_rates(runs=3):
    """The HTTP pipeline's parse rate (bench/parsers.py) of this checkout and of BENCH_REF's
    revision, in turns (best of ``runs`` each): repeated heads, and every head distinct."""
    from bench.parsers import HEADS
    here = os.path.join(ROOT, "bench", "parsers.py")
    for distinct, what in HEADS.items():
        best = {}
        for _ in range(runs):
            for label, path in probes():
                env = dict(os.environ, BENCH_CODE_ROOT=os.path.dirname(path))
                r = subprocess.run([sys.executable, here, "--http-rate"]
                                   + (["distinct"] if distinct else []),
                                   env=env, capture_output=True, text=True, timeout=600)
                try:
                    rate = float(r.stdout.split()[-1])
                except (IndexError, ValueError):
                    print("parse rate of %s: failed: %s" % (label, r.stderr.strip()[-300:]))
                    continue
                best[label] = max(best.get(label, 0.0), rate)
        vals = " / ".join("%s %.0fk" % (label, rate / 1e3) for label, rate in best.items())
        print("HTTP parse rate, %s, best of %d: %s messages/s" % (what, runs, vals))
        FIG.append(("HTTP parse rate, one core, recorded events, " + what, vals,
                    ">= 400k" if not distinct else ""))


def main():
    from bench import parsers
    print("== parsers (one core, no BPF)")
    parse_rates()                            # HTTP, this checkout's and BENCH_REF's, in turns
    parsers.bench_db()
    from bench import parse_instructions     # the same, in instructions (cachegrind)
    parse_instructions.main(FIG, [(label, os.path.dirname(path)) for label, path in probes()])
    from bench.bench_http2 import streams_per_second
    print("HTTP/2 parser (fixtures, recorded events): %.0f streams/s per core"
          % streams_per_second())
    from bench import parser_worstcase    # worst-case cost per byte per parser (issue 14)
    parser_worstcase.main([])
    if os.geteuid() != 0:
        print("== load benchmarks need root (BPF): skipped")
        return
    bench_load(tls=False)
    bench_load(tls=True)
    from bench import syscall_cost
    syscall_cost.main(FIG)
    from bench import uprobe_cost         # per-hit cost by instruction kind, sslsniff-bpfcc
    uprobe_cost.main(FIG)
    from bench import bench_sysbench
    bench_sysbench.main(FIG, probes(), DURATION)
    bench_rss()
    print("== summary (this VM's speed varies between days: compare figures of one run)")
    for fig, val, target in FIG:
        print("  %-62s %-40s %s" % (fig, val, target))


if __name__ == "__main__":
    main()
