"""HTTP/1.x: parser (parse.py), pairing (stitch.py), frames (types.py)."""
from protocol.http.stitch import PROTOCOL  # noqa: F401
