"""Where a secret could leak to, as one text: what the security tests scan for their canaries."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.world import World


def everything_the_platform_kept_or_sent(world: World, remotes: Iterable[Path] = ()) -> str:
    """Every place a secret could leak to, as one text (request headers aside: there the
    stand-ins and the model API are meant to get their credentials). `remotes`: git remotes
    besides the world's own whose history the platform wrote."""
    parts = [json.dumps([[c.method, c.path, c.query, c.body] for c in fake.calls], default=str)
             for fake in (world.github, world.slack, world.jira)]
    for task in world.api("GET", "/tasks?limit=100")["items"]:
        parts += [json.dumps(task), json.dumps(world.api("GET", f"/tasks/{task['key']}/events"))]
        for session in world.api("GET", f"/tasks/{task['key']}/sessions"):  # every message the agents' sessions wrote
            parts.append(json.dumps(world.api("GET", f"/sessions/{session['id']}?limit=5000")))
    parts.append(world.git("log", "-p", "--all"))
    for remote in remotes:
        parts.append(subprocess.run(["git", "--git-dir", str(remote), "log", "-p", "--all"], capture_output=True,
                                    text=True, check=True).stdout)
    home = world.platform.settings.home
    for path in [*home.rglob("transcripts/*.jsonl"), *_files(world.platform.ray_temp_dir)]:
        parts.append(path.read_text(errors="replace"))
    for server in (world.planner_model, world.executor_model):  # what the platform sent the model, not
        for request in server.requests:                          # what the scripted "model" itself wrote
            body = request.body if isinstance(request.body, dict) else {}
            sent = [m for m in body.get("messages", []) if m.get("role") != "assistant"]
            parts.append(json.dumps({"system": body.get("system"), "messages": sent}))
    return "\n".join(parts)


def encodings(secret: str) -> list[str]:
    """The secret as it is, and as an attacker would carry it past a redactor."""
    return [secret, base64.b64encode(secret.encode()).decode(), secret.encode().hex()]


def _files(root: Path | None) -> list[Path]:
    if root is None:
        return []
    return [p for p in root.rglob("*") if p.is_file() and not p.is_socket() and p.stat().st_size < 20_000_000]
