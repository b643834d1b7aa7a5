"""The `fixfleet` command: the typer app (app.py) and its task-steering commands (steering.py)."""

from fixfleet.cli import steering  # noqa: F401 - registers its commands on the app
from fixfleet.cli.app import app, main

__all__ = ["app", "main"]
