"""MongoDB wire protocol: parser (parse.py), pairing by requestID/responseTo (stitch.py)."""
from protocol.mongo.stitch import PROTOCOL  # noqa: F401
