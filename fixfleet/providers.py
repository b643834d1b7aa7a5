"""Every client of an outside service, built here and nowhere else, from the settings and the one
redactor (fixfleet/redact.py) that scrubs what they send: the forges (GitHub when GITHUB_TOKEN is
set; a plain git remote always), the trackers (Jira), the notifier (Slack), and the clients the
backlog reads from (Jira, Sentry).

Each service is optional. An unconfigured one is absent, and said once per process in the log
("jira not configured (JIRA_BASE_URL, JIRA_EMAIL, JIRA_API_TOKEN): skipped"); callers skip the
step (no GitHub: a repository's forge is a plain git remote).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Unpack

from fixfleet.forges.github import GitHubForge
from fixfleet.forges.github_api import GitHubClient
from fixfleet.forges.registry import Forges
from fixfleet.integrations.base import ApiClient, ClientOptions, secret_value
from fixfleet.integrations.jira import JiraClient, JiraTracker
from fixfleet.integrations.notifier import Notifier
from fixfleet.integrations.sentry import SentryClient, SentryTracker
from fixfleet.integrations.slack import SlackClient, SlackNotifier
from fixfleet.integrations.tracker import Tracker
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
class Providers:
    """The seams the platform talks through (forges, trackers, notifier), and the configured
    clients behind them (the backlog reads Jira and Sentry directly; None: not configured)."""

    forges: Forges
    trackers: list[Tracker] = field(default_factory=list)
    notifier: Notifier | None = None
    github: GitHubClient | None = None
    jira: JiraClient | None = None
    sentry: SentryClient | None = None
    slack: SlackClient | None = None

    @property
    def configured(self) -> list[str]:
        return [name for name, client in self._clients().items() if client is not None]

    def _clients(self) -> dict[str, ApiClient | None]:
        return {"github": self.github, "jira": self.jira, "sentry": self.sentry, "slack": self.slack}

    async def aclose(self) -> None:
        clients = [client for client in self._clients().values() if client is not None]
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)

    async def __aenter__(self) -> Providers:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def connect(settings: Settings, redactor: Redactor, **options: Unpack[ClientOptions]) -> Providers:
    """Clients for every configured service. `options` (attempts, backoff_s, max_wait_s,
    timeout_s) go to every client, and so does `redactor`."""
    values = {
        "GITHUB_TOKEN": secret_value(settings.github_token),
        "JIRA_BASE_URL": settings.jira_base_url or None,
        "JIRA_EMAIL": settings.jira_email or None,
        "JIRA_API_TOKEN": secret_value(settings.jira_api_token),
        "SENTRY_AUTH_TOKEN": secret_value(settings.sentry_auth_token),
        "SLACK_BOT_TOKEN": secret_value(settings.slack_bot_token),
    }
    options["redactor"] = redactor
    found = {service: all(values[name] for name in names) for service, names in REQUIRED.items()}
    for service in (s for s, ok in found.items() if not ok):
        _skipped(service, values)
    github = GitHubClient(settings.github_token, api_url=settings.github_api_url, **options) if found["github"] else None
    jira = (JiraClient(settings.jira_base_url, settings.jira_email, settings.jira_api_token, **options)
            if found["jira"] else None)
    sentry = (SentryClient(settings.sentry_auth_token, settings.sentry_api_url, settings.sentry_org, **options)
              if found["sentry"] else None)
    slack = SlackClient(settings.slack_bot_token, settings.slack_api_url, **options) if found["slack"] else None
    return Providers(
        forges=Forges(*([GitHubForge(github, settings.github_repos)] if github else [])),
        trackers=[*([JiraTracker(jira, settings.jira_transitions)] if jira else []),
                  *([SentryTracker(sentry)] if sentry else [])],
        notifier=SlackNotifier(slack, settings.slack_channel or None, settings.public_url) if slack else None,
        github=github, jira=jira, sentry=sentry, slack=slack,
    )


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


def reset_skip_log() -> None:
    """Forget which services were said to be skipped (tests)."""
    with _said_lock:
        _said.clear()
