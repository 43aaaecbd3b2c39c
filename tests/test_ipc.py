"""ipc/: message decoding, the System V queue, container pid discovery, settings.

Messages are built here byte by byte with ``struct`` from the documented layout
(compat §3.2/§3.3), independently of ipc/message.py and ipc/builder.py.
"""
from __future__ import annotations

import errno
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import textwrap

import pytest

from ipc import builder, msgqueue
from ipc.config import (ALL_TABLES, ProbeSettings, container_of_pid, pids_of_container,
                        pids_of_containers, refresh_pids, settings_from_ipc,
                        settings_from_options)
from ipc.message import Container, IpcConfig, IpcError, decode, drain
from protocol import registry
from tests.support import gopher as fake

# ---------------------------------------------------------------------------------------
# Byte-level message construction (the documented layout, nothing imported from ipc/)

def tlv(ttype, value):
    return struct.pack("<HH", ttype, len(value)) + value


def params(period=0, ssl=0, cip=0, proto=0, fill=b"\0"):
    p = bytearray(fill * 1184)
    p[0:4] = struct.pack("<I", period)
    p[29] = ssl
    p[35] = cip
    p[580:584] = struct.pack("<I", proto)
    return bytes(p)


def proc(pid):
    return tlv(0, struct.pack("<I", pid))


def con(inode, *subs):
    return tlv(1, struct.pack("<I", inode) + b"".join(subs))


def sub(stype, text):
    return tlv(stype, text if isinstance(text, bytes) else text.encode() + b"\0")


def fixed(range_flags=3, period=10, ssl=1, cip=2, proto=0x19, num=0):
    return (tlv(100, struct.pack("<I", range_flags))
            + tlv(101, params(period, ssl, cip, proto))
            + tlv(102, struct.pack("<I", num)))


def msg(tlvs, flag=3, state=0, msg_len=None):
    return struct.pack("<HHI", flag, state, len(tlvs) if msg_len is None else msg_len) + tlvs


def body(objs=(), flag=3, state=0, **kw):
    objs = list(objs)
    return msg(fixed(num=len(objs), **kw) + b"".join(objs), flag, state)


CID = "3f4e" + "0123456789abcdef" * 3 + "0123456789ab"   # 64 hex digits
CID2 = "ab" * 32
assert len(CID) == 64


# ---------------------------------------------------------------------------------------
# Well-formed messages

def test_decode_all_fields():
    b = body([proc(1234), con(777, sub(1000, CID), sub(1003, "/usr/lib/libssl.so.3")),
              proc(99)], flag=1, state=0, range_flags=5, period=30, ssl=1, cip=2,
             proto=0x0C7F)
    cfg = decode(b)
    assert isinstance(cfg, IpcConfig)
    assert cfg.flags == 1 and cfg.snooper_state == 0
    assert cfg.range_flags == 5
    assert cfg.period == 30 and cfg.support_ssl == 1 and cfg.cluster_ip_backend == 2
    assert cfg.proto_flags == 0x0C7F
    assert cfg.pids == (1234, 99)
    assert cfg.containers == (Container(777, CID, "/usr/lib/libssl.so.3"),)
    assert cfg.snooper_num == 3
    with pytest.raises(AttributeError):
        cfg.period = 1                        # immutable


def test_decode_only_reads_documented_param_offsets():
    # every other byte of probe_params set: only period@0, ssl@29, cip@35, proto@580 count
    p = bytearray(b"\xff" * 1184)
    p[0:4] = struct.pack("<I", 60)
    p[29], p[35] = 0, 1
    p[580:584] = struct.pack("<I", 0x21)
    tlvs = tlv(100, struct.pack("<I", 1)) + tlv(101, bytes(p)) + tlv(102, b"\0" * 4)
    cfg = decode(msg(tlvs))
    assert (cfg.period, cfg.support_ssl, cfg.cluster_ip_backend, cfg.proto_flags) == \
        (60, 0, 1, 0x21)


