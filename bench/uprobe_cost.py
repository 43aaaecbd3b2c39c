#!/usr/bin/env python3
"""What a uprobe costs on this machine, by the instruction it replaces; and Debian's
`sslsniff-bpfcc` on the same HTTPS nginx load as the probe.

(a) ``measure_per_hit()``: a small C program compiled here with gcc, one function per
    instruction kind (each starts with that instruction), a BPF program that only counts
    hits attached at it, N calls timed against the same N calls without a probe.  The
    count checks that every call hit the probe.  The classifier the TLS attach code uses
    (bpf/uprobe_sites.classify) is printed beside each figure: "emulated" rows should be
    the cheap ones.
(b) ``bench_sslsniff()``: nginx HTTPS at a fixed rate (the wrk load of bench/run.py),
    nginx's and the tracer's CPU per request without a tracer, with l7probe and with
    Debian's sslsniff-bpfcc (uprobe + uretprobe on SSL_read/SSL_write at the symbols, a
    perf-buffer event per call, printed).  Here sslsniff's BPF text does not compile with
    the 6.1 headers (the kernel's min() macro, see KERNEL-FACTS.md): a copy with that one
    min() written as a ternary is run instead, and the output says so.

Run alone: ``.venv/bin/python bench/uprobe_cost.py [--hits-only]``; bench/run.py calls
``main()``.  Figures only, no thresholds.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bpf import uprobe_sites  # noqa: E402

# (name, instruction at the probed address, offset of the probe in the function, body)
KINDS = (
    ("nop", "nop", 0, "nop\n ret"),
    ("xchg_ax", "xchg %ax,%ax (66 90)", 0, ".byte 0x66,0x90\n ret"),
    ("nop5", "nopl 0x0(%rax,%rax,1) (5-byte nop)", 0, ".byte 0x0f,0x1f,0x44,0x00,0x00\n ret"),
    ("push_rbp", "push %rbp", 0, "push %rbp\n pop %rbp\n ret"),
    ("push_r13", "push %r13", 0, "push %r13\n pop %r13\n ret"),
    ("call", "call rel32", 0, "call uc_leaf\n ret"),
    ("jmp", "jmp rel32", 0, ".byte 0xe9\n .long 0\n ret"),
    ("jcc", "jbe rel32", 0, ".byte 0x0f,0x86\n .long 0\n ret"),
    ("sub_rsp", "sub $0x18,%rsp", 0, "sub $0x18,%rsp\n add $0x18,%rsp\n ret"),
    ("endbr64", "endbr64", 0, "endbr64\n ret"),
    ("mov", "mov %rdi,%rax", 0, "mov %rdi,%rax\n ret"),
    ("cmp", "cmp %rdi,%rsp", 0, "cmp %rdi,%rsp\n ret"),
    ("pop", "pop %rbp", 1, "push %rbp\n pop %rbp\n ret"),
    ("ret", "ret", 0, "ret"),
)

BPF_TEXT = r"""
BPF_ARRAY(hits, u64, 1);
int hit(struct pt_regs *ctx) {
    int k = 0;
    u64 *v = hits.lookup(&k);
    if (v) __sync_fetch_and_add(v, 1);
    return 0;
}
"""


def c_source():
    asm = [".text", ".globl uc_leaf", ".type uc_leaf,@function", "uc_leaf:", " ret"]
    for name, _insn, _off, body in KINDS:
        asm += [".globl uc_%s" % name, ".type uc_%s,@function" % name, ".p2align 4",
                "uc_%s:" % name] + [" " + x.strip() for x in body.split("\n")] + \
            [".size uc_%s, .-uc_%s" % (name, name)]
    decls = "".join("extern long uc_%s(long);\n" % n for n, *_ in KINDS)
    table = ",\n".join('  {"%s", uc_%s}' % (n, n) for n, *_ in KINDS)
    return r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
__asm__(%s);
%s
static struct { const char *name; long (*fn)(long); } fns[] = {
%s
};
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    long (*f)(long) = 0;
    for (unsigned i = 0; i < sizeof(fns) / sizeof(fns[0]); i++)
        if (!strcmp(fns[i].name, argv[1])) f = fns[i].fn;
    if (!f) return 3;
    long n = atol(argv[2]);
    volatile long sink = 0;
    for (long i = 0; i < 1000; i++) sink += f(i);
    struct timespec a, b, wa, wb;
    clock_gettime(CLOCK_MONOTONIC, &wa);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);     /* the probe's work is charged here */
    for (long i = 0; i < n; i++) sink += f(i);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    clock_gettime(CLOCK_MONOTONIC, &wb);
    printf("%%ld %%ld\n", (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec),
           (wb.tv_sec - wa.tv_sec) * 1000000000L + (wb.tv_nsec - wa.tv_nsec));
    return 0;
}
""" % ("\n".join('"%s\\n"' % line for line in asm), decls, table)


