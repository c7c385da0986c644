"""A fast start: help, version and completion requests leave the heavy modules unimported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.test_completion import program

HEAVY = ("requests", "urllib3", "http.server", "sqlite3")


def imported_modules(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Run `python -X importtime -m inspera_cli ARGS` and return every module it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "inspera_cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--help"], None),
        (["--version"], None),
        (["create", "--help"], None),
        ([], {"_INSPERA_HOOKS_COMPLETE": "complete_bash", "COMP_WORDS": "inspera-hooks ", "COMP_CWORD": "1"}),
        (
            [],
            {
                "_INSPERA_HOOKS_COMPLETE": "complete_bash",
                "COMP_WORDS": "inspera-hooks create --event ",
                "COMP_CWORD": "3",
            },
        ),
    ],
    ids=["help", "version", "create-help", "complete-commands", "complete-event-no-profile"],
)
def test_no_heavy_imports(args: list[str], env: dict[str, str] | None) -> None:
    modules = imported_modules(*args, env=env)
    assert "inspera_cli.cli" in modules  # the measurement works
    assert heavy(modules) == []


def test_console_script_runs() -> None:
    result = subprocess.run([*program(), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("inspera-hooks ")
