"""Names as the classic Kegbot daemons made them; existing servers hold them.

Pure functions, shared by the board adapter, the core and the tools.
"""

from __future__ import annotations

DEFAULT_BOARD_NAME = "kegboard"
ALL_TAPS = "__all_taps__"

# The classic daemon renamed the board's iButton reader; servers store
# tokens under the new name.
_AUTH_DEVICE_RENAMES = {"onewire": "core.onewire"}


def board_name(serial_number: str | None) -> str:
    """``kegboard-`` + the last 8 characters of the serial, lowercased.

    A board with no serial number (all NUL on the wire) is plain
    ``kegboard``, as the classic daemon named it.
    """
    serial = (serial_number or "").strip()
    if not serial:
        return DEFAULT_BOARD_NAME
    return f"{DEFAULT_BOARD_NAME}-{serial[-8:].lower()}"


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
