"""The reporter without BPF: one sanitising rule, gala-gopher's limits (8191-byte lines,
1024-byte label buffer), field counts from the meta, JSON, the top format's plain lines."""
from __future__ import annotations

import io
import json
import logging

import pytest

from pipeline import report
from pipeline.aggregate import Links
from pipeline.meta import FIELDS, TABLES
from pipeline.output import FORMATS, GopherOutput, make_output
from pipeline.report import TraceWriter, Writer, clean, report_links
from protocol.base import ERR_CLIENT, ERR_SERVER, Record
from tests.support.ingest import check_line, gopher_labels

LINE_BREAKERS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


class Labels:
    """ProcessLabels stand-in: the longest comm, optionally a container."""

    def __init__(self, container=False):
        self.v = {"comm": "c" * 15, "container_id": "f" * 64 if container else ""}

    def __call__(self, tgid):
        return self.v


def make_links(n_links=2, api=("GET /", "GET /x"), path=None):
    links = Links()
    for i in range(n_links):
        link = links.get((100 + i, "127.0.0.1", "127.0.0.%d" % (i + 2), 8080, 2, 2, "http", 0),
                         0.0)
        link.bytes_sent, link.bytes_recv, link.segs_sent, link.segs_recv = 10, 20, 1, 2
        recs = []
        for j, a in enumerate(api):
            recs.append(Record(1000, 1000 + (j + 1) * 1_000_000, a, "GET", path or "/",
                               "200", ERR_CLIENT if j == 1 else 0))
        recs.append(Record(1000, 0, api[0], "GET", "/", "", ERR_SERVER))
        link.add_records(recs)
    return links


def lines_of(out):
    return out.getvalue().splitlines()


# -- sanitising --------------------------------------------------------------------------

@pytest.mark.parametrize("ch", list(LINE_BREAKERS + "|\0\x7f\x9b\t\xa0\u200b\ufeff"))
def test_one_replacement_rule(ch):
    assert clean("a" + ch + "b") == "a" + report.REPLACEMENT + "b"


def test_clean_keeps_text_and_never_returns_empty():
    assert clean("GET /ünï/中文 x") == "GET /ünï/中文 x"
    assert clean("") == "(null)"
    assert clean(5) == "5"


def test_every_character_a_reader_splits_lines_on_is_replaced():
    breakers = [chr(c) for c in range(0x110000)
                if 0xD800 > c or c > 0xDFFF
                if len(("a" + chr(c) + "b").splitlines()) > 1]
    assert set(LINE_BREAKERS) <= set(breakers)
    text = "GET /" + "".join(breakers) + "|x"
    assert len(clean(text).splitlines()) == 1 and "|" not in clean(text)


@pytest.mark.parametrize("fmt", ["gopher", "json"])
def test_paths_and_apis_with_line_breakers_stay_one_line(fmt):
    nasty = "/a" + LINE_BREAKERS + "|b"
    links = make_links(1, api=("GET " + nasty,), path=nasty)
    out = io.StringIO()
    w = Writer(out, fmt, Labels())
    tw = TraceWriter(w, 100, lambda ts: ts)
    link = next(iter(links.links.values()))
    tw.add(link, Record(1, 2, "GET " + nasty, "GET", nasty, "200"))
    tw.flush()
    report_links(w, links, {"l7_link", "l7_rpc", "l7_rpc_api"}, 1.0)
    lines = lines_of(out)
    assert len(lines) == 1 + 3
    want = "/a" + "?" * len(LINE_BREAKERS) + "?b"
    for line in lines:
        assert len((line + "\n").splitlines()) == 1
        if fmt == "gopher":
            table, rec = check_line(line)
            if table == "l7_trace":
                assert rec["req_path"] == want
            if table == "l7_rpc_api":
                assert rec["api"] == "GET " + want
        else:
            obj = json.loads(line)
            for v in obj.values():
                assert not isinstance(v, str) or len(("x" + v + "x").splitlines()) == 1
            if obj["table"] == "l7_trace":
                assert obj["req_path"] == want


# -- gopher lines ------------------------------------------------------------------------

