"""DNS over TCP and UDP: parser (parse.py), pairing by id (stitch.py)."""
from protocol.dns.stitch import PROTOCOL  # noqa: F401
