"""The way back: services handle what clients invoke, and learn who connected and left.

:class:`Upstream` is the Python SDK (handlers per hub and method); :mod:`.webhook` forwards
the same entries to HTTP endpoints, Azure SignalR's upstream format, for any language. Both
run on :class:`.consumer.UpstreamConsumer`.
"""

from .app import Call, ConnectionEvent, Hub, HubError, Upstream
from .consumer import Answer, UpstreamConsumer

__all__ = ["Answer", "Call", "ConnectionEvent", "Hub", "HubError", "Upstream", "UpstreamConsumer"]
