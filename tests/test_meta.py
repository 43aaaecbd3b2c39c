"""l7probe.meta, read with the real libconfig, checked against gala-gopher's load rules.

gala-gopher parses meta files with libconfig (compat §1.2) and refuses to start on the
problems listed in compat §1.3; its dashboards rely on the exact upstream tables (§1.1).
libconfig is used through ctypes (Debian packages ``libconfig9``, ``libconfig-dev``).  If it
is missing these tests FAIL (they are never skipped).

The meta file is ``<repo>/l7probe.meta``; ``L7PROBE_META=<path>`` overrides it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import pytest

META_PATH = Path(os.environ.get("L7PROBE_META")
                 or Path(__file__).resolve().parents[1] / "l7probe.meta")

CONFIG_TRUE = 1
CONFIG_TYPE_GROUP, CONFIG_TYPE_STRING, CONFIG_TYPE_LIST = 1, 5, 8

# Limits (compat §1.3)
MAX_VERSION = 15          # MAX_META_VERSION_LEN 16
MAX_NAME = 31             # IMDB MAX_IMDB_METRIC_NAME_LEN / MAX_IMDB_TABLE_NAME_LEN 32
MAX_DESCRIPTION = 255     # MAX_FIELD_DESCRIPTION_LEN 256
MAX_FIELDS = 64           # imdb.max_metrics_num in the shipped gala-gopher.conf
FIELD_TYPES = {"key", "label", "counter", "gauge", "histogram", "summary"}

KEYS = ["tgid", "client_ip", "server_ip", "server_port", "l4_role", "l7_role", "protocol"]
UPSTREAM = {   # compat §1.1: table -> (entity_name, [(field, type)] in order)
    "l7_link": ("l7", [(k, "key") for k in KEYS] + [
        ("ssl", "label"), ("bytes_sent", "gauge"), ("bytes_recv", "gauge"),
        ("segs_sent", "gauge"), ("segs_recv", "gauge")]),
    "l7_rpc": ("l7", [(k, "key") for k in KEYS] + [
        ("ssl", "label"), ("throughput_req", "gauge"), ("throughput_resp", "gauge"),
        ("req_count", "gauge"), ("resp_count", "gauge"), ("latency_avg", "gauge"),
        ("latency", "histogram"), ("latency_sum", "gauge"), ("err_ratio", "gauge"),
        ("err_count", "gauge")]),
    "l7_rpc_api": ("l7_api", [(k, "key") for k in KEYS] + [
        ("api", "key"), ("ssl", "label"), ("throughput_req", "gauge"),
        ("throughput_resp", "gauge"), ("req_count", "gauge"), ("resp_count", "gauge"),
        ("latency_avg", "gauge"), ("latency", "histogram"), ("latency_sum", "gauge"),
        ("err_ratio", "gauge"), ("client_err_ratio", "gauge"), ("server_err_ratio", "gauge"),
        ("err_count", "gauge"), ("client_err_count", "gauge"),
        ("server_err_count", "gauge")]),
}
TRACE_REQUIRED = ["tgid", "client_ip", "server_ip", "server_port", "l4_role", "l7_role",
                  "protocol", "ssl", "req_method", "req_path", "resp_code", "latency"]
# gala-gopher adds these itself to tables with a tgid (CONTRACT §2)
GOPHER_ADDED_LABELS = {"comm", "container_id", "container_name", "container_image",
                       "pod_id", "pod", "pod_namespace"}


# ---------------------------------------------------------------------------------------
# libconfig through ctypes

class ConfigT(ctypes.Structure):     # struct config_t (libconfig.h, 1.5)
    _fields_ = [("root", ctypes.c_void_p), ("destructor", ctypes.c_void_p),
                ("options", ctypes.c_int), ("tab_width", ctypes.c_ushort),
                ("default_format", ctypes.c_short), ("include_dir", ctypes.c_char_p),
                ("error_text", ctypes.c_char_p), ("error_file", ctypes.c_char_p),
                ("error_line", ctypes.c_int), ("error_type", ctypes.c_int),
                ("filenames", ctypes.c_void_p), ("num_filenames", ctypes.c_uint),
                ("_spare", ctypes.c_char * 64)]   # room if a newer libconfig grew the struct


class SettingHead(ctypes.Structure):  # first members of struct config_setting_t
    _fields_ = [("name", ctypes.c_char_p), ("type", ctypes.c_short),
                ("format", ctypes.c_short)]


def _load_libconfig():
    name = ctypes.util.find_library("config") or "libconfig.so.9"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        pytest.fail("libconfig is not installed (%s): run `apt-get install libconfig9 "
                    "libconfig-dev`; these tests check l7probe.meta with the same parser "
                    "gala-gopher uses and are never skipped" % exc, pytrace=False)
    sp = ctypes.c_void_p
    lib.config_init.argtypes = [ctypes.POINTER(ConfigT)]
    lib.config_init.restype = None
    lib.config_destroy.argtypes = [ctypes.POINTER(ConfigT)]
    lib.config_destroy.restype = None
    lib.config_read_file.argtypes = [ctypes.POINTER(ConfigT), ctypes.c_char_p]
    lib.config_read_file.restype = ctypes.c_int
    lib.config_read_string.argtypes = [ctypes.POINTER(ConfigT), ctypes.c_char_p]
    lib.config_read_string.restype = ctypes.c_int
    lib.config_lookup.argtypes = [ctypes.POINTER(ConfigT), ctypes.c_char_p]
    lib.config_lookup.restype = sp
    lib.config_setting_length.argtypes = [sp]
    lib.config_setting_length.restype = ctypes.c_int
    lib.config_setting_get_elem.argtypes = [sp, ctypes.c_uint]
    lib.config_setting_get_elem.restype = sp
    lib.config_setting_get_member.argtypes = [sp, ctypes.c_char_p]
    lib.config_setting_get_member.restype = sp
    lib.config_setting_get_string.argtypes = [sp]
    lib.config_setting_get_string.restype = ctypes.c_char_p
    return lib


@pytest.fixture(scope="module")
def libconfig():
    return _load_libconfig()


def _type(setting) -> int:
    return SettingHead.from_address(setting).type


def read_meta(lib, path=None, text=None):
    """Load a meta file the way ``MeasurementMgrLoadSingleMeta`` does.

    Returns ``(version, tables, problems)``; ``tables`` = list of
    ``(table_name, entity_name, [(name, type, description)])``; ``problems`` = every rule of
    compat §1.3 the file breaks (empty when gala-gopher would load it).
    """
    cfg = ConfigT()
    lib.config_init(ctypes.byref(cfg))
    problems, tables, version = [], [], None
    try:
        if text is not None:
            ok = lib.config_read_string(ctypes.byref(cfg), text.encode())
        else:
            ok = lib.config_read_file(ctypes.byref(cfg), os.fsencode(path))
        if ok != CONFIG_TRUE:
            err = cfg.error_text.decode() if cfg.error_text else "unknown error"
            return None, [], ["libconfig: %s at line %d" % (err, cfg.error_line)]

        def string(setting, member):
            s = lib.config_setting_get_member(setting, member.encode())
            if not s:
                return None
            v = lib.config_setting_get_string(s)
            return v.decode() if v is not None else None

        vs = lib.config_lookup(ctypes.byref(cfg), b"version")
        version = lib.config_setting_get_string(vs).decode() if vs and \
            lib.config_setting_get_string(vs) is not None else None
        if version is None:
            problems.append("no string setting 'version'")
        elif len(version) > MAX_VERSION:
            problems.append("version %r longer than %d characters" % (version, MAX_VERSION))

        ms = lib.config_lookup(ctypes.byref(cfg), b"measurements")
        if not ms:
            problems.append("no 'measurements'")
            return version, tables, problems
        if _type(ms) != CONFIG_TYPE_LIST:
            problems.append("'measurements' is not a list ( ... )")
        seen = set()
        for i in range(lib.config_setting_length(ms)):
            m = lib.config_setting_get_elem(ms, i)
            where = "measurement #%d" % (i + 1)
            if _type(m) != CONFIG_TYPE_GROUP:
                problems.append("%s is not a group { ... }" % where)
                continue
            tname, ename = string(m, "table_name"), string(m, "entity_name")
            where = "table %r" % tname if tname else where
            if tname is None:
                problems.append("%s: no string table_name" % where)
            elif len(tname) > MAX_NAME:
                problems.append("%s: table_name longer than %d" % (where, MAX_NAME))
            elif tname in seen:
                problems.append("%s: duplicate table_name" % where)
            seen.add(tname)
            if ename is None:
                problems.append("%s: no string entity_name" % where)
            elif len(ename) > MAX_NAME:
                problems.append("%s: entity_name longer than %d" % (where, MAX_NAME))
            fs = lib.config_setting_get_member(m, b"fields")
            fields = []
            if not fs:
                problems.append("%s: no fields" % where)
            else:
                for j in range(lib.config_setting_length(fs)):
                    f = lib.config_setting_get_elem(fs, j)
                    if _type(f) != CONFIG_TYPE_GROUP:
                        problems.append("%s: field #%d is not a group" % (where, j + 1))
                        continue
                    name, ftype, desc = (string(f, k) for k in ("name", "type", "description"))
                    fw = "%s field #%d %r" % (where, j + 1, name)
                    for k, v in (("name", name), ("type", ftype), ("description", desc)):
                        if v is None:
                            problems.append("%s: no string %s" % (fw, k))
                    if name is not None and len(name) > MAX_NAME:
                        problems.append("%s: name longer than %d" % (fw, MAX_NAME))
                    if ftype is not None and ftype not in FIELD_TYPES:
                        problems.append("%s: unknown type %r" % (fw, ftype))
                    if desc is not None and len(desc) > MAX_DESCRIPTION:
                        problems.append("%s: description longer than %d"
                                        % (fw, MAX_DESCRIPTION))
                    fields.append((name, ftype, desc))
                if len(fields) > MAX_FIELDS:
                    problems.append("%s: %d fields, at most %d" % (where, len(fields), MAX_FIELDS))
                if not any(t == "key" for _, t, _ in fields):
                    problems.append("%s: no key field" % where)
                names = [n for n, _, _ in fields if n]
                dups = {n for n in names if names.count(n) > 1}
                if dups:
                    problems.append("%s: duplicate field names %s" % (where, sorted(dups)))
            tables.append((tname, ename, fields))
        return version, tables, problems
    finally:
        lib.config_destroy(ctypes.byref(cfg))


# ---------------------------------------------------------------------------------------
# The real meta file

@pytest.fixture(scope="module")
def meta(libconfig):
    if not META_PATH.is_file():
        pytest.fail("%s not found (set L7PROBE_META to test another file)" % META_PATH,
                    pytrace=False)
    version, tables, problems = read_meta(libconfig, path=META_PATH)
    return version, {t[0]: t for t in tables}, problems


def test_libconfig_struct_layout():
    # The ctypes mirror of config_t must match libconfig.h on x86_64 (offsets from gcc).
    assert ConfigT.error_text.offset == 32
    assert ConfigT.error_line.offset == 48
    assert SettingHead.type.offset == 8


def test_meta_loads_like_gala_gopher(meta):
    version, tables, problems = meta
    assert problems == [], "gala-gopher would reject %s:\n  %s" % (META_PATH,
                                                                   "\n  ".join(problems))
    assert version and tables


# our extension fields, after upstream's (README "Output"): gauges, described as extensions
PERCENTILE_EXT = [("latency_p50", "gauge"), ("latency_p90", "gauge"), ("latency_p99", "gauge"),
                  ("max_latency", "gauge")]
EXTENSIONS = {
    "l7_link": [("bytes_lost", "gauge"), ("msgs_unparsed", "gauge"), ("msgs_dropped", "gauge")],
    "l7_rpc": PERCENTILE_EXT,
    "l7_rpc_api": PERCENTILE_EXT,
}


@pytest.mark.parametrize("table", sorted(UPSTREAM))
def test_upstream_tables_exact(meta, table):
    """Upstream's fields first, with their names, types and order; then our extensions."""
    _, tables, _ = meta
    assert table in tables, "table %s missing from %s" % (table, META_PATH)
    _, entity, fields = tables[table]
    want_entity, want_fields = UPSTREAM[table]
    assert entity == want_entity
    got = [(n, t) for n, t, _ in fields]
    assert got[:len(want_fields)] == want_fields
    assert got[len(want_fields):] == EXTENSIONS[table]
    for n, _, desc in fields[len(want_fields):]:
        assert desc.startswith("Extension:"), n


