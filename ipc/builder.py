"""Encoding an IPC message body the way gala-gopher does (for tools and debugging).

The decoder tests do not use this module as their oracle: they build bytes themselves from
the documented layout.  Sizes and offsets come from ``ipc/message.py``.
"""
from __future__ import annotations

import struct
from typing import Iterable, Optional, Sequence

from ipc import message as m


def tlv(ttype: int, value: bytes) -> bytes:
    return m.TLV.pack(ttype, len(value)) + value


def probe_params(period: int = 60, support_ssl: int = 0, cluster_ip_backend: int = 0,
                 proto_flags: int = 0) -> bytes:
    """A 1184-byte ``struct probe_params`` with the fields l7probe reads (others zero)."""
    buf = bytearray(m.PROBE_PARAMS_SIZE)
    struct.pack_into("=I", buf, m.OFF_PERIOD, period)
    buf[m.OFF_SUPPORT_SSL] = support_ssl
    buf[m.OFF_CLUSTER_IP_BACKEND] = cluster_ip_backend
    struct.pack_into("=I", buf, m.OFF_L7_PROTO_FLAGS, proto_flags)
    return bytes(buf)


def container_tlv(cpucg_inode: int, container_id: Optional[str] = None,
                  libssl_path: Optional[str] = None) -> bytes:
    value = m.U32.pack(cpucg_inode)
    if container_id is not None:
        value += tlv(m.IPCT_CONTAINER_ID, container_id.encode() + b"\0")
    if libssl_path is not None:
        value += tlv(m.IPCT_LIBSSL_PATH, libssl_path.encode() + b"\0")
    return tlv(m.SNOOPER_OBJ_CON, value)


def encode(range_flags: int = 0x7, period: int = 60, support_ssl: int = 0,
           cluster_ip_backend: int = 0, proto_flags: int = 0, pids: Iterable[int] = (),
           containers: Sequence = (), msg_flag: int = 3, snooper_state: int = 0) -> bytes:
    """Message body (after mtype).  ``containers``: Container objects or tuples
    ``(inode, id, libssl_path)``."""
    objs = [tlv(m.SNOOPER_OBJ_PROC, m.U32.pack(p)) for p in pids]
    for c in containers:
        if isinstance(c, m.Container):
            c = (c.cpucg_inode, c.container_id, c.libssl_path)
        objs.append(container_tlv(*c))
    tlvs = (tlv(m.IPCT_PROBE_RANGE, m.U32.pack(range_flags))
            + tlv(m.IPCT_PROBE_PARAMS, probe_params(period, support_ssl, cluster_ip_backend,
                                                    proto_flags))
            + tlv(m.IPCT_SNOOPER_NUM, m.U32.pack(len(objs)))
            + b"".join(objs))
    return m.HEADER.pack(msg_flag, snooper_state, len(tlvs)) + tlvs
