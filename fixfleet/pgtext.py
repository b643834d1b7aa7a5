"""What Postgres text can hold: no NUL, and no lone surrogate (JSON allows "\\ud800"; UTF-8 has no
such character). Anyone can send them (a webhook's error message, an API reason, a tool's output);
each becomes U+FFFD on its way in, so the row is stored rather than the request answered 500."""

from __future__ import annotations

import json
import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def storable_json(value: Any) -> str:
    """`value` as JSON text Postgres takes (a NUL is escaped in JSON, but jsonb refuses "\\u0000")."""
    text = json.dumps(value, ensure_ascii=False)
    if "\\u0000" in text or (not text.isascii() and _UNSTORABLE.search(text)):  # rare: clean and dump again
        text = json.dumps(_storable_value(value), ensure_ascii=False)
    return text


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): _storable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_value(v) for v in value]
    return value
