"""PostgreSQL parser + stitcher: recorded captures against tshark, hand-written protocol
exchanges (startup, simple and extended query, COPY, errors), robustness."""
from __future__ import annotations

import random
import struct

import pytest

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER
from protocol.pgsql import PROTOCOL
from protocol.pgsql.types import split_statements, sql_path, sql_verb
from tests.support import feed
from tests.support.pcap import read_tcp_connections
from tests.support.tshark import fixture, read_tsv, values

FIXTURES = ["greenhouse-app.pcap", "pgsql-all.pcap", "pgsql-copy-data-out__input.pcap",
            "pgsql-simple-query-rollback__input.pcap", "pgsql.pcap",
            "psql-create-insert-select-delete-drop.pcap"]
RESULTS = ("Command completion", "Error", "Empty query")


def conns(name):
    return read_tcp_connections(fixture("postgresql", name), server_ports=(5432, 8000))


def oracle(name):
    """Per client port: statements results (C/E/I), errors, Executes, simple-query verbs."""
    out = {}
    for row in read_tsv(fixture("postgresql", name)):
        types = values(row, "pgsql.type")
        if row["pgsql.frontend"].startswith("1"):
            o = out.setdefault(int(row["tcp.srcport"]), dict(results=0, errors=0, execs=0,
                                                              verbs=[]))
            o["execs"] += types.count("Execute")
            for t, q in zip([t for t in types if t == "Simple query"],
                            values(row, "pgsql.query")):
                o["verbs"].append(sql_verb(q.replace("\\n", "\n")))
        else:
            o = out.setdefault(int(row["tcp.dstport"]), dict(results=0, errors=0, execs=0,
                                                              verbs=[]))
            o["results"] += sum(types.count(t) for t in RESULTS)
            o["errors"] += types.count("Error")
    return out


def msg(tag, body=b""):
    return tag + struct.pack(">I", len(body) + 4) + body


def cstr(s):
    return (s if isinstance(s, bytes) else s.encode()) + b"\x00"


def Q(sql):
    return msg(b"Q", cstr(sql))


def P(name, sql):
    return msg(b"P", cstr(name) + cstr(sql) + b"\x00\x00")


def B(portal, name):
    return msg(b"B", cstr(portal) + cstr(name) + b"\x00\x00\x00\x00\x00\x00")


def E(portal=""):
    return msg(b"E", cstr(portal) + b"\x00\x00\x00\x00")


D_PORTAL = msg(b"D", b"P\x00")
S = msg(b"S")


def C(tag):
    return msg(b"C", cstr(tag))


def Z(status=b"I"):
    return msg(b"Z", status)


def ERR(code, text="boom"):
    return msg(b"E", b"SERROR\x00VERROR\x00C" + cstr(code) + b"M" + cstr(text) + b"\x00")


def T():
    return msg(b"T", b"\x00\x01" + cstr("a") + b"\x00" * 18)


def DR(value):
    return msg(b"D", b"\x00\x01" + struct.pack(">I", len(value)) + value)


_PARAMS = b"user\x00bob\x00database\x00db\x00\x00"
STARTUP = struct.pack(">II", 8 + len(_PARAMS), 196608) + _PARAMS
SSLREQ = struct.pack(">II", 8, 80877103)
GSSREQ = struct.pack(">II", 8, 80877104)
AUTH_OK = (msg(b"R", b"\x00\x00\x00\x00") + msg(b"S", cstr("server_version") + cstr("16"))
           + msg(b"K", b"\x00\x00\x00\x01\x00\x00\x00\x02") + Z())


def run(*pairs, **kw):
    return feed.run_pairs(PROTOCOL, *pairs, **kw)


recs = feed.records


# -- recorded captures -------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_tshark(name):
    expect = oracle(name)
    for c in conns(name):
        res = feed.run(PROTOCOL, c.chunks)
        assert res.exceptions == 0
        assert res.req_stats.invalid == res.resp_stats.invalid == 0
        o = expect.get(c.client[1], dict(results=0, errors=0, execs=0, verbs=[]))
        assert len(res.records) == o["results"]
        assert all(r.req_ts and r.resp_ts for r in res.records)
        assert sum(1 for r in res.records if r.err) == o["errors"]
        if o["verbs"]:
            assert [r.api for r in res.records] == o["verbs"]
        else:
            assert len(res.records) == o["execs"]


