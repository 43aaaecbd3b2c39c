"""The one table of L7 protocols: names, upstream ids, IPC flag bits, parser modules.

Everything else derives from it: ``--proto`` names, the ``PROTO_*``/``FLAG_*`` macros the
BPF programs are compiled with (``bpf/loader.py``), the ``protocol`` column of the output,
and which parser handles a connection.

``proto_id`` is upstream's ``enum proto_type_t`` (compat §4.6), so the printed names are
upstream's.  ``flag`` is upstream's ``l7_probe_proto_flags`` bit (compat §3.5); HTTP2 and
RocketMQ have no upstream bit and use 0x400 and 0x800 (CONTRACT §3).
"""
from __future__ import annotations

import importlib
from typing import NamedTuple, Optional


class ProtoInfo(NamedTuple):
    name: str           # --proto name and printed `protocol` value
    proto_id: int       # upstream enum proto_type_t
    flag: int           # IPC / kernel filter bit
    module: Optional[str]  # sub-package of protocol/ with a PROTOCOL object, None if not yet parsed


PROTOCOLS = (
    ProtoInfo("http", 1, 0x0001, "protocol.http"),
    ProtoInfo("http2", 2, 0x0400, "protocol.http2"),
    ProtoInfo("mysql", 3, 0x0008, "protocol.mysql"),
    ProtoInfo("pgsql", 4, 0x0010, "protocol.pgsql"),
    ProtoInfo("dns", 5, 0x0002, None),
    ProtoInfo("redis", 6, 0x0004, "protocol.redis"),
    ProtoInfo("kafka", 10, 0x0020, None),
    ProtoInfo("mongo", 9, 0x0040, None),
    ProtoInfo("rocketmq", 12, 0x0800, None),
)

# Upstream's name vector (compat §2.5) for ids we never detect, so a stray id still prints.
_EXTRA_NAMES = {0: "unknown", 7: "nats", 8: "cql"}

BY_NAME = {p.name: p for p in PROTOCOLS}
BY_ID = {p.proto_id: p for p in PROTOCOLS}
ALL_FLAGS = 0
for _p in PROTOCOLS:
    ALL_FLAGS |= _p.flag

NAME_OF_ID = dict(_EXTRA_NAMES)
NAME_OF_ID.update({p.proto_id: p.name for p in PROTOCOLS})
PROTO_MAX = max(NAME_OF_ID) + 1


def flags_from_names(text: str) -> int:
    """``"http,redis"`` or ``"all"`` -> flag mask.  Raises ValueError on an unknown name."""
    flags = 0
    for name in (n.strip().lower() for n in text.split(",")):
        if not name:
            continue
        if name == "all":
            flags |= ALL_FLAGS
        elif name in BY_NAME:
            flags |= BY_NAME[name].flag
        else:
            raise ValueError("unknown protocol %r (known: %s, all)"
                             % (name, ",".join(p.name for p in PROTOCOLS)))
    return flags


def names_from_flags(flags: int):
    return [p.name for p in PROTOCOLS if flags & p.flag]


def c_defines():
    """Macros for the BPF C code: PROTO_<NAME> ids and FLAG_<NAME> bits."""
    out = {"PROTO_UNKNOWN": 0}
    for p in PROTOCOLS:
        out["PROTO_" + p.name.upper()] = p.proto_id
        out["FLAG_" + p.name.upper()] = p.flag
    return out


_loaded = {}


def protocol_for_id(proto_id: int):
    """The PROTOCOL object parsing this id, or None if the protocol is byte-counted only."""
    try:
        return _loaded[proto_id]
    except KeyError:
        pass
    info = BY_ID.get(proto_id)
    obj = None
    if info is not None and info.module:
        try:
            obj = importlib.import_module(info.module).PROTOCOL
        except ImportError:
            obj = None
    _loaded[proto_id] = obj
    return obj
