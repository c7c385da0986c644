"""Meta-tests: every registered command has useful help, and every top-level command is in the README."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from inspera_cli.cli import app
from tests.processes import Terminal

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


# -- what --help shows, at the terminal's width ------------------------------------------------------

# Placeholders named after a type rather than a thing: Typer's `<str>`, `<list[int]>`, `<float range>`,
# `{EVENT}`, `<cloudflared|ngrok>`; Click's TEXT, INTEGER ….
TYPE_PLACEHOLDER = re.compile(
    r"<[^>\s]+(?: range)?>|\{[A-Za-z_|]+\}"
    r"|\b(?:TEXT|INTEGER|FLOAT|BOOLEAN|FILENAME|DIRECTORY|UUID|DATETIME)\b"
)
HELP_PATHS = [(), *sorted(COMMANDS)]


def example_lines(command: Any) -> list[str]:
    """The lines of a help text's `Example:` paragraph, as written."""
    text = inspect.cleandoc(command.help or "")
    paragraph = next(p for p in text.split("\n\n") if p.lstrip("\b\n").startswith("Example"))
    return [line.strip() for line in paragraph.lstrip("\b\n").splitlines()]


@pytest.mark.parametrize("path", HELP_PATHS, ids=lambda p: " ".join(p) or "inspera-hooks")
def test_help_shows_an_example_as_written_and_names_each_placeholder(cli, path) -> None:
    text = cli(*path, "--help").stdout  # Click's test runner renders help 80 columns wide
    assert "Example:" in text
    assert TYPE_PLACEHOLDER.findall(text) == [], text
    assert text.isascii(), "help is ASCII, so that every terminal shows it (Click writes it itself)"
    shown = [line.strip() for line in text.splitlines()]
    example = example_lines(COMMANDS[path] if path else ROOT)
    for line in example:
        assert line in shown, f"the example line {line!r} is rewrapped:\n{text}"
    too_wide = [line for line in text.splitlines() if len(line) > 80 and line.strip() not in example]
    assert too_wide == [], text


def help_on_a_terminal(args: list[str], columns: int) -> list[str]:
    term = Terminal([*args, "--help"], dict(os.environ), columns)
    assert term.exit_code() == 0, term.screen
    return [line for line in term.lines if line.strip()]


def test_the_command_list_uses_the_width_it_has() -> None:
    wide = "\n".join(help_on_a_terminal([], 120))
    listed = wide.split("Commands:", 1)[1]
    assert "…" not in listed and "..." not in listed, listed
    sign = "sign        Print the X-Inspera-Signature (hex HMAC-SHA1) of a body, to send it with curl, say."
    assert sign in listed
    # narrower, a summary is cut at a word, with ...
    narrow = help_on_a_terminal([], 80)
    assert "... \n" not in "\n".join(narrow) and "...\n" in "\n".join(narrow).split("Commands:", 1)[1]
    assert max(len(line) for line in narrow) <= 80


@pytest.mark.parametrize("columns", [80, 120])
def test_help_on_a_terminal_fills_its_width(columns: int) -> None:
    lines = help_on_a_terminal(["create"], columns)
    text = "\n".join(lines)
    assert "--if-not-exists" in text  # an option name is never broken at its hyphens
    assert max(len(line) for line in lines) <= columns
    # prose fills the width: some line ends within 15 columns of it
    assert max(len(line) for line in lines) > columns - 15
    assert "inspera-hooks create --event confirm_final_grades,complete_grading \\" in text
