"""The `fixfleet` command: the typer app (app.py), its task-steering commands (steering.py) and
`logs` (logs.py)."""

from fixfleet.cli import logs, steering  # noqa: F401 - they register their commands on the app
from fixfleet.cli.app import app, main

__all__ = ["app", "main"]