def test_fixture_details():
    res = feed.run(PROTOCOL, conns("pgsql-simple-query-rollback__input.pcap")[0].chunks)
    errs = [(r.path, r.status, r.err) for r in res.records if r.err]
    assert errs[0] == ("SELECT 1/0", "22012", ERR_CLIENT)
    assert [s for _, s, _ in errs] == ["22012", "25P02", "25P02", "25P02", "22012"]
    res = feed.run(PROTOCOL, conns("pgsql-copy-data-out__input.pcap")[0].chunks)
    assert [(r.api, r.status) for r in res.records] == [("COPY", "COPY 5")]
    # mid-connection extended traffic: statements prepared before the capture are unknown
    res = feed.run(PROTOCOL, conns("pgsql-all.pcap")[0].chunks)
    assert [r.api for r in res.records][:3] == ["SELECT", "EXECUTE", "EXECUTE"]
    assert res.records[1].path == "EXECUTE S_18"
    assert sum(r.api == "SELECT" for r in res.records) == 6
    res = feed.run(PROTOCOL, conns("pgsql.pcap")[0].chunks)
    assert [(r.api, r.path) for r in res.records][:3] == [
        ("BEGIN", "begin"), ("SELECT", "select revision from mailstore for update"),
        ("COMMIT", "commit")]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_split_everywhere(name):
    for c in conns(name):
        feed.assert_cut_every_way(PROTOCOL, c.chunks, 12000, range(1, 100, 3))


# -- startup phase -----------------------------------------------------------------------
def test_sslrequest_refused_then_startup_and_auth():
    res = run(("c2s", SSLREQ), ("s2c", b"N"), ("c2s", STARTUP),
              ("s2c", msg(b"R", b"\x00\x00\x00\x05salt")), ("c2s", msg(b"p", cstr("md5xx"))),
              ("s2c", AUTH_OK), ("c2s", Q("select 1")),
              ("s2c", T() + DR(b"1") + C("SELECT 1") + Z()))
    assert recs(res) == [("SELECT", "select 1", "SELECT 1", ERR_NONE, True, True)]
    assert res.state.skip_reason is None


def test_sslrequest_accepted_stops_parsing():
    res = run(("c2s", SSLREQ), ("s2c", b"S"), ("c2s", b"\x16\x03\x01\x02\x00" + b"\x01" * 200),
              ("s2c", b"\x16\x03\x03" + b"\x02" * 300), ("c2s", Q("select 1")),
              ("s2c", C("SELECT 1") + Z()))
    assert res.records == []
    assert "TLS" in res.state.skip_reason


def test_gssenc_refused_and_cancel_request():
    res = run(("c2s", GSSREQ), ("s2c", b"N"), ("c2s", STARTUP), ("s2c", AUTH_OK),
              ("c2s", Q("select pg_sleep(10)")), ("s2c", ERR("57014", "canceling")),
              ("s2c", Z()))
    other = run(("c2s", struct.pack(">IIII", 16, 80877102, 1, 2)))
    assert other.records == [] and other.req_stats.invalid == 0
    assert recs(res) == [("SELECT", "select pg_sleep(10)", "57014", ERR_SERVER, True, True)]


def test_auth_failure_is_not_a_query():
    res = run(("c2s", STARTUP), ("s2c", msg(b"R", b"\x00\x00\x00\x03")),
              ("c2s", msg(b"p", cstr("bad"))), ("s2c", ERR("28P01", "password")))
    assert res.records == []


# -- simple query ------------------------------------------------------------------------
def test_multi_statement_query_one_record_per_statement():
    res = run(("c2s", Q("BEGIN; INSERT INTO t VALUES (1, 'a;b'); -- c\n COMMIT;")),
              ("s2c", C("BEGIN") + C("INSERT 0 1") + C("COMMIT") + Z()))
    assert recs(res) == [("BEGIN", "BEGIN", "BEGIN", 0, True, True),
                         ("INSERT", "INSERT INTO t VALUES (1, 'a;b')", "INSERT 0 1", 0, True, True),
                         ("COMMIT", "-- c COMMIT", "COMMIT", 0, True, True)]


def test_multi_statement_error_stops_the_rest():
    res = run(("c2s", Q("SELECT 1; SELECT 1/0; SELECT 2")),
              ("s2c", T() + DR(b"1") + C("SELECT 1") + ERR("22012") + Z(b"I")),
              ("c2s", Q("SELECT 3")), ("s2c", T() + DR(b"3") + C("SELECT 1") + Z()))
    assert [(r.api, r.path, r.status, r.err) for r in res.records] == [
        ("SELECT", "SELECT 1", "SELECT 1", 0), ("SELECT", "SELECT 1/0", "22012", ERR_CLIENT),
        ("SELECT", "SELECT 3", "SELECT 1", 0)]


