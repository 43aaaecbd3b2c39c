"""Who is who: the container and pod of a process, from its cgroup and the runtime's metadata.

``labels_of(tgid)`` gives the JSON labels of a traced process: ``comm``, ``container_id``,
``container_name``, ``pod``, ``pod_id``, ``pod_namespace`` (empty strings where none).

Where each piece comes from:

* ``/proc/PID/cgroup`` (v2 line ``0::`` or any v1 line; the innermost container wins):
  the container id and the runtime from the path component that holds it, the pod uid from a
  kubelet ``pod<uid>`` component, the QoS class from ``kubepods-<qos>`` / ``kubepods/<qos>``.
  Layouts recognised (:func:`parse_cgroup_path`):

  ===================  ========================================================================
  kubelet, systemd     ``/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/
                       <rt>-<id>.scope`` (guaranteed: no ``<qos>`` level)
  kubelet, cgroupfs    ``/kubepods/<qos>/pod<uid>/<id>`` (guaranteed: ``/kubepods/pod<uid>``)
  Docker               ``/docker/<id>``, ``/system.slice/docker-<id>.scope``
  containerd           ``/<namespace>/<id>``, ``cri-containerd-<id>.scope``
  CRI-O                ``crio-<id>.scope`` (``crio-conmon-<id>`` is conmon, not the container)
  Podman               ``/libpod_parent/[<pod id>/]libpod-<id>``,
                       ``/machine.slice/[machine-libpod_pod_<pod id>.slice/]libpod-<id>.scope``
  ===================  ========================================================================

  ``<rt>`` is ``docker``, ``cri-containerd``, ``crio`` or ``libpod``; ``<uid_>`` is the pod
  uid with ``_`` for ``-`` (the systemd driver's escaping).
* Names, from the runtime's own files, found by container id: the OCI bundle's
  ``config.json`` annotations (CRI-O ``io.kubernetes.pod.*``/``io.kubernetes.container.name``,
  containerd ``io.kubernetes.cri.*``), Docker's ``config.v2.json`` (name and kubernetes
  labels), Podman's state database (container name, pod id and pod name are stored there as
  JSON text, read with a regular expression, re-read when the file changes), and the
  container's monitor (``conmon -n NAME``; CRI-O and dockershim names
  ``k8s_<container>_<pod>_<namespace>_<uid>_<n>`` are split).
* The pod IP: the first non-loopback local IPv4 address of the process's network namespace
  (``/proc/PID/net/fib_trie``), else IPv6 (``/proc/PID/net/if_inet6``).

Caches are bounded (LRU): per process (revalidated by its start time at most every
``REVALIDATE`` seconds, dropped when it execs or exits), per container id, per netns.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
import time
from collections import OrderedDict
from typing import Dict, FrozenSet, Iterable, NamedTuple, Optional

PROC = "/proc"
REVALIDATE = 2.0              # seconds between start-time checks of a cached process
MAX_PROCS = 16384
MAX_CONTAINERS = 4096
MAX_DB_BYTES = 64 << 20       # Podman state database: larger ones are not read

PODMAN_DBS = ("/var/lib/containers/storage/libpod/bolt_state.db",
              "/var/lib/containers/storage/db.sql")
# OCI bundles and runtime metadata by container id (%s); <ns> globs are expanded
BUNDLES = (
    "/run/containers/storage/overlay-containers/%s/userdata/config.json",        # CRI-O
    "/var/lib/containers/storage/overlay-containers/%s/userdata/config.json",    # Podman
    "/run/containerd/io.containerd.runtime.v2.task/k8s.io/%s/config.json",       # containerd
    "/run/containerd/io.containerd.runtime.v2.task/moby/%s/config.json",
    "/run/containerd/io.containerd.runtime.v2.task/default/%s/config.json",
)
DOCKER_CONFIG = "/var/lib/docker/containers/%s/config.v2.json"

_ID = r"[0-9a-f]{64}"
_HEX64 = re.compile(_ID)
_RUNTIME_PREFIX = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o",
                   "libpod": "podman"}
_SCOPED = re.compile(r"(?:(docker|cri-containerd|crio|libpod)-)?(%s)(?:\.scope)?" % _ID)
_POD_SYSTEMD = re.compile(r"kubepods(?:-(besteffort|burstable))?-pod"
                          r"([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}|"
                          r"[0-9a-f]{32})\.slice")
_POD_CGROUPFS = re.compile(r"pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"
                           r"[0-9a-f]{32})")
_QOS_SLICE = re.compile(r"kubepods-(besteffort|burstable)\.slice")
_PODMAN_POD_SLICE = re.compile(r"machine-libpod_pod_(%s)\.slice" % _ID)

class CgroupInfo(NamedTuple):
    container_id: str = ""        # 64 hex digits, or ""
    runtime: str = ""             # docker, containerd, cri-o, podman, or "" (unknown)
    pod_uid: str = ""             # kubelet pod uid (with dashes) or Podman pod id
    qos: str = ""                 # guaranteed, burstable, besteffort (kubelet), or ""
    pod_path: str = ""            # the pod's cgroup path (for the pod table), or ""


def parse_cgroup_path(path: str) -> CgroupInfo:
    """Container and pod of one cgroup path (see the module doc for the layouts)."""
    comps = [c for c in path.split("/") if c]
    if comps and "conmon" in comps[-1]:
        return CgroupInfo()         # the runtime's monitor, not the container
    cid = runtime = pod = qos = pod_path = ""
    kube = False
    for i, comp in enumerate(comps):
        prev = comps[i - 1] if i else ""
        if comp.startswith("kubepods"):
            kube = True
            m = _POD_SYSTEMD.fullmatch(comp)
            if m:
                qos = m.group(1) or qos
                pod = m.group(2).replace("_", "-")
                pod_path = "/" + "/".join(comps[:i + 1])
            else:
                q = _QOS_SLICE.fullmatch(comp)
                if q:
                    qos = q.group(1)
            continue
        if kube and not pod:
            if comp in ("besteffort", "burstable"):
                qos = comp
                continue
            m = _POD_CGROUPFS.fullmatch(comp)
            if m:
                pod = m.group(1)
                pod_path = "/" + "/".join(comps[:i + 1])
                continue
        m = _PODMAN_POD_SLICE.fullmatch(comp)
        if m:
            pod, runtime = m.group(1), "podman"
            pod_path = "/" + "/".join(comps[:i + 1])
            continue
        if prev == "libpod_parent" and i + 1 < len(comps) and _HEX64.fullmatch(comp):
            pod, runtime = comp, "podman"          # Podman cgroupfs: the pod's directory
            pod_path = "/" + "/".join(comps[:i + 1])
            continue
        m = _SCOPED.fullmatch(comp)
        if m:
            cid = m.group(2)
            prefix = m.group(1)
            runtime = (_RUNTIME_PREFIX[prefix] if prefix else
                       "docker" if prev == "docker" else "")
    if kube and pod and not qos:
        qos = "guaranteed"
    if not cid and not pod:
        return CgroupInfo()
    return CgroupInfo(cid, runtime if cid else "", pod, qos, pod_path)


def parse_cgroup_file(data: bytes) -> CgroupInfo:
    """The :class:`CgroupInfo` of a /proc/PID/cgroup content: the v2 line if it names a
    container, else the first v1 line that does."""
    best = CgroupInfo()
    for line in data.splitlines():
        parts = line.split(b":", 2)
        if len(parts) != 3 or parts[2] in (b"/", b""):
            continue
        info = parse_cgroup_path(os.fsdecode(parts[2]))
        if info.container_id or info.pod_uid:
            if parts[0] == b"0":
                return info
            if not best.container_id and not best.pod_uid:
                best = info
    return best


# ---------------------------------------------------------------------------------------
# runtime metadata

class ContainerMeta(NamedTuple):
    name: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    sandbox: bool = False       # the pod's pause / infra container


_SANDBOX = (("io.kubernetes.cri.container-type", "sandbox"),
            ("io.kubernetes.cri-o.ContainerType", "sandbox"),
            ("io.kubernetes.docker.type", "podsandbox"))


def _read(path: str, limit: int = 1 << 20) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def _k8s_name(name: str) -> Optional[ContainerMeta]:
    """dockershim / CRI-O conmon names: k8s_<container>_<pod>_<namespace>_<uid>_<attempt>
    (``k8s_POD_...`` is the sandbox)."""
    parts = name.split("_")
    if len(parts) >= 6 and parts[0] == "k8s":
        return ContainerMeta(parts[1], parts[2], parts[3], parts[4])
    return None


def meta_from_annotations(ann: dict) -> ContainerMeta:
    """Names from OCI config.json annotations (CRI-O, containerd) or Docker labels."""
    def g(*keys):
        for k in keys:
            v = ann.get(k)
            if isinstance(v, str) and v:
                return v
        return ""
    return ContainerMeta(
        g("io.kubernetes.container.name", "io.kubernetes.cri.container-name",
          "io.kubernetes.cri-o.ContainerName"),
        g("io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name"),
        g("io.kubernetes.pod.namespace", "io.kubernetes.cri.sandbox-namespace"),
        g("io.kubernetes.pod.uid", "io.kubernetes.cri.sandbox-uid"))


class _PodmanDb:
    """Container and pod names from Podman's state database (BoltDB, or SQLite from 4.8):
    both keep each object's configuration as JSON text starting ``{"id":..,"name":..``;
    read again whenever the file changes."""

    _CTR = re.compile(rb'"id":"(' + _ID.encode() + rb')","name":"([^"\\]{1,253})"'
                      rb'(?:,"pod":"(' + _ID.encode() + rb')")?')

    def __init__(self, paths=PODMAN_DBS):
        self.paths = paths
        self.stamp = None
        self.names: Dict[str, tuple] = {}

    def lookup(self, cid: str):
        self._refresh()
        return self.names.get(cid)

    def _refresh(self):
        stamp = []
        for p in self.paths:
            try:
                st = os.stat(p)
                stamp.append((p, st.st_mtime_ns, st.st_size))
            except OSError:
                pass
        stamp = tuple(stamp)
        if stamp == self.stamp:
            return
        self.stamp = stamp
        names = {}
        for p, _, size in stamp:
            if size > MAX_DB_BYTES:
                continue
            data = _read(p, MAX_DB_BYTES)
            if not data:
                continue
            for m in self._CTR.finditer(data):
                names[m.group(1).decode()] = (m.group(2).decode("utf-8", "replace"),
                                              m.group(3).decode() if m.group(3) else "")
        self.names = names


def _ancestor_monitor(pid: int, proc: str) -> Optional[list]:
    """The command line of the container's monitor (conmon, containerd-shim) above pid."""
    for _ in range(8):
        st = _read("%s/%d/stat" % (proc, pid), 4096)
        if not st:
            return None
        try:
            ppid = int(st[st.rindex(b")") + 2:].split()[1])
        except (ValueError, IndexError):
            return None
        if ppid <= 1:
            return None
        cmd = _read("%s/%d/cmdline" % (proc, ppid), 65536) or b""
        argv = [a.decode("utf-8", "replace") for a in cmd.split(b"\0") if a]
        if argv and ("conmon" in os.path.basename(argv[0]) or
                     "containerd-shim" in os.path.basename(argv[0])):
            return argv + ["--cwd=" + (_readlink("%s/%d/cwd" % (proc, ppid)) or "")]
        pid = ppid
    return None


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def _arg(argv, *names):
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1:]
    return None