def test_decode_many_objects_and_limit():
    objs = [proc(p) for p in range(1, 1001)]
    cfg = decode(body(objs))
    assert cfg.pids == tuple(range(1, 1001)) and cfg.snooper_num == 1000
    with pytest.raises(IpcError, match="more than 1000"):
        decode(body(objs + [proc(5000)]))
    with pytest.raises(IpcError, match="more than 1000"):
        decode(body(objs[:-1] + [con(1), con(2)]))


def test_containers_with_and_without_sub_tlvs():
    objs = [
        con(11),                                         # inode only: accepted (fix)
        con(12, sub(1000, CID)),                         # id only
        con(13, sub(1003, "/lib/libssl.so.1.1"), sub(1000, CID2)),   # any order
        con(14, sub(1001, "name"), sub(1002, "/lib/libc.so.6"), sub(1000, CID),
            sub(1004, "pod"), sub(1005, "podname"), sub(1006, "10.0.0.1"),
            sub(1007, "eth0"), sub(1003, "/ssl")),       # skipped sub-types
        con(15, sub(1000, b"\0")),                       # empty id -> None
    ]
    cfg = decode(body(objs))
    assert cfg.containers == (
        Container(11, None, None),
        Container(12, CID, None),
        Container(13, CID2, "/lib/libssl.so.1.1"),
        Container(14, CID, "/ssl", "pod"),
        Container(15, None, None),
    )
    assert cfg.pids == ()


def test_tlv_order_and_custom_msg():
    tlvs = (proc(7) + tlv(102, struct.pack("<I", 1)) + tlv(103, b"custom-stuff")
            + tlv(101, params(5)) + tlv(100, struct.pack("<I", 2)))
    cfg = decode(msg(tlvs))
    assert cfg.pids == (7,) and cfg.range_flags == 2 and cfg.period == 5


def test_declared_snooper_num_is_reported_as_sent():
    tlvs = fixed(num=5) + proc(1)
    assert decode(msg(tlvs)).snooper_num == 5


def test_flags_semantics():
    for flags, params_chg, snoopers_chg in [(0, True, True), (1, False, True),
                                            (2, True, False), (3, True, True)]:
        cfg = decode(body(flag=flags))
        assert cfg.params_changed is params_chg
        assert cfg.snoopers_changed is snoopers_chg


def test_accepts_bytearray_and_memoryview():
    b = body([proc(3)])
    assert decode(bytearray(b)) == decode(memoryview(b)) == decode(b)


# ---------------------------------------------------------------------------------------
# Malformed messages: IpcError with a clear message

GOOD = fixed()

