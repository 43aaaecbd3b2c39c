#!/usr/bin/env python3
"""l7probe: Layer-7 traffic probe (eBPF, BCC) for gala-gopher, or standalone.

Watches the socket traffic of processes without touching them, parses HTTP/1.x, HTTP/2
(gRPC), Redis, PostgreSQL, MySQL (and detects more), pairs requests with responses and
prints, every period, gala-gopher records: l7_link (bytes), l7_rpc (per-connection RPC
metrics), l7_rpc_api (per API) and l7_trace (per request).

Data flow, file by file: bpf/probe.c (kernel: capture, counters, detection) ->
bpf/loader.py (ring buffer) -> pipeline/conntrack.py (connections) -> pipeline/stream.py
(reassembly) -> protocol/<name>/ (frames, pairing) -> pipeline/aggregate.py (statistics)
-> pipeline/report.py (lines).
"""
import os
import sys

# Runs from a checkout or from the installed copy; the libraries sit next to the real file.
# Prefer the project's venv (BCC from the system plus pinned pip packages) when present.
_HERE = os.path.dirname(os.path.realpath(__file__))
if os.path.isdir(os.path.join(_HERE, "l7probe.d")):     # installed: `make install` layout
    _HERE = os.path.join(_HERE, "l7probe.d")
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
_VENV_PY = os.path.join(_HERE, ".venv", "bin", "python3")
if (os.path.exists(_VENV_PY) and os.path.realpath(sys.prefix) !=
        os.path.realpath(os.path.join(_HERE, ".venv")) and not os.environ.get("L7PROBE_NO_VENV")):
    os.environ["L7PROBE_NO_VENV"] = "1"
    os.execv(_VENV_PY, [_VENV_PY] + sys.argv)

import argparse  # noqa: E402
import struct  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

EXAMPLES = """examples:
  sudo ./l7probe.py                      # every process, every protocol, 5 s period
  sudo ./l7probe.py --proto http,redis   # only these protocols
  sudo ./l7probe.py -p 1234 -P 10        # only pid 1234, 10 s period
  sudo ./l7probe.py --range l7_rpc_metrics --format json
  sudo ./l7probe.py --duration 30        # stop after 30 s, reporting the last period
  sudo ./l7probe.py --top                # a live table (keys: r e 5 9 b p c s v q)
Under gala-gopher the probe is started with no arguments and configured over IPC.
"""

log = logging.getLogger("l7probe")

POLL_INTERVAL = 0.05      # seconds between ring buffer drains
IPC_INTERVAL = 1.0        # seconds between IPC queue checks
SWEEP_INTERVAL = 30.0     # seconds between sweeps of connections of exited processes
BATCH_BYTES = 1 << 20      # ring-buffer bytes fed to the parsers at a time
MAX_BATCHES = 64           # pieces per poll at most (the ring's size and then some)
REST_TRIM = 1000          # connections put at rest in one period that make it trim the heap


class GopherLogFormatter(logging.Formatter):
    LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}

    def format(self, record):
        level = self.LEVELS.get(record.levelname, record.levelname)
        return "[%s] l7probe: %s" % (level, record.getMessage())


