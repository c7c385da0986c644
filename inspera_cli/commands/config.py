"""`login`, `logout` and the `config` group: profiles in config.toml."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from inspera_cli import output
from inspera_cli.commands.common import JsonOption, ask, state
from inspera_cli.config import (
    DEFAULT_PROFILE,
    ENV,
    PROFILE_KEYS,
    check_credential,
    config_path,
    normalize_url,
    parse_timeout,
    read_config,
    resolve_settings,
    update_config,
)
from inspera_cli.errors import UsageError

config_app = typer.Typer(
    help="Show and change the saved settings (profiles in config.toml).\n\n"
    "Example: inspera-hooks --profile prod config show",
    no_args_is_help=True,
)

MASK = "********"


def _profile_name(ctx: typer.Context) -> str:
    return state(ctx).profile or os.environ.get(ENV["profile"]) or DEFAULT_PROFILE


def login(ctx: typer.Context) -> None:
    """Save a profile: prompts for the tenant URL, client id and (hidden) API key, and checks them.

    The key is checked with a real token exchange before anything is saved. It can also come from
    INSPERA_API_KEY; it is never taken on the command line.

    Example: inspera-hooks --profile prod login

    Exit codes: 0 saved, 1 tenant unreachable, 3 key or client id rejected.
    """
    from inspera_cli.client import InsperaClient

    app_state = state(ctx)
    name = _profile_name(ctx)
    current = read_config().get(name, {})
    url = (
        app_state.url
        or os.environ.get(ENV["url"])
        or ask("Tenant URL (e.g. https://example.inspera.no)", default=current.get("url"))
    )
    url = normalize_url(url)
    client_id = (
        app_state.client_id
        or os.environ.get(ENV["client_id"])
        or ask("API client id", default=current.get("client_id"))
    )
    if os.environ.get(ENV["api_key"]):
        api_key = check_credential(os.environ[ENV["api_key"]], ENV["api_key"])
    else:
        api_key = check_credential(ask("API authorization code (hidden)", hidden=True), "the API key entered")
    with output.spinner("Checking the key with a token exchange…"):
        client = InsperaClient(url, client_id, api_key, timeout=app_state.timeout)
        client.check_credentials()

    def save(profiles: dict[str, dict[str, Any]]) -> None:
        profiles[name] = {**profiles.get(name, {}), "url": url, "client_id": client_id, "api_key": api_key}

    path = update_config(save)
    output.info(f"Logged in to {url} as client {client_id}; profile {name!r} saved in {path}")


def logout(ctx: typer.Context) -> None:
    """Forget the cached access token and the stored API key of the profile.

    Example: inspera-hooks logout

    Exit codes: 0 done.
    """
    from inspera_cli.auth import TokenCache

    name = _profile_name(ctx)
    profiles = read_config()
    profile = profiles.get(name, {})
    app_state = state(ctx)
    url = app_state.url or profile.get("url") or os.environ.get(ENV["url"])
    client_id = app_state.client_id or profile.get("client_id") or os.environ.get(ENV["client_id"])
    forgot = []
    if url and client_id and TokenCache().forget(normalize_url(url), client_id):
        forgot.append("the cached token")

    def drop_key(profiles: dict[str, dict[str, Any]]) -> None:
        if profiles.get(name, {}).pop("api_key", None) is not None:
            forgot.append(f"the API key of profile {name!r}")

    if "api_key" in profile:
        update_config(drop_key)
    output.info(f"Forgot {' and '.join(forgot)}." if forgot else "Nothing to forget: not logged in.")


@config_app.command("show")
def show(ctx: typer.Context, json: JsonOption = False) -> None:
    """Show the effective settings and where each comes from (secrets masked).

    Example: inspera-hooks config show --json

    Exit codes: 0 ok, 1 unreadable config file.
    """
    app_state = state(ctx)
    settings = resolve_settings(
        app_state.url, app_state.client_id, profile=app_state.profile, timeout=app_state.timeout
    )
    rows: list[dict[str, object]] = [
        {"key": "profile", "value": settings.profile, "source": settings.sources["profile"]}
    ]
    for key in ("url", "client_id", "api_key", "token", "timeout"):
        value = getattr(settings, key)
        if value is not None and key in ("api_key", "token"):
            value = MASK
        rows.append({"key": key, "value": value, "source": settings.sources.get(key)})
    output.render(rows, [("key", "Key"), ("value", "Value", True), ("source", "Source")], json_mode=json)


@config_app.command("set")
def set_(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="KEY", help="url, client_id or timeout.")],
    value: Annotated[str, typer.Argument(metavar="VALUE", help="The new value.")],
) -> None:
    """Set one key of the profile (the API key only through `login`, never on the command line).

    Example: inspera-hooks config set url https://example.inspera.no

    Exit codes: 0 saved, 2 unknown key or bad value.
    """
    if key == "api_key":
        raise UsageError("the API key is never taken on the command line: use `inspera-hooks login`")
    if key not in PROFILE_KEYS:
        raise UsageError(f"unknown key {key!r}; keys: url, client_id, timeout")
    stored: str | float = value
    if key == "url":
        stored = normalize_url(value)
    elif key == "timeout":
        stored = parse_timeout(value, "config set")
    name = _profile_name(ctx)

    def set_key(profiles: dict[str, dict[str, Any]]) -> None:
        profiles.setdefault(name, {})[key] = stored

    path = update_config(set_key)
    output.info(f"Set {key} in profile {name!r} ({path})")


@config_app.command("path")
def path() -> None:
    """Print the path of the config file.

    Example: inspera-hooks config path

    Exit codes: 0.
    """
    print(config_path())


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("logout")(logout)
    app.add_typer(config_app, name="config")
