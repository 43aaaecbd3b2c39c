"""Redis parser + stitcher: recorded captures against tshark, hand-written RESP, robustness."""
from __future__ import annotations

import random

import pytest

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType, ParseState
from protocol.redis import PROTOCOL
from tests.support import feed
from tests.support.pcap import read_tcp_connections
from tests.support.tshark import fixture, read_tsv, values

FIXTURES = ["large-requests-responses.pcap", "pipelining-example.pcap", "pubsub-resp3.pcap",
            "pubsub.pcap", "redis-debug.pcap", "redis_session.pcap", "stream.pcap"]
CONTAINERS = {"COMMAND", "CLIENT", "CONFIG", "ACL"}


def conns(name):
    return read_tcp_connections(fixture("redis", name), server_ports=(6379, 6380))


def oracle(name):
    """Per client port: [verb or None per request], number of error replies."""
    reqs, errs = {}, {}
    for row in read_tsv(fixture("redis", name)):
        info = row["_ws.col.Info"]
        if info.startswith("Request:"):
            port = int(row["tcp.srcport"])
            if "[fragment]" in info:
                reqs.setdefault(port, []).extend([None] * info.count("[fragment]"))
            else:
                words = info.split()[1:]
                verb = words[0].upper()
                if verb in CONTAINERS and len(words) > 1:
                    verb += " " + words[1].upper()
                reqs.setdefault(port, []).append(verb)
        else:
            port = int(row["tcp.dstport"])
            errs[port] = errs.get(port, 0) + len(values(row, "resp.error"))
    return reqs, errs


def run(*pairs, **kw):
    return feed.run_pairs(PROTOCOL, *pairs, **kw)


# -- recorded captures -------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_matches_tshark(name):
    reqs, errs = oracle(name)
    for c in conns(name):
        res = feed.run(PROTOCOL, c.chunks)
        assert res.exceptions == 0
        assert res.req_stats.invalid == res.resp_stats.invalid == 0
        port = c.client[1]
        with_req = [r for r in res.records if r.req_ts]
        expect = reqs.get(port, [])
        assert len(with_req) == len(expect)
        for rec, verb in zip(with_req, expect):
            if verb is not None:
                assert rec.api == verb
            assert rec.resp_ts > rec.req_ts          # every command answered, in order
        assert sum(1 for r in res.records if r.err) == errs.get(port, 0)


def test_fixture_details():
    recs = feed.run(PROTOCOL, conns("redis_session.pcap")[0].chunks).records
    assert [(r.path, r.status, r.err) for r in recs[:3]] == [
        ("SET key3", "OK", ERR_NONE), ("GET key3", "OK", ERR_NONE),
        ("LLEN key3", "ERR", ERR_CLIENT)]
    # pub/sub: SUBSCRIBE, PSUBSCRIBE, 3 pushes without requests, RESET, GET
    recs = feed.run(PROTOCOL, conns("pubsub.pcap")[0].chunks).records
    assert [(r.api, bool(r.req_ts)) for r in recs] == [
        ("SUBSCRIBE", True), ("PSUBSCRIBE", True), ("PUSH message", False),
        ("PUSH pmessage", False), ("PUSH pmessage", False), ("RESET", True), ("GET", True)]
    # RESP3: HELLO 3, COMMAND DOCS (a 150 KB map), pushes as '>' frames
    recs = feed.run(PROTOCOL, conns("pubsub-resp3.pcap")[0].chunks).records
    assert [r.api for r in recs] == ["HELLO", "COMMAND DOCS", "SUBSCRIBE", "PSUBSCRIBE", "SET",
                                     "PING", "PUSH message", "PUSH pmessage", "PUSH pmessage"]
    assert recs[5].status == "PONG"


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("prefix", [100, 1024])
def test_fixture_with_capture_prefix(name, prefix):
    # Only the first bytes of each segment are captured: bulk bodies and the tails of big
    # replies are skipped, yet every command still pairs with its own reply.
    for c in conns(name):
        whole = feed.summary(feed.run(PROTOCOL, c.chunks).records)
        res = feed.run(PROTOCOL, c.chunks, prefix=prefix)
        assert res.exceptions == 0
        assert [(a, q, r) for a, q, r, _, _ in feed.summary(res.records)] == \
            [(a, q, r) for a, q, r, _, _ in whole]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_split_everywhere(name):
    for c in conns(name):
        feed.assert_cut_every_way(PROTOCOL, c.chunks, 5000, range(1, 120, 3))


