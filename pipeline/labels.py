"""Process labels of a tgid: its command name and container (what gala-gopher adds to each
record, compat §2.4).  Used by the JSON and top formats (which print them) and by the label
budget of the reporter (which must leave room for them)."""
from __future__ import annotations


class ProcessLabels:
    """tgid -> {"comm", "container_id", "container_name", "pod", "pod_id", "pod_namespace"}
    ("" when unknown or not in a container): pipeline/pods.py's resolver, which caches."""

    def __call__(self, tgid):
        from pipeline.pods import labels_of
        try:
            return labels_of(int(tgid))
        except (OSError, ValueError, TypeError):
            return {"comm": "", "container_id": ""}
