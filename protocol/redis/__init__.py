"""Redis (RESP2/RESP3): parser (parse.py), pairing (stitch.py), frames (types.py)."""
from protocol.redis.stitch import PROTOCOL  # noqa: F401
