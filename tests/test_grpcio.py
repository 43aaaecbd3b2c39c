"""A real gRPC server and client (grpcio, tests/support/grpcapp.py) in the clear: unary,
server-streaming, client-streaming and bidi calls, some with non-OK statuses.  The bytes
are recorded by a TCP relay between them (each read as one chunk, in order) and fed
through the pipeline's streams and the HTTP/2 parser: exact calls per method, statuses,
and the error split by the gRPC code table.

(With the probe attached, the same calls: tests/test_e2e_grpcio.py.)"""
import collections
import os
import socket
import subprocess
import sys
import threading
import time

from protocol.base import ERR_CLIENT, ERR_NONE, ERR_SERVER
from protocol.http2 import PROTOCOL
from tests.support import feed, grpcapp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_CODES = {"NOT_FOUND", "INVALID_ARGUMENT"}
STATUS = {"OK": "0", "NOT_FOUND": "5", "INVALID_ARGUMENT": "3", "INTERNAL": "13",
          "UNAVAILABLE": "14"}


def _record_grpc_session():
    srv = subprocess.Popen([sys.executable, "-m", "tests.support.grpcapp", "server"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        sport = int(srv.stdout.readline())
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        chunks, lock = [], threading.Lock()

        def pump(a, b, d):
            while True:
                x = a.recv(65536)
                if not x:
                    b.shutdown(socket.SHUT_WR)
                    return
                with lock:
                    chunks.append((d, time.monotonic_ns(), x))
                b.sendall(x)

        def accept():
            c, _ = ls.accept()
            s = socket.create_connection(("127.0.0.1", sport))
            for a, b, d in ((c, s, "c2s"), (s, c, "s2c")):
                threading.Thread(target=pump, args=(a, b, d), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        subprocess.run([sys.executable, "-m", "tests.support.grpcapp", "client",
                        str(ls.getsockname()[1])], cwd=ROOT, check=True, timeout=120)
        time.sleep(0.3)
        with lock:
            return list(chunks)
    finally:
        srv.communicate("", timeout=30)


def test_grpcio_calls_statuses_and_errors_exact():
    chunks = _record_grpc_session()
    assert chunks
    res = feed.run(PROTOCOL, chunks)
    assert res.exceptions == 0
    want = collections.Counter()
    for method, _, _, code in grpcapp.CALLS:
        err = ERR_NONE if code == "OK" else ERR_CLIENT if code in CLIENT_CODES else ERR_SERVER
        want[("/%s/%s" % (grpcapp.SERVICE, method), STATUS[code], err)] += 1
    got = collections.Counter((r.api, r.status, r.err) for r in res.records)
    assert got == want
    assert all(r.req_ts and r.resp_ts >= r.req_ts for r in res.records)
    # streaming calls: the latency runs to the end of the response stream
    bidi = [r for r in res.records if r.api.endswith("/Bidi")]
    assert bidi and all(r.latency > 0 for r in bidi)
    # cut differently, the same records
    feed.assert_cut_every_way(PROTOCOL, chunks, 0, (1, 9, 100))
