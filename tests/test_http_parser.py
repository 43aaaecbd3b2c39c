"""HTTP/1.x parser + stitcher through the pipeline's DataStream: recorded captures against
tshark, hand-written messages cut every way, capture prefixes and gaps, robustness, and the
probe's batched record decoder against the per-record path."""
from __future__ import annotations

import glob
import os
import random

import pytest

from pipeline.stream import DataStream, StreamStats
from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER, MessageType
from protocol.http import PROTOCOL
from tests.support import feed
from tests.support.pcap import read_tcp_connections
from tests.support.tshark import FIXTURES as FIXTURE_DIR
from tests.support.tshark import read_tsv

SERVER_PORTS = (80, 2375, 5000, 8080)
PCAPS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(FIXTURE_DIR, "http",
                                                                      "*.pcap")))


chunks_of = feed.chunks_of


def run(*pairs, **kw):
    return feed.run_pairs(PROTOCOL, *pairs, **kw)


def rows(res):
    return [(r.method, r.path, r.status, r.err, bool(r.req_ts), bool(r.resp_ts))
            for r in res.records]


def req(method="GET", target="/", headers=b"", body=b""):
    return (b"%s %s HTTP/1.1\r\nHost: h\r\n%s\r\n" % (method.encode(), target.encode(),
                                                      headers)) + body


def resp(status=200, headers=b"", body=b"", length=True):
    if length:
        headers = b"Content-Length: %d\r\n" % len(body) + headers
    return b"HTTP/1.1 %d X\r\n%s\r\n" % (status, headers) + body


def chunked(*parts, ext=b"", trailer=b""):
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in parts)
    return out + b"0\r\n" + trailer + b"\r\n"


# -- recorded captures against tshark ----------------------------------------------------
def oracle(name):
    """Per client port: request (method, uri) list and response status list, in order."""
    reqs, resps = {}, {}
    for row in read_tsv(os.path.join(FIXTURE_DIR, "http", name)):
        if row["http.request.method"]:
            reqs.setdefault(int(row["tcp.srcport"]), []).append(
                (row["http.request.method"], row["http.request.uri"]))
        if row["http.response.code"]:
            resps.setdefault(int(row["tcp.dstport"]), []).append(int(row["http.response.code"]))
    return reqs, resps


def conns(name):
    return read_tcp_connections(os.path.join(FIXTURE_DIR, "http", name),
                                server_ports=SERVER_PORTS)


def test_fixtures_present():
    assert len(PCAPS) >= 7


@pytest.mark.parametrize("name", PCAPS)
def test_fixture_matches_tshark(name):
    reqs, resps = oracle(name)
    seen = set()
    for c in conns(name):
        port = c.client[1]
        res = feed.run(PROTOCOL, c.chunks)
        assert res.exceptions == 0
        assert res.req_stats.invalid == res.resp_stats.invalid == 0
        want_reqs = reqs.get(port, [])
        want_resps = resps.get(port, [])
        if want_reqs or want_resps:
            seen.add(port)
        assert res.req_frames == len(want_reqs)
        assert res.resp_frames == len(want_resps)
        # interim responses are frames but not answers (101 is an answer)
        finals = [s for s in want_resps if s >= 200 or s == 101]
        paired = res.paired()
        assert len(paired) == len(want_reqs) == len(finals)
        assert [(r.method, r.path) for r in paired] == want_reqs
        assert [int(r.status) for r in paired] == finals
        for r in paired:
            assert r.resp_ts >= r.req_ts
            s = int(r.status)
            assert r.err == (ERR_SERVER if s >= 500 else ERR_CLIENT if s >= 400 else ERR_NONE)
    assert seen == set(reqs) | set(resps)


@pytest.mark.parametrize("name", PCAPS)
def test_fixture_cut_every_way(name):
    for c in conns(name):
        feed.assert_cut_every_way(PROTOCOL, c.chunks, 20000,
                                  list(range(1, 200, 7)) + [1000, 1460, 4000])


@pytest.mark.parametrize("name", PCAPS)
@pytest.mark.parametrize("prefix", [64, 300, 1024])
def test_fixture_with_capture_prefix(name, prefix):
    """Only a prefix of each segment captured: the messages whose headers were captured
    whole are all found, and nothing is invented."""
    for c in conns(name):
        whole = feed.run(PROTOCOL, c.chunks)
        res = feed.run(PROTOCOL, c.chunks, prefix=prefix)
        assert res.exceptions == 0
        assert res.req_frames <= whole.req_frames
        assert res.resp_frames <= whole.resp_frames
        got = [(r.method, r.path, r.status) for r in res.paired()]
        want = [(r.method, r.path, r.status) for r in whole.paired()]
        it = iter(want)
        assert all(g in it for g in got)        # a subsequence of the full result
        if all(len(d) <= prefix or 0 <= d.find(b"\r\n\r\n") <= prefix - 4
               for _, _, d in c.chunks if d[:5] in (b"HTTP/", b"GET /", b"POST ", b"HEAD ")):
            # every message's headers captured whole: nothing lost
            assert got == want, prefix


def test_fixture_robustness():
    rng = random.Random(7)
    for name in PCAPS:
        for c in conns(name):
            chunks = c.chunks if feed.total_len(c.chunks) < 30000 else c.chunks[:20]
            assert feed.robustness_runs(PROTOCOL, chunks, rng, max_runs=40) == 0


