"""ZeroMQ PUB/SUB transport for wire-format messages (imports no torch)."""

from udml_stream.transport.pubsub import Publisher, StreamStats, Subscriber, now_ns

__all__ = ["Publisher", "StreamStats", "Subscriber", "now_ns"]
