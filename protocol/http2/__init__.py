"""HTTP/2 and gRPC: framing (parse.py), HPACK (hpackdec.py), pairing by stream (stitch.py)."""
from protocol.http2.stitch import PROTOCOL  # noqa: F401