def test_extension_metric_names_do_not_collide(meta):
    """gala-gopher renders a histogram field h also as h_sum and h_max (compat §2.4): no
    field of ours may take one of those names (upstream's own latency_sum gauge does)."""
    _, tables, _ = meta
    for tname, entity, fields in tables.values():
        seen = {}
        for n, t, _ in fields:
            for x in ({n, n + "_sum", n + "_max"} if t == "histogram" else {n}):
                seen.setdefault(x, []).append(n)
        clashes = {x: by for x, by in seen.items() if len(by) > 1}
        assert set(clashes) <= {"latency_sum"}, (tname, clashes)
        if tname == "l7_rpc":                 # the checker sees upstream's own clash
            assert "latency_sum" in clashes


# ---------------------------------------------------------------------------------------
# The checker itself catches what gala-gopher rejects

def _meta_text(tables, version="1.0.0"):
    out = []
    for tname, ename, fields in tables:
        fl = ",\n".join('  { description: "d", type: "%s", name: "%s", }' % (t, n)
                        for n, t in fields)
        out.append('{ table_name: "%s", entity_name: "%s", fields: (\n%s\n) }'
                   % (tname, ename, fl))
    head = 'version = "%s"\n' % version if version is not None else ""
    return head + "measurements:\n(\n" + ",\n".join(out) + "\n)\n"