# -- messages, cut every way ---------------------------------------------------------------
CONVERSATION = [
    ("c2s", req("GET", "/a?x=1")),
    ("s2c", resp(200, body=b"hello")),
    ("c2s", req("POST", "/b", b"Content-Length: 11\r\n", b"HTTP/1.1 20")),
    ("s2c", resp(404, body=b"GET / HTTP/1.1\r\n\r\n")),
    ("c2s", req("PUT", "/c", b"Transfer-Encoding: chunked\r\n",
                chunked(b"abc", b"GET /x HTTP/1.1\r\n\r\n", ext=b";name=val"))),
    ("s2c", resp(500, b"Transfer-Encoding: chunked\r\n",
                 chunked(b"x" * 40, b"HTTP/1.1 200 OK\r\n\r\n", trailer=b"X-T: 1\r\n"),
                 length=False)),
    ("c2s", req("HEAD", "/d")),
    ("s2c", resp(200, b"Content-Length: 1234\r\n", length=False)),
    ("c2s", req("DELETE", "/e")),
    ("s2c", resp(204, length=False)),
    ("c2s", req("GET", "/f", b"If-None-Match: x\r\n")),
    ("s2c", resp(304, b"Content-Length: 99\r\n", length=False)),
]
EXPECTED = [("GET", "/a?x=1", "200", ERR_NONE, True, True),
            ("POST", "/b", "404", ERR_CLIENT, True, True),
            ("PUT", "/c", "500", ERR_SERVER, True, True),
            ("HEAD", "/d", "200", ERR_NONE, True, True),
            ("DELETE", "/e", "204", ERR_NONE, True, True),
            ("GET", "/f", "304", ERR_NONE, True, True)]


def test_whole_messages():
    res = run(*CONVERSATION)
    assert rows(res) == EXPECTED
    assert res.req_stats.invalid == res.resp_stats.invalid == 0
    assert res.records[0].api == "GET /a"
    assert [r.req_ts for r in res.records] == [1000 + 20 * i for i in range(6)]
    assert [r.resp_ts for r in res.records] == [1010 + 20 * i for i in range(6)]


def test_byte_at_a_time():
    res = feed.run(PROTOCOL, feed.byte_chunks(chunks_of(*CONVERSATION)))
    assert res.exceptions == 0
    assert rows(res) == EXPECTED
    assert res.req_stats.invalid == res.resp_stats.invalid == 0


def test_split_at_every_offset():
    chunks = chunks_of(*CONVERSATION)
    longest = max(len(d) for _, _, d in chunks)
    for k in range(1, longest + 1):
        res = feed.run(PROTOCOL, feed.split_at(chunks, k))
        assert res.exceptions == 0
        assert rows(res) == EXPECTED, k
        assert res.req_stats.invalid == res.resp_stats.invalid == 0


def test_one_direction_all_at_once():
    reqs = b"".join(d for w, d in CONVERSATION if w == "c2s")
    resps = b"".join(d for w, d in CONVERSATION if w == "s2c")
    res = run(("c2s", reqs), ("s2c", resps))
    assert [r[:4] for r in rows(res)] == [r[:4] for r in EXPECTED]
    # and cut into three-byte pieces
    pieces = [("c2s", reqs[i:i + 3]) for i in range(0, len(reqs), 3)]
    pieces += [("s2c", resps[i:i + 3]) for i in range(0, len(resps), 3)]
    assert [r[:4] for r in rows(run(*pieces))] == [r[:4] for r in EXPECTED]


def test_garbage_before_and_between_messages():
    res = run(("c2s", b"\x16\x03\x01garbage\r\n\r\n" + req("GET", "/1")),
              ("s2c", b"junk\x00\xff\r\n" + resp(200)),
              ("c2s", b"more garbage\r\n" + req("GET", "/2")),
              ("s2c", b"\r\n\r\nxx HTTP/1.1 200 OK\r\n\r\n" + resp(201)),
              ("c2s", req("GET", "/3")), ("s2c", resp(202)))
    assert [(m, p, s) for m, p, s, *_ in rows(res)] == [("GET", "/1", "200"),
                                                       ("GET", "/2", "201"),
                                                       ("GET", "/3", "202")]
    assert res.req_stats.invalid >= 1 and res.resp_stats.invalid >= 1


def test_mid_stream_start_resyncs():
    full = resp(200, body=b"x" * 100)
    res = run(("s2c", full[20:]), ("c2s", req("GET", "/ok")), ("s2c", resp(200)))
    assert [(m, p, s) for m, p, s, *_ in rows(res)] == [("GET", "/ok", "200")]


def test_truncated_conversation():
    chunks = chunks_of(*CONVERSATION)
    total = feed.total_len(chunks)
    for k in range(1, total, 5):
        res = feed.run(PROTOCOL, feed.truncated(chunks, k))
        assert res.exceptions == 0
        got = [r for r in rows(res) if r[4] and r[5]]
        assert got == EXPECTED[:len(got)]


def test_content_length_variants():
    res = run(("c2s", req("POST", "/p", b"content-length:  3 \r\n", b"abc")),
              ("s2c", resp(200, b"CONTENT-LENGTH\t: 2\r\n", b"ok", length=False)),
              ("c2s", req("GET", "/q")), ("s2c", resp(200)))
    assert [(m, p, s) for m, p, s, *_ in rows(res)] == [("POST", "/p", "200"),
                                                       ("GET", "/q", "200")]
    # a bad Content-Length value is not a message
    res = run(("c2s", req("POST", "/p", b"Content-Length: 1x\r\n", b"a")))
    assert res.req_frames == 0 and res.req_stats.invalid >= 1


