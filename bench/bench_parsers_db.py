#!/usr/bin/env python3
"""Parse rate of the Redis, PostgreSQL, MySQL, Kafka, MongoDB, RocketMQ and DNS parsers on
recorded traffic.

Replays the TCP conversations of the fixture captures (fixtures/{redis,postgresql,mysql,
kafka,mongodb,rocketmq,dns}; DNS's UDP datagrams framed with their length, as
pipeline/udp.py feeds them)
through pipeline.stream.DataStream (one per direction) and the protocol's stitcher, as the
probe does, many times over, and prints one line per protocol:

    redis parse rate: N messages/s

where messages = request frames + response frames produced.  Timings only, no thresholds.

examples:
    .venv/bin/python bench/bench_parsers_db.py
    .venv/bin/python bench/bench_parsers_db.py --seconds 3 --fixtures /path/to/fixtures
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import struct  # noqa: E402

from protocol.dns import PROTOCOL as DNS  # noqa: E402
from protocol.kafka import PROTOCOL as KAFKA  # noqa: E402
from protocol.mongo import PROTOCOL as MONGO  # noqa: E402
from protocol.mysql import PROTOCOL as MYSQL  # noqa: E402
from protocol.rocketmq import PROTOCOL as ROCKETMQ  # noqa: E402
from protocol.pgsql import PROTOCOL as PGSQL  # noqa: E402
from protocol.redis import PROTOCOL as REDIS  # noqa: E402
from tests.support import feed  # noqa: E402
from tests.support.pcap import read_tcp_connections, read_udp_datagrams  # noqa: E402

CASES = (("redis", REDIS, "redis", (6379, 6380)),
         ("pgsql", PGSQL, "postgresql", (5432, 8000)),
         ("mysql", MYSQL, "mysql", (3306, 30130)),
         ("kafka", KAFKA, "kafka", (9092, 36333)),
         ("mongo", MONGO, "mongodb", (27017, 3717)),
         ("rocketmq", ROCKETMQ, "rocketmq", (10911, 10909, 9876)),
         ("dns", DNS, "dns", (53,)))


def load(fixtures, subdir, ports):
    convs = []
    for path in sorted(glob.glob(os.path.join(fixtures, subdir, "*.pcap*"))):
        if path.endswith(".tsv"):
            continue
        convs.extend(c.chunks for c in read_tcp_connections(path, server_ports=ports))
        if subdir == "dns":
            flows = {}
            for ts, src, sport, dst, dport, payload, _ in read_udp_datagrams(path):
                d, key = ("s2c", (dst, dport)) if sport == 53 else ("c2s", (src, sport))
                flows.setdefault(key, []).append(
                    (d, ts, struct.pack(">H", len(payload)) + payload))
            convs.extend(flows.values())
    return convs


def bench(proto, convs, seconds):
    messages = 0
    rounds = 0
    start = time.perf_counter()
    while True:
        for chunks in convs:
            res = feed.run(proto, chunks)
            messages += res.req_frames + res.resp_frames
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return messages, rounds, elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("examples:")[1])
    ap.add_argument("--seconds", type=float, default=1.5, help="time per protocol (1.5)")
    ap.add_argument("--fixtures", default=os.environ.get("L7PROBE_FIXTURES",
                                                         "/work/shared/fixtures"))
    args = ap.parse_args()
    for name, proto, subdir, ports in CASES:
        convs = load(args.fixtures, subdir, ports)
        if not convs:
            print("%s parse rate: no fixtures under %s" % (name, args.fixtures))
            continue
        messages, rounds, elapsed = bench(proto, convs, args.seconds)
        nbytes = rounds * sum(feed.total_len(c) for c in convs)
        print("%s parse rate: %d messages/s (%.1f MB/s, %d replays of %d connections)"
              % (name, messages / elapsed, nbytes / elapsed / 1e6, rounds, len(convs)))


if __name__ == "__main__":
    main()
