"""Compile, load and attach the BPF side; feature detection; map access for user space.

Everything BCC-specific lives here, so the rest of the probe can be tested without BPF.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import platform

from bpf.layout import DEFINES
from protocol import registry

log = logging.getLogger("l7probe")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INCLUDE = os.path.join(ROOT, "include")

CAP_MAX = 32768              # hard upper bound of bytes captured per syscall
DEFAULT_CAP = 16384          # default bytes captured per syscall
DEFAULT_SAMPLE = 1000        # HTTP transactions per second parsed in user space (--sample)
RINGBUF_PAGES = 2048         # 8 MiB ring buffer (power of two pages): ~0.25 s of records at
                             # 60k records/s, drained every 50 ms
PERF_PAGES = 256             # per-CPU perf buffer pages (fallback)

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


class ProbeError(Exception):
    """A condition that stops the probe with a one-line message (never a traceback)."""


def check_environment():
    """Raise ProbeError saying what to do if this machine cannot run the probe."""
    if os.geteuid() != 0:
        raise ProbeError("l7probe must run as root (it loads eBPF programs): try sudo")
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise ProbeError("BCC's Python module 'bcc' is missing: install python3-bpfcc "
                         "(apt-get install python3-bpfcc) and run with /usr/bin/python3 or "
                         "a venv made with --system-site-packages (make venv)")
    # L7PROBE_KERNEL_BUILD overrides where BCC's headers are looked for (tests use it)
    build = os.environ.get("L7PROBE_KERNEL_BUILD") or "/lib/modules/%s/build" % platform.release()
    if not os.path.isdir(os.path.join(build, "include")):
        raise ProbeError("no kernel headers at %s: run 'make deps' (installs "
                         "linux-headers and links them for this kernel)" % build)
    if not any(os.path.isdir(os.path.join(t, "events", "syscalls")) for t in TRACEFS):
        raise ProbeError("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing "
                         "(or run 'make deps')")


def _support_raw_tracepoint(kver):
    """Raw tracepoints (kernel 4.17).  Not BCC's BPF.support_raw_tracepoint(): it looks
    the kernel symbol up through BCC's symbol cache, which reads all of /proc/kallsyms
    into the heap and keeps it for the life of the process (measured: +26 MB RSS, 20 MB
    of it heap that malloc_trim cannot give back: it is in use)."""
    if kver >= (4, 17):
        return True
    try:
        with open("/proc/kallsyms") as f:
            return any(line.endswith((" bpf_find_raw_tracepoint\n",
                                      " bpf_get_raw_tracepoint\n")) for line in f)
    except OSError:
        return False


def _tp_exists(category, event):
    return any(os.path.isdir(os.path.join(t, "events", category, event)) for t in TRACEFS)


class Capture:
    """The loaded BPF object and its maps."""

    def __init__(self, cap_bytes=DEFAULT_CAP, sample_rate=0, fast_stop=False):
        from bcc import BPF
        self.BPF = BPF
        self.cap_bytes = max(64, min(int(cap_bytes), CAP_MAX))
        self.sample_rate = max(0, int(sample_rate))   # HTTP transactions/s delivered; 0: all
        self.fast_stop = fast_stop      # stopping within 2 s matters more (gala-gopher)
        # L7PROBE_RINGBUF_PAGES: another ring size, a power of two (tests force overflows)
        pages = int(os.environ.get("L7PROBE_RINGBUF_PAGES") or RINGBUF_PAGES)
        self.ring_pages = pages if pages > 0 and pages & (pages - 1) == 0 else RINGBUF_PAGES
        self.features = {}
        self.bpf = None
        self._map_fds = []      # the maps' own fds once BCC's module is freed (_drop_compiler)
        self._lost = 0

    # -- loading ------------------------------------------------------------------------
    def load(self):
        BPF = self.BPF
        kver = tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])
        # L7PROBE_PERF_BUFFER=1 forces the perf-buffer output of kernels before 5.8
        have_ringbuf = kver >= (5, 8) and not os.environ.get("L7PROBE_PERF_BUFFER")
        have_sock_len = _tp_exists("sock", "sock_send_length") and \
            _tp_exists("sock", "sock_recv_length")
        have_signal = _tp_exists("signal", "signal_generate")
        # Hooks.  "sock" (the default where it works): no syscall hook at all, only
        # sock:sock_send_length/sock_recv_length, which fire inside socket sends and
        # receives with the syscall's arguments in the thread's user registers
        # (bpf_task_pt_regs, kernel >= 5.15), and tcp:tcp_destroy_sock for the end.  Any
        # syscall tracepoint sends every syscall of every task through the kernel's slow
        # path; these do not, and they run once per socket operation instead of twice per
        # syscall.  Otherwise: per-syscall tracepoints ("syscalls"; ~30 of them take ~2 s
        # to detach), or the raw_syscalls pair ("raw": detaches in milliseconds, for
        # gala-gopher's stop).  L7PROBE_HOOKS=sock|syscalls|raw chooses
        # (L7PROBE_RAW_SYSCALLS=1/0, the older switch, means raw/syscalls).
        want = os.environ.get("L7PROBE_HOOKS") or {"1": "raw", "0": "syscalls"}.get(
            os.environ.get("L7PROBE_RAW_SYSCALLS", ""), "")
        x86 = platform.machine() == "x86_64"
        can_raw = x86 and _support_raw_tracepoint(kver)
        can_sock = (x86 and have_sock_len and kver >= (5, 15) and
                    _tp_exists("tcp", "tcp_destroy_sock"))
        fallback = "raw" if can_raw and (want == "raw" or self.fast_stop) else "syscalls"
        if want == "syscalls" or (want == "raw" and can_raw):
            hooks = fallback
        elif can_sock:
            hooks = "sock"
        else:
            hooks = fallback
        self.features = {"ringbuf": have_ringbuf, "sock_length_tracepoints": have_sock_len,
                         "kprobes": bool(self._kprobes_available()), "hooks": hooks,
                         "raw_syscalls": hooks == "raw", "signal_tracepoint": have_signal}
        defines = {"CAP_MAX": CAP_MAX, "RINGBUF": int(have_ringbuf),
                   "RINGBUF_PAGES": self.ring_pages, "HAVE_SOCK_LEN_TP": int(have_sock_len),
                   "HAVE_SIGNAL_TP": int(have_signal),
                   "NR_CPUS_MAX": _possible_cpus(), "TLS": int(os.environ.get("L7PROBE_TLS_BUILD", "1"))}
        defines.update(registry.c_defines())
        with open(os.path.join(HERE, "probe.c")) as f:
            text = f.read()
        # BCC rewrites map calls (m.lookup()) only in the main text, not in headers:
        # splice in the parts that use maps
        with open(os.path.join(HERE, "tls.h")) as f:
            text = text.replace('#include "tls.h"', f.read())
        with open(os.path.join(HERE, "udp.h")) as f:
            text = text.replace('#include "udp.h"', f.read())
        debug = int(os.environ.get('L7PROBE_BCC_DEBUG', '0'))
        while True:
            defines.update(RAW_SYSCALLS=int(hooks == "raw"), SOCK_HOOKS=int(hooks == "sock"))
            cflags = ["-I" + INCLUDE, "-Wno-macro-redefined", "-Wno-unused-function"]
            cflags += ["-D%s=%d" % kv for kv in sorted(defines.items())]
            try:
                self.bpf = BPF(text=text, cflags=cflags, debug=debug)
                break
            except Exception as exc:  # BCC raises bare Exception on compile/load errors
                if hooks != "sock":
                    raise ProbeError("failed to load the BPF program: %s"
                                     % str(exc).splitlines()[0])
                log.warning("socket-tracepoint hooks unavailable (%s): syscall hooks instead",
                            str(exc).splitlines()[0])
                hooks = fallback
                self.features.update(hooks=hooks, raw_syscalls=hooks == "raw")
        raw = hooks == "raw"
        if have_sock_len:
            # UDP datagrams (bpf/udp.h) run as a tail call of the syscall exit programs
            try:
                fn = self.bpf.load_func("udp_exit_tail",
                                        BPF.RAW_TRACEPOINT if raw else BPF.TRACEPOINT)
                self.bpf["udp_tail"][ctypes.c_int(0)] = ctypes.c_int(fn.fd)
            except Exception as exc:
                log.warning("UDP capture (DNS over UDP) unavailable: %s",
                            str(exc).splitlines()[0])
        how = ("sock:sock_send_length/sock_recv_length tracepoints" if have_sock_len else
               "connection map only (no sock_*_length tracepoints; kprobes %s)"
               % ("present but unused" if self.features["kprobes"] else "absent"))
        log.info("capture: %s; socket check: %s; output: %s",
                 {"sock": "socket tracepoints (no syscall hook)", "raw":
                  "raw_syscalls tracepoints"}.get(hooks, "syscall tracepoints"),
                 how, "ring buffer" if have_ringbuf else "perf buffer")
        # the data path is a program of its own, tail-called (probe.c data_body): one copy
        # per caller's program type, each in its own program array; [1]: the syscalls'
        # iovec gatherer (probe.c gather_body)
        sys_kind = BPF.RAW_TRACEPOINT if raw else BPF.TRACEPOINT
        for table, idx, fn, kind in (
                ("data_tail_sys", 0, "l7_data_raw" if raw else "l7_data_tp", sys_kind),
                ("data_tail_sys", 1, "l7_gather_raw" if raw else "l7_gather_tp", sys_kind),
                ("data_tail_up", 0, "l7_data_kp", BPF.KPROBE)):
            try:
                self.bpf.get_table(table)[ctypes.c_int(idx)] = ctypes.c_int(
                    self.bpf.load_func(fn, kind).fd)
            except Exception as exc:
                raise ProbeError("failed to load the BPF program %s: %s"
                                 % (fn, str(exc).splitlines()[0]))
        self.conns = self.bpf["conns"]
        self.config = self.bpf["config"]
        self.pids = self.bpf["pids"]
        self.stats = self.bpf["stats"]
        self.kacct = self.bpf["kacct"]
        self.kapi = self.bpf["kapi"]
        self.apis_known = self.bpf["apis_known"]
        self.shed_ok = self.bpf["shed_ok"]
        self._events = self.bpf["events"]
        self._ringbuf = have_ringbuf
        self._map_fds = []
        if have_ringbuf and not debug:
            self._drop_compiler()
        _release_compiler_memory()

    def _drop_compiler(self):
        """Free BCC's compiled module (the LLVM module, clang's leftovers, the rewritten
        source: ~10 MB of heap) once nothing needs it: every program user space may still
        attach (the TLS uprobes, attached as TLS processes appear) is loaded now, and every
        map gets an fd of its own (the module's close with it).  From then on the BPF
        object works from fds alone: map reads and writes, attach, detach, clean-up (BCC's
        ``cleanup`` skips a module that is None).  Not with the perf buffer (kernels before
        5.8): BCC polls it through the module."""
        from bcc.libbcc import lib
        from bpf.tls_attach import PROGRAMS
        bpf = self.bpf
        module = bpf.module
        if not module:
            return
        if os.environ.get("L7PROBE_TLS_BUILD", "1") == "0":
            return          # (a debugging build without the TLS programs: kept as it was)
        for fn in PROGRAMS:
            try:
                bpf.load_func(fn, self.BPF.KPROBE)
            except Exception as exc:
                log.warning("TLS program %s not loaded (%s): BCC's compiler stays in "
                            "memory for it", fn, str(exc).splitlines()[0])
                return
        lib.bpf_num_tables.restype = ctypes.c_ulonglong
        lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
        lib.bpf_table_name.restype = ctypes.c_char_p
        lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
        tables = []
        for i in range(lib.bpf_num_tables(module)):
            name = lib.bpf_table_name(module, i).decode()
            tables.append(bpf[name])        # BPF.__getitem__ keeps it (keyed by str)
        for t in tables:
            t.map_fd = os.dup(t.map_fd)
            self._map_fds.append(t.map_fd)
        bpf.module = None
        lib.bpf_module_destroy(module)

    def _kprobes_available(self):
        try:
            return os.path.exists("/sys/kernel/tracing/kprobe_events") or \
                os.path.exists("/sys/kernel/debug/tracing/kprobe_events")
        except OSError:
            return False

    def open_output(self):
        """Start receiving records; poll() returns them in batches."""
        if self._ringbuf:
            from bpf.ringbuf import RingReader
            self.reader = RingReader(self._events.map_fd, self.ring_pages * mmap.PAGESIZE)
            return
        self._pending = []
        append = self._pending.append

        def _cb(cpu, data, size):
            append(ctypes.string_at(data, size))

        def _lost(cpu, count):
            self._lost += count
        self._cb = _cb
        self._events.open_perf_buffer(_cb, page_cnt=PERF_PAGES, lost_cb=_lost)

    def poll(self, timeout_ms, limit=1 << 30):
        """Records available now, as a list of bytes (from the ring buffer: about ``limit``
        bytes of them at most, the rest at the next call; ``more`` says whether there is
        a rest).  Ring-buffer records are submitted without wake-ups (cheaper for the
        traced processes): the caller sleeps between polls.  The perf buffer (kernels
        before 5.8) is polled with ``timeout_ms``, all of it at once."""
        if self._ringbuf:
            return self.reader.read_batch(limit)
        self.bpf.perf_buffer_poll(timeout=timeout_ms)
        batch = self._pending[:]
        del self._pending[:]
        return batch

    @property
    def more(self):
        """The last poll left records in the ring buffer (it stopped at its limit)."""
        return self._ringbuf and self.reader.more

    # -- configuration ------------------------------------------------------------------
    def set_config(self, proto_flags, pids, emit_data, exclude=frozenset(), tls=False,
                   watch_ppid=0):
        """pids: whitelist (None: every process); exclude: blacklist when pids is None;
        watch_ppid: a pid whose SIGINT/SIGTERM becomes an EVT_PARENT_SIGNAL record."""
        cfg = self.config[ctypes.c_int(0)]
        cfg.watch_ppid = watch_ppid
        cfg.proto_flags = proto_flags
        cfg.filter_pids = 1 if pids is not None else (2 if exclude else 0)
        cfg.emit_data = 1 if emit_data else 0
        cfg.cap_bytes = self.cap_bytes
        cfg.tls = 1 if tls else 0
        if self.sample_rate:
            ncpu = os.cpu_count() or 1      # the credit is per CPU
            cfg.sample_cost_ns = max(1, int(1e9 * ncpu / self.sample_rate))
            cfg.sample_burst_ns = min(2**32 - 1, cfg.sample_cost_ns * max(
                1, self.sample_rate // (10 * ncpu)))     # up to 0.1 s of transactions
        else:
            cfg.sample_cost_ns = cfg.sample_burst_ns = 0
        wanted = set(pids if pids is not None else exclude)
        for k in list(self.pids.keys()):
            if k.value not in wanted:
                del self.pids[k]
        for pid in wanted:
            self.pids[ctypes.c_uint(pid)] = ctypes.c_ubyte(1)
        self.config[ctypes.c_int(0)] = cfg

    def seed_connection(self, tgid, fd, l4_role, family, client_ip, client_port,
                        server_ip, server_port):
        """Track a connection that existed before the probe started."""
        key = self.conns.Key(tgid, fd)
        try:
            old = self.conns[key]
        except KeyError:
            old = None
        if old is not None and not old.flags & DEFINES["CONN_F_IGNORED"]:
            return False        # tracked already (an ignored entry: its role was unknown)
        val = self.conns.Leaf()
        val.conn_id = (0xff << 48) | _next_seed_id()
        val.family = family
        val.l4_role = l4_role
        val.client_port = client_port
        val.server_port = server_port
        ctypes.memmove(ctypes.addressof(val.client_ip), client_ip, len(client_ip))
        ctypes.memmove(ctypes.addressof(val.server_ip), server_ip, len(server_ip))
        val.flags = DEFINES["CONN_F_ADDR"] | DEFINES["CONN_F_SEEDED"]
        self.conns[key] = val
        return True

    def sweep_dead(self, alive):
        """Delete the map entries of processes that exited without closing their sockets
        (the kernel closes them without a close() syscall).  Returns how many."""
        dead = [k for k in self.conns.keys() if not alive(k.tgid)]
        for k in dead:
            try:
                del self.conns[k]
            except KeyError:
                pass
        return len(dead)

    def conn_counters(self, tgid, fd):
        """(conn_id, bytes_sent, bytes_recv, segs_sent, segs_recv) or None."""
        try:
            v = self.conns[self.conns.Key(tgid, fd)]
        except KeyError:
            return None
        return v.conn_id, v.bytes_sent, v.bytes_recv, v.segs_sent, v.segs_recv

    def _detach_tracepoints_in_parallel(self):
        """Each tracepoint or uprobe detach waits for RCU grace periods (~30-100 ms here);
        one after the other they take ~2 s.  Closing them from threads overlaps the waits
        (ctypes releases the GIL), so the probe stops within gala-gopher's 2 s."""
        from concurrent.futures import ThreadPoolExecutor
        from bcc.libbcc import lib
        bpf = self.bpf
        jobs = [(lib.bpf_close_perf_event_fd, fd) for fd in bpf.tracepoint_fds.values()]
        ups = list(bpf.uprobe_fds.items())
        jobs += [(lib.bpf_close_perf_event_fd, fd) for _, fd in ups]
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=min(64, len(jobs))) as pool:
            list(pool.map(lambda job: job[0](job[1]), jobs))
        bpf.tracepoint_fds.clear()
        for name, _ in ups:
            lib.bpf_detach_uprobe(name)     # a tracefs event, if BCC had to create one
            bpf._del_uprobe_fd(name)

    def read_acct(self):
        """(conn_id, counts) of map kacct, one entry at a time: what the kernel counted
        itself, cumulative per connection; counts in struct conn_acct's field order
        (include/l7_events.h).  An iterator (BCC's iteritems), not its items() list: with
        20k connections that list, its ctypes objects and tuples are many MB at once, and
        the arenas they leave fragmented stay in the probe's RSS (measured: 126 -> 114 MB
        with 10k connections traced on both ends)."""
        for k, v in self.kacct.iteritems():
            yield k.value, _acct_tuple(v)

    def read_api_acct(self):
        """((conn_id, api hash), counts) of map kapi, the same per API."""
        for k, v in self.kapi.iteritems():
            yield (k.conn_id, k.api), _acct_tuple(v)

    def delete_acct(self, conn_ids):
        for cid in conn_ids:
            try:
                del self.kacct[ctypes.c_ulonglong(cid)]
            except KeyError:
                pass

    def delete_api_acct(self, keys):
        for cid, api in keys:
            try:
                del self.kapi[self.kapi.Key(cid, api)]
            except KeyError:
                pass

    def add_known_apis(self, hashes):
        """Tell the kernel which API hashes user space has names for (map apis_known)."""
        one = ctypes.c_ubyte(1)
        for h in hashes:
            self.apis_known[ctypes.c_ulonglong(h)] = one

    def add_shed_ok(self, conn_ids):
        """Tell the kernel which HTTP connections send one request per syscall (map
        shed_ok): the sampler may shed their transactions."""
        one = ctypes.c_ubyte(1)
        for cid in conn_ids:
            self.shed_ok[ctypes.c_ulonglong(cid)] = one

    def drop_counts(self):
        """(records dropped, bytes dropped, connections not tracked, TLS calls whose socket
        was unknown, HTTP transactions sampled out, socket operations whose tail call to the
        data program failed) since start: the STAT_* slots."""
        out = []
        for i in (DEFINES["STAT_RECORDS_DROPPED"], DEFINES["STAT_BYTES_DROPPED"],
                  DEFINES["STAT_CONNS_DROPPED"], DEFINES["STAT_TLS_NO_SOCKET"],
                  DEFINES["STAT_SAMPLED_OUT"], DEFINES["STAT_TAIL_FAILED"]):
            try:
                out.append(sum(self.stats[ctypes.c_int(i)]))
            except Exception:
                out.append(0)
        out[0] += self._lost
        return tuple(out)

    def start_detach(self):
        """Begin detaching every program in the background (close() finishes it), so that
        the final report overlaps the kernel's grace periods."""
        import threading
        if self.bpf is None or getattr(self, "_detacher", None) is not None:
            return
        self._detacher = threading.Thread(target=self._detach_tracepoints_in_parallel,
                                          daemon=True)
        self._detacher.start()

    def _clear_prog_arrays(self):
        """Empty the program arrays (tail calls) first: a program array holding a program
        that refers to another array outlives the process's fds until the kernel's deferred
        clean-up gets to it; emptied, everything goes with the last fd."""
        for name, idx in (("data_tail_sys", 0), ("data_tail_sys", 1), ("data_tail_up", 0),
                          ("udp_tail", 0)):
            try:
                del self.bpf[name][ctypes.c_int(idx)]
            except Exception:       # absent (no UDP build) or already empty
                pass

    def close(self):
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()
            self.reader = None
        if self.bpf is not None:
            detacher = getattr(self, "_detacher", None)
            if detacher is not None:
                detacher.join()
                self._detacher = None
            else:
                self._detach_tracepoints_in_parallel()
            self._clear_prog_arrays()
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None
                for fd in self._map_fds:
                    os.close(fd)
                self._map_fds = []


