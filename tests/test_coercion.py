"""Values converted without pydantic (commands/coercion.py) are Typer's values, and errors its words.

Each plain converter is checked against the conversion Typer itself builds for the same parameter:
for any input it either declines (and Typer converts) or gives the very value Typer gives. Command
lines with bad values print what they printed before, word for word; command lines with good
values never reach Typer's pydantic conversion.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer.main
from hypothesis import given, settings
from hypothesis import strategies as st
from typer._coercion import build_runtime_param

from inspera_cli.commands import coercion
from tests.conftest import Cli

Annotation = Any


class Colour(StrEnum):
    red = "red"
    green = "green"


def parameter(annotation: Annotation, **option: Any) -> tuple[Any, Any]:
    """The Click parameter Typer builds for ``--value`` of ``annotation``, and a context for it."""
    return _parameter(annotation, tuple(sorted(option.items())))


@functools.cache
def _parameter(annotation: Annotation, option: tuple[tuple[str, Any], ...]) -> tuple[Any, Any]:
    app = typer.Typer()

    def command(value: Any = None) -> None: ...

    command.__annotations__["value"] = Annotated[annotation, typer.Option(**dict(option))]
    app.command()(command)
    click_command = typer.main.get_command(app)
    (param,) = [p for p in click_command.params if p.name == "value"]
    return param, click_command.make_context("command", [], resilient_parsing=True)


def typers_value(param: Any, ctx: Any, value: Any) -> tuple[str, Any]:
    """("ok", value) or ("error", message) from the conversion Typer builds (pydantic's)."""
    try:
        return "ok", build_runtime_param(param.type_descriptor)._coerce_value(value, param, ctx)
    except typer.BadParameter as exc:
        return "error", exc.message


def plain_value(param: Any, ctx: Any, value: Any) -> tuple[str, Any] | None:
    convert = coercion.plain_converter(param)
    assert convert is not None, f"no plain conversion for {param.type_descriptor.annotation}"
    try:
        return "ok", convert(value, param, ctx)
    except coercion.Declined:
        return None


def same(plain: tuple[str, Any], typers: tuple[str, Any]) -> bool:
    """Equal values of one type (a float's sign of zero and NaN included)."""
    if plain[0] != typers[0] or type(plain[1]) is not type(typers[1]):
        return False
    if isinstance(plain[1], float):
        return math.copysign(1, plain[1]) == math.copysign(1, typers[1]) and (
            plain[1] == typers[1] or (math.isnan(plain[1]) and math.isnan(typers[1]))
        )
    return bool(plain[1] == typers[1])


def check(annotation: Annotation, value: Any, **option: Any) -> None:
    param, ctx = parameter(annotation, **option)
    plain = plain_value(param, ctx, value)
    if plain is not None:
        typers = typers_value(param, ctx, value)
        assert same(plain, typers), f"{annotation} {option} {value!r}: plain {plain}, Typer {typers}"


NUMBER_TEXT = st.text(alphabet="0123456789-+._ eE１٣", max_size=24) | st.from_regex(
    r"-?[0-9]{1,25}(\.[0-9]{1,25})?", fullmatch=True
)
INT_BOUNDS = st.sampled_from([{}, {"min": 0}, {"min": 1}, {"max": 65535}, {"min": 0, "max": 65535}])
FLOAT_BOUNDS = INT_BOUNDS | st.sampled_from([{"min": 0.1}, {"min": 0.001, "max": 2.5}])


@settings(max_examples=300, deadline=None)
@given(value=NUMBER_TEXT | st.integers() | st.floats() | st.booleans(), bounds=INT_BOUNDS)
def test_an_int_is_typers_int(value: Any, bounds: dict[str, float]) -> None:
    check(int, value, **bounds)


@settings(max_examples=300, deadline=None)
@given(value=NUMBER_TEXT | st.integers() | st.floats() | st.booleans(), bounds=FLOAT_BOUNDS)
def test_a_float_is_typers_float(value: Any, bounds: dict[str, float]) -> None:
    check(float, value, **bounds)


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=20) | st.binary(max_size=8) | st.integers())
def test_a_str_is_typers_str(value: Any) -> None:
    check(str, value)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.text(max_size=8) | st.integers(), max_size=4).map(tuple))
def test_a_list_is_typers_list(values: tuple[Any, ...]) -> None:
    check(list[str], values)
    check(list[int], values)


