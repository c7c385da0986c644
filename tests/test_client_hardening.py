"""The API client as an attacker or an unlucky user meets it: redirects to another origin, echoed
secrets, trickled answers, odd Retry-After values, broken settings (SPEC §8 "Credentials and the
API client"). Every server here is a real one on 127.0.0.1."""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import CLI, run
from tests.stub_server import Reply, StubInspera, redirect

EVENTS = "/api/v1/subscription/events"
SUBS = "/api/v1/subscription"
TOKEN = "/api/authenticate/token/"
KEY = "stub-api-key-3c9d"


@pytest.fixture
def elsewhere() -> Iterator[StubInspera]:
    """A second server: same host, another port, so another origin."""
    server = StubInspera()
    try:
        yield server
    finally:
        server.close()


def config_file(home: Path) -> Path:
    return home / ".config" / "inspera-hooks" / "config.toml"


def write_config(home: Path, text: str | bytes) -> Path:
    path = config_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("inspera-hooks: error: "), stderr
    assert "unexpected" not in stderr and "Traceback" not in stderr
    return lines[0]


# -- redirects ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_token_exchange_never_follows_a_redirect(cli, stub, elsewhere, status):
    stub.on("POST", TOKEN, redirect(f"{elsewhere.url}{TOKEN}?grant_type=authorization_code", status))
    r = cli("events", expect=1)
    line = one_error_line(r.stderr)
    assert f"redirect to {elsewhere.url}" in line and "not followed" in line
    assert elsewhere.seen == []  # the key never left the tenant
    assert KEY not in r.stderr


def test_api_calls_follow_a_redirect_within_the_origin(cli, stub):
    stub.on("GET", EVENTS, redirect(f"{stub.url}/api/v1/moved-events"))
    stub.on("GET", "/api/v1/moved-events", Reply(body=["confirm_final_grades"]))
    assert cli("events", "--json").json == [{"event": "confirm_final_grades", "description": None}]
    moved = [s for s in stub.seen if s.path == "/api/v1/moved-events"]
    assert moved[0].headers["Authorization"] == "Bearer stub-token-1"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_api_calls_never_follow_a_redirect_to_another_origin(cli, stub, elsewhere, status):
    stub.on("GET", SUBS, redirect(f"{elsewhere.url}{SUBS}", status))
    r = cli("list", expect=1)
    line = one_error_line(r.stderr)
    assert f"redirect to {elsewhere.url}" in line
    assert elsewhere.seen == []  # neither the bearer token nor anything else went there


def test_userinfo_in_the_tenant_url_is_refused(cli, stub, monkeypatch):
    host = stub.url.split("//")[1]
    monkeypatch.setenv("INSPERA_URL", f"http://user:pa55word@{host}")
    r = cli("--debug", "list", expect=2)
    assert "user name or password" in r.stderr and "pa55word" not in r.stderr
    r = cli("--url", f"http://user:pa55word@{host}", "events", expect=2)
    assert "pa55word" not in r.stderr
    assert stub.seen == []


def test_a_netrc_entry_never_replaces_the_bearer_token(cli, stub, isolated_home):
    (isolated_home / ".netrc").write_text("machine 127.0.0.1 login someone password netrc-pw-31\n")
    (isolated_home / ".netrc").chmod(0o600)
    cli("events", "--json")
    (call,) = [s for s in stub.seen if s.path == EVENTS]
    assert call.headers["Authorization"] == "Bearer stub-token-1"


def test_userinfo_in_any_url_is_never_shown(cli):
    to = "http://user:pa55word@127.0.0.1:9/"
    r = cli("--debug", "trigger", "confirm_final_grades", "--to", to, "--wait", "0", expect=1)
    assert "pa55word" not in r.stdout + r.stderr and "http://***@127.0.0.1:9/" in r.stderr


# -- the token cache and the key -----------------------------------------------------------------


