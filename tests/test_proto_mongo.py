"""MongoDB parser + stitcher: recorded captures against tshark, every cut, hostile input."""
from __future__ import annotations

import random
import struct
import zlib

import bson
import pytest

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER
from protocol.lenprefix import HEAD_MIN
from protocol.mongo import PROTOCOL
from tests.support import feed
from tests.support.tshark import fixture, read_tsv

FIXTURES = ["compressed.pcap", "mongo-msg.pcap", "mongo.pcap", "mongo_3.0_session.pcap",
            "mongodb_inserts.pcap", "mongodb_more_rows.pcap"]
PORTS = feed.FIXTURE_SETS["mongo"][1]


def conns(name):
    return feed.file_conns("mongo", name)


def oracle(name):
    """Per client port: [(request id, namespace)] of requests, [(response_to)] of replies."""
    reqs, resps = {}, {}
    for row in read_tsv(fixture("mongodb", name)):
        if int(row["tcp.dstport"]) in PORTS:
            reqs.setdefault(int(row["tcp.srcport"]), []).append(
                (int(row["mongo.request_id"], 16), row["mongo.full_collection_name"]))
        else:
            resps.setdefault(int(row["tcp.dstport"]), []).append(
                int(row["mongo.response_to"], 16))
    return reqs, resps


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_tshark(name):
    reqs, resps = oracle(name)
    for c in conns(name):
        res = feed.run(PROTOCOL, c.chunks)
        assert res.exceptions == 0
        assert res.req_stats.invalid == res.resp_stats.invalid == 0
        assert res.state.undecoded == 0            # snappy through cramjam
        want_reqs = reqs.get(c.client[1], [])
        want_resps = resps.get(c.client[1], [])
        got = [r for r in res.records if r.req_ts]
        assert len(got) == len(want_reqs)
        assert sum(1 for r in res.records if r.resp_ts) == len(want_resps)
        asked = {rid for rid, _ in want_reqs}
        assert len(res.paired()) == sum(1 for t in want_resps if t in asked)
        # OP_QUERY's namespace: "db.$cmd" for commands (path = the db, or db.collection)
        for rec, (_, ns) in zip(got, want_reqs):
            if ns.endswith(".$cmd"):
                assert rec.path.split(".")[0] == ns[:-5]
            elif ns:
                assert (rec.api, rec.path) == ("find", ns)
            assert rec.api and rec.api != "unknown"


def test_fixture_commands_and_errors():
    res = feed.run(PROTOCOL, conns("mongo.pcap")[0].chunks)
    apis = [r.api for r in res.records]
    assert apis[:6] == ["isMaster", "saslContinue", "saslContinue", "whatsmyuri", "buildinfo",
                        "getLog"]
    errs = [(r.api, r.status, r.err) for r in res.records if r.err]
    assert errs == [("replSetGetStatus", "NoReplicationEnabled", ERR_CLIENT)]
    res = feed.run(PROTOCOL, conns("mongo-msg.pcap")[0].chunks)
    assert feed.records(res) == [("find", "sky-test.query", "ok", ERR_NONE, True, True)]
    res = feed.run(PROTOCOL, conns("compressed.pcap")[0].chunks)
    assert [(r.api, r.path) for r in res.records][3:] == [
        ("insert", "mongotape.test"), ("count", "mongotape.test"), ("update", "mongotape.test")]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_cut_every_way(name):
    for c in conns(name):
        size = min(max(len(d) for _, _, d in c.chunks), 1200)
        feed.assert_cut_every_way(PROTOCOL, c.chunks, 4000, range(1, size))


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_damaged(name):
    rng = random.Random(11)
    for c in conns(name):
        assert feed.robustness_runs(PROTOCOL, c.chunks, rng) == 0


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_prefix_capture(name):
    """Each syscall cut to HEAD_MIN bytes: the same records, except that a compressed reply
    longer than that cannot be decompressed (its request stays unanswered)."""
    for c in conns(name):
        whole = feed.run(PROTOCOL, c.chunks)
        cut = feed.run(PROTOCOL, c.chunks, prefix=HEAD_MIN)
        assert cut.exceptions == 0
        lost = sum(1 for d, _, b in c.chunks if d == "s2c" and len(b) > HEAD_MIN
                   and struct.unpack_from("<i", b, 12)[0] == 2012)
        assert sorted(r.api for r in cut.records if r.req_ts) == sorted(
            r.api for r in whole.records if r.req_ts)
        assert len(cut.paired()) == len(whole.paired()) - lost
    assert name != "compressed.pcap" or lost == 1


