"""Records to lines: gala-gopher's pipe format (compat §2.2, §2.5) or JSON.

Column order comes from l7probe.meta (pipeline/meta.py).  Every value is sanitised (no
``|``, newline or NUL), never empty, and every line stays within gala-gopher's 8191 bytes.
"""
from __future__ import annotations

import json
import struct
import sys
import time

from pipeline.meta import FIELDS

MAX_LINE = 8191          # bytes, newline included
_BAD = {ord("|"): "_", ord("\n"): " ", ord("\r"): " ", ord("\0"): ""}
_f32 = struct.Struct("f")

L4_NAMES = ("udp", "tcp_client", "tcp_server")
L7_NAMES = ("unknown", "client", "server")


def f32(x):
    """Round through IEEE single precision, as upstream's C ``float`` does."""
    try:
        return _f32.unpack(_f32.pack(x))[0]
    except OverflowError:
        return x


def fmt_float(x):
    return "%.2f" % f32(x)


def clean(value):
    s = value if isinstance(value, str) else str(value)
    s = s.translate(_BAD)
    return s if s else "(null)"


class Writer:
    """Prints records of the enabled tables to ``out`` and flushes each line (unless told
    not to: l7_trace rows are flushed once per batch, see TraceWriter.flush)."""

    def __init__(self, out=None, fmt="gopher", labels=None):
        self.out = out or sys.stdout
        self.fmt = fmt
        self.labels = labels      # callable(tgid) -> dict of comm/container for json
        self.lines = 0

    def emit(self, table, row, flush=True):
        fields = FIELDS[table]
        if self.fmt == "json":
            obj = {"table": table}
            for f in fields:
                obj[f] = row[f]
            if self.labels is not None and "tgid" in row:    # (not the pod table)
                obj.update(self.labels(row["tgid"]))
            line = json.dumps(obj, separators=(",", ":")) + "\n"
        else:
            vals = [clean(row[f]) for f in fields]
            line = "|" + table + "|" + "|".join(vals) + "|\n"
            if len(line.encode("utf-8", "replace")) > MAX_LINE:
                line = self._shorten(table, fields, vals)
        try:
            self.out.write(line)
            if flush:
                self.out.flush()
        except BrokenPipeError:
            raise
        self.lines += 1

    def flush(self):
        self.out.flush()

    @staticmethod
    def _shorten(table, fields, vals):
        # cut the longest values until the line fits (only free-text fields get long)
        vals = list(vals)
        while True:
            line = "|" + table + "|" + "|".join(vals) + "|\n"
            excess = len(line.encode("utf-8", "replace")) - MAX_LINE
            if excess <= 0:
                return line
            i = max(range(len(vals)), key=lambda j: len(vals[j]))
            v = vals[i].encode("utf-8", "replace")
            vals[i] = v[:max(1, len(v) - excess - 4)].decode("utf-8", "ignore") or "_"


def link_labels(link):
    return {
        "tgid": link.tgid, "client_ip": link.client_ip, "server_ip": link.server_ip,
        "server_port": link.server_port, "l4_role": L4_NAMES[link.l4_role],
        "l7_role": L7_NAMES[link.l7_role], "protocol": link.protocol,
        "ssl": "ssl" if link.ssl else "no_ssl",
    }


def rpc_values(st, period):
    period = period if period > 0 else 1.0
    req = st.req
    return {
        "throughput_req": fmt_float(req / period),
        "throughput_resp": fmt_float(st.resp / period),
        "req_count": req,
        "resp_count": st.resp,
        "latency_avg": fmt_float(st.latency_avg()),
        "latency": st.histo.serialize(),
        "latency_sum": st.lat_sum,
        "err_ratio": fmt_float(st.err / req if req else 0.0),
        "err_count": st.err,
    }


def report_links(writer, links, tables, period):
    """One period: per link l7_link, l7_rpc, then its l7_rpc_api rows."""
    for link in list(links.links.values()):
        base = link_labels(link)
        if "l7_link" in tables:
            row = dict(base)
            row.update(bytes_sent=link.bytes_sent, bytes_recv=link.bytes_recv,
                       segs_sent=link.segs_sent, segs_recv=link.segs_recv)
            writer.emit("l7_link", row)
        if "l7_rpc" in tables:
            row = dict(base)
            row.update(rpc_values(link.rpc, period))
            writer.emit("l7_rpc", row)
        if "l7_rpc_api" in tables:
            for api, st in link.apis.items():
                row = dict(base)
                row["api"] = api
                row.update(rpc_values(st, period))
                req = st.req
                row["client_err_ratio"] = fmt_float(st.client_err / req if req else 0.0)
                row["server_err_ratio"] = fmt_float(st.server_err / req if req else 0.0)
                row["client_err_count"] = st.client_err
                row["server_err_count"] = st.server_err
                writer.emit("l7_rpc_api", row)
        link.reset()


class TraceWriter:
    """l7_trace rows, at most ``limit`` per period; the rest are counted."""

    def __init__(self, writer, limit, mono_to_wall):
        self.writer = writer
        self.limit = limit
        self.sent = 0
        self.dropped = 0
        self.mono_to_wall = mono_to_wall
        self.unflushed = False
        # Two rows of one link with the same method, path and status in the same ms would
        # otherwise be the same Prometheus series (gala-gopher renders keys and labels only)
        self.seq = 0

    def add(self, link, rec):
        if self.sent >= self.limit:
            self.dropped += 1
            return
        self.sent += 1
        row = link_labels(link)
        lat = rec.latency
        ts = rec.req_ts or rec.resp_ts
        row.update(req_method=rec.method or "unknown", req_path=(rec.path or "-")[:1024],
                   resp_code=rec.status or "none", latency=lat if lat is not None else 0,
                   req_time=int(self.mono_to_wall(ts) / 1_000_000), seq=self.seq)
        self.seq += 1
        self.writer.emit("l7_trace", row, flush=False)
        self.unflushed = True

    def flush(self):
        """Rows are written as they come and flushed here, once per ring-buffer batch: a
        flush per row (a write(2) each) cost as much as formatting the row."""
        if self.unflushed:
            self.unflushed = False
            self.writer.flush()

    def new_period(self):
        self.flush()
        dropped = self.dropped
        self.sent = self.dropped = 0
        return dropped


def mono_to_wall_factory():
    offset = time.time_ns() - time.monotonic_ns()
    return lambda ts: ts + offset
