"""One direction of one connection: captured chunks in, parsed frames out.

The capture delivers, per syscall, a bounded prefix of the bytes plus their true length.
This class keeps the bytes that may still start or complete a frame, lets a parser declare
that a frame extends past what was captured (``end > len(buf)``: those bytes are skipped,
across gaps), and re-synchronises with the parser's ``find_boundary`` after garbage or after
a gap it cannot skip.  Buffers are bounded; work is linear in the bytes received.
"""
from __future__ import annotations

import logging

from bpf.layout import DEFINES
from protocol.base import Fifo, ParseState

SUCCESS = ParseState.SUCCESS
NEEDS_MORE_DATA = ParseState.NEEDS_MORE_DATA
INVALID = ParseState.INVALID
IGNORE = ParseState.IGNORE

MAX_BUFFERED = 256 * 1024   # bytes held waiting for a frame to complete
MAX_FRAMES = 4096           # frames waiting for the stitcher
DB_TURN_HEAD = DEFINES["DB_TURN_HEAD"]
EVF_TURN = DEFINES["EVF_TURN"]   # bytes of a response turn the kernel delivers


class StreamStats:
    __slots__ = ("invalid", "resyncs", "gaps", "dropped_bytes", "dropped_frames", "exceptions",
                 "last_error", "truncated", "lost_bytes", "cut_turns", "presumed")

    def __init__(self):
        self.clear()
        self.last_error = None      # the last exception a parser raised (a bug to report)

    def clear(self) -> None:
        self.invalid = self.resyncs = self.gaps = 0
        self.dropped_bytes = self.dropped_frames = self.exceptions = 0
        self.last_error = None      # the last exception a parser raised (a bug to report)
        self.truncated = 0          # per-connection state a parser cut to stay bounded
        self.lost_bytes = 0         # uncaptured bytes that no frame claimed (in gaps)
        self.cut_turns = 0          # response turns the kernel cut after their head
        self.presumed = 0           # answers counted in a cut turn without their status

    def add_into(self, total: "StreamStats") -> None:
        """Add these counts to ``total`` (per-link stats summed per protocol)."""
        total.invalid += self.invalid
        total.resyncs += self.resyncs
        total.gaps += self.gaps
        total.dropped_bytes += self.dropped_bytes
        total.dropped_frames += self.dropped_frames
        total.exceptions += self.exceptions
        total.truncated += self.truncated
        total.lost_bytes += self.lost_bytes
        total.cut_turns += self.cut_turns
        total.presumed += self.presumed
        if self.last_error is not None:
            total.last_error = self.last_error

    def report(self, proto_name: str) -> None:
        """Log what went wrong in this protocol's streams since the last call, then reset.
        One line per kind, only when something happened (called once per report period)."""
        log = logging.getLogger("l7probe")
        if self.exceptions:
            log.error("%s: the parser raised %d exception(s) this period (last: %r); the "
                      "affected streams were resynchronised", proto_name, self.exceptions,
                      self.last_error)
        if self.invalid or self.gaps or self.dropped_bytes:
            log.info("%s: this period %d unparseable message(s) and %d stretch(es) of "
                     "uncaptured bytes that no message claimed; %d byte(s) skipped; parsing "
                     "resumed at a message boundary %d time(s)", proto_name, self.invalid,
                     self.gaps, self.dropped_bytes, self.resyncs)
        if self.truncated:
            log.info("%s: %d item(s) of per-connection parser state dropped or cut this "
                     "period to keep it bounded (statements of a query string, prepared "
                     "names, nesting levels, pending commands)", proto_name, self.truncated)
        if self.cut_turns:
            log.info("%s: %d response turn(s) this period delivered by the kernel up to their "
                     "first %d bytes, the rest (result rows) skipped by length; %d answer(s) "
                     "in them counted without their start or status (errors after a turn's "
                     "head are not seen)", proto_name, self.cut_turns, DB_TURN_HEAD,
                     self.presumed)
        if self.dropped_frames:
            log.warning("%s: %d parsed message(s) dropped: more than %d waited for pairing on "
                        "one connection", proto_name, self.dropped_frames, MAX_FRAMES)
        self.clear()