MALFORMED = [
    (b"", "too short"),
    (b"\x03\x00\x00\x00\x00\x00\x00", "too short"),
    (msg(GOOD, msg_len=len(GOOD) + 1), "does not match"),
    (msg(GOOD, msg_len=len(GOOD) - 1), "does not match"),
    (msg(GOOD, msg_len=5 * 1024 * 1024), "exceeds"),
    (msg(GOOD, state=2), "snooper_state"),
    (msg(GOOD + b"\x00\x00\x04"), "truncated TLV header"),
    (msg(GOOD + struct.pack("<HH", 0, 4) + b"\x01\x02"), "exceeds the message"),
    (msg(tlv(100, b"\1\0") + tlv(101, params()) + tlv(102, b"\0" * 4)), "TLV 100"),
    (msg(tlv(100, b"\1\0\0\0") + tlv(101, params()[:-1]) + tlv(102, b"\0" * 4)),
     "length 1183, expected 1184"),
    (msg(tlv(100, b"\1\0\0\0") + tlv(101, params() + b"\0") + tlv(102, b"\0" * 4)),
     "length 1185, expected 1184"),
    (msg(tlv(100, b"\1\0\0\0") + tlv(101, params()) + tlv(102, b"\0" * 8)), "TLV 102"),
    (msg(GOOD + tlv(0, b"\1\0")), "proc object"),
    (msg(GOOD + tlv(0, b"\1\0\0\0\0\0\0\0")), "proc object"),
    (msg(GOOD + tlv(1, b"")), "container object"),
    (msg(GOOD + tlv(1, b"\1\0\0")), "container object"),
    (msg(GOOD + tlv(1, b"\1\0\0\0\xe8\x03")), "truncated sub-TLV"),
    (msg(GOOD + tlv(1, b"\1\0\0\0" + struct.pack("<HH", 1000, 9) + b"abc\0")),
     "exceeds the object"),
    (msg(GOOD + con(1, sub(999, "x"))), "unknown sub-TLV type 999"),
    (msg(GOOD + con(1, sub(1000, b"abc"))), "container id .* not NUL-terminated"),
    (msg(GOOD + con(1, sub(1003, b""))), "libssl path .* not NUL-terminated"),
    (msg(GOOD + tlv(2, b"\0\0\0\0")), "unknown TLV type 2"),
    (msg(GOOD + tlv(104, b"")), "unknown TLV type 104"),
    (msg(GOOD + tlv(0xFFFF, b"")), "unknown TLV type 65535"),
    (msg(tlv(101, params()) + tlv(102, b"\0" * 4)), "TLV 100 .* missing"),
    (msg(tlv(100, b"\1\0\0\0") + tlv(102, b"\0" * 4)), "TLV 101 .* missing"),
    (msg(tlv(100, b"\1\0\0\0") + tlv(101, params())), "TLV 102 .* missing"),
    (msg(GOOD + tlv(101, params())), "appears twice"),
    (msg(fixed(num=1001)), "snooper num 1001"),
    (msg(b""), "missing"),
]


@pytest.mark.parametrize("data, pattern", MALFORMED,
                         ids=["m%02d" % i for i in range(len(MALFORMED))])
def test_malformed(data, pattern):
    with pytest.raises(IpcError, match=pattern) as info:
        decode(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [None, 5, "text", [1, 2]])
def test_not_bytes(value):
    with pytest.raises(IpcError):
        decode(value)


# ---------------------------------------------------------------------------------------
# Fuzz: whatever the input, decode returns an IpcConfig or raises IpcError

def _only_ipc_error(data):
    try:
        return decode(data)
    except IpcError:
        return None


def test_fuzz_random_bytes():
    rng = random.Random(1234)
    for _ in range(3000):
        n = rng.choice([0, 1, 7, 8, 9, 12, 16, rng.randrange(0, 3000)])
        _only_ipc_error(bytes(rng.getrandbits(8) for _ in range(n)))


def test_fuzz_random_header_with_consistent_length():
    rng = random.Random(99)
    for _ in range(3000):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 400)))
        _only_ipc_error(msg(payload, flag=rng.getrandbits(16), state=rng.randrange(3)))


def test_fuzz_truncations_and_mutations():
    rng = random.Random(7)
    good = body([proc(5), con(9, sub(1000, CID), sub(1003, "/lib/x.so")), con(10), proc(6)])
    assert decode(good).pids == (5, 6)
    for cut in range(len(good)):
        assert _only_ipc_error(good[:cut]) is None      # every truncation is an error
        # ... also with msg_len patched to the truncated size
        t = bytearray(good[:cut])
        if cut >= 8:
            t[4:8] = struct.pack("<I", cut - 8)
            _only_ipc_error(bytes(t))
    for _ in range(5000):
        m = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            m[rng.randrange(len(m))] = rng.getrandbits(8)
        _only_ipc_error(bytes(m))


