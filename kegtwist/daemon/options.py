"""Command-line options of ``twistd kegbot``, merged with the config file.

Precedence, highest first: the command line, the ``--config`` TOML file
(same names, dashes as underscores), the environment variables the classic
daemons read (``KEGBOT_API_URL`` ...), the defaults.  The options
themselves live in :mod:`kegtwist.daemon.option_table`; the help, the file
and the merge all follow from it.

``--simulate N`` makes a run apart from the real ones (see
:mod:`kegtwist.boards.simulated`): its state dir is ``<state_dir>/simulate``, its
``api_url`` is ``none`` unless one was given explicitly (command line,
file or ``$KEGBOT_API_URL``; the default does not count), and the simulated
boards' taps join the file's ``[[taps]]`` in :attr:`Options.core_config`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.python import usage

from kegtwist.boards.spec import BoardSpec, parse_board_spec, parse_board_specs
from kegtwist.core.config import CoreConfig
from kegtwist.daemon import settings
from kegtwist.daemon.checks import ConfigError
from kegtwist.daemon.option_table import OPTIONS, default_state_dir, url_password


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
        except (ConfigError, ValueError) as e:
            raise usage.UsageError(str(e)) from None
        self._choose_logger()
        if self.settings["simulate"]:
            self._log_simulated_run()
        if "redis-url" in self._explicit and url_password(self.settings["redis_url"]):
            self._warn_password_in_ps()

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
                    raise ConfigError(f"${option.env}: {e}") from None
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
                raise ConfigError(
                    f"cannot read --api-key-file {key_file}: {e.strerror or e}"
                ) from None
            if not key:
                raise ConfigError(f"--api-key-file {key_file} is empty")
            self.settings["api_key"] = key
        if self.settings["redis_password_file"] and url_password(self.settings["redis_url"]):
            raise ConfigError(
                "--redis-url holds a password and --redis-password-file gives one too: "
                "take the password out of the URL"
            )
        if self.settings["role"] != "all" and self.settings["redis_url"] == "none":
            raise ConfigError(
                f"--role {self.settings['role']} talks over Kegnet: it needs a --redis-url, not 'none'"
            )
        if self.settings["manhole"] and not self.settings["manhole_keys"]:
            raise ConfigError(
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
