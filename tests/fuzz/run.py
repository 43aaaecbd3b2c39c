"""`make fuzz`: fuzz every parser for FUZZ_SECONDS each (default 120; with FUZZ_RUNS, stop a
parser earlier after that many executions), print the executions per parser, exit non-zero on any finding (the crashing input is kept in the work directory
and named on stderr; turn it into a unit test in tests/test_fuzz_findings.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from protocol.registry import PROTOCOLS  # noqa: E402

PARSERS = tuple(p.name for p in PROTOCOLS if p.module)
TARGETS = PARSERS + ("report",)     # and the reporter's output hygiene (fuzz_parsers.py)


def main():
    seconds = int(os.environ.get("FUZZ_SECONDS", "120"))
    runs_wanted = int(os.environ.get("FUZZ_RUNS") or 0)
    names = sys.argv[1:] or list(TARGETS)
    work = os.environ.get("FUZZ_DIR") or tempfile.mkdtemp(prefix="l7probe-fuzz-")
    failed = []
    print("fuzzing %s, %d s each (work directory %s)" % (", ".join(names), seconds, work),
          flush=True)
    for name in names:
        corpus = os.path.join(work, name, "corpus")
        os.makedirs(corpus, exist_ok=True)
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_parsers.py"), name,
                            str(seconds), corpus], cwd=os.path.join(work, name),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=seconds + 300)
        elapsed = int(time.monotonic() - t0 + 0.5)
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", p.stdout)
        if not runs:
            runs = re.findall(r"Done (\d+) runs", p.stdout)
        n = int(runs[-1]) if runs else 0
        note = "" if p.returncode == 0 else "  FINDING (exit %d)" % p.returncode
        if not note and runs_wanted and n < runs_wanted:
            note = "  fewer than FUZZ_RUNS=%d" % runs_wanted
        print("%-8s %10d executions in %d s%s" % (name, n, min(seconds, elapsed), note),
              flush=True)
        if p.returncode != 0 or n == 0 or (runs_wanted and n < runs_wanted):
            failed.append(name)
            sys.stderr.write(p.stdout[-6000:])
    if failed:
        print("fuzz findings (or too few executions) in: %s" % ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
