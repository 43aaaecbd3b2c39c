#!/usr/bin/env python3
"""Load every BPF program of the probe (as bpf/loader.py builds it) and print the number of
instructions the kernel's verifier processed for each (bpf_prog_info.verified_insns), the largest
last.  The verifier's limit is 1,000,000 per program.

    sudo .venv/bin/python scripts/verifier_insns.py            # the default hooks
    sudo L7PROBE_HOOKS=syscalls .venv/bin/python scripts/verifier_insns.py   # or raw
"""
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bpf.loader import Capture  # noqa: E402


_libc = ctypes.CDLL(None, use_errno=True)
BPF_OBJ_GET_INFO_BY_FD = 15
SYS_BPF = 321                       # x86-64
INFO_SIZE = 232                     # struct bpf_prog_info (linux/bpf.h, 6.x)
OFF_ID, OFF_NAME, OFF_VERIFIED = 4, 64, 216


def prog_info(fd):
    """(verified_insns, name, id) of a loaded program's fd (BPF_OBJ_GET_INFO_BY_FD)."""
    info = ctypes.create_string_buffer(INFO_SIZE)
    # union bpf_attr.info: bpf_fd (u32), info_len (u32), info (u64 pointer)
    attr = ctypes.create_string_buffer(16)
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(fd)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 4, ctypes.byref(ctypes.c_uint32(INFO_SIZE)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 8,
                   ctypes.byref(ctypes.c_uint64(ctypes.addressof(info))), 8)
    if _libc.syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, attr, 16) != 0:
        raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
    raw = info.raw
    name = raw[OFF_NAME:OFF_NAME + 16].split(b"\0")[0].decode()
    return (int.from_bytes(raw[OFF_VERIFIED:OFF_VERIFIED + 4], "little"), name,
            int.from_bytes(raw[OFF_ID:OFF_ID + 4], "little"))


def main():
    cap = Capture()
    cap.load()
    BPF = cap.BPF
    hooks = cap.features["hooks"]
    # the uprobe programs are loaded only when a TLS library is attached: load them here
    for fn in ("ssl_write_entry", "ssl_write_ex_entry", "ssl_read_entry",
               "ssl_handshake_entry", "ssl_read_ex_entry", "ssl_read_return", "go_tls_write",
               "go_tls_write_jcc", "go_tls_read", "go_tls_read_jcc", "go_tls_read_ret",
               "go_tls_read_copy"):
        try:
            cap.bpf.load_func(fn, BPF.KPROBE)
        except Exception as exc:
            print("%s: %s" % (fn, str(exc).splitlines()[0]), file=sys.stderr)
    rows = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if link == "anon_inode:bpf-prog":
            rows.append(prog_info(int(fd)))
    for n, name, pid in sorted(rows):
        print("%9d  %s (id %d)" % (n, name, pid))
    print("max verified_insns: %d (hooks: %s)" % (max(rows)[0], hooks))
    cap.close()


if __name__ == "__main__":
    main()