class DataStream:
    __slots__ = ("parser", "frames", "buf", "base_ts", "skip", "need", "resync", "stats",
                 "last_error", "cut")

    def __init__(self, parser, stats: StreamStats | None = None):
        self.parser = parser
        self.frames = Fifo()
        self.buf = b""          # bytes not yet consumed (never more than MAX_BUFFERED)
        self.base_ts = 0        # timestamp of the event holding buf[0]
        self.skip = 0           # bytes still to skip (a frame's uncaptured tail)
        self.need = 0           # len(buf) the parser asked for before it is worth retrying
        self.resync = False     # the next bytes must be searched for a frame boundary
        self.cut = False        # the kernel cut the current response turn (see cut_turn)
        self.stats = stats if stats is not None else StreamStats()
        self.last_error = None
        parser.stats = self.stats   # where the parser counts the state it had to cut

    def at_rest(self) -> bool:
        """Nothing buffered, queued, to skip or to resynchronise, and the parser between
        frames: this stream is as good as a new one."""
        return not (self.buf or self.frames or self.skip or self.need or self.resync
                    or self.cut) and self.parser.at_rest()

    # -- input -------------------------------------------------------------------------
    def append(self, data, true_len: int, ts: int, lost: int = 0) -> None:
        """``data``: captured bytes of one syscall (a prefix); ``true_len``: bytes that
        really crossed the socket (>= len(data)); ``ts``: its timestamp in ns; ``lost``:
        bytes that crossed before these without being captured (the same as gap(lost)
        first)."""
        if lost > 0:
            if self.skip >= lost:
                self.skip -= lost
            else:
                self._gap(lost)
        # (pipeline.conntrack.Tracker.feed parses a connection in sync in place, with the
        # same outcome: tests/test_http_parser.py test_feed_fast_path_equals_stream_append)
        cap = len(data)
        if true_len < cap:
            true_len = cap
        if self.skip:
            if self.skip >= true_len:
                self.skip -= true_len
                return
            n = self.skip
            self.skip = 0
            true_len -= n
            data = data[n:] if n < cap else b""
            cap = len(data)
        missing = true_len - cap
        if data:
            if self.buf:
                # a bytearray grows in place: bytes += bytes copies the whole buffer on
                # every append (quadratic for a frame arriving in small pieces)
                if type(self.buf) is not bytearray:
                    self.buf = bytearray(self.buf)
                self.buf += data
            else:
                self.buf = data
                self.base_ts = ts
            if len(self.buf) >= self.need:
                self._parse(ts)
        if missing:
            self._gap(missing)

    def parse_failed(self, exc) -> None:
        """The parser raised on new bytes: a bug, counted; resynchronise after them."""
        self.stats.exceptions += 1
        self.stats.last_error = self.last_error = exc
        self.buf = b""
        self.resync = True

    def clean_gap(self, nbytes: int) -> None:
        """``nbytes`` crossed the socket before the next bytes as whole messages that the
        kernel counted itself (sampled out), and the next bytes start a message: skip them
        and go on at that boundary, without a resynchronisation or a loss to report."""
        if self.skip >= nbytes:
            self.skip -= nbytes
            return
        self.skip = 0
        if self.buf:                 # an unfinished message (not expected): say so
            self.stats.dropped_bytes += len(self.buf)
            self.buf = b""
        self.need = 0
        self.resync = False

    def cut_turn(self, ts: int) -> None:
        """The kernel delivered the head of this response turn and skips the rest
        (EVF_TURN_CUT, bpf/probe.c db_capture): the parser answers what it still expected
        of the turn (``Parser.turn_cut``), and the bytes up to the next turn's start are
        skipped without a loss to report (``turn_start``)."""
        self.buf = b""
        self.skip = self.need = 0
        self.resync = False
        self.cut = True
        self.stats.cut_turns += 1
        frames = self.frames
        try:
            more = self.parser.turn_cut(ts)
        except Exception as exc:  # a parser bug must not take the probe down
            self.stats.exceptions += 1
            self.stats.last_error = self.last_error = exc
            self.resync = True
            return
        for frame in more:
            if len(frames) >= MAX_FRAMES:
                frames.popleft()
                self.stats.dropped_frames += 1
            frames.append(frame)

    def turn_start(self, flags: int, lost: int) -> int:
        """A record of a stream that the kernel cut: with EVF_TURN it starts the next turn
        and ``lost`` is the cut turn's rest, skipped (returns 0, the loss left); without
        (the ring refused the turn's start) ``lost`` stays a loss."""
        self.cut = False
        if flags & EVF_TURN:
            self.clean_gap(lost)
            return 0
        return lost

    def gap(self, nbytes: int) -> None:
        """Bytes that crossed the socket but were not captured at all (sendfile, drops)."""
        if nbytes <= 0:
            return
        if self.skip >= nbytes:
            self.skip -= nbytes
            return
        self._gap(nbytes)

    # -- internals ---------------------------------------------------------------------
    def _gap(self, missing: int) -> None:
        if self.skip:
            if self.skip >= missing:
                self.skip -= missing
                return
            missing -= self.skip
            self.skip = 0
        # Uncaptured bytes that no frame claims: whatever is buffered can never complete.
        self.stats.gaps += 1
        self.stats.lost_bytes += missing
        self.stats.dropped_bytes += len(self.buf) + missing
        self.buf = b""
        self.need = 0
        self.resync = True

    def _parse(self, ts: int, first=None) -> None:
        """Parse buf from its start; ``first``: the parser's result at position 0, already
        obtained (the fast path of append), or None."""
        parser = self.parser
        buf = self.buf
        n = len(buf)
        pos = 0
        # base_ts applies to buf[0] (start of a partially received frame); every frame that
        # starts later starts within the newest event.
        frame_ts = self.base_ts
        frames = self.frames
        self.need = 0
        try:
            if self.resync:
                b = parser.find_boundary(buf, 0)
                if b < 0:
                    self.stats.dropped_bytes += n
                    self.buf = b""
                    return
                self.stats.resyncs += 1
                pos = b
                self.resync = False
            while pos < n:
                if first is None:
                    state, frame, end = parser.parse(buf, pos, frame_ts)
                else:
                    state, frame, end = first
                    first = None
                if state is SUCCESS or state is IGNORE:
                    if frame is not None:
                        if len(frames) >= MAX_FRAMES:
                            frames.popleft()
                            self.stats.dropped_frames += 1
                        frames.append(frame)
                    if end <= pos:       # a parser bug; never loop forever
                        end = pos + 1
                    if end >= n:
                        self.skip = end - n
                        self.buf = b""
                        return
                    pos = end
                    frame_ts = ts
                elif state is NEEDS_MORE_DATA:
                    if end > n:          # the parser knows how many bytes it needs
                        # (bounded: past MAX_BUFFERED the frame is dropped, not awaited)
                        self.need = min(end - pos, MAX_BUFFERED + 1)
                    break
                else:
                    self.stats.invalid += 1
                    b = parser.find_boundary(buf, pos + 1)
                    if b < 0:
                        self.stats.dropped_bytes += n - pos
                        self.buf = b""
                        self.resync = True
                        return
                    self.stats.dropped_bytes += b - pos
                    pos = b
                    frame_ts = ts
        except Exception as exc:  # a parser bug must not take the probe down
            self.parse_failed(exc)
            return
        rest = n - pos
        if rest > MAX_BUFFERED:
            self.stats.dropped_bytes += rest
            self.buf = b""
            self.resync = True
            return
        if pos:
            self.buf = buf[pos:]
            self.base_ts = frame_ts
        # else: keep buf and base_ts (the frame in progress started there)
