"""Keep the daemon small on a Raspberry Pi: no TLS stack unless it is used.

Twisted's TCP module imports pyOpenSSL, and with it ``cryptography``, as
soon as the reactor loads, for ``startTLS``, which kegtwist never calls;
txredisapi imports ``twisted.internet.ssl`` at import time for a type
annotation.  Together that is about 14 MiB of resident memory, a third of
the daemon.  When no option needs TLS (no ``https://`` API URL, no
``rediss://`` Redis), :func:`keep_tls_out` makes pyOpenSSL unimportable,
so Twisted takes its documented no-TLS paths, and puts a stub in place of
``twisted.internet.ssl`` that fails loudly if anything ever tries to use
it.  With a TLS URL nothing changes.

Only ``twistd kegbot`` calls this, after its options are parsed and before
the reactor or any networking module is imported.
"""

from __future__ import annotations

import sys
import types
from typing import Any, NoReturn

STUB_DOC = "kegtwist stub: TLS is not loaded because no option needs it"


def needs_tls(settings: dict[str, Any]) -> bool:
    return str(settings.get("api_url") or "").startswith("https://") or str(
        settings.get("redis_url") or ""
    ).startswith("rediss://")


def _refuse(*args: object, **kwargs: object) -> NoReturn:
    raise RuntimeError(
        "TLS was left unloaded (no https:// or rediss:// URL was configured); "
        "this is a kegtwist bug if you see it"
    )


def keep_tls_out() -> bool:
    """Make pyOpenSSL unimportable; False if it is already loaded (no gain)."""
    if any(m in sys.modules for m in ("OpenSSL", "twisted.internet.ssl", "twisted.protocols.tls")):
        return False
    if "twisted.internet.tcp" in sys.modules:
        return False  # the reactor is loaded: TLS came with it
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]
    # txredisapi imports these two unconditionally, for names it uses only
    # with rediss://.
    _stub("twisted.internet.ssl", "ClientContextFactory")
    _stub("twisted.protocols.tls", "TLSMemoryBIOFactory")
    return True


def _stub(module: str, *names: str) -> None:
    stub = types.ModuleType(module, STUB_DOC)
    for name in names:
        setattr(stub, name, type(name, (), {"__init__": _refuse, "__doc__": STUB_DOC}))

    def missing(name: str) -> NoReturn:
        # ``from <module> import X`` turns this into ImportError, which is
        # what Twisted's optional-TLS code paths expect.
        raise AttributeError(f"{STUB_DOC} (wanted {module}.{name})")

    stub.__getattr__ = missing  # type: ignore[method-assign]
    sys.modules[module] = stub
