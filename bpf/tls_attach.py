"""Attach the TLS uprobes of bpf/tls.h to the libraries and binaries that need them.

Targets come from bpf/tls_targets.py (symbols via pyelftools, Go functions via .symtab or
.gopclntab).  One attachment per distinct file, shared by every process that maps it; the
BPF side filters by pid.  Processes started later are found from exec records: each new
process is examined a few times in its first seconds (libssl is often loaded after exec,
e.g. by Python's `import ssl`), so /proc is never scanned as a whole after start-up.
"""
from __future__ import annotations

import logging
import os
import time

from bpf import tls_targets, uprobe_sites

log = logging.getLogger("l7probe")

# BPF function per probe role (bpf/tls_targets.OpenSSLTarget.probes).  At the internal
# function (or at its call site) every member of a pair sees (SSL*, buf, size_t num,
# size_t *out): the *_ex programs serve both.
OPENSSL_PROGRAMS = {
    "SSL_write:entry": "ssl_write_entry",
    "SSL_write_ex:entry": "ssl_write_ex_entry",
    "SSL_write:internal": "ssl_write_ex_entry",
    "SSL_write_ex:internal": "ssl_write_ex_entry",
    "SSL_read:entry": "ssl_read_entry",
    "SSL_read_ex:entry": "ssl_read_ex_entry",
    "SSL_read:internal": "ssl_read_ex_entry",
    "SSL_read_ex:internal": "ssl_read_ex_entry",
    "SSL_read:ret": "ssl_read_return",
    "SSL_read_ex:ret": "ssl_read_return",
    "SSL_read:internal-ret": "ssl_read_return",
    "SSL_read_ex:internal-ret": "ssl_read_return",
    # once per connection: ties the SSL* to its socket before any data call (with TLS 1.3
    # the first request often arrives with the handshake and is read without a syscall)
    "SSL_do_handshake:entry": "ssl_handshake_entry",
}
OPENSSL_PROBES = ("SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex", "SSL_do_handshake")
# the offsets compiled into bpf/tls.h (GO_*), checked against each binary's DWARF
GO_FD_CHAIN = {"tls.Conn.conn": 0, "net.conn.fd": 0, "net.netFD.pfd": 0, "poll.FD.Sysfd": 16}
GO_PROGRAMS = {
    "go:Write:entry": "go_tls_write",
    "go:Write:entry-jcc": "go_tls_write_jcc",
    "go:Read:entry": "go_tls_read",
    "go:Read:entry-jcc": "go_tls_read_jcc",
    "go:Read:ret": "go_tls_read_ret",
    "go:Read:copy": "go_tls_read_copy",
}
# every uprobe program of bpf/tls.h (bpf/loader.py loads them all at start)
PROGRAMS = tuple(sorted(set(OPENSSL_PROGRAMS.values()) | set(GO_PROGRAMS.values())))
READ = tls_targets.READ_FUNC
RESCAN_AFTER = (0.0, 0.3, 1.5, 5.0, 15.0)     # seconds after exec


def cheap_sites():
    """False with L7PROBE_TLS_SYMBOLS=1: every probe at its symbol, Go's reads on each RET
    (the attach points before bpf/uprobe_sites.py; ~16 us a hit here instead of ~0.5)."""
    return not os.environ.get("L7PROBE_TLS_SYMBOLS")
MAX_PENDING = 4096


def _kind_word(kind):
    return "emulated" if uprobe_sites.is_emulated(kind) else "single-stepped"


