"""Conditions that stop the probe: one clear line on stderr, non-zero status, no traceback."""
import os
import subprocess
import sys

import pytest

from tests.support.probe import PROBE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def _run(args, env_extra=None, user=None, timeout=60):
    env = dict(os.environ, L7PROBE_NO_VENV="1")
    env.update(env_extra or {})
    cmd = [sys.executable, PROBE] + args
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _one_error_line(rc, out, err, needle):
    assert rc != 0
    assert out == ""
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("l7probe: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_not_root():
    rc, out, err = _run(["--duration", "1"], user="nobody")
    _one_error_line(rc, out, err, "root")


def test_without_bcc(tmp_path):
    fake = tmp_path / "bcc"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named bcc')\n")
    rc, out, err = _run(["--duration", "1"], {"PYTHONPATH": str(tmp_path)})
    _one_error_line(rc, out, err, "python3-bpfcc")


def test_without_kernel_headers(tmp_path):
    rc, out, err = _run(["--duration", "1"], {"L7PROBE_KERNEL_BUILD": str(tmp_path)})
    _one_error_line(rc, out, err, "kernel headers")


@pytest.mark.parametrize("args,needle", [
    (["--proto", "http,smtp"], "smtp"),
    (["--range", "l7_everything"], "l7_everything"),
    (["-P", "zero"], "period"),
    (["-p", "abc"], "pid"),
])
def test_bad_options(args, needle):
    rc, out, err = _run(args + ["--duration", "1"])
    _one_error_line(rc, out, err, needle)


def test_unknown_option_is_usage_error():
    rc, out, err = _run(["--no-such-option"])
    assert rc == 2
    assert "Traceback" not in err
    assert "usage:" in err
