"""``--format top`` (``--top``): a live table of links or APIs, refreshed every period.

In a terminal it draws with curses (the standard library): the screen is the terminal's
alternate screen, redrawn on every period, key and resize, and given back as it was on
exit (q, SIGINT, SIGTERM, --duration, or an error).  Keys:
  r req/s   e error %   5 p50   9 p99   b bytes   p pid   c process name   s next key
  v links <-> APIs      q quit
Log messages of the probe show on the bottom line meanwhile and are printed to stderr
after the screen is given back.  When stdout is not a terminal, each period prints the
same table as plain lines instead.
"""
from __future__ import annotations

import logging
import os
import time

from pipeline.output import Output

KEY_FIELDS = ("tgid", "client_ip", "server_ip", "server_port", "l4_role", "l7_role",
              "protocol", "ssl")
# sort key -> (title, function of a row giving the sort value; larger first)
SORTS = {
    "r": ("req/s", lambda r: r["rps"]),
    "e": ("err%", lambda r: r["err"]),
    "5": ("p50", lambda r: r["p50"]),
    "9": ("p99", lambda r: r["p99"]),
    "b": ("bytes", lambda r: r["bytes"]),
    "p": ("pid", lambda r: -r["tgid"]),
    "c": ("comm", lambda r: tuple(-ord(ch) for ch in r["comm"])),
}
SORT_ORDER = "re59bpc"
KEEP_LOG = 20                 # log messages kept to print after the screen is given back


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _ms(ns):
    return "%.2f" % (ns / 1e6)


def _bytes(n):
    n = float(n)
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return ("%d%s" % (n, unit)) if unit == "B" else ("%.1f%s" % (n, unit))
        n /= 1024
    return str(n)


class _LogToView(logging.Handler):
    def __init__(self, view):
        super().__init__()
        self.view = view

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:       # a bad log call must not stop the view
            return
        self.view.status = "%s: %s" % (record.levelname.lower(), msg)
        self.view.kept.append(self.format(record))
        del self.view.kept[:-KEEP_LOG]
        self.view.dirty = True


