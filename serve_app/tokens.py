"""Bearer tokens of the task API, from FIXFLEET_API_TOKENS: [{"name", "token", "scopes"}]."""

from __future__ import annotations

import hmac
import json

from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from fixfleet.approvals import Scope  # the one set of scopes: the commands' and the tokens'


class ApiToken(BaseModel):
    name: str
    token: SecretStr
    scopes: list[Scope]


def load_tokens(raw: SecretStr | None) -> list[ApiToken]:
    if raw is None or not raw.get_secret_value().strip():
        return []
    try:
        return TypeAdapter(list[ApiToken]).validate_python(json.loads(raw.get_secret_value()))
    except (json.JSONDecodeError, ValidationError) as exc:
        # Never echo the value: it holds the tokens.
        raise ValueError('FIXFLEET_API_TOKENS must be a JSON list of {"name", "token", "scopes"}') from exc


def find_token(tokens: list[ApiToken], presented: str) -> ApiToken | None:
    """Constant-time comparison against every token, so timing tells nothing."""
    found = None
    for candidate in tokens:
        if hmac.compare_digest(candidate.token.get_secret_value().encode(), presented.encode()):
            found = candidate
    return found
