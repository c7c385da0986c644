"""The house rules hold: the layer rules bite in `ruff check` (a violation planted in a copy of the
package fails it), and ARCHITECTURE.md names only rooms that exist, and every room there is."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "inspera_cli"

# A function-level import: only the layer rule (TID251) can object to it.
INSIDE = "\n\ndef _planted() -> None:\n    {statement}\n"
# A module-level import after the code: only the start-up rule (TID253) and the layer rule apply
# (the run selects the TID rules, so import order and placement do not count).
TOP = "\n{statement}\n"


def ruff(tree: Path) -> list[dict[str, Any]]:
    """`ruff check` of a copied tree, the way .ci/run runs it (the tree's own configuration)."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID", "--output-format",
         "json", "."],
        cwd=tree, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr
    diagnostics: list[dict[str, Any]] = json.loads(result.stdout)
    assert (result.returncode == 1) == bool(diagnostics)
    return diagnostics


def copy_of_the_package(into: Path) -> Path:
    """The package and the ruff configuration (top-level and nested), copied."""
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")
    shutil.copytree(PACKAGE, into / "inspera_cli", ignore=shutil.ignore_patterns("__pycache__"))
    return into


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return copy_of_the_package(tmp_path)


def test_the_package_as_it_is_passes(tree: Path) -> None:
    assert ruff(tree) == []


PLANTS = [
        # Rich only in output/.
        ("inspera_cli/network.py", INSIDE, "import rich", "TID251", "rich"),
        ("inspera_cli/listener/policy.py", INSIDE, "from rich.table import Table", "TID251", "rich"),
        ("inspera_cli/commands/doctor.py", INSIDE, "from rich.console import Console", "TID251", "rich"),
        ("inspera_cli/cli.py", TOP, "import rich", "TID253", "rich"),
        # Typer (and Click) only in cli.py and commands/.
        ("inspera_cli/recording.py", INSIDE, "import typer", "TID251", "typer"),
        ("inspera_cli/checks/tenant.py", INSIDE, "from typer import Exit", "TID251", "typer"),
        ("inspera_cli/output/__init__.py", INSIDE, "import typer", "TID251", "typer"),
        ("inspera_cli/relay/queue.py", INSIDE, "import click", "TID251", "click"),
        # Library rooms (and output) never import the command layer, library rooms never output.
        ("inspera_cli/subscribing.py", INSIDE, "from inspera_cli.commands import common",
         "TID251", "inspera_cli.commands"),
        ("inspera_cli/output/table.py", INSIDE, "from inspera_cli.commands.help import HelpGroup",
         "TID251", "inspera_cli.commands"),
        ("inspera_cli/sandbox/server.py", INSIDE, "from inspera_cli import output", "TID251",
         "inspera_cli.output"),
        ("inspera_cli/client.py", INSIDE, "import inspera_cli.output", "TID251", "inspera_cli.output"),
        ("inspera_cli/public_session.py", INSIDE, "from inspera_cli.cli import main", "TID251",
         "inspera_cli.cli"),
        ("inspera_cli/commands/listen.py", INSIDE, "from inspera_cli.cli import app", "TID251",
         "inspera_cli.cli"),
        ("inspera_cli/tunnel.py", INSIDE, "from inspera_cli import __version__", "TID251",
         "inspera_cli.__version__"),
        # A room added later is covered without being listed anywhere.
        ("inspera_cli/new_room.py", TOP, "import typer", "TID251", "typer"),
        ("inspera_cli/new_package/room.py", INSIDE, "import rich.progress", "TID251", "rich"),
        # Start-up: heavy modules are imported inside functions in cli.py and commands/.
        ("inspera_cli/commands/subscriptions.py", TOP, "import requests", "TID253", "requests"),
        ("inspera_cli/commands/relay.py", TOP, "import sqlite3", "TID253", "sqlite3"),
        ("inspera_cli/commands/listen.py", TOP, "import asyncio", "TID253", "asyncio"),
        ("inspera_cli/commands/sending.py", TOP, "from http.server import HTTPServer", "TID253",
         "http.server"),
        ("inspera_cli/cli.py", TOP, "import ssl", "TID253", "ssl"),
        ("inspera_cli/commands/apply.py", TOP, "import pydantic", "TID253", "pydantic"),
        ("inspera_cli/commands/common.py", TOP, "from inspera_cli.client import InsperaClient",
         "TID253", "inspera_cli.client"),
        ("inspera_cli/commands/new_command.py", TOP, "from inspera_cli.listener.server import Listener",
         "TID253", "inspera_cli.listener.server"),
]


