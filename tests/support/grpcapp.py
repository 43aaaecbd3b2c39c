"""A real gRPC server and client (grpcio, generic handlers on raw bytes: no protobuf needed)
for the HTTP/2 end-to-end tests.

    python3 -m tests.support.grpcapp server          # prints its port, serves until stdin ends
    python3 -m tests.support.grpcapp client PORT     # runs CALLS, prints "done"
    python3 -m tests.support.grpcapp client PORT CERT   # the same over TLS (CERT: the CA)

Methods of service ``test.Svc``: ``Unary`` (the request bytes choose the status: b"ok",
or a status name such as b"NOT_FOUND"), ``ServerStream`` (4 responses), ``ClientStream``
(reads all, answers once), ``Bidi`` (echoes each; a request b"ABORT" ends the call with
UNAVAILABLE).
"""
from __future__ import annotations

import sys
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


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


def client(port, cert=None):
    if cert is None:
        ch = grpc.insecure_channel("127.0.0.1:%d" % port)
    else:
        with open(cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        ch = grpc.secure_channel("localhost:%d" % port, creds)
    grpc.channel_ready_future(ch).result(timeout=20)
    for method, kind, reqs, want in CALLS:
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
            sys.exit("%s: got %s, expected %s" % (path, got, want))
    ch.close()
    print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        client(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
