"""Per-period statistics of links and APIs (upstream formulas, compat §5.5, §5.6, §2.6).

A *link* is upstream's aggregation key: all connections of one process to one server
ip:port (or, on the server side, from one client ip) with the same roles, protocol and TLS
flag.  Everything here is reset after each report.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import _count_elements    # C: Counter.update's loop (mapping, iterable)
from functools import partial
from math import ceil as _ceil
from math import log as _log

from pipeline.sketch import INV_LOG_GAMMA, MAX_KEY, MAX_NS, quantiles
from pipeline.stream import StreamStats
from protocol import registry
from protocol.base import ERR_CLIENT, ERR_SERVER

PERCENTILES = (0.5, 0.9, 0.99)      # latency_p50, latency_p90, latency_p99 (pipeline/sketch.py)

# upper bounds (ns) of the 7 latency buckets; a value v lands in bucket i iff
# bound[i-1] < v <= bound[i]; 0 and values above 10 s land in none (but count in the sum)
BOUNDS = (10_000_000, 50_000_000, 100_000_000, 500_000_000, 1_000_000_000,
          3_000_000_000, 10_000_000_000)
_NB = len(BOUNDS)
_bucket_of = partial(bisect_left, BOUNDS)       # Histogram.add's bucket of a value
_INV_LOG_GAMMA_MUL = INV_LOG_GAMMA.__mul__      # x -> INV_LOG_GAMMA * x (== x * INV_...)
FAST_LATS = 6       # latencies in one add_all from which they are bucketed by C loops


class Histogram:
    __slots__ = ("counts", "sum", "max")

    def __init__(self):
        self.counts = [0] * _NB
        self.sum = 0
        self.max = 0

    def add(self, v):
        if 0 < v <= 10_000_000_000:
            self.counts[bisect_left(BOUNDS, v)] += 1
            self.sum += v
            if v > self.max:
                self.max = v

    def serialize(self):
        """``"7 <b1> <cum1> ... <b7> <cum7> <sum> <max>"`` (compat §2.6)."""
        parts = [str(_NB)]
        cum = 0
        for b, c in zip(BOUNDS, self.counts):
            cum += c
            parts.append(str(b))
            parts.append(str(cum))
        parts.append(str(self.sum))
        parts.append(str(self.max))
        return " ".join(parts)


def add_to(stats, rec):
    """Count one record in each RpcStats of ``stats`` (add_all of one)."""
    add_all(stats, (rec,))


def add_all(stats, recs):
    """Count the records ``recs`` in each RpcStats of ``stats`` (a link's and its API's):
    the hot path of aggregation.  The records are summed first (counts, latency sum and
    maximum, sketch and histogram buckets), then added to each RpcStats once: the same
    figures as adding them one by one (tests/test_aggregate.py
    test_add_records_in_batches_equals_one_by_one).  One Python loop over the records
    gathers the counts and the latencies; where there are FAST_LATS latencies or more and
    all of them lie in (0, 10 s], the common case, their sums and buckets are made by C
    loops (map, sum, _count_elements), otherwise value by value."""
    nreq = nresp = 0
    nerr = ncli = nsrv = 0
    lats = []
    push = lats.append
    for rec in recs:
        req_ts = rec.req_ts
        if req_ts:
            nreq += 1
            resp_ts = rec.resp_ts
            if resp_ts:
                push(resp_ts - req_ts)
        elif rec.resp_ts:
            nresp += 1
        err = rec.err
        if err:
            nerr += 1
            if err == ERR_CLIENT:
                ncli += 1
            elif err == ERR_SERVER:
                nsrv += 1
    nlat = len(lats)
    nresp += nlat
    lat_sum = lat_max = h_sum = h_max = nb = 0
    keys = {}                 # sketch key -> count
    buckets = {}              # histogram bucket -> count
    if nlat >= FAST_LATS and min(lats) > 0 and max(lats) <= 10_000_000_000:
        lat_sum = h_sum = sum(lats)
        lat_max = h_max = max(lats)
        nb = nlat
        # sketch.key_of and Histogram.add, as C loops (below 10 s < MAX_NS: no MAX_KEY)
        _count_elements(keys, map(_ceil, map(_INV_LOG_GAMMA_MUL, map(_log, lats))))
        _count_elements(buckets, map(_bucket_of, lats))
    else:
        for lat in lats:
            if lat > 0:
                lat_sum += lat
                if lat > lat_max:
                    lat_max = lat
                # sketch.key_of, inlined
                key = _ceil(_log(lat) * INV_LOG_GAMMA) if lat < MAX_NS else MAX_KEY
                keys[key] = keys.get(key, 0) + 1
                if lat <= 10_000_000_000:     # Histogram.add
                    b = bisect_left(BOUNDS, lat)
                    buckets[b] = buckets.get(b, 0) + 1
                    nb += 1
                    h_sum += lat
                    if lat > h_max:
                        h_max = lat
            else:                     # a response stamped before its request: 0
                keys[-1] = keys.get(-1, 0) + 1
    for st in stats:
        st.req += nreq
        st.resp += nresp
        if nlat:
            st.lat_sum += lat_sum
            st.lat_n += nlat
            sk = st.sketch
            for key, n in keys.items():
                sk[key] = sk.get(key, 0) + n
            if lat_max > st.lat_max:
                st.lat_max = lat_max
            if nb:
                h = st.histo
                counts = h.counts
                for b, n in buckets.items():
                    counts[b] += n
                h.sum += h_sum
                if h_max > h.max:
                    h.max = h_max
        if nerr:
            st.err += nerr
            st.client_err += ncli
            st.server_err += nsrv


def add_kernel_acct(st, delta, vals):
    """Add ``delta`` (new counts of a struct conn_acct, in its field order) to RpcStats
    ``st``; ``vals``: the cumulative values (their lat_max is a maximum so far)."""
    req, resp, err_c, err_s, lat_n, _, lat_sum, lat_max = delta[:8]
    st.req += req
    st.resp += resp
    st.err += err_c + err_s
    st.client_err += err_c
    st.server_err += err_s
    st.lat_sum += lat_sum
    st.lat_n += lat_n
    h = st.histo
    counts = h.counts
    for i in range(len(counts)):
        counts[i] += delta[8 + i]
    h.sum += lat_sum
    # a new maximum of the connection fell in this period
    if lat_max and vals[7] > h.max:
        h.max = vals[7]


class RpcStats:
    """Request/response counters of a link or an API for one period."""

    __slots__ = ("req", "resp", "err", "client_err", "server_err", "lat_sum", "lat_n", "histo",
                 "sketch", "lat_max")

    def __init__(self):
        self.req = self.resp = self.err = self.client_err = self.server_err = 0
        self.lat_sum = self.lat_n = self.lat_max = 0
        self.histo = Histogram()
        self.sketch = {}          # pipeline/sketch.py buckets of this period's latencies

    def add(self, rec):
        add_to((self,), rec)

    def latency_avg(self):
        # upstream divides by req_count; we divide by the pairs that have a latency
        return self.lat_sum / self.lat_n if self.lat_n else 0.0

    def percentiles(self):
        """[p50, p90, p99] of this period's latencies, ns, within sketch.ALPHA."""
        return quantiles(self.sketch, PERCENTILES)


