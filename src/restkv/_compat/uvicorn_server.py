"""A started uvicorn server's listening sockets (``Server.servers``, set during its startup).

uvicorn has no public way to ask which port a server bound when it was given port 0.
"""

from __future__ import annotations

from .versions import require

DISTRIBUTION = "uvicorn"
SUPPORTED = ">=0.30,<1"
SEAM = "restkv's reading of the port a uvicorn server bound"


def check() -> None:
    """Raise one sentence when the installed uvicorn is outside :data:`SUPPORTED`."""
    require(DISTRIBUTION, SUPPORTED, SEAM)


def bound_port(server) -> int:
    """The port a started ``uvicorn.Server`` listens on (its first socket's)."""
    check()
    return server.servers[0].sockets[0].getsockname()[1]
