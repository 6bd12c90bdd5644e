"""Command-line options of ``twistd kegbot``, merged with the config file.

Precedence, highest first: the command line, the ``--config`` TOML file
(same names, dashes as underscores), the environment variables the classic
daemons read (``KEGBOT_API_URL`` ...), the defaults.  Options register here
once, with their default, their environment variable and how to check a
value, and the help, the file and the merge all follow from that.

``--simulate N`` makes a run apart from the real ones (see
:mod:`kegtwist.boards.simulated`): its state dir is ``<state_dir>/simulate``, its
``api_url`` is ``none`` unless one was given explicitly (command line,
file or ``$KEGBOT_API_URL``; the default does not count), and the simulated
boards' taps join the file's ``[[taps]]`` in :attr:`Options.core_config`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.python import usage

from kegtwist.boards.spec import BoardSpec, parse_board_spec, parse_board_specs
from kegtwist.bus.redis_url import parse_redis_url
from kegtwist.core.config import CoreConfig
from kegtwist.daemon import settings


@dataclass(frozen=True, slots=True)
class Option:
    """One daemon option: command line, config file and environment."""

    name: str  # as in the config file: underscores
    doc: str
    default: Any
    parse: Callable[[str], Any]  # command-line / environment text -> value
    check: settings.Check  # config-file value -> value
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
    specs = settings._string_list(where, value)
    for spec in specs:
        try:
            parse_board_spec(spec)
        except ValueError as e:
            raise settings.ConfigError(f"{where}: {e}") from None
    return specs


OPTIONS: list[Option] = []


def register(option: Option) -> Option:
    OPTIONS.append(option)
    settings.option(option.name, option.check)
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


def _checked(parse: Callable[[str], str]) -> settings.Check:
    """The config-file check of a string option: the command line's parser."""

    def check(where: str, value: Any) -> str:
        try:
            return parse(settings._string(where, value))
        except ValueError as e:
            raise settings.ConfigError(f"{where}: {e}") from None

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
        settings._string,
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
        settings._string,
        shown_default="none",
    )
)
register(
    Option(
        "state_dir",
        "Where the outbox and the pour checkpoint live.",
        None,
        _text,
        settings._string,
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
        settings._integer(0),
    )
)
register(
    Option(
        "simulate_pours",
        "With --simulate: pour a demo glass on each simulated board's flow0 every this many seconds (0: never).",
        60.0,
        _seconds,
        settings._number(minimum=0),
    )
)
register(
    Option(
        "manhole",
        "Open an SSH manhole (a Python shell in the daemon) on this endpoint, e.g. "
        "tcp:2222:interface=127.0.0.1; localhost unless an interface is named.",
        None,
        _text,
        settings._string,
        shown_default="off",
    )
)
register(
    Option(
        "manhole_keys",
        "authorized_keys file of the public keys the manhole accepts (required with --manhole).",
        None,
        _text,
        settings._string,
        shown_default="none",
    )
)


def _redis_url(value: str) -> str:
    # The bus's own parser: a bad port or database stops start-up with one
    # line here, not with a traceback when the bus is built.  Its messages
    # never repeat the URL, which may hold a password.
    parse_redis_url(value)
    return value


def _url_password(url: str) -> bool:
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
        settings._string,
        shown_default="none",
    )
)
register(
    Option(
        "channel",
        "Kegnet pub/sub channel.",
        "kegnet",
        _text,
        settings._string,
    )
)


register(
    Option(
        "role",
        "all: boards, core and bus in one daemon; kegboard: only this machine's boards, "
        "over Kegnet (a remote kegboard daemon); core: no boards, everything over Kegnet.",
        "all",
        _one_of("all", "kegboard", "core"),
        settings._choice("all", "kegboard", "core"),
    )
)


register(
    Option(
        "log_format",
        "text for people, json for machines (one JSON event per line on standard output).",
        "text",
        _one_of("text", "json"),
        settings._choice("text", "json"),
    )
)


register(
    Option(
        "log_level",
        "Least important events logged: debug shows every meter reading and frame.",
        "info",
        _one_of("debug", "info", "warn", "error"),
        settings._choice("debug", "info", "warn", "error"),
    )
)


