"""End to end, for real: nginx on loopback, the probe attached with BPF, known traffic from
curl and Python clients, and the exact records the probe prints.

One probe run serves the whole module: servers and a pre-existing keep-alive client are set
up first, then the probe starts, then every scenario's traffic runs, then the probe is
stopped with SIGINT (final partial report) and each test checks its scenario's records.
"""
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.probe import ProbeRun, parse_line, total
from tests.support.servers import nginx

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="BPF needs root")

ROUNDS = 3
# (curl options for one request, api, status)
MIX = [
    ([], "GET /", 200),
    ([], "GET /status/201", 201),
    ([], "GET /status/404", 404),
    ([], "GET /status/500", 500),
    ([], "GET /bytes/1m", 200),
    (["-I"], "HEAD /", 200),
    (["-d", "x" * 3000], "POST /echo", 201),
]
PIPELINED = ["/status/200", "/status/404", "/status/201", "/status/500", "/status/503",
             "/", "/status/400", "/status/204", "/status/301", "/status/403"]

KEEPALIVE_CLIENT = textwrap.dedent(r"""
    import socket, sys
    port = int(sys.argv[1])
    s = socket.create_connection(("127.0.0.1", port))
    def req(path):
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            d = s.recv(65536)
            if not d:
                sys.exit("connection closed")
            data += d
        head, _, body = data.partition(b"\r\n\r\n")
        n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        while len(body) < n:
            d = s.recv(65536)
            if not d:
                sys.exit("connection closed")
            body += d
    req("/")
    print(s.getsockname()[1], flush=True)
    sys.stdin.readline()               # the probe is running now
    for i in range(5):
        req("/status/404" if i == 2 else "/")
    print("done", flush=True)
    sys.stdin.readline()
""")

BYTES_CLIENT = textwrap.dedent(r"""
    import socket, sys
    port = int(sys.argv[1])
    sent = recv = 0
    s = socket.create_connection(("127.0.0.1", port))
    for path in ["/", "/status/404", "/bytes/1m", "/", "/status/201"]:
        msg = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bytes\r\nUser-Agent: t\r\n\r\n"
        s.sendall(msg); sent += len(msg)
        data = b""
        while b"\r\n\r\n" not in data:
            d = s.recv(65536); recv += len(d); data += d
            if not d: sys.exit("connection closed")
        head, _, body = data.partition(b"\r\n\r\n")
        n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        while len(body) < n:
            d = s.recv(65536); recv += len(d); body += d
            if not d: sys.exit("connection closed")
    s.close()
    print(sent, recv, flush=True)
""")

FILE_WRITER = textwrap.dedent(r"""
    import os, sys, socket
    path = sys.argv[1]
    for i in range(20):
        with open(path, "wb") as f:
            f.write(b"GET / HTTP/1.1\r\nHost: file\r\n\r\n")
        with open(path, "rb") as f:
            f.read()
    r, w = os.pipe()
    os.write(w, b"GET / HTTP/1.1\r\nHost: pipe\r\n\r\n"); os.read(r, 100)
    a, b = socket.socketpair()
    a.sendall(b"GET / HTTP/1.1\r\nHost: unix\r\n\r\n"); b.recv(100)
    print("ok", flush=True)
""")