def test_empty_query_and_notices():
    res = run(("c2s", Q("")), ("s2c", msg(b"I") + Z()), ("c2s", Q("DROP TABLE IF EXISTS x")),
              ("s2c", msg(b"N", b"SNOTICE\x00C00000\x00\x00") + C("DROP TABLE") + Z()))
    assert [(r.api, r.status) for r in res.records] == [("EMPTY", "EMPTY"), ("DROP", "DROP TABLE")]


def test_server_error_classes():
    codes = ["42601", "23505", "57P01", "53100", "08006", "XX000", "40P01", "58030"]
    res = run(*[p for code in codes for p in (("c2s", Q("select 1")), ("s2c", ERR(code) + Z()))])
    assert [(r.status, r.err) for r in res.records] == [
        ("42601", ERR_CLIENT), ("23505", ERR_CLIENT), ("57P01", ERR_SERVER),
        ("53100", ERR_SERVER), ("08006", ERR_SERVER), ("XX000", ERR_SERVER),
        ("40P01", ERR_CLIENT), ("58030", ERR_SERVER)]


# -- extended query ----------------------------------------------------------------------
def test_pgbench_prepared_mode():
    # -M prepared: Parse once (+ Sync), then Bind/Execute/Sync per transaction statement
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    pairs = [("c2s", P("P0_1", sql) + S), ("s2c", msg(b"1") + Z())]
    for i in range(5):
        pairs += [("c2s", B("", "P0_1") + E() + S),
                  ("s2c", msg(b"2") + DR(b"%d" % i) + C("SELECT 1") + Z())]
    res = run(*pairs)
    assert recs(res) == [("SELECT", sql[:-1] + ";", "SELECT 1", 0, True, True)] * 5


def test_pgbench_extended_mode_and_pipelined_batch():
    pairs = []
    for i in range(3):
        pairs += [("c2s", P("", "UPDATE t SET v = v + $1") + B("", "") + D_PORTAL + E() + S),
                  ("s2c", msg(b"1") + msg(b"2") + msg(b"n") + C("UPDATE 1") + Z())]
    # a JDBC-style batch: several Parse/Bind/Execute, one Sync
    pairs += [("c2s", P("", "INSERT INTO a VALUES ($1)") + B("", "") + E()
               + P("", "DELETE FROM b") + B("", "") + E() + S),
              ("s2c", msg(b"1") + msg(b"2") + C("INSERT 0 1") + msg(b"1") + msg(b"2")
               + C("DELETE 4") + Z())]
    res = run(*pairs)
    assert [(r.api, r.status) for r in res.records] == [("UPDATE", "UPDATE 1")] * 3 + [
        ("INSERT", "INSERT 0 1"), ("DELETE", "DELETE 4")]
    assert all(r.req_ts and r.resp_ts for r in res.records)


def test_extended_error_skips_to_sync():
    res = run(("c2s", P("s1", "INSERT INTO t VALUES ($1)") + B("", "s1") + E() + B("", "s1")
               + E() + S),
              ("s2c", msg(b"1") + msg(b"2") + ERR("23505") + Z(b"E")),
              ("c2s", P("bad", "SELEC 1") + S), ("s2c", ERR("42601") + Z()),
              ("c2s", B("p", "s1") + E("p") + S), ("s2c", msg(b"2") + C("INSERT 0 1") + Z()))
    assert recs(res) == [
        ("INSERT", "INSERT INTO t VALUES ($1)", "23505", ERR_CLIENT, True, True),
        ("INSERT", "INSERT INTO t VALUES ($1)", "", 0, True, False),   # skipped by the server
        ("SELEC", "SELEC 1", "42601", ERR_CLIENT, True, True),         # failed Parse, on Sync
        ("INSERT", "INSERT INTO t VALUES ($1)", "INSERT 0 1", 0, True, True)]


def test_portal_suspended_and_function_call():
    res = run(("c2s", B("c1", "") + msg(b"E", cstr("c1") + b"\x00\x00\x00\x02") + S),
              ("s2c", msg(b"2") + DR(b"1") + DR(b"2") + msg(b"s") + Z()),
              ("c2s", msg(b"F", b"\x00\x00\x04\xd2" + b"\x00" * 8)),
              ("s2c", msg(b"V", b"\xff\xff\xff\xff") + Z()))
    assert [(r.api, r.status) for r in res.records] == [("EXECUTE", "SUSPENDED"),
                                                        ("FUNCTION CALL", "OK")]


