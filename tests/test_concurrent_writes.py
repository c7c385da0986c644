"""Concurrent runs lose no write: `config set`, `login` and the token cache, 10 processes at once.

Each write is atomic (temp file + rename); without a lock around the read-modify-write, runs that
read the same old file overwrite each other's changes (19 of 80 writes kept before the lock; with
the lock taken out, 10 processes still lose config and token writes on every run, even under the
load of a parallel test run).
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.processes import CLI, popen
from tests.stub_server import StubInspera

PROCESSES = 10


@pytest.fixture
def stub_server():
    server = StubInspera()
    try:
        yield server
    finally:
        server.close()


def run_all(commands: list[tuple[list[str], str | None, dict[str, str]]]) -> None:
    """Start every command (argv, stdin, environment) at once; each must succeed."""
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [(popen(argv, env=env, text=True, **pipes), stdin) for argv, stdin, env in commands]
    for proc, stdin in procs:
        out, err = proc.communicate(stdin, timeout=120)
        assert proc.returncode == 0, err


def without_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("INSPERA_URL", "INSPERA_CLIENT_ID", "INSPERA_API_KEY")}


def config(home: Path) -> dict[str, dict[str, object]]:
    return tomllib.loads((home / "cfg" / "inspera-hooks" / "config.toml").read_text())


def tokens(home: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((home / "cache" / "inspera-hooks" / "tokens.json").read_text())
    return data


@pytest.mark.slow
def test_parallel_config_set_loses_no_write(stub_server, tmp_path):
    """Two keys of each of 5 profiles, all 10 at once: writes to new profiles and to the same
    profile race each other in one round."""
    env = stub_server.subprocess_env(tmp_path)
    settings = (("url", "https://p{n}.example"), ("client_id", "client-{n}"))
    run_all([([*CLI, "--profile", f"p{n}", "config", "set", key, value.format(n=n)], None, env)
             for n in range(PROCESSES // 2) for key, value in settings])
    profiles = config(tmp_path)
    assert sorted(profiles) == sorted(f"p{n}" for n in range(PROCESSES // 2))
    for n in range(PROCESSES // 2):
        assert profiles[f"p{n}"] == {"url": f"https://p{n}.example", "client_id": f"client-{n}"}


@pytest.mark.slow
def test_parallel_logins_and_commands_lose_no_profile_and_no_token(stub_server, tmp_path):
    """5 logins (each writes a profile and caches a token) and 5 commands of other clients (each
    caches a token), all at once: 10 writers of the token cache, 5 of the config beside them."""
    env = stub_server.subprocess_env(tmp_path)
    logins = [([*CLI, "--profile", f"p{n}", "login"], f"{stub_server.url}\nclient-{n}\nkey-{n}-a1b2\n",
               without_settings(env)) for n in range(PROCESSES // 2)]
    commands = [([*CLI, "events", "--json"], None, {**env, "INSPERA_CLIENT_ID": f"other-{n}"})
                for n in range(PROCESSES // 2)]
    run_all(logins + commands)
    profiles = config(tmp_path)
    assert len(profiles) == PROCESSES // 2
    for n in range(PROCESSES // 2):
        profile = profiles[f"p{n}"]
        assert profile["client_id"] == f"client-{n}" and profile["api_key"] == f"key-{n}-a1b2"
    cached = tokens(tmp_path)  # every login's and every command's token
    assert {key.split()[1] for key in cached} == {f"{who}-{n}" for who in ("client", "other")
                                                   for n in range(PROCESSES // 2)}