class Link:
    __slots__ = ("key", "tgid", "client_ip", "server_ip", "server_port", "l4_role", "l7_role",
                 "protocol", "ssl", "bytes_sent", "bytes_recv", "segs_sent", "segs_recv",
                 "rpc", "apis", "last_active", "conns", "kernel_only", "stream_stats",
                 "refused", "api_hash")

    def __init__(self, key, now):
        (self.tgid, self.client_ip, self.server_ip, self.server_port, self.l4_role,
         self.l7_role, self.protocol, self.ssl) = key
        self.key = key
        # the kernel's hash of an API name, if the kernel counts this protocol's APIs
        # itself (HTTP/1.x), else None
        info = registry.BY_NAME.get(self.protocol)
        proto = registry.protocol_for_id(info.proto_id) if info is not None else None
        self.api_hash = proto.api_hash if proto is not None else None
        self.bytes_sent = self.bytes_recv = self.segs_sent = self.segs_recv = 0
        self.rpc = RpcStats()
        self.apis = {}
        self.last_active = now
        self.conns = 0            # open connections in this link
        self.kernel_only = 0      # requests of the period counted by the kernel alone (not
                                  # parsed: in rpc, not in apis nor in traces)
        # what its streams could not capture, parse or pair this period (l7_link
        # completeness fields); one StreamStats shared by the streams of its connections
        self.stream_stats = StreamStats()
        self.refused = 0          # messages of the period the ring buffer refused (kernel
                                  # counts: requests of whole transactions, lone responses)

    def add_record(self, rec):
        self.add_records((rec,))

    def add_records(self, recs, learn=None):
        """Count ``recs`` in the link's RpcStats and in their APIs' (add_all once per API;
        the APIs past MAX_APIS_PER_LINK and the records without one count in the link's
        alone).  ``learn(api, self.api_hash)``, if given, is called for each API not in the
        link's table (pipeline/conntrack.py Tracker.learn_api)."""
        rpc = self.rpc
        apis = self.apis
        groups = {}               # API -> its records in recs
        alone = []
        for rec in recs:
            api = rec.api
            if api is None:
                alone.append(rec)
                continue
            g = groups.get(api)
            if g is None:
                if api not in apis:
                    if learn is not None:
                        learn(api, self.api_hash)
                    if len(apis) >= Links.MAX_APIS_PER_LINK:
                        alone.append(rec)
                        continue
                    apis[api] = RpcStats()
                g = groups[api] = []
            g.append(rec)
        for api, g in groups.items():
            add_all((rpc, apis[api]), g)
        if alone:
            add_all((rpc,), alone)

    def reset(self):
        self.bytes_sent = self.bytes_recv = self.segs_sent = self.segs_recv = 0
        self.kernel_only = self.refused = 0
        self.rpc = RpcStats()
        for api in self.apis:
            self.apis[api] = RpcStats()
        self.stream_stats.clear()


class Links:
    """All links, in creation order (the order of the report)."""

    MAX_LINKS = 65536
    MAX_APIS_PER_LINK = 1024
    IDLE_SECS = 300

    def __init__(self):
        self.links = {}
        self.dropped = 0

    def get(self, key, now):
        link = self.links.get(key)
        if link is None:
            if len(self.links) >= self.MAX_LINKS:
                self.dropped += 1
                return None
            link = self.links[key] = Link(key, now)
        return link

    def age(self, now):
        """Forget links without connections and without activity for IDLE_SECS."""
        dead = [k for k, l in self.links.items()
                if l.conns <= 0 and now - l.last_active >= self.IDLE_SECS]
        for k in dead:
            del self.links[k]

    def retain(self, keep_tgid):
        for k in [k for k in self.links if not keep_tgid(k[0])]:
            del self.links[k]
