"""The pcap / pcapng reader for parser tests: it lives in ``pipeline/pcapfile.py`` (the
``--replay`` path uses it too); this module keeps the tests' import path."""
from pipeline.pcapfile import (C2S, S2C, Connection, read_packets,  # noqa: F401
                               read_tcp_connections)
