# kegtwist as a twistd application file: `twistd -ny tap-configs/kegbot.tac`.
#
# The same daemon as `twistd -n kegbot --config FILE`, for setups that run
# .tac files (an existing twistd supervisor, a process manager that only
# knows `twistd -y`).  The config file is $KEGBOT_CONFIG, else
# /etc/kegbot/kegbot.toml if it exists, else none (then the environment
# variables KEGBOT_API_URL, KEGBOT_STATE_DIR ... and the defaults apply).
#
# Logs: text (or JSON with log_format = "json") on standard output, filtered
# by log_level, exactly as `twistd -n kegbot` writes them.  twistd's own
# --logfile/--syslog do not apply to this file; `--logger` still overrides.
# SIGTERM stops it in order (pours recorded, valves closed) with status 0.
# mypy/ruff do not see this file: it is exec'd by twistd, not imported.

import os
import sys

from twisted.application import service
from twisted.logger import ILogObserver
from twisted.python import usage

from kegtwist.daemon import logs
from kegtwist.daemon.options import Options
from kegtwist.delivery.outbox import StateDirBusy
from kegtwist.daemon.compose import make_service

DEFAULT_CONFIG = "/etc/kegbot/kegbot.toml"


def _config_path() -> str | None:
    """$KEGBOT_CONFIG must exist if set; the default only if present."""
    named = os.environ.get("KEGBOT_CONFIG")
    if named:
        return named
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def _options() -> Options:
    path = _config_path()
    options = Options()
    try:
        options.parseOptions(["--config", path] if path else [])
    except usage.UsageError as e:
        # One clear line, not a traceback (twistd prints SystemExit's text).
        raise SystemExit(f"kegbot.tac: {e}") from None
    return options


_opts = _options()
application = service.Application("kegbot")
# Options._choose_logger only talks to twistd when it parses twistd's own
# command line; here the observer is handed over as the application's.
application.setComponent(
    ILogObserver,
    logs.json_observer() if _opts.settings["log_format"] == "json" else logs.text_observer(),
)
try:
    make_service(_opts).setServiceParent(application)
except StateDirBusy as e:
    print(f"kegbot: {e}", file=sys.stderr)
    raise SystemExit(1) from None