def test_fuzz_structured_tlvs():
    rng = random.Random(42)
    types = [0, 1, 100, 101, 102, 103, 1000, 1003, 5, 0xFFFF]
    for _ in range(3000):
        parts = []
        for _ in range(rng.randrange(0, 8)):
            t = rng.choice(types)
            if t == 1:
                inner = struct.pack("<I", rng.getrandbits(32))
                for _ in range(rng.randrange(0, 3)):
                    st = rng.choice([1000, 1001, 1003, 1007, 999])
                    sv = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 6)))
                    if rng.random() < 0.7:
                        sv += b"\0"
                    inner += tlv(st, sv)
                parts.append(tlv(1, inner))
            elif t == 101:
                parts.append(tlv(101, params(rng.getrandbits(32))[:rng.choice([1184, 1184, 7])]))
            else:
                parts.append(tlv(t, bytes(rng.getrandbits(8)
                                          for _ in range(rng.choice([0, 4, 4, 5])))))
        _only_ipc_error(msg(b"".join(parts)))


# ---------------------------------------------------------------------------------------
# The queue through the kernel

@pytest.fixture
def gopher(monkeypatch, tmp_path):
    with fake.FakeGopher(directory=str(tmp_path)) as g:
        monkeypatch.setenv(msgqueue.FTOK_PATH_ENV, g.path)
        yield g


def test_queue_key_from_env(monkeypatch, tmp_path):
    f = tmp_path / "gg"
    f.write_text("")
    monkeypatch.setenv("L7PROBE_IPC_FTOK_PATH", str(f))
    assert msgqueue.ftok_path() == str(f)
    assert msgqueue.queue_key() == msgqueue.ftok(str(f), "g") == msgqueue.ftok(str(f), ord("g"))
    monkeypatch.delenv("L7PROBE_IPC_FTOK_PATH")
    assert msgqueue.ftok_path() == "/usr/bin/gala-gopher"


def test_ftok_missing_file(tmp_path):
    with pytest.raises(OSError) as info:
        msgqueue.ftok(str(tmp_path / "nope"), "g")
    assert info.value.errno == errno.ENOENT


def test_open_requires_existing_queue(tmp_path):
    f = tmp_path / "no-queue-here"
    f.write_text("")
    with pytest.raises(OSError) as info:
        msgqueue.MessageQueue.open(str(f))
    assert info.value.errno == errno.ENOENT


def test_round_trip_drain(gopher):
    q = msgqueue.MessageQueue.open()
    gopher.send(pids=[1, 2], msg_flag=1, period=7)
    gopher.send(pids=[3], containers=[(42, CID, "/lib/libssl.so.3"), (43,)], msg_flag=2,
                period=9, range_flags=1, proto_flags=0x8, support_ssl=1)
    gopher.send(pids=[4], msg_flag=1, mtype=5)           # for another probe
    gopher.send_raw(body([proc(5), proc(6)], flag=1, period=11))
    assert gopher.pending() == 4
    res = drain(q)
    assert res.count == 3 and res.flags == 3
    assert res.error is None and res.queue_error is None and not res.queue_removed
    assert res.config.pids == (5, 6) and res.config.period == 11
    assert res.config.flags == 3 and res.params_changed
    assert gopher.pending() == 1                         # mtype 5 left alone
    res = drain(q)
    assert res.count == 0 and res.config is None and res.error is None


def test_round_trip_all_fields(gopher):
    q = msgqueue.MessageQueue.open()
    gopher.send(range_flags=6, period=17, support_ssl=1, proto_flags=0x411, pids=[10],
                containers=[(42, CID, "/lib/libssl.so.3"), (43,), (44, CID2)], msg_flag=3,
                cluster_ip_backend=1)
    cfg = drain(q).config
    assert cfg == IpcConfig(flags=3, snooper_state=0, range_flags=6, period=17,
                            support_ssl=1, cluster_ip_backend=1, proto_flags=0x411,
                            pids=(10,), containers=(Container(42, CID, "/lib/libssl.so.3"),
                                                    Container(43), Container(44, CID2)),
                            snooper_num=4)


