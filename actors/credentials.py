"""The model credential handed to the claude CLI, and where it came from.

Sources, strongest first:
1. a mounted secret file (a Kubernetes secret, `FIXFLEET_CREDENTIALS_FILE`): re-read whenever
   its content changes, so rotating the secret takes effect without restarting the actors.
   It beats the environment because it is the one that gets rotated;
2. `ANTHROPIC_API_KEY`, then `CLAUDE_CODE_OAUTH_TOKEN` from the settings (the CLI prefers an
   API key over an OAuth token too).

The file holds either a bare token (`sk-ant-api...` is an API key, `sk-ant-oat...` an OAuth
token from `claude setup-token`) or JSON: `{"anthropic_api_key": "..."}` or
`{"claude_code_oauth_token": "...", "expires_at": "2026-01-31T00:00:00Z"}`.

No message, log line or status produced here contains a credential's value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from fixfleet.config import Settings
from fixfleet.errors import PermanentError

log = logging.getLogger(__name__)

Kind = Literal["api_key", "oauth_token"]
API_KEY_VAR = "ANTHROPIC_API_KEY"
OAUTH_TOKEN_VAR = "CLAUDE_CODE_OAUTH_TOKEN"
FILE_SETTING = "FIXFLEET_CREDENTIALS_FILE"
ENV_VAR_FOR: dict[Kind, str] = {"api_key": API_KEY_VAR, "oauth_token": OAUTH_TOKEN_VAR}
PREFIX_KIND: dict[str, Kind] = {"sk-ant-api": "api_key", "sk-ant-oat": "oauth_token"}
JSON_KEY_KIND: dict[str, Kind] = {"anthropic_api_key": "api_key",
                                  "claude_code_oauth_token": "oauth_token"}


class NoCredentialError(PermanentError):
    """No usable model credential: sessions must not start, and a task that needs one fails at
    once instead of being retried (an operator has to act). The message says what to set."""


class InvalidCredentialError(NoCredentialError):
    """The credentials file exists but cannot be used (unreadable, malformed)."""


class ExpiredCredentialError(NoCredentialError):
    """The credential in use has passed its expiry time."""


class Credential(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Kind
    value: SecretStr
    source: str  # the environment variable's name or the file's path
    expires_at: datetime | None = None

    @property
    def env_var(self) -> str:
        return ENV_VAR_FOR[self.kind]

    def seconds_left(self, now: datetime) -> float | None:
        return None if self.expires_at is None else (self.expires_at - now).total_seconds()


class TokenManager:
    """Which credential the CLI gets right now; cheap enough to ask before every session."""

    def __init__(self, settings: Settings, secret_file: Path | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._settings = settings
        configured = secret_file or settings.credentials_file
        self.secret_file: Path | None = Path(configured) if configured else None
        self._clock = clock
        self._lock = threading.Lock()
        self._file_digest: str | None = None  # of the content last parsed
        self._file_credential: Credential | None = None

    # -- public ------------------------------------------------------------------------------

    def current(self) -> Credential:
        """The credential to use; raises NoCredentialError (or a subclass) when there is none."""
        credential = self._select()
        seconds = credential.seconds_left(self._clock())
        if seconds is not None and seconds <= 0:
            raise ExpiredCredentialError(
                f"the {credential.kind} from {credential.source} expired at "
                f"{credential.expires_at.isoformat()}; rotate it (for an OAuth token: "
                f"`claude setup-token`)")
        return credential

    def env(self) -> dict[str, str]:
        """The one variable the CLI needs: ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN."""
        credential = self.current()
        return {credential.env_var: credential.value.get_secret_value()}

    def status(self) -> dict[str, Any]:
        """For /health and metrics: what is in use and for how long, never the value."""
        try:
            credential = self.current()
        except ExpiredCredentialError as error:
            credential, problem = self._select(), str(error)
        except NoCredentialError as error:
            return {"usable": False, "kind": None, "source": None, "expires_at": None,
                    "seconds_left": None, "error": str(error)}
        else:
            problem = None
        seconds = credential.seconds_left(self._clock())
        return {
            "usable": problem is None,
            "kind": credential.kind,
            "source": credential.source,
            "expires_at": credential.expires_at.isoformat() if credential.expires_at else None,
            "seconds_left": None if seconds is None else max(0, int(seconds)),
            "error": problem,
        }

    # -- sources -----------------------------------------------------------------------------

    def _select(self) -> Credential:
        credential = self._from_file() or self._from_settings()
        if credential is None:
            raise NoCredentialError(self._nothing_configured())
        return credential

    def _from_file(self) -> Credential | None:
        path = self.secret_file
        if path is None:
            return None
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise InvalidCredentialError(f"credentials file {path}: cannot read it "
                                         f"({error.strerror})") from None
        digest = hashlib.sha256(content).hexdigest()
        with self._lock:
            if digest != self._file_digest:
                credential = parse_credential_file(content, source=str(path))
                if self._file_digest is not None:  # a rotation: worth one line, never the value
                    log.info("credentials file %s changed: %s", path,
                             f"now a {credential.kind}" if credential else "empty, using the "
                             "environment's credential")
                self._file_digest, self._file_credential = digest, credential
            return self._file_credential

    def _from_settings(self) -> Credential | None:
        for var, attribute, kind in ((API_KEY_VAR, "anthropic_api_key", "api_key"),
                                     (OAUTH_TOKEN_VAR, "claude_code_oauth_token", "oauth_token")):
            secret = getattr(self._settings, attribute, None)
            value = secret.get_secret_value().strip() if secret is not None else ""
            if value:
                return Credential(kind=kind, value=SecretStr(value), source=var)
        return None

    def _nothing_configured(self) -> str:
        message = f"no model credential: set {API_KEY_VAR} or {OAUTH_TOKEN_VAR}"
        if self.secret_file is None:
            return f"{message}, or mount a credentials file and point {FILE_SETTING} at it"
        state = "is empty" if self.secret_file.exists() else "does not exist"
        return f"{message}, or write one to the credentials file {self.secret_file} ({state})"


# -- the file format ---------------------------------------------------------------------------


def parse_credential_file(content: bytes, source: str) -> Credential | None:
    """A bare token or a JSON object; None for an empty file (the environment then applies)."""
    try:
        text = content.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidCredentialError(f"credentials file {source}: not UTF-8 text") from None
    if not text:
        return None
    if text.startswith("{"):
        return _parse_json(text, source)
    return _parse_bare_token(text, source)


def _parse_bare_token(text: str, source: str) -> Credential:
    if any(char.isspace() for char in text):
        raise InvalidCredentialError(
            f"credentials file {source}: expected one token or a JSON object")
    for prefix, kind in PREFIX_KIND.items():
        if text.startswith(prefix):
            return Credential(kind=kind, value=SecretStr(text), source=source)
    raise InvalidCredentialError(
        f"credentials file {source}: the token is neither an API key (sk-ant-api...) nor an "
        f"OAuth token (sk-ant-oat...); for another format write JSON "
        f'{{"anthropic_api_key": "..."}} or {{"claude_code_oauth_token": "..."}}')


def _parse_json(text: str, source: str) -> Credential:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidCredentialError(f"credentials file {source}: not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidCredentialError(f"credentials file {source}: JSON must be an object")
    fields = {str(key).lower(): value for key, value in data.items()}
    for key, kind in JSON_KEY_KIND.items():  # an API key first, as the CLI itself prefers
        value = fields.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidCredentialError(f"credentials file {source}: '{key}' must be a string")
        return Credential(kind=kind, value=SecretStr(value.strip()), source=source,
                          expires_at=_parse_expiry(fields.get("expires_at"), source))
    raise InvalidCredentialError(
        f"credentials file {source}: JSON needs 'anthropic_api_key' or 'claude_code_oauth_token'")


def _parse_expiry(raw: Any, source: str) -> datetime | None:
    if raw in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(raw))
    except ValueError:
        raise InvalidCredentialError(
            f"credentials file {source}: expires_at {raw!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # naive: read as UTC
