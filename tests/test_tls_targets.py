"""Tests for bpf/tls_targets.py (+ bpf/elfsym.py, bpf/gotls.py): where TLS uprobes go.

Cross-checks use independent tools: binutils (readelf/nm) for symbol values and
PT_LOAD segments, the raw file bytes for RET opcodes, and BCC's own resolver
(``BPF._check_path_symbol``, no BPF loaded) when the bcc module is importable.
Go binaries are built once per session (tests/support/goapps.py).
"""
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpf import gotls
from bpf.gotls import READ_FUNC, WRITE_FUNC
from bpf.tls_targets import (GoTarget, OpenSSLTarget, Skip, TargetCache, discover, discover_many,
                             find_libssl_in_process, go_tls_target, openssl_symbols,
                             openssl_target)
from tests.support import goapps
from tests.support.tlscert import make_self_signed

TLS_APPS = Path(__file__).resolve().parent / "tls_apps"
PYSSL = TLS_APPS / "pyssl.py"

try:
    from bcc import BPF as _BCC
except Exception:          # bcc missing: the BCC cross-checks are skipped
    _BCC = None


# ----------------------------------------------------------------------------------------
# helpers (independent of the code under test)
# ----------------------------------------------------------------------------------------

def readelf_segments(path):
    """[(offset, vaddr, filesz, flags)] of PT_LOAD from `readelf -lW`."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True,
                         check=True).stdout
    segs = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            segs.append((int(f[1], 16), int(f[2], 16), int(f[4], 16), " ".join(f[6:-1])))
    return segs


def to_offset(segs, vaddr):
    for off, va, filesz, flags in segs:
        if "E" in flags and va <= vaddr < va + filesz:
            return vaddr - va + off
    raise AssertionError("0x%x not in an executable segment" % vaddr)


def readelf_symbols(path):
    """{name-without-version: value} of defined symbols from `readelf -Ws`."""
    out = subprocess.run(["readelf", "-Ws", "--dyn-syms", str(path)], capture_output=True,
                         text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0][:-1].isdigit() and f[0].endswith(":") and f[6] != "UND":
            syms.setdefault(f[7].split("@")[0], int(f[1], 16))
    return syms


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc, prefix, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError("process did not print %r (rc=%s)" % (prefix, proc.poll()))


def system_libssl():
    """The libssl this Python's ssl module maps (via /proc/self/maps)."""
    __import__("ssl")  # maps libssl into this process
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if re.search(r"/libssl\.so\.\d", p):
                return p
    pytest.skip("no libssl.so mapped by the ssl module")


def assert_rets_are_c3(path, offsets):
    data = Path(path).read_bytes()
    for off in offsets:
        assert data[off] == 0xC3, "offset 0x%x is 0x%02x, not RET" % (off, data[off])


# ----------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="session")
def certs(work):
    return make_self_signed(work / "certs")


@pytest.fixture(scope="session")
def go_builds(work):
    """Built lazily and once per session: {variant: path}."""
    try:
        goapps.go_binary()
    except goapps.GoUnavailable as e:
        pytest.skip(str(e))
    cache = {}

    def get(variant):
        if variant not in cache:
            app, _, flavour = variant.partition(":")
            cache[variant] = goapps.build_go(
                TLS_APPS / app, work / "go" / variant.replace(":", "-"),
                strip="strip" in flavour, pie="pie" in flavour)
        return cache[variant]
    return get


@pytest.fixture(scope="session")
def go_server(go_builds):
    return go_builds("goserver")


@pytest.fixture(scope="session")
def go_server_stripped(go_builds):
    return go_builds("goserver:strip")


@pytest.fixture(scope="session")
def go_server_pie_stripped(go_builds):
    return go_builds("goserver:pie-strip")


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start(procs, cmd, **kw):
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, **kw)
    procs.append(p)
    return p


# ----------------------------------------------------------------------------------------
# OpenSSL
# ----------------------------------------------------------------------------------------

def test_system_libssl_symbols_match_readelf():
    path = system_libssl()
    syms = openssl_symbols(path)
    ref = readelf_symbols(path)
    segs = readelf_segments(path)
    for name in ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"):
        assert name in syms, name
        s = syms[name]
        assert s.vaddr == ref[name]
        assert s.offset == to_offset(segs, ref[name])
        assert s.version and s.version.startswith("OPENSSL_")
    for name in ("SSL_do_handshake", "SSL_set_fd", "SSL_get_fd"):
        assert syms[name].vaddr == ref[name]


def test_system_libssl_symbols_match_nm():
    path = system_libssl()
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True,
                         check=True).stdout
    nm = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 3:
            nm[f[2].split("@")[0]] = int(f[0], 16)
    for name, s in openssl_symbols(path).items():
        assert nm[name] == s.vaddr, name


@pytest.mark.skipif(_BCC is None, reason="bcc not importable")
def test_system_libssl_offsets_match_bcc_resolver():
    path = system_libssl()
    for name, s in openssl_symbols(path).items():
        _p, off = _BCC._check_path_symbol(path.encode(), name.encode(), None, -1)
        assert off == s.offset, name
        _p, off = _BCC._check_path_symbol(path.encode(), b"", s.vaddr, -1)
        assert off == s.offset, name


def test_openssl_target_version_and_probes():
    path = system_libssl()
    t = openssl_target(path, cache=TargetCache())
    assert isinstance(t, OpenSSLTarget) and t
    assert t.key == (os.stat(path).st_dev, os.stat(path).st_ino)
    assert re.match(r"OpenSSL \d+\.\d+\.\d+", t.version) or "libssl" in t.version
    kinds = {(p.func, p.kind) for p in t.probes()}
    for fn in ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex", "SSL_do_handshake"):
        assert (fn, "uprobe") in kinds
    for fn in ("SSL_read", "SSL_read_ex"):          # the length is known at return
        assert (fn, "uretprobe") in kinds
    for fn in ("SSL_write", "SSL_write_ex", "SSL_do_handshake"):   # entry only
        assert (fn, "uretprobe") not in kinds
    assert ("SSL_set_fd", "uprobe") in kinds
    assert ("SSL_set_fd", "uprobe") not in {(p.func, p.kind) for p in t.probes(extras=False)}


def test_library_without_ssl_symbols_gives_reason():
    for path in ("/usr/lib/x86_64-linux-gnu/libssl3.so", "/bin/ls"):   # NSS libssl3, ls
        if not os.path.exists(path):
            continue
        t = openssl_target(path, cache=TargetCache())
        assert isinstance(t, Skip) and not t
        assert "SSL_write" in t.reason
        assert openssl_symbols(path) == {}


def test_grpcio_boringssl_without_symbols_is_a_skip_with_the_evidence(procs):
    """A process that imported grpc maps grpcio's cygrpc*.so, BoringSSL linked in without
    symbols: one Skip naming it and why (logged once by bpf/tls_attach.py); the system
    libssl it also maps is still a target."""
    p = start(procs, [sys.executable, "-c", "import grpc, sys; print('ready', flush=True); "
                      "sys.stdin.read()"], stdin=subprocess.PIPE)
    assert p.stdout.readline().strip() == "ready"
    cache = TargetCache()
    found = discover(p.pid, cache)
    skips = [t for t in found if isinstance(t, Skip) and "cygrpc" in t.path]
    assert len(skips) == 1, found
    reason = skips[0].reason
    assert reason.startswith("BoringSSL is linked in statically without symbols")
    assert "1 name: PyInit_cygrpc" in reason and "no .symtab" in reason
    assert "gRPC over TLS in this process is not parsed" in reason
    parses = cache.parses
    discover(p.pid, cache)              # the analysis is cached per file
    assert cache.parses == parses