def test_drain_last_malformed_keeps_error(gopher):
    q = msgqueue.MessageQueue.open()
    gopher.send(pids=[1], msg_flag=1)
    gopher.send_raw(msg(GOOD + tlv(77, b""), flag=2))
    res = drain(q)
    assert res.count == 2 and res.flags == 3 and res.config is None
    assert "unknown TLV type 77" in res.error and "\n" not in res.error
    gopher.send_raw(b"\x01")                             # not even a header
    res = drain(q)
    assert res.count == 1 and res.config is None and "too short" in res.error


def test_drain_malformed_then_good(gopher):
    gopher.send_raw(b"garbage")
    gopher.send(pids=[8], msg_flag=0)
    res = drain(msgqueue.MessageQueue.open().msqid)        # a plain msqid works too
    assert res.error is None and res.config.pids == (8,)
    assert res.flags == (ord("g") | ord("a") << 8)         # flags of the garbage ORed in


def test_drain_flags_zero_is_params_change(gopher):
    q = msgqueue.MessageQueue.open()
    gopher.send(msg_flag=0)
    res = drain(q)
    assert res.flags == 0 and res.params_changed and res.config.params_changed


def test_msgsnd_and_receive_all(gopher):
    qid = msgqueue.msgget(msgqueue.queue_key(), 0o600)
    msgqueue.msgsnd(qid, 4, b"abc")
    msgqueue.msgsnd(qid, 4, b"")
    res = msgqueue.receive_all(qid, 4)
    assert [m.payload for m in res.messages] == [b"abc", b""]
    assert not any(m.truncated for m in res.messages) and not res.removed
    with pytest.raises(ValueError):
        msgqueue.msgsnd(qid, 0, b"x")


def test_oversized_message_does_not_wedge_the_queue(gopher, monkeypatch):
    qid = msgqueue.msgget(msgqueue.queue_key(), 0o600)
    big = body([proc(p) for p in range(1, 100)])
    gopher.send_raw(big)
    gopher.send_raw(big)
    res = msgqueue.receive_all(qid, 4, bufsize=100)        # E2BIG: taken with MSG_NOERROR
    assert [(len(m.payload), m.truncated) for m in res.messages] == [(100, True), (100, True)]
    assert gopher.pending() == 0
    real = msgqueue.receive_all
    monkeypatch.setattr(msgqueue, "receive_all", lambda q, t: real(q, t, bufsize=100))
    gopher.send_raw(big)
    res = drain(qid)
    assert res.count == 1 and res.config is None and "larger than" in res.error


def test_queue_removed_is_reported(gopher):
    q = msgqueue.MessageQueue.open()
    gopher.send(pids=[1])
    gopher.remove_queue()
    res = drain(q)                                         # must not raise
    assert res.queue_removed and "removed" in res.queue_error
    assert res.count == 0 and res.config is None
    assert q.removed and not q.reopen()
    gopher.recreate_queue()                                # gala-gopher restarted
    assert q.reopen() and not q.removed
    gopher.send(pids=[2])
    assert drain(q).config.pids == (2,)


def test_queue_removed_while_messages_pending_then_send_fails(gopher):
    q = msgqueue.MessageQueue.open()
    msgqueue.msgctl_rmid(q.msqid)
    assert q.receive_all(4).removed
    with pytest.raises(OSError):
        q.send(4, b"x")
    gopher.msqid = None                                    # already removed


# ---------------------------------------------------------------------------------------
# Containers: /proc/PID/cgroup

