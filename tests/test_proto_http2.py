"""HTTP/2 and gRPC parser on real captures, against tshark's decoding beside each one
(streams, methods, paths, statuses, grpc statuses), through --replay's pipeline
(pipeline/replay.py) and fed cut every way; HPACK with an unknown table; hostile input."""
import os
import random

import pytest

from pipeline.pcapfile import read_tcp_connections
from pipeline.replay import replay_records
from protocol.http2 import PROTOCOL
from protocol.http2.hpackdec import HpackDecoder
from tests.support import feed
from tests.support.tshark import FIXTURES, read_tsv, values

FILES = sorted(os.path.join(d, f) for d in ("http2", "grpc")
               for f in os.listdir(os.path.join(FIXTURES, d)) if f.endswith(("pcap", "pcapng")))


def _status(rec):
    return "RST" if rec.status.startswith("RST_") else rec.status


def expected(path):
    """(method, path, status) per stream, from tshark.  Documented exceptions: a stream
    the client reset before the server ended it has status "RST" (tshark shows the :status
    that crossed the reset); a stream whose header fields tshark could not decode
    (`<unknown>`, the HPACK table was not captured) has path "<unknown>"."""
    rows = read_tsv(path)
    client_port = {}
    for r in rows:
        if values(r, "http2.headers.method") or r.get("http.request.method"):
            client_port.setdefault(r["tcp.stream"], r["tcp.srcport"])
    streams = {}          # (tcp stream, sid) -> [method, path, status, grpc_status, rst]
    out = []
    for r in rows:
        ts = r["tcp.stream"]
        from_client = r["tcp.srcport"] == client_port.get(ts)
        if r.get("http.request.method"):
            if r.get("http.upgrade") == "h2c":
                streams[(ts, "1")] = [r["http.request.method"], r["http.request.uri"], None,
                                      None, False]
            else:
                out.append((r["http.request.method"], r["http.request.uri"], None))
            continue
        if r.get("http.response.code"):
            if r["http.response.code"] != "101":
                i = max(i for i, o in enumerate(out) if o[2] is None)
                out[i] = out[i][:2] + (r["http.response.code"],)
            continue
        sids, types, flags = (values(r, f) for f in ("http2.streamid", "http2.type",
                                                     "http2.flags"))
        methods = values(r, "http2.headers.method")
        paths = values(r, "http2.headers.path")
        if len(paths) != len(methods):
            paths = ["<unknown>"] * len(methods)
        statuses = values(r, "http2.headers.status")
        names, vals = values(r, "http2.header.name"), values(r, "http2.header.value")
        grpc = [v for n, v in zip(names, vals) if n == "grpc-status"]
        for sid, t, fl in zip(sids, types, flags):
            key = (ts, sid)
            fl = int(fl, 16)
            if t == "1" and from_client:
                streams[key] = [methods.pop(0), paths.pop(0), None, None, False]
            elif t == "1":
                st = streams[key]
                if st[2] is None and statuses:
                    st[2] = statuses.pop(0)
                if fl & 1 and grpc:
                    st[3] = grpc.pop(0)
            elif t == "3" and from_client and key in streams:
                streams[key][4] = True
    for st in streams.values():
        out.append((st[0], st[1], "RST" if st[4] else st[3] or st[2]))
    return sorted(out)


def got(recs):
    return sorted((r.method, r.path, _status(r)) for r in recs)


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_replay_equals_tshark(path):
    recs = [r for _, r in replay_records(os.path.join(FIXTURES, path))]
    assert got(recs) == expected(os.path.join(FIXTURES, path))
    for r in recs:
        if r.path.startswith("/") and "grpc" in path:
            assert r.api == r.path             # gRPC: the method path


@pytest.mark.parametrize("path", [p for p in FILES if "range" not in p], ids=os.path.basename)
def test_cut_every_way(path):
    conns = read_tcp_connections(os.path.join(FIXTURES, path))
    for c in conns:
        feed.assert_cut_every_way(PROTOCOL, c.chunks, 20000, (1, 5, 9, 10, 17, 100))


def test_grpc_errors_and_statuses():
    """Unary and streaming fixtures: grpc-status 0 is no error; the error split follows
    the code table (README)."""
    from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER
    from protocol.http2.stitch import GRPC_CLIENT
    recs = [r for _, r in replay_records(os.path.join(FIXTURES, "grpc",
                                                      "Bidi_Streaming.pcapng"))]
    assert [(r.api, r.status, r.err) for r in recs] == [
        ("/greet.GreetService/GreetEveryone", "0", ERR_NONE)]
    assert 5 in GRPC_CLIENT and 13 not in GRPC_CLIENT and ERR_CLIENT != ERR_SERVER


def test_rst_stream_is_a_client_error():
    from protocol.base import ERR_CLIENT
    recs = [r for _, r in replay_records(os.path.join(FIXTURES, "http2",
                                                      "dns_over_https.pcap"))]
    assert [(r.status, r.err) for r in recs if r.status.startswith("RST")] == [
        ("RST_CANCEL", ERR_CLIENT)]