GOOD = [("t1", "e1", [("tgid", "key"), ("v", "gauge")])]


def test_checker_accepts_upstream_style(libconfig):
    text = ('version = "1.0.0"\n# comment\nmeasurements:\n(\n  {\n    table_name: "t1",\n'
            '    entity_name: "e1",\n    fields:\n    (\n'
            '      { description: "pid", type: "key", name: "tgid", },\n'
            '      { description: "x", type: "histogram", name: "latency", }\n    )\n  }\n)\n')
    version, tables, problems = read_meta(libconfig, text=text)
    assert problems == [] and version == "1.0.0"
    assert tables == [("t1", "e1", [("tgid", "key", "pid"), ("latency", "histogram", "x")])]


@pytest.mark.parametrize("text, expect", [
    (_meta_text(GOOD) + "oops {", "libconfig:"),
    (_meta_text(GOOD, version=None), "'version'"),
    (_meta_text(GOOD, version="1.0.0-very-long-version"), "version"),
    ('version = "1"\n', "no 'measurements'"),
    (_meta_text(GOOD + GOOD), "duplicate table_name"),
    (_meta_text([("t" * 32, "e", [("tgid", "key")])]), "table_name longer"),
    (_meta_text([("t", "e", [("n" * 32, "key")])]), "name longer"),
    (_meta_text([("t", "e", [("a", "gauge")])]), "no key field"),
    (_meta_text([("t", "e", [("k", "key")] + [("f%d" % i, "gauge") for i in range(64)])]),
     "65 fields"),
    (_meta_text([("t", "e", [("k", "key"), ("k", "gauge")])]), "duplicate field"),
    (_meta_text([("t", "e", [("k", "keys")])]), "unknown type"),
    ('version = "1"\nmeasurements: ( { table_name: "t", fields: ( '
     '{ description: "d", type: "key", name: "k" } ) } )\n', "no string entity_name"),
    ('version = "1"\nmeasurements: ( { table_name: "t", entity_name: "e" } )\n', "no fields"),
    ('version = "1"\nmeasurements: ( { table_name: "t", entity_name: "e", fields: ( '
     '{ type: "key", name: "k" } ) } )\n', "no string description"),
])
def test_checker_rejects(libconfig, text, expect):
    _, _, problems = read_meta(libconfig, text=text)
    assert any(expect in p for p in problems), problems
