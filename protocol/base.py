"""The interface every L7 protocol implements (sans-IO: bytes in, frames out).

A protocol is a sub-package of ``protocol/`` that exposes one object, ``PROTOCOL``, an
instance of :class:`Protocol`.  The pipeline (``pipeline/stream.py``) drives it; a protocol
never sees sockets, clocks, BPF or threads.

Three functions make a protocol, as in upstream gala-gopher's guide and Pixie:

1. ``Parser.find_boundary(buf, start) -> int``
   Index >= start of the first plausible frame start in ``buf``, or -1.  Used to
   re-synchronise after garbage, a gap in the capture, or a probe started mid-stream.

2. ``Parser.parse(buf, start, ts) -> (ParseState, frame | None, end)``
   Parse one frame starting exactly at ``buf[start]``.
   * ``SUCCESS``: ``frame`` is complete as far as the protocol needs it; ``end`` is the
     stream index just past the frame.  ``end`` MAY be greater than ``len(buf)``: the frame's
     tail (typically a body or a large value) was not captured or has not arrived, and the
     stream will silently skip ``end - len(buf)`` bytes, across capture gaps too.  This is
     how bodies far larger than the captured prefix are handled without losing sync.
   * ``NEEDS_MORE_DATA``: the bytes from ``start`` are a valid prefix; call again with more.
     ``end`` may be the buffer length the frame needs at least (the stream will not call
     again before that many bytes are buffered), or 0 if unknown.
   * ``INVALID``: ``buf[start]`` does not start a frame; the stream re-synchronises with
     ``find_boundary(buf, start + 1)``.
   * ``IGNORE``: bytes ``[start, end)`` are valid but produce no frame (e.g. a handshake
     message, the trailing chunks of an HTTP body); ``end`` may exceed ``len(buf)`` as for
     SUCCESS.
   ``ts`` is the timestamp (ns) of the event holding ``buf[start]``; store it in the frame.
   ``buf`` is a ``bytes``/``bytearray``; never keep a reference to it in a frame.

3. ``Protocol.stitch(reqs, resps, state) -> list[Record]``
   Pair queued request frames with response frames (both :class:`Fifo`, oldest
   first), taking out what it consumes.  Frames it cannot decide on yet stay queued.
   A request that will never get an answer and a response without a request are reported
   as records with ``resp_ts == 0`` / ``req_ts == 0`` respectively, so that ``req_count``
   and ``resp_count`` stay honest.  ``Protocol.flush(reqs, resps, state)`` is called when the
   connection closes and must consume everything left the same way.

Rules for every parser: it never raises on any input (the stream catches and counts an
exception as a bug, but tests assert there are none); no per-byte Python loops on hot paths
(use ``bytes.find``, ``re``, ``struct``); no state outside the per-connection ``state`` object
and the per-direction ``Parser`` instance.
"""
from __future__ import annotations

import enum


class ParseState(enum.IntEnum):
    SUCCESS = 0
    NEEDS_MORE_DATA = 1
    INVALID = 2
    IGNORE = 3


class MessageType(enum.IntEnum):
    UNKNOWN = 0
    REQUEST = 1
    RESPONSE = 2


# Error classes of a record (``Record.err``).
ERR_NONE = 0
ERR_CLIENT = 1   # HTTP 4xx, a request the server refused (bad command, syntax error, ...)
ERR_SERVER = 2   # HTTP 5xx, a failure of the server


class Record:
    """One request paired with its response (either side may be missing, see stitch)."""

    __slots__ = ("req_ts", "resp_ts", "api", "method", "path", "status", "err")

    def __init__(self, req_ts, resp_ts, api, method="", path="", status="", err=ERR_NONE):
        self.req_ts = req_ts      # ns, 0 if no request was seen
        self.resp_ts = resp_ts    # ns, 0 if no response was seen
        self.api = api            # l7_rpc_api key ("GET /x", "SELECT", ...) or None
        self.method = method      # l7_trace req_method
        self.path = path          # l7_trace req_path (sanitised by the reporter)
        self.status = status      # l7_trace resp_code, as text
        self.err = err            # ERR_NONE / ERR_CLIENT / ERR_SERVER

    @property
    def latency(self):
        if self.req_ts and self.resp_ts:
            return self.resp_ts - self.req_ts
        return None

    def __repr__(self):
        return ("Record(req_ts=%r, resp_ts=%r, api=%r, method=%r, path=%r, status=%r, err=%r)"
                % (self.req_ts, self.resp_ts, self.api, self.method, self.path,
                   self.status, self.err))


