"""Read a BPF ring buffer directly through mmap, in batches.

BCC's ``ring_buffer_consume`` calls a ctypes callback per record, which costs more than the
record's whole processing in Python.  The ring's memory layout is a stable kernel ABI
(include/uapi/linux/bpf.h, kernel/bpf/ringbuf.c): page 0 holds the consumer position
(read-write), page 1 the producer position, and the data area follows.  The kernel offers the
data area mapped twice in a row so that a record never wraps; this reader maps it once (a
second mapping doubles the ring's share of the probe's RSS: 8 MiB more) and joins the two
pieces of the rare record that wraps.  Each record has an 8-byte header: u32 length with the
BUSY (bit 31) and DISCARD (bit 30) flags, u32 page offset.  Records are 8-byte aligned, so a
header never wraps.

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
        self.prod = mmap.mmap(map_fd, page + data_size, mmap.MAP_SHARED,
                              mmap.PROT_READ, offset=page)
        self.page = page
        self.more = False       # the last batch stopped at its limit with records left

    def read_batch(self, limit=1 << 30):
        """All complete records available now, as a list of bytes, up to the record that
        reaches ``limit`` bytes (``more`` then says whether records are left); frees their
        space."""
        self.more = False
        cons_pos = _u64.unpack_from(self.cons, 0)[0]
        prod_pos = _u64.unpack_from(self.prod, 0)[0]
        if cons_pos == prod_pos:
            return []
        # Each record is sliced out of the mapping, without a copy of the whole span first
        # (up to the ring's size, in one transient allocation).  A header read as
        # committed was published after its data (x86 does not reorder loads).
        avail = min(prod_pos - cons_pos, self.size)
        m = self.prod
        page = self.page
        size = self.size
        mask = self.mask
        start = cons_pos & mask
        out = []
        append = out.append
        u32 = _u32.unpack_from
        busy, discard, len_mask = BUSY, DISCARD, ~(BUSY | DISCARD)
        pos = 0
        total = 0
        while pos < avail and total < limit:
            h = (start + pos) & mask
            ln = u32(m, page + h)[0]
            if ln & busy:
                break
            n = ln & len_mask
            if not ln & discard:
                d = (h + 8) & mask                                # HDR == 8
                if d + n <= size:
                    append(m[page + d:page + d + n])
                else:                                             # wraps: two pieces
                    append(m[page + d:page + size] + m[page:page + d + n - size])
            pos += (n + 15) & ~7                          # HDR + 7
            total += n
        _u64.pack_into(self.cons, 0, cons_pos + pos)
        self.more = total >= limit and pos < avail
        return out

    def close(self):
        self.cons.close()
        self.prod.close()
