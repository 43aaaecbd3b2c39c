"""MySQL parser + stitcher: recorded captures against tshark, hand-written exchanges
(handshake, text and binary result sets with and without EOF, multi-results, prepared
statements, commands without response, TLS/compression), robustness."""
from __future__ import annotations

import random
import struct

import pytest

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER
from protocol.mysql import PROTOCOL
from protocol.mysql.types import sql_verb
from tests.support import feed
from tests.support.pcap import read_tcp_connections
from tests.support.tshark import fixture, read_tsv, values

FIXTURES = ["caching_sha2_password.pcap", "mysql-exec.pcap", "mysql.pcap", "mysql_long.pcap",
            "mysql_with_whitespaces.pcap", "selects_with_new_proto.pcap"]
NAMES = {1: "QUIT", 2: "INIT_DB", 4: "FIELD_LIST", 14: "PING", 22: "STMT_PREPARE"}


def conns(name):
    return read_tcp_connections(fixture("mysql", name), server_ports=(3306, 30130))


def oracle(name):
    """Per client port: expected api per command (None: not checked), error responses."""
    cmds, errs = {}, {}
    for row in read_tsv(fixture("mysql", name)):
        command = row["mysql.command"]
        if command:
            if command == "202":          # tshark misreads an auth packet (SOURCES.md)
                continue
            api = sql_verb(row["mysql.query"].replace("\\n", "\n")) if command == "3" \
                else NAMES.get(int(command))
            cmds.setdefault(int(row["tcp.srcport"]), []).append(api)
        elif values(row, "mysql.packet_number")[:1] == ["1"]:
            port = int(row["tcp.dstport"])
            errs[port] = errs.get(port, 0) + ("0xff" in values(row, "mysql.response_code"))
    return cmds, errs