def test_a_changed_key_is_never_masked_by_a_cached_token(cli, stub, monkeypatch, isolated_home):
    cli("events", "--json")
    stub.on("POST", TOKEN, Reply(401, {"error": "invalid_grant"}))
    monkeypatch.setenv("INSPERA_API_KEY", "rotated-or-mistyped-key")
    cli("events", expect=3)
    assert stub.seen[-1].path == TOKEN and stub.seen[-1].headers["code"] == "rotated-or-mistyped-key"
    cache = (isolated_home / ".cache" / "inspera-hooks" / "tokens.json").read_text()
    assert KEY not in cache and "rotated-or-mistyped-key" not in cache
    monkeypatch.setenv("INSPERA_API_KEY", KEY)
    cli("events", "--json")  # the right key's token is still cached
    assert stub.count("POST", TOKEN) == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("INSPERA_API_KEY", "stub-api-key-3c9d\n"),
        ("INSPERA_API_KEY", " stub-api-key-3c9d"),
        ("INSPERA_API_KEY", "stub-api\r-key-3c9d"),
        ("INSPERA_TOKEN", "ready-token-5b7a\r\n"),
        ("INSPERA_TOKEN", "ready\ttoken-5b7a"),
    ],
)
def test_a_key_or_token_with_whitespace_is_refused_by_name(cli, stub, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    for args in (("events",), ("--debug", "events")):
        r = cli(*args, expect=3)
        assert f"{variable} has surrounding whitespace or control characters" in r.stderr
        assert value.strip() not in r.stdout + r.stderr
    assert stub.seen == []


def test_a_key_with_whitespace_in_the_profile_is_refused(cli, stub, monkeypatch, isolated_home):
    monkeypatch.delenv("INSPERA_API_KEY")
    write_config(isolated_home, '[default]\napi_key = "profile-key-77f1 "\n')
    r = cli("events", expect=3)
    assert "the api_key from profile default" in r.stderr and "profile-key-77f1" not in r.stderr


# -- secrets echoed back --------------------------------------------------------------------------


def test_an_exchange_that_echoes_the_key_shows_stars(cli, stub):
    stub.on("POST", TOKEN, Reply(echo=True))
    for args in (("events",), ("--debug", "events")):
        r = cli(*args, expect=3)
        assert KEY not in r.stdout + r.stderr and "code=***" in r.stderr


def test_an_api_call_that_echoes_the_token_shows_stars(cli, stub):
    stub.on("GET", SUBS, Reply(echo=True))
    for args in (("list",), ("--debug", "list")):
        r = cli(*args, expect=1)
        assert "stub-token-1" not in r.stdout + r.stderr and "auth=Bearer ***" in r.stderr


def test_a_create_that_echoes_the_webhook_secret_shows_stars(cli, stub, monkeypatch):
    monkeypatch.setenv("HOOK", "webhook-secret-echoed-8d2e")
    stub.on("POST", SUBS, Reply(echo=True))
    args = ("create", "--event", "complete_grading", "--endpoint", "https://h.example/")
    args += ("--secret-env", "HOOK")
    for extra in ((), ("--debug",)):
        r = cli(*extra, *args, expect=1)
        assert "webhook-secret-echoed-8d2e" not in r.stdout + r.stderr and "***" in r.stderr


# -- deadlines and retries --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [TOKEN, SUBS])
def test_timeout_is_a_deadline_for_a_trickled_answer(cli, stub, path):
    method = "POST" if path == TOKEN else "GET"
    stub.on(method, path, Reply(body={"subscriptions": [], "access_token": "t"}, trickle=0.5))
    started = time.monotonic()
    r = cli("--timeout", "2", "list", expect=1)
    elapsed = time.monotonic() - started
    line = one_error_line(r.stderr)
    assert "no answer within 2 s" in line and "--timeout" in line
    assert elapsed < 5.0, elapsed  # one deadline, not 3 tries of a per-read timeout (21 s before)
    assert stub.count(method, path) == 1


@pytest.mark.parametrize(
    "value",
    ["abc", "nan", "-1", "1.5", "", "Wed, 21 Oct 2015 07:28:00 GMT", "soon, please"],
)
def test_odd_retry_after_falls_back_to_the_backoff(cli, stub, value):
    stub.on("GET", EVENTS, Reply(503, {"error": "busy"}, {"Retry-After": value}), Reply(body=["x"]))
    started = time.monotonic()
    assert cli("events", "--json").json == [{"event": "x", "description": None}]
    assert stub.count("GET", EVENTS) == 2
    assert time.monotonic() - started < 5.0


def test_retry_after_as_an_http_date(cli, stub):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    stub.on("GET", EVENTS, Reply(429, {"error": "slow down"}, {"Retry-After": when}), Reply(body=["x"]))
    started = time.monotonic()
    cli("events", "--json")
    assert 0.5 < time.monotonic() - started < 8.0
    assert stub.count("GET", EVENTS) == 2


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(cli, stub):
    stub.on("GET", EVENTS, Reply(503, {"error": "maintenance"}, {"Retry-After": "99999"}))
    started = time.monotonic()
    r = cli("--timeout", "3", "events", expect=1)
    assert time.monotonic() - started < 6.0
    assert "503" in one_error_line(r.stderr) and stub.count("GET", EVENTS) == 1


def test_a_post_is_not_retried_after_a_dropped_connection(cli, stub):
    stub.on("POST", SUBS, Reply(drop=True))
    r = cli("create", "--event", "complete_grading", "--endpoint", "https://h.example/", expect=1)
    assert stub.count("POST", SUBS) == 1 and "closed without an answer" in r.stderr


# -- broken settings and files --------------------------------------------------------------------


def test_an_unparsable_url_is_a_usage_error(cli, monkeypatch, isolated_home):
    monkeypatch.setenv("INSPERA_URL", "http://[::1")
    assert "not a valid URL" in one_error_line(cli("list", expect=2).stderr)
    monkeypatch.delenv("INSPERA_URL")
    write_config(isolated_home, '[default]\nurl = "http://[::1"\n')
    assert "config.toml" in one_error_line(cli("list", expect=1).stderr)


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00b\x00i\x00n\x00",
        b"[default]\nurl = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        b"[default]\nurl = " + b"{a=" * 100_000 + b"1" + b"}" * 100_000 + b"\n",
    ],
    ids=["binary", "deep-arrays", "deep-tables"],
)
def test_a_broken_config_file_is_one_line(cli, stub, isolated_home, content):
    write_config(isolated_home, content)
    assert "config.toml" in one_error_line(cli("list", expect=1).stderr)
    assert "config.toml" in one_error_line(cli("config", "set", "timeout", "5", expect=1).stderr)


