"""The README's two commands are what CI and newcomers actually run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.strip() for line in lines[:20] if line.startswith("    ")]


def test_readme_opens_with_install_and_run_then_install_and_test() -> None:
    run, test = readme_commands()[:2]
    assert run.startswith("python3 -m venv .venv && ") and "twistd -n kegbot" in run
    assert test.startswith("python3 -m venv .venv && ") and test.endswith("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test = readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines
