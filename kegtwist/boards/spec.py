"""``--kegboard`` values, parsed without importing Twisted's networking.

Kept apart from :mod:`kegtwist.boards.service` so that option parsing stays light
(see :mod:`kegtwist.daemon.lean`).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass

AUTO_GLOBS = ("/dev/ttyUSB*", "/dev/ttyACM*")


@dataclass(frozen=True, slots=True)
class BoardSpec:
    """One ``--kegboard`` value: kind is path, glob, tcp or none."""

    kind: str
    value: str

    def __str__(self) -> str:
        return self.value


def parse_board_spec(spec: str) -> list[BoardSpec]:
    """Parse a ``--kegboard`` value; raise ValueError with a clear reason."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty --kegboard value")
    if spec == "none":
        return [BoardSpec("none", spec)]
    if spec == "auto":
        return [BoardSpec("glob", g) for g in AUTO_GLOBS]
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--kegboard {spec!r}: expected tcp:HOST:PORT")
        return [BoardSpec("tcp", spec)]
    if glob.has_magic(spec):
        return [BoardSpec("glob", spec)]
    return [BoardSpec("path", spec)]


def parse_board_specs(values: list[str]) -> list[BoardSpec]:
    specs: list[BoardSpec] = []
    for value in values or ["auto"]:
        specs.extend(parse_board_spec(value))
    if any(s.kind == "none" for s in specs):
        if len(specs) > 1:
            raise ValueError("--kegboard none cannot be combined with other boards")
        return []
    return specs
