"""Where a uprobe is cheap: the instruction it replaces, and TLS attach sites chosen for it.

A uprobe replaces one instruction with int3.  On a hit, the x86-64 kernel either emulates the
original instruction in place (arch/x86/kernel/uprobes.c: ``branch_setup_xol_ops`` for
``call rel32``, ``jmp rel8/rel32``, ``jcc`` and the kernel's own nop encodings,
``push_setup_xol_ops`` for ``push reg``), or single-steps a copy of it out of line: a second
trap per hit.  Measured on this project's VMs (bench/uprobe_cost.py, KERNEL-FACTS.md) the
first kind costs ~0.45 us per hit, the second ~16 us.  Library entry points often start with
the second kind (``sub $x,%rsp``, ``endbr64``, ``mov``), so this module picks, by disassembly,
an address with the same meaning whose instruction is emulated:

* the symbol itself when its first instruction is emulated (``SSL_do_handshake``: push);
* after a leading ``endbr64`` when a ``push`` follows (same registers, same stack);
* for OpenSSL's data functions, the internal function that both members of a pair call with
  the caller's own arguments (``SSL_read``/``SSL_read_ex`` -> ``ssl_read_internal(s, buf,
  num, &readbytes)``, ``SSL_write``/``SSL_write_ex`` -> ``ssl_write_internal``, OpenSSL 1.1.1
  and 3.x).  Both members must reach the same callee through a ``call rel32`` before any
  other call, with ``s`` and ``buf`` untouched and ``num`` passed through (``movslq`` for the
  int variants), so the callee's arguments are exactly (SSL*, buf, num, size_t *out); it
  returns > 0 with the byte count in ``*out``, which is what SSL_read/SSL_read_ex read out;
* for a write (an entry probe only), failing that, the ``call`` instruction itself, where the
  registers hold the same arguments;
* else the symbol, with the reason.

Nothing here loads BPF or raises on bad input (callers catch around the ELF reading).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# The kernel's nop encodings (arch/x86/include/asm/nops.h, x86_nops[1..8]): only these exact
# byte strings are emulated as nops (plus prefixes + 0x90).
KERNEL_NOPS = (
    b"\x90",
    b"\x66\x90",
    b"\x0f\x1f\x00",
    b"\x0f\x1f\x40\x00",
    b"\x0f\x1f\x44\x00\x00",
    b"\x66\x0f\x1f\x44\x00\x00",
    b"\x0f\x1f\x80\x00\x00\x00\x00",
    b"\x0f\x1f\x84\x00\x00\x00\x00\x00",
)
EMULATED_KINDS = ("push", "call", "jmp", "jcc", "nop")
ENDBR64 = b"\xf3\x0f\x1e\xfa"
SCAN_BYTES = 160          # how far into a wrapper the forwarding call is looked for
SCAN_INSNS = 32


def classify(code: bytes) -> str:
    """Kind of the instruction at the start of ``code``, as the kernel sees it:
    one of EMULATED_KINDS, or "endbr64" / "sub" / "mov" / ... (single-stepped), or "?"."""
    if not code:
        return "?"
    for nop in KERNEL_NOPS:
        if code.startswith(nop):
            return "nop"
    b0 = code[0]
    i = 0
    while i < len(code) and code[i] in (0x66, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x36, 0x64, 0x65):
        i += 1
    if i < len(code) and code[i] == 0x90 and code[:i].count(0xF3) == 0:
        return "nop"                        # prefix* + nop (0xf3 0x90 is pause)
    if 0x50 <= b0 <= 0x57 or (b0 == 0x41 and len(code) > 1 and 0x50 <= code[1] <= 0x57):
        return "push"
    if b0 == 0xE8:
        return "call"
    if b0 in (0xE9, 0xEB):
        return "jmp"
    if 0x70 <= b0 <= 0x7F or (b0 == 0x0F and len(code) > 1 and 0x80 <= code[1] <= 0x8F):
        return "jcc"
    if code.startswith(ENDBR64):
        return "endbr64"
    insn = _decode(code, 0)
    if not insn:
        return "?"
    mnem = insn[2]
    if mnem in EMULATED_KINDS or mnem.startswith(("j", "nop", "call", "push")):
        # an encoding the kernel does not emulate (e.g. 48 55, a nop not in its table)
        return "%s (%s)" % (mnem, code[:insn[1]].hex(" "))
    return mnem


def is_emulated(kind: str) -> bool:
    return kind in EMULATED_KINDS


_MD = {}


def _cs(detail=False):
    md = _MD.get(detail)
    if md is None:
        import capstone
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        md.detail = detail
        _MD[detail] = md
    return md


def _decode(code: bytes, vaddr: int):
    """(address, size, mnemonic, op_str) of the first instruction, or None."""
    for insn in _cs().disasm_lite(code[:16], vaddr, 1):
        return insn
    return None


def describe(code: bytes, vaddr: int = 0) -> str:
    """``push r13``-style text of the first instruction (for logs)."""
    insn = _decode(code, vaddr)
    if insn is None:
        return "?"
    return ("%s %s" % (insn[2], insn[3])).strip()


# ----------------------------------------------------------------------------------------
# sites
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """A uprobe address chosen for ``func`` (a public function name)."""

    func: str             # the function whose semantics the probe implements
    vaddr: int            # for BCC attach_uprobe(addr=)
    offset: int           # file offset
    kind: str             # classify() of the instruction there
    insn: str             # its text, e.g. "push r13"
    where: str            # e.g. "SSL_read+0", "ssl_read_internal+0", "callee 0x35290 of SSL_read"
    mode: str             # "symbol": the function's own arguments and return value
    #                       "internal": (SSL*, buf, size_t num, size_t *out), ret > 0 -> *out
    #                       "callsite": registers as passed to the internal function (entry only)
    #                       "covered": no probe: the function calls the other member of its
    #                       pair with its own arguments, whose probes see the call
    why: str = ""         # why no emulated site was taken (fallback), else ""

    @property
    def emulated(self) -> bool:
        return is_emulated(self.kind)

    def log_text(self, path: str, kind: str = "uprobe") -> str:
        if self.mode == "covered":
            return "no probe for %s: it calls %s, probed, in %s" % (self.func, self.where, path)
        s = "%s %s -> %s (%s: %s) in %s" % (kind, self.func, self.where, self.kind,
                                             "emulated" if self.emulated else "single-stepped",
                                             path)
        return s + ("; %s" % self.why if self.why else "")


_ARG_ALIASES = {
    "rdi": ("rdi", "edi", "di", "dil"),
    "rsi": ("rsi", "esi", "si", "sil"),
    "rdx": ("rdx", "edx", "dx", "dl", "dh"),
    "rcx": ("rcx", "ecx", "cx", "cl", "ch"),
}


def _reg64(name: str) -> Optional[str]:
    for base, names in _ARG_ALIASES.items():
        if name in names:
            return base
    return None


def find_forward_call(img, vaddr: int, size: int, int_num: bool):
    """The internal function a public SSL data function hands its arguments to.

    Linear disassembly of the function's start up to its first ``call``, with no branch on
    the way but the int variants' ``test edx,edx; js <error>`` (num < 0): it must be a
    ``call rel32`` to code in the same file, reached with rdi (SSL*) and rsi (buf) unwritten,
    rdx (num) unwritten or, for the int variants (``int_num``), only sign-extended in place
    (``movsxd rdx, edx``), and for the ``_ex`` variants rcx (the size_t* out-parameter)
    unwritten.  Returns (callee vaddr, call-site vaddr) or (None, reason).
    """
    n = min(size or SCAN_BYTES, SCAN_BYTES)
    try:
        code = img.read_vaddr(vaddr, n)
    except Exception as exc:
        return None, "cannot read code (%s)" % exc
    written = set()
    prev = None
    for count, insn in enumerate(_cs(detail=True).disasm(code, vaddr)):
        if count >= SCAN_INSNS:
            break
        m = insn.mnemonic
        if m.startswith("j") and m != "jmp":
            # a branch before the call could reach the data path without it; the only one
            # allowed is the int variants' `if (num < 0) return -1` (test edx,edx; js)
            if not (int_num and m == "js" and prev == ("test", "edx, edx")):
                return None, "a branch at 0x%x (%s %s) may bypass the call" % (
                    insn.address, m, insn.op_str)
        prev = (m, insn.op_str)
        if m == "call":
            raw = bytes(insn.bytes)
            if raw[0] != 0xE8 or len(raw) != 5:
                return None, "first call is not a direct call (%s %s)" % (m, insn.op_str)
            bad = {"rdi", "rsi"} & written
            if int_num:
                if "rdx" in written and "rdx!" not in written:
                    bad.add("rdx")
            else:
                bad |= {"rdx", "rcx"} & written
            bad.discard("rdx!")
            if bad:
                return None, "%s changed before the call at 0x%x" % (",".join(sorted(bad)),
                                                                     insn.address)
            target = insn.operands[0].imm
            try:
                img.vaddr_to_offset(target, executable=True)
            except Exception:
                return None, "call target 0x%x outside the file's code" % target
            if img.in_plt(target):
                return None, "first call goes through the PLT (0x%x)" % target
            return target, insn.address
        if m in ("ret", "jmp") or m.startswith("ret"):
            return None, "no call before the first %s" % m
        try:
            _r, w = insn.regs_access()
        except Exception:
            return None, "cannot decode register use at 0x%x" % insn.address
        for reg in w:
            base = _reg64(insn.reg_name(reg))
            if base is None:
                continue
            if base == "rdx" and int_num and m == "movsxd" and insn.op_str == "rdx, edx":
                written.add("rdx!")      # SSL_read/SSL_write: (size_t)num, same value
                continue
            written.add(base)
    return None, "no call in the first %d bytes" % n


def entry_site(img, vaddr: int, func: str, where: str, mode: str, note: str = "") -> Site:
    """Site at a function entry: +0, or just after endbr64 when a push follows (endbr64
    touches neither registers nor stack, so the return address is still at (%rsp))."""
    code = img.read_vaddr(vaddr, 16)
    kind = classify(code)
    skip = 0
    if kind == "endbr64" and classify(code[4:]) == "push":
        skip = 4
    return Site(func, vaddr + skip, img.vaddr_to_offset(vaddr + skip, executable=True),
                classify(code[skip:]), describe(code[skip:], vaddr + skip),
                "%s+%d%s" % (where, skip, note), mode)


# the pairs of public data functions: (name, num is an int)
OPENSSL_PAIRS = {
    "read": (("SSL_read", True), ("SSL_read_ex", False)),
    "write": (("SSL_write", True), ("SSL_write_ex", False)),
}


def choose_openssl_sites(img, syms: dict, entry_only=("SSL_do_handshake",),
                         names: Optional[dict] = None) -> dict:
    """{public function: Site} for the OpenSSL data functions in ``syms`` ({name:
    ElfSymbol}) and for the ``entry_only`` ones (entry_site: +0 or after endbr64).

    ``names`` maps a vaddr to a local symbol name, for logs (else .symtab is asked).
    """
    names = names or {}
    out = {}
    for fn in entry_only:
        if fn in syms:
            s = entry_site(img, syms[fn].vaddr, fn, fn, "symbol")
            out[fn] = s if s.emulated else Site(
                fn, s.vaddr, s.offset, s.kind, s.insn, s.where, s.mode,
                "no cheaper address with the same arguments is known for %s" % fn)
    for family, members in OPENSSL_PAIRS.items():
        present = [(fn, int_num) for fn, int_num in members if fn in syms]
        own = {fn: entry_site(img, syms[fn].vaddr, fn, fn, "symbol") for fn, _ in present}
        calls = {}
        reasons = []
        for fn, int_num in present:
            tgt, info = find_forward_call(img, syms[fn].vaddr, syms[fn].size, int_num)
            if tgt is None:
                reasons.append("%s: %s" % (fn, info))
            else:
                calls[fn] = (tgt, info)
        callee = None
        if len(present) == 2 and len(calls) == 2:
            targets = {t for t, _ in calls.values()}
            if len(targets) == 1:
                callee = targets.pop()
            else:
                reasons.append("%s call different functions (%s)" % (
                    " and ".join(fn for fn, _ in present),
                    ", ".join("0x%x" % t for t, _ in calls.values())))
        elif len(present) == 1 and present[0][0] in calls:
            reasons.append("only %s is defined: its callee cannot be confirmed by the other "
                           "member of the pair" % present[0][0])
        csite = None
        if callee is not None:
            label = names.get(callee) or img.function_names_at([callee]).get(callee) or \
                "0x%x" % callee
            note = " (called by %s)" % ", ".join(
                "%s+%d" % (fn, calls[fn][1] - syms[fn].vaddr) for fn, _ in present)
            csite = entry_site(img, callee, "", label, "internal", note)
            if not csite.emulated:
                reasons.append("their callee %s starts with %s" % (label, csite.insn))
                csite = None
        for fn, _ in present:
            other = [o for o, _ in present if o != fn]
            if csite is None and fn in calls and other and calls[fn][0] == syms[other[0]].vaddr:
                # fn hands its arguments to the other public function (SSL_read ->
                # SSL_read_ex): the other's probes see this call; a probe here would count
                # it twice
                at = calls[fn][1]
                out[fn] = Site(fn, at, img.vaddr_to_offset(at, executable=True), "call",
                               describe(img.read_vaddr(at, 5), at),
                               "%s (called at %s+%d)" % (other[0], fn, at - syms[fn].vaddr),
                               "covered")
                continue
            if own[fn].emulated:
                # the symbol itself is cheap: no need to move (and never mix with the callee,
                # which would see the same call twice)
                if csite is None:
                    out[fn] = own[fn]
                    continue
            if csite is not None:
                out[fn] = Site(fn, csite.vaddr, csite.offset, csite.kind, csite.insn,
                               csite.where, "internal")
                continue
            public = {sym.vaddr for sym in syms.values()}
            if family == "write" and fn in calls and calls[fn][0] not in public:
                # (a call of another public function, e.g. SSL_write_ex, would be probed
                # there too: the same write twice)
                tgt, at = calls[fn]
                code = img.read_vaddr(at, 5)
                out[fn] = Site(fn, at, img.vaddr_to_offset(at, executable=True), classify(code),
                               describe(code, at), "%s+%d" % (fn, at - syms[fn].vaddr),
                               "callsite")
                continue
            s = own[fn]
            why = "; ".join(reasons) or "no emulated site found"
            out[fn] = Site(fn, s.vaddr, s.offset, s.kind, s.insn, s.where, s.mode,
                           "" if s.emulated else why)
    return out


def fallback_sites(img, syms: dict, why: str) -> dict:
    """Every function at its own symbol (when the analysis above failed)."""
    out = {}
    for fn, sym in syms.items():
        try:
            code = img.read_vaddr(sym.vaddr, 16)
            kind, text = classify(code), describe(code, sym.vaddr)
        except Exception:
            kind, text = "?", "?"
        out[fn] = Site(fn, sym.vaddr, sym.offset, kind, text, fn + "+0", "symbol",
                       "" if is_emulated(kind) else why)
    return out
