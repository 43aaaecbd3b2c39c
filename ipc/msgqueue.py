"""System V message queue access (ftok/msgget/msgrcv/msgsnd) through ctypes on libc.

gala-gopher talks to its probes through one System V message queue (compat §3.1):
key ``ftok("/usr/bin/gala-gopher", 'g')``, mode 0600, created by gala-gopher; probes open it
without IPC_CREAT.  The message type selects the receiving probe (l7: ``PROBE_L7 = 4``).

The payload of a message (everything after the ``long mtype``) is returned as raw bytes;
``ipc/message.py`` decodes it.  Receiving never blocks and never raises for queue trouble:
a removed queue (gala-gopher exited or restarted) is reported in the result so the caller
can log it and keep going.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from typing import List, NamedTuple, Optional, Union

IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
MSG_NOERROR = 0o10000

DEFAULT_FTOK_PATH = "/usr/bin/gala-gopher"
FTOK_PATH_ENV = "L7PROBE_IPC_FTOK_PATH"
FTOK_PROJ_ID = ord("g")
QUEUE_MODE = 0o600

PROBE_L7 = 4                       # enum probe_type_e (compat §3.1)
MAX_MSG_LEN = 4 * 1024 * 1024      # __GOPHER_IPC_MSG_LEN: TLV bytes accepted (compat §3.7)
MSG_HEADER_LEN = 8                 # u16 msg_flag, u16 snooper_state, u32 msg_len
RECV_BUF_LEN = MSG_HEADER_LEN + MAX_MSG_LEN   # msgrcv msgsz (payload after mtype)

_LONG = ctypes.sizeof(ctypes.c_long)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ftok.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.ftok.restype = ctypes.c_int
_libc.msgget.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.msgget.restype = ctypes.c_int
_libc.msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.msgsnd.restype = ctypes.c_int
_libc.msgrcv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long,
                         ctypes.c_int]
_libc.msgrcv.restype = ctypes.c_ssize_t
_libc.msgctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_libc.msgctl.restype = ctypes.c_int


def _oserror(what: str, extra: str = "") -> OSError:
    err = ctypes.get_errno()
    msg = "%s: %s" % (what, os.strerror(err))
    if extra:
        msg += " (%s)" % extra
    return OSError(err, msg)


def ftok(path: Union[str, bytes], proj_id: Union[int, str]) -> int:
    """ftok(3).  ``proj_id`` may be a one-character string (``'g'``).  Raises OSError."""
    if isinstance(proj_id, str):
        if len(proj_id) != 1:
            raise ValueError("proj_id must be one character")
        proj_id = ord(proj_id)
    key = _libc.ftok(os.fsencode(path), proj_id)
    if key == -1:
        raise _oserror("ftok(%s)" % os.fsdecode(path))
    return key


def ftok_path() -> str:
    """The file gala-gopher's queue key is derived from: $L7PROBE_IPC_FTOK_PATH or the default."""
    return os.environ.get(FTOK_PATH_ENV) or DEFAULT_FTOK_PATH


def queue_key(path: Optional[str] = None) -> int:
    """``ftok(path, 'g')``; ``path`` defaults to :func:`ftok_path`."""
    return ftok(path if path is not None else ftok_path(), FTOK_PROJ_ID)


def msgget(key: int, flags: int) -> int:
    """msgget(2); returns the queue id.  Raises OSError (ENOENT: no such queue)."""
    qid = _libc.msgget(key, flags)
    if qid == -1:
        raise _oserror("msgget(key=0x%x)" % (key & 0xFFFFFFFF))
    return qid


def msgsnd(msqid: int, mtype: int, payload: bytes, nowait: bool = False) -> None:
    """Send ``payload`` (bytes after mtype) with message type ``mtype``.  Raises OSError."""
    if mtype <= 0:
        raise ValueError("mtype must be > 0")
    buf = ctypes.create_string_buffer(_LONG + len(payload))
    ctypes.c_long.from_buffer(buf).value = mtype
    ctypes.memmove(ctypes.addressof(buf) + _LONG, payload, len(payload))
    flags = IPC_NOWAIT if nowait else 0
    while True:
        if _libc.msgsnd(msqid, buf, len(payload), flags) == 0:
            return
        if ctypes.get_errno() != errno.EINTR:
            hint = ""
            if ctypes.get_errno() == errno.EINVAL:
                hint = "queue gone, or message larger than kernel.msgmax"
            raise _oserror("msgsnd(msqid=%d, %d bytes)" % (msqid, len(payload)), hint)