def test_an_unwritable_config_dir_is_one_line(cli, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocker))
    line = one_error_line(cli("config", "set", "timeout", "5", expect=1).stderr)
    assert "cannot save" in line


def test_a_full_disk_on_save_is_one_line(stub, tmp_path):
    import resource
    import signal

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (8, 8))

    env = stub.subprocess_env(tmp_path)
    result = run(
        [*CLI, "config", "set", "url", "https://example.inspera.no"],
        env=env, capture_output=True, text=True, timeout=60, also_in_child=small_files,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot save" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "content",
    [
        "[[subscription]]\nevent = " + "[" * 100_000 + "]" * 100_000 + "\n",
        "x = " + "{a=" * 100_000 + "1" + "}" * 100_000 + "\n",
    ],
    ids=["deep-arrays", "deep-tables"],
)
def test_apply_a_deeply_nested_file_is_one_line(cli, stub, tmp_path, content):
    hooks = tmp_path / "hooks.toml"
    hooks.write_text(content)
    r = cli("apply", "-f", str(hooks), expect=1)
    assert "nested too deeply" in r.stderr and "unexpected" not in r.stderr


def test_apply_dev_zero_reads_a_bounded_amount(cli, stub):
    started = time.monotonic()
    r = cli("apply", "-f", "/dev/zero", expect=1)
    assert time.monotonic() - started < 10 and "larger than" in r.stderr


# -- conventions -----------------------------------------------------------------------------------


def test_global_options_after_the_command(cli, stub, monkeypatch, isolated_home):
    assert "debug: > POST" in cli("events", "--debug").stderr
    monkeypatch.delenv("INSPERA_URL")
    write_config(isolated_home, f'[prod]\nurl = "{stub.url}"\n')
    assert cli("list", "-p", "prod", "--json").json == []
    assert cli("list", "--profile=prod", "--json").json == []
    assert cli("events", "--url", stub.url, "--json").json
    rows = {r["key"]: r for r in cli("config", "show", "--timeout", "7", "--json").json}
    assert rows["timeout"] == {"key": "timeout", "value": 7.0, "source": "flag"}
    assert cli("list", "-p", expect=2).exit_code == 2  # a missing value is not taken from the command
    r = cli("sign", "--secret", "x-secret-1", "--", "--debug", expect=1)  # after --: a FILE, not an option
    assert "--debug: no such file" in r.stderr and "debug: >" not in r.stderr