# -- hand-made messages ------------------------------------------------------------------
def op_msg(rid, resp_to, doc, flags=0, seq=None):
    body = struct.pack("<I", flags) + b"\x00" + bson.encode(doc)
    if seq is not None:
        ident, docs = seq
        payload = ident + b"\x00" + b"".join(bson.encode(d) for d in docs)
        body += b"\x01" + struct.pack("<i", len(payload) + 4) + payload
    return struct.pack("<iiii", 16 + len(body), rid, resp_to, 2013) + body


def compressed(msg, cid=2):
    _, rid, resp_to, op = struct.unpack_from("<iiii", msg)
    inner = msg[16:]
    data = zlib.compress(inner) if cid == 2 else inner
    body = struct.pack("<iiB", op, len(inner), cid) + data
    return struct.pack("<iiii", 16 + len(body), rid, resp_to, 2012) + body


def test_op_msg_errors_sequences_more_to_come():
    res = feed.run_pairs(
        PROTOCOL,
        ("c2s", op_msg(1, 0, {"insert": "c", "$db": "d"}, seq=(b"documents", [{"a": 1}]))),
        ("s2c", op_msg(100, 1, {"n": 0, "writeErrors": [{"code": 11000}], "ok": 1})),
        ("c2s", op_msg(2, 0, {"find": "c", "$db": "d"})),
        ("s2c", op_msg(101, 2, {"ok": 0, "code": 189, "codeName": "PrimarySteppedDown"})),
        ("c2s", op_msg(3, 0, {"update": "c", "$db": "d"}, flags=2)),      # moreToCome
        ("c2s", compressed(op_msg(4, 0, {"count": "c", "$db": "d"}))),
        ("s2c", compressed(op_msg(102, 4, {"ok": 0, "code": 2, "codeName": "BadValue"}))))
    assert feed.records(res) == [
        ("insert", "d.c", "writeErrors", ERR_CLIENT, True, True),
        ("find", "d.c", "PrimarySteppedDown", ERR_SERVER, True, True),
        ("update", "d.c", "", ERR_NONE, True, False),
        ("count", "d.c", "BadValue", ERR_CLIENT, True, True)]


def test_exhaust_replies_are_one_record():
    res = feed.run_pairs(
        PROTOCOL, ("c2s", op_msg(1, 0, {"getMore": 5, "collection": "c", "$db": "d"},
                                 flags=1 << 16)),
        ("s2c", op_msg(10, 1, {"ok": 1}, flags=2)), ("s2c", op_msg(11, 10, {"ok": 1}, flags=2)),
        ("s2c", op_msg(12, 11, {"ok": 1})), ("s2c", op_msg(13, 77, {"ok": 1})))
    assert feed.records(res) == [("getMore", "d", "ok", ERR_NONE, True, True),
                                 (None, "", "ok", ERR_NONE, False, True)]


def test_unknown_compressor_is_counted():
    msg = op_msg(1, 0, {"ping": 1, "$db": "admin"})
    _, rid, rto, op = struct.unpack_from("<iiii", msg)
    body = struct.pack("<iiB", op, 10, 9) + b"\x00" * 10
    bad = struct.pack("<iiii", 16 + len(body), rid, rto, 2012) + body
    res = feed.run_pairs(PROTOCOL, ("c2s", bad))
    assert feed.records(res) == [("compressed", "", "", ERR_NONE, True, False)]
    assert res.state.undecoded == 1


def test_hostile():
    deep = b"\x03a\x00" * 200
    bad = [struct.pack("<iiii", 10, 1, 0, 2013), struct.pack("<iiii", -1, 1, 0, 2013),
           struct.pack("<iiii", 40, 1, 0, 9999) + b"\x00" * 24,
           struct.pack("<iiii", 16 + 5 + 8, 1, 0, 2013) + b"\x00" * 4 + b"\x00" +
           struct.pack("<i", 1 << 30) + b"\x03",
           struct.pack("<iiii", 16 + 5 + len(deep) + 4, 1, 0, 2013) + b"\x00" * 5 +
           struct.pack("<i", len(deep) + 4) + deep,
           b"\xff" * 100]
    for b in bad:
        res = feed.run_pairs(PROTOCOL, ("c2s", b), ("s2c", b))
        assert all(r.api in (None, "unknown", "a") for r in res.records)
    res = feed.run_pairs(PROTOCOL, ("c2s", b"junk!" * 7 + op_msg(1, 0, {"ping": 1, "$db": "x"})),
                         ("s2c", op_msg(9, 1, {"ok": 1})))
    assert feed.records(res)[-1] == ("ping", "x", "ok", ERR_NONE, True, True)
