"""The ``pod`` table (the seed's): one row per pod and period.

=============  ==========================================================================
pod_name       the pod's name (pipeline/pods.py), else its uid / Podman pod id (key)
pod_ip         the pod's address in its network namespace (pods.netns_ip)
container_cnt  containers of the pod with a live process, the sandbox (pause / Podman
               infra) not counted
cpu            CPU use of the pod's cgroup over the period, percent of one CPU: v1
               ``cpuacct.usage``, else v2 ``cpu.stat`` ``usage_usec``
network_tx/rx  bytes sent / received in the period by the pod's network namespace (all
               interfaces but ``lo``, ``/proc/PID/net/dev``); 0 for a pod in the host's
               namespace
bytes_read/    bytes read from / written to storage in the period by the pod: v2 ``io.stat``
bytes_write    ``rbytes``/``wbytes`` of its cgroup; on cgroup v1 the sum of its processes'
               ``read_bytes``/``write_bytes`` (/proc/PID/io; a reaped child's count is in its
               parent's).  Not v1's ``blkio.throttle.io_service_bytes``: recent kernels (6.18
               here, measured) count there only once a throttle rule was set on the disk
               (it reads 0 on most hosts), and v1 charges written-back pages to the root
               cgroup, not to the writer's
vm             bytes: the pod's processes' virtual sizes (``VmSize``, /proc/PID/status)
rss            bytes: the pod cgroup's anonymous memory (v2 ``memory.stat`` ``anon``, v1
               ``total_rss``)
=============  ==========================================================================

Period values are differences from the previous sample (the first one, when the pod is
first seen, is the baseline: 0).  Pods are found by scanning /proc/*/cgroup each period.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional

from pipeline import pods as P

TABLE = "pod"


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> Dict[str, str]:
    """{v1 controller: mount point, "": the v2 mount point}."""
    out: Dict[str, str] = {}
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        try:
            sep = parts.index("-")
        except ValueError:
            continue
        fstype, opts = parts[sep + 1], parts[sep + 3] if len(parts) > sep + 3 else ""
        if fstype == "cgroup2":
            out.setdefault("", parts[4])
        elif fstype == "cgroup":
            for o in opts.split(","):
                if o in ("cpuacct", "memory", "cpu"):
                    out.setdefault(o, parts[4])
    return out


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _kv(text: Optional[str], key: str) -> Optional[int]:
    if not text:
        return None
    for line in text.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] == key:
            try:
                return int(f[1])
            except ValueError:
                return None
    return None


def cgroup_counters(pod_path: str, mounts: Dict[str, str]):
    """(cpu ns, read bytes, written bytes, rss bytes) of a cgroup; None where unreadable
    (the I/O bytes: without a v2 ``io.stat``)."""
    v2 = mounts.get("")
    cpu = None
    if "cpuacct" in mounts:
        t = _read(os.path.join(mounts["cpuacct"] + pod_path, "cpuacct.usage"))
        cpu = int(t) if t and t.strip().isdigit() else None
    if cpu is None and v2:
        us = _kv(_read(os.path.join(v2 + pod_path, "cpu.stat")), "usage_usec")
        cpu = us * 1000 if us is not None else None
    rd = wr = None
    io = _read(os.path.join(v2 + pod_path, "io.stat")) if v2 else None
    if io is not None:
        rd = wr = 0
        for line in io.splitlines():
            for kv in line.split()[1:]:
                k, _, v = kv.partition("=")
                if k == "rbytes" and v.isdigit():
                    rd += int(v)
                elif k == "wbytes" and v.isdigit():
                    wr += int(v)
    rss = None
    if "memory" in mounts:
        rss = _kv(_read(os.path.join(mounts["memory"] + pod_path, "memory.stat")), "total_rss")
    if rss is None and v2:
        rss = _kv(_read(os.path.join(v2 + pod_path, "memory.stat")), "anon")
    return cpu, rd, wr, rss


def net_counters(pid: int, proc: str = P.PROC):
    """(tx bytes, rx bytes) of the network namespace of ``pid``, ``lo`` left out."""
    t = _read("%s/%d/net/dev" % (proc, pid))
    if t is None:
        return None
    tx = rx = 0
    for line in t.splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        if name.strip() == "lo" or len(f) < 9:
            continue
        rx += int(f[0])
        tx += int(f[8])
    return tx, rx


def _vmsize(pid: int, proc: str) -> int:
    t = _read("%s/%d/status" % (proc, pid))
    if t:
        for line in t.splitlines():
            if line.startswith("VmSize:"):
                f = line.split()
                return int(f[1]) * 1024 if len(f) > 1 and f[1].isdigit() else 0
    return 0


def task_io(pid: int, proc: str = P.PROC):
    """(read_bytes, write_bytes) of process ``pid`` and its reaped children (/proc/PID/io)."""
    t = _read("%s/%d/io" % (proc, pid))
    rd, wr = _kv(t, "read_bytes:"), _kv(t, "write_bytes:")
    return (rd, wr) if rd is not None and wr is not None else None


class PodTable:
    def __init__(self, resolver: Optional[P.Resolver] = None, proc: str = P.PROC,
                 mounts: Optional[Dict[str, str]] = None):
        self.resolver = resolver or P.resolver()
        self.proc = proc
        self.mounts = mounts if mounts is not None else cgroup_mounts()
        self.prev: Dict[str, tuple] = {}
        # cgroup v1's I/O: {pod uid: ({pid: (read, written)}, [read, written] so far)}
        self.pod_io: Dict[str, tuple] = {}
        self.own_netns = P.netns_of(os.getpid(), proc)

    def scan(self, wanted: Optional[Callable[[int], bool]] = None):
        """{pod uid: (meta, pod_path, [pids], {container ids})} of pods with a process in
        scope."""
        found: Dict[str, list] = {}
        for pid in P._pids(self.proc):
            ident = self.resolver.identity(pid)
            if ident is None or not ident.info.pod_uid:
                continue
            uid = ident.info.pod_uid
            ent = found.get(uid)
            if ent is None:
                ent = found[uid] = [ident.meta, ident.info.pod_path, [], set(), False]
            if not ent[0].pod_name and ident.meta.pod_name:
                ent[0] = ident.meta
            ent[2].append(pid)
            if ident.info.container_id and not ident.meta.sandbox:
                ent[3].add(ident.info.container_id)
            if wanted is None or wanted(pid):
                ent[4] = True
        return {u: e for u, e in found.items() if e[4]}

    def rows(self, wanted: Optional[Callable[[int], bool]] = None, emit: bool = True):
        """The rows of this period (and the new baselines)."""
        now = time.monotonic()
        out = []
        seen = set()
        for uid, (meta, path, pids, cids, _) in self.scan(wanted).items():
            seen.add(uid)
            cpu, rd, wr, rss = cgroup_counters(path, self.mounts)
            if rd is None:
                rd, wr = self._tasks_io(uid, pids)
            netpid = pids[0]
            ns = P.netns_of(netpid, self.proc)
            net = net_counters(netpid, self.proc) if ns != self.own_netns else (0, 0)
            tx, rx = net if net else (0, 0)
            vm = sum(_vmsize(p, self.proc) for p in pids)
            cur = (now, cpu or 0, tx, rx, rd or 0, wr or 0)
            prev = self.prev.get(uid, cur)
            self.prev[uid] = cur
            if not emit:
                continue
            dt = cur[0] - prev[0]
            d = [max(0, a - b) for a, b in zip(cur[1:], prev[1:])]
            out.append({
                "pod_name": meta.pod_name or uid,
                "pod_ip": P.netns_ip(netpid, self.proc) or "",
                "container_cnt": len(cids),
                "cpu": "%.2f" % (d[0] / (dt * 1e9) * 100 if dt > 0 else 0.0),
                "network_tx": d[1], "network_rx": d[2],
                "bytes_read": d[3], "bytes_write": d[4],
                "vm": vm, "rss": rss or 0,
            })
        for uid in list(self.prev):
            if uid not in seen:
                del self.prev[uid]          # the pod is gone (or out of scope)
                self.pod_io.pop(uid, None)
        return out

    def _tasks_io(self, uid: str, pids):
        """The pod's storage bytes (read, written) so far, summed from its processes' own
        counts: a process new to the pod counts from 0, one that is gone keeps what it had
        (what it did after the last sample and before its end is not seen, unless its parent
        in the pod reaped it), a count that went down is a reused pid."""
        old = self.pod_io.get(uid)
        first = old is None
        now: Dict[int, tuple] = {}
        acc = [0, 0] if first else old[1]
        before = {} if first else old[0]
        for pid in pids:
            io = task_io(pid, self.proc)
            if io is None:
                continue
            now[pid] = io
            if first:
                continue
            b = before.get(pid, (0, 0))
            for i in (0, 1):
                acc[i] += io[i] - b[i] if io[i] >= b[i] else io[i]
        self.pod_io[uid] = (now, acc)
        return acc[0], acc[1]


_TABLE: Optional[PodTable] = None


def report_pods(writer, wanted=None, emit=True):
    """Print this period's pod rows (``emit=False``: take the baselines only)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = PodTable()
    for row in _TABLE.rows(wanted, emit):
        writer.emit(TABLE, row)
