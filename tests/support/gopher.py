"""A fake gala-gopher for end-to-end tests: its IPC queue, its messages, its way to launch us.

Deliberately independent of ``ipc/``: the queue is driven through its own ctypes calls and
messages are built byte by byte with ``struct`` from the documented layout (compat §3.2,
§3.3), so it can serve as an oracle for the probe's decoder.

    with FakeGopher() as gopher:
        probe = launch_probe("/path/to/l7probe", gopher.environ())
        gopher.send(range_flags=0x3, period=5, proto_flags=0x1, pids=[os.getpid()])
        line = probe.readline(timeout=10)
        ...
        assert probe.stop() == 0

The queue key is ``ftok(<temp file>, 'g')``; the probe finds it through
``L7PROBE_IPC_FTOK_PATH`` (``FakeGopher.env``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import signal
import struct
import subprocess
import tempfile
import time
from collections import deque
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

FTOK_PATH_ENV = "L7PROBE_IPC_FTOK_PATH"
PROBE_L7 = 4

IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
IPC_STAT = 2
_MSQID_DS_SIZE = 120        # struct msqid_ds on x86_64 (glibc)
_MSG_QNUM_OFF = 80          # offsetof(struct msqid_ds, msg_qnum)

# Default proto flags for tests: every protocol of this probe (upstream's default is 0).
ALL_PROTO_FLAGS = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x400 | 0x800

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ftok.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.msgget.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]


def _err(what):
    e = ctypes.get_errno()
    return OSError(e, "%s: %s" % (what, os.strerror(e)))


# ---------------------------------------------------------------------------------------
# Messages, byte by byte (compat §3.2 / §3.3)

def probe_params(period=5, support_ssl=0, cluster_ip_backend=0, proto_flags=ALL_PROTO_FLAGS):
    """``struct probe_params`` (1184 bytes, x86_64) with gala-gopher's defaults."""
    p = bytearray(1184)
    struct.pack_into("=I", p, 0, period)              # period
    struct.pack_into("=I", p, 4, 5000)                # sample_period
    struct.pack_into("=I", p, 20, 9092)               # kafka_port
    p[25] = 1                                         # ringbuf_map_size
    p[29] = support_ssl                               # support_ssl
    p[35] = cluster_ip_backend                        # cluster_ip_backend
    struct.pack_into("=I", p, 580, proto_flags)       # l7_probe_proto_flags
    struct.pack_into("=I", p, 584, 180)               # svg_period
    struct.pack_into("=I", p, 588, 10)                # perf_sample_period
    p[592:592 + 14] = b"localhost:4040"               # pyroscope_server[64]
    flame = b"/var/log/gala-gopher/flamegraph"
    p[912:912 + len(flame)] = flame                   # flame_dir[256]
    struct.pack_into("=I", p, 1168, 8083)             # cadvisor_port
    struct.pack_into("=I", p, 1176, 1)                # min_exec_dur
    struct.pack_into("=I", p, 1180, 100)              # min_aggr_dur
    return bytes(p)


def tlv(ttype, value):
    return struct.pack("=HH", ttype, len(value)) + value


def container_object(inode, container_id=None, libssl_path=None):
    value = struct.pack("=I", inode)
    if container_id is not None:
        value += tlv(1000, container_id.encode() + b"\0")      # IPCT_CONTAINER_ID
    if libssl_path is not None:
        value += tlv(1003, libssl_path.encode() + b"\0")       # IPCT_LIBSSL_PATH
    return tlv(1, value)                                       # SNOOPER_OBJ_CON


def build_body(range_flags=0x7, period=5, support_ssl=0, proto_flags=ALL_PROTO_FLAGS,
               pids: Iterable[int] = (), containers: Sequence = (), msg_flag=3,
               snooper_state=0, cluster_ip_backend=0, snooper_num=None) -> bytes:
    """Message body after mtype.  ``containers``: tuples ``(inode[, id[, libssl_path]])``."""
    objs = [tlv(0, struct.pack("=I", pid)) for pid in pids]     # SNOOPER_OBJ_PROC
    objs += [container_object(*c) for c in containers]
    if snooper_num is None:
        snooper_num = len(objs)
    tlvs = (tlv(100, struct.pack("=I", range_flags))
            + tlv(101, probe_params(period, support_ssl, cluster_ip_backend, proto_flags))
            + tlv(102, struct.pack("=I", snooper_num))
            + b"".join(objs))
    return struct.pack("=HHI", msg_flag, snooper_state, len(tlvs)) + tlvs


