"""Where to attach TLS uprobes: OpenSSL (shared or static) and Go crypto/tls.

User-space half of TLS tracing. Given a pid, :func:`discover` returns the
attach targets of that process; each target is shared by every process that
maps the same file (``target.key`` = ``(st_dev, st_ino)``: attach once per key,
filter by tgid in BPF). No struct offsets of OpenSSL are used: the BPF side
learns the fd from the nested read/write syscall (or from SSL_set_fd).

Targets
-------
:class:`OpenSSLTarget`  libssl.so.* mapped by the process, or an executable
                        with OpenSSL/BoringSSL linked in statically.
:class:`GoTarget`       a Go >= 1.17 binary containing crypto/tls.
:class:`Skip`           a candidate that cannot be used, with the reason.

Each target's :meth:`probes` lists the exact uprobes to attach. A
:class:`ProbeSpec` carries both the ELF virtual address (for BCC 0.26
``attach_uprobe(name=path, addr=vaddr)``, which converts it to a file offset
itself) and the file offset (for the kernel's uprobe API, libbpf, or
``attach_uprobe(name=path, sym=...)`` cross-checks).

Nothing here raises for bad input: a process that exits meanwhile, an
unreadable, non-ELF, truncated or corrupt file all yield :class:`Skip`.

What the BPF side does with a target (all plain uprobes unless stated)
----------------------------------------------------------------------
* Attach once per ``target.key`` with ``pid=-1`` and filter on tgid in BPF
  (or pass ``pid=`` for a single process). BCC 0.26:
  ``b.attach_uprobe(name=t.path.encode(), addr=spec.vaddr, fn_name=...)`` /
  ``attach_uretprobe(...)`` for each ``spec`` in ``t.probes()``.
* OpenSSL (System V ABI, see OPENSSL_ABI): entry of SSL_write/SSL_read/
  SSL_write_ex/SSL_read_ex: stash (SSL* = di, buf = si, num = dx, and for
  *_ex the size_t* out-pointer in cx) keyed by pid_tgid; uretprobe: ret (ax)
  > 0 (or == 1 for *_ex, bytes = *out-pointer) -> emit buf. The fd is the one
  of the nested read/write/sendmsg/recvmsg syscall on the same thread
  between entry and return (or SSL_set_fd: di = SSL*, si = fd).
* Go (GO_AMD64_ABI): at ``go:Write:entry`` RAX = *tls.Conn, RBX = buf,
  RCX = len: emit the plaintext. At ``go:Read:entry`` stash (RBX = buf)
  keyed by (tgid, R14 = goroutine *g), NOT by thread: the goroutine may
  block in Read and resume on another thread. At each ``go:Read:ret``
  (uprobes on the RET instructions; never uretprobes on Go) RAX = n bytes,
  RBX/RCX = error interface (itab, data; RBX == 0 means nil): emit n bytes of
  the stashed buf and delete the stash. The fd is learned from the nested
  read/write syscall, or, when ``fd_offsets`` is not None, by reading
  conn = *(RAX + off["tls.Conn.conn"] + 8) (interface data word, a
  *net.TCPConn), netfd = *(conn + off["net.conn.fd"]),
  fd = *(int64*)(netfd + off["net.netFD.pfd"] + off["poll.FD.Sysfd"]).
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Union

from .elfsym import ElfError, ElfImage, ElfSymbol
from . import gotls, uprobe_sites
from .gotls import GO_AMD64_ABI, READ_FUNC, WRITE_FUNC, GoError

__all__ = [
    "ProbeSpec", "ElfSymbol", "Skip", "OpenSSLTarget", "GoTarget", "Target", "TargetCache",
    "find_libssl_in_process", "openssl_symbols", "openssl_target", "go_tls_target",
    "discover", "discover_many", "DEFAULT_CACHE", "OPENSSL_FUNCS", "OPENSSL_ABI", "GO_AMD64_ABI",
]

# Functions looked up in OpenSSL. The data path needs one of the two pairs.
OPENSSL_DATA_FUNCS = ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex")
OPENSSL_EXTRA_FUNCS = ("SSL_do_handshake", "SSL_get_fd", "SSL_set_fd", "SSL_set_rfd",
                       "SSL_set_wfd")
OPENSSL_FUNCS = OPENSSL_DATA_FUNCS + OPENSSL_EXTRA_FUNCS

# System V x86-64 calling convention for the hooked functions (pt_regs names).
OPENSSL_ABI = {
    "SSL_write": {"ssl": "di", "buf": "si", "num": "dx", "ret": "ax (int: >0 bytes written)"},
    "SSL_read": {"ssl": "di", "buf": "si", "num": "dx", "ret": "ax (int: >0 bytes read)"},
    "SSL_write_ex": {"ssl": "di", "buf": "si", "num": "dx", "written_ptr": "cx",
                     "ret": "ax (int: 1 ok; bytes = *(size_t*)written_ptr)"},
    "SSL_read_ex": {"ssl": "di", "buf": "si", "num": "dx", "readbytes_ptr": "cx",
                    "ret": "ax (int: 1 ok; bytes = *(size_t*)readbytes_ptr)"},
    "SSL_set_fd": {"ssl": "di", "fd": "si"},
    "SSL_set_rfd": {"ssl": "di", "fd": "si"},
    "SSL_set_wfd": {"ssl": "di", "fd": "si"},
    "SSL_get_fd": {"ssl": "di", "ret": "ax (fd)"},
    "SSL_do_handshake": {"ssl": "di", "ret": "ax (1 ok)"},
}

_LIBSSL_RE = re.compile(r"^lib(?:boring)?ssl(?:-[\w.]+)?\.so(?:\.[\d.]+)?$")
# gRPC's C core: grpcio's Cython extension (cygrpc.cpython-*.so) or a shared libgrpc; it may
# carry its own BoringSSL, linked in statically (see _analyse_grpc_core)
_GRPC_CORE_RE = re.compile(r"^(?:cygrpc\..*\.so|libgrpc(?:\+\+)?(?:_unsecure)?\.so(?:\.[\d.]+)?)$")
_VERSION_RE = re.compile(rb"(?:OpenSSL|LibreSSL|BoringSSL) \d+\.\d+\.\d+[a-z]*(?:[-+][\w.]+)?"
                         rb"(?: +\d{1,2} [A-Z][a-z]{2} \d{4})?")


# ----------------------------------------------------------------------------------------
# result types
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeSpec:
    """One probe to attach on ``target.path``.

    kind   "uprobe" or "uretprobe" (Go never gets uretprobes: RETs get uprobes).
    vaddr  pass as ``addr=`` to BCC 0.26 ``attach_uprobe``/``attach_uretprobe``.
    offset file offset, for the kernel uprobe API / libbpf ``func_offset``.
    role   what the BPF program at this spot does, e.g. "SSL_read:entry",
           "go:Read:ret".
    """

    func: str
    kind: str
    vaddr: int
    offset: int
    role: str
    site: Optional[uprobe_sites.Site] = None   # where/why, for the start-up log


@dataclass(frozen=True)
class Skip:
    """A candidate that will not be traced, and why (for logging)."""

    path: str
    reason: str
    kind: str = "skip"

    def __bool__(self) -> bool:          # `if target:` is False for a Skip
        return False


@dataclass(frozen=True)
class OpenSSLTarget:
    path: str                     # host-visible path to attach to
    key: tuple                    # (st_dev, st_ino): one attachment per key
    version: str                  # for logging, e.g. "OpenSSL 3.0.22 25 Aug 2026"
    symbols: dict                 # {func name: ElfSymbol} for OPENSSL_FUNCS found
    static: bool = False          # True: linked into the main executable
    kind: str = "openssl"
    sites: dict = field(default_factory=dict)   # {func: uprobe_sites.Site} (attach here)
    symbol_sites: dict = field(default_factory=dict)   # the same at the symbols themselves

    def probes(self, extras: bool = True, cheap: bool = True) -> list:
        """The probes the data path needs, at the chosen sites (see bpf/uprobe_sites.py):
        a uprobe per data function (role "<func>:entry"; at an internal function the role
        says so: "SSL_read:internal"), a uretprobe for the read functions, a uprobe on
        SSL_do_handshake; with ``extras`` also SSL_set_*fd (unused by bpf/tls.h).
        Functions sharing a site (SSL_read and SSL_read_ex at ssl_read_internal) each get
        their spec; attach once per (kind, vaddr).  Without ``cheap``, every probe at its
        symbol (the way it was before the sites were chosen)."""
        out = []
        sites = self.sites if cheap else self.symbol_sites
        for fn in OPENSSL_DATA_FUNCS + ("SSL_do_handshake",):
            s = sites.get(fn)
            if s is None or s.mode == "covered":
                continue
            tag = "internal" if s.mode == "internal" else "entry"
            out.append(ProbeSpec(fn, "uprobe", s.vaddr, s.offset, "%s:%s" % (fn, tag), s))
            if fn in ("SSL_read", "SSL_read_ex"):
                out.append(ProbeSpec(fn, "uretprobe", s.vaddr, s.offset,
                                     "%s:%s" % (fn, "internal-ret" if tag == "internal"
                                                else "ret"), s))
        if extras:
            for fn in ("SSL_set_fd", "SSL_set_rfd", "SSL_set_wfd"):
                s = self.symbols.get(fn)
                if s is not None:
                    out.append(ProbeSpec(fn, "uprobe", s.vaddr, s.offset, fn + ":entry"))
        return out


@dataclass(frozen=True)
class GoTarget:
    path: str
    key: tuple
    go_version: str               # e.g. "go1.19.8"
    stripped: bool                # no .symtab: functions came from .gopclntab
    write: gotls.GoFuncInfo       # crypto/tls.(*Conn).Write
    read: gotls.GoFuncInfo        # crypto/tls.(*Conn).Read
    fd_offsets: Optional[dict]    # DWARF chain *tls.Conn -> fd, or None
    abi: dict = field(default_factory=lambda: GO_AMD64_ABI)
    kind: str = "go"

    @property
    def write_entry_offset(self) -> int:
        return self.write.entry.offset

    @property
    def read_entry_offset(self) -> int:
        return self.read.entry.offset

    @property
    def read_ret_offsets(self) -> list:
        return [p.offset for p in self.read.rets]

    def entry_point(self, fi, after_stack_check: bool = True, cheap: bool = True):
        """(GoProbePoint, role suffix) of the entry probe of ``fi``.

        After the stack-growth check when that instruction is emulated (``push %rbp``,
        Go >= 1.21); else, with ``cheap``, on the check's ``jbe`` (emulated; the BPF program
        skips the hit whose flags send the call to morestack, which re-enters the function);
        else after the check (``sub $x,%rsp``: single-stepped), else at the entry."""
        asc = fi.after_stack_check if after_stack_check else None
        if asc is not None and uprobe_sites.is_emulated(asc.kind):
            return asc, "entry"
        if cheap and after_stack_check and fi.stack_check_jump is not None and \
                uprobe_sites.is_emulated(fi.stack_check_jump.kind):
            return fi.stack_check_jump, "entry-jcc"
        return (asc or fi.entry), "entry"

    @property
    def read_copy(self):
        """The one ``call runtime.memmove`` in Read (``copy(b, c.input...)``, inlined
        bytes.Reader.Read), or None when there is not exactly one."""
        return self.read.copy_calls[0] if len(self.read.copy_calls) == 1 else None

    def probes(self, after_stack_check: bool = True, cheap: bool = True) -> list:
        """uprobes on Write and Read entry, and for Read's data either the call that
        copies the plaintext into the caller's buffer ("go:Read:copy": RAX = b's pointer,
        RBX = source, RCX = n, before the copy runs) or, without ``cheap`` or when that call
        is not found, every RET of Read ("go:Read:ret", RAX = n).

        With ``after_stack_check`` (default) the entry probes sit at or after the
        prologue's stack-growth check when it was recognised (see entry_point): same
        registers, and one hit per call even when morestack re-enters the function.
        """
        out = []
        for tag, fi in (("Write", self.write), ("Read", self.read)):
            p, role = self.entry_point(fi, after_stack_check, cheap)
            out.append(ProbeSpec(fi.name, "uprobe", p.vaddr, p.offset, "go:%s:%s" % (tag, role)))
        copy = self.read_copy if cheap else None
        if copy is not None:
            out.append(ProbeSpec(READ_FUNC, "uprobe", copy.vaddr, copy.offset, "go:Read:copy"))
        else:
            for p in self.read.rets:
                out.append(ProbeSpec(READ_FUNC, "uprobe", p.vaddr, p.offset, "go:Read:ret"))
        return out


Target = Union[OpenSSLTarget, GoTarget, Skip]


# ----------------------------------------------------------------------------------------
# per-file analysis (path independent, cached)
# ----------------------------------------------------------------------------------------

def _describe_error(exc: BaseException, path: Optional[str] = None) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file vanished (%s)" % (exc.strerror or exc)
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError):
        return "unreadable: %s" % (exc.strerror or exc)
    if isinstance(exc, (ElfError, GoError)):
        return str(exc)
    size = ""
    if path:
        try:
            size = "file is %d bytes; " % os.path.getsize(path)
        except OSError:
            pass
    return "corrupt or truncated ELF (%s%s: %s)" % (size, type(exc).__name__, exc)


def _openssl_version(img: ElfImage, path: str) -> str:
    for sec in (".rodata",):
        data = img.section_data(sec)
        if data:
            m = _VERSION_RE.search(data)
            if m:
                return m.group(0).decode("ascii", "replace")
    soname = img.soname() or os.path.basename(path)
    # libcrypto next to libssl carries the full version string.
    if "libssl" in soname:
        sibling = os.path.join(os.path.dirname(path), soname.replace("libssl", "libcrypto", 1))
        try:
            with ElfImage(sibling) as crypto:
                data = crypto.section_data(".rodata")
                m = _VERSION_RE.search(data or b"")
                if m:
                    return m.group(0).decode("ascii", "replace")
        except Exception:
            pass
    apis = sorted(v for v in img.version_definitions() if v.startswith("OPENSSL_"))
    return "%s%s" % (soname, " (API %s)" % apis[-1] if apis else "")


def _analyse_openssl(path: str, static: bool):
    """("ok", symbols, version) or ("skip", reason). Never raises."""
    try:
        with ElfImage(path) as img:
            if static and not img.strtab_contains(("SSL_write", "SSL_read")):
                return ("skip", "no OpenSSL symbols")
            syms = img.find_functions(OPENSSL_FUNCS)
            pair_rw = "SSL_write" in syms and "SSL_read" in syms
            pair_ex = "SSL_write_ex" in syms and "SSL_read_ex" in syms
            if not (pair_rw or pair_ex):
                have = ", ".join(sorted(syms)) or "none"
                tables = [t.name for t in img.symbol_tables()] or ["no symbol tables"]
                return ("skip", "no SSL_write/SSL_read (or SSL_write_ex/SSL_read_ex) "
                        "defined in %s (found: %s)" % ("/".join(tables), have))
            at_symbols = uprobe_sites.fallback_sites(img, syms, "L7PROBE_TLS_SYMBOLS=1")
            try:
                sites = uprobe_sites.choose_openssl_sites(img, syms)
            except Exception as exc:      # odd code: the symbols themselves still work
                sites = uprobe_sites.fallback_sites(img, syms, "disassembly failed (%s: %s)"
                                                    % (type(exc).__name__, exc))
            return ("ok", syms, _openssl_version(img, path), sites, at_symbols)
    except Exception as exc:          # corrupt input may raise anything from pyelftools
        return ("skip", _describe_error(exc, path))


def _analyse_grpc_core(path: str):
    """("skip", reason) for a gRPC core library with BoringSSL linked in and no SSL_read/
    SSL_write symbol (grpcio's wheels: cygrpc*.so exports one name, PyInit_cygrpc, and has
    no .symtab), else ("none",).  Never raises.

    Its TLS cannot be followed: the uprobes need the functions' addresses, and stripped
    BoringSSL can only be found by guessing at compiled code (README, "TLS").  A gRPC
    library that uses the system's libssl is not this case: that libssl is a target."""
    try:
        with ElfImage(path) as img:
            if img.find_functions(OPENSSL_DATA_FUNCS):
                return ("none",)
            rodata = img.section_data(".rodata") or b""
            if b"boringssl" not in rodata.lower():
                return ("none",)
            exported = []
            tables = img.symbol_tables()
            for tab in tables:
                if tab.name == ".dynsym":
                    exported = [sym.name for sym in tab.iter_symbols()
                                if sym.name and sym["st_shndx"] != "SHN_UNDEF"]
            names = ", ".join(exported[:3]) + (", ..." if len(exported) > 3 else "")
            return ("skip", "BoringSSL is linked in statically without symbols (.dynsym "
                    "defines %d name%s%s, %s): no SSL_read/SSL_write to attach to, so gRPC "
                    "over TLS in this process is not parsed (its connections are not "
                    "reported)" % (len(exported), "" if len(exported) == 1 else "s",
                                   ": " + names if names else "",
                                   "with .symtab" if any(t.name == ".symtab" for t in tables)
                                   else "no .symtab"))
    except Exception as exc:          # corrupt input may raise anything from pyelftools
        return ("skip", _describe_error(exc, path))