# -- COPY and big results ----------------------------------------------------------------
def test_copy_in_and_out():
    res = run(("c2s", Q("COPY t FROM STDIN")), ("s2c", msg(b"G", b"\x00\x00\x01\x00\x00")),
              ("c2s", msg(b"d", b"1\ta\n") + msg(b"d", b"2\tb\n") + msg(b"c")),
              ("s2c", C("COPY 2") + Z()),
              ("c2s", Q("COPY t TO STDOUT")),
              ("s2c", msg(b"H", b"\x00\x00\x01\x00\x00") + msg(b"d", b"1\ta\n") + msg(b"c")
               + C("COPY 1") + Z()))
    assert [(r.api, r.status) for r in res.records] == [("COPY", "COPY 2"), ("COPY", "COPY 1")]


def test_large_result_set_over_many_chunks_with_capture_prefix():
    rows = b"".join(DR(b"%06d" % i + b"x" * 3000) for i in range(400))
    body = T() + rows
    pieces = [("s2c", body[i:i + 16384]) for i in range(0, len(body), 16384)]
    pieces.append(("s2c", C("SELECT 400") + Z()))   # a capture keeps a message it holds
    for prefix in (None, 64, 1000):
        res = run(("c2s", Q("SELECT * FROM big")), *pieces, ("c2s", Q("SELECT 2")),
                  ("s2c", T() + DR(b"2") + C("SELECT 1") + Z()), prefix=prefix)
        assert [(r.status, bool(r.req_ts)) for r in res.records] == [
            ("SELECT 400", True), ("SELECT 1", True)], prefix
    # one row per chunk, only its first 64 bytes captured: every row is skipped by its
    # length, the stream never loses its place
    pieces = [("s2c", T())] + [("s2c", DR(b"%06d" % i + b"x" * 3000)) for i in range(400)]
    res = run(("c2s", Q("SELECT * FROM big")), *pieces, ("s2c", C("SELECT 400") + Z()),
              ("c2s", Q("SELECT 2")), ("s2c", T() + DR(b"2") + C("SELECT 1") + Z()), prefix=64)
    assert [r.status for r in res.paired()] == ["SELECT 400", "SELECT 1"]
    assert res.resp_stats.resyncs == res.resp_stats.gaps == 0


def test_picked_up_mid_stream():
    tail = DR(b"x" * 50)[20:]
    res = run(("s2c", tail + C("SELECT 3") + Z()), ("c2s", B("", "s9") + E() + S),
              ("s2c", msg(b"2") + C("UPDATE 1") + Z()))
    assert [(r.api, r.path, bool(r.req_ts)) for r in res.records] == [
        (None, "", False), ("EXECUTE", "EXECUTE s9", True)]


def test_sql_text_helpers():
    assert sql_verb("  /* hint */ -- x\n (select 1)") == "SELECT"
    assert sql_verb("") == "UNKNOWN"
    assert sql_path("select\n  a|b\x00 from\tt") == "select a|b\x00 from t"  # report.py cleans
    assert len(sql_path("select " + "x" * 500)) == 128
    assert [v for v, _ in split_statements("begin; select ';'; $$a;b$$; commit")] == [
        "BEGIN", "SELECT", "UNKNOWN", "COMMIT"]


# -- robustness --------------------------------------------------------------------------
def test_never_raises_on_damaged_fixtures():
    rng = random.Random(5432)
    for name in FIXTURES:
        for c in conns(name):
            assert feed.robustness_runs(PROTOCOL, c.chunks, rng, max_runs=60) == 0


def test_never_raises_on_hostile_input():
    hostile = [b"Q\xff\xff\xff\xff", b"Q\x00\x00\x00\x03", b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
               b"\x00" * 100, b"E\x00\x00\x00\x05C", b"Z\x00\x00\x00\x05Q",
               msg(b"E", b"C" * 300), msg(b"P", b"no nul"), msg(b"B", b"\x00"),
               b"\x16\x03", b"D\x00\x00\x00\x06S"]
    for data in hostile:
        res = feed.run(PROTOCOL, [("c2s", 1, data), ("s2c", 2, data), ("s2c", 3, b"N")])
        assert res.exceptions == 0