# -- RESP features -----------------------------------------------------------------------
def cmd(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def test_all_reply_types_resp2_and_resp3():
    replies = [b"+OK\r\n", b"-ERR unknown command 'FOO'\r\n", b":1000\r\n", b"$3\r\nbar\r\n",
               b"$-1\r\n", b"*-1\r\n", b"*0\r\n", b"*2\r\n*1\r\n:1\r\n$1\r\na\r\n",
               b"_\r\n", b",3.14\r\n", b"#t\r\n", b"!21\r\nSYNTAX invalid syntax\r\n",
               b"=15\r\ntxt:Some string\r\n", b"(3492890328409238509324850943850943825024385\r\n",
               b"%2\r\n+first\r\n:1\r\n+second\r\n*2\r\n:2\r\n:3\r\n", b"~2\r\n+a\r\n+b\r\n",
               b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n$5\r\nhello\r\n",
               b"*3\r\n$3\r\nfoo\r\n*?\r\n:1\r\n:2\r\n.\r\n$?\r\n;4\r\nHell\r\n;0\r\n"]
    reqs = b"".join(cmd("GET", "k%d" % i) for i in range(len(replies)))
    res = run(("c2s", reqs), ("s2c", b"".join(replies)))
    assert [(r.path, r.status, r.err) for r in res.records] == [
        ("GET k%d" % i, s, e) for i, (s, e) in enumerate(
            [("OK", 0), ("ERR", ERR_CLIENT)] + [("OK", 0)] * 9
            + [("SYNTAX", ERR_SERVER)] + [("OK", 0)] * 6)]
    assert all(r.req_ts and r.resp_ts for r in res.records)


def test_inline_commands():
    res = run(("c2s", b"PING\r\n"), ("s2c", b"+PONG\r\n"), ("c2s", b"set a b\r\nGET a\n"),
              ("s2c", b"+OK\r\n$1\r\nb\r\n"))
    assert [(r.api, r.path, r.status) for r in res.records] == [
        ("PING", "PING", "PONG"), ("SET", "SET a", "OK"), ("GET", "GET a", "OK")]


def test_pipelining_hundreds_in_one_chunk():
    n = 600
    reqs = b"".join(cmd("SET", "key:%d" % i, "v" * (i % 7)) for i in range(n))
    resps = b"+OK\r\n" * n
    res = run(("c2s", reqs), ("s2c", resps))
    assert len(res.records) == n
    assert [r.path for r in res.records] == ["SET key:%d" % i for i in range(n)]
    assert all(r.req_ts == 1000 and r.resp_ts == 1010 for r in res.records)
    # the same, delivered in 7-byte pieces
    pieces = [("c2s", reqs[i:i + 7]) for i in range(0, len(reqs), 7)]
    pieces += [("s2c", resps[i:i + 7]) for i in range(0, len(resps), 7)]
    assert len(run(*pieces).paired()) == n


def test_pubsub_resp2():
    res = run(("c2s", cmd("SUBSCRIBE", "a", "b")),
              ("s2c", b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
                      b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"),
              ("s2c", b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n"),
              ("c2s", cmd("PING")),
              ("s2c", b"*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$2\r\nhi\r\n"
                      b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"),
              ("c2s", cmd("UNSUBSCRIBE")),
              ("s2c", b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n"
                      b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n"),
              ("c2s", cmd("LRANGE", "l", "0", "-1")),
              ("s2c", b"*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$1\r\ny\r\n"))
    assert [(r.api, bool(r.req_ts), bool(r.resp_ts)) for r in res.records] == [
        ("SUBSCRIBE", True, True), ("PUSH message", False, True), ("PUSH message", False, True),
        ("PING", True, True), ("UNSUBSCRIBE", True, True),
        ("LRANGE", True, True)]          # not subscribed any more: an ordinary array reply


def test_pubsub_resp3_push():
    res = run(("c2s", cmd("HELLO", "3")), ("s2c", b"%1\r\n$5\r\nproto\r\n:3\r\n"),
              ("c2s", cmd("GET", "k")),
              ("s2c", b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"),
              ("s2c", b"$1\r\nv\r\n"))
    assert [(r.api, bool(r.req_ts)) for r in res.records] == [
        ("HELLO", True), ("PUSH invalidate", False), ("GET", True)]


def test_multi_exec_queued():
    res = run(("c2s", cmd("MULTI") + cmd("SET", "a", "1") + cmd("INCR", "a") + cmd("EXEC")),
              ("s2c", b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n"))
    assert [(r.api, r.status) for r in res.records] == [
        ("MULTI", "OK"), ("SET", "QUEUED"), ("INCR", "QUEUED"), ("EXEC", "OK")]


def test_large_bulk_cut_by_capture_prefix():
    big = b"x" * 300000
    res = run(("c2s", cmd("SET", "big", big)), ("s2c", b"+OK\r\n"),
              ("c2s", cmd("GET", "big")), ("s2c", b"$300000\r\n" + big + b"\r\n"),
              ("c2s", cmd("MSET", "k1", big, "k2", "v2")), ("s2c", b"+OK\r\n"),
              ("c2s", cmd("MGET", "k1", "k2", "k3")),
              ("s2c", b"*3\r\n$300000\r\n" + big + b"\r\n$2\r\nv2\r\n$-1\r\n"),
              ("c2s", cmd("PING")), ("s2c", b"+PONG\r\n"), prefix=512)
    assert [(r.path, bool(r.req_ts), bool(r.resp_ts)) for r in res.records] == [
        ("SET big", True, True), ("GET big", True, True), ("MSET k1", True, True),
        ("MGET k1", True, True), ("PING", True, True)]
    # the bodies were skipped exactly; only the uncaptured tails after the big element of
    # MSET and of the MGET reply (sizes unknowable) cost one resynchronisation each
    assert (res.req_stats.resyncs, res.resp_stats.resyncs) == (1, 1)
    res = run(("c2s", cmd("SET", "big", big)), ("s2c", b"+OK\r\n"),
              ("c2s", cmd("GET", "big")), ("s2c", b"$300000\r\n" + big + b"\r\n"),
              ("c2s", cmd("PING")), ("s2c", b"+PONG\r\n"), prefix=512)
    assert len(res.paired()) == 3
    assert res.req_stats.gaps == res.resp_stats.gaps == 0
    assert res.req_stats.resyncs == res.resp_stats.resyncs == 0


def test_big_array_reply_cut_by_prefix_counts_once():
    # 2000 small elements, only the first 256 bytes captured: counted once, then in sync
    elems = b"".join(b"$3\r\n%03d\r\n" % (i % 1000) for i in range(2000))
    res = run(("c2s", cmd("LRANGE", "l", "0", "-1")), ("s2c", b"*2000\r\n" + elems),
              ("c2s", cmd("PING")), ("s2c", b"+PONG\r\n"), prefix=256)
    assert [(r.api, bool(r.req_ts), bool(r.resp_ts)) for r in res.records] == [
        ("LRANGE", True, True), ("PING", True, True)]


def test_api_names_and_paths():
    res = run(("c2s", cmd("client", "setname", "app") + cmd("CONFIG", "GET", "maxmemory")
               + cmd("ACL", "LOAD") + cmd("AUTH", "user", "secret")
               + cmd("GET", "k" * 100) + cmd("GET", "a|b\r\nc") + cmd("COMMAND")),
              ("s2c", b"+OK\r\n*0\r\n+OK\r\n-WRONGPASS invalid\r\n$-1\r\n$-1\r\n*0\r\n"))
    assert [(r.api, r.method, r.path) for r in res.records] == [
        ("CLIENT SETNAME", "CLIENT SETNAME", "CLIENT SETNAME app"),
        ("CONFIG GET", "CONFIG GET", "CONFIG GET maxmemory"), ("ACL LOAD", "ACL LOAD", "ACL LOAD"),
        ("AUTH", "AUTH", "AUTH"), ("GET", "GET", ("GET " + "k" * 100)[:64]),
        ("GET", "GET", "GET a|b\r\nc"), ("COMMAND", "COMMAND", "COMMAND")]  # raw: report.py cleans


def test_error_classes():
    errors = [b"-ERR x\r\n", b"-WRONGTYPE x\r\n", b"-NOAUTH x\r\n", b"-OOM x\r\n",
              b"-LOADING x\r\n", b"-BUSY x\r\n", b"-READONLY x\r\n", b"!9\r\nNOPERM no\r\n"]
    res = run(("c2s", cmd("GET", "a") * len(errors)), ("s2c", b"".join(errors)))
    assert [(r.status, r.err) for r in res.records] == [
        ("ERR", ERR_CLIENT), ("WRONGTYPE", ERR_CLIENT), ("NOAUTH", ERR_CLIENT),
        ("OOM", ERR_SERVER), ("LOADING", ERR_SERVER), ("BUSY", ERR_SERVER),
        ("READONLY", ERR_SERVER), ("NOPERM", ERR_CLIENT)]


def test_commands_without_reply():
    res = run(("c2s", cmd("CLIENT", "REPLY", "OFF") + cmd("SET", "a", "1")
               + cmd("CLIENT", "REPLY", "ON") + cmd("CLIENT", "REPLY", "SKIP") + cmd("INCR", "a")
               + cmd("GET", "a")),
              ("s2c", b"+OK\r\n$1\r\n2\r\n"))
    assert [(r.api, bool(r.resp_ts), r.status) for r in res.records] == [
        ("CLIENT REPLY", False, ""), ("SET", False, ""), ("CLIENT REPLY", True, "OK"),
        ("CLIENT REPLY", False, ""), ("INCR", False, ""), ("GET", True, "OK")]


def test_orphan_reply_midstream():
    res = run(("s2c", b"$5\r\nhello\r\n"), ("c2s", cmd("PING")), ("s2c", b"+PONG\r\n"))
    assert [(r.api, bool(r.req_ts), bool(r.resp_ts)) for r in res.records] == [
        (None, False, True), ("PING", True, True)]


def test_resync_after_garbage():
    res = run(("c2s", b"\x00\x01tail of a value\r\n" + cmd("GET", "a")), ("s2c", b"$1\r\nb\r\n"))
    assert [(r.path, bool(r.resp_ts)) for r in res.records] == [("GET a", True)]
    assert res.req_stats.invalid == 1


def test_unanswered_requests_flushed():
    res = run(("c2s", cmd("BLPOP", "q", "0")))
    assert [(r.api, r.req_ts, r.resp_ts) for r in res.records] == [("BLPOP", 1000, 0)]


def test_state_is_per_connection():
    a, b = PROTOCOL.new_state(), PROTOCOL.new_state()
    pa = PROTOCOL.new_parser(MessageType.REQUEST, a)
    st, frame, end = pa.parse(cmd("SUBSCRIBE", "x"), 0, 1)
    assert st == ParseState.SUCCESS and a.subscribed and not b.subscribed


# -- robustness --------------------------------------------------------------------------
def test_never_raises_on_damaged_fixtures():
    rng = random.Random(6379)
    for name in FIXTURES:
        for c in conns(name):
            chunks = c.chunks
            if feed.total_len(chunks) > 40000:   # keep the run short: the head of it
                chunks = feed.truncated(chunks, 40000)
            assert feed.robustness_runs(PROTOCOL, chunks, rng, max_runs=60) == 0


def test_never_raises_on_hostile_input():
    hostile = [b"*1\r\n" * 50000 + b":1\r\n", b"*99999999999\r\n", b"$-5\r\n",
               b"$999999999999\r\n", b"*3\r\n$3\r\nGET\r\n$-1\r\n", b"|1\r\n" * 1000,
               b"*?\r\n" * 1000 + b".\r\n" * 1000, b"$?\r\n;-1\r\n", b";5\r\n", b".\r\n",
               b"%" + b"9" * 30 + b"\r\n", b"+" + b"a" * 70000, b"\r\n" * 1000]
    for data in hostile:
        res = feed.run(PROTOCOL, [("c2s", 1, data), ("s2c", 2, data)])
        assert res.exceptions == 0