def test_a_subcommands_own_option_wins(cli, stub, tmp_path):
    # `listen --timeout` is the old name of listen's --max-time (stop after SECONDS), kept working;
    # the global --timeout, before the command, is the HTTP timeout.
    env = stub.subprocess_env(tmp_path)
    result = run(
        [*CLI, "--timeout", "7", "listen", "--port", "0", "--timeout", "0.5"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and "Ready:" in result.stderr, result.stderr
    assert "Stopping after 0.5 s" in result.stderr and "Stopped after 0." in result.stderr
    assert "note: listen --timeout is --max-time now" in result.stderr
    both = cli("listen", "--port", "0", "--timeout", "1", "--max-time", "1", expect=2)
    assert "the old name of --max-time" in both.stderr


def test_an_environment_variable_overriding_a_chosen_profile_is_named(cli, stub, monkeypatch, isolated_home):
    write_config(isolated_home, '[prod]\nurl = "https://prod.example"\nclient_id = "stub-client"\n')
    r = cli("--profile", "prod", "events", "--json")
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "INSPERA_URL overrides profile 'prod'" in warnings[0]
    assert "INSPERA_CLIENT_ID" not in warnings[0]  # the same value overrides nothing
    monkeypatch.setenv("INSPERA_PROFILE", "prod")
    assert "chosen with INSPERA_PROFILE" in cli("events", "--json").stderr
    monkeypatch.delenv("INSPERA_PROFILE")
    assert "warning" not in cli("events", "--json").stderr  # the default profile was not chosen


def test_secret_env_set_but_empty_or_not_utf8(cli, stub, tmp_path):
    body = tmp_path / "body.json"
    body.write_text("{}")
    r = cli("sign", "--secret-env", "HOOK", str(body), env={"HOOK": ""}, expect=2)
    assert "HOOK is empty" in one_error_line(r.stderr)
    env = {**os.environ, "HOOK": "caf\udcff"}
    result = run(
        [*CLI, "sign", "--secret-env", "HOOK", str(body)],
        env={k: v.encode("utf-8", "surrogateescape") for k, v in env.items()},  # type: ignore[misc]
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "not valid UTF-8" in one_error_line(result.stderr)


@pytest.mark.parametrize(("name", "code"), [("INSPERA_CLIENT_ID", 2), ("INSPERA_URL", 2),
                                            ("INSPERA_API_KEY", 3), ("INSPERA_TOKEN", 3)])
def test_a_setting_that_is_not_utf8_is_named_not_unexpected(stub, name: str, code: int) -> None:
    """Bytes that are not UTF-8 in a variable (a pasted Latin-1 value): one line naming it, never
    "unexpected UnicodeEncodeError" (INSPERA_CLIENT_ID) nor a 404 from a mangled URL."""
    env = {**os.environ, name: "caf\udcffe"}  # the stub fixture set the others
    as_bytes = {k: v.encode("utf-8", "surrogateescape") for k, v in env.items()}
    result = run([*CLI, "events"], env=as_bytes, capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    assert one_error_line(result.stderr).endswith(f"error: {name} is not valid UTF-8 text: set it again")


@pytest.mark.parametrize(
    "command",
    [
        ["listen", "--port", "0", "--max-time", "5"],
        ["trigger", "confirm_final_grades", "--to", "http://127.0.0.1:9/", "--wait", "0"],
        ["relay", "--forward-to", "http://127.0.0.1:9/", "--port", "0", "--admin-port", "0"],
        ["inspect", "record.jsonl", "--port", "0"],
    ],
    ids=lambda command: command[0],
)
def test_an_empty_secret_env_name_is_refused_not_taken_for_no_secret(cli, tmp_path, monkeypatch, command):
    """`--secret-env=$UNSET` must not start a receiver that checks no signature at all."""
    (tmp_path / "record.jsonl").write_text("")
    if command[0] == "listen":  # one receiver as the real program runs
        result = run(
            [*CLI, *command, "--secret-env="], cwd=tmp_path, capture_output=True, text=True, timeout=30,
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        )
        code, stderr = result.returncode, result.stderr
    else:
        monkeypatch.chdir(tmp_path)
        ran = cli(*command, "--secret-env=", expect=None, env={"XDG_DATA_HOME": str(tmp_path)})
        code, stderr = ran.exit_code, ran.stderr
    assert code == 2, stderr
    assert "--secret-env needs the name of an environment variable" in one_error_line(stderr)


def test_cache_file_keeps_no_key(cli, stub, isolated_home):
    cli("events", "--json")
    data = json.loads((isolated_home / ".cache" / "inspera-hooks" / "tokens.json").read_text())
    (key,) = data
    assert key.startswith(f"{stub.url} stub-client sha256:") and KEY not in key
