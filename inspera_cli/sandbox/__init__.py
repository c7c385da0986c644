"""A local emulation of an Inspera tenant's webhook API: what ``sandbox serve``, ``demo`` and the
test suite run instead of a real tenant. No Typer, no Rich: a library like the client."""

from inspera_cli.sandbox.server import DEFAULT_EVENTS, Sandbox, SandboxConfig

__all__ = ["DEFAULT_EVENTS", "Sandbox", "SandboxConfig"]
