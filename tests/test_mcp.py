"""MCP servers: only those whose credentials are configured reach the CLI, filled in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.mcp import (
    SETTING_FOR_VAR,
    render_mcp,
    render_mcp_servers,
    skipped_mcp_servers,
)
from fixfleet.config import Settings

ALL = {
    "github_token": "ghp_canary_github",
    "jira_base_url": "https://acme.atlassian.net",
    "jira_email": "bot@acme.test",
    "jira_api_token": "jira_canary_token",
    "sentry_auth_token": "sntrys_canary_sentry",
}


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch):
    """Settings built only from the arguments, whatever this machine's environment holds."""
    for var in SETTING_FOR_VAR:
        monkeypatch.delenv(var, raising=False)

    def make(**values: str) -> Settings:
        return Settings(_env_file=None, **values)

    return make


def write_template(tmp_path: Path, servers: dict) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


def test_all_configured_renders_every_server_filled_in(settings, tmp_path: Path) -> None:
    servers = render_mcp_servers(settings(**ALL), worktree=tmp_path)

    assert sorted(servers) == ["atlassian", "github", "sentry"]  # read the checkout in the sandbox, not via MCP
    assert servers["github"]["env"]["GITHUB_PERSONAL_ACCESS_TOKEN"] == "ghp_canary_github"
    assert servers["atlassian"]["env"]["JIRA_URL"] == "https://acme.atlassian.net"
    assert servers["atlassian"]["env"]["JIRA_USERNAME"] == "bot@acme.test"
    assert servers["atlassian"]["env"]["JIRA_API_TOKEN"] == "jira_canary_token"
    assert servers["sentry"]["env"]["SENTRY_ACCESS_TOKEN"] == "sntrys_canary_sentry"
    assert "${" not in json.dumps(servers)


def test_only_configured_servers_are_kept(settings, tmp_path: Path) -> None:
    rendered = render_mcp(settings(github_token="ghp_canary_github"), worktree=tmp_path)

    assert sorted(rendered.servers) == ["github"]
    assert rendered.skip_messages() == [
        "atlassian MCP skipped: JIRA_BASE_URL not set, JIRA_EMAIL not set, JIRA_API_TOKEN not set",
        "sentry MCP skipped: SENTRY_AUTH_TOKEN not set",
    ]


def test_one_missing_variable_drops_the_server(settings) -> None:
    partial = {k: v for k, v in ALL.items() if k != "jira_email"}
    skipped = skipped_mcp_servers(settings(**partial))
    assert skipped["atlassian"] == "JIRA_EMAIL not set"
    assert "atlassian" not in render_mcp_servers(settings(**partial))


def test_empty_value_counts_as_not_configured(settings) -> None:
    servers = render_mcp_servers(settings(github_token="  ", sentry_auth_token="tok"))
    assert sorted(servers) == ["sentry"]


def test_without_worktree_a_server_that_needs_it_is_skipped(settings, tmp_path: Path) -> None:
    template = write_template(tmp_path, {"files": {"type": "stdio", "command": "serve", "args": ["${WORKTREE}"]}})
    rendered = render_mcp(settings(**ALL), template=template)
    assert "files" not in rendered.servers
    assert "files MCP skipped: no worktree given" in rendered.skip_messages()


def test_skip_notes_never_hold_secret_values(settings) -> None:
    rendered = render_mcp(settings(github_token="ghp_canary_github",
                                   jira_api_token="jira_canary_token"))
    notes = " ".join(rendered.skip_messages()) + json.dumps(rendered.skipped)
    assert "canary" not in notes


def test_values_with_json_special_characters_survive(settings, tmp_path: Path) -> None:
    template = write_template(tmp_path, {
        "svc": {"command": "svc", "args": ["--token=${GITHUB_TOKEN}"], "env": {"K": "x"}}})
    token = 'a"b\\c${x}'
    servers = render_mcp_servers(settings(github_token=token), template=template)
    assert servers["svc"] == {"command": "svc", "args": [f"--token={token}"], "env": {"K": "x"}}


def test_default_syntax_keeps_the_server(settings, tmp_path: Path) -> None:
    template = write_template(tmp_path, {
        "svc": {"command": "svc", "env": {"HOST": "${SENTRY_HOST:-sentry.io}"}}})
    assert render_mcp_servers(settings(), template=template)["svc"]["env"] == {
        "HOST": "sentry.io"}


def test_a_setting_outside_the_allow_list_cannot_be_pulled_in(settings, tmp_path: Path) -> None:
    template = write_template(tmp_path, {
        "leaky": {"command": "x", "env": {"KEY": "${ANTHROPIC_API_KEY}"}}})
    rendered = render_mcp(settings(anthropic_api_key="sk-ant-api-canary"), template=template)
    assert rendered.servers == {}
    assert rendered.skip_messages() == [
        "leaky MCP skipped: ANTHROPIC_API_KEY is not a setting fixfleet passes to MCP servers"]


def test_malformed_template_is_a_clear_error(settings, tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text('{"servers": {}}')
    with pytest.raises(ValueError, match="mcpServers"):
        render_mcp_servers(settings(), template=path)


def test_shipped_template_uses_claude_code_server_format() -> None:
    from actors.mcp import load_template

    for name, config in load_template().items():
        assert config.get("type", "stdio") == "stdio", name
        assert isinstance(config["command"], str) and isinstance(config.get("args", []), list)
