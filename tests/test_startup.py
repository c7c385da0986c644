"""A fast start: what each command imports before it does its work, and what it builds.

These are not timing tests (tests/bench_startup.py measures); they fail on the regressions that
made start-up slow: a heavy module imported at start, a parameter whose value would go through
Typer's pydantic adapter, a completion or a command that builds (and imports) every command.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer._click
import typer.main
from typer.core import _TyperParameter

import inspera_cli.commands
from inspera_cli.cli import COMMANDS as REGISTRY
from inspera_cli.cli import app, main_callback
from inspera_cli.commands import coercion
from tests.processes import CLI, run
from tests.stub_server import StubInspera
from tests.test_completion import program
from tests.test_help import COMMANDS

pytestmark = pytest.mark.fresh_interpreter  # start-up and imports are this file's subject

# Modules no command needs before it does its work (a table, an HTTP request, a server).
HEAVY = (
    "requests",
    "urllib3",
    "http.server",
    "http.client",
    "asyncio",
    "sqlite3",
    "ssl",
    "rich",
    "pydantic",
    "typer._adapters",
)


def imported_modules(*args: str, env: dict[str, str] | None = None, expect: int = 0) -> set[str]:
    """Run `python -X importtime -m inspera_cli ARGS` and return every module it imported."""
    result = run(
        [CLI[0], "-X", "importtime", *CLI[1:], *args],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == expect, result.stderr[-2000:]
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "inspera_cli.cli" in modules  # the measurement works
    return modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def command_modules(modules: set[str]) -> set[str]:
    """The modules of top-level commands (cli.COMMANDS) among ``modules``: those built."""
    return {name for name in set(REGISTRY.values()) if f"inspera_cli.commands.{name}" in modules}


def complete_bash(words: str) -> dict[str, str]:
    return {"_INSPERA_HOOKS_COMPLETE": "complete_bash", "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1)}


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--help"], None),
        (["--version"], None),
        ([], complete_bash("inspera-hooks ")),
        ([], complete_bash("inspera-hooks li")),
        ([], complete_bash("inspera-hooks create --event ")),
        ([], complete_bash("inspera-hooks listen --")),
    ],
    ids=["help", "version", "complete-commands", "complete-li", "complete-event-no-profile",
         "complete-listen-options"],
)
def test_no_heavy_imports(args: list[str], env: dict[str, str] | None) -> None:
    assert heavy(imported_modules(*args, env=env)) == []


def test_help_and_tab_need_neither_logging_nor_json() -> None:
    """Both load only for --debug, a secret, JSON output or a TAB that asks the tenant: cli.py keeps
    --debug's handler in commands/debug_log.py, redaction and output import them where used."""
    for args, env in [(["events", "--help"], None), ([], complete_bash("inspera-hooks li"))]:
        modules = imported_modules(*args, env=env)
        assert "logging" not in modules and "json" not in modules, args or env


# Every command's --help, one after another in one program: what each brought in stays in
# sys.modules, so no heavy module there after all of them means none in any one of them (a fresh
# program per command cost a start-up each). A fresh program's --help: test_no_heavy_imports.
HELP_OF_EACH = """
import sys
from inspera_cli.cli import main
heavy = set()
for path in PATHS:
    sys.argv = ["inspera-hooks", *path, "--help"]
    try:
        main()
    except SystemExit as exit:
        assert exit.code in (None, 0), (path, exit.code)
    now = {m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}
    print("heavy after", " ".join(path), ":", sorted(now - heavy), file=sys.stderr)
    heavy |= now
"""


