"""RocketMQ parser + stitcher: recorded captures against their decoded oracle
(``.decoded.tsv``: tshark has no RocketMQ dissector), every cut, hostile input."""
from __future__ import annotations

import csv
import json
import random
import struct

import pytest

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER
from protocol.lenprefix import HEAD_MIN
from protocol.rocketmq import PROTOCOL
from protocol.rocketmq.types import REQUEST_CODES, RESPONSE_CODES
from tests.support import feed
from tests.support.tshark import fixture

FIXTURES = ["rocketmq-consumer-otel.pcap", "rocketmq-consumer-skywalking.pcap",
            "rocketmq-get-consumer-list-by-group.pcap", "rocketmq-get-routeinfo-by-topic.pcap",
            "rocketmq-heartbeat.pcap", "rocketmq-producer-otel.pcap",
            "rocketmq-producer-skywalking.pcap", "rocketmq-pull-message.pcap",
            "rocketmq-send-message-v2.pcap", "rocketmq-update-consumer-offset.pcap"]

def conns(name):
    return feed.file_conns("rocketmq", name)


def oracle(name):
    with open(fixture("rocketmq", name) + ".decoded.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def expected(rows):
    """The records the oracle implies: (api, status, err, req seen, resp seen), by opaque."""
    out = []
    reqs = {}
    for row in rows:
        code, opaque = int(row["code"]), int(row["opaque"])
        if row["kind"].startswith("request"):
            reqs[opaque] = (REQUEST_CODES[code], row["kind"] == "request(oneway)")
        else:
            api, _ = reqs.pop(opaque, (None, False))
            status = RESPONSE_CODES[code] + (" " + row["remark"] if code and row["remark"]
                                             else "")
            out.append((api, status, code != 0, api is not None, True))
    out.extend((api, "", False, True, False) for api, _ in reqs.values())
    return sorted(out, key=repr)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_oracle(name):
    (c,) = conns(name)
    res = feed.run(PROTOCOL, c.chunks)
    assert res.exceptions == 0
    assert res.req_stats.invalid == res.resp_stats.invalid == 0
    got = sorted(((r.api, r.status, bool(r.err), bool(r.req_ts), bool(r.resp_ts))
                  for r in res.records), key=repr)
    assert got == expected(oracle(name))


def test_fixture_paths_and_classes():
    (c,) = conns("rocketmq-pull-message.pcap")
    res = feed.run(PROTOCOL, c.chunks)
    assert {(r.path, r.err) for r in res.records if r.err} == {
        ("%RETRY%please_rename_unique_group_name_4", ERR_CLIENT), ("TopicTest", ERR_CLIENT)}
    (c,) = conns("rocketmq-update-consumer-offset.pcap")
    assert [r.resp_ts for r in feed.run(PROTOCOL, c.chunks).records] == [0, 0, 0]   # oneway


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_cut_every_way(name):
    (c,) = conns(name)
    size = min(max(len(d) for _, _, d in c.chunks), 900)
    feed.assert_cut_every_way(PROTOCOL, c.chunks, 5000, range(1, size))


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_damaged(name):
    (c,) = conns(name)
    assert feed.robustness_runs(PROTOCOL, c.chunks, random.Random(11)) == 0


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_prefix_capture(name):
    """Each syscall cut to its first HEAD_MIN bytes (1024 for the SkyWalking producer,
    whose JSON headers are 710 bytes, with the opaque after the long extFields): the same
    records."""
    (c,) = conns(name)
    whole = feed.run(PROTOCOL, c.chunks)
    cut = feed.run(PROTOCOL, c.chunks, prefix=1024 if "producer-sky" in name else HEAD_MIN)
    assert cut.exceptions == 0
    assert feed.summary(cut.records) == feed.summary(whole.records)


# -- hand-made frames --------------------------------------------------------------------
def json_frame(code, opaque, flag, remark=None, ext=None, body=b""):
    h = {"code": code, "flag": flag, "language": "JAVA", "opaque": opaque, "version": 1}
    if remark is not None:
        h["remark"] = remark
    if ext:
        h["extFields"] = ext
    hb = json.dumps(h).encode()
    return struct.pack(">ii", 4 + len(hb) + len(body), len(hb)) + hb + body


def bin_frame(code, opaque, flag, remark=b"", ext=()):
    h = struct.pack(">hBhii", code, 0, 1, opaque, flag) + struct.pack(">i", len(remark)) + remark
    e = b"".join(struct.pack(">H", len(k)) + k + struct.pack(">i", len(v)) + v for k, v in ext)
    h += struct.pack(">i", len(e)) + e
    return struct.pack(">ii", 4 + len(h), (1 << 24) | len(h)) + h


def test_binary_headers_out_of_order_and_errors():
    res = feed.run_pairs(
        PROTOCOL, ("c2s", bin_frame(10, 1, 0, ext=[(b"topic", b"T")])),
        ("c2s", json_frame(11, 2, 0, ext={"topic": "U"})),
        ("s2c", json_frame(2, 2, 1, remark="busy")),
        ("s2c", bin_frame(17, 1, 1, remark=b"no topic")),
        ("s2c", json_frame(0, 3, 1)),
        ("s2c", json_frame(40, 9, 0)))                    # a broker->client request: ignored
    assert feed.records(res) == [
        ("PULL_MESSAGE", "U", "SYSTEM_BUSY busy", ERR_SERVER, True, True),
        ("SEND_MESSAGE", "T", "TOPIC_NOT_EXIST no topic", ERR_CLIENT, True, True),
        (None, "", "SUCCESS", ERR_NONE, False, True)]


def test_hostile():
    bad = [struct.pack(">ii", 8, 0) + b"\x00" * 4, struct.pack(">ii", 100, 200) + b"{" * 96,
           struct.pack(">ii", 20, 16) + b'{"code":"x"}' + b" " * 4,
           struct.pack(">ii", 12, 8) + b"[1,2,3] " + b"\x00" * 4,
           struct.pack(">ii", 4 + 6000, 6000) + b"[" * 6000,
           struct.pack(">ii", -1, 0), b"\xff" * 64,
           bin_frame(10, 1, 0, remark=b"r")[:-4] + struct.pack(">i", 1 << 30)]
    for b in bad:
        res = feed.run_pairs(PROTOCOL, ("c2s", b), ("s2c", b))
        assert all(r.api in (None, "SEND_MESSAGE") for r in res.records)
    res = feed.run_pairs(PROTOCOL, ("c2s", b"garbage!" * 3 + json_frame(34, 5, 0)),
                         ("s2c", json_frame(0, 5, 1)))
    assert feed.records(res)[-1] == ("HEART_BEAT", "", "SUCCESS", ERR_NONE, True, True)


def test_json_header_cut_by_the_capture():
    """A header longer than the capture: code, flag, opaque and topic found by their keys."""
    ext = {"topic": "T", "x": "y" * 40000}
    req = json_frame(10, 7, 0, ext=ext)
    res = feed.run(PROTOCOL, feed.chunks_of(("c2s", req), ("s2c", json_frame(0, 7, 1))),
                   prefix=20000)
    assert feed.records(res) == [("SEND_MESSAGE", "T", "SUCCESS", ERR_NONE, True, True)]
