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


def test_a_batch_stops_at_its_byte_limit_and_the_next_goes_on():
    """Probe.poll reads the ring in pieces of about BATCH_BYTES (a full ring read at once
    made as many MB of record objects alive together): a batch ends with the record that
    reaches the limit, and the next one starts at the record after it."""
    ring = FakeRing()
    r = RingReader(ring.fd, DATA)
    recs = [bytes([i]) * 100 for i in range(10)]
    for x in recs:
        ring.write(x)
    assert r.read_batch(250) == recs[:3] and r.more
    assert r.read_batch(250) == recs[3:6] and r.more
    assert r.read_batch() == recs[6:] and not r.more
    assert ring.cons() == ring.prod and r.read_batch(250) == [] and not r.more
    ring.write(recs[0])
    ring.write(recs[1])
    assert r.read_batch(200) == recs[:2] and not r.more      # the limit, and nothing left
    r.close()


def test_probe_poll_feeds_a_full_ring_in_pieces():
    """One Probe.poll drains everything the ring holds, BATCH_BYTES or so at a time, each
    piece fed and paired before the next is read."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("l7probe_main", os.path.join(root, "l7probe.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rec = b"r" * 1000
    backlog = [rec] * (3 * mod.BATCH_BYTES // len(rec) + 10)

    class Capture:
        more = False

        def poll(self, timeout_ms, limit):
            out, n = [], 0
            while backlog and n < limit:
                out.append(backlog.pop(0))
                n += len(out[-1])
            self.more = bool(backlog)
            return out

    events = []

    class Tracker:
        new_apis, new_shed_ok = [], []

        def feed(self, batch):
            events.append(("feed", sum(map(len, batch))))

        def stitch_dirty(self):
            events.append(("stitch", 0))

    class Traces:
        def flush(self):
            pass

    p = object.__new__(mod.Probe)
    p.capture, p.tracker, p.traces, p.dump, p.tls = Capture(), Tracker(), Traces(), None, None
    p.poll()
    feeds = [n for what, n in events if what == "feed"]
    assert not backlog and len(feeds) == 4
    assert all(n <= mod.BATCH_BYTES + len(rec) for n in feeds)
    assert [w for w, _ in events] == ["feed", "stitch"] * 4