@settings(max_examples=100, deadline=None)
@given(value=st.sampled_from(["red", "RED", "green", "blue", "", "re"]) | st.text(max_size=6))
def test_a_choice_is_typers_choice(value: str) -> None:
    check(Colour, value)
    check(Colour, value, case_sensitive=False)


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[list[Any]]:
    readable = tmp_path / "readable.txt"
    readable.write_text("x")
    unreadable = tmp_path / "unreadable.txt"
    unreadable.write_text("x")
    unreadable.chmod(0)
    yield [str(readable), str(unreadable), str(tmp_path), str(tmp_path / "missing"), "", "-", readable]
    unreadable.chmod(0o600)


@pytest.mark.parametrize(
    "option",
    [{}, {"exists": True}, {"dir_okay": False}, {"file_okay": False}, {"writable": True},
     {"resolve_path": True}],
    ids=repr,
)
def test_a_path_is_typers_path(paths: list[Any], option: dict[str, bool]) -> None:
    for value in paths:
        check(Path, value, **option)


# -- command lines ---------------------------------------------------------------------------------


@pytest.fixture
def typers_conversion(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Turns the plain conversion off: every value goes through Typer's, as before it existed."""
    return lambda: monkeypatch.setattr(coercion, "REPLACEABLE", False)


BAD_VALUES = [
    ["listen", "--port", "70000"],
    ["listen", "--port", "eighty"],
    ["listen", "--port", "-1"],
    ["listen", "--tunnel", "frp"],
    ["listen", "--max-body", "0"],
    ["--timeout", "0", "events"],
    ["--timeout", "soon", "events"],
    ["--timeout", "1e-9", "events"],
    ["trigger", "e", "--to", "http://127.0.0.1:9/", "--repeat", "0"],
    ["trigger", "e", "--to", "http://127.0.0.1:9/", "--object-id", "1.5"],
    ["replay", "f", "--to", "http://127.0.0.1:9/", "--last", "0"],
    ["delete", "seven"],
    ["delete", "1", "x2"],
    ["apply", "--concurrency", "33"],
    ["sandbox", "serve", "--retries", "-1"],
    ["sandbox", "serve", "--port", "１２"],
    ["sandbox", "fire", "e", "--rate", "fast"],
    ["completion", "powershell"],
    ["completion", "BASH"],
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=" ".join)
def test_a_bad_value_is_reported_as_typer_reports_it(
    cli: Cli, args: list[str], typers_conversion: Callable[[], None]
) -> None:
    plain = cli(*args, expect=None)
    typers_conversion()
    before = cli(*args, expect=None)
    assert (plain.exit_code, plain.stdout, plain.stderr) == (before.exit_code, before.stdout, before.stderr)
    assert plain.exit_code == 2


GOOD_VALUES = [
    ["--url", "http://127.0.0.1:9", "--client-id", "c", "-p", "work", "--timeout", "2.5", "events"],
    # --wait 0: nothing listens on port 9, and the default waits 5 s for it to start.
    ["trigger", "confirm_final_grades", "--to", "http://127.0.0.1:9/", "--repeat", "2", "--object-id", "7",
     "--wait", "0"],
    ["replay", "missing.jsonl", "--to", "http://127.0.0.1:9/", "--last", "3", "--since", "2024-05-01"],
    ["delete", "1", "2", "--yes"],
    ["delete", "--event", "e", "--endpoint", "https://h/", "--yes", "--json"],
    ["apply", "-f", "missing.toml", "--concurrency", "2", "--dry-run"],
    ["sandbox", "fire", "e", "--count", "2", "--rate", "1.5", "--object-id", "3"],
    ["listen", "--port", "0", "--exit-after", "1", "--timeout", "0.01", "--max-body", "100",
     "--events", "a,b", "--forward-to", "http://127.0.0.1:9/", "--skip-verify"],
    ["completion", "zsh"],
    ["config", "set", "timeout", "5"],
]


@pytest.mark.parametrize("args", GOOD_VALUES, ids=" ".join)
def test_good_values_never_reach_pydantic(cli: Cli, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    def record(descriptor: Any) -> Any:
        built.append(repr(descriptor.annotation))
        return build_runtime_param(descriptor)

    monkeypatch.setattr(typer.core, "build_runtime_param", record)
    monkeypatch.setattr(coercion, "build_runtime_param", record)
    result = cli(*args, expect=None)
    assert result.exit_code in (0, 1, 3), result.stderr  # it ran: nothing was a usage error
    assert built == []
