"""Instructions per message of the HTTP pipeline (bench/parsers.py's records), counted by
valgrind's cachegrind: a figure that does not move with this VM's speed, for this checkout
and BENCH_REF's code.  Two runs per tree, one that builds the records and one that also
feeds them (after a warm-up pass in both): the difference over the messages is the
pipeline's steady cost."""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PER_CONN = 100              # 20 connections: 4000 messages per run

_RUN = r"""
from bench import parsers
recs, _ = parsers.http_records(per_conn=%d, distinct=%r)
batches = parsers.batches_of(recs)
# in both runs: first-time costs cancel out
parsers.feed_all(parsers._Sink().tracker, batches[:40])
if %r:
    parsers.feed_all(parsers._Sink().tracker, batches)
"""


def _instructions(root, distinct, feed):
    code = _RUN % (PER_CONN, distinct, feed)
    # one hash seed: dict and set layouts (so the instructions) are the same in every run
    env = dict(os.environ, BENCH_CODE_ROOT=root, PYTHONPATH=os.path.dirname(HERE),
               PYTHONHASHSEED="0")
    r = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                        "--cachegrind-out-file=/dev/null", sys.executable, "-c", code],
                       env=env, cwd=os.path.dirname(HERE), capture_output=True, text=True,
                       timeout=900)
    for line in r.stderr.splitlines():
        if "I" in line and "refs:" in line:
            return int(line.split()[-1].replace(",", ""))
    raise RuntimeError("cachegrind: %s" % r.stderr.strip()[-300:])


def per_message(root, distinct=False):
    n = 2 * 20 * PER_CONN
    return (_instructions(root, distinct, True) - _instructions(root, distinct, False)) / n


def main(fig, trees):
    """``trees``: [(label, checkout root)]."""
    from bench.parsers import HEADS
    if shutil.which("valgrind") is None:
        print("HTTP pipeline instructions per message: valgrind not installed, skipped")
        return
    for distinct, what in HEADS.items():
        vals = " / ".join("%s %.1fk" % (label, per_message(root, distinct) / 1e3)
                          for label, root in trees)
        print("HTTP pipeline, %s: %s instructions per message (cachegrind)" % (what, vals))
        fig.append(("HTTP pipeline instructions per message (cachegrind), " + what, vals, ""))


if __name__ == "__main__":
    main([], [("this", os.path.dirname(HERE))])
