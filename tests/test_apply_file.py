"""The subscriptions file (strict validation with lines) and the plan, without any server."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspera_cli.client import Subscription
from inspera_cli.errors import ConfigError, ExitCode
from inspera_cli.reconciler import make_plan
from inspera_cli.subscriptions_file import (
    DesiredSubscription,
    SubscriptionsFile,
    SubscriptionsFileError,
    check_events,
    load_subscriptions_file,
)

ENV = {"HOOK_SECRET": "s3cr3t-never-shown", "OTHER_SECRET": "other-s3cr3t"}

GOOD = """\
# inspera-hooks.toml
[[subscription]]
event = "confirm_final_grades"
endpoint = "https://hooks.example.edu/inspera"
secret_env = "HOOK_SECRET"

[[subscription]]
event = "test_closed"
endpoint = "http://127.0.0.1:8000/hook"   # loopback may be plain http
secret_env = "OTHER_SECRET"
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> SubscriptionsFile:
    path = tmp_path / "hooks.toml"
    path.write_text(text, encoding="utf-8")
    return load_subscriptions_file(path, ENV if env is None else env)


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[tuple[int | None, str]]:
    with pytest.raises(SubscriptionsFileError) as info:
        load(tmp_path, text, env)
    error = info.value
    assert error.exit_code == ExitCode.FAILURE  # never 2, which --detailed-exitcode gives to "changes"
    assert str(error).startswith(str(tmp_path / "hooks.toml"))
    assert "s3cr3t" not in str(error)
    return [(p.line, p.message) for p in error.problems]


def test_a_good_file_loads_with_lines_and_secrets(tmp_path: Path) -> None:
    spec = load(tmp_path, GOOD)
    first, second = spec.subscriptions
    assert (first.event, first.endpoint, first.secret_env, first.line, first.event_line) == (
        "confirm_final_grades",
        "https://hooks.example.edu/inspera",
        "HOOK_SECRET",
        2,
        3,
    )
    assert first.secret == "s3cr3t-never-shown"
    assert (second.line, second.secret) == (7, "other-s3cr3t")
    assert "s3cr3t" not in repr(first)


def test_an_empty_file_is_no_subscriptions(tmp_path: Path) -> None:
    assert load(tmp_path, "# nothing yet\n").subscriptions == []


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = GOOD.replace('event = "test_closed"', 'event = "test_closed')
    [(line, message)] = problems(tmp_path, text)
    assert line == 8
    assert message.startswith("invalid TOML")
    assert "(at line" not in message


def test_toml_error_at_end_of_document_names_the_last_line(tmp_path: Path) -> None:
    [(line, _)] = problems(tmp_path, GOOD + "[[subscription]]\nevent = 'a'\nevent = 'b'\n")
    assert line == len((GOOD + "[[subscription]]\nevent = 'a'\nevent = 'b'\n").splitlines())


def test_unknown_key_in_an_entry_names_its_line(tmp_path: Path) -> None:
    text = GOOD.replace('secret_env = "OTHER_SECRET"', 'secret_env = "OTHER_SECRET"\nsecret = "oops"')
    [(line, message)] = problems(tmp_path, text)
    assert line == 11
    assert "unknown key 'secret'" in message and "secret_env" in message


def test_unknown_top_level_key_and_misspelt_table(tmp_path: Path) -> None:
    text = 'version = 2\n\n[[subscriptions]]\nevent = "x"\n'
    found = problems(tmp_path, text)
    assert [line for line, _ in found] == [1, 3]
    assert all("unknown key" in message for _, message in found)


def test_missing_field_names_the_entry_line(tmp_path: Path) -> None:
    text = GOOD.replace('secret_env = "HOOK_SECRET"\n', "")
    [(line, message)] = problems(tmp_path, text)
    assert line == 2
    assert "missing 'secret_env'" in message


def test_empty_or_non_string_value_names_its_line(tmp_path: Path) -> None:
    text = GOOD.replace('event = "test_closed"', "event = 42").replace(
        'endpoint = "https://hooks.example.edu/inspera"', 'endpoint = ""'
    )
    assert problems(tmp_path, text) == [
        (4, "'endpoint' must be a non-empty string"),
        (8, "'event' must be a non-empty string"),
    ]


def test_unset_secret_variable_names_the_secret_env_line(tmp_path: Path) -> None:
    [(line, message)] = problems(tmp_path, GOOD, env={"HOOK_SECRET": "s3cr3t"})
    assert line == 10
    assert "OTHER_SECRET" in message and "not set" in message


def test_empty_secret_variable_counts_as_unset(tmp_path: Path) -> None:
    [(line, _)] = problems(tmp_path, GOOD, env={**ENV, "HOOK_SECRET": ""})
    assert line == 5


def test_duplicate_pair_names_both_lines(tmp_path: Path) -> None:
    dup = GOOD + '\n[[subscription]]\nevent = "confirm_final_grades"\n'
    dup += 'endpoint = "https://hooks.example.edu/inspera"\nsecret_env = "OTHER_SECRET"\n'
    [(line, message)] = problems(tmp_path, dup)
    assert line == 12
    assert "duplicate" in message and "first at line 2" in message


