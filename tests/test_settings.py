"""Config file and command-line options: precedence and rejection."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from kegtwist.core.config import AuthDevice
from kegtwist.daemon import settings
from kegtwist.daemon.options import Options

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
        # Bounds that keep the guards on (a ghost guard of 1e12 s is none).
        ("[pours]\nmax_pour_seconds = 1e12\n", "pours.max_pour_seconds: must be at most 86400, got 1000000000000.0 (range 0 (exclusive) to 86400)"),
        ("[pours]\nidle_seconds = 1e308\n", "pours.idle_seconds: must be at most 3600"),
        ('[auth.devices."core.rfid"]\nidle_seconds = 3601\n', 'auth.devices."core.rfid".idle_seconds: must be at most 3600, got 3601'),
        ("[[taps]]\nmeter = 'a.flow0'\nml_per_tick = 100.5\n", "taps[0].ml_per_tick: must be at most 100, got 100.5 (range 0 (exclusive) to 100)"),
        ("[[taps]]\nmeter = 'a.flow0'\nml_per_tick = 0\n", "taps[0].ml_per_tick: must be greater than 0"),
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
    from kegtwist.daemon.option_table import OPTIONS

    text = (ROOT / "tap-configs" / "kegbot.toml").read_text()
    missing = [o.name for o in OPTIONS if f"{o.name} =" not in text]
    assert missing == []


def test_bad_redis_url_on_the_command_line_never_shows_the_password() -> None:
    with pytest.raises(usage.UsageError) as e:
        parse("--redis-url", "redis://:s3cret@host:notaport/0")
    assert "bad port or database number" in str(e.value) and "s3cret" not in str(e.value)


# --- --redis-password-file ------------------------------------------------------


def test_redis_password_file_from_the_command_line_or_the_file(tmp_path: Path) -> None:
    from kegtwist.bus.redis_url import redis_target

    secret = tmp_path / "redis-password"
    secret.write_text("  s3cret-pw\n")
    path = write(tmp_path, f"redis_password_file = '{secret}'\n")
    assert parse("--config", path).settings["redis_password_file"] == str(secret)
    options = parse("--redis-password-file", str(secret), "--redis-url", "redis://kegbot@h/0")
    assert options.settings["redis_password_file"] == str(secret)
    target = redis_target(options.settings["redis_url"], options.settings["redis_password_file"])
    assert target is not None and (target.username, target.password) == ("kegbot", "s3cret-pw")
    assert "s3cret" not in repr(target) and "s3cret" not in target.redacted()
    assert parse().settings["redis_password_file"] is None
    assert redis_target("redis://h/0") == redis_target("redis://h/0", None)
    assert redis_target("none", str(secret)) is None


def test_redis_password_file_must_be_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, "redis_password_file = 3\n")
    with pytest.raises(usage.UsageError, match="redis_password_file: expected a non-empty string"):
        parse("--config", path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "No such file or directory"), ("", "is empty"), ("\n \n", "is empty")],
)
def test_an_unusable_redis_password_file_names_its_path(
    tmp_path: Path, content: str | None, message: str
) -> None:
    from kegtwist.bus.redis_url import redis_target
    from kegtwist.errors import StartupError

    secret = tmp_path / "redis-password"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(StartupError) as e:
        redis_target("redis://kegbot@h/0", str(secret))
    assert str(e.value).count("\n") == 0
    assert str(secret) in str(e.value) and message in str(e.value)


def test_a_password_in_the_url_and_a_password_file_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text("from-the-file")
    with pytest.raises(usage.UsageError) as e:
        parse("--redis-url", "redis://:in-the-url@h/0", "--redis-password-file", str(secret))
    assert "take the password out of the URL" in str(e.value)
    assert "in-the-url" not in str(e.value)


def test_a_password_on_the_command_line_is_warned_about_once_never_shown(
    tmp_path: Path,
) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []

    def observe(event: dict[str, object]) -> None:
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        parse("--redis-url", "redis://kegbot:s3cret-pw@h/0")
        warned = [line for line in seen if "visible to other users" in line]
        assert len(warned) == 1 and "--redis-password-file" in warned[0]
        assert not any("s3cret" in line for line in seen)
        # Not in ps: a password in the config file, or none, is no warning.
        seen.clear()
        parse("--config", write(tmp_path, "redis_url = 'redis://:s3cret-pw@h/0'\n"))
        parse("--redis-url", "redis://h/0")
        assert not any("visible to other users" in line for line in seen)
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest.mark.integration
def test_an_out_of_range_value_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    """As an owner starts it: ``twistd -n kegbot --config`` with a ghost
    guard of 1e12 s exits at once with one line naming key, value, range."""
    import subprocess
    import sys

    config = tmp_path / "kegbot.toml"
    config.write_text("[pours]\nmax_pour_seconds = 1e12\n")
    twistd = Path(sys.executable).parent / "twistd"
    done = subprocess.run(
        [str(twistd), "-n", "--pidfile=", "kegbot", "--config", str(config),
         "--kegboard", "none", "--redis-url", "none", "--api-url", "none",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    out = (done.stdout + done.stderr).strip()
    assert "Traceback" not in out
    [line] = [x for x in out.splitlines() if "max_pour_seconds" in x]
    assert "1000000000000.0" in line and "86400" in line and str(config) in line
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


@pytest.mark.integration
def test_the_config_file_knows_its_keys_without_the_command_line_module() -> None:
    """No import-order effects: a fresh interpreter that imports only the
    settings module checks every option key the file may hold."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from kegtwist.daemon import settings\n"
        "assert 'kegtwist.daemon.options' not in sys.modules\n"
        "assert not any(m.startswith('twisted') for m in sys.modules), 'settings pulled in Twisted'\n"
        "f = settings.parse({'api_url': 'none', 'role': 'core', 'kegboard': ['auto']})\n"
        "print(sorted(f.options))\n"
        "try:\n"
        "    settings.parse({'rol': 'core'})\n"
        "except settings.ConfigError as e:\n"
        "    print('refused:', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "['api_url', 'kegboard', 'role']" in done.stdout
    assert "refused: config: rol: unknown key" in done.stdout
