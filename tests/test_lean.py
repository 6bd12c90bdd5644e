"""Without a TLS URL the daemon leaves pyOpenSSL out; with one, TLS works."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from kegtwist.daemon import lean
print(lean.keep_tls_out())
import twisted.internet.reactor, treq, txredisapi, kegtwist.daemon.compose
print('OpenSSL' in [m for m, v in sys.modules.items() if v is not None], 'cryptography' in sys.modules)
from twisted.internet import ssl
try:
    ssl.ClientContextFactory()
except RuntimeError as e:
    print('refused:', e)
"""


def test_tls_stays_out_and_the_stub_refuses_loudly() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0] == "True"
    assert out[1] == "False False"
    assert out[2].startswith("refused: TLS was left unloaded")


def test_tls_needed_only_for_https_or_rediss() -> None:
    from kegtwist.daemon.lean import needs_tls

    assert not needs_tls({"api_url": "http://x/api/", "redis_url": "redis://localhost"})
    assert needs_tls({"api_url": "https://x/api/", "redis_url": "none"})
    assert needs_tls({"api_url": "none", "redis_url": "rediss://x"})
