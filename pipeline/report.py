"""Records to lines: statistics become rows, rows are sanitised and fitted to gala-gopher's
limits here, once, whatever the output format (pipeline/output.py: gopher, json, top).

Column order comes from l7probe.meta (pipeline/meta.py).  Every string value goes through
one replacement rule (``clean``), is never empty, and the key and label values of a record
fit gala-gopher's label buffer together with the labels gala-gopher adds (``fit_labels``).
"""
from __future__ import annotations

import logging
import re
import struct
import time

from pipeline.labels import ProcessLabels
from pipeline.meta import FIELDS, TABLES

MAX_LINE = 8191          # bytes, newline included (gopher format: compat §2.1)
_f32 = struct.Struct("f")

L4_NAMES = ("udp", "tcp_client", "tcp_server")
L7_NAMES = ("unknown", "client", "server")

# -- the one replacement rule ------------------------------------------------------------
# Each of these characters becomes "?": the column separator "|"; C0 controls (CR, LF,
# \x0b, \x0c, \x1c-\x1f, NUL, ...), DEL and C1 controls (\x85, ...); every white space
# other than the space (U+2028, U+2029, NBSP, ...); invisible format characters (soft
# hyphen, zero widths, bidi controls, BOM).  Readers that split lines on any of them
# (str.splitlines, terminals, log tools) then see one line per record.
REPLACEMENT = "?"
_BAD = re.compile(r"[|\x00-\x1f\x7f-\xa0\xad\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                  r"\ufeff\ufff9-\ufffb]|[^\S ]")


def clean(value):
    """The value as it is printed: a non-empty string without the characters above."""
    s = value if isinstance(value, str) else str(value)
    if not s:
        return "(null)"
    if s.isascii() and s.isprintable() and "|" not in s:
        return s                  # the common case, none of the characters above
    return _BAD.sub(REPLACEMENT, s)


_CLEAN_MAX = 4096
_clean_seen = {}


def clean_cached(value):
    """clean(value), remembered: a record's strings repeat (addresses, roles, methods,
    statuses, paths).  At most _CLEAN_MAX values kept (then forgotten all at once)."""
    out = _clean_seen.get(value)
    if out is None:
        out = clean(value)
        if len(_clean_seen) >= _CLEAN_MAX:
            _clean_seen.clear()
        if value.__class__ is str:
            _clean_seen[value] = out
    return out


def f32(x):
    """Round through IEEE single precision, as upstream's C ``float`` does."""
    try:
        return _f32.unpack(_f32.pack(x))[0]
    except OverflowError:
        return x


def fmt_float(x):
    return "%.2f" % f32(x)


# -- gala-gopher's label buffer (compat §2.4) ---------------------------------------------
# gala-gopher renders a record's key and label fields, then the labels it adds, as
# k="v",... into MAX_LABELS_BUFFER_SIZE bytes and drops the record when they overflow.
# Room left for what it adds, at most (each: len('k="",') + the longest value):
LABELS_BUFFER = 1024
_RESERVED_ALWAYS = (len('machine_id="",') + 36 + 1 + 39 +   # <system uuid>-<host ip (v6)>
                    len(',le="10000000000"') +            # histogram bucket label
                    1)                                     # the terminating NUL
COMM_MAX = 15                                              # TASK_COMM_LEN - 1
_RESERVED_CONTAINER = (len('container_id="",') + 64 +
                       len('container_name="",') + 64 +
                       len('container_image="",') + 128 +
                       len('pod_id="",') + 36 +
                       len('pod="",') + 63 + 1 + 63 +       # namespace/name
                       len('pod_namespace="",') + 63)
_LABEL_FIELDS = {t: tuple(n for n, typ in fl if typ in ("key", "label"))
                 for t, fl in TABLES.items()}


def label_room(labels):
    """Bytes left for a record's own keys and labels, given its process labels (comm,
    container_id: pipeline/labels.py)."""
    room = LABELS_BUFFER - _RESERVED_ALWAYS
    comm = labels.get("comm") or ""
    room -= len('comm="",') + (len(comm.encode("utf-8", "replace")) if comm else COMM_MAX)
    if labels.get("container_id"):
        room -= _RESERVED_CONTAINER
    return room


# per table: the bytes its label names take rendered (name="",), and how many they are
_NAMES_COST = {t: sum(len(n) + 4 for n in names) for t, names in _LABEL_FIELDS.items()}