def test_unknown_table_recovers_and_is_never_wrong():
    """A connection seen from its middle: the known newest entries decode, older ones
    are <unknown>; a table size update to 0 makes the table complete again."""
    from hpack import Encoder
    enc = Encoder()
    h1 = enc.encode([(":method", "GET"), (":path", "/a"), ("x-old", "1")])
    h2 = enc.encode([(":method", "GET"), (":path", "/b")])
    h3 = enc.encode([(":method", "GET"), (":path", "/a")])   # /a: indexed, from h1
    h4 = enc.encode([(":method", "GET"), (":path", "/b")])   # /b: indexed, from h2
    d = HpackDecoder(complete=False)
    fields, unknown = d.decode(h2, 0, len(h2))     # h1 was never seen
    assert fields[b":path"] == b"/b" and unknown == 0
    fields, unknown = d.decode(h3, 0, len(h3))
    assert b":path" not in fields and unknown == 1            # older entry: not guessed
    fields, unknown = d.decode(h4, 0, len(h4))
    assert fields[b":path"] == b"/b"                           # newest entries: known
    enc.header_table_size = 0
    h5 = enc.encode([(":method", "GET"), (":path", "/c")])
    enc.header_table_size = 4096
    h6 = enc.encode([(":method", "GET"), (":path", "/c")])
    h7 = enc.encode([(":method", "GET"), (":path", "/c")])
    for h in (h5, h6, h7):
        fields, unknown = d.decode(h, 0, len(h))
        assert fields[b":path"] == b"/c" and unknown == 0
    assert d.complete


def test_hpack_matches_the_hpack_package_on_random_headers():
    from hpack import Decoder, Encoder
    rng = random.Random(7)
    enc, ref, mine = Encoder(), Decoder(), HpackDecoder(complete=True)
    for i in range(300):
        hdrs = [(":method", rng.choice(["GET", "POST", "PUT"])),
                (":path", "/p/%d" % rng.randrange(50)),
                ("content-type", rng.choice(["application/grpc", "text/html"])),
                ("x-%d" % rng.randrange(30), "v" * rng.randrange(200))]
        if i % 50 == 49:
            enc.header_table_size = rng.choice([0, 256, 4096])
        b = enc.encode(hdrs)
        want = {k.encode(): v.encode() for k, v in ref.decode(b)}
        fields, unknown = mine.decode(b, 0, len(b))
        assert unknown == 0
        assert fields == {k: v for k, v in want.items() if k in fields or k in (
            b":method", b":path", b"content-type")}


def _frame(t, flags, sid, payload):
    return len(payload).to_bytes(3, "big") + bytes((t, flags)) + sid.to_bytes(4, "big") + \
        payload


def test_hostile_input_keeps_parsing_and_next_requests_are_exact():
    """Random frames, absurd lengths, HPACK bombs, CONTINUATION floods; then real
    requests on a new connection are exact, and the parser never raised."""
    from hpack import Encoder
    rng = random.Random(3)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
    enc = Encoder()
    big = enc.encode([("x-bomb", "A" * 4000)])
    bomb = b"\xbe" * 60000            # 60000 references to that 4 KB entry
    chunks = [("c2s", 1, preface + _frame(1, 4, 1, big)),
              ("c2s", 2, _frame(1, 4, 3, bomb[:16000])),
              ("c2s", 3, _frame(1, 0, 5, b"")),
              ]
    for i in range(5000):             # CONTINUATION flood
        chunks.append(("c2s", 4 + i, _frame(9, 0, 5, b"\x00" * 20)))
    chunks.append(("c2s", 6000, b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"z" * 100))
    for i in range(300):
        chunks.append((rng.choice(("c2s", "s2c")), 7000 + i,
                       bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))))
    res = feed.run(PROTOCOL, chunks)
    assert res.exceptions == 0
    st = res.state
    assert sum(e[2] for e in st.dec[0].known) <= 65536 and len(st.streams) <= 4096
    # then real requests on a fresh connection
    e = Encoder()
    good = [("c2s", 1, preface), ("s2c", 2, _frame(4, 0, 0, b""))]
    for i, sid in enumerate((1, 3, 5)):
        good.append(("c2s", 10 + i, _frame(1, 5, sid, e.encode(
            [(":method", "GET"), (":path", "/ok/%d" % sid)]))))
    r = Encoder()
    for i, sid in enumerate((5, 1, 3)):
        good.append(("s2c", 20 + i, _frame(1, 4, sid, r.encode([(":status", "200")])) +
                     _frame(0, 1, sid, b"hi")))
    res = feed.run(PROTOCOL, good)
    assert sorted((x.path, x.status) for x in res.records) == [
        ("/ok/1", "200"), ("/ok/3", "200"), ("/ok/5", "200")]


def test_padded_headers_without_room_for_the_pad_length():
    """Fuzz finding: an empty HEADERS (or PUSH_PROMISE) frame flagged PADDED, alone in a
    read, made the parser read the pad length past the frame (IndexError); it is a broken
    frame, skipped, and the stream goes on."""
    from hpack import Encoder
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
    e, r = Encoder(), Encoder()
    good = _frame(1, 5, 3, e.encode([(":method", "GET"), (":path", "/ok")]))
    for t in (1, 5):
        res = feed.run(PROTOCOL, [("c2s", 1, preface), ("c2s", 2, _frame(t, 0x0C, 1, b"")),
                                  ("c2s", 3, good),
                                  ("s2c", 4, _frame(4, 0, 0, b"") + _frame(1, 5, 3, r.encode(
                                      [(":status", "200")])))])
        assert res.exceptions == 0
        assert [(x.method, x.path, x.status) for x in res.records if x.resp_ts] == [
            ("GET", "/ok", "200")]
        e, r = Encoder(), Encoder()
        good = _frame(1, 5, 3, e.encode([(":method", "GET"), (":path", "/ok")]))
