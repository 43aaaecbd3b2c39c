"""Kafka wire protocol: parser (parse.py), pairing by correlation id (stitch.py), tables (types.py)."""
from protocol.kafka.stitch import PROTOCOL  # noqa: F401
