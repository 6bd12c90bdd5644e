"""Where the daemon's own listeners (the manhole, the status page) listen.

Security by default: an endpoint that names no interface listens on
localhost only; anything wider must be asked for (``interface=0.0.0.0``).
Pure: endpoint strings only, no networking imports.
"""

from __future__ import annotations


def localhost_by_default(endpoint: str) -> str:
    """``tcp:2222`` listens on 127.0.0.1 unless an interface is named."""
    if endpoint.startswith("tcp:") and "interface=" not in endpoint:
        return endpoint + ":interface=127.0.0.1"
    if endpoint.startswith("tcp6:") and "interface=" not in endpoint:
        return endpoint + r":interface=\:\:1"  # colons escaped in endpoint strings
    if endpoint.isdigit():
        return f"tcp:{endpoint}:interface=127.0.0.1"
    return endpoint
