"""Command-line options of ``twistd kegbot``."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from .board import BoardSpec, parse_board_spec, parse_board_specs


class Options(usage.Options):
    """Options for the kegbot service; each documents its default."""

    synopsis = "[options]"
    longdesc = (
        "Kegbot core: reads Kegboards on serial ports, turns meter ticks into "
        "drinks and keeps valves closed unless an authorised drinker pours."
    )

    def __init__(self) -> None:
        super().__init__()
        self["kegboard"] = []

    def opt_kegboard(self, value: str) -> None:
        try:
            parse_board_spec(value)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["kegboard"].append(value)

    opt_kegboard.__doc__ = (
        "A Kegboard to use: a device path, a glob, tcp:HOST:PORT (ser2net), "
        "'auto' (/dev/ttyUSB* and /dev/ttyACM*) or 'none'. Repeatable. [default: auto]"
    )

    def postOptions(self) -> None:
        try:
            self["board_specs"] = parse_board_specs(self["kegboard"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    @property
    def board_specs(self) -> list[BoardSpec]:
        specs: list[BoardSpec] = self["board_specs"]
        return specs

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key)
