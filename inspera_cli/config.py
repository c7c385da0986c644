"""Connection settings: profiles in config.toml; flag > environment > profile > default."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspera_cli.errors import ConfigError, CredentialsError, UsageError
from inspera_cli.files import describe_os_error, loads_toml, locked, read_small_text, write_private
from inspera_cli.network import check_http_url
from inspera_cli.redaction import is_valid_utf8, register_secret

APP_NAME = "inspera-hooks"
DEFAULT_PROFILE = "default"
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 3600.0
# Keys a profile may hold, and whether they are secret (masked in `config show`).
PROFILE_KEYS = {"url": False, "client_id": False, "api_key": True, "timeout": False}
ENV = {
    "url": "INSPERA_URL",
    "client_id": "INSPERA_CLIENT_ID",
    "api_key": "INSPERA_API_KEY",
    "token": "INSPERA_TOKEN",
    "profile": "INSPERA_PROFILE",
    "timeout": "INSPERA_TIMEOUT",
}


def config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME)) / "config.toml"


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME))


def read_config(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The profiles in config.toml ({} when there is none); ConfigError names a broken file."""
    path = path or config_path()
    try:
        text = read_small_text(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {describe_os_error(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; fix or delete the file") from None
    try:
        data = loads_toml(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; fix or delete the file") from None
    return {name: table for name, table in data.items() if isinstance(table, dict)}


def update_config(
    change: Callable[[dict[str, dict[str, Any]]], None], path: Path | None = None
) -> Path:
    """Read, ``change`` (in place) and write config.toml under an exclusive lock, so that
    concurrent runs lose no profile; ConfigError when it cannot be saved."""
    import tomli_w

    path = path or config_path()
    try:
        with locked(path):
            profiles = read_config(path)
            change(profiles)
            write_private(path, tomli_w.dumps(profiles).encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot save {path}: {describe_os_error(exc)}") from None
    return path


def normalize_url(url: str, what: str = "tenant URL") -> str:
    """`https://x.inspera.no/` and `https://x.inspera.no/api` both mean the tenant `https://x.inspera.no`.

    UsageError for anything but an http(s) URL with a host, and for userinfo (`user:pass@`).
    """
    url = url.strip().rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    check_http_url(url, what, allow_userinfo=False)
    return url


def check_credential(value: str, where: str) -> str:
    """An API key or token as given, or CredentialsError naming ``where`` it came from (never the
    value) when it has surrounding whitespace or characters an HTTP header cannot carry."""
    register_secret(value)
    if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 or ord(c) > 255 for c in value):
        raise CredentialsError(
            f"{where} has surrounding whitespace or control characters (a pasted newline?): "
            "set it again without them"
        )
    return value


def parse_timeout(value: Any, origin: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"timeout from {origin} is not a number of seconds: {value!r}") from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        raise UsageError(
            f"timeout from {origin} must be between 0 and {MAX_TIMEOUT:g} seconds, got {value!r}"
        )
    return seconds


@dataclass
class Settings:
    """Resolved connection settings, and where each one came from (for `config show`, `doctor`).

    ``overridden_by`` names the environment variables that override a value of a profile chosen
    explicitly (--profile / INSPERA_PROFILE): the command warns about them.
    """

    profile: str = DEFAULT_PROFILE
    url: str | None = None
    client_id: str | None = None
    api_key: str | None = None
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    sources: dict[str, str] = field(default_factory=dict)
    overridden_by: list[str] = field(default_factory=list)
    profile_chosen_with: str | None = None

    def override_warning(self) -> str | None:
        if not self.overridden_by:
            return None
        names = ", ".join(self.overridden_by)
        verb = "overrides" if len(self.overridden_by) == 1 else "override"
        return (
            f"{names} {verb} profile {self.profile!r} (chosen with {self.profile_chosen_with}); "
            "unset to use the profile's"
        )


def resolve_settings(
    url: str | None = None,
    client_id: str | None = None,
    api_key: str | None = None,
    *,
    token: str | None = None,
    profile: str | None = None,
    timeout: float | None = None,
    path: Path | None = None,
) -> Settings:
    """Apply flag > environment > profile > default to each setting."""
    env = os.environ
    if profile:
        name, profile_source, chosen_with = profile, "flag", "--profile"
    elif env.get(ENV["profile"]):
        name, profile_source, chosen_with = env[ENV["profile"]], "environment", ENV["profile"]
    else:
        name, profile_source, chosen_with = DEFAULT_PROFILE, "default", None
    profiles = read_config(path)
    if name not in profiles and profile_source != "default":
        known = ", ".join(sorted(profiles)) or "none"
        raise CredentialsError(
            f"profile {name!r} is not in {path or config_path()} (profiles: {known}); "
            f"create it with `inspera-hooks --profile {name} login`"
        )
    table = profiles.get(name, {})
    settings = Settings(profile=name, sources={"profile": profile_source}, profile_chosen_with=chosen_with)
    given = {"url": url, "client_id": client_id, "api_key": api_key, "token": token, "timeout": timeout}
    for key, flag_value in given.items():
        if flag_value is not None:
            value, source = flag_value, "flag"
        elif env.get(ENV[key]):
            value, source = env[ENV[key]], "environment"
            if chosen_with and key in _WARN_OVERRIDE and table.get(key, value) != value:
                settings.overridden_by.append(ENV[key])
        elif key in table and key != "token":
            value, source = table[key], f"profile {name}"
        else:
            continue
        setattr(settings, key, _checked(key, value, source, name, path))
        settings.sources[key] = source
    settings.sources.setdefault("timeout", "default")
    return settings


_WARN_OVERRIDE = ("url", "client_id", "api_key")


def _checked(key: str, value: Any, source: str, profile: str, path: Path | None) -> Any:
    """One setting's value, checked; a bad value in the file is a broken config file (exit 1)."""
    where = ENV[key] if source == "environment" else source
    try:
        if isinstance(value, str) and not is_valid_utf8(value):
            # Bytes that are not UTF-8 in the environment or argv: an "unexpected" encode error later.
            named = f"--{key.replace('_', '-')}" if source == "flag" else where
            if key in ("api_key", "token"):
                register_secret(value)
                raise CredentialsError(f"{named} is not valid UTF-8 text: set it again")
            raise UsageError(f"{named} is not valid UTF-8 text: set it again")
        if key == "url":
            return normalize_url(str(value), "tenant URL" if source == "flag" else f"tenant URL from {where}")
        if key == "timeout":
            return parse_timeout(value, where)
        if key in ("api_key", "token"):
            label = where if source == "environment" else f"the {key} from {where}"
            return check_credential(str(value), label)
        return str(value)
    except UsageError as exc:
        if not source.startswith("profile "):
            raise
        raise ConfigError(f"{path or config_path()}: [{profile}] {key}: {exc}") from None
