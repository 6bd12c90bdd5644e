"""Every daemon option, once: its name, help, default, environment
variable, command-line parser and config-file check.

The command line (:mod:`kegtwist.daemon.options`), the config file
(:mod:`kegtwist.daemon.settings`) and the merge all follow from this table,
and importing it has no side effects elsewhere: the config file knows its
keys without the command-line module.  No Twisted here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kegtwist.boards.spec import parse_board_spec
from kegtwist.bus.redis_url import parse_redis_url
from kegtwist.daemon.checks import (
    Check,
    ConfigError,
    choice,
    integer,
    number,
    string,
    string_list,
)
from kegtwist.status.endpoint import DEFAULT_ENDPOINT, check_endpoint


@dataclass(frozen=True, slots=True)
class Option:
    """One daemon option: command line, config file and environment."""

    name: str  # as in the config file: underscores
    doc: str
    default: Any
    parse: Callable[[str], Any]  # command-line / environment text -> value
    check: Check  # config-file value -> value
    env: str | None = None
    shown_default: str | None = None

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")


def _text(value: str) -> str:
    if not value:
        raise ValueError("empty value")
    return value


def _spec_list(where: str, value: Any) -> tuple[str, ...]:
    specs = string_list(where, value)
    for spec in specs:
        try:
            parse_board_spec(spec)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return specs


OPTIONS: list[Option] = []


def register(option: Option) -> Option:
    OPTIONS.append(option)
    return option


register(
    Option(
        "kegboard",
        "A Kegboard to use: a device path, a glob, tcp:HOST:PORT (ser2net), 'auto' "
        "(/dev/ttyUSB* and /dev/ttyACM*) or 'none'. Repeat for more boards.",
        ("auto",),
        lambda v: (v,),
        _spec_list,
        shown_default="auto",
    )
)


def default_state_dir() -> str:
    """Per-user state directory (XDG); the systemd unit sets its own."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "kegtwist")


def _url(value: str) -> str:
    if value != "none" and not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL or 'none', got {value!r}")
    return value


def _checked(parse: Callable[[str], str]) -> Check:
    """The config-file check of a string option: the command line's parser."""

    def check(where: str, value: Any) -> str:
        try:
            return parse(string(where, value))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None

    return check


def _one_of(*choices: str) -> Callable[[str], str]:
    """A command-line parser accepting one of ``choices``."""

    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
        return value

    return parse


register(
    Option(
        "api_url",
        "Kegbot Server API URL, or 'none' to keep drinks in the outbox only.",
        "http://localhost:8000/api/",
        _url,
        _checked(_url),
        env="KEGBOT_API_URL",
    )
)
register(
    Option(
        "api_key",
        "Kegbot Server API key (of a staff user); never logged.",
        None,
        _text,
        string,
        env="KEGBOT_API_KEY",
        shown_default="none",
    )
)
register(
    Option(
        "api_key_file",
        "Read the API key from this file instead (keeps it out of ps and shell history).",
        None,
        _text,
        string,
        shown_default="none",
    )
)
register(
    Option(
        "state_dir",
        "Where the outbox and the pour checkpoint live.",
        None,
        _text,
        string,
        env="KEGBOT_STATE_DIR",
        shown_default="$XDG_STATE_HOME/kegtwist or ~/.local/state/kegtwist",
    )
)


def _count(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 64:
        raise ValueError(f"expected 0 to 64, got {number}")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(f"expected seconds >= 0, got {value}")
    return number


register(
    Option(
        "simulate",
        "Add N simulated Kegboards (real pseudo-terminals, the real board code) for demos and tests: "
        "named simulated-kegboard, simulated-kegboard-2 ..., state kept in STATE_DIR/simulate, "
        "nothing sent to a Kegbot Server unless --api-url is given explicitly.",
        0,
        _count,
        integer(0),
    )
)
register(
    Option(
        "simulate_pours",
        "With --simulate: pour a demo glass on each simulated board's flow0 every this many seconds (0: never).",
        60.0,
        _seconds,
        number(minimum=0),
    )
)
register(
    Option(
        "manhole",
        "Open an SSH manhole (a Python shell in the daemon) on this endpoint, e.g. "
        "tcp:2222:interface=127.0.0.1; localhost unless an interface is named.",
        None,
        _text,
        string,
        shown_default="off",
    )
)
register(
    Option(
        "manhole_keys",
        "authorized_keys file of the public keys the manhole accepts (required with --manhole).",
        None,
        _text,
        string,
        shown_default="none",
    )
)


def _redis_url(value: str) -> str:
    # The bus's own parser: a bad port or database stops start-up with one
    # line here, not with a traceback when the bus is built.  Its messages
    # never repeat the URL, which may hold a password.
    parse_redis_url(value)
    return value


def url_password(url: str) -> bool:
    """Whether a (checked) ``--redis-url`` holds a password."""
    target = parse_redis_url(url)
    return target is not None and target.password is not None


register(
    Option(
        "redis_url",
        "Redis for Kegnet, the event bus of displays, token readers and remote kegboard "
        "daemons: redis://[[USER][:PASSWORD]@]HOST[:PORT][/DB], rediss:// (TLS), "
        "unix:///PATH[?db=N], or 'none' for no bus. The password is never logged; "
        "--redis-password-file keeps it out of ps.",
        "redis://localhost:6379/0",
        _redis_url,
        _checked(_redis_url),
        env="KEGBOT_REDIS_URL",
    )
)
register(
    Option(
        "redis_password_file",
        "Read the Redis password from this file (keeps it out of ps); with a user name "
        "in --redis-url (redis://kegbot@HOST/0) it is that Redis ACL user's password.",
        None,
        _text,
        string,
        shown_default="none",
    )
)
register(
    Option(
        "channel",
        "Kegnet pub/sub channel.",
        "kegnet",
        _text,
        string,
    )
)


register(
    Option(
        "role",
        "all: boards, core and bus in one daemon; kegboard: only this machine's boards, "
        "over Kegnet (a remote kegboard daemon); core: no boards, everything over Kegnet.",
        "all",
        _one_of("all", "kegboard", "core"),
        choice("all", "kegboard", "core"),
    )
)


register(
    Option(
        "log_format",
        "text for people, json for machines (one JSON event per line on standard output).",
        "text",
        _one_of("text", "json"),
        choice("text", "json"),
    )
)


register(
    Option(
        "log_level",
        "Least important events logged: debug shows every meter reading and frame.",
        "info",
        _one_of("debug", "info", "warn", "error"),
        choice("debug", "info", "warn", "error"),
    )
)
register(
    Option(
        "status",
        "Serve the status page, /status.json, /events and /metrics on this endpoint "
        "(read-only, no login; localhost unless an interface is named), or 'none'.",
        DEFAULT_ENDPOINT,
        check_endpoint,
        _checked(check_endpoint),
    )
)