class Fifo(list):
    """A first-in first-out queue for the per-connection queues (parsed frames, requests
    awaiting their response).  An empty ``collections.deque`` costs 760 bytes, a list 56: with
    three queues per connection that is 2 KB per connection, 40 MB at 20k sockets.  These
    queues hold a few items and are bounded (MAX_FRAMES, MAX_PENDING), so ``pop(0)``'s move
    of the rest costs less than the memory it saves."""

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


class Parser:
    """Per-direction parser.  Subclasses set nothing global; all state lives on self or on
    the shared per-connection ``state`` object."""

    __slots__ = ("msg_type", "state", "stats")

    def __init__(self, msg_type: MessageType, state):
        self.msg_type = msg_type
        self.state = state
        # the stream's StreamStats (set by pipeline.stream.DataStream): a parser that cuts
        # per-connection state to keep it bounded adds to ``stats.truncated``
        self.stats = None

    def count_truncated(self, n: int = 1) -> None:
        st = self.stats
        if st is not None:
            st.truncated += n

    def count_presumed(self, n: int) -> None:
        """``n`` answers counted in a cut response turn without their start (turn_cut)."""
        st = self.stats
        if st is not None:
            st.presumed += n

    def turn_cut(self, ts: int):
        """Responses only (MySQL, PostgreSQL): the kernel cut this response turn after its
        head (README "Cost of watching"); the turn's other bytes are skipped and the next
        bytes start the next turn.  Returns the frames that stand for what the turn still
        answered, unseen (timestamp ``ts``), and resets any walk in progress."""
        return ()

    def at_rest(self) -> bool:
        """True when this parser holds nothing a fresh one would not (between frames, no
        frame in progress): with nothing buffered either, the connection's streams may be
        dropped and made anew on its next bytes (pipeline/conntrack.py Tracker.rest_idle).
        False unless a protocol says so."""
        return False

    def find_boundary(self, buf, start: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def parse(self, buf, start: int, ts: int):  # pragma: no cover - interface
        raise NotImplementedError


class Protocol:
    """Registry entry.  ``name`` and ``proto_id`` come from ``protocol/registry.py``."""

    name = ""
    parser_class = Parser
    # callable(api name) -> the kernel's 64-bit name of that API, for protocols the kernel
    # counts per API itself (HTTP/1.x: include/l7.h http_api_hash); None for the others
    api_hash = None
    # True where the kernel's sampler may shed the protocol's transactions once user space
    # cleared a connection (map shed_ok; HTTP/1.x only, see bpf/probe.c)
    kernel_sampled = False

    def new_state(self):
        """Per-connection state shared by both directions and the stitcher."""
        return None

    def state_at_rest(self, state) -> bool:
        """True when ``state`` holds nothing that ``new_state()`` would not (no request
        awaiting its answer, nothing learnt from the connection's start): see
        Parser.at_rest.  False unless a protocol says so."""
        return False

    def new_parser(self, msg_type: MessageType, state) -> Parser:
        return self.parser_class(msg_type, state)

    def stitch(self, reqs, resps, state):  # pragma: no cover - interface
        raise NotImplementedError

    def flush(self, reqs, resps, state):
        """Connection closed: everything left becomes unmatched records."""
        out = self.stitch(reqs, resps, state)
        while reqs:
            f = reqs.popleft()
            out.append(self.unmatched_request(f))
        while resps:
            f = resps.popleft()
            out.append(self.unmatched_response(f))
        return out

    def retire(self, reqs, state, n):
        """The kernel counted responses to the ``n`` oldest queued requests that this side
        will never see (the ring buffer refused them).  Take those requests out as records
        without a response, and forget what ``state`` expects of the lost responses.
        Returns (records, how many of the n were not queued yet)."""
        out = []
        while n and reqs:
            n -= 1
            out.append(self.unmatched_request(reqs.popleft()))
        return out, n

    def unmatched_request(self, frame):
        return Record(frame.ts, 0, None)

    def unmatched_response(self, frame):
        return Record(0, frame.ts, None)
