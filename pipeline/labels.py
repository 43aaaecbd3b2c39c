"""Process labels of a tgid: its command name and container (what gala-gopher adds to each
record, compat §2.4).  Used by the JSON and top formats (which print them) and by the label
budget of the reporter (which must leave room for them).  Read from /proc once per tgid."""
from __future__ import annotations

MAX_CACHED = 4096           # tgids remembered; the cache is emptied past this


class ProcessLabels:
    def __init__(self, proc_root="/proc"):
        self.proc_root = proc_root
        self._cache = {}

    def __call__(self, tgid):
        """{"comm": str, "container_id": str} ("" when unknown / not in a container)."""
        v = self._cache.get(tgid)
        if v is None:
            try:
                with open("%s/%d/comm" % (self.proc_root, tgid)) as f:
                    comm = f.read().strip()
            except (OSError, ValueError, TypeError):
                comm = ""
            try:
                from ipc.config import container_of_pid
                cid = container_of_pid(int(tgid), self.proc_root) or ""
            except (OSError, ValueError, TypeError):
                cid = ""
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            v = self._cache[tgid] = {"comm": comm, "container_id": cid}
        return v