def _config_annotations(path: str) -> Optional[dict]:
    data = _read(path, 4 << 20)
    if not data:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    ann = doc.get("annotations")
    if not isinstance(ann, dict):
        ann = {}
    if isinstance(doc.get("Config"), dict):       # Docker's config.v2.json
        labels = doc["Config"].get("Labels")
        ann = dict(labels) if isinstance(labels, dict) else {}
        if isinstance(doc.get("Name"), str):
            ann.setdefault("docker.name", doc["Name"].lstrip("/"))
    env = (doc.get("process") or {}).get("env") if isinstance(doc.get("process"), dict) else None
    if isinstance(env, list):
        for e in env:
            if isinstance(e, str) and e.startswith("HOSTNAME="):
                ann.setdefault("env.hostname", e[9:])
    return ann


def container_meta(cid: str, pid: int, info: CgroupInfo, proc: str = PROC,
                   podman_db: Optional[_PodmanDb] = None, root: str = "") -> ContainerMeta:
    """Names of container ``cid`` (one of whose processes is ``pid``)."""
    name = pod_name = pod_ns = pod_uid = ""
    monitor = _ancestor_monitor(pid, proc) if pid else None
    paths = [root + p % cid for p in BUNDLES]
    if monitor:
        b = _arg(monitor, "-b", "--bundle")
        if b:
            paths.insert(0, os.path.join(b, "config.json"))
        cwd = _arg(monitor, "--cwd")
        if cwd and cid in cwd:
            paths.insert(0, os.path.join(cwd, "config.json"))
    paths.append(root + DOCKER_CONFIG % cid)
    ann = None
    for p in paths:
        ann = _config_annotations(p)
        if ann is not None:
            break
    hostname = ""
    if ann:
        m = meta_from_annotations(ann)
        name, pod_name, pod_ns, pod_uid = m[:4]
        name = name or ann.get("docker.name", "")
        hostname = ann.get("env.hostname", "")
        k = _k8s_name(name)
        if k:
            name, pod_name, pod_ns, pod_uid = (k.name, pod_name or k.pod_name,
                                               pod_ns or k.pod_namespace, pod_uid or k.pod_uid)
    if info.runtime == "podman" or (podman_db is not None and not name):
        hit = podman_db.lookup(cid) if podman_db is not None else None
        if hit:
            name = name or hit[0]
            if hit[1]:
                pod_uid = pod_uid or hit[1]
                pod = podman_db.names.get(hit[1])
                pod_name = pod_name or (pod[0] if pod else "")
    if not name and monitor:
        n = _arg(monitor, "-n", "--name")
        if n:
            k = _k8s_name(n)
            if k:
                name, pod_name, pod_ns, pod_uid = (k.name, pod_name or k.pod_name,
                                                   pod_ns or k.pod_namespace,
                                                   pod_uid or k.pod_uid)
            else:
                name = n
    if (info.pod_uid or pod_uid) and not pod_name and hostname:
        pod_name = hostname        # Kubernetes and Podman give a pod's containers its name
    pod_uid = pod_uid or info.pod_uid
    sandbox = bool(ann and any(ann.get(k) == v for k, v in _SANDBOX)) or name == "POD" or \
        bool(pod_uid and name == pod_uid[:12] + "-infra")          # Podman's infra
    return ContainerMeta(name, pod_name, pod_ns, pod_uid, sandbox)


