"""Output formats: one small interface, one class per format.

The reporter (pipeline/report.py: Writer) hands every record to the format already
sanitised and fitted (values are strings or numbers, in meta order).  A format prints it
its own way.  ``FORMATS`` is what ``--format`` offers.

Interface of a format (``Output``):
  emit(table, fields, vals, flush)  one record; ``vals``: {field: value}
  flush()                           records so far to the reader
  end_period(elapsed)               a report period ended (elapsed seconds)
  tick()                            called by the main loop between polls (keys, resize)
  close()                           the probe stops; leave the terminal as it was
  lines                             records printed so far
  quit                              True once the user asked to stop (top's `q`)
"""
from __future__ import annotations

import json
import sys


class Output:
    name = ""
    help = ""

    def __init__(self, out, labels):
        self.out = out if out is not None else sys.stdout
        self.labels = labels          # pipeline/labels.py ProcessLabels: tgid -> dict
        self.lines = 0
        self.quit = False

    def emit(self, table, fields, vals, flush=True):
        raise NotImplementedError

    def flush(self):
        self.out.flush()

    def end_period(self, elapsed):
        pass

    def tick(self):
        pass

    def close(self):
        pass


class GopherOutput(Output):
    """gala-gopher's pipe lines (compat §2.2), at most MAX_LINE bytes each."""
    name = "gopher"
    help = "gala-gopher's |table|v1|...| lines"

    def emit(self, table, fields, vals, flush=True):
        from pipeline.report import MAX_LINE
        line = "|" + table + "|" + "|".join(map(str, map(vals.__getitem__, fields))) + "|\n"
        if len(line) * 4 > MAX_LINE and len(line.encode("utf-8", "replace")) > MAX_LINE:
            line = self._shorten(table, [str(vals[f]) for f in fields])
        self.out.write(line)
        if flush:
            self.out.flush()
        self.lines += 1

    @staticmethod
    def _shorten(table, vals):
        # cut the longest values until the line fits (only free-text fields get long)
        from pipeline.report import MAX_LINE
        vals = list(vals)
        while True:
            line = "|" + table + "|" + "|".join(vals) + "|\n"
            excess = len(line.encode("utf-8", "replace")) - MAX_LINE
            if excess <= 0:
                return line
            i = max(range(len(vals)), key=lambda j: len(vals[j]))
            v = vals[i].encode("utf-8", "replace")
            vals[i] = v[:max(1, len(v) - excess - 4)].decode("utf-8", "ignore") or "_"


class JsonOutput(Output):
    """One JSON object a line: {"table": ..., <fields in meta order>, then the process's
    labels: comm, container_id, container_name, pod, pod_id, pod_namespace}."""
    name = "json"
    help = "one JSON object per record, with comm and container_id"

    def emit(self, table, fields, vals, flush=True):
        obj = {"table": table}
        for f in fields:
            obj[f] = vals[f]
        if "tgid" in vals:                      # (not the pod table)
            obj.update(self.labels(vals["tgid"]))
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        if flush:
            self.out.flush()
        self.lines += 1


def _top():
    from pipeline.top import TopOutput
    return TopOutput


FORMATS = {"gopher": lambda: GopherOutput, "json": lambda: JsonOutput, "top": _top}
FORMAT_HELP = {"gopher": GopherOutput.help, "json": JsonOutput.help,
               "top": "a live table in the terminal (plain lines when not a terminal)"}


def make_output(name, out, labels):
    return FORMATS[name]()(out, labels)