def _pipelined(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: p\r\n\r\n" % p.encode() for p in PIPELINED))
    data = b""
    deadline = time.time() + 10
    while data.count(b"HTTP/1.1 ") < len(PIPELINED) and time.time() < deadline:
        data += s.recv(65536)
    time.sleep(0.2)
    s.close()
    return data


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    with nginx() as mix, nginx() as pipe, nginx() as keep, nginx() as nbytes:
        keep_client = subprocess.Popen([sys.executable, "-c", KEEPALIVE_CLIENT, str(keep.port)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        keep_cport = int(keep_client.stdout.readline())
        try:
            probe = ProbeRun(["-P", "1"])
        except Exception:
            keep_client.kill()
            keep_client.wait()
            raise
        try:
            time.sleep(0.5)
            res = {"mix": mix, "pipe": pipe, "keep": keep, "bytes": nbytes,
                   "keep_client": keep_client, "keep_cport": keep_cport}
            # scenario: curl with a known mix, all requests in one curl process
            cmd = ["curl", "-s", "-o", "/dev/null"]
            first = True
            for _ in range(ROUNDS):
                for opts, api, _status in MIX:
                    path = api.split(" ", 1)[1]
                    if not first:
                        cmd += ["--next", "-s", "-o", "/dev/null"]
                    first = False
                    cmd += opts + [mix.url(path)]
            curl = subprocess.run(cmd, timeout=60)
            assert curl.returncode == 0
            res["curl_pid"] = None
            # scenario: pipelining
            res["pipelined"] = _pipelined(pipe.port)
            # scenario: pre-existing keep-alive connection
            keep_client.stdin.write("go\n")
            keep_client.stdin.flush()
            assert keep_client.stdout.readline().strip() == "done"
            # scenario: exact bytes
            out = subprocess.run([sys.executable, "-c", BYTES_CLIENT, str(nbytes.port)],
                                 capture_output=True, text=True, timeout=60, check=True)
            res["bytes_sent"], res["bytes_recv"] = map(int, out.stdout.split())
            # scenario: a file, a pipe and a unix socket carrying HTTP-looking bytes
            fw = subprocess.Popen([sys.executable, "-c", FILE_WRITER, str(tmp / "f.txt")],
                                  stdout=subprocess.PIPE, text=True)
            assert fw.communicate(timeout=30)[0].strip() == "ok"
            res["file_writer_pid"] = fw.pid
            res["curl_cmd_pid"] = curl  # for reference
            time.sleep(1.5)
            keep_client.stdin.write("bye\n")
            keep_client.stdin.flush()
            keep_client.wait(10)
            res["mix_pids"] = set(mix.pids())
            res["pipe_pids"] = set(pipe.pids())
            res["keep_pids"] = set(keep.pids())
            res["bytes_pids"] = set(nbytes.pids())
            res["keep_client_pid"] = keep_client.pid
        finally:
            if keep_client.poll() is None:
                keep_client.kill()
                keep_client.wait()
            rc = probe.stop()
        res["rc"] = rc
        res["probe"] = probe
        yield res


def _rows(run, table, port, role):
    return [r for r in run["probe"].records(table)
            if r["server_port"] == str(port) and r["l7_role"] == role and r["protocol"] == "http"]


def test_probe_exits_cleanly(run):
    assert run["rc"] == 0, run["probe"].err_lines[-10:]
    assert not any("Traceback" in l for l in run["probe"].err_lines)


def test_curl_mix_server_side(run):
    n = ROUNDS * len(MIX)
    errors = ROUNDS * sum(1 for _, _, s in MIX if s >= 400)
    rows = _rows(run, "l7_rpc", run["mix"].port, "server")
    assert rows, run["probe"].lines[-20:]
    assert {int(r["tgid"]) for r in rows} <= run["mix_pids"]
    assert all(r["l4_role"] == "tcp_server" for r in rows)
    assert total(rows, "req_count") == n
    assert total(rows, "resp_count") == n
    assert total(rows, "err_count") == errors


def test_curl_mix_client_side(run):
    n = ROUNDS * len(MIX)
    rows = _rows(run, "l7_rpc", run["mix"].port, "client")
    tgids = {r["tgid"] for r in rows}
    assert len(tgids) == 1          # one curl process
    assert all(r["l4_role"] == "tcp_client" for r in rows)
    assert total(rows, "req_count") == n
    assert total(rows, "resp_count") == n
    assert total(rows, "err_count") == ROUNDS * 2


@pytest.mark.parametrize("role", ["server", "client"])
def test_curl_mix_api_rows(run, role):
    rows = _rows(run, "l7_rpc_api", run["mix"].port, role)
    by_api = {}
    for r in rows:
        a = by_api.setdefault(r["api"], [0, 0, 0, 0, 0])
        a[0] += int(r["req_count"])
        a[1] += int(r["resp_count"])
        a[2] += int(r["err_count"])
        a[3] += int(r["client_err_count"])
        a[4] += int(r["server_err_count"])
    expected = {}
    for _, api, status in MIX:
        e = expected.setdefault(api, [0, 0, 0, 0, 0])
        e[0] += ROUNDS
        e[1] += ROUNDS
        if status >= 400:
            e[2] += ROUNDS
            e[3 if status < 500 else 4] += ROUNDS
    assert by_api == expected


def test_pipelined_requests_paired_in_order(run):
    assert run["pipelined"].count(b"HTTP/1.1 ") == len(PIPELINED)
    rows = _rows(run, "l7_rpc_api", run["pipe"].port, "server")
    got = {}
    for r in rows:
        if int(r["req_count"]):
            got.setdefault(r["api"], []).append((int(r["req_count"]), int(r["err_count"]),
                                                 int(r["client_err_count"]),
                                                 int(r["server_err_count"])))
    expected = {}
    for p in PIPELINED:
        code = int(p.rsplit("/", 1)[1]) if p.startswith("/status/") else 200
        expected["GET " + p] = [(1, int(code >= 400), int(400 <= code < 500), int(code >= 500))]
    assert got == expected
    rpc = _rows(run, "l7_rpc", run["pipe"].port, "server")
    assert total(rpc, "req_count") == len(PIPELINED) == total(rpc, "resp_count")


def test_keepalive_connection_opened_before_start(run):
    port = run["keep"].port
    client = [r for r in _rows(run, "l7_rpc", port, "client")
              if r["tgid"] == str(run["keep_client_pid"])]
    assert client, "no client rows for the pre-existing connection"
    for r in client:
        assert (r["client_ip"], r["server_ip"], r["l4_role"]) == \
            ("127.0.0.1", "127.0.0.1", "tcp_client")
    assert total(client, "req_count") == 5
    assert total(client, "err_count") == 1
    server = _rows(run, "l7_rpc", port, "server")
    assert server
    for r in server:
        assert (r["client_ip"], r["server_ip"], r["l4_role"]) == \
            ("127.0.0.1", "127.0.0.1", "tcp_server")
        assert int(r["tgid"]) in run["keep_pids"]
    assert total(server, "req_count") == 5


def test_file_pipe_unix_socket_never_reported(run):
    pid = str(run["file_writer_pid"])
    assert not [l for l in run["probe"].lines if l.startswith("|") and
                parse_line(l)[1]["tgid"] == pid]


def test_link_bytes_equal_socket_bytes(run):
    rows = _rows(run, "l7_link", run["bytes"].port, "server")
    assert rows
    assert total(rows, "bytes_recv") == run["bytes_sent"]
    assert total(rows, "bytes_sent") == run["bytes_recv"]
    client = _rows(run, "l7_link", run["bytes"].port, "client")
    assert total(client, "bytes_sent") == run["bytes_sent"]
    assert total(client, "bytes_recv") == run["bytes_recv"]


HISTO = re.compile(r"^7 10000000 (\d+) 50000000 (\d+) 100000000 (\d+) 500000000 (\d+) "
                   r"1000000000 (\d+) 3000000000 (\d+) 10000000000 (\d+) (\d+) (\d+)$")


def test_every_line_passes_gopher_ingest_rules(run):
    lines = [l for l in run["probe"].lines if l.startswith("|")]
    assert len(lines) > 20
    for line in lines:
        assert len(line.encode()) + 1 <= 8191
        table, rec = parse_line(line)      # field count == meta's
        assert 1 <= len(table) <= 31
        assert rec["tgid"] != ""
        assert all(v != "" and "\0" not in v for v in rec.values())
        if "latency" in rec and table != "l7_trace":
            m = HISTO.match(rec["latency"])
            assert m, rec["latency"]
            cum = [int(x) for x in m.groups()[:7]]
            assert cum == sorted(cum)
    # logs never go to stdout in a manual run
    assert all(l.startswith("|") for l in run["probe"].lines if l)