class TlsManager:
    def __init__(self, bpf):
        self.bpf = bpf
        self.cache = tls_targets.TargetCache()
        self.attached = {}          # key -> description
        self.failed = set()         # keys that could not be attached (logged once)
        self.skipped = set()        # paths whose skip reason was logged
        self.pending = []           # [(due, pid)]
        self.probes = 0
        self.links = []             # (kind, path, addr) of every attached probe

    # -- discovery ----------------------------------------------------------------------
    def scan(self, pids):
        targets, skips = tls_targets.discover_many(pids, self.cache)
        for key, (target, tpids) in targets.items():
            if key not in self.attached and key not in self.failed:
                self.attach(target, tpids)
        for pid, skip in skips:
            if skip.path not in self.skipped and "exited" not in skip.reason and \
                    "cannot inspect process" not in skip.reason:
                self.skipped.add(skip.path)
                log.info("TLS: skipping %s (pid %d): %s", skip.path, pid, skip.reason)

    def scan_all(self, wanted=None):
        pids = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                pid = int(name)
                if wanted is None or wanted(pid):
                    pids.append(pid)
        self.scan(pids)

    def attach_library(self, path):
        """A libssl path given by gala-gopher (container objects)."""
        t = tls_targets.openssl_target(path, self.cache)
        if isinstance(t, tls_targets.Skip):
            if path not in self.skipped:
                self.skipped.add(path)
                log.warning("TLS: cannot use %s: %s", path, t.reason)
            return
        if t.key not in self.attached and t.key not in self.failed:
            self.attach(t, [])

    def on_exec(self, pid, now=None):
        now = time.monotonic() if now is None else now
        if len(self.pending) < MAX_PENDING:
            for d in RESCAN_AFTER:
                self.pending.append((now + d, pid))

    def tick(self, wanted=None, now=None):
        if not self.pending:
            return
        now = time.monotonic() if now is None else now
        due = [pid for t, pid in self.pending if t <= now]
        if not due:
            return
        self.pending = [(t, pid) for t, pid in self.pending if t > now]
        pids = sorted({p for p in due if wanted is None or wanted(p)})
        if pids:
            self.scan([p for p in pids if os.path.exists("/proc/%d" % p)])

    # -- attaching ----------------------------------------------------------------------
    def attach(self, target, pids):
        try:
            if isinstance(target, tls_targets.GoTarget):
                n, what = self._attach_go(target)
            else:
                n, what = self._attach_openssl(target)
        except Exception as exc:    # vanished file, attach refused: skip this target
            self.failed.add(target.key)
            log.warning("TLS: cannot attach to %s: %s", target.path,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        if n == 0:
            self.failed.add(target.key)
            return
        self.probes += n
        self.attached[target.key] = what
        log.info("TLS: attached %d probe(s) to %s (%s)%s", n, target.path, what,
                 " for pid %s" % ",".join(map(str, sorted(pids)[:8])) if pids else "")

    def _attach_openssl(self, t):
        path = t.path.encode()
        done = {}               # (kind, vaddr) -> BPF function: a shared site is attached once
        names = []
        cheap = cheap_sites()
        for spec in t.probes(extras=False, cheap=cheap):
            fn = OPENSSL_PROGRAMS.get(spec.role)
            if fn is None:
                continue
            if spec.func not in names:
                names.append(spec.func)
            key = (spec.kind, spec.vaddr)
            if key in done:
                if done[key] != fn:     # never: the table above gives one program per site
                    log.warning("TLS: %s: %s at 0x%x wanted by two programs (%s, %s); kept %s",
                                t.path, spec.kind, spec.vaddr, done[key], fn, done[key])
                continue
            self._attach_one(spec.kind, path, spec.vaddr, fn)
            done[key] = fn
            if spec.site is not None:
                shared = [p.func for p in t.probes(extras=False, cheap=cheap)
                          if (p.kind, p.vaddr) == key and p.func != spec.func]
                site = spec.site
                text = site.log_text(t.path, spec.kind)
                if shared:
                    text = text.replace(" %s -> " % site.func, " %s -> " % "/".join(
                        [site.func] + shared), 1)
                log.info("TLS: %s", text)
        for site in (t.sites if cheap else t.symbol_sites).values():
            if site.mode == "covered":
                names.append(site.func)
                log.info("TLS: %s", site.log_text(t.path))
        if not names:
            log.info("TLS: %s has none of %s", t.path, ",".join(OPENSSL_PROBES))
        return len(done), "%s%s: %s" % (t.version or "OpenSSL", ", static" if t.static else "",
                                        ",".join(names))

    def _attach_go(self, t):
        if t.fd_offsets is not None and t.fd_offsets != GO_FD_CHAIN:
            log.warning("TLS: %s (%s): tls.Conn -> fd layout %s differs from the supported "
                        "%s; skipped", t.path, t.go_version, t.fd_offsets, GO_FD_CHAIN)
            return 0, ""
        path = t.path.encode()
        cheap = cheap_sites()
        specs = t.probes(cheap=cheap)
        n = 0
        for spec in specs:
            fn = GO_PROGRAMS[spec.role]
            self._attach_one("uprobe", path, spec.vaddr, fn)
            n += 1
        for tag, fi in (("Write", t.write), ("Read", t.read)):
            p, role = t.entry_point(fi, cheap=cheap)
            log.info("TLS: uprobe %s -> %s+%d (%s: %s%s) in %s", fi.name, fi.name,
                     p.vaddr - fi.entry.vaddr, p.kind, _kind_word(p.kind),
                     ", skips the morestack hit" if role == "entry-jcc" else "", t.path)
        copy = t.read_copy if cheap else None
        if copy is not None:
            log.info("TLS: uprobe %s data -> %s+%d (call runtime.memmove: %s) in %s", READ,
                     READ, copy.vaddr - t.read.entry.vaddr, _kind_word(copy.kind), t.path)
        else:
            log.info("TLS: uprobe %s data -> %d RET(s) (ret: single-stepped; %s) in %s", READ,
                     len(t.read.rets), "L7PROBE_TLS_SYMBOLS set" if not cheap else
                     "%d call(s) of runtime.memmove found, one needed" % len(t.read.copy_calls),
                     t.path)
        return n, "Go %s%s, crypto/tls Write/Read + %s%s" % (
            t.go_version, " stripped" if t.stripped else "",
            "the plaintext copy" if copy is not None else "%d return point(s)" % len(t.read.rets),
            "" if t.fd_offsets else "; fd chain offsets assumed (no DWARF)")

    def _attach_one(self, kind, path, addr, fn):
        if kind == "uprobe":
            self.bpf.attach_uprobe(name=path, addr=addr, fn_name=fn)
        else:
            self.bpf.attach_uretprobe(name=path, addr=addr, fn_name=fn)
        self.links.append((kind, path, addr))

    def detach_all(self):
        """Remove every TLS uprobe (support_ssl turned off at run time)."""
        for kind, path, addr in self.links:
            try:
                if kind == "uprobe":
                    self.bpf.detach_uprobe(name=path, addr=addr)
                else:
                    self.bpf.detach_uretprobe(name=path, addr=addr)
            except Exception as exc:
                log.debug("TLS: detach %s %s@%#x: %s", kind, path, addr, exc)
        if self.links:
            log.info("TLS: detached %d probe(s)", len(self.links))
        self.links = []
        self.attached.clear()
        self.failed.clear()
        self.probes = 0