class TopOutput(Output):
    name = "top"

    def __init__(self, out, labels):
        super().__init__(out, labels)
        self.view = "link"
        self.sort = "r"
        self.links = {}           # key tuple -> l7_rpc vals of this period
        self.link_bytes = {}      # key tuple -> l7_link bytes of this period
        self.apis = []            # l7_rpc_api vals of this period
        self.rows = {"link": [], "api": []}
        self.when = None
        self.status = ""
        self.kept = []
        self.dirty = False
        self.repaint = False
        self.scr = None
        self._curses = None
        self._log_saved = None
        try:
            tty = self.out.isatty() and os.environ.get("TERM", "dumb") != "dumb"
        except (AttributeError, ValueError):
            tty = False
        if tty:
            self._start_screen()

    # -- the screen ----------------------------------------------------------------------
    def _start_screen(self):
        try:
            import curses
            scr = curses.initscr()
        except Exception:       # no curses module or no usable terminal: plain lines
            return
        self._curses = curses
        self.scr = scr
        try:
            curses.noecho()
            curses.cbreak()
            scr.keypad(True)
            scr.nodelay(True)
            try:
                curses.curs_set(0)
            except curses.error:
                pass
        except curses.error:
            self.close()
            return
        log = logging.getLogger("l7probe")
        handler = _LogToView(self)
        handler.setFormatter(logging.Formatter("l7probe: %(levelname)s: %(message)s"))
        self._log_saved = log.handlers[:]
        log.handlers[:] = [handler]
        self.status = "waiting for the first period..."
        self._draw()

    def close(self):
        if self.scr is None:
            return
        curses = self._curses
        self.scr = None
        try:
            curses.nocbreak()
            curses.echo()
            curses.endwin()
        except curses.error:
            pass
        if self._log_saved is not None:
            logging.getLogger("l7probe").handlers[:] = self._log_saved
            self._log_saved = None
        if self.kept:
            import sys
            sys.stderr.write("\n".join(self.kept) + "\n")
            sys.stderr.flush()

    def tick(self):
        scr = self.scr
        if scr is None:
            return
        curses = self._curses
        redraw = self.dirty
        # the size, asked of the terminal itself: ncurses's SIGWINCH handling (KEY_RESIZE)
        # is not always there (it installs its handler only if none was set)
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError, AttributeError):
            size = None
        if size is not None and (size.lines, size.columns) != scr.getmaxyx():
            try:
                curses.resizeterm(size.lines, size.columns)
            except curses.error:
                pass
            self.repaint = redraw = True
        while True:
            try:
                ch = scr.getch()
            except curses.error:
                break
            if ch == -1:
                break
            if ch == curses.KEY_RESIZE:
                try:
                    curses.update_lines_cols()
                except AttributeError:
                    pass
                self.repaint = True       # the terminal's copy of the screen is gone
                redraw = True
                continue
            redraw |= self._key(chr(ch) if 0 <= ch < 256 else "")
        if redraw:
            self._draw()

    def _key(self, k):
        if k in ("q", "Q"):
            self.quit = True
            return False
        if k in SORTS:
            self.sort = k
        elif k == "s":
            self.sort = SORT_ORDER[(SORT_ORDER.index(self.sort) + 1) % len(SORT_ORDER)]
        elif k in ("v", "\t"):
            self.view = "api" if self.view == "link" else "link"
        else:
            return False
        return True

    # -- records -------------------------------------------------------------------------
    def emit(self, table, fields, vals, flush=True):
        if table == "l7_rpc":
            self.links[tuple(vals[f] for f in KEY_FIELDS)] = vals
        elif table == "l7_link":
            key = tuple(vals[f] for f in KEY_FIELDS)
            self.link_bytes[key] = int(vals["bytes_sent"]) + int(vals["bytes_recv"])
        elif table == "l7_rpc_api":
            self.apis.append(vals)
        else:
            return
        self.lines += 1

    def flush(self):
        pass

    def _row(self, vals, nbytes):
        lab = self.labels(vals["tgid"])
        req = _num(vals.get("req_count", 0))
        return {
            "tgid": int(vals["tgid"]), "comm": lab.get("comm") or "-",
            "container": (lab.get("container_id") or "-")[:12],
            "protocol": vals["protocol"], "role": vals["l7_role"],
            "peer": "%s>%s:%s" % (vals["client_ip"], vals["server_ip"], vals["server_port"]),
            "api": vals.get("api", ""),
            "rps": _num(vals.get("throughput_req", 0)),
            "err": 100.0 * _num(vals.get("err_count", 0)) / req if req else 0.0,
            "p50": _num(vals.get("latency_p50", 0)), "p99": _num(vals.get("latency_p99", 0)),
            "bytes": nbytes,
        }

    def end_period(self, elapsed):
        links = []
        for key in list(self.links) + [k for k in self.link_bytes if k not in self.links]:
            vals = self.links.get(key)
            if vals is None:
                vals = dict(zip(KEY_FIELDS, key))
            links.append(self._row(vals, self.link_bytes.get(key, 0)))
        self.rows = {"link": links, "api": [self._row(v, -1) for v in self.apis]}
        self.links, self.link_bytes, self.apis = {}, {}, []
        self.when = time.strftime("%H:%M:%S")
        self.elapsed = elapsed
        if self.scr is not None:
            self._draw()
        else:
            self._print()

    # -- the table -----------------------------------------------------------------------
    def _table(self):
        rows = sorted(self.rows[self.view], key=SORTS[self.sort][1], reverse=True)
        api = self.view == "api"
        head = ["PID", "COMM", "CONTAINER", "PROTO", "ROLE", "CLIENT>SERVER:PORT"]
        if api:
            head.append("API")
        head += ["REQ/S", "ERR%", "P50ms", "P99ms", "BYTES"]
        body = []
        for r in rows:
            cells = [str(r["tgid"]), r["comm"], r["container"], r["protocol"], r["role"],
                     r["peer"]]
            if api:
                cells.append(r["api"])
            cells += ["%.2f" % r["rps"], "%.1f" % r["err"], _ms(r["p50"]), _ms(r["p99"]),
                      _bytes(r["bytes"]) if r["bytes"] >= 0 else "-"]
            body.append(cells)
        widths = [max([len(h)] + [len(c[i]) for c in body]) for i, h in enumerate(head)]
        if api:                   # long API names: at most 40 columns
            i = head.index("API")
            widths[i] = min(widths[i], 40)

        def fmt(cells):
            return "  ".join(c[:w].ljust(w) for c, w in zip(cells, widths)).rstrip()
        return fmt(head), [fmt(c) for c in body], len(rows)

    def _title(self, n):
        title, _ = SORTS[self.sort]
        return ("l7probe top  %s  %d %s  sorted by %s  [r e 5 9 b p c s: sort  v: %s  q: quit]"
                % (self.when or "--:--:--", n, "APIs" if self.view == "api" else "links",
                   title, "links" if self.view == "api" else "APIs"))

    def _print(self):
        head, body, n = self._table()
        out = self.out
        out.write(self._title(n).split("  [")[0] + "\n")
        out.write(head + "\n")
        for line in body:
            out.write(line + "\n")
        out.write("\n")
        out.flush()

    def _draw(self):
        scr = self.scr
        if scr is None:
            return
        curses = self._curses
        self.dirty = False
        try:
            h, w = scr.getmaxyx()
            head, body, n = self._table()
            if self.repaint:
                self.repaint = False
                scr.clear()               # redraw every cell, not only the changes
            else:
                scr.erase()
            lines = [self._title(n), head] + body
            for y, line in enumerate(lines[:max(0, h - 1)]):
                attr = curses.A_REVERSE if y == 1 else 0
                scr.addnstr(y, 0, line, max(0, w - 1), attr)
            if h > 1 and self.status:
                scr.addnstr(h - 1, 0, self.status, max(0, w - 1))
            scr.refresh()
        except curses.error:
            pass
