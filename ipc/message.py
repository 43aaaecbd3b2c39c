"""Decoding gala-gopher's IPC message body (compat §3.2-§3.5) and draining the queue.

A body is what ``msgrcv`` returns after the ``long mtype``::

    u16 msg_flag | u16 snooper_state | u32 msg_len | msg_len bytes of TLVs
    TLV = u16 type | u16 len | len bytes of value          (native endianness)

    100 IPCT_PROBE_RANGE   len 4     u32 probe_range_flags (sub-probes)
    101 IPCT_PROBE_PARAMS  len 1184  struct probe_params (period@0, support_ssl@29,
                                     cluster_ip_backend@35, l7_probe_proto_flags@580)
    102 IPCT_SNOOPER_NUM   len 4     u32 number of snooper objects
    103 IPCT_CUSTOM_MSG    any       custom probes only: skipped
      0 SNOOPER_OBJ_PROC   len 4     u32 pid
      1 SNOOPER_OBJ_CON    len >= 4  u32 cpucg_inode, then sub-TLVs:
                                     1000 container id, 1003 libssl path (NUL-terminated);
                                     1001, 1002, 1004-1007 skipped

:func:`decode` raises :class:`IpcError` and nothing else on any malformed input.
Deviation from upstream: a container TLV carrying only its inode is accepted.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from ipc import msgqueue

IPC_FLAGS_SNOOPER_CHG = 0x01
IPC_FLAGS_PARAMS_CHG = 0x02

SNOOPER_STATE_WHITELIST = 0
SNOOPER_STATE_BLACKLIST = 1

PROBE_RANGE_L7BYTES_METRICS = 0x1
PROBE_RANGE_L7RPC_METRICS = 0x2
PROBE_RANGE_L7RPC_TRACE = 0x4

IPCT_PROBE_RANGE = 100
IPCT_PROBE_PARAMS = 101
IPCT_SNOOPER_NUM = 102
IPCT_CUSTOM_MSG = 103
SNOOPER_OBJ_PROC = 0
SNOOPER_OBJ_CON = 1

IPCT_CONTAINER_ID = 1000
IPCT_CONTAINER_NAME = 1001
IPCT_LIBC_PATH = 1002
IPCT_LIBSSL_PATH = 1003
IPCT_POD_ID = 1004
IPCT_POD_NAME = 1005
IPCT_POD_IP = 1006
IPCT_DEV = 1007
_SKIPPED_SUBTYPES = frozenset((IPCT_CONTAINER_NAME, IPCT_LIBC_PATH,
                               IPCT_POD_NAME, IPCT_POD_IP, IPCT_DEV))

PROBE_PARAMS_SIZE = 1184
OFF_PERIOD = 0
OFF_SUPPORT_SSL = 29
OFF_CLUSTER_IP_BACKEND = 35
OFF_L7_PROTO_FLAGS = 580

SNOOPER_MAX = 1000
HEADER = struct.Struct("=HHI")      # msg_flag, snooper_state, msg_len
TLV = struct.Struct("=HH")          # type, len
U32 = struct.Struct("=I")

_TOP_NAMES = {IPCT_PROBE_RANGE: "probe range", IPCT_PROBE_PARAMS: "probe params",
              IPCT_SNOOPER_NUM: "snooper num"}


class IpcError(Exception):
    """A malformed IPC message; the message says what is wrong."""


@dataclass(frozen=True)
class Container:
    cpucg_inode: int
    container_id: Optional[str] = None     # sub-TLV 1000, None if absent or empty
    libssl_path: Optional[str] = None      # sub-TLV 1003, None if absent or empty
    pod_id: Optional[str] = None           # sub-TLV 1004 (stock gala-gopher sends none):
                                           # the whole pod is watched (ipc/config.py)


@dataclass(frozen=True)
class IpcConfig:
    flags: int                 # msg_flag (after drain: OR of every message drained)
    snooper_state: int         # 0 whitelist, 1 blacklist
    range_flags: int           # TLV 100: PROBE_RANGE_* sub-probes
    period: int                # probe_params.period (s)
    support_ssl: int           # probe_params.support_ssl
    cluster_ip_backend: int    # probe_params.cluster_ip_backend
    proto_flags: int           # probe_params.l7_probe_proto_flags
    pids: Tuple[int, ...]      # SNOOPER_OBJ_PROC objects, in message order
    containers: Tuple[Container, ...]   # SNOOPER_OBJ_CON objects, in message order
    snooper_num: int           # object count declared in TLV 102

    @property
    def params_changed(self) -> bool:
        """PARAMS_CHG set, or flags == 0 (treated like PARAMS_CHG, compat §3.5)."""
        return self.flags == 0 or bool(self.flags & IPC_FLAGS_PARAMS_CHG)

    @property
    def snoopers_changed(self) -> bool:
        return self.flags == 0 or bool(self.flags & IPC_FLAGS_SNOOPER_CHG)


def _cstring(value: bytes, what: str) -> Optional[str]:
    if not value or value[-1] != 0:
        raise IpcError("%s is not NUL-terminated" % what)
    text = value[:value.index(0)]
    return os.fsdecode(text) if text else None


def _decode_container(value: bytes, where: int) -> Container:
    if len(value) < 4:
        raise IpcError("container object at offset %d: length %d < 4 (no cgroup inode)"
                       % (where, len(value)))
    inode = U32.unpack_from(value, 0)[0]
    con_id = libssl = pod_id = None
    off, end = 4, len(value)
    while off < end:
        if end - off < TLV.size:
            raise IpcError("container object at offset %d: truncated sub-TLV header "
                           "(%d bytes left)" % (where, end - off))
        stype, slen = TLV.unpack_from(value, off)
        off += TLV.size
        if slen > end - off:
            raise IpcError("container object at offset %d: sub-TLV %d length %d exceeds "
                           "the object (%d bytes left)" % (where, stype, slen, end - off))
        sval = value[off:off + slen]
        off += slen
        if stype == IPCT_CONTAINER_ID:
            con_id = _cstring(sval, "container id (sub-TLV 1000)")
        elif stype == IPCT_LIBSSL_PATH:
            libssl = _cstring(sval, "libssl path (sub-TLV 1003)")
        elif stype == IPCT_POD_ID:
            pod_id = _cstring(sval, "pod id (sub-TLV 1004)")
        elif stype not in _SKIPPED_SUBTYPES:
            raise IpcError("container object at offset %d: unknown sub-TLV type %d"
                           % (where, stype))
    return Container(inode, con_id, libssl, pod_id)


def decode(body: bytes) -> IpcConfig:
    """Decode one message body (the bytes after mtype).  Raises IpcError only."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise IpcError("message body is not bytes: %s" % type(body).__name__)
    body = bytes(body)
    if len(body) < HEADER.size:
        raise IpcError("message too short: %d bytes, header needs %d" % (len(body), HEADER.size))
    msg_flag, snooper_state, msg_len = HEADER.unpack_from(body, 0)
    if msg_len > msgqueue.MAX_MSG_LEN:
        raise IpcError("msg_len %d exceeds the %d-byte limit" % (msg_len, msgqueue.MAX_MSG_LEN))
    if msg_len != len(body) - HEADER.size:
        raise IpcError("msg_len %d does not match the %d TLV bytes received"
                       % (msg_len, len(body) - HEADER.size))
    if snooper_state not in (SNOOPER_STATE_WHITELIST, SNOOPER_STATE_BLACKLIST):
        raise IpcError("snooper_state %d is neither 0 (whitelist) nor 1 (blacklist)"
                       % snooper_state)

    top = {}
    pids = []
    containers = []
    off, end = HEADER.size, len(body)
    while off < end:
        where = off
        if end - off < TLV.size:
            raise IpcError("truncated TLV header at offset %d (%d bytes left)" % (off, end - off))
        ttype, tlen = TLV.unpack_from(body, off)
        off += TLV.size
        if tlen > end - off:
            raise IpcError("TLV type %d at offset %d: length %d exceeds the message "
                           "(%d bytes left)" % (ttype, where, tlen, end - off))
        value = body[off:off + tlen]
        off += tlen
        if ttype in (SNOOPER_OBJ_PROC, SNOOPER_OBJ_CON):
            if len(pids) + len(containers) >= SNOOPER_MAX:
                raise IpcError("more than %d snooper objects" % SNOOPER_MAX)
            if ttype == SNOOPER_OBJ_PROC:
                if tlen != 4:
                    raise IpcError("proc object at offset %d: length %d, expected 4"
                                   % (where, tlen))
                pids.append(U32.unpack(value)[0])
            else:
                containers.append(_decode_container(value, where))
        elif ttype in _TOP_NAMES:
            expected = PROBE_PARAMS_SIZE if ttype == IPCT_PROBE_PARAMS else 4
            if tlen != expected:
                raise IpcError("TLV %d (%s) at offset %d: length %d, expected %d"
                               % (ttype, _TOP_NAMES[ttype], where, tlen, expected))
            if ttype in top:
                raise IpcError("TLV %d (%s) appears twice" % (ttype, _TOP_NAMES[ttype]))
            top[ttype] = value
        elif ttype == IPCT_CUSTOM_MSG:
            pass                        # custom probes only; nothing for l7
        else:
            raise IpcError("unknown TLV type %d at offset %d" % (ttype, where))

    for ttype, name in _TOP_NAMES.items():
        if ttype not in top:
            raise IpcError("TLV %d (%s) missing" % (ttype, name))
    snooper_num = U32.unpack(top[IPCT_SNOOPER_NUM])[0]
    if snooper_num > SNOOPER_MAX:
        raise IpcError("snooper num %d exceeds %d" % (snooper_num, SNOOPER_MAX))
    params = top[IPCT_PROBE_PARAMS]
    return IpcConfig(
        flags=msg_flag,
        snooper_state=snooper_state,
        range_flags=U32.unpack(top[IPCT_PROBE_RANGE])[0],
        period=U32.unpack_from(params, OFF_PERIOD)[0],
        support_ssl=params[OFF_SUPPORT_SSL],
        cluster_ip_backend=params[OFF_CLUSTER_IP_BACKEND],
        proto_flags=U32.unpack_from(params, OFF_L7_PROTO_FLAGS)[0],
        pids=tuple(pids),
        containers=tuple(containers),
        snooper_num=snooper_num,
    )