# ---------------------------------------------------------------------------------------
# network namespace addresses

def netns_ip(pid: int, proc: str = PROC) -> str:
    """The first non-loopback local address in the network namespace of ``pid``."""
    data = _read("%s/%d/net/fib_trie" % (proc, pid), 1 << 20)
    if data:
        last = None
        for line in data.decode("ascii", "replace").splitlines():
            s = line.strip()
            if s.startswith("|--"):
                last = s[3:].strip()
            elif s == "/32 host LOCAL" and last and not last.startswith("127."):
                return last
    data = _read("%s/%d/net/if_inet6" % (proc, pid))
    if data:
        for line in data.decode("ascii", "replace").splitlines():
            f = line.split()
            if len(f) >= 6 and f[5] != "lo" and not f[0].startswith("fe80"):
                h = f[0]
                try:
                    return str(ipaddress.IPv6Address(int(h, 16)))
                except ValueError:
                    continue
    return ""


def netns_of(pid: int, proc: str = PROC) -> Optional[int]:
    try:
        return os.stat("%s/%d/ns/net" % (proc, pid)).st_ino
    except OSError:
        return None


# ---------------------------------------------------------------------------------------
# the resolver

EMPTY = {"comm": "", "container_id": "", "container_name": "", "pod": "", "pod_id": "",
         "pod_namespace": ""}


