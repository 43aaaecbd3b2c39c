"""Play a capture's TCP conversations over real loopback sockets, so that the BPF path sees
them as a server and a client of this host would.

For each connection of the capture (``pipeline.pcapfile.read_tcp_connections``): a listening
socket on 127.0.0.1 (a free port), a client socket connected to it, then the chunks in the
capture's segment order: the side that sent a chunk writes it with one ``sendall`` (one
syscall, as the capture's segment), after having read every byte the other side sent before
it (each side waits for the other's bytes, so the order on the wire is the capture's),
reading them at most one captured segment per read (so that no read holds more bytes
than the probe's per-syscall capture).
Both sockets live in one process, which is both the client and the server of the probe's
records (``l7_role`` client and server links of the same tgid).

Use from another protocol's test (the probe attached, ``--pid`` the replayer's pid)::

    proc = start_replay([fixture("kafka", "x.pcap")])   # a child process, waits on stdin
    with ProbeRun(["--pid", str(proc.pid), ...]) as probe:
        finish_replay(proc)                              # plays, then exits
    # probe.records(...) now hold the capture's requests, on both sides

or in-process: ``play_connection(conn)`` for one ``pcapfile.Connection``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pipeline.pcapfile import C2S, read_tcp_connections  # noqa: E402

TIMEOUT = 20.0


def _recv_exactly(sock, n):
    got = 0
    while got < n:
        d = sock.recv(min(65536, n - got))
        if not d:
            raise ConnectionError("peer closed with %d byte(s) still expected" % (n - got))
        got += len(d)


_LISTENING = []


def play_connection(conn, host="127.0.0.1"):
    """Replay one connection; returns (client port, server port)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    cli = socket.create_connection((host, port), timeout=TIMEOUT)
    srv, _ = ls.accept()
    # kept open until the process ends: no later connection of the run gets this server
    # port (the tests tell the replayed files apart by it)
    _LISTENING.append(ls)
    srv.settimeout(TIMEOUT)
    for s in (cli, srv):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    chunks = conn.chunks
    errors = []

    def side(sock, mine):
        try:
            pending = []             # sizes of the other side's chunks not yet read
            for d, _, data in chunks:
                if d == mine:
                    for n in pending:      # one read per chunk at most: no read is
                        _recv_exactly(sock, n)     # bigger than a capture's segment
                    pending = []
                    sock.sendall(data)
                else:
                    pending.append(len(data))
            for n in pending:
                _recv_exactly(sock, n)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=side, args=(srv, "s2c"))
    t.start()
    side(cli, C2S)
    t.join(TIMEOUT)
    cport = cli.getsockname()[1]
    cli.close()
    srv.close()
    if errors:
        raise errors[0]
    return cport, port


def play_file(path):
    """Replay every connection of a capture, one after the other."""
    return [play_connection(c) for c in read_tcp_connections(path)]


def start_replay(paths):
    """A child process that replays ``paths`` once its stdin gets a line (start the probe
    on its pid first); see finish_replay."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from tests.support.replayer import play_file\n"
            "sys.stdin.readline()\n"
            "for p in sys.argv[1:]:\n"
            "    print(p, play_file(p), flush=True)\n" % ROOT)
    return subprocess.Popen([sys.executable, "-c", code] + list(paths), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def finish_replay(proc, timeout=120):
    out, _ = proc.communicate("go\n", timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("replayer failed (%d): %s" % (proc.returncode, out))
    return out
