#!/usr/bin/env python3
"""Python ssl HTTPS/1.1 server and client (OpenSSL through the ssl module).

The ssl module on Debian 12 calls SSL_read_ex/SSL_write_ex, so these exercise
the *_ex uprobes. Same routes and summary as the Go apps:

  pyssl.py server --addr 127.0.0.1:0 --cert server.crt --key server.key
      /status/<code> -> that status, /bytes/<n> -> n bytes, else 200 "ok".
      Prints "listening HOST:PORT" once ready (port 0 = pick a free one).
  pyssl.py client -n 10 --url https://127.0.0.1:8443/status/200
  pyssl.py client --urls urls.txt
      One keep-alive connection per host:port, certificate not verified.
      Prints "requests=N errors=E bytes=B status=<code>:<count>,...".
  pyssl.py cert DIR
      Writes DIR/server.crt and DIR/server.key (self-signed, 127.0.0.1).
"""
import argparse
import http.client
import http.server
import os
import socketserver
import ssl
import sys
import urllib.parse
from collections import Counter


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/status/"):
            try:
                code = int(path[len("/status/"):])
                assert 100 <= code <= 999
            except (ValueError, AssertionError):
                return self._send(400, b"bad status code\n")
            return self._send(code, b"status %d\n" % code)
        if path.startswith("/bytes/"):
            try:
                n = int(path[len("/bytes/"):])
                assert 0 <= n <= 64 << 20
            except (ValueError, AssertionError):
                return self._send(400, b"bad byte count\n")
            return self._send(200, b"x" * n, "application/octet-stream")
        return self._send(200, b"ok\n")

    do_HEAD = do_GET

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self.do_GET()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(args):
    host, port = args.addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    httpd = Server((host, int(port)), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    h, p = httpd.server_address[:2]
    print("listening %s:%d" % (h, p), flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def client(args):
    urls = []
    if args.urls:
        with open(args.urls) as f:
            urls += [l.strip() for l in f if l.strip() and not l.startswith("#")]
    if args.url:
        urls += [args.url] * args.n
    if not urls:
        print("usage: pyssl.py client (-n N --url URL | --urls FILE)", file=sys.stderr)
        return 2
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    conns = {}
    codes, errors, total = Counter(), 0, 0
    for u in urls:
        parts = urllib.parse.urlsplit(u)
        key = parts.netloc
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        for attempt in (0, 1):
            conn = conns.get(key)
            if conn is None:
                conn = conns[key] = http.client.HTTPSConnection(parts.hostname, parts.port or 443,
                                                                context=ctx, timeout=10)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                total += len(resp.read())
                codes[resp.status] += 1
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conns.pop(key, None)
                if attempt:
                    errors += 1
                    print(exc, file=sys.stderr)
    for c in conns.values():
        c.close()
    print("requests=%d errors=%d bytes=%d status=%s" % (
        len(urls), errors, total, ",".join("%d:%d" % kv for kv in sorted(codes.items()))),
        flush=True)
    return 1 if errors else 0


def cert(args):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
    from tlscert import make_self_signed
    c, k = make_self_signed(args.dir)
    print(c)
    print(k)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--addr", "-addr", default="127.0.0.1:8443")
    s.add_argument("--cert", "-cert", required=True)
    s.add_argument("--key", "-key", required=True)
    c = sub.add_parser("client")
    c.add_argument("-n", type=int, default=1)
    c.add_argument("--url", "-url")
    c.add_argument("--urls", "-urls")
    g = sub.add_parser("cert")
    g.add_argument("dir")
    args = ap.parse_args(argv)
    return {"server": serve, "client": client, "cert": cert}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