# ---------------------------------------------------------------------------------------
# What gala-gopher makes of a record (compat §2.4; seen under the real daemon,
# tests/test_e2e_realgopher.py): a Prometheus series is identified by the record's ``key``
# and ``label`` fields (plus comm, container labels and machine_id, which are the same for
# one process), so two records with equal key and label values become one series twice,
# and Prometheus keeps one of them.

def series_identity(table: str, rec: dict) -> tuple:
    """The values gala-gopher builds a record's series labels from, in meta order."""
    from pipeline.meta import TABLES
    return tuple((name, rec[name]) for name, ftype in TABLES[table]
                 if ftype in ("key", "label") and rec[name] != "(null)")


# ---------------------------------------------------------------------------------------
# The queue

class FakeGopher:
    """Creates gala-gopher's queue (IPC_CREAT|IPC_EXCL, 0600) at a temporary ftok path."""

    def __init__(self, directory: Optional[str] = None, mtype: int = PROBE_L7):
        self.mtype = mtype
        self.msqid = None
        self._dir = tempfile.mkdtemp(prefix="fake-gopher-", dir=directory)
        # ftok uses the low 16 bits of the inode: on a key collision with an existing queue,
        # try another file instead of touching someone else's queue.
        for attempt in range(32):
            path = os.path.join(self._dir, "gala-gopher.%d" % attempt)
            open(path, "w").close()
            key = _libc.ftok(path.encode(), ord("g"))
            if key == -1:
                raise _err("ftok(%s)" % path)
            qid = _libc.msgget(key, IPC_CREAT | IPC_EXCL | 0o600)
            if qid != -1:
                self.path, self.key, self.msqid = path, key, qid
                break
            if ctypes.get_errno() != errno.EEXIST:
                raise _err("msgget")
        else:
            raise RuntimeError("no free System V queue key found")

    @property
    def env(self):
        """The variable that points the probe at this queue."""
        return {FTOK_PATH_ENV: self.path}

    def environ(self, **extra):
        """A full environment for launching the probe (os.environ + env + extra)."""
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra)
        return env

    def send_raw(self, body: bytes, mtype: Optional[int] = None, nowait=False) -> None:
        mtype = self.mtype if mtype is None else mtype
        # long mtype: 8 bytes on x86_64 ("=l" would be 4)
        buf = ctypes.create_string_buffer(struct.pack("=q", mtype) + bytes(body))
        while _libc.msgsnd(self.msqid, buf, len(body), IPC_NOWAIT if nowait else 0) != 0:
            if ctypes.get_errno() != errno.EINTR:
                raise _err("msgsnd(%d bytes)" % len(body))

    def send(self, range_flags=0x7, period=5, support_ssl=0, proto_flags=ALL_PROTO_FLAGS,
             pids: Iterable[int] = (), containers: Sequence = (), msg_flag=3,
             snooper_state=0, cluster_ip_backend=0, mtype=None) -> bytes:
        """Send one well-formed message; returns the body sent."""
        body = build_body(range_flags, period, support_ssl, proto_flags, pids, containers,
                          msg_flag, snooper_state, cluster_ip_backend)
        self.send_raw(body, mtype)
        return body

    def pending(self) -> int:
        """Messages still in the queue (all types): lets a test wait until the probe read."""
        buf = ctypes.create_string_buffer(_MSQID_DS_SIZE)
        if _libc.msgctl(self.msqid, IPC_STAT, buf) != 0:
            raise _err("msgctl(IPC_STAT)")
        return struct.unpack_from("=Q", buf.raw, _MSG_QNUM_OFF)[0]

    def wait_consumed(self, timeout=10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def remove_queue(self) -> None:
        """Remove the queue (like gala-gopher exiting); the probe must survive it."""
        if self.msqid is not None:
            _libc.msgctl(self.msqid, IPC_RMID, None)
            self.msqid = None

    def recreate_queue(self) -> None:
        """Create the queue again at the same key (like a restarted gala-gopher)."""
        self.remove_queue()
        qid = _libc.msgget(self.key, IPC_CREAT | IPC_EXCL | 0o600)
        if qid == -1:
            raise _err("msgget")
        self.msqid = qid

    def close(self) -> None:
        self.remove_queue()
        try:
            for name in os.listdir(self._dir):
                os.unlink(os.path.join(self._dir, name))
            os.rmdir(self._dir)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------
# Launching the probe like gala-gopher (popen(bin, "r"), compat §2.1)

class ProbeProcess:
    """A probe started through ``/bin/sh -c``; stdout/stderr read without blocking."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid
        self._buf = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        self._open = set(self._buf)
        self._out_fd = proc.stdout.fileno()
        self._err_fd = proc.stderr.fileno()
        for fd in self._buf:
            os.set_blocking(fd, False)
        self.lines: deque = deque()       # complete stdout lines not yet returned
        self.all_lines: List[str] = []    # every stdout line ever read
        # (time.monotonic() when read, line) for every stdout line: arrival times are
        # exact while the caller keeps reading (read_lines, wait_for)
        self.timed_lines: List[Tuple[float, str]] = []
        self.stderr_lines: List[str] = []

    # -- reading -------------------------------------------------------------------------
    def _pump(self, timeout: float) -> None:
        if not self._open:
            if timeout > 0:
                time.sleep(min(timeout, 0.05))
            return
        ready, _, _ = select.select(list(self._open), [], [], max(0.0, timeout))
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            buf = self._buf[fd]
            if data:
                buf += data
            else:
                self._open.discard(fd)
                if buf:                      # last line without newline
                    buf += b"\n"
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line = bytes(buf[:nl]).decode("utf-8", "surrogateescape")
                del buf[:nl + 1]
                if fd == self._out_fd:
                    self.lines.append(line)
                    self.all_lines.append(line)
                    self.timed_lines.append((time.monotonic(), line))
                else:
                    self.stderr_lines.append(line)

    @property
    def stdout_eof(self) -> bool:
        return self._out_fd not in self._open

    def readline(self, timeout: float = 5.0) -> Optional[str]:
        """Next stdout line (without ``\\n``), or None on timeout / end of output."""
        deadline = time.monotonic() + timeout
        while not self.lines:
            left = deadline - time.monotonic()
            if left <= 0 or self.stdout_eof:
                return None
            self._pump(left)
        return self.lines.popleft()

    def read_lines(self, duration: float) -> List[str]:
        """Every stdout line arriving within ``duration`` seconds (or until end of output)."""
        out = []
        deadline = time.monotonic() + duration
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                return out
            out.append(line)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> Optional[str]:
        """First stdout line satisfying ``predicate`` (lines before it are consumed)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None or predicate(line):
                return line

    def records(self, table: str, duration: float) -> List[List[str]]:
        """Values of the ``|table|...|`` lines arriving within ``duration`` seconds."""
        return [ln.split("|")[2:-1] for ln in self.read_lines(duration)
                if ln.startswith("|%s|" % table)]

    def stderr_text(self) -> str:
        self._pump(0)
        return "\n".join(self.stderr_lines)

    # -- stopping ------------------------------------------------------------------------
    def probe_pids(self) -> List[int]:
        """The probe process(es): members of our process group except the ``sh -c`` wrapper
        (Debian's dash does not exec the command, so the probe is sh's child)."""
        out = []
        try:
            names = os.listdir("/proc")
        except OSError:
            return out
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[2]) != self.pid:
                    continue
                if int(name) == self.pid:
                    with open("/proc/%s/cmdline" % name, "rb") as f:
                        if f.read().startswith(b"/bin/sh\0-c\0"):
                            continue
            except (OSError, IndexError, ValueError):
                continue
            out.append(int(name))
        return sorted(out)

    def gopher_pids(self, bin_path: str) -> List[int]:
        """What gala-gopher finds to stop the probe: ``pgrep -g <pgid> -af "<bin>$"``
        (compat §2.1), in pgrep's order.  With dash as /bin/sh both ``sh -c <bin>`` and the
        probe match, sh first; gala-gopher signals the first pid it reads."""
        cp = subprocess.run(["pgrep", "-g", str(self.pid), "-af", bin_path + "$"],
                            capture_output=True, text=True)
        return [int(line.split()[0]) for line in cp.stdout.splitlines() if line.strip()]

    def stop_like_gopher(self, bin_path: str, line_timeout: float = 30.0) -> Optional[int]:
        """gala-gopher's stop of an extend probe (compat §2.1, §3.8): SIGINT to the first
        pid ``pgrep`` prints, then its reader returns from the ``fgets`` it is blocked in
        (the next stdout line), sees the stop flag and ``pclose``s: the pipe's read end is
        closed and sh is waited for.  Returns the pid signalled; the caller waits with
        :meth:`wait_closed`."""
        pids = self.gopher_pids(bin_path)
        if not pids:
            return None
        os.kill(pids[0], signal.SIGINT)
        self.readline(line_timeout)
        self.close_stdout()
        return pids[0]

    def close_stdout(self) -> None:
        """Close our read end of the probe's stdout (what pclose does)."""
        if self._out_fd in self._open:
            self._open.discard(self._out_fd)
            try:
                self.proc.stdout.close()
            except OSError:
                pass

    def wait_closed(self, timeout: float = 10.0) -> Optional[int]:
        """Wait for sh to exit, reading whatever pipes are still open (after close_stdout,
        stderr only); returns the exit status or None."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return None
            self._pump(0.05)
        return self.proc.returncode

    def send_signal(self, sig=signal.SIGINT, group: bool = False) -> None:
        """Signal the probe like gala-gopher does (``kill(pid, sig)``), or the whole group."""
        targets = [] if group else self.probe_pids()
        if not targets:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            return
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float = 10.0) -> Optional[int]:
        """Wait for exit while draining the pipes; returns the exit status or None."""
        deadline = time.monotonic() + timeout
        if self.wait_closed(timeout) is None:
            return None
        while self._open:              # collect what is left in the pipes
            self._pump(0.05)
            if time.monotonic() > deadline + 2:
                break
        return self.proc.returncode

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> Optional[int]:
        """Send ``sig`` to the probe (gala-gopher uses SIGINT for l7) and wait; SIGKILL the
        group after ``timeout``.

        Returns the exit status seen through ``sh`` (the probe's own status; 128+N if the
        probe died from signal N; negative if sh itself was killed), None if it would not die.
        """
        if self.proc.poll() is None:
            self.send_signal(sig)
            rc = self.wait(timeout)
            if rc is not None:
                return rc
            self.send_signal(signal.SIGKILL, group=True)
        return self.wait(5.0)

    def kill(self) -> None:
        """SIGKILL the whole group (also a probe orphaned by a dead sh)."""
        self.send_signal(signal.SIGKILL, group=True)
        if self.proc.poll() is None:
            self.wait(5.0)

    def close(self) -> None:
        self.kill()
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def launch_probe(bin_path: str, env: Optional[dict] = None, cwd: Optional[str] = None
                 ) -> ProbeProcess:
    """Start the probe as gala-gopher does: ``/bin/sh -c <bin>``, no arguments, stdout a pipe.

    ``env`` is the complete environment (None: inherit).  The child gets its own process
    group so that ``ProbeProcess.stop``/``kill`` reach it whether or not sh exec'ed it.
    """
    proc = subprocess.Popen(["/bin/sh", "-c", bin_path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                            cwd=cwd, process_group=0, preexec_fn=_default_sigint)
    return ProbeProcess(proc)


def _default_sigint():
    # gala-gopher's children start with SIGINT at its default; a test run from a background
    # job (`cmd &` in a script) would otherwise hand sh and the probe an ignored SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)
