"""CI's short fuzz pass (issue 14): every parser of the registry fuzzed for a few seconds
through the stream/stitch path (tests/fuzz/), seeded from the fixtures; `make fuzz` runs
the long one; and the reporter's output hygiene (target `report`).  CI_FUZZ_SECONDS per
target (default 3: under a minute for the ten)."""
import os
import re
import subprocess
import sys

from protocol.registry import PROTOCOLS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_fuzz_pass(tmp_path):
    env = dict(os.environ, FUZZ_SECONDS=os.environ.get("CI_FUZZ_SECONDS", "3"),
               FUZZ_DIR=str(tmp_path))
    env.pop("FUZZ_RUNS", None)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fuzz", "run.py")],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-4000:]
    runs = dict(re.findall(r"^(\w+)\s+(\d+) executions", p.stdout, re.M))
    assert sorted(runs) == sorted([p.name for p in PROTOCOLS if p.module] + ["report"]), \
        p.stdout
    assert all(int(n) > 0 for n in runs.values()), runs