def test_help_of_every_command_imports_nothing_heavy() -> None:
    paths = sorted(COMMANDS)
    code = f"PATHS = {paths!r}\nHEAVY = {HEAVY!r}\n{HELP_OF_EACH}"
    result = run([CLI[0], "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [line for line in result.stderr.splitlines() if line.startswith("heavy after ")]
    assert len(reports) == len(paths)  # every help ran
    assert [line for line in reports if not line.endswith(": []")] == []


def test_sign_builds_only_sign_and_opens_no_socket(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"event": "confirm_final_grades"}')
    modules = imported_modules("sign", "--secret-env", "S", str(body), env={"S": "secret"})
    assert heavy(modules) == []
    assert command_modules(modules) == {"signing"}
    assert "socket" not in modules  # interrupts' watcher uses pipes


def test_a_subcommands_help_builds_only_that_command() -> None:
    assert command_modules(imported_modules("events", "--help")) == {"subscriptions"}
    assert command_modules(imported_modules("sandbox", "serve", "--help")) == {"sandbox"}


def test_completing_a_command_name_builds_only_the_commands_it_could_be() -> None:
    candidates = [("li", {"subscriptions", "listen"}), ("sig", {"signing"}), ("sandbox f", {"sandbox"})]
    for words, built in candidates:
        assert command_modules(imported_modules(env=complete_bash(f"inspera-hooks {words}"))) == built


def test_list_piped_imports_no_table_renderer_and_no_server(tmp_path: Path) -> None:
    stub = StubInspera()
    try:
        modules = imported_modules("list", env=stub.subprocess_env(tmp_path))
    finally:
        stub.close()
    assert "requests" in modules  # it did its work
    assert [m for m in heavy(modules) if m.split(".")[0] in ("rich", "pydantic", "asyncio", "sqlite3")] == []
    assert "http.server" not in modules and "typer._adapters" not in modules
    assert command_modules(modules) == {"subscriptions"}


def test_importing_the_package_imports_only_its_version() -> None:
    code = "import sys, inspera_cli; print(sorted(m for m in sys.modules if m.startswith('inspera_cli')))"
    result = run([CLI[0], "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "['inspera_cli', 'inspera_cli._version']"


# -- parameters ------------------------------------------------------------------------------------


def test_plain_conversion_is_in_use_while_typer_converts_with_pydantic() -> None:
    typer_uses_pydantic = importlib.util.find_spec("typer._adapters") is not None
    assert coercion.REPLACEABLE == typer_uses_pydantic, (
        "this Typer converts values in a way commands/coercion.py does not know: adapt it, or if "
        "Typer no longer needs pydantic for that, remove it"
    )


def slow_parameters(path: tuple[str, ...], command: Any) -> list[str]:
    """The parameters of ``command`` (its help option too) whose values, their defaults included,
    would go to Typer's pydantic conversion."""
    ctx = typer._click.Context(command, info_name=" ".join(path) or "inspera-hooks")
    slow = []
    for param in [*command.params, command.get_help_option(ctx)]:
        if not isinstance(param, _TyperParameter):
            continue
        plain = param._runtime_param
        where = f"`inspera-hooks {' '.join(path)}` {'/'.join(param.opts) or param.name}"
        if not isinstance(plain, coercion.PlainValue):
            slow.append(f"{where}: {param.type_descriptor.annotation}")
            continue
        if param.default is not None:
            try:
                plain.convert(param.default, param, ctx)
            except coercion.Declined:
                slow.append(f"{where}: its default {param.default!r}")
    return slow


def test_every_parameter_converts_its_values_without_pydantic() -> None:
    """The rule for a new option or argument: a type commands/coercion.py converts -- str, int,
    float, bool, Path, an enum, or a list of one of those -- and a default of that type."""
    slow = slow_parameters((), typer.main.get_command(app))
    for path, command in COMMANDS.items():
        slow += slow_parameters(path, command)
    assert slow == [], "values that would go through pydantic (see commands/coercion.py):\n" + "\n".join(slow)


def test_the_global_options_are_not_read_from_strings() -> None:
    """Typer compiles string annotations (`from __future__ import annotations`) on every run."""
    assert [name for name, a in main_callback.__annotations__.items() if isinstance(a, str)] == []


def test_a_command_is_built_from_evaluated_annotations() -> None:
    """Typer compiles a string annotation twice per build; the registry evaluates each once."""
    from inspera_cli.commands import listen

    typer.main.get_command(app).commands["listen"]  # type: ignore[attr-defined]
    assert [name for name, a in listen.listen.__annotations__.items() if isinstance(a, str)] == []


def test_a_parameter_of_another_type_is_reported() -> None:
    sub = typer.Typer(add_completion=False)

    @sub.command()
    def when(
        moment: Annotated[datetime, typer.Option()] = datetime(2024, 5, 1),
        count: Annotated[int, typer.Option()] = "1_000",  # type: ignore[assignment]
        name: Annotated[str, typer.Option()] = "x",
    ) -> None: ...

    command = typer.main.get_command(sub)
    coercion.use_plain_values(command)
    assert slow_parameters(("when",), command) == [
        "`inspera-hooks when` --moment: <class 'datetime.datetime'>",
        "`inspera-hooks when` --count: its default '1_000'",
    ]


# -- commands built on first use --------------------------------------------------------------------


def registered_names(module_name: str) -> list[str]:
    scratch = typer.Typer()
    __import__(f"inspera_cli.commands.{module_name}", fromlist=["register"]).register(scratch)
    return [info.name for info in [*scratch.registered_commands, *scratch.registered_groups]]


def test_every_command_a_module_registers_is_in_the_registry() -> None:
    """A command added to a module's register() but not to cli.COMMANDS would never be found."""
    modules = [m.name for m in pkgutil.iter_modules(inspera_cli.commands.__path__)
               if hasattr(__import__(f"inspera_cli.commands.{m.name}", fromlist=["_"]), "register")]
    assert sorted(set(REGISTRY.values())) == sorted(modules)
    for module_name in modules:
        listed = sorted(name for name, module in REGISTRY.items() if module == module_name)
        assert sorted(registered_names(module_name)) == listed, module_name


def test_help_lists_the_commands_in_registry_order(cli: Any) -> None:
    listed = cli("--help").stdout.split("Commands:\n", 1)[1]
    assert [line.split()[0] for line in listed.splitlines() if line.strip()] == list(REGISTRY)


def test_a_command_is_built_when_it_is_first_asked_for() -> None:
    root = typer.main.get_command(app)
    assert not root.commands._built  # type: ignore[attr-defined]
    assert root.get_command(typer._click.Context(root), "sign").name == "sign"
    assert list(root.commands._built) == ["sign"]  # type: ignore[attr-defined]
    assert root.get_command(typer._click.Context(root), "nope") is None


def test_console_script_runs() -> None:
    result = run([*program(), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("inspera-hooks ")