def test_chunked_extensions_and_trailers():
    body = chunked(b"a" * 17, b"b" * 300, ext=b"; foo=bar;baz", trailer=b"X-A: 1\r\nX-B: 2\r\n")
    res = run(("c2s", req("POST", "/up", b"Transfer-Encoding: gzip, chunked\r\n", body)),
              ("s2c", resp(201, b"Transfer-Encoding: chunked\r\n", body, length=False)),
              ("c2s", req("GET", "/next")), ("s2c", resp(200)))
    assert [(m, p, s) for m, p, s, *_ in rows(res)] == [("POST", "/up", "201"),
                                                       ("GET", "/next", "200")]
    assert res.req_stats.invalid == res.resp_stats.invalid == 0


def test_chunk_larger_than_capture():
    big = b"z" * 100000
    body = chunked(big, b"tail", big)
    head = resp(200, b"Transfer-Encoding: chunked\r\n", length=False)
    msg = head + body
    f = feed.Feeder(PROTOCOL)
    f.feed("c2s", 1, req("GET", "/big"))
    # the write is captured up to 4096 bytes only; the rest is a gap the chunk walk skips
    f.feed("s2c", 2, msg[:4096], len(msg))
    f.feed("c2s", 3, req("GET", "/after"))
    f.feed("s2c", 4, resp(204, length=False))
    res = f.close()
    assert res.exceptions == 0
    assert [(r.path, r.status) for r in res.records] == [("/big", "200"), ("/after", "204")]
    # the second size line was not captured: that gap cannot be skipped, the stream resyncs
    assert res.resp_stats.gaps == 1
    # one chunk larger than the capture, its end and the last chunk in the next write
    f = feed.Feeder(PROTOCOL)
    f.feed("c2s", 1, req("GET", "/big"))
    first = head + b"%x\r\n" % len(big) + big
    f.feed("s2c", 2, first[:4096], len(first))
    f.feed("s2c", 3, b"\r\n4\r\ntail\r\n0\r\n\r\n")
    f.feed("c2s", 4, req("GET", "/after"))
    f.feed("s2c", 5, resp(204, length=False))
    res = f.close()
    assert res.exceptions == 0
    assert [(r.path, r.status) for r in res.records] == [("/big", "200"), ("/after", "204")]
    assert res.resp_stats.gaps == 0 and res.resp_stats.invalid == 0


def test_chunked_split_across_writes_with_prefix_capture():
    parts = [b"x" * 5000, b"y" * 7000, b"z" * 3]
    msg = resp(200, b"Transfer-Encoding: chunked\r\n", chunked(*parts), length=False)
    f = feed.Feeder(PROTOCOL)
    f.feed("c2s", 1, req("GET", "/c"))
    for i in range(0, len(msg), 3000):        # 3000-byte writes, 100 bytes captured of each
        piece = msg[i:i + 3000]
        f.feed("s2c", 2 + i, piece[:100], len(piece))
    f.feed("c2s", 10 ** 6, req("GET", "/d"))
    f.feed("s2c", 10 ** 6 + 1, resp(200))
    res = f.close()
    assert res.exceptions == 0
    assert [(r.path, r.status) for r in res.records] == [("/c", "200"), ("/d", "200")]


def test_response_body_far_larger_than_capture():
    size = 50 * 1000 * 1000
    head = resp(200, b"Content-Length: %d\r\n" % size, length=False)
    f = feed.Feeder(PROTOCOL)
    f.feed("c2s", 1, req("GET", "/huge"))
    f.feed("s2c", 2, head + b"x" * 100, len(head) + 16384)     # first write, prefix only
    sent = 16384
    ts = 3
    while sent < size:                                         # then the rest, 1 MB writes
        n = min(1 << 20, size - sent)
        f.feed("s2c", ts, b"x" * 64, n)
        sent += n
        ts += 1
    f.feed("c2s", ts, req("GET", "/small"))
    f.feed("s2c", ts + 1, resp(200, body=b"ok"))
    res = f.close()
    assert res.exceptions == 0
    assert [(r.path, r.status) for r in res.records] == [("/huge", "200"), ("/small", "200")]
    assert res.resp_stats.gaps == 0 and res.resp_stats.invalid == 0


def test_body_as_a_gap():
    """nginx's sendfile: headers written, the body crosses the socket uncaptured."""
    body = b"b" * 615
    s = DataStream(PROTOCOL.new_parser(MessageType.RESPONSE, PROTOCOL.new_state()))
    s.parser.state.methods.extend(["GET"] * 3)
    head = resp(200, b"Content-Length: 615\r\n", length=False)
    for i in range(3):
        s.append(head, len(head), i)
        s.gap(len(body))
    assert [f.status for f in s.frames] == [200] * 3
    assert s.stats.gaps == 0 and s.skip == 0 and s.buf == b""


def test_head_response_has_no_body():
    # HEAD answered with a Content-Length but no body; the next response follows at once
    res = run(("c2s", req("HEAD", "/h") + req("GET", "/g")),
              ("s2c", resp(200, b"Content-Length: 5000\r\n", length=False) +
               resp(200, body=b"hi")))
    assert [(m, p, s) for m, p, s, *_ in rows(res)] == [("HEAD", "/h", "200"),
                                                       ("GET", "/g", "200")]
    # request not seen (probe started late): the next status line still ends it
    res = run(("s2c", resp(200, b"Content-Length: 5000\r\n", length=False) + resp(404)))
    assert [(s, q, r) for _, _, s, _, q, r in rows(res)] == [("200", False, True),
                                                           ("404", False, True)]


def test_interim_responses():
    body = b"d" * 2001
    res = run(("c2s", req("POST", "/u", b"Expect: 100-continue\r\nContent-Length: 2001\r\n")),
              ("s2c", b"HTTP/1.1 100 Continue\r\n\r\n"),
              ("c2s", body),
              ("s2c", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + resp(200)),
              ("c2s", req("GET", "/v")), ("s2c", resp(200)))
    assert [(m, p, s) for m, p, s, *_ in rows(res)] == [("POST", "/u", "200"),
                                                       ("GET", "/v", "200")]
    assert res.resp_frames == 4