def fit_labels(vals, names, room, table=None):
    """Cut the longest of the values ``vals[name]`` (sanitised strings) until all of them,
    rendered as name="value",, take at most ``room`` bytes; (null) values are not rendered.
    Returns the names of the values cut.  With ``table`` (names = _LABEL_FIELDS[table]), a
    bound first: 4 bytes per character (UTF-8's most) and 20 per number (a u64's digits)
    that fits needs no cut, and the exact walk is skipped (the common case)."""
    if table is not None:
        n = 0
        for v in map(vals.__getitem__, names):
            n += len(v) if v.__class__ is str else 5
        if _NAMES_COST[table] + 4 * n <= room:
            return ()
    sizes = {}
    used = 0
    for n in names:
        v = vals[n]
        if not isinstance(v, str):          # a number: counted, never cut
            used += len(n) + 4 + len(str(v))
            continue
        if v == "(null)":
            continue
        b = len(v) if v.isascii() else len(v.encode("utf-8", "replace"))
        sizes[n] = b
        used += len(n) + 4 + b
    excess = used - room
    if excess <= 0:
        return ()
    # water level: cut every value longer than `level` down to it (longest first)
    lens = sorted(sizes.values(), reverse=True)
    level, removed, k = 0, 0, 0
    while k < len(lens):
        k += 1
        nxt = lens[k] if k < len(lens) else 1
        # cutting the k longest down to nxt removes:
        gain = sum(lens[:k]) - k * nxt
        if gain >= excess:
            # the level between nxt and lens[k-1] that removes just enough
            top = sum(lens[:k])
            level = max(nxt, (top - excess) // k)
            removed = top - k * level
            break
    else:
        level = 1
        removed = sum(lens) - len(lens)
    extra = excess - removed        # > 0 only by rounding: take one more byte from some
    cut = []
    for n, b in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if b <= level and extra <= 0:
            continue
        target = min(b, level)
        if extra > 0 and target > 1:
            target -= 1
            extra -= 1
        if target < b:
            v = vals[n].encode("utf-8", "replace")[:max(1, target)]
            vals[n] = v.decode("utf-8", "ignore") or REPLACEMENT
            cut.append(n)
    return cut


class Writer:
    """The reporter: sanitises and fits every record, then hands it to the output format
    (pipeline/output.py) that prints it.  ``emit`` flushes each line unless told not to
    (l7_trace rows are flushed once per batch, see TraceWriter.flush)."""

    def __init__(self, out=None, fmt="gopher", labels=None):
        from pipeline.output import make_output
        self.labels = labels if labels is not None else ProcessLabels()
        self.output = make_output(fmt, out, self.labels)
        self.fmt = fmt
        self.cut = 0              # records whose values were cut to fit the label buffer
        self._rooms = {}          # tgid -> label_room of its labels, for one period
        self._room_no_process = label_room({})

    @property
    def lines(self):
        return self.output.lines

    def emit(self, table, row, flush=True):
        fields = FIELDS[table]
        vals = {f: clean_cached(v) if v.__class__ is str or v is None else v
                for f, v in zip(fields, map(row.__getitem__, fields))}
        if "tgid" in row:
            room = self._rooms.get(row["tgid"])
            if room is None:
                room = self._rooms[row["tgid"]] = label_room(self.labels(row["tgid"]))
        else:
            room = self._room_no_process    # the pod table
        if fit_labels(vals, _LABEL_FIELDS[table], room, table):
            self.cut += 1
        self.output.emit(table, fields, vals, flush)

    def flush(self):
        self.output.flush()

    def end_period(self, elapsed):
        self._rooms.clear()       # a process's labels may change (exec, a container found)
        self.output.flush()       # a period's link rows, flushed once (a write(2) per row)
        self.output.end_period(elapsed)

    def close(self):
        self.output.close()


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
    p50, p90, p99 = st.percentiles()
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
        # an estimate is never above the exact max (the true percentile is not either)
        "latency_p50": min(int(round(p50)), st.lat_max),
        "latency_p90": min(int(round(p90)), st.lat_max),
        "latency_p99": min(int(round(p99)), st.lat_max),
        # exact; also over the latencies the kernel counted alone (sampled out, refused)
        "max_latency": max(st.lat_max, st.histo.max),
    }


def completeness(link):
    """l7_link's extension fields: what this period's numbers of the link miss."""
    st = link.stream_stats
    return {"bytes_lost": st.lost_bytes, "msgs_unparsed": st.invalid + st.exceptions,
            "msgs_dropped": st.dropped_frames + link.refused}


def report_links(writer, links, tables, period):
    """One period: per link l7_link, l7_rpc, then its l7_rpc_api rows."""
    for link in list(links.links.values()):
        base = link_labels(link)
        if "l7_link" in tables:
            row = dict(base)
            row.update(bytes_sent=link.bytes_sent, bytes_recv=link.bytes_recv,
                       segs_sent=link.segs_sent, segs_recv=link.segs_recv)
            row.update(completeness(link))
            writer.emit("l7_link", row, flush=False)
        if "l7_rpc" in tables:
            row = dict(base)
            row.update(rpc_values(link.rpc, period))
            writer.emit("l7_rpc", row, flush=False)
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
                writer.emit("l7_rpc_api", row, flush=False)
        link.reset()
    if writer.cut:
        logging.getLogger("l7probe").info(
            "%d record(s) this period had values cut to fit gala-gopher's %d-byte label "
            "buffer (the longest values first: paths, API names)", writer.cut, LABELS_BUFFER)
        writer.cut = 0
    writer.end_period(period)


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
        row.update(req_method=rec.method or "unknown", req_path=rec.path or "-",
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
