"""Names as the classic Kegbot daemons made them; existing servers hold them.

Pure functions, shared by the board adapter, the core and the tools.
"""

from __future__ import annotations

import secrets

DEFAULT_BOARD_NAME = "kegboard"
ALL_TAPS = "__all_taps__"
SIMULATED_BOARD_NAME = "simulated-kegboard"

# The serial numbers of this process's ``--simulate`` boards start with a
# prefix drawn at random when the process starts: no board on a wire can
# know it, so no real board is ever given a simulated name.
_SIMULATED_SERIAL_PREFIX = f"sim{secrets.token_hex(6)}-"

# The classic daemon renamed the board's iButton reader; servers store
# tokens under the new name.
_AUTH_DEVICE_RENAMES = {"onewire": "core.onewire"}


def board_name(serial_number: str | None) -> str:
    """``kegboard-`` + the last 8 characters of the serial, lowercased.

    A board with no serial number (all NUL on the wire) is plain
    ``kegboard``, as the classic daemon named it.  This process's own
    ``--simulate`` boards (see :func:`simulated_serial_number`) are named
    by :func:`simulated_board_name` instead.
    """
    serial = (serial_number or "").strip()
    if not serial:
        return DEFAULT_BOARD_NAME
    index = serial.removeprefix(_SIMULATED_SERIAL_PREFIX)
    if index != serial and index.isascii() and index.isdigit():
        return simulated_board_name(int(index))
    return f"{DEFAULT_BOARD_NAME}-{serial[-8:].lower()}"


def simulated_board_name(index: int) -> str:
    """``simulated-kegboard``, ``simulated-kegboard-2``, ...: ``--simulate``'s
    board ``index`` (from 0).

    Real boards are ``kegboard`` or ``kegboard-`` + a serial's end, so a
    simulated board's controller, meters (``simulated-kegboard.flow0``) and
    drinks never match a real controller's on a Kegbot Server.
    """
    if index == 0:
        return SIMULATED_BOARD_NAME
    return f"{SIMULATED_BOARD_NAME}-{index + 1}"


def simulated_serial_number(index: int) -> str:
    """The serial number ``--simulate``'s board ``index`` reports in its hello;
    :func:`board_name` turns it into :func:`simulated_board_name` in this
    process only (the prefix is random per process)."""
    return f"{_SIMULATED_SERIAL_PREFIX}{index}"


def full_name(board: str, local_name: str) -> str:
    """``<board>.<name>`` for meters, relays and sensors."""
    return f"{board}.{local_name}"


def auth_device_name(device_name: str) -> str:
    """The auth device name the server knows: ``onewire`` is ``core.onewire``."""
    return _AUTH_DEVICE_RENAMES.get(device_name, device_name)


def token_value(token: bytes) -> str:
    """Token bytes as lowercase hex, byte order reversed (the classic form).

    An ID-12 card printed ``0415AB9C3E`` arrives as ``3e 9c ab 15 04`` and
    becomes ``0415ab9c3e``.
    """
    return token[::-1].hex()


def split_relay_name(relay_name: str) -> tuple[str, int] | None:
    """``kegboard.relay0`` -> (``kegboard``, 0); None if it names no relay.

    Like the classic kegboard daemon, the output id is the number at the end
    of the port name.
    """
    board, dot, port = relay_name.rpartition(".")
    if not dot or not board:
        return None
    digits = ""
    for ch in reversed(port):
        if not ch.isdigit():
            break
        digits = ch + digits
    if not digits or not port.startswith("relay"):
        return None
    output_id = int(digits)
    if not 0 <= output_id <= 15:
        return None
    return board, output_id