def _analyse_go(path: str):
    """("ok", analysis) / ("notgo",) / ("skip", reason). Never raises."""
    try:
        with ElfImage(path) as img:
            res = gotls.analyse_go(img)
            if not res["go"]:
                return ("notgo",)
            return ("ok", res)
    except Exception as exc:
        return ("skip", _describe_error(exc, path))


def _isolated(fn, *args):
    """``fn(*args)`` computed in a forked child, its (picklable) result returned here: the
    disassembler (capstone: ~5 MB of Python modules and ~4 MB of relocated library) and
    pyelftools' parse state then never enter the probe's memory, which stays small for as
    long as it runs.  If the child fails to answer, the analysis runs here.  The analyses
    never raise (``_analyse_*``), so the child has nothing to report but its result.
    L7PROBE_TLS_IN_PROCESS=1 keeps them here (debugging)."""
    if os.environ.get("L7PROBE_TLS_IN_PROCESS") == "1":
        return fn(*args)
    import pickle
    import sys
    for f in (sys.stdout, sys.stderr):      # nothing buffered that the child could repeat
        try:
            f.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError:
        return fn(*args)
    if pid == 0:                                   # the child: compute, send, leave
        code = 1
        try:
            os.close(r)
            data = pickle.dumps(fn(*args), pickle.HIGHEST_PROTOCOL)
            with os.fdopen(w, "wb") as f:
                f.write(data)
            code = 0
        finally:
            os._exit(code)                         # no atexit (BCC's) in the child
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status == 0:
        try:
            return pickle.loads(data)
        except Exception:
            pass
    return fn(*args)