class Options(usage.Options):
    """Options for the kegbot service; ``--help`` shows each default."""

    synopsis = "[options]"
    longdesc = (
        "Kegbot core: reads Kegboards on serial ports, turns meter ticks into drinks "
        "and keeps valves closed unless an authorised drinker pours. "
        "Precedence: command line, then --config file, then environment, then defaults."
    )
    optParameters: list[list[Any]] = [
        ["config", "c", None, "A TOML config file (see tap-configs/kegbot.toml)."]
    ]

    def __init__(self) -> None:
        self._explicit: set[str] = set()
        self._kegboards: list[str] = []
        super().__init__()
        self.settings: dict[str, Any] = {}
        self.core_config = CoreConfig()

    def __setitem__(self, key: str, value: Any) -> None:
        # usage.Options stores every parsed command-line value through here.
        self._explicit.add(key)
        super().__setitem__(key, value)

    def opt_kegboard(self, value: str) -> None:
        try:
            parse_board_spec(value)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self._kegboards.append(value)
        self._explicit.add("kegboard")

    opt_kegboard.__doc__ = OPTIONS[0].doc + " [default: auto]"

    def postOptions(self) -> None:
        try:
            self._resolve()
        except (settings.ConfigError, ValueError) as e:
            raise usage.UsageError(str(e)) from None
        self._choose_logger()
        if self.settings["simulate"]:
            self._log_simulated_run()
        if "redis-url" in self._explicit and _url_password(self.settings["redis_url"]):
            self._warn_password_in_ps()
        if getattr(self, "parent", None) is not None:
            from kegtwist.daemon import lean

            if not lean.needs_tls(self.settings):
                lean.keep_tls_out()

    def _choose_logger(self) -> None:
        """Tell twistd which observer to use (it resolves ServerOptions
        ["logger"], a dotted name, after the subcommand's options are parsed).

        Text goes through our filtered observer only where twistd would
        write to standard output anyway (``-n`` without ``--logfile``):
        ``--logfile`` and ``--syslog`` keep twistd's own observers."""
        from twisted.logger import LogLevel

        from kegtwist.daemon import logs

        logs.LEVEL = LogLevel.levelWithName(self.settings["log_level"])
        parent = getattr(self, "parent", None)
        if parent is None or parent.get("logger"):
            return
        if self.settings["log_format"] == "json":
            parent["logger"] = "kegtwist.daemon.logs.json_observer"
        elif (
            parent.get("nodaemon")
            and parent.get("logfile") in (None, "", "-")
            and not parent.get("syslog")
        ):
            parent["logger"] = "kegtwist.daemon.logs.text_observer"

    def _resolve(self) -> None:
        file_settings = settings.FileSettings()
        if self["config"]:
            file_settings = settings.load(self["config"])
        self.core_config = file_settings.core
        given: set[str] = set()  # options not left at their default
        for option in OPTIONS:
            given.add(option.name)
            if option.name == "kegboard" and self._kegboards:
                value: Any = tuple(self._kegboards)
            elif option.flag in self._explicit:
                value = self[option.flag]
            elif option.name in file_settings.options:
                value = file_settings.options[option.name]
            elif option.env and os.environ.get(option.env):
                try:
                    value = option.parse(os.environ[option.env])
                except ValueError as e:
                    raise settings.ConfigError(f"${option.env}: {e}") from None
            else:
                value = option.default
                given.discard(option.name)
            self.settings[option.name] = value
        self.settings["board_specs"] = parse_board_specs(list(self.settings["kegboard"]))
        if self.settings["state_dir"] is None:
            self.settings["state_dir"] = default_state_dir()
        if self.settings["simulate"]:
            self._simulated_run(api_url_given="api_url" in given)
        key_file = self.settings["api_key_file"]
        if key_file:
            try:
                with open(key_file, encoding="utf-8") as f:
                    key = f.read().strip()
            except OSError as e:
                raise settings.ConfigError(
                    f"cannot read --api-key-file {key_file}: {e.strerror or e}"
                ) from None
            if not key:
                raise settings.ConfigError(f"--api-key-file {key_file} is empty")
            self.settings["api_key"] = key
        if self.settings["redis_password_file"] and _url_password(self.settings["redis_url"]):
            raise settings.ConfigError(
                "--redis-url holds a password and --redis-password-file gives one too: "
                "take the password out of the URL"
            )
        if self.settings["role"] != "all" and self.settings["redis_url"] == "none":
            raise settings.ConfigError(
                f"--role {self.settings['role']} talks over Kegnet: it needs a --redis-url, not 'none'"
            )
        if self.settings["manhole"] and not self.settings["manhole_keys"]:
            raise settings.ConfigError(
                "--manhole needs --manhole-keys (an authorized_keys file): it never opens without a key"
            )

    def _simulated_run(self, api_url_given: bool) -> None:
        """Keep a ``--simulate`` run apart from the owner's real ones.

        Its own state dir (a normal start never sees its drinks), no
        Kegbot Server unless one was named, and its boards' taps as file
        taps (for meters the file does not name)."""
        from kegtwist.boards.simulated import SIMULATE_STATE_SUBDIR, simulated_taps

        self.settings["state_dir"] = os.path.join(self.settings["state_dir"], SIMULATE_STATE_SUBDIR)
        if not api_url_given:
            self.settings["api_url"] = "none"
        known = {tap.meter for tap in self.core_config.taps}
        extra = [t for t in simulated_taps(self.settings["simulate"]) if t.meter not in known]
        self.core_config = dataclasses.replace(
            self.core_config, taps=(*self.core_config.taps, *extra)
        )

    def _log_simulated_run(self) -> None:
        from twisted.logger import Logger

        from kegtwist.boards.simulated import board_name

        count = self.settings["simulate"]
        boards = board_name(0) if count == 1 else f"{board_name(0)} to {board_name(count - 1)}"
        if self.settings["api_url"] == "none":
            Logger(namespace="kegtwist").info(
                "Simulated run ({boards}): state in {dir}; nothing is posted or registered on "
                "a Kegbot Server (give --api-url explicitly for that)",
                boards=boards,
                dir=self.settings["state_dir"],
            )
        else:
            Logger(namespace="kegtwist").info(
                "Simulated run ({boards}): state in {dir}; its drinks and boards go to the "
                "Kegbot Server at {url}",
                boards=boards,
                dir=self.settings["state_dir"],
                url=self.settings["api_url"],
            )

    def _warn_password_in_ps(self) -> None:
        from twisted.logger import Logger

        Logger(namespace="kegtwist").warn(
            "Kegnet: the Redis password in --redis-url is visible to other users of this "
            "machine (in ps); put it in a file only the daemon's user can read and give "
            '--redis-password-file (see "Kegnet security" in the README)'
        )

    @property
    def board_specs(self) -> list[BoardSpec]:
        specs: list[BoardSpec] = self.settings["board_specs"]
        return specs


def _add_parameters() -> None:
    """Every registered option but the repeatable ones is a parameter."""
    for option in OPTIONS:
        if option.name == "kegboard":
            continue
        env = f"${option.env}, else " if option.env else ""
        shown = option.shown_default if option.shown_default is not None else option.default
        doc = f"{option.doc} [default: {env}{shown}]"
        Options.optParameters.append([option.flag, None, None, doc, option.parse])


_add_parameters()
