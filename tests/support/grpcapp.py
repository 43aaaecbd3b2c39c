"""A real gRPC server and client (grpcio, generic handlers on raw bytes: no protobuf needed)
for the HTTP/2 end-to-end tests.

    python3 -m tests.support.grpcapp server [PORT [CERT KEY]]
                                   # prints its port, serves until stdin ends (0: any port;
                                   # with CERT and KEY over TLS)
    python3 -m tests.support.grpcapp client PORT [CERT [ROUNDS [THREADS]]]
                                   # runs CALLS ROUNDS times (default 1) in each of THREADS
                                   # threads (default 1) on one channel, prints "done"
                                   # (CERT: the CA, "-": in the clear)

Methods of service ``test.Svc``: ``Unary`` (the request bytes choose the status: b"ok",
or a status name such as b"NOT_FOUND"), ``ServerStream`` (4 responses), ``ClientStream``
(reads all, answers once), ``Bidi`` (echoes each; a request b"ABORT" ends the call with
UNAVAILABLE).
"""
from __future__ import annotations

import sys
import threading
from concurrent import futures

import grpc

SERVICE = "test.Svc"
# (method, kind, requests, expected grpc status code name)
CALLS = (
    [("Unary", "unary", [b"ok"], "OK")] * 5 +
    [("Unary", "unary", [b"NOT_FOUND"], "NOT_FOUND")] * 2 +
    [("Unary", "unary", [b"INVALID_ARGUMENT"], "INVALID_ARGUMENT")] +
    [("Unary", "unary", [b"INTERNAL"], "INTERNAL")] * 2 +
    [("ServerStream", "server_stream", [b"x"], "OK")] * 3 +
    [("ClientStream", "client_stream", [b"a", b"b", b"c"], "OK")] * 2 +
    [("Bidi", "bidi", [b"1", b"2", b"3"], "OK")] * 2 +
    [("Bidi", "bidi", [b"1", b"ABORT"], "UNAVAILABLE")]
)


def _unary(req, ctx):
    if req != b"ok":
        ctx.abort(getattr(grpc.StatusCode, req.decode()), "asked for it")
    return b"fine"


def _server_stream(req, ctx):
    for i in range(4):
        yield b"r%d" % i


def _client_stream(it, ctx):
    return b"".join(it)


def _bidi(it, ctx):
    for m in it:
        if m == b"ABORT":
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "aborted")
        yield m


def serve(port=0, cert=None, key=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if cert is None:
        port = server.add_insecure_port("127.0.0.1:%d" % port)
    else:
        with open(cert, "rb") as f, open(key, "rb") as g:
            creds = grpc.ssl_server_credentials([(g.read(), f.read())])
        port = server.add_secure_port("127.0.0.1:%d" % port, creds)
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def _run_calls(ch, rounds, failures):
    for method, kind, reqs, want in CALLS * rounds:
        path = "/%s/%s" % (SERVICE, method)
        try:
            if kind == "unary":
                ch.unary_unary(path)(reqs[0], timeout=20)
            elif kind == "server_stream":
                list(ch.unary_stream(path)(reqs[0], timeout=20))
            elif kind == "client_stream":
                ch.stream_unary(path)(iter(reqs), timeout=20)
            else:
                list(ch.stream_stream(path)(iter(reqs), timeout=20))
            got = "OK"
        except grpc.RpcError as exc:
            got = exc.code().name
        if got != want:
            failures.append("%s: got %s, expected %s" % (path, got, want))
            return


def client(port, cert=None, rounds=1, threads=1):
    """CALLS `rounds` times in each of `threads` threads sharing one channel (one HTTP/2
    connection: concurrent streams, which gRPC's C core batches into long sendmsg
    iovec arrays)."""
    if cert is None:
        ch = grpc.insecure_channel("127.0.0.1:%d" % port)
    else:
        with open(cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        ch = grpc.secure_channel("localhost:%d" % port, creds)
    grpc.channel_ready_future(ch).result(timeout=20)
    failures = []
    workers = [threading.Thread(target=_run_calls, args=(ch, rounds, failures))
               for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    ch.close()
    if failures:
        sys.exit("; ".join(failures))
    print("done", flush=True)


if __name__ == "__main__":
    args = sys.argv[2:]
    if sys.argv[1] == "server":
        serve(int(args[0]) if args else 0, *args[1:3])
    else:
        cert = args[1] if len(args) > 1 and args[1] != "-" else None
        client(int(args[0]), cert, *(int(a) for a in args[2:4]))
