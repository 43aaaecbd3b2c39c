"""A minimal HTTP/1.1 keep-alive GET for the client processes of the end-to-end tests
(scripts run with ``python -c``; they import this with the checkout on sys.path).  Reads
the whole answer (Content-Length bodies) in 64 KiB recv calls."""
import sys


def get(s, path, host=b"t"):
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        d = s.recv(65536)
        if not d:
            sys.exit("closed")
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    n = int([l.split(b":")[1] for l in head.split(b"\r\n")
             if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        d = s.recv(65536)
        if not d:
            sys.exit("closed")
        body += d
    return head, body
