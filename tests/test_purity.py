"""Pure modules stay pure: importing one pulls in no Twisted and no I/O stack.

A module is pure if it is in ``kegtwist/protocol/`` or ``kegtwist/core/``,
is one of :data:`ALSO_PURE`, or its docstring says so (its summary line
calls it pure, or a sentence starts with "Pure").  Each is imported alone
in a fresh interpreter (``python -c``), whose ``sys.modules`` afterwards
must hold no module of :data:`FORBIDDEN`.  The import is transitive, so a
Twisted import added to a pure module, to anything it imports, or to its
package's ``__init__`` fails the test; a Twisted import inside a function
body that the import does not run is not caught (mypy and review are).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # real processes, redis-server or ptys

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kegtwist"
PURE_PACKAGES = ("protocol", "core")
ALSO_PURE = (
    "kegtwist.ratelimit",
    "kegtwist.backoff",
    "kegtwist.boards.naming",
    "kegtwist.boards.spec",
)
FORBIDDEN = (
    # Twisted and what only it (or the daemon's I/O) brings
    "twisted",
    "zope",
    "treq",
    "txredisapi",
    "serial",
    "automat",
    "hyperlink",
    # the standard library's I/O and concurrency
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "threading",
    "subprocess",
    "concurrent",
    "http",
)
PROBE = (
    "import importlib, json, sys\n"
    "importlib.import_module(sys.argv[1])\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def says_pure(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    lines = doc.strip().splitlines()
    summary = lines[0] if lines else ""
    return bool(
        re.search(r"\bpure\b", summary, re.IGNORECASE)
        or re.search(r"(?:^|[.:;!?]\s+)Pure\b", doc, re.MULTILINE)
    )


def pure_modules() -> list[str]:
    names = set(ALSO_PURE)
    for path in PACKAGE.rglob("*.py"):
        in_pure_package = path.relative_to(PACKAGE).parts[0] in PURE_PACKAGES
        if in_pure_package or says_pure(path):
            names.add(module_name(path))
    return sorted(names)


def forbidden_after_import(module: str, extra_path: Path | None = None) -> list[str]:
    """The forbidden modules a fresh interpreter holds after importing ``module``."""
    env_path = [str(ROOT)] + ([str(extra_path)] if extra_path is not None else [])
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {env_path!r}\n" + PROBE, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
    loaded: list[str] = json.loads(result.stdout)
    return [
        name for name in loaded if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]


def test_the_list_holds_what_the_readme_calls_pure() -> None:
    found = pure_modules()
    for name in (*ALSO_PURE, "kegtwist.core", "kegtwist.core.machine", "kegtwist.core.pours"):
        assert name in found
    for name in ("kegtwist.protocol.kbsp", "kegtwist.protocol.kegnet"):
        assert name in found
    # The docstring rule does not take a module that only mentions the pure core.
    assert "kegtwist.daemon.core_service" not in found


@pytest.mark.parametrize("module", pure_modules())
def test_importing_a_pure_module_pulls_in_no_io(module: str) -> None:
    assert forbidden_after_import(module) == [], f"{module} is documented as pure"


def test_the_probe_sees_a_twisted_import(tmp_path: Path) -> None:
    """What a Twisted import added to a pure module would do to the test above."""
    (tmp_path / "kegtwist_probe_impure.py").write_text(
        '"""Pure: or so it says."""\n\nfrom twisted.internet import defer  # noqa: F401\n'
    )
    assert says_pure(tmp_path / "kegtwist_probe_impure.py")
    found = forbidden_after_import("kegtwist_probe_impure", extra_path=tmp_path)
    assert "twisted" in found and "twisted.internet.defer" in found
