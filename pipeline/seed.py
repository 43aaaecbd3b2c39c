"""Connections that existed before the probe started (or before a process was watched).

The kernel side learns connections at connect()/accept(); older ones are found here with
psutil (sockets per process, through /proc; processes in other network namespaces through
sock_diag inside each namespace, pipeline/netns.py) and written into the BPF map with their
addresses and roles: a local port that some socket listens on makes the process the server.
"""
from __future__ import annotations

import logging
import socket

log = logging.getLogger("l7probe")

L4_CLIENT = 1
L4_SERVER = 2


def _ip_bytes(family, ip):
    raw = socket.inet_pton(family, ip)
    return raw + b"\0" * (16 - len(raw))


def existing_connections(pids=None):
    """[(pid, fd, l4_role, family, client_ip(16 B), client_port, server_ip, server_port)]"""
    import psutil
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError) as exc:
        log.warning("cannot list existing TCP connections: %s", exc)
        return []
    listening = set()
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr:
            listening.add(c.laddr.port)
    out = []
    for c in conns:
        if c.status != psutil.CONN_ESTABLISHED or not c.pid or c.fd < 0:
            continue
        if pids is not None and c.pid not in pids:
            continue
        if not c.laddr or not c.raddr:
            continue
        fam = int(c.family)
        try:
            local = _ip_bytes(fam, c.laddr.ip)
            remote = _ip_bytes(fam, c.raddr.ip)
        except (OSError, ValueError):
            continue
        if c.laddr.port in listening:
            out.append((c.pid, c.fd, L4_SERVER, fam, remote, c.raddr.port, local,
                        c.laddr.port))
        else:
            out.append((c.pid, c.fd, L4_CLIENT, fam, local, c.laddr.port, remote,
                        c.raddr.port))
    return out


def seed(capture, pids=None):
    n = 0
    conns = existing_connections(pids)
    try:
        from pipeline.netns import other_netns_connections   # containers' own namespaces
        conns += other_netns_connections(pids, L4_CLIENT, L4_SERVER)
    except Exception as exc:  # never fatal: the host's connections are still seeded
        log.warning("cannot list connections in other network namespaces: %s", exc)
    for conn in conns:
        try:
            if capture.seed_connection(*conn):
                n += 1
        except Exception as exc:  # a full map or a vanished process: skip that one
            log.debug("cannot seed connection %r: %s", conn[:2], exc)
    return n
