"""HTTP/2 for our gRPC server: pure frame layout (frames), the connection state machine, its limits."""

from .connection import H2Connection
from .limits import H2Limits, LimitCounters

__all__ = ["H2Connection", "H2Limits", "LimitCounters"]
