"""`make install` into a temporary DESTDIR, once per test session.

tests/test_install.py checks the installed tree; tests/test_e2e_gopher.py runs the
installed executable the way gala-gopher does.  Both call :func:`installed`, which runs
``make install DESTDIR=<tmp> PREFIX=/opt/gala-gopher`` the first time and returns the same
result afterwards (the temporary tree is removed when the interpreter exits).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "/opt/gala-gopher"


@dataclass(frozen=True)
class Installed:
    destdir: str
    prefix_dir: str        # <destdir>/opt/gala-gopher
    bin: str               # <prefix_dir>/extend_probes/l7probe
    libdir: str            # <prefix_dir>/extend_probes/l7probe.d
    meta: str              # <prefix_dir>/meta/l7probe.meta
    returncode: int
    output: str            # make's stdout + stderr
    seconds: float         # how long `make install` took
    sources: dict          # checkout file -> its bytes when make started (l7probe.py, meta)


_cache: dict = {}


def installed() -> Installed:
    """The session's installation (made on first use).  Never raises for a failing make:
    check ``returncode``/``output``."""
    if "tree" not in _cache:
        destdir = tempfile.mkdtemp(prefix="l7probe-install-")
        atexit.register(shutil.rmtree, destdir, True)
        sources = {}
        for name in ("l7probe.py", "l7probe.meta"):
            with open(os.path.join(ROOT, name), "rb") as f:
                sources[name] = f.read()
        t0 = time.monotonic()
        cp = subprocess.run(["make", "-C", ROOT, "install", "DESTDIR=" + destdir,
                             "PREFIX=" + PREFIX], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=900)
        top = destdir + PREFIX
        _cache["tree"] = Installed(
            destdir=destdir, prefix_dir=top,
            bin=os.path.join(top, "extend_probes", "l7probe"),
            libdir=os.path.join(top, "extend_probes", "l7probe.d"),
            meta=os.path.join(top, "meta", "l7probe.meta"),
            returncode=cp.returncode, output=cp.stdout, seconds=time.monotonic() - t0,
            sources=sources)
    return _cache["tree"]


def installed_or_fail() -> Installed:
    inst = installed()
    assert inst.returncode == 0, "make install failed:\n" + inst.output[-3000:]
    return inst
