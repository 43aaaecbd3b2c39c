"""gala-gopher's ingest rules for one record line (compat §2.1-§2.5), as an oracle for the
tests: written from the compat notes, not from pipeline/report.py."""
from __future__ import annotations

import re

from pipeline.meta import FIELDS, TABLES

MAX_LINE = 8191                 # fgets into MAX_DATA_STR_LEN 8192, newline included
LABELS_BUFFER = 1024            # MAX_LABELS_BUFFER_SIZE
HISTO = re.compile(r"^(\d+)((?: \d+ \d+)+) (\d+) (\d+)$")


def gopher_labels(table, rec, comm="c" * 15, container=False):
    """The label string gala-gopher builds for a record (IMDB_BuildLabels), with its own
    labels at their longest where their values are not known to the test."""
    parts = ['%s="%s"' % (n, rec[n]) for n, t in TABLES[table]
             if t in ("key", "label") and rec[n] != "(null)"]
    parts.append('comm="%s"' % comm)
    if container:
        parts += ['container_id="%s"' % ("f" * 64), 'container_name="%s"' % ("n" * 64),
                  'container_image="%s"' % ("i" * 128), 'pod_id="%s"' % ("p" * 36),
                  'pod="%s/%s"' % ("s" * 63, "n" * 63), 'pod_namespace="%s"' % ("s" * 63)]
    parts.append('machine_id="%s-%s"' % ("u" * 36, "f" * 39))
    if any(t == "histogram" for _, t in TABLES[table]):
        parts.append('le="10000000000"')
    return ",".join(parts)


def check_line(line, comm="c" * 15, container=False):
    """Assert that gala-gopher would ingest and render this record; returns (table, rec)."""
    assert line.startswith("|"), line[:80]
    assert len((line + "\n").encode("utf-8")) <= MAX_LINE, len(line)
    assert len((line + "\n").splitlines()) == 1, repr(line[:200])
    assert "\0" not in line
    body = line[1:-1] if line.endswith("|") else line[1:]
    parts = body.split("|")
    table, vals = parts[0], parts[1:]
    assert 1 <= len(table) <= 31 and table in FIELDS, table
    assert len(vals) == len(FIELDS[table]), (table, len(vals), len(FIELDS[table]))
    rec = dict(zip(FIELDS[table], vals))
    assert rec["tgid"] != "" and all(v != "" for v in vals), line[:200]
    for name, t in TABLES[table]:
        if t == "histogram":
            m = HISTO.match(rec[name])
            assert m, rec[name]
            nums = [int(x) for x in m.group(2).split()]
            assert int(m.group(1)) == len(nums) // 2
            cum = nums[1::2]
            assert cum == sorted(cum), rec[name]
        elif t == "gauge":
            float(rec[name])
    labels = gopher_labels(table, rec, comm, container)
    assert len(labels.encode("utf-8")) + 1 <= LABELS_BUFFER, (len(labels), labels[:200])
    return table, rec
