"""TCP connections of processes in other network namespaces (containers, pods).

The host's table (/proc/net/tcp, psutil) only holds sockets of the probe's own namespace.
For every other namespace that a process in scope lives in, a sock_diag netlink socket is
opened inside that namespace (``setns`` in a short-lived thread: only that thread moves;
the socket stays in the namespace it was made in) and asked for its established and
listening TCP sockets; their inodes are matched to the ``/proc/PID/fd`` links of the
processes of that namespace.  Addresses are the namespace's own (as seen in the container).
"""
from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
import threading

log = logging.getLogger("l7probe")

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NLMSG_ERROR = 2
CLONE_NEWNET = 0x40000000
TCP_ESTABLISHED = 1
TCP_LISTEN = 10

_NLH = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI48s")                    # inet_diag_req_v2
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")      # inet_diag_msg (72 bytes)


def _dump(sock, family):
    """[(state, local ip, local port, remote ip, remote port, inode)] of one family."""
    req = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0,
                    (1 << TCP_ESTABLISHED) | (1 << TCP_LISTEN), b"\0" * 48)
    sock.send(_NLH.pack(_NLH.size + len(req), SOCK_DIAG_BY_FAMILY,
                        NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
    n = 4 if family == socket.AF_INET else 16
    out = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return out
        off = 0
        while off + _NLH.size <= len(data):
            length, mtype, _, _, _ = _NLH.unpack_from(data, off)
            if length < _NLH.size:
                return out
            if mtype in (NLMSG_DONE, NLMSG_ERROR):
                return out
            if mtype == SOCK_DIAG_BY_FAMILY and length >= _NLH.size + _MSG.size:
                (fam, state, _, _, sport, dport, src, dst, _, _, _, _, _, _,
                 inode) = _MSG.unpack_from(data, off + _NLH.size)
                out.append((state, socket.inet_ntop(fam, src[:n]),
                            struct.unpack(">H", sport)[0], socket.inet_ntop(fam, dst[:n]),
                            struct.unpack(">H", dport)[0], inode))
            off += (length + 3) & ~3


def sockets_in_netns(pid):
    """TCP sockets (see _dump) of the network namespace of ``pid``, both families."""
    result = {}

    def work():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open("/proc/%d/ns/net" % pid, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
                s.settimeout(5)
                result["socks"] = _dump(s, socket.AF_INET) + _dump(s, socket.AF_INET6)
        except (OSError, ValueError) as exc:
            result["error"] = exc
    t = threading.Thread(target=work, name="l7probe-netns", daemon=True)
    t.start()
    t.join(10)
    if "error" in result:
        raise OSError("netns of pid %d: %s" % (pid, result["error"]))
    return result.get("socks", [])


def _netns(pid):
    try:
        return os.stat("/proc/%d/ns/net" % pid).st_ino
    except OSError:
        return None


def _socket_fds(pid):
    """{socket inode: fd} of a process."""
    out = {}
    d = "/proc/%d/fd" % pid
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(d + "/" + name)
        except OSError:
            continue
        if link.startswith("socket:["):
            try:
                out[int(link[8:-1])] = int(name)
            except ValueError:
                pass
    return out


def _ip16(family, ip):
    raw = socket.inet_pton(family, ip)
    return raw + b"\0" * (16 - len(raw))


def other_netns_connections(pids=None, L4_CLIENT=1, L4_SERVER=2):
    """Established TCP connections of processes (``pids``, or all) whose network namespace
    is not ours, in the seed's tuple layout: (pid, fd, l4_role, family, client_ip(16 B),
    client_port, server_ip, server_port)."""
    own = _netns(os.getpid())
    groups = {}
    candidates = pids if pids is not None else [int(n) for n in os.listdir("/proc")
                                                if n.isdigit()]
    for pid in candidates:
        ns = _netns(pid)
        if ns is not None and ns != own:
            groups.setdefault(ns, []).append(pid)
    out = []
    for ns, members in groups.items():
        try:
            socks = sockets_in_netns(members[0])
        except OSError as exc:
            log.warning("cannot list the TCP connections of network namespace %d: %s", ns,
                        exc)
            continue
        listening = {lport for st, _, lport, _, _, _ in socks if st == TCP_LISTEN}
        est = {inode: s for s in socks if s[0] == TCP_ESTABLISHED for inode in (s[5],)}
        if not est:
            continue
        for pid in members:
            for inode, fd in _socket_fds(pid).items():
                s = est.get(inode)
                if s is None:
                    continue
                _, lip, lport, rip, rport, _ = s
                fam = socket.AF_INET6 if ":" in lip else socket.AF_INET
                try:
                    local, remote = _ip16(fam, lip), _ip16(fam, rip)
                except (OSError, ValueError):
                    continue
                if lport in listening:
                    out.append((pid, fd, L4_SERVER, int(fam), remote, rport, local, lport))
                else:
                    out.append((pid, fd, L4_CLIENT, int(fam), local, lport, remote, rport))
    return out