def setup_logging(gopher, verbose):
    handler = logging.StreamHandler(sys.stdout if gopher else sys.stderr)
    if gopher:
        handler.setFormatter(GopherLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("l7probe: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def parse_args(argv):
    from bpf.loader import DEFAULT_SAMPLE
    p = argparse.ArgumentParser(
        prog="l7probe", description="eBPF Layer-7 traffic probe (gala-gopher extend probe)",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-P", "--period", help="report period in seconds (default 5)")
    p.add_argument("--proto", help="comma list of http,http2,pgsql,mysql,redis,kafka,mongo,"
                   "rocketmq,dns or all (default all)")
    p.add_argument("--range", dest="range_", help="sub-probes: l7_bytes_metrics,"
                   "l7_rpc_metrics,l7_rpc_trace (default all three), l7_pod_metrics "
                   "(the pod table)")
    p.add_argument("-p", "--pid", action="append", help="only these processes (repeatable "
                   "or comma list)")
    p.add_argument("--container", action="append", help="only processes of these "
                   "containers (full or short id)")
    p.add_argument("--pod", action="append", help="only processes of these pods (name, "
                   "namespace/name or uid; containers started later too)")
    p.add_argument("--no-ssl", action="store_true", help="do not attach TLS uprobes")
    p.add_argument("--duration", type=float, help="stop after SEC seconds")
    from pipeline.output import FORMAT_HELP, FORMATS
    p.add_argument("--format", choices=tuple(FORMATS), default="gopher",
                   help="output format (default gopher): " +
                   "; ".join("%s: %s" % kv for kv in FORMAT_HELP.items()))
    p.add_argument("--top", dest="format", action="store_const", const="top",
                   help="the same as --format top")
    p.add_argument("--ipc", action="store_true", help="force gala-gopher IPC mode")
    p.add_argument("--capture-bytes", type=int, default=None,
                   help="bytes captured per syscall (default 16384, max 32768)")
    p.add_argument("--sample", type=int, default=None, metavar="RATE",
                   help="parse at most RATE HTTP/1.x transactions per second in user space; "
                   "the kernel counts the others itself: l7_rpc stays exact, l7_rpc_api and "
                   "l7_trace cover the parsed ones (0: parse all; default %d)" % DEFAULT_SAMPLE)
    p.add_argument("--trace-limit", type=int, default=1000,
                   help="at most this many l7_trace rows per period (default 1000)")
    p.add_argument("--replay", metavar="FILE", help="replay a pcap/pcapng capture through "
                   "the parsers (no BPF) and print one report")
    p.add_argument("--replay-side", choices=("server", "client", "both"), default="server",
                   help="with --replay: whose view to report (default server)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


class ArgError(Exception):
    pass


class Probe:
    """Capture + pipeline + reporting for one set of settings, changeable at run time."""

    def __init__(self, args, out, gopher=False):
        from bpf.layout import DEFINES, LAYOUTS
        from bpf.loader import DEFAULT_CAP, DEFAULT_SAMPLE, Capture
        from pipeline.aggregate import Links
        from pipeline.conntrack import Tracker
        from pipeline.report import TraceWriter, Writer, mono_to_wall_factory

        self.args = args
        self.settings = None
        self.capture = Capture(
            args.capture_bytes or DEFAULT_CAP, fast_stop=gopher,
            sample_rate=DEFAULT_SAMPLE if args.sample is None else args.sample)
        self.links = Links()
        self.writer = Writer(out, args.format)
        self.traces = TraceWriter(self.writer, max(0, args.trace_limit), mono_to_wall_factory())
        self.tracker = Tracker(self.links, None, self.on_control)
        if args.format == "json":       # who a process is, looked up while it lives
            self.tracker.on_open = self._labelled(self.tracker.on_open)
        self.last_report = time.monotonic()
        self.dropped_reported = (0, 0, 0, 0, 0, 0)
        self.hdr_layout = LAYOUTS["evt_hdr"]
        self.next_sweep = time.monotonic() + SWEEP_INTERVAL
        self.missing = set()       # conn_ids whose kernel entry was gone at the last report
        self.tls = None            # bpf.tls_attach.TlsManager while TLS is on
        self.EVT_EXEC = DEFINES["EVT_EXEC"]
        self.EVT_PARENT_SIGNAL = DEFINES["EVT_PARENT_SIGNAL"]
        self.watch_ppid = 0        # gopher mode: our parent, whose SIGINT/SIGTERM stops us
        self.stop_requested = False
        # L7PROBE_DUMP=FILE: every ring-buffer record, as received, length-prefixed (u32)
        dump = os.environ.get("L7PROBE_DUMP")
        self.dump = open(dump, "ab", buffering=0) if dump else None   # os._exit at the end

    # -- set-up -------------------------------------------------------------------------
    def start(self):
        from pipeline.seed import seed
        self.capture.load()
        self.capture.open_output()
        # seeded before the configuration: until then the kernel side ignores every socket
        # (probe.c sock_io), so it cannot mark one of these as ignored first (its data
        # would be a socket whose handshake it never saw)
        n = seed(self.capture, self.settings.pids)
        self.apply(self.settings)
        log.info("tracking %d connection(s) that existed before start", n)
        self._tls_apply(None, self.settings)
        if "pod" in self.settings.tables:          # the pods' counters at start
            from pipeline.podtable import report_pods
            report_pods(self.writer, emit=False)
        # Start-up objects (BCC, modules, the compiled program) live for good: collect once,
        # then keep them out of later collections (a full pass over them costs ~40 ms).
        # The hot path makes few cycles: young collections every 10000 net allocations
        # instead of 700 (measured: gc time per request 0.12 us -> ~0).
        import gc
        gc.collect()
        gc.freeze()
        gc.set_threshold(10000, 10, 10)
        from bpf.loader import release_memory
        release_memory()
        self.last_report = time.monotonic()
        log.info("started: capturing")

    def apply(self, settings):
        """(Re)configure the kernel side and the reporting for new settings."""
        from protocol import registry
        old = self.settings
        self.settings = settings
        tables = settings.tables
        emit_data = bool(tables & {"l7_rpc", "l7_rpc_api", "l7_trace"})
        self.tracker.record_sink = self.traces.add if "l7_trace" in tables else None
        if self.capture.bpf is None:
            return
        self.capture.set_config(settings.proto_flags, settings.pids, emit_data,
                                settings.exclude_pids, tls=settings.support_ssl,
                                watch_ppid=self.watch_ppid)
        if old is not None:
            self._tls_apply(old, settings)
        log.info("watching %s; protocols %s; tables %s; period %d s",
                 "all processes" if settings.pids is None else
                 "%d process(es)" % len(settings.pids),
                 ",".join(registry.names_from_flags(settings.proto_flags)) or "none",
                 ",".join(sorted(tables)), settings.period)
        if old is not None:
            wanted = self.wanted
            self.tracker.drop_where(lambda c: not wanted(c.tgid))
            self.links.retain(wanted)
            if settings.pids is None or old.pids is None or not settings.pids <= old.pids:
                # newly watched processes: track their existing connections
                from pipeline.seed import seed
                seed(self.capture, None if settings.pids is None
                     else settings.pids - (old.pids or frozenset()))

    def _tls_apply(self, old, new):
        """Attach TLS uprobes for the processes in scope, or remove them all."""
        from bpf.tls_attach import TlsManager
        if not new.support_ssl:
            if self.tls is not None:
                self.tls.detach_all()
                self.tls = None
            elif old is None:
                log.info("TLS: off (--no-ssl / support_ssl 0): no uprobes attached")
            return
        if self.tls is None:
            self.tls = TlsManager(self.capture.bpf)
        if old is None or not old.support_ssl or old.pids != new.pids or \
                old.containers != new.containers:
            self.tls.scan_all(self.wanted)
            for c in new.containers:
                if c.libssl_path and os.path.exists(c.libssl_path):
                    self.tls.attach_library(c.libssl_path)
            log.info("TLS: %d probe(s) on %d file(s)", self.tls.probes, len(self.tls.attached))

    def wanted(self, tgid):
        s = self.settings
        if s.pids is not None:
            return tgid in s.pids
        return tgid not in s.exclude_pids

    # -- records ------------------------------------------------------------------------
    def on_control(self, t, raw):
        """A record other than data, open and close (pipeline.conntrack.Tracker.feed
        handles those): a process's exec, a stop signal sent to our parent."""
        if t == self.EVT_EXEC:
            tgid = self.hdr_layout.unpack(raw)["tgid"]
            from pipeline.pods import resolver
            resolver().forget(tgid)             # a new program: new comm (maybe cgroup)
            if self.tls is not None:
                self.tls.on_exec(tgid)
        elif t == self.EVT_PARENT_SIGNAL:
            if not self.stop_requested:
                self.stop_requested = True
                ppid = self.hdr_layout.unpack(raw)["tgid"]
                try:
                    with open("/proc/%d/comm" % ppid) as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                log.info("our parent (pid %d, %s) was sent a stop signal: stopping", ppid,
                         comm)

    def poll(self):
        self.tracker.now = time.time()
        # in pieces of about BATCH_BYTES: a full ring (8 MB) read at once was as many MB
        # of record objects alive at the same time, a peak the heap kept
        for _ in range(MAX_BATCHES):
            batch = self.capture.poll(int(POLL_INTERVAL * 1000), BATCH_BYTES)
            if batch:
                if self.dump is not None:
                    for raw in batch:
                        self.dump.write(struct.pack("<I", len(raw)) + raw)
                self.tracker.feed(batch)
            self.tracker.stitch_dirty()
            if not self.capture.more:
                break
        if self.tracker.new_apis:
            self.capture.add_known_apis(self.tracker.new_apis)
            del self.tracker.new_apis[:]
        if self.tracker.new_shed_ok:
            self.capture.add_shed_ok(self.tracker.new_shed_ok)
            del self.tracker.new_shed_ok[:]
        self.traces.flush()
        if self.tls is not None and self.tls.pending:
            self.tls.tick(self.wanted)

    # -- reporting ----------------------------------------------------------------------
    def report(self, final=False):
        from pipeline.report import report_links
        now_mono = time.monotonic()
        elapsed = now_mono - self.last_report
        self.last_report = now_mono
        self.poll()
        self._kernel_counts()
        self._collect_counters()
        self._sweep()
        stream_stats = self.tracker.protocol_stats()     # before the links are reset
        report_links(self.writer, self.links, self.settings.tables, elapsed)
        if "pod" in self.settings.tables:
            from pipeline.podtable import report_pods
            report_pods(self.writer, None if self.settings.pids is None else self.wanted)
        self.links.age(time.time())
        dropped_traces = self.traces.new_period()
        if dropped_traces:
            log.warning("l7_trace: %d row(s) over the limit of %d per period not printed",
                        dropped_traces, self.traces.limit)
        drops = self.capture.drop_counts()
        if drops != self.dropped_reported:
            d = [a - b for a, b in zip(drops, self.dropped_reported)]
            self.dropped_reported = drops
            if d[0] or d[2]:
                log.warning("kernel: %d record(s) (%d bytes) dropped, ring buffer full; "
                            "%d connection(s) not tracked, map full", d[0], d[1], d[2])
            if d[3]:
                log.warning("TLS: %d call(s) on a socket not seen yet were not parsed", d[3])
            if d[5]:
                log.warning("kernel: %d socket operation(s) whose bytes the data program "
                            "never got (its tail call failed): counted, not parsed", d[5])
        for name, st in sorted(stream_stats.items()):
            st.report(name)
        self.tracker.report_skipped()
        if self.tracker.rest_idle() >= REST_TRIM:
            from bpf.loader import release_memory
            release_memory()
        tr = self.tracker
        if tr.kernel_only:
            log.info("http: %d request(s) this period counted by the kernel alone (%d sampled "
                     "out by --sample, %d refused by a full ring buffer or before their "
                     "connection was announced): in l7_rpc and l7_rpc_api, not in l7_trace",
                     tr.kernel_only, tr.sampled_out, tr.kernel_only - tr.sampled_out)
            tr.kernel_only = tr.sampled_out = 0
        if tr.api_unnamed:
            log.info("http: %d request(s) this period counted by the kernel for APIs whose "
                     "name no parsed request showed yet: in l7_rpc, not in l7_rpc_api",
                     tr.api_unnamed)
            tr.api_unnamed = 0
        if tr.unplaced:
            log.warning("http: %d request(s) counted by the kernel on connections that closed "
                        "before the ring buffer could announce them: not reported", tr.unplaced)
            tr.unplaced = 0
        if tr.udp_unplaced_dropped:
            log.warning("dns: %d datagram(s) this period whose peer the kernel could not tell "
                        "and no later datagram of the same DNS id named: not reported",
                        tr.udp_unplaced_dropped)
            tr.udp_unplaced_dropped = 0

    def _kernel_counts(self):
        """What the kernel counted itself (maps kapi, then kacct) into this period's links."""
        tr = self.tracker
        gone = [key for key, vals in self.capture.read_api_acct()
                if tr.add_kernel_api_counts(key[0], key[1], vals)]
        if gone:
            self.capture.delete_api_acct(gone)
        gone = [cid for cid, vals in self.capture.read_acct() if tr.add_kernel_counts(cid, vals)]
        if gone:
            self.capture.delete_acct(gone)
        if log.isEnabledFor(logging.DEBUG):
            for link in self.links.links.values():
                if link.kernel_only:
                    log.debug("kernel counts: pid %d %s %s:%d %s: %d request(s), rpc %d/%d",
                              link.tgid, link.client_ip, link.server_ip, link.server_port,
                              link.l7_role, link.kernel_only, link.rpc.req, link.rpc.resp)

    def _sweep(self):
        """Every SWEEP_INTERVAL: forget kernel-side connections of exited processes."""
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_INTERVAL
        n = self.capture.sweep_dead(lambda tgid: os.path.exists("/proc/%d" % tgid))
        if n:
            log.debug("forgot %d connection(s) of exited processes", n)

    def _collect_counters(self):
        """Kernel byte counters of live connections; forget a connection whose process is
        gone or whose kernel entry is gone (closed, its close record lost) at two reports
        in a row.  Not at the first: the ring buffer may still hold its records, the close
        record among them (a batch ends at a record not committed yet; seen with h2load,
        whose last ~3000 transactions were then records of unknown connections)."""
        alive = {}
        dead = []
        missing = set()
        for conn in list(self.tracker.conns.values()):
            c = self.capture.conn_counters(conn.tgid, conn.fd)
            if c is not None and c[0] == conn.conn_id:
                self.tracker.add_counters(conn, c[1], c[2], c[3], c[4])
            ok = alive.get(conn.tgid)
            if ok is None:
                ok = alive[conn.tgid] = os.path.exists("/proc/%d" % conn.tgid)
            if not ok or c is None or c[0] != conn.conn_id:
                if conn.conn_id in self.missing:
                    dead.append(conn.conn_id)
                else:
                    missing.add(conn.conn_id)
        self.missing = missing
        if dead:
            dead = set(dead)
            self.tracker.drop_where(lambda c: c.conn_id in dead)

    def _labelled(self, on_open):
        labels = self.writer.labels

        def open_labelled(ev):
            labels(ev["tgid"])
            return on_open(ev)
        return open_labelled

    def begin_stop(self):
        """Start detaching now: the kernel's grace periods overlap the last report (which
        then attaches nothing new)."""
        self.tls = None
        self.capture.start_detach()

    def close(self):
        try:
            self.writer.close()           # gives the terminal back (--top)
        finally:
            self.capture.close()


def standalone_settings(args):
    from ipc.config import settings_from_options
    if args.sample is not None and args.sample < 0:
        raise ArgError("--sample: a rate >= 0 is needed, not %d" % args.sample)
    try:
        return settings_from_options(period=args.period, proto=args.proto,
                                     range_=args.range_, pids=args.pid,
                                     containers=args.container, no_ssl=args.no_ssl,
                                     pods=args.pod)
    except ValueError as exc:
        raise ArgError(str(exc))


def run(args, gopher_mode, no_options=False):
    from bpf.loader import ProbeError, check_environment

    stop = []

    def on_signal(signum, frame):
        stop.append(signum)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    queue = None
    settings = None
    if gopher_mode:
        # gala-gopher starts us through `/bin/sh -c`, and dash does not exec: leave with
        # the shell if it dies.  The SIGINT gala-gopher sends it stays with dash: the
        # kernel side tells us of it (EVT_PARENT_SIGNAL); failing that, _stdout_gone.
        _exit_with_parent()
        from ipc.msgqueue import MessageQueue
        try:
            queue = MessageQueue.open()
        except OSError as exc:
            raise ProbeError("cannot open gala-gopher's IPC queue (%s): is gala-gopher "
                             "running?" % exc)
        # print nothing before the first message (CONTRACT §1): debug only
        log.debug("waiting for gala-gopher's configuration on IPC queue %d", queue.msqid)
        while not stop:                   # nothing is loaded before the first message
            if _stdout_gone():
                return 0
            res = _drain_ipc(queue)
            if res is None:
                time.sleep(IPC_INTERVAL)
                continue
            if res.error:
                log.error("%s", res.error)
            if res.config is not None:
                from ipc.config import settings_from_ipc
                settings = settings_from_ipc(res.config)
                break
            time.sleep(IPC_INTERVAL)
        if stop:
            return 0
        check_environment()
    else:
        settings = standalone_settings(args)
        check_environment()
        if no_options:
            log.info("no options: watching every process for every protocol, "
                     "reporting every %d s", settings.period)

    probe = Probe(args, sys.stdout, gopher=gopher_mode)
    probe.settings = settings
    if gopher_mode and os.getppid() > 1:
        probe.watch_ppid = os.getppid()
    try:
        probe.start()
        deadline = time.monotonic() + args.duration if args.duration else None
        next_ipc = time.monotonic() + IPC_INTERVAL
        output = probe.writer.output
        while not stop and not probe.stop_requested and not output.quit:
            time.sleep(POLL_INTERVAL)
            probe.poll()
            output.tick()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now - probe.last_report >= probe.settings.period:
                printed = probe.writer.lines
                probe.report()
                if queue is not None and probe.writer.lines == printed:
                    _idle_line()
            if queue is not None and _stdout_gone():
                break                     # gala-gopher closed the pipe: it stops us
            if now >= next_ipc:
                next_ipc = now + IPC_INTERVAL
                if queue is not None:
                    _check_ipc(probe, queue)
                else:
                    _refresh_containers(probe)
        probe.begin_stop()
        probe.report(final=True)
    finally:
        probe.close()
    return 0


def _exit_with_parent():
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)        # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def _stdout_gone():
    """True once nobody reads our stdout pipe any more (gala-gopher stopping us: with dash
    as /bin/sh its SIGINT reaches the `sh -c` wrapper only, which does not pass it on;
    gala-gopher then closes the pipe after the next line it reads).  stdout is then
    pointed at /dev/null so that the final report and exit do not fail."""
    import select
    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), 0)     # only POLLERR / POLLHUP / POLLNVAL
        gone = bool(p.poll(0))
    except (OSError, ValueError):
        return False
    if gone:
        _silence_stdout()
    return gone


def _silence_stdout():
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass


def _idle_line():
    """Under gala-gopher, a period without records still prints one line (gala-gopher
    logs it at DEBUG level): its reader only notices a stop request when a line arrives."""
    print("[DEBUG] l7probe: nothing to report this period", flush=True)


def _drain_ipc(queue):
    """Pending messages, or None while the queue is gone (gala-gopher stopped or
    restarting): warns once when it disappears, reopens it once it exists again."""
    from ipc.message import drain
    if queue.removed:
        if not queue.reopen():
            return None
        log.info("gala-gopher's IPC queue is back (id %d): following it again", queue.msqid)
    res = drain(queue)
    if res.queue_error:
        log.warning("%s; going on with the current configuration until the queue is back",
                    res.queue_error)
    return res


def _check_ipc(probe, queue):
    from ipc.config import settings_from_ipc
    res = _drain_ipc(queue)
    if res is not None and res.error:
        log.error("%s; keeping the previous configuration", res.error)
    if res is not None and res.config is not None:
        probe.apply(settings_from_ipc(res.config))
    else:
        _refresh_containers(probe)


def _refresh_containers(probe):
    """Processes started since inside the watched containers join the watched set."""
    from ipc.config import refresh_pids
    new = refresh_pids(probe.settings)
    if new is not probe.settings and new != probe.settings:
        probe.apply(new)


def run_replay(args):
    """--replay FILE: the capture through the same pipeline (pipeline/replay.py)."""
    from ipc.config import settings_from_options
    from pipeline.replay import replay_file
    from protocol import registry
    try:
        st = settings_from_options(proto=args.proto, range_=args.range_)
        protos = registry.names_from_flags(st.proto_flags)
        replay_file(args.replay, sys.stdout, protos, args.replay_side, st.tables,
                    args.format, max(0, args.trace_limit))
    except (ValueError, OSError) as exc:
        print("l7probe: error: --replay %s: %s" % (args.replay, exc), file=sys.stderr)
        return 1
    except BrokenPipeError:
        _silence_stdout()
        return 0
    return 0


def _buffered_stdout():
    """Records are flushed where the probe means to (a report's rows once, l7_trace rows
    once per ring-buffer batch).  Under ``python -u`` or PYTHONUNBUFFERED every write would
    be a write(2) of its own: give stdout a buffer then."""
    import io
    out = sys.stdout
    if out is None or isinstance(getattr(out, "buffer", None), io.BufferedWriter):
        return
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)),
                                  encoding=out.encoding, errors=out.errors)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    _buffered_stdout()
    from bpf.loader import ProbeError
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    gopher_mode = args.ipc
    if not argv:
        from ipc.msgqueue import MessageQueue
        try:
            MessageQueue.open().msqid
            gopher_mode = True
        except OSError:
            gopher_mode = False
    setup_logging(gopher_mode, args.verbose)
    if args.replay:
        return run_replay(args)
    try:
        return run(args, gopher_mode, no_options=not argv)
    except (ProbeError, ArgError) as exc:
        if gopher_mode:
            print("[ERROR] l7probe: %s" % exc, flush=True)
        else:
            print("l7probe: error: %s" % exc, file=sys.stderr)
        return 1
    except BrokenPipeError:
        _silence_stdout()             # no "Exception ignored" / status 120 at exit
        return 0
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    rc = main()
    # Everything is detached and flushed by now: leave without the interpreter's teardown
    # (freeing a large heap object by object, BCC's atexit clean-up a second time), which
    # would delay the exit gala-gopher waits for.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass
    os._exit(rc if isinstance(rc, int) else 1)
