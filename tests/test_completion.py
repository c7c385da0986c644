"""`completion`: the scripts, the files in completions/, and Typer's completion protocol end to end."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspera_cli.commands.candidates import _event_items, _public_url, _subscription_items, cache_path
from tests.conftest import SANDBOX_API_KEY, SANDBOX_CLIENT_ID
from tests.processes import run
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
FILES = {"bash": "inspera-hooks.bash", "zsh": "_inspera-hooks", "fish": "inspera-hooks.fish"}
BIN = Path(sys.executable).parent
COMMANDS = {"events", "list", "create", "delete", "completion", "config"}


def program() -> list[str]:
    """The installed console script run by this interpreter, else `python -m inspera_cli`."""
    script = BIN / "inspera-hooks"
    return [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "inspera_cli"]


def completion_request(words: str, shell: str) -> dict[str, str]:
    """The environment in which the shell scripts ask for the candidates of ``words``."""
    request = {"_INSPERA_HOOKS_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        parts = words.split(" ")
        request |= {"COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)}
    else:
        request |= {"_TYPER_COMPLETE_ARGS": words, "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
    return request


def complete(
    words: str, *, shell: str = "bash", env: dict[str, str] | None = None, argv: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One completion request, as the shell scripts send it, to the installed program."""
    return run(
        argv or program(),
        env={**os.environ, **(env or {}), **completion_request(words, shell)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def complete_in_process(
    words: str, *, shell: str = "bash", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The same request answered by the app in this process: for what the candidates are (the
    tests above send the request to the real program)."""
    from typer.testing import CliRunner

    from inspera_cli.cli import app

    result = CliRunner().invoke(app, [], env={**(env or {}), **completion_request(words, shell)},
                                prog_name="inspera-hooks", catch_exceptions=False)
    return subprocess.CompletedProcess(words, result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize("shell", FILES)
def test_files_in_completions_equal_the_output(cli: Any, shell: str) -> None:
    printed = cli("completion", shell).stdout
    assert printed == (ROOT / "completions" / FILES[shell]).read_text(encoding="utf-8"), (
        "run `python completions/generate.py`"
    )
    assert "_INSPERA_HOOKS_COMPLETE=complete_" + shell in printed


def test_shell_is_taken_from_SHELL(cli: Any) -> None:
    assert cli("completion", env={"SHELL": "/usr/bin/zsh"}).stdout.startswith("#compdef inspera-hooks")
    result = cli("completion", env={"SHELL": "/bin/tcsh"}, expect=2)
    assert "tcsh" in result.stderr and "completion bash" in result.stderr


def test_unknown_shell_is_a_usage_error(cli: Any) -> None:
    assert "powershell" in cli("completion", "powershell", expect=2).stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_accepts_the_bash_script() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "completions" / FILES["bash"])], check=True)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_script_completes_commands_in_bash() -> None:
    """Source the script in a real bash and call its completion function as readline would."""
    script = ROOT / "completions" / FILES["bash"]
    shell_code = (
        f"source '{script}'; COMP_WORDS=(inspera-hooks compl); COMP_CWORD=1; "
        '_inspera_hooks_completion inspera-hooks; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "--norc", "-c", shell_code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["completion"]


def test_completion_request_returns_command_names() -> None:
    result = complete("inspera-hooks ")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= COMMANDS
    assert result.stderr == ""


def test_completion_request_works_through_python_m() -> None:
    result = complete("inspera-hooks completion ", argv=[sys.executable, "-m", "inspera_cli"])
    assert result.stdout.split() == ["bash", "zsh", "fish"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_requests(shell: str) -> None:
    result = complete("inspera-hooks comp", shell=shell)
    assert result.returncode == 0, result.stderr
    assert "completion" in result.stdout and "config" not in result.stdout


def test_no_profile_is_silent_and_fast() -> None:
    started = time.monotonic()
    result = complete("inspera-hooks create --event ")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", "")
    assert time.monotonic() - started < 2.0
    assert not cache_path().exists()


def test_unreachable_tenant_is_silent() -> None:
    env = {"INSPERA_URL": "http://127.0.0.1:9", "INSPERA_CLIENT_ID": "x", "INSPERA_API_KEY": "k"}
    started = time.monotonic()
    result = complete("inspera-hooks delete ", env=env)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", "")
    assert time.monotonic() - started < 3.0


def test_event_names_complete_from_the_sandbox(cli: Any, sandbox_env: Any) -> None:
    names = [e["event"] for e in cli("events", "--json").json]
    result = complete_in_process("inspera-hooks create --event ")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == sorted(names)
    prefix = names[0][:3]
    narrowed = complete_in_process(f"inspera-hooks list --event {prefix}").stdout.split()
    assert narrowed == sorted(n for n in names if n.startswith(prefix))

    path = cache_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="utf-8")
    assert SANDBOX_API_KEY not in text and "token" not in text.lower()

    sandbox_env.shutdown()  # answered from the cache for a minute
    assert complete_in_process("inspera-hooks delete --event ").stdout.split() == sorted(names)
    for words in (
        "inspera-hooks trigger ",
        "inspera-hooks replay rec.jsonl --event ",
        "inspera-hooks sandbox fire ",
    ):
        assert complete_in_process(words).stdout.split() == sorted(names), words


@pytest.fixture
def receiver() -> Iterator[str]:
    """An endpoint that answers every POST 200, so the sandbox's validation passes."""
    with Receiver(path="/hook?token=abc") as r:
        yield r.url


def test_subscription_ids_complete_for_delete(cli: Any, sandbox_env: Any, receiver: str) -> None:
    created = cli("create", "--event", "confirm_final_grades", "--endpoint", receiver, "--json").json
    sid = str(created[0]["subscriptionId"])
    result = complete_in_process("inspera-hooks delete ", shell="fish")
    value, help_text = result.stdout.splitlines()[0].split("\t")
    assert value == sid
    assert help_text.startswith("confirm_final_grades → http://127.0.0.1:")
    assert "token=abc" not in cache_path().read_text(encoding="utf-8")


def test_global_flags_are_used_by_completion(sandbox: Any) -> None:
    env = {"INSPERA_API_KEY": SANDBOX_API_KEY}
    words = f"inspera-hooks --url {sandbox.url} --client-id {SANDBOX_CLIENT_ID} create --event conf"
    assert complete_in_process(words, env=env).stdout.split() == ["confirm_final_grades"]


@pytest.mark.parametrize(
    "data",
    [
        ["b", "a"],
        [{"event": "b"}, {"name": "a", "description": "first\n letter"}],
        {"events": [{"eventType": "a", "description": "first letter"}, "b"]},
    ],
)
def test_event_shapes(data: Any) -> None:
    names = [name for name, _ in _event_items(data)]
    assert names == ["a", "b"]


def test_odd_answers_give_no_candidates() -> None:
    assert _event_items({"a": [], "b": []}) == []
    assert _event_items("nonsense") == []
    subs = {"subscriptions": [{"subscriptionId": "12", "event": "e"}, {"id": True}, "x"]}
    assert _subscription_items(subs) == [("12", "e")]


def test_cached_endpoints_lose_credentials_and_query() -> None:
    assert (
        _public_url("https://user:pw@hooks.example.edu:8443/in?key=s#f")
        == "https://hooks.example.edu:8443/in"
    )
    assert _public_url("not a url") == ""


def test_cache_ignores_a_corrupt_file(sandbox_env: Any) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json", encoding="utf-8")
    assert "confirm_final_grades" in complete_in_process("inspera-hooks create --event ").stdout.split()
    assert json.loads(path.read_text(encoding="utf-8"))


def test_comma_separated_event_lists(sandbox_env: Any) -> None:
    from inspera_cli.commands.candidates import complete_event_list

    values = [value for value, _ in complete_event_list(None, "confirm_final_grades,c")]
    assert "confirm_final_grades,complete_grading" in values
    assert all(v.startswith("confirm_final_grades,c") for v in values)
    assert "confirm_final_grades,confirm_final_grades" not in values
