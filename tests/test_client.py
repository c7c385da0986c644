"""The subscription commands against a scripted server: shapes, auth, retries, error messages."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.receiver import free_port
from tests.stub_server import Reply

EVENTS = "/api/v1/subscription/events"
SUBS = "/api/v1/subscription"
TOKEN = "/api/authenticate/token/"


@pytest.mark.parametrize(
    "body",
    [
        ["confirm_final_grades", "complete_grading"],
        [{"event": "confirm_final_grades", "description": "Final grades"}, {"event": "complete_grading"}],
        [{"name": "confirm_final_grades", "description": "Final grades"}, {"name": "complete_grading"}],
        [
            {"eventType": "confirm_final_grades", "description": "Final grades"},
            {"eventType": "complete_grading"},
        ],
        {"events": ["confirm_final_grades", "complete_grading"]},
        {"eventTypes": [{"name": "confirm_final_grades", "description": "Final grades"}, "complete_grading"]},
    ],
)
def test_events_accepts_every_documented_shape(cli, stub, body):
    stub.on("GET", EVENTS, Reply(body=body))
    events = cli("events", "--json").json
    assert [e["event"] for e in events] == ["confirm_final_grades", "complete_grading"]
    assert set(events[1]) == {"event", "description"} and events[1]["description"] is None


@pytest.mark.parametrize(
    "body",
    [
        {
            "subscriptions": [
                {"subscriptionId": 7, "event": "e", "endpoint": "https://x/", "lastModified": "t"}
            ]
        },
        [
            {
                "subscriptionId": 7,
                "event": "e",
                "endpoint": "https://x/",
                "lastModified": "t",
                "extra": {"a": 1},
            }
        ],
        {"subscriptions": [{"subscriptionId": "7", "event": "e", "endpoint": "https://x/"}]},
    ],
)
def test_list_tolerates_shapes(cli, stub, body):
    stub.on("GET", SUBS, Reply(body=body))
    (sub,) = cli("list", "--json").json
    assert sub["subscriptionId"] == 7 and sub["event"] == "e" and sub["endpoint"] == "https://x/"
    assert set(sub) == {"subscriptionId", "event", "endpoint", "lastModified"}


def test_list_plain_text_when_piped_and_event_filter(cli, stub):
    stub.on(
        "GET",
        SUBS,
        Reply(
            body=[
                {"subscriptionId": 1, "event": "a", "endpoint": "https://one/"},
                {"subscriptionId": 2, "event": "b", "endpoint": "https://two/"},
            ]
        ),
    )
    stub.on("GET", EVENTS, Reply(body=["a", "b"]))
    out = cli("list", "--event", "b").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "EVENT", "ENDPOINT", "LAST", "MODIFIED"]
    assert lines[1].split()[:3] == ["2", "b", "https://two/"] and len(lines) == 2


def test_token_exchange_request_is_exactly_as_documented(cli, stub):
    cli("events", "--json")
    (exchange,) = [s for s in stub.seen if s.path == TOKEN]
    assert exchange.method == "POST"
    assert exchange.query == {"grant_type": ["authorization_code"], "client_id": ["stub-client"]}
    assert exchange.headers["code"] == "stub-api-key-3c9d"
    assert exchange.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert exchange.body == b""
    (call,) = [s for s in stub.seen if s.path == EVENTS]
    assert call.headers["Authorization"] == "Bearer stub-token-1"
    assert call.headers["User-Agent"].startswith("inspera-hooks/")


def test_second_command_reuses_cached_token(cli, stub):
    cli("events", "--json")
    cli("list", "--json")
    assert stub.count("POST", TOKEN) == 1
    assert [s.headers["Authorization"] for s in stub.seen if s.path == SUBS] == ["Bearer stub-token-1"]


def test_expired_cached_token_is_not_reused(cli, stub, isolated_home):
    cli("events", "--json")
    cache = isolated_home / ".cache" / "inspera-hooks" / "tokens.json"
    data = json.loads(cache.read_text())
    for entry in data.values():
        entry["expires_at"] = 0  # anything within 60 s of expiry counts as expired
    cache.write_text(json.dumps(data))
    cli("events", "--json")
    assert stub.count("POST", TOKEN) == 2


def test_refreshes_once_after_401(cli, stub):
    stub.on("GET", EVENTS, Reply(401, {"error": "expired"}), Reply(body=["x"]))
    assert cli("events", "--json").json == [{"event": "x", "description": None}]
    assert stub.count("POST", TOKEN) == 2
    auths = [s.headers["Authorization"] for s in stub.seen if s.path == EVENTS]
    assert auths == ["Bearer stub-token-1", "Bearer stub-token-2"]


def test_401_twice_is_a_credentials_error(cli, stub):
    stub.on("GET", EVENTS, Reply(401, {"error": "nope"}))
    r = cli("events", expect=3)
    assert r.stderr.startswith("inspera-hooks: error: ") and stub.count("POST", TOKEN) == 2


def test_inspera_token_skips_the_exchange(cli, stub, monkeypatch):
    monkeypatch.setenv("INSPERA_TOKEN", "ready-made-token")
    cli("events", "--json")
    assert stub.count("POST", TOKEN) == 0
    assert stub.seen[0].headers["Authorization"] == "Bearer ready-made-token"


def test_get_retries_429_honouring_retry_after(cli, stub):
    stub.on("GET", EVENTS, Reply(429, {"error": "slow down"}, {"Retry-After": "0"}), Reply(body=["x"]))
    assert cli("events", "--json").json[0]["event"] == "x"
    assert stub.count("GET", EVENTS) == 2


def test_get_gives_up_after_three_tries(cli, stub):
    stub.on("GET", EVENTS, Reply(503, {"error": "down"}, {"Retry-After": "0"}))
    r = cli("events", expect=1)
    assert stub.count("GET", EVENTS) == 3
    assert "503" in r.stderr and "down" in r.stderr


def test_post_is_never_retried(cli, stub):
    stub.on("POST", SUBS, Reply(503, {"error": "busy"}, {"Retry-After": "0"}))
    r = cli("create", "--event", "confirm_final_grades", "--endpoint", "https://h.example/", expect=1)
    assert stub.count("POST", SUBS) == 1
    assert "503" in r.stderr and "Traceback" not in r.stderr


def test_html_error_page_is_reported_cleanly(cli, stub):
    page = "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
    stub.on("GET", SUBS, Reply(502, page, {"Retry-After": "0"}))
    r = cli("list", expect=1)
    assert r.stderr.count("\n") == 1
    assert "502" in r.stderr and "HTML page" in r.stderr and "Traceback" not in r.stderr


def test_html_200_is_not_a_json_traceback(cli, stub):
    stub.on("GET", SUBS, Reply(200, "<html>login page</html>"))
    r = cli("list", expect=1)
    assert "HTML page, not JSON" in r.stderr and "is " in r.stderr


@pytest.mark.parametrize(
    ("reply", "code", "words"),
    [
        (Reply(401, {"error": "invalid_grant"}), 3, "invalid_grant"),
        (
            Reply(409, {"error": "Multiple tokens for user", "description": "one active"}),
            3,
            "multiple tokens",
        ),
        (Reply(400, {"error": "invalid_request"}), 3, "400"),
        (Reply(500, {"error": "server_error", "description": "db down"}), 1, "db down"),
    ],
)
def test_token_errors_have_their_own_message(cli, stub, reply, code, words):
    stub.on("POST", TOKEN, reply)
    r = cli("events", expect=code)
    assert words.lower() in r.stderr.lower()
    assert "stub-api-key-3c9d" not in r.stderr


@pytest.mark.parametrize("missing", ["INSPERA_URL", "INSPERA_CLIENT_ID", "INSPERA_API_KEY"])
def test_missing_settings_exit_3(cli, stub, monkeypatch, missing):
    monkeypatch.delenv(missing)
    r = cli("list", expect=3)
    assert "login" in r.stderr


def test_create_with_empty_answer_finds_the_new_one_by_listing(cli, stub):
    stub.on("POST", SUBS, Reply(201, b""))
    stub.on(
        "GET",
        SUBS,
        Reply(body={"subscriptions": []}),  # the check for an existing pair, before the create
        Reply(
            body={
                "subscriptions": [
                    {"subscriptionId": 41, "event": "complete_grading", "endpoint": "https://h/"}
                ]
            }
        ),
    )
    (item,) = cli("create", "--event", "complete_grading", "--endpoint", "https://h/", "--json").json
    assert item["subscriptionId"] == 41 and item["created"] is True and len(item["secret"]) == 64
    sent = json.loads([s for s in stub.seen if s.method == "POST" and s.path == SUBS][0].body)
    assert sent == {"event": "complete_grading", "endpoint": "https://h/", "secret": item["secret"]}


def test_delete_404_after_lost_answer_counts_as_deleted(cli, stub):
    stub.on("GET", SUBS, Reply(body=[{"subscriptionId": 5, "event": "complete_grading", "endpoint": "https://h/"}]))
    stub.on("DELETE", f"{SUBS}/5", Reply(drop=True), Reply(404, {"error": "not found"}))
    assert cli("delete", "5", "--json").json == [{"subscriptionId": 5, "deleted": True}]
    assert stub.count("DELETE", f"{SUBS}/5") == 2


def test_delete_unknown_id_exit_4_unless_missing_ok(cli, stub):
    stub.on("GET", SUBS, Reply(body=[{"subscriptionId": 5, "event": "complete_grading", "endpoint": "https://h/"}]))
    r = cli("delete", "9", "--yes", expect=4)
    assert "no subscription with id 9" in r.stderr
    assert cli("delete", "9", "--missing-ok", "--json").json == [{"subscriptionId": 9, "deleted": False}]
    # a mistyped id among good ones deletes nothing: each id is checked before any is deleted
    r = cli("delete", "5", "9", "--yes", "--json", expect=4)
    assert r.json == [{"subscriptionId": 5, "deleted": False}, {"subscriptionId": 9, "deleted": False}]
    assert stub.count("DELETE", f"{SUBS}/5") == 0 and stub.count("DELETE", f"{SUBS}/9") == 0
    stub.on("DELETE", f"{SUBS}/5", Reply(204))
    assert cli("delete", "5", "9", "--missing-ok", "--json").json == [
        {"subscriptionId": 5, "deleted": True}, {"subscriptionId": 9, "deleted": False}
    ]


def test_connection_refused_message(cli, monkeypatch):
    port = free_port()
    r = cli(
        "--url",
        f"http://127.0.0.1:{port}",
        "--client-id",
        "c",
        "events",
        expect=1,
        env={"INSPERA_API_KEY": "k"},
    )
    assert "connection refused" in r.stderr and "Traceback" not in r.stderr


def test_dns_failure_message(cli):
    r = cli(
        "--url",
        "https://no-such-host.invalid",
        "--client-id",
        "c",
        "events",
        expect=1,
        env={"INSPERA_API_KEY": "k"},
    )
    assert "cannot resolve host 'no-such-host.invalid'" in r.stderr


def test_timeout_message(cli, stub):
    stub.on("POST", TOKEN, Reply(body={"access_token": "t", "expires_in": 60}, delay=1.5))
    r = cli("--timeout", "0.3", "events", expect=1)
    assert f"{stub.url.split('//')[1]}: no answer within 0.3 s (raise it with --timeout)" in r.stderr


def test_tls_failure_message(cli, tmp_path):
    import ssl
    import threading
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    import trustme

    ca = trustme.CA()
    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = cli(
            "--url",
            f"https://127.0.0.1:{server.server_address[1]}",
            "--client-id",
            "c",
            "events",
            expect=1,
            env={"INSPERA_API_KEY": "k"},
        )
    finally:
        server.shutdown()
        server.server_close()
    assert "TLS verification failed" in r.stderr and "REQUESTS_CA_BUNDLE" in r.stderr


def test_config_and_token_files_are_0600(cli, stub, isolated_home):
    cli("config", "set", "timeout", "12")
    cli("events", "--json")
    config = isolated_home / ".config" / "inspera-hooks" / "config.toml"
    cache = isolated_home / ".cache" / "inspera-hooks" / "tokens.json"
    for path in (config, cache):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert not [p for p in config.parent.iterdir() if p.name.endswith(".tmp")]


def test_precedence_flag_over_env_over_profile(cli, stub, monkeypatch, isolated_home):
    cli("config", "set", "url", "http://profile.invalid")
    cli("config", "set", "client_id", "from-profile")
    monkeypatch.delenv("INSPERA_CLIENT_ID")
    rows = {r["key"]: r for r in cli("config", "show", "--json").json}
    assert rows["url"]["source"] == "environment" and rows["url"]["value"] == stub.url
    assert rows["client_id"] == {"key": "client_id", "value": "from-profile", "source": "profile default"}
    assert rows["api_key"]["value"] == "********"
    rows = {r["key"]: r for r in cli("--client-id", "from-flag", "config", "show", "--json").json}
    assert rows["client_id"]["source"] == "flag" and rows["client_id"]["value"] == "from-flag"
    cli("events")
    assert stub.seen[0].query["client_id"] == ["from-profile"]


def test_unknown_profile_is_a_credentials_error(cli):
    r = cli("--profile", "nope", "list", expect=3)
    assert "profile 'nope'" in r.stderr


def test_login_checks_the_key_before_saving(cli, stub, monkeypatch, isolated_home):
    for name in ("INSPERA_URL", "INSPERA_CLIENT_ID", "INSPERA_API_KEY"):
        monkeypatch.delenv(name)
    config = isolated_home / ".config" / "inspera-hooks" / "config.toml"
    stub.on("POST", TOKEN, Reply(401, {"error": "invalid_grant"}))
    r = cli("--profile", "prod", "login", input=f"{stub.url}\nmy-client\nwrong-key\n", expect=3)
    assert not config.exists() and "wrong-key" not in r.stdout + r.stderr
    stub.on("POST", TOKEN, stub.token_reply)
    r = cli("--profile", "prod", "login", input=f"{stub.url}/api/\nmy-client\nright-key-77\n")
    assert "right-key-77" not in r.stdout + r.stderr
    assert stub.seen[-1].headers["code"] == "right-key-77"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    text = config.read_text()
    assert "[prod]" in text and f'url = "{stub.url}"' in text
    cli("-p", "prod", "events", "--json")
    assert stub.count("POST", TOKEN) == 2  # the login's token was cached and reused
    cli("-p", "prod", "logout")
    assert "api_key" not in config.read_text()
    assert cli("-p", "prod", "list", expect=3)


def test_config_set_refuses_api_key_and_unknown_keys(cli):
    assert "login" in cli("config", "set", "api_key", "x", expect=2).stderr
    assert "unknown key" in cli("config", "set", "colour", "x", expect=2).stderr
    assert "not a number" in cli("config", "set", "timeout", "soon", expect=2).stderr


def test_config_path(cli, isolated_home):
    assert (
        Path(cli("config", "path").stdout.strip())
        == isolated_home / ".config" / "inspera-hooks" / "config.toml"
    )


def test_broken_config_file_is_one_clean_line(cli, isolated_home):
    config = isolated_home / ".config" / "inspera-hooks" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[default\nurl=")
    r = cli("list", expect=1)
    assert r.stderr.startswith("inspera-hooks: error: ") and "config.toml" in r.stderr


def test_list_keeps_items_with_missing_fields_and_skips_those_without_id(cli, stub):
    stub.on("GET", SUBS, Reply(body={"subscriptions": [{"subscriptionId": 3}, {"event": "no id"}, "junk"]}))
    assert cli("list", "--json").json == [
        {"subscriptionId": 3, "event": "", "endpoint": "", "lastModified": None}
    ]


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "1e300"])
def test_unusable_timeouts_are_refused_wherever_they_come_from(cli, stub, isolated_home, value):
    assert "timeout" in cli("--timeout", value, "list", expect=2).stderr
    assert "timeout" in cli("list", env={"INSPERA_TIMEOUT": value}, expect=2).stderr
    assert "timeout" in cli("config", "set", "--", "timeout", value, expect=2).stderr
    config = isolated_home / ".config" / "inspera-hooks" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[default]\ntimeout = "{value}"\n')
    r = cli("list", expect=1)  # a broken file is exit 1, and names the file
    assert "config.toml" in r.stderr and "[default] timeout" in r.stderr


def test_a_bad_url_in_the_profile_names_the_file(cli, stub, isolated_home, monkeypatch):
    monkeypatch.delenv("INSPERA_URL")
    config = isolated_home / ".config" / "inspera-hooks" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[default]\nurl = 5\n")
    assert "[default] url" in cli("list", expect=1).stderr


def test_an_unusable_token_cache_does_not_stop_commands(cli, stub, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert cli("list", "--json").json == []
    assert cli("list", "--json").json == []
    assert stub.count("POST", TOKEN) == 2  # nothing cached, so each run exchanges


def test_debug_log_redaction(cli, stub, monkeypatch):
    monkeypatch.setenv("INSPERA_API_KEY", "k")
    stub.on(
        "GET",
        SUBS,
        Reply(body={"subscriptions": [], "refresh_token": "refresh-value-91", "echo": "stub-token-1"}),
    )
    err = cli("--debug", "list").stderr
    assert "/api/authenticate/token/" in err  # a one-letter key does not garble the log
    assert "refresh-value-91" not in err and "stub-token-1" not in err
    monkeypatch.setenv("INSPERA_API_KEY", 'key-with-"quote"-\u00e4')
    stub.on("POST", TOKEN, Reply(401, {"error": "invalid_grant", "got": 'key-with-"quote"-\u00e4'}))
    err = cli("--debug", "list", expect=None).stderr
    assert 'key-with-\\"quote\\"' not in err and "quote" not in err


CREATE_TWO = ("create", "--event", "confirm_final_grades", "--event", "complete_grading", "--endpoint", "https://h/")


def test_create_goes_on_after_a_refused_event(cli, stub):
    stub.on(
        "POST",
        SUBS,
        Reply(400, {"error": "endpoint validation failed: answered 500"}),
        Reply(201, {"subscriptionId": 8, "event": "complete_grading", "endpoint": "https://h/"}),
    )
    r = cli(*CREATE_TWO, "--json", expect=1)
    refused, item = r.json
    assert (refused["event"], refused["subscriptionId"]) == ("confirm_final_grades", None)
    assert refused["created"] is False
    assert "validation failed: answered 500" in refused["error"]
    assert item["subscriptionId"] == 8 and item["created"] is True and item["error"] is None
    assert "validation failed" in r.stderr
    assert "1 of 2 subscriptions failed; the other one is in place" in r.stderr
    assert stub.count("POST", SUBS) == 2


def test_create_stops_on_credentials_errors(cli, stub):
    stub.on("POST", SUBS, Reply(401, {"error": "expired"}))
    cli(*CREATE_TWO, expect=3)
    assert stub.count("POST", SUBS) == 2  # one try, one after the refresh, then stop


def test_create_accepted_but_not_listed_keeps_the_generated_secret(cli, stub, monkeypatch):
    monkeypatch.setattr("inspera_cli.client.LIST_LAG_DELAYS", (0.0,))
    stub.on("POST", SUBS, Reply(201, b""))
    r = cli("create", "--event", "complete_grading", "--endpoint", "https://h/", "--json", expect=1)
    (item,) = r.json
    sent = json.loads([s for s in stub.seen if s.method == "POST" and s.path == SUBS][0].body)
    assert (item["created"], item["secret"]) == (False, sent["secret"])
    assert "does not list it" in item["error"]
    assert f"Webhook secret: {sent['secret']}\n" in r.stderr  # it may exist: the secret is shown
    assert r.stderr.count("does not list it") == 1 and stub.count("GET", SUBS) == 3


def test_delete_by_pair_not_found_prints_an_empty_json_list(cli, stub):
    r = cli("delete", "--event", "complete_grading", "--endpoint", "https://none/", "--json", expect=4)
    assert r.json == [] and "no subscription to complete_grading at https://none/" in r.stderr


def test_piped_login_reads_answers_without_getpass_and_fails_cleanly_on_eof(cli, stub, monkeypatch):
    for name in ("INSPERA_URL", "INSPERA_CLIENT_ID", "INSPERA_API_KEY"):
        monkeypatch.delenv(name)
    r = cli("login", input=f"{stub.url}\nmy-client\n", expect=2)
    assert "no answer on standard input" in r.stderr and "interrupted" not in r.stderr
    r = cli("login", input=f"{stub.url}\nmy-client\nthe-key-123\n")
    assert "GetPassWarning" not in r.stderr and "the-key-123" not in r.stderr