def _file_id(path: str):
    st = os.stat(path)
    return (st.st_dev, st.st_ino), st.st_mtime_ns


class TargetCache:
    """Analysis results keyed by (st_dev, st_ino, mtime_ns, kind): shared by all
    processes mapping the same file, invalidated when the file changes.
    ``parses`` counts real ELF analyses (for tests and stats)."""

    def __init__(self, max_entries: int = 4096):
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.parses = 0

    def get(self, ident, mtime, kind, compute):
        k = (ident, mtime, kind)
        with self._lock:
            if k in self._d:
                self._d.move_to_end(k)
                return self._d[k]
        val = compute()
        with self._lock:
            self.parses += 1
            self._d[k] = val
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)
        return val

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


DEFAULT_CACHE = TargetCache()


def _openssl_result(path, ident, mtime, static, cache) -> Target:
    res = cache.get(ident, mtime, "openssl-static" if static else "openssl",
                    lambda: _isolated(_analyse_openssl, path, static))
    if res[0] != "ok":
        return Skip(path, res[1])
    return OpenSSLTarget(path, ident, res[2], res[1], static, sites=res[3],
                         symbol_sites=res[4])


def _go_result(path, ident, mtime, cache) -> Optional[Target]:
    res = cache.get(ident, mtime, "go", lambda: _isolated(_analyse_go, path))
    if res[0] == "notgo":
        return None
    if res[0] == "skip":
        return Skip(path, res[1])
    a = res[1]
    f = a["funcs"]
    return GoTarget(path, ident, a["version"], a["stripped"], f[WRITE_FUNC], f[READ_FUNC],
                    a["fd_offsets"])


