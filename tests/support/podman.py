"""Real Podman pods and containers for the tests, with no image registry.

Containers run ``podman run --rootfs DIR`` where DIR holds only ``bin``/``lib``/``lib64``/
``sbin`` links into ``usr`` plus empty ``usr``, ``etc``, ``proc``, ``sys``, ``dev``, ``tmp``,
with the host's ``/usr`` and ``/etc`` bind-mounted read-only: the host's own programs
(nginx, curl, python3) run inside.  The pod's infra container uses the pause image Podman
builds locally.  What this machine needs (measured, see issue 12):

* on a hybrid cgroup layout whose v2 side still holds the ``hugetlb`` controller, that
  controller gets a v1 hierarchy (crun refuses hybrid mode otherwise); unmounted again at the
  end if we mounted it;
* default ulimits below the sandbox's hard limits (``containers.conf`` through
  ``CONTAINERS_CONF``), or crun's setrlimit fails, for the infra container too.

Everything created is named with a per-run prefix and removed by :meth:`Podman.close`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

CGROUP = "/sys/fs/cgroup"
BLOB = 4 << 20        # bytes of nginx's /blob


def _hybrid_hugetlb_on_v2():
    try:
        with open(os.path.join(CGROUP, "unified", "cgroup.controllers")) as f:
            return "hugetlb" in f.read().split()
    except OSError:
        return False


class Podman:
    def __init__(self):
        self.exe = shutil.which("podman")
        if not self.exe:
            raise RuntimeError("podman is not installed (tests/support/APT-PACKAGES)")
        self.prefix = "l7t%s" % uuid.uuid4().hex[:6]
        self.dir = tempfile.mkdtemp(prefix="l7probe-podman-")
        os.chmod(self.dir, 0o755)
        self.mounted_hugetlb = None
        if _hybrid_hugetlb_on_v2():
            d = os.path.join(CGROUP, "hugetlb")
            os.makedirs(d, exist_ok=True)
            subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", d], check=True)
            self.mounted_hugetlb = d
        conf = os.path.join(self.dir, "containers.conf")
        with open(conf, "w") as f:
            f.write('[containers]\ndefault_ulimits = ["nofile=1024:1024", '
                    '"nproc=1024:1024"]\n')
        self.env = dict(os.environ, CONTAINERS_CONF=conf)
        self.rootfs = os.path.join(self.dir, "rootfs")
        os.mkdir(self.rootfs)
        for d in ("bin", "lib", "lib64", "sbin"):
            os.symlink("usr/" + d, os.path.join(self.rootfs, d))
        for d in ("usr", "etc", "proc", "sys", "dev", "tmp"):
            os.mkdir(os.path.join(self.rootfs, d))
        os.chmod(os.path.join(self.rootfs, "tmp"), 0o1777)
        self.pods = []
        self.containers = []

    # -- commands ---------------------------------------------------------------------
    def run(self, *args, timeout=120, check=True):
        cp = subprocess.run([self.exe] + list(args), env=self.env, capture_output=True,
                            text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise RuntimeError("podman %s failed (%d): %s" % (" ".join(args), cp.returncode,
                                                              cp.stderr.strip()[-2000:]))
        return cp.stdout.strip()

    def pod(self, name):
        """Create pod ``<prefix>-<name>``; returns (pod name, pod id)."""
        full = "%s-%s" % (self.prefix, name)
        pid = self.run("pod", "create", "--name", full)
        self.pods.append(full)
        return full, pid.splitlines()[-1]

    def start(self, name, cmd, pod=None, detach=True, volumes=()):
        """Run ``cmd`` in a new container (in ``pod``); returns its id (detached) or its
        output (not detached, removed when it ends)."""
        full = "%s-%s" % (self.prefix, name)
        args = ["run", "--name", full, "-v", "/usr:/usr:ro", "-v", "/etc:/etc:ro"]
        for v in volumes:
            args += ["-v", v]
        if pod:
            args += ["--pod", pod]
        else:
            args += ["--network", "bridge"]
        args += ["-d"] if detach else ["--rm"]
        args += ["--rootfs", self.rootfs] + list(cmd)
        self.containers.append(full)
        out = self.run(*args)
        return out.splitlines()[-1] if detach and out else out

    def inspect(self, name):
        return json.loads(self.run("inspect", name))[0]

    def pid_of(self, name):
        return int(self.inspect(name)["State"]["Pid"])

    def pod_ip(self, pod):
        """The pod's IPv4 address, as its infra container's namespace has it."""
        infra = json.loads(self.run("pod", "inspect", pod))["InfraContainerID"]
        pid = int(self.inspect(infra)["State"]["Pid"])
        out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-4", "-o", "addr",
                              "show", "scope", "global"], capture_output=True, text=True,
                             check=True).stdout
        return out.split()[3].split("/")[0]

    def tmp(self, *parts):
        """A path under the containers' /tmp (host side, container side)."""
        host = os.path.join(self.rootfs, "tmp", *parts)
        return host, "/" + "/".join(("tmp",) + parts)

    # -- servers ----------------------------------------------------------------------
    def nginx(self, name, pod, port):
        """nginx (one worker) in ``pod`` on ``port``; returns the container id."""
        host, inside = self.tmp(name)
        os.makedirs(host, exist_ok=True)
        os.chmod(host, 0o777)
        with open(os.path.join(host, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF % {"d": inside, "port": port})
        with open(os.path.join(host, "blob"), "wb") as f:     # GET /blob: BLOB bytes
            f.write(os.urandom(BLOB))
        cid = self.start(name, ["nginx", "-c", inside + "/nginx.conf"], pod=pod)
        self.wait_port(self.pid_of(self.prefix + "-" + name), port)
        return cid

    @staticmethod
    def wait_port(pid, port, timeout=20):
        """Until something listens on ``port`` in the network namespace of ``pid``."""
        want = ":%04X " % port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t in ("tcp", "tcp6"):
                try:
                    with open("/proc/%d/net/%s" % (pid, t)) as f:
                        for line in f:
                            parts = line.split()
                            if len(parts) > 3 and parts[3] == "0A" and (parts[1] + " "
                                                                          ).endswith(want):
                                return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("nothing listens on port %d in the netns of pid %d" % (port, pid))

    # -- clean-up ---------------------------------------------------------------------
    def close(self):
        for c in reversed(self.containers):
            self.run("rm", "-f", "-t", "0", c, check=False)
        for p in self.pods:
            self.run("pod", "rm", "-f", "-t", "0", p, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.mounted_hugetlb:
            _rmdirs(os.path.join(self.mounted_hugetlb, "libpod_parent"))
            subprocess.run(["umount", self.mounted_hugetlb], check=False)


def _rmdirs(top):
    """Remove an empty cgroup tree (children first)."""
    if not os.path.isdir(top):
        return
    for root, dirs, _ in os.walk(top, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(top)
    except OSError:
        pass


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %(d)s/body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    keepalive_requests 10000;
    server {
        listen %(port)d;
        location / { return 200 "hello\\n"; }
        location = /blob { alias %(d)s/blob; }
    }
}
"""
