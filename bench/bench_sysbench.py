"""sysbench oltp_read_write at full speed against MariaDB: the share of statements the probe
counted (server side l7_rpc req_count against sysbench's own "queries performed" total).
SYSBENCH_RING_PAGES=N adds the same measurement with an N-page ring buffer."""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.probe import ProbeRun, total  # noqa: E402
from tests.support.servers import mariadb  # noqa: E402

LOOP = "127.0.0.1"


def measure(seconds, probe_path=None, ring_pages=None):
    """(statements sysbench made, statements counted on the server side, transactions/s);
    ``ring_pages``: the probe's ring buffer size in pages (None: its default)."""
    with mariadb() as db:
        sb = ["sysbench", "oltp_read_write", "--db-driver=mysql", "--mysql-host=" + LOOP,
              "--mysql-port=%d" % db.port, "--mysql-user=" + db.user,
              "--mysql-password=" + db.password, "--mysql-db=" + db.database,
              "--mysql-ssl=off", "--tables=2", "--table-size=1000"]
        subprocess.run(sb + ["prepare"], check=True, capture_output=True, timeout=300)
        env = dict(os.environ)
        if ring_pages:
            env["L7PROBE_RINGBUF_PAGES"] = str(ring_pages)
        probe = ProbeRun(["--proto", "mysql", "-P", "2"], probe=probe_path, env=env)
        try:
            out = subprocess.run(sb + ["--threads=2", "--time=%d" % seconds, "run"],
                                 capture_output=True, text=True, check=True,
                                 timeout=seconds + 120).stdout
        finally:
            probe.stop()
        made = int(re.search(r"total:\s+(\d+)", out).group(1))
        tps = float(re.search(r"transactions:\s+\d+\s+\(([\d.]+) per sec", out).group(1))
        from bench.run import rpc_rows
        rows = [r for r in rpc_rows(probe) if r["server_port"] == str(db.port)
                and r["l7_role"] == "server"]
        return made, total(rows, "req_count"), tps


# SYSBENCH_RING_PAGES=N: also measure with an N-page ring buffer (a small one makes the
# saturation of a fast machine happen on a slow or busy one too)
RING_PAGES = int(os.environ.get("SYSBENCH_RING_PAGES") or 0)


def main(fig=None, probes=(("this", None),), seconds=10):
    print("== sysbench oltp_read_write, 2 threads, %d s, full speed, against MariaDB; probe "
          "--proto mysql" % seconds)
    for pages in (None, RING_PAGES) if RING_PAGES else (None,):
        ring = " (ring buffer of %d pages)" % pages if pages else ""
        for who, path in probes:
            made, counted, tps = measure(seconds, path, pages)
            print("  %s probe%s: %d statements made (%.0f transactions/s), %d counted on the "
                  "server side (%.3f; target >= 0.99)" % (who, ring, made, tps, counted,
                                                          counted / made))
            if fig is not None:
                fig.append(("sysbench at full speed: statements counted (%s%s)" % (who, ring),
                            "%.3f" % (counted / made), ">= 0.99"))


if __name__ == "__main__":
    main()
