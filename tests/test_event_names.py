"""Event names are checked wherever they are given: refused by commands that talk to the tenant,
warned about by offline ones (against the tenant's list when it is cheap, else the built-in one)."""

from __future__ import annotations

from typing import Any

import pytest

from inspera_cli.event_names import BUILT_IN_NAMES, did_you_mean, unknown_events
from tests.receiver import Receiver

TYPO = "confirm_grades"


def test_a_near_miss_gets_a_suggestion_and_the_valid_list() -> None:
    assert did_you_mean(TYPO, BUILT_IN_NAMES) == " (did you mean confirm_final_grades?)"
    assert did_you_mean("zzz", BUILT_IN_NAMES) == ""
    assert unknown_events(["complete_grading"], BUILT_IN_NAMES) is None
    text = unknown_events([TYPO, "zzz", TYPO], ["confirm_final_grades", "complete_grading"])
    assert text == ("unknown events confirm_grades (did you mean confirm_final_grades?), zzz; "
                    "valid events: confirm_final_grades, complete_grading")


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--event", TYPO],
        ["create", "--event", f"complete_grading,{TYPO}", "--endpoint", "https://hooks.example.edu/"],
        ["delete", "--event", TYPO, "--endpoint", "https://hooks.example.edu/", "--yes"],
    ],
    ids=["list", "create", "delete"],
)
def test_commands_that_talk_to_the_tenant_refuse_an_unknown_event(cli, sandbox_env: Any, args) -> None:
    r = cli(*args, expect=2)
    assert "unknown event confirm_grades (did you mean confirm_final_grades?); valid events: " in r.stderr
    assert "complete_grading" in r.stderr.split("valid events:")[1]
    assert r.stdout == "" and sandbox_env.subscriptions() == []
    assert not [path for method, path in sandbox_env.requests if method in ("POST", "DELETE")
                and path.startswith("/api/v1/subscription")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--event="], "an empty event name; valid events: confirm_final_grades"),
        (["delete", "--event=", "--endpoint", "https://hooks.example.edu/", "--yes"], "an empty event name"),
        (["delete", "--event", "complete_grading", "--endpoint=", "--yes"], "--endpoint is empty"),
    ],
    ids=["list --event=", "delete --event=", "delete --endpoint="],
)
def test_an_empty_value_is_a_usage_error_not_a_lookup(cli, sandbox_env: Any, args, message: str) -> None:
    """`--event=$UNSET`: was "unknown event ;" (list), exit 4 "no subscription ... at " (delete)."""
    r = cli(*args, expect=2)
    assert message in r.stderr and r.stderr.count("\n") == 1


def test_list_of_a_known_event_with_no_subscriptions_is_not_an_error(cli, sandbox_env: Any) -> None:
    assert cli("list", "--event", "complete_grading", "--json").json == []


def test_trigger_warns_about_an_unknown_event_and_sends_it(cli) -> None:
    with Receiver() as r:
        result = cli("trigger", TYPO, "--to", r.url)
    assert len(r.received) == 1
    assert ("warning: unknown event confirm_grades (did you mean confirm_final_grades?); valid events: "
            in result.stderr)
    assert "(the built-in list); going on with it" in result.stderr


def test_offline_commands_ask_the_tenant_when_one_is_configured(cli, sandbox_env: Any) -> None:
    """A tenant's own event is not warned about, though the built-in list does not have it."""
    sandbox_env.events["grades_exported"] = None
    with Receiver() as r:
        quiet = cli("trigger", "grades_exported", "--to", r.url)
        loud = cli("trigger", "grades_exportd", "--to", r.url)
    assert "unknown event" not in quiet.stderr
    assert "did you mean grades_exported?" in loud.stderr and "(the tenant's list)" in loud.stderr
    assert len(r.received) == 2


def test_trigger_verification_is_not_an_unknown_event(cli) -> None:
    with Receiver() as r:
        result = cli("trigger", "verification", "--to", r.url)
    assert "unknown event" not in result.stderr and len(r.received) == 1


def test_replay_warns_about_an_unknown_event(cli, tmp_path) -> None:
    from tests.test_replay import event_body, record_line

    path = tmp_path / "events.jsonl"
    path.write_text(record_line(event_body("confirm_final_grades", 1)) + "\n")
    with Receiver() as r:
        result = cli("replay", str(path), "--to", r.url, "--event", TYPO)
    assert "unknown event confirm_grades (did you mean confirm_final_grades?)" in result.stderr
    assert "nothing to replay" in result.stderr and r.received == []


def test_listen_warns_about_unknown_events_and_routes_and_serves_on(cli: Any) -> None:
    stderr = cli("listen", "--port", "0", "--max-time", "0.2", "--events", f"complete_grading,{TYPO}",
                 "--forward-to", "complete_gradin=http://127.0.0.1:9/").stderr.splitlines()
    warning = next(line for line in stderr if line.startswith("warning:"))
    assert "unknown events confirm_grades (did you mean confirm_final_grades?), complete_gradin " \
        "(did you mean complete_grading?)" in warning
    assert any(line.startswith("Ready:") for line in stderr)