@dataclass
class Planted:
    line: dict[tuple[str, str], int]  # (path, statement): the line it was planted on
    found: list[tuple[str, int, str, str]]  # what ruff reported: path, line, rule, message


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """Every violation of PLANTS planted in one copy of the package, and one `ruff check` of it
    (a copy and a run per violation cost a start of ruff each)."""
    tree = copy_of_the_package(tmp_path_factory.mktemp("planted"))
    line = {}
    for path, template, statement, _, _ in PLANTS:
        planted = tree / path
        planted.parent.mkdir(parents=True, exist_ok=True)
        before = planted.read_text() if planted.exists() else ""
        planted.write_text(before + template.format(statement=statement))
        line[path, statement] = (
            before.count("\n") + template.format(statement=statement).rstrip("\n").count("\n") + 1
        )
    found = [(Path(d["filename"]).relative_to(tree).as_posix(), d["location"]["row"], d["code"], d["message"])
             for d in ruff(tree)]
    return Planted(line, found)


@pytest.mark.parametrize(("path", "template", "statement", "rule", "banned"), PLANTS)
def test_a_planted_violation_fails_ruff(
    planted: Planted, path: str, template: str, statement: str, rule: str, banned: str
) -> None:
    line = planted.line[path, statement]
    here = [(code, message) for where, row, code, message in planted.found if (where, row) == (path, line)]
    assert [code for code, _ in here] == [rule]
    assert here[0][1].startswith(f"`{banned}` is banned")


def test_ruff_reports_the_planted_violations_and_nothing_else(planted: Planted) -> None:
    assert sorted((path, row) for path, row, _, _ in planted.found) == sorted(
        (path, planted.line[path, statement]) for path, _, statement, _, _ in PLANTS
    )


def test_library_rooms_may_import_heavy_modules_at_module_level(tree: Path) -> None:
    """The start-up rule is the command line's: a library room imports what it uses at the top."""
    planted = tree / "inspera_cli" / "network.py"
    planted.write_text(planted.read_text() + TOP.format(statement="import sqlite3"))
    assert ruff(tree) == []


# -- ARCHITECTURE.md ------------------------------------------------------------------------------

ARCHITECTURE = (ROOT / "ARCHITECTURE.md").read_text()
# What ARCHITECTURE.md names: every `backticked` word, a call's arguments dropped.
NAMED = {re.sub(r"\(.*\)$", "", word) for word in re.findall(r"`([^`\n]+)`", ARCHITECTURE)}
PATHS = sorted(word for word in NAMED if " " not in word and re.search(r"(\.py|\.toml|\.md|/)$", word))
IDENTIFIERS = sorted(
    word for word in NAMED
    if re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", word) and ("." in word or "_" in word or word[0].isupper())
    and word not in PATHS
)
SOURCE = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))


def test_it_names_what_it_walks_through() -> None:
    """The parser of this test finds what it should (so the tests below cannot pass on nothing)."""
    assert {"cli.py", "listener/policy.py", "relay/queue.py", "commands/", "output/"} <= set(PATHS)
    assert {"InsperaClient", "EventQueue", "cli.COMMANDS", "ListenPolicy.accept"} <= set(IDENTIFIERS)


@pytest.mark.parametrize("path", PATHS)
def test_every_path_it_names_exists(path: str) -> None:
    assert (PACKAGE / path).exists() or (ROOT / path).exists(), f"ARCHITECTURE.md names {path}"


@pytest.mark.parametrize("name", IDENTIFIERS)
def test_every_name_it_gives_is_defined(name: str) -> None:
    """`cli.COMMANDS`, `ReceiverPolicy.handle`, `InsperaClient`: defined in the package."""
    last = name.rsplit(".", 1)[-1]
    defined = re.compile(rf"^\s*(?:async\s+def|def|class)\s+{last}\b|^\s*{last}\s*(?::[^=\n]*)?=", re.M)
    assert defined.search(SOURCE), f"ARCHITECTURE.md names {name}, which the package does not define"


def test_every_room_is_on_the_map() -> None:
    """Each module of the package is named (a command's module may be named by cli.COMMANDS
    instead: one module per command is the rule), and so is each subpackage."""
    from inspera_cli.cli import COMMANDS

    command_modules = {f"commands/{module}.py" for module in COMMANDS.values()}
    missing = []
    for module in sorted(PACKAGE.rglob("*.py")):
        path = module.relative_to(PACKAGE).as_posix()
        if module.name == "__init__.py" and module.parent != PACKAGE:
            path = f"{module.parent.relative_to(PACKAGE).as_posix()}/"
        if path not in PATHS and path not in command_modules:
            missing.append(path)
    assert missing == [], "add these rooms to ARCHITECTURE.md's code map"
