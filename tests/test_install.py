"""`make install DESTDIR=<tmp> PREFIX=/opt/gala-gopher`, for real: where the files land, and
that the installed executable runs on its own (any working directory, a bare PATH, no
checkout on sys.path), with every module it imports available in its own venv.

The installation is shared with tests/test_e2e_gopher.py (tests/support/install.py), which
runs the installed executable under a fake gala-gopher.
"""
import ast
import os
import stat
import subprocess
import sys

import pytest

from tests.support.install import installed_or_fail

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="make install runs setup-host.sh (root)")

BARE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
LOCAL_PACKAGES = {"bpf", "ipc", "pipeline", "protocol"}


@pytest.fixture(scope="module")
def inst():
    return installed_or_fail()


def test_layout(inst):
    st = os.stat(inst.bin)
    assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o111 == 0o111
    assert os.path.isdir(inst.libdir)
    for d in sorted(LOCAL_PACKAGES) + ["include"]:
        assert os.path.isdir(os.path.join(inst.libdir, d)), d
    assert os.path.isfile(os.path.join(inst.libdir, "bpf", "probe.c"))
    assert os.access(os.path.join(inst.libdir, ".venv", "bin", "python3"), os.X_OK)
    # the meta where gala-gopher loads meta files, and the executable: the checkout's
    # (as they were when make ran: other work may change the checkout meanwhile)
    with open(inst.meta, "rb") as f:
        assert f.read() == inst.sources["l7probe.meta"]
    with open(inst.bin, "rb") as f:
        assert f.read() == inst.sources["l7probe.py"]
    # nothing of the checkout's own venv or caches was copied
    for dirpath, dirnames, _ in os.walk(inst.libdir):
        if os.path.basename(dirpath) == ".venv":
            dirnames[:] = []
            continue
        assert ".pytest_cache" not in dirnames, dirpath


def test_install_is_reasonably_fast(inst):
    # one venv with only the run-time packages (pip may use its cache)
    assert inst.seconds < 120, inst.output[-2000:]
    with open(os.path.join(inst.libdir, "requirements.txt")) as f:
        pkgs = {line.split("==")[0].lower() for line in f if "==" in line}
    assert "pytest" not in pkgs and "mysql-connector-python" not in pkgs


@pytest.mark.parametrize("cwd", ["/", "/tmp"])
def test_help_from_any_directory(inst, cwd):
    cp = subprocess.run([inst.bin, "--help"], cwd=cwd, env=BARE_ENV, capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("usage: l7probe")
    assert "--period" in cp.stdout and "--ipc" in cp.stdout
    assert cp.stderr == ""


def test_runs_from_its_own_tree_and_venv(inst):
    """The installed probe re-executes itself with its venv's python and imports its
    modules from l7probe.d, not from the checkout (which is not on any path here)."""
    code = ("import runpy, sys; runpy.run_path(%r, run_name='installed'); "
            "import ipc.config, bpf.loader; "
            "print(sys.prefix); print(ipc.config.__file__); print(bpf.loader.__file__)"
            % inst.bin)
    py = os.path.join(inst.libdir, ".venv", "bin", "python3")
    cp = subprocess.run([py, "-c", code], cwd="/", env=dict(BARE_ENV, L7PROBE_NO_VENV="1"),
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    prefix, ipc_file, loader_file = cp.stdout.split()
    assert os.path.realpath(prefix) == os.path.realpath(os.path.join(inst.libdir, ".venv"))
    assert ipc_file.startswith(inst.libdir + "/")
    assert loader_file.startswith(inst.libdir + "/")


def _python_files(path):
    if os.path.isfile(path):
        yield path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in (".venv", "__pycache__")]
        yield from (os.path.join(dirpath, fn) for fn in filenames if fn.endswith(".py"))


def _third_party_imports(path):
    names = set()
    for fn in _python_files(path):
        with open(fn) as f:
            mod = ast.parse(f.read())
        for node in ast.walk(mod):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names
            if n not in sys.stdlib_module_names and n not in LOCAL_PACKAGES
            and n != "__future__"}


def test_every_imported_package_is_installed(inst):
    """Every third-party module imported anywhere in the installed code (BCC from Debian,
    the rest from the installed venv) imports with the installed venv's python."""
    names = _third_party_imports(inst.libdir) | _third_party_imports(inst.bin)
    assert {"bcc", "elftools", "psutil"} <= names, names
    py = os.path.join(inst.libdir, ".venv", "bin", "python3")
    missing = []
    for name in sorted(names):
        cp = subprocess.run([py, "-c", "import " + name], cwd="/", env=BARE_ENV,
                            capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            missing.append((name, cp.stderr.strip().splitlines()[-1:]))
    assert not missing, missing
