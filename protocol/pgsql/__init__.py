"""PostgreSQL (protocol 3.0): parser (parse.py), pairing (stitch.py), frames (types.py)."""
from protocol.pgsql.stitch import PROTOCOL  # noqa: F401
