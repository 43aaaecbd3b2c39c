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
bytes_read/    bytes read / written in the period by the pod's cgroup: v2 ``io.stat``
bytes_write    ``rbytes``/``wbytes``, else v1 ``blkio.throttle.io_service_bytes_recursive``
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
                if o in ("cpuacct", "memory", "blkio", "cpu"):
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
    """(cpu ns, read bytes, written bytes, rss bytes) of a cgroup; None where unreadable."""
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
    elif "blkio" in mounts:
        t = _read(os.path.join(mounts["blkio"] + pod_path,
                               "blkio.throttle.io_service_bytes_recursive"))
        if t is not None:
            rd = wr = 0
            for line in t.splitlines():
                f = line.split()
                if len(f) == 3 and f[2].isdigit():
                    if f[1] == "Read":
                        rd += int(f[2])
                    elif f[1] == "Write":
                        wr += int(f[2])
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


class PodTable:
    def __init__(self, resolver: Optional[P.Resolver] = None, proc: str = P.PROC,
                 mounts: Optional[Dict[str, str]] = None):
        self.resolver = resolver or P.resolver()
        self.proc = proc
        self.mounts = mounts if mounts is not None else cgroup_mounts()
        self.prev: Dict[str, tuple] = {}
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
        return out


_TABLE: Optional[PodTable] = None


def report_pods(writer, wanted=None, emit=True):
    """Print this period's pod rows (``emit=False``: take the baselines only)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = PodTable()
    for row in _TABLE.rows(wanted, emit):
        writer.emit(TABLE, row)
