"""Go crypto/tls attach points: where to put uprobes in a Go binary.

What this module finds (amd64 only, Go >= 1.17, the register ABI):

* the Go version, from ``.go.buildinfo`` (1.18+ inline strings or the older
  pointer format) or, failing that, ``runtime.buildVersion``;
* ``crypto/tls.(*Conn).Write`` and ``crypto/tls.(*Conn).Read``: entry address
  and size, from ``.symtab`` or, in stripped binaries, from ``.gopclntab``
  (Go 1.16/1.17, 1.18/1.19 and 1.20+ layouts; located by section name or by
  scanning the read-only data for the header magic);
* every ``RET`` inside ``Read`` (capstone): Go moves goroutine stacks, so
  uretprobes (which overwrite the return address on the stack) are unsafe;
  the BPF side puts plain uprobes on each RET instead;
* the first instruction after the stack-growth check of each function
  (``cmp rsp, [r14+0x10]; jbe morestack``): when the stack must grow the
  morestack path jumps back to the entry, so an entry uprobe can fire twice
  for one call, a uprobe after the check fires once;
* with DWARF present, the member offsets leading from ``*tls.Conn`` to the
  socket's fd.

Nothing here loads BPF. Every public function raises only on programming
errors; bad input comes back as :class:`~bpf.tls_targets.Skip` through
``tls_targets.go_tls_target``.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Callable, Optional

from . import uprobe_sites
from .elfsym import ElfError, ElfImage

BUILDINFO_MAGIC = b"\xff Go buildinf:"
MIN_GO = (1, 17)                      # first release with the amd64 register ABI

PCLN_MAGICS = {
    0xFFFFFFFB: "1.2",                # Go 1.2 - 1.15
    0xFFFFFFFA: "1.16",               # Go 1.16 - 1.17
    0xFFFFFFF0: "1.18",               # Go 1.18 - 1.19
    0xFFFFFFF1: "1.20",               # Go 1.20+
}

WRITE_FUNC = "crypto/tls.(*Conn).Write"
READ_FUNC = "crypto/tls.(*Conn).Read"
MEMMOVE_FUNC = "runtime.memmove"      # copy(b, c.input...) inside Read: (to, from, n) in RAX, RBX, RCX

# Go internal ABI on amd64 (ABIInternal, Go >= 1.17).
GO_AMD64_ABI = {
    "args": ["rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11"],
    "results": ["rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11"],
    "g": "r14",                       # current goroutine (*runtime.g)
    # func (c *Conn) Write(b []byte) (int, error) / Read(b []byte) (int, error)
    "entry": {"conn": "rax", "buf": "rbx", "len": "rcx", "cap": "rdi"},
    "ret": {"n": "rax", "err_type": "rbx", "err_data": "rcx"},
    # struct pt_regs field names as used by BCC C code
    "pt_regs": {"rax": "ax", "rbx": "bx", "rcx": "cx", "rdi": "di", "r14": "r14", "rsp": "sp"},
}


class GoError(Exception):
    """The binary is Go but cannot be used (message = reason)."""


# ----------------------------------------------------------------------------------------
# build info / version
# ----------------------------------------------------------------------------------------

def _uvarint(data: bytes, pos: int):
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise GoError("truncated varint in build info")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def parse_buildinfo(data: bytes, read_vaddr: Optional[Callable[[int, int], bytes]] = None):
    """Parse a ``.go.buildinfo`` blob; returns ``(go_version, modinfo)``.

    Header: 14-byte magic, ptr size, flags (bit 0 big-endian, bit 1 inline
    strings). Go >= 1.18 (flag bit 1): at offset 32 two varint-length-prefixed
    strings. Older: at offset 16 two pointers to Go string headers
    ``{ptr, len}``; ``read_vaddr(vaddr, size)`` must read the process image.
    """
    if len(data) < 32 or not data.startswith(BUILDINFO_MAGIC):
        raise GoError("no Go build info header")
    ptr_size, flags = data[14], data[15]
    if flags & 0x2:
        n, pos = _uvarint(data, 32)
        if pos + n > len(data):
            raise GoError("truncated version string in build info")
        version = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        modinfo = ""
        try:
            n, pos = _uvarint(data, pos)
            modinfo = data[pos:pos + n].decode("utf-8", "replace")
        except GoError:
            pass
        return version, modinfo
    if ptr_size not in (4, 8):
        raise GoError("bad pointer size %d in build info" % ptr_size)
    if read_vaddr is None:
        raise GoError("pointer-format build info needs the image to resolve")
    order = ">" if flags & 0x1 else "<"
    word = order + ("Q" if ptr_size == 8 else "I")

    def go_string(header_vaddr):
        hdr = read_vaddr(header_vaddr, 2 * ptr_size)
        sptr, slen = struct.unpack(order + ("QQ" if ptr_size == 8 else "II"), hdr)
        if slen > 1 << 20:
            raise GoError("implausible string length in build info")
        return read_vaddr(sptr, slen).decode("utf-8", "replace") if slen else ""

    vptr = struct.unpack_from(word, data, 16)[0]
    mptr = struct.unpack_from(word, data, 16 + ptr_size)[0]
    version = go_string(vptr)
    try:
        modinfo = go_string(mptr) if mptr else ""
    except (GoError, ElfError):
        modinfo = ""
    return version, modinfo


_GOVER_RE = re.compile(r"go(\d+)\.(\d+)(?:\.(\d+))?")


def parse_go_version(version: str) -> Optional[tuple]:
    """``"go1.19.8"`` -> (1, 19, 8); ``"devel go1.22-abc"`` -> (1, 22, 0); else None."""
    m = _GOVER_RE.search(version or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_go_version(version: str) -> Optional[str]:
    """None when usable, else the reason it is refused."""
    parsed = parse_go_version(version)
    if parsed is None:
        return "unrecognised Go version string %r" % version
    if parsed[:2] < MIN_GO:
        return ("Go %s is older than go1.17: no register ABI on amd64, "
                "crypto/tls arguments are on the stack (not supported)" % version)
    return None


def find_buildinfo(img: ElfImage) -> Optional[bytes]:
    """Raw bytes of the build info blob (section, else magic search in data)."""
    sec = img.section(".go.buildinfo")
    if sec is not None and sec["sh_type"] != "SHT_NOBITS":
        data = img.read_at(sec["sh_offset"], min(sec["sh_size"], 64 * 1024))
        if data.startswith(BUILDINFO_MAGIC):
            return data
    if img.elf.num_sections():
        return None      # section table present but no .go.buildinfo: do not scan
    for seg in img.segments:
        if seg.executable or seg.filesz == 0:
            continue
        blob = img.read_at(seg.offset, seg.filesz)
        pos = blob.find(BUILDINFO_MAGIC)
        while pos >= 0:
            if pos % 16 == 0 or (seg.vaddr + pos) % 16 == 0:
                return blob[pos:pos + 64 * 1024]
            pos = blob.find(BUILDINFO_MAGIC, pos + 1)
    return None


def go_version_of(img: ElfImage) -> Optional[str]:
    """The Go version string, or None when the file is not a Go binary."""
    blob = find_buildinfo(img)
    if blob is not None:
        version, _mod = parse_buildinfo(blob, img.read_vaddr)
        if version:
            return version
    sym = _find_data_symbol(img, "runtime.buildVersion")
    if sym is not None:
        hdr = img.read_vaddr(sym, 16)
        sptr, slen = struct.unpack("<QQ", hdr)
        if 0 < slen < 256:
            return img.read_vaddr(sptr, slen).decode("utf-8", "replace")
    return None


def _find_data_symbol(img: ElfImage, name: str) -> Optional[int]:
    tab = img.section(".symtab")
    if tab is None or not hasattr(tab, "get_symbol_by_name"):
        return None
    syms = tab.get_symbol_by_name(name)
    for s in syms or ():
        if s["st_shndx"] != "SHN_UNDEF" and s["st_value"]:
            return s["st_value"]
    return None


# ----------------------------------------------------------------------------------------
# pclntab
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoFunc:
    name: str
    vaddr: int
    size: int
    source: str          # ".symtab" or ".gopclntab"


class PclnTab:
    """Read-only view of a Go pclntab (function table part only)."""

    def __init__(self, data: bytes, text_start_fallback: Optional[int] = None):
        if len(data) < 16:
            raise GoError("pclntab too short")
        magic = struct.unpack_from("<I", data, 0)[0]
        if magic not in PCLN_MAGICS:
            raise GoError("unknown pclntab magic 0x%08x" % magic)
        self.format = PCLN_MAGICS[magic]
        if self.format == "1.2":
            raise GoError("pclntab of Go <= 1.15 (magic 0xfffffffb): Go too old")
        if data[4:6] != b"\0\0" or data[6] not in (1, 2, 4) or data[7] not in (4, 8):
            raise GoError("bad pclntab header")
        p = self.ptr_size = data[7]
        wfmt = "<Q" if p == 8 else "<I"

        def word(i):
            off = 8 + i * p
            if off + p > len(data):
                raise GoError("pclntab header truncated")
            return struct.unpack_from(wfmt, data, off)[0]

        self.data = data
        self.nfunc = word(0)
        if self.format in ("1.18", "1.20"):
            self.text_start = word(2) or (text_start_fallback or 0)
            self.funcname_off = word(3)
            self.functab_off = word(7)
            self.field = 4
        else:                           # 1.16 / 1.17
            self.text_start = 0
            self.funcname_off = word(2)
            self.functab_off = word(6)
            self.field = p
        if self.format != "1.16" and not self.text_start:
            raise GoError("pclntab text start unknown")
        if not 0 < self.nfunc < 10_000_000:
            raise GoError("implausible pclntab function count %d" % self.nfunc)
        end = self.functab_off + (2 * self.nfunc + 1) * self.field
        if end > len(data) or self.funcname_off >= len(data):
            raise GoError("pclntab tables beyond its data (truncated?)")
        self._ffmt = "<I" if self.field == 4 else "<Q"

    def _field(self, off):
        if off + self.field > len(self.data):
            raise GoError("pclntab read beyond its data")
        return struct.unpack_from(self._ffmt, self.data, off)[0]

    def entry(self, i: int) -> int:
        """Entry vaddr of function i (i == nfunc gives the end of the last one)."""
        v = self._field(self.functab_off + 2 * i * self.field)
        return v + self.text_start if self.field == 4 else v

    def _nameoff(self, i: int) -> int:
        funcoff = self._field(self.functab_off + (2 * i + 1) * self.field)
        fpos = self.functab_off + funcoff + self.field     # skip _func.entry(off)
        if fpos + 4 > len(self.data):
            raise GoError("pclntab _func beyond its data")
        return struct.unpack_from("<i", self.data, fpos)[0]

    def name(self, i: int) -> str:
        start = self.funcname_off + self._nameoff(i)
        end = self.data.find(b"\0", start)
        if start < 0 or end < 0:
            raise GoError("pclntab function name out of range")
        return self.data[start:end].decode("utf-8", "replace")

    def sane(self) -> bool:
        """Cheap plausibility check, for candidates found by magic search."""
        try:
            prev = -1
            for i in range(min(self.nfunc, 8)):
                e = self.entry(i)
                if e < prev:
                    return False
                prev = e
                n = self.name(i)
                if not n or not n.isprintable():
                    return False
            return self.entry(self.nfunc) >= prev
        except GoError:
            return False

    def find(self, names) -> dict:
        """{name: GoFunc} for the wanted names (size from the next entry)."""
        wanted = {}
        blob = self.data
        base = self.funcname_off
        for n in names:
            needle = b"\0" + n.encode() + b"\0"
            pos = blob.find(needle, base - 1 if base else 0)
            while pos >= 0:
                wanted[pos + 1 - base] = n
                pos = blob.find(needle, pos + 1)
        if not wanted:
            return {}
        out = {}
        for i in range(self.nfunc):
            nm = wanted.get(self._nameoff(i))
            if nm is not None and nm not in out:
                start, end = self.entry(i), self.entry(i + 1)
                out[nm] = GoFunc(nm, start, end - start, ".gopclntab")
                if len(out) == len(set(wanted.values())):
                    break
        return out


_PCLN_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")
_PCLN_SEARCH_SECTIONS = (".data.rel.ro", ".rodata", ".noptrdata")


def find_pclntab(img: ElfImage) -> PclnTab:
    """Locate and parse the pclntab (by section name, else by magic search)."""
    text = img.section(".text")
    text_fallback = text["sh_addr"] if text is not None else None
    for name in _PCLN_SECTIONS:
        sec = img.section(name)
        if sec is not None and sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"]:
            return PclnTab(img.read_at(sec["sh_offset"], sec["sh_size"]), text_fallback)
    # No named section (stripped PIE, or section headers removed): search the magic.
    regions = []
    for name in _PCLN_SEARCH_SECTIONS:
        sec = img.section(name)
        if sec is not None and sec["sh_type"] != "SHT_NOBITS":
            regions.append((sec["sh_offset"], sec["sh_size"]))
    if not regions:
        regions = [(s.offset, s.filesz) for s in img.segments if not s.executable and s.filesz]
    if text_fallback is None:
        exe = [s for s in img.segments if s.executable]
        text_fallback = exe[0].vaddr if exe else None
    needles = [struct.pack("<I", m) + b"\0\0\x01\x08" for m in PCLN_MAGICS if m != 0xFFFFFFFB]
    last_err = "no pclntab magic found"
    for off, size in regions:
        blob = img.read_at(off, size)
        for needle in needles:
            pos = blob.find(needle)
            while pos >= 0:
                if pos % 8 == 0:
                    try:
                        tab = PclnTab(blob[pos:], text_fallback)
                        if tab.sane():
                            return tab
                    except GoError as e:
                        last_err = str(e)
                pos = blob.find(needle, pos + 1)
    raise GoError("no .gopclntab section and no usable pclntab in the data (%s)" % last_err)


# ----------------------------------------------------------------------------------------
# code analysis (capstone)
# ----------------------------------------------------------------------------------------

def _disassembler():
    import capstone
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    return md


def find_rets(code: bytes, vaddr: int) -> list:
    """Virtual addresses of every RET (C3 / C2 iw) in the function body."""
    out = []
    for addr, size, mnem, _ops in _disassembler().disasm_lite(code, vaddr):
        if mnem in ("ret", "retq") and code[addr - vaddr] in (0xC3, 0xC2):
            out.append(addr)
    return out


def find_calls_to(code: bytes, vaddr: int, target: int) -> list:
    """Addresses of the direct calls (``call rel32``) to ``target`` in the function body."""
    out = []
    for addr, size, mnem, _ops in _disassembler().disasm_lite(code, vaddr):
        if mnem == "call" and size == 5 and code[addr - vaddr] == 0xE8:
            rel = struct.unpack_from("<i", code, addr - vaddr + 1)[0]
            if addr + 5 + rel == target:
                out.append(addr)
    return out


def find_stack_check_jump(code: bytes, vaddr: int) -> Optional[int]:
    """Address of the prologue's ``jbe morestack`` (a conditional jump: emulated by the
    kernel, unlike the ``cmp`` before it and, before Go 1.21, the ``sub $x,%rsp`` after it).
    A uprobe there sees the entry registers and the flags of the ``cmp``: CF or ZF set means
    the morestack path, which re-enters the function from the top."""
    after = find_after_stack_check(code, vaddr)
    if after is None:
        return None
    for addr, size, mnem, _ops in _disassembler().disasm_lite(code[:after - vaddr], vaddr):
        if addr + size == after:
            raw = code[addr - vaddr:after - vaddr]
            if mnem == "jbe" and (raw[:1] == b"\x76" or raw[:2] == b"\x0f\x86"):
                return addr
    return None


def find_after_stack_check(code: bytes, vaddr: int) -> Optional[int]:
    """Address just after the prologue's stack-growth check, or None.

    Go amd64 prologue: ``cmp rsp, qword ptr [r14 + 0x10]; jbe morestack``
    (large frames: ``lea r12, [rsp - N]; cmp r12, qword ptr [r14 + 0x10]; jbe``).
    Neither instruction touches the argument registers.
    """
    insns = list(_disassembler().disasm_lite(code[:64], vaddr))[:6]
    for i, (addr, size, mnem, ops) in enumerate(insns):
        if mnem == "cmp" and "[r14 + 0x10]" in ops and i + 1 < len(insns):
            j_addr, j_size, j_mnem, _ = insns[i + 1]
            if j_mnem in ("jbe", "jb", "jna", "jnae"):
                return j_addr + j_size
            return None
        if mnem.startswith("j") or mnem in ("call", "ret", "push", "sub"):
            return None
    return None


# ----------------------------------------------------------------------------------------
# DWARF: the chain *tls.Conn -> fd
# ----------------------------------------------------------------------------------------

FD_CHAIN = (
    ("crypto/tls.Conn", "conn"),      # net.Conn interface {itab, data}
    ("net.conn", "fd"),               # *net.netFD   (net.TCPConn = struct{conn})
    ("net.netFD", "pfd"),             # internal/poll.FD (embedded by value)
    ("internal/poll.FD", "Sysfd"),    # int
)


def dwarf_fd_offsets(img: ElfImage) -> Optional[dict]:
    """{"tls.Conn.conn": o1, "net.conn.fd": o2, "net.netFD.pfd": o3,
    "poll.FD.Sysfd": o4} from DWARF, or None without usable .debug_info."""
    elf = img.elf
    if elf.num_sections() == 0 or not elf.has_dwarf_info():
        return None
    if img.section(".debug_info") is None and img.section(".zdebug_info") is None:
        return None
    dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False, follow_links=False)
    want = {t: m for t, m in FD_CHAIN}
    got: dict = {}
    cus = list(dwarf.iter_CUs())

    def cu_name(cu):
        a = cu.get_top_DIE().attributes.get("DW_AT_name")
        return a.value.decode("utf-8", "replace") if a else ""

    # Go's linker puts all type DIEs in the "runtime" unit: look there first.
    cus.sort(key=lambda cu: cu_name(cu) != "runtime")
    for cu in cus:
        for die in cu.get_top_DIE().iter_children():
            if die.tag != "DW_TAG_structure_type":
                continue
            a = die.attributes.get("DW_AT_name")
            tname = a.value.decode("utf-8", "replace") if a else ""
            if tname not in want or tname in got:
                continue
            for m in die.iter_children():
                if m.tag != "DW_TAG_member":
                    continue
                mn = m.attributes.get("DW_AT_name")
                loc = m.attributes.get("DW_AT_data_member_location")
                if mn and loc and mn.value.decode() == want[tname] and isinstance(loc.value, int):
                    got[tname] = loc.value
                    break
        if len(got) == len(want):
            break
    if len(got) != len(want):
        return None
    return {
        "tls.Conn.conn": got["crypto/tls.Conn"],
        "net.conn.fd": got["net.conn"],
        "net.netFD.pfd": got["net.netFD"],
        "poll.FD.Sysfd": got["internal/poll.FD"],
    }


# ----------------------------------------------------------------------------------------
# the whole analysis
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoProbePoint:
    """One uprobe location: give ``vaddr`` to BCC, ``offset`` to the kernel."""

    vaddr: int
    offset: int
    kind: str = ""          # uprobe_sites.classify() of the instruction there


@dataclass(frozen=True)
class GoFuncInfo:
    name: str
    entry: GoProbePoint
    size: int
    after_stack_check: Optional[GoProbePoint]   # fires once per call (slow kind before 1.21)
    rets: tuple = ()                            # GoProbePoint per RET (Read only)
    source: str = ".symtab"
    stack_check_jump: Optional[GoProbePoint] = None  # the jbe: emulated, flags tell morestack
    copy_calls: tuple = ()                      # Read: its calls to runtime.memmove


def analyse_go(img: ElfImage) -> dict:
    """Raw Go analysis: version, functions, RETs, DWARF offsets.

    Raises GoError (reason) / ElfError; returns a dict consumed by
    ``tls_targets.go_tls_target``. Returns {"go": False} for non-Go files.
    """
    version = go_version_of(img)
    if version is None:
        if not any(img.section(n) is not None for n in
                   (".gopclntab", ".data.rel.ro.gopclntab", ".go.buildinfo", ".gosymtab")):
            return {"go": False}
        raise GoError("Go binary without readable build info (version unknown)")
    reason = check_go_version(version)
    if reason:
        raise GoError(reason)

    funcs = {}
    stripped = img.section(".symtab") is None
    wanted = [WRITE_FUNC, READ_FUNC, MEMMOVE_FUNC]
    if not stripped:
        for name, sym in img.find_functions(wanted).items():
            if sym.size:
                funcs[name] = GoFunc(name, sym.vaddr, sym.size, ".symtab")
    if len(funcs) < 3:
        try:
            tab = find_pclntab(img)
        except GoError as e:
            if stripped:
                raise GoError("stripped Go binary (%s) and %s" % (version, e))
            if len(funcs) < 2:
                raise
            tab = None
        if tab is not None:
            for name, fn in tab.find(wanted).items():
                funcs.setdefault(name, fn)
    memmove = funcs.pop(MEMMOVE_FUNC, None)
    missing = [n for n in (WRITE_FUNC, READ_FUNC) if n not in funcs]
    if missing:
        raise GoError("Go binary (%s) does not contain %s (no crypto/tls use, or inlined)"
                      % (version, " / ".join(missing)))

    infos = {}
    for name, fn in funcs.items():
        if not 0 < fn.size < 1 << 20:
            raise GoError("implausible size %d for %s" % (fn.size, name))
        off = img.vaddr_to_offset(fn.vaddr, executable=True)
        img.vaddr_to_offset(fn.vaddr + fn.size - 1, executable=True)
        code = img.read_at(off, fn.size)

        def point(va, _fn=fn, _off=off, _code=code):
            return GoProbePoint(va, _off + (va - _fn.vaddr),
                                uprobe_sites.classify(_code[va - _fn.vaddr:va - _fn.vaddr + 16]))

        asc = find_after_stack_check(code, fn.vaddr)
        jbe = find_stack_check_jump(code, fn.vaddr)
        rets = copies = ()
        if name == READ_FUNC:
            rets = tuple(point(a) for a in find_rets(code, fn.vaddr))
            if not rets:
                raise GoError("no RET instruction found in %s" % name)
            if memmove is not None:
                copies = tuple(point(a) for a in find_calls_to(code, fn.vaddr, memmove.vaddr))
        infos[name] = GoFuncInfo(name, point(fn.vaddr), fn.size,
                                 point(asc) if asc is not None else None, rets, fn.source,
                                 point(jbe) if jbe is not None else None, copies)
    try:
        fd_offsets = dwarf_fd_offsets(img)
    except Exception:          # DWARF is optional; a broken one must not lose the target
        fd_offsets = None
    return {"go": True, "version": version, "stripped": stripped,
            "funcs": infos, "fd_offsets": fd_offsets}