def _acct_tuple(v):
    """A struct conn_acct as a tuple in bpf/layout.py's field order (arrays flattened)."""
    vals = []
    for name, _ in v._fields_:
        x = getattr(v, name)
        if isinstance(x, int):
            vals.append(x)
        else:
            vals.extend(x)
    return tuple(vals)


def release_memory():
    """Return freed heap to the system (after start-up work: compiling, ELF parsing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _release_compiler_memory():
    """BCC's compiler (LLVM, clang) is not used after loading, but its pages stay resident
    (~90 MB).  Give them back: freed heap via malloc_trim, and the code pages of the
    compiler libraries via MADV_DONTNEED (unmodified file pages: they would simply be read
    again from the page cache if ever used)."""
    release_memory()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                # code only: read-only data may be RELRO, relocated in memory (not on disk)
                if len(parts) < 6 or parts[1] != "r-xp":
                    continue
                name = os.path.basename(parts[5])
                if not (name.startswith("libLLVM") or name.startswith("libclang")):
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                libc.madvise(lo, hi - lo, 4)        # MADV_DONTNEED
    except (OSError, AttributeError, ValueError):
        pass


def _possible_cpus():
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


_seed_counter = [0]


def _next_seed_id():
    _seed_counter[0] += 1
    return _seed_counter[0]