CGROUPS = {
    # pid: (cgroup file content, expected container id)
    101: ("12:cpuset:/docker/%s\n11:memory:/docker/%s\n0::/\n" % (CID, CID), CID),
    102: ("0::/system.slice/docker-%s.scope\n" % CID, CID),
    103: ("4:cpuset:/kubepods/besteffort/pod0f6a2b8e-1d2c-4e9a-9b7a-2f1f3d5e6a7b/%s\n"
          % CID2, CID2),
    104: ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f6a2b8e_1d2c_"
          "4e9a_9b7a_2f1f3d5e6a7b.slice/cri-containerd-%s.scope\n" % CID2, CID2),
    105: ("0::/kubepods.slice/kubepods-besteffort.slice/crio-%s.scope\n" % CID, CID),
    106: ("0::/machine.slice/libpod-%s.scope/container\n" % CID2, CID2),
    107: ("0::/machine.slice/libpod-conmon-%s.scope\n" % CID2, None),     # conmon
    108: ("1:name=systemd:/user.slice/user-0.slice/session-1.scope\n0::/\n", None),
    109: ("4:memory:/process_api/a695fc25f737a143b9912ffd169e0607\n3:cpuset:/\n", None),
    110: ("0::/default/%s\n" % CID, CID),                               # containerd ns
    111: ("5:cpuset:/docker/%s/docker/%s\n" % (CID, CID2), CID2),         # nested: inner
}


@pytest.fixture
def fake_proc(tmp_path):
    root = tmp_path / "proc"
    root.mkdir()
    for pid, (content, _) in CGROUPS.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "cgroup").write_text(content)
    (root / "999").mkdir()                     # vanished process: no cgroup file
    (root / "self").mkdir()                    # not a pid
    (root / "meminfo").write_text("x")
    return root


def test_container_of_pid_patterns(fake_proc):
    for pid, (_, want) in CGROUPS.items():
        assert container_of_pid(pid, proc_root=str(fake_proc)) == want, pid
    assert container_of_pid(999, proc_root=str(fake_proc)) is None
    assert container_of_pid(12345, proc_root=str(fake_proc)) is None


def test_container_of_pid_host_child():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert container_of_pid(child.pid) is None
        assert container_of_pid(os.getpid()) is None
    finally:
        child.kill()
        child.wait()


def test_pids_of_container_by_id(fake_proc):
    root = str(fake_proc)
    assert pids_of_container(CID, 0, proc_root=root) == {101, 102, 105, 110}
    assert pids_of_container(CID[:12], 0, proc_root=root) == {101, 102, 105, 110}
    assert pids_of_container(CID2.upper(), 0, proc_root=root) == {103, 104, 106, 111}
    assert pids_of_container("f" * 64, 0, proc_root=root) == frozenset()
    assert pids_of_container(None, 0, proc_root=root) == frozenset()
    assert pids_of_container("", 0, proc_root=root) == frozenset()
    multi = pids_of_containers([(CID, 0), (CID2[:12], 0), (None, 0)], proc_root=root)
    assert multi == {0: {101, 102, 105, 110}, 1: {103, 104, 106, 111}, 2: frozenset()}
    assert pids_of_containers([], proc_root=root) == {}


def test_pids_of_container_by_cgroup_inode(tmp_path):
    proc_root, cg = tmp_path / "proc", tmp_path / "cgroup"
    v1 = cg / "cpuset" / "kubepods" / "pod1" / "abc"        # an id we cannot parse
    v2 = cg / "system.slice" / "odd-runtime.scope"
    v1.mkdir(parents=True)
    v2.mkdir(parents=True)
    for pid, content in [(1, "3:cpuset:/kubepods/pod1/abc\n0::/\n"), (2, "0::/system.slice/"
                         "odd-runtime.scope\n"), (3, "3:cpuset:/\n0::/\n")]:
        (proc_root / str(pid)).mkdir(parents=True)
        (proc_root / str(pid) / "cgroup").write_text(content)
    kw = dict(proc_root=str(proc_root), cgroup_root=str(cg))
    assert pids_of_container(None, v1.stat().st_ino, **kw) == {1}
    assert pids_of_container("deadbeef" * 8, v2.stat().st_ino, **kw) == {2}
    assert pids_of_container(None, 1, **kw) == frozenset()


