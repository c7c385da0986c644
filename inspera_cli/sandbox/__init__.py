"""A local emulation of an Inspera tenant's webhook API: what ``sandbox serve``, ``demo`` and the
test suite run instead of a real tenant. No Typer, no Rich: a library like the client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inspera_cli.sandbox.server import DEFAULT_EVENTS, Sandbox, SandboxConfig

__all__ = ["DEFAULT_EVENTS", "Sandbox", "SandboxConfig"]


def __getattr__(name: str) -> Any:
    # The server brings http.server, sqlite3 and asyncio: load it on first use, so that the CLI can
    # read the burst limits (inspera_cli.sandbox.burst) without paying for them.
    if name in __all__:
        from inspera_cli.sandbox import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
