"""The MCP servers a Claude session may use, rendered from `skills/mcp.json`.

The template is Claude Code's `mcpServers` format with `${VAR}` placeholders (and
`${VAR:-default}`, as Claude Code's own `.mcp.json` allows). A server whose placeholders are
not all configured is left out: starting it would only fail inside the session, after the
model had been told the tools exist. The rendered config carries secrets (they go to the
server processes, never to the agent's own environment), so it must not be logged; log
`RenderedMCP.skip_messages()` and server names instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from fixfleet.config import DATA_DIR, Settings

DEFAULT_TEMPLATE = DATA_DIR / "skills" / "mcp.json"
WORKTREE_VAR = "WORKTREE"
# Only these settings can reach an MCP server: a template must not be able to pull, say,
# the model key or a webhook secret into a third-party process.
SETTING_FOR_VAR: dict[str, str] = {
    "GITHUB_TOKEN": "github_token",
    "JIRA_BASE_URL": "jira_base_url",
    "JIRA_EMAIL": "jira_email",
    "JIRA_API_TOKEN": "jira_api_token",
    "SENTRY_AUTH_TOKEN": "sentry_auth_token",
}
PLACEHOLDER = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


@dataclass(frozen=True)
class RenderedMCP:
    servers: dict[str, dict[str, Any]]  # ready for the CLI's mcpServers; holds secrets
    skipped: dict[str, list[str]] = field(default_factory=dict)  # server -> missing variables

    def skip_messages(self) -> list[str]:
        """One line per server left out, e.g. 'sentry MCP skipped: SENTRY_AUTH_TOKEN not set'."""
        return [f"{name} MCP skipped: {_missing_phrase(missing)}"
                for name, missing in sorted(self.skipped.items())]


def render_mcp(settings: Settings, worktree: Path | None = None,
               template: Path = DEFAULT_TEMPLATE) -> RenderedMCP:
    values = _variable_values(settings, worktree)
    servers: dict[str, dict[str, Any]] = {}
    skipped: dict[str, list[str]] = {}
    for name, config in load_template(template).items():
        missing = [var for var in _required_variables(config) if var not in values]
        if missing:
            skipped[name] = missing
        else:
            servers[name] = _substitute(config, values)
    return RenderedMCP(servers=servers, skipped=skipped)


def render_mcp_servers(settings: Settings, worktree: Path | None = None,
                       template: Path = DEFAULT_TEMPLATE) -> dict[str, dict[str, Any]]:
    """The configured servers only, placeholders filled in."""
    return render_mcp(settings, worktree, template).servers


def skipped_mcp_servers(settings: Settings, worktree: Path | None = None,
                        template: Path = DEFAULT_TEMPLATE) -> dict[str, str]:
    """Server name -> why it was left out (names variables, never values)."""
    rendered = render_mcp(settings, worktree, template)
    return {name: _missing_phrase(missing) for name, missing in rendered.skipped.items()}


def load_template(template: Path = DEFAULT_TEMPLATE) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(Path(template).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{template}: cannot read the MCP template: {error}") from error
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
        raise ValueError(f"{template}: expected {{\"mcpServers\": {{name: config, ...}}}}")
    return servers


def _variable_values(settings: Settings, worktree: Path | None) -> dict[str, str]:
    """The variables that are configured (non-empty), by placeholder name."""
    values: dict[str, str] = {}
    for var, attribute in SETTING_FOR_VAR.items():
        value = getattr(settings, attribute, None)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None and str(value).strip():
            values[var] = str(value).strip()
    if worktree is not None:
        values[WORKTREE_VAR] = str(Path(worktree).resolve())
    return values


def _required_variables(node: Any) -> list[str]:
    """Placeholders without a default, in order of first appearance."""
    found: list[str] = []
    for text in _strings(node):
        for match in PLACEHOLDER.finditer(text):
            if match["default"] is None and match["name"] not in found:
                found.append(match["name"])
    return found


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def _substitute(node: Any, values: dict[str, str]) -> Any:
    """Fill placeholders in every string value; keys and non-strings are left alone."""
    if isinstance(node, str):
        return PLACEHOLDER.sub(lambda m: values.get(m["name"], m["default"] or ""), node)
    if isinstance(node, dict):
        return {key: _substitute(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(item, values) for item in node]
    return node


def _missing_phrase(missing: list[str]) -> str:
    reasons = []
    for var in missing:
        if var == WORKTREE_VAR:
            reasons.append("no worktree given")
        elif var in SETTING_FOR_VAR:
            reasons.append(f"{var} not set")
        else:
            reasons.append(f"{var} is not a setting fixfleet passes to MCP servers")
    return ", ".join(reasons)
