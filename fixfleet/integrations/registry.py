"""The clients this deployment is configured for: `from_settings(settings)`.

Each service is optional. An unconfigured one is None and said once per process in the log
("jira not configured (JIRA_BASE_URL, JIRA_EMAIL, JIRA_API_TOKEN): skipped"); callers skip the
step (no GitHub: the forge is a plain git remote).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from fixfleet.integrations.base import secret_value
from fixfleet.integrations.github import GitHubClient
from fixfleet.integrations.jira import JiraClient
from fixfleet.integrations.sentry import SENTRY_API_URL, SentryClient
from fixfleet.integrations.slack import SLACK_API_URL, SlackClient
from fixfleet.redact import Redactor

if TYPE_CHECKING:
    from fixfleet.config import Settings

log = logging.getLogger(__name__)

REQUIRED = {
    "github": ("GITHUB_TOKEN",),
    "jira": ("JIRA_BASE_URL", "JIRA_EMAIL", "JIRA_API_TOKEN"),
    "sentry": ("SENTRY_AUTH_TOKEN",),
    "slack": ("SLACK_BOT_TOKEN",),
}
_said: set[str] = set()
_said_lock = threading.Lock()


@dataclass
class Integrations:
    github: GitHubClient | None = None
    jira: JiraClient | None = None
    sentry: SentryClient | None = None
    slack: SlackClient | None = None

    @property
    def configured(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    async def aclose(self) -> None:
        clients = [getattr(self, f.name) for f in fields(self)]
        await asyncio.gather(*(c.aclose() for c in clients if c is not None), return_exceptions=True)

    async def __aenter__(self) -> Integrations:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def _skipped(service: str, values: dict[str, Any]) -> None:
    """Log, once per process and service, that it is not configured (and which values lack)."""
    with _said_lock:
        if service in _said:
            return
        _said.add(service)
    names = REQUIRED[service]
    missing = [name for name in names if not values.get(name)]
    partial = f"; missing {', '.join(missing)}" if len(missing) < len(names) else ""
    (log.warning if partial else log.info)("%s not configured (%s%s): skipped", service, ", ".join(names), partial)


def from_settings(
    settings: Settings,
    *,
    sentry_api_url: str = SENTRY_API_URL,
    slack_api_url: str = SLACK_API_URL,
    **client_options: Any,
) -> Integrations:
    """Clients for every configured service, None for the others. `client_options` (attempts,
    backoff_s, max_wait_s, timeout_s) go to every client; the API URLs of Sentry and Slack are
    arguments because the settings hold none (tests point them at stand-ins)."""
    values = {
        "GITHUB_TOKEN": secret_value(settings.github_token),
        "JIRA_BASE_URL": settings.jira_base_url or None,
        "JIRA_EMAIL": settings.jira_email or None,
        "JIRA_API_TOKEN": secret_value(settings.jira_api_token),
        "SENTRY_AUTH_TOKEN": secret_value(settings.sentry_auth_token),
        "SLACK_BOT_TOKEN": secret_value(settings.slack_bot_token),
    }
    client_options.setdefault("redactor", Redactor.from_settings(settings))
    found = Integrations()
    if values["GITHUB_TOKEN"]:
        found.github = GitHubClient(settings.github_token, api_url=settings.github_api_url, **client_options)
    else:
        _skipped("github", values)
    if all(values[name] for name in REQUIRED["jira"]):
        found.jira = JiraClient(settings.jira_base_url, settings.jira_email, settings.jira_api_token, **client_options)
    else:
        _skipped("jira", values)
    if values["SENTRY_AUTH_TOKEN"]:
        found.sentry = SentryClient(settings.sentry_auth_token, sentry_api_url, **client_options)
    else:
        _skipped("sentry", values)
    if values["SLACK_BOT_TOKEN"]:
        found.slack = SlackClient(settings.slack_bot_token, slack_api_url, **client_options)
    else:
        _skipped("slack", values)
    return found


def reset_skip_log() -> None:
    """Forget which services were said to be skipped (tests)."""
    with _said_lock:
        _said.clear()
