"""Read the tshark oracle beside a fixture (``<file>.tshark.tsv``, see fixtures/SOURCES.md)."""
from __future__ import annotations

import csv
import os

FIXTURES = os.environ.get("L7PROBE_FIXTURES", "/work/shared/fixtures")


def fixture(proto_dir, name):
    return os.path.join(FIXTURES, proto_dir, name)


def read_tsv(pcap_path):
    """Rows of the oracle as dicts; multi-occurrence fields stay '|'-joined strings."""
    with open(pcap_path + ".tshark.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def values(row, field):
    v = row.get(field) or ""
    return v.split("|") if v else []
