"""MySQL / MariaDB: parser (parse.py), pairing (stitch.py), frames (types.py)."""
from protocol.mysql.stitch import PROTOCOL  # noqa: F401
