"""The `inspect` page: see, diagnose and replay every webhook, on a loopback port of its own.

Rooms: ``store`` (the rows kept, their filters), ``api`` (what the page is told about a row),
``curl`` (Copy as curl), ``http`` (a small hardened HTTP/1.1 server with server-sent events),
``server`` (``Inspector``: routes, security checks, live rows, sources). ``static/`` holds the
page itself (HTML, CSS, JS; no build step, nothing from a CDN).

    inspector = Inspector(InspectorConfig(port=0, secret=secret, targets={None: app_url}))
    inspector.attach(listener)      # before listener.start()
    listener.start()
    inspector.start(listener)       # on the listener's loop; inspector.url is the page
    ...
    inspector.close()
    listener.shutdown()

Knows nothing of Typer or Rich.
"""

from __future__ import annotations

from inspera_cli.inspector.server import Inspector, InspectorConfig

__all__ = ["Inspector", "InspectorConfig"]
