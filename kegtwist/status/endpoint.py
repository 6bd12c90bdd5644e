"""The ``--status`` option's value: checked without importing any of
Twisted's networking (option parsing runs before the reactor is chosen,
see :mod:`kegtwist.daemon.lean`)."""

from __future__ import annotations

DEFAULT_ENDPOINT = "tcp:8010:interface=127.0.0.1"


def check_endpoint(value: str) -> str:
    """``none``, or a server endpoint string this service can listen on.

    Syntax only (no reactor, no import of the networking modules, so an
    option parser may call it before the reactor is chosen): ``tcp:PORT``
    or ``tcp:port=PORT`` with optional ``interface=``, ``tcp6:``,
    ``unix:PATH``, ``systemd:domain=INET:index=N``.  Raises ValueError."""
    if value == "none":
        return value
    kind, _, rest = value.partition(":")
    if kind in ("tcp", "tcp6"):
        fields = rest.split(":") if rest else []
        port = next((f[5:] for f in fields if f.startswith("port=")), None)
        if port is None and fields and "=" not in fields[0]:
            port = fields[0]
        if port is None or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected tcp:PORT[:interface=ADDRESS] or 'none', got {value!r}")
        return value
    if kind == "unix" and rest:
        return value
    if kind == "systemd" and "index=" in rest:
        return value
    raise ValueError(
        f"expected an endpoint such as {DEFAULT_ENDPOINT}, unix:PATH, or 'none'; got {value!r}"
    )
