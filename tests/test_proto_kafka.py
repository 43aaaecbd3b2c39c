"""Kafka parser + stitcher: recorded captures against tshark, every cut, hostile input."""
from __future__ import annotations

import random
import struct

import pytest

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER
from protocol.kafka import PROTOCOL
from protocol.kafka.types import API_NAMES
from protocol.lenprefix import HEAD_MIN
from tests.support import feed
from tests.support.tshark import fixture, read_tsv

FIXTURES = ["00-produce-v2.pcap", "00-produce-v7-sw8.pcap", "00-produce-v9.pcap",
            "01-fetch-v12-ok.pcap", "11-join-group-v7.pcap", "13-leave-group-v4.pcap",
            "14-sync-group-v5.pcap", "18-api-versions-v3.pcap", "kafka.pcap", "kafka.pcapng",
            "mixed-with-unsupported.pcap"]

def conns(name):
    return feed.file_conns("kafka", name)


def oracle(name):
    """Per client port: [(api, correlation id)] of requests, [(correlation id, error?)] of
    responses, in capture order."""
    reqs, resps = {}, {}
    for row in read_tsv(fixture("kafka", name)):
        info = row["_ws.col.Info"]
        if row["kafka.request_key"]:
            port = int(row["tcp.srcport"])
            key = int(row["kafka.request_key"])
            reqs.setdefault(port, []).append((API_NAMES[key], int(row["kafka.correlation_id"])))
        elif row["kafka.correlation_id"]:
            port = int(row["tcp.dstport"])
            resps.setdefault(port, []).append((int(row["kafka.correlation_id"]),
                                               "Unexpected Server Error" in info))
    return reqs, resps


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_tshark(name):
    reqs, resps = oracle(name)
    seen = 0
    for c in conns(name):
        res = feed.run(PROTOCOL, c.chunks)
        assert res.exceptions == 0
        assert res.req_stats.invalid == res.resp_stats.invalid == 0
        port = c.client[1]
        want_reqs = reqs.get(port, [])
        want_resps = resps.get(port, [])
        got_reqs = [r for r in res.records if r.req_ts]
        assert sorted(r.api for r in got_reqs) == sorted(a for a, _ in want_reqs)
        assert sum(1 for r in res.records if r.resp_ts) == len(want_resps)
        # Pairing by correlation id: a response pairs when a request with its id was seen
        # (tshark cannot pair those it could not decode, e.g. Produce v9, Fetch v12+).
        asked = {cid for _, cid in want_reqs}
        assert len(res.paired()) == sum(1 for cid, _ in want_resps if cid in asked)
        errors = sorted(r.status for r in res.records if r.err)
        assert errors == ["UNKNOWN_SERVER_ERROR"] * sum(e for _, e in want_resps)
        assert all(r.err == ERR_SERVER for r in res.records if r.err)
        seen += len(want_reqs) + len(want_resps)
    assert seen == sum(map(len, reqs.values())) + sum(map(len, resps.values()))


def test_fixture_topics_and_versions():
    res = feed.run(PROTOCOL, conns("kafka.pcap")[0].chunks)
    assert [(r.api, r.path, r.status) for r in res.records] == [("Metadata", "test", "NONE")]
    res = feed.run(PROTOCOL, conns("00-produce-v9.pcap")[0].chunks)   # flexible Produce
    assert [(r.api, r.path, r.status) for r in res.records] == [("Produce", "zqy-test", "NONE")]
    res = feed.run(PROTOCOL, conns("01-fetch-v12-ok.pcap")[0].chunks)  # flexible Fetch
    assert [(r.api, r.path, r.status) for r in res.records] == [("Fetch", "zqy-test", "NONE")]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_cut_every_way(name):
    for c in conns(name):
        size = max(len(d) for _, _, d in c.chunks)
        feed.assert_cut_every_way(PROTOCOL, c.chunks, 4000, range(1, size))


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_damaged(name):
    rng = random.Random(11)
    for c in conns(name):
        assert feed.robustness_runs(PROTOCOL, c.chunks, rng) == 0


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_prefix_capture(name):
    """Each syscall cut to its first 512 bytes (lenprefix.HEAD_MIN): same records."""
    for c in conns(name):
        whole = feed.run(PROTOCOL, c.chunks)
        cut = feed.run(PROTOCOL, c.chunks, prefix=HEAD_MIN)
        assert cut.exceptions == 0
        assert [r.api for r in cut.records] == [r.api for r in whole.records]
        assert len(cut.paired()) == len(whole.paired())


# -- hand-made messages ------------------------------------------------------------------
def request(key, ver, cid, body=b"", client=b"cli"):
    hdr = struct.pack(">hhih", key, ver, cid, len(client)) + client
    return struct.pack(">i", len(hdr) + len(body)) + hdr + body


def response(cid, body=b""):
    return struct.pack(">ii", len(body) + 4, cid) + body


def produce_v2(topic, acks):
    part = struct.pack(">ii", 0, 0)               # partition 0, empty record set
    return struct.pack(">hii", acks, 1000, 1) + struct.pack(">h", len(topic)) + topic + \
        struct.pack(">i", 1) + part


def produce_resp_v2(topic, code):
    return struct.pack(">i", 1) + struct.pack(">h", len(topic)) + topic + struct.pack(
        ">iihqq", 1, 0, code, 0, -1) + struct.pack(">i", 0)


def metadata_resp_v0(topic, code):
    brokers = struct.pack(">i", 0)
    return brokers + struct.pack(">ih", 1, code) + struct.pack(">h", len(topic)) + topic + \
        struct.pack(">i", 0)