def msgctl_rmid(msqid: int) -> None:
    """Remove the queue (IPC_RMID).  Raises OSError."""
    if _libc.msgctl(msqid, IPC_RMID, None) == -1:
        raise _oserror("msgctl(IPC_RMID, msqid=%d)" % msqid)


class RawMessage(NamedTuple):
    payload: bytes        # bytes after mtype (possibly truncated, see below)
    truncated: bool       # larger than the receive buffer; consumed with MSG_NOERROR


class ReceiveResult(NamedTuple):
    messages: List[RawMessage]   # in queue order
    removed: bool                # the queue no longer exists (EIDRM / EINVAL)
    error: Optional[str]         # why receiving stopped early, for the log; None if drained


class _RecvBuffer:
    """One reusable receive buffer (mtype + RECV_BUF_LEN bytes)."""

    def __init__(self, size: int = RECV_BUF_LEN):
        self.size = size
        self.buf = ctypes.create_string_buffer(_LONG + size)


_shared_buf: Optional[_RecvBuffer] = None


def receive_all(msqid: int, mtype: int, bufsize: int = RECV_BUF_LEN,
                _buf: Optional[_RecvBuffer] = None) -> ReceiveResult:
    """Take every pending message of type ``mtype`` without blocking.

    ENOMSG ends the loop normally; EINTR is retried; E2BIG (message larger than ``bufsize``)
    consumes that message truncated (MSG_NOERROR) and marks it ``truncated`` so it cannot
    wedge the queue; EIDRM/EINVAL (queue removed) ends with ``removed=True``.  Any other
    error ends the loop with ``error`` set.  Never raises OSError.
    """
    global _shared_buf
    if _buf is None:
        if bufsize == RECV_BUF_LEN:
            if _shared_buf is None:
                _shared_buf = _RecvBuffer()
            _buf = _shared_buf
        else:
            _buf = _RecvBuffer(bufsize)
    raw = _buf.buf
    base = ctypes.addressof(raw) + _LONG
    out: List[RawMessage] = []
    flags = IPC_NOWAIT
    truncated = False
    while True:
        n = _libc.msgrcv(msqid, raw, _buf.size, mtype, flags)
        if n >= 0:
            out.append(RawMessage(ctypes.string_at(base, n), truncated))
            flags = IPC_NOWAIT
            truncated = False
            continue
        err = ctypes.get_errno()
        if err == errno.ENOMSG:
            return ReceiveResult(out, False, None)
        if err == errno.EINTR:
            continue
        if err == errno.E2BIG and not flags & MSG_NOERROR:
            flags = IPC_NOWAIT | MSG_NOERROR   # take it (truncated) so it does not block us
            truncated = True
            continue
        if err in (errno.EIDRM, errno.EINVAL):
            return ReceiveResult(out, True, "message queue %d was removed (%s)"
                                 % (msqid, os.strerror(err)))
        return ReceiveResult(out, False, "msgrcv on queue %d failed: %s"
                             % (msqid, os.strerror(err)))


class MessageQueue:
    """An opened gala-gopher queue (not created: it must exist)."""

    def __init__(self, msqid: int, key: Optional[int] = None, path: Optional[str] = None):
        self.msqid = msqid
        self.key = key
        self.path = path
        self.removed = False

    @classmethod
    def open(cls, path: Optional[str] = None) -> "MessageQueue":
        """Open the existing queue at ``ftok(path or $L7PROBE_IPC_FTOK_PATH or default, 'g')``.

        Raises OSError: ENOENT if the file or the queue does not exist.
        """
        path = path if path is not None else ftok_path()
        key = queue_key(path)
        return cls(msgget(key, QUEUE_MODE), key, path)

    def reopen(self) -> bool:
        """Try to open the queue again (after gala-gopher re-created it).  True on success."""
        try:
            key = queue_key(self.path)
            self.msqid = msgget(key, QUEUE_MODE)
        except OSError:
            return False
        self.key = key
        self.removed = False
        return True

    def receive_all(self, mtype: int = PROBE_L7) -> ReceiveResult:
        res = receive_all(self.msqid, mtype)
        if res.removed:
            self.removed = True
        return res

    def send(self, mtype: int, payload: bytes, nowait: bool = False) -> None:
        msgsnd(self.msqid, mtype, payload, nowait)

    def remove(self) -> None:
        msgctl_rmid(self.msqid)
        self.removed = True

    def __repr__(self):
        return "MessageQueue(msqid=%d, path=%r)" % (self.msqid, self.path)