def test_pids_of_container_real_proc():
    # the host's own processes are in no container; the scan must work on the real /proc
    assert os.getpid() not in pids_of_container(CID, 0)
    me = os.stat("/proc/self").st_ino
    assert isinstance(pids_of_container(None, me), frozenset)


# ---------------------------------------------------------------------------------------
# Settings

def _cfg(**kw):
    base = dict(flags=3, snooper_state=0, range_flags=7, period=10, support_ssl=1,
                cluster_ip_backend=0, proto_flags=0x1, pids=(), containers=(), snooper_num=0)
    base.update(kw)
    return IpcConfig(**base)


@pytest.mark.parametrize("range_flags, tables", [
    (0x1, {"l7_link"}), (0x2, {"l7_rpc", "l7_rpc_api"}), (0x4, {"l7_trace"}),
    (0x3, {"l7_link", "l7_rpc", "l7_rpc_api"}), (0x7, set(ALL_TABLES)), (0, set()),
    (0xF8, {"pod"}), (0xF0, set()),
])
def test_settings_tables(range_flags, tables):
    assert settings_from_ipc(_cfg(range_flags=range_flags)).tables == tables


def test_settings_from_ipc(fake_proc):
    cons = (Container(1, CID2, "/lib/libssl.so.3"),)
    s = settings_from_ipc(_cfg(period=0, pids=(7, 8), containers=cons, support_ssl=0,
                               proto_flags=0x418, cluster_ip_backend=2),
                          proc_root=str(fake_proc))
    assert s.period == 5 and s.proto_flags == 0x418 and s.support_ssl is False
    assert s.pids == {7, 8, 103, 104, 106, 111} and s.containers == cons
    assert s.proc_pids == {7, 8} and s.exclude_pids == frozenset()
    assert s.cluster_ip_backend == 2
    assert settings_from_ipc(_cfg(period=60)).period == 60
    assert settings_from_ipc(_cfg()).pids == frozenset()     # empty whitelist: nothing


def test_settings_blacklist(fake_proc):
    s = settings_from_ipc(_cfg(snooper_state=1, pids=(7,), containers=(Container(0, CID),)),
                          proc_root=str(fake_proc))
    assert s.pids is None and s.exclude_pids == {7, 101, 102, 105, 110}


def test_refresh_pids(fake_proc):
    s = settings_from_ipc(_cfg(pids=(7,), containers=(Container(0, CID),)),
                          proc_root=str(fake_proc))
    (fake_proc / "555").mkdir()
    (fake_proc / "555" / "cgroup").write_text("0::/system.slice/docker-%s.scope\n" % CID)
    s2 = refresh_pids(s, proc_root=str(fake_proc))
    assert s2.pids == s.pids | {555}
    plain = settings_from_ipc(_cfg(pids=(7,)))
    assert refresh_pids(plain) is plain


def test_settings_from_options_defaults():
    s = settings_from_options()
    assert s == ProbeSettings(period=5, proto_flags=registry.ALL_FLAGS, tables=ALL_TABLES,
                              pids=None, containers=(), support_ssl=True)


def test_settings_from_options_values(fake_proc):
    s = settings_from_options(period="30", proto="http,redis", range_="l7_rpc_metrics",
                              pids=["12,13", 14], containers=[CID[:12].upper()], no_ssl=True,
                              proc_root=str(fake_proc))
    assert s.period == 30
    assert s.proto_flags == registry.BY_NAME["http"].flag | registry.BY_NAME["redis"].flag
    assert s.tables == {"l7_rpc", "l7_rpc_api"}
    assert s.pids == {12, 13, 14, 101, 102, 105, 110}
    assert s.containers == (Container(0, CID[:12], None),)
    assert s.support_ssl is False
    assert settings_from_options(proto="http2,rocketmq").proto_flags == 0x400 | 0x800
    assert settings_from_options(range_="L7_BYTES_METRICS,l7_rpc_trace").tables == \
        {"l7_link", "l7_trace"}
    assert settings_from_options(range_="all").tables == ALL_TABLES
    assert settings_from_options(pids="5").pids == {5}
    assert settings_from_options(period=600).period == 600


