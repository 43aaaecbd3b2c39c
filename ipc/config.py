"""The probe's run-time settings, from an IPC message or from command-line options.

``settings_from_ipc`` turns a decoded gala-gopher message into :class:`ProbeSettings`;
``settings_from_options`` builds the same thing from standalone options.  Container scoping
is done by pid: a container's processes are found by scanning ``/proc/*/cgroup``
(:func:`pids_of_containers`), which the runtime may repeat (:func:`refresh_pids`) to pick up
processes started after the message.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Dict, FrozenSet, Iterable, Optional, Sequence, Tuple, Union

from ipc.message import (Container, IpcConfig, PROBE_RANGE_L7BYTES_METRICS,
                         PROBE_RANGE_L7RPC_METRICS, PROBE_RANGE_L7RPC_TRACE,
                         SNOOPER_STATE_BLACKLIST)
from protocol import registry

DEFAULT_PERIOD = 5
MAX_PERIOD = 86400
PID_MAX_LIMIT = 4194304                 # kernel PID_MAX_LIMIT on 64-bit

TABLE_LINK = "l7_link"
TABLE_RPC = "l7_rpc"
TABLE_RPC_API = "l7_rpc_api"
TABLE_TRACE = "l7_trace"
TABLE_POD = "pod"                       # sub-probe l7_pod_metrics (pipeline/podtable.py)
PROBE_RANGE_L7POD_METRICS = 0x8         # our extension: upstream has no such sub-probe
ALL_TABLES = frozenset((TABLE_LINK, TABLE_RPC, TABLE_RPC_API, TABLE_TRACE))

# gala-gopher sub-probe names (REST cmd.probe, --range) -> PROBE_RANGE_* bit
RANGE_BITS = {
    "l7_bytes_metrics": PROBE_RANGE_L7BYTES_METRICS,
    "l7_rpc_metrics": PROBE_RANGE_L7RPC_METRICS,
    "l7_rpc_trace": PROBE_RANGE_L7RPC_TRACE,
    "l7_pod_metrics": PROBE_RANGE_L7POD_METRICS,     # not in "all" nor the default
}
ALL_RANGES = PROBE_RANGE_L7BYTES_METRICS | PROBE_RANGE_L7RPC_METRICS | PROBE_RANGE_L7RPC_TRACE


@dataclass(frozen=True)
class ProbeSettings:
    period: int = DEFAULT_PERIOD                 # report period, seconds
    proto_flags: int = registry.ALL_FLAGS        # l7_probe_proto_flags bits
    tables: FrozenSet[str] = ALL_TABLES          # tables to print
    pids: Optional[FrozenSet[int]] = None        # whitelist; None = every process
    containers: Tuple[Container, ...] = ()       # containers in scope (libssl paths too)
    support_ssl: bool = True                     # attach OpenSSL / Go TLS uprobes
    # Extensions (defaults keep the six fields above sufficient):
    proc_pids: Optional[FrozenSet[int]] = None   # explicit pids before container expansion
    exclude_pids: FrozenSet[int] = frozenset()   # IPC blacklist (snooper_state 1)
    cluster_ip_backend: int = 0
    pods: Tuple[str, ...] = ()                   # --pod NAME|UID (pipeline/pods.py)


def tables_from_range(range_flags: int) -> FrozenSet[str]:
    tables = set()
    if range_flags & PROBE_RANGE_L7BYTES_METRICS:
        tables.add(TABLE_LINK)
    if range_flags & PROBE_RANGE_L7RPC_METRICS:
        tables.update((TABLE_RPC, TABLE_RPC_API))
    if range_flags & PROBE_RANGE_L7RPC_TRACE:
        tables.add(TABLE_TRACE)
    if range_flags & PROBE_RANGE_L7POD_METRICS:
        tables.add(TABLE_POD)
    return frozenset(tables)


# ---------------------------------------------------------------------------------------
# Containers: /proc/PID/cgroup

_HEX64 = re.compile(rb"(?:(.*)-)?([0-9a-f]{64})")


def _container_id_of_cgroup(data: bytes) -> Optional[str]:
    """The container id in the content of a /proc/PID/cgroup file, or None.

    Recognised path components (the last one of a path wins, so nested containers give the
    innermost): ``<id>`` (docker/containerd cgroupfs, kubepods), ``docker-<id>.scope``,
    ``cri-containerd-<id>.scope``, ``crio-<id>.scope``, ``libpod-<id>.scope`` (podman).
    conmon scopes (``libpod-conmon-<id>``, ``crio-conmon-<id>``) are not the container.
    """
    for line in data.splitlines():
        parts = line.split(b":", 2)
        if len(parts) != 3:
            continue
        found = None
        for comp in parts[2].split(b"/"):
            if comp.endswith(b".scope"):
                comp = comp[:-6]
            m = _HEX64.fullmatch(comp)
            if m and not (m.group(1) or b"").endswith(b"conmon"):
                found = m.group(2)
        if found is not None:
            return found.decode()
    return None


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def container_of_pid(pid: int, proc_root: str = "/proc") -> Optional[str]:
    """The (64-hex) id of the container process ``pid`` runs in, or None (host / unknown)."""
    data = _read("%s/%d/cgroup" % (proc_root, pid))
    return _container_id_of_cgroup(data) if data else None


def _cgroup_dir(data: bytes, cgroup_root: str) -> Optional[Tuple[str, ...]]:
    """Where a process's cgroup directory may be, for comparing with gala-gopher's
    ``cpucg_inode``: the cpuset v1 directory if there is a cpuset hierarchy, else the v2
    one (``cgroup_root`` or, on hybrid hosts, ``cgroup_root/unified``).  Inode numbers are
    only compared within that one hierarchy.  None for the root cgroup (never a container).
    """
    v2 = None
    for line in data.splitlines():
        parts = line.split(b":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if b"cpuset" in ctrls.split(b","):
            if path in (b"/", b""):
                return None
            return (cgroup_root + "/cpuset" + os.fsdecode(path),)
        if hid == b"0" and ctrls == b"" and path not in (b"/", b""):
            p = os.fsdecode(path)
            v2 = (cgroup_root + p, cgroup_root + "/unified" + p)
    return v2


def _pid_dirs(proc_root: str):
    try:
        with os.scandir(proc_root) as it:
            for entry in it:
                if entry.name.isdigit():
                    yield int(entry.name)
    except OSError:
        return


def pids_of_containers(containers: Sequence[Tuple[Optional[str], int]],
                       proc_root: str = "/proc",
                       cgroup_root: str = "/sys/fs/cgroup") -> Dict[int, FrozenSet[int]]:
    """One scan of ``proc_root/*/cgroup`` for several containers at once.

    ``containers``: ``(container_id, cpucg_inode)`` pairs; an id may be full or a prefix
    (the 12-digit short id); an inode of 0 is not used.  Returns
    ``{index in containers: pids}``.  A process matches when its container id starts with
    the wanted id, or when its cgroup directory (cpuset v1, else v2) has the inode.  Reads
    each /proc/PID/cgroup once and stats each distinct cgroup directory once.
    """
    if not containers:
        return {}
    wanted = []
    inodes = {}
    for i, (cid, inode) in enumerate(containers):
        cid_b = cid.strip().lower().encode() if cid and cid.strip() else None
        wanted.append(cid_b)
        if inode:
            inodes.setdefault(inode, []).append(i)
    result = {i: set() for i in range(len(containers))}
    stat_cache: Dict[Tuple[str, ...], Optional[int]] = {}
    for pid in _pid_dirs(proc_root):
        data = _read("%s/%d/cgroup" % (proc_root, pid))
        if not data:
            continue
        cid = _container_id_of_cgroup(data)
        cid_b = cid.encode() if cid else None
        for i, w in enumerate(wanted):
            if w is None:
                continue
            if cid_b is not None:
                if cid_b.startswith(w):
                    result[i].add(pid)
            elif len(w) >= 12 and w in data and b"conmon" not in data:
                result[i].add(pid)      # an id in a cgroup layout we do not parse
        if inodes:
            dirs = _cgroup_dir(data, cgroup_root)
            ino = None
            if dirs is not None:
                if dirs in stat_cache:
                    ino = stat_cache[dirs]
                else:
                    for d in dirs:
                        try:
                            ino = os.stat(d).st_ino
                            break
                        except OSError:
                            pass
                    stat_cache[dirs] = ino
            for i in inodes.get(ino, ()):
                result[i].add(pid)
    return {i: frozenset(p) for i, p in result.items()}


def pids_of_container(container_id: Optional[str], cpucg_inode: int = 0,
                      proc_root: str = "/proc",
                      cgroup_root: str = "/sys/fs/cgroup") -> FrozenSet[int]:
    """Pids of the processes of one container (by id, full or short, or by cgroup inode)."""
    return pids_of_containers([(container_id, cpucg_inode)], proc_root, cgroup_root)[0]


# ---------------------------------------------------------------------------------------
# Settings

def _expand(proc_pids: FrozenSet[int], containers: Tuple[Container, ...], proc_root: str,
            cgroup_root: str, pods: Tuple[str, ...] = ()) -> FrozenSet[int]:
    pids = set(proc_pids)
    pods = tuple(pods) + tuple(c.pod_id for c in containers if c.pod_id)
    if pods:
        from pipeline.pods import resolver
        pids.update(resolver().pids_of_pods(pods))
    if containers:
        found = pids_of_containers([(c.container_id, c.cpucg_inode) for c in containers],
                                   proc_root, cgroup_root)
        for p in found.values():
            pids.update(p)
    return frozenset(pids)


def settings_from_ipc(cfg: IpcConfig, proc_root: str = "/proc",
                      cgroup_root: str = "/sys/fs/cgroup") -> ProbeSettings:
    """Settings for a decoded gala-gopher message.

    Sub-probes 0x1 -> l7_link, 0x2 -> l7_rpc + l7_rpc_api, 0x4 -> l7_trace; period 0 ->
    5 s; whitelist = proc objects plus the processes of each container object.  A blacklist
    message (snooper_state 1) watches every process except those.
    """
    objs = _expand(frozenset(cfg.pids), cfg.containers, proc_root, cgroup_root)
    blacklist = cfg.snooper_state == SNOOPER_STATE_BLACKLIST
    return ProbeSettings(
        period=cfg.period or DEFAULT_PERIOD,
        proto_flags=cfg.proto_flags,
        tables=tables_from_range(cfg.range_flags),
        pids=None if blacklist else objs,
        containers=cfg.containers,
        support_ssl=bool(cfg.support_ssl),
        proc_pids=frozenset(cfg.pids),
        exclude_pids=objs if blacklist else frozenset(),
        cluster_ip_backend=cfg.cluster_ip_backend,
    )


def refresh_pids(settings: ProbeSettings, proc_root: str = "/proc",
                 cgroup_root: str = "/sys/fs/cgroup") -> ProbeSettings:
    """Re-expand the containers (new processes started in them); same object if no scope."""
    if not settings.containers and not settings.pods:
        return settings
    objs = _expand(settings.proc_pids or frozenset(), settings.containers, proc_root,
                   cgroup_root, settings.pods)
    if settings.pids is None and settings.exclude_pids:
        return replace(settings, exclude_pids=objs)
    if settings.pids is None:
        return settings
    return replace(settings, pids=objs)


def _items(values) -> Iterable[str]:
    """Flatten None / a value / a list of values, each possibly a comma list."""
    if values is None:
        return
    if isinstance(values, (str, int)):
        values = [values]
    for v in values:
        for item in str(v).split(","):
            item = item.strip()
            if item:
                yield item


def _parse_period(period) -> int:
    if period is None:
        return DEFAULT_PERIOD
    try:
        value = int(str(period).strip())
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_PERIOD:
        raise ValueError("invalid period %r: expected whole seconds from 1 to %d"
                         % (period, MAX_PERIOD))
    return value


def _parse_range(range_) -> int:
    if range_ is None:
        return ALL_RANGES
    flags = 0
    for name in _items(range_):
        name = name.lower()
        if name == "all":
            flags |= ALL_RANGES
        elif name in RANGE_BITS:
            flags |= RANGE_BITS[name]
        else:
            raise ValueError("unknown sub-probe %r in --range (known: %s, all)"
                             % (name, ",".join(RANGE_BITS)))
    if not flags:
        raise ValueError("--range selects no sub-probe (known: %s)" % ",".join(RANGE_BITS))
    return flags


def _parse_proto(proto) -> int:
    if proto is None:
        return registry.ALL_FLAGS
    text = ",".join(_items(proto))
    flags = registry.flags_from_names(text)   # ValueError names the unknown protocol
    if not flags:
        raise ValueError("--proto selects no protocol")
    return flags


def _parse_pids(pids) -> Optional[FrozenSet[int]]:
    if pids is None:
        return None
    out = set()
    for item in _items(pids):
        if not item.isdigit() or not 0 < int(item) <= PID_MAX_LIMIT:
            raise ValueError("invalid pid %r: expected a positive process id" % item)
        out.add(int(item))
    return frozenset(out)


_CID_RE = re.compile(r"[0-9a-f]{12,64}")


def _parse_containers(containers) -> Tuple[Container, ...]:
    out = []
    for item in _items(containers):
        cid = item.lower()
        if not _CID_RE.fullmatch(cid):
            raise ValueError("invalid container id %r: expected 12 to 64 hex digits "
                             "(full or short id)" % item)
        out.append(Container(0, cid, None))
    return tuple(out)


_POD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}(?:/[A-Za-z0-9][A-Za-z0-9_.-]{0,252})?")


def _parse_pods(pods) -> Tuple[str, ...]:
    out = []
    for item in _items(pods):
        if not _POD_RE.fullmatch(item):
            raise ValueError("invalid pod %r: expected a pod name, namespace/name, uid or "
                             "id" % item)
        out.append(item)
    return tuple(out)


def settings_from_options(period=None, proto=None, range_=None,
                          pids: Union[None, str, int, Iterable] = None,
                          containers: Union[None, str, Iterable[str]] = None,
                          no_ssl: bool = False, proc_root: str = "/proc",
                          cgroup_root: str = "/sys/fs/cgroup",
                          pods: Union[None, str, Iterable[str]] = None) -> ProbeSettings:
    """Settings for standalone mode.  Raises ValueError with a one-line message.

    ``proto``: ``"http,redis"``/``"all"``; ``range_``: ``l7_bytes_metrics,l7_rpc_metrics,
    l7_rpc_trace``/``"all"``; ``pids``/``containers``: values or lists of comma lists.
    ``pods``: pod names (or ``namespace/name``, uid, Podman pod id): every process of
    their containers, also those started later (:func:`refresh_pids`).
    With pids, containers and/or pods, only those processes are watched (union).
    """
    period_v = _parse_period(period)
    proto_flags = _parse_proto(proto)
    tables = tables_from_range(_parse_range(range_))
    proc_pids = _parse_pids(pids)
    cons = _parse_containers(containers)
    pod_names = _parse_pods(pods)
    if proc_pids is None and not cons and not pod_names:
        pid_set = None
    else:
        pid_set = _expand(proc_pids or frozenset(), cons, proc_root, cgroup_root, pod_names)
    return ProbeSettings(
        period=period_v,
        proto_flags=proto_flags,
        tables=tables,
        pids=pid_set,
        containers=cons,
        support_ssl=not no_ssl,
        proc_pids=proc_pids if pid_set is not None else None,
        pods=pod_names,
    )
