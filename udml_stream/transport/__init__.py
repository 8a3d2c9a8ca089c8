"""ZeroMQ PUB/SUB transport for wire-format messages (imports no torch)."""

from udml_stream.transport.pubsub import Publisher, StreamStats, Subscriber, now_ns
from udml_stream.transport.security import Security, configure, context, secure_context

__all__ = ["Publisher", "Security", "StreamStats", "Subscriber", "configure", "context", "now_ns",
           "secure_context"]
