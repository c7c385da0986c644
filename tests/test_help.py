"""Meta-tests: every registered command has useful help, and every top-level command is in the README."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from inspera_cli.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command below the root, groups and their subcommands alike, with its name path."""
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield (*path, name), sub
        yield from walk(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = dict(walk(ROOT))
TOP_LEVEL = sorted(path[0] for path in COMMANDS if len(path) == 1)


def test_the_tree_is_walked() -> None:
    assert {("create",), ("completion",), ("config", "show")} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_has_a_summary_and_an_example(path: tuple[str, ...]) -> None:
    command = COMMANDS[path]
    text = (command.help or "").strip()
    assert text, f"`{' '.join(path)}` has no help text (write a docstring)"
    first_paragraph = text.split("\n\n", 1)[0].strip()
    assert "\n" not in first_paragraph, f"`{' '.join(path)}`: help should open with a one-line summary"
    assert "Example:" in text, f"`{' '.join(path)}` help has no `Example:` line"
    example = text.split("Example:", 1)[1].strip()
    assert example.startswith("inspera-hooks"), f"`{' '.join(path)}`: the example should be a command line"


def mentioned(name: str, readme: str) -> bool:
    """`inspera-hooks NAME`, allowing global options (`inspera-hooks --profile x NAME`) in between."""
    return (
        re.search(rf"inspera-hooks(?: +-[\w-]+(?:[ =](?!-)\S+)?)* +{re.escape(name)}\b", readme) is not None
    )


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_command_is_in_the_readme(name: str) -> None:
    assert mentioned(name, README.read_text(encoding="utf-8")), (
        f"README.md never shows `inspera-hooks {name}`"
    )


def test_readme_matcher() -> None:
    assert mentioned("login", "run `inspera-hooks --profile work login` once")
    assert mentioned("list", "inspera-hooks list --json")
    assert not mentioned("list", "inspera-hooks listen")
