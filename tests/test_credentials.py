"""The model credential: environment or a rotating secret file, never leaked."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.credentials import (
    ExpiredCredentialError,
    InvalidCredentialError,
    NoCredentialError,
    TokenManager,
)
from fixfleet.config import Settings
from fixfleet.errors import PermanentError

API_KEY = "sk-ant-api03-canaryAPIKEY000000000000"
OAUTH = "sk-ant-oat01-canaryOAUTH1111111111111"
OAUTH_2 = "sk-ant-oat01-canaryOAUTH2222222222222"  # same length: a size check would miss it
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch):
    for var in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "FIXFLEET_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)

    def make(**values: str) -> Settings:
        return Settings(_env_file=None, **values)

    return make


def manager(settings: Settings, secret_file: Path | None = None) -> TokenManager:
    return TokenManager(settings, secret_file=secret_file, clock=lambda: NOW)


# -- environment --------------------------------------------------------------------------------


def test_api_key_from_environment(settings) -> None:
    tokens = manager(settings(anthropic_api_key=API_KEY))
    credential = tokens.current()
    assert (credential.kind, credential.source) == ("api_key", "ANTHROPIC_API_KEY")
    assert tokens.env() == {"ANTHROPIC_API_KEY": API_KEY}


def test_oauth_token_from_environment(settings) -> None:
    tokens = manager(settings(claude_code_oauth_token=OAUTH))
    assert tokens.env() == {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH}


def test_both_set_hands_the_cli_exactly_the_api_key(settings) -> None:
    tokens = manager(settings(anthropic_api_key=API_KEY, claude_code_oauth_token=OAUTH))
    assert tokens.env() == {"ANTHROPIC_API_KEY": API_KEY}


def test_nothing_configured_names_what_to_set(settings, tmp_path: Path) -> None:
    with pytest.raises(NoCredentialError) as error:
        manager(settings()).current()
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "FIXFLEET_CREDENTIALS_FILE"):
        assert name in str(error.value)
    # A task needing a credential fails at once: no retry brings one (nor makes an expired one valid).
    assert all(issubclass(kind, PermanentError) for kind in (
        NoCredentialError, InvalidCredentialError, ExpiredCredentialError))

    missing = tmp_path / "token"
    with pytest.raises(NoCredentialError, match=f"{missing}.*does not exist"):
        manager(settings(), missing).env()


# -- the secret file ----------------------------------------------------------------------------


def test_file_beats_environment(settings, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(OAUTH + "\n")
    tokens = manager(settings(anthropic_api_key=API_KEY), secret)
    assert tokens.env() == {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH}
    assert tokens.current().source == str(secret)


def test_rotation_is_picked_up_without_a_new_manager(settings, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(OAUTH)
    tokens = manager(settings(), secret)
    assert tokens.env() == {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH}
    stat = secret.stat()

    secret.write_text(OAUTH_2)
    os.utime(secret, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime

    assert tokens.env() == {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH_2}


def test_kubernetes_style_symlink_swap_is_picked_up(settings, tmp_path: Path) -> None:
    # A secret volume points `token` at `..data/token` and swaps `..data` atomically.
    for name, value in (("v1", OAUTH), ("v2", json.dumps({"anthropic_api_key": API_KEY}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "token").write_text(value)
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "token").symlink_to("..data/token")
    tokens = manager(settings(), tmp_path / "token")
    assert tokens.current().kind == "oauth_token"

    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    assert tokens.env() == {"ANTHROPIC_API_KEY": API_KEY}


def test_removed_or_emptied_file_falls_back_to_environment(settings, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(OAUTH)
    tokens = manager(settings(anthropic_api_key=API_KEY), secret)
    assert tokens.current().kind == "oauth_token"
    secret.write_text("")
    assert tokens.env() == {"ANTHROPIC_API_KEY": API_KEY}
    secret.unlink()
    assert tokens.env() == {"ANTHROPIC_API_KEY": API_KEY}


def test_json_file_with_expiry(settings, tmp_path: Path) -> None:
    secret = tmp_path / "credentials.json"
    expires = NOW + timedelta(hours=2)
    secret.write_text(json.dumps({"claude_code_oauth_token": OAUTH,
                                  "expires_at": expires.isoformat().replace("+00:00", "Z")}))
    tokens = manager(settings(), secret)
    assert tokens.current().expires_at == expires
    assert tokens.status() == {
        "usable": True, "kind": "oauth_token", "source": str(secret),
        "expires_at": expires.isoformat(), "seconds_left": 7200, "error": None,
    }


def test_naive_expiry_is_read_as_utc(settings, tmp_path: Path) -> None:
    secret = tmp_path / "credentials.json"
    secret.write_text(json.dumps({"claude_code_oauth_token": OAUTH,
                                  "expires_at": "2025-06-01T13:00:00"}))
    assert manager(settings(), secret).status()["seconds_left"] == 3600


def test_expired_token_refuses_sessions_and_says_so(settings, tmp_path: Path) -> None:
    secret = tmp_path / "credentials.json"
    secret.write_text(json.dumps({"claude_code_oauth_token": OAUTH,
                                  "expires_at": (NOW - timedelta(minutes=1)).isoformat()}))
    tokens = manager(settings(), secret)
    with pytest.raises(ExpiredCredentialError, match="expired"):
        tokens.env()
    status = tokens.status()
    assert (status["usable"], status["seconds_left"], status["kind"]) == (False, 0, "oauth_token")
    assert "expired" in status["error"]


@pytest.mark.parametrize("content", [
    "sk-live-canaryUNKNOWNPREFIX",  # a bare token of no known kind
    '{"api_key": "sk-ant-api03-canaryWRONGKEY"}',  # JSON without a known key
    '{"claude_code_oauth_token": "sk-ant-oat01-canaryX", "expires_at": "soon"}',
    "{not json canary",
])
def test_malformed_file_is_refused_without_echoing_it(settings, tmp_path: Path,
                                                      content: str) -> None:
    secret = tmp_path / "token"
    secret.write_text(content)
    tokens = manager(settings(anthropic_api_key=API_KEY), secret)
    with pytest.raises(InvalidCredentialError) as error:
        tokens.current()
    assert str(secret) in str(error.value)
    assert "canary" not in str(error.value)
    assert "canary" not in json.dumps(tokens.status())


# -- never the value ----------------------------------------------------------------------------


def test_status_and_repr_never_contain_the_secret(settings, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(OAUTH)
    for tokens in (manager(settings(anthropic_api_key=API_KEY)), manager(settings(), secret)):
        shown = json.dumps(tokens.status()) + repr(tokens.current()) + str(tokens.current())
        assert "canary" not in shown
    assert manager(settings()).status()["usable"] is False
