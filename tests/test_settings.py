"""Config file and command-line options: precedence and rejection."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from kegtwist import settings
from kegtwist.core.config import AuthDevice
from kegtwist.options import Options

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kegbot.toml"
    path.write_text(text)
    return str(path)


def test_example_config_loads_and_covers_the_core_options() -> None:
    options = parse("--config", str(ROOT / "tap-configs" / "kegbot.toml"))
    core = options.core_config
    assert [t.meter for t in core.taps] == ["kegboard.flow0", "kegboard.flow1"]
    assert core.taps[0].relay == "kegboard.relay0"
    assert core.pours.max_pour_seconds == 600
    assert core.auth.device("core.rfid") == AuthDevice(captive=False, idle_seconds=20.0)
    assert options.settings["kegboard"] == ("auto",)


def test_defaults_without_a_file() -> None:
    options = parse()
    assert options.settings["kegboard"] == ("auto",)
    assert options.core_config.pours.idle_seconds == 10
    assert options.core_config.auth.offline_policy == "deny"
    assert options.core_config.auth.device("core.onewire").idle_seconds == 120


def test_command_line_wins_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'kegboard = ["/dev/ttyUSB7"]\n')
    assert parse("--config", path).settings["kegboard"] == ("/dev/ttyUSB7",)
    assert parse("--config", path, "--kegboard", "none").settings["kegboard"] == ("none",)
    assert parse("--config", path, "--kegboard", "none").board_specs == []


def test_device_settings_merge_with_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[auth.devices."core.rfid"]\nmax_volume_ml = 400\ntaps = ["kegboard.flow1"]\n'
        '[auth.devices."core.wiegand"]\ncaptive = false\n',
    )
    auth = parse("--config", path).core_config.auth
    assert auth.device("core.rfid") == AuthDevice(False, 20.0, 400.0, ("kegboard.flow1",))
    assert auth.device("core.wiegand").captive is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[pours]\nidle_secs = 3\n", "pours.idle_secs: unknown key"),
        ("[pours]\nidle_seconds = 'ten'\n", "pours.idle_seconds: expected a number"),
        ("[pours]\nmax_delta_ticks = 1.5\n", "pours.max_delta_ticks: expected a whole number"),
        ("[pours]\nvalve_refresh_seconds = 0\n", "must be greater than 0"),
        ("[auth]\noffline_policy = 'open'\n", "auth.offline_policy: expected one of deny, cached"),
        (
            '[auth.devices."core.rfid"]\ncaptive = "yes"\n',
            'auth.devices."core.rfid".captive: expected true or false',
        ),
        ("[[taps]]\nmeter = 'kegboard.flow0'\n", "taps[0]: ml_per_tick is required"),
        (
            "[[taps]]\nmeter = 'a.flow0'\nml_per_tick = 1\nvalve = 'a.relay0'\n",
            "taps[0].valve: unknown key",
        ),
        (
            "[[taps]]\nmeter = 'a.flow0'\nml_per_tick = 1\n[[taps]]\nmeter = 'a.flow0'\nml_per_tick = 2\n",
            "listed twice",
        ),
        ("kegbord = 'auto'\n", "kegbord: unknown key"),
        ("kegboard = ['tcp:nohost']\n", "expected tcp:HOST:PORT"),
        ("pours = 3\n", "pours: expected a table"),
        ("redis_url = 'redis://:pw@host:notaport/0'\n", "redis_url: bad port or database"),
        ("role = 'both'\n", "role: expected one of all, kegboard, core"),
        ("[pours\n", "not valid TOML"),
    ],
)
def test_bad_values_are_rejected_naming_key_and_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(usage.UsageError) as e:
        parse("--config", path)
    assert message in str(e.value)
    assert path in str(e.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="cannot read config file"):
        parse("--config", str(tmp_path / "nope.toml"))


def test_parse_reports_source() -> None:
    with pytest.raises(settings.ConfigError, match=r"^here: pours\.x: unknown key"):
        settings.parse({"pours": {"x": 1}}, "here")


def test_example_config_mentions_every_option() -> None:
    from kegtwist.options import OPTIONS

    text = (ROOT / "tap-configs" / "kegbot.toml").read_text()
    missing = [o.name for o in OPTIONS if f"{o.name} =" not in text]
    assert missing == []


def test_bad_redis_url_on_the_command_line_never_shows_the_password() -> None:
    with pytest.raises(usage.UsageError) as e:
        parse("--redis-url", "redis://:s3cret@host:notaport/0")
    assert "bad port or database number" in str(e.value) and "s3cret" not in str(e.value)