@pytest.fixture(scope="session")
def static_ssl_exe(work):
    src = work / "sslstatic.c"
    src.write_text(r"""
#include <openssl/ssl.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    SSL_CTX *c = SSL_CTX_new(TLS_method());
    SSL *s = SSL_new(c);
    char b[1];
    size_t n;
    if (getenv("NEVER_SET_L7PROBE")) {   /* keep the data functions linked in */
        SSL_write(s, b, 1); SSL_read(s, b, 1);
        SSL_write_ex(s, b, 1, &n); SSL_read_ex(s, b, 1, &n);
    }
    write(1, "ready\n", 6);
    pause();
    return 0;
}
""")
    out = work / "sslstatic"
    res = subprocess.run(["gcc", "-O1", "-static", "-o", str(out), str(src),
                          "-l:libssl.a", "-l:libcrypto.a", "-lpthread"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip("cannot build a static OpenSSL executable: %s" % res.stderr[-300:])
    return out


def test_static_openssl_executable(static_ssl_exe, procs):
    p = start(procs, [static_ssl_exe])
    wait_line(p, "ready")
    ref = readelf_symbols(static_ssl_exe)
    segs = readelf_segments(static_ssl_exe)
    assert find_libssl_in_process(p.pid, cache=TargetCache()) == [str(static_ssl_exe)]
    targets = discover(p.pid, cache=TargetCache())
    [t] = [t for t in targets if isinstance(t, OpenSSLTarget)]
    assert t.static and t.path == str(static_ssl_exe)
    assert t.symbols["SSL_write"].offset == to_offset(segs, ref["SSL_write"])
    assert t.symbols["SSL_read_ex"].offset == to_offset(segs, ref["SSL_read_ex"])


# ----------------------------------------------------------------------------------------
# OpenSSL: attach sites on instructions the kernel emulates (bpf/uprobe_sites.py)
# ----------------------------------------------------------------------------------------

def objdump_insns(path, start, stop):
    """[(vaddr, mnemonic, operands)] from binutils' objdump (independent of capstone)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "--start-address=0x%x" % start,
                          "--stop-address=0x%x" % stop, str(path)],
                         capture_output=True, text=True, check=True).stdout
    insns = []
    for m in re.finditer(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$", out, re.M):
        insns.append((int(m.group(1), 16), m.group(2), m.group(3).strip()))
    return insns


def first_insn(path, vaddr):
    return objdump_insns(path, vaddr, vaddr + 16)[0]


def first_call_target(path, vaddr):
    for _a, mnem, ops in objdump_insns(path, vaddr, vaddr + 96):
        if mnem.startswith("call"):
            return int(ops.split()[0], 16)
        assert not mnem.startswith(("ret", "jmp")), (mnem, ops)
    raise AssertionError("no call in the first 96 bytes at 0x%x" % vaddr)


EMULATED_MNEMONICS = ("push", "call", "jmp", "nop", "xchg")


def check_openssl_sites(t, internal_names=None):
    """Every probe the attach code uses sits on an instruction the kernel emulates (objdump's
    view), SSL_read/SSL_read_ex share the function both call first (ssl_read_internal),
    SSL_write/SSL_write_ex likewise, and nothing is left on the slow symbol starts."""
    path = t.path
    for fn in ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"):
        site = t.sites[fn]
        callee = first_call_target(path, t.symbols[fn].vaddr)
        assert site.mode == "internal" and site.vaddr in (callee, callee + 4), (fn, site)
        assert site.emulated and site.kind == "push" and not site.why, site
        if internal_names:
            assert site.where.startswith(internal_names[fn] + "+"), site
    assert t.sites["SSL_read"].vaddr == t.sites["SSL_read_ex"].vaddr
    assert t.sites["SSL_write"].vaddr == t.sites["SSL_write_ex"].vaddr
    assert t.sites["SSL_read"].vaddr != t.sites["SSL_write"].vaddr
    specs = t.probes(extras=False)
    assert {(p.kind, p.vaddr) for p in specs} == {
        ("uprobe", t.sites["SSL_read"].vaddr), ("uretprobe", t.sites["SSL_read"].vaddr),
        ("uprobe", t.sites["SSL_write"].vaddr), ("uprobe", t.sites["SSL_do_handshake"].vaddr)}
    for p in specs:
        _a, mnem, ops = first_insn(path, p.vaddr)
        assert mnem.startswith(EMULATED_MNEMONICS), (p.role, mnem, ops)
    data = Path(path).read_bytes()
    for p in specs:
        b0 = data[p.offset]
        assert 0x50 <= b0 <= 0x57 or (b0 == 0x41 and 0x50 <= data[p.offset + 1] <= 0x57), p


def test_system_libssl_sites_are_emulated_instructions():
    """Debian 12's libssl.so.3: SSL_read/_ex -> ssl_read_internal (push %r13), SSL_write/_ex
    -> ssl_write_internal (push %r14), both local and unnamed in the stripped library."""
    t = openssl_target(system_libssl(), cache=TargetCache())
    check_openssl_sites(t)
    for fn in ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"):
        _a, mnem, _o = first_insn(t.path, t.symbols[fn].vaddr)
        assert mnem in ("sub", "endbr64", "push", "mov"), mnem    # what the symbol starts with
        assert t.sites[fn].vaddr != t.symbols[fn].vaddr
    hs = t.sites["SSL_do_handshake"]
    assert hs.vaddr == t.symbols["SSL_do_handshake"].vaddr and hs.kind == "push"
    assert "called by SSL_read+" in t.sites["SSL_read"].where


def test_static_openssl_sites_named_by_symtab(static_ssl_exe):
    t = openssl_target(str(static_ssl_exe), cache=TargetCache())
    check_openssl_sites(t, {"SSL_read": "ssl_read_internal", "SSL_read_ex": "ssl_read_internal",
                            "SSL_write": "ssl_write_internal",
                            "SSL_write_ex": "ssl_write_internal"})
    out = subprocess.run(["nm", str(static_ssl_exe)], capture_output=True, text=True,
                         check=True).stdout
    nm = {f[2]: int(f[0], 16) for f in (l.split() for l in out.splitlines()) if len(f) == 3}
    assert t.sites["SSL_read"].vaddr == nm["ssl_read_internal"]
    assert t.sites["SSL_write"].vaddr == nm["ssl_write_internal"]


def libssl11():
    """OpenSSL 1.1.1 as a user meets it in a wheel: psycopg2-binary bundles libssl.so.1.1."""
    import importlib.util
    spec = importlib.util.find_spec("psycopg2")
    assert spec is not None, "psycopg2-binary (requirements.txt) is not installed"
    libs = sorted(Path(spec.origin).parent.parent.glob("psycopg2_binary.libs/libssl-*.so.1.1"))
    assert libs, "psycopg2-binary without a bundled libssl 1.1"
    return str(libs[0])


def test_openssl_111_sites():
    t = openssl_target(libssl11(), cache=TargetCache())
    assert isinstance(t, OpenSSLTarget) and t.version.startswith("OpenSSL 1.1.1"), t
    check_openssl_sites(t)


FAKE_SSL = r"""
#include <stddef.h>
extern void sink(const void *, size_t);
#define H __attribute__((visibility("hidden"), noinline))
H int write_int(void *s, const void *b, size_t n, size_t *w) { sink(s, n); sink(b, n); *w = n; return 1; }
H int read_a(void *s, void *b, size_t n, size_t *r) { sink(s, n); sink(b, n); *r = n; return 1; }
H int read_b(void *s, void *b, size_t n, size_t *r) { sink(b, n); sink(s, n); *r = n; return 1; }
int SSL_write(void *s, const void *b, int n) { size_t w; int r; if (n < 0) return -1;
    r = write_int(s, b, (size_t)n, &w); return r > 0 ? (int)w : r; }
int SSL_write_ex(void *s, const void *b, size_t n, size_t *w) { int r = write_int(s, b, n, w);
    return r < 0 ? 0 : r; }
int SSL_read(void *s, void *b, int n) { size_t g; int r; if (n < 0) return -1;
    r = read_a(s, b, (size_t)n, &g); return r > 0 ? (int)g : r; }
int SSL_read_ex(void *s, void *b, size_t n, size_t *g) { int r = read_b(s, b, n, g);
    return r < 0 ? 0 : r; }
int SSL_do_handshake(void *s) { sink(s, 0); return 1; }
"""


FAKE_SSL_CALLSITE = r"""
#include <stddef.h>
extern void sink(const void *, size_t);
#define H __attribute__((visibility("hidden"), noinline))
H int write_a(void *s, const void *b, size_t n, size_t *w) { sink(s, n); sink(b, n); *w = n; return 1; }
H int write_b(void *s, const void *b, size_t n, size_t *w) { sink(b, n); sink(s, n); *w = n; return 1; }
int SSL_write(void *s, const void *b, int n) { size_t w; int r; if (n < 0) return -1;
    r = write_a(s, b, (size_t)n, &w); return r > 0 ? (int)w : r; }
int SSL_write_ex(void *s, const void *b, size_t n, size_t *w) { int r = write_b(s, b, n, w);
    return r < 0 ? 0 : r; }
H int SSL_read_ex(void *s, void *b, size_t n, size_t *g) { sink(b, n); *g = n; return 1; }
int SSL_read(void *s, void *b, int n) { size_t g; int r; if (n < 0) return -1;
    r = SSL_read_ex(s, b, (size_t)n, &g); return r > 0 ? (int)g : r; }
"""


def test_sites_at_the_call_instruction_of_a_write(work):
    """The write pair calls two different functions: each write is probed at its own
    `call` (an entry-only probe: the registers there are its arguments); a call of another
    public function is never taken as such a site (the same call would be seen twice)."""
    src = work / "fakessl2.c"
    src.write_text(FAKE_SSL_CALLSITE)
    lib = work / "fake2" / "libssl.so.3"
    lib.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True,
                   capture_output=True)
    t = openssl_target(str(lib), cache=TargetCache())
    for fn in ("SSL_write", "SSL_write_ex"):
        site = t.sites[fn]
        assert site.mode == "callsite" and site.kind == "call", site
        _a, mnem, _o = first_insn(lib, site.vaddr)
        assert mnem.startswith("call") and site.vaddr > t.symbols[fn].vaddr
        assert site.vaddr == [a for a, m, _ in objdump_insns(lib, t.symbols[fn].vaddr,
                                                            site.vaddr + 5)
                              if m.startswith("call")][0]
    roles = {p.role for p in t.probes(extras=False)}
    assert {"SSL_write:entry", "SSL_write_ex:entry"} <= roles   # their own programs
    # SSL_read calls SSL_read_ex (hidden, so directly): SSL_read gets no probe of its own,
    # SSL_read_ex's sees its calls (two probes would count each read twice)
    assert first_call_target(lib, t.symbols["SSL_read"].vaddr) == t.symbols["SSL_read_ex"].vaddr
    assert t.sites["SSL_read"].mode == "covered"
    assert "no probe for SSL_read: it calls SSL_read_ex" in t.sites["SSL_read"].log_text("x")
    assert t.sites["SSL_read_ex"].mode == "symbol"
    assert {p.func for p in t.probes(extras=False)} == {"SSL_write", "SSL_write_ex",
                                                         "SSL_read_ex"}


@pytest.mark.parametrize("code,kind", [
    (b"\x90", "nop"), (b"\x66\x90", "nop"), (b"\x0f\x1f\x44\x00\x00", "nop"),
    (b"\x66\x0f\x1f\x44\x00\x00", "nop"), (b"\x55", "push"), (b"\x41\x55", "push"),
    (b"\xe8\0\0\0\0", "call"), (b"\xe9\0\0\0\0", "jmp"), (b"\xeb\x00", "jmp"),
    (b"\x0f\x86\0\0\0\0", "jcc"), (b"\x76\x10", "jcc"),
    # single-stepped: sub, endbr64, mov, pop, ret, cmp, a 2-byte REX push
    # other than 0x41, a nop the kernel's table does not hold (66 2e 0f 1f 84 ...)
    (b"\x48\x83\xec\x18", "sub"), (b"\xf3\x0f\x1e\xfa", "endbr64"),
    (b"\x48\x89\xf8", "mov"), (b"\x5d", "pop"), (b"\xc3", "ret"),
    (b"\x49\x3b\x66\x10", "cmp"), (b"\x48\x55", "push"),
    (b"\x66\x2e\x0f\x1f\x84\x00\x00\x00\x00\x00", "nop")])
def test_classify_instruction_kinds(code, kind):
    """The kernel's emulation rules (arch/x86/kernel/uprobes.c), as bench/uprobe_cost.py
    measures them: only the first eleven are cheap."""
    from bpf.uprobe_sites import classify, is_emulated
    got = classify(code)
    cheap = code in (b"\x90", b"\x66\x90", b"\x0f\x1f\x44\x00\x00",
                     b"\x66\x0f\x1f\x44\x00\x00", b"\x55", b"\x41\x55",
                     b"\xe8\0\0\0\0", b"\xe9\0\0\0\0", b"\xeb\x00",
                     b"\x0f\x86\0\0\0\0", b"\x76\x10")
    assert is_emulated(got) == cheap, (code, got)
    if cheap:
        assert got == kind


class _FakeImage:
    """Just enough of ElfImage for uprobe_sites.find_forward_call on hand-made code."""

    def __init__(self, code, base=0x1000):
        self.code, self.base = code + b"\xcc" * 64, base

    def read_vaddr(self, va, n):
        return self.code[va - self.base:va - self.base + n]

    def vaddr_to_offset(self, va, executable=False):
        if not self.base <= va < self.base + 0x10000:
            raise ValueError("outside")
        return va

    def in_plt(self, va):
        return False


CALL = b"\xe8\xfb\x00\x00\x00"       # call base+0x100 when placed at base+0


@pytest.mark.parametrize("code,int_num,ok", [
    # SSL_read: test edx,edx; js err; mov rcx,rsp; movsxd rdx,edx; call
    (b"\x85\xd2\x78\x10\x48\x89\xe1\x48\x63\xd2", True, None),
    # SSL_read_ex: sub rsp,8; call
    (b"\x48\x83\xec\x08", False, None),
    # a branch other than the num < 0 check may skip the call
    (b"\x85\xf6\x74\x10", True, "may bypass the call"),
    (b"\x85\xd2\x78\x10", False, "may bypass the call"),
    # the SSL* or the buffer changed, or the _ex out-parameter
    (b"\x48\x89\xc7", True, "rdi changed"),
    (b"\x48\x89\xc6", False, "rsi changed"),
    (b"\x31\xc9", False, "rcx changed"),
    (b"\x48\x63\xd2", False, "rdx changed"),      # movsxd only allowed for int num
    (b"\xc3", False, "no call before the first ret")])
def test_forward_call_rules(code, int_num, ok):
    from bpf.uprobe_sites import find_forward_call
    base = 0x1000
    call = CALL[:1] + ((0x100 - len(code) - 5) & 0xFFFFFFFF).to_bytes(4, "little")
    img = _FakeImage(code + call, base)
    tgt, info = find_forward_call(img, base, 0, int_num)
    if ok is None:
        assert (tgt, info) == (base + 0x100, base + len(code)), info
    else:
        assert tgt is None and ok in info, info


def test_sites_of_a_library_that_does_not_forward(work):
    """A gcc-built stand-in (-fcf-protection: endbr64 everywhere): the write pair shares
    its callee, whose push follows an endbr64 (probe at +4); the read pair calls two
    different functions, so its members stay at their symbols, with the reason."""
    src = work / "fakessl.c"
    src.write_text(FAKE_SSL)
    lib = work / "libssl.so.3"
    subprocess.run(["gcc", "-O2", "-fcf-protection=full", "-shared", "-fPIC", "-o", str(lib),
                    str(src)], check=True, capture_output=True)
    t = openssl_target(str(lib), cache=TargetCache())
    assert isinstance(t, OpenSSLTarget), t
    w, wx = t.sites["SSL_write"], t.sites["SSL_write_ex"]
    callee = first_call_target(lib, t.symbols["SSL_write"].vaddr)
    _a, mnem, _o = first_insn(lib, callee)
    assert mnem == "endbr64"
    assert w.vaddr == wx.vaddr == callee + 4 and w.kind == "push" and w.mode == "internal"
    for fn in ("SSL_read", "SSL_read_ex"):
        s = t.sites[fn]
        assert s.mode == "symbol" and s.vaddr in (t.symbols[fn].vaddr, t.symbols[fn].vaddr + 4)
        if not s.emulated:
            assert "call different functions" in s.why, s
        assert "SSL_read" in s.log_text(str(lib))


# ----------------------------------------------------------------------------------------
# Go: build info parser (synthetic bytes)
# ----------------------------------------------------------------------------------------

def _uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def inline_buildinfo(version, mod="path\tx\n"):
    hdr = gotls.BUILDINFO_MAGIC + bytes([8, 2]) + b"\0" * 16
    return hdr + _uvarint(len(version)) + version.encode() + _uvarint(len(mod)) + mod.encode()


def pointer_buildinfo(version, mod=""):
    """Pre-1.18 layout: pointers to Go string headers, plus a fake memory image."""
    mem = {}
    vstr, mstr, vhdr, mhdr = 0x5000, 0x6000, 0x7000, 0x7010
    mem[vstr] = version.encode()
    mem[mstr] = mod.encode()
    mem[vhdr] = struct.pack("<QQ", vstr, len(version))
    mem[mhdr] = struct.pack("<QQ", mstr, len(mod))
    blob = gotls.BUILDINFO_MAGIC + bytes([8, 0]) + struct.pack("<QQ", vhdr, mhdr)

    def read(vaddr, size):
        for base, data in mem.items():
            if base <= vaddr and vaddr + size <= base + len(data):
                return data[vaddr - base:vaddr - base + size]
        raise gotls.GoError("unmapped 0x%x" % vaddr)
    return blob, read


def test_buildinfo_inline_format():
    v, mod = gotls.parse_buildinfo(inline_buildinfo("go1.19.8"))
    assert v == "go1.19.8" and mod.startswith("path")
    assert gotls.check_go_version(v) is None


def test_buildinfo_pointer_format_old_go_refused():
    blob, read = pointer_buildinfo("go1.16.15", "mod x")
    v, mod = gotls.parse_buildinfo(blob, read)
    assert (v, mod) == ("go1.16.15", "mod x")
    reason = gotls.check_go_version(v)
    assert reason and "go1.17" in reason and "register ABI" in reason


def test_buildinfo_pointer_format_117_accepted():
    blob, read = pointer_buildinfo("go1.17.13")
    v, _ = gotls.parse_buildinfo(blob, read)
    assert v == "go1.17.13" and gotls.check_go_version(v) is None


def test_go_version_strings():
    assert gotls.parse_go_version("go1.19.8") == (1, 19, 8)
    assert gotls.parse_go_version("go1.21rc2") == (1, 21, 0)
    assert gotls.parse_go_version("devel go1.22-abcdef Tue") == (1, 22, 0)
    assert gotls.parse_go_version("go1.20.1 X:boringcrypto") == (1, 20, 1)
    assert gotls.parse_go_version("nonsense") is None
    assert gotls.check_go_version("go1.10") and gotls.check_go_version("weird")


def test_buildinfo_garbage_raises_goerror():
    for blob in (b"", b"\xff Go buildinf:", gotls.BUILDINFO_MAGIC + bytes([8, 2]) + b"\0" * 16 + b"\xff"):
        with pytest.raises(gotls.GoError):
            gotls.parse_buildinfo(blob)


def _synthetic_pclntab(fmt, funcs, text_start=0x401000):
    """A minimal pclntab with the given [(name, entry vaddr)] and an end entry."""
    names = b""
    nameoffs = []
    for n, _ in funcs:
        nameoffs.append(len(names))
        names += n.encode() + b"\0"
    nfunc = len(funcs)
    end = funcs[-1][1] + 0x40
    if fmt == "1.16":
        magic, hdr_words = 0xFFFFFFFA, 7
        field = 8
    else:
        magic, hdr_words = (0xFFFFFFF0 if fmt == "1.18" else 0xFFFFFFF1), 8
        field = 4
    hdr_len = 8 + hdr_words * 8
    funcname_off = hdr_len
    functab_off = funcname_off + len(names)
    functab_off += (-functab_off) % 8
    ftab_len = (2 * nfunc + 1) * field
    ffmt = "<Q" if field == 8 else "<I"
    ftab = b""
    funcs_blob = b""
    for i, (_n, entry) in enumerate(funcs):
        e = entry if field == 8 else entry - text_start
        funcoff = ftab_len + len(funcs_blob)
        ftab += struct.pack(ffmt, e) + struct.pack(ffmt, funcoff)
        funcs_blob += struct.pack(ffmt, e) + struct.pack("<i", nameoffs[i]) + b"\0" * 4
    ftab += struct.pack(ffmt, end if field == 8 else end - text_start)
    if fmt == "1.16":
        words = [nfunc, 1, funcname_off, 0, 0, 0, functab_off]
    else:
        words = [nfunc, 1, text_start, funcname_off, 0, 0, 0, functab_off]
    hdr = struct.pack("<I", magic) + b"\0\0\x01\x08" + b"".join(struct.pack("<Q", w) for w in words)
    body = hdr + names
    body += b"\0" * (functab_off - len(body))
    return body + ftab + funcs_blob


@pytest.mark.parametrize("fmt", ["1.16", "1.18", "1.20"])
def test_pclntab_formats_synthetic(fmt):
    funcs = [("runtime.text", 0x401000), (WRITE_FUNC, 0x401100), ("main.main", 0x401400),
             (READ_FUNC, 0x401500)]
    tab = gotls.PclnTab(_synthetic_pclntab(fmt, funcs))
    assert tab.format == fmt and tab.nfunc == 4 and tab.sane()
    found = tab.find([WRITE_FUNC, READ_FUNC])
    assert found[WRITE_FUNC].vaddr == 0x401100 and found[WRITE_FUNC].size == 0x300
    assert found[READ_FUNC].vaddr == 0x401500 and found[READ_FUNC].size == 0x40


def test_pclntab_rejects_bad_headers():
    good = _synthetic_pclntab("1.18", [("a", 0x401000)])
    for bad in (b"", good[:20], b"\xfb\xff\xff\xff\0\0\x01\x08" + good[8:],
                b"\x00\x00\x00\x00" + good[4:], good[:4] + b"\1\0\1\x08" + good[8:]):
        with pytest.raises(gotls.GoError):
            gotls.PclnTab(bad)


# ----------------------------------------------------------------------------------------
# Go: real binaries
# ----------------------------------------------------------------------------------------

def _check_go_target(t, path):
    assert isinstance(t, GoTarget), t
    assert gotls.parse_go_version(t.go_version) >= (1, 17)
    data = Path(path).read_bytes()
    assert t.read_ret_offsets, "no RET found in Read"
    assert_rets_are_c3(path, t.read_ret_offsets)
    for fi in (t.write, t.read):
        start, end = fi.entry.offset, fi.entry.offset + fi.size
        assert all(start < r < end for r in (p.offset for p in fi.rets))
        # the entry and the post-stack-check point differ only by the cmp/jbe bytes
        assert fi.after_stack_check is not None
        assert 0 < fi.after_stack_check.offset - start <= 16
        assert fi.after_stack_check.vaddr - fi.entry.vaddr == fi.after_stack_check.offset - start
    for fi in (t.write, t.read):
        # Go amd64 prologue at the file offset: cmp rsp,[r14+0x10] or lea r12,[rsp-N]
        assert data[fi.entry.offset:fi.entry.offset + 4] in (b"\x49\x3b\x66\x10", b"\x4c\x8d\x64\x24")
    kinds = [(p.role, p.kind) for p in t.probes(cheap=False)]
    assert ("go:Write:entry", "uprobe") in kinds and ("go:Read:entry", "uprobe") in kinds
    assert kinds.count(("go:Read:ret", "uprobe")) == len(t.read_ret_offsets)
    assert not any(k == "uretprobe" for _r, k in kinds)
    # the probes attached: every one on an instruction the kernel emulates (raw bytes here,
    # independent of the classifier): the stack check's jbe (0x76 / 0x0f 0x86) or a push
    # %rbp (0x55) at the entries, a call rel32 (0xe8) to runtime.memmove for Read's data
    cheap = {p.role: p for p in t.probes()}
    assert set(cheap) <= {"go:Write:entry", "go:Write:entry-jcc", "go:Read:entry",
                          "go:Read:entry-jcc", "go:Read:copy"}, cheap
    assert "go:Read:copy" in cheap and len(cheap) == 3
    for p in cheap.values():
        op = data[p.offset:p.offset + 2]
        if p.role.endswith("entry-jcc"):
            assert op[:1] == b"\x76" or op == b"\x0f\x86", (p, op)
        elif p.role.endswith("entry"):
            assert op[:1] == b"\x55", (p, op)
        else:
            assert op[:1] == b"\xe8", (p, op)
    copy = cheap["go:Read:copy"]
    assert t.read.entry.offset < copy.offset < t.read.entry.offset + t.read.size


def test_go_unstripped_matches_readelf(go_server):
    t = go_tls_target(str(go_server), cache=TargetCache())
    _check_go_target(t, go_server)
    ref = readelf_symbols(go_server)
    segs = readelf_segments(go_server)
    assert t.write.entry.vaddr == ref[WRITE_FUNC]
    assert t.read.entry.vaddr == ref[READ_FUNC]
    assert t.write_entry_offset == to_offset(segs, ref[WRITE_FUNC])
    assert t.read_entry_offset == to_offset(segs, ref[READ_FUNC])
    assert t.write_entry_offset != t.write.entry.vaddr     # non-PIE: offsets are not vaddrs
    assert not t.stripped and t.read.source == ".symtab"
    assert t.abi["entry"] == {"conn": "rax", "buf": "rbx", "len": "rcx", "cap": "rdi"}
    assert t.abi["ret"]["n"] == "rax"


def test_go_unstripped_rets_match_objdump(go_server):
    t = go_tls_target(str(go_server), cache=TargetCache())
    start = t.read.entry.vaddr
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "--start-address=0x%x" % start,
                          "--stop-address=0x%x" % (start + t.read.size), str(go_server)],
                         capture_output=True, text=True, check=True).stdout
    rets = [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s+ret", out, re.M)]
    assert rets == [p.vaddr for p in t.read.rets]
    # the cheap sites, as objdump sees them: the entries on the stack check's jbe, Read's
    # data on its one call of runtime.memmove
    calls = re.findall(r"^\s*([0-9a-f]+):\s+call\s+[0-9a-f]+ <runtime\.memmove>", out, re.M)
    assert [int(a, 16) for a in calls] == [t.read_copy.vaddr]
    for fi in (t.write, t.read):
        p, role = t.entry_point(fi)
        assert role == "entry-jcc" and first_insn(go_server, p.vaddr)[1] == "jbe", (fi.name, p)
        assert p.vaddr < fi.after_stack_check.vaddr


def test_go_dwarf_fd_chain(go_server):
    t = go_tls_target(str(go_server), cache=TargetCache())
    fo = t.fd_offsets
    assert fo is not None
    assert set(fo) == {"tls.Conn.conn", "net.conn.fd", "net.netFD.pfd", "poll.FD.Sysfd"}
    assert all(isinstance(v, int) and 0 <= v < 256 for v in fo.values())
    assert fo["poll.FD.Sysfd"] > 0        # after the fdMutex


def test_go_pclntab_agrees_with_symtab(go_server):
    from bpf.elfsym import ElfImage
    with ElfImage(str(go_server)) as img:
        tab = gotls.find_pclntab(img)
        syms = img.find_functions([WRITE_FUNC, READ_FUNC])
    found = tab.find([WRITE_FUNC, READ_FUNC])
    for n in (WRITE_FUNC, READ_FUNC):
        assert found[n].vaddr == syms[n].vaddr
        assert syms[n].size <= found[n].size < syms[n].size + 64   # + alignment padding


@pytest.mark.skipif(_BCC is None, reason="bcc not importable")
def test_go_offsets_match_bcc_resolver(go_server):
    t = go_tls_target(str(go_server), cache=TargetCache())
    path = str(go_server).encode()
    _p, off = _BCC._check_path_symbol(path, READ_FUNC.encode(), None, -1)
    assert off == t.read_entry_offset
    for spec in t.probes():
        _p, off = _BCC._check_path_symbol(path, b"", spec.vaddr, -1)
        assert off == spec.offset


def test_go_stripped_equals_unstripped(go_server, go_server_stripped):
    full = go_tls_target(str(go_server), cache=TargetCache())
    t = go_tls_target(str(go_server_stripped), cache=TargetCache())
    _check_go_target(t, go_server_stripped)
    assert t.stripped and t.read.source == ".gopclntab" and t.fd_offsets is None
    assert t.write_entry_offset == full.write_entry_offset
    assert t.read_entry_offset == full.read_entry_offset
    assert t.read_ret_offsets == full.read_ret_offsets
    assert t.write.after_stack_check == full.write.after_stack_check


def test_go_stripped_pie(go_server_pie_stripped):
    t = go_tls_target(str(go_server_pie_stripped), cache=TargetCache())
    _check_go_target(t, go_server_pie_stripped)
    assert t.stripped


def _drop_section_headers(src, dst):
    data = bytearray(Path(src).read_bytes())
    struct.pack_into("<Q", data, 0x28, 0)        # e_shoff
    struct.pack_into("<HHH", data, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    Path(dst).write_bytes(bytes(data))
    os.chmod(dst, 0o755)
    return dst


@pytest.mark.parametrize("variant", ["goserver:strip", "goserver:pie-strip"])
def test_go_without_section_headers_uses_magic_search(go_builds, work, variant):
    """No section table at all: build info and pclntab are found by their magic."""
    src = go_builds(variant)
    ref = go_tls_target(str(src), cache=TargetCache())
    dst = _drop_section_headers(src, work / ("noshdr-" + variant.replace(":", "-")))
    t = go_tls_target(str(dst), cache=TargetCache())
    _check_go_target(t, dst)
    assert (t.write_entry_offset, t.read_entry_offset, t.read_ret_offsets) == \
        (ref.write_entry_offset, ref.read_entry_offset, ref.read_ret_offsets)


def test_go_old_version_binary_refused(go_server_stripped, work):
    data = Path(go_server_stripped).read_bytes()
    v = gotls.parse_buildinfo(data[data.index(gotls.BUILDINFO_MAGIC):][:4096])[0]
    old = re.sub(r"^go1\.\d+", "go1.16", v)
    assert old != v
    patched = work / "go-patched-old"
    patched.write_bytes(data.replace(_uvarint(len(v)) + v.encode(), _uvarint(len(old)) + old.encode()))
    t = go_tls_target(str(patched), cache=TargetCache())
    assert isinstance(t, Skip) and "go1.17" in t.reason and "go1.16" in t.reason


def test_non_go_file_is_skip():
    t = go_tls_target("/bin/ls", cache=TargetCache())
    assert isinstance(t, Skip) and "not a Go binary" in t.reason


# ----------------------------------------------------------------------------------------
# bad input never raises
# ----------------------------------------------------------------------------------------

def _truncations(size):
    return sorted({0, 3, 4, 20, 63, 64, 200, 4096, size // 10, size // 3, size // 2,
                   size * 9 // 10, size - 1})


def test_truncated_libssl_is_skip(work):
    path = system_libssl()
    data = Path(path).read_bytes()
    for n in _truncations(len(data)):
        p = work / ("libssl.so.3.cut%d" % n)
        p.write_bytes(data[:n])
        t = openssl_target(str(p), cache=TargetCache())
        assert isinstance(t, (Skip, OpenSSLTarget))
        if n <= len(data) // 2:
            assert isinstance(t, Skip) and t.reason, n
        assert isinstance(openssl_symbols(str(p)), dict)
        assert isinstance(go_tls_target(str(p), cache=TargetCache()), Skip)


def test_truncated_go_binary_is_skip(go_server, go_server_stripped, work):
    for src in (go_server, go_server_stripped):
        data = Path(src).read_bytes()
        for n in _truncations(len(data)):
            p = work / ("%s.cut%d" % (src.name, n))
            p.write_bytes(data[:n])
            t = go_tls_target(str(p), cache=TargetCache())
            assert isinstance(t, (Skip, GoTarget)), n
            if n <= len(data) // 2:
                assert isinstance(t, Skip) and t.reason, n
            assert isinstance(openssl_target(str(p), cache=TargetCache()), Skip)


def test_corrupt_files_are_skip(go_server_stripped, work):
    data = bytearray(Path(go_server_stripped).read_bytes())
    # smash the pclntab header magic everywhere: stripped binary loses its function table
    for magic in (0xFFFFFFF0, 0xFFFFFFF1, 0xFFFFFFFA):
        needle = struct.pack("<I", magic) + b"\0\0\x01\x08"
        pos = data.find(needle)
        while pos >= 0:
            data[pos:pos + 4] = b"\x00\x11\x22\x33"
            pos = data.find(needle, pos + 1)
    p = work / "go-nopcln"
    p.write_bytes(bytes(data))
    t = go_tls_target(str(p), cache=TargetCache())
    assert isinstance(t, Skip) and "pclntab" in t.reason and "stripped" in t.reason

    junk = work / "junk.elf"
    junk.write_bytes(b"\x7fELF" + os.urandom(5000))
    text = work / "plain.txt"
    text.write_text("hello\n")
    for path in (junk, text, work, work / "does-not-exist"):
        for fn in (go_tls_target, openssl_target):
            t = fn(str(path), cache=TargetCache())
            assert isinstance(t, Skip) and t.reason
        assert openssl_symbols(str(path)) == {}


# ----------------------------------------------------------------------------------------
# running processes
# ----------------------------------------------------------------------------------------

def test_go_apps_talk_http11(go_server, go_builds, certs, procs, work):
    client = go_builds("goclient")
    port = free_port()
    srv = start(procs, [go_server, "-addr", "127.0.0.1:%d" % port, "-cert", certs[0], "-key", certs[1]])
    wait_line(srv, "listening")
    urls = work / "urls.txt"
    urls.write_text("https://127.0.0.1:%d/status/404\nhttps://127.0.0.1:%d/bytes/1000\n" % (port, port))
    out = subprocess.run([str(client), "-urls", str(urls), "-n", "2", "-url",
                          "https://127.0.0.1:%d/status/200" % port],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "requests=4 errors=0 bytes=1033 status=200:3,404:1"
    # Python's ssl client against the Go server (and HTTP/1.1, not h2)
    out = subprocess.run([sys.executable, str(PYSSL), "client", "-n", "3", "--url",
                          "https://127.0.0.1:%d/bytes/10" % port],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "requests=3 errors=0 bytes=30 status=200:3", out.stderr


def test_discover_go_server(go_server, certs, procs):
    cache = TargetCache()
    port = free_port()
    p = start(procs, [go_server, "-addr", "127.0.0.1:%d" % port, "-cert", certs[0], "-key", certs[1]])
    wait_line(p, "listening")
    targets = discover(p.pid, cache=cache)
    [t] = targets
    assert isinstance(t, GoTarget)
    assert os.path.samefile(t.path, go_server)
    st = os.stat(go_server)
    assert t.key == (st.st_dev, st.st_ino)
    assert t.read_entry_offset == go_tls_target(str(go_server), cache=TargetCache()).read_entry_offset
    assert find_libssl_in_process(p.pid, cache=cache) == []
    # a second process of the same binary: no new ELF parsing, same key
    port2 = free_port()
    p2 = start(procs, [go_server, "-addr", "127.0.0.1:%d" % port2, "-cert", certs[0], "-key", certs[1]])
    wait_line(p2, "listening")
    parses = cache.parses
    [t2] = discover(p2.pid, cache=cache)
    assert cache.parses == parses and t2.key == t.key


def test_discover_python_ssl_server(certs, procs):
    cache = TargetCache()
    servers = []
    for _ in range(2):
        p = start(procs, [sys.executable, PYSSL, "server", "--addr", "127.0.0.1:0",
                          "--cert", certs[0], "--key", certs[1]])
        port = int(wait_line(p, "listening").rsplit(":", 1)[1])
        servers.append((p, port))
    groups, skips = discover_many([sp.pid for sp, _ in servers], cache=TargetCache())
    assert not skips and len(groups) == 1
    [(_t, pids)] = groups.values()
    assert sorted(pids) == sorted(sp.pid for sp, _ in servers)
    p, port = servers[0]
    out = subprocess.run([sys.executable, str(PYSSL), "client", "-n", "2", "--url",
                          "https://127.0.0.1:%d/status/503" % port],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "requests=2 errors=0 bytes=22 status=503:2", out.stderr

    targets = discover(p.pid, cache=cache)
    ssl_targets = [t for t in targets if isinstance(t, OpenSSLTarget)]
    assert len(ssl_targets) == 1 and not [t for t in targets if isinstance(t, GoTarget)]
    t = ssl_targets[0]
    assert not t.static and re.search(r"libssl\.so", t.path)
    assert {"SSL_read_ex", "SSL_write_ex", "SSL_read", "SSL_write"} <= set(t.symbols)
    assert find_libssl_in_process(p.pid, cache=cache) == [t.path]
    assert os.path.samefile(t.path, system_libssl())
    parses = cache.parses
    t2 = [x for x in discover(servers[1][0].pid, cache=cache) if isinstance(x, OpenSSLTarget)][0]
    assert cache.parses == parses and t2.key == t.key and t2.symbols == t.symbols


def test_discover_exited_and_plain_processes(procs):
    p = start(procs, ["sleep", "30"])
    assert discover(p.pid, cache=TargetCache()) == []
    p.kill()
    p.wait()
    r = discover(p.pid, cache=TargetCache())
    assert len(r) == 1 and isinstance(r[0], Skip) and "exited" in r[0].reason
    assert find_libssl_in_process(p.pid) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chroot"), reason="needs root + chroot")
def test_discover_chrooted_process(go_server, certs, procs, work):
    """Another root, same mount namespace: the host path is still usable."""
    root = work / "chroot"
    (root / "app").mkdir(parents=True, exist_ok=True)
    shutil.copy2(go_server, root / "app" / "server")
    shutil.copy2(certs[0], root / "app" / "c.pem")
    shutil.copy2(certs[1], root / "app" / "k.pem")
    port = free_port()
    p = start(procs, ["chroot", root, "/app/server", "-addr", "127.0.0.1:%d" % port,
                      "-cert", "/app/c.pem", "-key", "/app/k.pem"])
    wait_line(p, "listening")
    [t] = discover(p.pid, cache=TargetCache())
    assert isinstance(t, GoTarget)
    assert os.path.samefile(t.path, root / "app" / "server")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root + unshare")
def test_discover_container_like_process_uses_proc_root(go_server, certs, procs, work):
    """Private mount namespace + chroot (like a container): the binary lives on a
    tmpfs that only that namespace sees, so the target path must be
    /proc/PID/root/<path inside the container>."""
    nsroot = work / "nsroot"
    nsroot.mkdir(exist_ok=True)
    script = ("mount -t tmpfs tmpfs {r} && mkdir {r}/app && cp {srv} {r}/app/server && "
              "cp {c} {r}/app/c.pem && cp {k} {r}/app/k.pem && "
              "exec chroot {r} /app/server -addr 127.0.0.1:{port} -cert /app/c.pem -key /app/k.pem"
              ).format(r=nsroot, srv=go_server, c=certs[0], k=certs[1], port=free_port())
    p = start(procs, ["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    try:
        wait_line(p, "listening", timeout=10)
    except AssertionError:
        pytest.skip("cannot create a mount namespace here: %s" % p.stderr.read()[-200:])
    assert not (nsroot / "app").exists()          # invisible from the host namespace
    [t] = discover(p.pid, cache=TargetCache())
    assert isinstance(t, GoTarget), t
    assert t.path == "/proc/%d/root/app/server" % p.pid
    ref = go_tls_target(str(go_server), cache=TargetCache())
    assert t.read_ret_offsets == ref.read_ret_offsets


# ----------------------------------------------------------------------------------------
# end to end with BCC (skipped where BCC cannot compile/attach)
# ----------------------------------------------------------------------------------------

_COUNTER_PROG = r"""
#include <uapi/linux/ptrace.h>
BPF_ARRAY(hits, u64, 8);
BPF_ARRAY(sums, u64, 8);
static inline void bump(int i, u64 n) {
    u64 *h = hits.lookup(&i); if (h) __sync_fetch_and_add(h, 1);
    u64 *s = sums.lookup(&i); if (s) __sync_fetch_and_add(s, n);
}
/* Go ABIInternal: RAX=*Conn RBX=buf RCX=len at entry, RAX=n at RET */
int go_write(struct pt_regs *ctx) { bump(0, ctx->cx); return 0; }
int go_read(struct pt_regs *ctx) { bump(1, ctx->cx); return 0; }
int go_read_ret(struct pt_regs *ctx) { long n = (long)ctx->ax; bump(2, n > 0 ? n : 0); return 0; }
/* System V: RDI=SSL* RSI=buf RDX=num */
int ssl_write_ex(struct pt_regs *ctx) { bump(3, ctx->dx); return 0; }
int ssl_read_ex_ret(struct pt_regs *ctx) { bump(4, 0); return 0; }
"""


def _bpf_or_skip():
    if _BCC is None or os.geteuid() != 0:
        pytest.skip("needs root and bcc")
    try:
        return _BCC(text=_COUNTER_PROG.encode())
    except Exception as e:   # no kernel headers, no BPF permission, ...
        pytest.skip("BCC cannot load a program here: %s" % e)


def test_bcc_uprobes_fire_at_go_targets(go_server_pie_stripped, go_builds, certs, procs):
    """Attach with BCC exactly as documented (addr=vaddr) on a stripped PIE server."""
    b = _bpf_or_skip()
    client = go_builds("goclient")
    port = free_port()
    srv = start(procs, [go_server_pie_stripped, "-addr", "127.0.0.1:%d" % port,
                        "-cert", certs[0], "-key", certs[1]])
    wait_line(srv, "listening")
    [t] = discover(srv.pid, cache=TargetCache())
    fn = {"go:Write:entry": "go_write", "go:Read:entry": "go_read", "go:Read:ret": "go_read_ret"}
    try:
        for p in t.probes(cheap=False):     # the RET probes (the fallback when no copy call)
            b.attach_uprobe(name=t.path.encode(), addr=p.vaddr, fn_name=fn[p.role].encode(), pid=srv.pid)
        out = subprocess.run([str(client), "-n", "10", "-url", "https://127.0.0.1:%d/bytes/5000" % port],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        # The server's last Read of each connection is still blocked when the client exits;
        # it returns (EOF) once the server sees the close, so wait for the counts to settle.
        deadline = time.monotonic() + 5
        while True:
            hits = [b[b"hits"][i].value for i in range(3)]
            sums = [b[b"sums"][i].value for i in range(3)]
            if hits[2] == hits[1] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        b.cleanup()
    assert hits[0] >= 10 and sums[0] >= 10 * 5000        # Write: len in RCX
    assert hits[1] >= 10 and hits[2] == hits[1]          # one RET hit per Read call
    assert sums[2] >= 10 * len("GET /bytes/5000 HTTP/1.1\r\n")   # n in RAX at RET


def test_bcc_uprobes_fire_at_openssl_targets(certs, procs):
    b = _bpf_or_skip()
    srv = start(procs, [sys.executable, PYSSL, "server", "--addr", "127.0.0.1:0",
                        "--cert", certs[0], "--key", certs[1]])
    port = int(wait_line(srv, "listening").rsplit(":", 1)[1])
    [t] = [x for x in discover(srv.pid, cache=TargetCache()) if isinstance(x, OpenSSLTarget)]
    try:
        for p in t.probes():
            if p.role in ("SSL_write_ex:entry", "SSL_write_ex:internal"):
                b.attach_uprobe(name=t.path.encode(), addr=p.vaddr, fn_name=b"ssl_write_ex", pid=srv.pid)
            elif p.role in ("SSL_read_ex:ret", "SSL_read_ex:internal-ret"):
                b.attach_uretprobe(name=t.path.encode(), addr=p.vaddr, fn_name=b"ssl_read_ex_ret",
                                  pid=srv.pid)
        out = subprocess.run([sys.executable, str(PYSSL), "client", "-n", "5", "--url",
                              "https://127.0.0.1:%d/bytes/5000" % port],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        hits = [b[b"hits"][i].value for i in range(5)]
        sums = [b[b"sums"][i].value for i in range(5)]
    finally:
        b.cleanup()
    assert hits[3] >= 5 and sums[3] >= 5 * 5000
    assert hits[4] >= 5


# ----------------------------------------------------------------------------------------
# plaintext through the chosen sites, byte for byte (the arguments bpf/tls.h reads there)
# ----------------------------------------------------------------------------------------

_CAPTURE_PROG = r"""
#include <uapi/linux/ptrace.h>
#define CAP 1024
struct ev { u32 dir; u32 len; u8 data[CAP]; };
struct pend { u64 buf; u64 lenp; };
BPF_RINGBUF_OUTPUT(evs, 256);     /* one buffer for all CPUs: events in order */
BPF_PERCPU_ARRAY(scratch, struct ev, 1);
BPF_HASH(pending, u64, struct pend);
BPF_ARRAY(morestack, u64, 1);

static __always_inline void emit(struct pt_regs *ctx, u32 dir, u64 src, u64 n) {
    int z = 0;
    struct ev *e = scratch.lookup(&z);
    if (!e)
        return;
    e->dir = dir;
    e->len = n;
    u32 c = n < CAP ? n : CAP;
    if (c > CAP)
        return;
    bpf_probe_read_user(e->data, c, (void *)src);
    evs.ringbuf_output(e, sizeof(*e), 0);
}
/* OpenSSL internal functions: (SSL*, buf, size_t num, size_t *out) */
int ssl_internal_write(struct pt_regs *ctx) {
    emit(ctx, 1, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
    return 0;
}
int ssl_internal_read(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct pend p = {.buf = PT_REGS_PARM2(ctx), .lenp = PT_REGS_PARM4(ctx)};
    pending.update(&id, &p);
    return 0;
}
int ssl_internal_read_ret(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct pend *p = pending.lookup(&id);
    if (!p)
        return 0;
    u64 n = 0;
    if ((int)PT_REGS_RC(ctx) > 0 && bpf_probe_read_user(&n, sizeof(n), (void *)p->lenp) == 0)
        emit(ctx, 0, p->buf, n);
    pending.delete(&id);
    return 0;
}
/* Go: on the stack check's jbe (CF|ZF = morestack, skipped), and Read's memmove call */
static __always_inline int to_morestack(struct pt_regs *ctx) {
    if (!(ctx->flags & 0x41))
        return 0;
    int z = 0;
    u64 *m = morestack.lookup(&z);
    if (m)
        __sync_fetch_and_add(m, 1);
    return 1;
}
int go_write_jcc(struct pt_regs *ctx) {
    if (!to_morestack(ctx))
        emit(ctx, 1, ctx->bx, ctx->cx);
    return 0;
}
int go_read_jcc(struct pt_regs *ctx) {
    if (to_morestack(ctx))
        return 0;
    u64 g = ctx->r14;
    struct pend p = {.buf = ctx->bx};
    pending.update(&g, &p);
    return 0;
}
int go_read_copy(struct pt_regs *ctx) {
    u64 g = ctx->r14;
    struct pend *p = pending.lookup(&g);
    if (!p)
        return 0;
    if (p->buf == ctx->ax)
        emit(ctx, 0, ctx->bx, ctx->cx);
    pending.delete(&g);
    return 0;
}
"""


class _Capture:
    def __init__(self):
        if _BCC is None or os.geteuid() != 0:
            pytest.skip("needs root and bcc")
        import ctypes
        self.b = _BCC(text=_CAPTURE_PROG.encode())
        self.got = {0: bytearray(), 1: bytearray()}
        self.truncated = 0

        class Ev(ctypes.Structure):
            _fields_ = [("dir", ctypes.c_uint32), ("len", ctypes.c_uint32),
                        ("data", ctypes.c_ubyte * 1024)]

        def on(_ctx, data, _size):
            e = ctypes.cast(data, ctypes.POINTER(Ev)).contents
            if e.len > 1024:
                self.truncated += 1
            self.got[e.dir] += bytes(e.data[:min(e.len, 1024)])
        self.b[b"evs"].open_ring_buffer(on)

    def attach(self, path, vaddr, fn, pid, ret=False):
        (self.b.attach_uretprobe if ret else self.b.attach_uprobe)(
            name=path.encode(), addr=vaddr, fn_name=fn.encode(), pid=pid)

    def run(self, attachments, exchange):
        """Attach [(path, vaddr, program, pid, ret)], run ``exchange()`` -> (bytes the traced
        side read, bytes it wrote), wait for their events, detach; returns that pair."""
        try:
            for path, vaddr, fn, pid, ret in attachments:
                self.attach(path, vaddr, fn, pid, ret)
            traced_in, traced_out = exchange()
            self.drain(len(traced_in), len(traced_out))
        finally:
            self.b.cleanup()
        assert self.truncated == 0
        return bytes(traced_in), bytes(traced_out)

    def drain(self, want_in, want_out, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (len(self.got[0]) < want_in or
                                               len(self.got[1]) < want_out):
            self.b.ring_buffer_poll(timeout=100)
        self.b.ring_buffer_poll(timeout=100)


def _https_exchange(port, requests):
    """Send each raw request on one TLS connection and read its response (Content-Length);
    returns (bytes sent, bytes received) exactly as they crossed the TLS layer."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sent = bytearray()
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw) as s:
        for req in requests:
            s.sendall(req)
            sent += req
            resp = b""
            while b"\r\n\r\n" not in resp:
                resp += s.recv(65536)
            head, _, body = resp.partition(b"\r\n\r\n")
            n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(body) < n:
                body += s.recv(65536)
            got += head + b"\r\n\r\n" + body
    return bytes(sent), bytes(got)


def _requests(host):
    return [b"GET /status/%d HTTP/1.1\r\nHost: %s\r\nX-Seq: %s\r\n\r\n"
            % (code, host, (b"%03d" % i) * (i + 1)) for i, code in
            enumerate((200, 404, 201, 500, 200, 200))] + \
        [b"GET /bytes/700 HTTP/1.1\r\nHost: %s\r\n\r\n" % host]


def test_openssl_plaintext_byte_for_byte_at_the_chosen_sites(certs, procs):
    """Python's ssl server (SSL_read_ex/SSL_write_ex) probed only at the internal
    functions: what they saw is exactly the bytes our client sent and received."""
    cap = _Capture()
    srv = start(procs, [sys.executable, PYSSL, "server", "--addr", "127.0.0.1:0",
                        "--cert", certs[0], "--key", certs[1]])
    port = int(wait_line(srv, "listening").rsplit(":", 1)[1])
    [t] = [x for x in discover(srv.pid, cache=TargetCache()) if isinstance(x, OpenSSLTarget)]
    r, w = t.sites["SSL_read_ex"], t.sites["SSL_write_ex"]
    assert r.mode == w.mode == "internal" and r.emulated and w.emulated
    sent, got = cap.run([(t.path, w.vaddr, "ssl_internal_write", srv.pid, False),
                         (t.path, r.vaddr, "ssl_internal_read", srv.pid, False),
                         (t.path, r.vaddr, "ssl_internal_read_ret", srv.pid, True)],
                        lambda: _https_exchange(port, _requests(b"py")))
    assert bytes(cap.got[0]) == sent
    assert bytes(cap.got[1]) == got


def test_go_plaintext_byte_for_byte_at_the_chosen_sites(go_server, certs, procs):
    """A Go server probed on the stack checks' jbe and at Read's copy call (no RET
    probes): the plaintext seen there is exactly what our client sent and received."""
    cap = _Capture()
    port = free_port()
    srv = start(procs, [go_server, "-addr", "127.0.0.1:%d" % port, "-cert", certs[0],
                        "-key", certs[1]])
    wait_line(srv, "listening")
    [t] = discover(srv.pid, cache=TargetCache())
    roles = {p.role: p for p in t.probes()}
    assert set(roles) == {"go:Write:entry-jcc", "go:Read:entry-jcc", "go:Read:copy"}, roles
    sent, got = cap.run([(t.path, roles[role].vaddr, fn, srv.pid, False) for role, fn in (
        ("go:Write:entry-jcc", "go_write_jcc"), ("go:Read:entry-jcc", "go_read_jcc"),
        ("go:Read:copy", "go_read_copy"))], lambda: _https_exchange(port, _requests(b"go")))
    assert bytes(cap.got[0]) == sent
    assert bytes(cap.got[1]) == got


class _CtypesTls:
    """A TLS client calling a given libssl directly (ctypes): SSL_write/SSL_read, or the
    _ex functions, with buffers whose bytes we know."""

    def __init__(self, path, port):
        import ctypes
        self.c = ctypes
        for dep in Path(path).parent.glob("libcrypto-*.so.1.1"):   # a wheel's bundled one:
            ctypes.CDLL(str(dep))                                   # loaded first, by soname
        lib = self.lib = ctypes.CDLL(path)
        for name, res, args in (
                ("TLS_client_method", ctypes.c_void_p, []),
                ("SSL_CTX_new", ctypes.c_void_p, [ctypes.c_void_p]),
                ("SSL_new", ctypes.c_void_p, [ctypes.c_void_p]),
                ("SSL_set_fd", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
                ("SSL_connect", ctypes.c_int, [ctypes.c_void_p]),
                ("SSL_write", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]),
                ("SSL_read", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]),
                ("SSL_write_ex", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p,
                                                ctypes.c_size_t, ctypes.c_void_p]),
                ("SSL_read_ex", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_size_t, ctypes.c_void_p]),
                ("SSL_free", None, [ctypes.c_void_p]),
                ("SSL_CTX_free", None, [ctypes.c_void_p])):
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.settimeout(None)        # a blocking fd for OpenSSL, bounded by the kernel:
        for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, struct.pack("ll", 10, 0))
        self.ctx = lib.SSL_CTX_new(lib.TLS_client_method())
        self.ssl = lib.SSL_new(self.ctx)
        assert lib.SSL_set_fd(self.ssl, self.sock.fileno()) == 1
        assert lib.SSL_connect(self.ssl) == 1

    def write(self, data, ex):
        c = self.c
        if ex:
            n = c.c_size_t(0)
            assert self.lib.SSL_write_ex(self.ssl, data, len(data), c.byref(n)) == 1
            assert n.value == len(data)
        else:
            assert self.lib.SSL_write(self.ssl, data, len(data)) == len(data)

    def read(self, ex, size=300):
        c = self.c
        buf = c.create_string_buffer(size)
        if ex:
            n = c.c_size_t(0)
            ok = self.lib.SSL_read_ex(self.ssl, buf, size, c.byref(n))
            return buf.raw[:n.value] if ok == 1 else b""
        r = self.lib.SSL_read(self.ssl, buf, size)
        return buf.raw[:r] if r > 0 else b""

    def close(self):
        self.lib.SSL_free(self.ssl)
        self.lib.SSL_CTX_free(self.ctx)
        self.sock.close()


