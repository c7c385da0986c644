"""`apply` against the sandbox tenant: plan, create, idempotence, prune, dry run, failures, exit codes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspera_cli.client import InsperaClient
from tests.conftest import SANDBOX_API_KEY, SANDBOX_CLIENT_ID, Cli, Result
from tests.receiver import Received, Receiver

SECRET = "s3cr3t-apply-value"
EVENTS = ("confirm_final_grades", "test_closed", "candidate_submitted")


def failing_on_fail(request: Received) -> int:
    """Answers the sandbox's validation POST: 200, but 500 on /fail."""
    return 500 if request.path.startswith("/fail") else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(answer=failing_on_fail) as r:
        yield r


@pytest.fixture
def env(sandbox_env: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    return sandbox_env


def write(tmp_path: Path, pairs: list[tuple[str, str]], name: str = "hooks.toml") -> Path:
    text = "# subscriptions as code\n"
    for event, endpoint in pairs:
        text += (
            f'\n[[subscription]]\nevent = "{event}"\nendpoint = "{endpoint}"\nsecret_env = "HOOK_SECRET"\n'
        )
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def live(sandbox: Any) -> set[tuple[str, str]]:
    return {(s["event"], s["endpoint"]) for s in sandbox.subscriptions()}


def writes(sandbox: Any) -> list[tuple[str, str]]:
    """Subscription writes (creates and deletes) the sandbox has received."""
    return [
        (method, path)
        for method, path in sandbox.requests
        if method in ("POST", "DELETE") and path.startswith("/api/v1/subscription")
    ]


def run(cli: Cli, *args: str, expect: int = 0) -> Result:
    result = cli("apply", *args, expect=expect)
    assert SECRET not in result.stdout + result.stderr
    assert SANDBOX_API_KEY not in result.stdout + result.stderr
    return result


def client(sandbox: Any) -> InsperaClient:
    return InsperaClient(sandbox.url, SANDBOX_CLIENT_ID, SANDBOX_API_KEY)


def test_first_apply_creates_and_second_changes_nothing(
    cli: Cli, env: Any, receiver: Receiver, tmp_path: Path
) -> None:
    pairs = [(e, receiver.base + f"/{i}") for i, e in enumerate(EVENTS)]
    path = write(tmp_path, pairs)

    first = run(cli, "-f", str(path))
    assert live(env) == set(pairs)
    assert len(writes(env)) == 3
    assert first.stdout.count("+ create") == 3 and "$HOOK_SECRET" in first.stdout
    assert "Applied: 3 created" in first.stderr

    second = run(cli, "-f", str(path), "--detailed-exitcode")
    assert second.stdout.count("= unchanged") == 3 and "+ create" not in second.stdout
    assert "Nothing to do" in second.stderr
    assert len(writes(env)) == 3  # no API write the second time
    assert live(env) == set(pairs)


def test_prune_deletes_exactly_the_extras(cli: Cli, env: Any, receiver: Receiver, tmp_path: Path) -> None:
    keep, extra_endpoint = receiver.base + "/keep", receiver.base + "/extra"
    with client(env) as c:
        kept = c.create("confirm_final_grades", keep, SECRET)
        extras = [
            c.create("test_closed", keep, SECRET),
            c.create("confirm_final_grades", extra_endpoint, SECRET),
        ]
        duplicate = c.create("confirm_final_grades", keep, SECRET)
    path = write(tmp_path, [("confirm_final_grades", keep), ("candidate_submitted", keep)])

    without = run(cli, "-f", str(path), "--json")
    assert without.json["delete"] == []
    assert live(env) >= {("test_closed", keep), ("confirm_final_grades", extra_endpoint)}

    result = run(cli, "-f", str(path), "--prune", "--json").json
    deleted = {d["subscriptionId"] for d in result["delete"]}
    assert deleted == {extras[0].subscription_id, extras[1].subscription_id, duplicate.subscription_id}
    assert all(d["deleted"] and d["error"] is None for d in result["delete"])
    created = without.json["create"][0]["subscriptionId"]
    assert [u["subscriptionId"] for u in result["unchanged"]] == [kept.subscription_id, created]
    assert live(env) == {("confirm_final_grades", keep), ("candidate_submitted", keep)}
    assert len(env.subscriptions()) == 2


def test_dry_run_changes_nothing(cli: Cli, env: Any, receiver: Receiver, tmp_path: Path) -> None:
    with client(env) as c:
        extra = c.create("test_closed", receiver.base + "/extra", SECRET)
    before = len(writes(env))
    path = write(tmp_path, [("confirm_final_grades", receiver.base + "/new")])

    result = run(cli, "-f", str(path), "--prune", "--dry-run")
    assert "+ create" in result.stdout and "- delete" in result.stdout
    assert f"id {extra.subscription_id}" in result.stdout
    assert "Dry run" in result.stderr
    assert len(writes(env)) == before
    assert live(env) == {("test_closed", receiver.base + "/extra")}

    data = run(cli, "-f", str(path), "--prune", "--dry-run", "--json").json
    assert data["applied"] is False
    assert [c["created"] for c in data["create"]] == [False]
    assert [d["deleted"] for d in data["delete"]] == [False]
    assert len(writes(env)) == before


def test_one_failed_validation_leaves_the_others_created(
    cli: Cli, env: Any, receiver: Receiver, tmp_path: Path
) -> None:
    good = [(e, receiver.base + f"/ok{i}") for i, e in enumerate(EVENTS)]
    path = write(tmp_path, [*good[:2], ("test_closed", receiver.base + "/fail"), good[2]])

    result = run(cli, "-f", str(path), "--detailed-exitcode", expect=1)
    assert live(env) == set(good)
    assert f"test_closed → {receiver.base}/fail failed" in result.stderr
    assert "answered 500" in result.stderr
    assert "1 of 4 changes failed" in result.stderr

    data = run(cli, "-f", str(path), "--json", expect=1).json
    [failed] = data["create"]
    assert failed["created"] is False and "answered 500" in failed["error"]
    assert len(data["unchanged"]) == 3 and data["applied"] is True


def test_failed_create_skips_the_prune(cli: Cli, env: Any, receiver: Receiver, tmp_path: Path) -> None:
    with client(env) as c:
        c.create("test_closed", receiver.base + "/old", SECRET)
    path = write(tmp_path, [("test_closed", receiver.base + "/fail")])

    data = run(cli, "-f", str(path), "--prune", "--json", expect=1).json
    [delete] = data["delete"]
    assert delete["deleted"] is False
    assert delete["error"] == "skipped: a create failed, so nothing is deleted (fix it and apply again)"
    assert live(env) == {("test_closed", receiver.base + "/old")}


def test_detailed_exitcode(cli: Cli, env: Any, receiver: Receiver, tmp_path: Path) -> None:
    path = write(tmp_path, [("confirm_final_grades", receiver.base + "/d")])
    run(cli, "-f", str(path), "--detailed-exitcode", "--dry-run", expect=2)
    run(cli, "-f", str(path), "--detailed-exitcode", expect=2)
    run(cli, "-f", str(path), "--detailed-exitcode", expect=0)
    run(cli, "-f", str(path), "--detailed-exitcode", "--dry-run", expect=0)
    with client(env) as c:
        c.create("test_closed", receiver.base + "/x", SECRET)
    run(cli, "-f", str(path), "--detailed-exitcode", expect=0)  # an extra without --prune is no change
    run(cli, "-f", str(path), "--detailed-exitcode", "--prune", expect=2)


def test_json_shape(cli: Cli, env: Any, receiver: Receiver, tmp_path: Path) -> None:
    endpoint = receiver.base + "/j"
    path = write(tmp_path, [("confirm_final_grades", endpoint)])
    data = run(cli, "-f", str(path), "--json").json
    assert set(data) == {"create", "delete", "unchanged", "applied"}
    [item] = data["create"]
    sid = env.subscriptions()[0]["subscriptionId"]
    assert item == {
        "event": "confirm_final_grades",
        "endpoint": endpoint,
        "secretEnv": "HOOK_SECRET",
        "line": 3,
        "subscriptionId": sid,
        "created": True,
        "error": None,
    }
    assert data["delete"] == [] and data["unchanged"] == [] and data["applied"] is True

    again = run(cli, "-f", str(path), "--json").json
    assert again["create"] == [] and again["applied"] is True  # applied even when the plan is empty
    [unchanged] = again["unchanged"]
    assert set(unchanged) == {"subscriptionId", "event", "endpoint", "lastModified"}
    assert unchanged["subscriptionId"] == sid


def test_creates_run_concurrently_within_the_bound(cli: Cli, env: Any, tmp_path: Path) -> None:
    slow = Receiver(answer=failing_on_fail, delay=0.1)
    try:
        pairs = [(e, slow.base + f"/{i}") for i in range(3) for e in EVENTS[:2]]
        run(cli, "-f", str(write(tmp_path, pairs)), "--concurrency", "2")
        assert live(env) == set(pairs)
        assert slow.max_in_flight == 2
    finally:
        slow.close()


ENTRY = '[[subscription]]\nevent = "a"\nendpoint = "https://h.example/x"\n'


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (ENTRY, 1, "missing 'secret_env'"),
        (ENTRY + 'secret_env = "UNSET_VAR"\n', 4, "UNSET_VAR is not set"),
        (ENTRY + 'secret_env = "HOOK_SECRET"\nx = 1\n', 5, "unknown key 'x'"),
        (ENTRY.replace("https", "http") + 'secret_env = "HOOK_SECRET"\n', 3, "plain http"),
        ('[[subscription]]\nevent = "a\n', 2, "invalid TOML"),
    ],
)
def test_a_bad_file_is_refused_before_any_api_call(
    cli: Cli, env: Any, tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    result = run(cli, "-f", str(path), expect=1)
    assert f"error: {path}:{line}: " in result.stderr and message in result.stderr
    assert env.requests == []


def test_a_duplicate_pair_is_refused_with_its_line(cli: Cli, env: Any, tmp_path: Path) -> None:
    path = write(tmp_path, [("confirm_final_grades", "https://h.example/x")] * 2)
    result = run(cli, "-f", str(path), "--json", expect=1)
    assert result.stdout == ""
    assert f"{path}:8: duplicate subscription" in result.stderr and "first at line 3" in result.stderr
    assert env.requests == []


def test_a_missing_file(cli: Cli, env: Any, tmp_path: Path) -> None:
    result = run(cli, "-f", str(tmp_path / "absent.toml"), expect=1)
    assert "cannot read the subscriptions file" in result.stderr
    assert env.requests == []


def test_the_file_defaults_to_inspera_hooks_toml_here(
    cli: Cli, env: Any, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = run(cli, expect=1)
    expected = "inspera-hooks: error: no inspera-hooks.toml here: give the subscriptions file with -f FILE\n"
    assert missing.stderr == expected
    assert env.requests == []
    write(tmp_path, [("confirm_final_grades", receiver.base + "/a")], name="inspera-hooks.toml")
    assert "Applied: 1 created" in run(cli).stderr
    assert live(env) == {("confirm_final_grades", receiver.base + "/a")}


def test_the_summary_never_says_the_tenant_matches_when_it_has_more(
    cli: Cli, env: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = write(tmp_path, [("confirm_final_grades", receiver.base + "/a")])
    run(cli, "-f", str(path))
    with client(env) as c:
        c.create("test_closed", receiver.base + "/other", SECRET)
    again = run(cli, "-f", str(path)).stderr
    assert "1 live subscription not in the file is left alone (--prune deletes it)." in again
    assert "Nothing to do: every subscription in the file is in place." in again
    assert "matches" not in again
    with client(env) as c:
        c.create("complete_grading", receiver.base + "/other", SECRET)
    assert "2 live subscriptions not in the file are left alone (--prune deletes them)." in run(
        cli, "-f", str(path)
    ).stderr


def test_an_unsupported_event_is_refused_before_any_write(
    cli: Cli, env: Any, receiver: Receiver, tmp_path: Path
) -> None:
    path = write(
        tmp_path, [("confirm_final_grades", receiver.base + "/a"), ("no_such_event", receiver.base + "/b")]
    )
    result = run(cli, "-f", str(path), expect=1)
    assert f"{path}:9: event 'no_such_event' is not supported" in result.stderr
    assert writes(env) == []
    assert live(env) == set()


def test_an_interrupt_stops_the_queued_creates(sandbox: Any, receiver: Receiver) -> None:
    from inspera_cli.reconciler import apply_plan, make_plan
    from inspera_cli.subscriptions_file import DesiredSubscription

    desired = [
        DesiredSubscription(EVENTS[0], f"{receiver.base}/{i}", "HOOK_SECRET", secret=SECRET)
        for i in range(16)
    ]
    plan = make_plan(desired, [], prune=False)

    def interrupt(_: Any) -> None:
        raise KeyboardInterrupt

    with client(sandbox) as c, pytest.raises(KeyboardInterrupt):
        apply_plan(c, plan, concurrency=2, on_done=interrupt)
    # Let those still in flight finish (at most one per worker, plus what a busy machine lets the
    # workers pick up before the main thread cancels), then check the queue never ran.
    count, deadline = -1, time.monotonic() + 5
    while count != len(sandbox.subscriptions()) and time.monotonic() < deadline:
        count = len(sandbox.subscriptions())
        time.sleep(0.3)
    assert 1 <= count <= 6