class Identity(NamedTuple):
    comm: str
    info: CgroupInfo
    meta: ContainerMeta

    def labels(self):
        return {"comm": self.comm, "container_id": self.info.container_id,
                "container_name": self.meta.name, "pod": self.meta.pod_name,
                "pod_id": self.meta.pod_uid, "pod_namespace": self.meta.pod_namespace}


def _start_time(pid: int, proc: str) -> Optional[bytes]:
    st = _read("%s/%d/stat" % (proc, pid), 4096)
    if not st:
        return None
    try:
        return st[st.rindex(b")") + 2:].split()[19]
    except (ValueError, IndexError):
        return None


class Resolver:
    """Bounded caches from pid to identity (see the module doc)."""

    def __init__(self, proc: str = PROC, podman_dbs=PODMAN_DBS, root: str = ""):
        self.proc = proc
        self.root = root
        self.podman = _PodmanDb(podman_dbs)
        self.procs: "OrderedDict[int, tuple]" = OrderedDict()   # pid -> (start, checked, Identity)
        self.containers: "OrderedDict[str, ContainerMeta]" = OrderedDict()
        self.lock = threading.Lock()

    def identity(self, pid: int) -> Optional[Identity]:
        now = time.monotonic()
        with self.lock:
            hit = self.procs.get(pid)
            if hit is not None:
                self.procs.move_to_end(pid)
                if now - hit[1] < REVALIDATE:
                    return hit[2]
        start = _start_time(pid, self.proc)
        if hit is not None and (start is None or start == hit[0]):
            with self.lock:      # same process (or gone: keep what we knew of it)
                self.procs[pid] = (hit[0], now, hit[2])
            return hit[2]
        if start is None:
            return None
        ident = self._lookup(pid)
        with self.lock:
            self.procs[pid] = (start, now, ident)
            while len(self.procs) > MAX_PROCS:
                self.procs.popitem(last=False)
        return ident

    def forget(self, pid: int) -> None:
        """A process exec'd or exited: look it up afresh next time."""
        with self.lock:
            self.procs.pop(pid, None)

    def _lookup(self, pid: int) -> Identity:
        comm = (_read("%s/%d/comm" % (self.proc, pid)) or b"").decode("utf-8", "replace").strip()
        data = _read("%s/%d/cgroup" % (self.proc, pid)) or b""
        info = parse_cgroup_file(data)
        meta = ContainerMeta(pod_uid=info.pod_uid)
        if info.container_id:
            meta = self.meta(info.container_id, pid, info)
        return Identity(comm, info, meta)

    def meta(self, cid: str, pid: int, info: CgroupInfo) -> ContainerMeta:
        with self.lock:
            m = self.containers.get(cid)
            if m is not None:
                self.containers.move_to_end(cid)
        if m is None or (not m.name and not m.pod_name):
            m = container_meta(cid, pid, info, self.proc, self.podman, self.root)
            with self.lock:
                self.containers[cid] = m
                while len(self.containers) > MAX_CONTAINERS:
                    self.containers.popitem(last=False)
        return m

    def labels_of(self, tgid: int) -> dict:
        ident = self.identity(tgid)
        return ident.labels() if ident is not None else dict(EMPTY)

    def pids_of_pods(self, pods: Iterable[str], pids: Optional[Iterable[int]] = None
                     ) -> FrozenSet[int]:
        """Processes of the pods named (pod name, ``namespace/name``, uid or id prefix)."""
        wanted = {p.strip().lower() for p in pods if p and p.strip()}
        if not wanted:
            return frozenset()
        out = set()
        for pid in (pids if pids is not None else _pids(self.proc)):
            ident = self.identity(pid)
            if ident is None or not (ident.meta.pod_uid or ident.meta.pod_name):
                continue
            if pod_matches(ident.meta, wanted):
                out.add(pid)
        return frozenset(out)


def pod_matches(meta: ContainerMeta, wanted) -> bool:
    uid = meta.pod_uid.lower()
    keys = {meta.pod_name.lower(), uid}
    if meta.pod_namespace:
        keys.add(("%s/%s" % (meta.pod_namespace, meta.pod_name)).lower())
    keys.discard("")
    if keys & wanted:
        return True
    return any(len(w) >= 12 and uid.startswith(w) for w in wanted)


def _pids(proc: str):
    try:
        with os.scandir(proc) as it:
            for e in it:
                if e.name.isdigit():
                    yield int(e.name)
    except OSError:
        return


_RESOLVER: Optional[Resolver] = None


def resolver() -> Resolver:
    global _RESOLVER
    if _RESOLVER is None:
        _RESOLVER = Resolver()
    return _RESOLVER


def labels_of(tgid: int) -> dict:
    """The JSON labels of process ``tgid`` (see the module doc)."""
    return resolver().labels_of(tgid)