def test_204_and_304_have_no_body():
    res = run(("c2s", req("GET", "/1") + req("GET", "/2") + req("GET", "/3")),
              ("s2c", resp(204, length=False) + resp(304, length=False) + resp(200)))
    assert [s for _, _, s, *_ in rows(res)] == ["204", "304", "200"]


def test_pipelining_ten_requests_in_one_chunk():
    statuses = [200, 404, 201, 500, 503, 200, 400, 204, 301, 403]
    reqs = b"".join(req("GET", "/p%d" % i) for i in range(10))
    resps = b"".join(resp(s, body=b"x" * i) if s != 204 else resp(s, length=False)
                     for i, s in enumerate(statuses))
    res = run(("c2s", reqs), ("s2c", resps))
    assert [(p, s) for _, p, s, *_ in rows(res)] == [
        ("/p%d" % i, str(s)) for i, s in enumerate(statuses)]
    assert all(r.req_ts == 1000 and r.resp_ts == 1010 for r in res.records)
    # responses arriving one by one, in pieces
    pieces = [("c2s", reqs)] + [("s2c", resps[i:i + 11]) for i in range(0, len(resps), 11)]
    assert [(p, s) for _, p, s, *_ in rows(run(*pieces))] == [
        ("/p%d" % i, str(s)) for i, s in enumerate(statuses)]


def test_response_before_request_is_unmatched():
    res = run(("s2c", resp(200)), ("c2s", req("GET", "/late")), ("s2c", resp(201)))
    assert [(p, s, q, r) for _, p, s, _, q, r in rows(res)] == [
        ("", "200", False, True), ("/late", "201", True, True)]


def test_unanswered_request_flushed():
    res = run(("c2s", req("GET", "/a")), ("c2s", req("GET", "/b")), ("s2c", resp(200)))
    assert [(p, s, q, r) for _, p, s, _, q, r in rows(res)] == [
        ("/a", "200", True, True), ("/b", "", True, False)]