def build(workdir):
    src = os.path.join(workdir, "uprobe_cost.c")
    exe = os.path.join(workdir, "uprobe_cost")
    with open(src, "w") as f:
        f.write(c_source())
    subprocess.run(["gcc", "-O1", "-o", exe, src], check=True, capture_output=True, text=True)
    return exe


def function_bytes(exe):
    """{kind: (probe vaddr, the 16 bytes there)} from the built binary's symbols."""
    from bpf.elfsym import ElfImage
    out = {}
    with ElfImage(exe) as img:
        syms = img.find_functions(["uc_" + n for n, *_ in KINDS])
        for name, _insn, off, _body in KINDS:
            s = syms["uc_" + name]
            out[name] = (s.vaddr + off, img.read_vaddr(s.vaddr + off, 16))
    return out


def _run(exe, name, n):
    """(process CPU ns, wall ns) of n calls."""
    out = subprocess.run([exe, name, str(n)], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    cpu, wall = out.split()
    return int(cpu), int(wall)


def _med(samples, i):
    return statistics.median(x[i] for x in samples)


def measure_per_hit(n=20000, repeat=3, retprobe=True):
    """[{kind, insn, offset, classified, emulated, per_hit_us, hits_ok}], plus a
    "uretprobe" row (uprobe + uretprobe at push %rbp, minus the uprobe alone)."""
    from bcc import BPF
    work = tempfile.mkdtemp(prefix="l7probe-uc-")
    try:
        exe = build(work)
        code = function_bytes(exe)
        b = BPF(text=BPF_TEXT.encode())
        hits = b[b"hits"]
        rows = []
        per_hit = {}
        for name, insn, off, _body in KINDS:
            vaddr, raw = code[name]
            base = [_run(exe, name, n) for _ in range(repeat)]
            b.attach_uprobe(name=exe.encode(), addr=vaddr, fn_name=b"hit")
            try:
                hits.clear()
                times = [_run(exe, name, n) for _ in range(repeat)]
                count = hits[0].value
            finally:
                b.detach_uprobe(name=exe.encode(), addr=vaddr)
            us = [(_med(times, i) - _med(base, i)) / n / 1000.0 for i in (0, 1)]
            per_hit[name] = us
            kind = uprobe_sites.classify(raw)
            rows.append({"kind": name, "insn": insn, "offset": off, "classified": kind,
                         "emulated": uprobe_sites.is_emulated(kind), "per_hit_us": us[0],
                         "per_hit_wall_us": us[1], "hits_ok": count == repeat * (n + 1000)})
        if retprobe:
            vaddr, _raw = code["push_rbp"]
            b.attach_uprobe(name=exe.encode(), addr=vaddr, fn_name=b"hit")
            b.attach_uretprobe(name=exe.encode(), addr=vaddr, fn_name=b"hit")
            try:
                hits.clear()
                times = [_run(exe, "push_rbp", n) for _ in range(repeat)]
                count = hits[0].value
            finally:
                b.detach_uretprobe(name=exe.encode(), addr=vaddr)
                b.detach_uprobe(name=exe.encode(), addr=vaddr)
            plain = [_run(exe, "push_rbp", n) for _ in range(repeat)]
            both = [(_med(times, i) - _med(plain, i)) / n / 1000.0 for i in (0, 1)]
            rows.append({"kind": "uretprobe", "insn": "uretprobe added to a uprobe at push %rbp",
                         "offset": 0, "classified": "push", "emulated": True,
                         "per_hit_us": both[0] - per_hit["push_rbp"][0],
                         "per_hit_wall_us": both[1] - per_hit["push_rbp"][1],
                         "hits_ok": count == 2 * repeat * (n + 1000)})
        b.cleanup()
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_per_hit(rows, n=None):
    print("== uprobe cost per hit by the instruction it replaces (gcc-built functions, a "
          "BPF program counting hits%s; kernel %s): the traced process's CPU time, and wall "
          "time (a VM may spend trap time outside the guest's accounting)" % (
              ", %d calls each" % n if n else "", os.uname().release))
    for r in rows:
        print("  %-42s %7.2f us CPU %7.2f us wall   bpf/uprobe_sites: %-8s %s%s"
              % (r["insn"] + (" (+%d)" % r["offset"] if r["offset"] else ""), r["per_hit_us"],
                 r["per_hit_wall_us"],
                 r["classified"], "emulated" if r["emulated"] else "single-stepped",
                 "" if r["hits_ok"] else "  (hit count wrong!)"))


# ----------------------------------------------------------------------------------------
# (a') the TLS attach sites themselves, on this machine's libssl
# ----------------------------------------------------------------------------------------

TLS_LOOP = r"""
import ssl, sys, time
cert, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False
cctx.verify_mode = ssl.CERT_NONE
bufs = [ssl.MemoryBIO() for _ in range(4)]
srv = sctx.wrap_bio(bufs[0], bufs[1], server_side=True)
cli = cctx.wrap_bio(bufs[2], bufs[3])
def pump():
    d = bufs[3].read()
    if d: bufs[0].write(d)
    d = bufs[1].read()
    if d: bufs[2].write(d)
for _ in range(20):
    for o in (cli, srv):
        try:
            o.do_handshake()
        except ssl.SSLWantReadError:
            pass
    pump()
msg = b"x" * 100
def once():
    cli.write(msg); pump(); srv.read(4096)
for _ in range(500):
    once()
t0, w0 = time.process_time_ns(), time.perf_counter_ns()
for _ in range(n):
    once()
print(time.process_time_ns() - t0, time.perf_counter_ns() - w0)
"""


def measure_tls_sites(n=5000, repeat=5, lib=None):
    """Added cost per SSL_write_ex + SSL_read_ex pair (Python's ssl module over memory
    BIOs, one process), with the probes bpf/tls_attach.py used to put at the symbols and
    with those it puts at the sites bpf/uprobe_sites.py chooses.  Returns
    {"symbols": us, "chosen": us, "sites": [Site log text]}."""
    from bcc import BPF
    from bpf import tls_targets
    from tests.support.tlscert import make_self_signed
    import ssl as _ssl    # noqa: F401  (maps libssl into this process)
    if lib is None:
        with open("/proc/self/maps") as f:
            libs = [line.split()[-1] for line in f if re.search(r"/libssl\.so\.\d", line)]
        lib = libs[0]
    t = tls_targets.openssl_target(lib)
    work = tempfile.mkdtemp(prefix="l7probe-tlscost-")
    try:
        cert, key = make_self_signed(work)
        script = os.path.join(work, "loop.py")
        with open(script, "w") as f:
            f.write(TLS_LOOP)

        def run():
            out = subprocess.run([sys.executable, script, str(cert), str(key), str(n)],
                                 capture_output=True, text=True, timeout=600, check=True)
            cpu, wall = out.stdout.split()
            return int(cpu), int(wall)

        plans = {
            "symbols": [("uprobe", t.symbols["SSL_write_ex"].vaddr),
                        ("uprobe", t.symbols["SSL_read_ex"].vaddr),
                        ("uretprobe", t.symbols["SSL_read_ex"].vaddr)],
            "chosen": sorted({(p.kind, p.vaddr) for p in t.probes(extras=False)
                              if p.func in ("SSL_write_ex", "SSL_read_ex")}),
        }
        res = {"sites": [t.sites[f].log_text(lib) for f in ("SSL_write_ex", "SSL_read_ex")]}
        b = BPF(text=BPF_TEXT.encode())
        times = {"none": [], "symbols": [], "chosen": []}
        hits = {"symbols": 0, "chosen": 0}
        try:
            for _ in range(repeat):         # rounds, so that a change of load hits all three
                times["none"].append(run())
                for label, plan in plans.items():
                    for kind, va in plan:
                        if kind == "uprobe":
                            b.attach_uprobe(name=lib.encode(), addr=va, fn_name=b"hit")
                        else:
                            b.attach_uretprobe(name=lib.encode(), addr=va, fn_name=b"hit")
                    b[b"hits"].clear()
                    try:
                        times[label].append(run())
                        hits[label] += b[b"hits"][0].value
                    finally:
                        for kind, va in plan:
                            if kind == "uprobe":
                                b.detach_uprobe(name=lib.encode(), addr=va)
                            else:
                                b.detach_uretprobe(name=lib.encode(), addr=va)
        finally:
            b.cleanup()
        for label in plans:
            res[label] = (_med(times[label], 0) - _med(times["none"], 0)) / n / 1000.0
            res[label + "_wall"] = (_med(times[label], 1) - _med(times["none"], 1)) / n / 1000.0
            res[label + "_hits_per_pair"] = hits[label] / (repeat * (n + 500.0))
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_tls_sites(res, n=None):
    print("== TLS probes per SSL_write_ex + SSL_read_ex pair (Python ssl over memory BIOs%s)"
          % (", %d pairs" % n if n else ""))
    for s in res["sites"]:
        print("  chosen site: %s" % s)
    for label, what in (("symbols", "at the symbols (before)"),
                        ("chosen", "at the chosen sites (now)")):
        print("  probes %-26s added %7.2f us CPU, %7.2f us wall per pair (%.1f probe hits per "
              "pair)" % (what, res[label], res[label + "_wall"], res[label + "_hits_per_pair"]))


# ----------------------------------------------------------------------------------------
# (b) sslsniff-bpfcc on the same HTTPS load
# ----------------------------------------------------------------------------------------

SSLSNIFF = "/usr/sbin/sslsniff-bpfcc"
_MIN_CALL = "min((size_t)MAX_BUF_SIZE, (size_t)len)"
_MIN_TERNARY = "((size_t)len < (size_t)MAX_BUF_SIZE ? (size_t)len : (size_t)MAX_BUF_SIZE)"


class SslsniffRun:
    """Debian's sslsniff-bpfcc (OpenSSL only), its output to a file; started and ready
    (header printed after the probes are attached) when the constructor returns."""

    note = ""

    def __init__(self, patched=False, timeout=120):
        self.dir = tempfile.mkdtemp(prefix="l7probe-sslsniff-")
        script = SSLSNIFF
        if patched:
            with open(SSLSNIFF) as f:
                text = f.read()
            script = os.path.join(self.dir, "sslsniff.py")
            with open(script, "w") as f:
                f.write(text.replace(_MIN_CALL, _MIN_TERNARY))
        self.out_path = os.path.join(self.dir, "out")
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(["/usr/bin/python3", "-u", script, "--no-gnutls",
                                      "--no-nss"], stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.out_path, errors="replace") as f:
                head = f.read(1 << 16)
            if "FUNC" in head:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        err = head.strip().splitlines()
        raise RuntimeError("sslsniff-bpfcc did not start: %s" % (err[-1] if err else "no output"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()

    def events(self):
        with open(self.out_path, errors="replace") as f:
            return sum(1 for line in f if re.match(r"(READ/RECV|WRITE/SEND) ", line))

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def start_sslsniff():
    """SslsniffRun of the installed tool, else of the patched copy (with .note saying why)."""
    if not os.path.exists(SSLSNIFF):
        raise RuntimeError("%s not installed (apt-get install bpfcc-tools)" % SSLSNIFF)
    try:
        return SslsniffRun()
    except RuntimeError as exc:
        first = str(exc)
    r = SslsniffRun(patched=True)
    r.note = ("the installed %s does not start here (%s); measured: a copy with its one "
              "min() call written as a ternary" % (SSLSNIFF, first))
    return r


class SiteProbes:
    """l7probe's OpenSSL probes with counting programs only, in this process, at the symbols
    (where they were before) or at the chosen sites: the attach points' own cost on nginx."""

    proc = None

    def __init__(self, where):
        from bcc import BPF
        from bpf import tls_targets
        lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
        t = tls_targets.openssl_target(lib)
        plan = set()
        for p in t.probes(extras=False):
            va = p.vaddr if where == "chosen" else t.symbols[p.func].vaddr
            plan.add((p.kind, va))
        self.b = BPF(text=BPF_TEXT.encode())
        for kind, va in sorted(plan):
            (self.b.attach_uprobe if kind == "uprobe" else self.b.attach_uretprobe)(
                name=lib.encode(), addr=va, fn_name=b"hit")
        self.n = len(plan)

    def hits(self):
        return self.b[b"hits"][0].value

    def stop(self):
        self.count = self.hits()
        self.b.cleanup()


def bench_sslsniff(seconds=None):
    """nginx HTTPS at a fixed rate: without a tracer, with l7probe, with sslsniff-bpfcc, and
    with l7probe's OpenSSL probes alone (counting programs) at the symbols and at the chosen
    sites.  Returns {label: {...}}; prints one line each."""
    from bench import run as brun
    from tests.support.probe import ProbeRun, total
    from tests.support.servers import nginx
    seconds = seconds or brun.DURATION
    res = {}
    with nginx(workers=1, tls=True) as ng:
        brun.wrk(ng.url("/"), 2, True)
        print("== HTTPS fixed rate (wrk -c%d, 1 ms delay, %d s, nginx 1 worker): l7probe and "
              "Debian's sslsniff-bpfcc on the same load" % (brun.CONNS, seconds))
        for label in ("without tracer", "l7probe", "sslsniff-bpfcc", "probes@symbols",
                      "probes@chosen"):
            tracer = None
            note = ""
            if label.startswith("probes@"):
                tracer = SiteProbes(label.split("@")[1])
                note = ("%d empty probes of l7probe's OpenSSL set, at the %s" % (
                    tracer.n, "symbols (before)" if label.endswith("symbols")
                    else "sites bpf/uprobe_sites.py chooses (now)"))
            elif label == "l7probe":
                tracer = ProbeRun(["-P", "2"])
            elif label == "sslsniff-bpfcc":
                try:
                    tracer = start_sslsniff()
                except Exception as exc:
                    print("  sslsniff-bpfcc: not measured: %s" % exc)
                    continue
                note = tracer.note
            try:
                time.sleep(0.5)
                pids = ng.pids()
                c0 = brun.cpu_seconds(pids)
                t0 = brun.cpu_seconds([tracer.proc.pid]) if tracer and tracer.proc else 0.0
                reqs, secs = brun.wrk(ng.url("/"), seconds, True)
                c1 = brun.cpu_seconds(pids)
                t1 = brun.cpu_seconds([tracer.proc.pid]) if tracer and tracer.proc else 0.0
            finally:
                if tracer:
                    time.sleep(0.3)
                    tracer.stop()
            r = {"requests": reqs, "rate": reqs / secs, "nginx_us": 1e6 * (c1 - c0) / reqs,
                 "tracer_us": 1e6 * (t1 - t0) / reqs, "note": note}
            if label == "l7probe":
                rows = [x for x in tracer.records("l7_rpc") if x["server_port"] == str(ng.port)
                        and x["l7_role"] == "server"]
                r["reported"] = total(rows, "req_count")
            elif label == "sslsniff-bpfcc":
                r["reported"] = tracer.events()
                tracer.close()
            res[label] = r
            base = res["without tracer"]
            added = r["nginx_us"] - base["nginx_us"] + r["tracer_us"]
            r["added_us"] = added
            extra = ""
            if label == "l7probe":
                extra = ", reported %d of %d requests" % (r["reported"], reqs)
            elif label == "sslsniff-bpfcc":
                extra = ", %d SSL_read/SSL_write events printed" % r["reported"]
            elif tracer is not None:
                extra = ", %.1f probe hits per request" % (tracer.count / reqs)
            print("  %-15s %6.0f req/s, nginx CPU %6.2f us/req, tracer CPU %6.2f us/req, "
                  "added CPU %6.2f us/req%s" % (label, r["rate"], r["nginx_us"], r["tracer_us"],
                                                added if tracer else 0.0, extra))
            if note:
                print("    (%s)" % note)
    return res


def main(fig=None, argv=()):
    """Print (a) and (b); with ``fig`` (bench/run.py's summary list of (figure, value,
    target)) also append their headline figures to it."""
    if os.geteuid() != 0:
        print("== uprobe cost: needs root (BPF): skipped")
        return
    n = int(os.environ.get("UPROBE_COST_CALLS", "20000"))
    rows = measure_per_hit(n=n)
    print_per_hit(rows, n)
    tls = measure_tls_sites()
    print_tls_sites(tls, 5000)
    ss = bench_sslsniff() if "--hits-only" not in argv else {}
    if fig is not None:
        cheap = [r["per_hit_us"] for r in rows if r["emulated"] and r["kind"] != "uretprobe"]
        slow = [r["per_hit_us"] for r in rows if not r["emulated"]]
        fig.append(("uprobe per hit: emulated (push/call/jmp/jcc/nop) / single-stepped",
                    "%.2f-%.2f / %.1f-%.1f us" % (min(cheap), max(cheap), min(slow), max(slow)),
                    ""))
        fig.append(("TLS probes per SSL_write_ex+SSL_read_ex: at symbols / chosen sites",
                    "%.2f / %.2f us CPU, %.2f / %.2f us wall" % (
                        tls["symbols"], tls["chosen"], tls["symbols_wall"], tls["chosen_wall"]),
                    ""))
        for label in ("l7probe", "sslsniff-bpfcc", "probes@symbols", "probes@chosen"):
            if label in ss:
                fig.append(("HTTPS fixed rate, added CPU per request: %s" % label,
                            "%.2f us" % ss[label]["added_us"], ""))


if __name__ == "__main__":
    main(argv=sys.argv[1:])