@pytest.mark.parametrize("kw, pattern", [
    (dict(period="0"), "invalid period"),
    (dict(period="-5"), "invalid period"),
    (dict(period="1.5"), "invalid period"),
    (dict(period="abc"), "invalid period"),
    (dict(period=10 ** 9), "invalid period"),
    (dict(proto="http,foo"), "unknown protocol"),
    (dict(proto=","), "no protocol"),
    (dict(range_="l7_foo"), "unknown sub-probe"),
    (dict(range_=""), "no sub-probe"),
    (dict(pids="abc"), "invalid pid"),
    (dict(pids="0"), "invalid pid"),
    (dict(pids=["1", "-3"]), "invalid pid"),
    (dict(pids="99999999"), "invalid pid"),
    (dict(containers="xyz"), "invalid container id"),
    (dict(containers="abc123"), "invalid container id"),
    (dict(containers="a" * 65), "invalid container id"),
])
def test_settings_from_options_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        settings_from_options(**kw)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------
# builder.py and the fake gala-gopher agree with the decoder

def test_builder_round_trip():
    b = builder.encode(range_flags=5, period=12, support_ssl=1, cluster_ip_backend=1,
                       proto_flags=0x10, pids=[3, 4],
                       containers=[(9, CID, "/ssl"), Container(10)], msg_flag=2,
                       snooper_state=1)
    assert decode(b) == IpcConfig(2, 1, 5, 12, 1, 1, 0x10, (3, 4),
                                  (Container(9, CID, "/ssl"), Container(10)), 4)


def test_fake_gopher_message_matches_documented_layout():
    b = fake.build_body(range_flags=3, period=20, support_ssl=1, proto_flags=0x9,
                        pids=[5], containers=[(9, CID)])
    want = body([proc(5), con(9, sub(1000, CID))], flag=3, range_flags=3, period=20,
                ssl=1, cip=0, proto=0x9)
    start = 8 + 8 + 4                                      # header, TLV 100, TLV 101 head
    assert len(b) == len(want) and b[:start] == want[:start]
    assert b[start + 1184:] == want[start + 1184:]         # TLV 102 and the objects
    p = b[start:start + 1184]                              # TLV 101 value
    assert p[0:4] == want[start:start + 4] and p[29] == 1 and p[580:584] == want[start + 580:start + 584]
    assert struct.unpack_from("<I", p, 4)[0] == 5000 and p[592:606] == b"localhost:4040"
    cfg = decode(b)
    assert (cfg.period, cfg.support_ssl, cfg.proto_flags, cfg.pids) == (20, 1, 0x9, (5,))
    assert cfg.containers == (Container(9, CID, None),)


def test_launch_probe_helper(tmp_path):
    script = tmp_path / "probe"
    script.write_text(textwrap.dedent("""\
        #!%s
        import signal, sys, time
        signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
        print("|t|1|2|", flush=True)
        print("[INFO] hello", file=sys.stderr, flush=True)
        time.sleep(0.3)
        print("|t|3|4|", flush=True)
        time.sleep(60)
        """ % sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    with fake.launch_probe(str(script), env=dict(os.environ)) as p:
        assert p.readline(timeout=10) == "|t|1|2|"
        assert p.readline(timeout=0.05) is None           # not yet
        assert p.wait_for(lambda ln: ln.startswith("|t|3"), timeout=10) == "|t|3|4|"
        assert p.stop(signal.SIGINT, timeout=10) == 0
        assert "[INFO] hello" in p.stderr_text()
        assert p.readline(timeout=1) is None               # end of output
