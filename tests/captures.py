"""The real captures in tests/data/ (see tests/data/README.md): read, never
edited, and never skipped: a missing capture is a broken checkout."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
KEGBOARD_CAPTURE = DATA / "kegboard" / "one_flow_active.bin"


def kegboard_capture() -> bytes:
    """A real Kegboard's bytes, one flow active."""
    return KEGBOARD_CAPTURE.read_bytes()


def kegnet_capture(name: str) -> list[str]:
    """The Kegnet messages of a classic capture, as sent on the wire."""
    path = DATA / "kegnet" / name
    return [json.loads(line)["message"] for line in path.read_text().splitlines() if line]
