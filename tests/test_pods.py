"""pipeline/pods.py: cgroup layouts of the kubelet (systemd and cgroupfs drivers, QoS
classes) and of the runtimes, recognised on real cgroups the test creates with real
processes in them; names from the runtimes' metadata files; --pod option checks."""
import json
import os
import subprocess
import uuid

import pytest

from ipc.config import settings_from_options
from pipeline import pods
from pipeline.pods import CgroupInfo, Resolver, parse_cgroup_file, parse_cgroup_path

UID = "1a2b3c4d-5e6f-4a8b-9c0d-112233445566"
UID_ = UID.replace("-", "_")


def cid(c):
    return c * 64


# (path, container id, runtime, pod uid, qos)
LAYOUTS = [
    # kubelet, systemd driver, each QoS class, each CRI runtime
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/"
     "cri-containerd-%s.scope" % (UID_, cid("a")), cid("a"), "containerd", UID, "burstable"),
    ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/"
     "crio-%s.scope" % (UID_, cid("b")), cid("b"), "cri-o", UID, "besteffort"),
    ("/kubepods.slice/kubepods-pod%s.slice/docker-%s.scope" % (UID_, cid("c")),
     cid("c"), "docker", UID, "guaranteed"),
    # CRI-O's conmon sits beside the container: the runtime's, neither container nor pod
    ("/kubepods.slice/kubepods-pod%s.slice/crio-conmon-%s.scope" % (UID_, cid("d")),
     "", "", "", ""),
    # kubelet, cgroupfs driver (bare ids)
    ("/kubepods/burstable/pod%s/%s" % (UID, cid("e")), cid("e"), "", UID, "burstable"),
    ("/kubepods/besteffort/pod%s/%s" % (UID, cid("f")), cid("f"), "", UID, "besteffort"),
    ("/kubepods/pod%s/%s" % (UID, cid("1")), cid("1"), "", UID, "guaranteed"),
    # outside Kubernetes
    ("/docker/%s" % cid("2"), cid("2"), "docker", "", ""),
    ("/system.slice/docker-%s.scope" % cid("3"), cid("3"), "docker", "", ""),
    ("/default/%s" % cid("4"), cid("4"), "", "", ""),              # containerd (ctr)
    ("/machine.slice/libpod-%s.scope" % cid("5"), cid("5"), "podman", "", ""),
    ("/machine.slice/machine-libpod_pod_%s.slice/libpod-%s.scope" % (cid("6"), cid("7")),
     cid("7"), "podman", cid("6"), ""),
    ("/libpod_parent/%s/libpod-%s" % (cid("8"), cid("9")), cid("9"), "podman", cid("8"), ""),
    ("/libpod_parent/libpod-%s" % cid("0"), cid("0"), "podman", "", ""),
    # nested: the innermost container
    ("/docker/%s/docker/%s" % (cid("a"), cid("b")), cid("b"), "docker", "", ""),
    ("/user.slice/user-1000.slice/session-2.scope", "", "", "", ""),
    ("/", "", "", "", ""),
]


@pytest.mark.parametrize("path,want_cid,runtime,pod_uid,qos", LAYOUTS)
def test_cgroup_layouts(path, want_cid, runtime, pod_uid, qos):
    info = parse_cgroup_path(path)
    assert (info.container_id, info.runtime, info.pod_uid, info.qos) == \
        (want_cid, runtime, pod_uid, qos)


def test_cgroup_file_v1_and_v2_lines():
    v1 = ("12:memory:/kubepods/burstable/pod%s/%s\n11:cpu,cpuacct:/kubepods/burstable/pod%s/"
          "%s\n0::/\n" % (UID, cid("e"), UID, cid("e"))).encode()
    assert parse_cgroup_file(v1).container_id == cid("e")
    v2 = ("0::/system.slice/docker-%s.scope\n" % cid("3")).encode()
    assert parse_cgroup_file(v2) == CgroupInfo(cid("3"), "docker")
    assert parse_cgroup_file(b"0::/\n") == CgroupInfo()
    assert parse_cgroup_file(b"garbage\n\xff:\n") == CgroupInfo()


def test_names_from_k8s_container_names():
    m = pods._k8s_name("k8s_app_web-0_shop_%s_1" % UID)
    assert m == pods.ContainerMeta("app", "web-0", "shop", UID)
    assert pods._k8s_name("plain") is None


# ---------------------------------------------------------------------------------------
# real cgroups

def _cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            if parts[sep + 1] == "cgroup2":
                return parts[4]
    return None


