"""Build the Go test applications offline (standard library only).

``build_go(src, out_path, strip=False)`` runs ``go build`` with CGO disabled,
GO111MODULE=off and private GOCACHE/GOPATH directories, so it needs neither
the network nor the user's Go environment. The build cache lives under
``tests/.tmp/go`` (git-ignored) unless ``L7PROBE_GO_CACHE`` names another
directory, so only the first run pays for compiling the standard library.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence

TESTS_DIR = Path(__file__).resolve().parent.parent
TLS_APPS = TESTS_DIR / "tls_apps"
DEFAULT_CACHE = TESTS_DIR / ".tmp" / "go"


class GoUnavailable(RuntimeError):
    """No usable `go` command."""


def go_binary() -> str:
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if os.path.exists("/usr/lib/go/bin/go") else None)
    if not go:
        raise GoUnavailable("the `go` command is not installed (apt-get install golang-go)")
    return go


def go_version() -> str:
    out = subprocess.run([go_binary(), "version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def go_env(cache_dir: Optional[os.PathLike] = None) -> dict:
    base = Path(cache_dir or os.environ.get("L7PROBE_GO_CACHE") or DEFAULT_CACHE)
    (base / "cache").mkdir(parents=True, exist_ok=True)
    (base / "path").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for k in ("GOFLAGS", "GOROOT", "GOOS", "GOARCH", "GOPROXY"):
        env.pop(k, None)
    env.update({
        "GOCACHE": str(base / "cache"),
        "GOPATH": str(base / "path"),
        "GO111MODULE": "off",
        "CGO_ENABLED": "0",
        "GOPROXY": "off",
        "HOME": env.get("HOME", str(base)),
    })
    return env


def build_go(src_dir_or_file, out_path, strip: bool = False, pie: bool = False,
             extra_args: Sequence[str] = (), cache_dir=None, timeout: float = 300) -> Path:
    """Build a Go main package (a directory or one .go file) into ``out_path``.

    strip=True adds ``-ldflags=-s -w`` (no .symtab, no DWARF);
    pie=True adds ``-buildmode=pie``. Returns the output path; raises
    RuntimeError with go's output when the build fails.
    """
    src = Path(src_dir_or_file).resolve()
    out = Path(out_path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [go_binary(), "build", "-trimpath", "-o", str(out)]
    if pie:
        cmd.append("-buildmode=pie")
    if strip:
        cmd.append("-ldflags=-s -w")
    cmd += list(extra_args)
    if src.is_dir():
        cwd, target = src, "."
    else:
        cwd, target = src.parent, src.name
    cmd.append(target)
    res = subprocess.run(cmd, cwd=cwd, env=go_env(cache_dir), capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError("go build failed (%s):\n%s%s" % (" ".join(cmd), res.stdout, res.stderr))
    return out


if __name__ == "__main__":   # manual use: python -m tests.support.goapps OUTDIR
    import sys
    outdir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for app in ("goserver", "goclient"):
        print(build_go(TLS_APPS / app, outdir / app))
