"""Every setting of fixfleet, read from the environment or a `.env` file.

Names follow the deployment's conventions: platform settings carry the `FIXFLEET_` prefix,
the URLs and third-party credentials keep the names their own tools use.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from fixfleet.repo_schema import RepoConfig

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_HOME = Path("~/.local/share/fixfleet").expanduser()
# What the repository's top-level folders hold that the installed package needs: the agents'
# skills (skills/) and the Serve config (cluster/serve_config.yaml). In a checkout fixfleet/data
# links to them; a wheel holds copies (package data), so an installed fixfleet never looks for
# the source tree.
DATA_DIR = Path(str(resources.files("fixfleet").joinpath("data")))


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs or single addresses; raises ValueError naming the bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an address range like 10.96.0.0/12") from None
    return tuple(networks)


def _env(name: str) -> Any:
    """A field read from exactly this environment name (no prefix)."""
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FIXFLEET_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # Where state lives. No URL means: start the embedded server under `home`.
    database_url: SecretStr | None = Field(None, validation_alias=_env("DATABASE_URL"))
    redis_url: SecretStr | None = Field(None, validation_alias=_env("REDIS_URL"))
    home: Path = DEFAULT_HOME

    # Webhook secrets; each may hold several values separated by commas (rotation).
    github_webhook_secret: SecretStr | None = None
    sentry_client_secret: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    jira_webhook_secret: SecretStr | None = None
    jira_allow_unsigned: bool = False  # Jira webhooks without a secret: only when explicitly allowed
    api_tokens: SecretStr | None = None  # JSON list of {"name", "token", "scopes"}

    # Third-party credentials.
    github_token: SecretStr | None = Field(None, validation_alias=_env("GITHUB_TOKEN"))
    jira_base_url: str | None = Field(None, validation_alias=_env("JIRA_BASE_URL"))
    jira_email: str | None = Field(None, validation_alias=_env("JIRA_EMAIL"))
    jira_api_token: SecretStr | None = Field(None, validation_alias=_env("JIRA_API_TOKEN"))
    sentry_auth_token: SecretStr | None = Field(None, validation_alias=_env("SENTRY_AUTH_TOKEN"))
    slack_bot_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_BOT_TOKEN"))
    anthropic_api_key: SecretStr | None = Field(None, validation_alias=_env("ANTHROPIC_API_KEY"))
    claude_code_oauth_token: SecretStr | None = Field(
        None, validation_alias=_env("CLAUDE_CODE_OAUTH_TOKEN")
    )
    anthropic_base_url: str | None = Field(None, validation_alias=_env("ANTHROPIC_BASE_URL"))

    # Model credentials may also come from a mounted file, re-read when it changes (rotation).
    credentials_file: Path | None = None

    # Ingress: which repositories may be named, how sources map to repositories, who approves.
    # Glob patterns over repository URLs fixfleet may work on. Empty (the default): none, so a
    # submit token cannot point git at an internal host nobody meant; the operator names them.
    repo_allowlist: list[str] = Field(default_factory=list)
    local_repo_roots: list[Path] = Field(default_factory=list)  # file:// URLs must lie under one
    default_repo: str | None = None  # for alerts whose project maps to no repository
    sentry_project_repos: dict[str, str] = Field(default_factory=dict)  # sentry project slug -> repo URL
    jira_project_repos: dict[str, str] = Field(default_factory=dict)  # jira project key -> repo URL
    jira_projects: list[str] = Field(default_factory=list)  # tickets of these projects become tasks
    jira_labels: list[str] = Field(default_factory=lambda: ["fixfleet"])  # ... or with one of these labels
    jira_ip_allowlist: list[str] = Field(default_factory=list)  # CIDRs Jira webhooks may come from; empty: any
    github_label: str = "fixfleet"  # an issue with this label becomes a task
    github_bot_login: str = "fixfleet[bot]"  # our own comments are ignored
    github_api_url: str = "https://api.github.com"
    # A repository cloned from elsewhere (a mirror, a file:// remote) but reviewed on GitHub:
    # repo URL -> owner/name, so its plan and fix go to pull requests there.
    github_repos: dict[str, str] = Field(default_factory=dict)
    sentry_api_url: str = "https://sentry.io/api/0"
    sentry_org: str | None = None  # the organization's slug: issues addressed as Sentry's published API does
    slack_api_url: str = "https://slack.com/api"
    slack_approvers: list[str] = Field(default_factory=list)  # Slack user ids allowed to approve
    slack_submitters: list[str] = Field(default_factory=list)  # Slack user ids allowed to steer tasks (cancel, retry, ...)
    # Repository URL globs where whoever asked for a task may not approve it (as Copilot does); ["*"]: all.
    independent_approval: list[str] = Field(default_factory=list)
    max_body_bytes: int = 1024 * 1024

    # The web console at /ui/ (API tokens sign in; a session lives this long unless signed out or
    # its token is removed), and where its pool page links to the Ray dashboard (http(s) only).
    console_session_hours: float = Field(8.0, gt=0, le=24 * 30)
    ray_dashboard_url: str | None = "http://127.0.0.1:8265"

    # Agent limits.
    agent_model: str | None = None  # None: the CLI's default model
    mcp_config: Path | None = None  # MCP servers template for the planner; None: skills/mcp.json
    suite_command: str | None = None  # default whole-suite command for Python repositories that name none
    # Where agents and repository code run: "on" (bubblewrap, required) or "off" (trusted local experiments only).
    sandbox: str = "on"
    # The node's repository environments and git mirrors, shared by every agent process on it (default:
    # <home>/cache), and their one size budget: idle ones are evicted least recently used first above it.
    cache_dir: Path | None = None
    cache_max_gb: float = Field(20.0, gt=0)
    # Per repository URL, what its `.fixfleet.yml` would say (for repositories the operator cannot change).
    repo_configs: dict[str, RepoConfig] = Field(default_factory=dict)
    # The sandbox's way out (fixfleet/workspace/egress.py): whatever a repository allows, never this
    # node, the platform's services or these ranges (the cluster's pod and service CIDRs) ...
    egress_deny_cidrs: list[str] = Field(default_factory=list)
    # ... and private ranges (RFC 1918, CGNAT, unique-local, ...) only when the operator says so:
    # all of them, or these (a corporate registry's network).
    egress_allow_private: bool = False
    egress_allow_cidrs: list[str] = Field(default_factory=list)
    # What one sandbox may use: processes (cgroup pids.max, else RLIMIT_NPROC), each tmpfs
    # (/tmp, a home of its own), and how much a writable checkout may grow (also the largest file).
    sandbox_max_processes: int = Field(512, ge=16)
    sandbox_tmp_bytes: int = Field(1024**3, ge=1024**2)
    sandbox_checkout_bytes: int = Field(4 * 1024**3, ge=1024**2)
    slack_channel: str | None = None  # where plans are posted for approval
    # Closing the loops (fixfleet/loops.py): a rejected or cancelled task's draft PR is closed and its
    # fixfleet/* branch deleted unless this keeps the branches; completed tasks' pull requests are
    # asked for their outcome this often (installs without pull_request webhooks; 0: never); Jira
    # transitions by state (JSON: {"PLANNING": "In Progress", "COMPLETED": "In Review",
    # "MERGED": "Done"}); a merged fix marks its Sentry issue resolved in the next release.
    keep_closed_branches: bool = False
    outcome_check_s: float = Field(600.0, ge=0)
    jira_transitions: dict[str, str] = Field(default_factory=lambda: {"COMPLETED": "In Review"})
    sentry_resolve_on_merge: bool = True
    agent_deny_patterns: list[str] = Field(default_factory=list)  # regexes over tool input, denied
    max_turns: int = Field(40, ge=1)
    max_budget_usd: float = Field(5.0, gt=0)
    session_timeout_s: float = Field(1800.0, gt=0)
    # The platform's proof: how often a failing test is run again before it counts (one that
    # passes then is flaky), and how many times an executor may ask for it during its session.
    verify_reruns: int = Field(2, ge=0, le=10)
    verify_calls: int = Field(3, ge=0, le=20)

    # Session records (fixfleet/sessions.py): each message is cut to this many bytes (its full size
    # is noted); messages of sessions that ended more than this many days ago are removed in the
    # background (0: kept for ever; the session rows always stay); a running session whose recorder
    # has said nothing for this long lost its agent and is marked cut short.
    session_message_max_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    session_messages_retention_days: float = Field(30.0, ge=0)
    session_silent_s: float = Field(120.0, ge=15)
    # Debugging: also write each session's SDK messages, redacted, as JSONL on the agent's disk
    # (<home>/agents/<agent>/session/transcripts/); the store's records are the durable ones.
    session_jsonl: bool = False
    # Where people reach fixfleet (the console's links in chat answers), e.g. https://fixfleet.acme.com
    public_url: str | None = None

    # The agent pools (Serve autoscaling on queue depth): replicas per role, tasks per executor,
    # and how long the queue must stay empty before a pool shrinks.
    planners_min: int = Field(1, ge=0)
    planners_max: int = Field(2, ge=1)
    executors_min: int = Field(2, ge=0)
    executors_max: int = Field(8, ge=1)
    tasks_per_executor: int = Field(2, ge=1)
    scale_down_after_s: float = Field(300.0, ge=0)

    # Queue behaviour.
    max_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = Field(5.0, ge=0)  # first retry delay; doubles each attempt
    retry_backoff_max_s: float = Field(600.0, ge=0)
    lease_s: float = Field(60.0, gt=0)  # a claim idle longer than this is taken over
    # How often a working agent looks whether its task was cancelled, paused or taken over:
    # a stopped task's session ends within about this long.
    control_poll_s: float = Field(1.0, gt=0, le=60)
    task_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)  # a queued task older than this expires
    outbox_poll_s: float = Field(0.5, gt=0)
    # Retention: what stays on disk. Logs (Ray's, the platform's, the embedded servers') rotate
    # at this size, keeping this many old files.
    log_max_bytes: int = Field(50 * 1024**2, ge=1024**2)
    log_backups: int = Field(5, ge=0, le=100)
    # Closed tasks (with their audit trail and outbox rows) are deleted this long after they
    # closed, and webhook delivery ids (kept to recognise a redelivery) this long after they
    # arrived; 0 keeps them for ever. Checked every `retention_check_s`.
    task_retention_days: float = Field(180.0, ge=0)
    delivery_retention_days: float = Field(30.0, ge=0)
    retention_check_s: float = Field(3600.0, gt=0)
    reconcile_s: float = Field(60.0, gt=0)  # how often the queues are checked against Postgres
    # How often each agent sweeps its node for the homes, checkouts, session and temp directories of
    # owners that are gone (fixfleet/workspace/sweeper.py); it also sweeps when it starts.
    sweep_every_s: float = Field(600.0, gt=0)

    @property
    def claimed_stale_s(self) -> float:
        """A claimed task (PLANNING, EXECUTING) whose queue entry vanished and that has been
        quiet this long has lost its agent (two leases): the reconciler queues it again."""
        return 2 * self.lease_s

    @property
    def agent_lost_s(self) -> float:
        """An agent whose heartbeat is older than this is gone (it beats every lease/3 seconds)."""
        return 3 * max(self.lease_s, 1.0) + 5.0

    @field_validator("ray_dashboard_url")
    @classmethod
    def _http_link(cls, value: str | None) -> str | None:
        if value and not re.match(r"https?://[^\s/]+", value):
            raise ValueError("FIXFLEET_RAY_DASHBOARD_URL must be an http:// or https:// URL")
        return value or None

    @field_validator("sandbox")
    @classmethod
    def _on_or_off(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("on", "off"):
            raise ValueError("FIXFLEET_SANDBOX is 'on' (the default) or 'off' (trusted local experiments only)")
        return value

    @property
    def sandbox_enabled(self) -> bool:
        return self.sandbox == "on"

    @property
    def cache_root(self) -> Path:
        return self.cache_dir or self.home / "cache"

    @field_validator("egress_deny_cidrs", "egress_allow_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        parse_networks(values)  # raises with the bad entry named
        return values

    @field_validator("home", "cache_dir", "credentials_file", "mcp_config", mode="before")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, (str, Path)) else value

    @staticmethod
    def secret_values(secret: SecretStr | None) -> list[str]:
        """All values of a rotating secret: `new,old` accepts both while clients move over."""
        if secret is None:
            return []
        return [part.strip() for part in secret.get_secret_value().split(",") if part.strip()]

    def masked(self) -> dict[str, Any]:
        """The effective configuration, safe to print: secrets and URL passwords hidden."""
        shown: dict[str, Any] = {}
        for name, value in self:
            if name in ("database_url", "redis_url") and value is not None:
                shown[name] = mask_url(value.get_secret_value())
            elif isinstance(value, SecretStr):
                shown[name] = "**********"
            elif isinstance(value, Path):
                shown[name] = str(value)
            elif isinstance(value, list):
                shown[name] = [str(v) for v in value]
            elif name == "repo_configs":
                shown[name] = {url: config.model_dump(exclude_defaults=True) for url, config in value.items()}
            else:
                shown[name] = value
        return shown


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")


def mask_url(url: str) -> str:
    """`postgres://u:secret@h/db` -> `postgres://u:****@h/db`."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:****@", url)


class ConfigError(ValueError):
    """A setting is invalid; the message is one line naming it and the fix."""


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, or ConfigError with one line per bad setting."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:  # a list or map setting that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = env_name(field[1]) if field else "a setting"
        raise ConfigError(f"{name} is not valid JSON: give a JSON list or object, e.g. "
                          f"{name}='[\"https://github.com/acme/*\"]'") from None
    except ValidationError as exc:
        problems = "; ".join(f"{env_name(str(e['loc'][0])) if e['loc'] else 'a setting'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


def env_name(field: str) -> str:
    """The environment variable a Settings field is read from."""
    info = Settings.model_fields.get(field)
    alias = getattr(info, "validation_alias", None) if info else None
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return f"FIXFLEET_{field.upper()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
