"""Read a BPF ring buffer directly through mmap, in batches.

BCC's ``ring_buffer_consume`` calls a ctypes callback per record, which costs more than the
record's whole processing in Python.  The ring's memory layout is a stable kernel ABI
(include/uapi/linux/bpf.h, kernel/bpf/ringbuf.c): page 0 holds the consumer position
(read-write), page 1 the producer position, and the data area follows, mapped twice in a row
so a record never wraps.  Each record has an 8-byte header: u32 length with the BUSY (bit 31)
and DISCARD (bit 30) flags, u32 page offset.  Records are 8-byte aligned.

x86-64's store ordering makes plain loads sufficient (header before data, as the kernel
publishes them with a release store); other architectures would need acquire loads.
"""
from __future__ import annotations

import mmap
import struct

BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8
_u64 = struct.Struct("<Q")
_u32 = struct.Struct("<I")


class RingReader:
    def __init__(self, map_fd, data_size):
        page = mmap.PAGESIZE
        self.size = data_size
        self.mask = data_size - 1
        self.cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.prod = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED,
                              mmap.PROT_READ, offset=page)
        self.page = page

    def read_batch(self, limit=1 << 30):
        """All complete records available now, as a list of bytes; frees their space."""
        cons_pos = _u64.unpack_from(self.cons, 0)[0]
        prod_pos = _u64.unpack_from(self.prod, 0)[0]
        if cons_pos == prod_pos:
            return []
        # Copy everything between the positions at once (the data area is mapped twice, so
        # it is contiguous), then walk the copy: cheaper than slicing the mmap per record.
        # A header read as committed in the copy was published after its data (the header
        # lies below the data and x86 does not reorder loads), as with reads in place.
        avail = min(prod_pos - cons_pos, self.size)
        off = self.page + (cons_pos & self.mask)
        chunk = self.prod[off:off + avail]
        out = []
        append = out.append
        u32 = _u32.unpack_from
        busy, discard, len_mask = BUSY, DISCARD, ~(BUSY | DISCARD)
        pos = 0
        total = 0
        while pos < avail and total < limit:
            ln = u32(chunk, pos)[0]
            if ln & busy:
                break
            n = ln & len_mask
            if not ln & discard:
                append(chunk[pos + 8:pos + 8 + n])        # HDR == 8
            pos += (n + 15) & ~7                          # HDR + 7
            total += n
        _u64.pack_into(self.cons, 0, cons_pos + pos)
        return out

    def close(self):
        self.cons.close()
        self.prod.close()
