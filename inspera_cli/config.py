"""Connection settings: profiles in config.toml; flag > environment > profile > default."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inspera_cli.errors import ConfigError, CredentialsError, UsageError

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


def write_private(path: Path, data: bytes) -> None:
    """Write a file atomically with mode 0600 (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_config(path: Path | None = None) -> dict[str, dict[str, Any]]:
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}; fix or delete the file") from exc
    return {name: table for name, table in data.items() if isinstance(table, dict)}


def write_config(data: dict[str, dict[str, Any]], path: Path | None = None) -> Path:
    import tomli_w

    path = path or config_path()
    write_private(path, tomli_w.dumps(data).encode("utf-8"))
    return path


def normalize_url(url: str) -> str:
    """`https://x.inspera.no/` and `https://x.inspera.no/api` both mean the tenant `https://x.inspera.no`."""
    url = url.strip().rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"tenant URL {url!r} is not an http(s) URL, e.g. https://example.inspera.no")
    return url


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
    """Resolved connection settings, and where each one came from (for `config show`, `doctor`)."""

    profile: str = DEFAULT_PROFILE
    url: str | None = None
    client_id: str | None = None
    api_key: str | None = None
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    sources: dict[str, str] = field(default_factory=dict)


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
        name, profile_source = profile, "flag"
    elif env.get(ENV["profile"]):
        name, profile_source = env[ENV["profile"]], "environment"
    else:
        name, profile_source = DEFAULT_PROFILE, "default"
    profiles = read_config(path)
    if name not in profiles and profile_source != "default":
        known = ", ".join(sorted(profiles)) or "none"
        raise CredentialsError(
            f"profile {name!r} is not in {path or config_path()} (profiles: {known}); "
            f"create it with `inspera-hooks --profile {name} login`"
        )
    table = profiles.get(name, {})
    settings = Settings(profile=name, sources={"profile": profile_source})
    given = {"url": url, "client_id": client_id, "api_key": api_key, "token": token, "timeout": timeout}
    for key, flag_value in given.items():
        if flag_value is not None:
            value, source = flag_value, "flag"
        elif env.get(ENV[key]):
            value, source = env[ENV[key]], "environment"
        elif key in table and key != "token":
            value, source = table[key], f"profile {name}"
        else:
            continue
        try:
            if key == "url":
                value = normalize_url(str(value))
            elif key == "timeout":
                value = parse_timeout(value, ENV[key] if source == "environment" else source)
            else:
                value = str(value)
        except UsageError as exc:
            if source != f"profile {name}":
                raise
            # A bad value in the file is a broken config file (exit 1), not a bad command line.
            raise ConfigError(f"{path or config_path()}: [{name}] {key}: {exc}") from None
        setattr(settings, key, value)
        settings.sources[key] = source
    settings.sources.setdefault("timeout", "default")
    return settings