def test_field_counts_follow_the_meta():
    out = io.StringIO()
    w = Writer(out, "gopher", Labels())
    report_links(w, make_links(), {"l7_link", "l7_rpc", "l7_rpc_api"}, 2.0)
    seen = {}
    for line in lines_of(out):
        table, rec = check_line(line)
        seen[table] = seen.get(table, 0) + 1
        assert list(rec) == list(FIELDS[table])
    assert seen == {"l7_link": 2, "l7_rpc": 2, "l7_rpc_api": 4}
    rpc = [check_line(l)[1] for l in lines_of(out) if l.startswith("|l7_rpc|")][0]
    assert rpc["req_count"] == "3" and rpc["resp_count"] == "2" and rpc["err_count"] == "2"
    assert rpc["throughput_req"] == "1.50"
    assert int(rpc["max_latency"]) == 2_000_000
    assert int(rpc["latency_p99"]) == 2_000_000          # capped at the exact max
    assert abs(int(rpc["latency_p50"]) - 1_000_000) <= 10_000
    link = [check_line(l)[1] for l in lines_of(out) if l.startswith("|l7_link|")][0]
    assert (link["bytes_lost"], link["msgs_unparsed"], link["msgs_dropped"]) == ("0", "0", "0")


class _CountingOut(io.StringIO):
    flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_a_period_is_flushed_once():
    """A period's link rows reach the reader in one flush, not a write(2) per row."""
    out = _CountingOut()
    w = Writer(out, "gopher", Labels())
    report_links(w, make_links(), {"l7_link", "l7_rpc", "l7_rpc_api"}, 2.0)
    assert len(lines_of(out)) == 8 and out.flushes == 1


