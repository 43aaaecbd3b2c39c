"""An HTTP/1.1 keep-alive server that answers ``GET /d/<ms>`` after sleeping <ms>
milliseconds (200, a 2-byte body) and anything else at once with 404.  No Debian package
serves fixed delays per path; this one is a real server on a real loopback socket, in a
process of its own (so the probe can watch its pid alone).

    python3 delay_server.py        # prints its port, serves until killed

One thread per connection; requests are read up to their blank line (no bodies).
"""
import socket
import sys
import threading
import time


def serve(conn):
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                d = conn.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1] if len(parts) > 1 else b"/"
            if path.startswith(b"/d/") and path[3:].isdigit():
                time.sleep(int(path[3:]) / 1000.0)
                resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            else:
                resp = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
            conn.sendall(resp)


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    s.listen(64)
    print(s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
