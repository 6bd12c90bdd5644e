"""Without a TLS URL the daemon leaves pyOpenSSL out; with one, TLS works."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

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


@pytest.mark.integration
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


@pytest.mark.integration
def test_the_daemon_as_started_by_twistd_loads_no_tls(tmp_path: Any) -> None:
    """The start-up step in kegtwist.daemon.servicemaker, as owners run it:
    with no https:// or rediss:// URL, neither pyOpenSSL nor cryptography
    is mapped into the running process."""
    import os
    import signal
    import time
    from pathlib import Path

    twistd = Path(sys.executable).parent / "twistd"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEGBOT_")}
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "kegbot", "--kegboard", "none",
             "--api-url", "http://127.0.0.1:9/api/", "--redis-url", "redis://127.0.0.1:9/0",
             "--state-dir", str(tmp_path / "state")],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "Waiting for the Kegbot Server" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "cryptography" not in maps and "OpenSSL" not in maps, "TLS was loaded"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