def test_acks_zero_produce_has_no_response():
    res = feed.run_pairs(PROTOCOL, ("c2s", request(0, 2, 7, produce_v2(b"t", 0))),
                         ("c2s", request(3, 0, 8, struct.pack(">i", 1) + b"\x00\x01t")),
                         ("s2c", response(8, metadata_resp_v0(b"t", 0))))
    assert feed.records(res) == [("Produce", "t", "", ERR_NONE, True, False),
                                 ("Metadata", "t", "NONE", ERR_NONE, True, True)]


def test_pipelined_and_errors():
    res = feed.run_pairs(PROTOCOL, ("c2s", request(0, 2, 1, produce_v2(b"a", 1))),
                         ("c2s", request(0, 2, 2, produce_v2(b"b", -1))),
                         ("c2s", request(3, 0, 3, struct.pack(">i", 1) + b"\x00\x01x")),
                         ("s2c", response(1, produce_resp_v2(b"a", 0))),
                         ("s2c", response(2, produce_resp_v2(b"b", 10))),
                         ("s2c", response(3, metadata_resp_v0(b"x", 3))))
    assert feed.records(res) == [
        ("Produce", "a", "NONE", ERR_NONE, True, True),
        ("Produce", "b", "MESSAGE_TOO_LARGE", ERR_CLIENT, True, True),
        ("Metadata", "x", "UNKNOWN_TOPIC_OR_PARTITION", ERR_SERVER, True, True)]


def test_top_level_error_and_unanswered():
    # ApiVersions v0: error_code first; a request skipped by a later answer is unanswered
    res = feed.run_pairs(PROTOCOL, ("c2s", request(18, 0, 5)), ("c2s", request(12, 0, 6)),
                         ("s2c", response(6, struct.pack(">h", 27))),
                         ("s2c", response(99, b"\x00\x00")))
    assert feed.records(res) == [("ApiVersions", "", "", ERR_NONE, True, False),
                                 ("Heartbeat", "", "REBALANCE_IN_PROGRESS", ERR_CLIENT, True,
                                  True),
                                 (None, "", "", ERR_NONE, False, True)]


def test_hostile_lengths_and_garbage():
    bad = [struct.pack(">i", -5) + b"\x00" * 20, struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 8,
           b"\xff" * 64, request(500, 1, 1), request(3, 99, 1),
           struct.pack(">i", 12) + struct.pack(">hhih", 3, 1, 1, -7) + b"\x00\x00"]
    for b in bad:
        res = feed.run_pairs(PROTOCOL, ("c2s", b), ("s2c", b))
        assert [r for r in res.records if r.req_ts] == []
    # a deep tag count or an absurd array length is only read as far as it was captured
    flex = request(3, 9, 1, b"\x00" + b"\xff\xff\xff\xff\x0f", client=b"c")
    res = feed.run_pairs(PROTOCOL, ("c2s", flex), ("s2c", response(1, b"\x00" + b"\x7f" * 40)))
    assert feed.records(res) == [("Metadata", "", "NONE", ERR_NONE, True, True)]
    # garbage before a request: resynchronised
    res = feed.run_pairs(PROTOCOL, ("c2s", b"\x01\x02garbage" + request(18, 0, 4)),
                         ("s2c", response(4, b"\x00\x00")))
    assert feed.records(res)[-1] == ("ApiVersions", "", "NONE", ERR_NONE, True, True)


def test_responses_behind_many_waiting_requests_cost_no_search_per_waiting_id():
    """Found with the worst-case shapes (bench/parser_worstcase.py): with 4096 requests
    waiting, the response stream's resynchronisation searched the buffer once per waiting
    correlation id, on every retry (minutes of CPU for 8 kB of zeros), and each response
    with an unknown id scanned the whole queue.  Now: one pass, and an unknown id is a
    record without request at once; the stream still finds the next real answer."""
    import time
    f = feed.Feeder(PROTOCOL)
    for cid in range(1, 4097):
        f.feed("c2s", 10 + cid, request(12, 0, cid))
    t0 = time.process_time()
    for i in range(2000):                       # answers to nothing
        f.feed("s2c", 10000 + i, response(1 << 20 | i, b"\x00\x00"))
    f.feed("s2c", 20000, b"\x00\x00\x00\x01" + b"\x00" * 8192)   # garbage of zeros
    f.feed("s2c", 20001, response(4096, b"\x00\x00"))
    res = f.close()
    assert time.process_time() - t0 < 10        # minutes before
    assert res.exceptions == 0
    assert sum(1 for r in res.records if not r.req_ts) == 2000
    paired = [r for r in res.records if r.req_ts and r.resp_ts]
    assert len(paired) == 1 and paired[0].req_ts == 10 + 4096
    # the requests skipped by that answer left the ids waiting for responses too
    assert len(res.state.pending) == 0


def test_lost_size_read_costs_one_request():
    """Found by the resync tests on header-then-payload reads (the broker reads a
    request's 4-byte size, then the request): when one size read was lost, the payload's
    bytes 4 on from its start looked like a request header of a megabyte and were waited
    for (the rest of the connection lost), and a lone size read was never taken as a
    start.  Now only the request whose size was lost goes unpaired."""
    chunks = []
    for cid in range(1, 6):
        q = request(3, 4, cid, struct.pack(">i", 1) + b"\x00\x05topic" + b"\x00",
                    client=b"console-producer")
        chunks += [("c2s", 10 * cid, q[:4]), ("c2s", 10 * cid + 1, q[4:]),
                   ("s2c", 10 * cid + 2, response(cid, metadata_resp_v0(b"topic", 0)))]
    for lost in (0, 3, 6):
        f = feed.Feeder(PROTOCOL)
        for j, (d, ts, data) in enumerate(chunks):
            f.feed(d, ts, b"" if j == lost else data, len(data))
        res = f.close()
        assert res.exceptions == 0
        assert len(res.paired()) == 4, feed.records(res)