# ----------------------------------------------------------------------------------------
# public per-file API
# ----------------------------------------------------------------------------------------

def openssl_symbols(path: str) -> dict:
    """{name: ElfSymbol} of the OpenSSL functions defined in ``path``.

    Names are OPENSSL_FUNCS without version suffix; ``ElfSymbol.offset`` is the
    file offset, ``.vaddr`` the address for BCC ``attach_uprobe(addr=)``.
    Returns {} when the file is unusable; :func:`openssl_target` gives the reason.
    """
    res = _analyse_openssl(path, static=False)
    return dict(res[1]) if res[0] == "ok" else {}


def openssl_target(path: str, cache: Optional[TargetCache] = None) -> Target:
    """OpenSSLTarget for a libssl (or static executable) at ``path``, else Skip."""
    cache = cache or DEFAULT_CACHE
    try:
        ident, mtime = _file_id(path)
    except OSError as exc:
        return Skip(path, _describe_error(exc))
    return _openssl_result(path, ident, mtime, False, cache)


def go_tls_target(path: str, cache: Optional[TargetCache] = None) -> Target:
    """GoTarget for a Go binary at ``path``; Skip (with reason) otherwise,
    including "not a Go binary"."""
    cache = cache or DEFAULT_CACHE
    try:
        ident, mtime = _file_id(path)
    except OSError as exc:
        return Skip(path, _describe_error(exc))
    res = _go_result(path, ident, mtime, cache)
    return res if res is not None else Skip(path, "not a Go binary")