@pytest.mark.parametrize("which", ["system", "1.1.1"])
def test_int_and_ex_functions_byte_for_byte_at_the_chosen_sites(which, certs, procs):
    """This process as the client, through this machine's libssl.so.3 or OpenSSL 1.1.1,
    calling SSL_write/SSL_read and SSL_write_ex/SSL_read_ex in turn (small reads, so a
    response takes several): the probes at ssl_write_internal/ssl_read_internal see
    exactly the bytes passed to the writes and returned by the reads."""
    path = system_libssl() if which == "system" else libssl11()
    t = openssl_target(path, cache=TargetCache())
    check_openssl_sites(t)
    srv = start(procs, [sys.executable, PYSSL, "server", "--addr", "127.0.0.1:0",
                        "--cert", certs[0], "--key", certs[1]])
    port = int(wait_line(srv, "listening").rsplit(":", 1)[1])
    cli = _CtypesTls(path, port)       # handshake before the probes: data calls only
    cap = _Capture()
    r, w = t.sites["SSL_read"], t.sites["SSL_write"]

    def exchange():
        sent, got = bytearray(), bytearray()
        for i, req in enumerate(_requests(which.encode())):
            ex = bool(i % 2)
            cli.write(req, ex)
            sent += req
            resp = b""
            while True:
                head, sep, body = resp.partition(b"\r\n\r\n")
                if sep and len(body) >= int(re.search(rb"(?i)content-length: *(\d+)",
                                                      head).group(1)):
                    break
                chunk = cli.read(ex)
                assert chunk, "connection closed"
                resp += chunk
            got += resp
        return got, sent            # this process is the traced side: it read got

    pid = os.getpid()
    try:
        got, sent = cap.run([(t.path, w.vaddr, "ssl_internal_write", pid, False),
                             (t.path, r.vaddr, "ssl_internal_read", pid, False),
                             (t.path, r.vaddr, "ssl_internal_read_ret", pid, True)], exchange)
    finally:
        cli.close()
    assert bytes(cap.got[1]) == bytes(sent)
    assert bytes(cap.got[0]) == bytes(got)


def test_analysis_runs_in_a_child_and_keeps_capstone_out_of_the_probe():
    """The disassembly of a real libssl happens in a forked child (tls_targets._isolated):
    the sites come back, capstone's modules never load in the probe's process; with
    L7PROBE_TLS_IN_PROCESS=1 the same sites are found here."""
    import subprocess
    import sys
    lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    code = (
        "import sys; from bpf import tls_targets as t\n"
        "r = t.openssl_target(%r)\n"
        "print(sorted((f, s.vaddr, s.kind) for f, s in r.sites.items()))\n"
        "print('capstone' in sys.modules)\n" % lib)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = []
    for inproc in ("0", "1"):
        env = dict(os.environ, L7PROBE_TLS_IN_PROCESS=inproc, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, cwd=root, timeout=120)
        assert out.returncode == 0, out.stderr
        outs.append(out.stdout.splitlines())
    (sites, loaded), (sites_here, loaded_here) = outs
    assert sites == sites_here and "SSL_read" in sites, sites
    assert loaded == "False" and loaded_here == "True"