@dataclass(frozen=True)
class DrainResult:
    count: int                       # messages taken from the queue
    flags: int                       # OR of msg_flag of every readable message
    config: Optional[IpcConfig]      # last body decoded (flags = the OR); None if none / bad
    error: Optional[str] = None      # last body malformed: log "[ERROR] ..." and keep the
                                     # previous configuration
    queue_error: Optional[str] = None   # receiving stopped early (e.g. queue removed)
    queue_removed: bool = False

    @property
    def params_changed(self) -> bool:
        return self.flags == 0 or bool(self.flags & IPC_FLAGS_PARAMS_CHG)


def drain(queue, mtype: int = msgqueue.PROBE_L7) -> DrainResult:
    """Take every pending message of ``mtype`` from ``queue`` (a MessageQueue or a msqid).

    Like upstream ``recv_ipc_msg``: the flags of all messages are ORed and only the last
    body is decoded.  If that body is malformed, ``config`` is None and ``error`` says why.
    Never raises for queue or message trouble.
    """
    if isinstance(queue, msgqueue.MessageQueue):
        res = queue.receive_all(mtype)
    else:
        res = msgqueue.receive_all(int(queue), mtype)
    flags = 0
    for msg in res.messages:
        if len(msg.payload) >= 2:
            flags |= struct.unpack_from("=H", msg.payload, 0)[0]
    config = error = None
    if res.messages:
        last = res.messages[-1]
        if last.truncated:
            error = ("IPC message larger than the %d-byte receive buffer was dropped"
                     % msgqueue.RECV_BUF_LEN)
        else:
            try:
                config = replace(decode(last.payload), flags=flags)
            except IpcError as exc:
                error = "malformed IPC message ignored: %s" % exc
    return DrainResult(len(res.messages), flags, config, error, res.error, res.removed)