# ----------------------------------------------------------------------------------------
# per-process discovery
# ----------------------------------------------------------------------------------------

def _ident(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _host_path(pid: int, shown: str, ref_path: Optional[str]) -> str:
    """A path, usable from our mount namespace, to the file that ``pid`` maps
    and the kernel shows as ``shown`` (in /proc/PID/maps or /proc/PID/exe).

    ``ref_path`` (/proc/PID/exe or /proc/PID/map_files/<range>) reaches the
    real mapped inode; the first candidate with the same (st_dev, st_ino)
    wins: the plain path (host process), /proc/PID/root/<path> (container),
    then /proc/PID/root/<path minus leading components> (chroot inside a
    mount namespace, where the kernel shows the path from the namespace's
    root). Without a match, ``ref_path`` itself (valid while pid lives).
    """
    root = "/proc/%d/root" % pid
    ref = _ident(ref_path) if ref_path else None
    parts = [x for x in shown.split("/") if x]
    candidates = [shown, root + shown]
    candidates += [root + "/" + "/".join(parts[i:]) for i in range(1, len(parts))]
    if ref is None:
        # map_files not readable: trust the namespace root check only.
        same_root = _ident(root) == _ident("/")
        return shown if same_root and os.path.exists(shown) else root + shown
    for c in candidates:
        if _ident(c) == ref:
            return c
    return ref_path


def _exe_path(pid: int) -> str:
    exe = "/proc/%d/exe" % pid
    link = os.readlink(exe)
    if link.endswith(" (deleted)") or not link.startswith("/"):
        os.stat(exe)           # raises when the process is gone
        return exe
    return _host_path(pid, link, exe)


def _libssl_mappings(pid: int, pattern=_LIBSSL_RE) -> list:
    """Host-visible paths of the files mapped by ``pid`` whose name matches ``pattern``."""
    out = []
    seen = set()
    with open("/proc/%d/maps" % pid) as f:
        lines = f.readlines()
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5].rstrip("\n")
        if path.endswith(" (deleted)"):
            path = path[:-len(" (deleted)")]
        if not path.startswith("/") or not pattern.match(os.path.basename(path)):
            continue
        if path in seen:
            continue
        seen.add(path)
        out.append(_host_path(pid, path, "/proc/%d/map_files/%s" % (pid, parts[0])))
    return out


