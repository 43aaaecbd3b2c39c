"""bpf/ringbuf.py RingReader on a memfd laid out as the kernel lays out a BPF ring buffer
(page 0: consumer position; page 1: producer position; then the data area), with records
written the kernel's way: busy, discarded, and one that wraps past the end of the data area
(the reader maps the data area once and joins the two pieces)."""
import mmap
import os
import struct

from bpf.ringbuf import BUSY, DISCARD, RingReader

PAGE = mmap.PAGESIZE
DATA = 4 * PAGE


class FakeRing:
    def __init__(self):
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * PAGE + DATA)
        self.m = mmap.mmap(self.fd, 2 * PAGE + DATA)
        self.prod = 0

    def set_cons(self, pos):
        struct.pack_into("<Q", self.m, 0, pos)

    def write(self, payload, flags=0):
        """A record at the producer position (the data wraps like the kernel's does)."""
        n = len(payload)
        h = self.prod % DATA
        struct.pack_into("<II", self.m, 2 * PAGE + h, n | flags, 0)
        for i, b in enumerate(payload):
            self.m[2 * PAGE + (h + 8 + i) % DATA] = b
        self.prod += (n + 15) & ~7
        struct.pack_into("<Q", self.m, PAGE, self.prod)

    def cons(self):
        return struct.unpack_from("<Q", self.m, 0)[0]


def test_records_discards_busy_and_a_wrapping_record():
    ring = FakeRing()
    # start near the end of the data area so that the third record wraps
    start = DATA - 48
    ring.prod = start
    ring.set_cons(start)
    struct.pack_into("<Q", ring.m, PAGE, start)
    r = RingReader(ring.fd, DATA)
    assert r.read_batch() == []
    ring.write(b"first")                          # 8 + 5 -> 16 bytes
    ring.write(b"dropped", DISCARD)               # 16 bytes, not returned
    wrap = bytes(range(40))                       # header at DATA-16, data wraps
    ring.write(wrap)
    assert r.read_batch() == [b"first", wrap]
    assert ring.cons() == ring.prod
    # a record still being written stops the batch; it is read once committed
    busy_at = ring.prod
    ring.write(b"later", BUSY)
    ring.write(b"after")
    assert r.read_batch() == []
    assert ring.cons() == busy_at
    struct.pack_into("<I", ring.m, 2 * PAGE + busy_at % DATA, 5)
    assert r.read_batch() == [b"later", b"after"]
    assert ring.cons() == ring.prod
    r.close()