def test_upgrade_stops_parsing():
    ws = b"\x81\x05hello" + b"GET / HTTP/1.1\r\n\r\n" + b"HTTP/1.1 200 OK\r\n\r\n"
    res = run(("c2s", req("GET", "/ws", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")),
              ("s2c", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n" + ws),
              ("c2s", ws), ("s2c", ws), ("c2s", ws))
    assert [(p, s) for _, p, s, *_ in rows(res)] == [("/ws", "101")]
    assert res.req_stats.invalid == res.resp_stats.invalid == 0
    assert res.state.upgraded


def test_connect_tunnel_stops_parsing():
    res = run(("c2s", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
              ("s2c", b"HTTP/1.1 200 Connection established\r\n\r\n"),
              ("c2s", b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n\r\n"),
              ("s2c", b"\x16\x03\x03HTTP/1.1 200 OK\r\n\r\n"))
    assert [(m, p, s) for m, p, s, *_ in rows(res)] == [("CONNECT", "example.com:443", "200")]


def test_api_name_drops_query_and_is_bounded():
    long = "/" + "a" * 100
    res = run(("c2s", req("GET", "/x?q=1") + req("GET", long)), ("s2c", resp(200) + resp(200)))
    assert [r.api for r in res.records] == ["GET /x", ("GET " + long)[:63]]


def test_http10_and_bare_lf_garbage():
    res = run(("c2s", b"GET /old HTTP/1.0\r\n\r\n"),
              ("s2c", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert [(m, p, s) for m, p, s, *_ in rows(res)] == [("GET", "/old", "200")]


def test_random_bytes_never_raise():
    rng = random.Random(1234)
    stats = StreamStats()
    for trial in range(300):
        state = PROTOCOL.new_state()
        streams = [DataStream(PROTOCOL.new_parser(t, state), stats)
                   for t in (MessageType.REQUEST, MessageType.RESPONSE)]
        for _ in range(rng.randrange(1, 12)):
            s = rng.choice(streams)
            kind = rng.randrange(4)
            if kind == 0:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
            elif kind == 1:     # plausible fragments mixed with noise
                data = rng.choice([b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n",
                                   b"Content-Length: 99999999\r\n", b"\r\n",
                                   b"Transfer-Encoding: chunked\r\n\r\n", b"fffffff\r\n",
                                   b"0\r\n\r\n", b"HTTP/1.1 101 S\r\n\r\n"]) * rng.randrange(3)
            elif kind == 2:
                data = rng.choice([req(), resp(200, body=b"x"), resp(100, length=False)])
                data = data[:rng.randrange(len(data) + 1)]
            else:
                data = b""
            true_len = len(data) + rng.choice([0, 0, 0, 1, 1000, 10 ** 7])
            s.append(data, true_len, trial)
            if rng.random() < 0.1:
                s.gap(rng.randrange(1, 5000))
        PROTOCOL.flush(streams[0].frames, streams[1].frames, state)
    assert stats.exceptions == 0


def test_garbage_is_counted_and_reported_once_per_period(caplog):
    """Bad input is skipped with one clear log line per protocol and period, not silently."""
    stats = StreamStats()
    s = DataStream(PROTOCOL.new_parser(MessageType.REQUEST, PROTOCOL.new_state()), stats)
    junk = b"\x00\xffnot http at all\r\n\r\n"
    for ts, data in enumerate([req(target="/a"), junk, req(target="/b")]):
        s.append(data, len(data), ts)
    assert [f.target for f in s.frames] == ["/a", "/b"]
    assert stats.invalid >= 1 and stats.dropped_bytes >= len(junk) - 4
    with caplog.at_level("INFO", logger="l7probe"):
        stats.report("http")
        stats.report("http")            # nothing new: nothing said
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("http: this period ") and "unparseable" in line, line
    assert "skipped" in line, line
    assert stats.invalid == stats.dropped_bytes == stats.resyncs == 0


def test_stream_fast_path_equals_buffered_path():
    """DataStream's paths (fresh data parsed in place vs. appended to a buffer) give the
    same frames, skips and statistics whatever the cut."""
    rng = random.Random(99)
    msgs = [resp(200, body=b"a" * rng.randrange(0, 50)) for _ in range(30)]
    msgs += [resp(200, b"Transfer-Encoding: chunked\r\n", chunked(b"q" * 30, b"r"),
                  length=False) for _ in range(5)]
    data = b"".join(msgs)
    want = None
    for trial in range(200):
        state = PROTOCOL.new_state()
        state.methods.extend(["GET"] * 40)
        s = DataStream(PROTOCOL.new_parser(MessageType.RESPONSE, state))
        i = 0
        while i < len(data):
            n = rng.choice([1, 7, 40, 90, 500, len(data)])
            s.append(data[i:i + n], len(data[i:i + n]), i)
            i += n
        got = ([f.status for f in s.frames], s.stats.invalid, s.stats.gaps, s.buf, s.skip)
        if want is None:
            want = got
        assert got == want
    assert want[0] == [200] * 35 and want[1:] == (0, 0, b"", 0)


# -- the probe's record decoder -------------------------------------------------------------
def test_batch_boundaries_do_not_change_the_records():
    """Tracker.feed, the one hot path, gives the same counts whatever the batches are
    (one record at a time, or random batches), also with captured prefixes, gaps, closes
    and records of unknown connections."""
    from bench import parsers
    recs, messages = parsers.http_records(n_conns=5, per_conn=40)
    rng = random.Random(5)
    from bpf.layout import DEFINES, LAYOUTS
    data = LAYOUTS["evt_data"]
    extra = []
    for i in range(20):
        body = resp(200, b"Content-Length: 3000\r\n", length=False)
        extra.append(data.pack(type=DEFINES["EVT_DATA"], tgid=100, conn_id=99, ts=i,
                               true_len=len(body), cap_len=len(body), lost=0,
                               direction=DEFINES["DIR_EGRESS"], source=0, proto=1,
                               l7_role=2) + body)
    recs = recs + extra
    results = []
    for mode in ("batch", "single"):
        sink = parsers._Sink()
        tr = sink.tracker
        i = 0
        while i < len(recs):
            n = rng.randrange(1, 100) if mode == "batch" else 1
            tr.feed(recs[i:i + n])
            tr.stitch_dirty()
            i += n
        links = list(sink.links.links.values())
        st = links[0].rpc
        results.append((st.req, st.resp, st.lat_sum, sorted(
            (api, s.req, s.resp, s.lat_sum) for api, s in links[0].apis.items()),
            tr.unknown_data))
    assert results[0] == results[1]
    assert results[0][0] == results[0][1] == messages // 2
    assert results[0][4] == 20


def test_huge_length_hint_keeps_the_buffer_bounded():
    """A parser asking for more than MAX_BUFFERED bytes gets its frame dropped once the
    buffer passes the bound, instead of the stream buffering without limit."""
    from pipeline import stream as stream_mod
    from protocol.base import ParseState

    class Greedy:
        def find_boundary(self, buf, start):
            return -1

        def parse(self, buf, start, ts):
            return ParseState.NEEDS_MORE_DATA, None, start + 100 * 2**20

    st = stream_mod.DataStream(Greedy())
    chunk = b"x" * 65536
    for i in range(40):
        st.append(chunk, len(chunk), i)
        assert len(st.buf) <= stream_mod.MAX_BUFFERED + len(chunk)
    assert st.stats.dropped_bytes > 0


def test_feed_fast_path_equals_stream_append():
    """Tracker.feed parses a connection in sync in place (its fast path); DataStream.append
    buffers.  The same records through both give the same pairs, statistics and stream
    state, with messages whole, cut anywhere, longer than their capture, after lost bytes,
    after messages the kernel sampled out (EVF_CLEAN_GAP: DataStream.clean_gap, then
    append), chunked, garbage, and a parser that raises."""
    from bpf.layout import DEFINES, LAYOUTS
    from pipeline.aggregate import Links
    from pipeline.conntrack import Tracker
    from protocol.http.parse import HttpParser

    op, data_l = LAYOUTS["evt_open"], LAYOUTS["evt_data"]
    d_in, d_out = DEFINES["DIR_INGRESS"], DEFINES["DIR_EGRESS"]
    CLEAN_GAP = DEFINES["EVF_CLEAN_GAP"]

    class Boom(Exception):
        pass

    real_parse = HttpParser.parse

    def parse(self, buf, start, ts):        # raises on a marked message (a parser bug)
        if buf.startswith(b"BOOM", start):
            raise Boom()
        return real_parse(self, buf, start, ts)

    def messages(rng):
        """[(direction, payload, true_len, lost)] of one server-side connection."""
        out = []
        for i in range(300):
            k = rng.random()
            q = req(target="/p%d" % rng.randrange(5))
            if k < 0.05:
                q = b"BOOM " + q
            elif k < 0.1:
                q = b"\x00garbage\r\n" + q
            out.append((d_in, q, len(q), 0))
            body = b"b" * rng.choice([0, 10, 3000])
            if rng.random() < 0.15:
                r = resp(200, b"Transfer-Encoding: chunked\r\n", chunked(body, b"z"),
                         length=False)
            else:
                r = resp(rng.choice([200, 200, 404, 500]), body=body)
            out.append((d_out, r, len(r), rng.choice([0] * 12 + [7, 100])))
        recs = []
        for d, payload, true_len, lost in out:
            i = 0
            # a third of the messages follow messages the kernel sampled out (whole ones,
            # of 50 or 900 bytes), unless some bytes were lost before them
            flags = CLEAN_GAP if not lost and rng.random() < 0.33 else 0
            if flags:
                lost = rng.choice([50, 900])
            while i < len(payload):           # cut into syscalls, some captured short
                n = rng.choice([len(payload)] * 4 + [1, 20, 200])
                piece = payload[i:i + n]
                cap = len(piece) if rng.random() < 0.8 else rng.randrange(len(piece) + 1)
                recs.append((d, piece[:cap], len(piece), lost if i == 0 else 0,
                             flags if i == 0 else 0))
                i += n
        return recs

    def open_rec():
        return op.pack(type=DEFINES["EVT_OPEN"], tgid=1, conn_id=7, ts=0, fd=3, family=2,
                       server_port=80, client_port=5000, l4_role=DEFINES["L4_SERVER"],
                       l7_role=DEFINES["L7_SERVER"], proto=1, ssl=0, pad=b"",
                       client_ip=b"\x7f\0\0\1" + b"\0" * 12,
                       server_ip=b"\x7f\0\0\1" + b"\0" * 12)

    def rec_row(r):
        return (r.req_ts, r.resp_ts, r.api, r.method, r.path, r.status, r.err)

    def stream_row(s):
        st = s.stats
        return (bytes(s.buf), s.skip, s.resync, s.need, st.invalid, st.resyncs, st.gaps,
                st.dropped_bytes, st.lost_bytes, st.exceptions)

    HttpParser.parse = parse
    try:
        for seed in range(6):
            recs = messages(random.Random(seed))
            # through Tracker.feed (fast path where in sync), one batch of 8 at a time
            got = []
            tr = Tracker(Links(), lambda link, r: got.append(rec_row(r)))
            tr.feed([open_rec()])
            conn = tr.conns[7]
            for i in range(0, len(recs), 8):
                batch = [data_l.pack(type=DEFINES["EVT_DATA"], tgid=1, conn_id=7, ts=j + 1,
                                     true_len=t, cap_len=len(c), lost=lost, direction=d,
                                     source=0, proto=1, l7_role=2, flags=f) + c
                         for j, (d, c, t, lost, f) in enumerate(recs[i:i + 8], i)]
                tr.feed(batch)
                tr.stitch_dirty()
            fast = (got, stream_row(conn.req_stream), stream_row(conn.resp_stream))
            # through DataStream.append alone
            state = PROTOCOL.new_state()
            stats = StreamStats()      # as a link's: one for both directions
            streams = {d_in: DataStream(PROTOCOL.new_parser(MessageType.REQUEST, state),
                                        stats),
                       d_out: DataStream(PROTOCOL.new_parser(MessageType.RESPONSE, state),
                                         stats)}
            want = []
            for i in range(0, len(recs), 8):
                for j, (d, c, t, lost, f) in enumerate(recs[i:i + 8], i):
                    if f:
                        streams[d].clean_gap(lost)
                        lost = 0
                    if c:
                        streams[d].append(c, t, j + 1, lost)
                    else:
                        streams[d].gap(lost + t)
                want += [rec_row(r) for r in PROTOCOL.stitch(streams[d_in].frames,
                                                              streams[d_out].frames, state)]
            slow = (want, stream_row(streams[d_in]), stream_row(streams[d_out]))
            assert fast == slow
            assert len(got) > 200 and fast[1][-1] > 0      # pairs, and the parser raised
        # whole messages after sampled-out ones take the fast path: no DataStream.append
        calls = []
        real_append = DataStream.append
        DataStream.append = lambda self, *a: (calls.append(a), real_append(self, *a))
        try:
            got = []
            tr = Tracker(Links(), lambda link, r: got.append(rec_row(r)))
            tr.feed([open_rec()])
            q, r = req(target="/s"), resp(200, body=b"x" * 10)
            tr.feed([data_l.pack(type=DEFINES["EVT_DATA"], tgid=1, conn_id=7, ts=j,
                                 true_len=len(c), cap_len=len(c), lost=300,
                                 direction=d, source=0, proto=1, l7_role=2,
                                 flags=CLEAN_GAP) + c
                     for j, (d, c) in enumerate([(d_in, q), (d_out, r)] * 20)])
            tr.stitch_dirty()
        finally:
            DataStream.append = real_append
        assert len(got) == 20 and calls == []
    finally:
        HttpParser.parse = real_parse


def test_rest_idle_drops_only_what_a_new_stream_equals():
    """Tracker.rest_idle drops the streams of a connection at rest (between messages, no
    request awaiting its answer); the next bytes make them anew.  The same records with
    rest_idle after every batch and without it give the same pairs; streams are dropped
    between whole exchanges and kept while a head, a body, a chunked body or an answer is
    still to come."""
    from bpf.layout import DEFINES, LAYOUTS
    from pipeline.aggregate import Links
    from pipeline.conntrack import Tracker

    op, data_l = LAYOUTS["evt_open"], LAYOUTS["evt_data"]
    d_in, d_out = DEFINES["DIR_INGRESS"], DEFINES["DIR_EGRESS"]
    open_rec = op.pack(type=DEFINES["EVT_OPEN"], tgid=1, conn_id=7, ts=0, fd=3, family=2,
                       server_port=80, client_port=5000, l4_role=DEFINES["L4_SERVER"],
                       l7_role=DEFINES["L7_SERVER"], proto=1, ssl=0, pad=b"",
                       client_ip=b"\x7f\0\0\1" + b"\0" * 12,
                       server_ip=b"\x7f\0\0\1" + b"\0" * 12)

    def data(d, c, ts, true_len=None):
        return data_l.pack(type=DEFINES["EVT_DATA"], tgid=1, conn_id=7, ts=ts,
                           true_len=len(c) if true_len is None else true_len, cap_len=len(c),
                           lost=0, direction=d, source=0, proto=1, l7_role=2) + c

    def traffic(rng):
        recs = []
        for i in range(200):
            qb = b"q" * rng.choice([0, 0, 50])
            q = req("POST" if qb else "GET", "/p%d" % rng.randrange(5),
                    b"Content-Length: %d\r\n" % len(qb) if qb else b"", qb)
            body = b"b" * rng.choice([0, 10, 3000])
            if rng.random() < 0.2:        # (an empty chunk would end the body)
                r = resp(200, b"Transfer-Encoding: chunked\r\n",
                         chunked(*[p for p in (body, b"z") if p]), length=False)
            else:
                r = resp(rng.choice([200, 404, 500]), body=body)
            for d, m in ((d_in, q), (d_out, r)):
                j = 0
                while j < len(m):
                    n = rng.choice([len(m)] * 3 + [1, 30, 300])
                    recs.append((d, m[j:j + n]))
                    j += n
        return recs

    def run_through(recs, rest, cut):
        got = []
        tr = Tracker(Links(), lambda link, r: got.append((r.req_ts, r.resp_ts, r.method,
                                                          r.path, r.status, r.err)))
        tr.feed([open_rec])
        dropped = 0
        for i in range(0, len(recs), cut):
            tr.feed([data(d, c, j + 1) for j, (d, c) in enumerate(recs[i:i + cut], i)])
            tr.stitch_dirty()
            if rest:
                dropped += tr.rest_idle()
        return got, dropped, tr

    for seed in range(6):
        rng = random.Random(seed)
        recs = traffic(rng)
        for cut in (1, 3, 8):
            want, _, _ = run_through(recs, False, cut)
            got, dropped, _ = run_through(recs, True, cut)
            assert got == want and len(want) == 200
            assert dropped > 10, (seed, cut, dropped)

    # kept while something is still to come; dropped once the exchange is whole
    q, r = req(target="/a"), resp(200, body=b"x" * 100)
    rc = resp(200, b"Transfer-Encoding: chunked\r\n", chunked(b"abc", b"def"), length=False)
    for pieces in ([(d_in, q[:10])],                         # half a head
                   [(d_in, q)],                              # a request awaiting its answer
                   [(d_in, q), (d_out, r[:-30])],            # half a body
                   [(d_in, q), (d_out, rc[:-5])],            # a chunked body in progress
                   [(d_in, req(headers=b"Upgrade: websocket\r\nConnection: Upgrade\r\n")),
                    (d_out, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\n\r\n")]):  # not HTTP from then on
        got, dropped, tr = run_through(pieces, True, 1)
        assert dropped == 0 and tr.conns[7].req_stream is not None, pieces
    got, dropped, tr = run_through([(d_in, q), (d_out, r)], True, 2)
    assert dropped == 1 and tr.conns[7].req_stream is None and len(got) == 1
    # a body far larger than its capture: at rest only once all of it was skipped
    big = resp(200, body=b"y" * 5000)
    tr.feed([data(d_in, q, 10), data(d_out, big[:200], 11, len(big) - 1000)])
    tr.stitch_dirty()
    assert tr.rest_idle() == 0
    tr.feed([data(d_out, big[-1000:], 12)])
    tr.stitch_dirty()
    assert tr.rest_idle() == 1 and len(got) == 2


def test_head_memo_equals_parsing_again():
    """HttpParser.parse keeps the last head it decided (``memo``) and answers an equal head
    from it.  Random sequences of heads drawn from a small pool (so that heads repeat),
    at random offsets behind other bytes, through one parser pair, and through a pair whose
    memo is dropped before every call (each head parsed from scratch): the same answers
    (state, frame, end, chunked), the same pending methods, the same counts."""
    from protocol.http.parse import _NO_MEMO, NEEDS_MORE_DATA, SUCCESS, HttpParser

    names = [b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Content-Lengthy",
             b"Transfer-Encoding", b"transfer-encoding", b"X-Content-Length"]
    values = [b"0", b"5", b" 12 ", b"chunked", b"gzip, chunked", b"abc", b"-1",
              b"9" * 16, b""]

    def headers(rng):
        hs = [b"Host: h"]
        for _ in range(rng.randrange(3)):
            hs.append(rng.choice(names) + rng.choice([b":", b" :", b": ", b":\t"])
                      + rng.choice(values))
        hs.append(b"X-Id: %d" % rng.randrange(2))
        return b"".join(h + b"\r\n" for h in hs)

    rng = random.Random(8)
    hits = [0, 0]                   # answers from the memo: responses, requests
    for round_ in range(40):
        req_pool = [b"%s %s HTTP/1.%d\r\n" % (rng.choice([b"GET", b"POST", b"HEAD",
                                                        b"CONNECT", b"BREW"]),
                                             rng.choice([b"/a", b"/b?x=1", b"*"]),
                                             rng.randrange(2)) + headers(rng) + b"\r\n"
                    for _ in range(6)]
        resp_pool = [b"HTTP/1.%d %d %s\r\n" % (rng.randrange(2),
                                               rng.choice([200, 200, 404, 101, 100, 204,
                                                           304, 500]),
                                               rng.choice([b"OK", b""]))
                     + headers(rng) + b"\r\n" for _ in range(6)]
        # heads that begin with another head of the pool (one header more)
        for pool in (req_pool, resp_pool):
            pool += [h[:-2] + rng.choice([b"Content-Length: 3", b"Transfer-Encoding: chunked",
                                          b"X-More: 1"]) + b"\r\n\r\n" for h in pool[:3]]
        pairs = []
        for reset in (False, True):
            state = PROTOCOL.new_state()
            pairs.append((state, HttpParser(MessageType.REQUEST, state),
                          HttpParser(MessageType.RESPONSE, state), reset))
        for i in range(60):
            is_req = rng.random() < 0.5
            head = rng.choice(req_pool if is_req else resp_pool)
            pre = rng.choice([b"", b"xx", b"\r\n" * 3])
            buf = pre + head + b"body-bytes"
            start = len(pre)
            # a head that arrives in two pieces: first cut inside it, then whole (as a
            # stream calls again with more bytes)
            cut = len(pre) + rng.randrange(1, len(head)) if rng.random() < 0.2 else None
            answers = []
            for state, rq, rs, reset in pairs:
                p = rq if is_req else rs
                if reset:
                    p.memo, p.memo_wait = _NO_MEMO, 0
                answer = []
                answers.append(answer)
                if cut is not None:
                    st, frame, end = p.parse(buf[:cut], start, 1000 + i)
                    answer.append((st, end))
                    if st is not NEEDS_MORE_DATA:
                        continue
                m0 = p.memo
                st, frame, end = p.parse(buf, start, 1000 + i)
                if (m0 is not _NO_MEMO and p.memo is m0 and st is SUCCESS
                        and m0[1] in head and (is_req or head.startswith(m0[1]))):
                    hits[is_req] += 1
                if frame is not None:
                    frame = (type(frame).__name__,) + tuple(
                        getattr(frame, a) for a in type(frame).__slots__)
                answer.append((st, frame, end, p.chunked, list(state.methods),
                               state.upgraded, state.switch_to))
                if p.chunked:          # the next head starts afresh: no chunk framing
                    p.chunked = False
                if state.upgraded:
                    state.upgraded, state.switch_to = False, None
            assert answers[0] == answers[1], (round_, i, buf)
    # the memo answered: the pools are small enough for heads to repeat
    assert min(hits) > 50, hits


def test_frames_made_inline():
    """The hot paths make HttpRequest, HttpResponse and Record without calling their
    __init__ (object.__new__, then the slots): each such frame and record has every slot
    set, to what its constructor would set, on the memo's path and off it."""
    from protocol.base import Record
    from protocol.http.parse import HttpParser
    from protocol.http.types import HttpRequest, HttpResponse

    def row(obj):
        return (type(obj),) + tuple(getattr(obj, a) for a in type(obj).__slots__)

    state = PROTOCOL.new_state()
    rq = HttpParser(MessageType.REQUEST, state)
    rs = HttpParser(MessageType.RESPONSE, state)
    reqs, resps = [], []
    waits = set()
    for i in range(12):                  # enough for the memos to answer
        q = req("POST" if i % 5 == 0 else "GET", "/a?i=%d" % i,
                b"X-Same: 1\r\n" + (b"Content-Length: 2\r\n" if i % 5 == 0 else b""),
                b"xy" if i % 5 == 0 else b"")
        st, frame, end = rq.parse(q, 0, 100 + i)
        assert end == len(q) and row(frame) == row(HttpRequest(
            100 + i, "POST" if i % 5 == 0 else "GET", "/a?i=%d" % i, 1))
        reqs.append(frame)
        waits.add((True, rq.memo_wait))
        r = resp(404 if i % 4 == 0 else 200, b"X-Same: 1\r\n", b"body")
        st, frame, end = rs.parse(r, 0, 200 + i)
        assert end == len(r) and row(frame) == row(HttpResponse(
            200 + i, 404 if i % 4 == 0 else 200, 1))
        resps.append(frame)
        waits.add((False, rs.memo_wait))
    assert {(True, -2), (False, -2)} <= waits       # the memos answered
    recs = PROTOCOL.stitch(reqs, resps, state)
    assert [row(r) for r in recs] == [row(Record(
        100 + i, 200 + i, "POST /a" if i % 5 == 0 else "GET /a",
        "POST" if i % 5 == 0 else "GET", "/a?i=%d" % i, "404" if i % 4 == 0 else "200",
        ERR_CLIENT if i % 4 == 0 else ERR_NONE)) for i in range(12)]


def test_api_cache_equals_api_name():
    """stitch caches API names by (method, target), and a target with a query by its path:
    the same names as api_name of each request, whatever the cache held before."""
    from protocol.http.parse import HttpParser
    from protocol.http.stitch import _API_CACHE, api_name

    rng = random.Random(5)
    targets = ["/a", "/a?x=1", "/a?y", "/b?", "?q", "/a/b?c?d", "*", "/" + "l" * 80 + "?z"]
    state = PROTOCOL.new_state()
    rq = HttpParser(MessageType.REQUEST, state)
    rs = HttpParser(MessageType.RESPONSE, state)
    for round_ in range(3):
        if round_ == 2:
            _API_CACHE.clear()
        picks = [(rng.choice(["GET", "PUT"]), rng.choice(targets)) for _ in range(40)]
        reqs, resps = [], []
        for i, (m, t) in enumerate(picks):
            reqs.append(rq.parse(req(m, t), 0, 2 * i)[1])
            resps.append(rs.parse(resp(200), 0, 2 * i + 1)[1])
        got = [r.api for r in PROTOCOL.stitch(reqs, resps, state)]
        assert got == [api_name(m, t) for m, t in picks]