def pkt(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def lenenc_str(s):
    s = s if isinstance(s, bytes) else s.encode()
    if len(s) < 251:
        return bytes([len(s)]) + s
    return b"\xfc" + struct.pack("<H", len(s)) + s


def OK(seq, status=0x0002, header=0x00, affected=0):
    return pkt(seq, bytes([header, affected, 0]) + struct.pack("<HH", status, 0))


def EOF(seq, status=0x0002):
    return pkt(seq, b"\xfe" + struct.pack("<HH", 0, status))


def ERR(seq, code, state="42000", text="boom"):
    return pkt(seq, b"\xff" + struct.pack("<H", code) + b"#" + state.encode() + text.encode())


def COLDEF(seq, name="c"):
    return pkt(seq, b"".join(lenenc_str(x) for x in ("def", "db", "t", "t", name, name))
               + b"\x0c\x21\x00\xff\x00\x00\x00\xfd\x00\x00\x00\x00\x00")


def ROW(seq, *vals):
    return pkt(seq, b"".join(lenenc_str(v) for v in vals))


def QUERY(sql, seq=0):
    return pkt(seq, b"\x03" + sql.encode())


def text_result(ncols, rows, deprecate_eof=False, last_status=0x0002):
    out = [pkt(1, bytes([ncols]))]
    seq = 2
    for i in range(ncols):
        out.append(COLDEF(seq, "c%d" % i))
        seq += 1
    if not deprecate_eof:
        out.append(EOF(seq))
        seq += 1
    for r in range(rows):
        out.append(ROW(seq, *["v%d" % r] * ncols))
        seq += 1
    out.append(OK(seq, last_status, header=0xFE) if deprecate_eof else EOF(seq, last_status))
    return b"".join(out)


CAPS = 0x000FA685 | 0x00200000 | 0x01000000          # PROTOCOL_41, SECURE_CONN, ...
SERVER_CAPS = CAPS | 0x20 | 0x800                    # the server offers compression and TLS
GREETING = pkt(0, b"\x0a8.0.32\x00" + b"\x07\x00\x00\x00" + b"a" * 8 + b"\x00"
               + struct.pack("<H", SERVER_CAPS & 0xFFFF) + b"\xff" + b"\x02\x00"
               + struct.pack("<H", SERVER_CAPS >> 16) + b"\x15" + b"\x00" * 10 + b"b" * 12 + b"\x00"
               + b"caching_sha2_password\x00")


def HANDSHAKE(caps=CAPS & ~0x20 & ~0x800):
    return pkt(1, struct.pack("<IIB", caps, 1 << 24, 0xFF) + b"\x00" * 23 + b"root\x00"
               + b"\x20" + b"s" * 32 + b"caching_sha2_password\x00")


def run(*pairs, **kw):
    return feed.run_pairs(PROTOCOL, *pairs, **kw)


recs = feed.records


# -- recorded captures -------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_tshark(name):
    cmds, errs = oracle(name)
    for c in conns(name):
        res = feed.run(PROTOCOL, c.chunks)
        assert res.exceptions == 0
        assert res.req_stats.invalid == res.resp_stats.invalid == 0
        assert res.state.skip_reason is None
        expect = cmds.get(c.client[1], [])
        with_req = [r for r in res.records if r.req_ts]
        assert len(with_req) == len(res.records) == len(expect)
        for rec, api in zip(with_req, expect):
            if api is not None:
                assert rec.api == api
            assert bool(rec.resp_ts) == (rec.api != "QUIT")
        assert sum(1 for r in res.records if r.err) == errs.get(c.client[1], 0)


def test_fixture_details():
    recs_ = feed.run(PROTOCOL, conns("mysql-exec.pcap")[0].chunks).records
    assert [(r.api, r.path[:26]) for r in recs_] == [
        ("STMT_PREPARE", "INSERT INTO `controller` ("), ("INSERT", "INSERT INTO `controller` (")]
    recs_ = feed.run(PROTOCOL, conns("mysql_with_whitespaces.pcap")[0].chunks).records
    assert [r.path for r in recs_][3:6] == ["drop table if exists test", "PING",
                                             "create table test (a varchar(20), b varchar(30))"]
    recs_ = feed.run(PROTOCOL, conns("mysql.pcap")[0].chunks).records
    assert recs_[2].path == "INIT_DB test" and recs_[5].path == "FIELD_LIST agent"


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_split_everywhere(name):
    for c in conns(name):
        feed.assert_cut_every_way(PROTOCOL, c.chunks, 12000, range(1, 100, 3))


@pytest.mark.parametrize("prefix", [64, 300])
def test_long_result_set_with_capture_prefix(prefix):
    c = conns("mysql_long.pcap")[0]
    res = feed.run(PROTOCOL, c.chunks, prefix=prefix)
    assert res.exceptions == 0
    assert [(r.api, bool(r.req_ts), bool(r.resp_ts)) for r in res.records] == [
        ("SELECT", True, True)]


# -- handshake, TLS, compression ---------------------------------------------------------
def test_handshake_and_auth_are_skipped():
    res = run(("s2c", GREETING), ("c2s", HANDSHAKE()),
              ("s2c", pkt(2, b"\xfecaching_sha2_password\x00" + b"n" * 20)),
              ("c2s", pkt(3, b"x" * 32)), ("s2c", pkt(4, b"\x01\x03")), ("s2c", OK(5)),
              ("c2s", QUERY("select 1")), ("s2c", text_result(1, 1, deprecate_eof=True)))
    assert recs(res) == [("SELECT", "select 1", "OK", ERR_NONE, True, True)]


def test_auth_failure_is_not_a_command():
    res = run(("s2c", GREETING), ("c2s", HANDSHAKE()),
              ("s2c", ERR(2, 1045, "28000", "Access denied")))
    assert res.records == []


def test_tls_request_stops_parsing():
    ssl_request = pkt(1, struct.pack("<IIB", CAPS | 0x800, 1 << 24, 0xFF) + b"\x00" * 23)
    res = run(("s2c", GREETING), ("c2s", ssl_request), ("c2s", b"\x16\x03\x01" + b"z" * 100),
              ("s2c", b"\x16\x03\x03" + b"y" * 100), ("c2s", QUERY("select 1")),
              ("s2c", OK(1)))
    assert res.records == []
    assert "TLS" in res.state.skip_reason


def test_compressed_protocol_stops_parsing():
    res = run(("s2c", GREETING), ("c2s", HANDSHAKE(CAPS | 0x20)), ("s2c", OK(2)),
              ("c2s", b"\x0c\x00\x00\x00\x00\x00\x00" + QUERY("select 1")), ("s2c", OK(1)))
    assert res.records == []
    assert "compress" in res.state.skip_reason


# -- text protocol -----------------------------------------------------------------------
def test_result_sets_with_and_without_eof():
    res = run(("c2s", QUERY("select a, b from t")), ("s2c", text_result(2, 3)),
              ("c2s", QUERY("select a from t")), ("s2c", text_result(1, 4, deprecate_eof=True)),
              ("c2s", QUERY("select a from empty")),
              ("s2c", text_result(1, 0, deprecate_eof=True)),
              ("c2s", QUERY("select a from empty")), ("s2c", text_result(1, 0)),
              ("c2s", QUERY("update t set a = 1")), ("s2c", OK(1, affected=3)))
    assert [(r.api, r.status, bool(r.resp_ts)) for r in res.records] == [
        ("SELECT", "OK", True)] * 4 + [("UPDATE", "OK", True)]
    assert res.resp_stats.invalid == 0


def test_multi_results_more_results_exists():
    first = text_result(1, 2, last_status=0x000A)            # SERVER_MORE_RESULTS_EXISTS
    second = text_result(2, 1).replace(b"\x01\x00\x00\x01", b"\x01\x00\x00\x07", 1)
    res = run(("c2s", QUERY("call p()")), ("s2c", first + second + OK(11)),
              ("c2s", pkt(0, b"\x0e")), ("s2c", OK(1)))
    assert [(r.api, r.status) for r in res.records] == [("CALL", "OK"), ("PING", "OK")]
    assert all(r.req_ts and r.resp_ts for r in res.records)


def test_error_mapping():
    cases = [(1064, "42000", ERR_CLIENT), (1146, "42S02", ERR_CLIENT), (1062, "23000", ERR_CLIENT),
             (1213, "40001", ERR_SERVER), (1040, "08004", ERR_SERVER),
             (1205, "HY000", ERR_SERVER), (1105, "HY000", ERR_CLIENT)]
    pairs = []
    for code, state, _ in cases:
        pairs += [("c2s", QUERY("select x")), ("s2c", ERR(1, code, state))]
    res = run(*pairs)
    assert [(r.status, r.err) for r in res.records] == [(str(c), e) for c, _, e in cases]


def test_large_rows_over_many_chunks_with_prefix_and_seq_wrap():
    rows = [ROW(3 + i, "%06d" % i + "x" * 4000) for i in range(300)]   # seq wraps past 255
    pieces = [("s2c", pkt(1, b"\x01") + COLDEF(2))] + [("s2c", r) for r in rows]
    pieces.append(("s2c", OK((3 + 300) & 0xFF, header=0xFE)))
    for prefix in (None, 64, 200):
        res = run(("c2s", QUERY("select * from big")), *pieces,
                  ("c2s", QUERY("select 1")), ("s2c", text_result(1, 1)), prefix=prefix)
        assert [(r.api, bool(r.req_ts), bool(r.resp_ts)) for r in res.records] == [
            ("SELECT", True, True)] * 2, prefix
        assert res.resp_stats.resyncs == 0


def test_local_infile():
    res = run(("c2s", QUERY("LOAD DATA LOCAL INFILE 'f' INTO TABLE t")),
              ("s2c", pkt(1, b"\xfbf")), ("c2s", pkt(2, b"1,2\n3,4\n")), ("c2s", pkt(3, b"")),
              ("s2c", OK(4, affected=2)), ("c2s", pkt(0, b"\x0e")), ("s2c", OK(1)))
    assert [(r.api, bool(r.resp_ts)) for r in res.records] == [("LOAD", True), ("PING", True)]


# -- prepared statements -----------------------------------------------------------------
def test_prepare_execute_close():
    sql = "SELECT name FROM users WHERE id = ? AND age > ?"
    prep_ok = pkt(1, b"\x00" + struct.pack("<IHHBH", 7, 1, 2, 0, 0))
    prepare_resp = prep_ok + COLDEF(2, "?") + COLDEF(3, "?") + EOF(4) + COLDEF(5, "name") + EOF(6)
    execute = pkt(0, b"\x17" + struct.pack("<IBI", 7, 0, 1) + b"\x00\x01\x03\x00\x03\x00"
                  + struct.pack("<ii", 1, 30))
    binary = (pkt(1, b"\x01") + COLDEF(2, "name") + EOF(3) + pkt(4, b"\x00\x00" + lenenc_str("bob"))
              + pkt(5, b"\x00\x00" + lenenc_str("eve")) + EOF(6))
    res = run(("c2s", pkt(0, b"\x16" + sql.encode())), ("s2c", prepare_resp),
              ("c2s", execute), ("s2c", binary),
              ("c2s", pkt(0, b"\x19" + struct.pack("<I", 7))),          # no response
              ("c2s", pkt(0, b"\x18" + struct.pack("<IH", 7, 0) + b"data")),   # no response
              ("c2s", pkt(0, b"\x0e")), ("s2c", OK(1)),
              ("c2s", pkt(0, b"\x01")))                                 # QUIT: no response
    assert recs(res) == [
        ("STMT_PREPARE", sql, "OK", 0, True, True), ("SELECT", sql, "OK", 0, True, True),
        ("STMT_CLOSE", "STMT_CLOSE 7", "", 0, True, False),
        ("STMT_SEND_LONG_DATA", "STMT_SEND_LONG_DATA", "", 0, True, False),
        ("PING", "PING", "OK", 0, True, True), ("QUIT", "QUIT", "", 0, True, False)]


def test_prepare_error_and_unknown_statement():
    res = run(("c2s", pkt(0, b"\x16SELEC 1")), ("s2c", ERR(1, 1064)),
              ("c2s", pkt(0, b"\x17" + struct.pack("<IBI", 99, 0, 1))), ("s2c", OK(1)))
    assert [(r.api, r.path, r.status) for r in res.records] == [
        ("STMT_PREPARE", "SELEC 1", "1064"), ("STMT_EXECUTE", "STMT_EXECUTE 99", "OK")]


def test_other_commands():
    res = run(("c2s", pkt(0, b"\x02shop")), ("s2c", OK(1)),
              ("c2s", pkt(0, b"\x09")), ("s2c", pkt(1, b"Uptime: 5  Threads: 1")),
              ("c2s", pkt(0, b"\x04t\x00")), ("s2c", COLDEF(1) + COLDEF(2) + EOF(3)),
              ("c2s", pkt(0, b"\x1f")), ("s2c", OK(1)))
    assert [(r.api, r.path, bool(r.resp_ts)) for r in res.records] == [
        ("INIT_DB", "INIT_DB shop", True), ("STATISTICS", "STATISTICS", True),
        ("FIELD_LIST", "FIELD_LIST t", True), ("RESET_CONNECTION", "RESET_CONNECTION", True)]


def test_query_attributes_prefix_and_comments():
    res = run(("c2s", pkt(0, b"\x03\x00\x01/* app */ SELECT 1")), ("s2c", text_result(1, 1)),
              ("c2s", QUERY("/*!40101 SET NAMES utf8 */")), ("s2c", OK(1)))
    assert [r.api for r in res.records] == ["SELECT", "SET"]


def test_response_lost_in_a_gap_does_not_shift_pairs():
    # the whole answer to the first query is lost (not captured at all)
    f = feed.Feeder(PROTOCOL)
    f.feed("c2s", 1, QUERY("select slow"))
    f.resp.gap(5000)
    f.feed("c2s", 3, QUERY("select fast"))
    f.feed("s2c", 4, text_result(1, 1))
    res = f.close()
    assert [(r.path, bool(r.resp_ts)) for r in res.records] == [
        ("select slow", False), ("select fast", True)]


def test_picked_up_mid_stream():
    res = run(("s2c", ROW(9, "tail of a result") + EOF(10)), ("s2c", OK(1)),
              ("c2s", QUERY("select 1")), ("s2c", text_result(1, 1)))
    assert [(r.api, bool(r.req_ts), bool(r.resp_ts)) for r in res.records] == [
        (None, False, True), ("SELECT", True, True)]


def test_state_is_per_connection():
    a = feed.Feeder(PROTOCOL)
    b = feed.Feeder(PROTOCOL)
    a.feed("s2c", 1, GREETING)
    b.feed("c2s", 2, QUERY("select 1"))
    b.feed("s2c", 3, OK(1))
    assert a.result.state.server_caps is not None and b.result.state.server_caps is None
    assert len(b.close().records) == 1


# -- robustness --------------------------------------------------------------------------
def test_never_raises_on_damaged_fixtures():
    rng = random.Random(3306)
    for name in FIXTURES:
        for c in conns(name):
            assert feed.robustness_runs(PROTOCOL, c.chunks, rng, max_runs=60) == 0


def test_never_raises_on_hostile_input():
    hostile = [b"\xff\xff\xff\x00\x03", b"\x01\x00\x00\x00\x17", b"\x05\x00\x00\x01\x00\xfc",
               pkt(1, b"\x00\xfe\xff\xff\xff\xff\xff\xff\xff\xff"), pkt(0, b"\x0a"),
               pkt(1, b"\x01"), pkt(1, b"\xfc\x01"), pkt(1, b"\x03") + b"\x00" * 40,
               pkt(0, b"\x16") + pkt(1, b"\x00\x01\x00\x00\x00\xff\xff\xff\xff")]
    for data in hostile:
        res = feed.run(PROTOCOL, [("c2s", 1, data), ("s2c", 2, data), ("c2s", 3, data),
                                  ("s2c", 4, data)])
        assert res.exceptions == 0
