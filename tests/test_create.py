"""`create` against the sandbox: duplicates, the generated secret's line, every error once, the JSON
of a failure, commas in --event, and what a 401/403 from the receiver means (also for `apply` and
`listen --subscribe`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.receiver import Receiver, free_port

A, B = "confirm_final_grades", "complete_grading"


@pytest.fixture
def app() -> Iterator[Receiver]:
    with Receiver(path="") as running:
        yield running


@pytest.fixture
def env(sandbox_env: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HOOK_SECRET", "create-test-secret-0c2e")
    return sandbox_env


def pairs(sandbox: Any) -> list[tuple[str, str]]:
    return sorted((s["event"], s["endpoint"]) for s in sandbox.subscriptions())


def test_commas_in_event_and_a_generated_secret_on_its_own_line(cli: Cli, env: Any, app: Receiver) -> None:
    result = cli("create", "--event", f"{A}, {B}", "--endpoint", app.url)
    assert pairs(env) == sorted([(A, app.url), (B, app.url)])
    (secret,) = re.findall(r"^Webhook secret: ([0-9a-f]{64})$", result.stderr, re.MULTILINE)
    assert secret not in result.stdout  # not in the table


def test_a_duplicate_pair_is_refused_naming_the_existing_one(cli: Cli, env: Any, app: Receiver) -> None:
    create = ("create", "--event", A, "--endpoint", app.url, "--secret-env", "HOOK_SECRET")
    (first,) = cli(*create, "--json").json
    again = cli(*create, "--json", expect=1)
    (item,) = again.json
    assert (item["subscriptionId"], item["created"]) == (first["subscriptionId"], False)
    assert f"already exists (id {first['subscriptionId']})" in item["error"]
    errors = again.stderr.splitlines()
    assert len(errors) == 1 and "--if-not-exists" in errors[0] and "--allow-duplicate" in errors[0]
    assert len(env.subscriptions()) == 1
    skipped = cli(*create, "--if-not-exists", "--json").json
    assert [(i["subscriptionId"], i["created"]) for i in skipped] == [(first["subscriptionId"], False)]
    cli(*create, "--allow-duplicate")
    assert pairs(env) == [(A, app.url), (A, app.url)]
    assert "exclusive" in cli(*create, "--if-not-exists", "--allow-duplicate", expect=2).stderr


def test_a_refused_create_prints_its_error_once_and_json_carries_it(cli: Cli, env: Any) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/hook"
    result = cli("create", "--event", A, "--endpoint", endpoint, "--json", expect=1)
    (item,) = result.json
    assert (item["event"], item["subscriptionId"], item["created"]) == (A, None, False)
    assert "endpoint validation failed" in item["error"] and "secret" not in item
    assert result.stderr.count("inspera-hooks: error:") == 1 and result.stderr.count("validation failed") == 1
    assert "Webhook secret" not in result.stderr  # nothing was made with it


def test_when_none_is_created_the_summary_says_so(cli: Cli, env: Any) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/hook"
    result = cli("create", "--event", f"{A},{B}", "--endpoint", endpoint, expect=1)
    assert "none of the 2 subscriptions was created" in result.stderr
    assert "in place" not in result.stderr
    assert result.stderr.count(f"✗ {A}:") == 1 and result.stderr.count(f"✗ {B}:") == 1


def test_a_receiver_that_answers_401_is_explained(cli: Cli, env: Any, tmp_path: Path) -> None:
    with Receiver(401, path="") as receiver:
        generated = cli("create", "--event", A, "--endpoint", receiver.url, expect=1).stderr
        given = cli("create", "--event", A, "--endpoint", receiver.url, "--secret-env", "HOOK_SECRET",
                    expect=1).stderr
        hooks = tmp_path / "hooks.toml"
        hooks.write_text(f'[[subscription]]\nevent = "{A}"\nendpoint = "{receiver.url}"\n'
                         'secret_env = "HOOK_SECRET"\n')
        applied = cli("apply", "-f", str(hooks), expect=1).stderr
        port = free_port()
        listened = cli("listen", "--port", str(port), "--subscribe", A, "--public-url", receiver.url,
                       expect=1).stderr
    for text in (generated, given, applied, listened):
        assert "answered 401" in text and "verifies signatures with another secret" in text, text
    assert "--secret-env VAR" in generated and "a generated one is new to every receiver" in generated
    assert "--secret-env VAR" in given and "generated" not in given
    assert "set HOOK_SECRET to the secret the receiver verifies with" in applied
    assert "give listen that receiver's secret with --secret-env VAR" in listened
    assert env.subscriptions() == []


def test_only_a_plain_http_endpoint_is_told_about_allow_http(cli: Cli, env: Any) -> None:
    create = ("create", "--event", "test_closed", "--secret-env", "HOOK_SECRET")
    plain = cli(*create, "--endpoint", "http://hooks.example.edu/inspera", expect=2).stderr
    assert plain == (
        "inspera-hooks: error: --endpoint http://hooks.example.edu/inspera is plain http: Inspera calls "
        "HTTPS endpoints only (pass --allow-http to send it anyway)\n"
    )
    not_a_url = cli(*create, "--endpoint", "ftp://hooks.example.edu/inspera", expect=2).stderr
    assert "is not an http(s) URL" in not_a_url and "--allow-http" not in not_a_url