def test_stdout_gets_a_buffer_under_unbuffered_python(tmp_path):
    """Under ``python -u`` / PYTHONUNBUFFERED the probe still buffers its records: 200 rows
    written and flushed once are one write(2)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, importlib.util; sys.path.insert(0, %r); "
            "spec = importlib.util.spec_from_file_location('l7', %r); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "m._buffered_stdout(); "
            "[sys.stdout.write('|l7_rpc|%%d|\\n' %% i) for i in range(200)]; sys.stdout.flush()"
            % (root, os.path.join(root, "l7probe.py")))
    log = tmp_path / "strace"
    cp = subprocess.run(["strace", "-f", "-e", "trace=write", "-o", str(log), sys.executable,
                         "-u", "-c", code], capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, L7PROBE_NO_VENV="1"))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines() == ["|l7_rpc|%d|" % i for i in range(200)]
    writes = [l for l in log.read_text().splitlines() if "write(1," in l]
    assert len(writes) == 1, writes[:5]


def test_lines_are_cut_to_8191_bytes():
    """The line cut of the gopher format, for values that are not labels (the label budget
    keeps key and label values far shorter)."""
    out = io.StringIO()
    g = GopherOutput(out, Labels())
    fields = FIELDS["l7_rpc"]
    vals = {f: "1" for f in fields}
    vals["tgid"] = 7
    vals["latency"] = "9" * 20000
    vals["latency_sum"] = "é" * 5000
    g.emit("l7_rpc", fields, vals)
    line = out.getvalue()
    assert line.endswith("|\n") and len(line.encode()) <= 8191
    assert len(line[1:-2].split("|")) == 1 + len(fields)
    assert "\ufffd" not in line                    # never half a character


# -- the label budget ----------------------------------------------------------------------

@pytest.mark.parametrize("container", [False, True])
@pytest.mark.parametrize("fmt", ["gopher", "json"])
def test_every_record_fits_the_label_buffer(container, fmt):
    said = []
    handler = logging.Handler()
    handler.emit = lambda r: said.append(r.getMessage())
    log = logging.getLogger("l7probe")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        _fits_the_label_buffer(container, fmt, said)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _fits_the_label_buffer(container, fmt, said):
    long_path = "/" + "p" * 5000
    links = Links()
    link = links.get((4194304, "fe80::1234:5678:9abc:def0:1234", "2001:db8:85a3::8a2e:370:7334",
                      65535, 2, 2, "http", 1), 0.0)
    link.add_records([Record(1, 2, "GET " + long_path, "GET", long_path, "200")])
    out = io.StringIO()
    w = Writer(out, fmt, Labels(container))
    tw = TraceWriter(w, 10, lambda ts: 1_700_000_000_000_000_000)
    tw.add(link, Record(1, 2, "GET " + long_path, "PROPPATCH", long_path, "200"))
    tw.flush()
    report_links(w, links, {"l7_link", "l7_rpc", "l7_rpc_api"}, 1.0)
    lines = lines_of(out)
    assert len(lines) == 4
    for line in lines:
        if fmt == "gopher":
            table, rec = check_line(line, container=container)
        else:
            obj = json.loads(line)
            table = obj.pop("table")
            rec = {k: str(v) for k, v in obj.items()}
            labels = gopher_labels(table, rec, container=container)
            assert len(labels.encode()) + 1 <= 1024
        if table == "l7_trace":
            # only the long value was cut: every short one is whole
            assert rec["req_method"] == "PROPPATCH" and rec["server_port"] == "65535"
            assert rec["client_ip"] == "fe80::1234:5678:9abc:def0:1234"
            assert rec["req_path"].startswith("/ppp") and len(rec["req_path"]) < 1000
            # and not by more than needed: a few bytes of room at most are left (the
            # room kept for a histogram's le label, which l7_trace has not, and rounding)
            labels = gopher_labels(table, rec, container=container)
            assert 1024 - 24 <= len(labels) + 1 <= 1024
        if table == "l7_rpc_api":
            assert rec["api"].startswith("GET /ppp")
    # the trace row and the API row were cut, and the period's log line says so
    assert w.cut == 0
    assert any("2 record(s) this period had values cut" in m for m in said), said


def test_fit_labels_cuts_the_longest_first():
    vals = {"a": "x" * 300, "b": "y" * 200, "c": "z" * 10, "n": 12345}
    names = ("a", "b", "c", "n")
    cut = report.fit_labels(vals, names, 400)
    used = sum(len(n) + 4 + len(str(vals[n])) for n in names)
    assert used <= 400 and used >= 396
    assert vals["c"] == "z" * 10 and vals["n"] == 12345
    assert abs(len(vals["a"]) - len(vals["b"])) <= 1 and set(cut) == {"a", "b"}
    vals = {"a": "short"}
    assert report.fit_labels(vals, ("a",), 400) == () and vals["a"] == "short"


def test_room_depends_on_what_gala_gopher_adds():
    host = report.label_room({"comm": "nginx", "container_id": ""})
    cont = report.label_room({"comm": "nginx", "container_id": "f" * 64})
    unknown = report.label_room({})
    assert cont < host and unknown == host - (15 - len("nginx"))
    added = gopher_labels("l7_rpc", {n: "(null)" for n in FIELDS["l7_rpc"]}, comm="nginx")
    # our labels, each counted with a comma after it, + what gala-gopher adds + NUL
    exact = 1024 - len(added) - 1
    assert 0 <= exact - host <= 1


# -- JSON and the format registry ------------------------------------------------------------

def test_json_records():
    out = io.StringIO()
    w = Writer(out, "json", Labels(container=True))
    report_links(w, make_links(1), {"l7_link", "l7_rpc", "l7_rpc_api"}, 1.0)
    objs = [json.loads(l) for l in lines_of(out)]
    assert [o["table"] for o in objs] == ["l7_link", "l7_rpc", "l7_rpc_api", "l7_rpc_api"]
    for o in objs:
        assert list(o)[1:1 + len(FIELDS[o["table"]])] == list(FIELDS[o["table"]])
        assert o["comm"] == "c" * 15 and o["container_id"] == "f" * 64
        assert isinstance(o["req_count" if o["table"] != "l7_link" else "bytes_sent"], int)
    assert objs[1]["latency_p90"] == 2_000_000 and objs[0]["msgs_dropped"] == 0


def test_format_choices_come_from_the_registry():
    import l7probe
    assert set(FORMATS) == {"gopher", "json", "top"}
    assert l7probe.parse_args(["--format", "top"]).format == "top"
    assert l7probe.parse_args(["--top"]).format == "top"
    assert l7probe.parse_args([]).format == "gopher"
    with pytest.raises(SystemExit):
        l7probe.parse_args(["--format", "xml"])
    assert not hasattr(l7probe.Probe, "_json_labels")


def test_top_without_a_terminal_prints_plain_tables():
    out = io.StringIO()
    w = Writer(out, "top", Labels())
    links = make_links(3)
    # a busier third link, so the req/s sort has something to do
    third = list(links.links.values())[2]
    third.add_records([Record(1, 3_000_000, "GET /", "GET", "/", "200")] * 5)
    report_links(w, links, {"l7_link", "l7_rpc", "l7_rpc_api"}, 1.0)
    text = out.getvalue()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert len(blocks) == 1
    title, head, *rows = blocks[0].splitlines()
    assert "3 links" in title and "sorted by req/s" in title
    assert head.split() == ["PID", "COMM", "CONTAINER", "PROTO", "ROLE", "CLIENT>SERVER:PORT",
                            "REQ/S", "ERR%", "P50ms", "P99ms", "BYTES"]
    assert [r.split()[0] for r in rows] == ["102", "100", "101"]
    cells = rows[0].split()
    assert cells[1] == "c" * 15 and cells[3] == "http" and cells[6] == "8.00"
    assert cells[7] == "25.0"                    # 2 errors of 8 requests
    assert cells[10] == "30B"
    # the API view is the same table with an API column
    w.output._key("v")
    report_links(w, make_links(1), {"l7_rpc", "l7_rpc_api"}, 1.0)
    last = [b for b in out.getvalue().split("\n\n") if b.strip()][-1].splitlines()
    assert "2 APIs" in last[0] and "API" in last[1].split()
    assert sorted(r.split()[7] for r in last[2:]) == ["/", "/x"]
    assert w.output.scr is None                  # not a terminal: no curses


def test_top_sort_keys_and_views():
    top = make_output("top", io.StringIO(), Labels())
    fields = FIELDS["l7_rpc_api"]
    for i, (api, p99) in enumerate([("GET /a", 5_000_000), ("GET /b", 9_000_000),
                                    ("GET /c", 1_000_000)]):
        vals = {f: "0" for f in fields}
        vals.update(tgid=10 + i, client_ip="1.1.1.1", server_ip="2.2.2.2", server_port=80,
                    l4_role="tcp_server", l7_role="server", protocol="http", ssl="no_ssl",
                    api=api, latency_p99=p99, throughput_req="%d.00" % (3 - i))
        top.emit("l7_rpc_api", fields, vals)
    top.end_period(1.0)
    assert top._key("v") and top.view == "api"
    order = lambda: [r.split()[7] for r in top._table()[1]]   # noqa: E731
    assert order() == ["/a", "/b", "/c"]           # req/s
    assert top._key("9") and order() == ["/b", "/a", "/c"]
    assert top._key("p") and order() == ["/a", "/b", "/c"]   # pid ascending
    assert top._key("s") and top.sort == "c"
    assert not top._key("x")
    assert not top._key("q") and top.quit


def test_fit_labels_property():
    """Random values and rooms: the result fits whenever cutting to 1 byte each can fit,
    only cut values change, each stays a prefix, and no uncut value is longer than the
    cut ones (the longest go first; 3 bytes: a character's width)."""
    import random
    rnd = random.Random(3)
    for _ in range(2000):
        names = tuple("f%d" % i for i in range(rnd.randint(1, 8)))
        vals = {n: rnd.choice("aé中") * rnd.randint(1, 400) for n in names}
        if rnd.random() < 0.2:
            vals[names[0]] = "(null)"
        orig = dict(vals)
        room = rnd.randint(0, 2000)
        cut = report.fit_labels(vals, names, room)
        size = lambda v: len(v.encode())               # noqa: E731
        used = sum(len(n) + 4 + size(v) for n, v in vals.items() if v != "(null)")
        floor = sum(len(n) + 5 for n, v in orig.items() if v != "(null)")
        if floor <= room:
            assert used <= room, (room, used)
        for n in names:
            # a prefix (or "?" where not one whole character fits)
            assert vals[n] and (orig[n].startswith(vals[n]) or vals[n] == "?")
            assert (vals[n] != orig[n]) == (n in cut)
        if cut:
            assert all(size(vals[n]) <= max(size(vals[m]) for m in cut) + 3
                       for n in names if n not in cut and orig[n] != "(null)")


def test_fast_paths_equal_the_rules():
    """Writer.emit's shortcuts give what the rules give: clean_cached == clean (also the
    second time, and past the cache's bound), and fit_labels' bound for a table (skip the
    walk when 4 bytes a character and 20 a number fit) cuts exactly what the walk cuts."""
    import random
    rnd = random.Random(5)
    alphabet = "ab/?=é中|\r\n\x00\u2028 \ufeff"
    values = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
              for _ in range(report._CLEAN_MAX + 500)] + [None, "", "(null)"]
    for _ in range(2):
        for v in values:
            assert report.clean_cached(v) == clean(v)
    skipped = 0
    for table, names in report._LABEL_FIELDS.items():
        for _ in range(300):
            vals = {n: (rnd.randint(0, 2**64 - 1) if rnd.random() < 0.3 else
                        rnd.choice("aé中") * rnd.randint(1, 120)) for n in names}
            room = rnd.randint(0, 1500)
            a, b = dict(vals), dict(vals)
            fast = list(report.fit_labels(a, names, room, table))
            assert fast == list(report.fit_labels(b, names, room)) and a == b
            skipped += not fast and room >= report._NAMES_COST[table]
    assert skipped > 100            # rows that needed no cut, now and then