@pytest.fixture
def cgroups():
    root = _cgroup2_root()
    assert root, "no cgroup v2 hierarchy mounted"
    made, procs = [], []

    def spawn_in(path):
        d = root + path
        os.makedirs(d, exist_ok=True)
        parts = path.strip("/").split("/")
        for i in range(len(parts), 0, -1):
            p = root + "/" + "/".join(parts[:i])
            if p not in made:
                made.append(p)
        proc = subprocess.Popen(["sleep", "60"])
        procs.append(proc)
        with open(os.path.join(d, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        return proc.pid

    yield spawn_in
    for proc in procs:
        proc.kill()
        proc.wait()
    for d in sorted(set(made), key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _bundle(root, path, annotations, env=()):
    os.makedirs(os.path.dirname(root + path), exist_ok=True)
    with open(root + path, "w") as f:
        json.dump({"ociVersion": "1.0.2", "annotations": annotations,
                   "process": {"env": list(env)}}, f)


@pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups")
def test_kubelet_layouts_on_real_cgroups(cgroups, tmp_path):
    """Processes in cgroups laid out as the kubelet lays them out (systemd and cgroupfs
    drivers, three QoS classes, containerd / CRI-O / Docker ids), names from each runtime's
    metadata (under a stand-in root)."""
    tag = uuid.uuid4().hex[:6]
    uid = str(uuid.uuid4())
    uid_ = uid.replace("-", "_")
    ids = [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(4)]
    root = str(tmp_path)
    _bundle(root, pods.BUNDLES[2] % ids[0], {
        "io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.sandbox-name": "web-0",
        "io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.sandbox-uid": uid})
    _bundle(root, pods.BUNDLES[0] % ids[1], {
        "io.kubernetes.container.name": "side", "io.kubernetes.pod.name": "web-1",
        "io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.uid": uid})
    os.makedirs(os.path.dirname(root + pods.DOCKER_CONFIG % ids[2]))
    with open(root + pods.DOCKER_CONFIG % ids[2], "w") as f:
        json.dump({"Name": "/k8s_db_web-2_prod_%s_0" % uid, "Config": {"Labels": {}}}, f)
    cases = [
        ("/l7t%s/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/"
         "cri-containerd-%s.scope" % (tag, uid_, ids[0]),
         ids[0], "app", "web-0", "shop"),
        ("/l7t%s/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/"
         "crio-%s.scope" % (tag, uid_, ids[1]), ids[1], "side", "web-1", "shop"),
        ("/l7t%s/kubepods/pod%s/%s" % (tag, uid, ids[2]), ids[2], "db", "web-2", "prod"),
        ("/l7t%s/kubepods/burstable/pod%s/%s" % (tag, uid, ids[3]), ids[3], "", "", ""),
    ]
    pids = [cgroups(path) for path, *_ in cases]
    r = Resolver(root=root, podman_dbs=())
    for pid, (path, want_cid, name, pod, ns) in zip(pids, cases):
        labels = r.labels_of(pid)
        assert labels == {"comm": "sleep", "container_id": want_cid, "container_name": name,
                          "pod": pod, "pod_id": uid, "pod_namespace": ns}, path
    assert r.pids_of_pods(["web-0"], pids) == {pids[0]}
    assert r.pids_of_pods(["shop/web-1"], pids) == {pids[1]}
    assert r.pids_of_pods([uid], pids) == set(pids)
    assert r.pids_of_pods(["nope"], pids) == frozenset()
    # a host process: no container, no pod
    assert Resolver(root=root, podman_dbs=()).labels_of(os.getpid())["container_id"] == ""


def test_pod_option_checks():
    with pytest.raises(ValueError, match="invalid pod"):
        settings_from_options(pods=["bad name!"])
    s = settings_from_options(pods="nosuchpod-%s" % uuid.uuid4().hex[:6])
    assert s.pids == frozenset() and s.pods   # watches nothing until the pod has processes


@pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups")
def test_gopher_container_object_with_pod_id_scopes_the_pod(cgroups):
    """Under gala-gopher: a container object carrying its pod's id (sub-TLV 1004) watches
    every container of that pod, also one started after the message (refresh_pids)."""
    from ipc.config import refresh_pids, settings_from_ipc
    from ipc.message import Container, IpcConfig
    tag = uuid.uuid4().hex[:6]
    uid = str(uuid.uuid4())
    ids = [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(3)]
    base = "/l7t%s/kubepods/besteffort/pod%s/" % (tag, uid)
    first = cgroups(base + ids[0])
    other = cgroups("/l7t%s/kubepods/besteffort/pod%s/%s" % (tag, uuid.uuid4(), ids[2]))
    cfg = IpcConfig(flags=3, snooper_state=0, range_flags=7, period=5, support_ssl=0,
                    cluster_ip_backend=0, proto_flags=1, pids=(),
                    containers=(Container(0, ids[0], None, uid),), snooper_num=1)
    s = settings_from_ipc(cfg)
    assert first in s.pids and other not in s.pids
    later = cgroups(base + ids[1])          # a new container of the pod
    s2 = refresh_pids(s)
    assert {first, later} <= s2.pids and other not in s2.pids


def _io(proc, pid, rd, wr):
    os.makedirs(os.path.join(proc, str(pid)), exist_ok=True)
    with open(os.path.join(proc, str(pid), "io"), "w") as f:
        f.write("rchar: 9\nwchar: 9\nsyscr: 1\nsyscw: 1\nread_bytes: %d\nwrite_bytes: %d\n"
                "cancelled_write_bytes: 0\n" % (rd, wr))


def test_v1_pod_io_from_its_processes(tmp_path):
    """Without a v2 io.stat the pod's storage bytes are its processes' own counts: the first
    sample is the baseline, a process new to the pod counts from 0, one that ended keeps what
    was counted, a count that went down is a new process on a reused pid."""
    from pipeline import podtable
    proc = str(tmp_path)
    t = podtable.PodTable(resolver=object(), proc=proc, mounts={})
    _io(proc, 10, 1000, 500)
    assert podtable.task_io(10, proc) == (1000, 500)
    assert podtable.task_io(11, proc) is None
    assert t._tasks_io("u", [10]) == (0, 0)
    _io(proc, 10, 1500, 700)
    _io(proc, 11, 4096, 8192)           # a new process of the pod
    assert t._tasks_io("u", [10, 11]) == (500 + 4096, 200 + 8192)
    _io(proc, 10, 100, 50)              # pid 10 reused by a new process
    assert t._tasks_io("u", [10]) == (4596 + 100, 8392 + 50)
    assert t._tasks_io("v", [10]) == (0, 0)         # another pod: its own baseline
