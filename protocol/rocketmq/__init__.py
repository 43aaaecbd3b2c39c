"""RocketMQ remoting protocol: parser (parse.py), pairing by opaque (stitch.py), code tables (types.py)."""
from protocol.rocketmq.stitch import PROTOCOL  # noqa: F401
