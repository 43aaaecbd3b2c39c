"""ELF helpers for finding uprobe attach points (pyelftools, no BPF).

Two address spaces matter when attaching a uprobe:

* ``vaddr``: the ELF virtual address (a symbol's ``st_value``). This is what
  BCC 0.26 ``BPF.attach_uprobe(name=path, addr=vaddr)`` expects: BCC itself
  (``bcc_resolve_symname``) translates it to a file offset through the
  executable ``PT_LOAD`` segment that contains it.
* ``offset``: the file offset. This is what the kernel's uprobe interface
  (``perf_event_open`` uprobe PMU, ``uprobe_events``, libbpf
  ``bpf_program__attach_uprobe(func_offset=...)``) expects.

For shared libraries linked by GNU ld the two are usually equal; for Go and
other non-PIE executables they differ (``.text`` at vaddr 0x401000, offset
0x1000). Every attach point below carries both.

Everything here works on an open :class:`ElfImage`; corrupt input raises
:class:`ElfError` (or whatever pyelftools raises; callers that must never
raise wrap the whole analysis, see ``tls_targets``).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Iterable, Optional

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

ELF_MAGIC = b"\x7fELF"


class ElfError(Exception):
    """The file is not a usable ELF file (the message says why)."""


@dataclass(frozen=True)
class ElfSymbol:
    """One defined function symbol and where it lives in the file."""

    name: str               # without any "@VERSION" / "@@VERSION" suffix
    vaddr: int              # st_value: for BCC attach_uprobe(addr=...)
    offset: int             # file offset: for the kernel uprobe API
    size: int               # st_size (0 when unknown)
    table: str              # ".dynsym" or ".symtab"
    version: Optional[str] = None  # e.g. "OPENSSL_3.0.0" when versioned


@dataclass(frozen=True)
class LoadSegment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & 0x1)  # PF_X


class ElfImage:
    """An ELF file opened for reading, with cached segments and symbols.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "rb")
        try:
            head = self._f.read(64)
            if len(head) < 4 or head[:4] != ELF_MAGIC:
                raise ElfError("not an ELF file")
            if len(head) < 64:
                raise ElfError("truncated ELF header")
            self._f.seek(0, os.SEEK_END)
            self.file_size = self._f.tell()
            self._f.seek(0)
            self._check_tables(head)
            self.elf = ELFFile(self._f)
            if self.elf.elfclass != 64 or self.elf["e_machine"] != "EM_X86_64":
                raise ElfError("not an x86-64 ELF file (%s, %d-bit)"
                               % (self.elf["e_machine"], self.elf.elfclass))
            self.segments = self._load_segments()
            if not self.segments:
                raise ElfError("no PT_LOAD segment")
        except BaseException:
            self._f.close()
            raise
        self._symcache: dict = {}

    def _check_tables(self, head: bytes) -> None:
        """Clear reasons for the usual truncation cases, before pyelftools."""
        if head[4] != 2 or head[5] != 1:
            raise ElfError("not a 64-bit little-endian ELF file")
        phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x36)
        if phnum == 0:
            raise ElfError("ELF file without program headers (not loadable)")
        if phoff + phnum * phentsize > self.file_size:
            raise ElfError("truncated ELF: program headers end beyond the file (%d bytes)"
                           % self.file_size)
        if shoff and shoff + shnum * shentsize > self.file_size:
            raise ElfError("truncated ELF: section headers at 0x%x beyond the file (%d bytes)"
                           % (shoff, self.file_size))

    # -- lifetime -------------------------------------------------------
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "ElfImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw access -------------------------------------------------------
    @property
    def elf_type(self) -> str:
        return self.elf["e_type"]  # "ET_EXEC", "ET_DYN", ...

    def read_at(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at file ``offset`` or ElfError."""
        if offset < 0 or size < 0 or offset + size > self.file_size:
            raise ElfError("read of %d bytes at 0x%x beyond end of file (%d bytes)"
                           % (size, offset, self.file_size))
        self._f.seek(offset)
        data = self._f.read(size)
        if len(data) != size:
            raise ElfError("short read at 0x%x" % offset)
        return data

    def section(self, name: str):
        """The section called ``name`` or None (also when there are no section headers)."""
        if self.elf.num_sections() == 0:
            return None
        return self.elf.get_section_by_name(name)

    def section_data(self, name: str) -> Optional[bytes]:
        sec = self.section(name)
        if sec is None or sec["sh_type"] == "SHT_NOBITS":
            return None
        return self.read_at(sec["sh_offset"], sec["sh_size"])

    def has_section(self, name: str) -> bool:
        return self.section(name) is not None

    # -- segments / address translation ------------------------------------
    def _load_segments(self) -> list:
        out = []
        for seg in self.elf.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                if seg["p_offset"] + seg["p_filesz"] > self.file_size:
                    raise ElfError("truncated ELF: a PT_LOAD segment ends beyond the file "
                                   "(%d bytes)" % self.file_size)
                out.append(LoadSegment(seg["p_vaddr"], seg["p_offset"], seg["p_filesz"],
                                       seg["p_memsz"], seg["p_flags"]))
        return out

    def vaddr_to_offset(self, vaddr: int, executable: bool = False) -> int:
        """File offset of ``vaddr`` through the PT_LOAD that maps it from the file.

        With ``executable=True`` only PF_X segments are considered (BCC does the
        same for uprobe addresses). Raises ElfError when no segment maps it.
        """
        for seg in self.segments:
            if executable and not seg.executable:
                continue
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        raise ElfError("address 0x%x is not in any %sPT_LOAD segment"
                       % (vaddr, "executable " if executable else ""))

    def offset_to_vaddr(self, offset: int) -> int:
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        raise ElfError("file offset 0x%x is not in any PT_LOAD segment" % offset)

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        return self.read_at(self.vaddr_to_offset(vaddr), size)

    def in_plt(self, vaddr: int) -> bool:
        """True when ``vaddr`` lies in a PLT section (.plt, .plt.sec, .plt.got)."""
        if self.elf.num_sections() == 0:
            return False
        for sec in self.elf.iter_sections():
            if sec.name.startswith(".plt") and \
                    sec["sh_addr"] <= vaddr < sec["sh_addr"] + sec["sh_size"]:
                return True
        return False

    def function_names_at(self, vaddrs: Iterable[int]) -> dict:
        """{vaddr: name} of .symtab function symbols starting at the given addresses
        (local ones included: a static build keeps ``ssl_read_internal``); {} without
        .symtab.  Reads the raw table (a static binary has ~10^5 symbols)."""
        want = set(vaddrs)
        out: dict = {}
        sec = self.section(".symtab")
        if not want or not isinstance(sec, SymbolTableSection) or sec["sh_entsize"] != 24:
            return out
        strsec = self.elf.get_section(sec["sh_link"])
        table = self.read_at(sec["sh_offset"], sec["sh_size"] - sec["sh_size"] % 24)
        for st_name, st_info, _o, _ndx, value, _size in struct.iter_unpack("<IBBHQQ", table):
            if value in want and value not in out and st_info & 0xF == 2:   # STT_FUNC
                out[value] = strsec.get_string(st_name)
        return out

    # -- symbols --------------------------------------------------------------
    def symbol_tables(self) -> list:
        """The symbol table sections present, ``.symtab`` first."""
        out = []
        if self.elf.num_sections() == 0:
            return out
        for name in (".symtab", ".dynsym"):
            sec = self.elf.get_section_by_name(name)
            if isinstance(sec, SymbolTableSection):
                out.append(sec)
        return out

    def strtab_contains(self, names: Iterable[str]) -> bool:
        """Cheap pre-check: does any name occur in .strtab/.dynstr bytes at all?"""
        blobs = []
        for tab in self.symbol_tables():
            strsec = self.elf.get_section(tab["sh_link"])
            if strsec is not None and strsec["sh_type"] == "SHT_STRTAB":
                blobs.append(self.read_at(strsec["sh_offset"], strsec["sh_size"]))
        enc = [n.encode() for n in names]
        return any(e in blob for blob in blobs for e in enc)

    def find_functions(self, names: Iterable[str]) -> dict:
        """{name: ElfSymbol} for the defined symbols among ``names``.

        Looks in .symtab then .dynsym; "name@VER" and "name@@VER" match "name"
        (the default ``@@`` version wins over hidden ``@`` ones).
        """
        wanted = set(names)
        found: dict = {}
        rank: dict = {}
        for tab in self.symbol_tables():
            versions = self._dynsym_versions(tab) if tab.name == ".dynsym" else None
            for idx, sym in enumerate(tab.iter_symbols()):
                raw = sym.name
                if not raw:
                    continue
                base, sep, ver = raw.partition("@")
                if base not in wanted:
                    continue
                if sym["st_shndx"] == "SHN_UNDEF" or sym["st_value"] == 0:
                    continue
                if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC", "STT_NOTYPE"):
                    continue
                hidden = False
                if sep:
                    hidden = not ver.startswith("@")
                    ver = ver.lstrip("@") or None
                else:
                    ver = None
                    if versions is not None:
                        ver, hidden = versions(idx)
                r = (1 if hidden else 0)
                if base in found and rank[base] <= r:
                    continue
                vaddr = sym["st_value"]
                try:
                    off = self.vaddr_to_offset(vaddr, executable=True)
                except ElfError:
                    continue
                found[base] = ElfSymbol(base, vaddr, off, sym["st_size"], tab.name, ver)
                rank[base] = r
        return found

    def _dynsym_versions(self, dynsym):
        """A function idx -> (version name or None, hidden) for .dynsym, or None."""
        versym = verdef = None
        for sec in self.elf.iter_sections():
            if sec["sh_type"] == "SHT_GNU_versym":
                versym = sec
            elif sec["sh_type"] == "SHT_GNU_verdef":
                verdef = sec
        if versym is None:
            return None
        names = {}
        if verdef is not None:
            for vd, aux_iter in verdef.iter_versions():
                aux = next(iter(aux_iter), None)
                if aux is not None:
                    names[vd["vd_ndx"]] = aux.name

        def lookup(idx):
            ndx = versym.get_symbol(idx)["ndx"]
            if isinstance(ndx, str):  # VER_NDX_LOCAL / VER_NDX_GLOBAL
                return None, False
            return names.get(ndx & 0x7FFF), bool(ndx & 0x8000)

        return lookup

    def version_definitions(self) -> list:
        """Names from .gnu.version_d (e.g. ["libssl.so.3", "OPENSSL_3.0.0", ...])."""
        out = []
        if self.elf.num_sections() == 0:
            return out
        for sec in self.elf.iter_sections():
            if sec["sh_type"] == "SHT_GNU_verdef":
                for _vd, aux_iter in sec.iter_versions():
                    for aux in aux_iter:
                        out.append(aux.name)
        return out

    def soname(self) -> Optional[str]:
        sec = self.section(".dynamic")
        if sec is None:
            return None
        for tag in sec.iter_tags():
            if tag.entry.d_tag == "DT_SONAME":
                return tag.soname
        return None