def find_libssl_in_process(pid: int, cache: Optional[TargetCache] = None) -> list:
    """Host-visible paths of the OpenSSL libraries used by ``pid``.

    libssl*.so* files mapped (from /proc/PID/maps) plus the main executable
    when it defines SSL_write/SSL_read (static OpenSSL/BoringSSL). Container
    processes get /proc/PID/root/<path>. Deduplicated by (st_dev, st_ino).
    Returns [] when the process is gone or unreadable.
    """
    cache = cache or DEFAULT_CACHE
    try:
        candidates = _libssl_mappings(pid)
    except OSError:
        return []
    try:
        exe = _exe_path(pid)
        ident, mtime = _file_id(exe)
        if isinstance(_openssl_result(exe, ident, mtime, True, cache), OpenSSLTarget):
            candidates.append(exe)
    except OSError:
        pass
    out, keys = [], set()
    for p in candidates:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in keys:
            keys.add((st.st_dev, st.st_ino))
            out.append(p)
    return out


def discover(pid: int, cache: Optional[TargetCache] = None) -> list:
    """All TLS targets of process ``pid``: [OpenSSLTarget | GoTarget | Skip].

    * the executable: GoTarget when it is a Go binary (Skip with the reason
      when the Go binary is unusable), else OpenSSLTarget(static=True) when it
      defines the OpenSSL functions; nothing for an ordinary executable;
    * every mapped libssl: OpenSSLTarget, or Skip with the reason;
    * a mapped gRPC core library with BoringSSL inside and no SSL symbols: Skip saying why.

    Results are cached per file (see TargetCache): repeated calls for
    processes sharing a binary or library cost no ELF parsing. Targets of the
    same file compare equal on ``key``; attach once per key.
    """
    cache = cache or DEFAULT_CACHE
    proc = "/proc/%d" % pid
    try:
        exe = _exe_path(pid)
    except FileNotFoundError:
        return [Skip(proc, "process %d exited" % pid)]
    except OSError as exc:
        return [Skip(proc, "cannot inspect process %d: %s" % (pid, exc.strerror or exc))]

    out: list = []
    keys = set()
    try:
        ident, mtime = _file_id(exe)
    except OSError as exc:
        out.append(Skip(exe, _describe_error(exc)))
    else:
        res = _go_result(exe, ident, mtime, cache)
        if res is None:
            st = _openssl_result(exe, ident, mtime, True, cache)
            if isinstance(st, OpenSSLTarget):
                res = st
        if res is not None:
            out.append(res)
            if not isinstance(res, Skip):
                keys.add(res.key)

    try:
        libs = _libssl_mappings(pid)
    except FileNotFoundError:
        return out or [Skip(proc, "process %d exited" % pid)]
    except OSError as exc:
        out.append(Skip(proc + "/maps", "unreadable: %s" % (exc.strerror or exc)))
        return out
    for lib in libs:
        try:
            ident, mtime = _file_id(lib)
        except OSError as exc:
            out.append(Skip(lib, _describe_error(exc)))
            continue
        if ident in keys:
            continue
        keys.add(ident)
        out.append(_openssl_result(lib, ident, mtime, False, cache))
    try:
        grpc_libs = _libssl_mappings(pid, _GRPC_CORE_RE)
    except OSError:
        grpc_libs = []
    for lib in grpc_libs:
        try:
            ident, mtime = _file_id(lib)
        except OSError:
            continue
        if ident in keys:
            continue
        keys.add(ident)
        res = cache.get(ident, mtime, "grpc-core", lambda: _analyse_grpc_core(lib))
        if res[0] == "skip":
            out.append(Skip(lib, res[1]))
    return out


def discover_many(pids, cache: Optional[TargetCache] = None):
    """Discover over many processes, grouped per file.

    Returns ``(targets, skips)``: ``targets`` maps ``target.key`` to
    ``(target, [pids])`` (one attachment each), ``skips`` lists
    ``(pid, Skip)``.
    """
    cache = cache or DEFAULT_CACHE
    targets: dict = {}
    skips: list = []
    for pid in pids:
        for t in discover(pid, cache):
            if isinstance(t, Skip):
                skips.append((pid, t))
            elif t.key in targets:
                targets[t.key][1].append(pid)
            else:
                targets[t.key] = (t, [pid])
    return targets, skips