def test_plain_http_endpoint_names_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("https://hooks.example.edu", "http://hooks.example.edu")
    [(line, message)] = problems(tmp_path, text)
    assert line == 4
    assert "plain http" in message


def test_endpoint_that_is_not_a_url(tmp_path: Path) -> None:
    text = GOOD.replace("https://hooks.example.edu/inspera", "hooks.example.edu")
    [(line, message)] = problems(tmp_path, text)
    assert line == 4 and "not an http(s) URL" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("https://", "http://").replace('event = "test_closed"', 'evnt = "test_closed"')
    found = problems(tmp_path, text, env={})
    assert [line for line, _ in found] == [4, 5, 8, 7, 10]


def test_an_entry_reports_all_of_its_problems_at_once(tmp_path: Path) -> None:
    """An unknown key used to hide the entry's other problems until the next run."""
    entry = ('[[subscription]]\nevent = "confirm_final_grades"\nendpoint = "http://hooks.example.edu/"\n'
             'secret_env = "UNSET_SECRET"\nsecret = "oops"\n')
    (unknown, unknown_line), (plain_http, http_line), (unset, unset_line) = (
        (message, line) for line, message in problems(tmp_path, entry)
    )
    assert (unknown_line, http_line, unset_line) == (5, 3, 4)
    assert "unknown key 'secret'" in unknown and "plain http" in plain_http
    assert unset.startswith("secret_env UNSET_SECRET: ") and "not set" in unset


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "hooks.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode("utf-8"))  # what Windows editors write
    spec = load_subscriptions_file(path, ENV)
    assert [s.event for s in spec.subscriptions] == ["confirm_final_grades", "test_closed"]
    assert spec.subscriptions[0].line == 2


def test_entry_that_is_not_a_table(tmp_path: Path) -> None:
    [(line, message)] = problems(tmp_path, 'subscription = ["confirm_final_grades"]\n')
    assert line == 1 and "must be a table" in message


def test_subscription_that_is_not_an_array(tmp_path: Path) -> None:
    [(line, message)] = problems(tmp_path, '\n[subscription]\nevent = "x"\n')
    assert line == 2 and "array of tables" in message


def test_inline_entries_fall_back_to_the_array_line(tmp_path: Path) -> None:
    text = '# inline\nsubscription = [\n  {event = "a", endpoint = "https://x.example/h"},\n]\n'
    [(line, message)] = problems(tmp_path, text)
    assert line == 2 and "missing 'secret_env'" in message


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the subscriptions file"):
        load_subscriptions_file(tmp_path / "absent.toml", ENV)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "hooks.toml"
    path.write_bytes(b'event = "\xff"\n')
    with pytest.raises(SubscriptionsFileError, match="not UTF-8"):
        load_subscriptions_file(path, ENV)


def test_unsupported_event_names_the_event_line(tmp_path: Path) -> None:
    spec = load(tmp_path, GOOD)
    check_events(spec, ["confirm_final_grades", "test_closed"])
    with pytest.raises(SubscriptionsFileError) as info:
        check_events(spec, ["confirm_final_grades"])
    [problem] = info.value.problems
    assert problem.line == 8
    assert "'test_closed' is not supported" in problem.message and "confirm_final_grades" in problem.message


# -- the plan --------------------------------------------------------------------------------------


def desired(event: str, endpoint: str) -> DesiredSubscription:
    return DesiredSubscription(event, endpoint, "HOOK_SECRET", secret="s")


def live(sid: int, event: str, endpoint: str) -> Subscription:
    return Subscription(sid, event, endpoint, "2024-01-01T00:00:00Z")


A, B, C = "https://a.example/h", "https://b.example/h", "https://c.example/h"


def test_plan_creates_missing_keeps_existing() -> None:
    plan = make_plan(
        [desired("e1", A), desired("e2", A), desired("e1", B)],
        [live(5, "e1", A), live(6, "e9", C)],
        prune=False,
    )
    assert [d.key for d in plan.create] == [("e2", A), ("e1", B)]
    assert [s.subscription_id for s in plan.unchanged] == [5]
    assert plan.delete == []
    assert [s.subscription_id for s in plan.unmanaged] == [6]
    assert plan.changes == 2


def test_plan_with_prune_deletes_extras_and_duplicates() -> None:
    plan = make_plan(
        [desired("e1", A)],
        [live(9, "e1", A), live(4, "e1", A), live(6, "e1", B)],
        prune=True,
    )
    assert [s.subscription_id for s in plan.unchanged] == [4]  # the oldest of a duplicated pair stays
    assert [s.subscription_id for s in plan.delete] == [6, 9]
    assert plan.create == [] and plan.unmanaged == []


def test_plan_endpoint_match_is_exact() -> None:
    plan = make_plan([desired("e1", A + "/")], [live(1, "e1", A)], prune=False)
    assert [d.endpoint for d in plan.create] == [A + "/"]


def test_empty_plan() -> None:
    plan = make_plan([desired("e1", A)], [live(1, "e1", A)], prune=True)
    assert plan.changes == 0 and len(plan.unchanged) == 1
